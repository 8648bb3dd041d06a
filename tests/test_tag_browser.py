"""tp.js in a real browser (headless chromium): a shop's pages on one origin load the tag from the tracker on another,
send page views and custom events after consent only, attribute a conversion to a click through the tracker's
redirect by the tag alone, honour GPC, retry through an outage, and deliver what is still queued as the page closes.
Every event is checked in the tracker's log.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import yaml

from conftest import CHROME_UA, StaticSite, Tracker
from test_consent import TC_FULL, TC_NO_PURPOSES, TC_RANGE
from trackpoint.event import Event
from trackpoint.tag import built_tag, released_tags

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "web-tag.yaml"
# The IAB Tech Lab's CMP API (@iabtechlabtcf/cmpapi) and stub, as a CMP ships them: tag/package-lock.json, installed
# by scripts/build-tag.
NODE = ROOT / ".venv" / "node"
BATCH = 'data-event-batch="/t/event/batch"'  # custom events go in batches, as the example's snippet says
TAG = built_tag()


@pytest.fixture
def site() -> Iterator[StaticSite]:
    shop = StaticSite()
    yield shop
    shop.close()


def shop_config(site: StaticSite) -> dict[str, Any]:
    """examples/web-tag.yaml as it is, but for the shop's local origin (no cookie domain: the shop is 127.0.0.1), and
    custom events recording how the browser sent them (`Sec-Fetch-Mode`: `cors` for fetch, `no-cors` for a beacon)."""
    config: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    for spec in config["event_types"].values():
        response = spec["response"] = dict(spec["response"])  # the example shares one response (a YAML anchor)
        if "cors" in response:
            response["cors"] = {**response["cors"], "allow_origins": [site.origin]}
            response["user_id_cookie"] = {"name": "tp_uid", "max_age_days": 390}
    config["event_types"]["click"]["response"]["allow_hosts"] = ["127.0.0.1"]
    config["event_types"]["custom_event"]["fields"]["mode"] = {"source": "header", "name": "Sec-Fetch-Mode"}
    return config


@pytest.fixture
def shop_tracker(tracker_factory: Any, site: StaticSite) -> Tracker:
    tracker: Tracker = tracker_factory(shop_config(site))
    return tracker


def page_html(
    tracker: Tracker, body: str = "", script: str = "", attributes: str = f'data-consent="required" {BATCH}'
) -> str:
    """A page of the shop: the async snippet, the tag pinned by its integrity hash, and the site's own calls. The
    site's consent banner is simulated: it remembers the visitor's choice and tells the tag on every page."""
    src = f"http://127.0.0.1:{tracker.port}/tp/{TAG.version}/tp.js"
    return f"""<!doctype html><html><head><title>Shop page</title>
<script>window.tp=window.tp||function(){{(tp.q=tp.q||[]).push(arguments)}};
if (localStorage.getItem("site_consent") === "yes") tp("consent", "granted");
tp("page");{script}</script>
<script async src="{src}" integrity="{TAG.integrity}" crossorigin="anonymous" {attributes}></script>
</head><body>{body}</body></html>"""


def wait_events(
    tracker: Tracker, wanted: Callable[[Event], bool], count: int, what: str, page: Any = None
) -> list[Event]:
    """Polls the log; with a `page`, through Playwright's own wait, so that its route handlers keep running."""
    deadline = time.monotonic() + 15
    while True:
        found = [event for event in tracker.events() if wanted(event)]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {count} {what}; have {found}"
        if page is None:
            time.sleep(0.05)
        else:
            page.wait_for_timeout(50)


def send_sentinel(page: Any, tracker: Tracker) -> None:
    """An event the page sends itself, well after the tag would have sent (its batches leave after half a second),
    and waits for: once it is in the log, anything the tag had sent would be too."""
    page.evaluate(f"""async () => {{
        await new Promise((resolve) => setTimeout(resolve, 1500));
        await fetch("http://127.0.0.1:{tracker.port}/t/event", {{method: "POST", body: JSON.stringify(
            {{name: "sentinel", url: location.href}})}});
    }}""")
    wait_events(tracker, lambda e: e.dims.get("name") == "sentinel", 1, "the sentinel")


def with_url(url: str) -> Callable[[Event], bool]:
    return lambda event: event.dims.get("url", "").startswith(url)


