"""Benchmark of delivery to a queue: what a queue collector costs, what an outage does, how fast replay is.

Three scenarios against a private Redis (the `redis_streams` collector), the tracker pinned to core 0 as in run.py:

* overhead: impression throughput with the log collector alone, then with log + redis_streams on every event;
* outage: a steady paced load of unique impressions; Redis is stopped for a while and started again. Every
  logged event id must reach the stream, every request must get a 2xx, and the spooled backlog must drain;
* replay: `trackpoint replay` of a generated log of N events into Redis Streams, timed end to end.

Run ``.venv/bin/python bench/queues.py [--quick] [--record]``; results go to bench/results/queues.json and
queues.png (``--record`` keeps them in the repository).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec
import redis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from harness import (
    LOAD_CPU,
    PACED_UNIQUE_LUA,
    RESULTS_DIR,
    SERVER_CPU,
    THROUGHPUT_CONNECTIONS,
    HarnessError,
    Service,
    WrkResult,
    admin_get,
    cpu_seconds,
    free_ports,
    git_state,
    pinned,
    run_wrk,
    start_service,
    wait_ready,
    worker_pid,
)
from trackpoint.collectors.log.reader import read_events
from trackpoint.event import Context, Event, Meta, derived_id

QUEUES_JSON = RESULTS_DIR / "queues.json"
QUEUES_PNG = RESULTS_DIR / "queues.png"
REPO_ROOT = Path(__file__).resolve().parent.parent
TRACKER_BIN = REPO_ROOT / ".venv" / "bin" / "trackpoint"

TARGET_OVERHEAD_PCT = 80.0  # throughput with a queue collector, in % of log-only
TARGET_DRAIN_S = 60.0
TARGET_REPLAY_S = 60.0
OUTAGE_RPS = 5_000
OUTAGE_CONNECTIONS = 52  # x 10 ms pacing ≈ 5,000 req/s with sub-millisecond responses
OUTAGE_DELAY_MS = 10
CAPACITY_CONNECTIONS = 150  # x 10 ms pacing ≈ 15,000 req/s: below saturation with or without the queue
OVERHEAD_ROUNDS = 2


UNIQUE_LUA = """\
local counter = 0
function request()
  counter = counter + 1
  return wrk.format(nil, "/i?imp=t-" .. counter .. "&cid=c1&crid=cr9&pub=p7")
end
"""


@dataclass(frozen=True)
class Overhead:
    """Saturating throughput as wrk saw it, and the worker's CPU time per request at the same paced load for both
    configurations (its capacity). On a 2-core machine Redis shares the load generator's core, so wrk's figure also
    measures that contention, and a worker at full load batches more per loop iteration than a slower one; the CPU
    per request at an equal offered load is what the worker's core pays for the queue collector."""

    log_only: WrkResult
    with_queue: WrkResult
    log_only_cpu_us: float  # worker CPU (user + system) per request
    with_queue_cpu_us: float

    @property
    def wrk_ratio_pct(self) -> float:
        return 100.0 * self.with_queue.rps / self.log_only.rps if self.log_only.rps else 0.0

    @property
    def ratio_pct(self) -> float:
        return 100.0 * self.log_only_cpu_us / self.with_queue_cpu_us if self.with_queue_cpu_us else 0.0


@dataclass(frozen=True)
class Outage:
    outage_s: float
    load: WrkResult
    logged: int
    in_stream: int
    lost: int
    max_spooled_events: int
    drain_s: float


@dataclass(frozen=True)
class Replay:
    events: int
    seconds: float
    in_stream: int


# --------------------------------------------------------------------------- services


