"""The admin dashboard: the page in a real browser (Debian's chromium through Playwright) shows the traffic fired at
the tracker, the JSON it reads is served and documented, and the page stays closed without the token."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from conftest import Tracker

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
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        page.goto(f"http://127.0.0.1:{tracker.admin_port}/")
        page.wait_for_selector("#token-form:not([hidden])")
        page.fill("#token", tracker.admin_token())
        page.click("#token-form button[type=submit]")
        page.wait_for_selector("#status.good")
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
    finally:
        context.close()
    assert problems == []