def test_consent_events_click_attribution_and_the_beacon(browser: Any, site: StaticSite, shop_tracker: Tracker) -> None:
    tracker = shop_tracker
    imp = f"imp-{uuid.uuid4().hex[:10]}"
    landing = f"{site.origin}/landing"
    ad = f"http://127.0.0.1:{tracker.port}/c?imp={imp}&cid=summer-sale&crid=banner&url={quote(landing, safe='')}"
    site.files["/"] = page_html(
        tracker,
        body=f'<a id="ad" href="{ad}">Summer sale</a>',
        script='tp("event", "view_item", {category: "shoes", value: 49.9, cur: "EUR"});',
    )
    site.files["/landing"] = page_html(tracker)
    site.files["/thanks"] = page_html(
        tracker, script='tp("conversion", {order_id: "A-1001", value: 49.9, cur: "EUR"});'
    )
    site.files["/leaving"] = page_html(
        tracker,
        script='tp("event", "scroll", {label: "25"}); tp("event", "scroll", {label: "50"});',
        attributes=f'data-consent="required" {BATCH} data-batch-ms="600000"',  # nothing leaves before the page does
    )
    context = browser.new_context(user_agent=CHROME_UA)
    posts: list[str] = []  # every event the page sends to the tracker
    context.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    page = context.new_page()

    # Before consent: the tag loads (its integrity checked), the page view and the event wait in memory, unsent,
    # and nothing is stored on the device.
    page.goto(site.origin + "/")
    page.wait_for_function("window.tp && window.tp.version")
    assert page.evaluate("window.tp.version") == TAG.version
    assert page.evaluate("[sessionStorage.getItem('tp_q'), localStorage.getItem('tp_click')]") == [None, None]
    send_sentinel(page, tracker)
    assert [event.dims["name"] for event in tracker.events()] == ["sentinel"]
    assert posts == [f"http://127.0.0.1:{tracker.port}/t/event"]  # the sentinel's only
    granted_at = time.time()
    page.evaluate('localStorage.setItem("site_consent", "yes"); tp("consent", "granted")')
    views = wait_events(
        tracker,
        lambda e: with_url(site.origin + "/")(e) and e.dims.get("name") != "sentinel",
        2,
        "the first page's",
        page,  # Playwright's wait: the request events reach `posts`
    )
    assert all(event.ts >= int(granted_at * 1000) - 5 for event in views)  # recorded after the consent call
    view = next(event for event in views if event.type == "pageview")
    event = next(event for event in views if event.type == "custom_event")
    assert view.dims["title"] == "Shop page"
    assert view.dims["consent"] == "not_applicable"
    assert event.dims["name"] == "view_item" and event.dims["category"] == "shoes"
    assert event.metrics["value"] == 49_900_000 and event.dims["cur"] == "EUR"
    assert event.dims["mode"] == "cors"  # sent by fetch while the page lived
    assert f"http://127.0.0.1:{tracker.port}/t/event/batch" in posts  # in a batch
    assert view.dims["eid"] != event.dims["eid"]
    assert view.dims["uid"].startswith("auto:")  # the user id cookie, pseudonymised

    # The ad click goes through the tracker's redirect; the landing page's tag keeps the click id first party.
    page.click("#ad")
    page.wait_for_url(landing + "?tp_click=*")
    click_id = page.evaluate("new URLSearchParams(location.search).get('tp_click')")
    clicks = wait_events(tracker, lambda e: e.type == "click" and e.dims["imp"] == imp, 1, "click")
    assert clicks[0].dims["click_id"] == click_id
    landed = wait_events(tracker, with_url(landing), 1, "landing page view")[0]
    assert landed.dims["url"] == landing  # the click id is not spread in the URLs the tag reports
    page.wait_for_function("localStorage.getItem('tp_click') !== null")

    # Later, on another page without the click id in its URL: the conversion is attributed by the tag alone.
    page.goto(site.origin + "/thanks")
    conversion = wait_events(tracker, lambda e: e.type == "conversion", 1, "conversion")[0]
    assert conversion.dims["click_id"] == click_id
    assert conversion.dims["attribution"] == "attributed"
    assert (conversion.dims["click_imp"], conversion.dims["click_cid"]) == (imp, "summer-sale")
    assert conversion.dims["order_id"] == "A-1001" and conversion.metrics["value"] == 49_900_000

    # A page whose events are still queued when it closes: they leave with sendBeacon.
    page.goto(site.origin + "/leaving")
    page.wait_for_function("JSON.parse(sessionStorage.getItem('tp_q') || '[]').length === 3")
    page.close(run_before_unload=True)
    left = wait_events(tracker, with_url(site.origin + "/leaving"), 3, "events queued at close")
    scrolls = [event for event in left if event.type == "custom_event"]
    assert sorted(event.dims["label"] for event in scrolls) == ["25", "50"]
    assert {event.dims["mode"] for event in scrolls} == {"no-cors"}  # a beacon, not a fetch
    context.close()


def click_id_for(tracker: Tracker, site: StaticSite) -> str:
    """A real click id: what the tracker's redirect appends to the landing page."""
    landing = quote(f"{site.origin}/landing", safe="")
    status, headers, _ = tracker.get(f"/c?imp=imp-{uuid.uuid4().hex[:10]}&cid=summer-sale&url={landing}")
    assert status == 302
    return str(parse_qs(urlsplit(headers["location"]).query)["tp_click"][0])


