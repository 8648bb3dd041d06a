"""The supervisor keeps managing its workers whatever they do, end to end: `trackpoint run` with a plugin that
misbehaves on request (tests/misbehaving_plugin.py), loaded through its entry point as a third party's would be.

A report that does not decode, or one over the frame limit, used to end the supervisor's follow of the worker: its
counters froze, and once killed it stayed a zombie, never restarted, while /readyz said ready. A worker whose event
loop blocked, or that never became ready, went unnoticed for good. Each test fails without its fix.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Tracker
from trackpoint.edge.tail import TAIL_VALUE_CHARS

TESTS = Path(__file__).resolve().parent
STALL_TIMEOUT_S = 2.5
START_TIMEOUT_S = 4.0

StartTracker = Callable[..., Tracker]


@pytest.fixture
def misbehaving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracker_factory: Any) -> StartTracker:
    """Starts trackers with the misbehaving plugin installed (its dist-info on PYTHONPATH, which the tracker and its
    workers inherit), the `misbehave` preprocessor on impressions, and short timeouts."""
    site = tmp_path / "site"
    info = site / "misbehaving_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: misbehaving-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[trackpoint.plugins]\nmisbehaving = misbehaving_plugin:plugin\n")
    paths = [str(site), str(TESTS), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, paths)))

    def start(ready: bool = True, collectors: dict[str, Any] | None = None, **server: Any) -> Tracker:
        impression: dict[str, Any] = {"preset": "impression", "preprocessors": ["misbehave"]}
        config: dict[str, Any] = {
            "server": {"drain_timeout_s": 1, "worker_stall_timeout_s": STALL_TIMEOUT_S, **server},
            "preprocessors": {"misbehave": {"type": "misbehave"}},
            "event_types": {"impression": impression},
        }
        if collectors:
            config["collectors"] = {"log": {"type": "log"}, **collectors}
            impression["collectors"] = ["log", *collectors]
        tracker: Tracker = tracker_factory(config, ready=ready)
        return tracker

    return start


def _served(tracker: Tracker, count: int, name: str) -> None:
    """`count` impressions answered 200, and the requests counter shows them: the worker's reports are read."""
    before = tracker.metric("trackpoint_requests_total")
    for number in range(count):
        assert tracker.get(f"/i?imp={name}-{number}")[0] == 200
    assert tracker.wait_metric("trackpoint_requests_total", "", before + count) >= before + count, tracker.output()


def _replaced(tracker: Tracker, old: int) -> int:
    """Waits until the worker `old` has been replaced by a ready one; its pid."""
    deadline = time.monotonic() + 30
    while old in tracker.worker_pids() or not tracker.worker_pids():
        assert time.monotonic() < deadline, f"worker {old} was not replaced:\n{tracker.output()}"
        time.sleep(0.05)
    tracker.wait_ready(30)
    (new,) = tracker.worker_pids()
    return new


def _json(tracker: Tracker, path: str) -> tuple[int, dict[str, Any]]:
    status, _, body = tracker.admin("GET", path)
    return status, json.loads(body)


def _drains(tracker: Tracker) -> None:
    """SIGTERM still drains: exit code 0, every acknowledged impression logged, and nothing left for asyncio to
    report at exit."""
    assert tracker.stop() == 0, tracker.output()
    output = tracker.output()
    assert "never retrieved" not in output and "Traceback" not in output, output
    assert "trackpoint stopped" in output


def test_a_malformed_event_in_a_report_costs_the_supervisor_nothing(misbehaving: StartTracker) -> None:
    """An int among an event's dims (a plugin's bug) was in the worker's next report, whose strict decoding failed:
    the supervisor stopped reading that worker."""
    tracker = misbehaving()
    _served(tracker, 3, "before")
    statuses = [tracker.get(f"/i?imp=wrong-{n}&pub=wrong_type")[0] for n in range(3)]
    time.sleep(1.5)  # the report carrying them
    _served(tracker, 3, "after")
    # The edge checks what a third-party preprocessor returns: the malformed events are dropped there and counted,
    # so they never reach a report (the supervisor's side of a malformed report: the bad_frame test).
    assert statuses == [200] * 3
    errors = tracker.wait_metric("trackpoint_preprocessor_errors_total", 'preprocessor="misbehave"', 3)
    assert errors == 3, tracker.output()
    assert tracker.metric("trackpoint_worker_messages_skipped_total", 'reason="undecodable"') == 0
    (worker,) = tracker.worker_pids()
    os.kill(worker, signal.SIGKILL)  # still followed: replaced, and its counters kept
    _replaced(tracker, worker)
    assert tracker.wait_metric("trackpoint_worker_restarts_total", "", 1) == 1
    _served(tracker, 2, "replaced")
    assert tracker.metric("trackpoint_requests_total") >= 11
    _drains(tracker)


