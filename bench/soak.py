"""Soak benchmark: full load for 10 minutes (2 with --quick) on one pinned core, in 20 s windows (issue 12).

The tracker runs as in run.py (one worker on core 0, default configuration, temporary data_dir) and wrk saturates it
from core 1 with a new impression id on every request, one wrk run per window. A sampler reads, every second:

* the worker's RSS;
* the log directory: finished ``.jsonl`` files waiting for compression (every uncompressed file but the worker's
  current one), their bytes, and the directory's bytes (disk bytes per event = log dir bytes / events logged);
* the worker's CPU time, and the compression thread's (``/proc/<pid>/task/<tid>``: the thread named ``compress-*``,
  a name the log collector gives it in the OS) with the bytes that thread has read (``rchar``): the raw bytes it
  compressed.

CPU per event is split into serving (worker minus compression) and compression. Compression is reported twice: per
event served, and per event compressed (its CPU over the events in the bytes it read). When compression falls
behind, only the second is its cost; the first is what it got. The gate uses the second.

Run ``.venv/bin/python bench/soak.py [--quick] [--record] [--duration S]``; results go to bench/results/soak.json and
soak.png with ``--record``, else to the temp directory. Exit 0 when it ran, targets met or not; 1 when it could not.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from harness import (
    CLK_TCK,
    MAX_FOREIGN_CPU_PCT,
    RESULTS_DIR,
    SERVER_CPU,
    THROUGHPUT_CONNECTIONS,
    HarnessError,
    Service,
    WrkResult,
    active_files,
    cpu_seconds,
    cpu_snapshot,
    foreign_cpu_pct,
    free_ports,
    git_state,
    machine_info,
    pinned,
    rss_mb,
    run_wrk,
    start_service,
    wait_ready,
    worker_pid,
    write_unique_imp_script,
)
from report import (
    THOUSANDS,
    write_report,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
TRACKER_BIN = REPO_ROOT / ".venv" / "bin" / "trackpoint"
SOAK_JSON = RESULTS_DIR / "soak.json"
SOAK_PNG = RESULTS_DIR / "soak.png"

FULL_DURATION_S = 600
QUICK_DURATION_S = 120
WINDOW_S = 20
SAMPLE_S = 1.0
WARMUP_WINDOWS = 1  # RSS is judged against the end of the first window
MINUTE_S = 60
MAX_WRITE_MB_S = 40  # free disk needed: the log at full load, should nothing be compressed

TARGET_RPS_DRIFT = 0.10  # last minute within 10% of the first
TARGET_MAX_WAITING_FILES = 1
TARGET_RSS_GROWTH_MB = 20.0
TARGET_COMPRESSION_SHARE = 0.15  # compression CPU per event <= 15% of serving CPU per event

COMPRESSION_THREADS = ("compress-",)

# --------------------------------------------------------------------------- /proc and the log directory


@dataclass(frozen=True)
class Sample:
    """One reading of the worker and its log directory."""

    at_s: float  # since the load started
    rss_mb: float
    worker_cpu_s: float
    compression_cpu_s: float
    compression_read_bytes: int  # raw bytes the compression thread has read
    compression_threads: int  # threads found as compression threads (1 expected once a file was rotated)
    waiting_files: int
    waiting_bytes: int
    log_dir_bytes: int


def _thread_stats(pid: int) -> Iterator[tuple[str, list[str], Path]]:
    """(name, stat fields from field 3 on, task dir) of each thread of ``pid``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rpartition(")")[2].split()
            yield name, fields, task


def compression_cpu(pid: int) -> tuple[float, int, int]:
    """(CPU seconds, bytes read, thread count) of the worker's compression thread(s)."""
    cpu, read, threads = 0.0, 0, 0
    for name, fields, task in _thread_stats(pid):
        # fields[16] is proc(5)'s field 19, nice; 11 and 12 are utime and stime
        if name.startswith(COMPRESSION_THREADS):
            threads += 1
            cpu += (int(fields[11]) + int(fields[12])) / CLK_TCK
            with contextlib.suppress(OSError):
                io = dict(line.split(": ") for line in (task / "io").read_text().splitlines())
                read += int(io["rchar"])
    return cpu, read, threads


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # compressed and removed meanwhile
        return 0