def test_gpc_sends_nothing_identifying(browser: Any, site: StaticSite, shop_tracker: Tracker) -> None:
    tracker = shop_tracker
    click_id = click_id_for(tracker, site)
    site.files["/landing"] = page_html(tracker, script='tp("conversion", {order_id: "G-1", value: 10});')
    # A browser with Global Privacy Control on: the property for the tag, the header for the tracker.
    context = browser.new_context(user_agent=CHROME_UA, extra_http_headers={"Sec-GPC": "1"})
    context.add_init_script("Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true})")
    cookies: list[str | None] = []
    context.on("request", lambda r: cookies.append(r.headers.get("cookie")) if r.method == "POST" else None)
    page = context.new_page()
    page.goto(f"{site.origin}/landing?tp_click={click_id}")
    page.wait_for_function("window.tp && window.tp.version")
    page.evaluate('tp("consent", "granted")')  # even with consent, GPC keeps the identifiers out
    view = wait_events(tracker, lambda e: e.type == "pageview", 1, "page view")[0]
    conversion = wait_events(tracker, lambda e: e.type == "conversion", 1, "conversion")[0]
    assert (view.dims["consent"], view.dims["consent_reason"]) == ("denied", "gpc")
    assert "uid" not in view.dims and view.ctx.ip is None
    assert view.dims["url"] == f"{site.origin}/landing"  # not even in the URL
    assert "click_id" not in conversion.dims and conversion.dims["attribution"] == "unattributed"
    assert conversion.dims["order_id"] == "G-1"
    assert page.evaluate("localStorage.getItem('tp_click')") is None  # nothing kept on the device
    assert cookies and set(cookies) == {None}  # sent without credentials
    context.close()


def test_a_tcf_cmp_decides_consent_and_its_string_is_passed(
    browser: Any, site: StaticSite, shop_tracker: Tracker
) -> None:
    tracker = shop_tracker
    # The page's CMP (IAB TCF v2): the tag waits for its `tcloaded` before it sends anything.
    cmp = f"""window.__tcfapi = (command, version, callback) => setTimeout(() => callback({{
        eventStatus: "tcloaded", gdprApplies: true, tcString: "{TC_RANGE}", purpose: {{consents: {{1: true}}}}}}, true),
        50);"""
    site.files["/cmp"] = page_html(tracker, script=cmp)
    context = browser.new_context(user_agent=CHROME_UA)
    page = context.new_page()
    page.goto(f"{site.origin}/cmp")
    view = wait_events(tracker, lambda e: e.type == "pageview", 1, "page view")[0]
    assert view.dims["consent"] == "granted"  # decided by the tracker from the TC string the tag passed
    assert view.dims["uid"].startswith("auto:")
    context.close()


def bundled_cmp(package: str, name: str) -> bytes:
    """A CMP package's CmpApi bundled for a page as a CMP bundles it: window[name]."""
    modules = NODE / "node_modules"
    if not (modules / package).is_dir():
        pytest.fail(f"{package} is not installed: run scripts/build-tag (npm ci from tag/package-lock.json)")
    return subprocess.run(
        [str(modules / ".bin" / "esbuild"), "--bundle", "--format=iife", "--log-level=warning"],
        input=f'import {{ CmpApi }} from "{package}"; window.{name} = CmpApi;'.encode(),
        cwd=NODE,
        capture_output=True,
        check=True,
    ).stdout


@pytest.fixture(scope="module")
def iab_cmp() -> dict[str, tuple[str, bytes]]:
    """The IAB's stub (first in the page's head, as the TCF asks of CMPs) and its CmpApi, bundled for the page as a
    CMP bundles it (window.IabCmpApi)."""
    bundle = bundled_cmp("@iabtechlabtcf/cmpapi", "IabCmpApi")
    stub = (NODE / "node_modules" / "@iabtechlabtcf" / "stub" / "lib" / "stub.js").read_bytes()
    return {"/stub.js": ("text/javascript", stub), "/cmp.js": ("text/javascript", bundle)}


def cmp_page(tracker: Tracker, script: str = "", attributes: str = "") -> str:
    """A page with the IAB's stub first, the tag's snippet (with `attributes` besides data-consent) and a page view,
    then the CMP itself (window.cmp), which the test drives as a consent banner would: `cmp.update(tcString,
    uiVisible)`."""
    src = f"http://127.0.0.1:{tracker.port}/tp/{TAG.version}/tp.js"
    return f"""<!doctype html><html><head><title>Shop page</title>
<script src="/stub.js"></script>
<script>window.tp=window.tp||function(){{(tp.q=tp.q||[]).push(arguments)}}; tp("page");{script}</script>
<script async src="{src}" integrity="{TAG.integrity}" crossorigin="anonymous" data-consent="required" {BATCH}
 {attributes}></script>
<script src="/cmp.js"></script>
<script>window.cmp = new IabCmpApi(300, 2, true);</script>
</head><body></body></html>"""


