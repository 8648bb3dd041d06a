"""The geo preprocessor in a running tracker: the client behind a trusted proxy (X-Forwarded-For) located before its
IP is truncated, hosting networks flagged, a rate limit per country, a database replaced while it runs, one
rewritten in place or gone under running and restarting workers, the admin route with the attribution, and a missing
database refused by `config check` and `run`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from conftest import Tracker, free_port, write_mmdb
from trackpoint.event import Event
from trackpoint.preprocessors.geo.config import HOSTING_ASNS

pytestmark = pytest.mark.e2e  # the CLI runs as a subprocess in the last test

COUNTRIES = {
    "203.0.113.0/24": {"country": {"iso_code": "FR"}},
    "2001:db8:1::/48": {"country_code": "DE"},
    "198.51.100.0/24": {"country_code": "US"},
}
NETWORKS = {
    "198.51.100.0/24": {"autonomous_system_number": HOSTING_ASNS[0], "autonomous_system_organization": "AMAZON-02"}
}


def _config(tmp_path: Path) -> dict[str, Any]:
    country = write_mmdb(tmp_path / "country.mmdb", COUNTRIES, database_type="DBIP-Country-Lite")
    asn = write_mmdb(tmp_path / "asn.mmdb", NETWORKS, database_type="test-asn", ip_version=4)
    return {
        "server": {"trusted_proxies": ["127.0.0.0/8"]},
        "preprocessors": {
            "geo": {"type": "geo", "database": str(country), "asn_database": str(asn), "reload_check_s": 1},
        },
        "event_types": {
            "impression": {"preset": "impression", "preprocessors": ["geo", "anonymize_ip", "parse_user_agent"]},
            "visit": {
                "paths": ["/visit"],
                "fields": {"page": {"max_len": 64}},
                "preprocessors": ["geo", "anonymize_ip"],
                "response": {"kind": "no_content"},
                "rate_limit": {"rate_per_s": 0.001, "burst": 2, "by": "field", "field": "geo.country"},
            },
            "view": {
                "paths": ["/view"],
                "fields": {"page": {"max_len": 64}},
                "preprocessors": ["geo", "anonymize_ip"],
                "response": {"kind": "no_content"},
                "rate_limit": {
                    "rate_per_s": 0.001,
                    "burst": 1,
                    "by": "field",
                    "field": "geo.country",
                    "action": "shed",
                },
            },
        },
    }


def _by_imp(tracker: Tracker, count: int) -> dict[str, Event]:
    events = tracker.wait_events(count)
    assert len(events) >= count, tracker.output()
    return {e.dims.get("imp") or e.dims["page"]: e for e in events}


def test_clients_behind_a_trusted_proxy_are_located_before_their_ip_is_truncated(
    tracker_factory: Any, tmp_path: Path
) -> None:
    tracker: Tracker = tracker_factory(_config(tmp_path))
    for imp, client in (
        ("fr", "203.0.113.77"),
        ("de", "2001:db8:1::42"),
        ("cloud", "198.51.100.9"),
        ("nowhere", "192.0.2.1"),
        ("chain", "192.0.2.50, 203.0.113.99"),  # the proxy appended the client it saw last
        ("mapped", "::ffff:203.0.113.98"),  # IPv4-mapped (a dual-stack proxy's): looked up as its IPv4 address
    ):
        status, _, _ = tracker.get(f"/i?imp={imp}", {"X-Forwarded-For": client})
        assert status == 200
    events = _by_imp(tracker, 6)
    fr = events["fr"]
    assert fr.dims["geo.country"] == "FR" and fr.ctx.ip == "203.0.113.0"
    assert "203.0.113.77" not in msgspec.json.encode(fr).decode()
    assert events["de"].dims["geo.country"] == "DE" and events["de"].ctx.ip == "2001:db8:1::"
    cloud = events["cloud"].dims
    assert (cloud["geo.country"], cloud["geo.asn"], cloud["geo.as_org"], cloud["ivt"]) == (
        "US",
        str(HOSTING_ASNS[0]),
        "AMAZON-02",
        "datacenter",
    )
    assert not any(k.startswith("geo.") for k in events["nowhere"].dims)  # unknown: no geo, no error
    assert events["chain"].dims["geo.country"] == "FR"
    assert events["mapped"].dims["geo.country"] == "FR" and events["mapped"].ctx.ip == "203.0.113.0"
    assert (
        tracker.wait_metric("trackpoint_preprocessor_outcomes_total", 'outcome="datacenter",preprocessor="geo"', 1) == 1
    )

    # A rate limit per country: France's bucket runs dry, Germany's is untouched.
    statuses = [tracker.get(f"/visit?page=fr{i}", {"X-Forwarded-For": "203.0.113.5"})[0] for i in range(3)]
    assert statuses == [204, 204, 429]
    assert tracker.get("/visit?page=de0", {"X-Forwarded-For": "2001:db8:1::5"})[0] == 204
    # Shed: the normal answer, nothing recorded. The German view, sent last, is the sentinel.
    for page, client in (("view-fr0", "203.0.113.5"), ("view-fr1", "203.0.113.6"), ("view-de", "2001:db8:1::5")):
        assert tracker.get(f"/view?page={page}", {"X-Forwarded-For": client})[0] == 204
    views = [e for e in tracker.wait_events(6 + 3 + 2) if e.type == "view"]
    assert sorted(e.dims["page"] for e in views) == ["view-de", "view-fr0"]
    assert tracker.wait_metric("trackpoint_shed_total", 'type="view"', 1) == 1

    # The admin API shows the databases with DB-IP's attribution (recognised from the database type).
    status, _, body = tracker.admin("GET", "/geo/databases")
    assert status == 200
    shown = msgspec.json.decode(body)["preprocessors"]["geo"]
    assert "DB-IP" in shown["database"]["attribution"] and "CC BY 4.0" in shown["database"]["attribution"]
    assert shown["asn_database"]["database_type"] == "test-asn"


def test_a_replaced_database_is_picked_up_while_the_tracker_runs(tracker_factory: Any, tmp_path: Path) -> None:
    config = _config(tmp_path)
    tracker: Tracker = tracker_factory(config)
    client = {"X-Forwarded-For": "203.0.113.8"}
    assert tracker.get("/i?imp=before", client)[0] == 200
    write_mmdb(tmp_path / "country.mmdb", {"203.0.113.0/24": {"country_code": "BE"}})
    deadline = time.monotonic() + 15
    located = "FR"
    attempt = 0
    while located != "BE" and time.monotonic() < deadline:  # the worker checks the file every second
        attempt += 1
        assert tracker.get(f"/i?imp=after{attempt}", client)[0] == 200
        (event,) = [e for e in tracker.wait_events(attempt + 1) if e.dims["imp"] == f"after{attempt}"]
        located = event.dims["geo.country"]
    assert located == "BE"
    assert (
        tracker.wait_metric("trackpoint_preprocessor_outcomes_total", 'outcome="reloaded",preprocessor="geo"', 1) == 1
    )


def test_a_missing_database_is_refused_by_config_check_and_run(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config["preprocessors"]["geo"]["database"] = "nowhere/country.mmdb"
    path = tmp_path / "trackpoint.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), **config}))
    check = subprocess.run(
        [sys.executable, "-m", "trackpoint", "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode != 0
    assert "preprocessors.geo.database: cannot open the geo database" in check.stdout + check.stderr
    assert "nowhere/country.mmdb does not exist" in check.stdout + check.stderr
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "trackpoint",
            "run",
            "--config",
            str(path),
            "--port",
            str(free_port()),
            "--admin-port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode != 0
    assert "preprocessors.geo.database" in run.stdout + run.stderr


def _replace_worker(tracker: Tracker) -> int:
    """SIGKILLs the only worker and waits for its replacement to serve; the replacement's pid."""
    (victim,) = tracker.worker_pids()
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while victim in (alive := tracker.worker_pids()) or not alive:
        assert time.monotonic() < deadline, f"worker {victim} not replaced:\n{tracker.output()}"
        time.sleep(0.02)
    tracker.wait_ready()
    (replacement,) = alive
    return replacement


