"""Invalid traffic: bots by User-Agent, prefetch and preview requests, impossibly fast clicks and conversions, and
each event type's policy for flagged events (keep, route, drop) on a real tracker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from conftest import CHROME_UA, Tracker
from trackpoint.adtech.clickid import ClickIds
from trackpoint.adtech.ivt import automated, prefetch
from trackpoint.collectors.log.reader import read_events
from trackpoint.config.load import ConfigError, load
from trackpoint.config.model import EventTypeSpec, FieldSpec
from trackpoint.edge.build import EventBuilder
from trackpoint.event import Context, Device, Event, Meta, derived_id
from trackpoint.plugins import registry
from trackpoint.preprocessors import with_input_fields
from trackpoint.preprocessors.flag_invalid_traffic.config import FlagInvalidTrafficConfig
from trackpoint.preprocessors.flag_invalid_traffic.preprocessor import FlagInvalidTraffic
from trackpoint.preprocessors.parse_user_agent.config import ParseUserAgentConfig
from trackpoint.preprocessors.parse_user_agent.preprocessor import ParseUserAgent

BROWSERS = [
    CHROME_UA,
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 "
    "Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.1; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/23.0 "
    "Chrome/115.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 11; CUBOT_X30) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile "
    "Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 "
    "Safari/537.36 Edg/120.0.0.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 "
    "[FBAN/FBIOS;FBAV/440.0.0.0]",
]
AUTOMATED = [
    "curl/8.4.0",
    "Wget/1.21.4",
    "python-requests/2.31.0",
    "python-httpx/0.27.0",
    "Go-http-client/1.1",
    "okhttp/4.12.0",
    "axios/1.6.0",
    "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
    "Apache-HttpClient/4.5.13 (Java/11.0.2)",
    "PostmanRuntime/7.36.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X) AppleWebKit/538.1 (KHTML, like Gecko) PhantomJS/2.1.1 Safari/538.1",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.0; +https://openai.com/gptbot)",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "Mozilla/5.0 (compatible; SomeNewCrawler/0.1; +https://crawler.test/about)",
]


# --- the signs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ua", AUTOMATED)
def test_crawlers_tools_and_headless_browsers_are_automated(ua: str) -> None:
    assert automated(ua)


@pytest.mark.parametrize("ua", BROWSERS)
def test_browsers_are_not_automated(ua: str) -> None:
    assert not automated(ua)


def test_the_user_agent_parser_marks_tools_and_headless_browsers_as_bots() -> None:
    parser = ParseUserAgent("parse_user_agent", ParseUserAgentConfig())
    for ua in AUTOMATED:
        assert parser.parse(ua).bot, ua
    for ua in BROWSERS:
        assert not parser.parse(ua).bot, ua


@pytest.mark.parametrize(
    ("value", "speculative"),
    [("prefetch", True), ("prefetch;prerender", True), ("Prefetch", True), ("preview", True), ("navigate", False)],
)
def test_prefetch_header_values(value: str, speculative: bool) -> None:
    assert prefetch(value) is speculative


# --- the preprocessor --------------------------------------------------------------------------------------------


def _event(dims: dict[str, str], ua: str | None = CHROME_UA, metrics: dict[str, int | float] | None = None) -> Event:
    return Event("e", "click", 1_800_000_000_000, dims, metrics or {}, Context(ua=ua), Meta(worker=0, config="t"))


def test_each_flag_and_the_first_finding_wins() -> None:
    flagger = FlagInvalidTraffic("flag_invalid_traffic", FlagInvalidTrafficConfig())
    now = 1_800_000_000_000
    cases = [
        (_event({}, ua="curl/8.4.0"), "bot"),
        (_event({}, ua=None), "bot"),  # no User-Agent at all
        (_event({}, ua=" "), "bot"),  # an empty one
        (_event({"ivt.sec_purpose": "prefetch;prerender"}), "prefetch"),
        (_event({"ivt.x_moz": "prefetch"}), "prefetch"),
        (_event({"ivt.purpose": "prefetch"}), "prefetch"),
        (_event({"ivt.x_purpose": "preview"}), "prefetch"),
        (_event({}, metrics={"its": now - 999}), "too_fast"),
        (_event({}, metrics={"its": now + 5000}), "too_fast"),  # a click before its impression
        (_event({}, metrics={"its": now - 1000}), None),
        (_event({"ivt.purpose": "navigate"}), None),
        (_event({"ivt.sec_purpose": "prefetch"}, ua="curl/8.4.0", metrics={"its": now}), "bot"),
        (_event({"ivt": "too_fast"}, ua="curl/8.4.0"), "too_fast"),  # flagged before: kept, not counted again
    ]
    for event, flag in cases:
        flagged = flagger(event)
        assert flagged is not None
        assert flagged.dims.get("ivt") == flag, (event, flag)
        assert not any(name.startswith("ivt.") for name in flagged.dims)  # the header values are input only
    assert flagger.counts == {"bot": 4, "prefetch": 4, "too_fast": 2}


def test_a_flagged_hit_has_an_id_of_its_own() -> None:
    """A scanner opening a click URL before the person does: under `keep` both are logged, and a consumer's dedupe by
    id must not drop the person's click as a repeat of the scanner's."""
    flagger = FlagInvalidTraffic("flag_invalid_traffic", FlagInvalidTrafficConfig())
    scanner, again, person = _event({}, ua="curl/8.4.0"), _event({}, ua="curl/8.4.0"), _event({})
    for event in (scanner, again, person):
        flagger(event)
    assert person.id == "e" and "ivt" not in person.dims
    assert scanner.dims["ivt"] == "bot" and scanner.id == derived_id("click", ["e", "ivt"])
    assert again.id == scanner.id  # repeats of a flagged hit are still one event


def test_the_bot_check_comes_before_check_consent(tmp_path: Path) -> None:
    """check_consent removes the User-Agent when consent is denied: after it, a bot sending `Sec-GPC: 1` passed and
    a browser (without parse_user_agent) was taken for a bot."""
    text = "event_types:\n  click:\n    preset: click\n    preprocessors: [check_consent, flag_invalid_traffic]\n"
    (tmp_path / "trackpoint.yaml").write_text(f"data_dir: {tmp_path}\n{text}")
    with pytest.raises(ConfigError) as error:
        load(str(tmp_path / "trackpoint.yaml"), registry=registry())
    message = str(error.value)
    assert "event_types.click.preprocessors[1]: 'flag_invalid_traffic' reads the User-Agent" in message
    swapped = text.replace("[check_consent, flag_invalid_traffic]", "[flag_invalid_traffic, check_consent]")
    (tmp_path / "trackpoint.yaml").write_text(f"data_dir: {tmp_path}\n{swapped}")
    load(str(tmp_path / "trackpoint.yaml"), registry=registry())  # the other way round: accepted
    off = text.replace("flag_invalid_traffic]", "no_bots]")
    off = "preprocessors:\n  no_bots: {type: flag_invalid_traffic, bots: false}\n" + off
    (tmp_path / "trackpoint.yaml").write_text(f"data_dir: {tmp_path}\n{off}")
    load(str(tmp_path / "trackpoint.yaml"), registry=registry())  # no User-Agent read: any order


def test_default_clicks_flag_bots_whatever_their_consent_signals(tracker: Tracker) -> None:
    """The embedded default click: a scanner and a client without a User-Agent are flagged even when they send
    `Sec-GPC: 1` or `DNT: 1`; the person's click after the scanner's keeps the click's own id."""
    url = "&url=https%3A%2F%2Fexample.com%2F"
    scanner = "Mozilla/5.0 (compatible; SafeLinksScanner/1.0; +http://scanner.test)"
    assert tracker.get(f"/c?imp=shadow{url}", {"User-Agent": scanner})[0] == 302
    assert tracker.get(f"/c?imp=shadow{url}", {"User-Agent": CHROME_UA})[0] == 302
    assert tracker.get(f"/c?imp=gpc-empty{url}", {"User-Agent": "", "Sec-GPC": "1"})[0] == 302
    assert tracker.get(f"/c?imp=dnt-curl{url}", {"User-Agent": "curl/8.4.0", "DNT": "1"})[0] == 302
    assert tracker.get(f"/c?imp=gpc-chrome{url}", {"User-Agent": CHROME_UA, "Sec-GPC": "1"})[0] == 302
    events = tracker.wait_events(5)
    flags = sorted((e.dims["imp"], e.dims.get("ivt", "-"), e.dims.get("consent")) for e in events)
    assert flags == [
        ("dnt-curl", "bot", "denied"),
        ("gpc-chrome", "-", "denied"),
        ("gpc-empty", "bot", "denied"),
        ("shadow", "-", "not_applicable"),
        ("shadow", "bot", "not_applicable"),
    ]
    ids = {e.dims.get("ivt"): e.id for e in events if e.dims["imp"] == "shadow"}
    assert ids[None] == derived_id("click", ["shadow"]) and ids["bot"] == derived_id("click", [ids[None], "ivt"])


