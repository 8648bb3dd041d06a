"""Options of the redis_streams collector: server URL, stream template, trimming, the dedupe window and timeouts.

Imported at start-up by the plugin registry, so it imports no client library. The password is never an option:
the config names the environment variable that holds it.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from trackpoint.config.model import CollectorBase, Seconds, check_server_url


class RedisStreamsCollectorConfig(CollectorBase, tag="redis_streams"):
    """Redis Streams: one entry per event (fields `id`, `type`, `event` = the event's JSON line), one round trip
    per batch. With a dedupe window, an event id already appended within the window is skipped, so retried batches
    and replayed logs never duplicate entries."""

    url: Annotated[
        str,
        Meta(
            description="Redis URL: `redis://host:6379/0`, `rediss://` for TLS, `unix:///path?db=0`. Put the "
            "password in `password_env`, not here. For Redis Cluster, the URL of any primary (database 0): the "
            "slot map is read from it, each stream is written on the primary that owns its slot, and MOVED and "
            "ASK redirects (resharding, failover) are followed."
        ),
    ] = "redis://127.0.0.1:6379/0"
    password_env: Annotated[
        str | None, Meta(description="Name of the environment variable holding the Redis password.")
    ] = None
    stream: Annotated[
        str,
        Meta(
            min_length=1,
            description="Stream key of each event; `{type}` is replaced by the event type, the rest is literal. "
            "On Redis Cluster each stream (with its dedupe keys) lives in its own slot, spread over the "
            "primaries; a hash tag (`{tp}:{type}`) keeps every stream in one slot, so on one primary.",
        ),
    ] = "trackpoint:{type}"
    maxlen: Annotated[
        int,
        Meta(
            ge=0,
            description="Approximate bound of each stream (`XADD MAXLEN ~ N`): older entries are trimmed, so a "
            "stalled consumer cannot fill Redis memory. 0: never trim.",
        ),
    ] = 1_000_000
    dedupe_window_s: Annotated[
        int,
        Meta(
            ge=0,
            le=30 * 86_400,
            description="How long an appended event id is remembered; a repeat within it is skipped, so retried "
            "batches and replayed logs append nothing twice. Ids are kept in time buckets of half the window, each "
            "dropped whole: an id is remembered for the window and at most half as long again. Redis memory: about "
            "27 bytes per id (Redis 7, default `hash-max-listpack-entries`), so events/s x window x 27 bytes, up "
            "to 1.5 times that just before a bucket expires: at 2,000 events/s, 190 to 290 MB for an hour, 4.7 to "
            "7 GB for a day. 0: no dedupe, a retried or replayed batch is appended again.",
        ),
    ] = 3_600
    timeout_s: Annotated[
        Seconds, Meta(description="Time allowed for one batch's round trip; then the batch is retried.")
    ] = 5.0
    connect_timeout_s: Annotated[Seconds, Meta(description="Time allowed to open a connection.")] = 2.0

    def __post_init__(self) -> None:
        check_server_url(self.url, ("redis", "rediss", "unix"))
        seen_prefix(self.stream.replace("{type}", "type"))  # raises on braces that are not a hash tag


def stream_key(template: str, event_type: str) -> str:
    return template.replace("{type}", event_type)


def seen_prefix(stream: str) -> str:
    """The prefix of the one-key-per-id dedupe marks that earlier versions wrote (`SET <prefix><id> 1 NX EX
    window`): read, never written, for a while after an upgrade (see the collector's script)."""
    return _tagged(stream, "seen:")


def dedupe_prefix(stream: str) -> str:
    """The prefix of a stream's dedupe state: its time buckets, their shards and the stream's state hash."""
    return _tagged(stream, "dedupe:")


def _tagged(stream: str, suffix: str) -> str:
    """`stream:suffix`, named so that it hashes to the stream's cluster slot.

    Redis Cluster runs a script only when all its keys share one slot, and the script that dedupes and appends
    touches the stream and the dedupe keys together. A key's slot comes from its hash tag (the text inside the first
    `{...}`) or, without one, from the whole key; so the dedupe keys of `trackpoint:impression` start with
    `{trackpoint:impression}:` (the stream's whole name as their tag), and those of a stream that has its own tag
    (`{tp}:impression`) simply extend its name.
    """
    start = stream.find("{")
    if start != -1 and stream.find("}", start + 1) > start + 1:
        return f"{stream}:{suffix}"
    if "{" in stream or "}" in stream:
        raise ValueError(f"stream {stream!r}: braces other than {{type}} must form a hash tag like {{tp}}")
    return f"{{{stream}}}:{suffix}"
