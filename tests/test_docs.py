"""The generated reference can never drift: the committed pages equal a fresh run; every option, CLI command and
parameter, collector and preprocessor type and plugin API member is described; the OpenAPI document is valid for
every configuration in the repository, is what the admin port serves, and the tracker accepts the requests it
describes and refuses the ones it calls invalid.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import msgspec.inspect as mi
import pytest
import typer.main
import yaml
from openapi_spec_validator import validate

from conftest import Tracker, load_config
from trackpoint.cli import app
from trackpoint.config.model import Config
from trackpoint.plugins import CollectorKind, PreprocessorKind, registry
from trackpoint.reference.cli import commands
from trackpoint.reference.config import config_sections, configuration_reference, endpoints_reference
from trackpoint.reference.openapi import openapi_document
from trackpoint.reference.plugins import api_objects, public_methods
from trackpoint.security.signing import SIGNATURE_PARAMS

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ("configuration.md", "endpoints.md", "openapi.json", "http-api.md", "cli.md", "plugin-api.md")
CONFIGS = [None, *sorted((ROOT / "examples").glob("*.yaml"))]


@pytest.mark.e2e
def test_committed_reference_is_fresh(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trackpoint", "docs", str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert "configuration.md" in result.stdout
    for name in GENERATED:
        committed = (ROOT / "docs" / "reference" / name).read_text()
        assert committed == (tmp_path / name).read_text(), (
            f"docs/reference/{name} is stale: run `trackpoint docs docs/reference`"
        )


def test_every_option_has_a_description() -> None:
    undescribed = [
        f"{title}.{field.encode_name}"
        for title, struct in config_sections(registry())
        for field in struct.fields
        if field.name != struct.tag_field
        and not (isinstance(field.type, mi.Metadata) and (field.type.extra_json_schema or {}).get("description"))
    ]
    assert undescribed == []
    assert all(struct.cls.__doc__ for _, struct in config_sections(registry()))


def test_reference_names_every_section_and_endpoint() -> None:
    text = configuration_reference(registry())
    for section in (
        "`server`",
        "`server.limits`",
        "`admin`",
        "`collectors.<name> (type: log)`",
        "`event_types.<name>.fields.<name>`",
        "`preprocessors.<name> (type: anonymize_ip)`",
    ):
        assert f"## {section}" in text
    endpoints = endpoints_reference(load_config(), registry())
    for path in ("`/i`", "`/c`", "`/conv`", "`/v`", "`/win`", "`/bill`", "`/loss`"):
        assert path in endpoints
    for method, path in (("GET", "/readyz"), ("PUT", "/banker/campaigns/{id}"), ("GET", "/banker/notifications")):
        assert f"| {method} | `{path}` | " in endpoints  # the admin port, with each handler's description


def test_every_cli_command_and_parameter_is_described() -> None:
    undescribed = []
    for path, command in commands(typer.main.get_command(app)):
        if not (command.help or "").strip():
            undescribed.append(" ".join(path))
        undescribed += [f"{' '.join(path)} {param.name}" for param in command.params if not getattr(param, "help", "")]
    assert undescribed == []


def test_every_component_and_plugin_api_member_is_described() -> None:
    installed = registry()
    kinds: list[CollectorKind | PreprocessorKind] = [*installed.collectors.values(), *installed.preprocessors.values()]
    assert len(kinds) >= 15
    assert [kind.type for kind in kinds if not (kind.config.__doc__ or "").strip()] == []
    undocumented = []
    for _, name, obj in api_objects():
        doc = (obj.__doc__ or "").strip()
        if not doc or doc.startswith(f"{name}("):  # empty, or the signature a dataclass writes for itself
            undocumented.append(name)
        if inspect.isclass(obj):
            undocumented += [f"{name}.{m}" for m, method in public_methods(obj) if not (method.__doc__ or "").strip()]
    assert undocumented == []


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.name if path else "default")
def test_openapi_document_is_valid(config: Path | None) -> None:
    loaded = load_config(config)
    document = openapi_document(loaded, registry())
    validate(document)
    operations = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    for spec in loaded.config.event_types.values():
        for path in spec.paths:
            for method in spec.methods:
                assert (path, method) in operations


def request_from(operation: dict[str, Any], redirect_host: str) -> tuple[dict[str, str], dict[str, str], str]:
    """The query, headers and form body of a request that gives every required parameter a valid value."""
    query: dict[str, str] = {}
    headers: dict[str, str] = {}
    for parameter in operation.get("parameters", []):
        if parameter.get("required"):
            target = headers if parameter["in"] == "header" else query
            target[parameter["name"]] = valid_value(parameter["name"], parameter["schema"], redirect_host)
    body = operation.get("requestBody", {}).get("content", {}).get("application/x-www-form-urlencoded", {})
    schema = body.get("schema", {})
    form = {key: valid_value(key, schema["properties"][key], redirect_host) for key in schema.get("required", [])}
    return query, headers, urlencode(form)


def valid_value(name: str, schema: dict[str, Any], redirect_host: str) -> str:
    if "enum" in schema:
        return str(schema["enum"][0])
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    if "integer" in kinds and "string" in kinds:  # a timestamp
        return str(int(time.time() * 1000))
    if "integer" in kinds or "number" in kinds:
        return str(max(schema.get("minimum", 1), 1))
    if name == "url":
        return f"https://{redirect_host}/landing"
    return "v1"[: schema.get("maxLength", 2)]


def test_openapi_served_by_the_admin_port_describes_the_running_tracker(tracker: Tracker) -> None:
    status, headers, body = tracker.admin("GET", "/openapi.json")
    assert status == 200
    assert headers["content-type"] == "application/json"
    served = json.loads(body)
    validate(served)
    assert served["servers"] == [{"url": f"http://127.0.0.1:{tracker.port}", "description": "The tracking port."}]
    expected = openapi_document(load_config(tracker.config_path), registry())
    assert served["info"]["version"] == expected["info"]["version"]
    assert served["paths"]["/readyz"]["servers"][0]["url"] == f"http://127.0.0.1:{tracker.admin_port}"
    tracking = {path: item for path, item in served["paths"].items() if "servers" not in item}
    assert tracking == {path: item for path, item in expected["paths"].items() if "servers" not in item}

    redirect_host = load_config(tracker.config_path).config.event_types["click"].response.allow_hosts[0].lstrip(".")
    checked = 0
    for path, item in tracking.items():
        for method, operation in item.items():
            query, headers, form = request_from(operation, redirect_host)
            body_bytes = form.encode() if method == "post" else None
            if method == "post":
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            signed = "sig" in query  # the documented signature parameters: a real signature replaces them

            def target_of(params: dict[str, str], path: str = path, signed: bool = signed) -> str:
                params = {k: v for k, v in params.items() if k not in SIGNATURE_PARAMS} if signed else params
                target = f"{path}?{urlencode(params)}" if params else path
                return tracker.sign(target) if signed else target

            target = target_of(query)
            status, got, _ = tracker.request(method.upper(), target, body_bytes, headers)
            successes = [code for code in operation["responses"] if code.startswith(("2", "3"))]
            assert str(status) in successes, (method, target, status, got.get("x-reject-reason"))
            checked += 1
            for missing in [p for p in operation.get("parameters", []) if p.get("required") and p["in"] == "query"]:
                without = {k: v for k, v in query.items() if k != missing["name"]}
                if missing["name"] in SIGNATURE_PARAMS:
                    status, got, _ = tracker.request(method.upper(), f"{path}?{urlencode(without)}", None, headers)
                    assert status == 403 and "403" in operation["responses"], (method, path, missing["name"])
                    continue
                status, got, _ = tracker.request(method.upper(), target_of(without), None, headers)
                assert status == 400 and "400" in operation["responses"], (method, path, missing["name"])
                assert got["x-reject-reason"] == "missing_field"
    assert checked >= 15


@pytest.mark.e2e
def test_every_config_file_in_the_repository_validates() -> None:
    """Any tracked YAML file whose top level is trackpoint config sections loads, wherever it lives (examples,
    deploy files); the example plugin's config needs its plugin and is checked by test_plugin_example."""
    sections = set(Config.__struct_fields__)
    tracked = subprocess.run(
        ["git", "ls-files", "*.yaml", "*.yml"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    checked = []
    for name in tracked:
        document = yaml.safe_load((ROOT / name).read_text())
        if isinstance(document, dict) and document and set(document) <= sections and "plugins/" not in name:
            load_config(ROOT / name)  # raises ConfigError naming the file, line and key
            checked.append(name)
    assert {"src/trackpoint/config/default.yaml", "deploy/kubernetes/base/trackpoint.yaml"} <= set(checked)
    assert len(checked) >= 8, checked
