"""A field type is one row of the table in fields/types.py: the loader accepts its name, the builder converts with
its converter and places its values by its `numbers`, the reference and the OpenAPI document describe it. Unit
tests: no service, no tracker process."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import load_config
from trackpoint.config import ConfigError, json_schema
from trackpoint.config.model import FieldSpec
from trackpoint.edge.build import EventBuilder
from trackpoint.event import Meta
from trackpoint.fields.converters import Converter, Declared, Reject
from trackpoint.fields.types import FIELD_TYPES, FieldType, make_converter, raw_value_schema
from trackpoint.plugins import registry
from trackpoint.reference.config import configuration_reference
from trackpoint.reference.openapi import openapi_document


def _shout(name: str, spec: Declared) -> Converter:
    def convert(raw: str) -> str:
        return raw.upper()

    return convert


def _cents(name: str, spec: Declared) -> Converter:
    def convert(raw: str) -> int:
        if not raw.isdigit():
            raise Reject(400, "invalid_field", name)
        return int(raw) * 10_000

    return convert


SHOUT = FieldType("shout", _shout, numbers=False, description="upper-cased text", schema=lambda _: {"type": "string"})
CENTS = FieldType("cents", _cents, numbers=True, description="cents as micros", schema=lambda _: {"type": "integer"})

CONFIG = """\
event_types:
  loud:
    paths: [/loud]
    fields:
      who: {type: shout, required: true}
      paid: {type: cents, on_invalid: reject}  # (a pixel type drops a bad optional value by default)
"""


@pytest.fixture
def throwaway_types(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two types added to the table, and nowhere else."""
    monkeypatch.setitem(FIELD_TYPES, SHOUT.name, SHOUT)
    monkeypatch.setitem(FIELD_TYPES, CENTS.name, CENTS)


def test_a_type_added_to_the_table_is_accepted_and_converted(tmp_path: Path, throwaway_types: None) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    loaded = load_config(path)
    spec = loaded.config.event_types["loud"]
    assert spec.fields["who"].place == "dims" and spec.fields["paid"].place == "metrics"
    builder = EventBuilder("loud", spec, Meta(worker=0, config=loaded.version))
    event = builder.build(b"who=ann&paid=250", None, {}, "192.0.2.1")
    assert event.dims["who"] == "ANN"
    assert event.metrics["paid"] == 2_500_000
    with pytest.raises(Reject) as refused:
        builder.build(b"who=ann&paid=lots", None, {}, "192.0.2.1")
    assert (refused.value.status, refused.value.reason, refused.value.field) == (400, "invalid_field", "paid")
    parameters = openapi_document(loaded, registry())["paths"]["/loud"]["get"]["parameters"]
    assert {p["name"]: p["schema"]["type"] for p in parameters} == {"who": "string", "paid": "integer"}


def test_a_type_not_in_the_table_is_refused_at_its_key_naming_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    problems = {issue.path: (issue.line, issue.message) for issue in refused.value.issues}
    assert set(problems) == {("event_types", "loud", "fields", f, "type") for f in ("who", "paid")}
    line, message = problems[("event_types", "loud", "fields", "who", "type")]
    assert line == 5
    assert message == f"unknown field type 'shout' (known: {', '.join(sorted(FIELD_TYPES))})"
    with pytest.raises(ValueError, match="unknown field type 'shout'"):
        make_converter("who", FieldSpec(type="shout"))


def test_every_type_of_the_table_is_documented_and_has_a_schema() -> None:
    assert json_schema(registry())["$defs"]["FieldSpec"]["properties"]["type"]["enum"] == list(FIELD_TYPES)
    reference = configuration_reference(registry())
    for name, row in FIELD_TYPES.items():
        assert f"{name} ({row.description})" in reference
        declared = FieldSpec(type=name, values=["a"] if name == "enum" else None)
        assert "type" in raw_value_schema(declared)
