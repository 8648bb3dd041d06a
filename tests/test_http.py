"""Unit tests of http/: kept header names, forwarded addresses, compressed bodies, absolute-form targets, heads."""

from __future__ import annotations

import gc
import gzip
import time
import weakref
import zlib
from collections.abc import Callable
from email.utils import formatdate, parsedate_to_datetime
from types import SimpleNamespace
from typing import cast

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from trackpoint.fields.converters import Reject
from trackpoint.fields.multipart import boundary, form_fields
from trackpoint.http import _headers
from trackpoint.http.connection import (
    FRAMING,
    HOST,
    LEARNED_NAMES_MAX,
    LIST,
    PLAIN,
    HeaderNames,
    HttpConnection,
    header_kind,
)
from trackpoint.http.encoding import Inflater, wbits
from trackpoint.http.forwarded import client_address, forwarded_for, node_address
from trackpoint.http.latency import LatencyHistogram
from trackpoint.http.limits import Caps
from trackpoint.http.responses import Clock, allow_header, head, http_date, origin_form


@pytest.mark.parametrize(
    ("node", "address"),
    [
        ("203.0.113.77", "203.0.113.77"),
        (" 203.0.113.77:5555 ", "203.0.113.77"),
        ("[2001:db8::5]:443", "2001:db8::5"),
        ('"[2001:DB8::5]"', "2001:db8::5"),
        ("2001:db8::5", "2001:db8::5"),
        ("::ffff:81.2.69.5", "81.2.69.5"),  # IPv4-mapped: the IPv4 address (its canonical text is ::ffff:5102:4505)
        ("[::FFFF:5102:4505]:443", "81.2.69.5"),
        ("_hidden", None),
        ("unknown", None),
        ("203.0.113.77:http", None),
        ("[2001:db8::5]x", None),
        ("", None),
    ],
)
def test_node_address(node: str, address: str | None) -> None:
    assert node_address(node) == address


def test_forwarded_for_reads_each_element() -> None:
    header = 'for=192.0.2.60;proto=http;by=203.0.113.43, proto=https, FOR="[2001:db8:cafe::17]:4711"'
    assert forwarded_for(header) == ["192.0.2.60", "", '"[2001:db8:cafe::17]:4711"']


def test_client_address_is_the_right_most_untrusted_node() -> None:
    def trusted(ip: str) -> bool:
        return ip.startswith("10.")

    assert client_address(["198.51.100.1", "203.0.113.9:80", "10.0.0.1"], "10.0.0.2", trusted) == "203.0.113.9"
    assert client_address(["10.0.0.1"], "10.0.0.2", trusted) == "10.0.0.2"
    assert client_address(["198.51.100.1", "_proxy1", "10.0.0.1"], "10.0.0.2", trusted) == "10.0.0.2"


def _inflate(encoding: bytes, body: bytes, split: int = 7, max_bytes: int = 1 << 20, ratio: int = 100) -> bytes:
    window = wbits(encoding)
    assert window is not None
    inflater = Inflater(window, max_bytes, ratio)
    out = b"".join(inflater.inflate(body[i : i + split]) for i in range(0, len(body), split))
    if not inflater.finished():
        raise Reject(400, "content_encoding_invalid")
    return out


@pytest.mark.parametrize("split", [1, 2, 7, 1 << 16])
def test_gzip_zlib_and_raw_deflate_inflate_in_any_chunking(split: int) -> None:
    text = b"order_id=o-1&value=12.5" * 20
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert _inflate(b"gzip", gzip.compress(text), split) == text
    assert _inflate(b"Deflate", zlib.compress(text), split) == text
    assert _inflate(b"deflate", raw.compress(text) + raw.flush(), split) == text


