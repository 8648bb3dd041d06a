"""Signed tracking URLs and the click redirect policy: the pure logic, then the real tracker over real sockets."""

from __future__ import annotations

import hmac
import json
import os
import re
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

from conftest import Tracker, load_config
from trackpoint.config import ConfigError
from trackpoint.config.model import ResponseSpec, SigningConfig, SigningKey
from trackpoint.edge.responses import Responder, browser_host
from trackpoint.event import Context, Event, Meta
from trackpoint.fields.converters import Reject
from trackpoint.http.responses import Clock
from trackpoint.security.signing import (
    BODY_DIGEST_INVALID,
    BODY_UNSIGNED,
    EXPIRED,
    INVALID,
    MISSING,
    UNKNOWN_KEY,
    RequestSignature,
    SigningKeyError,
    Verifier,
    canonical,
    check_body,
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


def test_verification_costs_a_few_hmacs() -> None:
    """Measured against one bare HMAC-SHA256 of the same query in the same run (the best of several rounds each),
    so the ratio holds on a loaded machine where a limit in microseconds would not: about 3 on a quiet core, 6 on
    a busy one; 25 means a slow path crept in."""
    url = sign_url("/c?imp=abc-123&cid=42&crid=7&pub=p1&url=https%3A%2F%2Fshop.test%2Fland%3Fx%3D1", "k1", SECRET)
    path, query = _target(url)
    verifier = Verifier({"k1": SECRET})
    verify = min(timeit.repeat(lambda: verifier.verify(path, query), number=2_000, repeat=5))
    one_hmac = min(timeit.repeat(lambda: hmac.digest(SECRET, query, "sha256"), number=2_000, repeat=5))
    assert verify / one_hmac < 25, verify / one_hmac


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

CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f]")  # refused in any text field, before the redirect policy
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
    ("https://example.com/\u202eabc", "characters"),  # a bidi override: invisible, never encoded
    ("https://example.com/\u00a0x", "characters"),  # a no-break space
    ("https://exämple.com/", "host_not_allowed"),  # xn--exmple-cua.com
    ("https://ex\u0430mple.com/", "mixed_scripts"),  # a Cyrillic a (U+0430) among Latin letters
    ("https://shop.\u0435xample.com/", "mixed_scripts"),
    ("https://\u043f\u0440\u0438\u043c\u0435\u0440.com/", "host_not_allowed"),  # a whole Cyrillic label is another host
    ("https://p\u0430ypal.example.net/", "mixed_scripts"),  # even on an allowed suffix
    ("https://xn--pypal-4ve.example.net/", "mixed_scripts"),  # the same, sent in IDNA
    ("https://xn--zz.example.net/", "host"),  # not valid IDNA
    ("https://ä.evil.test\uff0f\uff20example.com/", "userinfo"),  # full-width solidus and at sign
    ("https://ä.evil.test\uff0f@example.com/", "userinfo"),
    ("https://ä.evil.test﹫example.com/", "host"),  # the small at sign maps to @, which no host has
    ("https://ä.example.com\\@evil.test/", "backslash"),
    ("https://ä.example.com:44ä3/", "syntax"),
    ("https://ä..example.com/", "host"),
    ("äpfel", "scheme"),
    ("https://evil.test%2F@example.com/", "userinfo"),
    ("https://evil.test%2Eexample.com/", "host"),
    ("https://example.com./", "host"),
    ("https://example.com:99999/", "syntax"),
    ("https://example.com:abc/", "syntax"),
    ("https://[fe80::1%25eth0]/", "host"),
    # urlsplit's hostname is what lies between `[` and `]` anywhere in the authority (an "IPvFuture" literal
    # passes its check); to a browser a bracket outside an IPv6 literal is no URL at all.
    ("https://evil.test[v1.example.com]/", "host"),
    ("https://evil.test[v1.example.net]:443/x", "host"),
    ("https://evil.test:[v1.example.com]/", "syntax"),
    ("https://[v1.example.com]/", "host"),
    ("https://[::1]example.com/", "syntax"),
    ("https://[::1/", "syntax"),
    # A host whose last label is a number is an IPv4 address to a browser (WHATWG): only the dotted form it goes
    # to passes, never another spelling of it, nor a name that no browser opens.
    ("http://2130706433/", "host"),
    ("http://0x7f.0.0.1/", "host"),
    ("http://0177.0.0.1/", "host"),
    ("http://127.1/", "host"),
    ("http://127.0.0.01/", "host"),
    ("https://shop.example.net.1/", "host"),
    ("https://shop.example.net.0x1f/", "host"),
    ("https://example.com:+443/", "syntax"),
    ("https://example.com:443:80/", "syntax"),
]


