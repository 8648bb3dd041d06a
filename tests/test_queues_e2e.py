"""The tracker with a queue collector, end to end through the CLI: a queue outage changes nothing for clients and
loses nothing; a full spool under the backpressure policy answers 503; readiness follows a required collector.
The queue is a private Redis server (tests/conformance/target_redis_streams.py), really stopped and restarted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conformance.target_redis_streams import RedisStreamsTarget, make_target
from conftest import Tracker, free_port

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
