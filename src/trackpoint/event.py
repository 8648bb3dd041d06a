"""The event record and its id: a flat typed struct that serialises to one JSON line.

Ids are derived (a hash of type and dedupe-key values) when the event type names a dedupe key, so repeated requests
and replayed logs yield the same id; otherwise they are time-ordered random ids (UUIDv7 layout, hex).
"""

from __future__ import annotations

import hashlib
import os
import random

import msgspec

SCHEMA_VERSION = 1


class Device(msgspec.Struct, omit_defaults=True, gc=False):
    """What the user agent says about the client."""

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


class Meta(msgspec.Struct, gc=False):
    """Where the event was made: worker slot, configuration version, schema version."""

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
