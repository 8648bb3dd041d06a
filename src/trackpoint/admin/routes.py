"""The admin port's route table: the core routes the supervisor serves, then every plugin's (built-ins and
third-party alike). The supervisor serves from it and the OpenAPI document and the endpoints reference list it,
so a route cannot be served without being documented, or documented without being served."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from trackpoint.admin.server import AdminRequest, AdminResponse
from trackpoint.config.model import Config

# An admin handler gets the request and the tracker's running configuration (the one in force after reloads).
AdminHandler = Callable[[AdminRequest, Config], Awaitable[AdminResponse]]


@dataclass(frozen=True)
class AdminRoute:
    """An extra route on the admin port (exact method and path), served by the supervisor process."""

    method: str
    path: str
    handler: AdminHandler


@dataclass(frozen=True)
class AdminEndpoint:
    """One admin route as served and documented. `public`: answered without the admin token (the probes)."""

    method: str
    path: str
    summary: str
    public: bool = False
    # Served on the probe listener (admin.probe_port) too.
    probe: bool = False


# The supervisor's own routes; it serves each with its handler of the same path (a route listed here without a
# handler fails the supervisor's start, and tests/test_admin_routes.py checks what is served against this table).
CORE_ROUTES: tuple[AdminEndpoint, ...] = (
    AdminEndpoint("GET", "/healthz", "200 while the supervisor runs.", public=True, probe=True),
    AdminEndpoint(
        "GET",
        "/readyz",
        "200 when every worker is ready and every required collector healthy, else 503. JSON: "
        "`required_collectors_unhealthy`, `collector_problems`, why each unhealthy collector is (a target down, "
        "a full disk), and `worker_problems`, the workers being stopped and restarted and why (`stalled`, "
        "`start_timeout`, `channel_broken`).",
        public=True,
        probe=True,
    ),
    AdminEndpoint(
        "GET",
        "/startupz",
        "200 once every worker serves the tracking port, whatever the collectors' health, else 503: the startup "
        "probe, which must not wait for a `required` collector's target (an outage would keep every new instance "
        "from starting). JSON: `started`, `workers_ready`, `workers`, `crash_looping`.",
        public=True,
        probe=True,
    ),
    AdminEndpoint("GET", "/metrics", "Prometheus metrics, summed over the workers."),
    AdminEndpoint("GET", "/openapi.json", "This OpenAPI document, for the running configuration."),
    AdminEndpoint(
        "GET",
        "/",
        "The live dashboard for a browser (`Accept: text/html`: the page alone, no data, open; it asks for the "
        "admin token once per tab and sends it as a header); any other client gets the index of the admin routes "
        '(`{"routes": [{"method", "path", "summary", "public"}]}`, token required).',
        public=True,
    ),
    AdminEndpoint("GET", "/dashboard/app.js", "The dashboard's script (static, no data).", public=True),
    AdminEndpoint("GET", "/dashboard/app.css", "The dashboard's style sheet (static, no data).", public=True),
    AdminEndpoint(
        "GET",
        "/dashboard/stats",
        "What the dashboard shows, as JSON: the tracker (version, config file and version, uptime), totals, rates "
        "and per-5-second series of the last 10 minutes (requests, events by type, refusals by reason, latency "
        "percentiles), workers (pid, uptime, restarts, RSS, requests), collectors (sent/s, backlog, spool and time "
        "until full, last success, lag, drops) and the newest events, privacy-filtered as an untrusted collector "
        "gets them.",
    ),
)

# Answered without the admin token: the probes of load balancers and Kubernetes, and the dashboard's page (which
# holds no data: it reads /dashboard/stats with the token).
PUBLIC_PATHS = frozenset(route.path for route in CORE_ROUTES if route.public)
# What the probe listener (admin.probe_port) serves.
PROBE_PATHS = frozenset(route.path for route in CORE_ROUTES if route.probe)


def plugin_routes(routes: Sequence[AdminRoute]) -> list[AdminRoute]:
    """The plugins' admin routes (`Registry.admin_routes`) the supervisor serves: all but one on a core route's
    method and path (the core route wins)."""
    core = {(route.method, route.path) for route in CORE_ROUTES}
    return [route for route in routes if (route.method, route.path) not in core]


def admin_endpoints(routes: Sequence[AdminRoute]) -> list[AdminEndpoint]:
    """Every admin route served: the core routes, then the plugins' (`Registry.admin_routes`, each described by
    the first paragraph of its handler's docstring)."""
    endpoints = list(CORE_ROUTES)
    for route in plugin_routes(routes):
        doc = (route.handler.__doc__ or "").strip().split("\n\n")[0]
        endpoints.append(AdminEndpoint(route.method, route.path, " ".join(doc.split())))
    return endpoints
