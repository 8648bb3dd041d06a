"""trackpoint-sqlite: a worked example of a trackpoint plugin, one of each extension point.

A `sqlite` collector, a `tag_dims` preprocessor, a `pageview` event-type preset and a `GET /sqlite/stats` admin
route, exposed as `plugin` through the entry point `[project.entry-points."trackpoint.plugins"]`.
"""

from __future__ import annotations

from typing import Any

from trackpoint.collectors.base import Collector, CollectorContext
from trackpoint.plugins import AdminRoute, CollectorKind, Plugin, PreprocessorKind
from trackpoint.preprocessors import Preprocessor
from trackpoint_sqlite.config import SqliteCollectorConfig, TagDimsConfig
from trackpoint_sqlite.presets import PRESETS
from trackpoint_sqlite.stats import sqlite_stats

# Factories import their module on first use, as the built-ins do: a worker loads only what its config names.


def _sqlite(name: str, config: Any, context: CollectorContext) -> Collector:
    from trackpoint_sqlite.collector import SqliteCollector

    return SqliteCollector(name, config, context)


def _tag_dims(name: str, config: Any) -> Preprocessor:
    from trackpoint_sqlite.tag_dims import TagDims

    return TagDims(name, config)


plugin = Plugin(
    name="sqlite",
    collectors=[CollectorKind(SqliteCollectorConfig, _sqlite)],
    preprocessors=[PreprocessorKind(TagDimsConfig, _tag_dims)],
    event_types=PRESETS,
    admin_routes=[AdminRoute("GET", "/sqlite/stats", sqlite_stats)],
)

__all__ = ["plugin"]
