"""The geo databases: one MaxMind-format (.mmdb) file opened for lookups, what a record says (country, region, city,
network) in the layouts in use (MaxMind GeoIP2/GeoLite2, DB-IP, ip-location-db), and the file's description.

Used by the preprocessor in each worker, by the start-up check and by the admin route in the supervisor.

Lookups read a memory-mapped file (maxminddb's C reader), and a mapped file that shrinks under its reader kills the
process with SIGBUS: the operator's file, which anyone may rewrite in place (`cp`, an updater that does not rename),
is therefore never mapped. A worker copies it under data_dir (`geo/in-use/`, named by its content digest, so workers
share one copy) and maps the copy, which only the tracker writes and never in place; the newest copy is what a
worker starting while the operator's file is missing or broken falls back to, and while no copy can be written (a
full disk), and none is there, it reads the file whole into memory. The supervisor reads the operator's file without
mapping it (the start-up check, the admin route).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import maxminddb
from maxminddb.errors import InvalidDatabaseError

from trackpoint.data_dir import passing

# The one text of each notice: the admin API, the dashboard's footer and docs/guides/geo.md (checked by
# tests/test_geo.py) show these. DB-IP's licence asks for "IP Geolocation by DB-IP" with a link to db-ip.com.
DBIP_ATTRIBUTION = (
    "IP Geolocation by DB-IP (https://db-ip.com), licensed under CC BY 4.0 "
    "(https://creativecommons.org/licenses/by/4.0/)."
)
MAXMIND_ATTRIBUTION = "This product includes GeoLite2 data created by MaxMind, available from https://www.maxmind.com."
# Signature of a file on disk: a change of any member means it was replaced or rewritten.
Signature = tuple[int, int, int]


class DatabaseError(Exception):
    """A database file that cannot be opened as an .mmdb (missing, unreadable, truncated or not a database)."""


class CopyFailed(DatabaseError):
    """The copy of a database file could not be written for a reason that passes (a full disk): the file itself may
    be fine, and the copy is tried again at the next check."""


def database_path(file: str, data_dir: str) -> Path:
    """Where a database option points: relative to data_dir unless absolute (never the working directory)."""
    return Path(data_dir) / file  # an absolute file stays absolute


def signature(path: Path) -> Signature | None:
    """The file's (mtime ns, size, inode), or None when it cannot be seen."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def open_reader(path: Path, mapped: bool = False, whole: bool = False) -> maxminddb.Reader:
    """An open reader of `path`, or DatabaseError saying why not. Unmapped (the default) it reads with pread, only
    what it is asked for (the metadata at the end of the file): for a file someone else may rewrite. `mapped` is
    maxminddb's C reader on a memory map, for lookups, and only for the copies this module makes; `whole` reads the
    file into memory (pure-Python lookups), for lookups in a file that cannot be copied (read_whole)."""
    if path.is_dir():  # the C reader would only say "not a valid database"
        raise DatabaseError(f"{path} is a directory, not a database file")
    mode = maxminddb.MODE_AUTO if mapped else maxminddb.MODE_MEMORY if whole else maxminddb.MODE_FILE
    try:
        reader = maxminddb.open_database(str(path), mode)
    except FileNotFoundError:
        raise DatabaseError(f"{path} does not exist") from None
    except PermissionError:
        raise DatabaseError(f"{path} is not readable (permission denied)") from None
    except (InvalidDatabaseError, OSError, ValueError) as exc:
        raise DatabaseError(f"{path} is not a MaxMind-format (.mmdb) database: {exc}") from None
    except Exception as exc:  # the pure-Python reader on a damaged file: IndexError, TypeError, struct.error, ...
        raise DatabaseError(f"{path} is not a MaxMind-format (.mmdb) database: {exc!r}") from None
    return reader


# --- the copies the workers map ------------------------------------------------------------------------------------

# Where the copies live, relative to data_dir.
COPIES_DIR = "geo/in-use"
# A partial copy older than this was left by a worker that died while copying.
_STALE_PARTIAL_S = 3600.0


def copies_dir(data_dir: str) -> Path:
    return Path(data_dir) / COPIES_DIR


def copy_prefix(source: Path) -> str:
    """What the copies of one configured file are named after: its name and a digest of its full path (two
    `country.mmdb` in different directories are different databases)."""
    return f"{source.stem}-{hashlib.sha256(str(source.absolute()).encode()).hexdigest()[:8]}"


