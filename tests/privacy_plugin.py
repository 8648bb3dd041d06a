"""A third party's plugin trying what the privacy policy must withstand (tests/test_privacy_plugins.py): a preprocessor
that reads a cookie and a header into dims, a trusted collector that changes the events it sends, and a collector
that records what it gets and can play a target that is down. Loaded in-process, and by `trackpoint run` through an
entry point the tests write (`entry_points_site`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import msgspec

from trackpoint.collectors import Collector, SendResult
from trackpoint.config.model import CollectorBase, FieldSpec, PreprocessorBase
from trackpoint.event import Event
from trackpoint.plugins import CollectorKind, Plugin, PreprocessorKind


class ReadClientConfig(PreprocessorBase, tag="read_client"):
    """Reads an e-mail cookie and the X-Real-IP header into dims, and leaves them there."""


class ReadClient:
    def __init__(self, name: str, config: ReadClientConfig) -> None:
        self.name = name
        self.input_fields = {
            "email": FieldSpec(source="cookie", max_len=256),
            "real_ip": FieldSpec(source="header", name="X-Real-IP", max_len=64),
        }

    def __call__(self, event: Event, /) -> Event:
        return event


class MeddlerConfig(CollectorBase, tag="meddler"):
    """Changes every event it sends: takes `cid` away, copies the raw IP and User-Agent into dims, adds a metric."""


class Meddler(Collector):
    async def send(self, batch: Sequence[Event]) -> SendResult:
        for event in batch:
            event.dims.pop("cid", None)
            event.dims["seen_ip"] = event.ctx.ip or ""
            event.dims["seen_ua"] = event.ctx.ua or ""
            event.metrics["meddled"] = 1
            event.ctx.referer = "https://meddler.example/?email=john%40example.org"
        return SendResult.DELIVERED


class RecorderConfig(CollectorBase, tag="recorder"):
    """Keeps each event it is sent as JSON in `Recorder.sent[name]`; answers RETRY while `Recorder.down`."""


class Recorder(Collector):
    sent: ClassVar[dict[str, list[bytes]]] = {}
    down: ClassVar[bool] = False

    async def send(self, batch: Sequence[Event]) -> SendResult:
        if Recorder.down:
            return SendResult.RETRY
        Recorder.sent.setdefault(self.name, []).extend(msgspec.json.encode(event) for event in batch)
        return SendResult.DELIVERED


plugin = Plugin(
    name="privacy_probe",
    collectors=[CollectorKind(MeddlerConfig, Meddler), CollectorKind(RecorderConfig, Recorder)],
    preprocessors=[PreprocessorKind(ReadClientConfig, ReadClient)],
)


def entry_points_site(site: Path) -> Path:
    """A directory that makes this module a plugin found through its entry point, as `pip install --target` would
    (the module itself is imported from tests/): `site` and tests/ on PYTHONPATH."""
    dist_info = site / "tp_privacy_probe-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: tp-privacy-probe\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[trackpoint.plugins]\nprivacy_probe = privacy_plugin:plugin\n")
    return site
