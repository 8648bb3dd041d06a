"""Unit and property tests of the field converters, `Reject`, the urlencoded `PairParser` and `parse_cookies`.

Each converter is built through `make_converter` from a `FieldSpec`, exactly as the event builder builds it.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from trackpoint.config.model import FieldSpec
from trackpoint.fields import _query
from trackpoint.fields.converters import MICROS, PairParser, Reject, check_text, parse_cookies, parse_micros
from trackpoint.fields.types import make_converter

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, database=None)  # no .hypothesis dir


def convert(raw: str, field_type: str, **options: object) -> str | int | float:
    spec = FieldSpec(type=field_type, **options)  # type: ignore[arg-type]
    return make_converter("f", spec)(raw)


def rejection(raw: str, field_type: str, **options: object) -> Reject:
    with pytest.raises(Reject) as caught:
        convert(raw, field_type, **options)
    return caught.value


# --- Reject -------------------------------------------------------------------------------------------------


def test_reject_carries_status_reason_and_field() -> None:
    reject = Reject(400, "invalid_field", "price")
    assert isinstance(reject, Exception)
    assert (reject.status, reject.reason, reject.field) == (400, "invalid_field", "price")
    assert str(reject) == "invalid_field"
    assert Reject(415, "unsupported_media_type").field is None


def test_a_converter_rejection_names_the_field() -> None:
    with pytest.raises(Reject) as caught:
        make_converter("price", FieldSpec(type="money"))("abc")
    assert caught.value.status == 400
    assert caught.value.reason == "invalid_field"
    assert caught.value.field == "price"


# --- int ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"), [("0", 0), ("42", 42), ("-7", -7), ("+7", 7), ("007", 7), ("9" * 18, int("9" * 18))]
)
def test_int_accepts_integers(raw: str, expected: int) -> None:
    value = convert(raw, "int")
    assert value == expected
    assert type(value) is int


@pytest.mark.parametrize("raw", ["", "1.0", "1e3", "0x10", "1_000", " 1", "1 ", "abc", "--1", "9" * 19, "nan"])
def test_int_rejects_non_integers(raw: str) -> None:
    reject = rejection(raw, "int")
    assert (reject.status, reject.reason, reject.field) == (400, "invalid_field", "f")


def test_int_bounds_are_inclusive() -> None:
    assert convert("1", "int", min=1, max=10) == 1
    assert convert("10", "int", min=1, max=10) == 10
    assert rejection("0", "int", min=1, max=10).reason == "field_out_of_range"
    assert rejection("11", "int", min=1, max=10).reason == "field_out_of_range"
    assert rejection("x", "int", min=1, max=10).reason == "invalid_field"


# --- decimal ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1.5", 1.5), ("-2", -2.0), (".5", 0.5), ("5.", 5.0), ("1e3", 1000.0), ("2.5E-2", 0.025), ("+0.25", 0.25)],
)
def test_decimal_accepts_numbers(raw: str, expected: float) -> None:
    value = convert(raw, "decimal")
    assert value == expected
    assert type(value) is float


@pytest.mark.parametrize(
    "raw",
    [
        "nan",
        "NaN",
        "inf",
        "-inf",
        "Infinity",
        "1e999",
        "-1e999",
        "1_000",
        "1 000",
        " 1",
        "1 ",
        "",
        ".",
        "e3",
        "1e",
        "0x1p3",
        "1,5",
    ],
)
def test_decimal_rejects_nan_inf_underscores_and_spaces(raw: str) -> None:
    reject = rejection(raw, "decimal")
    assert (reject.status, reject.reason, reject.field) == (400, "invalid_field", "f")


def test_decimal_bounds() -> None:
    assert convert("86400", "decimal", min=0, max=86400) == 86400.0
    assert convert("0", "decimal", min=0, max=86400) == 0.0
    assert rejection("86400.5", "decimal", min=0, max=86400).reason == "field_out_of_range"
    assert rejection("-0.1", "decimal", min=0, max=86400).reason == "field_out_of_range"


# --- money --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "micros"),
    [
        ("0", 0),
        ("1", 1_000_000),
        ("0.5", 500_000),
        ("12.345678", 12_345_678),
        ("0.000001", 1),
        ("1.10", 1_100_000),
        ("-1.5", -1_500_000),
        ("+2", 2_000_000),
        ("999999999999999", 999_999_999_999_999 * MICROS),
        ("0.1", 100_000),
        ("19.99", 19_990_000),
    ],
)
def test_money_is_exact_integer_micros(raw: str, micros: int) -> None:
    value = convert(raw, "money")
    assert value == micros
    assert type(value) is int


@pytest.mark.parametrize(
    ("raw", "micros"),
    [
        ("0.0000004", 0),
        ("0.0000005", 1),
        ("0.0000014999", 1),
        ("1.2345675", 1_234_568),
        ("1.23456749999", 1_234_567),
        ("1.9999995", 2_000_000),
        ("-0.0000005", -1),
        ("-1.2345674", -1_234_567),
        ("0.123456789012", 123_457),
    ],
)
def test_money_rounds_half_up_beyond_six_decimals(raw: str, micros: int) -> None:
    assert convert(raw, "money") == micros


@pytest.mark.parametrize(
    "raw",
    ["", "abc", ".5", "1.", "1e3", "nan", "inf", "1,5", "1 ", " 1", "1_0", "0.1234567890123", "1" * 16, "--1"],
)
def test_money_rejects_non_decimal_text(raw: str) -> None:
    reject = rejection(raw, "money")
    assert (reject.status, reject.reason, reject.field) == (400, "invalid_field", "f")
    assert parse_micros(raw) is None


def test_money_bounds_are_in_currency_units() -> None:
    assert convert("100000", "money", min=0, max=100000) == 100_000 * MICROS
    assert convert("0", "money", min=0, max=100000) == 0
    over = rejection("100000.000001", "money", min=0, max=100000)
    assert (over.status, over.reason, over.field) == (400, "field_out_of_range", "f")
    assert rejection("-0.000001", "money", min=0, max=100000).reason == "field_out_of_range"
    assert convert("0.5", "money", min=0.25, max=0.75) == 500_000
    assert rejection("0.2", "money", min=0.25, max=0.75).reason == "field_out_of_range"
    assert rejection("0.8", "money", min=0.25, max=0.75).reason == "field_out_of_range"


@pytest.mark.parametrize(("bound", "raw"), [(2.01, "2.01"), (4.03, "4.03"), (0.29, "0.29"), (1.15, "1.15")])
def test_money_value_equal_to_a_decimal_bound_is_in_range(bound: float, raw: str) -> None:
    # A bound is in currency units; a value exactly on it is inside the (inclusive) range, on either side.
    assert convert(raw, "money", max=bound) == parse_micros(raw)
    assert convert(raw, "money", min=bound) == parse_micros(raw)


@given(st.decimals(min_value=-(10**14), max_value=10**14, places=6, allow_nan=False, allow_infinity=False))
@example(Decimal("0.000001"))
@example(Decimal("-0"))
@example(Decimal("100000"))
@PROPERTY_SETTINGS
def test_money_of_any_decimal_with_six_places_is_exact(amount: Decimal) -> None:
    micros = int(amount * MICROS)
    assert micros == amount * MICROS
    assert parse_micros(format(amount, "f")) == micros
    assert parse_micros(format(amount.normalize(), "f")) == micros
    assert convert(format(amount, "f"), "money") == micros


@given(st.decimals(min_value=-(10**9), max_value=10**9, places=12, allow_nan=False, allow_infinity=False))
@PROPERTY_SETTINGS
def test_money_rounding_matches_decimal_round_half_up(amount: Decimal) -> None:
    expected = int((amount * MICROS).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    assert parse_micros(format(amount, "f")) == expected


# --- enum and bool ------------------------------------------------------------------------------------------


def test_enum_accepts_only_its_values() -> None:
    values = ["start", "midpoint", "complete"]
    assert convert("midpoint", "enum", values=values) == "midpoint"
    for raw in ["Midpoint", "mid", "", "start "]:
        reject = rejection(raw, "enum", values=values)
        assert (reject.status, reject.reason, reject.field) == (400, "invalid_field", "f")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", "true"),
        ("true", "true"),
        ("TRUE", "true"),
        ("Yes", "true"),
        ("on", "true"),
        ("0", "false"),
        ("false", "false"),
        ("False", "false"),
        ("NO", "false"),
        ("off", "false"),
    ],
)
def test_bool_variants(raw: str, expected: str) -> None:
    assert convert(raw, "bool") == expected


@pytest.mark.parametrize("raw", ["", "2", "y", "n", "truthy", " true", "-1"])
def test_bool_rejects_other_text(raw: str) -> None:
    reject = rejection(raw, "bool")
    assert (reject.status, reject.reason, reject.field) == (400, "invalid_field", "f")


# --- timestamp ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "epoch_ms"),
    [
        ("1700000000", 1_700_000_000_000),
        ("0", 0),
        ("99999999999", 99_999_999_999_000),
        ("1700000000123", 1_700_000_000_123),
        ("100000000000", 100_000_000_000),
        ("2023-11-14T22:13:20Z", 1_700_000_000_000),
        ("2023-11-14T22:13:20.123Z", 1_700_000_000_123),
        ("2023-11-15T00:13:20+02:00", 1_700_000_000_000),
        ("2023-11-14T17:13:20-05:00", 1_700_000_000_000),
        ("2023-11-14T22:13:20", 1_700_000_000_000),
        ("2023-11-14", 1_699_920_000_000),
        ("1969-12-31T23:59:59.999Z", -1),
    ],
)
def test_timestamp_epoch_seconds_milliseconds_and_iso(raw: str, epoch_ms: int) -> None:
    value = convert(raw, "timestamp")
    assert value == epoch_ms
    assert type(value) is int


@pytest.mark.parametrize(
    ("raw", "epoch_ms"),
    [
        ("2004-03-15T07:55:47.472Z", 1_079_337_347_472),
        ("1987-02-24T12:51:47.341Z", 541_169_507_341),
        ("2038-08-15T15:00:50.430Z", 2_165_497_250_430),
    ],
)
def test_timestamp_iso_milliseconds_are_exact(raw: str, epoch_ms: int) -> None:
    assert convert(raw, "timestamp") == epoch_ms


@pytest.mark.parametrize("raw", ["", "yesterday", "-1", "1.5", "2023-13-01T00:00:00Z", "1" * 16, "12:00", "0x10"])
def test_timestamp_rejects_other_text(raw: str) -> None:
    reject = rejection(raw, "timestamp")
    assert (reject.status, reject.reason, reject.field) == (400, "invalid_field", "f")


@pytest.mark.parametrize("raw", ["²", "1²", "¹⁷⁰⁰⁰⁰⁰⁰⁰⁰"])
def test_timestamp_rejects_digit_like_characters(raw: str) -> None:
    # str.isdigit() is true for superscripts, which int() refuses: still a Reject, never a ValueError.
    reject = rejection(raw, "timestamp")
    assert (reject.status, reject.reason, reject.field) == (400, "invalid_field", "f")


def test_string_fields_have_no_converter_of_their_own() -> None:
    assert make_converter("s", FieldSpec(type="string"))("any text") == "any text"


# --- PairParser ---------------------------------------------------------------------------------------------

NAMES = frozenset({"imp", "cid", "url", "sig"})


def test_pairs_fast_path_extracts_declared_names() -> None:
    parser = PairParser(NAMES)
    assert parser(b"imp=abc&cid=42&other=1&pub=x") == {"imp": "abc", "cid": "42"}
    assert parser(b"") == {}
    assert parser(b"imp") == {"imp": ""}
    assert parser(b"imp=&cid=1") == {"imp": "", "cid": "1"}


def test_pairs_first_occurrence_wins() -> None:
    parser = PairParser(NAMES)
    assert parser(b"imp=first&imp=second") == {"imp": "first"}
    assert parser(b"imp=first%21&imp=second") == {"imp": "first!"}
    assert parser(b"imp=first&imp=%FF") == {"imp": "first"}


def test_pairs_percent_and_plus_decoding() -> None:
    parser = PairParser(NAMES)
    assert parser(b"imp=a+b%2Fc&cid=%41%42") == {"imp": "a b/c", "cid": "AB"}
    assert parser(b"url=https%3A%2F%2Fexample.com%2Fp%3Fq%3D1%26r%3D2") == {"url": "https://example.com/p?q=1&r=2"}
    assert parser(b"imp=%C3%A9t%C3%A9") == {"imp": "été"}
    assert parser(b"imp=%2B") == {"imp": "+"}
    assert parser(b"imp=100%") == {"imp": "100%"}
    assert parser(b"imp=%zz") == {"imp": "%zz"}


def test_pairs_raw_utf8_bytes_are_decoded() -> None:
    assert PairParser(NAMES)("imp=été&cid=日本".encode()) == {"imp": "été", "cid": "日本"}


def test_pairs_percent_encoded_names() -> None:
    parser = PairParser(NAMES)
    assert parser(b"%69mp=1&c%69d=2") == {"imp": "1", "cid": "2"}
    assert PairParser(frozenset({"é", "a b"}))(b"%C3%A9=1&a+b=2&a%20b=3") == {"é": "1", "a b": "2"}


@pytest.mark.parametrize("query", [b"imp=%FF", b"imp=\xff", b"cid=1&imp=%C3", b"imp=%ED%A0%80"])
def test_pairs_invalid_utf8_reaches_the_field_as_undecodable(query: bytes) -> None:
    # The parser keeps the bytes (as lone surrogates) so the field decides: refuse, or drop under on_invalid.
    value = PairParser(NAMES)(query)["imp"]
    assert any("\ud800" <= char <= "\udfff" for char in value)
    with pytest.raises(Reject) as caught:
        check_text("imp", value)
    assert (caught.value.status, caught.value.reason, caught.value.field) == (400, "invalid_encoding", "imp")


def test_pairs_undeclared_names_are_ignored_even_when_invalid() -> None:
    parser = PairParser(NAMES)
    assert parser(b"other=%FF&imp=1") == {"imp": "1"}
    assert parser(b"\xff\xfe=1&imp=2") == {"imp": "2"}
    assert parser(b"IMP=1&imp_=2& imp=3") == {}


def test_pairs_values_may_contain_equals_signs() -> None:
    parser = PairParser(NAMES)
    assert parser(b"sig=abc==&imp=a=b=c") == {"sig": "abc==", "imp": "a=b=c"}
    assert parser(b"sig=abc%3D%3D&imp=a=b+c") == {"sig": "abc==", "imp": "a=b c"}


# Declared names, some of which need percent-encoding in a query.
ODD_NAMES = frozenset({"imp", "cid", "a b", "é", "x=y", "p&q", "100%", "n+m"})
UNDECLARED = ["other", "imp_", "IMP", "z"]
UNRESERVED = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~"
SAFE_TEXT = st.text(alphabet=UNRESERVED, max_size=20)


@given(
    declared=st.dictionaries(st.sampled_from(sorted(NAMES)), SAFE_TEXT),
    noise=st.dictionaries(st.sampled_from(UNDECLARED), SAFE_TEXT),
)
@PROPERTY_SETTINGS
def test_pairs_fast_path_round_trips_urlencode(declared: dict[str, str], noise: dict[str, str]) -> None:
    encoded = urlencode({**noise, **declared}).encode("ascii")
    assert b"%" not in encoded
    assert b"+" not in encoded
    assert PairParser(NAMES)(encoded) == declared


@given(
    declared=st.dictionaries(st.sampled_from(sorted(ODD_NAMES)), st.text(max_size=20)),
    noise=st.dictionaries(st.sampled_from(UNDECLARED), st.text(max_size=20)),
)
@example(declared={"imp": "a b&c=d", "é": "€"}, noise={"other": "%"})
@PROPERTY_SETTINGS
def test_pairs_general_path_round_trips_urlencode(declared: dict[str, str], noise: dict[str, str]) -> None:
    encoded = urlencode({**noise, **declared}).encode("ascii")
    assert PairParser(ODD_NAMES)(encoded) == declared


PIECES = st.sampled_from(
    [b"imp", b"cid", b"=", b"&", b"%", b"%4", b"%41", b"%FF", b"%C3", b"%A9", b"+", b"\xff", b"\xc3\xa9", b"x", b";"]
)


@given(st.one_of(st.binary(max_size=64), st.lists(PIECES, max_size=24).map(b"".join)))
@PROPERTY_SETTINGS
def test_pairs_on_arbitrary_bytes_return_strings_or_reject(encoded: bytes) -> None:
    parser = PairParser(frozenset({"imp", "cid"}))
    outcome: dict[str, str] | Reject
    try:
        outcome = parser(encoded)
    except Reject as reject:
        outcome = reject
    if isinstance(outcome, Reject):
        assert (outcome.status, outcome.reason) == (400, "invalid_encoding")
        assert outcome.field in {"imp", "cid"}
    else:
        assert isinstance(outcome, dict)
        assert set(outcome) <= {"imp", "cid"}
        assert all(isinstance(value, str) for value in outcome.values())


# --- cookies ------------------------------------------------------------------------------------------------


def test_parse_cookies() -> None:
    assert parse_cookies(b"a=1; b=2") == {"a": "1", "b": "2"}
    assert parse_cookies(b"a=1;b=2;  c=3  ") == {"a": "1", "b": "2", "c": "3"}
    assert parse_cookies(b'sid="xyz"; t=a=b') == {"sid": "xyz", "t": "a=b"}
    assert parse_cookies(b"a=1; a=2") == {"a": "1"}
    assert parse_cookies(b"") == {}
    assert parse_cookies(b"flag; =nameless; ok=1; ;") == {"ok": "1"}
    assert parse_cookies(b"e=") == {"e": ""}
    assert parse_cookies("u=\u00e9t\u00e9".encode()) == {"u": "été"}
    assert parse_cookies(b"bad=\xff") == {"bad": "\ufffd"}


def test_an_empty_value_is_invalid_not_an_error_when_macros_count_as_absent() -> None:
    """The builder never passes "" (it is absent there), but a converter is a public function: "" must be an
    ordinary rejection (or, for a string, itself), never an IndexError."""
    for field_type in ("int", "decimal", "money", "price", "duration", "bool", "timestamp", "enum"):
        options: dict[str, Any] = {"values": ["a"]} if field_type == "enum" else {}
        convert = make_converter("f", FieldSpec(type=field_type, unexpanded_macros="absent", **options))
        with pytest.raises(Reject) as rejected:
            convert("")
        assert rejected.value.reason == "invalid_field", field_type
    assert make_converter("f", FieldSpec(unexpanded_macros="absent"))("") == ""


# --- the compiled build's native step (fields/_query.c) against the Python code --------------------------------

# Past the 64 names whose first member the C step remembers in a bit mask.
MANY_NAMES = frozenset({f"n{i}" for i in range(70)} | {"imp"})
NATIVE_PIECES = st.sampled_from(
    [
        *(b"imp", b"cid", b"=", b"&", b"%", b"%4", b"%41", b"%FF", b"%C3", b"%A9", b"+", b"\xff", b"\xc3\xa9", b"x"),
        *(b"a+b", b"a%20b", b"%C3%A9", b"x%3Dy", b"p%26q", b"100%25", b"n%2Bm", b"n3", b"n65", b"n69", b"%6E66"),
        *(b"abcdefgh", b"ABCDEFGHIJKLMNOP"),  # whole words for the eight-bytes-at-a-time check
    ]
)


def native(parser: PairParser, encoded: bytes) -> dict[str, str]:
    return _query.members(encoded, parser.utf8_names, parser.keys)


@given(
    names=st.sampled_from([NAMES, ODD_NAMES, MANY_NAMES, frozenset()]),
    encoded=st.one_of(st.binary(max_size=80), st.lists(NATIVE_PIECES, max_size=32).map(b"".join)),
)
@example(names=MANY_NAMES, encoded=b"n65=1&n65=2&n3=a&n3=b&n69")
@example(names=ODD_NAMES, encoded=b"imp=%C3&imp=2&a+b=%zz&%C3%A9=%ED%A0%80&x%3Dy=&100%25")
@example(names=NAMES, encoded=b"imp=abcdefghijklmnop+q&cid=abcdefghijklmno%")
@settings(max_examples=1000, deadline=None, database=None)
def test_the_native_step_gives_what_the_python_code_gives(names: frozenset[str], encoded: bytes) -> None:
    parser = PairParser(names)
    expected = parser.pure(encoded)
    found = native(parser, encoded)
    assert found == expected
    assert list(found) == list(expected)  # in the order the members came
    for key in found:  # stored under the builder's own key objects, which it then looks up by identity first
        assert any(key is name for name in parser.keys)


def test_the_native_step_refuses_arguments_of_other_types() -> None:
    parser = PairParser(NAMES)
    for arguments in [
        (bytearray(b"imp=1"), parser.utf8_names, parser.keys),
        (b"imp=1", list(parser.utf8_names), parser.keys),
        (b"imp=1", parser.utf8_names, parser.keys[:-1]),
        (b"imp=1", parser.keys, parser.keys),
        (b"imp=1", parser.utf8_names),
    ]:
        with pytest.raises(TypeError, match="members"):
            _query.members(*arguments)  # type: ignore[arg-type]


@given(st.text(max_size=40) | st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=40))
@example("\x7f")
@example("\x1f ~")
@example("a\u200bb")
@settings(max_examples=1000, deadline=None, database=None)
def test_the_native_printable_check_is_str_isprintable(text: str) -> None:
    assert _query.printable(text) is text.isprintable()


def test_the_native_printable_check_refuses_what_is_not_a_str() -> None:
    with pytest.raises(TypeError, match="printable"):
        _query.printable(b"abc")  # type: ignore[arg-type]
