"""One shipping pass over a log directory: each finished file is uploaded to a key derived from its name alone,
verified, recorded in the manifests, and only then deleted, so a pass repeated after a crash overwrites, never
duplicates.

Blocking code (fsspec's sync API): the supervisor runs it in a thread (`service`), `trackpoint ship --once` directly.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import importlib
import importlib.util
import os
import random
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec

from trackpoint.collectors.log.config import LogCollectorConfig
from trackpoint.collectors.log.files import FILE_NAME, finished_files, log_dir
from trackpoint.collectors.log.shipping import options as storage_options
from trackpoint.config.model import Config

MANIFEST_NAME = ".shipped.jsonl"
MANIFESTS_PREFIX = "_manifests"  # a leading `_` hides it from Hive, Spark, Athena and BigQuery over the data keys
OUTCOMES = ("shipped", "error", "mismatch")

NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")
# URL scheme → (the fsspec backend that serves it, the trackpoint extra that installs it)
BACKENDS = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", "azure"),
    "abfs": ("adlfs", "azure"),
    "abfss": ("adlfs", "azure"),
}

Wait = Callable[[float], bool]
"""Sleeps up to the given seconds between retries; True ends the pass (the process is stopping or out of time)."""


class ShipError(Exception):
    """Shipping cannot proceed: a URL the installation cannot serve, or an upload that failed all its retries."""


class _Mismatch(Exception):
    """The stored object is not the file that was sent."""


class Shipped(msgspec.Struct, kw_only=True):
    """One verified upload: a line of the local manifest and the body of the bucket's manifest object."""

    name: str
    url: str
    node: str
    bytes: int
    md5: str
    sha256: str
    verified_by: Literal["checksum", "read_back"]
    uploaded_at: str


@dataclass
class PassReport:
    """What one pass did: files shipped, and failures (a file name, or `*` when the store could not be opened)."""

    shipped: list[Shipped] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ShipStats:
    """One collector's shipping counters, exposed on the supervisor's /metrics."""

    uploads: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    bytes: int = 0
    backlog_files: int = 0
    last_success: float = 0.0


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Shipped)


# --- configuration ---------------------------------------------------------------------------------------------


def backend_problem(url: str) -> str | None:
    """Why this installation cannot ship to `url`, or None."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in BACKENDS:
        return (
            f"not an object storage URL: {url!r} (use s3://bucket/prefix, gs://bucket/prefix or az://container/prefix)"
        )
    if not rest.split("/", 1)[0]:
        return f"{url!r} names no bucket or container"
    module, extra = BACKENDS[scheme.lower()]
    if not (_installed("fsspec") and _installed(module)):
        return f"{scheme}:// needs {module}, not installed: pip install 'trackpoint[{extra}]'"
    return None


def check_shipping(config: Config) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Config-load checks of every log collector's `ship` section (a loader hook, like the other check_* ones)."""
    destinations: dict[tuple[str, str | None], str] = {}
    for name, collector in config.collectors.items():
        ship = collector.ship if isinstance(collector, LogCollectorConfig) else None
        if ship is None or ship.url is None:
            continue
        where = ("collectors", name, "ship")
        if (problem := backend_problem(ship.url)) is not None:
            yield (*where, "url"), problem
        elif ship.storage_options:  # with the backend installed: its own names (no connection made)
            scheme = ship.url.partition("://")[0]
            for path, message in storage_options.problems(scheme, ship.storage_options):
                yield (*where, "storage_options", *path), message
        if ship.node is not None and not NODE.fullmatch(ship.node):
            yield (*where, "node"), "1-128 letters, digits, '_', '-' or '.', not starting with '_' or '.'"
        if ship.retry_initial_s > ship.retry_max_s:
            yield (*where, "retry_initial_s"), "longer than retry_max_s"
        # Two collectors' files can have the same name (same worker, same millisecond): their keys must differ.
        other = destinations.setdefault((ship.url.rstrip("/"), ship.node), name)
        if other != name:
            yield (*where, "url"), f"collector {other!r} ships to the same url and node: give each its own prefix"