def take_sample(pid: int, logs: Path, started: float) -> Sample:
    active = active_files(logs)
    waiting = active[:-1]
    cpu, read, threads = compression_cpu(pid)
    return Sample(
        at_s=round(time.monotonic() - started, 3),
        rss_mb=rss_mb(pid),
        worker_cpu_s=cpu_seconds(pid),
        compression_cpu_s=cpu,
        compression_read_bytes=read,
        compression_threads=threads,
        waiting_files=len(waiting),
        waiting_bytes=sum(map(_size, waiting)),
        log_dir_bytes=sum(_size(p) for p in logs.iterdir()),
    )


def line_bytes(logs: Path) -> float:
    """Mean length of a log line, from the tail of the newest uncompressed file (0 when there is none)."""
    active = active_files(logs)
    if not active:
        return 0.0
    with active[-1].open("rb") as log:
        size = log.seek(0, 2)
        log.seek(max(0, size - (1 << 20)))
        lines = log.read().split(b"\n")[1:-1]  # the first may be cut, the last is unfinished or empty
    return statistics.fmean(len(line) + 1 for line in lines) if lines else 0.0


class Sampler(threading.Thread):
    """Samples every SAMPLE_S until stopped; `take()` adds one now (window boundaries)."""

    def __init__(self, pid: int, logs: Path, started: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.logs, self.started = pid, logs, started
        self.samples: list[Sample] = []
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()

    def take(self) -> Sample:
        sample = take_sample(self.pid, self.logs, self.started)
        with self._lock:
            self.samples.append(sample)
        return sample

    def between(self, start_s: float, end_s: float) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if start_s <= s.at_s <= end_s]

    def run(self) -> None:
        while not self._done.wait(SAMPLE_S):
            try:
                self.take()
            except (OSError, HarnessError) as exc:  # the worker died: the main thread reports it
                self.error = exc
                return

    def stop(self) -> None:
        self._done.set()
        self.join()


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Window:
    """One 20 s window: wrk's result and what the samples inside it showed."""

    index: int
    start_s: float
    end_s: float
    rps: float
    requests: int
    p99_ms: float
    errors: int
    events_total: int  # acknowledged since the start
    rss_mb: float  # at the window's end
    rss_max_mb: float
    waiting_files_max: int
    waiting_bytes_max: int
    log_dir_bytes: int  # at the window's end
    disk_bytes_per_event: float
    serving_cpu_us_per_event: float
    compression_cpu_us_per_event: float  # per event served in the window
    compressed_mb: float  # raw MB the compression thread read in the window


def summarize_window(
    index: int, result: WrkResult, before: Sample, after: Sample, *, inside: Sequence[Sample], events_total: int
) -> Window:
    worker = after.worker_cpu_s - before.worker_cpu_s
    compression = after.compression_cpu_s - before.compression_cpu_s
    served = max(result.requests - result.non_2xx, 1)
    samples = [before, *inside, after]
    return Window(
        index=index,
        start_s=before.at_s,
        end_s=after.at_s,
        rps=result.rps,
        requests=result.requests,
        p99_ms=result.latency_p99_ms,
        errors=result.errors,
        events_total=events_total,
        rss_mb=after.rss_mb,
        rss_max_mb=max(s.rss_mb for s in samples),
        waiting_files_max=max(s.waiting_files for s in samples),
        waiting_bytes_max=max(s.waiting_bytes for s in samples),
        log_dir_bytes=after.log_dir_bytes,
        disk_bytes_per_event=round(after.log_dir_bytes / max(events_total, 1), 1),
        serving_cpu_us_per_event=round((worker - compression) / served * 1e6, 3),
        compression_cpu_us_per_event=round(compression / served * 1e6, 3),
        compressed_mb=round((after.compression_read_bytes - before.compression_read_bytes) / 1e6, 1),
    )


