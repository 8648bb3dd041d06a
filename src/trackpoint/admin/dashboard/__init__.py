"""The live dashboard of the admin port: the page (static package data) and /dashboard/stats, the JSON it reads.

The supervisor samples the workers' summed counters once a second into a bounded history (history.py); the page
polls /dashboard/stats with the admin token it keeps in the tab's sessionStorage, never in a URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections import deque
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any, Protocol

from trackpoint import __version__
from trackpoint.admin.dashboard.history import History, collector_rows
from trackpoint.admin.metrics import SupervisorState
from trackpoint.admin.routes import AdminRoute, admin_endpoints
from trackpoint.admin.server import UNAUTHORIZED, AdminRequest, AdminResponse, AdminServer, Handler
from trackpoint.config import LoadedConfig
from trackpoint.config.model import CollectorBase, Config, collectors_in_use, type_tag
from trackpoint.edge.stats import Snapshot
from trackpoint.event import Event

# Events the supervisor keeps for the live tail (the newest of all workers).
TAIL_KEEP = 100
# The live tail is watched for this long after a read of /dashboard/stats (the page reads it every 2 s while it is
# shown; a hidden tab's timers slow down): the workers send their newest events only meanwhile.
TAIL_WATCH_S = 10.0
SAMPLE_INTERVAL_S = 1.0
ROLLUPS_PATH = "/reports/hourly"

_STATIC = resources.files(__package__) / "static"
# The page runs only its own files: no inline script, nothing from elsewhere, and it is not framed.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _static(name: str, content_type: str) -> AdminResponse:
    return AdminResponse(200, (_STATIC / name).read_bytes(), content_type, dict(PAGE_HEADERS))


def fed_kinds(config: Config) -> set[str]:
    """The types of the collectors some event type feeds (a banker section only where a banker gets events)."""
    return {type_tag(type(collector)) for collector in collectors_in_use(config, CollectorBase).values()}


class Worker(Protocol):
    """What the dashboard reads of a worker (process/supervisor.py WorkerHandle)."""

    @property
    def process(self) -> subprocess.Popen[bytes]: ...
    @property
    def serving(self) -> bool: ...
    @property
    def started_at(self) -> float: ...
    @property
    def rss_bytes(self) -> int: ...
    @property
    def snapshot(self) -> Snapshot: ...


class Credits(Protocol):
    """What the dashboard reads of the plugin registry (plugins/__init__.py Registry, which imports admin)."""

    def notices(self, config: Config) -> list[str]: ...


class Supervised(Protocol):
    """What the dashboard reads of the supervisor (process/supervisor.py Supervisor)."""

    @property
    def config(self) -> Config: ...
    @property
    def loaded(self) -> LoadedConfig: ...
    @property
    def plugins(self) -> Credits: ...
    @property
    def slots(self) -> int: ...
    @property
    def started_at(self) -> float: ...
    @property
    def slot_restarts(self) -> list[int]: ...
    @property
    def recent(self) -> deque[Event]: ...
    @property
    def state(self) -> SupervisorState: ...
    @property
    def workers(self) -> Mapping[int, Worker]: ...
    def totals(self) -> Snapshot: ...
    def crash_loops(self) -> list[dict[str, object]]: ...
    def watch_tail(self) -> None: ...


class Dashboard:
    """The dashboard's handlers and the history they read, for one supervisor."""

    def __init__(self, supervisor: Supervised) -> None:
        self.supervisor = supervisor
        self.history = History()
        self._task: asyncio.Task[None] | None = None
        # The attribution notices of the config in use, worked out again only when a reload brings another config
        # (the geo databases are opened to recognise their licence: not once a second).
        self._notices: tuple[Config | None, list[str]] = (None, [])

    def start(self) -> None:
        """Samples once a second while the supervisor runs (from its event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._sample(), name="dashboard-history")

    async def _sample(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a bad sample must not end the history (or the supervisor)
                self.history.add(time.time(), self.supervisor.totals())
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    def handlers(self, admin: AdminServer, plugin_routes: Sequence[AdminRoute]) -> dict[str, Handler]:
        """The dashboard's core routes (admin/routes.py CORE_ROUTES) by path; the index lists `plugin_routes` too."""
        page = _static("index.html", "text/html; charset=utf-8")
        script = _static("app.js", "text/javascript; charset=utf-8")
        style = _static("app.css", "text/css; charset=utf-8")

        async def index(request: AdminRequest) -> AdminResponse:
            if "text/html" in request.headers.get("accept", ""):
                return page
            # The route is open for the page; the index of routes is not.
            if admin.auth is not None and not admin.auth.allows(request.headers.get("authorization")):
                admin.count("unauthorized")
                return UNAUTHORIZED
            routes = [
                {"method": e.method, "path": e.path, "summary": e.summary, "public": e.public}
                for e in admin_endpoints(plugin_routes)
            ]
            return AdminResponse.json(200, {"routes": routes})

        async def app_js(_: AdminRequest) -> AdminResponse:
            return script

        async def app_css(_: AdminRequest) -> AdminResponse:
            return style

        async def stats(_: AdminRequest) -> AdminResponse:
            self.supervisor.watch_tail()  # someone reads it: the workers send their newest events for a while
            return AdminResponse.json(200, self.stats(admin))

        return {"/": index, "/dashboard/app.js": app_js, "/dashboard/app.css": app_css, "/dashboard/stats": stats}

    def attributions(self, config: Config) -> list[str]:
        """Notices the data behind the tracker's answers asks to be shown (DB-IP's for geo lookups), from the
        plugins' attribution sources (the text `GET /geo/databases` shows), for `config`."""
        shown_for, notices = self._notices
        if shown_for is not config:
            notices = self.supervisor.plugins.notices(config)
            self._notices = (config, notices)
        return notices

    def stats(self, admin: AdminServer) -> dict[str, Any]:
        supervisor = self.supervisor
        now = time.time()
        totals = supervisor.totals()
        config = supervisor.config
        history = self.history
        workers = [
            {
                "slot": slot,
                "pid": handle.process.pid,
                "ready": handle.serving,
                "uptime_s": round(now - handle.started_at, 1),
                "restarts": supervisor.slot_restarts[slot],
                "rss_bytes": handle.rss_bytes,
                "requests": handle.snapshot.requests,
            }
            for slot, handle in sorted(supervisor.workers.items())
        ]
        return {
            "now_ms": int(now * 1000),
            "tracker": {
                "version": __version__,
                "config_file": supervisor.loaded.source,
                "config_version": supervisor.loaded.version,
                "started_ms": int(supervisor.started_at * 1000),
                "uptime_s": round(now - supervisor.started_at, 1),
                "workers_ready": supervisor.state.workers_ready,
                "workers_wanted": supervisor.slots,
                "reloads": supervisor.state.reloads,
                "crash_looping": supervisor.crash_loops(),
                "attributions": self.attributions(config),
            },
            "totals": {
                "requests": totals.requests,
                "events": totals.events,
                "rejected": totals.rejected,
                "shed": totals.shed,
            },
            "rates": history.rates(),
            "latency_ms": history.latency(),
            "series": history.series(),
            "workers": workers,
            "collectors": collector_rows(config, totals, history, now),
            "features": {
                "banker": "banker" in fed_kinds(config),
                # The route is always served; it answers 404 until an event type feeds a rollup collector.
                "rollups": ("GET", ROLLUPS_PATH) in admin.routes and "rollup" in fed_kinds(config),
            },
            # Newest first (the workers' reports arrive a second apart, each in its own order).
            "tail": sorted(supervisor.recent, key=lambda event: event.ts, reverse=True),
        }
