"""The benchmarks' output: JSON results (`write_report`), and for run.py the judged targets, latest.json,
history.json, the latest.png chart and the summary table.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from rich.console import Console
from rich.table import Table

from harness import (
    HISTORY_JSON,
    LOAD_CPU,
    PIXEL_PATH,
    RESULTS_DIR,
    SERVER_CPU,
    TARGET_BRIEF_AVG_MS,
    TARGET_BRIEF_P99_MS,
    TARGET_RATIO_PCT,
    TARGET_RSS_MB,
    TARGET_TRACKER_RPS,
    THROUGHPUT_CONNECTIONS,
    USER_AGENT,
    BenchRun,
    Check,
    HarnessError,
    Settings,
    git_state,
    machine_info,
)


def write_report(report: dict[str, Any], name: str, record: bool) -> Path:
    """A benchmark's JSON results: into bench/results with --record, else into the temp directory."""
    out = (RESULTS_DIR if record else Path(tempfile.gettempdir())) / name
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out


# --------------------------------------------------------------------------- judging


def check(name: str, value: float, op: str, threshold: float, unit: str) -> Check:
    passed = value >= threshold if op == ">=" else value < threshold
    return Check(name, round(value, 3), op, threshold, unit, passed)


def evaluate(run: BenchRun) -> list[Check]:
    """The performance targets of the tracker."""
    brief = run.brief.result
    return [
        check("tracker throughput", run.tracker.rps, ">=", TARGET_TRACKER_RPS, "req/s"),
        check("tracker / nginx", run.ratio_pct, ">=", TARGET_RATIO_PCT, "%"),
        check("brief-load p99", brief.latency_p99_ms, "<", TARGET_BRIEF_P99_MS, "ms"),
        check("brief-load avg", brief.latency_avg_ms, "<", TARGET_BRIEF_AVG_MS, "ms"),
        check("worker RSS", run.memory.rss_mb, "<", TARGET_RSS_MB, "MB"),
    ]


# --------------------------------------------------------------------------- output files


def build_report(run: BenchRun, checks: Sequence[Check], settings: Settings, date: str) -> dict[str, Any]:
    """Content of latest.json."""
    commit, dirty = git_state()
    return {
        "schema": 1,
        "date": date,
        "git": {"commit": commit, "dirty": dirty},
        "machine": asdict(machine_info()),
        "settings": {
            "duration_s": settings.duration_s,
            "brief_duration_s": settings.brief_duration_s,
            "warmup_s": settings.warmup_s,
            "quick": settings.quick,
            "throughput_connections": THROUGHPUT_CONNECTIONS,
            "server_cpu": SERVER_CPU,
            "load_cpu": LOAD_CPU,
            "path": PIXEL_PATH,
            "user_agent": USER_AGENT,
        },
        "targets": {"tracker": asdict(run.tracker), "nginx": asdict(run.nginx)},
        "ratio": round(run.ratio_pct / 100, 4),
        "brief_load": asdict(run.brief),
        "nginx_brief_load": asdict(run.nginx_brief),
        "worker": asdict(run.memory),
        "rss_mb": round(run.memory.rss_mb, 1),
        "requests_served": run.memory.requests_served,
        "tracker_exit_code": run.tracker_exit_code,
        "foreign_cpu_pct": round(run.foreign_cpu_pct, 1),
        "checks": [asdict(c) for c in checks],
        "passed": all(c.passed for c in checks),
        "warnings": run.warnings,
    }


def history_record(report: dict[str, Any]) -> dict[str, Any]:
    """The compact line appended to history.json."""
    tracker, nginx = report["targets"]["tracker"], report["targets"]["nginx"]
    brief = report["brief_load"]["result"]
    commit = report["git"]["commit"]
    return {
        "date": report["date"],
        "commit": commit[:12] if commit else None,
        "dirty": report["git"]["dirty"],
        "quick": report["settings"]["quick"],
        "duration_s": report["settings"]["duration_s"],
        "tracker_rps": tracker["rps"],
        "nginx_rps": nginx["rps"],
        "ratio": report["ratio"],
        "tracker_p99_ms": tracker["latency_p99_ms"],
        "brief_rps": brief["rps"],
        "brief_avg_ms": brief["latency_avg_ms"],
        "brief_p99_ms": brief["latency_p99_ms"],
        "nginx_brief_p99_ms": report["nginx_brief_load"]["result"]["latency_p99_ms"],
        "rss_mb": report["rss_mb"],
        "requests_served": report["requests_served"],
        "foreign_cpu_pct": report["foreign_cpu_pct"],  # > 10: the machine was busy, numbers low
        "passed": report["passed"],
    }


