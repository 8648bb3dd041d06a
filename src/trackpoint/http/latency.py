"""The request latency histogram a connection feeds as each request is answered (compiled with the request path)."""

from __future__ import annotations

from typing import Final

# Upper bounds (seconds) of the request latency histogram; the last bucket is +Inf.
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


class LatencyHistogram:
    """Counts per bucket and the sum of the durations. A native class (mypyc): a connection calls `observe`
    directly with an unboxed float, where a callable attribute took a boxed float, a generic call and `bisect`."""

    __slots__ = ("latency_counts", "latency_sum")

    def __init__(self) -> None:
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def observe(self, seconds: float) -> None:
        index = 0  # the first bucket whose bound is at least `seconds` (bisect_left): nearly always the first
        for bound in LATENCY_BUCKETS:
            if seconds <= bound:
                break
            index += 1
        self.latency_counts[index] += 1
        self.latency_sum += seconds
