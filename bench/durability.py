"""Durability benchmark: what writing each event's line before its answer costs, and what `durability: power`
(answers also wait for the fsync of their group) costs on top.

For each setting of the log collector — `process` (the default: the line is in the page cache before the answer) and
`power` (and fsynced) — one tracker worker pinned to core 0 is measured as bench/run.py measures it: saturating
throughput (wrk, 64 connections, core 1), then the brief's paced load (~2,000 req/s over 20 connections) for its
latency percentiles. Settings alternate over the rounds and the medians are reported, so a noisy neighbour weighs on
both alike. Results: bench/results/durability.json with --record, a table on stdout.

Run ``.venv/bin/python bench/durability.py [--quick] [--rounds N] [--record]``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harness import (
    QUICK_DURATION_S,
    RESULTS_DIR,
    SETTLE_S,
    HarnessError,
    Settings,
    free_ports,
    git_state,
    run_tracker,
    verify_pixel,
)
from report import (
    write_report,
)
from run import (
    measure_brief_load,
    measure_throughput,
)
from soak import TRACKER_BIN

SETTINGS = ("process", "power")
FULL_DURATION_S = 15


def measure(setting: str, settings: Settings, console: Console) -> dict[str, float]:
    """One tracker with the log at `setting`: throughput, then the brief load."""
    extra = f"collectors:\n  log: {{type: log, durability: {setting}}}\n"
    with tempfile.TemporaryDirectory(prefix="trackpoint-durability-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        port, admin_port = free_ports(2)
        tracker = stack.enter_context(run_tracker(settings.tracker_bin, workdir, port, admin_port, extra))
        verify_pixel(tracker)
        throughput, _ = measure_throughput(tracker.url, settings, console, f"tracker ({setting})")
        time.sleep(SETTLE_S)
        brief = measure_brief_load(tracker.url, settings, workdir, console, f"tracker ({setting})").result
    if throughput.errors or brief.errors:
        raise HarnessError(f"{setting}: {throughput.errors + brief.errors} failed requests")
    return {
        "rps": throughput.rps,
        "throughput_p99_ms": throughput.latency_p99_ms,
        "brief_rps": brief.rps,
        "brief_avg_ms": brief.latency_avg_ms,
        "brief_p50_ms": brief.latency_p50_ms,
        "brief_p99_ms": brief.latency_p99_ms,
    }


def markdown(report: dict[str, Any]) -> str:
    medians = report["medians"]
    base = medians["process"]["rps"]
    lines = [
        f"Recorded {report['date'][:10]} (commit {str(report['git']['commit'])[:12]}), medians of {report['rounds']} "
        f"alternated rounds of {report['duration_s']} s:",
        "",
        "| log durability | req/s (one core) | vs process | avg at 2,000 req/s | p50 | p99 |",
        "|---|---|---|---|---|---|",
    ]
    for setting, median in medians.items():
        lines.append(
            f"| `{setting}` | {median['rps']:,.0f} | {median['rps'] / base:.0%} | {median['brief_avg_ms']:.2f} ms "
            f"| {median['brief_p50_ms']:.2f} ms | {median['brief_p99_ms']:.2f} ms |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"one round of {QUICK_DURATION_S} s runs (CI)")
    parser.add_argument("--rounds", type=int, default=None, help="alternated rounds (default 3, 1 with --quick)")
    parser.add_argument("--record", action="store_true", help="write bench/results/durability.json")
    args = parser.parse_args(argv)
    duration = QUICK_DURATION_S if args.quick else FULL_DURATION_S
    rounds = args.rounds or (1 if args.quick else 3)
    settings = Settings(
        duration_s=duration,
        brief_duration_s=duration,
        warmup_s=1 if args.quick else 2,
        quick=args.quick,
        record=args.record,
        tracker_bin=TRACKER_BIN,
    )
    console = Console(width=None if sys.stdout.isatty() else 120)
    try:
        for tool in ("wrk", "taskset"):
            if shutil.which(tool) is None:
                raise HarnessError(f"`{tool}` not found on PATH")
        runs: dict[str, list[dict[str, float]]] = {setting: [] for setting in SETTINGS}
        for _ in range(rounds):
            for setting in SETTINGS:
                runs[setting].append(measure(setting, settings, console))
    except HarnessError as exc:
        Console(stderr=True).print(f"benchmark harness failed: {exc}", style="bold red", markup=False)
        return 1
    medians = {setting: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for setting, rs in runs.items()}
    commit, dirty = git_state()
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": {"commit": commit, "dirty": dirty},
        "quick": args.quick,
        "rounds": rounds,
        "duration_s": duration,
        "medians": medians,
        "runs": runs,
    }
    table = Table(title=f"durability: medians of {rounds} alternated round(s), {duration} s runs")
    for column in ("log durability", "req/s", "vs process", "2,000 req/s: avg", "p50", "p99"):
        table.add_column(column, justify="right")
    base = medians["process"]["rps"]
    for setting, median in medians.items():
        table.add_row(
            setting,
            f"{median['rps']:,.0f}",
            f"{median['rps'] / base:.0%}" if base else "-",
            f"{median['brief_avg_ms']:.2f} ms",
            f"{median['brief_p50_ms']:.2f} ms",
            f"{median['brief_p99_ms']:.2f} ms",
        )
    console.print(table)
    console.print(f"wrote {write_report(report, 'durability.json', args.record)}")
    if args.record:  # the table the docs include (docs/benchmarks.md)
        (RESULTS_DIR / "durability.md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