def test_inflation_caps_and_bad_streams() -> None:
    assert wbits(b"identity") is None
    for coding in (b"br", b"zstd", b"gzip, gzip", b"compress"):
        with pytest.raises(Reject) as refused:
            wbits(coding)
        assert (refused.value.status, refused.value.reason) == (415, "unsupported_content_encoding")
    bomb = gzip.compress(b"\0" * (8 << 20))
    for ratio, reason in ((100, "inflation_ratio_exceeded"), (100_000, "inflated_too_large")):
        with pytest.raises(Reject) as refused:
            _inflate(b"gzip", bomb, 1 << 16, ratio=ratio)
        assert (refused.value.status, refused.value.reason) == (413, reason)
    for broken in (gzip.compress(b"abc")[:-3], b"plain text", gzip.compress(b"a") + b"trailing"):
        with pytest.raises(Reject) as refused:
            _inflate(b"gzip", broken)
        assert refused.value.reason == "content_encoding_invalid"


def test_origin_form_of_absolute_targets() -> None:
    assert origin_form(b"http://host/i?imp=1") == b"/i?imp=1"
    assert origin_form(b"HTTPS://host:8443/c") == b"/c"
    assert origin_form(b"http://host") == b"/"
    assert origin_form(b"http://host?x=1") == b"/?x=1"
    assert origin_form(b"ftp://host/i") is None
    assert origin_form(b"*") is None


def test_heads_of_204_have_no_length_and_allow_is_sorted() -> None:
    clock = Clock()
    assert b"Content-Length" not in head(clock, 204, b"", 0, True)
    assert b"Content-Length: 43\r\n" in head(clock, 200, b"", 43, True)
    assert allow_header(["POST", "GET", "HEAD", "GET"]) == b"Allow: GET, HEAD, POST\r\n"


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=253402300799))  # up to 9999-12-31 23:59:59
@example(951782400)  # 2000-02-29, a leap day
@example(1798761599)  # 2026-12-31 23:59:59
def test_the_date_header_is_the_imf_fixdate_email_utils_writes(at: int) -> None:
    assert http_date(at) == formatdate(at, usegmt=True).encode("ascii")
    assert http_date(at + 0.75) == http_date(at)  # a second's fraction does not round up


def test_the_clock_writes_todays_date_line() -> None:
    line = Clock().date_line
    assert line.startswith(b"Date: ") and line.endswith(b" GMT\r\n")
    assert abs(parsedate_to_datetime(line[6:-2].decode()).timestamp() - time.time()) < 5


def test_multipart_fields_skip_files_and_refuse_malformed_bodies() -> None:
    delimiter = boundary(b'multipart/form-data; boundary="b1"')
    body = (
        b'--b1\r\nContent-Disposition: form-data; name="imp"\r\n\r\nx1\r\n'
        b'--b1\r\nContent-Disposition: form-data; name="imp"\r\n\r\nsecond\r\n'
        b'--b1\r\nContent-Disposition: form-data; name="cid"; filename="a.txt"\r\n\r\nfile\r\n'
        b'--b1\r\nContent-Disposition: form-data; name="other"\r\n\r\nignored\r\n--b1--\r\n'
    )
    assert form_fields(body, delimiter, frozenset({"imp", "cid"})) == {"imp": "x1"}
    too_many = b"".join(b'--b1\r\nContent-Disposition: form-data; name="p"\r\n\r\nv\r\n' for _ in range(65)) + b"--b1--"
    for broken in (
        b"--b1\r\nno head\r\n--b1--",
        b"--b1\r\n\r\nv\r\n--b1--",
        b'--b1\r\nContent-Disposition: form-data; name="imp"\r\n\r\nunterminated',
        too_many,
        b'--b1\r\nContent-Disposition: form-data; name="imp"\r\n\r\n\xff\r\n--b1--"',
    ):
        with pytest.raises(Reject) as refused:
            form_fields(broken, delimiter, frozenset({"imp"}))
        assert refused.value.reason == "invalid_multipart"
    with pytest.raises(Reject):
        boundary(b"multipart/form-data")


