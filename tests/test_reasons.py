"""The table of reject reasons (pipeline/reasons.py) against the source: every reason src/ can answer with is listed,
with the status it is raised with, every listed reason is raised somewhere, and the generated docs list them all."""

from __future__ import annotations

import ast
import importlib
import json
from collections.abc import Iterator
from pathlib import Path

from conftest import load_config
from trackpoint.fields.reasons import BY_REASON, REJECT_REASONS
from trackpoint.http.responses import REASONS as STATUS_PHRASES
from trackpoint.plugins import registry
from trackpoint.reference.config import endpoints_reference
from trackpoint.reference.openapi import openapi_document

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "trackpoint"
# Calls that answer a rejection, and which argument holds the reason (after the status, when there is one).
REJECTING = {
    "Reject": 1,
    "RecordedReject": 1,
    "reject": 1,
    "reject_and_close": 1,
    "reject_response": 1,
    "PriceError": 0,
    "refuse_now": 0,
    "refuse_unrecorded": 0,
}
# Functions whose returned strings are reasons: the connection admission (503) and the signature check (403).
RETURNING = {"admit": 503, "verify": 403, "_verify_canonical": 403, "_expiry": 403}


def _strings(node: ast.expr | None, module: object) -> Iterator[str]:
    """The reason strings an expression can evaluate to: literals, module constants (also imported ones), and both
    branches of a conditional; anything else (an attribute of a caught Reject, a parameter) passes a reason on."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.Name) and isinstance(getattr(module, node.id, None), str):
        yield getattr(module, node.id)
    elif isinstance(node, ast.IfExp):
        yield from _strings(node.body, module)
        yield from _strings(node.orelse, module)


def _status(node: ast.expr) -> int | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, int) else None


def raised_reasons() -> dict[str, set[int | None]]:
    """Every reason the source raises or answers, with the statuses it is raised with (None: not at the call)."""
    found: dict[str, set[int | None]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name in {"reasons.py", "__main__.py"}:  # the table itself; the CLI entry point runs on import
            continue
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        module = importlib.import_module(name)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                position = REJECTING.get(callee)
                if position is None or len(node.args) <= position:
                    continue
                status = _status(node.args[0]) if position else None
                for reason in _strings(node.args[position], module):
                    found.setdefault(reason, set()).add(status)
            elif isinstance(node, ast.FunctionDef) and node.name in RETURNING:
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Return):
                        for reason in _strings(inner.value, module):
                            found.setdefault(reason, set()).add(RETURNING[node.name])
            elif isinstance(node, ast.FunctionDef):  # a `reason` parameter's default (pipeline/fields._bounded)
                arguments = node.args.args[-len(node.args.defaults) :] if node.args.defaults else []
                for argument, default in zip(arguments, node.args.defaults, strict=True):
                    if argument.arg == "reason":
                        for reason in _strings(default, module):
                            found.setdefault(reason, set()).add(None)
            elif isinstance(node, ast.Assign | ast.AnnAssign):  # a collector's `failure_reason = ...`
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = {
                    target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
                    for target in targets
                }
                if "failure_reason" in names:
                    for reason in _strings(node.value, module):
                        found.setdefault(reason, set()).add(None)
    return found


def test_every_reason_raised_in_src_is_in_the_table_with_its_status() -> None:
    raised = raised_reasons()
    assert sorted(set(raised) - set(BY_REASON)) == []
    wrong = {
        reason: statuses for reason, statuses in raised.items() if not statuses - {None} <= {BY_REASON[reason].status}
    }
    assert wrong == {}


def test_the_table_has_no_unused_entry() -> None:
    assert sorted(set(BY_REASON) - set(raised_reasons())) == []


def test_every_status_in_the_table_has_a_status_line() -> None:
    assert {entry.status for entry in REJECT_REASONS} <= set(STATUS_PHRASES)


def test_openapi_and_the_endpoints_reference_list_every_reason() -> None:
    loaded = load_config()
    document = openapi_document(loaded, registry())
    text = json.dumps(document["components"]["responses"])
    for entry in REJECT_REASONS:
        response = document["components"]["responses"][str(entry.status)]
        assert f"`{entry.reason}`" in response["description"], entry
    assert all(f"`{reason}`" in text for reason in BY_REASON)
    reference = endpoints_reference(loaded, registry())
    for entry in REJECT_REASONS:
        assert f"| {entry.status} | `{entry.reason}` |" in reference, entry


def test_the_fuzz_harness_reads_the_table() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "fuzz"))
    try:
        import fuzz_edge
    finally:
        sys.path.pop(0)
    assert fuzz_edge.known_reasons() == frozenset(BY_REASON)