def test_the_parsed_device_is_believed_when_parse_user_agent_ran_first() -> None:
    flagger = FlagInvalidTraffic("flag_invalid_traffic", FlagInvalidTrafficConfig())
    event = _event({}, ua=None)
    event.ctx.device = Device(browser="Chrome", bot=False)  # parsed, then the raw string dropped (keep_raw: false)
    assert flagger(event) is not None and "ivt" not in event.dims
    event = _event({}, ua=CHROME_UA)
    event.ctx.device = Device(browser="Googlebot", bot=True)
    assert flagger(event) is not None and event.dims["ivt"] == "bot"


def test_checks_that_are_off_cost_nothing_and_read_no_headers() -> None:
    off = FlagInvalidTraffic("x", FlagInvalidTrafficConfig(bots=False, prefetch=False, impression_time_field=None))
    assert off.input_fields == {}
    event = _event({}, ua="curl/8.4.0", metrics={"its": 1_800_000_000_000})
    assert off(event) is not None and "ivt" not in event.dims
    spec = EventTypeSpec(paths=["/c"], fields={"imp": FieldSpec()})
    meta = Meta(worker=0, config="t")
    assert EventBuilder("c", with_input_fields(spec, (off,)), meta).header_names == frozenset()
    on = FlagInvalidTraffic("y", FlagInvalidTrafficConfig())
    headers = EventBuilder("c", with_input_fields(spec, (on,)), meta).header_names
    assert headers == {b"purpose", b"sec-purpose", b"x-moz", b"x-purpose"}


