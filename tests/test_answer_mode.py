"""When the answers leave: under a light load at the end of each read, under load at the iteration's output step
(one log write for every request of the iteration). Either way a 2xx leaves only once its event's line is in the
log, and the worker picks the mode from its event loop's own CPU use."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from conftest import edge_in_process
from trackpoint.edge import runtime
from trackpoint.edge.pipeline import EdgeProtocol
from transport import RecordingTransport

PIXEL = b"GET /i?imp=%s HTTP/1.1\r\nHost: t\r\n\r\n"


def _log_lines(tmp_path: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in (tmp_path / "logs").rglob("*.jsonl"))


class LogWatchingTransport(RecordingTransport):
    """Notes, at each write of an answer, how many lines the log held on disk at that moment."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__()
        self.tmp_path = tmp_path
        self.lines_at_write: list[int] = []

    def write(self, data: bytes) -> None:
        self.lines_at_write.append(_log_lines(self.tmp_path))
        super().write(data)


def _burst(tmp_path: Path, at_once: bool) -> tuple[list[list[int]], list[list[int]]]:
    """Three connections read in one iteration; per connection, the log's line counts at its writes, after all
    three reads (before the loop's output step ran) and after the output step."""

    async def run() -> tuple[list[list[int]], list[list[int]]]:
        edge = edge_in_process(tmp_path)
        await edge.start_collectors()
        edge.answer_at_once = at_once
        transports = []
        for name in (b"a", b"b", b"c"):
            protocol = EdgeProtocol(edge)
            transport = LogWatchingTransport(tmp_path)
            protocol.connection_made(transport)  # type: ignore[arg-type]
            protocol.data_received(PIXEL % name)
            transports.append(transport)
        before_step = [list(t.lines_at_write) for t in transports]
        await asyncio.sleep(0)  # the iteration's output step
        after_step = [list(t.lines_at_write) for t in transports]
        for transport in transports:
            assert bytes(transport.written).startswith(b"HTTP/1.1 200 ")
        await edge.drain(1.0)
        return before_step, after_step

    return asyncio.run(run())


def test_under_a_light_load_each_read_is_answered_at_its_end_once_its_line_is_written(tmp_path: Path) -> None:
    before_step, after_step = _burst(tmp_path, at_once=True)
    # Each connection was answered before the next was read, and its line (and the earlier ones) was on disk then.
    assert before_step == [[1], [2], [3]]
    assert after_step == before_step  # the output step found nothing left to write


def test_under_load_the_iterations_answers_wait_for_its_group_commit(tmp_path: Path) -> None:
    before_step, after_step = _burst(tmp_path, at_once=False)
    assert before_step == [[], [], []]  # nothing left before the output step
    assert after_step == [[3], [3], [3]]  # one write of the three lines, then the three answers


def test_the_pipelining_budget_stays_per_iteration_when_reads_are_answered_at_once(tmp_path: Path) -> None:
    async def run() -> list[bytes]:
        edge = edge_in_process(tmp_path, max_pipelined_per_iteration=5)
        await edge.start_collectors()
        assert edge.answer_at_once
        written = []
        for _ in range(2):  # two reads of 4 pipelined pixels in one iteration: 3 + 3 pipelined, over the budget
            protocol = EdgeProtocol(edge)
            transport = RecordingTransport()
            protocol.connection_made(transport)  # type: ignore[arg-type]
            protocol.data_received(b"".join(PIXEL % str(n).encode() for n in range(4)))
            written.append(bytes(transport.written))
        await asyncio.sleep(0)
        await edge.drain(1.0)
        return written

    first, second = asyncio.run(run())
    assert first.count(b"HTTP/1.1 200 ") == 4 and b"Connection: close" not in first
    # The first read's end wrote its answers without starting a new budget: the second read's 2nd pipelined request
    # spends it (the 5th), and is its last, answered `Connection: close`.
    assert second.count(b"HTTP/1.1 200 ") == 3 and second.count(b"Connection: close") == 1


