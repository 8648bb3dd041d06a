"""Prometheus exposition of the workers' summed counters, rendered by prometheus-client from a snapshot."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import accumulate

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from trackpoint.config.model import Config, type_tag
from trackpoint.edge.stats import Snapshot
from trackpoint.http.latency import LATENCY_BUCKETS


class SupervisorState:
    """What the supervisor knows besides the workers' counters."""

    def __init__(self) -> None:
        self.workers_ready = 0
        self.workers_wanted = 0
        self.restarts = 0
        self.reloads = 0
        self.reload_failures = 0
        self.spawn_failures = 0
        # Workers the supervisor stopped (then started again), by reason: stalled, start_timeout, channel_broken.
        self.worker_stops = dict.fromkeys(("stalled", "start_timeout", "channel_broken"), 0)
        # Workers replaced for their memory (server.worker_max_memory_mb), and each slot's worker's RSS in bytes.
        self.worker_recycled = 0
        # Events that workers ending without a drain (killed, crashed) held in memory for a collector, undelivered,
        # as of their last report: the log has them (`trackpoint replay` refills), by collector.
        self.undelivered: dict[str, int] = {}
        self.worker_rss: dict[int, int] = {}
        # What the supervisor could not read of the workers' messages and skipped, by reason: undecodable (a frame),
        # recent_event (an event of a report's dashboard sample).
        self.messages_skipped = dict.fromkeys(("undecodable", "recent_event"), 0)
        # Admin connections refused, closed or rejected, by reason (the admin server's own counts).
        self.admin_connections: dict[str, int] = {}
        # Spools no worker drains (their collector removed, or its spool turned off, by a reload): (events, bytes)
        # by collector, as of the last check (at start, and when a reload's old workers have exited).
        self.stranded_spools: dict[str, tuple[int, int]] = {}


