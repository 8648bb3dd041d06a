"""Field converters: raw request text to typed values, each checked against its declared limits; `Reject`.

A converter is a plain function built once per declared field (by its type's factory, listed in fields/types.py);
it returns the value or raises `Reject`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final, Protocol
from urllib.parse import unquote_to_bytes

from trackpoint import _native
from trackpoint.fields.macros import (
    MACRO_START,
    PRICE_MACRO_UNSUBSTITUTED,
    UNSUBSTITUTED,
    unexpanded,
    unsubstituted_price_macro,
)
from trackpoint.fields.reject import Reject as Reject  # noqa: PLC0414 - re-exported: plugins import it from here

MICROS: Final = 1_000_000
# A price field's value outside its min/max: the reason decrypt_price gives an absurd decrypted price too.
PRICE_OUT_OF_RANGE: Final = "price_out_of_range"
Value = str | int | float
Converter = Callable[[str], Value]


class MacroUnsubstituted(Reject):
    """A value that is an unexpanded macro, in a field whose macros count as absent (`unexpanded_macros: absent`):
    the builder drops it (the field's default applies) and rejects the request only when the field is required."""

    def __init__(self, field: str, reason: str = UNSUBSTITUTED) -> None:
        super().__init__(400, reason, field)


# re.ASCII: `\d` is 0-9 only (int() and float() would accept other scripts' digits).
_INT: Final = re.compile(r"[+-]?\d{1,18}", re.ASCII)
_DECIMAL: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,3})?", re.ASCII)
_MONEY: Final = re.compile(r"(?P<sign>[+-]?)(?P<units>\d{1,15})(?:\.(?P<frac>\d{1,12}))?", re.ASCII)
# The words a bool field reads (in any case), and what each stands for.
BOOL_WORDS: Final = {
    "1": "true",
    "true": "true",
    "yes": "true",
    "on": "true",
    "0": "false",
    "false": "false",
    "no": "false",
    "off": "false",
}


# ASCII controls but the tab, and the lone surrogates that stand for bytes that were not UTF-8: refused in text
# fields. Callers test isprintable() first (False for these, but also for C1 controls and separators that a
# latin-1 header or emoji text may carry, which are kept).
# (The surrogate range is built with chr(): mypyc, which compiles this module, takes no surrogates in literals.)
_SURROGATES: Final = chr(0xD800) + "-" + chr(0xDFFF)
_CONTROLS: Final = re.compile("[\x00-\x08\x0a-\x1f\x7f" + _SURROGATES + "]")
_UNDECODED: Final = re.compile("[" + _SURROGATES + "]")


def check_text(name: str, raw: str) -> None:
    """Refuses a text value with a control character (`invalid_field`) or bytes that were not UTF-8
    (`invalid_encoding`); called only for values that are not printable."""
    if _CONTROLS.search(raw):
        raise Reject(400, "invalid_encoding" if _UNDECODED.search(raw) else "invalid_field", name)


class Declared(Protocol):
    """What a converter reads of a declared field (`config.model.FieldSpec`): its limits and macro policy."""

    @property
    def min(self) -> float | None: ...

    @property
    def max(self) -> float | None: ...

    @property
    def values(self) -> list[str] | None: ...

    @property
    def unexpanded_macros(self) -> str: ...


# The converter of each field type, built once per declared field: (field name, declaration) -> converter. The
# table of field types (fields/types.py) names them.


def string_converter(name: str, spec: Declared) -> Converter:
    return _macro_guard(name) if _absent_macros(spec) else str


def enum_converter(name: str, spec: Declared) -> Converter:
    return _enum(name, frozenset(spec.values or ()), _absent_macros(spec))


def bool_converter(name: str, spec: Declared) -> Converter:
    return _bool(name, _absent_macros(spec))


def timestamp_converter(name: str, spec: Declared) -> Converter:
    return _timestamp(name, _absent_macros(spec))


def int_converter(name: str, spec: Declared) -> Converter:
    return _bounded(name, _int(name, _absent_macros(spec)), spec.min, spec.max)


def decimal_converter(name: str, spec: Declared) -> Converter:
    return _bounded(name, _decimal(name, _absent_macros(spec)), spec.min, spec.max)


def duration_converter(name: str, spec: Declared) -> Converter:
    return _bounded(name, _duration(name, _absent_macros(spec)), spec.min, spec.max)


def money_converter(name: str, spec: Declared) -> Converter:
    money = _money(name, _absent_macros(spec))
    return _bounded(name, money, _bound_micros(spec.min), _bound_micros(spec.max))


def price_converter(name: str, spec: Declared) -> Converter:
    """Money, refusing out-of-range values with the reason decrypt_price gives them."""
    money = _money(name, _absent_macros(spec))
    return _bounded(name, money, _bound_micros(spec.min), _bound_micros(spec.max), PRICE_OUT_OF_RANGE)


def _absent_macros(spec: Declared) -> bool:
    return spec.unexpanded_macros == "absent"


