"""A third-party plugin that misbehaves on request, loaded by `trackpoint run` through its entry point
(tests/test_supervision.py writes the dist-info): what a worker's supervisor must survive.

The `misbehave` preprocessor acts on the impression's `pub`: `wrong_type` leaves an int among the dims, `big_dim`
adds a dim of `cid` KiB, `bad_frame` and `huge_frame` write a frame of their own on the worker's control channel
(one that does not decode, one over the size limit), `block` blocks the worker's event loop for good, `grow` keeps
`cid` MiB for good (a leak). The
`hanging_start` collector's start() does not return while its `flag` file exists.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec

from trackpoint.collectors.base import Collector, CollectorContext, SendResult
from trackpoint.config.model import CollectorBase, PreprocessorBase
from trackpoint.event import Event
from trackpoint.plugins import CollectorKind, Plugin, PreprocessorKind


class MisbehaveConfig(PreprocessorBase, tag="misbehave"):
    """Misbehaves as the impression's `pub` says."""


class Misbehave:
    def __init__(self, name: str, config: MisbehaveConfig) -> None:
        self.name = name

    def __call__(self, event: Event, /) -> Event | None:
        action = event.dims.get("pub")
        if action == "wrong_type":
            event.dims["n"] = 7  # type: ignore[assignment]  # what a buggy plugin does
        elif action == "big_dim":
            event.dims["blob"] = "x" * (int(event.dims["cid"]) << 10)
        elif action == "bad_frame":  # a whole frame, which is not a message: the requests counter is a string
            _write_frame(msgspec.msgpack.encode({"type": "Stats", "snapshot": {"requests": "many"}}))
        elif action == "huge_frame":  # the length of a frame over the limit, and no more
            os.write(_control_fd(), struct.pack(">I", (64 << 20) + 1))
        elif action == "block":
            time.sleep(3600)
        elif action == "grow":  # a leak: `cid` MiB kept for good, every page written (so resident)
            _LEAKED.append(b"\x01" * (int(event.dims["cid"]) << 20))
        return event


_LEAKED: list[bytes] = []


def _control_fd() -> int:
    """The worker's end of its control channel, as the supervisor passed it (`--control-fd C`)."""
    return int(sys.argv[sys.argv.index("--control-fd") + 1])


def _write_frame(payload: bytes) -> None:
    os.write(_control_fd(), struct.pack(">I", len(payload)) + payload)


class HangingStartConfig(CollectorBase, tag="hanging_start"):
    """Takes every event; its start() waits while the file `flag` exists."""

    flag: str = ""


class HangingStart(Collector):
    def __init__(self, name: str, config: HangingStartConfig, context: CollectorContext) -> None:
        super().__init__(name, config, context)
        self.flag = Path(config.flag)

    async def start(self) -> None:
        while self.flag.exists():
            await asyncio.sleep(0.05)
        await super().start()

    async def send(self, batch: Sequence[Event]) -> SendResult:
        return SendResult.DELIVERED


plugin = Plugin(
    name="misbehaving",
    collectors=[CollectorKind(HangingStartConfig, HangingStart)],
    preprocessors=[PreprocessorKind(MisbehaveConfig, Misbehave)],
)
