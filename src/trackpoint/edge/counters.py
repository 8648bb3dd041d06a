"""A worker's counters on the request path: plain ints and dicts, compiled with the request path (mypyc), turned
into a snapshot for the supervisor once a second (edge/stats.py)."""

from __future__ import annotations

from trackpoint.http.latency import LatencyHistogram


class EdgeStats(LatencyHistogram):
    """Mutable counters owned by one worker's event loop; the latency histogram is the base class, which the
    worker's connections feed."""

    __slots__ = (
        "events",
        "head",
        "ivt_dropped",
        "ivt_routed",
        "pipelines_cut",
        "preprocessor_dropped",
        "preprocessor_errors",
        "rejected",
        "requests",
        "shed",
    )

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0
        self.rejected: dict[str, int] = {}
        self.events: dict[str, int] = {}
        # Requests over a rate limit with action shed, by event type: answered normally, not recorded.
        self.shed: dict[str, int] = {}
        # HEAD requests on a tracking path: answered as GET would be, not recorded, by event type.
        self.head: dict[str, int] = {}
        self.preprocessor_dropped: dict[str, int] = {}
        self.preprocessor_errors: dict[str, int] = {}
        # Flagged events under an event type's invalid_traffic policy route or drop, by event type.
        self.ivt_routed: dict[str, int] = {}
        self.ivt_dropped: dict[str, int] = {}
        # Connections answered `Connection: close` because the iteration had answered its share of pipelined
        # requests (server.limits.max_pipelined_per_iteration).
        self.pipelines_cut = 0

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
