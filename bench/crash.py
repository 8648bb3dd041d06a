"""Crash benchmark: 6 SIGKILLs of a worker under load at 80% of the maximum throughput; acknowledged events missing
from the log afterwards are counted (the target is 0, issue 12).

The tracker runs 2 workers, unpinned (the default layout of a 2-core machine). Its maximum is measured first, with
wrk (unique impression ids, 64 connections, from core 1, as run.py loads). Then client processes send impressions
with distinct ids at 85% of that maximum (the target is 80%) and record every one answered 2xx. A Python client
cannot keep one HTTP/1.1 request in flight per connection at that rate, so each connection pipelines a batch of
requests (answers come back in order, so each answer is matched to its id); the achieved rate is reported next to the
maximum. Meanwhile a worker is killed with SIGKILL 6 times, alternating slots, each time after its replacement is
ready and has served for a while. The tracker is then stopped and its log read back with the project's reader.

With ``--reloads N`` the same load meets N SIGHUP reloads instead (issue 12: 20): no request may be refused and no
acknowledged event missing; results then go to reload.json.

Run ``.venv/bin/python bench/crash.py [--quick] [--record] [--reloads N]``; results go to bench/results/crash.json
with ``--record``, else to the temp directory. Exit 0 when it ran, targets met or not; 1 when it could not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as StopEvent
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness import (
    RESULTS_DIR,
    THROUGHPUT_CONNECTIONS,
    USER_AGENT,
    HarnessError,
    Service,
    admin_get,
    free_ports,
    git_state,
    run_wrk,
    start_service,
    wait_ready,
    write_unique_imp_script,
)
from report import (
    write_report,
)
from soak import TRACKER_BIN
from trackpoint.collectors.log.reader import ReadStats, read_events

CRASH_JSON = RESULTS_DIR / "crash.json"
WORKERS = 2
KILLS = 6
TARGET_LOAD_SHARE = 0.8  # of the maximum throughput
LOAD_SHARE = 0.85  # what the clients aim at: the seconds a worker is down cost some
CLIENT_PROCESSES = 2
CONNECTIONS = 16  # per client process
PIPELINE = 16  # requests in flight per connection
READY_TIMEOUT_S = 30.0
REPORT_TIMEOUT_S = 60.0
TARGET_MISSING = 0


# --------------------------------------------------------------------------- the client (its own processes)


@dataclass
class ClientResult:
    acknowledged: list[str] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)  # "<status> <reason>" of non-2xx answers
    unanswered: int = 0  # sent, no answer before the connection broke (not acknowledged)
    seconds: float = 0.0


def _answers(buffer: bytearray) -> Iterator[tuple[int, str, bool]]:
    """(status, reject reason, closes) of each whole response at the start of `buffer`, consumed as they are read."""
    while (end := buffer.find(b"\r\n\r\n")) >= 0:
        head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
        total = end + 4 + int(headers.get("content-length", "0"))
        if len(buffer) < total:
            return
        del buffer[:total]
        closes = headers.get("connection", "").lower() == "close"
        yield int(head[0].split()[1]), headers.get("x-reject-reason", ""), closes


async def _connection(name: str, port: int, rate: float, stop: StopEvent, result: ClientResult) -> None:
    """Batches of PIPELINE requests at `rate` requests/s, every answer matched to its impression id."""
    interval = PIPELINE / rate
    sequence = 0
    next_at = time.monotonic()
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        try:
            while not stop.is_set():
                imps = [f"{name}-{sequence + n}" for n in range(PIPELINE)]
                sequence += PIPELINE
                writer.write(b"".join(
                    f"GET /i?imp={imp}&cid=c1&crid=cr9&pub=p7 HTTP/1.1\r\nHost: t\r\nUser-Agent: {USER_AGENT}\r\n\r\n"
                    .encode() for imp in imps
                ))  # fmt: skip
                buffer = bytearray()
                answered = 0
                closes = False
                while answered < len(imps) and not closes:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    buffer += chunk
                    for status, reason, closes in _answers(buffer):
                        if 200 <= status < 300:
                            result.acknowledged.append(imps[answered])
                        else:
                            result.refused[f"{status} {reason}"] += 1
                        answered += 1
                        if closes:
                            break
                result.unanswered += len(imps) - answered
                if answered < len(imps):
                    break
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        except OSError:
            pass
        finally:
            writer.close()
        next_at = time.monotonic()


def _client_process(number: int, port: int, rate: float, stop: StopEvent, report: Connection) -> None:
    import uvloop

    result = ClientResult()

    async def run() -> None:
        started = time.monotonic()
        per_connection = rate / CONNECTIONS
        await asyncio.gather(
            *(_connection(f"p{number}c{c}", port, per_connection, stop, result) for c in range(CONNECTIONS))
        )
        result.seconds = time.monotonic() - started

    uvloop.run(run())
    report.send(result)
    report.close()


# --------------------------------------------------------------------------- the tracker and the kills


@contextlib.contextmanager
def tracker(workdir: Path) -> Iterator[tuple[Service, int]]:
    port, admin_port = free_ports(2)
    (workdir / "trackpoint.yaml").write_text(json.dumps({"data_dir": str(workdir / "data")}))
    argv = [str(TRACKER_BIN), "run", "-w", str(WORKERS), "-p", str(port), "--admin-port", str(admin_port)]
    argv += ["-c", str(workdir / "trackpoint.yaml")]
    with start_service("tracker", f"http://127.0.0.1:{port}/", argv, workdir, signal.SIGTERM) as service:
        wait_ready(service, f"http://127.0.0.1:{admin_port}/readyz")
        yield service, admin_port


def workers(service: Service) -> list[int]:
    pid = service.proc.pid
    return sorted(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())


def kill_and_replace(service: Service, admin_port: int, victim: int) -> float:
    """SIGKILL ``victim``; seconds until its replacement is ready (/readyz 200 with all workers)."""
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    while victim in (alive := workers(service)) or len(alive) < WORKERS:
        if time.monotonic() - killed_at > READY_TIMEOUT_S:
            raise HarnessError(f"worker {victim} not replaced in {READY_TIMEOUT_S:.0f}s:\n{service.log_tail()}")
        time.sleep(0.01)
    wait_ready(service, f"http://127.0.0.1:{admin_port}/readyz")
    return time.monotonic() - killed_at


def counter(admin_port: int, workdir: Path, name: str) -> int:
    _, body = admin_get(f"http://127.0.0.1:{admin_port}/metrics", workdir / "data")
    for line in body.decode().splitlines():
        if line.startswith(f"{name} "):
            return int(float(line.split()[1]))
    return 0


def restarts(admin_port: int, workdir: Path) -> int:
    return counter(admin_port, workdir, "trackpoint_worker_restarts_total")


def reload_and_wait(service: Service, admin_port: int, workdir: Path) -> float:
    """SIGHUP to the supervisor; seconds until the reload is counted and the new workers are ready."""
    before = counter(admin_port, workdir, "trackpoint_reloads_total")
    started = time.monotonic()
    os.kill(service.proc.pid, signal.SIGHUP)
    while counter(admin_port, workdir, "trackpoint_reloads_total") <= before:
        if time.monotonic() - started > READY_TIMEOUT_S:
            raise HarnessError(f"reload not done in {READY_TIMEOUT_S:.0f}s:\n{service.log_tail()}")
        time.sleep(0.02)
    wait_ready(service, f"http://127.0.0.1:{admin_port}/readyz")
    return time.monotonic() - started


@dataclass(frozen=True)
class CrashRun:
    max_rps: float
    target_rps: float
    achieved_rps: float
    load_seconds: float
    kills: int
    restarts: int
    replaced_s: list[float]
    acknowledged: int
    missing: int
    missing_examples: list[str]
    refused: dict[str, int]
    unanswered: int
    torn_lines: int
    tracker_exit_code: int | None


def run_crash(workdir: Path, max_s: int, between_kills_s: float, console: Console, reloads: int = 0) -> CrashRun:
    """SIGKILLs of workers under load; with `reloads`, that many SIGHUP reloads instead."""
    with tracker(workdir) as (service, admin_port):
        script = write_unique_imp_script(workdir / "max.lua", "max")
        max_rps = run_wrk(service.url, max_s, THROUGHPUT_CONNECTIONS, script).rps
        target = LOAD_SHARE * max_rps
        disruption = f"{reloads} SIGHUP reloads" if reloads else f"{KILLS} SIGKILLs"
        console.print(f"maximum {max_rps:,.0f} req/s (wrk); load at {target:,.0f} req/s, {disruption}")
        port = int(service.url.rsplit(":", 1)[1].strip("/"))
        context = multiprocessing.get_context("fork")
        stop = context.Event()
        pipes, clients = [], []
        for number in range(CLIENT_PROCESSES):
            receive, send = context.Pipe(duplex=False)
            process = context.Process(
                target=_client_process, args=(number, port, target / CLIENT_PROCESSES, stop, send), daemon=True
            )
            process.start()
            send.close()
            pipes.append(receive)
            clients.append(process)
        replaced: list[float] = []
        try:
            for kill in range(reloads or KILLS):
                time.sleep(between_kills_s)  # the replacement serves meanwhile
                if reloads:
                    replaced.append(reload_and_wait(service, admin_port, workdir))
                else:
                    alive = workers(service)
                    replaced.append(kill_and_replace(service, admin_port, alive[kill % len(alive)]))
            time.sleep(between_kills_s)
        finally:
            stop.set()
        results: list[ClientResult] = []
        for receive, process in zip(pipes, clients, strict=True):
            if not receive.poll(REPORT_TIMEOUT_S):
                process.kill()
                raise HarnessError("a load client did not report")
            results.append(receive.recv())
            process.join(10)
        restarted = restarts(admin_port, workdir)
        service.stop(signal.SIGTERM)
    stats = ReadStats()
    logged = {event.dims.get("imp", "") for event in read_events([workdir / "data" / "logs"], stats)}
    acknowledged = [imp for result in results for imp in result.acknowledged]
    missing = [imp for imp in acknowledged if imp not in logged]
    seconds = max(result.seconds for result in results)
    return CrashRun(
        max_rps=max_rps,
        target_rps=round(target, 1),
        achieved_rps=round(len(acknowledged) / seconds, 1),
        load_seconds=round(seconds, 2),
        kills=len(replaced),
        restarts=restarted,
        replaced_s=[round(s, 3) for s in replaced],
        acknowledged=len(acknowledged),
        missing=len(missing),
        missing_examples=missing[:10],
        refused=dict(sum((result.refused for result in results), Counter())),
        unanswered=sum(result.unanswered for result in results),
        torn_lines=stats.skipped,
        tracker_exit_code=service.exit_code,
    )


def checks(run: CrashRun, reloads: int = 0) -> list[tuple[str, str, bool]]:
    share = run.achieved_rps / run.max_rps if run.max_rps else 0.0
    if reloads:
        refused = sum(run.refused.values())
        return [
            (
                "acknowledged events missing from the log",
                f"{run.missing:,} of {run.acknowledged:,}",
                run.missing <= TARGET_MISSING,
            ),
            ("refused requests (non-2xx answers)", f"{refused:,} {run.refused or ''}", refused == 0),
            (f"{reloads} SIGHUP reloads, each completed", f"{run.kills} reloads", run.kills == reloads),
            ("tracker exit code after the reloads", str(run.tracker_exit_code), run.tracker_exit_code == 0),
        ]
    return [
        (
            "acknowledged events missing from the log",
            f"{run.missing:,} of {run.acknowledged:,}",
            run.missing <= TARGET_MISSING,
        ),
        (
            f"load at >= {TARGET_LOAD_SHARE:.0%} of the maximum",
            f"{run.achieved_rps:,.0f} of {run.max_rps:,.0f} req/s ({share:.0%})",
            share >= TARGET_LOAD_SHARE,
        ),
        (
            f"{KILLS} SIGKILLs, each worker replaced",
            f"{run.kills} kills, {run.restarts} restarts",
            run.restarts == KILLS,
        ),
        ("tracker exit code after the kills", str(run.tracker_exit_code), run.tracker_exit_code == 0),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a shorter maximum and pauses (CI, under a minute)")
    parser.add_argument("--record", action="store_true", help="write crash.json (reload.json) into bench/results")
    parser.add_argument(
        "--reloads", type=int, default=0, help="that many SIGHUP reloads instead of the SIGKILLs (issue 12: 20)"
    )
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 140)
    max_s, between_kills_s = (5, 1.0) if args.quick else (10, 3.0)
    if args.reloads:
        between_kills_s /= 2
    try:
        with tempfile.TemporaryDirectory(prefix="trackpoint-crash-") as tmp:
            run = run_crash(Path(tmp), max_s, between_kills_s, console, args.reloads)
    except HarnessError as exc:
        console.print(f"[bold red]benchmark failed[/]: {exc}")
        return 1
    results = checks(run, args.reloads)
    table = Table(title=f"{args.reloads} SIGHUP reloads under load" if args.reloads else f"{KILLS} SIGKILLs under load")
    for column in ("check", "value", "result"):
        table.add_column(column)
    for name, value, passed in results:
        table.add_row(name, value, "[green]PASS[/]" if passed else "[red]FAIL[/]")
    console.print(table)
    console.print(
        f"unanswered (in flight at a kill, not acknowledged): {run.unanswered:,}; refused: {run.refused}; "
        f"torn log lines skipped: {run.torn_lines}; replacement ready after {run.replaced_s} s"
    )
    commit, dirty = git_state()
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": {"commit": commit, "dirty": dirty},
        "quick": args.quick,
        "reloads": args.reloads,
        "workers": WORKERS,
        "client": {"processes": CLIENT_PROCESSES, "connections": CONNECTIONS, "pipeline": PIPELINE},
        "run": asdict(run),
        "checks": [{"name": name, "value": value, "passed": passed} for name, value, passed in results],
    }
    out = write_report(report, "reload.json" if args.reloads else CRASH_JSON.name, args.record)
    missed = sum(not passed for _, _, passed in results)
    console.print(f"{'all checks met' if not missed else f'{missed} checks missed'}; results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