def _responder(**options: Any) -> Responder:
    spec = ResponseSpec(kind="redirect", allow_hosts=["example.com", ".example.net"], **options)
    responder = Responder(spec, Clock())
    responder.rebuild()
    return responder


@pytest.mark.parametrize(("url", "reason"), NASTY_DESTINATIONS)
def test_a_nasty_destination_is_refused_with_its_reason(url: str, reason: str) -> None:
    assert _responder().destination(url, host_free=False)[1] == reason
    if reason != "host_not_allowed":  # a signature frees the host, never the syntax
        assert _responder().destination(url, host_free=True)[1] == reason


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://example.com/", "example.com"),
        ("HTTPS://SHOP.EXAMPLE.NET:8443/X", "shop.example.net"),
        ("https://example.com:/x", "example.com"),  # an empty port is the default port
        ("https://shop.example.net?x=[1]#@evil.test", "shop.example.net"),
        ("http://192.0.2.7/", "192.0.2.7"),
        ("http://[2001:DB8::1]:8080/", "2001:db8::1"),
        ("http://0x7f.example.net/", "0x7f.example.net"),  # a number only as the last label makes an address
    ],
)
def test_the_host_checked_is_the_host_a_browser_goes_to(url: str, host: str) -> None:
    assert browser_host(url.partition("://")[2]) == (host, None)
    if not host.endswith(("example.com", "example.net")):
        assert _responder().destination(url, host_free=False)[1] == "host_not_allowed"
    assert _responder().destination(url, host_free=True)[1] is None


def test_an_empty_destination_is_refused() -> None:
    assert _responder().destination("", host_free=True)[1] == "scheme"


@pytest.mark.parametrize(
    ("iri", "uri"),
    [
        ("https://shop.example.com/search?q=äpfel rot", "https://shop.example.com/search?q=%C3%A4pfel%20rot"),
        ("https://bücher.example.com/ü?a=1#ä", "https://xn--bcher-kva.example.com/%C3%BC?a=1#%C3%A4"),
        ("https://example.com/already%20encoded ä", "https://example.com/already%20encoded%20%C3%A4"),
        (" https://example.com/a b ", "https://example.com/a%20b"),  # outer spaces: stripped, as browsers do
        (
            "https://\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.com/",
            "https://example.com/",
        ),  # full-width letters: mapped as browsers map them
        ("https://example。com/😀", "https://example.com/%F0%9F%98%80"),  # an ideographic full stop is a dot
        ("https://例え.example.net:8443/パス", "https://xn--r8jz45g.example.net:8443/%E3%83%91%E3%82%B9"),
    ],
)
def test_an_iri_is_redirected_to_as_its_uri(iri: str, uri: str) -> None:
    responder = Responder(
        ResponseSpec(kind="redirect", allow_hosts=["example.com", ".example.com", ".example.net"]), Clock()
    )
    assert responder.destination(iri, host_free=False) == (uri, None)
    event = _event({"url": iri})
    response = responder.render(event, True, False)
    assert b"Location: " + uri.encode("ascii") + b"\r\n" in response
    assert event.dims["url"] == iri  # recorded as the page gave it


def test_a_refused_click_has_an_id_of_its_own() -> None:
    accepted, refused = _event({"url": "https://example.com/"}), _event({"url": "https://evil.test/"})
    _responder().render(accepted, True, False)
    with pytest.raises(Exception, match="redirect_not_allowed"):
        _responder().render(refused, True, False)
    assert accepted.id == "e1d" and refused.id not in ("e1d", accepted.id)
    again = _event({"url": "https://evil.test/x"})  # refused twice: the same refusal, the same id
    with pytest.raises(Exception, match="redirect_not_allowed"):
        _responder().render(again, True, False)
    assert again.id == refused.id


def test_a_refused_destination_goes_to_the_fallback_page() -> None:
    responder = _responder(fallback_url="https://example.com/sorry")
    with pytest.raises(Exception, match="redirect_not_allowed"):
        responder.render(_event({"url": "https://evil.test/"}), True, False)
    answer = responder.refused(True, False)
    assert answer is not None and answer.startswith(b"HTTP/1.1 302 Found\r\n")
    assert b"\r\nLocation: https://example.com/sorry\r\n" in answer
    assert b"\r\nX-Reject-Reason: redirect_not_allowed\r\n" in answer
    assert _responder().refused(True, False) is None  # no fallback: the 400 with its JSON reason


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


