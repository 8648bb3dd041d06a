"""MkDocs hook (mkdocs.yml `hooks:`): publishes the benchmark charts of bench/results/ as files of the docs site,
and the numbers of each recorded run as a table beside its chart.

The charts are committed once, beside the results they plot; the site takes them from here at build time, so
docs/benchmarks.md always shows the latest recorded run and no chart is ever copied into docs/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

RESULTS = Path(__file__).resolve().parent / "results"
# Where the charts appear in the site; pages link them as e.g. `assets/bench/latest.png` (relative to docs/).
SITE_FOLDER = "assets/bench"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Adds every recorded chart; a page linking a chart that no run has recorded fails the strict build."""
    for chart in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"{SITE_FOLDER}/{chart.name}", abs_src_path=str(chart)))
    return files


# --- the numbers beside each chart ------------------------------------------------------------------------------

# A line `<!-- bench-table: NAME -->` in a page becomes the table of bench/results/NAME.json, so the numbers under a
# chart are the run the chart plots, never a copy typed in by hand.
TABLE_MARKER = re.compile(r"^<!-- bench-table: (?P<name>[a-z_]+) -->$", re.MULTILINE)


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Replaces every table marker with the table of its recorded run; a marker without a run fails the build."""
    return TABLE_MARKER.sub(lambda match: results_table(match["name"]), markdown)


def results_table(name: str) -> str:
    """The recorded run `name` (bench/results/NAME.json) as a Markdown table, with its date and commit."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise PluginError(f"bench-table: no recorded run {path}")
    run = json.loads(path.read_text(encoding="utf-8"))
    tables = {
        "latest": _edge_rows,
        "flood": _flood_rows,
        "peers": _peers_rows,
        "batch": _batch_rows,
        "server_time": _server_time_rows,
    }
    rows = tables.get(name, _check_rows)(run)
    commit = str(run.get("git", {}).get("commit", ""))[:7]
    quick = " (`--quick`)" if run.get("quick") or run.get("settings", {}).get("quick") else ""
    caption = (
        f"*Recorded {str(run.get('date', ''))[:10]}, commit {commit or 'unknown'}{quick}; `bench/results/{name}.json`.*"
    )
    return "\n".join([*rows, "", caption])


def _ms(value: float) -> str:
    return f"{value:.2f} ms"


def _edge_rows(run: dict[str, Any]) -> list[str]:
    rows = ["| target | requests/s | p50 | p90 | p99 | non-2xx |", "|---|---:|---:|---:|---:|---:|"]
    labels = {
        "tracker": "tracker, `GET /i`, full default pipeline, one worker",
        "nginx": "nginx `empty_gif`, one worker",
    }
    for target, result in run["targets"].items():
        rows.append(
            f"| {labels.get(target, target)} | {result['rps']:,.0f} | {_ms(result['latency_p50_ms'])} | "
            f"{_ms(result['latency_p90_ms'])} | {_ms(result['latency_p99_ms'])} | {result['non_2xx']:,} |"
        )
    brief = run.get("brief_load", {}).get("result")
    if brief:
        rows.append(
            f"| tracker at ~{run['brief_load']['target_rps']:,} requests/s (paced) | {brief['rps']:,.0f} | "
            f"{_ms(brief['latency_p50_ms'])} | {_ms(brief['latency_p90_ms'])} | {_ms(brief['latency_p99_ms'])} | "
            f"{brief['non_2xx']:,} |"
        )
    rows.append(f"| **tracker / nginx** | **{run['ratio']:.0%}** | | | | |")
    return rows


def _flood_rows(run: dict[str, Any]) -> list[str]:
    rows = ["| scenario | valid requests/s | valid p99 | valid answered 2xx | lost |", "|---|---:|---:|---:|---:|"]
    for scenario in run["scenarios"]:
        valid = scenario["valid"]
        rows.append(
            f"| {scenario['name']} | {valid['rps']:,.0f} | {_ms(valid['latency_p99_ms'])} | "
            f"{scenario['success_pct']:.2f}% | {scenario['lost']:,} |"
        )
    return rows


# The four-stack benchmark's two servers that do no work (bench/peers.py), named for what they stand for.
PEERS_NO_WORK = {
    "python-floor": "Python on uvloop, answering only (the runtime's floor)",
    "nginx": "nginx `empty_gif` (the load generator's ceiling)",
}


