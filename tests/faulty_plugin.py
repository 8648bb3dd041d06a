"""A third-party plugin that breaks its contracts on request, for tests/test_plugin_faults.py. A tracker gets it as it
gets any installed package: this module and a dist-info naming it in the `trackpoint.plugins` group, on PYTHONPATH.

What goes wrong is chosen per request, by the event's `mode` dim; every other event is handled as it should be.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from trackpoint.collectors.base import Collector, CollectorContext, CollectorStats, SendResult
from trackpoint.config.model import CollectorBase, PreprocessorBase
from trackpoint.event import Event
from trackpoint.plugins import CollectorKind, Plugin, PreprocessorKind

# What the `faulty` preprocessor returns in each mode: no well-formed Event, in every way seen from real plugins.
RETURNS = (
    "return_dict",
    "return_true",
    "return_str",
    "ctx_none",
    "meta_none",
    "dims_none",
    "dims_int",
    "id_int",
    "ts_str",
    "metrics_str",
    "metrics_nan",
    "metrics_bool",
    "metrics_huge",
    "dims_surrogate",
)


def broken(event: Event, mode: str) -> Any:
    """What a preprocessor in `mode` returns for `event` (the event itself, maybe damaged, unless it returns another
    object altogether)."""
    if mode == "return_dict":
        return {"id": event.id, "oops": True}
    if mode == "return_true":
        return True
    if mode == "return_str":
        return "event"
    damage: dict[str, tuple[str, Any]] = {
        "ctx_none": ("ctx", None),
        "meta_none": ("meta", None),
        "dims_none": ("dims", None),
        "id_int": ("id", 12345),
        "ts_str": ("ts", "yesterday"),
    }
    if mode in damage:
        field, value = damage[mode]
        setattr(event, field, value)
    values: dict[str, Any] = {"dims_int": 7, "dims_surrogate": "\ud800"}
    if mode in values:
        event.dims["n"] = values[mode]
    numbers: dict[str, Any] = {"metrics_str": "cheap", "metrics_nan": float("nan"), "metrics_bool": True}
    if mode in numbers:
        event.metrics["price"] = numbers[mode]
    if mode == "metrics_huge":
        event.metrics["price"] = 1 << 70
    return event


class FaultyConfig(PreprocessorBase, tag="faulty"):
    """Returns what the event's `mode` dim asks for (see RETURNS) instead of a well-formed event."""


class Faulty:
    def __init__(self, name: str, config: FaultyConfig) -> None:
        self.name = name

    def __call__(self, event: Event) -> Any:
        return broken(event, event.dims.get("mode", "ok"))


class RecorderConfig(CollectorBase, tag="recorder"):
    """Appends the events it is sent, as JSON lines, to `file` under data_dir."""

    file: str = "recorded.jsonl"


class Recorder(Collector):
    """What a collector downstream gets: its batches, as JSON lines."""

    def __init__(self, name: str, config: RecorderConfig, context: CollectorContext) -> None:
        super().__init__(name, config, context)
        self.path = Path(context.data_dir) / config.file

    async def send(self, batch: Sequence[Event]) -> SendResult:
        with self.path.open("ab") as file:
            file.write(msgspec.json.Encoder().encode_lines(list(batch)))
        return SendResult.DELIVERED


class BrittleConfig(RecorderConfig, tag="brittle"):
    """A recorder whose own members fail on request."""


class Brittle(Recorder):
    """A collector whose own members fail: offer() raises (`offer_raise`, in a dim or in a bad row's target), breaks
    the event it shares with the edge after taking it (`mutate`), and snapshot() raises once after `snapshot_raise`."""

    def __init__(self, name: str, config: RecorderConfig, context: CollectorContext) -> None:
        super().__init__(name, config, context)
        self.snapshot_fails = False

    def offer(self, event: Event) -> None:
        mode = event.dims.get("mode")
        if mode == "offer_raise" or "mode=offer_raise" in str(event.dims.get("target", "")):
            raise RuntimeError("brittle: offer failed")
        super().offer(event)
        if mode == "mutate":
            event.ctx = None  # type: ignore[assignment]  # the contract broken on purpose
        self.snapshot_fails = self.snapshot_fails or mode == "snapshot_raise"

    def snapshot(self) -> CollectorStats:
        if self.snapshot_fails:
            self.snapshot_fails = False
            raise RuntimeError("brittle: snapshot failed")
        return super().snapshot()


class LedgerConfig(RecorderConfig, tag="ledger"):
    """A durable record of its own, as a third party may write one: its lines in `file` under data_dir."""


class Ledger(Recorder):
    """Durable: the edge commits it before answering. commit() raises for a group holding a `commit_raise` event,
    offer() for an `offer_raise` one."""

    durable = True

    def __init__(self, name: str, config: RecorderConfig, context: CollectorContext) -> None:
        super().__init__(name, config, context)
        self.group: list[Event] = []

    def offer(self, event: Event) -> None:
        if event.dims.get("mode") == "offer_raise":
            raise RuntimeError("ledger: offer failed")
        self.group.append(event)

    def commit(self) -> bool:
        group, self.group = self.group, []
        if any(event.dims.get("mode") == "commit_raise" for event in group):
            raise RuntimeError("ledger: commit failed")
        if group:
            with self.path.open("ab") as file:
                file.write(msgspec.json.Encoder().encode_lines(group))
        return True


plugin = Plugin(
    name="faults",
    collectors=[
        CollectorKind(RecorderConfig, Recorder),
        CollectorKind(BrittleConfig, Brittle),
        CollectorKind(LedgerConfig, Ledger),
    ],
    preprocessors=[PreprocessorKind(FaultyConfig, Faulty)],
)
