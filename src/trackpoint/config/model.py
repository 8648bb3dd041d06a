"""The typed configuration: one msgspec Struct per component.

These structs are the single source of truth for validation, the JSON schema (`trackpoint config schema`) and the
reference docs; every option carries its description in `Meta`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

Seconds = Annotated[float, Meta(gt=0, le=86_400)]


# forbid_unknown_fields everywhere: a typo in the YAML must be an error, never a silently ignored option.


class Limits(Struct, forbid_unknown_fields=True, kw_only=True):
    """Per-request and per-connection limits of the tracking edge (safe defaults)."""

    max_request_line_bytes: Annotated[
        int, Meta(ge=256, le=1 << 20, description="Longest request target (path and query); longer → 414.")
    ] = 8192
    max_header_bytes: Annotated[
        int, Meta(ge=1024, le=1 << 20, description="Total size of all header names and values; larger → 431.")
    ] = 16384
    max_header_count: Annotated[int, Meta(ge=4, le=1000, description="Most header fields; more → 431.")] = 100
    max_body_bytes: Annotated[int, Meta(ge=0, le=16 << 20, description="Largest request body; larger → 413.")] = 65536
    header_timeout_s: Annotated[
        Seconds,
        Meta(description="Time allowed from a request's first byte to the end of its headers; then 408."),
    ] = 10.0
    body_timeout_s: Annotated[
        Seconds, Meta(description="Time allowed to receive a request body after its headers; then 408.")
    ] = 10.0
    keepalive_timeout_s: Annotated[
        Seconds,
        Meta(description="An idle keep-alive connection (and a connection that sends nothing) is closed."),
    ] = 30.0
    max_keepalive_requests: Annotated[
        int, Meta(ge=1, description="Requests served on one connection before it is closed.")
    ] = 10000
    max_connections: Annotated[
        int, Meta(ge=1, description="Open connections per worker; one more is answered 503 and closed.")
    ] = 10000


class ServerConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """The tracking edge: where it listens, how many workers, and its limits."""

    host: Annotated[str, Meta(description="Address the tracking port binds to.")] = "0.0.0.0"
    port: Annotated[int, Meta(ge=1, le=65535, description="Tracking port.")] = 8080
    workers: Annotated[
        int, Meta(ge=0, le=256, description="Worker processes sharing the port; 0 means one per CPU core.")
    ] = 0
    backlog: Annotated[int, Meta(ge=16, le=65535, description="Listen backlog of each worker's socket.")] = 4096
    drain_timeout_s: Annotated[
        Seconds,
        Meta(description="On SIGTERM or reload: time to finish in-flight requests and flush collectors."),
    ] = 10.0
    trusted_proxies: Annotated[
        list[str],
        Meta(
            description="Networks (CIDR) of load balancers whose X-Forwarded-For is believed; from any other "
            "peer the header is ignored and the peer address is the client IP."
        ),
    ] = msgspec.field(default_factory=list)
    limits: Annotated[Limits, Meta(description="Request and connection limits.")] = msgspec.field(
        default_factory=Limits
    )


class AdminConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """The admin port: health, readiness and metrics. Never expose it publicly."""

    host: Annotated[str, Meta(description="Address the admin port binds to.")] = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535, description="Admin port.")] = 8081


FieldType = Literal["string", "int", "decimal", "money", "enum", "bool", "timestamp"]
FieldSource = Literal["param", "query", "form", "json", "header", "cookie", "ip"]


class FieldSpec(Struct, forbid_unknown_fields=True, kw_only=True):
    """One declared field of an event type: where it comes from, its type and its limits."""

    type: Annotated[
        FieldType,
        Meta(
            description="string, int, decimal (float), money (decimal currency units stored as integer micros), "
            "enum (one of `values`), bool (1/0/true/false/yes/no), timestamp (epoch s, epoch ms or ISO 8601; "
            "stored as epoch ms)."
        ),
    ] = "string"
    source: Annotated[
        FieldSource,
        Meta(
            description="param: query string, then form or JSON body; query; form (urlencoded body); json (body "
            "object key); header; cookie; ip (the client IP)."
        ),
    ] = "param"
    name: Annotated[
        str | None,
        Meta(description="Parameter, header or cookie name when it differs from the field's name."),
    ] = None
    required: Annotated[bool, Meta(description="A request without this field is rejected (400).")] = False
    max_len: Annotated[int, Meta(ge=1, le=65536, description="Longest accepted raw value, in characters.")] = 256
    min: Annotated[float | None, Meta(description="Smallest accepted value of a number or money field.")] = None
    max: Annotated[float | None, Meta(description="Largest accepted value of a number or money field.")] = None
    values: Annotated[list[str] | None, Meta(description="The accepted values of an enum field.")] = None
    default: Annotated[
        str | None,
        Meta(description="Raw value used when the request lacks the field (converted like input)."),
    ] = None
    into: Annotated[
        Literal["dims", "metrics"] | None,
        Meta(
            description="Where the value goes in the event; default: numbers, money and timestamps to metrics, "
            "the rest to dims."
        ),
    ] = None


class ResponseSpec(Struct, forbid_unknown_fields=True, kw_only=True):
    """What the client gets back. The response never waits for a collector."""

    kind: Annotated[
        Literal["gif", "no_content", "json", "redirect"],
        Meta(description='gif: 43-byte transparent GIF; no_content: 204; json: {"id": ...}; redirect: 302.'),
    ] = "gif"
    redirect_field: Annotated[str, Meta(description="For redirect: the field holding the destination URL.")] = "url"
    allow_hosts: Annotated[
        list[str],
        Meta(
            description="For redirect: destination hosts allowed, exact (`example.com`) or as a suffix "
            "(`.example.com`). Only http/https destinations on these hosts are followed; anything else is 400."
        ),
    ] = msgspec.field(default_factory=list)


class EventTypeSpec(Struct, forbid_unknown_fields=True, kw_only=True):
    """An event type: the paths that receive it, its fields, id, response, preprocessors and collectors."""

    preset: Annotated[
        str | None,
        Meta(
            description="Start from a preset event type (the built-in defaults, or one a plugin provides): its "
            "options apply unless this event type sets them."
        ),
    ] = None
    paths: Annotated[list[str], Meta(min_length=1, description="Request paths (exact match) of this type.")]
    methods: Annotated[
        list[Literal["GET", "HEAD", "POST"]], Meta(min_length=1, description="Accepted HTTP methods.")
    ] = msgspec.field(default_factory=lambda: ["GET", "HEAD"])
    fields: Annotated[dict[str, FieldSpec], Meta(description="Declared fields, by name.")] = msgspec.field(
        default_factory=dict
    )
    dedupe_key: Annotated[
        list[str],
        Meta(
            description="Fields whose values make the event id deterministic (id = hash(type, values)), so a "
            "repeated request or a replayed log yields the same id. Empty: a time-ordered random id."
        ),
    ] = msgspec.field(default_factory=list)
    response: Annotated[ResponseSpec, Meta(description="The response.")] = msgspec.field(default_factory=ResponseSpec)
    preprocessors: Annotated[list[str], Meta(description="Preprocessor names, applied in this order.")] = msgspec.field(
        default_factory=list
    )
    collectors: Annotated[list[str], Meta(description="Collector names this event type feeds.")] = msgspec.field(
        default_factory=lambda: ["log"]
    )


# --- collectors: one config struct per collector type, tagged by `type` ---------------------------------------


class SpoolConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """The disk spool of a collector: where batches wait, in order, while the collector's target is down."""

    enabled: Annotated[
        bool,
        Meta(
            description="Spool failed batches to disk and retry them in order. Off: a failed batch is retried "
            "from memory only, and what exceeds max_pending_events is dropped (counted)."
        ),
    ] = True
    max_bytes: Annotated[
        int, Meta(ge=1 << 16, description="Disk the spool of one worker may take; then the `when_full` policy.")
    ] = 1 << 30
    segment_bytes: Annotated[
        int, Meta(ge=1 << 12, le=1 << 30, description="Size of one spool segment file; emptied segments are deleted.")
    ] = 16 << 20
    when_full: Annotated[
        Literal["drop_newest", "drop_oldest", "backpressure"],
        Meta(
            description="When the spool is full: drop_newest refuses new batches, drop_oldest discards the oldest "
            "spooled batch (both counted exactly as dropped; `trackpoint replay` refills from the logs); "
            "backpressure answers 503 (`backpressure`) on the event types feeding this collector until there is room."
        ),
    ] = "drop_newest"
    fsync: Annotated[bool, Meta(description="fsync each spooled batch (survives power loss, costs a disk flush).")] = (
        False
    )