def test_the_iab_cmp_api_decides_and_its_string_is_passed(
    browser: Any, site: StaticSite, shop_tracker: Tracker, iab_cmp: dict[str, tuple[str, bytes]]
) -> None:
    tracker = shop_tracker
    site.files.update(iab_cmp)
    site.files["/banner"] = site.files["/rejects"] = site.files["/outside"] = cmp_page(tracker)
    context = browser.new_context(user_agent=CHROME_UA)
    page = context.new_page()

    # The banner is up (`cmpuishown`): nothing leaves. The visitor accepts (`useractioncomplete`): the page view
    # goes with the CMP's string, and the tracker grants from it.
    page.goto(f"{site.origin}/banner")
    page.wait_for_function("window.tp && window.tp.version && window.cmp")
    page.evaluate("cmp.update('', true)")
    send_sentinel(page, tracker)
    assert [event.type for event in tracker.events()] == ["custom_event"]  # the sentinel
    page.evaluate(f"cmp.update('{TC_RANGE}', false)")
    view = wait_events(tracker, lambda e: e.type == "pageview", 1, "page view", page)[0]
    assert (view.dims["consent"], view.dims["consent_reason"]) == ("granted", "tcf")
    assert view.dims["uid"].startswith("auto:") and view.ctx.ip is not None
    # A later withdrawal (the CMP's new string has no purpose 1): the tag sends nothing more, stores nothing.
    page.evaluate(f"cmp.update('{TC_NO_PURPOSES}', false); tp('event', 'after_withdrawal')")

    # Another visitor rejects everything: nothing is sent.
    other = context.new_page()
    other.goto(f"{site.origin}/rejects")
    other.wait_for_function("window.tp && window.tp.version && window.cmp")
    other.evaluate(f"cmp.update('', true); cmp.update('{TC_NO_PURPOSES}', false); tp('event', 'rejected')")
    send_sentinel(other, tracker)
    names = [event.dims.get("name") for event in tracker.events() if event.type == "custom_event"]
    assert names == ["sentinel", "sentinel"]
    assert other.evaluate("[sessionStorage.getItem('tp_q'), localStorage.getItem('tp_click')]") == [None, None]
    assert len([event for event in tracker.events() if event.type == "pageview"]) == 1

    # Outside the GDPR (the CMP says so: `update(null)`, `tcloaded`): sent, and recorded as not applicable.
    outside = context.new_page()
    outside.goto(f"{site.origin}/outside")
    outside.wait_for_function("window.tp && window.tp.version && window.cmp")
    outside.evaluate("cmp.update(null)")
    views = wait_events(tracker, lambda e: e.type == "pageview", 2, "page views", outside)
    assert views[1].dims["consent"] == "not_applicable" and views[1].dims["uid"].startswith("auto:")
    context.close()


# The visitor gave the publisher its own consent to purpose 1 (a publisher TC segment made with the IAB's encoder,
# @iabtechlabtcf/core) and the vendors no purpose at all.
TC_PUBLISHER_ONLY = f"{TC_NO_PURPOSES}.cAAAAAAAAAAA"


def test_a_first_party_site_decides_on_the_publishers_own_consent(
    browser: Any,
    site: StaticSite,
    tracker_factory: Any,
    iab_cmp: dict[str, tuple[str, bytes]],
    iab_gpp_cmp: dict[str, tuple[str, bytes]],
) -> None:
    """`data-tcf-consent="publisher"` and `tcf_consent_from: publisher`: the tag and the tracker both read the
    publisher's own consent, which a first-party site asks its CMP for, and not the vendors', from a TCF CMP and
    from a GPP CMP's TCF EU section."""
    config = shop_config(site)
    config["preprocessors"]["check_consent"]["tcf_consent_from"] = "publisher"
    tracker: Tracker = tracker_factory(config)
    site.files.update({**iab_cmp, "/gpp-cmp.js": iab_gpp_cmp["/gpp-cmp.js"]})
    site.files["/first-party"] = cmp_page(tracker, attributes='data-tcf-consent="publisher"')
    site.files["/vendors"] = cmp_page(tracker)
    site.files["/gpp-first-party"] = gpp_page(tracker, attributes='data-tcf-consent="publisher"')
    context = browser.new_context(user_agent=CHROME_UA)
    page = context.new_page()
    page.goto(f"{site.origin}/first-party")
    page.wait_for_function("window.tp && window.tp.version && window.cmp")
    page.evaluate(f"cmp.update('{TC_PUBLISHER_ONLY}', false)")
    view = wait_events(tracker, lambda e: e.type == "pageview", 1, "page view", page)[0]
    assert (view.dims["consent"], view.dims["consent_reason"]) == ("granted", "tcf")
    assert view.dims["uid"].startswith("auto:") and view.ctx.ip is not None
    # A tag left reading the vendors' consent holds the same visitor's page view: they gave the vendors none.
    other = context.new_page()
    other.goto(f"{site.origin}/vendors")
    other.wait_for_function("window.tp && window.tp.version && window.cmp")
    other.evaluate(f"cmp.update('{TC_PUBLISHER_ONLY}', false)")
    send_sentinel(other, tracker)
    assert len([event for event in tracker.events() if event.type == "pageview"]) == 1
    # The tracker's side on its own: the vendors' consent without the publisher's denies, and keeps nothing personal.
    body = {"name": "direct", "url": f"{site.origin}/direct", "gdpr": 1, "gdpr_consent": TC_RANGE}
    headers = {"Content-Type": "text/plain"}  # as the tag sends it
    status, _, _ = tracker.request("POST", "/t/event", body=json.dumps(body).encode(), headers=headers)
    assert status == 204
    direct = wait_events(tracker, lambda e: e.dims.get("name") == "direct", 1, "the direct event")[0]
    assert (direct.dims["consent"], direct.dims["consent_reason"]) == ("denied", "tcf_publisher")
    assert direct.ctx.ip is None
    # A GPP CMP whose TCF EU section holds the publisher's consent to purpose 1 and none for the vendors.
    eu = context.new_page()
    eu.goto(f"{site.origin}/gpp-first-party")
    eu.wait_for_function("window.tp && window.tp.version && window.gppCmp")
    purposes = {"PurposeConsents": [False] * 24, "PublisherConsents": [True] + [False] * 23}
    set_gpp(eu, "tcfeuv2", 2, {"CmpId": 300, "CmpVersion": 1, "VendorListVersion": 50, **purposes})
    views = wait_events(tracker, lambda e: e.type == "pageview", 2, "page views", eu)
    assert (views[1].dims["consent"], views[1].dims["consent_reason"]) == ("granted", "tcf")
    assert views[1].dims["uid"].startswith("auto:")
    context.close()


