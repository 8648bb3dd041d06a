"""A third-party plugin that breaks its contract costs its own events, counted and logged, never another request's
answer nor another collector's events: a preprocessor returning no well-formed Event, collectors whose offer, commit
or snapshot raise. End to end through `trackpoint run` with a plugin package (tests/faulty_plugin.py) found through
its entry point; then unit tests of the checks.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

import faulty_plugin
from conftest import Tracker, make_event
from trackpoint.collectors.base import CollectorContext
from trackpoint.collectors.log.reader import ReadStats
from trackpoint.event import Event, derived_id, malformed
from trackpoint.plugins import registry
from trackpoint.preprocessors import built_in

TYPES = {
    "probe": {
        "paths": ["/t"],
        "fields": {"imp": {}, "mode": {}},
        "response": {"kind": "gif"},
        "preprocessors": ["faulty"],
        "collectors": ["log", "recorder", "brittle"],
    },
    "answered": {
        "paths": ["/j"],
        "fields": {"imp": {}, "mode": {}},
        "response": {"kind": "json"},
        "dedupe_key": ["imp"],
        "preprocessors": ["faulty"],
        "collectors": ["log"],
    },
    "ledgered": {
        "paths": ["/l"],
        "fields": {"imp": {}, "mode": {}},
        "response": {"kind": "gif"},
        "collectors": ["log", "ledger"],
    },
}
COLLECTORS = {
    # Untrusted: it gets the privacy filter's copy (what raised on a malformed event, in the edge's output step).
    "recorder": {"type": "recorder", "trusted": False, "flush_interval_ms": 20, "file": "recorded.jsonl"},
    "brittle": {"type": "brittle", "flush_interval_ms": 20, "file": "brittle.jsonl"},
    "ledger": {"type": "ledger", "file": "ledger.jsonl", "required": True},
}


@pytest.fixture
def faulty(tracker_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Tracker:
    """A tracker with the faulty plugin installed: its module and a dist-info with the entry point, on PYTHONPATH."""
    return _faulty_tracker(tracker_factory, tmp_path, monkeypatch, {})


def _faulty_tracker(
    tracker_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any]
) -> Tracker:
    site = tmp_path / "site"
    info = site / "trackpoint_faulty-1.0.dist-info"
    info.mkdir(parents=True)
    shutil.copy(faulty_plugin.__file__, site)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: trackpoint-faulty\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[trackpoint.plugins]\nfaults = faulty_plugin:plugin\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    tracker: Tracker = tracker_factory({"event_types": TYPES, "collectors": COLLECTORS} | extra)
    return tracker


def _get(path: str, close: bool = False) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n".encode()


def _statuses(answer: bytes) -> list[bytes]:
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)


def _lines(path: Path) -> list[Event]:
    """A collector's file, every line decoded as an Event (a malformed one fails the test)."""
    return [msgspec.json.decode(line, type=Event) for line in path.read_bytes().splitlines()] if path.exists() else []


