"""The hot path in one process, without the network: CPU per request of edge -> build -> preprocess -> respond ->
record (the log's group commit included), on the embedded default configuration's impression endpoint.

Connections are the edge's own protocol objects over a transport that keeps what is written; each event-loop
iteration, every connection receives one request (as 64 keep-alive clients would send them) and the iteration's
output step runs as in a worker. A connection the edge closes at its keep-alive cap (10,000 requests) is opened
again, as a client would, and a run fails unless every request it sent was recorded. What it measures is the Python
side of a request: no kernel, no wrk, so it is steady on a busy machine where the end-to-end benchmark is not, and
it is where an optimisation of the request path is measured before and after (`--profile` shows where the time
goes).

    .venv/bin/python bench/hotpath.py [--requests N] [--connections C] [--profile | --instructions | --report]
        [--at-once] [--browser]

The requests are answered as a loaded worker answers them, at the iteration's output step (one log write for the
iteration); `--at-once` answers each read at its end instead, as a worker under a light load does (one log write
per read).

`--report` times the worker's once-a-second report instead (its counters, memory and live tail as one control frame,
`process/worker.py: stats_frame`), each after 2,000 requests of the same traffic at once, as at 2,000 requests/s: its
cost is a pause of the worker's loop, which the requests that arrive meanwhile wait out. It is timed with the live
tail unwatched (no dashboard open, the default) and watched.

`--instructions` counts instead of timing: it runs itself under valgrind's callgrind, counting only inside the two
entry points of the compiled build (a connection's `data_received`, the edge's output step), and prints
instructions per request, the same on every run of the same code whatever else the machine does (CPU time on a
shared VM moves by several percent between runs; this does not).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvloop

from harness import USER_AGENT
from trackpoint import _native
from trackpoint.config.load import load
from trackpoint.edge.pipeline import EdgeProtocol
from trackpoint.edge.runtime import Edge
from trackpoint.plugins import registry
from trackpoint.process.worker import ResidentMemory, settle_gc, stats_frame

REQUEST = (
    "GET /i?imp=bench-imp-{n}&cid=cmp-42&crid=crv-7&pub=pub-1001 HTTP/1.1\r\n"
    "Host: track.example.com\r\n"
    f"User-Agent: {USER_AGENT}\r\n"
    "Accept: image/avif,image/webp,*/*\r\n"
    "Referer: https://news.example.org/article\r\n"
    "\r\n"
)
# `--browser`: the same pixel with the 14 header lines a browser sends, as Debian's chromium (156) sent them for a
# cross-site <img> in a capture through Playwright (the Host and the user agent are the benchmark's).
BROWSER_REQUEST = (
    "GET /i?imp=bench-imp-{n}&cid=cmp-42&crid=crv-7&pub=pub-1001 HTTP/1.1\r\n"
    "Host: track.example.com\r\n"
    "Connection: keep-alive\r\n"
    'sec-ch-ua-platform: "Linux"\r\n'
    f"User-Agent: {USER_AGENT}\r\n"
    'sec-ch-ua: "Not:A-Brand";v="8", "Chromium";v="156"\r\n'
    "sec-ch-ua-mobile: ?0\r\n"
    "Accept: image/jxl,image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8\r\n"
    "Sec-Fetch-Site: cross-site\r\n"
    "Sec-Fetch-Mode: no-cors\r\n"
    "Sec-Fetch-Dest: image\r\n"
    "Sec-Fetch-Storage-Access: none\r\n"
    "Referer: https://news.example.org/article\r\n"
    "Accept-Encoding: gzip, deflate, br, zstd\r\n"
    "Accept-Language: en-US,en;q=0.9\r\n"
    "\r\n"
)


class Transport(asyncio.Transport):
    """Keeps a count of the bytes written; a peer on loopback."""

    def __init__(self, peer: str) -> None:
        super().__init__()
        self.peer = peer
        self.written = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def connect(edge: Edge, index: int) -> EdgeProtocol:
    """A client's connection, from its own address."""
    protocol = EdgeProtocol(edge)
    protocol.connection_made(Transport(f"198.51.100.{index + 1}"))
    return protocol


@contextlib.asynccontextmanager
async def serving(connections: int, at_once: bool) -> AsyncIterator[tuple[Edge, list[EdgeProtocol]]]:
    """An edge of the embedded default configuration writing to a temporary data_dir, its collectors started, and
    `connections` clients connected; drained and closed at the end."""
    with tempfile.TemporaryDirectory(prefix="trackpoint-hotpath-") as data_dir:
        config_file = Path(data_dir) / "trackpoint.yaml"
        config_file.write_text(f"data_dir: {data_dir}\n")
        loaded = load(config_file, registry=registry())
        edge = Edge(loaded.config, loaded.version, 0, registry())
        await edge.start_collectors()
        edge.answer_at_once = at_once  # no load watch runs here: the mode is the one measured
        protocols = [connect(edge, index) for index in range(connections)]
        yield edge, protocols
        for protocol in protocols:
            protocol.connection_lost(None)
        await edge.drain(1.0)
        for collector in edge.collectors.values():
            await collector.close(1.0)


def send(edge: Edge, protocols: list[EdgeProtocol], index: int, payload: bytes) -> None:
    """One request on connection `index`; one the edge closed after max_keepalive_requests connects again first, as a
    client does."""
    protocol = protocols[index]
    if protocol.closing:
        protocol.connection_lost(None)
        protocol = protocols[index] = connect(edge, index)
    protocol.data_received(payload)


