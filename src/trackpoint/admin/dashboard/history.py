"""The dashboard's memory: a sample of the summed counters a second, for ten minutes, and what it is read into
(rates, latency percentiles from the histogram's buckets, per-5-second series, each collector's row)."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trackpoint.config.model import Config, type_tag
from trackpoint.edge.stats import Snapshot
from trackpoint.http.latency import LATENCY_BUCKETS

KEEP_S = 600  # ten minutes of samples, one a second
STEP_S = 5  # one point of the series per 5 samples
RATE_WINDOW_S = 10  # "now" for rates
LATENCY_WINDOW_S = 60  # "now" for percentiles and a collector's sent/s and spool growth
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


@dataclass(frozen=True)
class Sample:
    t: float  # Unix seconds
    requests: int
    events: dict[str, int]
    rejected: dict[str, int]
    latency_counts: list[int]
    collectors: dict[str, tuple[int, int]]  # sent, spooled bytes


def _delta(new: Mapping[str, int], old: Mapping[str, int]) -> dict[str, int]:
    return {key: value - old.get(key, 0) for key, value in new.items()}


def percentile(counts: list[int], quantile: float) -> float | None:
    """The quantile (seconds) of a latency histogram's bucket counts, interpolated in its bucket; None if empty.
    Beyond the last bound it answers that bound (the histogram knows no more)."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = quantile * total
    seen = 0
    for index, count in enumerate(counts):
        if count > 0 and seen + count >= rank:
            if index >= len(LATENCY_BUCKETS):
                return LATENCY_BUCKETS[-1]
            lower = LATENCY_BUCKETS[index - 1] if index else 0.0
            return lower + (LATENCY_BUCKETS[index] - lower) * (rank - seen) / count
        seen += count
    return LATENCY_BUCKETS[-1]


class History:
    def __init__(self, keep_s: int = KEEP_S) -> None:
        self.samples: deque[Sample] = deque(maxlen=keep_s + 1)

    def add(self, t: float, snapshot: Snapshot) -> None:
        self.samples.append(
            Sample(
                t=t,
                requests=snapshot.requests,
                events=dict(snapshot.events),
                rejected=dict(snapshot.rejected),
                latency_counts=list(snapshot.latency_counts),
                collectors={name: (c.sent, c.spooled_bytes) for name, c in snapshot.collectors.items()},
            )
        )

    def _window(self, seconds: float) -> tuple[Sample, Sample] | None:
        """The oldest sample within `seconds` of the newest, and the newest; None before two samples."""
        if len(self.samples) < 2:
            return None
        newest = self.samples[-1]
        oldest = next(s for s in self.samples if newest.t - s.t <= seconds + 0.5)
        if oldest is newest:
            oldest = self.samples[-2]
        return oldest, newest

    def rates(self, window_s: float = RATE_WINDOW_S) -> dict[str, Any]:
        """Per second over the last `window_s`: requests, events by type, refusals by reason."""
        window = self._window(window_s)
        if window is None:
            return {"window_s": window_s, "requests": 0.0, "events": {}, "rejected": {}}
        old, new = window
        elapsed = new.t - old.t
        return {
            "window_s": window_s,
            "requests": round((new.requests - old.requests) / elapsed, 2),
            "events": {k: round(v / elapsed, 2) for k, v in _delta(new.events, old.events).items()},
            "rejected": {k: round(v / elapsed, 2) for k, v in _delta(new.rejected, old.rejected).items()},
        }

    def latency(self, window_s: float = LATENCY_WINDOW_S) -> dict[str, Any]:
        """Latency percentiles (milliseconds) of the requests answered in the last `window_s`."""
        window = self._window(window_s)
        counts = [] if window is None else _bucket_delta(window[1], window[0])
        return {"window_s": window_s, **{name: _ms(percentile(counts, q)) for name, q in QUANTILES.items()}}

    def series(self, step: int = STEP_S) -> dict[str, Any]:
        """Per-second rates and latency percentiles for each `step` samples over the history, oldest first."""
        points = list(self.samples)[::-1][::step][::-1]
        pairs = list(itertools.pairwise(points))
        types = sorted({name for p in points for name in p.events})
        reasons = sorted({name for p in points for name in p.rejected})

        def rate(new: int, old: int, elapsed: float) -> float:
            return round((new - old) / elapsed, 2) if elapsed > 0 else 0.0

        return {
            "step_s": step,
            "t": [int(new.t * 1000) for _, new in pairs],
            "requests": [rate(new.requests, old.requests, new.t - old.t) for old, new in pairs],
            "events": {
                name: [rate(new.events.get(name, 0), old.events.get(name, 0), new.t - old.t) for old, new in pairs]
                for name in types
            },
            "rejected": {
                name: [rate(new.rejected.get(name, 0), old.rejected.get(name, 0), new.t - old.t) for old, new in pairs]
                for name in reasons
            },
            **{
                name: [_ms(percentile(_bucket_delta(new, old), q)) for old, new in pairs]
                for name, q in QUANTILES.items()
                if name != "p90"
            },
        }

    def collector_rates(self, name: str, window_s: float = LATENCY_WINDOW_S) -> tuple[float, float]:
        """A collector's events sent per second and its spool's growth in bytes per second, over `window_s`."""
        window = self._window(window_s)
        if window is None:
            return 0.0, 0.0
        old, new = window
        elapsed = new.t - old.t
        sent_old, spooled_old = old.collectors.get(name, (0, 0))
        sent_new, spooled_new = new.collectors.get(name, (sent_old, spooled_old))
        return (sent_new - sent_old) / elapsed, (spooled_new - spooled_old) / elapsed


def _bucket_delta(new: Sample, old: Sample) -> list[int]:
    if len(old.latency_counts) != len(new.latency_counts):
        return list(new.latency_counts)
    return [a - b for a, b in zip(new.latency_counts, old.latency_counts, strict=True)]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def collector_rows(config: Config, totals: Snapshot, history: History, now: float) -> list[dict[str, Any]]:
    """One row per collector: what it delivers, what waits (memory, spool) and how long until the spool is full
    at the last minute's growth, when it last delivered and, while events wait, how long ago that was (lag)."""
    rows = []
    for name, stats in sorted(totals.collectors.items()):
        collector_config = config.collectors.get(name)
        try:
            kind = type_tag(type(collector_config)) if collector_config is not None else ""
        except TypeError:
            kind = ""
        sent_per_s, growth = history.collector_rates(name)
        until_full: float | None = None
        if stats.spool_max_bytes and growth > 0:
            until_full = round(max(0.0, stats.spool_max_bytes - stats.spooled_bytes) / growth, 1)
        waiting = stats.pending + stats.spooled_events
        lag_s: float | None = 0.0
        if waiting:
            lag_s = round(now - stats.last_success_s, 1) if stats.last_success_s else None
        rows.append(
            {
                "name": name,
                "type": kind,
                "healthy": stats.healthy,
                "required": stats.required,
                "accepting": stats.accepting,
                "received": stats.received,
                "sent": stats.sent,
                "sent_per_s": round(sent_per_s, 2),
                "pending": stats.pending,
                "spooled_events": stats.spooled_events,
                "spooled_bytes": stats.spooled_bytes,
                "spool_max_bytes": stats.spool_max_bytes,
                "seconds_until_full": until_full,
                "last_success_ms": int(stats.last_success_s * 1000),
                "lag_s": lag_s,
                "dropped": stats.dropped,
                "errors": stats.errors,
                "outcomes": stats.outcomes,
            }
        )
    return rows
