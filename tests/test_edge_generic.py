"""The generic edge knows no feature: edge/ imports no adtech or preprocessor module; what a route does with a
preprocessor's verdict (invalid-traffic routing, withholding the user id cookie) is declared by the preprocessors
(`flag_dim`, `cookie_veto`) and computed once per route when the worker builds it."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import yaml

from conftest import load_config
from trackpoint.edge.runtime import Edge
from trackpoint.plugins import registry

EDGE = Path(__file__).resolve().parent.parent / "src" / "trackpoint" / "edge"


def test_the_edge_imports_no_feature_module() -> None:
    imported: list[str] = []
    for path in EDGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):  # lazy imports inside functions included
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            imported += [f"{path.name}: {name}" for name in names]
    features = [
        line for line in imported if line.split(": ")[1].startswith(("trackpoint.adtech", "trackpoint.preprocessors."))
    ]
    assert features == []


def _edge(tmp_path: Path, event_types: dict[str, Any]) -> Edge:
    document = {"data_dir": str(tmp_path / "data"), "signing": {"keys": {"k": {"secret_file": "k", "generate": True}}}}
    document["event_types"] = event_types
    path = tmp_path / "trackpoint.yaml"
    path.write_text(yaml.safe_dump(document))
    loaded = load_config(path)
    return Edge(loaded.config, loaded.version, 0, registry())


def test_routes_precompute_what_their_preprocessors_declare(tmp_path: Path) -> None:
    pixel = {"response": {"kind": "gif", "user_id_cookie": {}}, "fields": {"imp": {}}}
    edge = _edge(
        tmp_path,
        {
            "flagged": {
                "paths": ["/f"],
                "preprocessors": ["flag_invalid_traffic"],
                "invalid_traffic": {"action": "drop"},
            },
            "converted": {
                "paths": ["/a"],
                "preprocessors": ["attribute_conversion"],
                "invalid_traffic": {"action": "drop"},
            },
            "kept": {"paths": ["/k"], "preprocessors": ["flag_invalid_traffic"]},
            "unflagged": {"paths": ["/u"], "invalid_traffic": {"action": "drop"}},
            "consented": {"paths": ["/c"], "preprocessors": ["check_consent"], **pixel},
            "plain": {"paths": ["/p"], "fields": {"imp": {}}},
        },
    )
    routes = {route.name: route for route in edge.routes.values()}
    assert (routes["flagged"].flagged is not None, routes["flagged"].flag_dim) == (True, "ivt")
    assert (routes["converted"].flagged is not None, routes["converted"].flag_dim) == (True, "ivt")
    assert routes["kept"].flagged is None  # the keep policy looks for nothing
    assert routes["unflagged"].flagged is None  # no preprocessor flags: nothing to look for
    assert edge.stats.ivt_dropped["unflagged"] == 0  # still reported on /metrics
    assert routes["consented"].cookie_vetoes == (("consent", "denied"),)
    assert routes["consented"].cookie_vetoed({"consent": "denied"})
    assert not routes["consented"].cookie_vetoed({"consent": "granted"})
    assert routes["plain"].cookie_vetoes == ()
    assert not routes["plain"].cookie_vetoed({"consent": "denied"})
