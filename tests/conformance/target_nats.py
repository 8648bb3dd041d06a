"""The nats conformance target: a private JetStream nats-server on a free port, stopped and restarted in place.

The server keeps its store directory across restarts, so the stream and its duplicate window survive an outage.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import nats
from nats.js.errors import NotFoundError

from trackpoint.collectors.nats.config import stream_subject

from .servers import PrivateServer, ServerTarget, binary


class NatsTarget(ServerTarget):
    name = "nats"
    supports_restart = True
    dedupes_replays = True  # Nats-Msg-Id = event id, within the stream's duplicate window

    def __init__(self) -> None:
        self.server = PrivateServer("nats", _command, self._jetstream_ready)
        self.url = f"nats://127.0.0.1:{self.server.port}"
        tag = uuid.uuid4().hex[:12]
        self.subject = f"tpconf.{tag}.{{type}}"
        self.stream = f"TPCONF_{tag}"

    def collector_config(self) -> dict[str, Any]:
        return {
            "type": "nats",
            "servers": [self.url],
            "subject": self.subject,
            "stream": self.stream,
            "create_stream": True,
            "duplicate_window_s": 600.0,
            "ack_timeout_s": 2.0,
            "connect_timeout_s": 1.0,
            "reconnect_wait_s": 0.2,
            "flush_interval_ms": 20,
        }

    async def read_ids(self) -> list[str]:
        """Every stored message's Nats-Msg-Id, in stream order, through an ordered (ephemeral) consumer."""
        connection = await nats.connect(self.url, connect_timeout=2, allow_reconnect=False, error_cb=_quiet)
        try:
            js = connection.jetstream(timeout=5)
            try:
                count = (await js.stream_info(self.stream)).state.messages
            except NotFoundError:
                return []
            ids: list[str] = []
            if count == 0:
                return ids
            subscription = await js.subscribe(stream_subject(self.subject), stream=self.stream, ordered_consumer=True)
            try:
                while len(ids) < count:
                    message = await subscription.next_msg(timeout=5)
                    ids.append((message.headers or {}).get("Nats-Msg-Id", ""))
            finally:
                await subscription.unsubscribe()
            return ids
        finally:
            await connection.close()

    async def _jetstream_ready(self) -> bool:
        """JetStream answers (the port opens a little before the stream store is recovered)."""
        connection = await asyncio.wait_for(
            nats.connect(self.url, connect_timeout=1, reconnect_time_wait=0, allow_reconnect=False, error_cb=_quiet), 2
        )
        try:
            await connection.jetstream(timeout=1).account_info()
            return True
        finally:
            await connection.close()


def _command(port: int, workdir: Path) -> list[str]:
    # The store directory is kept across restarts, so the stream and its duplicate window survive an outage.
    return [
        binary("nats-server", "/usr/sbin/nats-server"),
        "-js",
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        "-sd",
        str(workdir),
    ]


async def make_target() -> NatsTarget:
    target = NatsTarget()
    await target.start()
    return target


async def _quiet(exc: Exception) -> None:
    """Connection errors while the server starts are expected; the caller's deadline reports a real failure."""
