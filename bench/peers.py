"""The four-stack benchmark: trackpoint against the stacks the brief measured (Go, OpenResty, Rust), each doing the
same work on one core, with nginx `empty_gif` (no work at all) as the load generator's ceiling.

The contract every stack implements is trackpoint's default impression endpoint: `GET|HEAD /i`, `imp` required and
`cid`, `crid`, `pub` optional, each at most 64 bytes of UTF-8 without control characters (an invalid optional
value is left out and named in `dims.invalid`, as trackpoint's pixels do); the deterministic event id
(BLAKE2b-128 of the type and `imp`); the 43-byte GIF; one JSON line per accepted request in a log; 400 with the reason
(`X-Reject-Reason`) for a bad request, 404, 405. Before anything is measured, each stack is sent the same requests
(`CONTRACT`) and must give the same statuses and reasons and log the same lines with the same ids. The peers' code is
in bench/peers/ (Go: net/http and the standard library, GOMAXPROCS=1; OpenResty: Debian's nginx with
lua-nginx-module and lua-cjson; Rust: hyper 0.14 on a current-thread tokio runtime, built offline from Debian's crate
sources). trackpoint runs its embedded default configuration, one worker, log compression on the same core. Beside
them, keeping no contract: Python on uvloop answering the GIF and nothing else (bench/peers/python-floor, the floor
under trackpoint: its latency at 2,000 req/s is the runtime's, what trackpoint has above it is trackpoint's work).

Two loads, both with wrk on the other core:
- closed loop (`wrk -t1 -c64`): the most each stack serves; its CPU per request (every process and thread of the
  server, trackpoint's compression included) from /proc. The stacks take turns, round after round; medians.
- constant rate (bench/constant_rate.lua, wrk2's correction for coordinated omission) at 2,000 req/s and at 50% and
  80% of each stack's own maximum, so percentiles compare at equal load rather than each at its saturation. These
  take turns round after round too; each figure is the median of the rounds (one 10 s run is 20,000 requests at
  2,000 req/s: its p99 rests on 200 of them, and one VM hiccup moves it). At 2,000 req/s the stacks differ by tens
  of microseconds, so that rate runs `--brief-rounds` rounds (10), and the report counts the rounds in which
  trackpoint's p99 was at most each peer's.

Run ``scripts/bench-peers [--quick] [--rounds N] [--brief-rounds N] [--duration S] [--record]`` (it installs and
builds the peers).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from harness import (
    CLK_TCK,
    LOAD_CPU,
    PIXEL_PATH,
    REPO_ROOT,
    RESULTS_DIR,
    SERVER_CPU,
    THROUGHPUT_CONNECTIONS,
    USER_AGENT,
    HarnessError,
    Service,
    Terminated,
    active_files,
    free_ports,
    git_state,
    machine_info,
    pinned,
    run_nginx,
    run_tracker,
    run_wrk,
    start_service,
    unwind_on_sigterm,
    wait_ready,
)
from report import write_report

PEERS_DIR = REPO_ROOT / "bench" / "peers"
CONSTANT_RATE_LUA = REPO_ROOT / "bench" / "constant_rate.lua"
HISTORY = RESULTS_DIR / "peers-history.json"
CHART = RESULTS_DIR / "peers.png"
STACKS = ("trackpoint", "go", "openresty", "rust")  # nginx empty_gif is measured too, as the ceiling
# Python on uvloop answering the GIF and doing nothing else (bench/peers/python-floor): measured in the closed loop
# and at 2,000 req/s, it splits trackpoint's latency into what the runtime costs and what trackpoint's work adds.
FLOOR = "python-floor"
BRIEF_RATE = 2_000
RATE_SHARES = (0.5, 0.8)
RATE_CONNECTIONS = 32  # constant-rate runs: one connection per wrk thread
BRIEF_CONNECTIONS = 20
GENERATOR_BUSY_PCT = 85.0  # wrk above this share of its core: its own delays are in the latencies
COMPRESSION_SETTLE_S = 60  # the longest wait for trackpoint's compression to finish a run's files
MAX_FILES_WAITING = 1  # "compression keeping up": at most one finished file behind when a run ends

# (request line target, method, expected status, expected reason or None, logged imp or None)
CONTRACT: tuple[tuple[str, str, int, str | None, str | None], ...] = (
    ("/i?imp=contract-1&cid=c1&crid=cr1&pub=p1", "GET", 200, None, "contract-1"),
    ("/i?imp=contract-2", "GET", 200, None, "contract-2"),
    ("/i?imp=caf%C3%A9", "GET", 200, None, "café"),
    ("/i?imp=contract-head", "HEAD", 200, None, None),
    ("/i?cid=c1", "GET", 400, "missing_field", None),
    ("/i?imp=" + "x" * 65, "GET", 400, "field_too_long", None),
    # A pixel keeps its event without an invalid optional value (named in dims.invalid): 200, logged.
    ("/i?imp=contract-3&crid=" + "y" * 65, "GET", 200, None, "contract-3"),
    ("/i?imp=contract-5&cid=a%FF", "GET", 200, None, "contract-5"),
    ("/i?imp=a%FF", "GET", 400, "invalid_encoding", None),
    ("/i?imp=a%01b", "GET", 400, "invalid_field", None),
    ("/nowhere?imp=x", "GET", 404, "not_found", None),
    ("/i?imp=contract-4", "DELETE", 405, "method_not_allowed", None),
)


# imp -> (the optional field left out, dims.invalid) for the contract's requests with an invalid optional value
DROPPED = {"contract-3": ("crid", "crid:field_too_long"), "contract-5": ("cid", "cid:invalid_encoding")}

# --------------------------------------------------------------------------- the stacks


@dataclass
class Stack:
    name: str
    service: Service
    log_lines: Callable[[], list[dict[str, Any]]]  # the events logged so far
    # Finished log files not compressed yet (trackpoint compresses its rotated files on the core that serves).
    waiting_files: Callable[[], int] | None = None


def _json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_peers(console: Console) -> dict[str, Path]:
    """Compile the Go and Rust peers (cached in bench/peers/*/target); the binaries by name."""
    go_dir, rust_dir = PEERS_DIR / "go", PEERS_DIR / "rust"
    go_binary = go_dir / "target" / "peer"
    console.print("building the Go peer (go build) and the Rust peer (cargo build --release --offline)")
    environment = {**os.environ, "GOFLAGS": "-mod=mod", "GOCACHE": str(go_dir / "target" / "cache")}
    subprocess.run(["go", "build", "-o", str(go_binary), "."], cwd=go_dir, env=environment, check=True)
    subprocess.run(["cargo", "build", "--release", "--offline", "--quiet"], cwd=rust_dir, check=True)
    return {"go": go_binary, "rust": rust_dir / "target" / "release" / "trackpoint-peer"}


@contextlib.contextmanager
def run_go(binary: Path, workdir: Path, port: int) -> Iterator[Stack]:
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "events.jsonl"
    argv = [*pinned(SERVER_CPU), "env", "GOMAXPROCS=1", str(binary), "-listen", f"127.0.0.1:{port}", "-log", str(log)]
    url = f"http://127.0.0.1:{port}{PIXEL_PATH}"
    with start_service("go", url, argv, workdir, signal.SIGTERM) as service:
        wait_ready(service, url)
        yield Stack("go", service, lambda: _json_lines(log))


@contextlib.contextmanager
def run_rust(binary: Path, workdir: Path, port: int) -> Iterator[Stack]:
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "events.jsonl"
    argv = [*pinned(SERVER_CPU), str(binary), f"127.0.0.1:{port}", str(log)]
    url = f"http://127.0.0.1:{port}{PIXEL_PATH}"
    with start_service("rust", url, argv, workdir, signal.SIGTERM) as service:
        wait_ready(service, url)
        yield Stack("rust", service, lambda: _json_lines(log))


@contextlib.contextmanager
def run_openresty(workdir: Path, port: int) -> Iterator[Stack]:
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "events.jsonl"
    template = (PEERS_DIR / "openresty" / "nginx.conf").read_text()
    config = workdir / "nginx.conf"
    config.write_text(
        template.format(
            user=os.environ.get("USER", "root"),
            cpu_mask=f"{1 << SERVER_CPU:b}",
            workdir=workdir,
            peer_dir=PEERS_DIR / "openresty",
            log=log,
            port=port,
        )
    )
    argv = [*pinned(SERVER_CPU), "nginx", "-p", f"{workdir}/", "-c", str(config)]
    url = f"http://127.0.0.1:{port}{PIXEL_PATH}"
    with start_service("openresty", url, argv, workdir, signal.SIGTERM) as service:
        wait_ready(service, url)
        yield Stack("openresty", service, lambda: _json_lines(log))


@contextlib.contextmanager
def run_floor(workdir: Path, port: int) -> Iterator[Stack]:
    argv = [*pinned(SERVER_CPU), sys.executable, str(PEERS_DIR / FLOOR / "server.py"), str(port)]
    url = f"http://127.0.0.1:{port}{PIXEL_PATH}"
    with start_service(FLOOR, url, argv, workdir, signal.SIGTERM) as service:
        wait_ready(service, url)
        yield Stack(FLOOR, service, list)


@contextlib.contextmanager
def run_trackpoint(workdir: Path, port: int, admin_port: int) -> Iterator[Stack]:
    from trackpoint.collectors.log.reader import read_events

    binary = Path(sys.executable).parent / "trackpoint"
    with run_tracker(binary, workdir, port, admin_port) as service:
        logs = workdir / "data" / "logs"
        yield Stack(
            "trackpoint",
            service,
            lambda: [{"id": e.id, "dims": dict(e.dims)} for e in read_events([logs])] if logs.exists() else [],
            lambda: len(active_files(logs)[:-1]),
        )


# --------------------------------------------------------------------------- the contract


def _send(port: int, method: str, target: str) -> tuple[int, str | None]:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, target, headers={"User-Agent": USER_AGENT})
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("X-Reject-Reason")
    finally:
        connection.close()


def verify_contract(stack: Stack, port: int) -> list[str]:
    """The problems of one stack with the contract: statuses, reasons, and the logged lines and their ids."""
    from trackpoint.event import derived_id

    problems = []
    before = {line["id"] for line in stack.log_lines()}
    for target, method, status, reason, _ in CONTRACT:
        got = _send(port, method, target)
        if got != (status, reason):
            problems.append(f"{method} {target[:40]}: answered {got}, expected {(status, reason)}")
    wanted = {derived_id("impression", [imp]) for *_, imp in CONTRACT if imp is not None}
    deadline = time.monotonic() + 3  # the peers flush their log every 100 ms
    while True:
        logged = [line for line in stack.log_lines() if line["id"] not in before]
        if {line["id"] for line in logged} == wanted and len(logged) == len(wanted):
            for line in logged:
                dims = line["dims"]
                expected = DROPPED.get(dims.get("imp", ""))
                if expected is not None and (dims.get("invalid"), dims.get(expected[0])) != (expected[1], None):
                    problems.append(f"logged {dims} for an invalid {expected[0]}, expected invalid={expected[1]!r}")
            return problems
        if time.monotonic() > deadline:
            ids = sorted(line["id"] for line in logged)
            problems.append(f"logged {len(logged)} lines with ids {ids}, expected {sorted(wanted)}")
            return problems
        time.sleep(0.05)


# --------------------------------------------------------------------------- measuring


def group_cpu_s(leader: int) -> tuple[float, float]:
    """User and system (kernel) CPU of every process in the process group `leader` leads (threads included)."""
    user = system = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            if int(fields[2]) == leader:
                user += int(fields[11])
                system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


@dataclass
class Throughput:
    rps: float
    cpu_us_per_request: float
    p50_ms: float
    p99_ms: float
    errors: int
    # trackpoint: finished log files still waiting for compression when the load stopped (at most one: it kept up).
    files_waiting: int | None = None


def closed_loop(stack: Stack, duration_s: int) -> Throughput:
    cpu_before = sum(group_cpu_s(stack.service.proc.pid))
    result = run_wrk(stack.service.url, duration_s, THROUGHPUT_CONNECTIONS)
    waiting = None
    if stack.waiting_files is not None:
        waiting = stack.waiting_files()
        # The files this run finished are compressed before its CPU is read: all of that work is charged to the
        # run that caused it, none left over for the next.
        deadline = time.monotonic() + COMPRESSION_SETTLE_S
        while stack.waiting_files() and time.monotonic() < deadline:
            time.sleep(0.05)
    cpu = sum(group_cpu_s(stack.service.proc.pid)) - cpu_before
    return Throughput(
        round(result.rps),
        round(cpu / max(result.requests, 1) * 1e6, 2),
        result.latency_p50_ms,
        result.latency_p99_ms,
        result.errors,
        waiting,
    )


@dataclass
class RateResult:
    target_rps: int
    achieved_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    non_2xx: int
    cpu_us_per_request: float
    # The part of it in user space (the server's own code, its runtime's included), the rest being the kernel's
    # (sockets, the log's writes, waking up): at a paced load it tells a stack's work from what every stack pays.
    user_cpu_us_per_request: float
    # wrk's own CPU (its one core) during the run, and whether the generator rather than the server set the pace:
    # under 97% of the rate achieved, or wrk near a full core (responses read late inflate every percentile).
    generator_cpu_pct: float
    generator_bound: bool


def percentile(histogram: Sequence[tuple[int, int]], share: float) -> float:
    """The latency (ms) under which `share` of the responses fall, from a sorted (µs, count) histogram."""
    total = sum(count for _, count in histogram)
    seen = 0
    for value, count in histogram:
        seen += count
        if seen >= share * total:
            return value / 1000
    return histogram[-1][0] / 1000 if histogram else 0.0


def constant_rate(stack: Stack, rate: int, duration_s: int, connections: int) -> RateResult:
    """`rate` requests/s for `duration_s`, latency corrected for coordinated omission (bench/constant_rate.lua)."""
    argv = [*pinned(LOAD_CPU), "wrk", f"-t{connections}", f"-c{connections}", f"-d{duration_s}s"]
    argv += ["-H", f"User-Agent: {USER_AGENT}", "-s", str(CONSTANT_RATE_LUA), stack.service.url]
    argv += ["--", str(rate), str(connections)]
    user_before, system_before = group_cpu_s(stack.service.proc.pid)
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    user_after, system_after = group_cpu_s(stack.service.proc.pid)
    user, cpu = user_after - user_before, user_after + system_after - user_before - system_before
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (wrk_after.ru_utime + wrk_after.ru_stime) - (wrk_before.ru_utime + wrk_before.ru_stime)
    lines = [line for line in done.stdout.splitlines() if line.startswith("CONSTANT_RATE ")]
    if done.returncode != 0 or not lines:
        raise HarnessError(f"constant-rate wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    data = json.loads(lines[0].removeprefix("CONSTANT_RATE "))
    histogram = sorted((int(us), count) for us, count in data["latency_us"].items())
    responses = int(data["responses"])
    non_2xx = sum(count for status, count in data["statuses"].items() if not status.startswith("2"))
    seconds = data["duration_us"] / 1e6
    achieved = round(responses / seconds)
    generator_cpu_pct = round(100 * wrk_cpu / seconds, 1)
    return RateResult(
        rate,
        achieved,
        percentile(histogram, 0.5),
        percentile(histogram, 0.9),
        percentile(histogram, 0.99),
        percentile(histogram, 0.999),
        histogram[-1][0] / 1000 if histogram else 0.0,
        non_2xx,
        round(cpu / max(responses, 1) * 1e6, 2),
        round(user / max(responses, 1) * 1e6, 2),
        generator_cpu_pct,
        achieved < 0.97 * rate or generator_cpu_pct > GENERATOR_BUSY_PCT,
    )


def median_rate(runs: Sequence[RateResult]) -> RateResult:
    """The rounds of one rate as one result: the median of each figure (generator-bound when most runs were)."""

    def middle(figure: str) -> Any:
        return statistics.median(getattr(run, figure) for run in runs)

    return RateResult(
        runs[0].target_rps,
        middle("achieved_rps"),
        middle("p50_ms"),
        middle("p90_ms"),
        middle("p99_ms"),
        middle("p999_ms"),
        middle("max_ms"),
        middle("non_2xx"),
        middle("cpu_us_per_request"),
        middle("user_cpu_us_per_request"),
        middle("generator_cpu_pct"),
        2 * sum(run.generator_bound for run in runs) > len(runs),
    )


@dataclass
class StackResult:
    name: str
    runs: list[Throughput] = field(default_factory=list)
    # Per rate (2,000 req/s, 50% and 80% of the maximum): every round's run, and their medians.
    rate_runs: list[list[RateResult]] = field(default_factory=list)
    rates: list[RateResult] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return statistics.median(run.rps for run in self.runs)

    @property
    def cpu_us(self) -> float:
        return statistics.median(run.cpu_us_per_request for run in self.runs)

    @property
    def files_waiting_max(self) -> int | None:
        counts = [run.files_waiting for run in self.runs if run.files_waiting is not None]
        return max(counts) if counts else None


def measure(settings: argparse.Namespace, console: Console) -> tuple[dict[str, StackResult], list[str]]:
    binaries = build_peers(console)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="trackpoint-peers-") as tmp, contextlib.ExitStack() as servers:
        workdir = Path(tmp)
        ports = free_ports(7)
        stacks = {
            "trackpoint": servers.enter_context(run_trackpoint(workdir / "trackpoint", ports[0], ports[1])),
            "go": servers.enter_context(run_go(binaries["go"], workdir / "go", ports[2])),
            "openresty": servers.enter_context(run_openresty(workdir / "openresty", ports[3])),
            "rust": servers.enter_context(run_rust(binaries["rust"], workdir / "rust", ports[4])),
        }
        nginx = servers.enter_context(run_nginx(workdir / "nginx", ports[5]))
        port_of = {"trackpoint": ports[0], "go": ports[2], "openresty": ports[3], "rust": ports[4]}
        for name, stack in stacks.items():
            found = verify_contract(stack, port_of[name])
            problems += [f"{name}: {problem}" for problem in found]
            console.print(
                f"{name}: contract {'[green]kept[/]' if not found else '[red]broken[/]: ' + '; '.join(found)}"
            )
        if problems:
            raise HarnessError("a stack does not keep the contract, nothing measured:\n" + "\n".join(problems))
        floor = servers.enter_context(run_floor(workdir / FLOOR, ports[6]))
        everything = {**stacks, FLOOR: floor, "nginx": Stack("nginx", nginx, list)}
        results = {name: StackResult(name) for name in everything}
        order = list(everything)
        for round_number in range(settings.rounds):
            for name in order[round_number % len(order) :] + order[: round_number % len(order)]:
                run_wrk(everything[name].service.url, settings.warmup, THROUGHPUT_CONNECTIONS)
                run = closed_loop(everything[name], settings.duration)
                results[name].runs.append(run)
                waiting = "" if run.files_waiting is None else f", {run.files_waiting} log files left to compress"
                console.print(
                    f"round {round_number + 1} {name}: {run.rps:,.0f} req/s, {run.cpu_us_per_request} µs CPU/request"
                    f"{waiting}"
                )
                time.sleep(0.5)
        rates = {name: [BRIEF_RATE] + [round(results[name].rps * share) for share in RATE_SHARES] for name in STACKS}
        rates[FLOOR] = [BRIEF_RATE]  # the floor at the brief's rate only: its maximum says nothing of a tracker's
        for name, planned in rates.items():
            results[name].rate_runs = [[] for _ in planned]
        stacks_order = list(rates)
        # Constant rates alternate too: medians of the rounds. At 2,000 requests/s the stacks differ by tens of
        # microseconds, less than one 10 s run varies, so that rate gets more rounds (settings.brief_rounds).
        for round_number in range(max(settings.rounds, settings.brief_rounds)):
            for name in stacks_order[round_number % len(rates) :] + stacks_order[: round_number % len(rates)]:
                for index, rate in enumerate(rates[name]):
                    if round_number >= (settings.brief_rounds if index == 0 else settings.rounds):
                        continue
                    connections = BRIEF_CONNECTIONS if rate == BRIEF_RATE else RATE_CONNECTIONS
                    result = constant_rate(everything[name], rate, settings.rate_duration, connections)
                    results[name].rate_runs[index].append(result)
                    bound = ", generator-bound: not the server's latency" if result.generator_bound else ""
                    console.print(
                        f"round {round_number + 1} {name} at {rate:,} req/s: p50 {result.p50_ms} ms, "
                        f"p99 {result.p99_ms} ms, p99.9 {result.p999_ms} ms, "
                        f"{result.cpu_us_per_request} µs CPU/request ({result.user_cpu_us_per_request} in user space; "
                        f"{result.achieved_rps:,.0f} achieved, "
                        f"{result.non_2xx} non-2xx, wrk {result.generator_cpu_pct}% of its core{bound})"
                    )
                    time.sleep(0.5)
        for name in rates:
            results[name].rates = [median_rate(runs) for runs in results[name].rate_runs]
    return results, problems


def brief_rate_rounds(results: dict[str, StackResult]) -> dict[str, list[int]]:
    """Per peer, in how many rounds at 2,000 requests/s trackpoint's p99 was at most the peer's, of how many: the
    rounds pair runs taken minutes apart at most, so a drift of the machine touches both sides of a pair."""
    ours = [run.p99_ms for run in results["trackpoint"].rate_runs[0]]
    counts = {}
    for name in STACKS[1:]:
        theirs = [run.p99_ms for run in results[name].rate_runs[0]]
        counts[name] = [sum(a <= b for a, b in zip(ours, theirs, strict=True)), len(ours)]
    return counts


# --------------------------------------------------------------------------- output


# The two servers that do no work, and what each stands for.
NO_WORK = {FLOOR: "no work", "nginx": "empty_gif"}
COLORS = {
    "trackpoint": "#1f77b4",
    "go": "#00add8",
    "openresty": "#2ca02c",
    "rust": "#b7410e",
    FLOOR: "#9467bd",
    "nginx": "#999999",
}


def render(results: dict[str, StackResult], history: list[dict[str, Any]], title: str, path: Path) -> None:
    fig = Figure(figsize=(18, 5.4), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    ax_rps, ax_rate, ax_history = fig.subplots(1, 3)
    names = list(results)
    values = [results[name].rps for name in names]
    ticks = [f"{name}\n({NO_WORK[name]})" if name in NO_WORK else name for name in names]
    bars = ax_rps.bar(ticks, values, color=[COLORS[name] for name in names])
    ax_rps.bar_label(
        bars, labels=[f"{v:,.0f}\n{results[n].cpu_us:.1f} µs/req" for n, v in zip(names, values, strict=True)]
    )
    ax_rps.set_ylim(0, max(values) * 1.25)
    ax_rps.set_title("Most requests/s on one core (median), CPU per request")
    ax_rps.set_ylabel("requests/s")
    labels = ["2,000/s", "50% of max", "80% of max"]
    measured = [name for name in (*STACKS, FLOOR) if name in results]  # the floor: 2,000/s only
    width = 0.8 / len(measured)
    for offset, name in enumerate(measured):
        p50 = [rate.p50_ms for rate in results[name].rates]
        p99 = [rate.p99_ms for rate in results[name].rates]
        xs = [i + (offset - (len(measured) - 1) / 2) * width for i in range(len(p50))]
        bars = ax_rate.bar(xs, p99, width, color=COLORS[name], alpha=0.45)
        for bar, rate in zip(bars, results[name].rates, strict=True):
            if rate.generator_bound:  # wrk, not the server, set these numbers
                bar.set_hatch("xx")
        ax_rate.bar(xs, p50, width, color=COLORS[name], label=name)
    ax_rate.set_xticks(range(len(labels)), labels)
    ax_rate.set_yscale("log")
    ax_rate.set_ylabel("latency, ms (solid p50, light p99; log scale)")
    ax_rate.set_title("Constant rate, corrected for coordinated omission (hatched: generator-bound)")
    ax_rate.legend()
    for name in names:
        # One point per recorded run, labelled by date and commit: several runs a day stay apart.
        points = [(index, entry["rps"][name]) for index, entry in enumerate(history) if name in entry.get("rps", {})]
        if points:
            ax_history.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=COLORS[name], label=name)
    labels = [f"{entry['date'][:10]}\n{str(entry.get('commit') or '')[:7]}" for entry in history]
    ax_history.set_xticks(range(len(history)), labels)
    ax_history.set_title("History (recorded runs)")
    ax_history.set_ylabel("requests/s")
    ax_history.legend()
    ax_history.tick_params(axis="x", rotation=30, labelsize=8)
    fig.savefig(path, dpi=100)


def print_table(results: dict[str, StackResult], console: Console) -> None:
    table = Table(title="Four stacks, one core, the same contract")
    columns = (
        "stack",
        "req/s (median)",
        "CPU µs/req",
        "CPU µs/req @ 2k/s (user)",
        "p99 @ 2k/s",
        "p99 @ 50%",
        "p99 @ 80%",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for name, result in results.items():
        rates = [f"{rate.p99_ms:.2f} ms{' (gen.)' if rate.generator_bound else ''}" for rate in result.rates]
        rates += ["-"] * (3 - len(rates))  # the floor: 2,000/s only; nginx: none
        brief = result.rates[0] if result.rates else None
        paced = "-" if brief is None else f"{brief.cpu_us_per_request:.1f} ({brief.user_cpu_us_per_request:.1f})"
        table.add_row(name, f"{result.rps:,.0f}", f"{result.cpu_us:.1f}", paced, *rates)
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s runs (CI: context, not a gate)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, stacks alternating (default 3)")
    parser.add_argument(
        "--brief-rounds", type=int, default=10, help="rounds at 2,000 requests/s, stacks alternating (default 10)"
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds of each closed-loop run (default 10)")
    parser.add_argument("--record", action="store_true", help="write bench/results/peers.json, history and chart")
    settings = parser.parse_args(argv)
    if settings.quick:
        settings.rounds, settings.brief_rounds, settings.duration = 1, 1, 3
    settings.warmup = 1 if settings.quick else 2
    settings.rate_duration = 3 if settings.quick else 10
    console = Console()
    for tool in ("go", "cargo", "nginx", "wrk"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            console.print(f"[red]{tool} is missing[/]: scripts/bench-peers installs what this benchmark needs")
            return 1
    unwind_on_sigterm()
    try:
        results, _ = measure(settings, console)
    except HarnessError as exc:
        console.print(f"[red]benchmark failed:[/] {exc}")
        return 1
    except Terminated:
        console.print("[red]terminated; servers stopped[/]")
        return 128 + signal.SIGTERM
    print_table(results, console)
    pairs = brief_rate_rounds(results)
    console.print(
        "p99 at 2,000 req/s, rounds where trackpoint's was at most the peer's: "
        + ", ".join(f"{name} {won} of {rounds}" for name, (won, rounds) in pairs.items())
    )
    behind = results["trackpoint"].files_waiting_max
    if behind is not None and behind > MAX_FILES_WAITING:
        console.print(f"[red]trackpoint's log compression fell behind:[/] {behind} finished files waiting after a run")
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    commit, dirty = git_state()
    report = {
        "schema": 1,
        "date": date,
        "git": {"commit": commit, "dirty": dirty},
        "machine": asdict(machine_info()),
        "settings": {
            key: getattr(settings, key) for key in ("rounds", "brief_rounds", "duration", "warmup", "rate_duration")
        },
        "brief_rate_rounds": pairs,
        "stacks": {
            name: asdict(result)
            | {"rps_median": result.rps, "cpu_us_median": result.cpu_us, "files_waiting_max": result.files_waiting_max}
            for name, result in results.items()
        },
    }
    out = write_report(report, "peers.json", settings.record)
    history = json.loads(HISTORY.read_text()) if HISTORY.exists() else []
    if settings.record:
        history.append(
            {
                "date": date,
                "commit": commit,
                "rps": {n: r.rps for n, r in results.items()},
                "cpu_us": {n: r.cpu_us for n, r in results.items()},
            }
        )
        HISTORY.write_text(json.dumps(history, indent=1) + "\n")
    chart = CHART if settings.record else Path(tempfile.gettempdir()) / "peers.png"
    render(results, history, f"trackpoint and its peers, one core each ({date[:10]})", chart)
    console.print(f"results: {out}, chart: {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
