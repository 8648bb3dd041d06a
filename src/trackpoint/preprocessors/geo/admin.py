"""The geo preprocessor's admin route: `GET /geo/databases`, the metadata and licence attribution of the databases in
use, for the dashboard (DB-IP Lite's CC BY 4.0 requires showing its attribution where its results are shown)."""

from __future__ import annotations

from typing import Any

from trackpoint.admin.server import AdminRequest, AdminResponse
from trackpoint.config.model import Config
from trackpoint.preprocessors.geo.checks import geo_in_use
from trackpoint.preprocessors.geo.database import DatabaseError, database_path, describe, open_reader, source_note


async def get_databases(request: AdminRequest, config: Config) -> AdminResponse:
    """The geo databases in use (by preprocessor and option): path, type, build time, description and the
    attribution their licence requires.

    `{"preprocessors": {"geo": {"database": {"path": ..., "database_type": ..., "built": ..., "ip_version": ...,
    "description": ..., "attribution": ...}, "asn_database": ...}}}`; a file that does not open has `error`.
    """
    del request
    answer: dict[str, dict[str, Any]] = {}
    for name, geo in geo_in_use(config).items():
        databases: dict[str, Any] = {}
        for option in ("database", "asn_database"):
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
    return AdminResponse.json(200, {"preprocessors": answer})
