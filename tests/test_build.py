"""Unit tests of `EventBuilder`: fields from the query, body, headers, cookies and client IP into events.

The default configuration's event types are used as they load; other sources use event types built by hand.
"""

from __future__ import annotations

import hashlib
import json
import re
import time

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import load_config
from trackpoint.config.model import EventTypeSpec, FieldSpec, ResponseSpec
from trackpoint.edge import _id
from trackpoint.edge.build import EventBuilder
from trackpoint.event import Context, Event, Meta, derived_id, random_id
from trackpoint.fields.converters import Reject

HEX32 = re.compile(r"[0-9a-f]{32}")
FORM = {b"content-type": b"application/x-www-form-urlencoded"}
JSON = {b"content-type": b"application/json"}
META = Meta(worker=3, config="test")


def default_builder(type_name: str) -> EventBuilder:
    return EventBuilder(type_name, load_config().config.event_types[type_name], META)


def spec_builder(fields: dict[str, FieldSpec], dedupe_key: list[str] | None = None) -> EventBuilder:
    spec = EventTypeSpec(paths=["/x"], methods=["GET", "POST"], fields=fields, dedupe_key=dedupe_key or [])
    return EventBuilder("custom", spec, META)


def build(
    builder: EventBuilder,
    query: bytes = b"",
    body: bytes | bytearray | None = None,
    headers: dict[bytes, bytes] | None = None,
    ip: str = "192.0.2.10",
) -> Event:
    return builder.build(query, body, headers or {}, ip)


def rejection(
    builder: EventBuilder,
    query: bytes = b"",
    body: bytes | None = None,
    headers: dict[bytes, bytes] | None = None,
) -> Reject:
    with pytest.raises(Reject) as caught:
        build(builder, query, body, headers)
    return caught.value


# --- default event types ------------------------------------------------------------------------------------


def test_impression_fields_land_in_dims() -> None:
    before = int(time.time() * 1000)
    event = build(
        default_builder("impression"),
        b"imp=i-1&cid=c-1&crid=cr-1&pub=p-1&unknown=zz",
        headers={b"user-agent": b"Agent/1.0", b"referer": b"https://pub.example/page"},
        ip="203.0.113.7",
    )
    after = int(time.time() * 1000)
    assert event.type == "impression"
    assert event.dims == {"imp": "i-1", "cid": "c-1", "crid": "cr-1", "pub": "p-1"}
    assert event.metrics == {}
    assert event.ctx == Context(ip="203.0.113.7", ua="Agent/1.0", referer="https://pub.example/page")
    assert event.meta == META
    assert before <= event.ts <= after


def test_optional_fields_are_left_out_when_absent_or_empty() -> None:
    event = build(default_builder("impression"), b"imp=i-1&cid=")
    assert event.dims == {"imp": "i-1"}
    assert event.ctx == Context(ip="192.0.2.10")


def test_win_price_is_money_in_metrics_and_currency_defaults_to_usd() -> None:
    event = build(default_builder("win"), b"imp=i-1&price=1.25")
    assert event.metrics == {"price": 1_250_000}
    assert type(event.metrics["price"]) is int
    assert event.dims == {"imp": "i-1", "cur": "USD"}
    assert build(default_builder("win"), b"imp=i-1&price=2&cur=EUR").dims["cur"] == "EUR"


def test_video_fields_and_types() -> None:
    event = build(default_builder("video"), b"imp=i-1&ev=firstQuartile&t=12.5&pub=p")
    assert event.dims == {"imp": "i-1", "ev": "firstQuartile", "pub": "p"}
    assert event.metrics == {"t": 12.5}
    assert type(event.metrics["t"]) is float


def test_conversion_value_and_default_currency() -> None:
    event = build(default_builder("conversion"), b"order_id=o-1&click_id=k-1&value=19.99")
    assert event.dims == {"order_id": "o-1", "click_id": "k-1", "cur": "USD"}
    assert event.metrics == {"value": 19_990_000}


def test_click_keeps_the_url() -> None:
    event = build(default_builder("click"), b"imp=i-1&url=https%3A%2F%2Fexample.com%2Fland%3Fa%3D1")
    assert event.dims == {"imp": "i-1", "url": "https://example.com/land?a=1"}


