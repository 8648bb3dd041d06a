"""The admin dashboard: the page in a real browser (Debian's chromium through Playwright) shows the traffic fired at
the tracker, the JSON it reads is served and documented, and the page stays closed without the token."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from conftest import Tracker
from dashboard_page import signed_in
from trackpoint.admin.dashboard import TAIL_WATCH_S

IMPRESSIONS, WINS, REFUSED = 30, 10, 7
CAMPAIGN = "dash-c1"
# Where the screenshot for the docs goes when this is set (docs/img/dashboard.png: see docs/monitoring.md).
SCREENSHOT = os.environ.get("TRACKPOINT_DASHBOARD_SCREENSHOT")


def _fire(tracker: Tracker) -> None:
    for i in range(IMPRESSIONS):
        status, _, _ = tracker.get(f"/i?imp=dash-{i}&cid={CAMPAIGN}&crid=banner-{i % 3}&pub=news")
        assert status == 200
    for i in range(WINS):  # 2000 CPM: the banker debits 2.00 a win
        status, _, _ = tracker.get(tracker.sign(f"/win?imp=dash-{i}&cid={CAMPAIGN}&price=2000"))
        assert status == 204
    for _ in range(REFUSED):
        status, headers, _ = tracker.get(f"/i?cid={CAMPAIGN}")  # no impression id
        assert (status, headers["x-reject-reason"]) == (400, "missing_field")


def test_the_dashboard_shows_the_traffic_fired_at_the_tracker(
    tracker_factory: Any, browser: Any, tmp_path: Path
) -> None:
    tracker: Tracker = tracker_factory(workers=2)
    status, _, _ = tracker.admin(
        "PUT", f"/banker/campaigns/{CAMPAIGN}", json.dumps({"total_budget_micros": 100_000_000}).encode()
    )
    assert status == 200
    with signed_in(browser, tracker) as (page, problems):
        _fire(tracker)  # while the page is live

        expect(page.locator("#events tr[data-key=impression] .total")).to_have_text(str(IMPRESSIONS), timeout=15_000)
        expect(page.locator("#events tr[data-key=win] .total")).to_have_text(str(WINS))
        expect(page.locator("#rejected tr[data-key=missing_field] .total")).to_have_text(str(REFUSED))
        expect(page.locator("#requests-total")).to_have_text(str(IMPRESSIONS + WINS + REFUSED))
        expect(page.locator("#workers-ready")).to_have_text("2 of 2 ready")
        expect(page.locator("#workers tbody tr")).to_have_count(2)
        spent = page.locator(f"#campaigns tr[data-key={CAMPAIGN}] td:nth-child(2)")
        expect(spent).to_have_text(f"{2 * WINS}.00", timeout=15_000)  # the banker's view refreshes every 10 s
        expect(page.locator("#tail")).to_contain_text(f"dash-{IMPRESSIONS - 1}")
        log_row = page.text_content("#collectors tr[data-key=log]") or ""
        assert "healthy" in log_row
        tail = page.text_content("#tail") or ""
        assert CAMPAIGN in tail
        assert "127.0.0" not in tail and "Mozilla" not in tail  # filtered as an untrusted collector gets it
        p50 = float(page.text_content("#p50") or "nan")
        assert 0 < p50 < 1000
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        if SCREENSHOT:
            page.screenshot(path=SCREENSHOT, full_page=False)
    assert problems == []


def test_the_page_is_open_and_its_data_needs_the_token(tracker: Tracker) -> None:
    import http.client

    def get(path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", tracker.admin_port, timeout=10)
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    token = tracker.admin_token()
    status, headers, page = get("/", {"Accept": "text/html,application/xhtml+xml"})
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in headers["content-security-policy"]
    assert token.encode() not in page and b"/dashboard/stats" not in page  # the shell only: the script reads the data
    for asset in ("/dashboard/app.js", "/dashboard/app.css"):
        assert get(asset, {})[0] == 200
    assert get("/", {"Accept": "application/json"})[0] == 401  # the index of routes is not open
    assert get("/dashboard/stats", {})[0] == 401
    status, _, body = get("/", {"Accept": "application/json", "Authorization": f"Bearer {token}"})
    assert status == 200
    paths = {route["path"] for route in json.loads(body)["routes"]}
    assert {"/dashboard/stats", "/metrics", "/banker/campaigns/{id}"} <= paths
    tracker.get("/i?imp=auth-1&cid=c-auth")
    tracker.wait_metric("trackpoint_events_total", 'type="impression"', 1)
    status, _, body = get("/dashboard/stats", {"Authorization": f"Bearer {token}"})
    assert status == 200
    stats = json.loads(body)
    assert stats["totals"]["events"]["impression"] == 1
    assert stats["tracker"]["config_file"] == str(tracker.config_path)
    assert [w["slot"] for w in stats["workers"]] == [0]


def test_a_restarted_worker_shows_its_restart(tracker: Tracker) -> None:
    def workers_until(condition: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 20
        while True:
            status, _, body = tracker.admin("GET", "/dashboard/stats")
            assert status == 200
            listed: list[dict[str, Any]] = json.loads(body)["workers"]
            if condition(listed):
                return listed
            assert time.monotonic() < deadline, listed
            time.sleep(0.1)

    (first,) = workers_until(lambda listed: bool(listed) and listed[0]["rss_bytes"] > 0)  # after its first report
    assert first["restarts"] == 0 and first["ready"]
    os.kill(first["pid"], signal.SIGKILL)
    (second,) = workers_until(lambda listed: bool(listed) and listed[0]["pid"] != first["pid"] and listed[0]["ready"])
    assert second["restarts"] == 1


def test_the_workers_send_their_newest_events_only_while_someone_reads_the_dashboard(tracker: Tracker) -> None:
    """Each worker filters and encodes its newest events for the live tail only while /dashboard/stats is read (for
    TAIL_WATCH_S after each read): not for a page nobody has open. A worker started meanwhile is told too."""

    def tail() -> list[str]:
        status, _, body = tracker.admin("GET", "/dashboard/stats")
        assert status == 200
        return [event["dims"]["imp"] for event in json.loads(body)["tail"]]

    def fire_and_report(name: str) -> None:
        before = tracker.metric("trackpoint_requests_total")
        assert tracker.get(f"/i?imp={name}")[0] == 200
        tracker.wait_metric("trackpoint_requests_total", "", before + 1)  # a report after it was read
        time.sleep(1.2)  # and the next one

    def tail_until(name: str) -> list[str]:
        deadline = time.monotonic() + 10
        while name not in (shown := tail()):
            assert time.monotonic() < deadline, (name, shown, tracker.output())
            time.sleep(0.2)
        return shown

    fire_and_report("unwatched")
    assert tail() == []  # its reports left it out: the first read starts the watch
    assert "unwatched" in tail_until("unwatched")  # kept by the worker, sent once watched
    (worker,) = tracker.worker_pids()
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while tracker.worker_pids() in ([], [worker]):
        assert time.monotonic() < deadline, tracker.output()
        tail()  # watched all along
        time.sleep(0.2)
    tracker.wait_ready()
    assert tracker.get("/i?imp=after-restart")[0] == 200
    tail_until("after-restart")  # the new worker was told on its Ready
    time.sleep(TAIL_WATCH_S + 1)  # nobody reads: no longer watched
    fire_and_report("left")
    assert "left" not in tail()
    tail_until("left")
