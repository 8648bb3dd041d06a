"""The banker's throughput: debits per second one tracker process applies, through the banker collector.

The collector is driven as a worker drives it: win events are offered (the request path's only call), the flush
loop batches them and the store applies each batch (Redis: one pipelined round trip with one script call per
campaign in the batch; SQLite: one transaction). Scenarios: distinct wins over many campaigns, and the same with
30% repeats (applied once, skipped after). Measured: applied debits per second of wall time, the process's CPU per
debit, and for Redis the server's CPU per debit (INFO cpu). Target (issue 4): at least 50,000 debits/s on Redis.

Run ``.venv/bin/python bench/banker.py [--quick] [--record]``; results go to bench/results/banker.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from harness import (
    RESULTS_DIR,
    HarnessError,
    git_state,
)
from trackpoint.collectors.banker.collector import BankerCollector
from trackpoint.collectors.banker.config import BankerCollectorConfig
from trackpoint.collectors.banker.model import MAX_BUDGET_MICROS, Budget
from trackpoint.collectors.base import CollectorContext
from trackpoint.event import Context, Event, Meta, derived_id

REDIS_URL = os.environ.get("TRACKPOINT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
TARGET_DEBITS_PER_S = 50_000
CAMPAIGNS = (100, 1000)  # a DSP's live campaigns; the second spreads each batch thin (one debit per campaign)
BANKER_JSON = RESULTS_DIR / "banker.json"


def wins(count: int, repeat_share: float, campaigns: int, seed: int) -> list[Event]:
    rng = random.Random(seed)
    distinct = [
        Event(
            id=derived_id("win", [f"imp-{seed}-{i}"]),
            type="win",
            ts=int(time.time() * 1000),
            dims={"imp": f"imp-{seed}-{i}", "cid": f"c{rng.randrange(campaigns)}", "cur": "USD"},
            metrics={"price": rng.randrange(10_000, 20_000_000)},
            ctx=Context(),
            meta=Meta(worker=0, config="bench"),
        )
        for i in range(count)
    ]
    events = distinct + rng.choices(distinct, k=int(count * repeat_share))
    rng.shuffle(events)
    return events


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def redis_cpu_s(url: str) -> float:
    client = Redis.from_url(url)
    try:
        info = await client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    finally:
        await client.aclose()


async def scenario(store: str, events: list[Event], data_dir: str) -> dict[str, Any]:
    prefix = f"tpbench:{uuid.uuid4().hex[:8]}:banker"
    config = msgspec.convert(
        {"type": "banker", "store": store, "redis_url": REDIS_URL, "key_prefix": prefix, "spool": {"enabled": False}},
        BankerCollectorConfig,
    )
    collector = BankerCollector("banker", config, CollectorContext(data_dir=data_dir))
    await collector.start()
    # Campaigns exist before their wins, as in production (unknown_campaigns: ignore debits no other).
    budget = Budget(total_budget_micros=MAX_BUDGET_MICROS)
    for campaign in sorted({event.dims["cid"] for event in events}):
        await collector.store.set_budget(campaign, budget, int(time.time() * 1000))
    distinct = len({event.id for event in events})
    server_before = await redis_cpu_s(REDIS_URL) if store == "redis" else 0.0
    cpu_before, started = cpu_s(), time.perf_counter()
    # Offer as the edge does, in request-sized steps that yield to the loop (the flush runs between them), keeping
    # the backlog under the collector's memory bound (max_pending_events) as a worker's backpressure gate would: the
    # spool is off here, so what passes the bound would be dropped (counted) and the run would fail.
    pace = collector.max_pending // 2
    for start in range(0, len(events), 256):
        for event in events[start : start + 256]:
            collector.offer(event)
        await asyncio.sleep(0)
        while len(collector._pending) > pace:  # the benchmark paces itself on the backlog
            await asyncio.sleep(0.005)
    while collector.applied + collector.duplicates < len(events):
        if collector.stats.errors or collector.stats.dropped:
            raise HarnessError(f"banker failed: {collector.health().detail or 'events dropped'}")
        await asyncio.sleep(0.01)
    elapsed, cpu = time.perf_counter() - started, cpu_s() - cpu_before
    server_cpu = (await redis_cpu_s(REDIS_URL) - server_before) if store == "redis" else None
    await collector.close(5.0)
    if collector.applied != distinct:
        raise HarnessError(f"applied {collector.applied} debits, expected {distinct}")
    if store == "redis":
        client = Redis.from_url(REDIS_URL)
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=10_000)]
        for chunk in range(0, len(keys), 10_000):
            await client.delete(*keys[chunk : chunk + 10_000])
        await client.aclose()
    return {
        "store": store,
        "events": len(events),
        "debits": distinct,
        "repeats": len(events) - distinct,
        "seconds": round(elapsed, 3),
        "events_per_s": round(len(events) / elapsed),
        "debits_per_s": round(distinct / elapsed),
        "client_cpu_us_per_event": round(cpu / len(events) * 1e6, 2),
        "server_cpu_us_per_event": None if server_cpu is None else round(server_cpu / len(events) * 1e6, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer events (CI)")
    parser.add_argument("--record", action="store_true", help="write the result into bench/results")
    args = parser.parse_args(argv)
    count = 50_000 if args.quick else 400_000
    console = Console()
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="tp-bench-banker-") as data_dir:
            for store in ("redis", "sqlite"):
                for campaigns in CAMPAIGNS:
                    for share in (0.0, 0.3):
                        n = count if store == "redis" else count // 4
                        events = wins(n, share, campaigns, seed=len(results))
                        results.append(asyncio.run(scenario(store, events, data_dir)) | {"campaigns": campaigns})
    except HarnessError as exc:
        console.print(f"[bold red]harness error[/] {exc}")
        return 1
    table = Table(title=f"banker throughput, one process ({'quick' if args.quick else 'full'})")
    for column in ("store", "campaigns", "events", "repeats", "debits/s", "events/s", "client µs/event",
                   "redis µs/event"):  # fmt: skip
        table.add_column(column, justify="right")
    for r in results:
        server = "-" if r["server_cpu_us_per_event"] is None else f"{r['server_cpu_us_per_event']:.1f}"
        table.add_row(r["store"], f"{r['campaigns']:,}", f"{r['events']:,}", f"{r['repeats']:,}",
                      f"{r['debits_per_s']:,}", f"{r['events_per_s']:,}", f"{r['client_cpu_us_per_event']:.1f}",
                      server)  # fmt: skip
    console.print(table)
    redis_rate = min(
        r["debits_per_s"] for r in results if r["store"] == "redis" and not r["repeats"] and r["campaigns"] == 100
    )
    met = redis_rate >= TARGET_DEBITS_PER_S
    console.print(
        f"Redis, 100 campaigns: {redis_rate:,} debits/s from one process — target ≥ {TARGET_DEBITS_PER_S:,}: "
        + ("[green]met[/]" if met else "[bold red]missed[/]")
    )
    commit, dirty = git_state()
    report = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "dirty": dirty,
        "quick": args.quick,
        "python": sys.version.split()[0],
        "target_debits_per_s": TARGET_DEBITS_PER_S,
        "redis_debits_per_s": redis_rate,
        "target_met": met,
        "results": results,
    }
    out_dir = RESULTS_DIR if args.record else Path(tempfile.gettempdir())
    (out_dir / BANKER_JSON.name).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
