"""A worker's counters on the request path: plain ints and dicts, compiled with the request path (mypyc), turned
into a snapshot for the supervisor once a second (edge/stats.py)."""

from __future__ import annotations

from bisect import bisect_left

# Upper bounds (seconds) of the request latency histogram; the last bucket is +Inf.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class EdgeStats:
    """Mutable counters owned by one worker's event loop."""

    __slots__ = (
        "events",
        "head",
        "ivt_dropped",
        "ivt_routed",
        "latency_counts",
        "latency_sum",
        "preprocessor_dropped",
        "preprocessor_errors",
        "rejected",
        "requests",
        "shed",
    )

    def __init__(self) -> None:
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
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def observe(self, seconds: float) -> None:
        self.latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
