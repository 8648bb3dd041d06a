"""The event record and its id: a flat typed struct that serialises to one JSON line.

Ids are derived (a hash of type and dedupe-key values) when the event type names a dedupe key, so repeated requests
and replayed logs yield the same id; otherwise they are time-ordered random ids (UUIDv7 layout, hex).
"""

from __future__ import annotations

import hashlib
import math
import os
import random

import msgspec

SCHEMA_VERSION = 1


class Device(msgspec.Struct, omit_defaults=True, gc=False, frozen=True):
    """What the user agent says about the client. Immutable: one instance serves every event of the same User-Agent
    (parse_user_agent's cache) and every collector's copy of an event; a preprocessor replaces it, never edits it."""

    browser: str | None = None
    browser_major: str | None = None
    os: str | None = None
    os_major: str | None = None
    device: str | None = None
    bot: bool = False


class Context(msgspec.Struct, omit_defaults=True, gc=False):
    """Request context, each member only as far as the configured preprocessors (privacy policy) allow."""

    ip: str | None = None
    ua: str | None = None
    referer: str | None = None
    device: Device | None = None


class Meta(msgspec.Struct, gc=False, frozen=True):
    """Where the event was made: worker slot, configuration version, schema version. Immutable: one instance serves
    every event of a worker."""

    worker: int
    config: str
    schema: int = SCHEMA_VERSION


class Event(msgspec.Struct, gc=False):
    """One tracked event. `ts` is UTC epoch milliseconds; money metrics are integer micros."""

    id: str
    type: str
    ts: int
    dims: dict[str, str]
    metrics: dict[str, int | float]
    ctx: Context
    meta: Meta


# What an event must survive on its way: the spool's and the workers' reports' encoding (msgpack), read back typed.
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Event)


def malformed(event: object) -> str | None:
    """What keeps `event` from being an Event that the log, every collector and a replay can take, or None when
    nothing does: exactly an Event, each field of its declared type (a str without lone surrogates, an int within 64
    bits and never a bool, a finite float). msgspec does not check types on assignment, and one such event breaks
    encodings far from what made it; so the edge calls this on what a third-party preprocessor returns."""
    if type(event) is not Event:
        return f"returned {type(event).__name__}, not an Event"
    ctx = event.ctx
    if (
        type(ctx) is not Context
        or type(event.meta) is not Meta
        or not (ctx.device is None or type(ctx.device) is Device)
    ):
        return "ctx, ctx.device or meta is not of its Struct type"  # a dict there would encode, and break its readers
    try:  # encoded and read back typed, as the spool does: exact by construction, and cheaper than a walk in Python
        metrics = _decoder.decode(_encoder.encode(event)).metrics
    except Exception as exc:  # an unencodable value (TypeError, OverflowError, UnicodeEncodeError) or a wrong type
        return f"{type(exc).__name__}: {exc}"
    if not all(map(math.isfinite, metrics.values())):  # a JSON line would say null, which no reader takes
        return "a metric is not a finite number"
    return None


def derived_id(type_name: str, key_values: list[str]) -> str:
    """The deterministic id of an event: 128 bits of BLAKE2b over the type and its dedupe-key values."""
    material = "\x1f".join([type_name, *key_values]).encode("utf-8")
    return hashlib.blake2b(material, digest_size=16).hexdigest()


# Seeded from the OS per process so that workers never share a sequence; the id needs uniqueness, not secrecy.
_random = random.Random(os.urandom(16))
_getrandbits = _random.getrandbits


def random_id(ts_ms: int) -> str:
    """A time-ordered random id: 48 bits of milliseconds, version 7, 74 random bits (UUIDv7 layout, 32 hex)."""
    rand = _getrandbits(74)
    value = (ts_ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return f"{value:032x}"


def reseed_random_ids() -> None:
    """Called in each worker process after start so forked or spawned workers never repeat ids."""
    _random.seed(os.urandom(16))