@pytest.mark.parametrize(
    ("type_name", "query", "field"),
    [
        ("impression", b"cid=c", "imp"),
        ("impression", b"imp=", "imp"),
        ("impression", b"", "imp"),
        ("click", b"imp=i", "url"),
        ("video", b"imp=i&t=1", "ev"),
        ("win", b"imp=i&cur=EUR", "price"),
    ],
)
def test_missing_required_field_is_rejected(type_name: str, query: bytes, field: str) -> None:
    reject = rejection(default_builder(type_name), query)
    assert (reject.status, reject.reason, reject.field) == (400, "missing_field", field)


def test_too_long_field_is_rejected() -> None:
    builder = default_builder("impression")
    assert build(builder, b"imp=" + b"a" * 64).dims["imp"] == "a" * 64
    reject = rejection(builder, b"imp=" + b"a" * 65)
    assert (reject.status, reject.reason, reject.field) == (400, "field_too_long", "imp")
    assert build(builder, b"imp=i&pub=" + b"p" * 65).dims == {"imp": "i", "invalid": "pub:field_too_long"}
    assert rejection(default_builder("win"), b"imp=i&price=1&cur=EURO").reason == "field_too_long"


def test_length_is_counted_in_decoded_characters() -> None:
    event = build(default_builder("impression"), b"imp=" + b"%C3%A9" * 64)
    assert event.dims["imp"] == "é" * 64


@pytest.mark.parametrize(
    ("type_name", "query", "reason", "field"),
    [
        ("win", b"imp=i&price=abc", "invalid_field", "price"),
        ("win", b"imp=i&price=100000.01", "price_out_of_range", "price"),
        ("win", b"imp=i&price=-1", "price_out_of_range", "price"),
        ("video", b"imp=i&ev=bogus", "invalid_field", "ev"),
        ("impression", b"imp=%FF", "invalid_encoding", "imp"),  # required: refused even on a pixel
        ("impression", b"imp=i%0Aj", "invalid_field", "imp"),
        ("conversion", b"order_id=o&value=abc", "invalid_field", "value"),  # not a pixel: refused
        ("conversion", b"order_id=o&cid=%FC", "invalid_encoding", "cid"),
    ],
)
def test_invalid_values_are_rejected(type_name: str, query: bytes, reason: str, field: str) -> None:
    reject = rejection(default_builder(type_name), query)
    assert (reject.status, reject.reason, reject.field) == (400, reason, field)


# --- on_invalid: one bad optional value does not cost a pixel its event ---------------------------------------


@pytest.mark.parametrize(
    ("type_name", "query", "kept", "invalid"),
    [
        ("impression", b"imp=i&cid=%FC", {"imp": "i"}, "cid:invalid_encoding"),  # Latin-1 ü, percent-encoded
        ("impression", b"imp=i&cid=\xfcber&pub=p", {"imp": "i", "pub": "p"}, "cid:invalid_encoding"),  # raw byte
        ("impression", b"imp=i&cid=a%00b", {"imp": "i"}, "cid:invalid_field"),
        ("impression", b"imp=i&cid=%FC&crid=" + b"c" * 65, {"imp": "i"}, "cid:invalid_encoding,crid:field_too_long"),
        ("video", b"imp=i&ev=start&t=nan", {"imp": "i", "ev": "start"}, "t:invalid_field"),
        ("video", b"imp=i&ev=start&t=86401", {"imp": "i", "ev": "start"}, "t:field_out_of_range"),
        ("video", b"imp=i&ev=error&code=1009", {"imp": "i", "ev": "error"}, "code:field_out_of_range"),
    ],
)
def test_a_pixel_keeps_its_event_without_an_invalid_optional_value(
    type_name: str, query: bytes, kept: dict[str, str], invalid: str
) -> None:
    builder = default_builder(type_name)
    event = build(builder, query)
    assert event.dims == {**kept, "invalid": invalid}
    assert builder.dropped == dict.fromkeys(invalid.split(","), 1)  # counted for /metrics
    key = load_config().config.event_types[type_name].dedupe_key
    assert event.id == derived_id(type_name, [kept[name] for name in key])  # the dedupe key is untouched
    msgspec.json.encode(event)  # and the event serialises: nothing undecodable was kept


