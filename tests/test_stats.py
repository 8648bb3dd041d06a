"""Unit tests of the edge counters (EdgeStats, Snapshot, add) and of their Prometheus exposition.

The /metrics text is parsed back with prometheus_client's own parser and checked sample by sample.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from trackpoint.admin.metrics import SupervisorState, registry, render
from trackpoint.collectors.base import COLLECTOR_GAUGES, CollectorStats
from trackpoint.edge.counters import EdgeStats
from trackpoint.edge.stats import Snapshot, add, counters_only, snapshot_of
from trackpoint.http.latency import LATENCY_BUCKETS

BUCKETS = len(LATENCY_BUCKETS) + 1  # the last one is +Inf

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def counts(**at: int) -> list[int]:
    """Latency counts with `b<index>=n` set and every other bucket 0."""
    result = [0] * BUCKETS
    for key, value in at.items():
        result[int(key[1:])] = value
    return result


def observed(values: Iterable[float]) -> EdgeStats:
    stats = EdgeStats()
    for value in values:
        stats.observe(value)
    return stats


# --- EdgeStats ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [
        (0.0, 0),
        (0.00005, 0),
        (0.0001, 0),  # a value equal to a bound falls in that bound's bucket (Prometheus `le`)
        (0.00011, 1),
        (0.00025, 1),
        (0.0003, 2),
        (0.001, 3),
        (0.0025, 4),
        (0.2, 10),
        (0.25, 10),
        (1.0, 11),
        (1.0001, 12),
        (30.0, 12),
    ],
)
def test_observe_picks_the_le_bucket(seconds: float, bucket: int) -> None:
    stats = observed([seconds])
    assert stats.latency_counts == counts(**{f"b{bucket}": 1})
    assert stats.latency_sum == seconds


def test_observe_accumulates_counts_and_sum() -> None:
    stats = observed([0.0002, 0.0002, 0.003, 5.0, 0.0001])
    assert stats.latency_counts == counts(b0=1, b1=2, b5=1, b12=1)
    assert sum(stats.latency_counts) == 5
    assert stats.latency_sum == pytest.approx(5.0035)


def test_reject_counts_by_reason() -> None:
    stats = EdgeStats()
    for reason in ["missing_field", "not_found", "missing_field"]:
        stats.reject(reason)
    assert stats.rejected == {"missing_field": 2, "not_found": 1}


def test_snapshot_is_a_copy() -> None:
    stats = observed([0.001])
    stats.requests = 3
    stats.reject("invalid_field")
    stats.events["impression"] = 2
    stats.preprocessor_dropped["anonymize_ip"] = 1
    collectors = {"log": CollectorStats(received=2, sent=1, pending=1)}
    snap = snapshot_of(stats, 4, collectors)
    assert snap == Snapshot(
        requests=3,
        rejected={"invalid_field": 1},
        events={"impression": 2},
        preprocessor_dropped={"anonymize_ip": 1},
        latency_counts=counts(b3=1),
        latency_sum=0.001,
        connections=4,
        collectors=collectors,
    )
    stats.requests += 1
    stats.reject("invalid_field")
    stats.events["impression"] += 1
    stats.observe(0.5)
    assert snap.requests == 3
    assert snap.rejected == {"invalid_field": 1}
    assert snap.events == {"impression": 2}
    assert snap.latency_counts == counts(b3=1)


def test_snapshot_survives_the_trip_to_the_supervisor() -> None:
    stats = observed([0.0004, 2.0])
    stats.requests = 2
    stats.reject("not_found")
    snap = snapshot_of(stats, 1, {"log": CollectorStats(received=1, sent=1, healthy=False)})
    for codec in (msgspec.json, msgspec.msgpack):
        assert codec.decode(codec.encode(snap), type=Snapshot) == snap
    assert msgspec.json.decode(msgspec.json.encode(Snapshot()), type=Snapshot) == Snapshot()


# --- add ----------------------------------------------------------------------------------------------------


def test_add_sums_every_counter() -> None:
    first = Snapshot(
        requests=10,
        rejected={"missing_field": 2, "not_found": 1},
        events={"impression": 5, "click": 1},
        preprocessor_dropped={"anonymize_ip": 1},
        pipelines_cut=4,
        latency_counts=counts(b0=3, b4=2, b12=1),
        latency_sum=1.5,
        connections=2,
        collectors={
            "log": CollectorStats(received=5, sent=4, dropped=1, errors=0, pending=1, healthy=True),
            "stdout": CollectorStats(received=1, sent=1),
        },
    )
    second = Snapshot(
        requests=7,
        rejected={"missing_field": 1, "invalid_field": 4},
        events={"impression": 2, "win": 3},
        pipelines_cut=1,
        latency_counts=counts(b0=1, b11=2, b12=4),
        latency_sum=0.25,
        connections=1,
        collectors={
            "log": CollectorStats(received=3, sent=2, dropped=0, errors=2, pending=1, healthy=False),
            "archive": CollectorStats(received=9, sent=9, dropped=0, errors=0, pending=0, healthy=True),
        },
    )
    total = add(first, second)
    assert total.requests == 17
    assert total.rejected == {"missing_field": 3, "not_found": 1, "invalid_field": 4}
    assert total.events == {"impression": 7, "click": 1, "win": 3}
    assert total.preprocessor_dropped == {"anonymize_ip": 1}
    assert total.pipelines_cut == 5
    assert total.latency_counts == counts(b0=4, b4=2, b11=2, b12=5)
    assert total.latency_counts[-1] == 5  # the +Inf bucket adds like the others
    assert total.latency_sum == 1.75
    assert total.connections == 3
    assert total.collectors == {
        "log": CollectorStats(received=8, sent=6, dropped=1, errors=2, pending=2, healthy=False),
        "stdout": CollectorStats(received=1, sent=1),
        "archive": CollectorStats(received=9, sent=9),
    }
    assert add(second, first) == total


def test_add_to_an_empty_total() -> None:
    part = snapshot_of(observed([0.01, 7.0]), 3, {"log": CollectorStats(received=2, sent=2)})
    total = add(Snapshot(), part)
    assert total == part
    assert total.collectors["log"] is not part.collectors["log"]  # a copy: sums never alias a worker's stats
    assert add(total, Snapshot()) == part
    assert add(Snapshot(), Snapshot()) == Snapshot()


def test_add_over_many_workers() -> None:
    total = Snapshot()
    for worker in range(5):
        stats = observed([0.0001] * worker + [3.0])
        stats.requests = worker + 1
        stats.events["video"] = worker
        total = add(total, snapshot_of(stats, 1, {"log": CollectorStats(received=worker, sent=worker)}))
    assert total.requests == 15
    assert total.events == {"video": 10}
    assert total.latency_counts == counts(b0=10, b12=5)
    assert total.latency_sum == pytest.approx(15.001)
    assert total.connections == 5
    assert total.collectors == {"log": CollectorStats(received=10, sent=10)}


# --- an exited worker ------------------------------------------------------------------------------------


def test_an_exited_workers_gauges_stop_counting_and_its_counters_stay() -> None:
    """A worker that died with a backlog (and under backpressure) leaves its totals behind, never its levels: the
    worker that adopts the backlog counts it, and the supervisor adds the dead one's snapshot to every scrape."""
    dead = Snapshot(
        requests=900,
        connections=7,
        collectors={
            "queue": CollectorStats(
                received=900, sent=100, retried=50, dropped=3, errors=4, spool_lost_records=1,
                pending=60, spooled_bytes=65209, spooled_events=742, spool_max_bytes=65536,
                healthy=False, accepting=False, required=True, last_success_s=1234.0, outcomes={"applied": 5},
                levels={"dedupe_ids": 99},
            )
        },
    )  # fmt: skip
    adopter = Snapshot(collectors={"queue": CollectorStats(sent=797, spool_max_bytes=65536, required=True)})
    total = add(counters_only(dead), adopter)
    assert total.connections == 0
    assert total.requests == 900
    assert total.collectors["queue"] == CollectorStats(
        received=900, sent=897, retried=50, dropped=3, errors=4, spool_lost_records=1,
        spool_max_bytes=65536, required=True, last_success_s=1234.0, outcomes={"applied": 5},
    )  # fmt: skip