@contextlib.contextmanager
def tracker(workdir: Path, rotate_bytes: int | None) -> Iterator[tuple[Service, Path]]:
    """One worker pinned to SERVER_CPU with the default configuration (but ``rotate_bytes``, when given)."""
    port, admin_port = free_ports(2)
    data_dir = workdir / "data"
    config: dict[str, Any] = {"data_dir": str(data_dir)}
    if rotate_bytes is not None:
        config["collectors"] = {"log": {"type": "log", "rotate_bytes": rotate_bytes}}
    (workdir / "trackpoint.yaml").write_text(json.dumps(config))  # JSON is YAML
    argv = [*pinned(SERVER_CPU), str(TRACKER_BIN), "run", "-w", "1", "-p", str(port)]
    argv += ["--admin-port", str(admin_port), "-c", str(workdir / "trackpoint.yaml")]
    with start_service("tracker", f"http://127.0.0.1:{port}/", argv, workdir, signal.SIGTERM) as service:
        wait_ready(service, f"http://127.0.0.1:{admin_port}/readyz")
        yield service, data_dir / "logs"


@dataclass
class SoakRun:
    windows: list[Window]
    samples: list[Sample]
    line_bytes: float
    tracker_exit_code: int | None
    foreign_cpu_pct: float
    warnings: list[str]


