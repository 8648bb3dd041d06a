"""Signed tracking URLs and the click redirect policy: the pure logic, then the real tracker over real sockets."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import timeit
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import yaml

from conftest import Tracker
from trackpoint.config import ConfigError, load
from trackpoint.config.model import ResponseSpec, SigningConfig, SigningKey
from trackpoint.edge.responses import Clock, Responder
from trackpoint.event import Context, Event, Meta
from trackpoint.security.signing import (
    EXPIRED,
    INVALID,
    MISSING,
    UNKNOWN_KEY,
    SigningKeyError,
    Verifier,
    canonical,
    load_keys,
    sign_url,
)

SECRET = b"0123456789abcdef0123456789abcdef"
OTHER = b"fedcba9876543210fedcba9876543210"


def _target(url: str) -> tuple[bytes, bytes]:
    """(path, query) as the edge sees them."""
    parts = urlsplit(url)
    return parts.path.encode(), parts.query.encode()


def _verify(verifier: Verifier, url: str, now: float | None = None) -> str | None:
    path, query = _target(url)
    return verifier.verify(path, query, now)


# --- canonical form and sign / verify ---------------------------------------------------------------------------


def test_canonical_form_is_the_same_for_every_equivalent_encoding() -> None:
    plain = canonical(b"/c", [b"b=2", b"a=x y", b"c"])
    assert plain == b"/c?a=x y&b=2&c="
    assert canonical(b"/c", [b"b=%32", b"a=x+y", b"c="]) == plain
    assert canonical(b"/c", [b"%61=x%20y", b"c", b"b=2"]) == plain
    # Decoded separators stay escaped: `a=1%262` is one pair, not `a=1` and `2`.
    assert canonical(b"/c", [b"a=1%262"]) != canonical(b"/c", [b"a=1", b"2"])
    assert canonical(b"/c", [b"a=b=c"]) == canonical(b"/c", [b"a=b%3Dc"]) == b"/c?a=b%3Dc"


def test_the_verifier_canonicalises_like_the_signer() -> None:
    verifier = Verifier({"k1": SECRET})
    for query in ["a=b=c&x", "u=https%3A%2F%2Fs.test%2F%3Fa%3D1%26b%3D2&n=x+y", "e=&f&=g", "q=%E2%82%AC&r=€"]:
        url = sign_url(f"/c?{query}", "k1", SECRET)
        assert _verify(verifier, url) is None, query


def test_repeated_names_keep_their_order_in_the_canonical_form() -> None:
    # The edge reads the first value of a name: swapping two values must change what is signed.
    assert canonical(b"/i", [b"imp=a", b"imp=b"]) != canonical(b"/i", [b"imp=b", b"imp=a"])
    url = sign_url("/i?imp=a&imp=b", "k1", SECRET)
    assert _verify(Verifier({"k1": SECRET}), url.replace("imp=a&imp=b", "imp=b&imp=a")) == INVALID


def test_a_signed_url_verifies_and_carries_key_id_expiry_and_a_128_bit_signature() -> None:
    url = sign_url("https://t.test/c?imp=1&url=https%3A%2F%2Fshop.test%2F%3Fa%3D1", "k1", SECRET, 2_000_000_000)
    query = dict(pair.split("=", 1) for pair in urlsplit(url).query.split("&"))
    assert query["kid"] == "k1" and query["exp"] == "2000000000" and len(query["sig"]) == 22
    # The pairs in signed order (by name), the signature last; values keep their encoding.
    assert url.startswith("https://t.test/c?exp=2000000000&imp=1&kid=k1&url=https%3A%2F%2Fshop.test%2F%3Fa%3D1&sig=")
    assert _verify(Verifier({"k1": SECRET}), url, now=1_900_000_000) is None


def test_a_url_as_signed_takes_the_fast_path_and_a_reordered_one_still_verifies() -> None:
    verifier = Verifier({"k1": SECRET})
    url = sign_url("/i?pub=p1&imp=1&cid=c9", "k1", SECRET, 2_000_000_000)
    assert urlsplit(url).query.startswith("cid=c9&exp=2000000000&imp=1&kid=k1&pub=p1&sig=")
    assert _verify(verifier, url, now=1_900_000_000) is None
    parts = urlsplit(url)
    pairs = parts.query.split("&")
    reordered = parts._replace(query="&".join([*reversed(pairs[:-1]), pairs[-1]])).geturl()
    assert _verify(verifier, reordered, now=1_900_000_000) is None  # the canonical path
    assert _verify(verifier, url, now=2_100_000_000) == "signature_expired"  # the fast path checks expiry too
    tampered = url.replace("imp=1", "imp=2")
    assert _verify(verifier, tampered, now=1_900_000_000) == "signature_invalid"


def test_signing_again_replaces_the_old_signature_parameters() -> None:
    once = sign_url("/i?imp=1", "k1", SECRET, 100)
    twice = sign_url(once, "k2", OTHER)
    assert twice.count("sig=") == 1 and "kid=k2" in twice and "exp=" not in twice
    assert _verify(Verifier({"k2": OTHER}), twice) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda u: u.replace("imp=1", "imp=2"), INVALID),  # a changed value
        (lambda u: u + "&cid=7", INVALID),  # an added parameter
        (lambda u: u.replace("/c?", "/win?"), INVALID),  # the same query on another path
        (lambda u: u.replace("exp=2000000000", "exp=2000000001"), INVALID),  # a longer life
        (lambda u: u.replace("kid=k1", "kid=k9"), UNKNOWN_KEY),
        (lambda u: u + "&sig=AAAAAAAAAAAAAAAAAAAAAA", INVALID),  # a second signature
        (lambda u: u.split("&sig=")[0], MISSING),
        (lambda u: u.replace("sig=", "sig=A"), INVALID),
        (lambda u: u.replace("&kid=k1", ""), UNKNOWN_KEY),
    ],
)
def test_tampering_is_detected(change: Any, reason: str) -> None:
    url = sign_url("/c?imp=1&cid=5&url=https%3A%2F%2Fshop.test%2F", "k1", SECRET, 2_000_000_000)
    assert _verify(Verifier({"k1": SECRET}), url, now=1_000) is None
    assert _verify(Verifier({"k1": SECRET}), change(url), now=1_000) == reason


def test_reordered_or_differently_encoded_parameters_still_verify() -> None:
    url = sign_url("/c?imp=1&cid=5&url=https%3A%2F%2Fshop.test%2F", "k1", SECRET)
    path, query = _target(url)
    pairs = query.split(b"&")
    reordered = b"&".join(reversed(pairs)).replace(b"cid=5", b"cid=%35")
    assert Verifier({"k1": SECRET}).verify(path, reordered) is None


def test_expiry() -> None:
    url = sign_url("/i?imp=1", "k1", SECRET, expires_at=1_000)
    verifier = Verifier({"k1": SECRET})
    assert _verify(verifier, url, now=999) is None
    assert _verify(verifier, url, now=1_001) == EXPIRED
    # Without an expiry a signature does not expire.
    assert _verify(verifier, sign_url("/i?imp=1", "k1", SECRET), now=4_000_000_000) is None


def test_key_rotation_two_keys_at_once_then_the_old_one_removed() -> None:
    old_url = sign_url("/i?imp=1", "old", SECRET)
    new_url = sign_url("/i?imp=1", "new", OTHER)
    both = Verifier({"old": SECRET, "new": OTHER})
    assert _verify(both, old_url) is None and _verify(both, new_url) is None
    only_new = Verifier({"new": OTHER})
    assert _verify(only_new, old_url) == UNKNOWN_KEY
    assert _verify(only_new, new_url) is None
    # A key id pointing at the wrong secret is just a wrong signature.
    assert _verify(Verifier({"old": OTHER}), old_url) == INVALID


def test_verification_costs_microseconds() -> None:
    url = sign_url("/c?imp=abc-123&cid=42&crid=7&pub=p1&url=https%3A%2F%2Fshop.test%2Fland%3Fx%3D1", "k1", SECRET)
    path, query = _target(url)
    verifier = Verifier({"k1": SECRET})
    rounds = 5_000
    best = min(timeit.repeat(lambda: verifier.verify(path, query), number=rounds, repeat=5)) / rounds * 1e6
    # About 3-5 µs on a quiet core (as much as building the event); the bound is generous for shared CI cores.
    assert best < 50, best


# --- keys -------------------------------------------------------------------------------------------------------


def test_a_generated_key_is_random_private_and_kept(tmp_path: Path) -> None:
    config = SigningConfig(keys={"auto": SigningKey(secret_file="keys/signing.key", generate=True)})
    first = load_keys(config, str(tmp_path))["auto"]
    path = tmp_path / "keys" / "signing.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 64 and load_keys(config, str(tmp_path))["auto"] == first
    assert load_keys(config, str(tmp_path / "other"))["auto"] != first


def test_keys_from_the_environment_and_their_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TP_TEST_KEY", "  a-long-enough-secret-value  \n")
    keys = load_keys(SigningConfig(keys={"e": SigningKey(secret_env="TP_TEST_KEY")}), str(tmp_path))
    assert keys == {"e": b"a-long-enough-secret-value"}
    monkeypatch.setenv("TP_TEST_KEY", "short")
    with pytest.raises(SigningKeyError, match="at least 16 bytes"):
        load_keys(SigningConfig(keys={"e": SigningKey(secret_env="TP_TEST_KEY")}), str(tmp_path))
    with pytest.raises(SigningKeyError, match="TP_TEST_UNSET"):
        load_keys(SigningConfig(keys={"e": SigningKey(secret_env="TP_TEST_UNSET")}), str(tmp_path))
    with pytest.raises(SigningKeyError, match="cannot read"):
        load_keys(SigningConfig(keys={"f": SigningKey(secret_file="absent.key")}), str(tmp_path))


# --- redirect policy (pure) -------------------------------------------------------------------------------------

NASTY_DESTINATIONS = [
    ("https://evil.test/", "host_not_allowed"),
    ("javascript:alert(1)", "scheme"),
    ("data:text/html,<script>alert(1)</script>", "scheme"),
    ("ftp://example.com/", "scheme"),
    ("//evil.test/", "scheme"),
    ("https:/evil.test/", "scheme"),
    ("https:///evil.test/", "scheme"),
    ("https://user@example.com/", "userinfo"),
    ("https://example.com:443@evil.test/", "userinfo"),
    ("https://example.com\\@evil.test/", "backslash"),
    ("https:\\\\evil.test/", "backslash"),
    ("https://example.com.evil.test/", "host_not_allowed"),
    ("https://evilexample.com/", "host_not_allowed"),
    ("https://example.com\r\nSet-Cookie: x=1", "characters"),
    ("https://example.com/\ttab", "characters"),
    ("https://example.com/a b", "characters"),
    ("https://exämple.com/", "characters"),
    ("https://evil.test%2F@example.com/", "userinfo"),
    ("https://evil.test%2Eexample.com/", "host"),
    ("https://example.com./", "host"),
    ("https://example.com:99999/", "syntax"),
    ("https://example.com:abc/", "syntax"),
    ("https://[fe80::1%25eth0]/", "host"),
]


def _responder(**options: Any) -> Responder:
    spec = ResponseSpec(kind="redirect", allow_hosts=["example.com", ".example.net"], **options)
    responder = Responder(spec, Clock())
    responder.rebuild()
    return responder


@pytest.mark.parametrize(("url", "reason"), NASTY_DESTINATIONS)
def test_a_nasty_destination_is_refused_with_its_reason(url: str, reason: str) -> None:
    assert _responder().refusal(url, host_free=False) == reason
    if reason != "host_not_allowed":  # a signature frees the host, never the syntax
        assert _responder().refusal(url, host_free=True) == reason


def test_an_empty_destination_is_refused() -> None:
    assert _responder().refusal("", host_free=True) == "scheme"


@pytest.mark.parametrize(
    "url",
    ["https://example.com/", "HTTP://example.com:8080/x?y=1#z", "https://shop.example.net/p", "https://Example.COM/"],
)
def test_a_good_destination_on_an_allowed_host_passes(url: str) -> None:
    assert _responder().refusal(url, host_free=False) is None


def _event(dims: dict[str, str]) -> Event:
    return Event("e1d", "click", 0, dims, {}, Context(), Meta(worker=0, config="x"))


def test_macros_are_expanded_url_encoded_and_unknown_ones_left() -> None:
    event = _event({"cid": "c 1", "crid": "a&b=c", "imp": "i/1"})
    expanded = Responder.expand("https://example.com/?c={cid}&cr={crid}&i={imp}&k={click_id}&u={nope}", event)
    assert expanded == "https://example.com/?c=c%201&cr=a%26b%3Dc&i=i%2F1&k=e1d&u={nope}"


def test_a_macro_cannot_move_the_destination_to_another_host() -> None:
    responder = _responder(macros=True)
    event = _event({"url": "https://{pub}/", "pub": "evil.test/x?"})
    with pytest.raises(Exception, match="redirect_not_allowed"):
        responder.render(event, True, False)
    assert event.dims["redirect_rejected"] == "host"


# --- end to end -------------------------------------------------------------------------------------------------

SIGNED_TYPES: dict[str, Any] = {
    "signing": {"sign_with": "new"},  # keys: see the fixture
    "event_types": {
        "impression": {"preset": "impression", "signature": "required"},
        "video": {"preset": "video", "signature": "optional"},
        "click": {
            "preset": "click",
            "response": {
                **{"kind": "redirect", "allow_hosts": ["example.com"]},
                "signed_destinations": True,
                "macros": True,
            },
        },
        "win": {"preset": "win"},
    },
}


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trackpoint", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _relative(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


@pytest.fixture
def signed_tracker(tracker_factory: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Tracker:
    monkeypatch.setenv("TP_SIGNING_OLD", OTHER.decode())  # the tracker process inherits it
    key_file = tmp_path / "new.key"
    key_file.write_bytes(SECRET + b"\n")
    config = {
        **SIGNED_TYPES,
        "signing": {
            **SIGNED_TYPES["signing"],
            "keys": {"old": {"secret_env": "TP_SIGNING_OLD"}, "new": {"secret_file": str(key_file)}},
        },
    }
    tracker: Tracker = tracker_factory(config)
    return tracker


def test_required_and_optional_signatures_end_to_end(signed_tracker: Tracker) -> None:
    tracker = signed_tracker
    signed = sign_url("/i?imp=s1&cid=7", "new", SECRET)
    status, _, _ = tracker.get(signed)
    assert status == 200
    assert tracker.get(sign_url("/i?imp=s2", "old", OTHER))[0] == 200  # both keys are accepted
    cases = [
        ("/i?imp=u1", "signature_missing"),
        (signed.replace("imp=s1", "imp=forged"), "signature_invalid"),
        (sign_url("/i?imp=s3", "gone", SECRET), "unknown_key"),
        (sign_url("/i?imp=s4", "new", SECRET, int(time.time()) - 5), "signature_expired"),
        (sign_url("/v?imp=v9&ev=start", "new", OTHER), "signature_invalid"),  # optional: a bad one is refused
    ]
    for path, reason in cases:
        status, headers, body = tracker.get(path)
        assert (status, headers["x-reject-reason"], json.loads(body)["error"]) == (403, reason, reason), path
    assert tracker.get("/v?imp=v1&ev=start")[0] == 200
    assert tracker.get(sign_url("/v?imp=v2&ev=start", "new", SECRET))[0] == 200
    events = tracker.wait_events(4)
    by_imp = {e.dims["imp"]: e for e in events}
    assert sorted(by_imp) == ["s1", "s2", "v1", "v2"]
    assert by_imp["v1"].dims["signed"] == "0" and by_imp["v2"].dims["signed"] == "1"
    assert "signed" not in by_imp["s1"].dims  # required: every event is signed, no flag
    assert tracker.wait_metric("trackpoint_rejected_total", 'reason="signature_missing"', 1) == 1
    assert tracker.metric("trackpoint_rejected_total", 'reason="signature_invalid"') == 2


def test_redirect_policy_end_to_end(signed_tracker: Tracker) -> None:
    tracker = signed_tracker
    for number, (destination, _) in enumerate(NASTY_DESTINATIONS):
        status, headers, _ = tracker.get(f"/c?imp=n{number}&url={quote(destination, safe='')}")
        assert (status, headers["x-reject-reason"]) == (400, "redirect_not_allowed"), destination
    # A signed destination outside allow_hosts is followed, with macros expanded after verification.
    signed = sign_url(
        f"/c?imp=ok1&cid=c%201&url={quote('https://shop.test/land?c={cid}&k={click_id}', safe='')}", "new", SECRET
    )
    status, headers, _ = tracker.get(_relative(signed))
    assert status == 302
    location = headers["location"]
    assert location.startswith("https://shop.test/land?c=c%201&k=")
    # Signed or not, the syntax rules hold.
    status, headers, _ = tracker.get(sign_url("/c?imp=ok2&url=javascript%3Aalert(1)", "new", SECRET))
    assert (status, headers["x-reject-reason"]) == (400, "redirect_not_allowed")
    # A tampered signed click is refused before anything else.
    assert tracker.get(signed.replace("shop.test", "evil.test"))[0] == 403
    events = tracker.wait_events(len(NASTY_DESTINATIONS) + 2)
    recorded = {e.dims["imp"]: e for e in events}
    assert {imp: e.dims["redirect_rejected"] for imp, e in recorded.items() if imp.startswith("n")} == {
        f"n{number}": reason for number, (_, reason) in enumerate(NASTY_DESTINATIONS)
    }
    assert "redirect_rejected" not in recorded["ok1"].dims
    click_id = recorded["ok1"].dims["click_id"]  # {click_id}: the click id the click is logged with
    assert location == f"https://shop.test/land?c=c%201&k={click_id}&tp_click={click_id}"
    assert recorded["ok2"].dims["redirect_rejected"] == "scheme"
    assert (
        tracker.wait_metric("trackpoint_rejected_total", 'reason="redirect_not_allowed"', 30)
        == len(NASTY_DESTINATIONS) + 1
    )


def test_trackpoint_sign_output_is_accepted_by_a_running_tracker(tracker_factory: Any) -> None:
    # The embedded default's signing section: the key is generated into data_dir by whichever runs first.
    tracker: Tracker = tracker_factory(
        {"event_types": {"impression": {"preset": "impression", "signature": "required"}}}
    )
    key_file = tracker.data_dir / "keys" / "signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    result = _cli(
        "sign", "--config", str(tracker.config_path), "--ttl", "60", "/i?imp=cli-1&cid=5", cwd=tracker.data_dir
    )
    assert result.returncode == 0, result.stderr
    signed = result.stdout.strip()
    assert "kid=auto" in signed and "exp=" in signed
    assert tracker.get(signed)[0] == 200
    assert tracker.get("/i?imp=cli-2")[0] == 403
    assert [e.dims["imp"] for e in tracker.wait_events(1)] == ["cli-1"]
    unknown = _cli("sign", "--config", str(tracker.config_path), "--key-id", "nope", "/i?imp=1", cwd=tracker.data_dir)
    assert unknown.returncode == 2 and "no signing key 'nope'" in unknown.stderr


def test_trackpoint_sign_with_the_embedded_default_generates_and_reuses_one_key(tmp_path: Path) -> None:
    first = _cli("sign", "http://localhost:8080/c?imp=1&url=https%3A%2F%2Fshop.test%2F", cwd=tmp_path)
    second = _cli("sign", "http://localhost:8080/c?imp=1&url=https%3A%2F%2Fshop.test%2F", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout  # the same key both times, no expiry
    secret = (tmp_path / "trackpoint-data" / "keys" / "signing.key").read_bytes().strip()
    assert _verify(Verifier({"auto": secret}), first.stdout.strip()) is None


@pytest.mark.parametrize(
    ("document", "key_path", "message"),
    [
        (
            {"signing": {"keys": {}}, "event_types": {"a": {"paths": ["/a"], "signature": "required"}}},
            ("event_types", "a", "signature"),
            "need at least one key",
        ),
        (
            {"signing": {"keys": {"k": {"secret_env": "X", "secret_file": "f"}}}},
            ("signing", "keys", "k"),
            "exactly one of",
        ),
        ({"signing": {"keys": {"k": {"secret_env": "X"}}, "sign_with": "j"}}, ("signing", "sign_with"), "no key"),
        (
            {"event_types": {"a": {"paths": ["/a"], "signature": "optional", "fields": {"sig": {}}}}},
            ("event_types", "a", "fields", "sig"),
            "parameter of the URL signature",
        ),
        (
            {"event_types": {"c": {"preset": "click", "response": {"kind": "redirect", "allow_hosts": ["https://x"]}}}},
            ("event_types", "c", "response", "allow_hosts", 0),
            "not a host name",
        ),
    ],
)
def test_signing_configuration_problems_are_reported(
    tmp_path: Path, document: dict[str, Any], key_path: tuple[str | int, ...], message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert [(issue.path, message in issue.message) for issue in caught.value.issues] == [(key_path, True)]
