"""What the redis_streams collector's dedupe costs in Redis: bytes per remembered event id, and script time per event.

Appends N unique events (real 32-hex ids) through the collector's own send() to a private redis-server, then:

* memory: `used_memory` after the stream is deleted and the collector disconnected, less `used_memory` before the
  first append (what stays is the dedupe state alone), divided by N; plus the keys left and `MEMORY USAGE` of one;
* time: Redis's own accounting of the script (INFO commandstats, `cmdstat_evalsha`), per event: with dedupe on,
  new ids and then the same ids again (repeats); with dedupe off (the XADD alone); and, with time buckets, at
  steady state: the two older buckets that a lookup also reads hold N ids each (copies of the first bucket), and the
  marks of earlier versions are no longer read.

Run ``PYTHONPATH=src .venv/bin/python bench/redis_dedupe.py [--events N] [--rounds R]``; it prints one JSON object.
Run it with PYTHONPATH pointing at another checkout's src to measure that version the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis

from trackpoint.collectors.base import CollectorContext, SendResult
from trackpoint.collectors.redis_streams import collector as redis_streams
from trackpoint.collectors.redis_streams.collector import SCRIPT, RedisStreamsCollector
from trackpoint.collectors.redis_streams.config import RedisStreamsCollectorConfig
from trackpoint.event import Context, Event, Meta, derived_id, random_id

BATCH = 1024  # batch_max_events' default


def make_events(count: int, start: int, random_ids: bool) -> list[Event]:
    ts = 1_700_000_000_000
    return [
        Event(
            id=random_id(ts + i) if random_ids else derived_id("impression", [f"imp-{i}"]),
            type="impression",
            ts=ts + i,
            dims={"imp": f"imp-{i}", "cid": "c1", "crid": "cr7", "pub": "p42"},
            metrics={},
            ctx=Context(ip="192.0.2.0", ua="Mozilla/5.0 (Windows NT 10.0; Win64; x64)"),
            meta=Meta(worker=0, config="abc123"),
        )
        for i in range(start, start + count)
    ]


async def script_time(client: Redis) -> tuple[float, float]:
    """Microseconds so far: inside EVALSHA (Redis's wall clock, INFO commandstats) and on Redis's main thread (CPU,
    INFO cpu: less sensitive to other processes on a shared machine)."""
    stats = await client.info("commandstats")
    cpu = await client.info("cpu")
    main = float(cpu.get("used_cpu_user_main_thread", cpu["used_cpu_user"]))
    main += float(cpu.get("used_cpu_sys_main_thread", cpu["used_cpu_sys"]))
    return float(stats.get("cmdstat_evalsha", {"usec": 0})["usec"]), main * 1e6


async def timed_sends(client: Redis, target: RedisStreamsCollector, events: Sequence[Event]) -> tuple[float, float]:
    """EVALSHA and main-thread CPU microseconds per event of sending `events`."""
    wall, cpu = await script_time(client)
    await send_all(target, events)
    wall_after, cpu_after = await script_time(client)
    return (wall_after - wall) / len(events), (cpu_after - cpu) / len(events)


async def send_all(target: RedisStreamsCollector, events: Sequence[Event]) -> None:
    for start in range(0, len(events), BATCH):
        assert await target.send(events[start : start + BATCH]) is SendResult.DELIVERED, target.health()


async def measure(url: str, events: list[Event], window_s: int, stream: str) -> dict[str, Any]:
    client = Redis.from_url(url)
    await client.flushall()
    raw = {"type": "redis_streams", "url": url, "stream": stream, "maxlen": 0, "dedupe_window_s": window_s}
    options = msgspec.convert(raw, RedisStreamsCollectorConfig)

    def make_collector() -> RedisStreamsCollector:
        return RedisStreamsCollector("queue", options, CollectorContext(data_dir=tempfile.gettempdir()))

    await client.script_load(SCRIPT)
    # The collector's connection holds a query buffer as large as its last batch: it is closed before `after`.
    before = int((await client.info("memory"))["used_memory"])
    target = make_collector()
    await target.start()
    result: dict[str, Any] = {}
    result["usec_new"], result["cpu_usec_new"] = await timed_sends(client, target, events)
    # every id a repeat
    result["usec_repeat"], result["cpu_usec_repeat"] = await timed_sends(client, target, events)
    assert target.duplicates == (len(events) if window_s else 0), target.duplicates
    await target.close(1.0)

    await client.delete(stream)
    after = int((await client.info("memory"))["used_memory"])
    sample = [key async for key in client.scan_iter(count=100)][:1]
    result |= {
        "dedupe_bytes": after - before,
        "bytes_per_event": (after - before) / len(events),
        "keys": int(await client.dbsize()),
        "sample_key": sample[0].decode(errors="replace") if sample else "",
        "sample_memory_usage": int(await client.memory_usage(sample[0], samples=0) or 0) if sample else 0,
    }
    if window_s and hasattr(redis_streams, "BUCKETS_PER_WINDOW"):
        result |= await steady_state(client, make_collector(), events, stream, window_s)
    await client.aclose()
    return result


async def steady_state(
    client: Redis, target: RedisStreamsCollector, events: list[Event], stream: str, window_s: int
) -> dict[str, float]:
    """The time buckets' lookups once the stream has run for a window: older buckets full, no old marks read."""
    from trackpoint.collectors.redis_streams.config import dedupe_prefix

    prefix = dedupe_prefix(stream)
    bucket_s = -(-window_s // redis_streams.BUCKETS_PER_WINDOW)
    current = f"{prefix}{bucket_s}:{int((await client.time())[0]) // bucket_s}"
    keys = [key.decode() async for key in client.scan_iter(match=current + "*", count=1000)]
    for back in range(1, redis_streams.BUCKETS_PER_WINDOW + 1):
        older = f"{prefix}{bucket_s}:{int(current.rsplit(':', 1)[1]) - back}"
        for key in keys:
            await client.copy(key, older + key.removeprefix(current))
    await client.hset(prefix + "state", "legacy_until", 0)
    fresh = make_events(len(events), len(events), False)
    await target.start()
    result = {}
    result["steady_usec_new"], result["steady_cpu_usec_new"] = await timed_sends(client, target, fresh)
    result["steady_usec_repeat"], result["steady_cpu_usec_repeat"] = await timed_sends(client, target, fresh)
    assert target.duplicates == len(fresh), target.duplicates
    await target.close(1.0)
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def main(count: int, rounds: int, random_ids: bool) -> None:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="tp-dedupe-bench-")
    server = subprocess.Popen(
        [
            *(shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        probe = Redis.from_url(url)
        for _ in range(100):
            try:
                await probe.ping()
                break
            except Exception:
                time.sleep(0.05)
        version = (await probe.info("server"))["redis_version"]
        await probe.aclose()
        events = make_events(count, 0, random_ids)
        results: dict[str, list[dict[str, Any]]] = {"dedupe": [], "off": []}
        for _ in range(rounds):
            results["dedupe"].append(await measure(url, events, 86_400, "trackpoint:impression"))
            results["off"].append(await measure(url, events, 0, "trackpoint:impression"))
        report: dict[str, Any] = {"redis": version, "events": count, "rounds": rounds, "random_ids": random_ids}
        for mode, runs in results.items():  # times: the least of the rounds (others' load only adds)
            report[mode] = {
                name: (min if "usec" in name else statistics.median)(run[name] for run in runs)
                if isinstance(value, (int, float))
                else value
                for name, value in runs[0].items()
            }
        for name, value in list(report["dedupe"].items()):
            base = name.removeprefix("steady_").replace("repeat", "new")
            if "usec" in name and base in report["off"]:
                report["dedupe"][f"{name}_minus_off"] = value - report["off"][base]
        print(json.dumps(report, indent=2))
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--random-ids", action="store_true", help="time-ordered random ids instead of derived ones")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.rounds, args.random_ids))