def test_a_report_stays_small_whatever_the_events_carry(misbehaving: StartTracker) -> None:
    """A dim larger than the control channel's frame limit (64 MiB) made the next report larger still: the supervisor
    refused it and stopped reading that worker. The worker cuts long values out of the dashboard's sample."""
    tracker = misbehaving()
    (worker,) = tracker.worker_pids()
    _json(tracker, "/dashboard/stats")  # watched: the reports carry the newest events
    assert tracker.get("/i?imp=huge&pub=big_dim&cid=66000")[0] == 200  # a 66,000 KiB dim
    time.sleep(1.5)
    _served(tracker, 3, "after")
    _, stats = _json(tracker, "/dashboard/stats")
    (huge,) = [event for event in stats["tail"] if event["dims"]["imp"] == "huge"]
    assert huge["dims"]["blob"] == "x" * (TAIL_VALUE_CHARS - 1) + "…"
    assert tracker.worker_pids() == [worker]
    assert tracker.metric("trackpoint_worker_stops_total", 'reason="channel_broken"') == 0
    _drains(tracker)


def test_a_frame_that_does_not_decode_is_skipped_and_a_broken_channel_restarts_the_worker(
    misbehaving: StartTracker,
) -> None:
    tracker = misbehaving()
    (worker,) = tracker.worker_pids()
    _served(tracker, 2, "before")
    assert tracker.get("/i?imp=bad-frame&pub=bad_frame")[0] == 200
    _served(tracker, 2, "in-sync")  # the next reports are read
    assert tracker.metric("trackpoint_worker_messages_skipped_total", 'reason="undecodable"') == 1
    assert tracker.worker_pids() == [worker]
    assert "Expected `int`, got `str` - at `$.snapshot.requests`" in tracker.output()
    served = tracker.metric("trackpoint_requests_total")

    # A frame over the limit: the channel cannot be read on, so the worker is stopped, and another started.
    assert tracker.get("/i?imp=huge-frame&pub=huge_frame")[0] == 200
    replacement = _replaced(tracker, worker)
    assert replacement != worker
    assert tracker.metric("trackpoint_worker_stops_total", 'reason="channel_broken"') == 1
    assert tracker.metric("trackpoint_worker_restarts_total") == 1
    assert tracker.metric("trackpoint_requests_total") >= served  # its counters are kept
    _served(tracker, 2, "replaced")
    output = tracker.output()
    assert f"worker 0 (pid {worker}): a control frame of {(64 << 20) + 1} bytes, over the limit" in output, output
    _drains(tracker)
    logged = {event.dims["imp"] for event in tracker.events()}
    assert {"before-0", "in-sync-1", "bad-frame", "huge-frame", "replaced-1"} <= logged


def test_a_worker_whose_event_loop_blocks_is_reported_and_restarted(misbehaving: StartTracker) -> None:
    tracker = misbehaving()
    (worker,) = tracker.worker_pids()
    _served(tracker, 2, "before")
    blocked = socket.create_connection(("127.0.0.1", tracker.port))  # its answer never comes
    try:
        blocked.sendall(b"GET /i?imp=blocks&pub=block HTTP/1.1\r\nHost: t\r\n\r\n")
        deadline = time.monotonic() + STALL_TIMEOUT_S + 10
        while (ready := _json(tracker, "/readyz"))[0] == 200:
            assert time.monotonic() < deadline, f"the stalled worker is still ready:\n{tracker.output()}"
            time.sleep(0.1)
    finally:
        blocked.close()
    status, body = ready
    assert status == 503 and body["workers_ready"] == 0
    (problem,) = body["worker_problems"]
    assert (problem["slot"], problem["pid"], problem["problem"]) == (0, worker, "stalled"), body
    assert tracker.metric("trackpoint_worker_stops_total", 'reason="stalled"') == 1
    # SIGTERM cannot stop a loop that does not run: it is killed after the drain's grace, and another started.
    _replaced(tracker, worker)
    assert tracker.metric("trackpoint_worker_restarts_total") == 1
    assert tracker.metric("trackpoint_worker_stops_total", 'reason="stalled"') == 1
    _served(tracker, 2, "replaced")
    assert _json(tracker, "/readyz")[1]["worker_problems"] == []
    assert tracker.output().count("stalled, no report for") == 1
    _drains(tracker)


