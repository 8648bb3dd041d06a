"""Building events: an event type's declared fields extracted from the request, converted and checked.

`EventBuilder` is compiled once per event type at start-up; `build()` is the per-request part and does no more than
the declared fields require (a body is decoded only when a field reads it, cookies only when a field names one).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from trackpoint.config.model import EventTypeSpec, FieldSpec
from trackpoint.pipeline.event import Context, Event, Meta, derived_id, now_ms, random_id
from trackpoint.pipeline.fields import Converter, Reject, make_converter, parse_cookies, parse_pairs

_NUMERIC = frozenset({"int", "decimal", "money"})
_JSON_DECODER = msgspec.json.Decoder(dict[str, str | int | float | bool | None])


@dataclass(frozen=True, slots=True)
class FieldPlan:
    """One field, compiled: where to read it, how to convert it, where it goes."""

    name: str
    source: str
    key: str
    header: bytes
    convert: Converter
    max_len: int
    required: bool
    default: str | int | float | None
    into_metrics: bool


def _plan(name: str, spec: FieldSpec) -> FieldPlan:
    key = spec.name or name
    convert = make_converter(name, spec)
    into = spec.into or ("metrics" if spec.type in _NUMERIC else "dims")
    return FieldPlan(
        name=name,
        source=spec.source,
        key=key,
        header=key.lower().encode("latin-1"),
        convert=convert,
        max_len=spec.max_len,
        required=spec.required,
        # A default is converted once here, so a bad default fails at start-up, not on a request.
        default=None if spec.default is None else convert(spec.default),
        into_metrics=into == "metrics",
    )


class EventBuilder:
    """Makes one event type's events from requests."""

    def __init__(self, type_name: str, spec: EventTypeSpec, meta: Meta) -> None:
        self.type_name = type_name
        self.meta = meta
        self.fields = [_plan(name, field) for name, field in spec.fields.items()]
        self.dedupe_key = list(spec.dedupe_key)
        sources = {plan.source for plan in self.fields}
        self.query_names = frozenset(
            plan.key.encode("ascii") for plan in self.fields if plan.source in ("param", "query")
        )
        self.body_names = frozenset(
            plan.key.encode("ascii") for plan in self.fields if plan.source in ("param", "form", "json")
        )
        self.reads_body = bool(sources & {"param", "form", "json"})
        self.reads_cookies = "cookie" in sources
        self.header_names = frozenset(plan.header for plan in self.fields if plan.source == "header") | (
            {b"cookie"} if self.reads_cookies else set()
        )

    def build(
        self, query: bytes, body: bytes | None, headers: dict[bytes, bytes], client_ip: str
    ) -> Event:
        """The event for one request, or `Reject` naming the first field that is missing or invalid."""
        params = parse_pairs(query, self.query_names) if query else {}
        body_params = self._body_params(body, headers) if body and self.reads_body else {}
        cookies = parse_cookies(headers.get(b"cookie", b"")) if self.reads_cookies else {}
        dims: dict[str, str] = {}
        metrics: dict[str, int | float] = {}
        for plan in self.fields:
            source = plan.source
            raw: str | None
            if source == "param":
                raw = params.get(plan.key)
                if raw is None:
                    raw = body_params.get(plan.key)
            elif source == "query":
                raw = params.get(plan.key)
            elif source == "header":
                value = headers.get(plan.header)
                raw = None if value is None else value.decode("latin-1")
            elif source == "cookie":
                raw = cookies.get(plan.key)
            elif source == "ip":
                raw = client_ip
            else:
                raw = body_params.get(plan.key)
            if raw is None or raw == "":
                if plan.default is not None:
                    converted = plan.default
                elif plan.required:
                    raise Reject(400, "missing_field", plan.name)
                else:
                    continue
            else:
                if len(raw) > plan.max_len:
                    raise Reject(400, "field_too_long", plan.name)
                converted = plan.convert(raw)
            if plan.into_metrics:
                metrics[plan.name] = converted  # type: ignore[assignment]
            else:
                dims[plan.name] = converted if isinstance(converted, str) else str(converted)
        ts = now_ms()
        event_id = self._event_id(dims, metrics, ts)
        ua = headers.get(b"user-agent")
        referer = headers.get(b"referer")
        ctx = Context(
            ip=client_ip,
            ua=None if ua is None else ua.decode("latin-1"),
            referer=None if referer is None else referer.decode("latin-1"),
        )
        return Event(event_id, self.type_name, ts, dims, metrics, ctx, self.meta)

    def _event_id(self, dims: dict[str, str], metrics: dict[str, int | float], ts: int) -> str:
        if not self.dedupe_key:
            return random_id(ts)
        values = []
        for name in self.dedupe_key:
            value = dims.get(name)
            if value is None:
                number = metrics.get(name)
                if number is None:  # an optional key field is absent: nothing to dedupe on
                    return random_id(ts)
                value = str(number)
            values.append(value)
        return derived_id(self.type_name, values)

    def _body_params(self, body: bytes, headers: dict[bytes, bytes]) -> dict[str, str]:
        content_type = headers.get(b"content-type", b"").partition(b";")[0].strip().lower()
        if content_type == b"application/x-www-form-urlencoded":
            return parse_pairs(body, self.body_names)
        if content_type in (b"application/json", b"text/plain"):  # text/plain: sendBeacon without a preflight
            try:
                document = _JSON_DECODER.decode(body)
            except msgspec.DecodeError:
                raise Reject(400, "invalid_json") from None
            return {
                key: _json_text(value)
                for key, value in document.items()
                if value is not None and key.encode("utf-8") in self.body_names
            }
        raise Reject(415, "unsupported_media_type")


def _json_text(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


# Header names the edge keeps for every request, whatever the event type.
CONTEXT_HEADERS = frozenset({b"user-agent", b"referer", b"content-type", b"x-forwarded-for"})
