"""Start-up checks of the geo preprocessor: its database files open, and it runs before anonymize_ip (it needs the
full client IP, which anonymize_ip truncates). Run by `config check`, `run` and every reload."""

from __future__ import annotations

from collections.abc import Iterator

from trackpoint.config.load import KeyPath
from trackpoint.config.model import Config, preprocessors_in_use
from trackpoint.preprocessors.anonymize_ip.config import AnonymizeIpConfig
from trackpoint.preprocessors.geo.config import DEFAULT_DATABASE, GeoConfig
from trackpoint.preprocessors.geo.database import DatabaseError, database_path, open_reader


def geo_in_use(config: Config) -> dict[str, GeoConfig]:
    """The geo preprocessors that some event type runs, by name (a defined but unused one opens nothing)."""
    return preprocessors_in_use(config, GeoConfig)


def check_geo(config: Config) -> Iterator[tuple[KeyPath, str]]:
    in_use = geo_in_use(config)
    for name, geo in in_use.items():
        base: KeyPath = ("preprocessors", name)
        if geo.database is None and geo.asn_database is None:
            yield base, "geo needs a database, an asn_database or both"
        for option in ("database", "asn_database"):
            file = getattr(geo, option)
            if file is None:
                continue
            try:
                open_reader(database_path(file, config.data_dir)).close()
            except DatabaseError as exc:
                hint = " (scripts/geo-fetch downloads DB-IP Lite country there)" if file == DEFAULT_DATABASE else ""
                yield (*base, option), f"cannot open the geo database: {exc}{hint}"
    for type_name, spec in config.event_types.items():
        truncated_at = None  # the first anonymize_ip of the type: every geo must come before it
        for i, name in enumerate(spec.preprocessors):
            preprocessor = config.preprocessors.get(name)
            if isinstance(preprocessor, AnonymizeIpConfig) and truncated_at is None:
                truncated_at = name
            elif name in in_use and truncated_at is not None:
                yield (
                    ("event_types", type_name, "preprocessors", i),
                    f"{name!r} looks up the full client IP: list it before {truncated_at!r}, which truncates it",
                )
