"""The field types an event type's fields may declare, one row each: the name users write, the converter factory,
whether the values are numbers (they go to metrics), the description of the reference and the raw value's schema.

The loader accepts exactly these names (config/load.py: `field_type_problems`), the reference and the JSON schema
list them, the event builder converts with them and the OpenAPI document describes them: a new type is one row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from trackpoint.fields.converters import (
    BOOL_WORDS,
    Converter,
    Declared,
    bool_converter,
    decimal_converter,
    duration_converter,
    enum_converter,
    int_converter,
    money_converter,
    price_converter,
    string_converter,
    timestamp_converter,
)

Schema = dict[str, Any]


class DeclaredField(Declared, Protocol):
    """What the table reads of a declared field (`config.model.FieldSpec`)."""

    @property
    def type(self) -> str: ...

    @property
    def max_len(self) -> int: ...


@dataclass(frozen=True)
class FieldType:
    """One field type: `converter` builds a field's converter from its name and declaration; `numbers`: its values
    go to metrics unless the field says `into: dims`; `schema`, the JSON Schema of a raw value (the OpenAPI
    document's parameters)."""

    name: str
    converter: Callable[[str, Declared], Converter]
    numbers: bool
    description: str
    schema: Callable[[DeclaredField], Schema]


def _bounds(field: DeclaredField) -> Schema:
    bounds: Schema = {}
    if field.min is not None:
        bounds["minimum"] = field.min
    if field.max is not None:
        bounds["maximum"] = field.max
    return bounds


def _number(field: DeclaredField) -> Schema:
    return {"type": "number"} | _bounds(field)


FIELD_TYPES: dict[str, FieldType] = {
    row.name: row
    for row in (
        FieldType(
            "string",
            string_converter,
            numbers=False,
            description="text as received",
            schema=lambda field: {"type": "string", "maxLength": field.max_len},
        ),
        FieldType(
            "url",
            string_converter,
            numbers=False,
            description="text as received, a URL such as a page's address: untrusted collectors get it as scheme, "
            "host and path, without user info, query string and fragment (as ctx.referer), unless their "
            "`send_private` names it",
            schema=lambda field: {"type": "string", "maxLength": field.max_len},
        ),
        FieldType(
            "int",
            int_converter,
            numbers=True,
            description="an integer",
            schema=lambda field: {"type": "integer"} | _bounds(field),
        ),
        FieldType("decimal", decimal_converter, numbers=True, description="a float", schema=_number),
        FieldType(
            "money",
            money_converter,
            numbers=True,
            description="decimal currency units stored as integer micros",
            schema=_number,
        ),
        FieldType(
            "price",
            price_converter,
            numbers=True,
            description="money for an auction price: a literal `${AUCTION_PRICE}` is refused as "
            "`price_macro_unsubstituted` and a value outside min/max as `price_out_of_range`, as decrypt_price does",
            schema=_number,
        ),
        FieldType(
            "duration",
            duration_converter,
            numbers=True,
            description="seconds, `12.5`, or a VAST timecode `HH:MM:SS.mmm`; stored as seconds",
            schema=lambda _: {"type": ["number", "string"], "description": "Seconds, or a VAST timecode HH:MM:SS.mmm."},
        ),
        FieldType(
            "enum",
            enum_converter,
            numbers=False,
            description="one of `values`",
            schema=lambda field: {"type": "string", "enum": list(field.values or [])},
        ),
        FieldType(
            "bool",
            bool_converter,
            numbers=False,
            description="/".join(BOOL_WORDS) + ", in any case; stored as true or false",
            schema=lambda _: {"type": ["boolean", "string"], "enum": [True, False, *BOOL_WORDS]},
        ),
        FieldType(
            "timestamp",
            timestamp_converter,
            numbers=True,
            description="epoch s, epoch ms or ISO 8601; stored as epoch ms",
            schema=lambda _: {"type": ["integer", "string"], "description": "Epoch seconds, epoch ms or ISO 8601."},
        ),
    )
}


def unknown_type_problem(name: str) -> str | None:
    """Why `name` is not a field type (naming the known ones), else None."""
    if name in FIELD_TYPES:
        return None
    return f"unknown field type {name!r} (known: {', '.join(FIELD_TYPES)})"


def described_types() -> str:
    """Every field type with its description, for the reference (`FieldSpec.type`)."""
    return "; ".join(f"{row.name} ({row.description})" for row in FIELD_TYPES.values()) + "."


def make_converter(name: str, spec: DeclaredField) -> Converter:
    """The converter of one declared field (its type and limits); ValueError for a type not in the table (the
    loader refuses those first)."""
    row = FIELD_TYPES.get(spec.type)
    if row is None:
        raise ValueError(unknown_type_problem(spec.type))
    return row.converter(name, spec)


def raw_value_schema(field: DeclaredField) -> Schema:
    """The JSON Schema of a declared field's raw value. `max_len` bounds the raw text of every type."""
    return FIELD_TYPES[field.type].schema(field)
