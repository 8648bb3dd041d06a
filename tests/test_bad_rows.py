"""Bad rows: the redacted target, sampling and the per-second cap with a fake clock, the event a rejection becomes,
and end to end: rejected requests (routed, unroutable and unparseable) land in their own log, anonymised and capped.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any, cast

import pytest

from conftest import Tracker, load_config, read_until_quiet
from trackpoint.collectors import Collector
from trackpoint.collectors.log.reader import read_events
from trackpoint.config.load import ConfigError
from trackpoint.config.model import RejectedConfig
from trackpoint.edge.bad_rows import BadRows, redact_target
from trackpoint.event import Event, Meta

KEEP = frozenset({"cid", "price"})


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class Sink:
    """Stands in for a collector: what the request path offers it."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def offer(self, event: Event) -> None:
        self.events.append(event)


def _bad_rows(sample_rate: float, max_per_s: int, clock: FakeClock, rng: Any = lambda: 0.5) -> tuple[BadRows, Sink]:
    sink = Sink()
    config = RejectedConfig(collectors=["bad"], sample_rate=sample_rate, max_per_s=max_per_s, keep_values=["cid"])
    bad_rows = BadRows(config, (cast(Collector, sink),), Meta(worker=3, config="v1"), _offer_each, clock=clock, rng=rng)
    return bad_rows, sink


def _offer_each(collectors: tuple[Collector, ...], event: Event) -> None:
    for collector in collectors:
        collector.offer(event)


# --- the recorded target -----------------------------------------------------------------------------------------


def test_values_are_removed_unless_kept() -> None:
    target = b"/win?imp=secret&price=abc&email=a%40b.example&cid=c1&flag&empty="
    assert redact_target(target, KEEP, 256) == "/win?imp=*&price=abc&email=*&cid=c1&flag&empty=*"


def test_percent_encoded_names_are_matched_decoded() -> None:
    assert redact_target(b"/i?%63id=c7&u%73er=bob", KEEP, 256) == "/i?%63id=c7&u%73er=*"


def test_the_target_is_truncated_and_undecodable_bytes_escaped() -> None:
    assert redact_target(b"/i?cid=" + b"x" * 500, KEEP, 40) == "/i?cid=" + "x" * 33
    assert redact_target(b"/\xff\xfe?cid=1", KEEP, 256) == "/\\xff\\xfe?cid=1"
    assert redact_target(b"", KEEP, 256) == ""
    long_name = b"n" * 200
    assert redact_target(b"/i?" + long_name + b"=v", KEEP, 1000) == "/i?" + "n" * 64 + "=*"


# --- sampling and the cap ------------------------------------------------------------------------------------------


def test_sample_rate_decides() -> None:
    clock = FakeClock()
    draws = iter([0.2, 0.6, 0.29, 0.3])
    bad_rows, _ = _bad_rows(0.3, 100, clock, lambda: next(draws))
    assert [bad_rows.sampled() for _ in range(4)] == [True, False, True, False]
    never, _ = _bad_rows(0.0, 100, clock, lambda: 0.0)
    assert not never.sampled()


def test_at_most_max_per_s_a_second() -> None:
    clock = FakeClock()
    bad_rows, _ = _bad_rows(1.0, 5, clock)
    assert sum(bad_rows.sampled() for _ in range(1000)) == 5
    assert bad_rows.capped == 995
    clock.now += 0.5
    assert not bad_rows.sampled()  # the same second
    clock.now += 0.6
    assert sum(bad_rows.sampled() for _ in range(1000)) == 5  # a new second


def test_a_recorded_rejection() -> None:
    bad_rows, sink = _bad_rows(1.0, 5, FakeClock())
    bad_rows.record(400, "invalid_field", "price", "win", b"GET", b"/win?imp=secret&cid=c1", "203.0.113.77")
    bad_rows.record(400, "bad_request", None, None, b"", b"", "2001:db8:1:2:3:4:5:6")
    first, second = sink.events
    assert first.type == "rejected"
    assert first.dims == {
        "reason": "invalid_field",
        "method": "GET",
        "target": "/win?imp=*&cid=c1",
        "event_type": "win",
        "field": "price",
    }
    assert first.metrics == {"status": 400}
    assert first.ctx.ip == "203.0.113.0"
    assert first.meta.worker == 3 and first.meta.config == "v1"
    assert abs(first.ts - time.time() * 1000) < 60_000
    assert second.dims == {"reason": "bad_request", "method": "", "target": ""}
    assert second.ctx.ip == "2001:db8:1::"
    assert first.id != second.id


