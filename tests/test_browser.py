"""A real browser against a running tracker: headless Chromium (the session `browser` fixture) loads a page from
another origin that fires a pixel, `sendBeacon` with a string, with `URLSearchParams` and with `FormData`, a
preflighted `fetch` with `keepalive` and credentials, a batch gzipped by the browser's own `CompressionStream` and
POSTed to a batch path, and a click through the tracker's redirect to an IRI landing page; every event is then
checked in the log. What no hand-written client can prove: that browsers send what the tracker reads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import pytest

from conftest import CHROME_UA, Tracker, free_port

pytestmark = pytest.mark.e2e

# The landing page of the click: a path and a query with non-ASCII characters and a space (an IRI).
LANDING_PATH = "/landing/äpfel"
LANDING_QUERY = "q=äpfel rot"


class Site:
    """The advertiser's site: a tiny HTTP server on its own port (another origin than the tracker's), serving one
    page and the click's landing page, and remembering which landing targets were requested."""

    def __init__(self) -> None:
        self.port = free_port()
        self.origin = f"http://localhost:{self.port}"
        self.page = ""  # set once the tracker's port is known
        self.landed: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the name http.server calls
                if self.path.startswith("/landing/"):
                    site.landed.append(self.path)
                    body = b"<!doctype html><title>landed</title><p>landed</p>"
                else:
                    body = site.page.encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Site:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def tracker_config(origin: str) -> dict[str, Any]:
    return {
        "event_types": {
            "impression": {"preset": "impression"},
            "click": {
                "preset": "click",
                "response": {"kind": "redirect", "redirect_field": "url", "allow_hosts": ["localhost"]},
            },
            "web_event": {
                "paths": ["/t/event"],
                "methods": ["POST"],
                "fields": {
                    "name": {"required": True, "max_len": 64},
                    "label": {"max_len": 256},
                    "value": {"type": "money", "min": 0, "max": 1000000},
                    "cur": {"max_len": 3},
                },
                "response": {
                    "kind": "no_content",
                    "cors": {
                        "allow_origins": [origin],
                        "allow_credentials": True,
                        "allow_headers": ["content-type", "content-encoding"],  # the gzipped batch's
                    },
                },
                "batch": {"paths": ["/t/batch"]},
                "preprocessors": ["anonymize_ip", "parse_user_agent"],
                "collectors": ["log"],
            },
        }
    }


def page(tracker_url: str, landing: str) -> str:
    click = tracker_url + "/c?imp=b-click&cid=summer&url=" + quote(landing, safe="")
    return f"""<!doctype html>
<meta charset="utf-8"><title>shop</title>
<img id="pixel" src="{tracker_url}/i?imp=b-pixel&amp;cid=summer" width="1" height="1">
<a id="land" href="{click}">Äpfel</a>
<script>
  const tracker = {tracker_url!r};
  window.results = {{}};
  window.results.beaconString = navigator.sendBeacon(tracker + "/t/event",
      JSON.stringify({{name: "beacon_string", label: "grüße"}}));
  window.results.beaconParams = navigator.sendBeacon(tracker + "/t/event",
      new URLSearchParams({{name: "beacon_params", label: "a b&c"}}));
  const form = new FormData();  // multipart/form-data
  form.append("name", "beacon_form");
  form.append("label", "Grüße aus Köln");
  window.results.beaconForm = navigator.sendBeacon(tracker + "/t/event", form);
  window.results.fetched = fetch(tracker + "/t/event", {{
      method: "POST", keepalive: true, credentials: "include",
      headers: {{"Content-Type": "application/json"}},
      body: JSON.stringify({{name: "fetch_keepalive", value: 49.90, cur: "EUR"}}),
  }}).then(response => response.status, error => String(error));
  // A batch as an SDK sends it: a JSON array, gzipped by the browser itself (preflighted: Content-Encoding).
  window.results.batch = (async () => {{
    const items = [{{name: "batch_first", label: "über"}}, {{name: "batch_second", value: 3.5, cur: "EUR"}}];
    const compressed = new Blob([JSON.stringify(items)]).stream().pipeThrough(new CompressionStream("gzip"));
    const gzipped = new Uint8Array(await new Response(compressed).arrayBuffer());
    const response = await fetch(tracker + "/t/batch", {{
        method: "POST", credentials: "include",
        headers: {{"Content-Type": "application/json", "Content-Encoding": "gzip"}},
        body: gzipped,
    }});
    return {{status: response.status, answer: await response.json(), magic: [gzipped[0], gzipped[1]]}};
  }})().catch(error => String(error));
</script>
"""