def good_copies(source: Path, directory: Path) -> list[Path]:
    """The copies made of `source` (each opened before it got its name), newest first."""
    prefix = copy_prefix(source) + "."
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            digest = entry.name[len(prefix) : -len(".mmdb")]
            if entry.name.startswith(prefix) and entry.name.endswith(".mmdb") and len(digest) == 16:
                with contextlib.suppress(OSError):
                    found.append((entry.stat().st_mtime_ns, Path(entry.path)))
    return [path for _, path in sorted(found, reverse=True)]


def install_copy(source: Path, directory: Path) -> tuple[maxminddb.Reader, Path, Signature]:
    """Copies `source` into `directory` and opens the copy for lookups: (reader, copy, signature of the source as
    copied). DatabaseError, naming `source`, when it cannot be read, does not open, or changed while it was copied
    (written in place: the next check copies it again). Copied to a temporary name, opened, then renamed to its
    content digest: a copy by that name is always a whole database, and workers copying the same file share it."""
    if source.is_dir():
        raise DatabaseError(f"{source} is a directory, not a database file")
    try:
        file = source.open("rb")
    except FileNotFoundError:
        raise DatabaseError(f"{source} does not exist") from None
    except PermissionError:
        raise DatabaseError(f"{source} is not readable (permission denied)") from None
    except OSError as exc:
        raise DatabaseError(f"{source} cannot be read: {exc.strerror or exc}") from None
    prefix = copy_prefix(source)
    partial: str | None = None
    try:
        with file:
            before = os.fstat(file.fileno())
            directory.mkdir(parents=True, exist_ok=True)
            handle, partial = tempfile.mkstemp(prefix=f".{prefix}.", suffix=".partial", dir=directory)
            digest = hashlib.sha256()
            with os.fdopen(handle, "wb") as out:
                while chunk := file.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            after = os.fstat(file.fileno())
        copied: Signature = (before.st_mtime_ns, before.st_size, before.st_ino)
        if (after.st_mtime_ns, after.st_size, after.st_ino) != copied:
            raise DatabaseError(f"{source} changed while it was copied (written in place?)")
        try:
            reader = open_reader(Path(partial), mapped=True)
        except DatabaseError as exc:  # its message names the partial copy: say it of the source
            raise DatabaseError(str(exc).replace(partial, str(source))) from None
        copy = directory / f"{prefix}.{digest.hexdigest()[:16]}.mmdb"
        os.replace(partial, copy)  # the reader maps the file, whatever its name
        partial = None
    except OSError as exc:
        failure = CopyFailed if passing(exc) else DatabaseError
        raise failure(f"cannot copy {source} into {directory}: {exc.strerror or exc}") from None
    finally:
        if partial is not None:
            with contextlib.suppress(OSError):
                os.unlink(partial)
    return reader, copy, copied


def read_whole(source: Path) -> maxminddb.Reader:
    """`source` read into memory and opened there, for lookups: what a worker serves while it cannot write a copy (a
    full disk) and has none. Lookups are maxminddb's pure-Python ones, slower than on the mapped copy (the
    preprocessor's cache takes most of them). DatabaseError when it does not open or changed while it was read."""
    before = signature(source)
    reader = open_reader(source, whole=True)
    if signature(source) != before:
        reader.close()
        raise DatabaseError(f"{source} changed while it was read (written in place?)")
    return reader


def last_good_copy(source: Path, directory: Path) -> tuple[maxminddb.Reader, Path] | None:
    """The newest copy of `source` that opens, open for lookups; None when there is none."""
    for _ in range(3):  # a copy removed between the listing and the open: another worker installed a newer one
        copies = good_copies(source, directory)
        if not copies:
            return None
        for copy in copies:
            with contextlib.suppress(DatabaseError):
                return open_reader(copy, mapped=True), copy
    return None


def remove_other_copies(source: Path, directory: Path, keep: Path) -> None:
    """Removes the copies of `source` but `keep` (the current one), and partial copies a dead worker left. A worker
    still on an older copy keeps reading it: a removed file stays mapped as long as it is."""
    for copy in good_copies(source, directory):
        if copy != keep:
            with contextlib.suppress(OSError):
                copy.unlink()
    stale = time.time() - _STALE_PARTIAL_S
    for partial in directory.glob(f".{copy_prefix(source)}.*.partial"):
        with contextlib.suppress(OSError):
            if partial.stat().st_mtime < stale:
                partial.unlink()