@contextlib.contextmanager
def private_redis(workdir: Path, port: int) -> Iterator[Service]:
    # No snapshots while it runs, one on shutdown (a save point that never fires makes Redis save on SIGTERM): a
    # stopped and restarted server keeps its data, as a persistent production Redis would.
    argv = [*pinned(LOAD_CPU), "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "3600 1"]
    argv += ["--appendonly", "no", "--dir", str(workdir)]
    with start_service("redis", f"redis://127.0.0.1:{port}/0", argv, workdir, signal.SIGTERM) as service:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            if time.monotonic() > deadline:
                raise HarnessError(f"redis did not start:\n{service.log_tail()}")
            time.sleep(0.05)
        yield service


def tracker_config(data_dir: Path, redis_url: str | None) -> str:
    collectors = ["log", "queue"] if redis_url else ["log"]
    config: dict[str, Any] = {
        "data_dir": str(data_dir),
        "event_types": {"impression": {"preset": "impression", "collectors": collectors}},
    }
    if redis_url:
        config["collectors"] = {"queue": {"type": "redis_streams", "url": redis_url}}
    return json.dumps(config)  # JSON is YAML


@contextlib.contextmanager
def tracker(workdir: Path, redis_url: str | None) -> Iterator[tuple[Service, int]]:
    port, admin_port = free_ports(2)
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "trackpoint.yaml"
    config.write_text(tracker_config(workdir / "data", redis_url))
    argv = [*pinned(SERVER_CPU), str(TRACKER_BIN), "run", "-w", "1", "-p", str(port), "--admin-port"]
    argv += [str(admin_port), "-c", str(config)]
    url = f"http://127.0.0.1:{port}/"
    with start_service("tracker", url, argv, workdir, signal.SIGTERM) as service:
        wait_ready(service, f"http://127.0.0.1:{admin_port}/readyz")
        yield service, admin_port


def collector_metric(admin_port: int, data_dir: Path, name: str, collector: str = "queue") -> float:
    _, body = admin_get(f"http://127.0.0.1:{admin_port}/metrics", data_dir)
    pattern = rf'^trackpoint_collector_{name}(?:_total)?{{collector="{collector}"}} (\S+)$'
    match = re.search(pattern, body.decode(), re.M)
    if match is None:
        raise HarnessError(f"metric trackpoint_collector_{name} for {collector} not found")
    return float(match.group(1))


def stream_ids(url: str, stream: str = "trackpoint:impression") -> list[str]:
    client = redis.Redis.from_url(url, decode_responses=True)
    ids: list[str] = []
    start = "-"
    while True:
        entries: list[tuple[str, dict[str, str]]] = client.xrange(stream, min=start, count=10_000)  # type: ignore[assignment]
        if not entries:
            return ids
        ids.extend(fields["id"] for _, fields in entries)
        start = "(" + entries[-1][0]


def logged_ids(data_dir: Path) -> list[str]:
    return [event.id for event in read_events([data_dir / "logs"]) if event.type == "impression"]


# --------------------------------------------------------------------------- scenarios


def measure_overhead(workdir: Path, duration_s: int, console: Console) -> Overhead:
    """Both configurations in turn, OVERHEAD_ROUNDS times (this VM drifts): each round saturates the tracker, then
    loads it at one paced rate and reads the worker's CPU time. Throughputs and CPU costs are averaged."""
    script = workdir / "unique.lua"
    script.write_text(UNIQUE_LUA)
    paced = workdir / "paced-capacity.lua"
    paced.write_text(PACED_UNIQUE_LUA.format(delay_ms=OUTAGE_DELAY_MS, prefix="q"))
    rps: dict[bool, list[WrkResult]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    (redis_port,) = free_ports(1)
    with private_redis(workdir / "redis-overhead", redis_port) as redis_service:
        for round_number in range(OVERHEAD_ROUNDS):
            for queue in (False, True):
                label = "log + redis_streams" if queue else "log only"
                console.print(
                    f"[bold]overhead[/] {round_number + 1}/{OVERHEAD_ROUNDS}: {label}, throughput {duration_s}s, "
                    f"then CPU per request at ~{CAPACITY_CONNECTIONS * 100:,} req/s for {duration_s}s"
                )
                url = redis_service.url if queue else None
                with tracker(workdir / f"overhead-{round_number}-{int(queue)}", url) as (service, _):
                    run_wrk(service.url, 2, THROUGHPUT_CONNECTIONS, script)
                    rps[queue].append(run_wrk(service.url, duration_s, THROUGHPUT_CONNECTIONS, script))
                    pid = worker_pid(service)
                    before = cpu_seconds(pid)
                    steady = run_wrk(service.url, duration_s, CAPACITY_CONNECTIONS, paced)
                    time.sleep(0.5)  # the last batches of the run
                    cpu[queue].append(1e6 * (cpu_seconds(pid) - before) / steady.requests)
    return Overhead(
        log_only=_mean_result(rps[False]),
        with_queue=_mean_result(rps[True]),
        log_only_cpu_us=statistics.fmean(cpu[False]),
        with_queue_cpu_us=statistics.fmean(cpu[True]),
    )


def _mean_result(results: list[WrkResult]) -> WrkResult:
    """The run whose throughput is closest to the mean (a WrkResult cannot be averaged field by field)."""
    mean = statistics.fmean(result.rps for result in results)
    return min(results, key=lambda result: abs(result.rps - mean))


def measure_outage(workdir: Path, before_s: int, outage_s: int, after_s: int, console: Console) -> Outage:
    script = workdir / "paced.lua"
    script.write_text(PACED_UNIQUE_LUA.format(delay_ms=OUTAGE_DELAY_MS, prefix="q"))
    (redis_port,) = free_ports(1)
    redis_dir = workdir / "redis-outage"
    load_s = before_s + outage_s + after_s
    console.print(
        f"[bold]outage[/]: ~{OUTAGE_RPS:,} unique impressions/s for {load_s}s; Redis down from {before_s}s "
        f"for {outage_s}s"
    )
    outage_dir = workdir / "outage"
    with tracker(outage_dir, f"redis://127.0.0.1:{redis_port}/0") as (service, admin_port):
        stack = contextlib.ExitStack()
        stack.enter_context(private_redis(redis_dir, redis_port))
        results: list[WrkResult] = []
        load = threading.Thread(
            target=lambda: results.append(run_wrk(service.url, load_s, OUTAGE_CONNECTIONS, script)), daemon=True
        )
        load.start()
        time.sleep(before_s)
        stack.close()  # Redis stops
        max_spooled = 0
        outage_end = time.monotonic() + outage_s
        while time.monotonic() < outage_end:
            time.sleep(1)
            max_spooled = max(max_spooled, int(collector_metric(admin_port, outage_dir / "data", "spooled_events")))
        with private_redis(redis_dir, redis_port) as redis_service:
            restarted = time.monotonic()
            drained_at: float | None = None
            while drained_at is None and time.monotonic() - restarted < 300:
                time.sleep(0.5)
                spooled = collector_metric(admin_port, outage_dir / "data", "spooled_events")
                if spooled == 0 and collector_metric(admin_port, outage_dir / "data", "pending") < 2_000:
                    drained_at = time.monotonic()
            load.join()
            time.sleep(2)  # the last flushes
            service.stop(signal.SIGTERM)  # drain: every accepted event is logged and sent
            in_stream = set(stream_ids(redis_service.url))
        logged = logged_ids(workdir / "outage" / "data")
    if not results:
        raise HarnessError("the outage load did not finish")
    return Outage(
        outage_s=outage_s,
        load=results[0],
        logged=len(logged),
        in_stream=len(in_stream),
        lost=len(set(logged) - in_stream),
        max_spooled_events=max_spooled,
        drain_s=(drained_at - restarted) if drained_at is not None else float("inf"),
    )


def write_log(path: Path, events: int) -> None:
    """A log file like the tracker's, of `events` distinct impressions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = msgspec.json.Encoder()
    meta = Meta(worker=1, config="bench")
    context = Context(ip="203.0.113.0", ua="Mozilla/5.0 (bench)")
    now = int(time.time() * 1000)
    with path.open("wb") as file:
        for start in range(0, events, 10_000):
            batch = [
                Event(
                    id=derived_id("impression", [f"replay-{i}"]),
                    type="impression",
                    ts=now + i,
                    dims={"imp": f"replay-{i}", "cid": "c1", "crid": "cr9", "pub": "p7"},
                    metrics={},
                    ctx=context,
                    meta=meta,
                )
                for i in range(start, min(events, start + 10_000))
            ]
            file.write(encoder.encode_lines(batch))


def measure_replay(workdir: Path, events: int, console: Console) -> Replay:
    logs = workdir / "replay" / "logs"
    write_log(logs / "events-20260101T000000000Z-w00-p1-0001.jsonl", events)
    (redis_port,) = free_ports(1)
    with private_redis(workdir / "redis-replay", redis_port) as redis_service:
        config = workdir / "replay" / "trackpoint.yaml"
        config.write_text(tracker_config(workdir / "replay" / "data", redis_service.url))
        console.print(f"[bold]replay[/]: {events:,} logged events into Redis Streams")
        started = time.monotonic()
        done = subprocess.run(
            [str(TRACKER_BIN), "replay", "-c", str(config), "--collector", "queue", str(logs)],
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.monotonic() - started
        if done.returncode != 0:
            raise HarnessError(f"replay failed ({done.returncode}):\n{done.stderr[-2000:]}")
        in_stream = int(redis.Redis.from_url(redis_service.url).xlen("trackpoint:impression"))
    return Replay(events, seconds, in_stream)


# --------------------------------------------------------------------------- report


def checks(overhead: Overhead, outage: Outage, replay: Replay) -> list[tuple[str, str, bool]]:
    return [
        (
            "worker capacity with a queue collector ≥ 80% of log-only (CPU per request, equal load)",
            f"{overhead.ratio_pct:.1f}% ({overhead.log_only_cpu_us:.1f} → {overhead.with_queue_cpu_us:.1f} µs/req)",
            overhead.ratio_pct >= TARGET_OVERHEAD_PCT,
        ),
        (
            "wrk throughput with a queue collector (Redis on wrk's core)",
            f"{overhead.wrk_ratio_pct:.1f}%",
            overhead.wrk_ratio_pct >= TARGET_OVERHEAD_PCT,
        ),
        ("outage: no logged event missing from the queue", f"{outage.lost} lost", outage.lost == 0),
        ("outage: every request answered 2xx", f"{outage.load.errors} errors", outage.load.errors == 0),
        (f"outage: backlog drained in < {TARGET_DRAIN_S:.0f}s", f"{outage.drain_s:.1f}s", outage.drain_s < 60),
        (
            f"replay of {replay.events:,} events in < {TARGET_REPLAY_S:.0f}s",
            f"{replay.seconds:.1f}s",
            replay.seconds < TARGET_REPLAY_S and replay.in_stream == replay.events,
        ),
    ]


def chart(overhead: Overhead, outage: Outage, replay: Replay, path: Path) -> None:
    figure = Figure(figsize=(13, 4))
    FigureCanvasAgg(figure)
    left, middle, right = figure.subplots(1, 3)
    labels = ["wrk req/s\n(saturated)", "worker capacity\n(req per CPU-s)"]
    positions = range(len(labels))
    log_only = [overhead.log_only.rps, 1e6 / overhead.log_only_cpu_us]
    with_queue = [overhead.with_queue.rps, 1e6 / overhead.with_queue_cpu_us]
    left.bar([x - 0.2 for x in positions], log_only, width=0.4, color="#888", label="log only")
    left.bar([x + 0.2 for x in positions], with_queue, width=0.4, color="#36c", label="log + redis_streams")
    left.set_xticks(list(positions), labels)
    left.legend(fontsize=8)
    left.set_title(f"queue collector: {overhead.wrk_ratio_pct:.0f}% (wrk) / {overhead.ratio_pct:.0f}% (capacity)")
    middle.bar(["logged", "in stream", "lost"], [outage.logged, outage.in_stream, outage.lost], color="#3a3")
    middle.set_title(f"{outage.outage_s:.0f}s Redis outage: {outage.lost} lost, drained in {outage.drain_s:.1f}s")
    right.bar(["events/s"], [replay.events / replay.seconds], color="#c63")
    right.set_title(f"replay of {replay.events:,} events: {replay.seconds:.1f}s")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short scenarios (CI)")
    parser.add_argument("--record", action="store_true", help="write the results into bench/results")
    args = parser.parse_args(argv)
    console = Console()
    duration_s, outage_s, replay_events = (5, 10, 100_000) if args.quick else (20, 60, 1_000_000)
    try:
        with tempfile.TemporaryDirectory(prefix="trackpoint-queues-") as tmp:
            workdir = Path(tmp)
            overhead = measure_overhead(workdir, duration_s, console)
            outage = measure_outage(workdir, 5, outage_s, 10, console)
            replay = measure_replay(workdir, replay_events, console)
    except HarnessError as exc:
        console.print(f"[bold red]benchmark failed[/]: {exc}")
        return 1
    table = Table(title="delivery to a queue (redis_streams)")
    for column in ("check", "result", ""):
        table.add_column(column)
    results = checks(overhead, outage, replay)
    for name, value, passed in results:
        table.add_row(name, value, "[green]ok[/]" if passed else "[red]missed[/]")
    console.print(table)
    console.print(
        f"log only {overhead.log_only.rps:,.0f} req/s, with queue {overhead.with_queue.rps:,.0f} req/s; outage: "
        f"{outage.load.requests:,} requests, {outage.logged:,} logged, {outage.in_stream:,} in the stream, "
        f"max {outage.max_spooled_events:,} spooled; replay {replay.events / replay.seconds:,.0f} events/s"
    )
    commit, dirty = git_state()
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": {"commit": commit, "dirty": dirty},
        "quick": args.quick,
        "overhead": asdict(overhead) | {"ratio_pct": overhead.ratio_pct, "wrk_ratio_pct": overhead.wrk_ratio_pct},
        "outage": asdict(outage),
        "replay": asdict(replay),
        "checks": [{"name": name, "value": value, "passed": passed} for name, value, passed in results],
    }
    out_dir = RESULTS_DIR if args.record else Path(tempfile.gettempdir())
    (out_dir / QUEUES_JSON.name).write_text(json.dumps(report, indent=2) + "\n")
    chart(overhead, outage, replay, out_dir / QUEUES_PNG.name)
    console.print(f"results: {out_dir / QUEUES_JSON.name}, {out_dir / QUEUES_PNG.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
