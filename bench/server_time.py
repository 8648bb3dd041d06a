"""The server's own time per request at the brief's 2,000 requests/s, for every stack of the four-stack benchmark:
from the system call that reads a request to the one that writes its answer, traced in the kernel.

Why beside bench/peers.py: at this rate the stacks' end-to-end p99 differ by about a tenth of a millisecond, while
one 10 s run's p99 moves between 0.4 and 2 ms with the VM (a halted virtual CPU woken late, the hypervisor's other
guests, wrk's own core). What a client waits for is the sum of what every stack pays alike (the loopback, waking a
halted core, waking wrk) and the stack's own path from its read to its write. This measures that path alone, so the
stacks compare by what they do rather than by what the VM did to them in one run.

How: each stack in turn on core 0, at 2,000 req/s from `wrk` on core 1 (bench/constant_rate.lua, 20 connections),
under `perf record -e raw_syscalls:sys_enter,raw_syscalls:sys_exit -C 0` (perf itself on core 1, beside wrk; it
ran wherever the scheduler put it until 2026-12-07). On each connection the server accepted while traced (its
pipes, log files and control sockets are left out), the time runs from the start of the first read that returns
data to the end of the first write that follows (`write`, `writev`, `sendto` or `sendmsg`).
trackpoint's write to its log, on another descriptor, lies inside that span; so does every stack's socket write,
which on loopback delivers the answer to wrk and wakes it. Tracing costs each system call a few microseconds, alike
for every stack: the figures compare the stacks, they are not the untraced latency. The stacks take turns, round
after round; each figure is the median of the rounds.

The same rounds also run each stack untraced at that rate twice, end to end as wrk sees it: once as the VM is, and
once with both cores kept from halting (`harness.cores_kept_awake`: a SCHED_IDLE busy loop on each, which gives
way at once to any other thread). On this VM a halted virtual CPU is woken by the host, late and with its caches
cooled: at 2,000 req/s that wake-up is most of every stack's p99 and doubles its CPU per request, a do-nothing
server's included. Kept awake, what is left of the latency is the stack's own path plus the loopback.

Run ``scripts/bench-peers --server-time [--rounds N] [--duration S] [--record]`` (needs `perf`, from Debian's
`linux-perf`, and root or `kernel.perf_event_paranoid` <= -1 for tracepoints).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from harness import (
    LOAD_CPU,
    RESULTS_DIR,
    SERVER_CPU,
    HarnessError,
    cores_kept_awake,
    free_ports,
    git_state,
    machine_info,
    pinned,
    unwind_on_sigterm,
)
from peers import (
    BRIEF_CONNECTIONS,
    BRIEF_RATE,
    COLORS,
    FLOOR,
    Stack,
    build_peers,
    constant_rate,
    run_floor,
    run_go,
    run_openresty,
    run_rust,
    run_trackpoint,
)

RESULT_NAME = "server_time"  # bench/results/server_time.json and .png
READS = {0, 17, 19, 45, 47}  # read, pread64, readv, recvfrom, recvmsg
WRITES = {1, 18, 20, 44, 46}  # write, pwrite64, writev, sendto, sendmsg
ACCEPTS = {43, 288}  # accept, accept4
CLOSE = 3
SHARES = (0.5, 0.9, 0.99, 0.999)
EVENT = re.compile(r"^\s*(\d+)/(\d+)\s+([\d.]+):\s+raw_syscalls:sys_(enter|exit):\s+NR (\d+) (.*)$")


def session_pids(leader: int) -> set[int]:
    """The processes of a server's session (start_service starts each in its own): the supervisor and its worker,
    nginx's master and worker."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == leader:  # field 6 of proc(5), the session id
                pids.add(int(stat.parent.name))
    return pids


