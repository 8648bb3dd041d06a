"""Consent: the TCF v2 and US Privacy decoders against published strings, the decision table of check_consent,
and end to end GPC, DNT, TCF and USP requests, the personal fields they strip, and the first-party id cookie.
"""

from __future__ import annotations

import base64
import re
import tracemalloc
from typing import Any

import pytest

from conftest import CHROME_UA, Tracker
from trackpoint.event import Context, Event, Meta
from trackpoint.preprocessors.check_consent.config import CheckConsentConfig
from trackpoint.preprocessors.check_consent.preprocessor import (
    DNT,
    GDPR,
    GPC,
    GPP,
    GPP_SID,
    TC_STRING,
    USP,
    CheckConsent,
)
from trackpoint.privacy.signals import (
    RESTRICTION_NOT_ALLOWED,
    RESTRICTION_REQUIRE_LI,
    InvalidSignal,
    decode_tc_string,
    us_privacy_opt_out,
)

# Published TC strings with their decoded values (LiveRamp/iabconsent test fixtures, made with iabtcf.com's encoder).
# Purposes 1, 3, 4, 7; vendors 2, 37, 61 (range encoding); CMP 81; created 2020-03-05T19:24:40.9Z.
TC_RANGE = "COvzTO5OvzTO5BRAAAENAPCoALIAADgAAAAAAewAwABAAlAB6ABBFADBQAQA9hAAAcAA"
# Purposes 1, 3, 6, 7, 8, 10; vendors 12, 23, 163, 707; publisher FR; with disclosed/allowed vendor segments.
TC_FULL = (
    "COvzTO5OvzTO5B7ABCENAPCYAKdAADkAAIqIFhwBAAGAAXAFGAsMAhYAgAMAAegBYAEKAAA.IFoEUQQgAIQwgIwQABAEAAAAOIAACAIAAAAQAIAg"
    "EAACEAAAAAgAQBAAAAAAAGBAAgAAAAAAAFAAECAAAgAAQARAEQAAAAAJAAIAAgAAAYQEAAAQmAgBC3ZAYzUw.QE5QAwCvgHyATkA"
)
# No purpose consents; vendors as a 720-bit bitfield (79 vendors); CMP 89, screen 12, GB.
TC_NO_PURPOSES = (
    "COvzTO5OvzTO5BZAFMENAPCgAAAAAAAAAAwIFoEUQQgAIQwgIwQABAEAAAAOIAACAIAAAAQAIAgEAACEAAAAAgAQBAAAAAAAGBAAgAAAAAAAFAAEC"
    "AAAgAAQARAEQAAAAAJAAIAAgAAAYQEAAAQmAgBC3ZAYzUwLQIoghAAQhhARggACAIAAAAcQAAEAQAAAAgAQBAIAAEIAAAABAAgCAAAAAAAMCABAAAA"
    "AAAAKAAIEAABAAAgAiAIgAAAAASAAQABAAAAwgIAAAhMBACFuyAxmpgAA"
)
# Made with the IAB Tech Lab's encoder (@iabtechlabtcf/core 1.5.21, a vendor list of its own): all 11 purposes;
# vendors 37, 755 and 65535 with consent; publisher restrictions: purpose 1 not allowed for vendor 37, purpose 7
# on legitimate interest only for 755 and 65535 (written as the range 755-65535: no vendor of the list between);
# disclosed vendors and publisher TC segments.
TC_RESTRICTED = "CQKjTcAQKjTcAEsACAENB4FgAP_gAAAAAAYn__wAwASgLzf_-AAAAIEABABKPAAwLz__8AAA.IAAA.YAAAAAAAAAAA"
# 101 characters: the IAB's encoder pads to 24 bits, its decoder reads any length, six bits a character (a CMP's
# string cut after its last vendor). The IAB's decoder reads all 11 purposes and 313 vendors (1 to 300, 755, ...).
TC_ODD_LENGTH = "CQuzncAQuzncA9ZBT4ENB4FsAP_gAECAACiX__wCoAAgJYAvMB9EH_wgAh_-IAAf_xOIX__gABhqH__v__AQiAIAAEAGwAwwCEAAA"
# GPP strings made with the IAB Tech Lab's library (@iabgpp/cmpapi 3.2.0): a US national section that opts out of
# sale (GPC subsection, not set); one that opts out of nothing; one whose only signal is its GPC subsection; two
# sections (7 opts out of sale, 8, California, of nothing); Virginia opting out of targeted advertising; a TCF EU
# section (purposes 1 and 3; vendors 37 and 755).
GPP_SALE_OPT_OUT = "DBABLA~CFAYAAAAAABA.QA"
GPP_NO_OPT_OUT = "DBABLA~CEAqAAAAAABA.QA"
GPP_GPC = "DBABLA~CAAqAAAAAABA.YA"
GPP_NAT_AND_CA = "DBABrw~CAAQAAAAAABA.QA~BAoAAABA.QA"
GPP_VA_TARGETED = "DBABRg~BAkAABA"
GPP_TCF = "DBABMA~CQuzncAQuzncAEsAAAENAAFgAKAAAAAAAAAAF5wAgASgLzAAAAAA.IAAA.YAAAAAAAAAAA"
CREATED_DS = 15_834_362_809  # 1583436280.9 s


