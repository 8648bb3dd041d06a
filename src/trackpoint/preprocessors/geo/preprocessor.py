"""geo: country, region and city (`geo.*` dims) and the network (`geo.asn`, `geo.as_org`) of the client IP, looked
up offline in .mmdb databases; hosting networks flagged as invalid traffic (`ivt: datacenter`).

Lookups are cached per worker (a busy tracker sees the same clients again and again); the cache lives in memory
only and is emptied when a database is reopened. The worker's timer checks the files for a change every
`reload_check_s`: the request path never stats a file. Lookups read the worker's copy of each file (database.py:
the operator's file may be rewritten in place, which a memory-mapped reader does not survive).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import maxminddb
from maxminddb.errors import InvalidDatabaseError

from trackpoint.adtech.ivt import DATACENTER, IVT_DIM, flag
from trackpoint.event import Event
from trackpoint.preprocessors.geo.config import AS_ORG_DIM, ASN_DIM, CITY_DIM, COUNTRY_DIM, REGION_DIM, GeoConfig
from trackpoint.preprocessors.geo.database import (
    CopyFailed,
    DatabaseError,
    DatabaseInfo,
    Signature,
    city_of,
    copies_dir,
    country_of,
    database_path,
    describe,
    install_copy,
    last_good_copy,
    lookup_address,
    network_of,
    read_whole,
    region_of,
    remove_other_copies,
    signature,
    source_note,
)

log = logging.getLogger("trackpoint.geo")

_CACHE_LIMIT = 65536
# What one client IP adds: the dims (name, value) and whether its network is a hosting one.
Found = tuple[tuple[tuple[str, str], ...], bool]
_NOTHING: Found = ((), False)
_NEVER = object()  # no failed reload yet


class GeoDatabase:
    """One database file: the reader of the copy in use and the signature of the file it was copied from.

    A worker starting while the file is missing or does not open serves the last good copy of it (`error` says why),
    or fails when there is none: it never had good data. One that cannot write the copy (a full disk) serves the last
    good copy too, or else the file read into memory, and copies it at the next check that finds room."""

    reader: maxminddb.Reader
    signature: Signature | None

    def __init__(self, path: Path, copies: Path) -> None:
        self.path = path
        self.copies = copies
        # The signature of a replacement that did not open (None: the file is gone), so it is reported once.
        self._failed: Signature | object | None = _NEVER
        self.error: str | None = None  # why the copy in use is not a copy of the file as it is now
        try:
            self.reader, copy, copied = install_copy(path, copies)
        except DatabaseError as exc:
            self.signature = None
            self.error = str(exc)
            if not isinstance(exc, CopyFailed):
                self._failed = signature(path)  # tried again once the file changes (a copy failure: at each check)
            last = last_good_copy(path, copies)
            if last is not None:
                self.reader, copy = last
                log.warning("geo database does not open: %s; serving its last good copy %s", exc, copy)
            elif isinstance(exc, CopyFailed):
                self.reader = read_whole(path)
                log.warning("geo database not copied: %s; serving it from memory until it can be", exc)
            else:
                raise
            return
        self.signature = copied
        remove_other_copies(path, copies, copy)

    def get(self, address: str) -> Any:
        """The record of `address`, or None: unknown, not an address, or IPv6 in an IPv4-only database."""
        try:
            return self.reader.get(address)
        except (ValueError, InvalidDatabaseError):
            return None

    def reload_if_changed(self) -> bool | None:
        """Copies and reopens the file when it changed: True when reopened, False when the new file does not open
        (the previous data stays in use; reported once per version of the file), None when nothing changed."""
        current = signature(self.path)
        if current in (self.signature, self._failed):
            return None
        try:
            reader, copy, copied = install_copy(self.path, self.copies)
        except DatabaseError as exc:
            if isinstance(exc, CopyFailed):  # no room for the copy: tried again at each check, reported once
                if self.error == str(exc):
                    return None
            else:
                self._failed = current
            self.error = str(exc)
            log.warning("geo database not reloaded, the previous one stays in use: %s", exc)
            return False
        self.reader.close()
        self.reader, self.signature, self._failed, self.error = reader, copied, _NEVER, None
        remove_other_copies(self.path, self.copies, copy)
        log.info("geo database reloaded: %s", self.path)
        return True

    def describe(self, attribution: str | None) -> DatabaseInfo:
        return describe(self.reader, self.path, attribution, source_note(self.path))


class Geo:
    """Adds the geo dims of the client IP to each event; flags hosting networks in `dims.ivt`."""

    def __init__(
        self, name: str, config: GeoConfig, data_dir: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.clock = clock
        self.city = config.city
        self.attribution = config.attribution
        self.reload_check_s = config.reload_check_s
        copies = copies_dir(data_dir)
        self.location = GeoDatabase(database_path(config.database, data_dir), copies) if config.database else None
        self.network = (
            GeoDatabase(database_path(config.asn_database, data_dir), copies) if config.asn_database else None
        )
        self.hosting = frozenset(config.hosting_asns) if config.flag_hosting and self.network else frozenset()
        if self.hosting:
            self.flag_dim = IVT_DIM  # the event type's invalid_traffic policy routes on this dim
        # A database started on its last good copy counts as a failed reload: the same alert covers both.
        failed = sum(db is not None and db.error is not None for db in (self.location, self.network))
        self.counts = {"unknown": 0, DATACENTER: 0, "reloaded": 0, "reload_failed": failed}
        self._cache: dict[str, Found] = {}
        self._next_check = clock() + self.reload_check_s

    def __call__(self, event: Event) -> Event:
        ip = event.ctx.ip
        if ip is None:
            return event
        try:
            pairs, hosting = self._cache[ip]
        except KeyError:
            pairs, hosting = self._remember(ip)
        if not pairs:
            self.counts["unknown"] += 1
            return event
        dims = event.dims
        dims.update(pairs)
        if hosting and IVT_DIM not in dims:  # another preprocessor's finding comes first
            flag(event, DATACENTER)
            self.counts[DATACENTER] += 1
        return event

    def lookup(self, ip: str) -> Found:
        """The dims `ip` adds and whether it is in a hosting network; nothing for an address no database knows."""
        address = lookup_address(ip)
        pairs: list[tuple[str, str]] = []
        record = None if self.location is None else self.location.get(address)
        if record is not None:
            country = country_of(record)
            if country is not None:
                pairs.append((COUNTRY_DIM, country))
            if self.city:
                region, city = region_of(record), city_of(record)
                if region is not None:
                    pairs.append((REGION_DIM, region))
                if city is not None:
                    pairs.append((CITY_DIM, city))
        hosting = False
        if self.network is not None:
            network = network_of(self.network.get(address))
            if network is not None:
                number, org = network
                pairs.append((ASN_DIM, str(number)))
                if org is not None:
                    pairs.append((AS_ORG_DIM, org))
                hosting = number in self.hosting
        return (tuple(pairs), hosting) if pairs else _NOTHING

    def _remember(self, ip: str) -> Found:
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        found = self._cache[ip] = self.lookup(ip)
        return found

    def refresh(self) -> None:
        """Called by the worker's timer: every reload_check_s, reopens a database file that changed."""
        now = self.clock()
        if now < self._next_check:
            return
        self._next_check = now + self.reload_check_s
        for database in (self.location, self.network):
            if database is None:
                continue
            reloaded = database.reload_if_changed()
            if reloaded:
                self.counts["reloaded"] += 1
                self._cache.clear()  # answers of the previous file
            elif reloaded is False:
                self.counts["reload_failed"] += 1

    def describe(self) -> list[DatabaseInfo]:
        """The metadata and attribution of the databases in use (what the admin API shows)."""
        return [db.describe(self.attribution) for db in (self.location, self.network) if db is not None]