def test_a_raw_utf8_value_is_a_value_not_an_error() -> None:
    event = build(default_builder("impression"), "imp=i&cid=äpfel".encode())
    assert event.dims == {"imp": "i", "cid": "äpfel"}


def test_on_invalid_overrides_the_types_default_but_never_for_required_or_key_fields() -> None:
    fields = {
        "id": FieldSpec(required=True, max_len=4),
        "order": FieldSpec(max_len=4),
        "n": FieldSpec(type="int", on_invalid="drop"),
        "m": FieldSpec(type="int"),
        "x": FieldSpec(type="int", on_invalid="drop"),
    }
    spec = EventTypeSpec(paths=["/x"], fields=fields, dedupe_key=["id", "order"], response=ResponseSpec(kind="json"))
    builder = EventBuilder("custom", spec, META)
    assert build(builder, b"id=a&order=o&n=z&x=1").dims == {"id": "a", "order": "o", "invalid": "n:invalid_field"}
    assert rejection(builder, b"id=a&m=z").field == "m"  # a json type rejects by default
    assert rejection(builder, b"id=aaaaa&n=1").reason == "field_too_long"  # required
    assert rejection(builder, b"id=a&order=ooooo").field == "order"  # part of the dedupe key
    gif = EventTypeSpec(
        paths=["/y"], fields={"id": FieldSpec(required=True), "m": FieldSpec(type="int", on_invalid="reject")}
    )
    assert rejection(EventBuilder("gif", gif, META), b"id=a&m=z").field == "m"


# --- ids ----------------------------------------------------------------------------------------------------


def test_deterministic_id_is_the_derived_id_of_the_key_values() -> None:
    builder = default_builder("impression")
    first = build(builder, b"imp=i-42&cid=a")
    second = build(builder, b"cid=b&imp=i-42", ip="198.51.100.1")
    assert first.id == derived_id("impression", ["i-42"])
    assert second.id == first.id
    assert build(builder, b"imp=i-43").id != first.id
    assert build(default_builder("win"), b"imp=i-42&price=1").id == derived_id("win", ["i-42"])


def test_deterministic_id_over_several_key_fields() -> None:
    builder = default_builder("video")
    event = build(builder, b"imp=i-1&ev=start&t=3")
    assert event.id == derived_id("video", ["i-1", "start"])
    assert build(builder, b"imp=i-1&ev=complete").id == derived_id("video", ["i-1", "complete"])
    assert build(builder, b"imp=i-1&ev=start&t=9").id == event.id


def test_deterministic_id_of_non_ascii_key_value() -> None:
    event = build(default_builder("impression"), b"imp=%E2%82%AC%F0%9F%98%80")
    assert event.id == derived_id("impression", ["€😀"])


def test_deterministic_id_from_a_metric_key_field() -> None:
    builder = spec_builder({"n": FieldSpec(type="int", required=True)}, dedupe_key=["n"])
    event = build(builder, b"n=7")
    assert event.metrics == {"n": 7}
    assert event.id == derived_id("custom", ["7"])


# The compiled build's id step (edge/_id.c) against hashlib: BLAKE2b-128 of the prefix, then the value in UTF-8.
# Lengths around the 128-byte block (a final block that is full, one more byte) and multi-block values included.
@given(
    prefix=st.sampled_from([b"impression\x1f", b"", b"video\x1f", b"x" * 127, b"y" * 128, "wün\x1f".encode()]),
    value=st.text(max_size=300) | st.text(alphabet="ab", min_size=100, max_size=400),
)
@example(prefix=b"", value="")
@example(prefix=b"impression\x1f", value="a" * 117)  # 128 bytes in all: one full block, compressed as the last
@example(prefix=b"impression\x1f", value="a" * 118)  # 129: a full block, then one byte
@example(prefix=b"y" * 128, value="a" * 128)
@settings(max_examples=1000, deadline=None, database=None)
def test_the_native_id_step_is_hashlibs_blake2b(prefix: bytes, value: str) -> None:
    try:
        encoded = value.encode()
    except UnicodeEncodeError:  # a lone surrogate: no field accepts one; the step raises as encode() does
        with pytest.raises(UnicodeEncodeError):
            _id.derived(prefix, value)
        return
    assert _id.derived(prefix, value) == hashlib.blake2b(prefix + encoded, digest_size=16).hexdigest()