def test_tcf_v2_range_encoded_vendors() -> None:
    tc = decode_tc_string(TC_RANGE)
    assert (tc.version, tc.cmp_id, tc.cmp_version, tc.consent_screen) == (2, 81, 0, 0)
    assert (tc.created_ds, tc.last_updated_ds) == (CREATED_DS, CREATED_DS)
    assert (tc.consent_language, tc.vendor_list_version, tc.policy_version) == ("EN", 15, 2)
    assert tc.is_service_specific is True
    assert tc.purpose_consents == {1, 3, 4, 7}
    assert tc.purpose_legitimate_interests == {3, 4, 5}
    assert tc.publisher_cc == "AA"
    assert tc.max_vendor_id == 61 and set(tc.vendor_consents) == {2, 37, 61}


def test_tcf_v2_with_further_segments() -> None:
    tc = decode_tc_string(TC_FULL)
    assert (tc.cmp_id, tc.cmp_version, tc.consent_screen, tc.publisher_cc) == (123, 1, 2, "FR")
    assert tc.purpose_consents == {1, 3, 6, 7, 8, 10}
    assert tc.is_service_specific is False
    assert tc.max_vendor_id == 707 and set(tc.vendor_consents) == {12, 23, 163, 707}


def test_tcf_v2_bitfield_vendors() -> None:
    tc = decode_tc_string(TC_NO_PURPOSES)
    assert (tc.cmp_id, tc.cmp_version, tc.consent_screen, tc.publisher_cc) == (89, 5, 12, "GB")
    assert tc.purpose_consents == frozenset()
    assert tc.max_vendor_id == 720 and len(tc.vendor_consents) == 79
    assert {2, 6, 8, 12, 18, 720} <= tc.vendor_consents and not {1, 3, 719 - 1} & tc.vendor_consents


