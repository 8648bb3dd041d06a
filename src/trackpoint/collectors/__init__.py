"""Collectors: where events go after the response. Built-ins: `log` (durable JSON lines) and `stdout`."""

from __future__ import annotations

from trackpoint.collectors.base import Collector, CollectorStats, Health, SendResult
from trackpoint.config.model import CollectorBase, LogCollectorConfig, StdoutCollectorConfig


def build_collector(name: str, config: CollectorBase, data_dir: str, worker: int) -> Collector:
    """The collector an instance of the configuration stands for."""
    if isinstance(config, LogCollectorConfig):
        from trackpoint.collectors.log.collector import LogCollector

        return LogCollector(name, config, data_dir, worker)
    if isinstance(config, StdoutCollectorConfig):
        from trackpoint.collectors.stdout import StdoutCollector

        return StdoutCollector(name, config)
    raise ValueError(f"no collector for configuration {type(config).__name__}")


__all__ = ["Collector", "CollectorStats", "Health", "SendResult", "build_collector"]
