"""The dashboard's arithmetic and the worker's tail, in process: rates, percentiles and series from the sampled
counters, collector rows (time until the spool is full, lag), the tail's privacy filter, the report carrying it only
while it is watched, and how collectors' new gauges add over workers."""

from __future__ import annotations

import asyncio
import socket

import msgspec
import pytest

from conftest import make_event
from trackpoint.admin.dashboard.history import History, collector_rows, percentile
from trackpoint.collectors.base import CollectorStats
from trackpoint.config import load
from trackpoint.edge.runtime import Edge
from trackpoint.edge.stats import Snapshot, add
from trackpoint.edge.tail import TAIL_EVENT_BYTES, TAIL_EVENTS, TAIL_VALUE_CHARS, RecentEvents
from trackpoint.event import Context
from trackpoint.http.latency import LATENCY_BUCKETS
from trackpoint.plugins import registry
from trackpoint.process import control
from trackpoint.process.control import recent_events
from trackpoint.process.worker import PAGE_SIZE, ResidentMemory, _follow_supervisor, stats_frame


def _counts(**buckets: int) -> list[int]:
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    for name, value in buckets.items():
        counts[int(name[1:])] = value
    return counts


def test_percentile_interpolates_within_the_bucket() -> None:
    # 100 requests: 50 in (0.5 ms, 1 ms], 50 in (1 ms, 2.5 ms]
    counts = _counts(b3=50, b4=50)
    assert percentile(counts, 0.5) == pytest.approx(0.001)
    assert percentile(counts, 0.25) == pytest.approx(0.00075)
    assert percentile(counts, 0.99) == pytest.approx(0.001 + 0.0015 * 49 / 50)
    assert percentile([0] * len(counts), 0.5) is None
    assert percentile(_counts(b12=3), 0.5) == LATENCY_BUCKETS[-1]  # beyond the last bound: the bound


def _snapshot(second: int) -> Snapshot:
    """After `second` seconds of 20 impressions and 2 refusals a second (each answered in (0.5 ms, 1 ms]), with
    a Kafka collector sending 10 a second while its spool grows 100 bytes a second."""
    return Snapshot(
        requests=22 * second,
        events={"impression": 20 * second},
        rejected={"missing_field": 2 * second} if second else {},
        latency_counts=_counts(b3=22 * second),
        collectors={"kafka": CollectorStats(sent=10 * second, spooled_bytes=100 * second, spool_max_bytes=10_000)},
    )


def test_rates_series_and_latency_from_the_samples() -> None:
    history = History()
    for second in range(21):
        history.add(1000.0 + second, _snapshot(second))
    rates = history.rates()
    assert rates["requests"] == 22.0
    assert rates["events"] == {"impression": 20.0}
    assert rates["rejected"] == {"missing_field": 2.0}
    latency = history.latency()
    assert latency["p50"] == pytest.approx(0.75)  # milliseconds: the middle of (0.5, 1]
    series = history.series()
    assert series["step_s"] == 5
    assert series["requests"] == [22.0, 22.0, 22.0, 22.0]
    assert series["events"] == {"impression": [20.0] * 4}
    assert series["rejected"] == {"missing_field": [2.0] * 4}
    assert len(series["t"]) == len(series["p50"]) == len(series["p99"]) == 4
    totals = _snapshot(20)
    totals.collectors["kafka"].pending = 5
    totals.collectors["kafka"].last_success_s = 1015.0
    config = load(None, registry=registry()).config
    (row,) = collector_rows(config, totals, history, now=1020.0)
    assert row["sent_per_s"] == 10.0
    assert row["seconds_until_full"] == 80.0  # 8,000 bytes of room at 100 bytes a second
    assert row["lag_s"] == 5.0  # events wait, and the last delivery was 5 s ago
    assert row["last_success_ms"] == 1_015_000


def test_no_rates_before_two_samples() -> None:
    history = History()
    assert history.rates()["requests"] == 0.0
    assert history.latency()["p99"] is None
    history.add(1.0, Snapshot())
    assert history.series()["requests"] == []