def test_the_native_id_step_is_the_derived_id_and_refuses_other_types() -> None:
    assert _id.derived(b"impression\x1f", "i-42") == derived_id("impression", ["i-42"])
    assert _id.derived(b"impression\x1f", "€😀") == derived_id("impression", ["€😀"])
    for arguments in [("impression\x1f", "i-42"), (b"impression\x1f", b"i-42"), (b"impression\x1f",)]:
        with pytest.raises(TypeError, match="derived"):
            _id.derived(*arguments)  # type: ignore[arg-type]


def assert_random_id(event: Event) -> None:
    assert HEX32.fullmatch(event.id), event.id
    assert event.id[:12] == f"{event.ts:012x}"  # 48 bits of milliseconds first: ids sort by time
    assert event.id[12] == "7"  # UUIDv7 version nibble
    assert event.id[16] in "89ab"  # RFC 4122 variant


def test_random_id_when_the_dedupe_key_field_is_absent() -> None:
    builder = default_builder("conversion")
    first = build(builder, b"click_id=k-1")
    second = build(builder, b"click_id=k-1")
    assert_random_id(first)
    assert_random_id(second)
    assert first.id != second.id
    assert build(builder, b"order_id=o-1").id == derived_id("conversion", ["o-1"])


def test_random_id_when_the_type_has_no_dedupe_key() -> None:
    builder = spec_builder({"a": FieldSpec()})
    ids = {build(builder, b"a=same").id for _ in range(50)}
    assert len(ids) == 50
    assert_random_id(build(builder, b"a=same"))


def test_random_ids_are_time_ordered() -> None:
    stamps = [1_700_000_000_000 + step for step in range(0, 2000, 7)]
    ids = [random_id(ts) for ts in stamps]
    assert ids == sorted(ids)
    assert all(HEX32.fullmatch(value) for value in ids)
    assert random_id(2**48 - 1) > random_id(1_700_000_000_000)


# --- bodies -------------------------------------------------------------------------------------------------


def test_form_body() -> None:
    headers = {b"content-type": b"application/x-www-form-urlencoded; charset=UTF-8"}
    body = b"order_id=o+1&value=9.99&cur=EUR&other=x"
    event = build(default_builder("conversion"), body=body, headers=headers)
    assert event.dims == {"order_id": "o 1", "cur": "EUR"}
    assert event.metrics == {"value": 9_990_000}


def test_json_body_numbers_and_bools_become_strings_before_conversion() -> None:
    body = b'{"order_id": 42, "value": 12.5, "cid": "c", "extra": 1}'
    event = build(default_builder("conversion"), body=body, headers=JSON)
    assert event.dims == {"order_id": "42", "cid": "c", "cur": "USD"}
    assert event.metrics == {"value": 12_500_000}
    assert event.id == derived_id("conversion", ["42"])
    builder = spec_builder({"flag": FieldSpec(type="bool"), "n": FieldSpec(type="int"), "s": FieldSpec()})
    event = build(builder, body=b'{"flag": true, "n": 3, "s": false}', headers=JSON)
    assert event.dims == {"flag": "true", "s": "false"}
    assert event.metrics == {"n": 3}


def test_json_body_null_is_absent() -> None:
    body = b'{"order_id": "o", "cur": null, "cid": null}'
    event = build(default_builder("conversion"), body=body, headers=JSON)
    assert event.dims == {"order_id": "o", "cur": "USD"}


def test_json_body_objects_and_arrays_are_absent() -> None:
    body = b'{"order_id": "o", "cid": {"nested": 1}, "click_id": [1, 2], "cur": []}'
    event = build(default_builder("conversion"), body=body, headers=JSON)
    assert event.dims == {"order_id": "o", "cur": "USD"}


def test_json_body_money_in_exponent_range() -> None:
    # 0.00005 is a JSON number of 50 micros; the same amount in a query is accepted.
    builder = default_builder("conversion")
    assert build(builder, b"order_id=o&value=0.00005").metrics == {"value": 50}
    assert build(builder, body=b'{"order_id": "o", "value": 0.00005}', headers=JSON).metrics == {"value": 50}
    assert build(builder, body=b'{"order_id": "o", "value": 49.90}', headers=JSON).metrics == {"value": 49_900_000}
    assert build(builder, body=b'{"order_id": "o", "value": 1e2}', headers=JSON).metrics == {"value": 100_000_000}


