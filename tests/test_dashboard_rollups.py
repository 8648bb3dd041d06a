"""The dashboard of a tracker with geo and hourly rollups, in a real browser (Debian's chromium through Playwright):
today's rollup rows with the counts of the traffic fired (each impression id once), and DB-IP's attribution in the
footer because an event type runs a geo preprocessor over a DB-IP database (issues 16 and 17)."""

from __future__ import annotations

import datetime
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from conftest import Tracker, write_mmdb
from dashboard_page import signed_in
from trackpoint.preprocessors.geo.database import DBIP_ATTRIBUTION

COUNTRIES = {"203.0.113.0/24": {"country_code": "FR"}, "2001:db8:1::/48": {"country_code": "DE"}}
CLIENTS = {"FR": "203.0.113.40", "DE": "2001:db8:1::7"}
# (campaign, creative, country): impressions with distinct ids; each of the first REPEATS is fired a second time.
TRAFFIC = {("dr-c1", "banner-a", "FR"): 7, ("dr-c1", "banner-b", "DE"): 4, ("dr-c2", "banner-a", "FR"): 3}
REPEATS = 5
# Where the screenshot of the rollups and the footer goes when this is set (docs/img/dashboard-rollups.png).
SCREENSHOT = os.environ.get("TRACKPOINT_DASHBOARD_ROLLUPS_SCREENSHOT")


def _config(tmp_path: Path) -> dict[str, Any]:
    database = write_mmdb(tmp_path / "dbip-country.mmdb", COUNTRIES, database_type="DBIP-Country-Lite")
    return {
        "server": {"trusted_proxies": ["127.0.0.0/8"]},
        "preprocessors": {"geo": {"type": "geo", "database": str(database)}},
        "collectors": {"rollup": {"type": "rollup", "dims": ["cid", "crid", "geo.country"], "flush_interval_ms": 200}},
        "event_types": {
            "impression": {
                "preset": "impression",
                "preprocessors": ["geo", "anonymize_ip"],
                "collectors": ["log", "rollup"],
            },
        },
    }


def _fire(tracker: Tracker) -> int:
    """The traffic of TRAFFIC, the first REPEATS impressions twice (a retry: the same event id); the requests sent."""
    sent = repeated = 0
    for (campaign, creative, country), impressions in TRAFFIC.items():
        for i in range(impressions):
            path = f"/i?imp={campaign}-{creative}-{i}&cid={campaign}&crid={creative}&pub=news"
            times = 2 if repeated < REPEATS else 1
            for _ in range(times):
                status, _, _ = tracker.get(path, {"X-Forwarded-For": CLIENTS[country]})
                assert status == 200
            sent += times
            repeated += times - 1
    return sent


def _page_rows(page: Any) -> list[list[str]]:
    rows: list[list[str]] = page.eval_on_selector_all(
        "#rollup-table tbody tr", "rows => rows.map(row => [...row.cells].map(cell => cell.textContent))"
    )
    return rows


def test_the_dashboard_shows_todays_rollups_and_the_geo_attribution(
    tracker_factory: Any, browser: Any, tmp_path: Path
) -> None:
    tracker: Tracker = tracker_factory(_config(tmp_path))
    with signed_in(browser, tracker) as (page, problems):
        sent = _fire(tracker)  # while the page is live

        # What the log recorded: every request, repeats included; the rollups count each event id once.
        logged = tracker.wait_events(sent, timeout_s=15)
        assert len(logged) == sent, tracker.output()
        unique = {event.id: event for event in logged}
        assert len(unique) == sent - REPEATS == sum(TRAFFIC.values())
        assert {event.dims["geo.country"] for event in unique.values()} == set(CLIENTS)
        expected = Counter(
            (
                datetime.datetime.fromtimestamp(event.ts / 1000, datetime.UTC).strftime("%H:00"),
                f"cid={event.dims['cid']} crid={event.dims['crid']}",
            )
            for event in unique.values()
        )  # by the hour each event was accepted in (the traffic may straddle an hour)
        assert sorted(expected.values(), reverse=True)[0] > 1  # rows that add up several impressions

        # The page refreshes the rollups every 10 s: poll its table (a deadline, not a sleep).
        deadline = time.monotonic() + 30
        while True:
            rows = _page_rows(page)
            shown = {(hour, dims): events for hour, kind, dims, events, _ in rows if kind == "impression"}
            if shown == {key: str(count) for key, count in expected.items()} or time.monotonic() > deadline:
                break
            page.wait_for_timeout(200)
        assert shown == {key: str(count) for key, count in expected.items()}, rows
        assert all(kind == "impression" for _, kind, _, _, _ in rows)
        for hour, _, dims, events, metrics in rows:
            assert f"impressions {events}" in metrics, (hour, dims, metrics)
        assert page.is_hidden("#rollups-note")

        # The footer carries DB-IP's attribution, the text the admin API gives for the database in use.
        expect(page.locator("#attribution")).to_have_text(DBIP_ATTRIBUTION)
        links = page.eval_on_selector_all("#attribution a", "links => links.map(link => link.href)")
        assert links == ["https://db-ip.com/", "https://creativecommons.org/licenses/by/4.0/"]
        status, _, body = tracker.admin("GET", "/geo/databases")
        assert status == 200
        assert json.loads(body)["preprocessors"]["geo"]["database"]["attribution"] == DBIP_ATTRIBUTION

        # The geo dim is a rollup dim: the same store by country agrees with the traffic.
        status, _, body = tracker.admin("GET", "/reports/hourly?by=geo.country")
        assert status == 200
        by_country: Counter[str] = Counter()
        for row in json.loads(body)["rows"]:
            by_country[row["dims"]["geo.country"]] += row["events"]
        wanted: Counter[str] = Counter()
        for (_, _, country), impressions in TRAFFIC.items():
            wanted[country] += impressions
        assert by_country == wanted
        if SCREENSHOT:
            page.locator("#rollups").screenshot(path=SCREENSHOT)
    assert problems == []