def _peers_rows(run: dict[str, Any]) -> list[str]:
    rows = [
        "| stack | requests/s (median) | CPU µs per request | CPU µs per request at 2,000/s (in user space) | "
        "p50 / p99 at 2,000/s | p99 at 50% of its max | p99 at 80% of its max |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, stack in run["stacks"].items():
        rates = stack.get("rates", [])
        brief = rates[0] if rates else None
        cells = ["-", "-"] if brief is None else [_paced_cpu(brief), f"{_ms(brief['p50_ms'])} / {_ms(brief['p99_ms'])}"]
        cells += [
            _ms(rate["p99_ms"]) + (" (generator-bound)" if rate.get("generator_bound") else "") for rate in rates[1:3]
        ] or ["-", "-"]
        label = PEERS_NO_WORK.get(name, name)
        rows.append(f"| {label} | {stack['rps_median']:,.0f} | {stack['cpu_us_median']:.1f} | {' | '.join(cells)} |")
    notes = []
    pairs = run.get("brief_rate_rounds")
    if pairs:  # recorded since the benchmark counts them
        counts = ", ".join(f"{name} {won} of {rounds}" for name, (won, rounds) in pairs.items())
        notes.append(f"Rounds at 2,000 requests/s in which trackpoint's p99 was at most the peer's: {counts}.")
    waiting = run["stacks"].get("trackpoint", {}).get("files_waiting_max")
    if waiting is not None:  # recorded since the benchmark checks it
        notes.append(f"trackpoint's log compression: at most {waiting} finished file(s) waiting when a run ended.")
    return [*rows, "", " ".join(notes)] if notes else rows


def _server_time_rows(run: dict[str, Any]) -> list[str]:
    """bench/server_time.py: each stack's read-to-answer percentiles, medians of the rounds, and its rounds' p99."""
    untraced = "awake_p99_ms" in next(iter(run["medians"].values()))  # recorded since the untraced runs
    rows = [
        "| stack | read to answer p50 µs | p90 | p99 | p99.9 | the rounds' p99 | end-to-end p50 / p99 (traced) |"
        + (" untraced p50 / p99, CPU µs a request: as the VM is | cores kept awake |" if untraced else ""),
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if untraced else ""),
    ]
    for name, median in run["medians"].items():
        rounds = [stack_round["p99_us"] for stack_round in run["runs"][name]]
        figures = " | ".join(f"{median[key]:,.0f}" for key in ("p50_us", "p90_us", "p99_us", "p99.9_us"))
        row = (
            f"| {PEERS_NO_WORK.get(name, name)} | {figures} | {min(rounds):,.0f} to {max(rounds):,.0f} | "
            f"{_ms(median['end_to_end_p50_ms'])} / {_ms(median['end_to_end_p99_ms'])} |"
        )
        for regime in ("halting", "awake") if untraced else ():
            row += (
                f" {median[f'{regime}_p50_ms']:.3f} / {median[f'{regime}_p99_ms']:.3f} ms, "
                f"{median[f'{regime}_cpu_us']:.1f} |"
            )
        rows.append(row)
    return rows


def _paced_cpu(rate: dict[str, Any]) -> str:
    """CPU per request at a constant rate, with its user-space part where the run recorded it."""
    user = rate.get("user_cpu_us_per_request")
    return f"{rate['cpu_us_per_request']:.1f}" + ("" if user is None else f" ({user:.1f})")


def _batch_rows(run: dict[str, Any]) -> list[str]:
    rows = ["| requests | events/s | worker CPU per event |", "|---|---:|---:|"]
    labels = {
        "single": "one event per request, `POST /t`",
        "batch": f"{run['batch_items']} events per request, `POST /t/batch`",
    }
    for name, label in labels.items():
        rows.append(f"| {label} | {run[name]['events_per_s']:,.0f} | {run[name]['cpu_us_per_event']:.1f} µs |")
    rows.append(f"| **batch / single** | **{run['batch']['events_per_s'] / run['single']['events_per_s']:.1f}x** | |")
    return rows


def _check_rows(run: dict[str, Any]) -> list[str]:
    rows = ["| check | measured | goal | met |", "|---|---|---|---|"]
    for check in run.get("checks", []):
        cell = [str(check.get(key, "")).replace("|", "\\|") for key in ("name", "value", "goal")]
        rows.append(f"| {cell[0]} | {cell[1]} | {cell[2]} | {'yes' if check.get('passed') else '**no**'} |")
    return rows