def test_text_plain_body_is_json() -> None:
    body = json.dumps({"order_id": "o-9", "value": "3"}).encode()
    headers = {b"content-type": b"text/plain;charset=UTF-8"}
    event = build(default_builder("conversion"), body=body, headers=headers)
    assert event.dims["order_id"] == "o-9"
    assert event.metrics == {"value": 3_000_000}


@pytest.mark.parametrize(
    "headers",
    [
        {b"content-type": b"application/xml"},
        {b"content-type": b"multipart/mixed; boundary=x"},
        {},
    ],
)
def test_unsupported_content_type_is_415(headers: dict[bytes, bytes]) -> None:
    reject = rejection(default_builder("conversion"), body=b"order_id=o", headers=headers)
    assert (reject.status, reject.reason, reject.field) == (415, "unsupported_media_type", None)


@pytest.mark.parametrize("body", [b"{", b"not json", b"[1, 2]", b'{"order_id": "o"', b'"text"', b"{} trailing"])
def test_invalid_json_is_rejected(body: bytes) -> None:
    reject = rejection(default_builder("conversion"), body=body, headers=JSON)
    assert (reject.status, reject.reason, reject.field) == (400, "invalid_json", None)


def test_query_wins_over_body() -> None:
    builder = default_builder("conversion")
    form = build(builder, b"order_id=from-query", b"order_id=from-body&cid=body-cid", FORM)
    assert form.dims["order_id"] == "from-query"
    assert form.dims["cid"] == "body-cid"
    doc = build(builder, b"order_id=from-query", b'{"order_id": "from-body", "value": 1}', JSON)
    assert doc.dims["order_id"] == "from-query"
    assert doc.metrics == {"value": 1_000_000}


def test_an_empty_body_is_not_parsed() -> None:
    event = build(default_builder("conversion"), b"order_id=o", b"", {b"content-type": b"application/xml"})
    assert event.dims["order_id"] == "o"


def test_a_bytearray_body_is_accepted() -> None:
    event = build(default_builder("conversion"), body=bytearray(b"order_id=o&value=1"), headers=FORM)
    assert event.metrics == {"value": 1_000_000}


# --- sources and placement (event types built by hand) ------------------------------------------------------


def test_header_cookie_and_ip_sources() -> None:
    builder = spec_builder(
        {
            "agent": FieldSpec(source="header", name="User-Agent"),
            "count": FieldSpec(type="int", source="header", name="X-Count"),
            "session": FieldSpec(source="cookie", name="sid"),
            "client": FieldSpec(source="ip"),
        }
    )
    assert builder.header_names == {b"user-agent", b"x-count", b"cookie"}
    event = build(
        builder,
        headers={b"user-agent": b"Agent/2", b"x-count": b"12", b"cookie": b"other=1; sid=s-99"},
        ip="2001:db8::1",
    )
    assert event.dims == {"agent": "Agent/2", "session": "s-99", "client": "2001:db8::1"}
    assert event.metrics == {"count": 12}


def test_header_and_cookie_rules() -> None:
    builder = spec_builder(
        {
            "token": FieldSpec(source="header", name="X-Token", required=True, max_len=8),
            "session": FieldSpec(source="cookie", name="sid", default="anonymous"),
        }
    )
    assert build(builder, headers={b"x-token": b"t"}).dims == {"token": "t", "session": "anonymous"}
    missing = rejection(builder, headers={b"cookie": b"sid=s"})
    assert (missing.status, missing.reason, missing.field) == (400, "missing_field", "token")
    long = rejection(builder, headers={b"x-token": b"123456789"})
    assert (long.reason, long.field) == ("field_too_long", "token")
    assert build(builder, headers={b"x-token": b"t", b"cookie": b'sid="q"'}).dims["session"] == "q"


def test_header_values_are_utf8_and_invalid_bytes_become_replacement_characters() -> None:
    builder = spec_builder({"h": FieldSpec(source="header", name="x-h")})
    assert build(builder, headers={b"x-h": "café".encode()}).dims == {"h": "café"}
    assert build(builder, headers={b"x-h": "café".encode("latin-1")}).dims == {"h": "caf\ufffd"}