def test_the_tag_asks_a_cmp_for_every_purpose_the_site_names(
    browser: Any,
    site: StaticSite,
    tracker_factory: Any,
    iab_cmp: dict[str, tuple[str, bytes]],
    iab_gpp_cmp: dict[str, tuple[str, bytes]],
) -> None:
    """`data-tcf-purposes="1,4"` (the tracker's `tcf_purposes: [1, 4]`): a CMP's answer counts as consent only with
    every purpose listed, from a TCF CMP and from a GPP CMP's TCF EU section; a list that is not purpose ids never
    counts as consent, and says so on the console."""
    config = shop_config(site)
    config["preprocessors"]["check_consent"]["tcf_purposes"] = [1, 4]
    tracker: Tracker = tracker_factory(config)
    site.files.update({**iab_cmp, "/gpp-cmp.js": iab_gpp_cmp["/gpp-cmp.js"]})
    wanted = 'data-tcf-purposes="1,4"'
    site.files["/short"] = site.files["/both"] = cmp_page(tracker, attributes=wanted)
    site.files["/typo"] = cmp_page(tracker, attributes='data-tcf-purposes="1;4"')
    site.files["/gpp-short"] = site.files["/gpp-both"] = gpp_page(tracker, attributes=wanted)
    gpp_fields = {"CmpId": 300, "CmpVersion": 1, "VendorListVersion": 50}
    context = browser.new_context(user_agent=CHROME_UA)
    errors: list[str] = []

    def opened(path: str, ready: str) -> Any:
        page = context.new_page()
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.goto(f"{site.origin}{path}")
        page.wait_for_function(f"window.tp && window.tp.version && window.{ready}")
        return page

    # Purposes 1, 3, 6, 7, 8, 10: not 4. Nothing leaves.
    opened("/short", "cmp").evaluate(f"cmp.update('{TC_FULL}', false)")
    # Purposes 1, 3, 4, 7, but the list the site wrote is not one: nothing leaves either.
    opened("/typo", "cmp").evaluate(f"cmp.update('{TC_RANGE}', false)")
    # A GPP CMP's TCF EU section with purpose 1 alone.
    gpp_short = opened("/gpp-short", "gppCmp")
    set_gpp(gpp_short, "tcfeuv2", 2, {**gpp_fields, "PurposeConsents": [True] + [False] * 23})
    send_sentinel(gpp_short, tracker)
    assert [event.type for event in tracker.events()] == ["custom_event"]  # the sentinel alone
    assert any("tcfPurposes" in error for error in errors)

    # Both purposes, from either CMP: the page views go, and the tracker, asking for the same, grants.
    opened("/both", "cmp").evaluate(f"cmp.update('{TC_RANGE}', false)")
    gpp_both = opened("/gpp-both", "gppCmp")
    both = [True, False, False, True] + [False] * 20
    set_gpp(gpp_both, "tcfeuv2", 2, {**gpp_fields, "PurposeConsents": both})
    views = wait_events(tracker, lambda e: e.type == "pageview", 2, "page views", gpp_both)
    assert sorted(view.dims["url"].rpartition("/")[2] for view in views) == ["both", "gpp-both"]
    assert {(view.dims["consent"], view.dims["consent_reason"]) for view in views} == {("granted", "tcf")}
    context.close()


# The stub of the IAB GPP CMP API 1.1 specification, as a CMP puts it first in the page's head: it answers `ping` and
# `addEventListener` as `stub` / `not ready`, and keeps the calls and the listeners for the CMP (its `queue` and
# `events`, which @iabgpp/cmpapi takes over as it loads).
GPP_STUB = """window.__gpp = function () {
  var args = arguments, gpp = window.__gpp;
  gpp.queue = gpp.queue || []; gpp.events = gpp.events || [];
  if (!args.length || (args.length === 1 && args[0] === "queue")) return gpp.queue;
  if (args.length === 1 && args[0] === "events") return gpp.events;
  var command = args[0], callback = args.length > 1 ? args[1] : null, parameter = args.length > 2 ? args[2] : null;
  var ping = {gppVersion: "1.1", cmpStatus: "stub", cmpDisplayStatus: "hidden", signalStatus: "not ready",
              supportedAPIs: [], cmpId: 0, sectionList: [], applicableSections: [], gppString: "", parsedSections: {}};
  if (command === "ping") { callback(ping, true); return; }
  if (command === "addEventListener") {
    gpp.lastId = (gpp.lastId || 0) + 1;
    gpp.events.push({id: gpp.lastId, callback: callback, parameter: parameter});
    callback({eventName: "listenerRegistered", listenerId: gpp.lastId, data: true, pingData: ping}, true);
    return;
  }
  if (command === "removeEventListener") {
    gpp.events = gpp.events.filter(function (e) { return e.id !== parameter; }); callback(true, true); return;
  }
  if (command === "hasSection" || command === "getSection" || command === "getField") { callback(null, false); return; }
  gpp.queue.push([].slice.apply(args));
};"""


