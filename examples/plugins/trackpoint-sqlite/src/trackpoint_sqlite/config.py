"""The plugin's configuration structs: what users write under `collectors:` and `preprocessors:`.

Each struct's tag is the `type` users write; each option's `Meta` description is its reference documentation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from trackpoint.config.model import CollectorBase, PreprocessorBase

DEFAULT_DATABASE = "trackpoint.sqlite"


class SqliteCollectorConfig(CollectorBase, tag="sqlite"):
    """Events as rows of a SQLite database file, one row per event id: retries and replays never duplicate."""

    path: Annotated[
        str,
        Meta(min_length=1, description="The database file, relative to data_dir (an absolute path is kept as is)."),
    ] = DEFAULT_DATABASE
    busy_timeout_ms: Annotated[
        int,
        Meta(
            ge=0,
            le=600_000,
            description="How long a batch waits for another writer's lock before it is retried later; keep it "
            "below send_timeout_s.",
        ),
    ] = 5000
    journal_mode: Annotated[
        Literal["wal", "delete"],
        Meta(
            description="wal: readers (GET /sqlite/stats, your queries) never block the workers' writes; delete: "
            "SQLite's classic rollback journal, for file systems without shared memory."
        ),
    ] = "wal"


class TagDimsConfig(PreprocessorBase, tag="tag_dims"):
    """Adds static dimensions to every event (the region, the tracker's name); a dimension the request already set
    is kept."""

    dims: Annotated[
        dict[Annotated[str, Meta(min_length=1, max_length=64)], Annotated[str, Meta(max_length=256)]],
        Meta(description='Dimension names and values to add, e.g. {"region": "eu-west-1"}.'),
    ] = msgspec.field(default_factory=dict)


def database_path(data_dir: str, config: SqliteCollectorConfig) -> Path:
    """A sqlite collector's database file: `path` relative to the tracker's data_dir (an absolute path stays as is).
    The collector writes there and GET /sqlite/stats reads there."""
    return Path(data_dir) / config.path
