"""Options of the stdout collector."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from trackpoint.config.model import CollectorBase, SpoolConfig


class StdoutCollectorConfig(CollectorBase, tag="stdout"):
    """JSON lines to standard output (for development and containers that ship stdout)."""

    spool: Annotated[SpoolConfig, Meta(description="Off for stdout.")] = msgspec.field(
        default_factory=lambda: SpoolConfig(enabled=False)
    )
