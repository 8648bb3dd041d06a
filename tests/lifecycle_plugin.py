"""A third-party collector plugin that misbehaves in its lifecycle, for tests/test_plugin_isolation.py: its start()
raises or never returns until a file says the target is there, its send() ignores its cancellation, its close()
never returns. Trackers find it through its entry point (the tests write a dist-info naming this module).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from trackpoint.collectors.base import Collector, CollectorContext, SendResult
from trackpoint.config.model import CollectorBase
from trackpoint.event import Event
from trackpoint.plugins import CollectorKind, Plugin


class MisbehavingConfig(CollectorBase, tag="misbehaving"):
    """start: raise (a target refusing connections) or hang, until `data_dir/<name>.can-start` exists; send: ok
    (appends the ids to `data_dir/<name>.ids`) or stubborn; close: ok or hang."""

    start: Literal["ok", "raise", "hang"] = "ok"
    send: Literal["ok", "stubborn"] = "ok"
    close: Literal["ok", "hang"] = "ok"


async def forever() -> None:
    """Never returns, whatever cancels it."""
    while True:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)


class MisbehavingCollector(Collector):
    def __init__(self, name: str, config: MisbehavingConfig, context: CollectorContext) -> None:
        super().__init__(name, config, context)
        self.config = config
        self.data_dir = Path(context.data_dir)

    async def start(self) -> None:
        if not (self.data_dir / f"{self.name}.can-start").exists():
            if self.config.start == "raise":
                raise ConnectionRefusedError(111, "Connection refused")
            if self.config.start == "hang":
                await forever()
        await super().start()

    async def send(self, batch: Sequence[Event]) -> SendResult:
        if self.config.send == "stubborn":
            await forever()
        with (self.data_dir / f"{self.name}.ids").open("a") as ids:
            ids.writelines(f"{event.id}\n" for event in batch)
        return SendResult.DELIVERED

    async def close(self, drain_timeout_s: float) -> None:
        await super().close(drain_timeout_s)
        if self.config.close == "hang":
            await forever()


def _build(name: str, config: MisbehavingConfig, context: CollectorContext) -> Collector:
    return MisbehavingCollector(name, config, context)


plugin = Plugin(name="misbehaving", collectors=[CollectorKind(MisbehavingConfig, _build)])
