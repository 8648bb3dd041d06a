"""check_consent against the IAB Tech Lab's own libraries. TCF: TC strings made by its encoder (@iabtechlabtcf/core,
pinned in tag/package.json and installed by scripts/build-tag) with every feature a CMP uses (bitfield and range
vendors, publisher restrictions, disclosed vendors and publisher TC segments, purpose one treatment, legitimate
interests, special features, vendor ids up to 65535, global and service-specific), and the same strings as CMPs,
servers and URLs damage them (padding, standard base64, a `+` turned into a space, junk characters, empty and
unknown segments, cuts, TCF v1). Each decision is compared with what the IAB's decoder reads in the string.
GPP: strings made by @iabgpp/cmpapi with every US section it knows (their opt-outs and GPC subsection), US Privacy
and TCF EU sections, with and without gpp_sid, compared with what that library reads back.
"""

from __future__ import annotations

import collections
import itertools
import json
import subprocess
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import pytest

from conftest import Tracker
from trackpoint.preprocessors.check_consent.config import CheckConsentConfig
from trackpoint.preprocessors.check_consent.preprocessor import CheckConsent
from trackpoint.privacy.gpp import US_OPT_OUTS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
MODULES = ROOT / ".venv" / "node" / "node_modules"  # tag/package-lock.json, installed by scripts/build-tag
PURPOSE_SETS = ([1], [1, 7], [1, 2, 3, 4, 7], [2, 7, 9, 10], [3, 4])
# Restriction types under which a vendor's consent does not count for the purpose: not allowed, legitimate
# interest only.
DENYING_RESTRICTIONS = (0, 2)
ConsentFrom = Literal["vendors", "publisher"]
CONSENT_FROM: tuple[ConsentFrom, ...] = ("vendors", "publisher")
CUSTOM_PURPOSE_SETS: tuple[tuple[int, ...], ...] = ((), (1,), (2, 5))  # the publisher's own purposes, if any


@pytest.fixture(scope="module")
def cases() -> list[dict[str, Any]]:
    if not (MODULES / "@iabtechlabtcf" / "core").is_dir():
        pytest.fail("@iabtechlabtcf/core is not installed: run scripts/build-tag (npm ci from tag/package-lock.json)")
    script = ROOT / "tests" / "iab" / "tcf_strings.cjs"
    made = subprocess.run(["node", str(script), str(MODULES), "400", "20261206"], capture_output=True, check=True)
    loaded: list[dict[str, Any]] = json.loads(made.stdout)
    return loaded


def expected(
    meaning: dict[str, Any],
    purposes: list[int],
    vendor: int | None,
    consent_from: str = "vendors",
    custom: tuple[int, ...] = (),
) -> str | None:
    """The decision the IAB decoder's reading of a string calls for: the reason consent is denied, or None."""
    if "error" in meaning or meaning["version"] != 2:  # refused by the IAB's decoder, or TCF v1 (retired in 2020)
        return "tcf_invalid"
    if consent_from == "publisher":  # the publisher's own consent: its publisher TC segment
        if not set(purposes) <= set(meaning["publisherConsents"]):
            return "tcf_publisher"
    elif not set(purposes) <= set(meaning["purposeConsents"]):
        return "tcf_purpose"
    if not set(custom) <= set(meaning["publisherCustomConsents"]):  # its custom purposes: the same segment
        return "tcf_publisher"
    if vendor is not None:
        seen = meaning["vendors"][str(vendor)]
        restricted = any(p in purposes and kind in DENYING_RESTRICTIONS for p, kind in seen["restrictions"])
        if not seen["consent"] or restricted:
            return "tcf_vendor"
    return None


def test_every_decision_is_the_one_the_iab_decoder_calls_for(cases: list[dict[str, Any]]) -> None:
    deciders: dict[tuple[tuple[int, ...], int | None, ConsentFrom, tuple[int, ...]], CheckConsent] = {}
    outcomes: collections.Counter[str | None] = collections.Counter()
    mismatches = []
    custom_denied = 0
    for case in cases:
        vendors = [None, *(int(v) for v in case["meaning"].get("vendors", {"37": None, "65535": None}))]
        for purposes, vendor, consent_from, custom in itertools.product(
            PURPOSE_SETS, vendors, CONSENT_FROM, CUSTOM_PURPOSE_SETS
        ):
            key = (tuple(purposes), vendor, consent_from, custom)
            if key not in deciders:
                config = CheckConsentConfig(
                    tcf_purposes=purposes,
                    tcf_vendor_id=vendor,
                    tcf_consent_from=consent_from,
                    tcf_custom_purposes=list(custom),
                )
                deciders[key] = CheckConsent("check_consent", config)
            reason, applies = deciders[key].decide(None, None, None, "1", case["tc"])
            want = expected(case["meaning"], purposes, vendor, consent_from, custom)
            outcomes[want] += 1
            custom_denied += want == "tcf_publisher" and consent_from == "vendors"  # by a custom purpose alone
            if (reason, applies) != (want, True):
                mismatches.append((case["kind"], case["tc"], purposes, vendor, consent_from, custom, want, reason))
    assert not mismatches, f"{len(mismatches)} decisions differ from the IAB decoder's reading: {mismatches[:5]}"
    # Not vacuous: every outcome, and every kind of string, was met many times.
    reasons = (None, "tcf_purpose", "tcf_publisher", "tcf_vendor", "tcf_invalid")
    assert min(outcomes[reason] for reason in reasons) > 100, outcomes
    assert custom_denied > 100, custom_denied
    kinds = collections.Counter(case["kind"] for case in cases)
    assert kinds["encoded"] == 400 and min(kinds.values()) >= 8, kinds
    restricted = sum(1 for case in cases if any(v["restrictions"] for v in case["meaning"].get("vendors", {}).values()))
    assert restricted > 50