class CollectorBase(Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    """Options every collector has."""

    required: Annotated[
        bool,
        Meta(
            description="The tracker is ready (/readyz) only while this collector is healthy. Leave false for "
            "targets whose outage the spool absorbs."
        ),
    ] = False
    max_pending_events: Annotated[
        int,
        Meta(
            ge=1,
            description="Bound of the in-memory batch; beyond it events go to the spool, or are dropped and "
            "counted when the spool is off.",
        ),
    ] = 200_000
    flush_interval_ms: Annotated[
        int, Meta(ge=1, le=60_000, description="The batch is flushed at least this often.")
    ] = 100
    batch_max_events: Annotated[
        int,
        Meta(
            ge=1,
            description="A batch this large is flushed at once, without waiting for the interval. Flushing runs "
            "on the worker's event loop: smaller batches keep each pause (and the tail latency) short.",
        ),
    ] = 1024
    send_timeout_s: Annotated[
        Seconds,
        Meta(description="A send that takes longer is abandoned and retried (a hung target or plugin is isolated)."),
    ] = 30.0
    retry_initial_ms: Annotated[
        int, Meta(ge=1, le=600_000, description="First wait before retrying a failed batch; doubles per failure.")
    ] = 200
    retry_max_ms: Annotated[
        int, Meta(ge=1, le=3_600_000, description="Longest wait between retries (each wait has ±50% jitter).")
    ] = 10_000
    spool: Annotated[SpoolConfig, Meta(description="The disk spool for outages of the target.")] = msgspec.field(
        default_factory=SpoolConfig
    )


class LogCollectorConfig(CollectorBase, tag="log"):
    """JSON lines, one file per worker, rotated by size and time, gzipped on rotation."""

    # The log is itself on disk: a second disk copy would not help it, so its failed batches wait in memory.
    spool: Annotated[SpoolConfig, Meta(description="Off for the log collector (it is the disk record).")] = (
        msgspec.field(default_factory=lambda: SpoolConfig(enabled=False))
    )

    dir: Annotated[str, Meta(description="Directory of the log files, relative to data_dir.")] = "logs"
    rotate_bytes: Annotated[int, Meta(ge=4096, description="A file is rotated when it reaches this size.")] = 128 << 20
    rotate_interval_s: Annotated[Seconds, Meta(description="A file is rotated when it is this old.")] = 3600.0
    gzip: Annotated[bool, Meta(description="Compress rotated files (`.jsonl.gz`).")] = True
    fsync: Annotated[
        Literal["none", "interval", "always"],
        Meta(description="none: leave it to the OS; interval: fsync every fsync_interval_s; always: after each flush."),
    ] = "interval"
    fsync_interval_s: Annotated[Seconds, Meta(description="Period of fsync under the interval policy.")] = 1.0


class StdoutCollectorConfig(CollectorBase, tag="stdout"):
    """JSON lines to standard output (for development and containers that ship stdout)."""

    spool: Annotated[SpoolConfig, Meta(description="Off for stdout.")] = msgspec.field(
        default_factory=lambda: SpoolConfig(enabled=False)
    )


# --- preprocessors: one config struct per preprocessor type, tagged by `type` ----------------------------------


class PreprocessorBase(Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    """Options every preprocessor has (none yet); the `type` tag picks the preprocessor."""


class AnonymizeIpConfig(PreprocessorBase, tag="anonymize_ip"):
    """Truncates the client IP before it is stored: IPv4 to /24, IPv6 to /48 by default."""

    ipv4_prefix: Annotated[int, Meta(ge=0, le=32, description="Bits of an IPv4 address kept.")] = 24
    ipv6_prefix: Annotated[int, Meta(ge=0, le=128, description="Bits of an IPv6 address kept.")] = 48


class ParseUserAgentConfig(PreprocessorBase, tag="parse_user_agent"):
    """Parses the User-Agent into browser, OS and device (ua-parser, Rust-backed resolver), with a cache."""

    cache_size: Annotated[int, Meta(ge=0, le=10_000_000, description="User agents kept parsed per worker.")] = 20000
    keep_raw: Annotated[bool, Meta(description="Keep the raw User-Agent string in ctx.ua.")] = True


class Config(Struct, forbid_unknown_fields=True, kw_only=True):
    """The whole tracker. A file's top-level sections replace those of the embedded default."""

    data_dir: Annotated[
        str,
        Meta(description="Where logs and other state live; relative paths are from the working directory."),
    ] = "./trackpoint-data"
    server: Annotated[ServerConfig, Meta(description="The tracking edge.")] = msgspec.field(
        default_factory=ServerConfig
    )
    admin: Annotated[AdminConfig, Meta(description="The admin port.")] = msgspec.field(default_factory=AdminConfig)
    # Statically the base classes; the loader decodes into a subclass whose unions hold every registered type.
    collectors: Annotated[
        dict[str, CollectorBase],
        Meta(description="Collector instances by name; `log` and `stdout` exist with defaults unless redefined."),
    ] = msgspec.field(default_factory=dict)
    preprocessors: Annotated[
        dict[str, PreprocessorBase],
        Meta(description="Preprocessor instances by name; each built-in exists under its own name with defaults."),
    ] = msgspec.field(default_factory=dict)
    event_types: Annotated[dict[str, EventTypeSpec], Meta(description="Event types by name.")] = msgspec.field(
        default_factory=dict
    )