# --- end to end: the policies ------------------------------------------------------------------------------------


def _type(path: str, action: str, **extra: Any) -> dict[str, Any]:
    return {
        "paths": [path],
        "fields": {"imp": {"required": True}},
        "dedupe_key": ["imp"],
        "response": {"kind": "gif"},
        "preprocessors": ["parse_user_agent", "flag_invalid_traffic"],
        "invalid_traffic": {"action": action, **({"collectors": ["ivt"]} if action == "route" else {})},
        **extra,
    }


@pytest.fixture
def ivt_tracker(tracker_factory: Any) -> Tracker:
    click = _type(
        "/c-drop",
        "drop",
        fields={"imp": {"required": True}, "url": {"required": True, "max_len": 2048}},
        response={"kind": "redirect", "allow_hosts": ["example.com"]},
        preprocessors=["parse_user_agent", "flag_invalid_traffic", "issue_click_id"],
    )
    conversion = {
        "paths": ["/conv-drop"],
        "fields": {"order_id": {"max_len": 64}},
        "dedupe_key": ["order_id"],
        "response": {"kind": "json"},
        "preprocessors": ["attribute_conversion"],
        "invalid_traffic": {"action": "drop"},
    }
    config = {
        "collectors": {"log": {"type": "log"}, "ivt": {"type": "log", "dir": "ivt"}},
        "event_types": {
            "keep": _type("/p-keep", "keep"),
            "route": _type("/p-route", "route"),
            "click_drop": click,
            "conversion_drop": conversion,
        },
    }
    tracker: Tracker = tracker_factory(config)
    return tracker


