"""The sample configurations in examples/ are documentation and test fixtures at once: every one passes
`trackpoint config check`, and the DSP and CDP samples run for real (a tracker started with the file as it is, only
its data directory, ports and Redis key prefix changed) against the requests an ad stack and a web page send.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import redis
import yaml
from typer.testing import CliRunner

from conftest import Tracker
from trackpoint.adtech.price import encrypt_price
from trackpoint.cli import app
from trackpoint.collectors.log.reader import read_events
from trackpoint.event import Event
from trackpoint.preprocessors.pseudonymize.config import PseudonymizeConfig
from trackpoint.preprocessors.pseudonymize.preprocessor import Pseudonymize
from trackpoint.security.postback_auth import sign_postback
from trackpoint.security.signing import sign_url

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
REDIS_URL = os.environ.get("TRACKPOINT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CURL_UA = "curl/8.5.0"


def example(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    assert "data_dir" not in document  # the tracker factory gives each test its own
    return document


def wait_for(condition: Any, what: str, timeout_s: float = 8.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


# The secrets the samples name: `config check` resolves every one of them, as `run` does.
EXAMPLE_SECRETS = {
    "TP_POSTBACK_ACME": secrets.token_hex(32),
    "ADX_ENCRYPTION_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    "ADX_INTEGRITY_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_passes_config_check(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in EXAMPLE_SECRETS.items():
        monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: ok" in result.output


def test_the_samples_are_listed_in_the_readme() -> None:
    readme = (EXAMPLES.parent / "README.md").read_text()
    for path in sorted(EXAMPLES.glob("*.yaml")):
        assert f"(examples/{path.name})" in readme, f"README does not link examples/{path.name}"


# --- the DSP ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def banker_prefix() -> Any:
    """A Redis key prefix of this test's own; every key under it is deleted afterwards."""
    prefix = f"test-examples-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def test_dsp_example_end_to_end(tracker_factory: Any, banker_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = example("dsp.yaml")
    banker = config["collectors"]["banker"]
    assert (banker["store"], banker["redis_url"]) == ("redis", "redis://127.0.0.1:6379/0")
    banker.update(redis_url=REDIS_URL, key_prefix=banker_prefix, flush_interval_ms=20)
    secret = secrets.token_hex(32)
    monkeypatch.setenv("TP_POSTBACK_ACME", secret)  # the tracker process inherits it
    tracker: Tracker = tracker_factory(config)
    status, _, _ = tracker.admin("PUT", "/banker/campaigns/summer-sale", b'{"total_budget_micros": 500000000}')
    assert status == 200
    imp, imp_eur, imp_lost = (f"{kind}-{uuid.uuid4().hex[:10]}" for kind in ("imp", "eur", "lost"))
    ad = "cid=summer-sale&crid=banner-300x250"

    # The ad is served: its pixel, then the exchange's win notice (sent twice: debited once), in USD and in EUR.
    status, _, pixel = tracker.get(f"/i?imp={imp}&{ad}&pub=news-site")
    assert (status, len(pixel)) == (200, 43)
    status, _, _ = tracker.get(f"/i?imp=bot-{imp}&{ad}", {"User-Agent": CURL_UA})
    assert status == 200  # answered like any other, recorded apart
    win = f"/win?imp={imp}&{ad}&price=2.35&cur=USD&auction=req-81&bid=bid-1&seat=${{AUCTION_SEAT_ID}}"
    for _ in range(2):
        assert tracker.get(tracker.sign(win))[0] == 204
    assert tracker.get(tracker.sign(f"/win?imp={imp_eur}&{ad}&price=1.00&cur=EUR"))[0] == 204
    status, headers, _ = tracker.get(tracker.sign(f"/win?imp=x-{imp}&{ad}&price=${{AUCTION_PRICE}}"))
    assert (status, headers["x-reject-reason"]) == (400, "price_macro_unsubstituted")
    assert tracker.get(tracker.sign(f"/bill?imp={imp}&{ad}&price=2.35&cur=USD"))[0] == 204
    assert tracker.get(f"/loss?imp={imp_lost}&{ad}&loss=102&price=3.10")[0] == 204

    # The video player fires its quartile (twice) with the playhead macro it did not expand.
    quartile = f"/v?imp={imp}&cid=summer-sale&ev=firstQuartile&dur=30&t=%5BADPLAYHEAD%5D&cb=%5BCACHEBUSTING%5D"
    for _ in range(2):
        assert tracker.get(quartile)[0] == 200

    # A click on a signed click URL (the ad server signs it, with the time it served the ad), then the advertiser's
    # signed postback with the click id its landing page received.
    served_ms = int(time.time() * 1000) - 5000
    key = (tracker.data_dir / "keys" / "signing.key").read_bytes().strip()
    landing = quote("https://landing.other-shop.example/summer?utm_source=dsp", safe="")
    click = sign_url(f"/c?imp={imp}&{ad}&its={served_ms}&url={landing}", "auto", key)
    status, headers, _ = tracker.get(click)
    clicked_at = time.monotonic()
    assert status == 302
    location = urlsplit(headers["location"])
    assert (location.netloc, location.path) == ("landing.other-shop.example", "/summer")
    click_id = parse_qs(location.query)["tp_click"][0]
    status, headers, _ = tracker.get(f"/c?imp=evil-{imp}&url=https%3A%2F%2Fevil.test%2F")  # unsigned, host not listed
    assert (status, headers["x-reject-reason"]) == (400, "redirect_not_allowed")

    body = json.dumps(
        {"adv": "acme", "click_id": click_id, "order_id": "A-1001", "value": 49.90, "cur": "EUR"}
    ).encode()
    json_type = {"Content-Type": "application/json"}
    status, headers, _ = tracker.request("POST", "/conv", body, json_type)
    assert (status, headers["x-reject-reason"]) == (401, "postback_auth_missing")
    forged = sign_postback(b"not-the-advertisers-secret", "", body)
    status, headers, _ = tracker.request("POST", "/conv", body, {**json_type, **forged})
    assert (status, headers["x-reject-reason"]) == (403, "postback_auth_invalid")
    time.sleep(max(0.0, clicked_at + 2.1 - time.monotonic()))  # past min_delay_ms: not flagged too_fast
    status, _, answer = tracker.request(
        "POST", "/conv", body, {**json_type, **sign_postback(secret.encode(), "", body)}
    )
    assert status == 200
    conversion_id = json.loads(answer)["id"]

    # The log: one id per impression, notice and quartile, however often each was sent.
    events = tracker.wait_events(11)
    by_type: dict[str, dict[str, Event]] = {}
    for event in events:
        by_type.setdefault(event.type, {})[event.id] = event
    assert {name: len(ids) for name, ids in by_type.items()} == {
        "impression": 1,
        "win": 2,
        "billing": 1,
        "loss": 1,
        "video": 1,
        "click": 2,  # the signed click and the refused one (recorded with its reason)
        "conversion": 1,
    }
    wins = {e.dims["imp"]: e for e in by_type["win"].values()}
    assert wins[imp].metrics["price"] == 2_350_000
    assert {k: wins[imp].dims.get(k) for k in ("cur", "auction", "bid", "seat")} == {
        "cur": "USD",
        "auction": "req-81",
        "bid": "bid-1",
        "seat": None,  # the exchange left ${AUCTION_SEAT_ID} unexpanded: absent, never stored
    }
    (video,) = by_type["video"].values()
    assert (video.dims["ev"], video.metrics["watch_ms"]) == ("firstQuartile", 7500)
    assert "t" not in video.metrics and "cb" not in video.dims
    (loss,) = by_type["loss"].values()
    assert (loss.dims["loss"], loss.metrics["price"]) == ("102", 3_100_000)
    clicked = next(e for e in by_type["click"].values() if e.dims["imp"] == imp)
    assert clicked.dims["click_id"] == click_id and "ivt" not in clicked.dims
    refused = next(e for e in by_type["click"].values() if e.dims["imp"] == f"evil-{imp}")
    assert refused.dims["redirect_rejected"] == "host_not_allowed"
    conversion = by_type["conversion"][conversion_id]
    assert conversion.dims["attribution"] == "attributed"
    assert (conversion.dims["click_imp"], conversion.dims["click_cid"]) == (imp, "summer-sale")
    assert (conversion.metrics["value"], conversion.dims["cur"]) == (49_900_000, "EUR")
    assert "ivt" not in conversion.dims and conversion.metrics["latency_ms"] >= 2000
    bots = list(read_events([tracker.data_dir / "ivt"]))
    assert [(e.type, e.dims["imp"], e.dims["ivt"]) for e in bots] == [("impression", f"bot-{imp}", "bot")]

    # The banker: 2.35 USD CPM → 2350 micros, 1.00 EUR CPM x 1.08 → 1080 micros; nothing for billing or the repeat.
    def spent() -> Any:
        _, _, payload = tracker.admin("GET", "/banker/campaigns/summer-sale")
        state = json.loads(payload)
        return state if state["spent_micros"] >= 3430 else None

    state = wait_for(spent, "the banker to debit both wins")
    assert (state["spent_micros"], state["debits"], state["remaining_micros"]) == (3430, 2, 500_000_000 - 3430)
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:  # what a bidder reads
        assert client.hget(f"{banker_prefix}:campaign:summer-sale", "spent_micros") == "3430"
    finally:
        client.close()