class _SnapshotCollector:
    def __init__(self, totals: Callable[[], Snapshot], state: SupervisorState) -> None:
        self.totals = totals
        self.state = state

    def collect(self) -> Iterator[Metric]:
        snap = self.totals()
        state = self.state
        yield _counter("trackpoint_requests", "HTTP requests received by the tracking edge.", snap.requests)
        yield _counter(
            "trackpoint_pipelines_cut",
            "Connections answered `Connection: close` after a pipelined request because their event-loop iteration "
            "had answered server.limits.max_pipelined_per_iteration pipelined requests (clients pipelining without "
            "reading, or a flood of them).",
            snap.pipelines_cut,
        )
        yield _by_label(
            "trackpoint_rejected", "Requests rejected, by reason (the X-Reject-Reason code).", "reason", snap.rejected
        )
        yield _by_label("trackpoint_events", "Events accepted, by event type.", "type", snap.events)
        yield _by_label(
            "trackpoint_shed",
            "Requests over a rate limit with action shed, by event type: answered, not recorded.",
            "type",
            snap.shed,
        )
        yield _by_label(
            "trackpoint_head_requests",
            "HEAD requests on tracking paths, by event type: answered as GET would be, nothing recorded.",
            "type",
            snap.head,
        )
        yield _by_label(
            "trackpoint_preprocessor_dropped",
            "Events dropped by a preprocessor.",
            "preprocessor",
            snap.preprocessor_dropped,
        )
        yield _by_label(
            "trackpoint_preprocessor_errors",
            "Events dropped because a preprocessor raised or returned no well-formed Event (a failing plugin).",
            "preprocessor",
            snap.preprocessor_errors,
        )
        outcomes = CounterMetricFamily(
            "trackpoint_preprocessor_outcomes",
            "Outcomes preprocessors count (attribution results, invalid-traffic flags), by preprocessor and outcome.",
            labels=["preprocessor", "outcome"],
        )
        for preprocessor, outcome_counts in sorted(snap.preprocessor_outcomes.items()):
            for outcome, count in sorted(outcome_counts.items()):
                outcomes.add_metric([preprocessor, outcome], count)
        yield outcomes
        yield _by_label(
            "trackpoint_invalid_traffic_routed",
            "Events flagged as invalid traffic recorded only by their policy's collectors (route), by event type.",
            "type",
            snap.ivt_routed,
        )
        yield _by_label(
            "trackpoint_invalid_traffic_dropped",
            "Events flagged as invalid traffic and not recorded (drop), by event type.",
            "type",
            snap.ivt_dropped,
        )
        dropped = CounterMetricFamily(
            "trackpoint_invalid_values_dropped",
            "Invalid optional values left out of their events (`on_invalid: drop`; the event is recorded with "
            "dims.invalid), by event type, field and reason.",
            labels=["type", "field", "reason"],
        )
        for type_name, entries in sorted(snap.invalid_dropped.items()):
            for entry, count in sorted(entries.items()):
                field, _, reason = entry.partition(":")
                dropped.add_metric([type_name, field, reason], count)
        yield dropped
        counts = snap.latency_counts or [0] * (len(LATENCY_BUCKETS) + 1)
        cumulative = list(accumulate(counts))
        buckets = [(repr(bound), cumulative[i]) for i, bound in enumerate(LATENCY_BUCKETS)]
        buckets.append(("+Inf", cumulative[-1]))
        latency = HistogramMetricFamily(
            "trackpoint_request_duration_seconds",
            "Time from a request's first byte to its response being written.",
        )
        latency.add_metric([], buckets, snap.latency_sum)
        yield latency
        yield GaugeMetricFamily("trackpoint_connections", "Open tracking connections.", value=snap.connections)
        yield from _collector_metrics(snap)
        yield GaugeMetricFamily("trackpoint_workers_ready", "Worker processes serving.", value=state.workers_ready)
        yield GaugeMetricFamily("trackpoint_workers_wanted", "Configured worker processes.", value=state.workers_wanted)
        yield _counter("trackpoint_worker_restarts", "Workers restarted after dying.", state.restarts)
        yield _counter(
            "trackpoint_worker_spawn_failures",
            "Worker processes that could not be started (out of descriptors, memory or processes); retried.",
            state.spawn_failures,
        )
        yield _by_label(
            "trackpoint_worker_stops",
            "Workers the supervisor stopped and started again, by reason: stalled (no report for "
            "server.worker_stall_timeout_s), start_timeout (not ready within server.worker_start_timeout_s), "
            "channel_broken (a control frame over the limit).",
            "reason",
            state.worker_stops,
        )
        yield _counter(
            "trackpoint_worker_recycled",
            "Workers replaced, a new one first, because their memory passed server.worker_max_memory_mb.",
            state.worker_recycled,
        )
        yield _by_label(
            "trackpoint_collector_undelivered_at_exit",
            "Events a collector held in memory, undelivered, in workers that ended without draining (killed, "
            "crashed), as of their last report (a floor): the log has them, `trackpoint replay` refills the collector.",
            "collector",
            state.undelivered,
        )
        rss = GaugeMetricFamily(
            "trackpoint_worker_rss_bytes",
            "Resident memory of each slot's worker, as of its last report.",
            labels=["slot"],
        )
        for slot, value in sorted(state.worker_rss.items()):
            rss.add_metric([str(slot)], value)
        yield rss
        yield _by_label(
            "trackpoint_worker_messages_skipped",
            "Worker messages the supervisor could not decode and skipped, by reason: undecodable (a whole report), "
            "recent_event (one event of a report's dashboard sample).",
            "reason",
            state.messages_skipped,
        )
        yield _by_label(
            "trackpoint_admin_refused",
            "Admin connections refused, evicted, timed out or rejected, and unauthorized admin requests, by reason.",
            "reason",
            state.admin_connections,
        )
        stranded_events = GaugeMetricFamily(
            "trackpoint_spool_stranded_events",
            "Events left in the spools of a collector the running configuration no longer has (or has without a "
            "spool): no worker sends them; `trackpoint replay` with the old configuration does, from the logs.",
            labels=["collector"],
        )
        stranded_bytes = GaugeMetricFamily(
            "trackpoint_spool_stranded_bytes",
            "Bytes of those stranded spools, by collector.",
            labels=["collector"],
        )
        for name, (events, size) in sorted(state.stranded_spools.items()):
            stranded_events.add_metric([name], events)
            stranded_bytes.add_metric([name], size)
        yield stranded_events
        yield stranded_bytes
        yield _counter("trackpoint_reloads", "Configuration reloads completed.", state.reloads)
        yield _counter(
            "trackpoint_reload_failures",
            "Reloads refused (invalid config or workers not ready).",
            state.reload_failures,
        )


