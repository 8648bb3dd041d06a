"""The supervisor ↔ worker channel: length-prefixed msgpack messages over a Unix socket pair.

The supervisor sends the validated configuration once, then a command when its dashboard's live tail is opened or
left (Tail); the worker answers Ready, then Stats every second, then Bye; or, when it cannot start, Failed with the
reason before it exits.
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


class Tail(msgspec.Struct, tag=True):
    """Whether someone watches the dashboard's live tail: while no one does, a worker's reports leave its newest
    events out, and the filtering and encoding they cost (about 50 events a second, each through the privacy filter
    and msgpack: hundreds of microseconds of the worker's loop) are not paid for a page nobody has open."""

    watched: bool


class Ready(msgspec.Struct, tag=True):
    pid: int
    # Its first counters, its collectors' health among them: read with the Ready itself, /readyz never counts a
    # worker ready whose log cannot write (a full disk at start) as healthy until its first Stats, a second later.
    snapshot: Snapshot = msgspec.field(default_factory=Snapshot)


class Stats(msgspec.Struct, tag=True):
    snapshot: Snapshot
    # For the admin dashboard: the worker's resident memory, and its events since the last Stats, privacy-filtered
    # and bounded in bytes (edge/tail.py). Each event is encoded on its own and decoded by the supervisor on its own
    # (recent_events): one a plugin left malformed (an int among the dims) is skipped, not the report and its counters.
    rss_bytes: int = 0
    recent: list[msgspec.Raw] = []


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
Command = Tail  # what the supervisor sends a worker once it runs
FromWorker = Ready | Stats | Bye | Failed

_encoder = msgspec.msgpack.Encoder()
_from_worker = msgspec.msgpack.Decoder(FromWorker)
_to_worker = msgspec.msgpack.Decoder(ToWorker)
_command = msgspec.msgpack.Decoder(Command)
_event = msgspec.msgpack.Decoder(Event)


class FrameTooLarge(ValueError):
    """A message whose frame would be over the limit the other side enforces: it is not sent (and never built)."""


class Undecodable(Exception):
    """A whole frame came, but it is not a message of the protocol (a field of the wrong type): the channel is still
    in sync, and the next frame can be read."""


class ChannelBroken(ConnectionError):
    """The channel cannot be read on (a frame over the limit, whose end cannot be found): the worker is stopped."""


def frame(message: msgspec.Struct, limit: int = MAX_FRAME) -> bytes:
    """The message as one frame; FrameTooLarge when it would be over `limit` (the receiver's MAX_FRAME)."""
    payload = _encoder.encode(message)
    if len(payload) > limit:
        raise FrameTooLarge(f"{type(message).__name__} of {len(payload)} bytes, over the limit of {limit}")
    return _LENGTH.pack(len(payload)) + payload


def recent_events(recent: list[msgspec.Raw]) -> tuple[list[Event], list[str]]:
    """The events of a Stats' `recent` (each msgpack on its own: edge/tail.py) that decode, and why the others do
    not."""
    events, errors = [], []
    for encoded in recent:
        try:
            events.append(_event.decode(encoded))
        except msgspec.DecodeError as exc:  # ValidationError among them
            errors.append(str(exc))
    return events, errors


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
    reading what was sent to it, its Start among them, leaves a reset rather than an end of file). Undecodable when
    a whole frame is not a message (the next one can be read); ChannelBroken when the stream cannot be read on."""
    payload = await _receive_frame(reader)
    if payload is None:
        return None
    try:
        message: FromWorker = _from_worker.decode(payload)
    except msgspec.DecodeError as exc:  # ValidationError among them
        raise Undecodable(f"a control frame of {len(payload)} bytes that is not a message: {exc}") from None
    return message


async def receive_command(reader: asyncio.StreamReader) -> Command | None:
    """The next command from the supervisor (the worker's side of `receive`, with the same errors)."""
    payload = await _receive_frame(reader)
    if payload is None:
        return None
    try:
        command: Command = _command.decode(payload)
    except msgspec.DecodeError as exc:
        raise Undecodable(f"a control frame of {len(payload)} bytes that is not a command: {exc}") from None
    return command


async def _receive_frame(reader: asyncio.StreamReader) -> bytes | None:
    try:
        (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
        if length > MAX_FRAME:
            raise ChannelBroken(f"a control frame of {length} bytes, over the limit of {MAX_FRAME}")
        return await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return None