def shippers(config: Config, only: Sequence[str] = ()) -> dict[str, Shipper]:
    """A Shipper for every log collector with ship.url (or for those named in `only`, each of which must have one)."""
    shipping = {
        name: collector
        for name, collector in config.collectors.items()
        if isinstance(collector, LogCollectorConfig) and collector.ship.url is not None
    }
    if not shipping:
        raise ShipError("no log collector has ship.url set")
    unknown = [name for name in only if name not in shipping]
    if unknown:
        raise ShipError(f"not a log collector with ship.url: {', '.join(unknown)} (shipping: {', '.join(shipping)})")
    return {
        name: Shipper(name, log_dir(config.data_dir, collector), collector, config.data_dir)
        for name, collector in shipping.items()
        if not only or name in only
    }


def open_store(url: str, storage_options: Mapping[str, Any]) -> tuple[Any, str]:
    """The fsspec filesystem for `url` and the root path of keys under it (bucket and prefix, no trailing `/`)."""
    if (problem := backend_problem(url)) is not None:
        raise ShipError(problem)
    fsspec_core = importlib.import_module("fsspec.core")
    try:  # a copy: backends rewrite the options they are given (s3fs: config_kwargs.retries)
        store, root = fsspec_core.url_to_fs(url, **copy.deepcopy(dict(storage_options)))
    except Exception as exc:  # each backend raises its own types for bad options
        raise ShipError(f"cannot open {url}: {_describe(exc)}") from exc
    return store, str(root).rstrip("/")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules (blocked)
        return False


# --- files and keys --------------------------------------------------------------------------------------------


def object_key(root: str, node: str, name: str, manifest: bool = False) -> str:
    """`<root>/<node>/<YYYY>/<MM>/<DD>/<name>` (the file's own UTC date): a pure function of the file, so a repeated
    upload overwrites. Its manifest object is `<root>/_manifests/<node>/<YYYY>/<MM>/<DD>/<name>.json`."""
    match = FILE_NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"not a log file name: {name!r}")
    day = f"{match['year']}/{match['month']}/{match['day']}"
    if manifest:
        return f"{root}/{MANIFESTS_PREFIX}/{node}/{day}/{name}.json"
    return f"{root}/{node}/{day}/{name}"


