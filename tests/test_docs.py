"""The generated reference can never drift: the committed pages equal a fresh run, every option is described,
and every example configuration in the repository validates.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec.inspect as mi

from trackpoint.config import load
from trackpoint.config.reference import config_sections, configuration_reference, endpoints_reference

ROOT = Path(__file__).resolve().parent.parent


def test_committed_reference_is_fresh(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trackpoint", "docs", str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert "configuration.md" in result.stdout
    for name in ("configuration.md", "endpoints.md"):
        committed = (ROOT / "docs" / "reference" / name).read_text()
        assert committed == (tmp_path / name).read_text(), (
            f"docs/reference/{name} is stale: run `trackpoint docs docs/reference`"
        )


def test_every_option_has_a_description() -> None:
    undescribed = [
        f"{title}.{field.encode_name}"
        for title, struct in config_sections()
        for field in struct.fields
        if field.name != struct.tag_field
        and not (isinstance(field.type, mi.Metadata) and (field.type.extra_json_schema or {}).get("description"))
    ]
    assert undescribed == []
    assert all(struct.cls.__doc__ for _, struct in config_sections())


def test_reference_names_every_section_and_endpoint() -> None:
    text = configuration_reference()
    for section in (
        "`server`",
        "`server.limits`",
        "`admin`",
        "`collectors.<name> (type: log)`",
        "`event_types.<name>.fields.<name>`",
        "`preprocessors.<name> (type: anonymize_ip)`",
    ):
        assert f"## {section}" in text
    endpoints = endpoints_reference(load())
    for path in ("`/i`", "`/c`", "`/conv`", "`/v`", "`/win`", "`/bill`", "`/loss`"):
        assert path in endpoints
    for method, path in (("GET", "/readyz"), ("PUT", "/banker/campaigns/{id}"), ("GET", "/banker/notifications")):
        assert f"| {method} | `{path}` | " in endpoints  # the admin port, with each handler's description
