"""The geo preprocessor's admin side: `GET /geo/databases`, the metadata and licence attribution of the databases in
use, and the attributions the dashboard's footer shows (DB-IP Lite's CC BY 4.0 requires showing its attribution where
its results are shown)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trackpoint.admin.server import AdminRequest, AdminResponse
from trackpoint.config.model import Config
from trackpoint.preprocessors.geo.checks import geo_in_use
from trackpoint.preprocessors.geo.database import (
    DatabaseError,
    DatabaseInfo,
    copies_dir,
    database_path,
    describe,
    good_copies,
    open_reader,
    source_note,
)

DATABASE_OPTIONS = ("database", "asn_database")


# What the route shows of one database: its description, or why the file does not open (`path`, `error`) and, when
# the workers serve their last good copy of it, that copy's description (`in_use`).
Shown = DatabaseInfo | dict[str, str | DatabaseInfo]


def databases_in_use(config: Config) -> dict[str, dict[str, Shown]]:
    """Each geo preprocessor in use (by name) and its databases (by option): what `describe` says of the file, with
    the attribution the config sets or the one recognised from the file; `{"path", "error"}` for a file that does not
    open, with `in_use`, the description of the last good copy the workers fall back to, when there is one. Reads
    each file's metadata once, without mapping it (the file may be rewritten meanwhile), off the request path (the
    admin route, the dashboard on a config change)."""
    answer: dict[str, dict[str, Shown]] = {}
    copies = copies_dir(config.data_dir)
    for name, geo in geo_in_use(config).items():
        databases: dict[str, Shown] = {}
        for option in DATABASE_OPTIONS:
            file = getattr(geo, option)
            if file is None:
                continue
            path = database_path(file, config.data_dir)
            try:
                databases[option] = _describe(path, path, geo.attribution)
            except DatabaseError as exc:
                failed: dict[str, str | DatabaseInfo] = {"path": str(path), "error": str(exc)}
                for copy in good_copies(path, copies):
                    with contextlib.suppress(DatabaseError):
                        failed["in_use"] = _describe(copy, path, geo.attribution)
                        break
                databases[option] = failed
        answer[name] = databases
    return answer


def _describe(file: Path, source: Path, attribution: str | None) -> DatabaseInfo:
    """`describe` of `file`, a database or a copy of `source`, under its own path."""
    reader = open_reader(file)
    try:
        return describe(reader, file, attribution, source_note(source))
    finally:
        reader.close()


def attributions(config: Config) -> Iterator[str]:
    """The attributions of the geo databases in use (the plugin's `AttributionSource`): the same text
    `GET /geo/databases` shows, so the dashboard and the API cannot disagree."""
    for databases in databases_in_use(config).values():
        for shown in databases.values():
            info = shown.get("in_use") if isinstance(shown, dict) else shown
            if isinstance(info, DatabaseInfo) and info.attribution:
                yield info.attribution


async def get_databases(request: AdminRequest, config: Config) -> AdminResponse:
    """The geo databases in use (by preprocessor and option): path, type, build time, description and the
    attribution their licence requires.

    `{"preprocessors": {"geo": {"database": {"path": ..., "database_type": ..., "built": ..., "ip_version": ...,
    "description": ..., "attribution": ...}, "asn_database": ...}}}`; `built` is null when the file's build time
    is no date. A file that does not open has `path` and `error`, and `in_use`, the description of the last good
    copy the workers serve, when there is one.
    """
    del request
    answer: dict[str, Any] = databases_in_use(config)
    return AdminResponse.json(200, {"preprocessors": answer})