def tc_core(purposes: tuple[int, ...] = (1,), ranges: tuple[tuple[int, int], ...] = ((1, 65535),)) -> str:
    """A TC string's core segment written field by field, as anyone can write one: version 2, the purposes with
    consent, the vendors with consent as `ranges` (start, end), no legitimate interests, no publisher restrictions."""
    fields = [(2, 6), (0, 36), (0, 36), (2, 12), (1, 12), (1, 6), (4 * 64 + 13, 12), (1, 12), (4, 6), (1, 1), (0, 1)]
    fields += [(0, 12), (sum(1 << (24 - p) for p in purposes), 24), (0, 24), (0, 1), (0, 12)]
    fields += [(65535, 16), (1, 1), (len(ranges), 12)]
    for start, end in ranges:
        fields += [(1, 1), (start, 16), (end, 16)]
    fields += [(0, 16), (0, 1), (0, 12)]
    bits = "".join(format(value, f"0{width}b") for value, width in fields)
    bits += "0" * (-len(bits) % 24)
    return base64.urlsafe_b64encode(int(bits, 2).to_bytes(len(bits) // 8, "big")).decode().rstrip("=")


def test_vendor_ranges_are_read_where_they_are() -> None:
    # 200 ranges of every vendor id: expanded, 13 million insertions and megabytes for one string; the 8 KB a
    # string may have hold 1,480 of them, seconds of a worker's time for each new string a client makes up.
    hostile = tc_core(ranges=((1, 65535),) * 200)
    tracemalloc.start()
    try:
        tc = decode_tc_string(hostile)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024
    assert 1 in tc.vendor_consents and 65535 in tc.vendor_consents and 0 not in tc.vendor_consents
    sparse = decode_tc_string(tc_core(ranges=((3, 3), (10, 12), (60000, 60001))))
    assert set(sparse.vendor_consents) == {3, 10, 11, 12, 60000, 60001} and 4 not in sparse.vendor_consents


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not base64!",
        "COvzTO5OvzTO5BRAAAENAPCoALIAADgAAAAA",  # cut inside the vendor section
        "BOvzTO5OvzTO5BRAAAENAPCoALIAADgAAAAAAewAwABAAlAB6ABBFADBQAQA9hAAAcAA",  # version 1
        "é" * 10,
        "C" * 9000,
        # Refused by the IAB's decoder, and so here: characters outside base64url, even where their bits are clear.
        TC_RESTRICTED.replace("-", "+").replace("_", "/"),  # standard base64
        TC_RESTRICTED.replace("-", " "),  # a `+` sent unescaped in a query string arrives as a space
        TC_RANGE[:30] + "!" + TC_RANGE[30:],  # skipped, it would leave the rest in place; a space would not
        TC_RANGE + "%3D%3D",  # padding escaped twice
        TC_RANGE + ".",  # an empty segment
        TC_RANGE + ".g",  # segment type 4: no such segment
        TC_RANGE + ".AAAA",  # a second core segment
    ],
)
def test_tcf_invalid_strings(bad: str) -> None:
    with pytest.raises(InvalidSignal):
        decode_tc_string(bad)


def test_tcf_publisher_restrictions() -> None:
    tc = decode_tc_string(TC_RESTRICTED)
    assert tc.purpose_consents == set(range(1, 12)) and set(tc.vendor_consents) == {37, 755, 65535}
    assert [(r.purpose, r.kind, min(r.vendors), max(r.vendors)) for r in tc.publisher_restrictions] == [
        (1, RESTRICTION_NOT_ALLOWED, 37, 37),
        (7, RESTRICTION_REQUIRE_LI, 755, 65535),
    ]
    assert not tc.vendor_may_rely_on_consent(37, 1) and tc.vendor_may_rely_on_consent(37, 2)
    assert tc.vendor_may_rely_on_consent(755, 1) and not tc.vendor_may_rely_on_consent(755, 7)
    assert not tc.vendor_may_rely_on_consent(2, 3)  # no consent at all


def test_tcf_is_read_six_bits_a_character_as_the_iab_decoder_reads_it() -> None:
    tc = decode_tc_string(TC_ODD_LENGTH)
    assert tc.purpose_consents == set(range(1, 12)) and tc.cmp_id == 3929 and tc.publisher_cc == "US"
    assert len(tc.vendor_consents) == 313 and {1, 37, 300, 755, 65535} <= set(tc.vendor_consents)
    # `=` padding (other encoders write it) is the same string.
    assert decode_tc_string(TC_RANGE + "==") == decode_tc_string(TC_RANGE)
    assert decode_tc_string(TC_RESTRICTED.replace(".", "=.")) == decode_tc_string(TC_RESTRICTED)


def test_us_privacy() -> None:
    assert us_privacy_opt_out("1YYN") is True
    assert us_privacy_opt_out("1YNN") is False
    assert us_privacy_opt_out("1---") is False
    for bad in ("", "1YY", "2YNN", "1YXN", "1YNNN"):
        with pytest.raises(InvalidSignal):
            us_privacy_opt_out(bad)