def spans_us(script: Iterable[str], pids: set[int]) -> list[float]:
    """Read-to-answer spans in µs from `perf script` lines (`pid/tid time: event: NR n ...`) of the given
    processes, on the connections they accepted while traced (not their pipes, log files or control sockets)."""
    calls: dict[int, tuple[int, int, float]] = {}  # thread -> (syscall, fd or -1, when it began)
    accepted: set[tuple[int, int]] = set()  # (process, fd) of a client connection
    reading: dict[tuple[int, int], float] = {}  # (process, fd) -> when the read that began a request began
    spans = []
    for line in script:
        match = EVENT.match(line)
        if match is None or int(match[1]) not in pids:
            continue
        pid, tid, when, number, rest = int(match[1]), int(match[2]), float(match[3]), int(match[5]), match[6]
        if match[4] == "enter":
            fd = int(rest.lstrip("(").split(",", 1)[0], 16) if number in READS | WRITES | {CLOSE} else -1
            calls[tid] = (number, fd, when)
            continue
        call = calls.pop(tid, None)
        if call is None:
            continue
        number, fd, began = call
        returned = int(rest.rsplit("=", 1)[1])
        if number in ACCEPTS and returned >= 0:
            accepted.add((pid, returned))
            continue
        key = (pid, fd)
        if number == CLOSE:
            accepted.discard(key)
            reading.pop(key, None)
        elif key not in accepted:
            continue
        elif number in READS and returned > 0:
            reading.setdefault(key, began)
        elif number in WRITES and key in reading:
            spans.append((when - reading.pop(key)) * 1e6)
    return spans


def percentiles(spans: Sequence[float]) -> dict[str, float]:
    ordered = sorted(spans)
    if not ordered:
        raise HarnessError("no request was traced: is perf allowed to read tracepoints?")
    last = len(ordered) - 1
    return {f"p{share * 100:g}_us": round(ordered[min(last, int(share * len(ordered)))], 1) for share in SHARES}