def _wait_lines(path: Path, count: int, timeout_s: float = 5.0) -> list[Event]:
    deadline = time.monotonic() + timeout_s
    while len(lines := _lines(path)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return lines


def _wait_ready(tracker: Tracker, status: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while tracker.admin("GET", "/readyz")[0] != status and time.monotonic() < deadline:
        time.sleep(0.1)
    return tracker.admin("GET", "/readyz")[0] == status


def test_a_preprocessor_returning_no_event_costs_only_its_event(faulty: Tracker) -> None:
    """Four pipelined requests, the second answered by a preprocessor breaking its contract (each way in turn): all
    four answered as for a preprocessor that raises (its normal response, nothing recorded), the three others
    recorded in the log and delivered to the other collectors, the bad one counted under preprocessor_errors and
    logged, never written."""
    for mode in faulty_plugin.RETURNS:
        requests = [f"/t?imp={mode}-{i}&mode={mode if i == 1 else 'ok'}" for i in range(4)]
        answer = faulty.raw(b"".join(_get(path, close=i == 3) for i, path in enumerate(requests)))
        assert _statuses(answer) == [b"200"] * 4, (mode, answer[:300])
    good = sorted(f"{mode}-{i}" for mode in faulty_plugin.RETURNS for i in (0, 2, 3))
    stats = ReadStats()
    logged = faulty.wait_events(len(good))
    assert sorted(event.dims["imp"] for event in faulty.events(stats)) == good
    assert (stats.events, stats.skipped) == (len(good), 0)  # no garbage line among them
    assert len(logged) == len(good)
    # The downstream collectors get every good event, well-formed (the untrusted one through its privacy filter).
    for file in ("recorded.jsonl", "brittle.jsonl"):
        received = _wait_lines(faulty.data_dir / file, len(good))
        assert sorted(event.dims["imp"] for event in received) == good, file
    assert faulty.wait_metric("trackpoint_events_total", 'type="probe"', len(good)) == len(good)
    errors = faulty.metric("trackpoint_preprocessor_errors_total", 'preprocessor="faulty"')
    assert errors == len(faulty_plugin.RETURNS)
    assert faulty.metric("trackpoint_preprocessor_dropped_total", 'preprocessor="faulty"') == errors
    output = faulty.output()
    assert "preprocessor faulty returned no well-formed Event" in output
    assert "Traceback" not in output and "Exception in callback" not in output
    # An answer made from the event (a JSON id) is made from what the preprocessor broke in place, if it did.
    status, _, body = faulty.get("/j?imp=j-1&mode=dims_int")
    assert (status, msgspec.json.decode(body)["id"]) == (200, derived_id("answered", ["j-1"]))
    status, headers, _ = faulty.get("/j?imp=j-2&mode=id_int")
    assert (status, headers["x-reject-reason"]) == (500, "internal_error")


def test_a_durable_collector_that_raises_is_answered_503_and_counted(faulty: Tracker) -> None:
    """A third party's durable collector whose commit() (or offer()) raises: the requests of that iteration are
    answered 503 collector_unavailable, as when the log cannot be written, never left unanswered; the collector is
    unhealthy (/readyz, as it is required) until a commit succeeds; the requests after it are served and recorded."""
    for mode in ("offer_raise", "commit_raise"):
        answer = faulty.raw(_get(f"/l?imp=before-{mode}") + _get(f"/l?imp={mode}&mode={mode}", close=True))
        assert _statuses(answer) == [b"503"], (mode, answer[:300])  # one 503 for the connection's iteration, closed
        assert b"X-Reject-Reason: collector_unavailable" in answer
    assert faulty.wait_metric("trackpoint_rejected_total", 'reason="collector_unavailable"', 2) == 2
    assert faulty.wait_metric("trackpoint_collector_errors_total", 'collector="ledger"', 2) == 2
    assert _wait_ready(faulty, 503)  # the commit that failed last is not followed by another yet
    assert faulty.raw(_get("/l?imp=after", close=True)).startswith(b"HTTP/1.1 200 ")
    # Requests answered 503 may be recorded (the client retries them, under the same id), the one answered 200 is.
    ledger = [event.dims["imp"] for event in _lines(faulty.data_dir / "ledger.jsonl")]
    assert ledger == ["before-offer_raise", "after"]
    assert _wait_ready(faulty, 200)
    assert "after" in {event.dims["imp"] for event in faulty.wait_events(1)}
    output = faulty.output()
    assert "collector ledger failed on the request path" in output and "Exception in callback" not in output


def test_a_collector_failing_on_the_request_path_costs_only_itself(faulty: Tracker) -> None:
    """A non-durable collector whose offer() raises, one that breaks the event it shares after taking it, one whose
    snapshot() raises: the requests are answered and recorded, the other collectors get their events, and the
    worker's reports go on (its metrics move on after each)."""
    modes = ("offer_raise", "mutate", "snapshot_raise")
    for count, mode in enumerate(modes, start=1):
        assert faulty.raw(_get(f"/t?imp={mode}&mode={mode}", close=True)).startswith(b"HTTP/1.1 200 ")
        assert faulty.wait_metric("trackpoint_events_total", 'type="probe"', count) == count, mode
        time.sleep(1.2)  # a report of the worker's taken after this event (its tail, and the failing snapshot)
    # The next reports come: the last event is counted once brittle's snapshot works again.
    assert faulty.raw(_get("/t?imp=last&mode=ok", close=True)).startswith(b"HTTP/1.1 200 ")
    assert faulty.wait_metric("trackpoint_events_total", 'type="probe"', 4) == 4
    assert sorted(event.dims["imp"] for event in faulty.wait_events(4)) == sorted([*modes, "last"])
    assert sorted(e.dims["imp"] for e in _wait_lines(faulty.data_dir / "recorded.jsonl", 4)) == sorted([*modes, "last"])
    assert faulty.metric("trackpoint_collector_errors_total", 'collector="brittle"') >= 1
    assert faulty.metric("trackpoint_collector_dropped_total", 'collector="brittle"') == 1
    output = faulty.output()
    assert "collector brittle failed on the request path" in output
    assert "cannot read the counters to report" in output and "Exception in callback" not in output


def test_a_rejected_stream_collector_that_raises_costs_only_itself(
    tracker_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bad rows go through the same guard as events: a collector of the rejected stream whose offer() raises loses
    that bad row (counted, logged), the next one still gets it and the client its 404."""
    rejected = {"collectors": ["brittle", "recorder"], "sample_rate": 1.0, "keep_values": ["mode"]}
    tracker = _faulty_tracker(tracker_factory, tmp_path, monkeypatch, {"rejected": rejected})
    assert tracker.raw(_get("/nowhere?mode=offer_raise", close=True)).startswith(b"HTTP/1.1 404 ")
    assert tracker.raw(_get("/nowhere?mode=ok", close=True)).startswith(b"HTTP/1.1 404 ")
    recorded = _wait_lines(tracker.data_dir / "recorded.jsonl", 2)
    assert [e.dims["target"] for e in recorded] == ["/nowhere?mode=offer_raise", "/nowhere?mode=ok"]
    assert [e.dims["target"] for e in _wait_lines(tracker.data_dir / "brittle.jsonl", 1)] == ["/nowhere?mode=ok"]
    assert tracker.wait_metric("trackpoint_collector_dropped_total", 'collector="brittle"', 1) == 1
    assert "collector brittle failed on the request path" in tracker.output()


# --- unit tests --------------------------------------------------------------------------------------------------


def test_malformed_names_every_way_an_event_breaks_its_types() -> None:
    assert malformed(make_event(1)) is None
    for mode in faulty_plugin.RETURNS:
        assert malformed(faulty_plugin.broken(make_event(1), mode)) is not None, mode
    event = make_event(2)
    event.metrics["inf"] = math.inf
    assert malformed(event) == "a metric is not a finite number"
    event = make_event(3)
    event.ctx.device = {}  # type: ignore[assignment]  # encodes, and decodes as a Device: its readers would break
    assert malformed(event) is not None
    assert malformed(None) == "returned NoneType, not an Event"


def test_only_third_party_preprocessors_are_checked() -> None:
    assert not built_in(faulty_plugin.Faulty("faulty", faulty_plugin.FaultyConfig()))
    anonymize = registry().build_preprocessor("anonymize_ip", registry().preprocessors["anonymize_ip"].config())
    assert built_in(anonymize)


def test_offer_never_raises_even_for_a_malformed_event(tmp_path: Path) -> None:
    collector = faulty_plugin.Recorder(
        "u", faulty_plugin.RecorderConfig(trusted=False), CollectorContext(str(tmp_path))
    )
    event = make_event(1)
    event.ctx = None  # type: ignore[assignment]
    collector.offer(event)  # the privacy filter cannot copy it: lost to this collector, counted
    collector.offer(make_event(2))
    assert (collector.stats.received, collector.stats.dropped, collector.stats.errors) == (1, 1, 1)