@pytest.fixture(scope="module")
def iab_gpp_cmp() -> dict[str, tuple[str, bytes]]:
    """The IAB Tech Lab's GPP CmpApi (@iabgpp/cmpapi), bundled for the page as a CMP bundles it
    (window.IabGppCmpApi)."""
    return {"/gpp-cmp.js": ("text/javascript", bundled_cmp("@iabgpp/cmpapi", "IabGppCmpApi"))}


def gpp_page(tracker: Tracker, attributes: str = "") -> str:
    """A page with the GPP stub first, the tag's snippet (with `attributes` besides data-consent) and a page view,
    then the CMP itself (window.gppCmp), which the test drives as the CMP's banner would."""
    src = f"http://127.0.0.1:{tracker.port}/tp/{TAG.version}/tp.js"
    return f"""<!doctype html><html><head><title>Shop page</title>
<script>{GPP_STUB}</script>
<script>window.tp=window.tp||function(){{(tp.q=tp.q||[]).push(arguments)}}; tp("page");</script>
<script async src="{src}" integrity="{TAG.integrity}" crossorigin="anonymous" data-consent="required" {BATCH}
 {attributes}></script>
<script src="/gpp-cmp.js"></script>
<script>window.gppCmp = new IabGppCmpApi(300, 1);</script>
</head><body></body></html>"""


def set_gpp(page: Any, section: str, section_id: int, fields: dict[str, Any]) -> None:
    """What a GPP CMP does once the visitor has chosen: the section's fields, the sections that apply, `ready`."""
    page.evaluate(
        """([section, id, fields]) => {
            gppCmp.setSignalStatus("not ready");
            for (const [name, value] of Object.entries(fields)) gppCmp.setFieldValue(section, name, value);
            gppCmp.setApplicableSections([id]);
            gppCmp.setCmpStatus("loaded");
            gppCmp.setSignalStatus("ready");
        }""",
        [section, section_id, fields],
    )


def test_the_iab_gpp_cmp_api_is_waited_for_and_a_us_opt_out_keeps_identifiers_out(
    browser: Any, site: StaticSite, shop_tracker: Tracker, iab_gpp_cmp: dict[str, tuple[str, bytes]]
) -> None:
    """A site whose CMP speaks GPP only (no `__tcfapi`): the tag did not know it. With `data-consent="required"` it
    held every event for a `tp('consent')` that the CMP never calls; without, it sent no GPP string, so the tracker
    saw no opt-out and kept IP, User-Agent and a user id, and the tag kept the ad click's id. Now it waits for the
    CMP's signal, passes `gpp` and `gpp_sid`, and an opt-out of sale keeps every identifier out, as GPC does."""
    tracker = shop_tracker
    site.files.update(iab_gpp_cmp)
    site.files["/opted-out"] = site.files["/us"] = site.files["/ca"] = site.files["/eu"] = gpp_page(tracker)
    click_id = click_id_for(tracker, site)
    context = browser.new_context(user_agent=CHROME_UA)
    cookies: list[str | None] = []
    context.on("request", lambda r: cookies.append(r.headers.get("cookie")) if r.method == "POST" else None)

    # The CMP has not signalled yet: nothing leaves. Then the visitor opts out of the sale of their data.
    page = context.new_page()
    page.goto(f"{site.origin}/opted-out?tp_click={click_id}")
    page.wait_for_function("window.tp && window.tp.version && window.gppCmp")
    page.evaluate('tp("conversion", {order_id: "P-1", value: 10})')
    send_sentinel(page, tracker)
    assert [event.type for event in tracker.events() if event.type != "click"] == ["custom_event"]  # the sentinel
    set_gpp(page, "usnat", 7, {"SaleOptOutNotice": 1, "SaleOptOut": 1})
    view = wait_events(tracker, lambda e: e.type == "pageview", 1, "page view", page)[0]
    conversion = wait_events(tracker, lambda e: e.type == "conversion", 1, "conversion", page)[0]
    assert (view.dims["consent"], view.dims["consent_reason"]) == ("denied", "gpp_opt_out")
    assert "uid" not in view.dims and view.ctx.ip is None and view.ctx.ua is None
    assert "click_id" not in conversion.dims and conversion.dims["attribution"] == "unattributed"
    assert page.evaluate("localStorage.getItem('tp_click')") is None
    assert set(cookies[1:]) == {None}  # the sentinel aside, sent without credentials

    # A US visitor who did not opt out: the events go with the string, and with identifiers.
    us = context.new_page()
    us.goto(f"{site.origin}/us")
    us.wait_for_function("window.tp && window.tp.version && window.gppCmp")
    set_gpp(us, "usnat", 7, {"SaleOptOutNotice": 1, "SaleOptOut": 2})
    views = wait_events(tracker, lambda e: e.type == "pageview", 2, "page views", us)
    assert views[1].dims["consent"] == "not_applicable" and views[1].dims["uid"].startswith("auto:")
    assert views[1].ctx.ip is not None

    # The string also holds a US National opt-out, but only California's section applies (the visitor is there), and
    # it has none: the tag and the tracker read the applicable sections alone.
    ca = context.new_page()
    ca.goto(f"{site.origin}/ca?tp_click=click-ca")
    ca.wait_for_function("window.tp && window.tp.version && window.gppCmp")
    ca.evaluate('gppCmp.setFieldValue("usnat", "SaleOptOutNotice", 1); gppCmp.setFieldValue("usnat", "SaleOptOut", 1)')
    set_gpp(ca, "usca", 8, {"SaleOptOutNotice": 1, "SaleOptOut": 2})
    views = wait_events(tracker, lambda e: e.type == "pageview", 3, "page views", ca)
    assert views[2].dims["consent"] == "not_applicable" and views[2].dims["uid"].startswith("auto:")
    assert ca.evaluate("JSON.parse(localStorage.getItem('tp_click')).id") == "click-ca"  # kept: identifiers allowed

    # The GPP's TCF EU section applies: its purpose 1 decides for the tag, and its string for the tracker.
    eu = context.new_page()
    eu.goto(f"{site.origin}/eu")
    eu.wait_for_function("window.tp && window.tp.version && window.gppCmp")
    consents = [True] + [False] * 23
    set_gpp(eu, "tcfeuv2", 2, {"CmpId": 300, "CmpVersion": 1, "PurposeConsents": consents, "VendorListVersion": 50})
    views = wait_events(tracker, lambda e: e.type == "pageview", 4, "page views", eu)
    assert (views[3].dims["consent"], views[3].dims["consent_reason"]) == ("granted", "tcf")
    assert views[3].dims["uid"].startswith("auto:")
    context.close()


