"""The tracker with a queue collector, end to end through the CLI: a queue outage changes nothing for clients and
loses nothing; a full spool under the backpressure policy answers 503; readiness follows a required collector.
The queue is a private Redis server (tests/conformance/target_redis_streams.py), really stopped and restarted.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from conformance.target_redis_streams import RedisStreamsTarget, make_target
from conftest import Tracker, free_port
from trackpoint.collectors.spool import Spool

pytestmark = pytest.mark.e2e  # trackers and real queues


@pytest.fixture
def redis_target() -> Iterator[RedisStreamsTarget]:
    target = asyncio.run(make_target())
    yield target
    asyncio.run(target.close())


def queue_config(queue: dict[str, Any], **event_type: Any) -> dict[str, Any]:
    impression = {"preset": "impression", "collectors": ["log", "queue"], **event_type}
    click = {"preset": "click"}  # fed by the log collector only
    return {"collectors": {"queue": queue}, "event_types": {"impression": impression, "click": click}}


def eventually(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.timeout(90)
def test_a_queue_outage_is_invisible_to_clients_and_loses_no_event(
    tracker_factory: Any, redis_target: RedisStreamsTarget
) -> None:
    queue = redis_target.collector_config() | {"retry_initial_ms": 100, "retry_max_ms": 1000}
    tracker: Tracker = tracker_factory(queue_config(queue))
    statuses = [tracker.get(f"/i?imp=before-{i}&cid=c1")[0] for i in range(50)]
    eventually(lambda: len(asyncio.run(redis_target.read_ids())) == 50, 10, "the first events in the stream")
    asyncio.run(redis_target.stop())
    statuses += [tracker.get(f"/i?imp=during-{i}&cid=c1")[0] for i in range(300)]
    assert set(statuses) == {200}
    label = 'collector="queue"'
    assert tracker.wait_metric("trackpoint_collector_retried_total", label, 1, timeout_s=10) >= 1
    assert tracker.wait_metric("trackpoint_collector_spooled_events", label, 1, timeout_s=10) >= 1
    asyncio.run(redis_target.start())
    logged = {event.id for event in tracker.wait_events(350)}
    assert len(logged) == 350
    eventually(lambda: logged <= set(asyncio.run(redis_target.read_ids())), 30, "every logged event in the stream")
    assert tracker.metric("trackpoint_collector_dropped_total", label) == 0


@pytest.mark.timeout(60)
def test_a_full_spool_under_backpressure_answers_503(tracker_factory: Any) -> None:
    unreachable = {
        "type": "redis_streams",
        "url": f"redis://127.0.0.1:{free_port()}/0",
        "batch_max_events": 20,
        "max_pending_events": 100,
        "spool": {"max_bytes": 65536, "when_full": "backpressure"},
    }
    tracker: Tracker = tracker_factory(queue_config(unreachable))
    statuses: list[int] = []
    deadline = time.monotonic() + 30
    while 503 not in statuses and time.monotonic() < deadline:
        status, headers, _ = tracker.get(f"/i?imp=bp-{len(statuses)}&cid=c1")
        statuses.append(status)
        if status == 503:
            assert headers["x-reject-reason"] == "backpressure"
    assert 503 in statuses, "the spool never filled"
    assert tracker.wait_metric("trackpoint_rejected_total", 'reason="backpressure"', 1) >= 1
    assert tracker.metric("trackpoint_collector_accepting", 'collector="queue"') == 0
    assert tracker.get("/c?imp=x&url=https://example.com/")[0] == 302  # other event types are unaffected


@pytest.mark.timeout(60)
def test_readiness_follows_a_required_collector(tracker_factory: Any, redis_target: RedisStreamsTarget) -> None:
    queue = redis_target.collector_config() | {"required": True, "retry_initial_ms": 100, "retry_max_ms": 500}
    tracker: Tracker = tracker_factory(queue_config(queue))
    assert tracker.admin("GET", "/readyz")[0] == 200
    asyncio.run(redis_target.stop())

    def ready() -> int:
        tracker.get(f"/i?imp=r-{time.monotonic()}")  # a send notices the outage
        return tracker.admin("GET", "/readyz")[0]

    eventually(lambda: ready() == 503, 20, "readiness to fail")
    assert b'"required_collectors_unhealthy":["queue"]' in tracker.admin("GET", "/readyz")[2]
    asyncio.run(redis_target.start())
    eventually(lambda: ready() == 200, 30, "readiness to come back")


def redis_cli(target: RedisStreamsTarget, *command: str) -> None:
    subprocess.run(["redis-cli", "-p", str(target.server.port), *command], check=True, capture_output=True)


@pytest.mark.timeout(90)
def test_a_paused_redis_fails_readiness_while_the_send_hangs_not_at_its_timeout(
    tracker_factory: Any, redis_target: RedisStreamsTarget
) -> None:
    """A Redis that takes the connection and never answers (CLIENT PAUSE: as a blackholed or frozen server): with
    a round trip allowed 60 s, the required collector read healthy, and /readyz said ready, for 61 s while the
    backlog grew. With the default send_stall_s (2 s) /readyz fails within seconds, saying why, well within a
    15 s pause; once Redis answers it is ready again and every event is in the stream."""
    queue = redis_target.collector_config() | {"required": True, "timeout_s": 60.0, "retry_initial_ms": 100}
    tracker: Tracker = tracker_factory(queue_config(queue))
    assert tracker.get("/i?imp=before&cid=c1")[0] == 200
    eventually(lambda: len(asyncio.run(redis_target.read_ids())) == 1, 10, "the first event in the stream")
    # Redis 7.0 holds even CLIENT UNPAUSE until a pause of ALL ends: the pause ends by itself.
    pause_ends = time.monotonic() + 15
    redis_cli(redis_target, "CLIENT", "PAUSE", "15000", "ALL")
    sent = 0
    while True:
        assert tracker.get(f"/i?imp=p-{sent}&cid=c1")[0] == 200  # clients never wait for the queue
        sent += 1
        status, _, body = tracker.admin("GET", "/readyz")
        if status == 503:
            break
        assert time.monotonic() < pause_ends, "/readyz ready all through the pause, the send hanging"
        time.sleep(0.05)
    problems = json.loads(body)["collector_problems"]
    assert "send in flight for" in problems["queue"] and "send_stall_s 2 s" in problems["queue"], problems
    assert tracker.metric("trackpoint_collector_pending", 'collector="queue"') >= 1
    eventually(lambda: tracker.admin("GET", "/readyz")[0] == 200, 30, "readiness to come back")
    logged = {event.id for event in tracker.wait_events(1 + sent)}
    assert len(logged) == 1 + sent
    eventually(lambda: logged <= set(asyncio.run(redis_target.read_ids())), 30, "every logged event in the stream")


@pytest.mark.timeout(120)
def test_large_events_for_a_hung_queue_stay_within_max_pending_bytes(
    tracker_factory: Any, redis_target: RedisStreamsTarget
) -> None:
    """A frozen Redis (SIGSTOP) and a flood of 15 KB events (a long User-Agent and Referer, for a trusted
    collector): memory held all 3,000 (max_pending_events is 20,000), some 50 MB of the worker's memory, where the
    operator had allowed 8 MiB. Now the collector stops at max_pending_bytes under its policy (the spool off: the
    newest dropped, counted), its gauge and the worker's resident memory say so, and what it held is delivered once
    Redis runs again."""
    bound = 8 << 20
    queue = redis_target.collector_config() | {
        "trusted": True,
        "timeout_s": 60.0,
        "retry_initial_ms": 100,
        "max_pending_bytes": bound,
        "spool": {"enabled": False},
    }
    tracker: Tracker = tracker_factory(queue_config(queue))
    label = 'collector="queue"'
    for i in range(20):
        assert tracker.get(f"/i?imp=warm-{i}&cid=c1")[0] == 200
    eventually(lambda: len(asyncio.run(redis_target.read_ids())) == 20, 10, "the first events in the stream")
    assert tracker.wait_metric("trackpoint_collector_sent_total", label, 20) == 20  # a report since: its RSS
    rss_before = tracker.metric("trackpoint_worker_rss_bytes", 'slot="0"')
    assert rss_before > 0
    assert redis_target.server.pid is not None
    os.kill(redis_target.server.pid, signal.SIGSTOP)
    flood = 3000
    try:
        connection = http.client.HTTPConnection("127.0.0.1", tracker.port, timeout=10)
        headers = {"User-Agent": "Mozilla/5.0 " + "u" * 8000, "Referer": "https://example.com/" + "r" * 7000}
        for i in range(flood):
            connection.request("GET", f"/i?imp=flood-{i}&cid=c1", headers=headers)
            response = connection.getresponse()
            response.read()
            assert response.status == 200  # clients never wait for the queue
        connection.close()

        def offered() -> float:
            return tracker.metric("trackpoint_collector_received_total", label) + tracker.metric(
                "trackpoint_collector_dropped_total", label
            )

        eventually(lambda: offered() == 20 + flood, 20, "every event offered to the collector")  # one report
        held = tracker.metric("trackpoint_collector_pending", label)
        memory = tracker.metric("trackpoint_collector_memory_bytes", label)
        rss_growth = tracker.metric("trackpoint_worker_rss_bytes", 'slot="0"') - rss_before
        assert 300 < held < 700, held  # of 3,000: about 8 MiB of 15 KB events
        assert bound - 20_000 <= memory <= bound + 20_000, memory  # within an event of the bound
        assert rss_growth < 3 * bound, rss_growth  # the 3,000 held: some 50 MB
        assert tracker.metric("trackpoint_collector_dropped_total", label) == flood - held
    finally:
        os.kill(redis_target.server.pid, signal.SIGCONT)
    assert tracker.wait_metric("trackpoint_collector_sent_total", label, 20 + held, timeout_s=30) == 20 + held
    assert tracker.wait_metric_at_most("trackpoint_collector_memory_bytes", label, 0) == 0
    assert len(asyncio.run(redis_target.read_ids())) == 20 + held


def gauges(tracker: Tracker, collector: str) -> dict[str, float]:
    label = f'collector="{collector}"'
    names = ("pending", "spooled_events", "spooled_bytes", "accepting")
    return {name: tracker.metric(f"trackpoint_collector_{name}", label) for name in names}


@pytest.mark.timeout(90)
def test_a_killed_workers_backlog_and_backpressure_stop_counting_once_adopted(
    tracker_factory: Any, redis_target: RedisStreamsTarget
) -> None:
    """The supervisor keeps a dead worker's counters, never its gauges: once the next worker has adopted and
    delivered its spool, /metrics shows no backlog and no backpressure (TrackpointSpoolFilling and
    TrackpointCollectorNotDelivering would otherwise fire for good)."""
    queue = redis_target.collector_config() | {
        "batch_max_events": 20,
        "max_pending_events": 100,
        "retry_initial_ms": 100,
        "retry_max_ms": 500,
        "spool": {"max_bytes": 65536, "when_full": "backpressure"},
    }
    tracker: Tracker = tracker_factory(queue_config(queue))
    asyncio.run(redis_target.stop())
    statuses: list[int] = []
    deadline = time.monotonic() + 30
    while 503 not in statuses and time.monotonic() < deadline:
        statuses.append(tracker.get(f"/i?imp=k-{len(statuses)}&cid=c1")[0])
    assert 503 in statuses, "the spool never filled"
    label = 'collector="queue"'
    assert tracker.wait_metric("trackpoint_collector_spooled_bytes", label, 60_000, timeout_s=10) >= 60_000
    assert tracker.wait_metric_at_most("trackpoint_collector_accepting", label, 0) == 0
    [pid] = tracker.worker_pids()
    os.kill(pid, signal.SIGKILL)
    left = tracker.data_dir / "spool" / "queue" / f"w00-p{pid}"
    assert left.is_dir()
    asyncio.run(redis_target.start())
    tracker.wait_ready()
    eventually(lambda: not left.exists(), 30, "the dead worker's spool adopted and delivered")
    idle = {"pending": 0, "spooled_events": 0, "spooled_bytes": 0, "accepting": 1}
    deadline = time.monotonic() + 10
    while (now := gauges(tracker, "queue")) != idle and time.monotonic() < deadline:
        time.sleep(0.1)
    assert now == idle
    assert tracker.wait_metric("trackpoint_collector_sent_total", label, 100, timeout_s=10) >= 100  # the backlog
    assert tracker.get("/i?imp=after&cid=c1")[0] == 200


@pytest.mark.timeout(90)
def test_collectors_drain_at_once_within_one_drain_timeout(tracker_factory: Any) -> None:
    """Three collectors whose target is down drain together, within drain_timeout_s: each times out, spools what it
    held and persists its spool, and the supervisor never kills the worker mid-drain (one after the other they took
    3 x 3 s, past the supervisor's drain_timeout_s + 5 s)."""
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    names = ("q1", "q2", "q3")
    queue = {"type": "redis_streams", "url": unreachable, "retry_initial_ms": 100, "retry_max_ms": 500}
    config = {
        "server": {"drain_timeout_s": 3},
        "collectors": {name: queue for name in names},
        "event_types": {"impression": {"preset": "impression", "collectors": ["log", *names]}},
    }
    tracker: Tracker = tracker_factory(config)
    for i in range(200):
        assert tracker.get(f"/i?imp=d-{i}&cid=c1")[0] == 200
    for name in names:
        assert tracker.wait_metric("trackpoint_collector_retried_total", f'collector="{name}"', 1, 10) >= 1
    assert tracker.stop() == 0
    output = tracker.output()
    assert "did not drain in time" not in output
    for name in names:
        assert f"collector {name}: drain timed out" in output
        # Everything it held is in its spool, at the persisted position: the next worker sends each event once.
        [directory] = (tracker.data_dir / "spool" / name).iterdir()
        spool = Spool(directory, max_bytes=1 << 30)
        assert spool.open().events == 200
        spool.close()


@pytest.mark.timeout(90)
def test_a_crash_after_the_spool_drained_sends_nothing_again(
    tracker_factory: Any, redis_target: RedisStreamsTarget
) -> None:
    """Once the backlog is delivered its position is on disk: a worker killed any time after the drain leaves
    nothing for the next one to send again (the whole backlog was re-sent before)."""
    queue = redis_target.collector_config() | {"retry_initial_ms": 100, "retry_max_ms": 500}
    tracker: Tracker = tracker_factory(queue_config(queue))
    label = 'collector="queue"'
    asyncio.run(redis_target.stop())
    for i in range(100):
        assert tracker.get(f"/i?imp=a-{i}&cid=c1")[0] == 200
    assert tracker.wait_metric("trackpoint_collector_spooled_events", label, 1, timeout_s=10) >= 1
    asyncio.run(redis_target.start())
    assert tracker.wait_metric("trackpoint_collector_sent_total", label, 100, timeout_s=30) == 100
    assert tracker.wait_metric_at_most("trackpoint_collector_spooled_events", label, 0) == 0
    [pid] = tracker.worker_pids()
    os.kill(pid, signal.SIGKILL)
    left = tracker.data_dir / "spool" / "queue" / f"w00-p{pid}"
    tracker.wait_ready()
    eventually(lambda: not left.exists(), 30, "the dead worker's spool adopted")
    # The next event goes out after anything adopted: once it is counted, so is every re-sent one.
    assert tracker.get("/i?imp=after&cid=c1")[0] == 200
    assert tracker.wait_metric("trackpoint_collector_sent_total", label, 101, timeout_s=10) == 101


@pytest.mark.timeout(90)
def test_a_collector_removed_while_it_spools_is_named_with_its_backlog(tracker_factory: Any) -> None:
    """A reload that removes a collector with a backlog leaves its spool to no one: the supervisor says which
    collector, where and how much (log and trackpoint_spool_stranded_*), and how to recover it."""
    unreachable = {"type": "redis_streams", "url": f"redis://127.0.0.1:{free_port()}/0", "retry_initial_ms": 100}
    tracker: Tracker = tracker_factory({"server": {"drain_timeout_s": 1}, **queue_config(unreachable)})
    label = 'collector="queue"'
    for i in range(100):
        assert tracker.get(f"/i?imp=s-{i}&cid=c1")[0] == 200
    assert tracker.wait_metric("trackpoint_collector_spooled_events", label, 1, timeout_s=10) >= 1
    document = yaml.safe_load(tracker.config_path.read_text())
    del document["collectors"]["queue"]
    document["event_types"]["impression"]["collectors"] = ["log"]
    [old] = tracker.worker_pids()
    tracker.config_path.write_text(yaml.safe_dump(document))
    tracker.signal(signal.SIGHUP)
    assert tracker.wait_metric("trackpoint_spool_stranded_events", label, 100, timeout_s=20) == 100
    assert tracker.metric("trackpoint_spool_stranded_bytes", label) > 100 * 100
    directory = tracker.data_dir / "spool" / "queue" / f"w00-p{old}"
    assert (
        f"collector queue is not in the configuration (or has its spool off), and its spool {directory} holds 100 "
        "events" in tracker.output()
    )
    assert tracker.metric("trackpoint_collector_dropped_total", label) == 0