@pytest.mark.parametrize("consent_from", CONSENT_FROM)
def test_the_same_strings_through_the_tracker(
    cases: list[dict[str, Any]], tracker_factory: Any, consent_from: ConsentFrom
) -> None:
    """A sample of each kind in a query string and in a JSON body (as the tag sends them): never a 5xx, never an
    error, and the decision recorded is the one above, with the vendors' consent and with the publisher's."""
    consent = {"type": "check_consent", "tcf_purposes": [1], "tcf_vendor_id": 37, "tcf_consent_from": consent_from}
    tracker: Tracker = tracker_factory({
        "preprocessors": {"consent": consent},
        "event_types": {
            "impression": {"preset": "impression", "preprocessors": ["consent"]},
            "page": {"paths": ["/p"], "methods": ["POST"], "fields": {"imp": {}}, "response": {"kind": "no_content"},
                     "preprocessors": ["consent"]},
        },
    })  # fmt: skip
    sample: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for case in cases:
        if len(sample[case["kind"]]) < 6:
            sample[case["kind"]].append(case)
    sent = [case for group in sample.values() for case in group]
    want = {}
    for i, case in enumerate(sent):
        want[f"q{i}"] = want[f"b{i}"] = expected(case["meaning"], [1], 37, consent_from)
        # `+` as a CMP's string has it: unescaped, a query string turns it into a space (the plus_as_space kind).
        status, _, _ = tracker.get(f"/i?imp=q{i}&gdpr=1&gdpr_consent={quote(case['tc'], safe='=')}")
        assert status == 200, case
        body = json.dumps({"imp": f"b{i}", "gdpr": 1, "gdpr_consent": case["tc"]})
        status, _, _ = tracker.request("POST", "/p", body=body.encode(), headers={"Content-Type": "text/plain"})
        assert status == 204, case
    purposes_missing = "tcf_publisher" if consent_from == "publisher" else "tcf_purpose"
    assert set(want.values()) >= {None, purposes_missing, "tcf_vendor", "tcf_invalid"}, "a decision never met"
    events = {event.dims["imp"]: event for event in tracker.wait_events(2 * len(sent))}
    for imp, reason in want.items():
        dims = events[imp].dims
        assert (dims["consent"], dims.get("consent_reason")) == (
            ("granted", "tcf") if reason is None else ("denied", reason)
        ), (imp, dims)


# --- GPP ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpp_cases() -> dict[str, Any]:
    if not (MODULES / "@iabgpp" / "cmpapi").is_dir():
        pytest.fail("@iabgpp/cmpapi is not installed: run scripts/build-tag (npm ci from tag/package-lock.json)")
    script = ROOT / "tests" / "iab" / "gpp_strings.cjs"
    made = subprocess.run(["node", str(script), str(MODULES), "600", "20261206"], capture_output=True, check=True)
    loaded: dict[str, Any] = json.loads(made.stdout)
    return loaded


def expected_gpp(case: dict[str, Any]) -> str | None:
    """What the library's reading calls for, in trackpoint's order: the applicable sections by id, each one's
    opt-outs before its GPC subsection; then the TCF EU section (purpose 1), if it applies."""
    for section_id in sorted(int(i) for i in case["read"] if int(i) in case["applicable"]):
        read = case["read"][str(section_id)]
        if read.get("usp") == "Y" or 1 in read.get("optOuts", ()):
            return "gpp_opt_out"
        if read.get("gpc"):
            return "gpc"
    tcf = case["read"].get("2")
    if tcf is not None and 2 in case["applicable"]:
        return None if tcf["purpose1"] else "tcf_purpose"
    return None


def test_every_us_section_of_the_iab_library_is_read(gpp_cases: dict[str, Any]) -> None:
    known = {section["id"] for section in gpp_cases["sections"] if "SaleOptOut" in section["optOuts"]}
    assert len(known) >= 21 and known == set(US_OPT_OUTS)  # a new state in the library: add it to US_OPT_OUTS
    for section in gpp_cases["sections"]:
        assert len(US_OPT_OUTS[section["id"]]) == len(section["optOuts"]), section


def test_every_gpp_decision_is_the_one_the_iab_library_calls_for(gpp_cases: dict[str, Any]) -> None:
    consent = CheckConsent("check_consent", CheckConsentConfig())
    outcomes: collections.Counter[str | None] = collections.Counter()
    mismatches = []
    for case in gpp_cases["cases"]:
        want = expected_gpp(case)
        outcomes[want] += 1
        reason, _ = consent.decide(None, None, None, None, None, gpp=case["gpp"], gpp_sid=case["gppSid"])
        if reason != want:
            mismatches.append((case, want, reason))
    assert not mismatches, f"{len(mismatches)} of {len(gpp_cases['cases'])} differ: {mismatches[:3]}"
    assert min(outcomes[reason] for reason in (None, "gpp_opt_out", "gpc", "tcf_purpose")) > 10, outcomes
    # Honoured GPC off: a GPC subsection alone no longer denies.
    no_gpc = CheckConsent("check_consent", CheckConsentConfig(honor_gpc=False))
    for case in gpp_cases["cases"]:
        if expected_gpp(case) == "gpc":
            assert no_gpc.decide(None, None, None, None, None, gpp=case["gpp"], gpp_sid=case["gppSid"])[0] != "gpc"
    assert len(gpp_cases["damaged"]) > 100
    for damaged in gpp_cases["damaged"]:
        assert consent.decide(None, None, None, None, None, gpp=damaged)[0] == "gpp_invalid", damaged
