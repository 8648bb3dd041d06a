"""The registry builds components and runs their checks for every plugin alike, and the package layout keeps its
shape: the loader imports no component, no two packages import each other, no import hides inside a function to
dodge a cycle. Pure unit tests: no service, no tracker process.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from trackpoint.config import ConfigError, load
from trackpoint.config.load import KeyPath
from trackpoint.config.model import Config, PreprocessorBase
from trackpoint.event import Event
from trackpoint.plugins import Plugin, PreprocessorKind, registry, resolve
from trackpoint.plugins.builtin import plugin as builtin_plugin
from trackpoint.preprocessors import CountsOutcomes, InputFields, RedirectParams, UsesSigningKeys

SRC = Path(__file__).resolve().parent.parent / "src" / "trackpoint"


class ShoutConfig(PreprocessorBase, tag="shout"):
    """A third party's preprocessor: upper-cases one dim."""

    dim: str = "pub"


class Shout:
    def __init__(self, name: str, config: ShoutConfig) -> None:
        self.name = name
        self.dim = config.dim

    def __call__(self, event: Event, /) -> Event | None:
        event.dims[self.dim] = event.dims.get(self.dim, "").upper()
        return event


def shout_needs_a_declared_dim(config: Config) -> Iterator[tuple[KeyPath, str]]:
    for name, preprocessor in config.preprocessors.items():
        if isinstance(preprocessor, ShoutConfig) and preprocessor.dim != "pub":
            yield ("preprocessors", name, "dim"), f"shout knows pub only, not {preprocessor.dim!r}"


def failing_check(config: Config) -> Iterator[tuple[KeyPath, str]]:
    raise RuntimeError("bug in the plugin")


SHOUT = Plugin(name="acme", preprocessors=[PreprocessorKind(ShoutConfig, Shout)], checks=[shout_needs_a_declared_dim])


def test_a_plugin_check_reports_its_problem_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("preprocessors:\n  loud:\n    type: shout\n    dim: cid\n")
    with pytest.raises(ConfigError) as refused:
        load(path, registry=resolve([builtin_plugin, SHOUT]))
    assert [str(issue) for issue in refused.value.issues] == [
        f"{path}:4: preprocessors.loud.dim: shout knows pub only, not 'cid'"
    ]
    path.write_text("preprocessors:\n  loud:\n    type: shout\n")
    assert isinstance(load(path, registry=resolve([builtin_plugin, SHOUT])).config.preprocessors["loud"], ShoutConfig)


def test_a_check_that_raises_refuses_the_config_naming_its_plugin() -> None:
    broken = Plugin(name="broken", checks=[failing_check])
    with pytest.raises(ConfigError) as refused:
        load(registry=resolve([builtin_plugin, broken]))
    assert "failing_check of plugin broken failed: RuntimeError('bug in the plugin')" in str(refused.value)


def test_the_builtin_checks_run_through_the_registry(tmp_path: Path) -> None:
    """The loader runs no component's check itself: without the built-in plugin's checks a decrypt_price
    without keys for its default exchange passes; with them it is refused."""
    path = tmp_path / "config.yaml"
    path.write_text("preprocessors:\n  price:\n    type: decrypt_price\n    default_exchange: adx\n")
    checkless = Plugin(name="builtin", collectors=builtin_plugin.collectors, preprocessors=builtin_plugin.preprocessors)
    load(path, registry=resolve([checkless]))
    with pytest.raises(ConfigError) as refused:
        load(path, registry=resolve([builtin_plugin]))
    assert "preprocessors.price.default_exchange" in str(refused.value)


def test_the_registry_builds_a_third_party_preprocessor_and_refuses_unknown_configs() -> None:
    components = resolve([builtin_plugin, SHOUT])
    shout = components.build_preprocessor("loud", ShoutConfig(dim="cid"))
    assert isinstance(shout, Shout) and shout.dim == "cid"
    with pytest.raises(ValueError, match="no preprocessor for configuration ShoutConfig"):
        registry().build_preprocessor("loud", ShoutConfig())