def load_history() -> list[dict[str, Any]]:
    """Recorded runs; an absent file is an empty history, a corrupt one an error."""
    if not HISTORY_JSON.exists():
        return []
    try:
        history = json.loads(HISTORY_JSON.read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"cannot read {HISTORY_JSON}: {exc}") from exc
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise HarnessError(f"{HISTORY_JSON} is not a JSON list of objects")
    return history


def save_history(history: Sequence[dict[str, Any]]) -> None:
    """One record per line, so that diffs of the file stay readable."""
    lines = ",\n".join(f"  {json.dumps(record, sort_keys=True)}" for record in history)
    HISTORY_JSON.write_text(f"[\n{lines}\n]\n")


# --------------------------------------------------------------------------- plot

TRACKER_COLOR = "#1f77b4"
NGINX_COLOR = "#7f7f7f"
MAX_HISTORY_TICKS = 8
LOG_WIDTH = 120
THOUSANDS = FuncFormatter(lambda value, _pos: f"{value:,.0f}")


def render_plot(run: BenchRun, history: Sequence[dict[str, Any]], recorded: bool, title: str, path: Path) -> None:
    """Three panels: throughput, latency percentiles, recorded rps history."""
    fig = Figure(figsize=(17, 5.4), layout="constrained")
    FigureCanvasAgg(fig)  # Agg backend, no pyplot global state
    fig.suptitle(title)
    ax_rps, ax_latency, ax_history = fig.subplots(1, 3)
    plot_throughput(ax_rps, run)
    plot_latency(ax_latency, run)
    plot_history(ax_history, history, None if recorded else run)
    fig.savefig(path, dpi=100)


def plot_throughput(ax: Axes, run: BenchRun) -> None:
    values = [run.tracker.rps, run.nginx.rps]
    bars = ax.bar(["tracker", "nginx"], values, color=[TRACKER_COLOR, NGINX_COLOR])
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values])
    ax.axhline(TARGET_TRACKER_RPS, color="red", linestyle="--", label="tracker target")
    ax.set_ylim(0, max(*values, TARGET_TRACKER_RPS) * 1.3)  # headroom for labels and legend
    ax.set_title(f"Throughput, {THROUGHPUT_CONNECTIONS} connections (tracker = {run.ratio_pct:.0f}% of nginx)")
    ax.yaxis.set_major_formatter(THOUSANDS)
    ax.set_ylabel("requests/s")
    ax.legend(loc="upper right")