def _invalid(name: str, raw: str, macros: bool) -> Reject:
    """The rejection of a value its type cannot read; an unexpanded macro when the field counts them as absent
    (tested only here, on the way to a rejection: valid values never pay for it)."""
    if macros and raw[:1] in MACRO_START and unexpanded(raw):
        return MacroUnsubstituted(name)
    return Reject(400, "invalid_field", name)


def _macro_guard(name: str) -> Converter:
    """A string field whose unexpanded macros count as absent: one character test per value."""

    def convert(raw: str) -> Value:
        if raw[:1] in MACRO_START and unexpanded(raw):
            raise MacroUnsubstituted(name)
        if not is_printable(raw):
            check_text(name, raw)
        return raw

    return convert


def _bound_micros(bound: float | None) -> int | None:
    """A money bound in micros, from its decimal text: 2.01 is 2_010_000 exactly, not 2.01 * 1e6."""
    return None if bound is None else parse_micros(format(Decimal(repr(bound)), "f"))


def _enum(name: str, allowed: frozenset[str], macros: bool) -> Converter:
    def convert(raw: str) -> Value:
        if raw not in allowed:
            raise _invalid(name, raw, macros)
        return raw

    return convert


def _bool(name: str, macros: bool) -> Converter:
    def convert(raw: str) -> Value:
        value = BOOL_WORDS.get(raw.lower())
        if value is None:
            raise _invalid(name, raw, macros)
        return value

    return convert


def _int(name: str, macros: bool) -> Callable[[str], int | float]:
    def convert(raw: str) -> int | float:
        if _INT.fullmatch(raw) is None:
            raise _invalid(name, raw, macros)
        if macros and raw in UNKNOWN_VALUES:  # VAST 4.1's unknown (-1) and withheld (-2): `[ERRORCODE]` too
            raise MacroUnsubstituted(name)
        return int(raw)

    return convert


def _decimal(name: str, macros: bool) -> Callable[[str], int | float]:
    def convert(raw: str) -> int | float:
        if _DECIMAL.fullmatch(raw) is None:
            raise _invalid(name, raw, macros)
        if macros and raw in UNKNOWN_VALUES:
            raise MacroUnsubstituted(name)
        value = float(raw)
        if not math.isfinite(value):
            raise Reject(400, "invalid_field", name)
        return value

    return convert


def _duration(name: str, macros: bool) -> Callable[[str], int | float]:
    def convert(raw: str) -> int | float:
        if macros and raw[:1] == "-":  # VAST's unknown (-1) and withheld (-2); a player's negative timecode
            raise MacroUnsubstituted(name)
        seconds = parse_offset(raw)
        if seconds is None:
            raise _invalid(name, raw, macros)
        return seconds

    return convert


# What a player sends in a duration field for an optional macro it does not fill (VAST 4.1 §6.1): -1 unknown, -2
# withheld by policy.
UNKNOWN_VALUES: Final = frozenset({"-1", "-2"})

# An offset: seconds (`12.5`) or a timecode `HH:MM:SS` / `HH:MM:SS.mmm` ([ADPLAYHEAD], [CONTENTPLAYHEAD]).
_SECONDS: Final = re.compile(r"[+-]?(?:\d{1,12}(?:\.\d{0,9})?|\.\d{1,9})", re.ASCII)
_TIMECODE: Final = re.compile(r"(\d{1,6}):([0-5]\d):([0-5]\d(?:\.\d{1,9})?)", re.ASCII)


def parse_offset(text: str) -> float | None:
    """Seconds from `12.5` or a timecode `00:00:12.500`; None when the text is neither."""
    if ":" in text:
        match = _TIMECODE.fullmatch(text)
        if match is None:
            return None
        hours, minutes, seconds = match.groups()
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    if _SECONDS.fullmatch(text) is None:
        return None
    return float(text)


def parse_micros(raw: str) -> int | None:
    """Decimal currency units to integer micros, exactly (half-up beyond the sixth decimal); None if not a number."""
    match = _MONEY.fullmatch(raw)
    if match is None:
        return None
    frac = match.group("frac") or ""
    micros = int(match.group("units")) * MICROS + int((frac + "000000")[:6])
    if len(frac) > 6 and frac[6] >= "5":
        micros += 1
    return -micros if match.group("sign") == "-" else micros


def _money(name: str, macros: bool) -> Callable[[str], int | float]:
    def convert(raw: str) -> int | float:
        micros = parse_micros(raw)
        if micros is None:
            if unsubstituted_price_macro(raw):  # ${AUCTION_PRICE}, absent or refused: a reason of its own either way
                if macros:
                    raise MacroUnsubstituted(name, PRICE_MACRO_UNSUBSTITUTED)
                raise Reject(400, PRICE_MACRO_UNSUBSTITUTED, name)
            raise _invalid(name, raw, macros)
        return micros

    return convert


def _bounded(
    name: str,
    convert: Callable[[str], int | float],
    low: float | None,
    high: float | None,
    reason: str = "field_out_of_range",
) -> Converter:
    if low is None and high is None:
        return convert

    def bounded(raw: str) -> Value:
        value = convert(raw)
        if (low is not None and value < low) or (high is not None and value > high):
            raise Reject(400, reason, name)
        return value

    return bounded