def test_every_collector_field_is_a_counter_or_a_gauge() -> None:
    """A field added to CollectorStats must say which it is, or a dead worker's level would count for good."""
    counters = {"received", "sent", "retried", "dropped", "errors", "spool_lost_records", "outcomes"}
    kept = {"last_success_s", "required"}  # the latest success of any worker; configuration, not a level
    assert set(CollectorStats.__struct_fields__) == counters | kept | set(COLLECTOR_GAUGES)
    assert not (counters | kept) & set(COLLECTOR_GAUGES)


# --- Prometheus exposition ----------------------------------------------------------------------------------


def parse(body: bytes) -> tuple[dict[str, str], Samples]:
    """Family types by name, and every sample's value by (name, sorted labels)."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, key
            samples[key] = sample.value
    return types, samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def rendered(snap: Snapshot, state: SupervisorState | None = None) -> bytes:
    return render(registry(lambda: snap, state or SupervisorState()))


def test_metrics_render_parses_with_the_expected_samples() -> None:
    stats = observed([0.00005, 0.0003, 0.0003, 0.02, 2.0])
    stats.requests = 12
    stats.reject("missing_field")
    stats.reject("missing_field")
    stats.reject("not_found")
    stats.events.update({"impression": 6, "click": 1})
    stats.preprocessor_dropped["parse_user_agent"] = 2
    stats.pipelines_cut = 3
    snap = snapshot_of(
        stats,
        3,
        {
            "log": CollectorStats(received=7, sent=6, dropped=1, errors=2, pending=1, healthy=True),
            "stdout": CollectorStats(received=7, sent=7, healthy=False),
            "queue": CollectorStats(levels={"dedupe_ids": 7200}),
        },
    )
    state = SupervisorState()
    state.workers_ready, state.workers_wanted = 2, 4
    state.restarts, state.reloads, state.reload_failures = 1, 3, 1
    body = rendered(snap, state)
    types, samples = parse(body)

    assert sample(samples, "trackpoint_requests_total") == 12
    assert sample(samples, "trackpoint_rejected_total", reason="missing_field") == 2
    assert sample(samples, "trackpoint_rejected_total", reason="not_found") == 1
    assert sample(samples, "trackpoint_events_total", type="impression") == 6
    assert sample(samples, "trackpoint_events_total", type="click") == 1
    assert sample(samples, "trackpoint_preprocessor_dropped_total", preprocessor="parse_user_agent") == 2
    assert sample(samples, "trackpoint_pipelines_cut_total") == 3

    name = "trackpoint_request_duration_seconds"
    assert sample(samples, f"{name}_count") == 5
    assert sample(samples, f"{name}_sum") == pytest.approx(2.02065)
    assert sample(samples, f"{name}_bucket", le="+Inf") == 5
    assert sample(samples, f"{name}_bucket", le="0.0001") == 1
    assert sample(samples, f"{name}_bucket", le="0.0005") == 3
    assert sample(samples, f"{name}_bucket", le="0.025") == 4
    assert sample(samples, f"{name}_bucket", le="1.0") == 4
    buckets = [value for (sample_name, _), value in samples.items() if sample_name == f"{name}_bucket"]
    assert len(buckets) == BUCKETS
    assert buckets == sorted(buckets)  # cumulative

    assert sample(samples, "trackpoint_connections") == 3
    assert sample(samples, "trackpoint_collector_received_total", collector="log") == 7
    assert sample(samples, "trackpoint_collector_sent_total", collector="log") == 6
    assert sample(samples, "trackpoint_collector_dropped_total", collector="log") == 1
    assert sample(samples, "trackpoint_collector_errors_total", collector="log") == 2
    assert sample(samples, "trackpoint_collector_pending", collector="log") == 1
    assert sample(samples, "trackpoint_collector_healthy", collector="log") == 1
    assert sample(samples, "trackpoint_collector_healthy", collector="stdout") == 0
    assert sample(samples, "trackpoint_collector_level", collector="queue", level="dedupe_ids") == 7200
    assert sample(samples, "trackpoint_workers_ready") == 2
    assert sample(samples, "trackpoint_workers_wanted") == 4
    assert sample(samples, "trackpoint_worker_restarts_total") == 1
    assert sample(samples, "trackpoint_reloads_total") == 3
    assert sample(samples, "trackpoint_reload_failures_total") == 1

    assert types["trackpoint_requests"] == "counter"
    assert types["trackpoint_rejected"] == "counter"
    assert types[name] == "histogram"
    assert types["trackpoint_connections"] == "gauge"
    assert types["trackpoint_collector_pending"] == "gauge"
    assert types["trackpoint_collector_level"] == "gauge"


def test_metrics_of_an_empty_snapshot() -> None:
    types, samples = parse(rendered(Snapshot()))
    assert sample(samples, "trackpoint_requests_total") == 0
    assert sample(samples, "trackpoint_request_duration_seconds_count") == 0
    assert sample(samples, "trackpoint_request_duration_seconds_bucket", le="+Inf") == 0
    assert sample(samples, "trackpoint_request_duration_seconds_sum") == 0
    assert not any(name == "trackpoint_rejected_total" for name, _ in samples)
    assert "trackpoint_events" in types
    assert all(math.isfinite(value) for value in samples.values())


def test_metrics_follow_the_totals_on_every_scrape() -> None:
    current = [Snapshot(requests=1)]
    metrics = registry(lambda: current[0], SupervisorState())
    assert sample(parse(render(metrics))[1], "trackpoint_requests_total") == 1
    current[0] = add(current[0], Snapshot(requests=4, events={"win": 4}))
    _, samples = parse(render(metrics))
    assert sample(samples, "trackpoint_requests_total") == 5
    assert sample(samples, "trackpoint_events_total", type="win") == 4
