"""The geo preprocessor's admin side: `GET /geo/databases`, the metadata and licence attribution of the databases in
use, and the attributions the dashboard's footer shows (DB-IP Lite's CC BY 4.0 requires showing its attribution where
its results are shown)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from trackpoint.admin.server import AdminRequest, AdminResponse
from trackpoint.config.model import Config
from trackpoint.preprocessors.geo.checks import geo_in_use
from trackpoint.preprocessors.geo.database import (
    DatabaseError,
    DatabaseInfo,
    database_path,
    describe,
    open_reader,
    source_note,
)

DATABASE_OPTIONS = ("database", "asn_database")


def databases_in_use(config: Config) -> dict[str, dict[str, DatabaseInfo | dict[str, str]]]:
    """Each geo preprocessor in use (by name) and its databases (by option): what `describe` says of the file, with
    the attribution the config sets or the one recognised from the file; `{"path", "error"}` for a file that does not
    open. Opens each file once, off the request path (the admin route, the dashboard on a config change)."""
    answer: dict[str, dict[str, DatabaseInfo | dict[str, str]]] = {}
    for name, geo in geo_in_use(config).items():
        databases: dict[str, DatabaseInfo | dict[str, str]] = {}
        for option in DATABASE_OPTIONS:
            file = getattr(geo, option)
            if file is None:
                continue
            path = database_path(file, config.data_dir)
            try:
                reader = open_reader(path)
            except DatabaseError as exc:
                databases[option] = {"path": str(path), "error": str(exc)}
                continue
            try:
                databases[option] = describe(reader, path, geo.attribution, source_note(path))
            finally:
                reader.close()
        answer[name] = databases
    return answer


def attributions(config: Config) -> Iterator[str]:
    """The attributions of the geo databases in use (the plugin's `AttributionSource`): the same text
    `GET /geo/databases` shows, so the dashboard and the API cannot disagree."""
    for databases in databases_in_use(config).values():
        for info in databases.values():
            if isinstance(info, DatabaseInfo) and info.attribution:
                yield info.attribution


async def get_databases(request: AdminRequest, config: Config) -> AdminResponse:
    """The geo databases in use (by preprocessor and option): path, type, build time, description and the
    attribution their licence requires.

    `{"preprocessors": {"geo": {"database": {"path": ..., "database_type": ..., "built": ..., "ip_version": ...,
    "description": ..., "attribution": ...}, "asn_database": ...}}}`; a file that does not open has `error`.
    """
    del request
    answer: dict[str, Any] = databases_in_use(config)
    return AdminResponse.json(200, {"preprocessors": answer})
