"""Building events: an event type's declared fields extracted from the request, converted and checked.

`EventBuilder` is compiled once per event type at start-up; `build()` is the per-request part and does no more than
the declared fields require (a body is decoded only when a field reads it, cookies only when a field names one).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, Final, NoReturn

import msgspec

from trackpoint import _native
from trackpoint.config.model import INVALID_DIM, EventTypeSpec, FieldSpec
from trackpoint.event import Context, Event, Meta, random_id
from trackpoint.fields import multipart
from trackpoint.fields.converters import (
    Converter,
    MacroUnsubstituted,
    PairParser,
    Reject,
    check_text,
    is_printable,
    parse_cookies,
)
from trackpoint.fields.types import make_converter

# Module constants and the names called per request are Final: compiled (mypyc), a Final is a literal or a C static,
# where any other module name is a lookup in the module's globals on every use.
_time: Final = time.time
_Context: Final = Context
_Event: Final = Event
_PARAM_SOURCES: Final = frozenset({"param", "query", "form", "json"})
# The compiled build's id of a one-value key in C (edge/_id.c: BLAKE2b-128 of prefix and value, as hex); None where
# the sources run, which hash with hashlib.
_DERIVED: Final[Callable[[bytes, str], str] | None] = _native.step("trackpoint.edge._id", "derived")
# JSON numbers with a fraction decode as Decimal: their text is kept exactly (49.90, 5e-05), so money is exact.
# Deeper JSON bodies are refused (400 invalid_json) before decoding: no tracking payload nests this far.
JSON_MAX_DEPTH: Final = 64
_JSON_DECODER: Final = msgspec.json.Decoder(dict[str, Any], float_hook=Decimal)

UTF8_BOM: Final = b"\xef\xbb\xbf"

# Header names the edge keeps for every request, whatever the event type.
CONTEXT_HEADERS: Final = frozenset({b"user-agent", b"referer", b"content-type", b"x-forwarded-for"})


class FieldPlan:
    """One field, compiled. A plain class with slots: compiled (mypyc), the per-request loop reads only the
    attributes it needs, where unpacking a ten-member tuple took a reference to every member of every field."""

    __slots__ = (
        "convert",
        "default",
        "drop_invalid",
        "into_metrics",
        "key",
        "lookup",
        "max_len",
        "name",
        "required",
        "source",
    )

    def __init__(  # noqa: PLR0917 - one field's compiled parts
        self,
        name: str,
        source: str,
        key: str,
        lookup: str,
        convert: Converter | None,
        max_len: int,
        required: bool,
        default: str | int | float | None,
        into_metrics: bool,
        drop_invalid: bool,
    ) -> None:
        self.name = name
        self.source = source
        self.key = key  # the parameter name; for header, cookie and ip fields a private key the request path fills in
        self.lookup = lookup  # the parameter, cookie or (lower-case) header name
        self.convert = convert  # None: the raw string is the value
        self.max_len = max_len
        self.required = required
        self.default = default
        self.into_metrics = into_metrics
        # An invalid value is left out (flagged in dims.invalid) instead of refusing the request.
        self.drop_invalid = drop_invalid


def _plan(name: str, spec: FieldSpec, drop_invalid: bool = False) -> FieldPlan:
    plain = spec.type == "string" and spec.unexpanded_macros == "keep"
    convert: Converter | None = None if plain else make_converter(name, spec)
    into_metrics = spec.place == "metrics"
    if convert is not None and not into_metrics and spec.is_number:
        number = convert
        convert = lambda raw: str(number(raw))  # noqa: E731 - dims are strings
    lookup = spec.name or name
    if spec.source == "header":
        lookup = lookup.lower()
    return FieldPlan(
        name=name,
        source=spec.source,
        # Parsers keep only declared parameter names, so a NUL-prefixed key never collides with a request's own.
        key=lookup if spec.source in _PARAM_SOURCES else f"\x00{spec.source}:{lookup}",
        lookup=lookup,
        convert=convert,
        max_len=spec.max_len,
        required=spec.required,
        # A default is converted once here, so a bad default fails at start-up, not on a request.
        default=None if spec.default is None else (spec.default if convert is None else convert(spec.default)),
        into_metrics=into_metrics,
        drop_invalid=drop_invalid,
    )


class EventBuilder:
    """Makes one event type's events from requests."""

    def __init__(self, type_name: str, spec: EventTypeSpec, meta: Meta) -> None:
        self.type_name = type_name
        self.meta = meta
        self.fields = plans = [_plan(name, field, spec.drops_invalid(name)) for name, field in spec.fields.items()]
        # Header, cookie and ip fields are looked up first and join the parameters, so one loop checks them all.
        self.other_fields = [p for p in plans if p.source not in _PARAM_SOURCES]
        # (private key, name) per source, header names encoded once rather than per request.
        self._header_lookups = [(p.key, p.lookup.encode("latin-1")) for p in plans if p.source == "header"]
        self._cookie_lookups = [(p.key, p.lookup) for p in plans if p.source == "cookie"]
        self._ip_keys = [p.key for p in plans if p.source == "ip"]
        self.query = PairParser(frozenset(p.lookup for p in plans if p.source in ("param", "query")))
        self.form = PairParser(frozenset(p.lookup for p in plans if p.source in ("param", "form")))
        self.json_keys = frozenset(p.lookup for p in plans if p.source in ("param", "json"))
        self.reads_body = any(p.source in ("param", "form", "json") for p in plans)
        self.reads_cookies = any(p.source == "cookie" for p in plans)
        self.header_names = frozenset(p.lookup.encode("latin-1") for p in plans if p.source == "header") | (
            {b"cookie"} if self.reads_cookies else set()
        )
        # Values left out under `on_invalid: drop`, by `field:reason` (reported on /metrics).
        self.dropped: dict[str, int] = {}
        self.dedupe_key = tuple(spec.dedupe_key)
        self._single_key = spec.dedupe_key[0] if len(spec.dedupe_key) == 1 else None
        # The id hash starts from the type's name; per request only the key values are added to a copy (or, compiled,
        # hashed after the prefix in one C call).
        self._prefix = type_name.encode("utf-8") + b"\x1f"
        self._id_prefix = hashlib.blake2b(self._prefix, digest_size=16)

    def build(self, query: bytes, body: bytes | bytearray | None, headers: dict[bytes, bytes], client_ip: str) -> Event:
        """The event for one request, or `Reject` naming the first field that is missing or invalid."""
        params = self.query(query) if query else {}
        if body and self.reads_body:
            body_params = self._body_params(body, headers)
            params = body_params | params if params else body_params  # the query wins over the body
        if self.other_fields:
            found = self._other_values(headers, client_ip)
            if found:
                params = params | found
        dims: dict[str, str] = {}
        metrics: dict[str, int | float] = {}
        invalid: list[str] | None = None
        for plan in self.fields:
            raw = params.get(plan.key)  # compiled: a dict primitive (a bound `get` would be a generic call)
            if not raw:
                default = plan.default
                if default is None:
                    if plan.required:
                        raise Reject(400, "missing_field", plan.name)
                    continue
                value = default
            else:
                convert = plan.convert
                try:  # free until something raises: the valid request pays nothing for on_invalid
                    if convert is None:
                        if len(raw) > plan.max_len:
                            raise Reject(400, "field_too_long", plan.name)
                        if not is_printable(raw):  # NUL, newlines, undecodable bytes: never in a stored value
                            check_text(plan.name, raw)
                        value = raw
                    else:
                        value = convert(raw) if len(raw) <= plan.max_len else _too_long(plan.name, raw, convert)
                except MacroUnsubstituted:  # the placeholder itself arrived: the field is absent, not that value
                    if plan.default is None:
                        if plan.required:
                            raise
                        continue
                    value = plan.default
                except Reject as rejected:
                    if not plan.drop_invalid:
                        raise
                    # The event is kept without this value; the field's default does not stand in for a bad value.
                    entry = f"{plan.name}:{rejected.reason}"
                    if invalid is None:
                        invalid = []
                    invalid.append(entry)
                    self.dropped[entry] = self.dropped.get(entry, 0) + 1
                    continue
            if plan.into_metrics:
                metrics[plan.name] = value  # type: ignore[assignment]
            else:
                dims[plan.name] = value  # type: ignore[assignment]
        if invalid is not None:
            dims[INVALID_DIM] = ",".join(invalid)
        ts = int(_time() * 1000)
        ua = headers.get(b"user-agent")
        referer = headers.get(b"referer")
        try:  # headers are read as UTF-8 (strict first: the common case, and the fastest)
            ctx = _Context(
                client_ip, None if ua is None else ua.decode(), None if referer is None else referer.decode()
            )
        except UnicodeDecodeError:
            ctx = _Context(
                client_ip, None if ua is None else header_text(ua), None if referer is None else header_text(referer)
            )
        return _Event(self._event_id(dims, metrics, ts), self.type_name, ts, dims, metrics, ctx, self.meta)

    def _other_values(self, headers: dict[bytes, bytes], client_ip: str) -> dict[str, str]:
        """The raw values of header, cookie and ip fields, under their private keys."""
        values: dict[str, str] = {}
        for key, header_name in self._header_lookups:
            header = headers.get(header_name)
            if header is not None:
                values[key] = header_text(header)
        if self._cookie_lookups:
            cookies = parse_cookies(headers.get(b"cookie", b""))
            for key, cookie_name in self._cookie_lookups:
                cookie = cookies.get(cookie_name)
                if cookie is not None:
                    values[key] = cookie
        for key in self._ip_keys:
            values[key] = client_ip
        return values

    def _event_id(self, dims: dict[str, str], metrics: dict[str, int | float], ts: int) -> str:
        if not self.dedupe_key:
            return random_id(ts)
        if self._single_key is not None:  # the usual case: one string key such as the impression id
            value = dims.get(self._single_key)
            if value is not None:
                if _DERIVED is not None:
                    return _DERIVED(self._prefix, value)
                digest = self._id_prefix.copy()
                digest.update(value.encode("utf-8"))
                return digest.hexdigest()
        digest = self._id_prefix.copy()
        for i, name in enumerate(self.dedupe_key):
            value = dims.get(name)
            if value is None:
                number = metrics.get(name)
                if number is None:  # an optional key field is absent: nothing to dedupe on
                    return random_id(ts)
                value = str(number)
            digest.update(value.encode("utf-8") if i == 0 else b"\x1f" + value.encode("utf-8"))
        return digest.hexdigest()

    def _body_params(self, body: bytes | bytearray, headers: dict[bytes, bytes]) -> dict[str, str]:
        full_type = headers.get(b"content-type", b"")
        content_type = full_type.partition(b";")[0].strip().lower()
        if body[:3] == UTF8_BOM:  # some clients write one before JSON or a form: not part of the document
            body = body[3:]
        if content_type == b"application/x-www-form-urlencoded":
            found = self.form(bytes(body))
        elif content_type == b"multipart/form-data":  # sendBeacon(FormData)
            found = multipart.form_fields(bytes(body), multipart.boundary(full_type), self.form.names)
        elif content_type in (
            b"application/json",
            b"text/plain",
        ):  # text/plain: sendBeacon without a preflight
            if body.count(b"[") + body.count(b"{") > JSON_MAX_DEPTH and _json_depth(body) > JSON_MAX_DEPTH:
                raise Reject(400, "invalid_json")  # nesting that would cost the decoder its stack
            try:
                document = _JSON_DECODER.decode(body)
            except (msgspec.DecodeError, UnicodeDecodeError):  # msgspec raises the latter for invalid UTF-8
                raise Reject(400, "invalid_json") from None
            keys = self.json_keys
            members: Iterable[tuple[str, Any]] = document.items()
            # A member named twice: the first wins, as in a query string (the decoder keeps the last). Looked for
            # only when a wanted key's quoted name occurs twice in the body.
            if any(body.count(b'"' + key.encode() + b'"') > 1 for key in keys if key in document):
                members = _first_members(body)
            found = {key: text for key, value in members if key in keys and (text := _json_text(value)) is not None}
        else:
            raise Reject(415, "unsupported_media_type")
        return found


def header_text(value: bytes) -> str:
    """A header value as text: UTF-8, where bytes that are not UTF-8 become U+FFFD (never Latin-1 mojibake)."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("utf-8", "replace")


def _too_long(name: str, raw: str, convert: Converter) -> NoReturn:
    """`field_too_long`, unless the value is an unexpanded macro that its field counts as absent: a macro is often
    longer than what it stands for (`${AUCTION_CURRENCY}` for a 3-letter code)."""
    try:
        convert(raw)
    except MacroUnsubstituted:
        raise
    except Reject:
        pass
    raise Reject(400, "field_too_long", name)


def _first_members(body: bytes | bytearray) -> list[tuple[str, Any]]:
    """The top-level members of a JSON object, the first of each name only (the slow path of duplicate names)."""
    first: dict[str, Any] = {}
    for key, value in json.loads(body, parse_float=Decimal, object_pairs_hook=list):
        first.setdefault(key, value)
    return list(first.items())


def _json_depth(body: bytes | bytearray) -> int:
    """The deepest nesting of arrays and objects, outside strings (read only for bodies with many brackets)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _json_text(value: Any) -> str | None:
    """A JSON scalar as the text a query string would carry; None for null, objects and arrays (absent)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    return None
