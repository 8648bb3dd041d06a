"""Benchmark of trackpoint against a reference nginx ``empty_gif`` (the scenarios of the headline chart).

The scenarios: saturating throughput for both targets, a paced ~2,000 req/s "brief load" on the tracker, worker
RSS after the throughput run (and a soak to 1M requests on full runs). The harness is harness.py, the output files
(``bench/results/latest.json``, ``history.json``, ``latest.png``) and the summary report.py.

Run ``.venv/bin/python bench/run.py [--duration S] [--quick] [--record]``.
Exit status is 0 whenever the benchmark ran, even if targets were missed;
1 when the harness itself failed (a server did not start, wrk missing, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from harness import (
    BRIEF_CONNECTIONS,
    BRIEF_TARGET_RPS,
    FULL_BRIEF_DURATION_S,
    FULL_DURATION_S,
    HISTORY_JSON,
    LATEST_JSON,
    LATEST_PNG,
    LOAD_CPU,
    MAX_FOREIGN_CPU_PCT,
    MEMORY_SOAK_REQUESTS,
    QUICK_DURATION_S,
    REPO_ROOT,
    RESULTS_DIR,
    SERVER_CPU,
    SETTLE_S,
    SOAK_RATE_SHARE,
    STOP_TIMEOUT_S,
    THROUGHPUT_CONNECTIONS,
    BenchRun,
    BriefLoad,
    HarnessError,
    Service,
    Settings,
    Terminated,
    WorkerMemory,
    WrkResult,
    cpu_snapshot,
    foreign_cpu_pct,
    free_ports,
    rss_mb,
    run_nginx,
    run_tracker,
    run_wrk,
    unwind_on_sigterm,
    verify_pixel,
    worker_pid,
    write_pacing_script,
    write_unique_imp_script,
)
from report import (
    LOG_WIDTH,
    build_report,
    evaluate,
    history_record,
    load_history,
    print_summary,
    render_plot,
    save_history,
)

# --------------------------------------------------------------------------- scenarios


def measure_throughput(url: str, settings: Settings, console: Console, name: str) -> tuple[WrkResult, int]:
    """Warm up, then saturate ``url``; return the result and all requests sent."""
    console.print(f"[bold]{name}[/]: warm-up {settings.warmup_s}s, throughput {settings.duration_s}s")
    warmup = run_wrk(url, settings.warmup_s, THROUGHPUT_CONNECTIONS)
    result = run_wrk(url, settings.duration_s, THROUGHPUT_CONNECTIONS)
    return result, warmup.requests + result.requests


def measure_brief_load(url: str, settings: Settings, workdir: Path, console: Console, name: str) -> BriefLoad:
    """~BRIEF_TARGET_RPS spread over BRIEF_CONNECTIONS paced connections."""
    delay_ms = round(BRIEF_CONNECTIONS * 1000 / BRIEF_TARGET_RPS)
    script = write_pacing_script(workdir / "pacing.lua", delay_ms)
    console.print(
        f"[bold]{name} brief load[/]: {BRIEF_CONNECTIONS} connections x {delay_ms} ms delay, "
        f"{settings.brief_duration_s}s"
    )
    result = run_wrk(url, settings.brief_duration_s, BRIEF_CONNECTIONS, script)
    return BriefLoad(BRIEF_CONNECTIONS, delay_ms, BRIEF_TARGET_RPS, result)


def soak(url: str, requests: int, rps: float, workdir: Path, console: Console) -> int:
    """More load, each request with a new impression id, until about ``requests`` more have been served."""
    duration_s = max(2, math.ceil(requests / max(rps * SOAK_RATE_SHARE, 1.0)))
    console.print(f"[bold]tracker soak[/]: unique impression ids for {duration_s}s (memory after 1M requests)")
    script = write_unique_imp_script(workdir / "unique.lua")
    base = url.split("/i?", 1)[0] + "/"
    return run_wrk(base, duration_s, THROUGHPUT_CONNECTIONS, script).requests


def measure_tracker(
    tracker: Service, settings: Settings, workdir: Path, console: Console
) -> tuple[WrkResult, WorkerMemory, BriefLoad]:
    """Throughput, worker RSS right after it, then the paced brief load."""
    pid = worker_pid(tracker)
    rss_idle = rss_mb(pid)
    result, served = measure_throughput(tracker.url, settings, console, "tracker")
    if not settings.quick and served < MEMORY_SOAK_REQUESTS:
        served += soak(tracker.url, MEMORY_SOAK_REQUESTS - served, result.rps, workdir, console)
    memory = WorkerMemory(pid, sorted(os.sched_getaffinity(pid)), rss_idle, rss_mb(pid), served)
    time.sleep(SETTLE_S)
    return result, memory, measure_brief_load(tracker.url, settings, workdir, console, "tracker")


def run_benchmark(settings: Settings, console: Console) -> BenchRun:
    """Start both servers, measure them, stop them (also on errors)."""
    with (
        tempfile.TemporaryDirectory(prefix="trackpoint-bench-") as tmp,
        contextlib.ExitStack() as servers,
    ):
        workdir = Path(tmp)
        port, admin_port, nginx_port = free_ports(3)
        tracker = servers.enter_context(run_tracker(settings.tracker_bin, workdir / "tracker", port, admin_port))
        nginx = servers.enter_context(run_nginx(workdir / "nginx", nginx_port))
        run = measure_all(settings, console, workdir, tracker, nginx)
        servers.close()  # stop now, so the tracker's exit code can be reported
    run = replace(run, tracker_exit_code=tracker.exit_code)
    run.warnings.extend(collect_warnings(run, (tracker, nginx)))
    return run


def measure_all(settings: Settings, console: Console, workdir: Path, tracker: Service, nginx: Service) -> BenchRun:
    """nginx throughput, then the tracker's scenarios; watch for CPU used by others."""
    verify_pixel(tracker)
    verify_pixel(nginx)
    servers = (tracker.proc.pid, nginx.proc.pid)  # each leads its own process group
    cpu_before = cpu_snapshot(servers)
    nginx_result, _ = measure_throughput(nginx.url, settings, console, "nginx")
    time.sleep(SETTLE_S)
    nginx_brief = measure_brief_load(nginx.url, settings, workdir, console, "nginx")
    time.sleep(SETTLE_S)
    tracker_result, memory, brief = measure_tracker(tracker, settings, workdir, console)
    foreign = foreign_cpu_pct(cpu_before, cpu_snapshot(servers))
    return BenchRun(tracker_result, nginx_result, brief, nginx_brief, memory, None, foreign, [])


