"""The default `video` type against a real VAST player: @dailymotion/vast-client (the reference JavaScript VAST
client, pinned in tag/package.json) in headless chromium parses a VAST 4 document whose tracking URLs point at the
tracker, and a VASTTracker is driven through a play as a player drives it. Every pixel the browser sent is checked
against what the tracker answered and logged.

What vast-client 6.4.5 sends (src/util/util.js, src/vast_tracker.js): each URL through `new Image().src`, a GET;
`[CACHEBUSTING]` an 8-digit random number, `[TIMESTAMP]` `Date.toISOString()` (`2026-12-06T09:16:49.123Z`,
colons %3A-encoded), `[ADPLAYHEAD]` the playhead as a timecode (`00%3A00%3A03.000`) but the one of the
*previous* setProgress call (so -1 on the first one), `-1` for any macro of its list it has no value for
(`[CONTENTPLAYHEAD]`, `[ADPLAYHEAD]` before playback), and `[ERRORCODE]` as written when error() has no code.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import CHROME_UA, StaticSite, Tracker
from trackpoint.adtech.vast import QUARTILES
from trackpoint.collectors.rollup.model import COUNTERS, counters
from trackpoint.event import Event

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
# Installed from tag/package-lock.json by scripts/build-tag (`npm ci`), which scripts/test runs before pytest.
VAST_CLIENT = ROOT / ".venv" / "node" / "node_modules" / "@dailymotion" / "vast-client" / "dist" / "vast-client.js"
DURATION_S = 10


def vast_document(tracker: Tracker, imp: str) -> str:
    """A VAST 4.2 InLine ad whose URLs are the tracker's, as an ad server writes them: the impression id, campaign
    and creative filled in at serving time, the player's macros left for the player."""
    base = f"http://127.0.0.1:{tracker.port}/v?imp={imp}&amp;cid=summer-sale&amp;crid=spot-10s"

    def url(event: str, extra: str = "") -> str:
        return f"<![CDATA[{base.replace('&amp;', '&')}&ev={event}{extra}]]>"

    playhead = "&t=[ADPLAYHEAD]&ts=[TIMESTAMP]&cb=[CACHEBUSTING]"
    quartile = f"&dur={DURATION_S}{playhead}"
    tracking = [
        ("creativeView", "", playhead),
        ("start", "", playhead),
        ("firstQuartile", "", quartile),
        ("midpoint", "", quartile),
        ("thirdQuartile", "", quartile),
        ("complete", "", quartile),
        ("pause", "", playhead),
        ("resume", "", playhead),
        # a VAST 3 ad server's habit: the position in [CONTENTPLAYHEAD], which vast-client sends as -1 (unknown)
        ("mute", "", "&t=[CONTENTPLAYHEAD]&cb=[CACHEBUSTING]"),
        ("unmute", "", "&t=[CONTENTPLAYHEAD]&cb=[CACHEBUSTING]"),
        ("progress", ' offset="00:00:02"', playhead),
        ("progress", ' offset="00:00:05.000"', playhead),
        ("progress", ' offset="75%"', playhead),
    ]
    events = "\n".join(
        f'<Tracking event="{name}"{attributes}>{url(name, extra)}</Tracking>' for name, attributes, extra in tracking
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<VAST version="4.2" xmlns="http://www.iab.com/VAST">
 <Ad id="ad-1">
  <InLine>
   <AdSystem version="1">trackpoint-test</AdSystem>
   <AdServingId>serving-{imp}</AdServingId>
   <AdTitle>Summer sale, 10 s</AdTitle>
   <Impression id="tp">{url("impression", "&t=[ADPLAYHEAD]&ts=[TIMESTAMP]&cb=[CACHEBUSTING]&ifa=[IFA]")}</Impression>
   <Error>{url("error", "&code=[ERRORCODE]&t=[ADPLAYHEAD]&ts=[TIMESTAMP]&cb=[CACHEBUSTING]&reason=[REASON]")}</Error>
   <Creatives>
    <Creative id="spot-10s" adId="ad-1">
     <UniversalAdId idRegistry="ad-id.org">CNPA0484000H</UniversalAdId>
     <Linear>
      <Duration>00:00:{DURATION_S:02d}.000</Duration>
      <TrackingEvents>
{events}
      </TrackingEvents>
      <VideoClicks>
       <ClickThrough><![CDATA[https://example.com/summer-sale]]></ClickThrough>
       <ClickTracking>{url("clickTracking", "&t=[ADPLAYHEAD]&cb=[CACHEBUSTING]&pos=[CLICKPOS]")}</ClickTracking>
      </VideoClicks>
      <MediaFiles>
       <MediaFile delivery="progressive" type="video/mp4" width="640" height="360">
        <![CDATA[https://cdn.example.com/spot-10s.mp4]]></MediaFile>
      </MediaFiles>
     </Linear>
    </Creative>
   </Creatives>
  </InLine>
 </Ad>
</VAST>
"""


PLAYER_PAGE = b"""<!doctype html><html><head><title>Player</title>
<script type="module">
import { VASTClient, VASTTracker } from "/vast-client.js";
window.vast = { VASTClient, VASTTracker };
</script></head><body><video></video></body></html>"""

# A player's calls: setProgress on each timeupdate (every `step` seconds of the ad), the viewer's pauses, mutes and
# click at given times, complete() at the end. `session` runs one play; vast-client fires its pixels as it goes.
PLAY = """async ({ step, until, pauses, mutes, clickAt, complete, errors }) => {
    const client = new window.vast.VASTClient();
    const response = await client.get(location.origin + "/vast.xml");
    const ad = response.ads[0];
    const creative = ad.creatives.find((c) => c.type === "linear");
    const tracker = new window.vast.VASTTracker(client, ad, creative);
    const trackerErrors = [];
    tracker.on("TRACKER-error", (e) => trackerErrors.push(e.message));
    let clickthrough = null;
    tracker.on("clickthrough", (url) => { clickthrough = url; });
    tracker.trackImpression();
    tracker.trackImpression();  // a player calling it twice: vast-client sends it once
    const ticks = Math.round(until / step);
    for (let i = 1; i <= ticks; i++) {
        const playhead = Math.round(i * step * 1000) / 1000;
        tracker.setProgress(playhead);
        if (pauses.includes(playhead)) { tracker.setPaused(true); tracker.setPaused(false); }
        if (mutes.includes(playhead)) tracker.setMuted(!tracker.muted);
        if (playhead === clickAt) tracker.click();
    }
    for (let i = 0; i < complete; i++) tracker.complete();
    for (const code of errors) tracker.error(code === null ? {} : { ERRORCODE: code });
    return { trackerErrors, clickthrough };
}"""


@pytest.fixture
def player(tracker: Tracker, browser: Any) -> Iterator[tuple[Any, str]]:
    assert VAST_CLIENT.exists(), f"no {VAST_CLIENT}: scripts/build-tag installs it (npm ci of tag/package-lock.json)"
    imp = f"imp-{uuid.uuid4().hex[:10]}"
    site = StaticSite(
        {
            "/": ("text/html; charset=utf-8", PLAYER_PAGE),
            "/vast-client.js": ("text/javascript", VAST_CLIENT.read_bytes()),
            "/vast.xml": ("application/xml", vast_document(tracker, imp).encode()),
        }
    )
    context = browser.new_context(user_agent=CHROME_UA)
    page = context.new_page()
    page.goto(site.origin + "/")
    page.wait_for_function("window.vast !== undefined")
    yield page, imp
    context.close()
    site.close()


class Pixels:
    """Every request the browser sent to the tracker, and the status of its answer once it has one."""

    def __init__(self, page: Any, tracker: Tracker) -> None:
        self.prefix = f"http://127.0.0.1:{tracker.port}/"
        self.sent: list[Any] = []
        self.answered: dict[int, int] = {}
        self.failed: list[str] = []
        page.on("request", self._request)
        page.on("requestfinished", self._answer)
        page.on("requestfailed", lambda request: self.failed.append(request.url))

    def _request(self, request: Any) -> None:
        if request.url.startswith(self.prefix):
            self.sent.append(request)

    def _answer(self, request: Any) -> None:
        if request.url.startswith(self.prefix):
            response = request.response()
            self.answered[id(request)] = response.status if response else 0

    def settle(self, page: Any) -> None:
        deadline = time.monotonic() + 10
        while len(self.answered) + len(self.failed) < len(self.sent):
            assert time.monotonic() < deadline, "pixels left unanswered"
            page.wait_for_timeout(50)
        assert not self.failed, self.failed

    def queries(self) -> list[dict[str, str]]:
        return [{k: v[0] for k, v in parse_qs(urlsplit(r.url).query).items()} for r in self.sent]


def named(events: list[Event], ev: str) -> list[Event]:
    return [event for event in events if event.dims["ev"] == ev]


def play(page: Any, **options: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {"pauses": [], "mutes": [], "clickAt": None, "complete": 0, "errors": []}
    result: dict[str, Any] = page.evaluate(PLAY, {**defaults, **options})
    return result


def test_a_play_by_vast_client_in_chromium(player: tuple[Any, str], tracker: Tracker) -> None:
    page, imp = player
    pixels = Pixels(page, tracker)
    started = int(time.time() * 1000)
    # The viewer pauses at 3 s and 7 s, mutes at 4 s and unmutes at 6 s, clicks at 8 s; the player calls complete()
    # twice at the end (on `ended` and on its own teardown), then reports a media error and an unexplained one.
    result = play(
        page,
        step=0.25,
        until=DURATION_S,
        pauses=[3, 7],
        mutes=[4, 6],
        clickAt=8,
        complete=2,
        errors=["405", None],
    )
    assert result == {"trackerErrors": [], "clickthrough": "https://example.com/summer-sale"}
    pixels.settle(page)
    sent = pixels.queries()
    # What vast-client sent: its macros' formats (the browser leaves [ and ] unencoded in the query).
    impression = next(query for query in sent if query["ev"] == "impression")
    assert (impression["t"], impression["ifa"]) == ("-1", "-1")  # no playhead yet; no value for [IFA]
    assert re.fullmatch(r"\d{8}", impression["cb"]) and re.fullmatch(
        r"\d{4}-\d\d-\d\dT[\d:]{8}\.\d{3}Z", impression["ts"]
    )
    pause = next(query for query in sent if query["ev"] == "pause")
    assert pause["t"] == "00:00:03.000"
    assert [(q["code"], q["reason"]) for q in sent if q["ev"] == "error"] == [
        ("405", "[REASON]"),
        ("[ERRORCODE]", "[REASON]"),
    ]
    assert [q["pos"] for q in sent if q["ev"] == "clickTracking"] == ["-1"]
    assert sorted(set(pixels.answered.values())) == [200]  # no pixel refused
    events = tracker.wait_events(len(sent))
    assert len(events) == len(sent)
    ended = int(time.time() * 1000)
    assert all(event.dims["imp"] == imp and event.dims["cid"] == "summer-sale" for event in events)
    assert all("cb" not in event.dims for event in events)
    assert all(r.method == "GET" and r.resource_type == "image" for r in pixels.sent)  # new Image().src
    # [TIMESTAMP]: the browser's clock, ISO 8601 in UTC
    stamps = [event.metrics["client_ts"] for event in events if "client_ts" in event.metrics]
    assert len(stamps) == sum("ts" in query for query in sent) > 0
    assert all(started - 1000 <= stamp <= ended + 1000 for stamp in stamps)

    # Once per impression: the impression, start, each quartile (complete fired twice, one id).
    for once in ("impression", "creativeView", "start", "firstQuartile", "midpoint", "thirdQuartile"):
        assert len(named(events, once)) == 1, once
    completes = named(events, "complete")
    assert len(completes) == 2 and completes[0].id == completes[1].id
    # Offsets: vast-client reports the playhead of the previous setProgress call, as a timecode.
    playheads = {ev: named(events, ev)[0].metrics.get("t") for ev in ("start", "firstQuartile", "midpoint")}
    assert playheads == {"start": None, "firstQuartile": 2.25, "midpoint": 4.75}
    pauses = named(events, "pause")
    assert sorted(p.metrics["t"] for p in pauses) == [3.0, 7.0] and len({p.id for p in pauses}) == 2
    assert len({r.id for r in named(events, "resume")}) == 2
    mutes = named(events, "mute") + named(events, "unmute")
    assert len(mutes) == 2 and all("t" not in m.metrics for m in mutes)  # [CONTENTPLAYHEAD]: -1, absent
    progress = named(events, "progress")
    assert sorted(p.metrics["t"] for p in progress) == [1.75, 4.75, 7.25]
    assert len({p.id for p in progress}) == 3
    (click,) = named(events, "clickTracking")
    assert click.metrics["t"] == 8.0
    errors = named(events, "error")
    # [ERRORCODE] left as written: absent. Two pixels sent at once on two connections: logged in either order.
    assert sorted([e.dims.get("code") for e in errors], key=str) == ["405", None]
    assert all("invalid" not in event.dims for event in events)
    # Watch time: each quartile proves its share of the ad was played, though the playhead it carries is a tick
    # behind; a rollup of this full view counts the whole ad.
    watched = {ev: named(events, ev)[0].metrics["watch_ms"] for ev in QUARTILES}
    assert watched == {"firstQuartile": 2500, "midpoint": 5000, "thirdQuartile": 7500, "complete": 10_000}
    assert watch_time_ms(events) == DURATION_S * 1000

    # The same ad played again (the player rebuilt after a stall, the page reloaded from cache) with timeupdates
    # at another pace: every once-per-impression event and every progress offset keeps its id; the new pause counts.
    first = {event.id for event in events}
    play(page, step=0.3, until=DURATION_S, pauses=[4.2], complete=1)
    pixels.settle(page)
    assert sorted(set(pixels.answered.values())) == [200]
    replayed = tracker.wait_events(len(pixels.sent))[len(events) :]
    assert len(replayed) == len(pixels.sent) - len(sent)
    new = {event.dims["ev"] for event in replayed if event.id not in first}
    assert new == {"pause", "resume"}, [(e.dims["ev"], e.metrics) for e in replayed if e.id not in first]
    assert watch_time_ms(events + replayed) == DURATION_S * 1000


def watch_time_ms(events: list[Event]) -> int:
    """The rollup's watch time of these events, each id counted once (as the rollup collector counts them)."""
    unique = {event.id: event for event in events}
    return sum(counters(event, "video")[1 + COUNTERS.index("watch_time_ms")] for event in unique.values())