@pytest.fixture
def site_and_tracker(tracker_factory: Any) -> Iterator[tuple[Site, Tracker]]:
    with Site() as site:
        tracker: Tracker = tracker_factory(tracker_config(site.origin))
        site.page = page(f"http://127.0.0.1:{tracker.port}", f"{site.origin}{LANDING_PATH}?{LANDING_QUERY}")
        yield site, tracker


def test_a_page_on_another_origin_fires_every_kind_of_request(
    browser: Any, site_and_tracker: tuple[Site, Tracker]
) -> None:
    site, tracker = site_and_tracker
    context = browser.new_context(user_agent=CHROME_UA)
    try:
        browser_page = context.new_page()
        browser_page.goto(site.origin + "/")
        assert browser_page.evaluate("window.results.beaconString") is True
        assert browser_page.evaluate("window.results.beaconParams") is True
        assert browser_page.evaluate("window.results.beaconForm") is True
        batch = browser_page.evaluate("window.results.batch")  # the promise, awaited
        assert batch == {"status": 200, "answer": {"accepted": 2, "refused": []}, "magic": [0x1F, 0x8B]}, batch
        assert browser_page.evaluate("window.results.fetched") == 204  # the preflight passed, the answer readable
        assert browser_page.evaluate("document.getElementById('pixel').naturalWidth") == 1
        with browser_page.expect_navigation(url=f"{site.origin}/landing/**"):
            browser_page.click("#land")
        landed_url = browser_page.url
    finally:
        context.close()
    # The browser went to the IRI's URI, with the click id the tracker added.
    expected = f"{site.origin}/landing/%C3%A4pfel?q=%C3%A4pfel%20rot&tp_click="
    assert landed_url.startswith(expected), landed_url
    assert site.landed and site.landed[0].startswith("/landing/%C3%A4pfel?q=%C3%A4pfel%20rot&tp_click=")
    events = tracker.wait_events(8)
    by_name = {e.dims.get("name") or e.type: e for e in events}
    assert len(events) == 8
    assert sorted(by_name) == [
        "batch_first",
        "batch_second",
        "beacon_form",
        "beacon_params",
        "beacon_string",
        "click",
        "fetch_keepalive",
        "impression",
    ]
    assert by_name["impression"].dims["imp"] == "b-pixel" and by_name["impression"].dims["cid"] == "summer"
    assert by_name["beacon_string"].dims["label"] == "grüße"  # text/plain JSON, UTF-8 intact
    assert by_name["beacon_params"].dims["label"] == "a b&c"  # form-urlencoded
    assert by_name["beacon_form"].dims["label"] == "Grüße aus Köln"  # multipart/form-data, UTF-8 intact
    # The gzipped batch: each item its own event with its own id, inflated and read as a JSON body.
    assert by_name["batch_first"].dims["label"] == "über"
    assert by_name["batch_second"].metrics == {"value": 3_500_000} and by_name["batch_second"].dims["cur"] == "EUR"
    assert by_name["batch_first"].id != by_name["batch_second"].id
    assert (
        by_name["fetch_keepalive"].metrics == {"value": 49_900_000} and by_name["fetch_keepalive"].dims["cur"] == "EUR"
    )
    click = by_name["click"]
    assert click.dims["url"] == f"{site.origin}{LANDING_PATH}?{LANDING_QUERY}"  # recorded as the page gave it
    assert "redirect_rejected" not in click.dims
    assert landed_url.endswith("tp_click=" + quote(click.dims["click_id"], safe="-_.~"))
    for event in events:
        assert event.ctx.device is not None and event.ctx.device.browser == "Chrome"
