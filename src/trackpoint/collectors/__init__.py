"""Collectors: where events go after the response. Built-ins: `log` (durable JSON lines), `stdout`, and the queue
collectors `kafka`, `nats` and `redis_streams`; plugins add more."""

from __future__ import annotations

from trackpoint.collectors.base import (
    Collector,
    CollectorContext,
    CollectorStartError,
    CollectorStats,
    Health,
    SendResult,
)

# A collector is built by the registry (`trackpoint.plugins.Registry.build_collector`), for built-ins and plugins alike.
__all__ = ["Collector", "CollectorContext", "CollectorStartError", "CollectorStats", "Health", "SendResult"]
