"""Pipelined requests under pressure: the worker answers at most `max_pipelined_per_iteration` requests pipelined
behind the first of a read in one event-loop iteration, over all its connections, so clients that pipeline deeply
without reading (bench/flood.py `slow_read`) cannot make one iteration long for every other client."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import edge_in_process
from trackpoint.edge.pipeline import EdgeProtocol
from trackpoint.edge.runtime import Edge
from transport import RecordingTransport

PIXEL = b"GET /i?imp=p%d HTTP/1.1\r\nHost: t\r\n\r\n"


def _answers(transport: RecordingTransport) -> tuple[int, int]:
    """(200 answers, of them saying `Connection: close`) in what a connection was sent."""
    answers = bytes(transport.written).split(b"HTTP/1.1 ")[1:]
    assert all(answer.startswith(b"200 ") for answer in answers)
    return len(answers), sum(b"\r\nConnection: close\r\n" in answer for answer in answers)


def _pipeline(edge: Edge, iterations: list[list[int]]) -> list[RecordingTransport]:
    """Per iteration, one connection per entry, each sending that many pipelined pixels in one read; then that
    iteration's output step runs. The connections' transports, in order."""

    async def run() -> list[RecordingTransport]:
        await edge.start_collectors()
        transports = []
        for reads in iterations:
            for depth in reads:
                protocol = EdgeProtocol(edge)
                transport = RecordingTransport()
                protocol.connection_made(transport)  # type: ignore[arg-type]
                protocol.data_received(b"".join(PIXEL % n for n in range(depth)))
                transports.append(transport)
            await asyncio.sleep(0)  # the output step: the log's group commit, then the answers
        await edge.drain(1.0)
        return transports

    return asyncio.run(run())


def test_an_iteration_answers_its_share_of_pipelined_requests_then_closes_the_pipelines(tmp_path: Path) -> None:
    edge = edge_in_process(tmp_path, max_pipelined_per_iteration=5)
    first, second, third = _pipeline(edge, [[4, 4, 4]])
    # The first read's 3 pipelined requests fit; the second's second takes the 4th, its third the 5th and last: it
    # is answered `Connection: close` and the rest of that read is not read; the third gets its first request (not
    # pipelined) and one pipelined, its last.
    assert _answers(first) == (4, 0)
    assert _answers(second) == (3, 1)
    assert _answers(third) == (2, 1)
    assert edge.stats.requests == 9
    assert edge.stats.pipelines_cut == 2  # trackpoint_pipelines_cut_total


def test_the_budget_is_per_iteration(tmp_path: Path) -> None:
    edge = edge_in_process(tmp_path, max_pipelined_per_iteration=5)
    # Three reads of 5 (4 pipelined each), each in an iteration of its own: never cut; then a read of 7 is cut at
    # its 6th request, the 5th pipelined.
    *apart, deep = _pipeline(edge, [[5], [5], [5], [7]])
    assert [_answers(transport) for transport in apart] == [(5, 0)] * 3
    assert _answers(deep) == (6, 1)
    assert edge.stats.pipelines_cut == 1


def test_unset_it_is_four_full_reads_so_a_few_deep_pipelines_are_never_cut(tmp_path: Path) -> None:
    edge = edge_in_process(tmp_path, max_pipelined_requests=4)
    assert edge.pipelined_budget == 16
    transports = _pipeline(edge, [[5] * 9])
    # Each read counts its 2nd and 3rd requests; its 4th is the per-read cap's last (not the budget's). The first
    # 7 take 14 of the 16 and are closed at their cap; the 8th takes the last two, its 3rd closing it; the 9th is
    # closed at its first pipelined request.
    assert [_answers(transport) for transport in transports[:7]] == [(4, 1)] * 7
    assert _answers(transports[7]) == (3, 1)
    assert _answers(transports[8]) == (2, 1)
    assert edge.stats.pipelines_cut == 2