def test_builtin_preprocessors_have_the_declared_optional_members() -> None:
    config = load(registry=registry()).config
    built = {name: registry().build_preprocessor(name, options, "/nonexistent") for name, options in _keyless(config)}
    assert isinstance(built["issue_click_id"], UsesSigningKeys) and isinstance(built["issue_click_id"], RedirectParams)
    assert isinstance(built["attribute_conversion"], CountsOutcomes)
    assert isinstance(built["flag_invalid_traffic"], CountsOutcomes)
    assert isinstance(built["flag_invalid_traffic"], InputFields) and isinstance(built["check_consent"], InputFields)
    anonymize = built["anonymize_ip"]
    assert not isinstance(anonymize, UsesSigningKeys | RedirectParams | CountsOutcomes | InputFields)


def _keyless(config: Config) -> Iterator[tuple[str, PreprocessorBase]]:
    # Preprocessors that read or create keys (or open databases) under data_dir when built are left out: their
    # members are not optional (geo's are tested in tests/test_geo.py).
    yield from ((n, p) for n, p in config.preprocessors.items() if n not in ("pseudonymize", "decrypt_price", "geo"))


# --- the layout ---------------------------------------------------------------------------------------------------

# Imports inside functions between packages: only the CLI's, which imports each command's modules when that command
# runs (the start-up time of `trackpoint --help`). A lazy import of an optional heavy dependency is not between
# packages of trackpoint, so it is not counted here.


def _package(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "trackpoint" or len(parts) < 2:
        return None
    if parts[1] in ("collectors", "preprocessors") and len(parts) > 2 and (SRC / parts[1] / parts[2]).is_dir():
        return ".".join(parts[1:3])
    return parts[1]


def _imports() -> Iterator[tuple[str, str, bool, str]]:
    """(importing package, imported package, inside a function?, where) of every import between packages."""
    for path in sorted(SRC.rglob("*.py")):
        module = ".".join(("trackpoint", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        source = _package(module)
        if source is None:
            continue
        tree = ast.parse(path.read_text())
        # Imports at the top of the module, including those for type checking only.
        top_level = {id(node) for node in tree.body}
        for statement in tree.body:
            if isinstance(statement, ast.If) and "TYPE_CHECKING" in ast.unparse(statement.test):
                top_level |= {id(inner) for inner in statement.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            targets = {p for name in names if (p := _package(name)) and _exists(name)}
            for target in targets - {source}:
                yield source, target, id(node) not in top_level, f"{path.relative_to(SRC)}:{node.lineno}"


def _exists(module: str) -> bool:
    relative = Path(*module.split(".")[1:])
    return (SRC / relative).is_dir() or (SRC / relative).with_suffix(".py").exists()


def test_no_two_packages_import_each_other() -> None:
    graph: dict[str, set[str]] = {}
    for source, target, _, _ in _imports():
        graph.setdefault(source, set()).add(target)
    cycle = _find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_inside_a_function_dodges_a_cycle() -> None:
    lazy = {where for source, target, inside, where in _imports() if inside and source != "cli"}
    assert lazy == set()


def test_the_loader_imports_no_component() -> None:
    """config/ is the core schema and the loader: components reach it through the registry's checks, and the
    registry is handed to the loader (`load(path, registry=...)`), never looked up. Field types (fields/types.py) are
    the core schema's vocabulary."""
    imported = {target for source, target, _, _ in _imports() if source == "config"}
    assert imported <= {"fields"}, imported


def test_attribution_notices_come_from_every_plugin_once_each_and_a_broken_source_is_left_out() -> None:
    def credits(config: Config) -> Iterator[str]:
        yield from ("Data by Acme (CC BY 4.0).", "Data by Acme (CC BY 4.0).", "")  # once each, no empty notice
        if "loud" in config.preprocessors:
            yield "Shouting by Acme."

    def broken(config: Config) -> Iterator[str]:
        raise RuntimeError("bug in the plugin")

    plugins = resolve(
        [builtin_plugin, Plugin(name="bad", attributions=[broken]), Plugin(name="acme", attributions=[credits])]
    )
    assert [plugin for plugin, _ in plugins.attributions] == ["builtin", "bad", "acme"]
    assert plugins.notices(load(registry=plugins).config) == ["Data by Acme (CC BY 4.0)."]
