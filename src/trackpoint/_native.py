"""Which build of the request path runs: its modules compiled by mypyc into C extensions (`pip install` builds them
beside their sources, see setup.py), with the native steps written in C (`NATIVE`), or their pure-Python sources.

The compiled build is the default wherever it is present and current. The sources are imported instead when
`TRACKPOINT_PURE_PYTHON=1` (the test suite's default, so the pure-Python path stays tested), when an extension is
missing, or, in a checkout, when any source is newer than its extension (an edited file: a stale extension would run
old code).
The choice is all or nothing: compiled modules call each other natively, so the build is never mixed.

Imports nothing but the standard library: setup.py reads `COMPILED` from this file before trackpoint is installed.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

# The modules every request runs through, as measured by bench/hotpath.py. A module that defines msgspec Structs
# stays interpreted (mypyc would compile the Struct subclasses into classes msgspec does not recognise).
COMPILED = (
    "trackpoint.edge.build",
    "trackpoint.edge.counters",
    "trackpoint.fields.converters",
    "trackpoint.http.connection",
    "trackpoint.http.latency",
    "trackpoint.http.limits",
    "trackpoint.http.responses",
    "trackpoint.edge.pipeline",
    "trackpoint.edge.runtime",
    "trackpoint.edge.responses",
    "trackpoint.collectors.log.collector",
    "trackpoint.collectors.sizing",
    "trackpoint.preprocessors.anonymize_ip.preprocessor",
    "trackpoint.preprocessors.check_consent.preprocessor",
    "trackpoint.preprocessors.parse_user_agent.preprocessor",
    "trackpoint.privacy.filter",
)
# Steps written in C, each beside the pure-Python code it stands in for in the compiled build (which calls it);
# the sources, and the test suite, keep that code as the reference.
NATIVE = ("trackpoint.fields._query", "trackpoint.http._headers", "trackpoint.edge._id")
PURE_PYTHON_VARIABLE = "TRACKPOINT_PURE_PYTHON"
_ROOT = Path(__file__).resolve().parent.parent  # the directory holding the trackpoint package


def _installed(root: Path) -> bool:
    """Whether trackpoint is installed (a wheel in site-packages: the image) rather than a checkout. Installing a
    wheel writes the sources and extensions in any order, so their times say nothing there, and nobody edits them."""
    return any(part in ("site-packages", "dist-packages") for part in root.parts)


def _source(module: str) -> Path:
    return _ROOT.joinpath(*module.split(".")).with_suffix(".c" if module in NATIVE else ".py")


def _extension(module: str) -> Path | None:
    source = _source(module)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = source.with_suffix(suffix)
        if candidate.exists():
            return candidate
    return None


def why_pure_python() -> str | None:
    """None when the compiled build runs; otherwise the reason the sources are used."""
    if os.getenv(PURE_PYTHON_VARIABLE) == "1":
        return f"{PURE_PYTHON_VARIABLE}=1"
    for module in COMPILED + NATIVE:
        extension = _extension(module)
        if extension is None:
            return f"{module} is not compiled"
        if not _installed(_ROOT) and _source(module).stat().st_mtime > extension.stat().st_mtime:
            return f"{module} was changed after it was compiled (reinstall: scripts/install)"
    return None


REASON = why_pure_python()
ACTIVE = REASON is None  # whether this process runs the compiled build


def step(module: str, name: str) -> Any:
    """A function of one of the NATIVE modules where the compiled build runs (its caller calls it instead of its own
    Python code), None where the sources run."""
    if not ACTIVE:
        return None
    return getattr(importlib.import_module(module), name)


class _SourcesFirst(importlib.abc.MetaPathFinder):
    """Imports the compiled modules from their sources, never from their extensions."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED:
            return None
        return importlib.util.spec_from_file_location(fullname, _source(fullname))


def install() -> None:
    """Called once by trackpoint/__init__.py, before any compiled module can be imported."""
    if not ACTIVE and not any(isinstance(finder, _SourcesFirst) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourcesFirst())