def _decide(config: CheckConsentConfig, **signals: str | None) -> tuple[str | None, bool]:
    consent = CheckConsent("check_consent", config)
    names = {"gpc": None, "dnt": None, "usp": None, "gdpr": None, "tc_string": None, "gpp": None, "gpp_sid": None}
    return consent.decide(**(names | signals))


def test_the_decision_table() -> None:
    default = CheckConsentConfig()
    assert _decide(default) == (None, False)
    assert _decide(default, gpc="1") == ("gpc", False)
    assert _decide(default, gpc="0") == (None, False)
    assert _decide(default, dnt="1") == ("dnt", False)
    assert _decide(CheckConsentConfig(honor_dnt=False), dnt="1") == (None, False)
    assert _decide(default, usp="1YYN") == ("usp_opt_out", False)
    assert _decide(default, usp="1YNN") == (None, False)
    assert _decide(default, usp="junk") == ("usp_invalid", False)
    assert _decide(default, gdpr="0", tc_string="junk") == (None, False)
    assert _decide(default, gdpr="1") == ("tcf_missing", True)
    assert _decide(default, gdpr="yes") == ("gdpr_invalid", True)
    assert _decide(default, gdpr="1", tc_string="%%%") == ("tcf_invalid", True)
    assert _decide(default, gdpr="1", tc_string=TC_RANGE) == (None, True)
    assert _decide(default, gdpr="1", tc_string=TC_NO_PURPOSES) == ("tcf_purpose", True)
    assert _decide(CheckConsentConfig(tcf_purposes=[1, 7]), gdpr="1", tc_string=TC_RANGE) == (None, True)
    assert _decide(CheckConsentConfig(tcf_purposes=[1, 2]), gdpr="1", tc_string=TC_RANGE) == ("tcf_purpose", True)
    assert _decide(CheckConsentConfig(tcf_vendor_id=37), gdpr="1", tc_string=TC_RANGE) == (None, True)
    assert _decide(CheckConsentConfig(tcf_vendor_id=38), gdpr="1", tc_string=TC_RANGE) == ("tcf_vendor", True)
    # The publisher forbids purpose 1 to vendor 37, and allows purpose 7 to 755 on legitimate interest only: their
    # consent does not count there (the IAB's decoder reads the restrictions from the string; the CMP shows them).
    restricted = {"gdpr": "1", "tc_string": TC_RESTRICTED}
    assert _decide(CheckConsentConfig(tcf_vendor_id=37), **restricted) == ("tcf_vendor", True)
    assert _decide(CheckConsentConfig(tcf_purposes=[2, 7], tcf_vendor_id=37), **restricted) == (None, True)
    assert _decide(CheckConsentConfig(tcf_vendor_id=755), **restricted) == (None, True)
    assert _decide(CheckConsentConfig(tcf_purposes=[1, 7], tcf_vendor_id=755), **restricted) == ("tcf_vendor", True)
    assert _decide(CheckConsentConfig(tcf_purposes=[1, 7]), **restricted) == (None, True)  # no vendor: the purposes
    assert _decide(CheckConsentConfig(gdpr_default=True)) == ("tcf_missing", True)
    # GPP: the applicable sections (gpp_sid; all without it) of the string.
    assert _decide(default, gpp=GPP_SALE_OPT_OUT, gpp_sid="7") == ("gpp_opt_out", False)
    assert _decide(default, gpp=GPP_SALE_OPT_OUT) == ("gpp_opt_out", False)
    assert _decide(default, gpp=GPP_SALE_OPT_OUT, gpp_sid="-1") == (None, False)  # no section applies
    assert _decide(default, gpp=GPP_NO_OPT_OUT, gpp_sid="7") == (None, False)
    assert _decide(default, gpp=GPP_GPC, gpp_sid="7") == ("gpc", False)
    assert _decide(CheckConsentConfig(honor_gpc=False), gpp=GPP_GPC, gpp_sid="7") == (None, False)
    assert _decide(default, gpp=GPP_NAT_AND_CA, gpp_sid="8") == (None, False)
    assert _decide(default, gpp=GPP_NAT_AND_CA, gpp_sid="7_8") == ("gpp_opt_out", False)
    assert _decide(default, gpp=GPP_VA_TARGETED, gpp_sid="9") == ("gpp_opt_out", False)
    assert _decide(default, gpp="DBABTA~1YYN", gpp_sid="6") == ("gpp_opt_out", False)  # its US Privacy section
    assert _decide(CheckConsentConfig(honor_gpp=False), gpp=GPP_SALE_OPT_OUT) == (None, False)
    assert _decide(CheckConsentConfig(tcf_vendor_id=37), gpp=GPP_TCF, gpp_sid="2") == (None, True)
    assert _decide(CheckConsentConfig(tcf_vendor_id=38), gpp=GPP_TCF, gpp_sid="2") == ("tcf_vendor", True)
    assert _decide(CheckConsentConfig(tcf_purposes=[2]), gpp=GPP_TCF, gpp_sid="2") == ("tcf_purpose", True)
    assert _decide(default, gpp=GPP_TCF, gpp_sid="7") == (None, False)  # the TCF section does not apply
    for bad_gpp, bad_sid in (("DBABLA", "7"), ("CBABLA~CFAYAAAAAABA.QA", "7"), (GPP_SALE_OPT_OUT, "seven"), ("", None)):
        assert _decide(default, gpp=bad_gpp, gpp_sid=bad_sid) == ("gpp_invalid", False), bad_gpp
    assert _decide(default, gpc="1", gdpr="1", tc_string=TC_RANGE) == ("gpc", False)  # GPC wins