def lookup_address(ip: str) -> str:
    """The address to look up: an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, as dual-stack sockets report IPv4
    clients, or `::ffff:c000:201`) as its IPv4 address, which not every database also files under ::ffff:0:0/96."""
    if ip[:7].lower() == "::ffff:":
        if "." in ip:
            return ip[7:]
        try:
            mapped = ipaddress.IPv6Address(ip).ipv4_mapped
        except ValueError:
            return ip
        return ip if mapped is None else str(mapped)
    return ip


def _name(value: Any) -> str | None:
    """A place name from a GeoIP2 record (`{"names": {"en": ...}}`) or a plain string (DB-IP, ip-location-db)."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        names = value.get("names")
        if isinstance(names, dict):
            name = names.get("en")
            if isinstance(name, str) and name:
                return name
    return None


def country_of(record: Any) -> str | None:
    """The ISO 3166-1 alpha-2 country of a record: GeoIP2's `country.iso_code` (else the registered country's),
    or ip-location-db's `country_code`."""
    if not isinstance(record, dict):
        return None
    for key in ("country", "registered_country"):
        country = record.get(key)
        if isinstance(country, dict):
            code = country.get("iso_code")
            if isinstance(code, str) and code:
                return code
    code = record.get("country_code")
    return code if isinstance(code, str) and code else None


def region_of(record: Any) -> str | None:
    """The first-level subdivision's name: GeoIP2's `subdivisions[0]`, ip-location-db's `state1`."""
    if not isinstance(record, dict):
        return None
    subdivisions = record.get("subdivisions")
    if isinstance(subdivisions, list) and subdivisions:
        first = subdivisions[0]
        name = _name(first)
        if name is None and isinstance(first, dict):
            code = first.get("iso_code")
            name = code if isinstance(code, str) and code else None
        return name
    return _name(record.get("state1"))


def city_of(record: Any) -> str | None:
    """The city's name: GeoIP2's `city.names.en`, ip-location-db's `city`."""
    return _name(record.get("city")) if isinstance(record, dict) else None


def network_of(record: Any) -> tuple[int, str | None] | None:
    """(autonomous system number, organisation) of an ASN record, or None."""
    if not isinstance(record, dict):
        return None
    number = record.get("autonomous_system_number")
    if not isinstance(number, int) or number <= 0:
        return None
    org = record.get("autonomous_system_organization")
    return number, org if isinstance(org, str) and org else None


@dataclass(frozen=True)
class DatabaseInfo:
    """What the admin API shows of one database file: its metadata and the attribution its licence requires."""

    path: str
    database_type: str
    built: str | None  # ISO 8601, UTC; None when the metadata's build time is no date
    ip_version: int
    description: str
    attribution: str | None


def attribution_for(database_type: str, description: str) -> str | None:
    """The attribution a database's licence requires, recognised from its metadata (None: unknown, configure it)."""
    text = f"{database_type} {description}".lower()
    if "dbip" in text or "db-ip" in text:
        return DBIP_ATTRIBUTION
    if "geolite" in text:
        return MAXMIND_ATTRIBUTION
    return None


def describe(reader: maxminddb.Reader, path: Path, attribution: str | None, source: str | None = None) -> DatabaseInfo:
    """The metadata of an open database. `source` names where the file came from when its metadata does not say
    (scripts/geo-fetch writes `<file>.source` beside it, e.g. the npm package of DB-IP Lite)."""
    metadata = reader.metadata()
    description = metadata.description if isinstance(metadata.description, dict) else {}
    text = str(description.get("en") or next(iter(description.values()))) if description else ""
    try:
        built: str | None = datetime.datetime.fromtimestamp(metadata.build_epoch, datetime.UTC).isoformat(
            timespec="seconds"
        )
    except (OverflowError, OSError, ValueError):  # beyond any date (MaxMind-DB's uint64-max-epoch test file)
        built = None
    known = attribution_for(f"{metadata.database_type} {source or ''}", text)
    return DatabaseInfo(
        path=str(path),
        database_type=str(metadata.database_type),
        built=built,
        ip_version=int(metadata.ip_version),
        description=text or (source or ""),
        attribution=attribution or known,
    )


def source_note(path: Path) -> str | None:
    """The provenance scripts/geo-fetch recorded beside a database (`<file>.source`), if any."""
    try:
        return path.with_name(path.name + ".source").read_text(encoding="utf-8").strip() or None
    except OSError:
        return None