def test_a_click_id_macro_passes_nothing_on_when_consent_is_denied() -> None:
    """The route's cookie vetoes (check_consent's: consent denied) withhold the identifier a macro would pass on."""
    spec = ResponseSpec(kind="redirect", allow_hosts=["example.com"], macros=True)
    responder = Responder(spec, Clock(), (), (("consent", "denied"),))
    responder.rebuild()
    url = "https://example.com/?k={click_id}"
    denied = responder.render(_event({"url": url, "consent": "denied"}), True, False)
    assert b"Location: https://example.com/?k=\r\n" in denied
    assert b"Location: https://example.com/?k=e1d\r\n" in responder.render(_event({"url": url}), True, False)


def test_a_macro_cannot_finish_the_host_of_a_signed_destination() -> None:
    """signed_destinations frees a signed URL's host from allow_hosts: the host signed is the template's, so an
    unsigned field must not complete it (`https://partner.test{crid}/` with crid=.evil.com)."""
    responder = _responder(macros=True, signed_destinations=True)
    event = _event({"url": "https://partner.test{crid}/land", "crid": ".evil.com"})
    with pytest.raises(Exception, match="redirect_not_allowed"):
        responder.render(event, True, False, signed=True)
    assert event.dims["redirect_rejected"] == "macro_in_host"
    event = _event({"url": "https://partner.test/land?c={crid}", "crid": ".evil.com/x"})  # in the query: encoded
    assert b"Location: https://partner.test/land?c=.evil.com%2Fx\r\n" in responder.render(event, True, False, True)


def test_a_macro_cannot_move_the_destination_to_another_host() -> None:
    responder = _responder(macros=True)
    event = _event({"url": "https://{pub}/", "pub": "evil.test/x?"})
    with pytest.raises(Exception, match="redirect_not_allowed"):
        responder.render(event, True, False)
    assert event.dims["redirect_rejected"] == "host"


# --- signed params (the exchange's macros left free) and signed bodies ----------------------------------------

WIN_SIGNED = ("imp", "cid", "crid", "max_price")


def _check(signature: RequestSignature, url: str) -> str | bool:
    path, query = _target(url)
    try:
        return signature.check(path, query)
    except Reject as reject:
        return reject.reason


def test_signed_params_cover_the_dsps_fields_and_leave_the_exchange_macros_free() -> None:
    signature = RequestSignature(Verifier({"k1": SECRET}), "required", WIN_SIGNED)
    nurl = sign_url("/win?imp=i1&cid=c1&price=${AUCTION_PRICE}&auction=${AUCTION_ID}&max_price=2.5", "k1", SECRET,
                    covered=WIN_SIGNED)  # fmt: skip
    # The macros follow `sig`, as the exchange will substitute them.
    assert nurl.index("sig=") < nurl.index("price=${AUCTION_PRICE}")
    substituted = nurl.replace("${AUCTION_PRICE}", "1.87").replace("${AUCTION_ID}", "a-9")
    assert _check(signature, substituted) is True
    assert _check(signature, substituted + "&seat=s1") is True  # a free parameter added
    for forged in (
        substituted.replace("cid=c1", "cid=c2"),  # a signed value changed
        substituted.replace("max_price=2.5&", ""),  # a signed parameter removed
        substituted + "&crid=x",  # a signed parameter added
        substituted + "&cid=c2",  # repeated
        "/win?%63id=c2&" + substituted.removeprefix("/win?"),  # an encoded name is still `cid`
        "/win?imp=i1&cid=c1&price=1000",  # unsigned
    ):
        assert _check(signature, forged) in {INVALID, MISSING}, forged
    # A whole-query signature does not verify under a subset, nor the reverse.
    assert _check(signature, sign_url("/win?imp=i1&cid=c1&price=1", "k1", SECRET)) == INVALID


