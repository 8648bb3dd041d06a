"""Options of the log collector: files, rotation, durability, compression, disk budget and shipping."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from trackpoint.config.model import CollectorBase, Seconds, SpoolConfig


class ShipConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """Shipping of finished log files (rotated and, unless compression is none, compressed) to S3, GCS or Azure
    Blob, by the supervisor (and `trackpoint ship`), to `<url>/<node>/<YYYY>/<MM>/<DD>/<file>`. Credentials come
    from where each store's SDK finds them: AWS_* variables, a profile or the instance/pod role (s3);
    GOOGLE_APPLICATION_CREDENTIALS or workload identity (gs); AZURE_STORAGE_CONNECTION_STRING,
    AZURE_STORAGE_ACCOUNT_NAME with a key or a managed identity (az)."""

    url: Annotated[
        str | None,
        Meta(
            description="Where files go: `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` (or "
            "`abfs://`). Needs the extra `trackpoint[s3]`, `[gcs]` or `[azure]`. Unset: files stay local."
        ),
    ] = None
    storage_options: Annotated[
        dict[str, Any],
        Meta(
            description="Options of the fsspec filesystem (s3fs, gcsfs, adlfs), e.g. `endpoint_url`, `profile`, "
            "`account_name`. Checked by `config check` and at start against the installed backend's own options "
            "(and those it hands on: s3fs's `client_kwargs`, `config_kwargs`, `s3_additional_kwargs`), without "
            "connecting. Keep secrets out of the file: leave credentials to the environment."
        ),
    ] = msgspec.field(default_factory=dict)
    node: Annotated[
        str | None,
        Meta(
            description="This host's name in object keys, so hosts and pods never overwrite each other (letters, "
            "digits, `_`, `-`, `.`; not starting with `_` or `.`). Unset: the host name."
        ),
    ] = None
    interval_s: Annotated[Seconds, Meta(description="Period of the scan for finished files.")] = 60.0
    retries: Annotated[
        int,
        Meta(ge=0, le=100, description="Retries of a failed upload within one scan; then it waits for the next."),
    ] = 5
    retry_initial_s: Annotated[
        Seconds, Meta(description="First wait before retrying a failed upload; doubles per failure (±50% jitter).")
    ] = 1.0
    retry_max_s: Annotated[Seconds, Meta(description="Longest wait between retries of an upload.")] = 60.0
    delete_after_upload: Annotated[
        bool, Meta(description="Delete a local file once its upload is verified (size and checksum) and recorded.")
    ] = True
    shutdown_timeout_s: Annotated[
        Seconds,
        Meta(description="On SIGTERM, after the workers drained: time for a last pass over the finished files."),
    ] = 30.0


Compression = Literal["zstd", "gzip", "none"]


# The levels each codec accepts (lowest, highest) and the one it uses when compression_level is unset. zstd stops at
# 19: levels 20-22 need far more memory and time than a log file justifies. zstd 1 is the default: on tracking lines
# it compresses better than 3 (8.7 against 7.9) at half the CPU (bench/compression.py), and that CPU is taken from
# the core that serves.
COMPRESSION_LEVELS: dict[str, tuple[int, int, int]] = {"zstd": (1, 19, 1), "gzip": (1, 9, 6)}


class LogCollectorConfig(CollectorBase, tag="log"):
    """JSON lines, one file per worker, rotated by size and time, compressed on rotation (zstd by default), kept
    within an optional disk budget and retention, optionally shipped to object storage. The record every answer
    waits for: each event-loop iteration's lines are written before its responses, so the batching options
    (max_pending_events, max_pending_bytes, batch_max_events) do not apply, and flush_interval_ms is the period of
    its upkeep (idle rotation, the fsync interval, readiness after a failed write). An event type without a log
    collector has no record: its answers wait for nothing."""

    # The log is itself on disk: a second disk copy would not help it, so its failed batches wait in memory.
    spool: Annotated[SpoolConfig, Meta(description="Off for the log collector (it is the disk record).")] = (
        msgspec.field(default_factory=lambda: SpoolConfig(enabled=False))
    )

    # The log is the tracker's own record, not a third party: it keeps what the preprocessors left.
    trusted: Annotated[
        bool, Meta(description="Trusted by default: the log is the tracker's own record (see CollectorBase).")
    ] = True
    dir: Annotated[str, Meta(description="Directory of the log files, relative to data_dir.")] = "logs"
    rotate_bytes: Annotated[int, Meta(ge=4096, description="A file is rotated when it reaches this size.")] = 128 << 20
    rotate_interval_s: Annotated[Seconds, Meta(description="A file is rotated when it is this old.")] = 3600.0
    # The log is the record an acknowledgement promises: the tracker is not ready while it cannot write it.
    required: Annotated[
        bool,
        Meta(
            description="Required by default: while the log cannot be written, requests for its event types are "
            "answered 503 (`log_unavailable`) and /readyz fails."
        ),
    ] = True
    durability: Annotated[
        Literal["process", "power"],
        Meta(
            description="When a response may leave. process: once the event's line is written into the page cache "
            "(one write per event-loop iteration for all its requests): no process crash loses an acknowledged "
            "event. power: once that write is also fsynced (one fsync per group, off the event loop, later groups "
            "batching meanwhile): an acknowledged event survives power loss too, at the cost of a disk flush of "
            "latency."
        ),
    ] = "process"
    compression: Annotated[
        Compression,
        Meta(
            description="Codec of rotated files: zstd (`.jsonl.zst`, a few percent of a core at full load), gzip "
            "(`.jsonl.gz`, several times zstd's CPU for a similar size) or none (files stay `.jsonl`)."
        ),
    ] = "zstd"
    compression_level: Annotated[
        int | None,
        Meta(description="Codec level: zstd 1-19, gzip 1-9. Unset: zstd 1, gzip 6."),
    ] = None
    max_disk_bytes: Annotated[
        Annotated[int, Meta(ge=1 << 20)] | None,
        Meta(
            description="Budget of the log directory. Above it, shipped files go (oldest first); when only the record "
            "is left, new events are refused (503 `log_disk_full`) until files are shipped, compressed or removed. "
            "At least twice rotate_bytes. Unset: no budget.",
        ),
    ] = None
    retention_s: Annotated[
        Annotated[float, Meta(gt=0)] | None,
        Meta(
            description="Finished files older than this (by last write) are deleted, oldest first; with ship.url "
            "only once they are shipped. Unset: kept until shipped (and deleted by delete_after_upload) or forever.",
        ),
    ] = None
    disk_warn_ratio: Annotated[
        float,
        Meta(
            gt=0,
            le=1,
            description="Share of max_disk_bytes above which shipped files are deleted early and a warning is "
            "logged (once a minute) and shown by trackpoint_log_disk_warning.",
        ),
    ] = 0.9
    fsync: Annotated[
        Literal["none", "interval"],
        Meta(
            description="Under durability process, when written lines reach the disk: none: when the OS decides; "
            "interval: an fsync every fsync_interval_s (off the event loop), bounding what a power loss can take."
        ),
    ] = "interval"
    fsync_interval_s: Annotated[Seconds, Meta(description="Period of fsync under the interval policy.")] = 1.0
    ship: Annotated[ShipConfig, Meta(description="Shipping of finished files to object storage (off by default).")] = (
        msgspec.field(default_factory=ShipConfig)
    )

    def __post_init__(self) -> None:
        if self.compression_level is not None:
            if self.compression == "none":
                raise ValueError("compression_level needs a codec (compression zstd or gzip)")
            lowest, highest, _ = COMPRESSION_LEVELS[self.compression]
            if not lowest <= self.compression_level <= highest:
                raise ValueError(f"compression_level of {self.compression} must be within {lowest}-{highest}")
        if self.max_disk_bytes is not None and self.max_disk_bytes < 2 * self.rotate_bytes:
            # Room for the file being written and the one being compressed next to its temporary.
            raise ValueError("max_disk_bytes must be at least twice rotate_bytes")