def test_the_rejected_collectors_must_exist(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("rejected: {collectors: [nowhere], sample_rate: 2}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "rejected.sample_rate" in str(error.value)
    path.write_text("rejected: {collectors: [nowhere]}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "rejected.collectors[0]: no collector named 'nowhere'" in str(error.value)


# --- end to end ------------------------------------------------------------------------------------------------------


def _config(**rejected: Any) -> dict[str, Any]:
    return {
        "server": {"trusted_proxies": ["127.0.0.0/8"]},
        "collectors": {"log": {"type": "log"}, "bad": {"type": "log", "dir": "rejected", "flush_interval_ms": 20}},
        "rejected": {"collectors": ["bad"], **rejected},
    }


def _bad_events(tracker: Tracker, count: int, timeout_s: float = 5.0) -> list[Event]:
    deadline = time.monotonic() + timeout_s
    events = list(read_events([tracker.data_dir / "rejected"]))
    while len(events) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        events = list(read_events([tracker.data_dir / "rejected"]))
    return events


def test_rejections_become_anonymised_bad_rows(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory(_config(sample_rate=1.0))
    client = {"X-Forwarded-For": "203.0.113.77"}
    assert tracker.get(tracker.sign("/win?imp=secret-imp-1&price=abc&cid=c1"), client)[0] == 400
    assert tracker.get("/nowhere?email=someone%40example.com", client)[0] == 404
    assert tracker.request("POST", "/i?imp=secret-imp-2", b"", client)[0] == 405
    assert b"400 Bad Request" in tracker.raw(b"\x00\x01garbage\r\n\r\n")
    assert tracker.get("/i?imp=fine", client)[0] == 200
    events = _bad_events(tracker, 4)
    assert len(events) == 4
    by_reason = {e.dims["reason"]: e for e in events}
    assert set(by_reason) == {"invalid_field", "not_found", "method_not_allowed", "bad_request"}
    invalid = by_reason["invalid_field"]
    assert invalid.type == "rejected"
    assert invalid.dims == {
        "reason": "invalid_field",
        "method": "GET",
        "target": "/win?cid=c1&imp=*&kid=*&sig=*&price=abc",  # signed: the DSP's fields, then the exchange's
        "event_type": "win",
        "field": "price",
    }
    assert invalid.metrics == {"status": 400}
    assert invalid.ctx.ip == "203.0.113.0"
    assert by_reason["not_found"].dims["target"] == "/nowhere?email=*"
    assert "event_type" not in by_reason["not_found"].dims
    assert by_reason["method_not_allowed"].dims["event_type"] == "impression"
    assert by_reason["method_not_allowed"].dims["method"] == "POST"
    garbage = by_reason["bad_request"]
    assert garbage.dims["target"] == "" and garbage.dims["method"] == ""
    assert garbage.ctx.ip == "127.0.0.0"  # a direct peer, anonymised too
    # No personal value reached the disk, and the accepted event went to the main log only.
    written = b"".join(path.read_bytes() for path in (tracker.data_dir / "rejected").rglob("*") if path.is_file())
    assert b"secret-imp" not in written and b"someone" not in written and b"203.0.113.77" not in written
    assert [e.dims["imp"] for e in tracker.wait_events(1)] == ["fine"]


def test_a_flood_of_bad_requests_is_capped(tracker_factory: Any) -> None:
    config = _config(sample_rate=1.0, max_per_s=5)
    config["server"]["limits"] = {"max_pipelined_requests": 1000}  # the flood comes pipelined on one connection
    tracker: Tracker = tracker_factory(config)
    last = b"GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    flood = b"GET /nope?x=1 HTTP/1.1\r\nHost: t\r\n\r\n" * 400 + last
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", tracker.port), timeout=3) as sock:
        sock.sendall(flood)
        answers = read_until_quiet(sock)
    elapsed = time.monotonic() - started
    assert answers.count(b"404 Not Found") == 401
    assert tracker.wait_metric("trackpoint_rejected_total", 'reason="not_found"', 401) == 401
    events = list(read_events([tracker.data_dir / "rejected"]))  # written before the answers left
    assert 5 <= len(events) <= 5 * (int(elapsed) + 2)
    assert all(e.dims["reason"] == "not_found" for e in events)


def test_off_by_default(tracker: Tracker) -> None:
    assert tracker.get("/nowhere")[0] == 404
    assert tracker.wait_metric("trackpoint_rejected_total", 'reason="not_found"', 1) == 1
    assert not (tracker.data_dir / "rejected").exists()
    assert load_config().config.rejected.collectors == []