def test_a_reload_kills_an_old_worker_that_does_not_drain(misbehaving: StartTracker) -> None:
    """A reload retires the old worker with SIGTERM; one whose event loop is blocked cannot act on it, and is killed
    drain_timeout_s + 5 s later (it ran on for good before), while the new worker serves."""
    tracker = misbehaving(worker_stall_timeout_s=600)  # the watchdog stays out of it: the reload retires the worker
    (worker,) = tracker.worker_pids()
    _served(tracker, 2, "before")
    blocked = socket.create_connection(("127.0.0.1", tracker.port))  # its answer never comes
    try:
        blocked.sendall(b"GET /i?imp=blocks&pub=block HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.5)  # the worker's loop is in the plugin's sleep
        tracker.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while tracker.metric("trackpoint_reloads_total") < 1:
            assert time.monotonic() < deadline, f"the reload did not happen:\n{tracker.output()}"
            time.sleep(0.05)
        _served(tracker, 2, "reloaded")  # the new worker serves while the old one is stuck
        assert worker in tracker.worker_pids()
        started = time.monotonic()
        while worker in tracker.worker_pids():
            assert time.monotonic() < deadline, f"the wedged old worker still runs:\n{tracker.output()}"
            time.sleep(0.1)
        assert time.monotonic() - started < 1 + 5 + 1  # drain_timeout_s + STOP_GRACE_S
    finally:
        blocked.close()
    assert f"worker 0 (pid {worker}) did not exit 6 s after SIGTERM; killing it" in tracker.output()
    _served(tracker, 2, "after")
    _drains(tracker)
    logged = {event.dims["imp"] for event in tracker.events()}
    assert {"before-0", "before-1", "reloaded-0", "reloaded-1", "after-0", "after-1"} <= logged


def test_a_worker_past_its_memory_limit_is_replaced_without_a_gap(misbehaving: StartTracker) -> None:
    """server.worker_max_memory_mb: a worker that grew past it (a leaking plugin) is replaced by a new one first,
    then drains; /readyz never fails meanwhile, and nothing acknowledged is lost."""
    tracker = misbehaving(worker_max_memory_mb=300)
    (worker,) = tracker.worker_pids()
    _served(tracker, 2, "before")
    rss = tracker.wait_metric("trackpoint_worker_rss_bytes", 'slot="0"', 1)
    assert 10 << 20 < rss < 300 << 20, rss
    assert tracker.get("/i?imp=grow&pub=grow&cid=320")[0] == 200
    deadline = time.monotonic() + 30
    while worker in tracker.worker_pids() or not tracker.worker_pids():
        assert time.monotonic() < deadline, f"the worker past its memory limit was not replaced:\n{tracker.output()}"
        status, body = _json(tracker, "/readyz")
        assert status == 200, body  # the new worker serves before the old one drains: no gap
        time.sleep(0.05)
    (replacement,) = tracker.worker_pids()
    assert tracker.metric("trackpoint_worker_recycled_total") == 1
    assert tracker.metric("trackpoint_worker_restarts_total") == 0  # replaced, not restarted after a death
    _served(tracker, 2, "after")
    assert tracker.wait_metric("trackpoint_worker_rss_bytes", 'slot="0"', 1) < 300 << 20  # the new worker's
    assert f"worker 0 (pid {worker}) uses " in tracker.output()
    _drains(tracker)
    logged = {event.dims["imp"] for event in tracker.events()}
    assert {"before-0", "before-1", "grow", "after-0", "after-1"} <= logged
    assert replacement != worker


def test_a_worker_not_ready_in_time_is_restarted_and_reported(misbehaving: StartTracker, tmp_path: Path) -> None:
    """A collector whose start() never returns: the worker never became ready, and nothing said why."""
    flag = tmp_path / "hang"
    flag.touch()
    hanging = {"hanging": {"type": "hanging_start", "flag": str(flag)}}
    tracker = misbehaving(ready=False, collectors=hanging, worker_start_timeout_s=START_TIMEOUT_S)
    deadline = time.monotonic() + 4 * START_TIMEOUT_S + 10
    while "listening on" not in tracker.output():  # the admin port is open
        assert time.monotonic() < deadline, tracker.output()
        time.sleep(0.05)
    while (health := _json(tracker, "/healthz"))[0] == 200:
        assert time.monotonic() < deadline, (
            f"/healthz says nothing of the worker that never starts:\n{tracker.output()}"
        )
        time.sleep(0.1)
    status, body = health
    assert status == 503 and body["status"] == "crash_loop", body
    assert f"worker 0 fails at start: not ready {START_TIMEOUT_S:g} s after it was started" in body["reason"], body
    assert tracker.metric("trackpoint_worker_stops_total", 'reason="start_timeout"') >= 2
    status, ready = _json(tracker, "/readyz")
    assert status == 503 and ready["crash_looping"][0]["slot"] == 0
    assert tracker.output().count(f"worker 0 failed to start: not ready {START_TIMEOUT_S:g} s after") == 1
    flag.unlink()  # the collector starts now
    tracker.wait_ready(30)
    assert _json(tracker, "/healthz") == (200, {"status": "ok"})
    assert "worker 0 started after" in tracker.output()
    _served(tracker, 2, "started")
    _drains(tracker)