def test_a_signed_body_must_be_the_body_that_arrives() -> None:
    url = sign_url("/conv?order_id=o1", "k1", SECRET, body=b'{"value": 10}')
    path, query = _target(url)
    assert "bd=" in url and Verifier({"k1": SECRET}).verify(path, query) is None
    check_body(query, b'{"value": 10}')  # the signed body passes
    for body, reason in ((b'{"value": 99999}', BODY_DIGEST_INVALID), (None, BODY_DIGEST_INVALID)):
        with pytest.raises(Reject) as caught:
            check_body(query, body)
        assert (caught.value.status, caught.value.reason) == (403, reason)
    _, unsigned_body = _target(sign_url("/conv?order_id=o1", "k1", SECRET))
    with pytest.raises(Reject) as caught:
        check_body(unsigned_body, b'{"value": 1}')  # signed URL, body not covered
    assert caught.value.reason == BODY_UNSIGNED
    check_body(unsigned_body, None)  # no body: nothing to cover
    check_body(b"order_id=o1", b"anything")  # an unsigned request (optional signature) trusts nothing anyway
    # The digest is covered by the MAC: swapping it for the forged body's breaks the signature.
    forged = sign_url("/conv?order_id=o1", "k1", OTHER, body=b"x")
    bd = dict(pair.split("=", 1) for pair in urlsplit(forged).query.split("&"))["bd"]
    swapped = url.replace(dict(pair.split("=", 1) for pair in urlsplit(url).query.split("&"))["bd"], bd)
    assert _verify(Verifier({"k1": SECRET}), swapped) == INVALID


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
    for number, (destination, _reason) in enumerate(NASTY_DESTINATIONS):
        status, headers, _ = tracker.get(f"/c?imp=n{number}&url={quote(destination, safe='')}")
        # A destination with controls (CR LF) is refused by the field check first: not a click, not recorded.
        expected = "invalid_field" if CONTROLS.search(destination) else "redirect_not_allowed"
        assert (status, headers["x-reject-reason"]) == (400, expected), destination
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
    events = tracker.events()  # written before the answers left
    recorded = {e.dims["imp"]: e for e in events}
    assert {imp: e.dims["redirect_rejected"] for imp, e in recorded.items() if imp.startswith("n")} == {
        f"n{number}": reason
        for number, (destination, reason) in enumerate(NASTY_DESTINATIONS)
        if not CONTROLS.search(destination)
    }
    assert "redirect_rejected" not in recorded["ok1"].dims
    click_id = recorded["ok1"].dims["click_id"]  # {click_id}: the click id the click is logged with
    assert location == f"https://shop.test/land?c=c%201&k={click_id}&tp_click={click_id}"
    assert recorded["ok2"].dims["redirect_rejected"] == "scheme"
    policy_refusals = sum(1 for destination, _ in NASTY_DESTINATIONS if not CONTROLS.search(destination)) + 1
    assert (
        tracker.wait_metric("trackpoint_rejected_total", 'reason="redirect_not_allowed"', policy_refusals)
        == policy_refusals
    )