def test_the_history_is_bounded() -> None:
    history = History(keep_s=10)
    for second in range(100):
        history.add(float(second), Snapshot(requests=second))
    assert len(history.samples) == 11


def test_collector_gauges_add_over_workers() -> None:
    one = Snapshot(collectors={"kafka": CollectorStats(spool_max_bytes=100, last_success_s=50.0)})
    two = Snapshot(collectors={"kafka": CollectorStats(spool_max_bytes=100, last_success_s=70.0)})
    total = add(one, two).collectors["kafka"]
    assert total.spool_max_bytes == 200  # each worker has its own spool
    assert total.last_success_s == 70.0  # the latest, not a sum


def test_the_tail_is_filtered_as_an_untrusted_collector_gets_it() -> None:
    config = load("examples/cdp.yaml", registry=registry()).config
    recent = RecentEvents(config)
    event_type = next(name for name, spec in config.event_types.items() if "lang" in spec.fields)
    event = make_event(1, event_type)
    event.dims["lang"] = "de-DE"  # read from a header: private
    event.ctx = Context(ip="203.0.113.9", ua="Agent/1", referer="https://shop.example.com/p?email=a@b.c")
    for _ in range(TAIL_EVENTS + 5):
        recent.events.append(event)
    taken, errors = recent_events(recent.take())
    assert len(taken) == TAIL_EVENTS and errors == []  # bounded
    assert recent.take() == []  # handed over once
    (filtered,) = {msgspec.json.encode(e).decode() for e in taken}
    assert "203.0.113" not in filtered and "Agent/1" not in filtered and "de-DE" not in filtered
    assert "email" not in filtered and "https://shop.example.com/p" in filtered
    assert event.ctx.ip == "203.0.113.9"  # the original, which the log records, is untouched


def test_the_tail_is_bounded_in_bytes_and_a_malformed_event_costs_only_itself() -> None:
    """Events a plugin made huge are cut or left out of the report, so that it never nears the control channel's
    frame limit (a 1.5 MB dim on 50 events made a 69 MB report, which the supervisor refused, and stopped following
    the worker); one it left malformed is skipped by the supervisor alone, not the report that carries it."""
    recent = RecentEvents(load("examples/cdp.yaml", registry=registry()).config)
    big = make_event(1)
    big.dims["blob"] = "x" * 1_500_000
    big.ctx = Context(ua="U" * 20_000, referer="https://shop.example.com/" + "p" * 20_000)
    huge_names = make_event(2)
    huge_names.dims.update({f"name-{n:05d}-{'n' * 200}": "v" for n in range(100)})  # cutting values is not enough
    wrong = make_event(3)
    wrong.dims["n"] = 7  # type: ignore[assignment]  # as a plugin may leave it
    broken = make_event(4)
    broken.ctx = None  # type: ignore[assignment]
    for event in (big, huge_names, wrong, broken, make_event(5)):
        recent.events.append(event)
    encoded = recent.take()
    assert all(len(one) <= TAIL_EVENT_BYTES for one in encoded)
    assert len(control.frame(control.Stats(snapshot=Snapshot(), recent=encoded))) <= TAIL_EVENTS * TAIL_EVENT_BYTES
    events, errors = recent_events(encoded)
    assert [e.dims["imp"] for e in events] == ["imp-1", "imp-5"]  # the cut one and the sound one
    assert events[0].dims["blob"] == "x" * (TAIL_VALUE_CHARS - 1) + "…"
    assert errors == []  # the malformed ones are left out by the worker (trackpoint.event.malformed)
    # Whatever a worker sends, the supervisor skips a malformed event alone.
    sent = [msgspec.Raw(msgspec.msgpack.encode(wrong)), *encoded]
    events, errors = recent_events(sent)
    assert [e.dims["imp"] for e in events] == ["imp-1", "imp-5"]
    assert len(errors) == 1 and "Expected `str`, got `int`" in errors[0]
    assert len(big.dims["blob"]) == 1_500_000  # the event the log records is untouched


