"""The privacy policy: the collector filter (trusted, allow and deny lists), keyed pseudonyms with rotation and the
generated key, config checks, and end to end an untrusted collector that never receives the raw IP or User-Agent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import stat
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from conftest import CHROME_UA, load_config
from trackpoint.collectors import CollectorContext
from trackpoint.collectors.log.collector import LogCollector
from trackpoint.collectors.log.config import LogCollectorConfig
from trackpoint.collectors.log.reader import read_events
from trackpoint.collectors.stdout.config import StdoutCollectorConfig
from trackpoint.config.load import ConfigError
from trackpoint.config.model import SecretSource
from trackpoint.event import Context, Device, Event, Meta
from trackpoint.preprocessors.pseudonymize.config import PseudonymizeConfig
from trackpoint.preprocessors.pseudonymize.preprocessor import Pseudonymize
from trackpoint.privacy.filter import PrivacyFilter, build_filter
from trackpoint.replay import CollectorReport, ReplayPlan
from trackpoint.replay import _send as replay_batch


def _event() -> Event:
    return Event(
        id="e1",
        type="impression",
        ts=1_700_000_000_000,
        dims={"imp": "i1", "cid": "c1", "crid": "cr1", "uid": "u1"},
        metrics={"price": 1_500_000, "t": 3.5},
        ctx=Context(ip="203.0.113.7", ua=CHROME_UA, referer="https://pub.example/", device=Device(browser="Chrome")),
        meta=Meta(worker=1, config="v"),
    )


def test_a_trusted_collector_without_lists_has_no_filter() -> None:
    assert build_filter(LogCollectorConfig()) is None  # the log is trusted by default
    assert build_filter(LogCollectorConfig(trusted=False)) is not None
    assert build_filter(StdoutCollectorConfig()) is not None  # every other collector is untrusted by default


def test_an_untrusted_collector_loses_raw_ip_and_ua_but_keeps_the_rest() -> None:
    event = _event()
    filtered = PrivacyFilter(trusted=False, allow=None, deny=[])(event)
    assert filtered.ctx.ip is None and filtered.ctx.ua is None
    assert filtered.ctx.referer == "https://pub.example/"
    assert filtered.ctx.device == Device(browser="Chrome")
    assert filtered.dims == event.dims and filtered.metrics == event.metrics
    assert (filtered.id, filtered.type, filtered.ts, filtered.meta) == (event.id, event.type, event.ts, event.meta)
    # The original, shared with the other collectors of the event type, is untouched.
    assert event.ctx.ip == "203.0.113.7" and event.ctx.ua == CHROME_UA


def test_allowing_ctx_ip_does_not_give_it_to_an_untrusted_collector() -> None:
    filtered = PrivacyFilter(trusted=False, allow=["ctx", "dims"], deny=[])(_event())
    assert filtered.ctx.ip is None and filtered.ctx.ua is None and filtered.ctx.referer is not None
    trusted = PrivacyFilter(trusted=True, allow=["ctx.ip"], deny=[])(_event())
    assert trusted.ctx == Context(ip="203.0.113.7")
    assert trusted.dims == {} and trusted.metrics == {}


def test_allow_and_deny_lists() -> None:
    event = _event()
    filtered = PrivacyFilter(trusted=True, allow=["dims.imp", "dims.cid", "metrics", "ctx.device"], deny=["dims.cid"])(
        event
    )
    assert filtered.dims == {"imp": "i1"}
    assert filtered.metrics == {"price": 1_500_000, "t": 3.5}
    assert filtered.ctx == Context(device=Device(browser="Chrome"))
    denied = PrivacyFilter(trusted=True, allow=None, deny=["metrics", "dims.uid", "ctx.referer"])(event)
    assert denied.dims == {"imp": "i1", "cid": "c1", "crid": "cr1"}
    assert denied.metrics == {}
    assert denied.ctx.referer is None and denied.ctx.ip == "203.0.113.7"


def _pseudonymizer(tmp_path: Path, keys: dict[str, SecretSource], current: str | None) -> Pseudonymize:
    config = PseudonymizeConfig(fields=["uid", "device_id"], keys=keys, current=current)
    return Pseudonymize("pseudonymize", config, str(tmp_path))


def test_pseudonyms_are_stable_per_key_and_change_with_rotation(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("TP_PSEUDO_OLD", "old-secret-0123456789abcdef")
    key_file = tmp_path / "new.key"
    key_file.write_text("new-secret-0123456789abcdef\n")
    keys = {"k1": SecretSource(secret_env="TP_PSEUDO_OLD"), "k2": SecretSource(secret_file=str(key_file))}
    old = _pseudonymizer(tmp_path, keys, "k1")
    first = old.pseudonym("user-42")
    assert first == old.pseudonym("user-42") == _pseudonymizer(tmp_path, keys, "k1").pseudonym("user-42")
    assert first.startswith("k1:") and len(first) == 3 + 22
    assert "user-42" not in first and first != old.pseudonym("user-43")
    rotated = _pseudonymizer(tmp_path, keys, "k2").pseudonym("user-42")
    assert rotated.startswith("k2:") and rotated[3:] != first[3:]
    # Known answer: the HMAC-SHA256 of the value under the key, base64url, first 22 characters.
    mac = hmac.new(b"old-secret-0123456789abcdef", b"user-42", hashlib.sha256).digest()
    assert first == "k1:" + base64.urlsafe_b64encode(mac).decode()[:22]


def test_pseudonymize_replaces_only_the_configured_dims(tmp_path: Path) -> None:
    pseudonymizer = _pseudonymizer(tmp_path, {}, None)
    event = pseudonymizer(_event())
    assert event is not None
    assert event.dims["uid"] == pseudonymizer.pseudonym("u1") and event.dims["uid"].startswith("auto:")
    assert event.dims["imp"] == "i1" and "device_id" not in event.dims


def test_the_generated_key_is_private_and_kept(tmp_path: Path) -> None:
    first = _pseudonymizer(tmp_path, {}, None).pseudonym("x")
    key_path = tmp_path / "keys" / "pseudonymize.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert len(key_path.read_text().strip()) == 64
    assert _pseudonymizer(tmp_path, {}, None).pseudonym("x") == first  # the same key on the next start
    assert not [p for p in (tmp_path / "keys").iterdir() if p.name.startswith(".")]  # no temporary file left
    other = tmp_path / "other"
    assert _pseudonymizer(other, {}, None).pseudonym("x") != first  # a fresh data dir, a fresh random key


def test_a_missing_or_short_secret_fails_at_start(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv("TP_PSEUDO_MISSING", raising=False)
    with pytest.raises(ValueError, match="TP_PSEUDO_MISSING"):
        _pseudonymizer(tmp_path, {"a": SecretSource(secret_env="TP_PSEUDO_MISSING")}, "a")
    monkeypatch.setenv("TP_PSEUDO_SHORT", "short")
    with pytest.raises(ValueError, match="16 bytes"):
        _pseudonymizer(tmp_path, {"a": SecretSource(secret_env="TP_PSEUDO_SHORT")}, "a")


def _config_error(tmp_path: Path, document: dict[str, Any]) -> str:
    path = tmp_path / "c.yaml"
    path.write_bytes(msgspec.yaml.encode(document))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


def test_config_checks(tmp_path: Path) -> None:
    message = _config_error(
        tmp_path,
        {
            "collectors": {"partner": {"type": "stdout", "fields_allow": ["dims.cid", "ctx.geo"],
                                       "fields_deny": ["x"]}},
            "preprocessors": {
                "pseudo": {"type": "pseudonymize", "keys": {"bad id!": {"secret_env": "A"}, "b": {}}, "current": "c"}
            },
            "event_types": {
                "click": {"preset": "click", "response": {"kind": "redirect", "allow_hosts": ["example.com"],
                                                          "user_id_cookie": {}}},
                "pixel": {"paths": ["/p"], "response": {"kind": "gif", "user_id_cookie": {"name": "uid"}}},
            },
        },
    )  # fmt: skip
    assert "collectors.partner.fields_allow[1]: ctx has no member 'geo'" in message
    assert "collectors.partner.fields_deny[0]: not a field path: 'x'" in message
    assert "preprocessors.pseudo.keys.bad id!: a key id is 1-16" in message
    assert "preprocessors.pseudo.keys.b: a key needs exactly one of secret_env and secret_file" in message
    assert "preprocessors.pseudo.current: current must name one of keys" in message
    assert "event_types.click.response.user_id_cookie: the user id cookie is set on gif and no_content" in message
    assert "event_types.pixel.response.user_id_cookie: the user id cookie needs a check_consent" in message


PARTNER = {"type": "log", "dir": "partner", "trusted": False, "fields_deny": ["dims.crid"]}


def test_an_untrusted_collector_never_receives_raw_ip_or_ua(tracker_factory: Any) -> None:
    tracker = tracker_factory(
        {
            "collectors": {"log": {"type": "log"}, "partner": PARTNER},
            "event_types": {
                # No anonymize_ip and raw UA kept: the log (trusted) has them, the partner must not.
                "impression": {"preset": "impression", "preprocessors": [], "collectors": ["log", "partner"]},
            },
        }
    )
    for i in range(3):
        status, _, _ = tracker.get(f"/i?imp=i{i}&cid=c1&crid=cr1", {"Referer": "https://pub.example/a"})
        assert status == 200
    logged = tracker.wait_events(3)
    assert {e.ctx.ip for e in logged} == {"127.0.0.1"} and {e.ctx.ua for e in logged} == {CHROME_UA}
    partner_dir = tracker.data_dir / "partner"
    partner: list[Event] = []
    for _ in range(100):
        partner = list(read_events([partner_dir])) if partner_dir.exists() else []
        if len(partner) == 3:
            break
        time.sleep(0.05)
    assert len(partner) == 3
    for event in partner:
        assert event.ctx.ip is None and event.ctx.ua is None
        assert event.ctx.referer == "https://pub.example/a"
        assert "crid" not in event.dims and event.dims["cid"] == "c1"
    raw = b"".join(p.read_bytes() for p in partner_dir.iterdir() if p.is_file())
    assert b"127.0.0.1" not in raw and b"Chrome/120" not in raw
    assert sorted(e.id for e in partner) == sorted(e.id for e in logged)


def test_replay_applies_the_collector_filter(tmp_path: Path) -> None:
    """Replay delivers from the (trusted) log straight to a collector: the same policy applies there."""
    config = LogCollectorConfig(dir="out", trusted=False, fields_deny=["dims.uid"])
    collector = LogCollector("partner", config, CollectorContext(str(tmp_path)))

    async def run() -> None:
        await collector.start()
        await replay_batch(collector, [_event()], CollectorReport(), ReplayPlan(collectors={"partner": ["impression"]}))
        await collector.close(5.0)

    asyncio.run(run())
    [event] = read_events([tmp_path / "out"])
    assert event.ctx.ip is None and event.ctx.ua is None and "uid" not in event.dims
    assert event.dims["imp"] == "i1" and event.ctx.device == Device(browser="Chrome")


# --- privacy by default: client-sourced fields, referer query strings, GPC and DNT (issue 13, finding 6) -------

CLIENT_FIELDS: dict[str, Any] = {
    "imp": {"required": True},
    "client": {"source": "ip"},  # the raw client IP, as a field
    "lang": {"source": "header", "name": "Accept-Language"},
    "session": {"source": "cookie", "name": "sess"},
    "vendor": {"source": "header", "name": "X-Vendor"},
}


def test_fields_read_from_the_client_are_denied_to_untrusted_collectors_unless_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        msgspec.yaml.encode(
            {
                "collectors": {
                    "log": {"type": "log"},
                    "partner": {"type": "log", "trusted": False, "dir": "partner", "fields_deny": ["dims.lang"]},
                    "vendor": {"type": "log", "trusted": False, "dir": "vendor", "send_private": ["vendor"]},
                },
                "event_types": {
                    "hit": {"paths": ["/h"], "fields": CLIENT_FIELDS, "collectors": ["log", "partner"]},
                    "tagged": {
                        "paths": ["/t"],
                        "fields": CLIENT_FIELDS,
                        "collectors": ["vendor"],
                        "preprocessors": ["check_consent"],
                        "response": {"kind": "gif", "user_id_cookie": {"name": "tp_uid"}},
                    },
                },
            }
        ).decode()
    )
    collectors = load_config(path).config.collectors
    assert collectors["log"].fields_deny == []  # trusted: the tracker's own record
    assert collectors["partner"].fields_deny == ["dims.lang", "dims.client", "dims.session", "dims.vendor"]
    assert collectors["vendor"].fields_deny == ["dims.client", "dims.lang", "dims.session", "dims.uid"]
    assert collectors["stdout"].fields_deny == []  # fed by no type


def test_an_untrusted_collector_gets_the_referer_without_its_query_string() -> None:
    event = _event()
    event.ctx.referer = "https://pub.example/article?email=someone%40example.com&q=shoes#top"
    assert PrivacyFilter(trusted=False, allow=None, deny=[])(event).ctx.referer == "https://pub.example/article"
    kept = PrivacyFilter(trusted=False, allow=None, deny=[], referer_query=True)(event)
    assert kept.ctx.referer == event.ctx.referer  # the collector's explicit opt-in
    assert PrivacyFilter(trusted=True, allow=None, deny=[])(event).ctx.referer == event.ctx.referer
    assert build_filter(LogCollectorConfig()) is None  # trusted: still no per-event copy
    assert build_filter(StdoutCollectorConfig(referer_query=True)) is not None  # the raw IP still goes
    event.ctx.referer = "https://user:secret@pub.example/p?x=1"  # set by hand by an app: never a browser's
    assert PrivacyFilter(trusted=False, allow=None, deny=[])(event).ctx.referer == "https://pub.example/p"
    kept = PrivacyFilter(trusted=False, allow=None, deny=[], referer_query=True)(event)
    assert kept.ctx.referer == "https://pub.example/p?x=1"
    assert PrivacyFilter(trusted=True, allow=None, deny=[])(event).ctx.referer == event.ctx.referer


def _partner_events(tracker: Any, count: int) -> list[Event]:
    partner_dir = tracker.data_dir / "partner"
    found: list[Event] = []
    for _ in range(200):
        found = list(read_events([partner_dir])) if partner_dir.exists() else []
        if len(found) >= count:
            break
        time.sleep(0.05)
    return found


def test_privacy_by_default_end_to_end(tracker_factory: Any) -> None:
    """The attack of finding 6: the raw IP through a `source: ip` field, an email in the Referer's query, and a
    browser saying Sec-GPC: 1 or DNT: 1, against the default event types plus an untrusted partner."""
    tracker = tracker_factory({
        "collectors": {"log": {"type": "log"}, "partner": {"type": "log", "trusted": False, "dir": "partner"}},
        "event_types": {
            "impression": {"preset": "impression", "collectors": ["log", "partner"],
                           "fields": {"imp": {"required": True}, "cid": {}, "client": {"source": "ip"},
                                      "lang": {"source": "header", "name": "Accept-Language"}}},
            "click": {"preset": "click"},
        },
    })  # fmt: skip
    referer = {"Referer": "https://pub.example/a?email=someone%40example.com"}
    assert tracker.get("/i?imp=plain&cid=c1", {**referer, "Accept-Language": "de-CH"})[0] == 200
    status, headers, _ = tracker.get("/i?imp=gpc&cid=c1", {**referer, "Sec-GPC": "1"})
    assert status == 200
    assert tracker.get("/i?imp=dnt&cid=c1", {**referer, "DNT": "1"})[0] == 200
    # A click with GPC: still redirected and counted, but no click id follows the user to the landing page.
    status, headers, _ = tracker.get("/c?imp=k1&url=https%3A%2F%2Fexample.com%2Fland", {"Sec-GPC": "1"})
    assert status == 302 and "tp_click" not in headers["location"]
    logged = {e.dims["imp"]: e for e in tracker.wait_events(4)}
    assert logged["plain"].dims["client"] == "127.0.0.1" and logged["plain"].dims["lang"] == "de-CH"  # the log
    assert logged["plain"].ctx.referer == referer["Referer"] and logged["plain"].dims["consent"] == "not_applicable"
    for imp, reason in (("gpc", "gpc"), ("dnt", "dnt"), ("k1", "gpc")):
        event = logged[imp]
        assert (event.dims["consent"], event.dims["consent_reason"]) == ("denied", reason), imp
        assert event.ctx.ip is None and event.ctx.ua is None and event.ctx.referer is None, imp
    assert "click_id" not in logged["k1"].dims
    partner = {e.dims["imp"]: e for e in _partner_events(tracker, 3)}
    assert sorted(partner) == ["dnt", "gpc", "plain"]
    plain = partner["plain"]
    assert "client" not in plain.dims and "lang" not in plain.dims  # read from the client: not for the partner
    assert plain.ctx.referer == "https://pub.example/a" and plain.ctx.ip is None
    raw = b"".join(p.read_bytes() for p in (tracker.data_dir / "partner").iterdir() if p.is_file())
    assert b"127.0.0.1" not in raw and b"someone" not in raw and b"de-CH" not in raw
