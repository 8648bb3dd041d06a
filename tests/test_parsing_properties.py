"""Property tests of request parsing: query strings, form and JSON bodies, cookies and every field type.

Two kinds of property: what a client encodes comes back out unchanged (round trips), and any input at all yields
either a value or a `Reject` with one of the builder's own reasons, never another exception.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from trackpoint.config.model import EventTypeSpec, FieldSpec, ResponseSpec
from trackpoint.edge.build import EventBuilder
from trackpoint.event import Event, Meta
from trackpoint.fields.converters import Reject, parse_cookies
from trackpoint.fields.macros import PRICE_MACRO_UNSUBSTITUTED
from trackpoint.fields.types import make_converter

PROPERTIES = settings(max_examples=200, deadline=None, database=None)
FIELD_REASONS = frozenset({"missing_field", "invalid_field", "field_out_of_range", "field_too_long"})
BODY_REASONS = FIELD_REASONS | {"invalid_encoding", "invalid_json", "unsupported_media_type", PRICE_MACRO_UNSUBSTITUTED}
FORM = {b"content-type": b"application/x-www-form-urlencoded"}
JSON = {b"content-type": b"application/json"}
META = Meta(worker=0, config="properties")

# One field of every type, all optional, plus a required string and a cookie and a header field.
FIELDS: dict[str, FieldSpec] = {
    "s": FieldSpec(type="string", required=True, max_len=32),
    "n": FieldSpec(type="int", min=-1000, max=1000),
    "d": FieldSpec(type="decimal"),
    "m": FieldSpec(type="money", min=0, max=100000),
    "e": FieldSpec(type="enum", values=["a", "b"]),
    "b": FieldSpec(type="bool"),
    "t": FieldSpec(type="timestamp"),
    "ck": FieldSpec(source="cookie", name="sid"),
    "hd": FieldSpec(source="header", name="X-Thing", max_len=16),
}
# A type answering JSON, whose fields refuse invalid values (`on_invalid` unset), and a pixel, whose optional
# fields drop them.
BUILDER = EventBuilder(
    "prop",
    EventTypeSpec(
        paths=["/p"], methods=["GET", "POST"], fields=FIELDS, dedupe_key=["s"], response=ResponseSpec(kind="json")
    ),
    META,
)
PIXEL = EventBuilder(
    "prop", EventTypeSpec(paths=["/p"], methods=["GET", "POST"], fields=FIELDS, dedupe_key=["s"]), META
)
NAMES = sorted(FIELDS)


def outcome(query: bytes, body: bytes | None = None, headers: dict[bytes, bytes] | None = None) -> Event | Reject:
    try:
        return BUILDER.build(query, body, headers or {}, "192.0.2.1")
    except Reject as reject:
        return reject


def assert_clean(result: Event | Reject, reasons: frozenset[str]) -> None:
    if isinstance(result, Reject):
        assert result.reason in reasons, result.reason
        assert result.status in (400, 415)
        if result.reason in FIELD_REASONS:
            assert result.field in FIELDS
    else:
        assert result.type == "prop" and result.dims["s"]
        assert set(result.dims) | set(result.metrics) <= set(FIELDS)


def convert(field_type: str, raw: str, **options: Any) -> str | int | float:
    return make_converter("f", FieldSpec(type=field_type, **options))(raw)


def converts_or_rejects(field_type: str, raw: str, **options: Any) -> str | int | float | Reject:
    try:
        return convert(field_type, raw, **options)
    except Reject as reject:
        rejected = reject
    assert rejected.status == 400 and rejected.field == "f"
    allowed = {"invalid_field", "field_out_of_range"} | (
        {PRICE_MACRO_UNSUBSTITUTED} if field_type == "money" else set()
    )
    assert rejected.reason in allowed
    return rejected


# --- query, form and JSON ---------------------------------------------------------------------------------------

TOKENS = st.sampled_from(
    [b"s", b"n", b"d", b"m", b"e", b"b", b"t", b"=", b"&", b"%", b"%2", b"%41", b"%FF", b"%C3%A9", b"+", b"\xff",
     b"1", b"-", b".", b"e5", b"a", b"true", b"2024-01-01T00:00:00Z", b"\x00", b";", b"nan", b"inf"]
)  # fmt: skip
ANY_QUERY = st.one_of(st.binary(max_size=200), st.lists(TOKENS, max_size=40).map(b"".join))


@given(ANY_QUERY)
@example(b"s=x&n=99999999999999999999")
@example(b"s=x&t=9999-12-31T23:59:59-23:59")
@example(b"s=x&d=1e999")
@PROPERTIES
def test_any_query_builds_or_rejects_with_a_field_reason(query: bytes) -> None:
    assert_clean(outcome(query), BODY_REASONS)


@given(ANY_QUERY)
@example(b"s=x&n=99999999999999999999&e=%FF")
@PROPERTIES
def test_a_pixel_refuses_only_for_its_key_and_drops_what_the_json_type_refuses(query: bytes) -> None:
    refused = outcome(query)
    try:
        kept: Event | Reject = PIXEL.build(query, None, {}, "192.0.2.1")
    except Reject as reject:
        kept = reject
    if isinstance(kept, Reject):  # only the required dedupe key refuses a pixel
        assert kept.field == "s" and isinstance(refused, Reject) and refused.field == "s"
        return
    invalid = dict(entry.split(":") for entry in kept.dims.pop("invalid", "").split(",") if entry)
    assert "s" not in invalid and set(invalid) <= set(FIELDS)
    if isinstance(refused, Reject):  # the JSON type refused the first bad field: the pixel dropped it
        assert invalid.get(refused.field or "") == refused.reason
    else:
        assert not invalid and kept.dims == refused.dims and kept.metrics == refused.metrics


@given(ANY_QUERY, ANY_QUERY)
@PROPERTIES
def test_any_form_body_builds_or_rejects(query: bytes, body: bytes) -> None:
    assert_clean(outcome(query, body, FORM), BODY_REASONS)


VALUES = st.text(max_size=32).filter(lambda text: text != "")
CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f]")  # refused in text fields (ASCII controls but the tab)


@given(s=VALUES, e=st.sampled_from(["a", "b"]), in_body=st.booleans())
@example(s="a b&c=d+%", e="a", in_body=True)
@example(s="é€\u0000", e="b", in_body=False)
@PROPERTIES
def test_urlencoded_values_round_trip_in_the_query_and_the_form_body(s: str, e: str, in_body: bool) -> None:
    """Printable text round-trips exactly; a value with a control (NUL, a newline, ...) is refused, never stored."""
    encoded = urlencode({"s": s, "e": e}).encode()
    if CONTROLS.search(s):
        with pytest.raises(Reject) as rejected:
            BUILDER.build(b"", encoded, FORM, "192.0.2.1") if in_body else BUILDER.build(encoded, None, {}, "ip")
        assert (rejected.value.status, rejected.value.reason, rejected.value.field) == (400, "invalid_field", "s")
        return
    event = BUILDER.build(b"", encoded, FORM, "192.0.2.1") if in_body else BUILDER.build(encoded, None, {}, "ip")
    assert event.dims["s"] == s and event.dims["e"] == e


JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
)


@given(st.one_of(JSON_VALUES, st.dictionaries(st.sampled_from([*NAMES, "x"]), JSON_VALUES, max_size=8)))
@PROPERTIES
def test_any_json_document_builds_or_rejects(document: Any) -> None:
    assert_clean(outcome(b"", json.dumps(document).encode(), JSON), BODY_REASONS)


@given(st.binary(min_size=1, max_size=200))
@example(b"[" * 10_000)
@example(b'{"s": "\xa2"}')
@PROPERTIES
def test_any_bytes_as_a_json_body_build_or_reject(body: bytes) -> None:
    assert_clean(outcome(b"", body, JSON), BODY_REASONS)


PRINTABLE_VALUES = VALUES.filter(lambda text: not CONTROLS.search(text))


@given(s=PRINTABLE_VALUES, n=st.integers(-1000, 1000), m=st.decimals(0, 100000, places=6), b=st.booleans())
@PROPERTIES
def test_json_values_round_trip(s: str, n: int, m: Any, b: bool) -> None:
    body = json.dumps({"s": s, "n": n, "b": b}).encode()[:-1] + b', "m": ' + format(m, "f").encode() + b"}"
    event = BUILDER.build(b"", body, JSON, "192.0.2.1")
    assert event.dims["s"] == s and event.dims["b"] == ("true" if b else "false")
    assert event.metrics["n"] == n and event.metrics["m"] == int(m * 1_000_000)


# --- cookies and headers ----------------------------------------------------------------------------------------

COOKIE_NAME = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.", min_size=1, max_size=12)
COOKIE_VALUE = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-.:/=!*", max_size=24)


@given(st.binary(max_size=300))
@example(b";;;==;=")
@example(b"\xff\xfe=\xff")
@PROPERTIES
def test_any_cookie_header_parses_to_strings(header: bytes) -> None:
    cookies = parse_cookies(header)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in cookies.items())
    assert all(k and ";" not in k and "=" not in k for k in cookies)
    assert_clean(outcome(b"s=x", None, {b"cookie": header}), BODY_REASONS)


@given(st.lists(st.tuples(COOKIE_NAME, COOKIE_VALUE), max_size=8), st.sampled_from(["; ", ";", ";  "]))
@PROPERTIES
def test_cookies_round_trip_and_the_first_occurrence_wins(pairs: list[tuple[str, str]], separator: str) -> None:
    header = separator.join(f"{name}={value}" for name, value in pairs).encode()
    expected: dict[str, str] = {}
    for name, value in pairs:
        expected.setdefault(name, value)
    assert parse_cookies(header) == expected


@given(value=COOKIE_VALUE.filter(bool), thing=st.binary(min_size=1, max_size=16))
@PROPERTIES
def test_cookie_and_header_fields_reach_the_event(value: str, thing: bytes) -> None:
    result = outcome(b"s=x", None, {b"cookie": f"a=1; sid={value}".encode(), b"x-thing": thing})
    if re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", thing):  # ASCII controls (but the tab) are refused
        assert isinstance(result, Reject) and (result.reason, result.field) == ("invalid_field", "hd")
        return
    assert isinstance(result, Event)
    assert result.dims["ck"] == value and result.dims["hd"] == thing.decode("utf-8", "replace")  # never mojibake


# --- every field type -------------------------------------------------------------------------------------------


@given(st.integers(-(10**18) + 1, 10**18 - 1))
@PROPERTIES
def test_int_round_trips(number: int) -> None:
    assert convert("int", str(number)) == number
    assert convert("int", ("+" if number >= 0 else "") + str(number)) == number


@given(st.integers(-(10**6), 10**6))
@PROPERTIES
def test_int_bounds(number: int) -> None:
    result = converts_or_rejects("int", str(number), min=-1000, max=1000)
    assert (result == number) if -1000 <= number <= 1000 else (isinstance(result, Reject))


@given(st.floats(allow_nan=False, allow_infinity=False))
@PROPERTIES
def test_decimal_round_trips_python_and_javascript_float_text(number: float) -> None:
    assert convert("decimal", repr(number)) == number
    assert convert("decimal", json.dumps(number)) == number


@given(st.text(max_size=16))
@PROPERTIES
def test_any_text_as_int_decimal_money_or_timestamp_converts_or_rejects(raw: str) -> None:
    field_types: tuple[str, ...] = ("int", "decimal", "money", "timestamp")
    for field_type in field_types:
        result = converts_or_rejects(field_type, raw)
        if not isinstance(result, Reject):
            assert isinstance(result, int | float)
            if field_type != "decimal":
                assert isinstance(result, int)


@given(st.text(max_size=8))
@PROPERTIES
def test_bool_is_case_insensitive_and_two_valued(raw: str) -> None:
    result = converts_or_rejects("bool", raw)
    truthy, falsy = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
    if raw.lower() in truthy:
        assert result == "true"
    elif raw.lower() in falsy:
        assert result == "false"
    else:
        assert isinstance(result, Reject)


@given(st.text(max_size=8), st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=5))
@PROPERTIES
def test_enum_accepts_exactly_its_values(raw: str, values: list[str]) -> None:
    result = converts_or_rejects("enum", raw, values=values)
    assert (result == raw) if raw in values else isinstance(result, Reject)


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.timezones()))
@PROPERTIES
def test_timestamp_iso_round_trips_to_epoch_milliseconds(moment: datetime) -> None:
    if moment.utcoffset() is None:  # a zone without this local time: hypothesis may still give one
        return
    expected = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    assert convert("timestamp", moment.isoformat()) == expected


@given(st.integers(0, 10**15 - 1))
@PROPERTIES
def test_timestamp_epoch_seconds_or_milliseconds(number: int) -> None:
    expected = number if number >= 100_000_000_000 else number * 1000
    assert convert("timestamp", str(number)) == expected


@given(st.text(min_size=1, max_size=40).filter(lambda text: not CONTROLS.search(text)))
@PROPERTIES
def test_string_length_is_counted_in_characters_of_the_decoded_value(value: str) -> None:
    result = outcome(b"s=" + quote(value, safe="").encode())
    if len(value) > 32:
        assert isinstance(result, Reject) and (result.reason, result.field) == ("field_too_long", "s")
    else:
        assert isinstance(result, Event) and result.dims["s"] == value


@pytest.mark.parametrize("reason", sorted(FIELD_REASONS))
def test_every_field_reason_is_reachable(reason: str) -> None:
    query = {
        "missing_field": b"n=1",
        "invalid_field": b"s=x&n=abc",
        "field_out_of_range": b"s=x&n=5000",
        "field_too_long": b"s=" + b"x" * 33,
    }[reason]
    result = outcome(query)
    assert isinstance(result, Reject) and result.reason == reason
