"""The probes a platform asks, against a real tracker: during an outage of a `required` collector's target the
tracker is not ready (/readyz) yet started (/startupz) and alive (/healthz), on the admin port and on the probe
listener alike, without a token."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from conftest import Tracker, free_port, read_until_quiet


def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    """One GET without a token: the status and the JSON body (0 and {} while nothing listens yet)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n" % path.encode())
            answer = read_until_quiet(sock)
    except OSError:
        return 0, {}
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_required_collectors_outage_fails_readiness_not_startup(tracker_factory: Any) -> None:
    """Cloud Run's startup probe asked /readyz: while a `required` collector's target was down no instance could
    start (each killed after the probe's budget). /startupz answers the startup question alone: the workers serve."""
    probe_port = free_port()
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    tracker: Tracker = tracker_factory(
        {
            "admin": {"probe_port": probe_port, "probe_host": "127.0.0.1"},
            "collectors": {"events": {"type": "redis_streams", "url": down, "required": True}},
            "event_types": {"impression": {"preset": "impression", "collectors": ["log", "events"]}},
        },
        workers=2,
        ready=False,
    )
    deadline = time.monotonic() + 30

    def outage_reported() -> bool:
        ready = probe(tracker.admin_port, "/readyz")[1]
        return ready.get("workers_ready") == 2 and ready.get("required_collectors_unhealthy") == ["events"]

    while not outage_reported():
        assert time.monotonic() < deadline, f"the outage is not reported:\n{tracker.output()}"
        time.sleep(0.05)
    for port in (tracker.admin_port, probe_port):
        status, ready = probe(port, "/readyz")
        assert status == 503 and ready["ready"] is False and ready["workers_ready"] == 2, ready
        assert probe(port, "/startupz") == (
            200,
            {"started": True, "workers_ready": 2, "workers": 2, "crash_looping": []},
        )
        assert probe(port, "/healthz") == (200, {"status": "ok"})
    assert tracker.get("/i?imp=served-while-not-ready")[0] == 200  # started means serving: the log records it
    assert [event.dims["imp"] for event in tracker.wait_events(1)] == ["served-while-not-ready"]