def _collector_metrics(snap: Snapshot) -> Iterator[Metric]:
    families = {
        outcome: CounterMetricFamily(
            f"trackpoint_collector_{outcome}", f"Events {outcome} by each collector.", labels=["collector"]
        )
        for outcome in ("received", "sent", "retried", "dropped")
    }
    errors = CounterMetricFamily(
        "trackpoint_collector_errors", "Failed sends and spool writes, by collector.", labels=["collector"]
    )
    lost = CounterMetricFamily(
        "trackpoint_collector_spool_lost_records",
        "Spool records of a torn or corrupt tail, discarded on recovery.",
        labels=["collector"],
    )
    gauges = {
        "pending": GaugeMetricFamily(
            "trackpoint_collector_pending",
            "Events in memory not delivered yet (waiting, or taken by a send still running).",
            labels=["collector"],
        ),
        "memory_bytes": GaugeMetricFamily(
            "trackpoint_collector_memory_bytes",
            "Memory the events a collector holds take (its batch and the batch being sent), as estimated when each "
            "was offered (encoded length plus Python objects); bounded by max_pending_bytes.",
            labels=["collector"],
        ),
        "spooled_bytes": GaugeMetricFamily(
            "trackpoint_collector_spooled_bytes", "Bytes waiting in the disk spool.", labels=["collector"]
        ),
        "spooled_events": GaugeMetricFamily(
            "trackpoint_collector_spooled_events", "Events waiting in the disk spool.", labels=["collector"]
        ),
        "spool_max_bytes": GaugeMetricFamily(
            "trackpoint_collector_spool_max_bytes",
            "What the disk spools may hold (spool.max_bytes per worker, summed; 0: spool off).",
            labels=["collector"],
        ),
        "last_success_s": GaugeMetricFamily(
            "trackpoint_collector_last_success_timestamp_seconds",
            "When the collector last delivered events (Unix time, to the second; 0: not since start).",
            labels=["collector"],
        ),
    }
    healthy = GaugeMetricFamily(
        "trackpoint_collector_healthy", "1 when every worker's collector is healthy.", labels=["collector"]
    )
    accepting = GaugeMetricFamily(
        "trackpoint_collector_accepting",
        "0 while a full spool under the backpressure policy makes the edge answer 503.",
        labels=["collector"],
    )
    # What a collector counts beyond the common counters (the banker's applied and duplicate debits, ...).
    details = CounterMetricFamily(
        "trackpoint_collector_outcomes",
        "Collector-specific counts (banker: applied, duplicates, notifications, skipped_<reason>), by collector.",
        labels=["collector", "outcome"],
    )
    levels = GaugeMetricFamily(
        "trackpoint_collector_level",
        "Collector-specific levels (redis_streams: dedupe_ids, the event ids its dedupe state holds), by collector.",
        labels=["collector", "level"],
    )
    for name, stats in sorted(snap.collectors.items()):
        for outcome, value in sorted(stats.outcomes.items()):
            details.add_metric([name, outcome], value)
        for level, value in sorted(stats.levels.items()):
            levels.add_metric([name, level], value)
        for outcome, counter in families.items():
            counter.add_metric([name], getattr(stats, outcome))
        for gauge, family in gauges.items():
            family.add_metric([name], getattr(stats, gauge))
        errors.add_metric([name], stats.errors)
        lost.add_metric([name], stats.spool_lost_records)
        healthy.add_metric([name], 1 if stats.healthy else 0)
        accepting.add_metric([name], 1 if stats.accepting else 0)
    yield from families.values()
    yield from gauges.values()
    yield from (errors, lost, healthy, accepting, details, levels)


class CollectorInfo:
    """trackpoint_collector_info{collector, type} 1 for each configured collector: alert rules and dashboards pick
    collectors by type (`* on(collector) group_left(type) trackpoint_collector_info{type="banker"}`), whatever
    the user named them."""

    def __init__(self, config: Callable[[], Config]) -> None:
        self.config = config

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "trackpoint_collector_info", "1 for each configured collector, with its type.", labels=["collector", "type"]
        )
        for name, collector in sorted(self.config().collectors.items()):
            info.add_metric([name, type_tag(type(collector))], 1)
        yield info


def _by_label(name: str, documentation: str, label: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def registry(totals: Callable[[], Snapshot], state: SupervisorState) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(totals, state))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    body: bytes = generate_latest(registry)
    return body