def test_a_field_may_be_read_under_another_parameter_name() -> None:
    builder = spec_builder({"campaign": FieldSpec(name="c", required=True)})
    assert build(builder, b"c=summer&campaign=ignored").dims == {"campaign": "summer"}
    assert rejection(builder, b"campaign=x").reason == "missing_field"


def test_query_source_ignores_the_body_and_body_sources_ignore_the_query() -> None:
    builder = spec_builder({"q": FieldSpec(source="query"), "f": FieldSpec(source="form")})
    from_query = build(builder, b"q=1&f=1")
    assert from_query.dims == {"q": "1"}
    from_body = build(builder, body=b"q=2&f=2", headers=FORM)
    assert from_body.dims == {"f": "2"}
    from_json = build(builder, body=b'{"q": "3"}', headers=JSON)
    assert from_json.dims == {}


def test_form_and_json_sources_read_only_their_own_body_kind() -> None:
    builder = spec_builder({"f": FieldSpec(source="form"), "j": FieldSpec(source="json")})
    assert build(builder, body=b"f=1&j=1", headers=FORM).dims == {"f": "1"}
    assert build(builder, body=b'{"f": "2", "j": "2"}', headers=JSON).dims == {"j": "2"}


def test_numbers_go_to_metrics_and_others_to_dims_unless_into_says_otherwise() -> None:
    builder = spec_builder(
        {
            "n": FieldSpec(type="int"),
            "d": FieldSpec(type="decimal"),
            "m": FieldSpec(type="money"),
            "ts": FieldSpec(type="timestamp"),
            "b": FieldSpec(type="bool"),
            "e": FieldSpec(type="enum", values=["x", "y"]),
            "n_dim": FieldSpec(type="int", into="dims"),
            "m_dim": FieldSpec(type="money", into="dims"),
            "ts_dim": FieldSpec(type="timestamp", into="dims"),
        }
    )
    event = build(builder, b"n=5&d=0.5&m=1.5&ts=1700000000&b=yes&e=y&n_dim=6&m_dim=2.5&ts_dim=1700000000123")
    assert event.metrics == {"n": 5, "d": 0.5, "m": 1_500_000, "ts": 1_700_000_000_000}
    assert event.dims == {"b": "true", "e": "y", "n_dim": "6", "m_dim": "2500000", "ts_dim": "1700000000123"}


def test_defaults_are_converted_like_input() -> None:
    builder = spec_builder(
        {
            "m": FieldSpec(type="money", default="0.5"),
            "m_dim": FieldSpec(type="money", into="dims", default="2"),
        }
    )
    event = build(builder)
    assert event.metrics == {"m": 500_000}
    assert event.dims == {"m_dim": "2000000"}


def test_a_bad_default_fails_when_the_builder_is_made() -> None:
    spec = EventTypeSpec(paths=["/x"], fields={"n": FieldSpec(type="int", default="many")})
    with pytest.raises(Reject) as caught:
        EventBuilder("custom", spec, META)
    assert (caught.value.reason, caught.value.field) == ("invalid_field", "n")


def test_builders_of_every_default_type_build_a_minimal_event() -> None:
    minimal = {
        "impression": b"imp=i",
        "click": b"imp=i&url=https://example.com/",
        "conversion": b"",
        "video": b"imp=i&ev=start",
        "win": b"imp=i&price=0",
        "billing": b"imp=i&price=0",
        "loss": b"imp=i",
    }
    for name, spec in load_config().config.event_types.items():
        event = EventBuilder(name, spec, META).build(minimal[name], None, {}, "192.0.2.1")
        assert event.type == name
        assert HEX32.fullmatch(event.id)


def test_built_events_encode_and_decode_back_as_events() -> None:
    requests = {
        "impression": b"imp=i&cid=c",
        "click": b"imp=i&url=https://example.com/",
        "conversion": b"order_id=o&value=1.5",
        "video": b"imp=i&ev=start&t=2.5",
        "win": b"imp=i&price=0.75",
        "billing": b"imp=i&price=0.75",
        "loss": b"imp=i&loss=102&min_to_win=0.8",
    }
    headers = {b"user-agent": b"Agent/1", b"referer": b"https://r.example/"}
    for name, query in requests.items():
        event = build(default_builder(name), query, headers=headers)
        assert msgspec.json.decode(msgspec.json.encode(event), type=Event) == event
