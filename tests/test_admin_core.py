"""The core admin routes (admin/core.py) answer from what the tracker reports through `Tracker`, whatever provides
it: here a plain object, no supervisor, no process. Unit tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from conftest import load_config
from trackpoint.admin import metrics
from trackpoint.admin.core import admin_servers, core_handlers
from trackpoint.admin.routes import CORE_ROUTES, AdminRoute
from trackpoint.admin.server import AdminRequest, AdminResponse, AdminServer, Handler
from trackpoint.collectors.base import CollectorStats
from trackpoint.config.model import Config
from trackpoint.edge.stats import Snapshot


@dataclass
class Reported:
    """A tracker as the admin port sees it."""

    configuration: Config
    slots: int = 2
    workers_ready: int = 2
    shutting_down: bool = False
    config_version: str = "v1"
    live: Snapshot = field(default_factory=Snapshot)
    failing_starts: list[dict[str, object]] = field(default_factory=list)
    stopping: list[dict[str, object]] = field(default_factory=list)

    def serving(self) -> Snapshot:
        return self.live

    def crash_loops(self) -> list[dict[str, object]]:
        return self.failing_starts

    def worker_problems(self) -> list[dict[str, object]]:
        return self.stopping

    def openapi_json(self) -> bytes:
        return b'{"openapi": "3.1.0"}'


def _answer(handler: Handler, path: str) -> AdminResponse:
    async def call() -> AdminResponse:
        return await handler(AdminRequest("GET", path, ""))

    return asyncio.run(call())


def _get(handler: Handler, path: str) -> tuple[int, dict[str, object]]:
    response = _answer(handler, path)
    return response.status, json.loads(response.body)


def _tracker() -> Reported:
    return Reported(configuration=load_config().config)


def test_readyz_follows_workers_drain_and_required_collectors() -> None:
    tracker = _tracker()
    readyz = core_handlers(tracker, CollectorRegistry())["/readyz"]
    status, body = _get(readyz, "/readyz")
    assert status == 200 and body["ready"] is True and body["config_version"] == "v1"
    tracker.workers_ready = 1
    assert _get(readyz, "/readyz")[0] == 503
    tracker.workers_ready = 2
    tracker.live = Snapshot(collectors={"kafka": CollectorStats(required=True, healthy=False)})
    status, body = _get(readyz, "/readyz")
    assert status == 503 and body["required_collectors_unhealthy"] == ["kafka"]
    tracker.live = Snapshot(collectors={"kafka": CollectorStats(required=False, healthy=False)})
    assert _get(readyz, "/readyz")[0] == 200
    assert body["worker_problems"] == []
    tracker.workers_ready = 1  # the supervisor counts a worker it stops as not ready, and says why
    tracker.stopping = [{"slot": 0, "pid": 9, "problem": "stalled", "detail": "no report for 10.2 s"}]
    status, body = _get(readyz, "/readyz")
    assert status == 503 and body["worker_problems"] == tracker.stopping
    tracker.workers_ready = 2
    tracker.shutting_down = True
    status, body = _get(readyz, "/readyz")
    assert status == 503 and body["draining"] is True


def test_startupz_says_the_workers_serve_whatever_the_collectors_health() -> None:
    """The startup probe's answer: a required collector's outage fails /readyz, never /startupz (a platform kills a
    container that fails its startup probe: no instance could start while Kafka is down)."""
    tracker = _tracker()
    handlers = core_handlers(tracker, CollectorRegistry())
    tracker.live = Snapshot(collectors={"kafka": CollectorStats(required=True, healthy=False, problem="down")})
    assert _get(handlers["/readyz"], "/readyz")[0] == 503
    assert _get(handlers["/startupz"], "/startupz") == (
        200,
        {"started": True, "workers_ready": 2, "workers": 2, "crash_looping": []},
    )
    tracker.workers_ready = 1  # starting, or a slot that cannot start its worker: says which, and why
    tracker.failing_starts = [{"slot": 1, "failed_starts": 3, "error": "no key", "backoff_s": 1.0}]
    status, body = _get(handlers["/startupz"], "/startupz")
    assert status == 503 and body["started"] is False and body["crash_looping"] == tracker.failing_starts
    tracker.workers_ready = 0  # after SIGTERM the workers drain: no longer serving
    tracker.failing_starts = []
    tracker.shutting_down = True
    assert _get(handlers["/startupz"], "/startupz")[0] == 503


def test_healthz_fails_with_the_reason_of_a_crash_loop() -> None:
    tracker = _tracker()
    healthz = core_handlers(tracker, CollectorRegistry())["/healthz"]
    assert _get(healthz, "/healthz") == (200, {"status": "ok"})
    tracker.failing_starts = [{"slot": 1, "failed_starts": 3, "error": "no key", "backoff_s": 1.0}]
    status, body = _get(healthz, "/healthz")
    assert status == 503 and body["reason"] == "worker 1 fails at start: no key"


def test_metrics_and_openapi_come_from_what_the_tracker_hands_over() -> None:
    tracker = _tracker()
    state = metrics.SupervisorState()
    state.restarts = 7
    handlers = core_handlers(tracker, metrics.registry(lambda: Snapshot(requests=41), state))
    text = _answer(handlers["/metrics"], "/metrics").body.decode()
    assert "trackpoint_requests_total 41.0" in text
    assert "trackpoint_worker_restarts_total 7.0" in text
    assert _get(handlers["/openapi.json"], "/openapi.json") == (200, {"openapi": "3.1.0"})


def test_plugin_handlers_get_the_configuration_in_force() -> None:
    tracker = _tracker()
    seen: list[Config] = []

    async def stats(request: AdminRequest, config: Config) -> AdminResponse:
        """A plugin's route."""
        seen.append(config)
        return AdminResponse.json(200, {})

    routes = [AdminRoute("GET", "/plugin/stats", stats), AdminRoute("GET", "/healthz", stats)]

    # The core routes other parts serve (the dashboard's), here all answered by the plugin's handler.
    def dashboard(server: AdminServer, plugin_routes: Sequence[AdminRoute]) -> dict[str, Handler]:
        own = core_handlers(tracker, CollectorRegistry())
        return {route.path: own["/healthz"] for route in CORE_ROUTES if route.path not in own}

    server, probes = admin_servers(
        tracker, tracker.configuration.admin, None, routes, CollectorRegistry(), more_core=dashboard
    )
    assert probes is None  # no probe port configured
    assert set(server.routes) == {(r.method, r.path) for r in CORE_ROUTES} | {("GET", "/plugin/stats")}
    assert _get(server.routes[("GET", "/healthz")], "/healthz")[0] == 200 and seen == []  # the core route won
    _answer(server.routes[("GET", "/plugin/stats")], "/plugin/stats")
    assert seen == [tracker.configuration]