async def run(
    requests: int, connections: int, profile: cProfile.Profile | None, at_once: bool = False, browser: bool = False
) -> float:
    """CPU µs per request over `requests` requests; `at_once`: each read answered at its end (a light load's
    mode), else at the iteration's output step (a loaded worker's group commit); `browser`: a browser's headers."""
    async with serving(connections, at_once) as (edge, protocols):
        template = BROWSER_REQUEST if browser else REQUEST
        payloads = [template.format(n=n % 997).encode() for n in range(997)]
        settle_gc()  # the worker's garbage-collector policy, set once it is ready to serve
        rounds = requests // connections
        warmup = max(1, rounds // 10)
        started = 0.0
        for round_number in range(rounds + warmup):
            if round_number == warmup:
                if profile is not None:
                    profile.enable()
                started = time.process_time()
            for index in range(connections):  # send() inlined: the loop measured is the one of earlier figures
                protocol = protocols[index]
                if protocol.closing:  # closed after max_keepalive_requests: the client connects again
                    protocol.connection_lost(None)
                    protocol = protocols[index] = connect(edge, index)
                protocol.data_received(payloads[(round_number * connections + index) % 997])
            await asyncio.sleep(0)  # the output step: the group commit, then the responses
        elapsed = time.process_time() - started
        if profile is not None:
            profile.disable()
        recorded = edge.stats.events.get("impression", 0)
        if recorded != (rounds + warmup) * connections:
            raise SystemExit(f"{recorded:,} of {(rounds + warmup) * connections:,} requests recorded: not all served")
    return elapsed / (rounds * connections) * 1e6


async def report(rounds: int, connections: int, watched: bool) -> tuple[list[float], int]:
    """µs of each report's frame after each 2,000 requests (`--report`), and the last frame's size in bytes."""
    async with serving(connections, at_once=True) as (edge, protocols):  # a light load's mode
        edge.recent.watched = watched
        payloads = [REQUEST.format(n=n % 997).encode() for n in range(997)]
        memory = ResidentMemory()
        settle_gc()
        snapshot = edge.snapshot()
        timings, frame = [], b""
        for _ in range(rounds):
            for number in range(REPORT_EVERY):
                index = number % connections
                send(edge, protocols, index, payloads[number % 997])
                if index == connections - 1:
                    await asyncio.sleep(0)
            started = time.perf_counter()
            frame, snapshot = stats_frame(edge, snapshot, memory=memory)
            timings.append((time.perf_counter() - started) * 1e6)
    return timings[REPORT_WARMUP:], len(frame)


REPORT_EVERY = 2_000  # requests between two reports: a second at 2,000 requests/s
REPORT_WARMUP = 5


def print_report(rounds: int, connections: int) -> None:
    for watched in (False, True):
        timings, size = uvloop.run(report(rounds + REPORT_WARMUP, connections, watched))
        p90 = statistics.quantiles(timings, n=10)[-1]
        print(
            f"report, live tail {'watched' if watched else 'unwatched'}: median {statistics.median(timings):.0f} µs, "
            f"p90 {p90:.0f} µs, {size:,} bytes ({len(timings)} reports, each after {REPORT_EVERY:,} requests)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--profile", action="store_true", help="print the 25 functions with the most own time")
    parser.add_argument("--instructions", action="store_true", help="instructions per request (callgrind)")
    parser.add_argument(
        "--at-once", action="store_true", help="answer each read at its end, as under a light load (default: group)"
    )
    parser.add_argument("--browser", action="store_true", help="requests with a browser's 14 headers (default: 4)")
    parser.add_argument("--report", action="store_true", help="time the worker's once-a-second report instead")
    options = parser.parse_args(argv)
    if options.report:
        print_report(max(1, options.requests // REPORT_EVERY), options.connections)
        return 0
    if options.instructions:
        return count_instructions(options.requests, options.connections, options.at_once, options.browser)
    profile = cProfile.Profile() if options.profile else None
    us = uvloop.run(run(options.requests, options.connections, profile, options.at_once, options.browser))
    build = "compiled (mypyc)" if _native.ACTIVE else f"pure Python ({_native.REASON})"
    print(f"{us:.2f} µs CPU per request, {build} ({options.requests:,} requests, {options.connections} connections)")
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    return 0


# The compiled build's entry points from the event loop: everything a request costs runs inside one of them.
ENTRY_POINTS = ("CPyPy_pipeline___EdgeProtocol___data_received", "CPyPy_runtime___Edge____write_output")


def count_instructions(requests: int, connections: int, at_once: bool, browser: bool = False) -> int:
    if not _native.ACTIVE:
        raise SystemExit(f"--instructions counts the compiled build; it is not active: {_native.REASON}")
    with tempfile.TemporaryDirectory(prefix="trackpoint-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--collect-atstart=no"]
        argv += [f"--toggle-collect={name}" for name in ENTRY_POINTS]
        argv += [sys.executable, __file__, "--requests", str(requests), "--connections", str(connections)]
        argv += ["--at-once"] if at_once else []
        argv += ["--browser"] if browser else []
        subprocess.run(argv, check=True, capture_output=True)
        totals = next(line for line in out.read_text().splitlines() if line.startswith(("summary:", "totals:")))
    rounds = requests // connections
    served = (rounds + max(1, rounds // 10)) * connections  # the warm-up rounds run inside the entry points too
    print(f"{int(totals.split()[1]) / served:,.0f} instructions per request, compiled (mypyc) ({served:,} requests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