def traced_round(stack: Stack, duration_s: int, workdir: Path) -> dict[str, Any]:
    """One constant-rate run of `stack` under perf: its end-to-end percentiles and the traced spans'."""
    constant_rate(stack, BRIEF_RATE, 2, BRIEF_CONNECTIONS)  # warm-up
    pids = session_pids(stack.service.proc.pid)
    data = workdir / "perf.data"
    # perf itself on the load core: on the server's core it would take that core's time from the stack, writing out
    # the events it traces there (its own system calls among them: millions in a 10 s run when it ran there).
    argv = [*pinned(LOAD_CPU), "perf", "record", "-q", "-C", str(SERVER_CPU), "-o", str(data)]
    argv += ["-e", "raw_syscalls:sys_enter,raw_syscalls:sys_exit"]
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as perf:
        time.sleep(0.5)
        if perf.poll() is not None:
            raise HarnessError(f"perf record failed: {perf.stderr.read() if perf.stderr else ''}")
        result = constant_rate(stack, BRIEF_RATE, duration_s, BRIEF_CONNECTIONS)
        perf.send_signal(2)  # SIGINT: perf writes its file and exits
        perf.wait(60)
    with subprocess.Popen(
        ["perf", "script", "-i", str(data), "-F", "pid,tid,time,event,trace"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as script:
        assert script.stdout is not None
        spans = spans_us(script.stdout, pids)
    data.unlink()
    return {
        "requests": len(spans),
        **percentiles(spans),
        "end_to_end_p50_ms": result.p50_ms,
        "end_to_end_p99_ms": result.p99_ms,
        "achieved_rps": result.achieved_rps,
    }


REGIMES = ("halting", "awake")  # untraced runs: the VM's cores as they are, then kept from halting


def paced_run(stack: Stack, duration_s: int, regime: str) -> dict[str, float]:
    """One untraced constant-rate run at the brief's rate, after a warm-up in the same regime: end-to-end
    percentiles and the server's CPU per request (all of it, and its user-space part)."""
    constant_rate(stack, BRIEF_RATE, 2, BRIEF_CONNECTIONS)
    result = constant_rate(stack, BRIEF_RATE, duration_s, BRIEF_CONNECTIONS)
    return {
        f"{regime}_p50_ms": result.p50_ms,
        f"{regime}_p99_ms": result.p99_ms,
        f"{regime}_p999_ms": result.p999_ms,
        f"{regime}_cpu_us": result.cpu_us_per_request,
        f"{regime}_user_cpu_us": result.user_cpu_us_per_request,
    }


@contextlib.contextmanager
def stack_named(name: str, binaries: dict[str, Path], workdir: Path) -> Iterator[Stack]:
    port, admin_port = free_ports(2)
    place = workdir / name
    if name == "trackpoint":
        context = run_trackpoint(place, port, admin_port)
    elif name == "go":
        context = run_go(binaries["go"], place, port)
    elif name == "rust":
        context = run_rust(binaries["rust"], place, port)
    elif name == "openresty":
        context = run_openresty(place, port)
    else:
        context = run_floor(place, port)
    with context as stack:
        yield stack


def measure(rounds: int, duration_s: int, console: Console) -> dict[str, list[dict[str, Any]]]:
    binaries = build_peers(console)
    names = ["trackpoint", "go", "openresty", "rust", FLOOR]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="trackpoint-server-time-") as tmp:
        for number in range(rounds):
            for name in names[number % len(names) :] + names[: number % len(names)]:
                with stack_named(name, binaries, Path(tmp) / f"{number}") as stack:
                    run: dict[str, Any] = traced_round(stack, duration_s, Path(tmp))
                    run |= paced_run(stack, duration_s, "halting")
                    with cores_kept_awake(SERVER_CPU, LOAD_CPU):
                        run |= paced_run(stack, duration_s, "awake")
                runs[name].append(run)
                console.print(
                    f"round {number + 1} {name}: read to answer p50 {run['p50_us']} µs, p99 {run['p99_us']} µs "
                    f"({run['requests']:,} requests); untraced p50 / p99: as the VM is {run['halting_p50_ms']} / "
                    f"{run['halting_p99_ms']} ms ({run['halting_cpu_us']} µs CPU a request), cores kept awake "
                    f"{run['awake_p50_ms']} / {run['awake_p99_ms']} ms ({run['awake_cpu_us']} µs)"
                )
    return runs


def summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Per stack, the median over the rounds of each figure."""
    return {
        name: {key: round(statistics.median(run[key] for run in stack_runs), 3) for key in stack_runs[0]}
        for name, stack_runs in runs.items()
        if stack_runs
    }


def rounds_at_most(runs: dict[str, list[dict[str, Any]]], key: str, ours: str = "trackpoint") -> dict[str, int]:
    """Per peer, in how many rounds trackpoint's figure `key` was at most the peer's (rounds pair by number)."""
    return {
        name: sum(mine[key] <= theirs[key] for mine, theirs in zip(runs[ours], stack_runs, strict=False))
        for name, stack_runs in runs.items()
        if name != ours
    }


def print_table(medians: dict[str, dict[str, float]], console: Console) -> None:
    table = Table(title=f"the server's own time per request at {BRIEF_RATE:,} req/s (traced; medians of rounds)")
    for column in ("stack", "read→answer p50 µs", "p90", "p99", "p99.9", "end to end p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "stack" else "right")
    for name, figures in medians.items():
        table.add_row(
            name,
            *(f"{figures[key]:,.0f}" for key in ("p50_us", "p90_us", "p99_us", "p99.9_us")),
            f"{figures['end_to_end_p50_ms']:.3f}",
            f"{figures['end_to_end_p99_ms']:.3f}",
        )
    console.print(table)
    paced = Table(title=f"end to end at {BRIEF_RATE:,} req/s, untraced (medians of rounds)")
    for column in ("stack", "p50 ms", "p99 ms", "CPU µs/req (user)", "awake: p50 ms", "p99 ms", "CPU µs/req (user)"):
        paced.add_column(column, justify="left" if column == "stack" else "right")
    for name, figures in medians.items():
        cells = []
        for regime in REGIMES:
            cells += [
                f"{figures[f'{regime}_p50_ms']:.3f}",
                f"{figures[f'{regime}_p99_ms']:.3f}",
                f"{figures[f'{regime}_cpu_us']:.1f} ({figures[f'{regime}_user_cpu_us']:.1f})",
            ]
        paced.add_row(name, *cells)
    console.print(paced)


def render(document: dict[str, Any], path: Path) -> None:
    """Left: each stack's read-to-answer percentiles (bars: medians of the rounds) and every round's p99 (points).
    Right: the untraced end-to-end p99, as the VM is and with the cores kept awake (bars and each round's)."""
    medians, runs = document["medians"], document["runs"]
    fig = Figure(figsize=(16, 5), layout="constrained")
    FigureCanvasAgg(fig)
    commit = str(document["git"].get("commit") or "")[:7]
    fig.suptitle(
        f"The server's own time per request at {BRIEF_RATE:,} req/s, from its read to its answer's write "
        f"(traced; {document['date'][:10]} {commit})"
    )
    ax, ax_paced = fig.subplots(1, 2, width_ratios=(3, 2))
    names = list(medians)
    shares = (("p50_us", 1.0), ("p90_us", 0.6), ("p99_us", 0.3))
    width = 0.8 / len(shares)
    for offset, (key, alpha) in enumerate(shares):
        xs = [i + (offset - 1) * width for i in range(len(names))]
        bars = ax.bar(xs, [medians[name][key] for name in names], width, alpha=alpha)
        for bar, name in zip(bars, names, strict=True):
            bar.set_color(COLORS[name])
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        if key == "p99_us":
            for x, name in zip(xs, names, strict=True):
                rounds = [run[key] for run in runs[name]]
                ax.plot([x] * len(rounds), rounds, "k.", markersize=4)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("µs")
    ax.set_title(
        "bars: medians of the rounds (darkest p50, then p90, lightest p99); dots: each round's p99", fontsize=10
    )
    # End to end, untraced: the p99 as the VM is (light) and with its cores kept awake (solid), each round a dot.
    for offset, (regime, alpha) in enumerate(zip(REGIMES, (0.35, 1.0), strict=True)):
        key = f"{regime}_p99_ms"
        if key not in medians[names[0]]:  # a record from before the untraced runs
            continue
        xs = [i + (offset - 0.5) * 0.4 for i in range(len(names))]
        bars = ax_paced.bar(xs, [medians[name][key] for name in names], 0.4, alpha=alpha)
        for bar, name in zip(bars, names, strict=True):
            bar.set_color(COLORS[name])
        ax_paced.bar_label(bars, fmt="%.2f", fontsize=8)
        for x, name in zip(xs, names, strict=True):
            rounds = [run[key] for run in runs[name]]
            ax_paced.plot([x] * len(rounds), rounds, "k.", markersize=4)
    ax_paced.set_xticks(range(len(names)), names, rotation=20)
    ax_paced.set_ylabel("ms")
    ax_paced.set_title("end to end p99, untraced: as the VM is (light), cores kept awake (solid)", fontsize=10)
    fig.savefig(path, dpi=100)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each stack runs once per round (default 5)")
    parser.add_argument("--duration", type=int, default=10, help="seconds of each traced run (default 10)")
    parser.add_argument("--record", action="store_true", help=f"write bench/results/{RESULT_NAME}.json and .png")
    settings = parser.parse_args(argv)
    console = Console()
    unwind_on_sigterm()
    runs = measure(settings.rounds, settings.duration, console)
    medians = summary(runs)
    print_table(medians, console)
    # Rounds in which trackpoint's untraced p99 was at most each peer's, as the VM is and kept awake.
    at_most = {regime: rounds_at_most(runs, f"{regime}_p99_ms") for regime in REGIMES}
    for regime, counts in at_most.items():
        tally = ", ".join(f"{name} {count} of {settings.rounds}" for name, count in counts.items())
        where = "cores kept awake" if regime == "awake" else "as the VM is"
        console.print(f"untraced, {where}: rounds with trackpoint's p99 at most the peer's: {tally}")
    document = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": dict(zip(("commit", "dirty"), git_state(), strict=True)),
        "machine": asdict(machine_info()),
        "settings": {"rounds": settings.rounds, "duration": settings.duration, "rate": BRIEF_RATE},
        "medians": medians,
        "p99_rounds_at_most": at_most,
        "runs": runs,
    }
    path = (RESULTS_DIR if settings.record else Path(tempfile.gettempdir())) / f"{RESULT_NAME}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    render(document, path.with_suffix(".png"))
    console.print(f"results: {path} and {path.with_suffix('.png').name} beside it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