def test_header_names_keep_the_declared_ones_in_any_spelling_and_learn_a_bounded_number() -> None:
    names = HeaderNames(frozenset({b"user-agent", b"host"}))
    names.kept_names = None  # the pure-Python way, whichever build runs (the next test compares the C step with it)
    assert names.canonical(b"User-Agent") == b"user-agent"
    assert names.canonical(b"USER-AGENT") == b"user-agent"
    assert names.canonical(b"Host") == b"host"
    assert names.canonical(b"X-Unknown") == b""
    assert names.canonical(b"User-Agent") == b"user-agent"  # from what it learned
    # A client inventing names fills the cache up to its cap and no further; every answer stays right.
    for index in range(2 * LEARNED_NAMES_MAX):
        assert names.canonical(b"X-Junk-%d" % index) == b""
    assert len(names.learned) == LEARNED_NAMES_MAX
    assert names.canonical(b"hOsT") == b"host"  # a spelling first seen past the cap: answered, not learned
    assert b"hOsT" not in names.learned


KEPT = frozenset({b"user-agent", b"host", b"x-forwarded-for", b"content-length", b"cookie", b"sec-gpc", b"x-1"})
HEADER_NAME_BYTES = st.sampled_from(sorted({*b"-_.!#0123456789", *range(ord("A"), ord("Z") + 1), 0x40, 0x5B, 0xC9}))


@given(
    name=st.one_of(
        st.sampled_from(sorted(KEPT)).flatmap(lambda kept: st.sampled_from([kept, kept.upper(), kept.title()])),
        st.lists(HEADER_NAME_BYTES, max_size=16).map(bytes),
        st.binary(max_size=16),
    )
)
@example(name=b"X-1")
@example(name=b"HOST\xc9")
@example(name=b"@OST")  # one below "A": not lowered
@example(name=b"[OST")  # one above "Z": not lowered
@settings(max_examples=500, deadline=None, database=None)
def test_the_native_header_step_gives_what_the_python_code_gives(name: bytes) -> None:
    pure = HeaderNames(KEPT)
    answer = _headers.canonical(name, tuple(KEPT))
    assert answer == pure.learn(name)
    assert answer == b"" or any(answer is kept for kept in KEPT)  # the kept object itself, never a copy


def test_the_native_header_step_refuses_arguments_of_other_types() -> None:
    for arguments in [(bytearray(b"host"), (b"host",)), (b"host", [b"host"]), (b"host", ("host",)), (b"host",)]:
        with pytest.raises(TypeError, match="canonical"):
            _headers.canonical(*arguments)  # type: ignore[arg-type]


HEAD_KEPT = tuple(sorted(KEPT | {b"expect", b"forwarded", b"transfer-encoding", b"content-encoding"}))
HEADER_LINE = st.tuples(
    st.one_of(
        st.sampled_from(HEAD_KEPT).flatmap(lambda kept: st.sampled_from([kept, kept.upper(), kept.title()])),
        st.lists(HEADER_NAME_BYTES, max_size=12).map(bytes),
    ),
    st.one_of(st.sampled_from([b"", b"1", b"12", b"100-continue", b"chunked", b" 7 "]), st.binary(max_size=12)),
)


def _framing_step(calls: list[tuple[bytes, bytes]]) -> Callable[[bytes, bytes], None]:
    """A stand-in for on_framing_header: records its calls, and refuses as it does a Content-Length not a number."""

    def framing(name: bytes, value: bytes) -> None:
        calls.append((name, value))
        if name == b"content-length" and not value.strip(b" \t").isdigit():
            raise Reject(413, "body_too_large")

    return framing


class _Reference(HttpConnection):
    """HttpConnection.on_header (the pure-Python code) with its framing step recorded."""

    def __init__(self, max_count: int, max_bytes: int, framing: Callable[[bytes, bytes], None]) -> None:
        caps = cast(Caps, SimpleNamespace(max_header_count=max_count, max_header_bytes=max_bytes))
        super().__init__(caps, HeaderNames(frozenset(HEAD_KEPT)), lambda connection: None, LatencyHistogram())
        self.framing = framing

    def on_framing_header(self, name: bytes, value: bytes) -> None:
        self.framing(name, value)


def _outcome(step: Callable[[bytes, bytes], None], name: bytes, value: bytes) -> tuple[int, str] | None:
    try:
        step(name, value)
    except Reject as refused:
        return refused.status, refused.reason
    return None