def test_a_report_over_the_frame_limit_is_never_built_and_goes_without_its_sample() -> None:
    edge = Edge(load("examples/cdp.yaml", registry=registry()).config, "v1", 0, registry())
    edge.recent.watched = True
    for number in range(TAIL_EVENTS):
        edge.recent.events.append(make_event(number))
    full, _ = stats_frame(edge, Snapshot())
    with pytest.raises(control.FrameTooLarge):
        control.frame(control.Stats(snapshot=Snapshot(requests=1)), limit=10)
    for number in range(TAIL_EVENTS):
        edge.recent.events.append(make_event(number))
    message, snapshot = stats_frame(edge, Snapshot(), limit=len(full) - 100)
    assert len(message) < len(full) - 100
    stats = msgspec.msgpack.decode(message[4:], type=control.FromWorker)
    assert isinstance(stats, control.Stats) and stats.recent == [] and stats.snapshot == snapshot


def _report(edge: Edge, memory: ResidentMemory | None = None) -> control.Stats:
    message, _ = stats_frame(edge, Snapshot(), memory=memory)
    stats = msgspec.msgpack.decode(message[4:], type=control.FromWorker)
    assert isinstance(stats, control.Stats)
    return stats


def test_a_report_carries_the_newest_events_only_while_the_tail_is_watched() -> None:
    """No one watching the dashboard: the report leaves the tail out, and the filtering and encoding it costs are
    not paid. The deque keeps the newest meanwhile: a tail opened again starts with them, each handed over once."""
    edge = Edge(load("examples/cdp.yaml", registry=registry()).config, "v1", 0, registry())
    for number in range(TAIL_EVENTS + 3):
        edge.recent.events.append(make_event(number))
    assert _report(edge).recent == []
    assert len(edge.recent.events) == TAIL_EVENTS  # still there, bounded
    edge.recent.watched = True
    events, errors = recent_events(_report(edge).recent)
    assert [e.dims["imp"] for e in events] == [f"imp-{n}" for n in range(3, TAIL_EVENTS + 3)] and errors == []
    assert _report(edge).recent == []  # handed over once
    edge.recent.events.append(make_event(99))
    edge.recent.watched = False
    assert _report(edge).recent == []


def test_the_resident_memory_is_read_from_a_descriptor_kept_open() -> None:
    memory = ResidentMemory()
    with open("/proc/self/statm", "rb") as statm:
        opened = int(statm.read().split()[1]) * PAGE_SIZE
    grown = bytearray(64 << 20)  # touched: resident
    read = memory.read()
    assert opened + (60 << 20) <= read <= opened + (80 << 20)
    del grown
    edge = Edge(load("examples/cdp.yaml", registry=registry()).config, "v1", 0, registry())
    assert _report(edge, memory).rss_bytes > 0  # what the worker sends


def test_the_worker_follows_the_supervisors_commands_and_stops_when_it_is_gone() -> None:
    """Tail commands switch the report's tail; a frame that is not a command is skipped (the channel is still in
    sync); the supervisor's end of the channel closing stops the worker."""
    edge = Edge(load("examples/cdp.yaml", registry=registry()).config, "v1", 0, registry())
    supervisor, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    async def follow() -> None:
        reader, writer = await asyncio.open_unix_connection(sock=worker)
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(_follow_supervisor(reader, edge, stop))

        async def send(frame: bytes, watched: bool) -> None:
            supervisor.sendall(frame)
            for _ in range(500):
                if edge.recent.watched is watched:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"the worker's tail is not watched={watched} after the command")

        await send(control.frame(control.Tail(watched=True)), True)
        await send(control.frame(control.Stats(snapshot=Snapshot())), True)  # not a command: skipped
        await send(control.frame(control.Tail(watched=False)), False)  # read: the channel is still in sync
        await send(control.frame(control.Tail(watched=True)), True)
        assert not stop.is_set()
        supervisor.close()
        await asyncio.wait_for(stop.wait(), 5)
        await task
        writer.close()

    asyncio.run(follow())