def collect_warnings(run: BenchRun, services: Sequence[Service]) -> list[str]:
    """Things that make the numbers suspect without being a target miss."""
    warnings = [
        f"{name}: {result.non_2xx} non-2xx responses, {result.socket_errors} socket errors"
        for name, result in run.scenarios
        if result.errors
    ]
    for service in services:
        if service.exit_code == -signal.SIGKILL:
            warnings.append(f"{service.name} did not stop within {STOP_TIMEOUT_S:.0f}s (killed)")
        elif service.exit_code != 0:
            warnings.append(f"{service.name} exited with code {service.exit_code} on SIGTERM")
        if service.left_processes:
            warnings.append(f"{service.name} left processes behind after stopping (killed)")
    if run.memory.cpu_affinity != [SERVER_CPU]:
        warnings.append(f"tracker worker ran on CPUs {run.memory.cpu_affinity}, not {SERVER_CPU}")
    if run.foreign_cpu_pct > MAX_FOREIGN_CPU_PCT:
        warnings.append(
            f"other processes used {run.foreign_cpu_pct:.0f}% of a core during the measurements: "
            "the machine was not quiet, numbers are likely too low"
        )
    return warnings


# --------------------------------------------------------------------------- main


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument(
        "--duration",
        type=positive_int,
        help=f"seconds of each throughput run (default {FULL_DURATION_S}, {QUICK_DURATION_S} with --quick)",
    )
    parser.add_argument(
        "--brief-duration",
        type=positive_int,
        help=f"seconds of the brief-load run (default {FULL_BRIEF_DURATION_S}, {QUICK_DURATION_S} with --quick)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short runs for CI; not added to history.json unless --record"
    )
    parser.add_argument(
        "--record", action="store_true", help="append a --quick run to history.json (full runs always are)"
    )
    parser.add_argument(
        "--tracker-bin",
        type=Path,
        default=Path(sys.prefix) / "bin" / "trackpoint",
        help="trackpoint executable (default: the one of this venv)",
    )
    args = parser.parse_args(argv)
    duration = args.duration or (QUICK_DURATION_S if args.quick else FULL_DURATION_S)
    brief = args.brief_duration or (QUICK_DURATION_S if args.quick else FULL_BRIEF_DURATION_S)
    return Settings(
        duration_s=duration,
        brief_duration_s=brief,
        warmup_s=max(1, min(3, duration // 10)),
        quick=args.quick,
        record=args.record or not args.quick,
        tracker_bin=args.tracker_bin,
    )


def preflight(settings: Settings) -> None:
    """Fail early, with a clear message, on anything the run cannot do without."""
    for tool in ("wrk", "nginx", "taskset"):
        if shutil.which(tool) is None:
            raise HarnessError(f"`{tool}` not found on PATH")
    if not os.access(settings.tracker_bin, os.X_OK):
        raise HarnessError(
            f"tracker executable {settings.tracker_bin} not found; install the project into "
            "the venv (pip install -e .) or pass --tracker-bin"
        )
    cpus = os.sched_getaffinity(0)
    if not {SERVER_CPU, LOAD_CPU} <= cpus:
        raise HarnessError(f"needs CPUs {SERVER_CPU} and {LOAD_CPU}; this process may use {sorted(cpus)}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)


def publish(run: BenchRun, settings: Settings, history: list[dict[str, Any]], date: str, console: Console) -> None:
    """Write latest.json, maybe history.json, latest.png, and print the summary."""
    checks = evaluate(run)
    report = build_report(run, checks, settings, date)
    LATEST_JSON.write_text(json.dumps(report, indent=2) + "\n")
    if settings.record:
        history.append(history_record(report))
        save_history(history)
    commit = report["git"]["commit"]
    title = f"trackpoint benchmark {date}  commit {commit[:12] if commit else 'n/a'}"
    title += "  (quick)" if settings.quick else ""
    if run.foreign_cpu_pct > MAX_FOREIGN_CPU_PCT:
        title += f"  - machine busy: other processes used {run.foreign_cpu_pct:.0f}% of a core"
    render_plot(run, history, settings.record, title, LATEST_PNG)
    print_summary(console, run, checks)
    written = [LATEST_JSON, LATEST_PNG, *([HISTORY_JSON] if settings.record else [])]
    console.print("wrote " + ", ".join(str(p.relative_to(REPO_ROOT)) for p in written))


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    unwind_on_sigterm()
    # rich would squeeze the tables into 80 columns when stdout is not a terminal (CI logs)
    console = Console(width=None if sys.stdout.isatty() else LOG_WIDTH)
    errors = Console(stderr=True, width=None if sys.stderr.isatty() else LOG_WIDTH)
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    try:
        preflight(settings)
        history = load_history()
        run = run_benchmark(settings, console)
        publish(run, settings, history, date, console)
    except HarnessError as exc:
        errors.print(f"benchmark harness failed: {exc}", style="bold red", markup=False)
        return 1
    except KeyboardInterrupt:
        errors.print("interrupted; servers stopped", style="bold red")
        return 128 + signal.SIGINT
    except Terminated:
        errors.print("terminated; servers stopped", style="bold red")
        return 128 + signal.SIGTERM
    return 0


if __name__ == "__main__":
    sys.exit(main())