def test_a_database_rewritten_in_place_or_gone_never_stops_the_workers(tracker_factory: Any, tmp_path: Path) -> None:
    """The workers map only their own copy of a database (under data_dir): the operator's file truncated in place
    while they run, then gone while one restarts, leaves them serving the last good data, and says so."""
    config = _config(tmp_path)
    tracker: Tracker = tracker_factory(config)
    country = tmp_path / "country.mmdb"
    assert tracker.get("/i?imp=before", {"X-Forwarded-For": "203.0.113.1"})[0] == 200
    (worker,) = tracker.worker_pids()
    with country.open("r+b") as file:  # in place, as `cp new.mmdb country.mmdb` begins: the same inode, emptied
        file.truncate(0)
    # New clients (lookups, not cached answers), before and after the worker's 1 s check has seen the file broken.
    for i in range(2, 6):
        assert tracker.get(f"/i?imp=truncated{i}", {"X-Forwarded-For": f"203.0.113.{i}"})[0] == 200
    failed = 'outcome="reload_failed",preprocessor="geo"'
    assert tracker.wait_metric("trackpoint_preprocessor_outcomes_total", failed, 1) >= 1
    for i in range(6, 10):
        assert tracker.get(f"/i?imp=truncated{i}", {"X-Forwarded-For": f"203.0.113.{i}"})[0] == 200
    assert tracker.worker_pids() == [worker], tracker.output()

    # A worker starting while the file is gone: it serves the last good copy, logged, counted and shown.
    country.unlink()
    _replace_worker(tracker)
    assert tracker.get("/i?imp=restarted", {"X-Forwarded-For": "203.0.113.20"})[0] == 200
    events = _by_imp(tracker, 10)
    assert {imp: e.dims.get("geo.country") for imp, e in events.items()} == dict.fromkeys(events, "FR")
    assert "serving its last good copy" in tracker.output()
    assert tracker.wait_metric("trackpoint_preprocessor_outcomes_total", failed, 1) >= 1
    status, _, body = tracker.admin("GET", "/geo/databases")
    assert status == 200
    shown = msgspec.json.decode(body)["preprocessors"]["geo"]["database"]
    assert "does not exist" in shown["error"]
    assert shown["in_use"]["database_type"] == "DBIP-Country-Lite"

    # A good file again (renamed into place): reloaded, and the copy of the old one removed.
    write_mmdb(country, {"203.0.113.0/24": {"country_code": "BE"}})
    assert (
        tracker.wait_metric("trackpoint_preprocessor_outcomes_total", 'outcome="reloaded",preprocessor="geo"', 1) == 1
    )
    assert tracker.get("/i?imp=fixed", {"X-Forwarded-For": "203.0.113.21"})[0] == 200
    assert _by_imp(tracker, 11)["fixed"].dims["geo.country"] == "BE"
    copies = sorted(p.name for p in (tracker.data_dir / "geo" / "in-use").iterdir())
    assert len([name for name in copies if name.startswith("country-")]) == 1, copies
