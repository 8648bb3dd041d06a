"""Generators of the reference docs (configuration, endpoints, CLI, plugin API) and of the OpenAPI document.

`write_docs` writes them all; `trackpoint docs OUT_DIR` calls it and tests/test_docs.py checks the committed pages.
"""

from __future__ import annotations

from pathlib import Path

import typer

from trackpoint.config.load import LoadedConfig
from trackpoint.plugins import Registry
from trackpoint.reference.cli import cli_reference
from trackpoint.reference.config import configuration_reference, endpoints_reference
from trackpoint.reference.openapi import openapi_document, openapi_json, openapi_markdown
from trackpoint.reference.plugins import plugin_api_reference


def write_docs(loaded: LoadedConfig, out_dir: Path, app: typer.Typer, registry: Registry) -> list[Path]:
    """Writes the generated reference: configuration, endpoints (Markdown and OpenAPI), the CLI `app` and the
    plugin API, for the components of `registry` (the plugins `loaded` was validated with)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pages = {
        out_dir / "configuration.md": configuration_reference(registry).encode(),
        out_dir / "endpoints.md": endpoints_reference(loaded, registry).encode(),
        out_dir / "openapi.json": openapi_json(loaded, registry),
        out_dir / "http-api.md": openapi_markdown(openapi_document(loaded, registry)).encode(),
        out_dir / "cli.md": cli_reference(app).encode(),
        out_dir / "plugin-api.md": plugin_api_reference(registry).encode(),
    }
    for path, data in pages.items():
        path.write_bytes(data)
    return list(pages)