def _scheduled_steps(tmp_path: Path, at_once: bool, requests: list[bytes]) -> tuple[int, list[bytes]]:
    """How many output steps the edge scheduled for one read per request (each on a new connection), and what each
    connection was sent after the loop ran on."""

    async def run() -> tuple[int, list[bytes]]:
        edge = edge_in_process(tmp_path, max_pipelined_per_iteration=5)
        await edge.start_collectors()
        edge.answer_at_once = at_once
        loop = asyncio.get_running_loop()
        steps = 0
        call_soon = loop.call_soon

        def counting(callback: Any, *args: Any, **kwargs: Any) -> asyncio.Handle:
            nonlocal steps
            steps += callback == edge._write_output
            return call_soon(callback, *args, **kwargs)

        loop.call_soon = counting  # type: ignore[method-assign,assignment]
        transports = []
        for request in requests:
            protocol = EdgeProtocol(edge)
            transport = RecordingTransport()
            protocol.connection_made(transport)  # type: ignore[arg-type]
            protocol.data_received(request)
            transports.append(transport)
            await asyncio.sleep(0)
        loop.call_soon = call_soon  # type: ignore[method-assign]
        await edge.drain(1.0)
        return steps, [bytes(transport.written) for transport in transports]

    return asyncio.run(run())


def test_a_read_answered_at_once_schedules_no_output_step(tmp_path: Path) -> None:
    steps, written = _scheduled_steps(tmp_path, True, [PIXEL % b"a", PIXEL % b"b", PIXEL % b"c"])
    assert steps == 0
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in written)
    steps, written = _scheduled_steps(tmp_path, False, [PIXEL % b"a", PIXEL % b"b", PIXEL % b"c"])
    assert steps == 3  # under load: one per iteration with answers
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in written)


def test_a_pipelining_read_answered_at_once_schedules_the_next_budget(tmp_path: Path) -> None:
    # Reads of 4 pipelined pixels (3 pipelined each), each in an iteration of its own, with a budget of 5: the
    # budget starts again every iteration (one step scheduled each time), so none is ever cut.
    deep = b"".join(PIXEL % str(n).encode() for n in range(4))
    steps, written = _scheduled_steps(tmp_path, True, [deep] * 4)
    assert steps == 4
    assert [answer.count(b"HTTP/1.1 200 ") for answer in written] == [4] * 4
    assert not any(b"Connection: close" in answer for answer in written)


def test_the_mode_follows_the_event_loops_cpu(tmp_path: Path) -> None:
    async def run() -> tuple[bool, bool, bool]:
        edge = edge_in_process(tmp_path)
        watch = asyncio.get_running_loop().create_task(edge.watch_load())
        initially = edge.answer_at_once
        deadline = time.monotonic() + 10 * runtime.LOAD_WINDOW_S
        while time.monotonic() < deadline:  # a core's worth of work, in slices that let the watch run
            spin = time.monotonic() + 0.005
            while time.monotonic() < spin:
                pass
            await asyncio.sleep(0)
        loaded = edge.answer_at_once
        await asyncio.sleep(4 * runtime.LOAD_WINDOW_S)  # idle again
        idle = edge.answer_at_once
        watch.cancel()
        return initially, loaded, idle

    assert asyncio.run(run()) == (True, False, True)


def test_between_the_two_thresholds_the_mode_stays_as_it_was() -> None:
    middle = (runtime.ANSWER_AT_ONCE_FROM + runtime.ANSWER_AT_ONCE_UNTIL) / 2
    assert runtime.answer_at_once_after(middle, True) is True
    assert runtime.answer_at_once_after(middle, False) is False
    assert runtime.answer_at_once_after(runtime.ANSWER_AT_ONCE_UNTIL, True) is False
    assert runtime.answer_at_once_after(runtime.ANSWER_AT_ONCE_FROM - 0.01, False) is True
