"""One fact, one place: whether a field goes to metrics or dims is `FieldSpec.place` (numbers to metrics), and the
builder and every config check read it instead of keeping their own list of number types."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trackpoint.config.model import EventTypeSpec, FieldSpec
from trackpoint.edge.build import EventBuilder
from trackpoint.event import Meta
from trackpoint.fields.types import FIELD_TYPES

SRC = Path(__file__).resolve().parent.parent / "src" / "trackpoint"
SAMPLE = {
    "string": "a",
    "url": "https%3A%2F%2Fa.example%2Fp%3Fq%3D1",
    "int": "5",
    "decimal": "1.5",
    "money": "2.5",
    "price": "2.5",
    "duration": "12.5",
    "enum": "x",
    "bool": "1",
    "timestamp": "1700000000",
}


NUMBER_TYPES = {name for name, row in FIELD_TYPES.items() if row.numbers}


def test_every_field_type_has_a_sample() -> None:
    assert set(SAMPLE) == set(FIELD_TYPES)
    assert set(SAMPLE) > NUMBER_TYPES


@pytest.mark.parametrize("field_type", list(FIELD_TYPES))
@pytest.mark.parametrize("into", [None, "dims", "metrics"])
def test_the_builder_places_every_field_type_where_the_property_says(field_type: str, into: str | None) -> None:
    if into == "metrics" and field_type not in NUMBER_TYPES:
        return  # refused by `config check`: metrics hold numbers
    spec = FieldSpec(type=field_type, into=into, values=["x"] if field_type == "enum" else None)  # type: ignore[arg-type]
    assert spec.place == (into or ("metrics" if field_type in NUMBER_TYPES else "dims"))
    assert spec.is_number == (field_type in {"int", "decimal", "money", "price", "duration", "timestamp"})
    builder = EventBuilder("custom", EventTypeSpec(paths=["/x"], fields={"f": spec}), Meta(worker=0, config="t"))
    event = builder.build(f"f={SAMPLE[field_type]}".encode(), None, {}, "192.0.2.1")
    placed = event.metrics if spec.place == "metrics" else event.dims
    other = event.dims if spec.place == "metrics" else event.metrics
    assert "f" in placed and "f" not in other
    assert isinstance(placed["f"], str) == (spec.place == "dims")


def test_no_other_module_keeps_a_list_of_number_types() -> None:
    copies = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if path.name == "model.py" and path.parent.name == "config":
            continue
        if re.search(r'"metrics" if|"money",[^\n]*"timestamp"', text):
            copies.append(str(path.relative_to(SRC)))
    assert copies == []