def _fire(tracker: Tracker, path: str, tag: str, **query: str) -> int:
    """Four requests: a bot, a prefetch, a too-fast one and a clean one; `tag` makes the impression ids unique."""
    now_ms = int(time.time() * 1000)
    extra = "".join(f"&{name}={quote(value, safe='')}" for name, value in query.items())
    sent = [
        tracker.get(f"{path}?imp={tag}-bot{extra}", {"User-Agent": "curl/8.4.0"}),
        tracker.get(f"{path}?imp={tag}-prefetch{extra}", {"Sec-Purpose": "prefetch;prerender"}),
        tracker.get(f"{path}?imp={tag}-fast&its={now_ms}{extra}"),
        tracker.get(f"{path}?imp={tag}-clean&its={now_ms - 10_000}{extra}"),
    ]
    (status,) = {status for status, _, _ in sent}  # every client gets the same answer
    return status


def test_keep_route_and_drop_policies(ivt_tracker: Tracker) -> None:
    tracker = ivt_tracker
    assert _fire(tracker, "/p-keep", "keep") == 200
    for header in ("Purpose", "X-Moz"):
        assert tracker.get(f"/p-keep?imp=keep-{header}", {header: "prefetch"})[0] == 200
    assert tracker.get("/p-keep?imp=keep-preview", {"X-Purpose": "preview"})[0] == 200
    assert b"200 OK" in tracker.raw(b"GET /p-keep?imp=keep-no-ua HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert _fire(tracker, "/p-route", "route") == 200
    assert _fire(tracker, "/c-drop", "drop", url="https://example.com/landing") == 302
    status, headers, _ = tracker.get(
        "/c-drop?imp=drop-bot-refused&url=https%3A%2F%2Fevil.test%2F", {"User-Agent": "curl/8.4.0"}
    )
    assert (status, headers["x-reject-reason"]) == (400, "redirect_not_allowed")
    status, headers, _ = tracker.get(
        "/c-drop?imp=drop-bot-again&url=https%3A%2F%2Fexample.com%2F", {"User-Agent": "curl/8.4.0"}
    )
    assert status == 302 and parse_qs(urlsplit(headers["location"]).query)["tp_click"]  # a dropped click still goes on

    key = (tracker.data_dir / "keys" / "signing.key").read_bytes().strip()
    click_ids = ClickIds({"auto": key}, "auto")
    now_ms = int(time.time() * 1000)
    for order, click_ts in (("fast", now_ms), ("human", now_ms - 60_000)):
        assert (
            tracker.get(f"/conv-drop?order_id={order}&click_id={click_ids.issue('i', 'c', 'cr', click_ts)}")[0] == 200
        )

    main = {
        event.dims["imp"] if "imp" in event.dims else event.dims["order_id"]: event for event in tracker.wait_events(12)
    }
    routed = {event.dims["imp"]: event for event in read_events([tracker.data_dir / "ivt"])}
    flags = {imp: event.dims.get("ivt") for imp, event in main.items() if imp.startswith("keep-")}
    assert flags == {
        "keep-bot": "bot",
        "keep-prefetch": "prefetch",
        "keep-fast": "too_fast",
        "keep-clean": None,
        "keep-Purpose": "prefetch",
        "keep-X-Moz": "prefetch",
        "keep-preview": "prefetch",
        "keep-no-ua": "bot",
    }
    assert main["keep-bot"].ctx.device is not None and main["keep-bot"].ctx.device.bot
    assert {imp for imp in main if imp.startswith("route-")} == {"route-clean"}
    assert {imp: event.dims["ivt"] for imp, event in routed.items()} == {
        "route-bot": "bot",
        "route-prefetch": "prefetch",
        "route-fast": "too_fast",
    }
    assert {key for key in main if key.startswith("drop-")} == {"drop-clean"}
    assert "fast" not in main and main["human"].dims["attribution"] == "attributed"

    assert tracker.wait_metric("trackpoint_invalid_traffic_routed_total", 'type="route"', 3) == 3
    assert tracker.wait_metric("trackpoint_invalid_traffic_dropped_total", 'type="click_drop"', 5) == 5
    assert tracker.metric("trackpoint_invalid_traffic_dropped_total", 'type="conversion_drop"') == 1
    assert tracker.metric("trackpoint_events_total", 'type="route"') == 4
    assert tracker.metric("trackpoint_events_total", 'type="click_drop"') == 1
    bots = tracker.metric("trackpoint_preprocessor_outcomes_total", 'outcome="bot",preprocessor="flag_invalid_traffic"')
    assert bots == 6  # keep: curl and no User-Agent; route: 1; drop: 3
