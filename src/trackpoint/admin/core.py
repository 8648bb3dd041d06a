"""The admin port's own routes (`/healthz`, `/readyz`, `/startupz`, `/metrics`, `/openapi.json`) and the assembly of
its servers.

The handlers read the running tracker through `Tracker`, which the supervisor implements; they know nothing of
processes. `admin_servers` serves the core routes and the plugins' from the one route table (admin/routes.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry

from trackpoint.admin import metrics
from trackpoint.admin.routes import CORE_ROUTES, PUBLIC_PATHS, AdminHandler, AdminRoute, plugin_routes
from trackpoint.admin.server import AdminRequest, AdminResponse, AdminServer, Handler
from trackpoint.config.model import AdminConfig, Config
from trackpoint.edge.stats import Snapshot
from trackpoint.security.admin_token import BearerCheck


class Tracker(Protocol):
    """What the core admin routes read of the running tracker (the supervisor provides it)."""

    @property
    def slots(self) -> int:
        """The worker slots the tracker runs."""

    @property
    def workers_ready(self) -> int:
        """The workers that reported ready and are not being replaced."""

    @property
    def shutting_down(self) -> bool:
        """Draining after SIGTERM: not ready for new traffic."""

    @property
    def config_version(self) -> str:
        """The version of the configuration in force."""

    @property
    def configuration(self) -> Config:
        """The configuration in force as loaded (after reloads): what the plugins' admin handlers get."""

    def serving(self) -> Snapshot:
        """The counters of the serving workers (not of those being replaced): their collectors' health."""

    def crash_loops(self) -> list[dict[str, object]]:
        """The slots whose worker keeps failing at start, each with its last error."""

    def worker_problems(self) -> list[dict[str, object]]:
        """The workers being stopped to start others (stalled, not ready in time, a broken channel), and why."""

    def openapi_json(self) -> bytes:
        """The OpenAPI document of the running configuration."""


def core_handlers(tracker: Tracker, prometheus_registry: CollectorRegistry) -> dict[str, Handler]:
    """The handler of each core route (CORE_ROUTES), by path; `/metrics` renders `prometheus_registry`."""

    async def healthz(_: AdminRequest) -> AdminResponse:
        crash_loops = tracker.crash_loops()
        if crash_loops:
            reason = "; ".join(f"worker {c['slot']} fails at start: {c['error']}" for c in crash_loops)
            return AdminResponse.json(503, {"status": "crash_loop", "reason": reason, "crash_looping": crash_loops})
        return AdminResponse.json(200, {"status": "ok"})

    async def readyz(_: AdminRequest) -> AdminResponse:
        live = tracker.serving()
        failing = sorted(name for name, c in live.collectors.items() if c.required and not c.healthy)
        ready = not tracker.shutting_down and tracker.workers_ready >= tracker.slots and not failing
        return AdminResponse.json(
            200 if ready else 503,
            {
                "ready": ready,
                "workers_ready": tracker.workers_ready,
                "workers": tracker.slots,
                "draining": tracker.shutting_down,
                "required_collectors_unhealthy": failing,
                # Why, for every unhealthy collector, required or not (a full disk, a target down, ...).
                "collector_problems": {
                    name: c.problem or "unhealthy" for name, c in sorted(live.collectors.items()) if not c.healthy
                },
                "crash_looping": tracker.crash_loops(),
                # Workers not ready because the supervisor is stopping them, to start others: why (stalled, ...).
                "worker_problems": tracker.worker_problems(),
                "config_version": tracker.config_version,
            },
        )

    async def startupz(_: AdminRequest) -> AdminResponse:
        # Started means serving: every slot's worker accepts on the tracking port. Not the collectors' health, which
        # /readyz adds: a startup probe that waited for Kafka would keep every new instance from starting during
        # Kafka's outage (no scale-out, no new revision), and the platform would kill each after its budget.
        started = tracker.workers_ready >= tracker.slots
        return AdminResponse.json(
            200 if started else 503,
            {
                "started": started,
                "workers_ready": tracker.workers_ready,
                "workers": tracker.slots,
                "crash_looping": tracker.crash_loops(),
            },
        )

    async def prometheus(_: AdminRequest) -> AdminResponse:
        return AdminResponse(200, metrics.render(prometheus_registry), "text/plain; version=0.0.4; charset=utf-8")

    async def openapi_json(_: AdminRequest) -> AdminResponse:
        return AdminResponse(200, tracker.openapi_json())

    return {
        "/healthz": healthz,
        "/readyz": readyz,
        "/startupz": startupz,
        "/metrics": prometheus,
        "/openapi.json": openapi_json,
    }


def admin_servers(
    tracker: Tracker,
    admin: AdminConfig,
    auth: BearerCheck | None,
    routes: Sequence[AdminRoute],
    prometheus_registry: CollectorRegistry,
    *,
    more_core: Callable[[AdminServer, Sequence[AdminRoute]], dict[str, Handler]],
) -> tuple[AdminServer, AdminServer | None]:
    """The admin server (core routes, then the plugins' `routes`: `Registry.admin_routes`) and, when
    `admin.probe_port` is set, the probe listener's, which serves the probes only and shares the admin server's
    counts. `more_core` gives the handlers of the core routes served by other parts (the dashboard's)."""
    server = AdminServer(admin.limits, auth, PUBLIC_PATHS)
    probes = None
    if admin.probe_port is not None:
        probes = AdminServer(admin.limits, public_paths=PUBLIC_PATHS)
        probes.counts = server.counts  # one count for both listeners
    core = core_handlers(tracker, prometheus_registry) | more_core(server, routes)
    for endpoint in CORE_ROUTES:
        server.route(endpoint.method, endpoint.path, core[endpoint.path])
        if endpoint.probe and probes is not None:
            probes.route(endpoint.method, endpoint.path, core[endpoint.path])
    for route in plugin_routes(routes):
        server.route(route.method, route.path, functools.partial(_plugin_route, tracker, route.handler))
    return server, probes


async def _plugin_route(tracker: Tracker, handler: AdminHandler, request: AdminRequest) -> AdminResponse:
    return await handler(request, tracker.configuration)