@given(
    lines=st.lists(HEADER_LINE, max_size=24),
    max_count=st.integers(1, 30),
    max_bytes=st.integers(1, 300),
    trailers_from=st.integers(0, 30),
)
@example(lines=[(b"Host", b"a"), (b"host", b"b")], max_count=10, max_bytes=100, trailers_from=30)
@example(lines=[(b"X-Forwarded-For", b"1"), (b"x-forwarded-for", b"2")], max_count=10, max_bytes=100, trailers_from=30)
@example(lines=[(b"Content-Length", b"x")], max_count=10, max_bytes=100, trailers_from=30)
@example(lines=[(b"a", b"b")] * 3, max_count=2, max_bytes=100, trailers_from=30)
@example(lines=[(b"Cookie", b"a"), (b"Cookie", b"b")], max_count=10, max_bytes=100, trailers_from=1)
@settings(max_examples=1000, deadline=None, database=None)
def test_the_native_head_step_does_what_on_header_does(
    lines: list[tuple[bytes, bytes]], max_count: int, max_bytes: int, trailers_from: int
) -> None:
    python_calls: list[tuple[bytes, bytes]] = []
    native_calls: list[tuple[bytes, bytes]] = []
    reference = _Reference(max_count, max_bytes, _framing_step(python_calls))
    kinds = tuple(header_kind(name) for name in HEAD_KEPT)
    head = _headers.Head(HEAD_KEPT, kinds, max_count, max_bytes, _framing_step(native_calls), Reject)
    for index, (name, value) in enumerate(lines):
        if index == trailers_from:  # a chunked body began: what follows is its trailer
            reference.trailers = head.trailers = True
        answer = _outcome(head, name, value)
        assert answer == _outcome(reference.on_header, name, value)
        assert head.headers == reference.headers
        assert native_calls == python_calls
        assert (head.count, head.size) == (reference.header_count, reference.header_bytes)
        if answer is not None:  # the parser stops at a refusal
            break
    headers = head.headers
    assert head.reset() is head.headers is not headers
    assert (head.headers, head.count, head.size, head.trailers) == ({}, 0, 0, False)


def test_header_kinds_and_what_the_native_head_step_refuses() -> None:
    assert [header_kind(name) for name in (b"host", b"content-length", b"forwarded", b"cookie")] == [
        HOST,
        FRAMING,
        LIST,
        PLAIN,
    ]
    head = _headers.Head((b"host",), (HOST,), 10, 100, lambda name, value: None, Reject)
    for arguments in [(b"host",), (b"host", "a"), (bytearray(b"host"), b"a")]:
        with pytest.raises(TypeError, match="Head"):
            head(*arguments)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Head"):
        head(name=b"host", value=b"a")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="one kind for each kept name"):
        _headers.Head((b"host",), (), 10, 100, lambda name, value: None, Reject)
    with pytest.raises(ValueError, match="kinds 0 to 3"):
        _headers.Head((b"host",), (4,), 10, 100, lambda name, value: None, Reject)
    with pytest.raises(ValueError, match="kept names are bytes"):
        _headers.Head(("host",), (HOST,), 10, 100, lambda name, value: None, Reject)  # type: ignore[arg-type]


def test_a_connection_and_its_native_head_step_are_collected_together() -> None:
    """The step holds the connection's framing method and the connection holds the step: a cycle the collector
    frees once the connection is gone."""
    reference = _Reference(10, 100, lambda name, value: None)
    reference.head = _headers.Head(HEAD_KEPT, (PLAIN,) * len(HEAD_KEPT), 10, 100, reference.on_framing_header, Reject)
    gone = weakref.ref(reference)
    del reference
    gc.collect()
    assert gone() is None


def test_only_a_set_of_kept_names_goes_to_the_native_header_step() -> None:
    """The admin port keeps every header (a container that is not a set): it learns spellings, whichever build."""

    class Everything:
        def __contains__(self, name: object) -> bool:
            return True

    assert HeaderNames(Everything()).kept_names is None
    assert HeaderNames(Everything()).canonical(b"X-Any") == b"x-any"