def test_a_denied_event_keeps_only_non_personal_fields() -> None:
    consent = CheckConsent("check_consent", CheckConsentConfig(personal_fields=["click_id", "device_id"]))
    event = Event(
        id="e",
        type="impression",
        ts=1,
        dims={"imp": "i", "uid": "u", "click_id": "k", "device_id": "d", GPC: "1", TC_STRING: TC_RANGE},
        metrics={"price": 1},
        ctx=Context(ip="10.0.0.1", ua=CHROME_UA, referer="https://r.example/"),
        meta=Meta(worker=0, config="v"),
    )
    consent(event)
    assert event.dims == {"imp": "i", "consent": "denied", "consent_reason": "gpc"}
    assert event.ctx == Context() and event.metrics == {"price": 1}
    assert {GPC, DNT, USP, GDPR, TC_STRING, GPP, GPP_SID} == set(consent.input_fields)


# --- end to end ---------------------------------------------------------------------------------------------------

COOKIE = {"name": "tp_uid", "max_age_days": 30, "domain": "example.com"}
CONFIG: dict[str, Any] = {
    "preprocessors": {
        "check_consent": {"type": "check_consent", "tcf_vendor_id": 37, "personal_fields": ["click_id"]},
        "pseudonymize": {"type": "pseudonymize", "fields": ["uid", "click_id"]},
    },
    "event_types": {
        "impression": {
            "preset": "impression",
            "fields": {"imp": {"required": True}, "cid": {}, "click_id": {}},
            "response": {"kind": "gif", "user_id_cookie": COOKIE},
            # After parse_user_agent: a denial removes the raw User-Agent, the parsed device stays.
            "preprocessors": ["anonymize_ip", "parse_user_agent", "check_consent", "pseudonymize"],
        },
        "win": {
            "preset": "win",
            "response": {"kind": "no_content", "user_id_cookie": COOKIE},
            "preprocessors": ["check_consent"],
        },
        "plain": {"paths": ["/plain"], "fields": {"imp": {}}, "response": {"kind": "gif"}},
    },
}
SET_COOKIE = re.compile(
    r"tp_uid=([0-9a-f]{32}); Max-Age=2592000; Path=/; Domain=example.com; SameSite=None; Secure; HttpOnly"
)


@pytest.fixture
def consent_tracker(tracker_factory: Any) -> Tracker:
    tracker: Tracker = tracker_factory(CONFIG)
    return tracker