class Manifest:
    """`.shipped.jsonl` in the log directory: one line per verified upload, read incrementally (only what was
    appended since the last look), appended with one write per line so concurrent shippers never interleave."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._sizes: dict[str, int] = {}

    def has(self, path: Path, size: int) -> bool:
        """Whether this file (same name, same size) was shipped: names are unique, finished files never change."""
        self._refresh()
        return self._sizes.get(path.name) == size

    def append(self, shipped: Shipped) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, _ENCODER.encode(shipped) + b"\n")
        finally:
            os.close(fd)

    def _refresh(self) -> None:
        try:
            with self.path.open("rb") as manifest:
                if manifest.seek(0, os.SEEK_END) < self._offset:  # truncated by an operator: read it anew
                    self._offset, self._sizes = 0, {}
                manifest.seek(self._offset)
                appended = manifest.read()
        except FileNotFoundError:
            return
        complete = appended[: appended.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            try:
                entry = _DECODER.decode(line)
            except msgspec.DecodeError:  # a line torn by a crash: that file is shipped again (same key)
                continue
            self._sizes[entry.name] = entry.bytes


# --- shipping --------------------------------------------------------------------------------------------------


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


class Shipper:
    """Ships one log collector's finished files: upload to the file's key, verify, record, then delete."""

    def __init__(
        self, collector: str, directory: Path, config: LogCollectorConfig, data_dir: str | Path | None = None
    ) -> None:
        """`data_dir`: whose lock tells whether a tracker writes there (files.scan); None only outside a tracker."""
        if config.ship.url is None:
            raise ValueError(f"collector {collector!r} has no ship.url")
        self.collector = collector
        self.directory = directory
        self.data_dir = data_dir
        self.config = config
        self.ship = config.ship
        self.url: str = config.ship.url
        self.node = config.ship.node or socket.gethostname()
        self.stats = ShipStats()
        self.manifest = Manifest(directory / MANIFEST_NAME)

    def ship_pass(self, wait: Wait = _sleep) -> PassReport:
        """Ships every finished file not yet recorded, oldest first. A file that fails all its retries ends the pass
        (the store is likely down): the rest waits for the next pass, in order."""
        report = PassReport()
        pending: list[tuple[Path, int]] = []
        for path in finished_files(self.directory, self.config.compression, self.data_dir):
            size = _size(path)
            if size is None:
                continue
            if not self.manifest.has(path, size):
                pending.append((path, size))
            elif self.ship.delete_after_upload:  # recorded, then the process died before deleting it
                path.unlink(missing_ok=True)
        self.stats.backlog_files = len(pending)
        if not pending:
            return report
        try:
            store, root = open_store(self.url, self.ship.storage_options)
        except ShipError as exc:
            report.failed.append(("*", str(exc)))
            return report
        for path, _ in pending:
            if wait(0):
                break
            try:
                shipped = self._ship(store, root, path, wait)
            except ShipError as exc:
                report.failed.append((path.name, str(exc)))
                break
            self.stats.backlog_files -= 1
            if shipped is not None:
                report.shipped.append(shipped)
        return report

    def _ship(self, store: Any, root: str, path: Path, wait: Wait) -> Shipped | None:
        """One file, retried with backoff; None when it vanished (another shipper, e.g. `trackpoint ship`, took it)."""
        try:
            size, md5, sha256 = _digests(path)
        except FileNotFoundError:
            return None
        key = object_key(root, self.node, path.name)
        failures = 0
        while True:
            try:
                store.put_file(str(path), key)
                verified_by = _verify(store, key, size, md5, sha256)
                shipped = Shipped(
                    name=path.name,
                    url=f"{self.url.partition('://')[0]}://{key}",  # as configured (adlfs would say abfs:// for az://)
                    node=self.node,
                    bytes=size,
                    md5=md5,
                    sha256=sha256,
                    verified_by=verified_by,
                    uploaded_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
                )
                store.pipe_file(object_key(root, self.node, path.name, manifest=True), _ENCODER.encode(shipped))
                break
            except Exception as exc:  # every backend raises its own types (botocore, azure.core, OSError...)
                if not path.exists():
                    return None
                self.stats.uploads["mismatch" if isinstance(exc, _Mismatch) else "error"] += 1
                failures += 1
                if failures > self.ship.retries:
                    raise ShipError(f"{_describe(exc)} ({failures} attempts)") from exc
                backoff = min(self.ship.retry_max_s, self.ship.retry_initial_s * 2 ** min(failures - 1, 30))
                if wait(backoff * random.uniform(0.5, 1.5)):
                    raise ShipError(f"{_describe(exc)} (stopped retrying: shutting down)") from exc
        self.manifest.append(shipped)
        self.stats.uploads["shipped"] += 1
        self.stats.bytes += size
        self.stats.last_success = time.time()
        if self.ship.delete_after_upload:
            path.unlink(missing_ok=True)
        return shipped


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _digests(path: Path) -> tuple[int, str, str]:
    """Size, MD5 (what stores report) and SHA-256 (what the manifest keeps) in one read."""
    md5 = hashlib.md5(usedforsecurity=False)
    sha256 = hashlib.sha256()
    size = 0
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            md5.update(chunk)
            sha256.update(chunk)
            size += len(chunk)
    return size, md5.hexdigest(), sha256.hexdigest()


def _verify(store: Any, key: str, size: int, md5: str, sha256: str) -> Literal["checksum", "read_back"]:
    """The stored object is the file: same size, and the MD5 the store reports, else (multipart uploads, SSE-KMS
    ETags, no checksum at all) the SHA-256 of the object read back."""
    store.invalidate_cache(key)
    info = store.info(key)
    if int(info["size"]) != size:
        raise _Mismatch(f"the stored object has {info['size']} bytes, the file {size}")
    if reported_md5(info) == md5:
        return "checksum"
    digest = hashlib.sha256()
    with store.open(key, "rb") as stored:
        while chunk := stored.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != sha256:
        raise _Mismatch("the stored object's SHA-256 differs from the file's")
    return "read_back"


def reported_md5(info: Mapping[str, Any]) -> str | None:
    """The content MD5 a store reports, as hex: S3's ETag of a single-part upload, Azure's content_md5, GCS's
    md5Hash; None when it reports none."""
    etag = str(info.get("ETag", "")).strip('"')
    if _MD5_HEX.fullmatch(etag):
        return etag.lower()
    content_md5 = getattr(info.get("content_settings"), "content_md5", None)  # the Azure SDK's ContentSettings
    if content_md5:
        return bytes(content_md5).hex()
    md5_hash = info.get("md5Hash")
    return base64.b64decode(md5_hash).hex() if isinstance(md5_hash, str) else None


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