def test_a_gpp_cmp_with_malformed_data_does_not_hold_the_events(
    browser: Any, site: StaticSite, shop_tracker: Tracker
) -> None:
    """A broken CMP (sections not in a list, a null segment) must not throw inside the tag's listener: the events
    would wait for ever. They go, with the string the CMP gave, and the tracker decides on it."""
    tracker = shop_tracker
    cmp = """window.__gpp = (command, callback) => setTimeout(() => callback({eventName: "signalStatus", data: "ready",
        pingData: {signalStatus: "ready", cmpStatus: "loaded", gppString: "not-a-gpp-string", applicableSections: "7",
                   parsedSections: {usnat: [null, 3], tcfeuv2: "x"}}}, true), 50);"""
    site.files["/broken"] = page_html(tracker, script=cmp)
    context = browser.new_context(user_agent=CHROME_UA)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{site.origin}/broken")
    view = wait_events(tracker, lambda e: e.type == "pageview", 1, "page view", page)[0]
    assert view.dims["consent"] == "denied" and view.dims["consent_reason"] == "gpp_invalid"
    assert errors == []
    context.close()


def test_failed_sends_are_retried_and_an_outage_waits(browser: Any, site: StaticSite, shop_tracker: Tracker) -> None:
    tracker = shop_tracker
    site.files["/plain"] = page_html(tracker, attributes='data-batch-ms="0"')  # no consent banner on this site
    context = browser.new_context(user_agent=CHROME_UA)
    page = context.new_page()
    attempts: list[str] = []

    def fail_first(route: Any) -> None:
        attempts.append(route.request.post_data or "")
        if len(attempts) == 1:
            route.abort()  # the network fails once: retried after a backoff
        else:
            route.continue_()

    page.route("**/t/event", fail_first)
    page.goto(f"{site.origin}/plain?tp_click=click-1")
    assert page.evaluate("JSON.parse(localStorage.getItem('tp_click')).id") == "click-1"  # no banner: kept at once
    page.evaluate('tp("event", "retried")')
    retried = wait_events(tracker, lambda e: e.dims.get("name") == "retried", 1, "the retried event", page)
    assert len(attempts) == 2 and attempts[0] == attempts[1]  # the same event, with the same eid

    # Offline: the event waits (persisted for this tab) and leaves when the browser is back online.
    context.set_offline(True)
    page.evaluate('tp("event", "offline")')
    page.wait_for_function("JSON.parse(sessionStorage.getItem('tp_q') || '[]').length === 1")
    context.set_offline(False)
    wait_events(tracker, lambda e: e.dims.get("name") == "offline", 1, "the event sent once back online", page)
    page.wait_for_function("JSON.parse(sessionStorage.getItem('tp_q')).length === 0")
    events = [e for e in tracker.events() if e.type == "custom_event"]
    assert sorted(e.dims["name"] for e in events) == ["offline", "retried"]  # each once
    assert retried[0].dims["eid"] in attempts[0]
    context.close()