# Epoch values below this are seconds, above it milliseconds (1e11 s is the year 5138; 1e11 ms is 1973).
_EPOCH_MS_THRESHOLD: Final = 100_000_000_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND: Final = timedelta(milliseconds=1)


def _timestamp(name: str, macros: bool) -> Converter:
    def convert(raw: str) -> Value:
        if raw.isascii() and raw.isdigit() and len(raw) <= 15:
            value = int(raw)
            return value if value >= _EPOCH_MS_THRESHOLD else value * 1000
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            lenient = _lenient_iso(raw)  # VAST's own example: `2016-01-17T8:15:07.127-08`
            if lenient is None:
                if macros and raw in UNKNOWN_VALUES:
                    raise MacroUnsubstituted(name) from None
                raise _invalid(name, raw, macros) from None
            moment = lenient
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return (moment - _EPOCH) // _MILLISECOND  # integer arithmetic: no float rounding

    return convert


# An ISO 8601 time whose hour has one digit, as VAST 4's [TIMESTAMP] example writes it.
_ONE_DIGIT_HOUR: Final = re.compile(r"(\d{4}-\d{2}-\d{2}T)(\d:)", re.ASCII)


def _lenient_iso(raw: str) -> datetime | None:
    """The slow path of a timestamp fromisoformat refused: a one-digit hour padded, else None."""
    padded = _ONE_DIGIT_HOUR.sub(r"\g<1>0\g<2>", raw, count=1)
    if padded == raw:
        return None
    try:
        return datetime.fromisoformat(padded)
    except ValueError:
        return None


Members = Callable[[bytes, tuple[bytes, ...], tuple[str, ...]], dict[str, str]]


# The compiled build's steps in C (fields/_query.c); None where the sources run.
_MEMBERS: Final[Members | None] = _native.step("trackpoint.fields._query", "members")
# str.isprintable(text), as a function: in C for the compiled build (a method call cost it about 440 instructions).
is_printable: Final[Callable[[str], bool]] = _native.step("trackpoint.fields._query", "printable") or str.isprintable


class PairParser:
    """Extracts the wanted members of an urlencoded string (query or form body); the first occurrence wins.

    The compiled build does it in C (fields/_query.c, about a third of the instructions). The code below is the
    sources' and the reference: the usual tracking query is plain ASCII without escapes and takes one find per
    separator; anything with `%`, `+` or raw non-ASCII bytes takes the general path.
    """

    __slots__ = ("keys", "names", "utf8_names", "wanted")

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        # For the C step: each name's UTF-8 and the str it is stored under (the very objects the builder looks up).
        self.keys = tuple(names)
        self.utf8_names = tuple(name.encode("utf-8") for name in self.keys)
        self.wanted = frozenset(self.utf8_names)

    def __call__(self, encoded: bytes) -> dict[str, str]:
        if not self.names:
            return {}
        if _MEMBERS is not None:
            return _MEMBERS(encoded, self.utf8_names, self.keys)
        return self.pure(encoded)

    def pure(self, encoded: bytes) -> dict[str, str]:
        """The pure-Python way, whichever build runs."""
        try:
            text = encoded.decode("ascii")
        except UnicodeDecodeError:
            return self._general(encoded)
        if "%" in text or "+" in text:
            return self._general(encoded)
        # By index rather than split("&") and partition("="): compiled (mypyc), find and slicing are direct calls, and
        # only a wanted member's value is ever copied out (no list, no tuples, nothing for the parameters not read).
        found: dict[str, str] = {}
        names = self.names
        end = len(text)
        start = 0
        while start <= end:
            amp = text.find("&", start)
            if amp < 0:
                amp = end
            eq = text.find("=", start, amp)
            name = text[start : amp if eq < 0 else eq]
            if name in names and name not in found:
                found[name] = "" if eq < 0 else text[eq + 1 : amp]
            start = amp + 1
        return found

    def _general(self, encoded: bytes) -> dict[str, str]:
        found: dict[str, str] = {}
        for pair in encoded.split(b"&"):
            key, _, value = pair.partition(b"=")
            key = _unquote(key)
            if key not in self.wanted:
                continue
            name = key.decode("utf-8")  # one of the wanted names: UTF-8 already
            if name not in found:
                # Bytes that are not UTF-8 become lone surrogates, which no field accepts: the field refuses the
                # value (`invalid_encoding`), or drops it under `on_invalid: drop`, as it decides for any bad value.
                found[name] = _unquote(value).decode("utf-8", "surrogateescape")
        return found


def _unquote(raw: bytes) -> bytes:
    return unquote_to_bytes(raw.replace(b"+", b" "))


def parse_cookies(header: bytes) -> dict[str, str]:
    """Cookie header pairs (`a=1; b=2`); malformed pairs are ignored, as browsers do."""
    cookies: dict[str, str] = {}
    for pair in header.split(b";"):
        key, sep, value = pair.strip().partition(b"=")
        if sep and key:
            name = key.decode("latin-1")
            if name not in cookies:
                cookies[name] = value.strip(b'"').decode("utf-8", "replace")
    return cookies
