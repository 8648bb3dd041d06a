"""The geo databases: one MaxMind-format (.mmdb) file opened for lookups, what a record says (country, region, city,
network) in the layouts in use (MaxMind GeoIP2/GeoLite2, DB-IP, ip-location-db), and the file's description.

Used by the preprocessor in each worker, by the start-up check and by the admin route in the supervisor.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import maxminddb
from maxminddb.errors import InvalidDatabaseError

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


def open_reader(path: Path) -> maxminddb.Reader:
    """An open reader of `path`, or DatabaseError saying why not."""
    if path.is_dir():  # the C reader would only say "not a valid database"
        raise DatabaseError(f"{path} is a directory, not a database file")
    try:
        reader = maxminddb.open_database(str(path), maxminddb.MODE_AUTO)  # the C extension, memory-mapped
    except FileNotFoundError:
        raise DatabaseError(f"{path} does not exist") from None
    except PermissionError:
        raise DatabaseError(f"{path} is not readable (permission denied)") from None
    except (InvalidDatabaseError, OSError, ValueError) as exc:
        raise DatabaseError(f"{path} is not a MaxMind-format (.mmdb) database: {exc}") from None
    return reader


def lookup_address(ip: str) -> str:
    """The address to look up: an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, as dual-stack sockets report IPv4
    clients) as its IPv4 address, which every database files under IPv4."""
    if ip[:7].lower() == "::ffff:" and "." in ip:
        return ip[7:]
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
    built: str  # ISO 8601, UTC
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
    built = datetime.datetime.fromtimestamp(metadata.build_epoch, datetime.UTC).isoformat(timespec="seconds")
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