def run_soak(workdir: Path, duration_s: int, rotate_bytes: int | None, console: Console) -> SoakRun:
    windows: list[Window] = []
    with tracker(workdir, rotate_bytes) as (service, logs):
        pid = worker_pid(service)
        cpu_before = cpu_snapshot((service.proc.pid,))
        started = time.monotonic()
        sampler = Sampler(pid, logs, started)
        before = sampler.take()
        sampler.start()
        events = 0
        try:
            for index in range(max(1, duration_s // WINDOW_S)):
                script = write_unique_imp_script(workdir / f"window-{index}.lua", f"w{index}")  # unique across windows
                result = run_wrk(service.url, WINDOW_S, THROUGHPUT_CONNECTIONS, script)
                after = sampler.take()
                events += result.requests - result.non_2xx
                inside = sampler.between(before.at_s, after.at_s)
                window = summarize_window(index, result, before, after, inside=inside, events_total=events)
                windows.append(window)
                console.print(
                    f"{window.end_s:6.0f}s  {window.rps:9,.0f} req/s  RSS {window.rss_mb:6.1f} MB  "
                    f"waiting {window.waiting_files_max} files ({window.waiting_bytes_max / 1e6:,.0f} MB)  "
                    f"disk {window.disk_bytes_per_event:6.1f} B/event  CPU/event serving "
                    f"{window.serving_cpu_us_per_event:5.1f} us, "
                    f"compression {window.compression_cpu_us_per_event:5.2f} us"
                )
                before = after
            if sampler.error is not None:
                raise HarnessError(f"sampling failed: {sampler.error}")
            raw_line = line_bytes(logs)
        finally:
            sampler.stop()
        foreign = foreign_cpu_pct(cpu_before, cpu_snapshot((service.proc.pid,)))
        service.stop(signal.SIGTERM)
    warnings = [f"window {w.index}: {w.errors} wrk errors" for w in windows if w.errors]
    if service.exit_code != 0:
        warnings.append(f"tracker exit code {service.exit_code} on SIGTERM (a compression backlog outlasts the stop)")
    if foreign > MAX_FOREIGN_CPU_PCT:
        warnings.append(f"other processes used {foreign:.0f}% of a core: the machine was not quiet")
    if not any(s.compression_threads for s in sampler.samples):
        warnings.append("no compression thread found in the worker (no rotation happened, or it is not named)")
    return SoakRun(windows, sampler.samples, raw_line, service.exit_code, foreign, warnings)


# --------------------------------------------------------------------------- judging


@dataclass(frozen=True)
class Check:
    name: str
    value: str
    goal: str
    passed: bool


def figures(run: SoakRun) -> dict[str, float | None]:
    """The run's headline numbers, behind the checks."""
    windows, samples = run.windows, run.samples
    per_minute = max(1, min(MINUTE_S // WINDOW_S, len(windows) // 2))  # short runs: halves, not overlapping
    first = statistics.fmean(w.rps for w in windows[:per_minute])
    last = statistics.fmean(w.rps for w in windows[-per_minute:])
    settled = windows[min(WARMUP_WINDOWS, len(windows)) - 1].rss_mb
    rss_growth = max(w.rss_max_mb for w in windows[WARMUP_WINDOWS:] or windows) - settled
    events = max(windows[-1].events_total, 1)
    worker_cpu = samples[-1].worker_cpu_s - samples[0].worker_cpu_s
    compression_cpu = samples[-1].compression_cpu_s - samples[0].compression_cpu_s
    serving = (worker_cpu - compression_cpu) / events * 1e6
    compressed_bytes = samples[-1].compression_read_bytes - samples[0].compression_read_bytes
    compressed_events = compressed_bytes / run.line_bytes if run.line_bytes else 0.0
    per_compressed = compression_cpu / compressed_events * 1e6 if compressed_events else None
    return {
        "first_minute_rps": round(first, 1),
        "last_minute_rps": round(last, 1),
        "rps_change": round(last / first - 1, 4) if first else None,
        "max_waiting_files": max(s.waiting_files for s in samples),
        "max_waiting_mb": round(max(s.waiting_bytes for s in samples) / 1e6, 1),
        "rss_settled_mb": settled,
        "rss_growth_mb": round(rss_growth, 2),
        "events": events,
        "line_bytes": round(run.line_bytes, 1),
        "disk_bytes_per_event": windows[-1].disk_bytes_per_event,
        "serving_cpu_us_per_event": round(serving, 3),
        "compression_cpu_us_per_event_served": round(compression_cpu / events * 1e6, 3),
        "compression_cpu_us_per_event_compressed": round(per_compressed, 3) if per_compressed is not None else None,
        "compression_share": round(per_compressed / serving, 4) if per_compressed is not None and serving else None,
        "compressed_mb": round(compressed_bytes / 1e6, 1),
        "compression_cpu_s": round(compression_cpu, 2),
    }


def checks(numbers: dict[str, Any]) -> list[Check]:
    change, share = numbers["rps_change"], numbers["compression_share"]
    return [
        Check(
            "last minute's throughput vs the first",
            f"{numbers['last_minute_rps']:,.0f} vs {numbers['first_minute_rps']:,.0f} req/s"
            + (f" ({change:+.1%})" if change is not None else ""),
            f"within {TARGET_RPS_DRIFT:.0%}",
            change is not None and abs(change) <= TARGET_RPS_DRIFT,
        ),
        Check(
            "finished files waiting for compression",
            f"at most {numbers['max_waiting_files']} ({numbers['max_waiting_mb']:,.0f} MB)",
            f"<= {TARGET_MAX_WAITING_FILES} at any sample",
            numbers["max_waiting_files"] <= TARGET_MAX_WAITING_FILES,
        ),
        Check(
            "worker RSS growth after warm-up",
            f"{numbers['rss_growth_mb']:+.1f} MB (from {numbers['rss_settled_mb']:.1f} MB)",
            f"<= {TARGET_RSS_GROWTH_MB:g} MB",
            numbers["rss_growth_mb"] <= TARGET_RSS_GROWTH_MB,
        ),
        Check(
            "compression CPU per event compressed / serving CPU per event",
            (
                f"{numbers['compression_cpu_us_per_event_compressed']:.2f} / "
                f"{numbers['serving_cpu_us_per_event']:.2f} us = {share:.1%}"
                if share is not None
                else "nothing compressed"
            ),
            f"<= {TARGET_COMPRESSION_SHARE:.0%}",
            share is not None and share <= TARGET_COMPRESSION_SHARE,
        ),
    ]


# --------------------------------------------------------------------------- report


def render_chart(run: SoakRun, numbers: dict[str, Any], title: str, path: Path) -> None:
    """Five panels over time (window ends, minutes), and the checks."""
    fig = Figure(figsize=(17, 9), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    axes = fig.subplots(2, 3)
    minutes = [w.end_s / MINUTE_S for w in run.windows]
    plot_throughput(axes[0][0], run, numbers, minutes)
    ax = axes[0][1]
    ax.plot(minutes, [w.rss_mb for w in run.windows], "o-", label="at window end")
    ax.plot(minutes, [w.rss_max_mb for w in run.windows], "^--", label="max in window")
    ax.axhline(numbers["rss_settled_mb"] + TARGET_RSS_GROWTH_MB, color="red", linestyle="--", label="limit")
    ax.set(title="Worker RSS", xlabel="minutes", ylabel="MB")
    ax.legend(fontsize=8)
    ax = axes[0][2]
    ax.step([s.at_s / MINUTE_S for s in run.samples], [s.waiting_files for s in run.samples], where="post")
    ax.axhline(TARGET_MAX_WAITING_FILES, color="red", linestyle="--", label="limit")
    ax.set(title="Finished files waiting for compression (1 s samples)", xlabel="minutes", ylabel="files")
    waiting_mb = ax.twinx()
    waiting_mb.plot([s.at_s / MINUTE_S for s in run.samples], [s.waiting_bytes / 1e6 for s in run.samples],
                    color="#ff7f0e", alpha=0.6)  # fmt: skip
    waiting_mb.set_ylabel("MB waiting (orange)")
    ax.legend(fontsize=8, loc="upper left")
    ax = axes[1][0]
    serving = [w.serving_cpu_us_per_event for w in run.windows]
    compression = [w.compression_cpu_us_per_event for w in run.windows]
    width = WINDOW_S / MINUTE_S * 0.8
    ax.bar(minutes, serving, width, label="serving")
    ax.bar(minutes, compression, width, bottom=serving, label="compression (per event served)")
    if numbers["compression_cpu_us_per_event_compressed"] is not None:
        ax.axhline(numbers["compression_cpu_us_per_event_compressed"], color="black", linestyle=":",
                   label="compression per event compressed (run)")  # fmt: skip
    ax.set(title="Worker CPU per event", xlabel="minutes", ylabel="µs")
    ax.legend(fontsize=8)
    ax = axes[1][1]
    ax.plot(minutes, [w.disk_bytes_per_event for w in run.windows], "o-", label="log dir bytes / events")
    ax.axhline(numbers["line_bytes"], color="grey", linestyle="--", label="uncompressed line")
    ax.set(title="Disk bytes per event", xlabel="minutes", ylabel="bytes")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax = axes[1][2]
    ax.axis("off")
    lines = [f"{'PASS' if c.passed else 'FAIL'}  {c.name}\n        {c.value} (goal {c.goal})" for c in checks(numbers)]
    ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=9)
    fig.savefig(path, dpi=100)


def plot_throughput(ax: Axes, run: SoakRun, numbers: dict[str, Any], minutes: list[float]) -> None:
    ax.plot(minutes, [w.rps for w in run.windows], "o-")
    first = numbers["first_minute_rps"]
    ax.axhspan(first * (1 - TARGET_RPS_DRIFT), first * (1 + TARGET_RPS_DRIFT), color="green", alpha=0.1,
               label=f"first minute ± {TARGET_RPS_DRIFT:.0%}")  # fmt: skip
    ax.set(title=f"Throughput per {WINDOW_S} s window", xlabel="minutes", ylabel="requests/s")
    ax.set_ylim(0, max(w.rps for w in run.windows) * 1.2)
    ax.yaxis.set_major_formatter(THOUSANDS)
    ax.legend(fontsize=8, loc="lower left")


def print_report(console: Console, run: SoakRun, results: list[Check]) -> None:
    table = Table(title="checks")
    for column in ("check", "value", "goal", "result"):
        table.add_column(column)
    for c in results:
        table.add_row(c.name, c.value, c.goal, "[green]PASS[/]" if c.passed else "[red]FAIL[/]")
    console.print(table)
    for warning in run.warnings:
        console.print(f"warning: {warning}", style="yellow", markup=False)
    missed = sum(not c.passed for c in results)
    console.print("all targets met" if not missed else f"{missed} of {len(results)} targets missed")


def preflight(duration_s: int, workdir: Path) -> None:
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            raise HarnessError(f"`{tool}` not found on PATH")
    if not TRACKER_BIN.exists():
        raise HarnessError(f"{TRACKER_BIN} not found: run scripts/install --dev")
    needed = duration_s * MAX_WRITE_MB_S * 1_000_000
    free = shutil.disk_usage(workdir).free
    if free < needed:
        raise HarnessError(
            f"{workdir} has {free / 1e9:.1f} GB free; a {duration_s} s soak may write {needed / 1e9:.0f} GB"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DURATION_S // MINUTE_S} minutes (CI)")
    parser.add_argument("--record", action="store_true", help="write soak.json and soak.png into bench/results")
    parser.add_argument(
        "--duration", type=int, help=f"seconds of load (default {FULL_DURATION_S}, quick {QUICK_DURATION_S})"
    )
    parser.add_argument("--rotate-bytes", type=int, help="the log collector's rotate_bytes (default: the tracker's)")
    args = parser.parse_args(argv)
    duration_s = args.duration or (QUICK_DURATION_S if args.quick else FULL_DURATION_S)
    console = Console(width=None if sys.stdout.isatty() else 140)
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    try:
        with tempfile.TemporaryDirectory(prefix="trackpoint-soak-") as tmp:
            preflight(duration_s, Path(tmp))
            console.print(
                f"[bold]soak[/]: {duration_s}s of full load in {WINDOW_S}s windows, one worker on core {SERVER_CPU}"
            )
            run = run_soak(Path(tmp), duration_s, args.rotate_bytes, console)
    except HarnessError as exc:
        console.print(f"[bold red]benchmark failed[/]: {exc}")
        return 1
    numbers = figures(run)
    results = checks(numbers)
    print_report(console, run, results)
    commit, dirty = git_state()
    report = {
        "date": date,
        "git": {"commit": commit, "dirty": dirty},
        "machine": asdict(machine_info()),
        "quick": args.quick,
        "duration_s": duration_s,
        "window_s": WINDOW_S,
        "rotate_bytes": args.rotate_bytes,
        "connections": THROUGHPUT_CONNECTIONS,
        "figures": numbers,
        "checks": [asdict(c) for c in results],
        "passed": all(c.passed for c in results),
        "tracker_exit_code": run.tracker_exit_code,
        "foreign_cpu_pct": round(run.foreign_cpu_pct, 1),
        "warnings": run.warnings,
        "windows": [asdict(w) for w in run.windows],
        "samples": [asdict(s) for s in run.samples],
    }
    out_dir = write_report(report, SOAK_JSON.name, args.record).parent
    title = f"trackpoint soak {date}  commit {commit[:12] if commit else 'n/a'}  {duration_s / MINUTE_S:g} min"
    render_chart(run, numbers, title + ("  (quick)" if args.quick else ""), out_dir / SOAK_PNG.name)
    console.print(f"results: {out_dir / SOAK_JSON.name}, {out_dir / SOAK_PNG.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
