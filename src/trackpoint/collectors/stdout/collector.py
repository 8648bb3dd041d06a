"""stdout: events as JSON lines on standard output, for development and for platforms that ship stdout."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import msgspec

from trackpoint.collectors.base import Collector, CollectorContext, SendResult
from trackpoint.collectors.stdout.config import StdoutCollectorConfig
from trackpoint.event import Event


class StdoutCollector(Collector):
    def __init__(self, name: str, config: StdoutCollectorConfig, context: CollectorContext) -> None:
        super().__init__(name, config, context)
        self._encoder = msgspec.json.Encoder()

    async def send(self, batch: Sequence[Event]) -> SendResult:
        sys.stdout.buffer.write(self._encoder.encode_lines(batch))
        sys.stdout.buffer.flush()
        return SendResult.DELIVERED
