"""The supervisor ↔ worker channel: length-prefixed msgpack messages over a Unix socket pair.

The supervisor sends the validated configuration once; the worker answers Ready, then Stats every second, then Bye;
or, when it cannot start, Failed with the reason before it exits.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import traceback

import msgspec

from trackpoint.collectors.base import CollectorStartError
from trackpoint.config.load import config_type
from trackpoint.config.model import Config
from trackpoint.edge.stats import Snapshot
from trackpoint.event import Event
from trackpoint.plugins import registry

_LENGTH = struct.Struct(">I")
MAX_FRAME = 64 << 20


class Start(msgspec.Struct, tag=True):
    # The config as msgpack: the worker decodes it with the component types of its own plugin registry.
    config: msgspec.Raw
    version: str
    slot: int

    @classmethod
    def of(cls, config: Config, version: str, slot: int) -> Start:
        return cls(config=msgspec.Raw(msgspec.msgpack.encode(config)), version=version, slot=slot)

    def decode_config(self) -> Config:
        config: Config = msgspec.msgpack.decode(self.config, type=config_type(registry()))
        return config


class Ready(msgspec.Struct, tag=True):
    pid: int
    # Its first counters, its collectors' health among them: read with the Ready itself, /readyz never counts a
    # worker ready whose log cannot write (a full disk at start) as healthy until its first Stats, a second later.
    snapshot: Snapshot = msgspec.field(default_factory=Snapshot)


class Stats(msgspec.Struct, tag=True):
    snapshot: Snapshot
    # For the admin dashboard: the worker's resident memory, and its events since the last Stats, privacy-filtered
    # (edge/tail.py).
    rss_bytes: int = 0
    recent: list[Event] = []


class Bye(msgspec.Struct, tag=True):
    snapshot: Snapshot


class Failed(msgspec.Struct, tag=True):
    """The worker could not start (its components failed to build or start): the supervisor logs it once."""

    error: str
    traceback: str

    @classmethod
    def of(cls, exc: BaseException) -> Failed:
        """The error and its traceback; a CollectorStartError's message alone says what is wrong (no traceback)."""
        if isinstance(exc, CollectorStartError):
            return cls(error=str(exc), traceback="")
        return cls(error=f"{type(exc).__name__}: {exc}", traceback="".join(traceback.format_exception(exc)))


ToWorker = Start
FromWorker = Ready | Stats | Bye | Failed

_encoder = msgspec.msgpack.Encoder()
_from_worker = msgspec.msgpack.Decoder(FromWorker)
_to_worker = msgspec.msgpack.Decoder(ToWorker)


def frame(message: msgspec.Struct) -> bytes:
    payload = _encoder.encode(message)
    return _LENGTH.pack(len(payload)) + payload


def send_start(sock: socket.socket, start: Start) -> None:
    sock.sendall(frame(start))


def receive_start(sock: socket.socket) -> Start:
    """Blocking read of the worker's first message (before its event loop runs)."""
    (length,) = _LENGTH.unpack(_read_exactly(sock, _LENGTH.size))
    start: Start = _to_worker.decode(_read_exactly(sock, length))
    return start


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("supervisor closed the control channel")
        chunks += chunk
    return bytes(chunks)


async def receive(reader: asyncio.StreamReader) -> FromWorker | None:
    """The next message from a worker, or None at end of stream: its end, or a reset (a worker that died before
    reading what was sent to it, its Start among them, leaves a reset rather than an end of file)."""
    try:
        (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
        if length > MAX_FRAME:
            raise ConnectionError(f"control frame of {length} bytes")
        message: FromWorker = _from_worker.decode(await reader.readexactly(length))
        return message
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return None