def _by_imp(tracker: Tracker, count: int) -> dict[str, Event]:
    events = tracker.wait_events(count)
    assert len(events) == count
    return {event.dims["imp"]: event for event in events}


def test_consent_outcomes_end_to_end(consent_tracker: Tracker) -> None:
    tracker = consent_tracker
    cases = {
        "none": ("/i?imp=none&click_id=k1", {}),
        "gpc": ("/i?imp=gpc&click_id=k1", {"Sec-GPC": "1"}),
        "dnt": ("/i?imp=dnt&click_id=k1", {"DNT": "1"}),
        "usp": ("/i?imp=usp&click_id=k1&us_privacy=1YYN", {}),
        "uspok": ("/i?imp=uspok&click_id=k1&us_privacy=1YNN", {}),
        "tcf": (f"/i?imp=tcf&click_id=k1&gdpr=1&gdpr_consent={TC_RANGE}", {}),
        "vendor": (f"/i?imp=vendor&click_id=k1&gdpr=1&gdpr_consent={TC_FULL}", {}),  # vendor 37 absent
        "nostring": ("/i?imp=nostring&click_id=k1&gdpr=1", {}),
        "broken": ("/i?imp=broken&click_id=k1&gdpr=1&gdpr_consent=AAAA", {}),
        "restricted": (f"/i?imp=restricted&click_id=k1&gdpr=1&gdpr_consent={TC_RESTRICTED}", {}),  # 37: not for 1
        "gpp": (f"/i?imp=gpp&click_id=k1&gpp={GPP_SALE_OPT_OUT}&gpp_sid=7", {}),  # GPP only: opted out of sale
        "gppok": (f"/i?imp=gppok&click_id=k1&gpp={GPP_NO_OPT_OUT}&gpp_sid=7", {}),
        "gpptcf": (f"/i?imp=gpptcf&click_id=k1&gpp={GPP_TCF}&gpp_sid=2", {}),  # its TCF section: vendor 37
        "padded": (f"/i?imp=padded&click_id=k1&gdpr=1&gdpr_consent={TC_RANGE}==", {}),
        # A CMP's standard base64 in a query string: its `+` arrives as a space.
        "plus": (f"/i?imp=plus&click_id=k1&gdpr=1&gdpr_consent={TC_RANGE[:30]}+{TC_RANGE[31:]}", {}),
    }
    cookies: dict[str, str | None] = {}
    for name, (path, headers) in cases.items():
        status, response_headers, _ = tracker.get(path, {"Referer": "https://pub.example/", **headers})
        assert status == 200, name
        cookies[name] = response_headers.get("set-cookie")
    events = _by_imp(tracker, len(cases))
    expected = {
        "none": ("not_applicable", None),
        "gpc": ("denied", "gpc"),
        "dnt": ("denied", "dnt"),
        "usp": ("denied", "usp_opt_out"),
        "uspok": ("not_applicable", None),
        "tcf": ("granted", "tcf"),
        "vendor": ("denied", "tcf_vendor"),
        "nostring": ("denied", "tcf_missing"),
        "broken": ("denied", "tcf_invalid"),
        "restricted": ("denied", "tcf_vendor"),
        "gpp": ("denied", "gpp_opt_out"),
        "gppok": ("not_applicable", None),
        "gpptcf": ("granted", "tcf"),
        "padded": ("granted", "tcf"),
        "plus": ("denied", "tcf_invalid"),
    }
    for name, (outcome, reason) in expected.items():
        event = events[name]
        assert event.dims["consent"] == outcome, name
        assert event.dims.get("consent_reason") == reason, name
        assert not any(key.startswith("consent.") for key in event.dims), name  # the raw signals are not kept
        assert event.ctx.device is not None and event.ctx.device.browser == "Chrome"  # not personal: kept
        if outcome == "denied":
            assert cookies[name] is None, name
            assert "uid" not in event.dims and "click_id" not in event.dims, name
            assert event.ctx.ip is None and event.ctx.ua is None and event.ctx.referer is None, name
        else:
            set_cookie = cookies[name]
            assert set_cookie is not None and SET_COOKIE.fullmatch(set_cookie), (name, set_cookie)
            assert event.ctx.ip == "127.0.0.0" and event.ctx.referer == "https://pub.example/", name
            # The id is recorded pseudonymised, and so is the click id.
            assert event.dims["uid"].startswith("auto:") and event.dims["click_id"].startswith("auto:"), name
    # The same click id gives the same pseudonym; the cookie ids differ per request, and so do their pseudonyms.
    assert events["none"].dims["click_id"] == events["tcf"].dims["click_id"]
    assert events["none"].dims["uid"] != events["tcf"].dims["uid"]


