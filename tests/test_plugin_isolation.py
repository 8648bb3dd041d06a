"""A plugin collector that misbehaves in its lifecycle cannot take the tracker down: a start() that fails leaves the
worker serving (and logging) with the collector not started, unhealthy with the reason, until a retried start
succeeds; a send() or close() that never returns does not hold the shutdown, nor `trackpoint replay`.

The plugin (tests/lifecycle_plugin.py) is found by real trackers through its entry point. The collector contract
itself (abandoned sends, wrong answers, start retries) is tested in-process in tests/test_delivery.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from conftest import Tracker, make_event
from trackpoint.process import runner

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def misbehaving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin installed as pip would leave it (a dist-info with the entry point), on the PYTHONPATH that trackers
    and the CLI started by the test inherit."""
    dist_info = tmp_path / "site" / "lifecycle_plugin-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: lifecycle-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[trackpoint.plugins]\nmisbehaving = lifecycle_plugin:plugin\n")
    path = [str(tmp_path / "site"), str(TESTS), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, path)))


def readiness(tracker: Tracker) -> tuple[int, dict[str, Any]]:
    """/readyz: its status and answer (0 and {} while the admin port is not open yet)."""
    try:
        status, _, body = tracker.admin("GET", "/readyz")
    except OSError:
        return 0, {}
    answer: dict[str, Any] = json.loads(body)
    return status, answer


def eventually(condition: Callable[[], bool], what: str, tracker: Tracker, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}:\n{tracker.output()}"
        time.sleep(0.05)


@pytest.mark.e2e
@pytest.mark.parametrize("required", [False, True])
def test_a_collector_that_cannot_start_leaves_the_tracker_serving_and_logging(
    tracker_factory: Any, misbehaving: None, required: bool
) -> None:
    """Its start() raises ConnectionRefusedError (a database down when the worker starts): every worker crash-looped,
    no request answered, nothing logged. Now the workers serve and log; /readyz names the collector and why (and
    fails while it is `required`), its events wait in its spool; once its target is there, a retried start succeeds
    and they are delivered."""
    flaky = {"type": "misbehaving", "start": "raise", "required": required, "retry_max_ms": 500}
    config = {
        "collectors": {"flaky": flaky},
        "event_types": {"impression": {"preset": "impression", "collectors": ["log", "flaky"]}},
    }
    tracker: Tracker = tracker_factory(config, workers=2, ready=not required)
    eventually(lambda: readiness(tracker)[1].get("workers_ready") == 2, "the workers did not start", tracker)
    status, ready = readiness(tracker)
    assert ready["ready"] == (not required) and status == (503 if required else 200), ready
    assert ready["required_collectors_unhealthy"] == (["flaky"] if required else [])
    problem = ready["collector_problems"]["flaky"]
    assert problem.startswith("not started: start() failed: ConnectionRefusedError"), problem
    assert tracker.admin("GET", "/healthz")[0] == 200  # no crash loop

    for i in range(10):
        assert tracker.get(f"/i?imp=before-{i}")[0] == 200
    assert len(tracker.wait_events(10)) == 10  # the log records them
    labels = 'collector="flaky"'
    assert tracker.wait_metric("trackpoint_collector_spooled_events", labels, 10, timeout_s=10) == 10, tracker.output()

    (tracker.data_dir / "flaky.can-start").touch()  # the target is back
    assert tracker.wait_metric("trackpoint_collector_sent_total", labels, 10, timeout_s=20) == 10, tracker.output()
    eventually(lambda: readiness(tracker)[0] == 200, "not ready once started", tracker)
    assert readiness(tracker)[1]["collector_problems"] == {}
    delivered = (tracker.data_dir / "flaky.ids").read_text().split()
    assert sorted(delivered) == sorted(event.id for event in tracker.events())
    output = tracker.output()
    assert "failed to start" not in output and "started after" in output, output