def _request_target(url: str) -> str:
    """The path and query of a whole URL, as a client sends them to the tracker."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def test_trackpoint_sign_output_is_accepted_by_a_running_tracker(tracker_factory: Any) -> None:
    # The embedded default's signing section: the key is generated into data_dir by whichever runs first.
    tracker: Tracker = tracker_factory(
        {"event_types": {"impression": {"preset": "impression", "signature": "required"}}}
    )
    key_file = tracker.data_dir / "keys" / "signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    result = _cli(
        "sign",
        "--config",
        str(tracker.config_path),
        "--ttl",
        "60",
        "https://t.example.com/i?imp=cli-1&cid=5",
        cwd=tracker.data_dir,
    )
    assert result.returncode == 0, result.stderr
    signed = result.stdout.strip()
    assert "kid=auto" in signed and "exp=" in signed
    assert signed.startswith("https://t.example.com/i?")  # the host is not covered: any host name of the tracker
    assert tracker.get(_request_target(signed))[0] == 200
    assert tracker.get("/i?imp=cli-2")[0] == 403
    assert [e.dims["imp"] for e in tracker.wait_events(1)] == ["cli-1"]
    unknown = _cli("sign", "--config", str(tracker.config_path), "--key-id", "nope", "https://t.example.com/i?imp=1",
                   cwd=tracker.data_dir)  # fmt: skip
    assert unknown.returncode == 2 and "no signing key 'nope'" in unknown.stderr


@pytest.mark.e2e
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
        # A signed destination goes to any host: a signature that leaves it free would be an open redirect.
        (
            {
                "event_types": {
                    "c": {
                        "preset": "click",
                        "signature": "optional",
                        "signed_params": ["imp", "cid"],
                        "response": {"kind": "redirect", "signed_destinations": True},
                    }
                }
            },
            ("event_types", "c", "response", "signed_destinations"),
            "signed_params must list the destination parameter 'url'",
        ),
        (
            {
                "event_types": {
                    "c": {
                        "preset": "click",
                        "dedupe_key": [],
                        "fields": {"url": {"source": "header", "name": "X-To"}},
                        "response": {"kind": "redirect", "signed_destinations": True},
                    }
                }
            },
            ("event_types", "c", "response", "signed_destinations"),
            "must come from the URL's query",
        ),
        # The banker converts a win's price by its currency: a forger's currency would cost more than the bid.
        (
            {"event_types": {"w": {"preset": "win", "signed_params": ["imp", "cid", "crid", "pub", "max_price"]}}},
            ("event_types", "w", "signed_params"),
            "must list 'cur', the currency the banker 'banker' converts the price by",
        ),
        # Postback credentials cover one advertiser's request, not the items of a batch.
        (
            {
                "event_types": {
                    "v": {
                        "preset": "conversion",
                        "batch": {"paths": ["/conv/batch"]},
                        "postback_auth": {
                            "mode": "required",
                            "advertiser_field": "cid",
                            "secrets": {"a": {"secret_env": "X"}},
                        },
                    }
                }
            },
            ("event_types", "v", "batch"),
            "takes no batches",
        ),
    ],
)
def test_signing_configuration_problems_are_reported(
    tmp_path: Path, document: dict[str, Any], key_path: tuple[str | int, ...], message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [(issue.path, message in issue.message) for issue in caught.value.issues] == [(key_path, True)]


def test_a_signed_post_with_a_forged_body_is_refused(tracker_factory: Any) -> None:
    config = {"event_types": {"conversion": {"preset": "conversion", "signature": "required"}}}
    tracker: Tracker = tracker_factory(config)
    secret = (tracker.data_dir / "keys" / "signing.key").read_bytes().strip()
    body = b'{"order_id": "o-1", "value": 12.5}'
    json_type = {"Content-Type": "application/json"}
    url = sign_url("/conv?cid=c1", "auto", secret, body=body)
    status, headers, _ = tracker.request("POST", url, b'{"order_id": "o-1", "value": 99999}', json_type)
    assert (status, headers["x-reject-reason"]) == (403, "body_digest_invalid")
    unsigned = sign_url("/conv?cid=c1", "auto", secret)
    status, headers, _ = tracker.request("POST", unsigned, body, json_type)
    assert (status, headers["x-reject-reason"]) == (403, "body_unsigned")
    assert tracker.request("POST", url, body, json_type)[0] == 200
    # `trackpoint sign --data` signs the same body.
    result = _cli("sign", "--config", str(tracker.config_path), "--data", body.decode(), "https://t.example.com/conv?cid=c2",
                  cwd=tracker.data_dir)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert tracker.request("POST", _request_target(result.stdout.strip()), body, json_type)[0] == 200
    events = tracker.wait_events(2)
    assert [(e.dims["cid"], e.metrics["value"]) for e in events] == [("c1", 12_500_000), ("c2", 12_500_000)]
    assert tracker.wait_metric("trackpoint_rejected_total", 'reason="body_digest_invalid"', 1) == 1


@pytest.mark.parametrize("methods", [["GET", "HEAD"], ["GET", "HEAD", "POST"]])
def test_a_signed_batch_is_covered_whole_url_and_body(tracker_factory: Any, methods: list[str]) -> None:
    """A batch of a signed type (wins: they debit budgets) is accepted only with its body signed (`bd`) and every
    parameter of its URL signed: the items inherit the URL's parameters, so none may ride after `sig`."""
    win = {"preset": "win", "methods": methods, "collectors": ["log"], "batch": {"paths": ["/win/batch"]}}
    tracker: Tracker = tracker_factory({"event_types": {"win": win}})
    secret = (tracker.data_dir / "keys" / "signing.key").read_bytes().strip()
    json_type = {"Content-Type": "application/json"}
    body = b'[{"imp": "b1", "cid": "c1", "price": "1.00"}, {"imp": "b2", "cid": "c1", "price": "1.20"}]'
    forged = b'[{"imp": "e1", "cid": "victim", "price": "99999"}]'

    def refused(target: str, sent: bytes) -> str:
        status, headers, _ = tracker.request("POST", target, sent, json_type)
        assert status == 403, (target, status)
        return headers["x-reject-reason"]

    assert refused("/win/batch", forged) == "signature_missing"
    assert refused(sign_url("/win/batch", "auto", secret), forged) == "body_unsigned"
    signed = sign_url("/win/batch", "auto", secret, body=body)
    assert refused(signed, forged) == "body_digest_invalid"
    assert refused(signed + "&price=99999", body) == "signature_invalid"  # nothing rides after `sig`
    status, _, answer = tracker.request("POST", signed, body, json_type)
    assert (status, json.loads(answer)) == (200, {"accepted": 2, "refused": []})
    events = tracker.wait_events(2)
    assert sorted((e.dims["imp"], e.metrics["price"]) for e in events) == [("b1", 1_000_000), ("b2", 1_200_000)]
    assert tracker.wait_metric("trackpoint_rejected_total", 'reason="body_digest_invalid"', 1) == 1