def test_the_cookie_is_kept_and_never_set_again(consent_tracker: Tracker) -> None:
    tracker = consent_tracker
    status, headers, _ = tracker.get("/i?imp=first")
    assert status == 200
    match = SET_COOKIE.fullmatch(headers["set-cookie"])
    assert match is not None
    uid = match.group(1)
    status, headers, _ = tracker.get("/i?imp=second", {"Cookie": f"other=1; tp_uid={uid}"})
    assert status == 200 and "set-cookie" not in headers
    status, headers, _ = tracker.request("GET", "/i?imp=third", headers={"Cookie": "tp_uid=forged<script>"})
    assert status == 200 and SET_COOKIE.fullmatch(headers["set-cookie"])  # not one of ours: replaced
    status, headers, _ = tracker.request("HEAD", "/i?imp=probe")
    assert status == 200 and "set-cookie" not in headers  # a probe is no event: it gets no user id
    status, headers, body = tracker.get(tracker.sign("/win?imp=w1&price=1"))
    win_cookie = SET_COOKIE.fullmatch(headers["set-cookie"])
    assert (status, body) == (204, b"") and win_cookie is not None
    status, headers, _ = tracker.get(tracker.sign("/win?imp=w2&price=1"), {"Sec-GPC": "1"})
    assert status == 204 and "set-cookie" not in headers
    status, headers, _ = tracker.get("/plain?imp=p")
    assert status == 200 and "set-cookie" not in headers  # an event type without the cookie
    events = tracker.wait_events(6)
    by_imp = {e.dims["imp"]: e for e in events}
    assert by_imp["first"].dims["uid"] == by_imp["second"].dims["uid"]  # the same user, the same pseudonym
    assert by_imp["first"].dims["uid"] != by_imp["third"].dims["uid"]
    assert by_imp["w1"].dims["uid"] == win_cookie.group(1)  # no pseudonymize on this type: the id as set
    assert "uid" not in by_imp["w2"].dims and by_imp["w2"].dims["consent"] == "denied"
    assert "uid" not in by_imp["p"].dims and "consent" not in by_imp["p"].dims
    assert "probe" not in by_imp


def test_bad_consent_input_is_a_counted_4xx_not_a_crash(consent_tracker: Tracker) -> None:
    tracker = consent_tracker
    status, headers, _ = tracker.get("/i?imp=long&gdpr_consent=" + "A" * 8200)
    assert status in (400, 414) and headers["x-reject-reason"] in ("field_too_long", "uri_too_long")
    # Not UTF-8: a pixel drops the value (dims.invalid), and an unreadable consent string denies.
    assert tracker.get("/i?imp=ok&gdpr=0&gdpr_consent=%FF%FE")[0] == 200
    assert tracker.get("/i?imp=ok1&us_privacy=1Y%FFN")[0] == 200
    status, _, _ = tracker.get("/i?imp=ok2&gdpr=1&gdpr_consent=" + "_" * 300)
    assert status == 200
    events = {e.dims["imp"]: e for e in tracker.wait_events(3)}
    assert events["ok2"].dims["consent_reason"] == "tcf_invalid"
    assert events["ok"].dims["consent"] == "denied" and events["ok"].dims["consent_reason"] == "tcf_invalid"
    assert events["ok"].dims["invalid"] == "consent.tcf:invalid_encoding"
    assert events["ok1"].dims["consent"] == "denied" and events["ok1"].dims["consent_reason"] == "usp_invalid"