@pytest.mark.e2e
def test_a_send_and_a_close_that_never_return_do_not_hold_the_shutdown(tracker_factory: Any, misbehaving: None) -> None:
    """A send() that swallows its cancellation stalled its collector unseen (no error, healthy, its batch in no
    gauge), and it and a close() that never returns held the worker's drain until the supervisor killed it. Now the
    send is abandoned at send_timeout_s, counted, the collector unhealthy and its batch spooled; the close is
    abandoned after the drain timeout, and the worker exits by itself."""
    config = {
        "server": {"drain_timeout_s": 1},
        "collectors": {
            "stuck": {"type": "misbehaving", "send": "stubborn", "send_timeout_s": 0.5},
            "unclosable": {"type": "misbehaving", "close": "hang"},
        },
        "event_types": {"impression": {"preset": "impression", "collectors": ["log", "stuck", "unclosable"]}},
    }
    tracker: Tracker = tracker_factory(config)
    for i in range(20):
        assert tracker.get(f"/i?imp=i-{i}")[0] == 200
    labels = 'collector="stuck"'
    assert tracker.wait_metric("trackpoint_collector_errors_total", labels, 2, timeout_s=10) >= 2, tracker.output()
    assert tracker.metric("trackpoint_collector_healthy", labels) == 0

    def reported() -> bool:
        return "still running" in readiness(tracker)[1]["collector_problems"].get("stuck", "")

    eventually(reported, "the stuck send is not reported", tracker)

    def held() -> float:
        return sum(tracker.metric(f"trackpoint_collector_{gauge}", labels) for gauge in ("pending", "spooled_events"))

    eventually(lambda: held() == 20, "the abandoned batch is in no gauge", tracker)  # kept, not lost
    assert tracker.wait_metric("trackpoint_collector_sent_total", 'collector="unclosable"', 20) == 20

    assert tracker.stop() == 0
    output = tracker.output()
    assert "did not drain in time" not in output, output  # the supervisor did not have to kill the worker
    assert "collector unclosable: close() has not returned" in output, output
    assert "did not end when cancelled" in output, output


@pytest.mark.e2e
def test_replay_gives_up_on_a_send_that_never_returns(tmp_path: Path, misbehaving: None) -> None:
    """`trackpoint replay --give-up-after` waited for ever on a send that ignores its cancellation: now it gives up
    at its deadline and exits, its summary saying so."""
    logs = tmp_path / "logs"
    logs.mkdir()
    lines = b"".join(msgspec.json.encode(make_event(i)) + b"\n" for i in range(20))
    (logs / "events-20261205T000000-w0.jsonl").write_bytes(lines)
    conf = tmp_path / "stuck.yaml"
    conf.write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        "collectors:\n  stuck: {type: misbehaving, send: stubborn, send_timeout_s: 0.5}\n"
        "event_types:\n  impression: {preset: impression, collectors: [log, stuck]}\n",
        encoding="utf-8",
    )
    command = [sys.executable, "-m", "trackpoint", "replay", "-c", str(conf), "--collector", "stuck", "--json"]
    done = subprocess.run(
        [*command, "--give-up-after", "2", str(logs)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["gave_up"].startswith("collector stuck: not delivered after 2 s"), done.stdout
    assert "did not end when cancelled" in done.stderr


def test_the_process_ends_without_the_tasks_that_ignore_their_cancellation(caplog: pytest.LogCaptureFixture) -> None:
    """asyncio.run cancels the tasks left at the end and waits until each has ended: one that swallows its
    cancellation held the process for ever. runner.run gives them a grace period, names them and goes."""
    caplog.set_level(logging.ERROR, logger="trackpoint.process")

    async def main() -> int:
        from lifecycle_plugin import forever

        asyncio.get_running_loop().create_task(forever(), name="stuck-send")
        return 7

    assert runner.run(main(), grace_s=0.1) == 7
    assert "1 tasks did not end when cancelled (stuck-send): exiting without them" in caplog.text
