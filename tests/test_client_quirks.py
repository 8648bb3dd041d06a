"""What real clients send, end to end against a running tracker: IRI landing pages, an undecodable optional value
on a pixel, VAST players' unknown values, a bot on a cookie-setting page, and a refused click next to a real one.

Each test reproduces a point of issue 15 as a client sends it (raw bytes where a client library would re-encode).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from conftest import CHROME_UA, Tracker
from trackpoint.config.load import default_text

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
IRI = "https://shop.example.com/search?q=äpfel rot"
HOMOGRAPH = "https://ex\u0430mple.com/"  # a Cyrillic a among the Latin letters of an allowed host


def default_config() -> dict[str, Any]:
    """The embedded default configuration as a document to change (the factory sets the data directory)."""
    config: dict[str, Any] = yaml.safe_load(default_text())
    config.pop("data_dir")
    return config


def test_an_iri_landing_page_is_redirected_to_percent_encoded(tracker: Tracker) -> None:
    # The page's encodeURIComponent(IRI), as a click URL carries it.
    status, headers, _ = tracker.get("/c?imp=iri-1&url=" + quote(IRI, safe="-_.!~*'()"))
    assert status == 302
    assert headers["location"].startswith("https://shop.example.com/search?q=%C3%A4pfel%20rot&tp_click=")
    status, headers, _ = tracker.get("/c?imp=iri-2&url=" + quote("https://bücher.example.com/ü", safe=""))
    assert status == 302 and headers["location"].startswith("https://xn--bcher-kva.example.com/%C3%BC?tp_click=")
    # Still only to allowed hosts: an IRI on another host, a homograph of an allowed one.
    for number, destination in enumerate(("https://äpfel.evil.test/", HOMOGRAPH)):
        status, headers, _ = tracker.get(f"/c?imp=bad-{number}&url=" + quote(destination, safe=""))
        assert (status, headers["x-reject-reason"]) == (400, "redirect_not_allowed"), destination
    recorded = {e.dims["imp"]: e for e in tracker.events()}  # written before the answers left
    assert recorded["iri-1"].dims["url"] == IRI and "redirect_rejected" not in recorded["iri-1"].dims
    assert recorded["bad-0"].dims["redirect_rejected"] == "host_not_allowed"
    assert recorded["bad-1"].dims["redirect_rejected"] == "mixed_scripts"


def test_a_refused_destination_sends_the_browser_to_the_fallback_page(tracker_factory: Any) -> None:
    config = default_config()
    config["event_types"]["click"]["response"]["fallback_url"] = "https://example.com/link-expired"
    tracker = tracker_factory(config)
    status, headers, body = tracker.get("/c?imp=f1&url=" + quote("https://evil.test/", safe=""))
    assert (status, headers["location"], headers["x-reject-reason"], body) == (
        302,
        "https://example.com/link-expired",
        "redirect_not_allowed",
        b"",
    )
    assert tracker.wait_metric("trackpoint_rejected_total", 'reason="redirect_not_allowed"', 1) == 1
    (event,) = tracker.events()
    assert event.dims["redirect_rejected"] == "host_not_allowed"


def test_a_refused_click_does_not_share_the_real_clicks_id(tracker: Tracker) -> None:
    assert tracker.get("/c?imp=same&url=" + quote("https://example.com/land", safe=""))[0] == 302
    assert tracker.get("/c?imp=same&url=" + quote("https://evil.test/", safe=""))[0] == 400
    clicks = tracker.events()
    assert len(clicks) == 2 and clicks[0].dims["imp"] == clicks[1].dims["imp"] == "same"
    assert clicks[0].id != clicks[1].id
    assert ["redirect_rejected" in click.dims for click in clicks] == [False, True]


def test_one_bad_optional_value_does_not_lose_the_impression(tracker_factory: Any) -> None:
    config = default_config()
    config["event_types"]["impression"]["methods"] = ["GET", "HEAD", "POST"]  # a pixel a form posts too
    tracker: Tracker = tracker_factory(config)
    # %FC (Latin-1 ü) in the query; the raw byte in a form body, as a client that does not encode sends it.
    assert tracker.get("/i?imp=enc-1&cid=%FC&pub=news")[0] == 200
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert tracker.request("POST", "/i", b"imp=enc-2&cid=\xfcber", form)[0] == 200
    # Raw UTF-8 is a value like any other.
    assert tracker.request("POST", "/i", "imp=enc-3&cid=über".encode(), form)[0] == 200
    # The impression id is the dedupe key: a bad one still refuses the request.
    status, headers, _ = tracker.get("/i?imp=%FC")
    assert (status, headers["x-reject-reason"]) == (400, "invalid_encoding")
    # A conversion is not a pixel: a bad value refuses it, so the integrator sees the mistake.
    status, headers, _ = tracker.get("/conv?order_id=o1&value=abc")
    assert (status, headers["x-reject-reason"]) == (400, "invalid_field")
    events = {e.dims["imp"]: e for e in tracker.events()}
    dropped = 'field="cid",reason="invalid_encoding",type="impression"'
    assert tracker.wait_metric("trackpoint_invalid_values_dropped_total", dropped, 2) == 2
    consent = {"consent": "not_applicable"}
    assert events["enc-1"].dims == {"imp": "enc-1", "pub": "news", "invalid": "cid:invalid_encoding", **consent}
    assert events["enc-2"].dims == {"imp": "enc-2", "invalid": "cid:invalid_encoding", **consent}
    assert events["enc-3"].dims == {"imp": "enc-3", "cid": "über", **consent}
    assert len(events) == 3


def test_vast_players_unknown_values_are_accepted(tracker: Tracker) -> None:
    for query in (
        "imp=vp-1&ev=error&code=-1",  # VAST 4.1: error code unknown
        "imp=vp-2&ev=error&code=-2",  # withheld
        "imp=vp-3&ev=start&t=-1&ts=2026-12-05T06%3A40%3A00.123Z",  # vast-client before the first progress
        "imp=vp-4&ev=progress&t=00%3A00%3A04.750",
        "imp=vp-4&ev=progress&t=4.8",  # the same 4.5 s tracker, noticed later in another session
    ):
        assert tracker.get("/v?" + query)[0] == 200, query
    events = tracker.events()
    by_imp = {e.dims["imp"]: e for e in events}
    assert "code" not in by_imp["vp-1"].dims and "invalid" not in by_imp["vp-1"].dims
    assert by_imp["vp-3"].metrics == {"watch_ms": 0, "client_ts": 1796452800123}
    progress = [e for e in events if e.dims["imp"] == "vp-4"]
    assert len(progress) == 2 and progress[0].id == progress[1].id  # one progress event, logged twice


def test_dropped_requests_get_no_cookie(tracker_factory: Any) -> None:
    config = yaml.safe_load((EXAMPLES / "cdp.yaml").read_text())
    tracker: Tracker = tracker_factory(config)
    body = b'{"url": "https://shop.example.com/p"}'
    json_type = {"Content-Type": "application/json", "Origin": "https://shop.example.com"}
    dropped = [
        {"User-Agent": "Googlebot/2.1 (+http://www.google.com/bot.html)"},
        {"User-Agent": CHROME_UA, "Sec-Purpose": "prefetch"},
        {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/120.0.0.0 Safari/537.36"},
    ]
    for headers in dropped:
        status, answer, _ = tracker.request("POST", "/t/page", body, {**json_type, **headers})
        assert status == 204 and "set-cookie" not in answer, headers
    status, answer, _ = tracker.request("POST", "/t/page", body, {**json_type, "User-Agent": CHROME_UA})
    assert status == 204 and answer["set-cookie"].startswith("tp_uid=")  # the sentinel: a visitor gets one
    (event,) = tracker.events()  # the bots were dropped, the visitor recorded
    assert "ivt" not in event.dims and "uid" in event.dims
    assert tracker.wait_metric("trackpoint_invalid_traffic_dropped_total", 'type="pageview"', 3) == 3


def test_a_bot_kept_as_flagged_gets_no_cookie_and_no_user_id(tracker_factory: Any) -> None:
    config = yaml.safe_load((EXAMPLES / "cdp.yaml").read_text())
    config["event_types"]["pageview"]["invalid_traffic"] = {"action": "keep"}
    tracker: Tracker = tracker_factory(config)
    bot = {"Content-Type": "application/json", "User-Agent": "Googlebot/2.1 (+http://www.google.com/bot.html)"}
    status, answer, _ = tracker.request("POST", "/t/page", b'{"url": "https://shop.example.com/p"}', bot)
    assert status == 204 and "set-cookie" not in answer
    (event,) = tracker.events()
    assert event.dims["ivt"] == "bot" and "uid" not in event.dims