def test_dsp_wins_example_decrypts_prices_and_debits_them(
    tracker_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    encryption, integrity = os.urandom(32), os.urandom(32)
    monkeypatch.setenv("ADX_ENCRYPTION_KEY", base64.urlsafe_b64encode(encryption).decode())
    monkeypatch.setenv("ADX_INTEGRITY_KEY", base64.urlsafe_b64encode(integrity).decode())
    tracker: Tracker = tracker_factory(example("dsp-wins.yaml"))

    def token(micros: int, age_s: int = 0) -> str:
        iv = (int(time.time()) - age_s).to_bytes(4, "big") + os.urandom(12)
        return encrypt_price(micros, iv, encryption, integrity)

    assert tracker.admin("PUT", "/banker/campaigns/c1", b'{"total_budget_micros": 1000000}')[0] == 200
    assert tracker.get(tracker.sign(f"/win?imp=w1&cid=c1&exch=adx&price={token(1_850_000)}"))[0] == 204
    assert tracker.get(tracker.sign(f"/win?imp=w2&cid=c1&price={token(2_000_000)}"))[0] == 204  # the default exchange
    refused = {
        f"/win?imp=w3&cid=c1&price={token(1_000_000, age_s=2 * 86_400)}": "price_expired",
        f"/win?imp=w4&cid=c1&price={token(500_000_001)}": "price_out_of_range",
        f"/win?imp=w5&cid=c1&exch=other&price={token(1_000_000)}": "price_exchange_unknown",
        "/win?imp=w6&cid=c1&price=1.25": "price_malformed",  # keys are listed: a plain price could be forged
    }
    status, headers, _ = tracker.get(tracker.sign(f"/win?imp=w7&cid=c1&max_price=1&price={token(1_500_000)}"))
    assert (status, headers["x-reject-reason"]) == (403, "price_above_bound")  # above the bid signed in the URL
    for path, reason in refused.items():
        status, headers, _ = tracker.get(tracker.sign(path))
        assert (status, headers["x-reject-reason"]) == (400, reason), path
    wins = {event.dims["imp"]: event.metrics["price"] for event in tracker.wait_events(2)}
    assert wins == {"w1": 1_850_000, "w2": 2_000_000}

    def spent() -> Any:
        status, _, payload = tracker.admin("GET", "/banker/campaigns/c1")
        return status == 200 and json.loads(payload)["debits"] == 2 and json.loads(payload)

    assert wait_for(spent, "the banker to debit both wins")["spent_micros"] == 1850 + 2000


# --- the CDP ---------------------------------------------------------------------------------------------------------

SHOP = "https://shop.example.com"


def test_cdp_example_end_to_end(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory(example("cdp.yaml"))
    # The browser's preflight, before its first JSON POST: allowed for the shop and its subdomains only.
    for origin in (SHOP, "https://www.shop.example.com"):
        status, headers, _ = tracker.request(
            "OPTIONS",
            "/t/page",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert status == 204, origin
        assert headers["access-control-allow-origin"] == origin
        assert headers["access-control-allow-credentials"] == "true"
        assert headers["access-control-allow-methods"] == "POST"
        assert headers["access-control-allow-headers"] == "content-type"
        assert headers["access-control-max-age"] == "600"
        assert headers["vary"] == "Origin"
    status, headers, _ = tracker.request(
        "OPTIONS", "/t/page", headers={"Origin": "https://evil.test", "Access-Control-Request-Method": "POST"}
    )
    assert (status, headers["x-reject-reason"]) == (403, "cors_origin_not_allowed")
    assert "access-control-allow-origin" not in headers

    # A first page view: 204 with the CORS headers and a new user id cookie, first party on the shop's domain.
    page = {"url": "https://shop.example.com/summer", "ref": "https://search.test/", "title": "Summer sale"}
    browser = {"Content-Type": "application/json", "Origin": SHOP, "Accept-Language": "de-DE"}
    status, headers, _ = tracker.request("POST", "/t/page", json.dumps(page).encode(), browser)
    assert status == 204
    assert (headers["access-control-allow-origin"], headers["access-control-allow-credentials"]) == (SHOP, "true")
    cookie = headers["set-cookie"]
    assert cookie.startswith("tp_uid=") and "Domain=shop.example.com" in cookie and "HttpOnly" in cookie
    user_id = cookie.split(";")[0].removeprefix("tp_uid=")
    assert len(user_id) == 32
    # The same visitor's custom event carries the cookie back: no new cookie.
    purchase = {"name": "purchase", "category": "checkout", "value": 49.90, "cur": "EUR", "order_id": "A-1001"}
    status, headers, _ = tracker.request(
        "POST", "/t/event", json.dumps(purchase).encode(), {**browser, "Cookie": f"tp_uid={user_id}"}
    )
    assert status == 204 and headers["access-control-allow-origin"] == SHOP and "set-cookie" not in headers
    # A visitor with Global Privacy Control: recorded without anything personal, and no cookie.
    status, headers, _ = tracker.request(
        "POST", "/t/page", json.dumps({"url": "https://shop.example.com/gpc"}).encode(), {**browser, "Sec-GPC": "1"}
    )
    assert status == 204 and "set-cookie" not in headers
    # A bot: answered, dropped, counted.
    status, _, _ = tracker.request(
        "POST",
        "/t/page",
        json.dumps({"url": "https://shop.example.com/bot"}).encode(),
        {**browser, "User-Agent": CURL_UA},
    )
    assert status == 204
    # Another origin: recorded, but without CORS headers the browser keeps the answer from that page.
    status, headers, _ = tracker.request(
        "POST",
        "/t/page",
        json.dumps({"url": "https://elsewhere.test/"}).encode(),
        {**browser, "Origin": "https://elsewhere.test"},
    )
    assert status == 204 and not any(name.startswith("access-control-") for name in headers)
    # sendBeacon: the same JSON as text/plain, no preflight.
    status, _, _ = tracker.request(
        "POST",
        "/t/page",
        json.dumps({"url": "https://shop.example.com/leaving"}).encode(),
        {"Content-Type": "text/plain;charset=UTF-8", "Origin": SHOP, "Cookie": f"tp_uid={user_id}"},
    )
    assert status == 204

    events = {e.dims.get("url") or e.dims["name"]: e for e in tracker.wait_events(5)}
    assert set(events) == {
        "https://shop.example.com/summer",
        "purchase",
        "https://shop.example.com/gpc",
        "https://elsewhere.test/",
        "https://shop.example.com/leaving",
    }
    pseudonym = Pseudonymize("pseudonymize", PseudonymizeConfig(), str(tracker.data_dir)).pseudonym(user_id)
    first = events["https://shop.example.com/summer"]
    assert first.type == "pageview"
    assert {k: first.dims.get(k) for k in ("title", "ref", "lang", "consent", "uid")} == {
        "title": "Summer sale",
        "ref": "https://search.test/",
        "lang": "de-DE",
        "consent": "not_applicable",
        "uid": pseudonym,  # the cookie's id, stored as its pseudonym
    }
    assert first.ctx.ip == "127.0.0.0" and first.ctx.device is not None
    bought = events["purchase"]
    assert (bought.type, bought.dims["uid"], bought.metrics["value"]) == ("custom_event", pseudonym, 49_900_000)
    assert events["https://shop.example.com/leaving"].dims["uid"] == pseudonym
    denied = events["https://shop.example.com/gpc"]
    assert (denied.dims["consent"], denied.dims["consent_reason"]) == ("denied", "gpc")
    assert "uid" not in denied.dims and denied.ctx.ip is None and denied.ctx.ua is None
    assert tracker.wait_metric("trackpoint_invalid_traffic_dropped_total", 'type="pageview"', 1) == 1
