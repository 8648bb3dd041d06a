"""Collectors: where events go after the response. Built-ins: `log` (durable JSON lines), `stdout`, and the queue
collectors `kafka`, `nats` and `redis_streams`; plugins add more."""

from __future__ import annotations

from trackpoint.collectors.base import Collector, CollectorContext, CollectorStats, Health, SendResult
from trackpoint.config.model import CollectorBase


def build_collector(name: str, config: CollectorBase, context: CollectorContext) -> Collector:
    """The collector an instance of the configuration stands for, built by the plugin that registered its type."""
    from trackpoint.plugins import registry, type_tag

    try:
        kind = registry().collectors.get(type_tag(type(config)))
    except TypeError:
        kind = None
    if kind is None:
        raise ValueError(f"no collector for configuration {type(config).__name__}")
    return kind.factory(name, config, context)


__all__ = ["Collector", "CollectorContext", "CollectorStats", "Health", "SendResult", "build_collector"]