def test_denied_consent_sends_nothing(browser: Any, site: StaticSite, shop_tracker: Tracker) -> None:
    tracker = shop_tracker
    site.files["/landing"] = page_html(tracker, script='tp("event", "view_item");')
    context = browser.new_context(user_agent=CHROME_UA)
    page = context.new_page()
    page.goto(f"{site.origin}/landing?tp_click=click-2")
    page.wait_for_function("window.tp && window.tp.version")
    page.evaluate('tp("consent", "denied"); tp("conversion", {order_id: "D-1"})')
    send_sentinel(page, tracker)
    assert [event.dims["name"] for event in tracker.events()] == ["sentinel"]
    assert page.evaluate("[sessionStorage.getItem('tp_q'), localStorage.getItem('tp_click')]") == [None, None]
    context.close()


def test_a_batch_is_acknowledged_item_by_item(browser: Any, site: StaticSite, shop_tracker: Tracker) -> None:
    """A batch's answer lists the refused items: the accepted ones are done, a refused one is dropped (it would be
    refused again), not retried; a batch path the tracker does not have: the events go one request each."""
    tracker = shop_tracker
    long_name = "n" * 65  # over the type's max_len: refused with field_too_long
    site.files["/batch"] = page_html(
        tracker,
        script=f'tp("event", "first"); tp("event", "{long_name}"); tp("event", "third");'
        'tp("conversion", {order_id: "B-1", value: 5});',
        attributes=f'{BATCH} data-conversion-batch="/conv/batch" data-batch-ms="200"',  # /conv has no batch path
    )
    context = browser.new_context(user_agent=CHROME_UA)
    posts: list[str] = []
    context.on("request", lambda r: posts.append(urlsplit(r.url).path) if r.method == "POST" else None)
    page = context.new_page()
    page.goto(f"{site.origin}/batch")
    events = wait_events(tracker, lambda e: e.type == "custom_event", 2, "the batched events", page)
    conversion = wait_events(tracker, lambda e: e.type == "conversion", 1, "the conversion", page)[0]
    page.wait_for_function("JSON.parse(sessionStorage.getItem('tp_q')).length === 0")  # the refused one dropped
    assert sorted(event.dims["name"] for event in events) == ["first", "third"]
    assert posts.count("/t/event/batch") == 1 and "/t/event" not in posts  # one request for the three
    assert conversion.dims["order_id"] == "B-1"
    assert posts.count("/conv/batch") == 1 and posts.count("/conv") == 1  # 404: then one request each
    assert posts.count("/t/page") == 1  # page views have no batch path: one request each
    assert not [event for event in tracker.events() if event.dims.get("name") == long_name]
    context.close()


def test_items_refused_for_a_while_are_retried(browser: Any, site: StaticSite, tracker_factory: Any) -> None:
    """Items of a batch refused with a passing reason (here the type's rate limit, 429 rate_limited) are retried
    with backoff until they are accepted; each is recorded once."""
    config = shop_config(site)
    config["event_types"]["custom_event"]["rate_limit"] = {"rate_per_s": 2, "burst": 2, "action": "reject"}
    tracker = tracker_factory(config)
    names = [f"burst-{index}" for index in range(5)]
    calls = "".join(f'tp("event", "{name}");' for name in names)
    site.files["/burst"] = page_html(tracker, script=calls, attributes=f'{BATCH} data-batch-ms="0"')
    context = browser.new_context(user_agent=CHROME_UA)
    batches: list[str] = []
    context.on("request", lambda r: batches.append(r.post_data or "") if r.url.endswith("/t/event/batch") else None)
    page = context.new_page()
    page.goto(f"{site.origin}/burst")
    events = wait_events(tracker, lambda e: e.type == "custom_event", 5, "the five events", page)
    page.wait_for_function("JSON.parse(sessionStorage.getItem('tp_q')).length === 0")
    assert sorted(event.dims["name"] for event in events) == names  # each once
    assert len(batches) >= 2 and all(name in batches[0] for name in names)  # one batch, then the retries
    assert not any("burst-0" in batch for batch in batches[1:])  # an accepted item is not sent again
    context.close()


@pytest.mark.parametrize("version", [old.version for old in released_tags()])
def test_a_page_pinned_to_an_earlier_version_still_tracks(
    browser: Any, site: StaticSite, shop_tracker: Tracker, version: str
) -> None:
    """A page that pinned an earlier tag by its path and published integrity, as its snippet said at the time: the
    browser loads it (the integrity matches) and its events are recorded by this tracker."""
    tracker = shop_tracker
    old = {tag.version: tag for tag in released_tags()}[version]
    src = f"http://127.0.0.1:{tracker.port}/tp/{version}/tp.js"
    site.files["/pinned"] = f"""<!doctype html><html><head><title>Pinned</title>
<script>window.tp=window.tp||function(){{(tp.q=tp.q||[]).push(arguments)}};
tp("consent", "granted"); tp("page");</script>
<script async src="{src}" integrity="{old.integrity}" crossorigin="anonymous" data-consent="required"></script>
</head><body></body></html>"""
    context = browser.new_context(user_agent=CHROME_UA)
    page = context.new_page()
    page.goto(f"{site.origin}/pinned")
    page.wait_for_function("window.tp && window.tp.version", timeout=10_000)  # loaded: its integrity matched
    assert page.evaluate("window.tp.version") == version
    [event] = wait_events(tracker, with_url(f"{site.origin}/pinned"), 1, f"the page view of tp.js {version}", page)
    assert event.type == "pageview"
    context.close()
