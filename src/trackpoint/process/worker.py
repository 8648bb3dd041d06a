"""A worker process: receives its configuration from the supervisor, serves the shared port, drains on SIGTERM.

Started by the supervisor as `python -m trackpoint.process.worker --slot N --listen-fd F --control-fd C`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys

import msgspec
import uvloop

from trackpoint.edge.pipeline import EdgeProtocol
from trackpoint.edge.runtime import Edge
from trackpoint.edge.stats import Snapshot
from trackpoint.event import reseed_random_ids
from trackpoint.log_limiter import REPEAT_INTERVAL_S, LogLimiter
from trackpoint.plugins import registry
from trackpoint.process import control, runner

log = logging.getLogger("trackpoint.worker")

STATS_INTERVAL_S = 1.0
GC_YOUNG_THRESHOLD = 20_000


# The exit code of a worker that could not start (it has told the supervisor why).
EXIT_START_FAILED = 3


async def serve(start: control.Start, listener: socket.socket, channel: socket.socket) -> bool:
    """Serves until SIGTERM (or the supervisor is gone); False when the worker could not start."""
    loop = asyncio.get_running_loop()
    try:
        config = start.decode_config()
        edge = Edge(config, start.version, start.slot, registry())
        await edge.start_collectors()
        server = await loop.create_server(lambda: EdgeProtocol(edge), sock=listener, backlog=config.server.backlog)
    except Exception as exc:  # the supervisor logs the reason once, however often the restarted worker fails
        with contextlib.suppress(OSError):
            channel.sendall(control.frame(control.Failed.of(exc)))  # still blocking: before the loop owns it
        return False
    settle_gc()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reader, writer = await asyncio.open_unix_connection(sock=channel)
    first = edge.snapshot()
    writer.write(control.frame(control.Ready(pid=os.getpid(), snapshot=first)))
    background = [
        loop.create_task(edge.run_timers(), name="timers"),
        loop.create_task(edge.watch_load(), name="load"),
        loop.create_task(_report(edge, writer, first), name="stats"),
        loop.create_task(_follow_supervisor(reader, edge, stop), name="supervisor"),
    ]
    await stop.wait()
    # Drain: stop accepting (the supervisor keeps the socket, so queued connections wait for the next worker),
    # finish in-flight requests, flush every collector, report the final counters.
    server.close()
    await edge.drain(config.server.drain_timeout_s)
    for task in background:
        task.cancel()
    # ConnectionError, or RuntimeError from uvloop's closed transport: the supervisor was killed meanwhile.
    with contextlib.suppress(ConnectionError, RuntimeError):
        writer.write(control.frame(control.Bye(snapshot=edge.snapshot())))
        await writer.drain()
        writer.close()
    return True


def settle_gc() -> None:
    """Everything built so far (config, routes, the user-agent parser's thousands of matchers) lives as long as the
    worker: freezing it keeps the collector from re-scanning it, and a larger young generation makes the per-request
    garbage cheaper to collect. bench/hotpath.py applies the same policy."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


async def _report(edge: Edge, writer: asyncio.StreamWriter, snapshot: Snapshot) -> None:
    """Stats once a second. They also tell the supervisor that this worker's loop runs (one silent for
    server.worker_stall_timeout_s is restarted): a report goes out whatever fails in making it."""
    memory = ResidentMemory()
    while True:
        await asyncio.sleep(STATS_INTERVAL_S)
        message, snapshot = stats_frame(edge, snapshot, memory=memory)
        writer.write(message)


_report_log = LogLimiter(REPEAT_INTERVAL_S)


def stats_frame(
    edge: Edge, previous: Snapshot, limit: int = control.MAX_FRAME, memory: ResidentMemory | None = None
) -> tuple[bytes, Snapshot]:
    """The frame of a Stats report, and the snapshot it carries: the previous one when the counters cannot be read
    (a plugin's health() that returns garbage); with the recent events while the dashboard's tail is watched, and
    without them when they would take it over `limit`."""
    try:
        snapshot = edge.snapshot()
    except Exception:
        _report_log.log(log, logging.ERROR, "snapshot", "cannot read the counters to report", exc_info=True)
        snapshot = previous
    recent = edge.recent.take() if edge.recent.watched else []
    rss = 0 if memory is None else memory.read()
    stats = control.Stats(snapshot=snapshot, rss_bytes=rss, recent=recent)
    try:
        return control.frame(stats, limit), snapshot
    except control.FrameTooLarge as exc:
        _report_log.log(log, logging.ERROR, "too large", "the report leaves its recent events out: %s", exc)
        return control.frame(msgspec.structs.replace(stats, recent=[]), limit), snapshot


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class ResidentMemory:
    """This process's resident memory, read once a second with a pread on a descriptor kept open on
    /proc/self/statm: 3.4 µs a read against 20 µs for opening and reading the file each time (timed warm; about
    100 µs after 2,000 requests). 0 where /proc is not there."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None

    def read(self) -> int:
        if self._fd is None:
            return 0
        try:
            return int(os.pread(self._fd, 256, 0).split()[1]) * PAGE_SIZE
        except (OSError, ValueError, IndexError):
            return 0


async def _follow_supervisor(reader: asyncio.StreamReader, edge: Edge, stop: asyncio.Event) -> None:
    """Takes the supervisor's commands (the dashboard's tail watched or left). A worker whose supervisor is gone
    drains and exits rather than live on as an orphan: a supervisor killed with this worker's reports unread leaves
    a reset rather than an end of file, gone all the same, and so is a channel that cannot be read on."""
    with contextlib.suppress(OSError):  # ChannelBroken, ConnectionError
        while True:
            try:
                command = await control.receive_command(reader)
            except control.Undecodable as exc:  # a newer supervisor's command: the channel is still in sync
                _report_log.log(log, logging.ERROR, "command", "a supervisor's command skipped: %s", exc)
                continue
            if command is None:
                break
            edge.recent.watched = command.watched
    stop.set()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="trackpoint-worker")
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s worker-{args.slot} %(levelname)s %(message)s",
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which drains us with SIGTERM
    reseed_random_ids()
    channel = socket.socket(fileno=args.control_fd)
    listener = socket.socket(fileno=args.listen_fd)
    start = control.receive_start(channel)
    if not runner.run(serve(start, listener, channel), uvloop.new_event_loop):
        sys.exit(EXIT_START_FAILED)


if __name__ == "__main__":
    main()