def plot_latency(ax: Axes, run: BenchRun) -> None:
    labels = ["tracker\nthroughput", "nginx\nthroughput", "tracker\nbrief load", "nginx\nbrief load"]
    results = [run.tracker, run.nginx, run.brief.result, run.nginx_brief.result]
    width = 0.38
    for offset, name, values in (
        (-width / 2, "p50", [r.latency_p50_ms for r in results]),
        (width / 2, "p99", [r.latency_p99_ms for r in results]),
    ):
        bars = ax.bar([i + offset for i in range(len(results))], values, width, label=name)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8)
    ax.axhline(TARGET_BRIEF_P99_MS, color="red", linestyle="--", label="brief-load p99 target")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yscale("log")
    top = max(TARGET_BRIEF_P99_MS, *(r.latency_p99_ms for r in results))
    ax.set_ylim(top=top * 4)  # headroom for the legend on the log scale
    plain = FuncFormatter(lambda value, _pos: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title("Latency percentiles")
    ax.legend(loc="upper right", ncols=3, fontsize=8)


def plot_history(ax: Axes, history: Sequence[dict[str, Any]], unrecorded: BenchRun | None) -> None:
    """Recorded runs as lines; an unrecorded (quick) run as hollow markers after them."""
    records = [r for r in history if _is_number(r.get("tracker_rps")) and _is_number(r.get("nginx_rps"))]
    ticks = [f"{str(r.get('date', ''))[:10]}\n{str(r.get('commit') or '')[:7]}" for r in records]
    for key, marker, color, name in (
        ("tracker_rps", "o", TRACKER_COLOR, "tracker"),
        ("nginx_rps", "s", NGINX_COLOR, "nginx"),
    ):
        ax.plot(range(len(records)), [r[key] for r in records], f"{marker}-", color=color, label=name)
        if unrecorded is not None:
            rps = unrecorded.tracker.rps if key == "tracker_rps" else unrecorded.nginx.rps
            ax.plot([len(records)], [rps], marker, mfc="none", color=color, label=f"{name}, this run")
    if unrecorded is not None:
        ticks.append("this run\n(not recorded)")
    ax.axhline(TARGET_TRACKER_RPS, color="red", linestyle="--", label="tracker target")
    shown = _thinned(len(ticks), MAX_HISTORY_TICKS)
    ax.set_xticks(shown, [ticks[i] for i in shown], fontsize=7, rotation=30, ha="right")
    ax.set_xlim(-0.5, max(len(ticks), 1) - 0.5)
    current = [unrecorded.tracker.rps, unrecorded.nginx.rps] if unrecorded else []
    highest = max([TARGET_TRACKER_RPS, *current, *(r[k] for r in records for k in ("tracker_rps", "nginx_rps"))])
    ax.set_ylim(0, highest * 1.15)
    ax.yaxis.set_major_formatter(THOUSANDS)
    ax.set_ylabel("requests/s")
    ax.set_title(f"History of recorded runs ({len(records)})")
    ax.legend(loc="lower left", fontsize=8)


def _thinned(count: int, most: int) -> list[int]:
    """At most about ``most`` evenly spaced indices of ``count`` items, always the last."""
    if count == 0:
        return []
    step = -(-count // most)
    shown = list(range(0, count, step))
    shown[-1] = count - 1  # the newest run replaces the tick that would crowd it
    return shown


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --------------------------------------------------------------------------- stdout


def print_summary(console: Console, run: BenchRun, checks: Sequence[Check]) -> None:
    scenarios = Table(title="trackpoint benchmark")
    for column in (
        "scenario",
        "req/s",
        "requests",
        "avg ms",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "errors",
    ):
        scenarios.add_column(column, justify="left" if column == "scenario" else "right")
    for name, r in run.scenarios:
        scenarios.add_row(
            name,
            f"{r.rps:,.0f}",
            f"{r.requests:,}",
            f"{r.latency_avg_ms:.3f}",
            f"{r.latency_p50_ms:.3f}",
            f"{r.latency_p90_ms:.3f}",
            f"{r.latency_p99_ms:.3f}",
            f"{r.latency_max_ms:.2f}",
            str(r.errors),
        )
    console.print(scenarios)
    m = run.memory
    console.print(
        f"worker pid {m.pid}: RSS {m.rss_idle_mb:.1f} MB idle, {m.rss_mb:.1f} MB after "
        f"{m.requests_served:,} requests; tracker exit code {run.tracker_exit_code}; "
        f"other processes used {run.foreign_cpu_pct:.0f}% of a core meanwhile"
    )
    targets = Table(title="targets")
    for column in ("target", "value", "goal", "result"):
        targets.add_column(column)
    for c in checks:
        result = "[green]PASS[/]" if c.passed else "[red]FAIL[/]"
        targets.add_row(c.name, f"{c.value:,.2f} {c.unit}", f"{c.op} {c.threshold:,g} {c.unit}", result)
    console.print(targets)
    for warning in run.warnings:
        console.print(f"warning: {warning}", style="yellow", markup=False)
    missed = sum(not c.passed for c in checks)
    console.print("all targets met" if not missed else f"{missed} of {len(checks)} targets missed")
