"""A worker's counters as the snapshot struct sent to the supervisor once a second (the counters themselves, plain
ints on the request path, are in edge/counters.py).

The supervisor adds the snapshots of all workers (and keeps the counters of exited ones) for the admin /metrics page.
"""

from __future__ import annotations

from itertools import zip_longest
from typing import Any

import msgspec

from trackpoint.collectors.base import COLLECTOR_GAUGES, CollectorStats
from trackpoint.edge.counters import EdgeStats


class Snapshot(msgspec.Struct, omit_defaults=True):
    """A worker's counters at one moment (all monotonic except `connections` and collector `pending`)."""

    requests: int = 0
    rejected: dict[str, int] = {}
    events: dict[str, int] = {}
    shed: dict[str, int] = {}
    # HEAD requests answered as GET would be and not recorded, by event type.
    head: dict[str, int] = {}
    preprocessor_dropped: dict[str, int] = {}
    preprocessor_errors: dict[str, int] = {}
    # Outcomes preprocessors count themselves (attribution results, invalid-traffic flags), by preprocessor.
    preprocessor_outcomes: dict[str, dict[str, int]] = {}
    # Events flagged as invalid traffic that went only to their policy's collectors, or nowhere, by event type.
    ivt_routed: dict[str, int] = {}
    ivt_dropped: dict[str, int] = {}
    # Invalid optional values left out of their events (`on_invalid: drop`), by event type and `field:reason`.
    invalid_dropped: dict[str, dict[str, int]] = {}
    # Connections closed by the pipelining budget of an iteration (server.limits.max_pipelined_per_iteration).
    pipelines_cut: int = 0
    latency_counts: list[int] = []
    latency_sum: float = 0.0
    connections: int = 0
    collectors: dict[str, CollectorStats] = {}


def snapshot_of(counters: EdgeStats, connections: int, collectors: dict[str, CollectorStats]) -> Snapshot:
    """The worker's counters now, as the snapshot sent to the supervisor."""
    return Snapshot(
        requests=counters.requests,
        rejected=dict(counters.rejected),
        events=dict(counters.events),
        shed=dict(counters.shed),
        head=dict(counters.head),
        preprocessor_dropped=dict(counters.preprocessor_dropped),
        preprocessor_errors=dict(counters.preprocessor_errors),
        ivt_routed=dict(counters.ivt_routed),
        ivt_dropped=dict(counters.ivt_dropped),
        pipelines_cut=counters.pipelines_cut,
        latency_counts=list(counters.latency_counts),
        latency_sum=counters.latency_sum,
        connections=connections,
        collectors=collectors,
    )


def add(total: Snapshot, part: Snapshot) -> Snapshot:
    """The sum of two snapshots (gauges add too: connections and pending are per-worker amounts)."""
    return Snapshot(
        requests=total.requests + part.requests,
        rejected=_add_counts(total.rejected, part.rejected),
        events=_add_counts(total.events, part.events),
        shed=_add_counts(total.shed, part.shed),
        head=_add_counts(total.head, part.head),
        preprocessor_dropped=_add_counts(total.preprocessor_dropped, part.preprocessor_dropped),
        preprocessor_errors=_add_counts(total.preprocessor_errors, part.preprocessor_errors),
        preprocessor_outcomes={
            name: _add_counts(total.preprocessor_outcomes.get(name, {}), part.preprocessor_outcomes.get(name, {}))
            for name in total.preprocessor_outcomes.keys() | part.preprocessor_outcomes.keys()
        },
        ivt_routed=_add_counts(total.ivt_routed, part.ivt_routed),
        ivt_dropped=_add_counts(total.ivt_dropped, part.ivt_dropped),
        invalid_dropped={
            name: _add_counts(total.invalid_dropped.get(name, {}), part.invalid_dropped.get(name, {}))
            for name in total.invalid_dropped.keys() | part.invalid_dropped.keys()
        },
        pipelines_cut=total.pipelines_cut + part.pipelines_cut,
        latency_counts=[a + b for a, b in zip_longest(total.latency_counts, part.latency_counts, fillvalue=0)],
        latency_sum=total.latency_sum + part.latency_sum,
        connections=total.connections + part.connections,
        collectors={
            name: _add_collector(total.collectors.get(name), part.collectors.get(name))
            for name in total.collectors.keys() | part.collectors.keys()
        },
    )


def counters_only(snapshot: Snapshot) -> Snapshot:
    """What of an exited or replaced worker's last snapshot still counts: its counters, so that the totals never go
    back (Prometheus would read a reset). Its gauges (connections; a collector's pending events, spool contents and
    size, health and accepting) were levels of a process that is gone: a backlog it left on disk is counted by the
    worker that adopts it, and its backpressure ended with it."""
    idle = CollectorStats()
    return msgspec.structs.replace(
        snapshot,
        connections=0,
        collectors={
            name: msgspec.structs.replace(stats, **{gauge: getattr(idle, gauge) for gauge in COLLECTOR_GAUGES})
            for name, stats in snapshot.collectors.items()
        },
    )


def _add_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {key: a.get(key, 0) + b.get(key, 0) for key in a.keys() | b.keys()}


def _add_collector(a: CollectorStats | None, b: CollectorStats | None) -> CollectorStats:
    """Counts and gauges add up; a collector is healthy and accepting only where it is in every worker; its last
    success is the latest of any worker's, its problem the first worker's that has one."""
    if a is None or b is None:
        return msgspec.structs.replace(a or b or CollectorStats())
    total: dict[str, Any] = {}
    for name in CollectorStats.__struct_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, dict):
            total[name] = _add_counts(x, y)
        elif name == "last_success_s":
            total[name] = max(x, y)
        elif name == "problem":
            total[name] = x or y
        else:
            total[name] = (x or y) if name == "required" else (x and y) if isinstance(x, bool) else x + y
    return CollectorStats(**total)
