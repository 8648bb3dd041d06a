"""The two builds of the request path (trackpoint/_native.py): the suite runs the pure-Python sources, and
scripts/test repeats the request path's end-to-end tests on the mypyc-compiled build."""

from __future__ import annotations

import ast
import importlib.machinery
import os
import re
import sys
import tomllib
from pathlib import Path

import pytest

import trackpoint
from trackpoint import _native

ROOT = Path(__file__).resolve().parent.parent


def test_each_process_runs_the_build_its_environment_asks_for() -> None:
    wanted_pure = os.environ.get(_native.PURE_PYTHON_VARIABLE) == "1"
    assert _native.ACTIVE is not wanted_pure, _native.REASON
    for name in _native.COMPILED:
        __import__(name)
        suffix = Path(sys.modules[name].__file__ or "").suffix
        assert (suffix == ".py") is wanted_pure, f"{name} loaded from {sys.modules[name].__file__}"


def test_compiled_modules_are_the_request_path_and_define_no_struct() -> None:
    """Every listed module exists; none defines a msgspec Struct (mypyc's classes are not Structs msgspec knows)."""
    for name in _native.COMPILED:
        source = Path(trackpoint.__file__).parent.parent.joinpath(*name.split(".")).with_suffix(".py")
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(base) for base in node.bases}
                assert not bases & {"Struct", "msgspec.Struct"}, f"{name}.{node.name} is a Struct"


_CONSTANT = re.compile(r"_?[A-Z][A-Z0-9_]*")


def test_compiled_module_constants_are_final_and_final_tuples_open_ended() -> None:
    """Compiled, a module name that is not Final is a lookup in the module's globals on every use (22 of them per
    request before this rule); a Final tuple of fixed length is kept unboxed and rebuilt as a new tuple each time a
    loop goes over it, so it is annotated `Final[tuple[T, ...]]`."""
    problems = []
    for name in _native.COMPILED:
        source = Path(trackpoint.__file__).parent.parent.joinpath(*name.split(".")).with_suffix(".py")
        for node in ast.parse(source.read_text()).body:
            if isinstance(node, ast.Assign):
                targets = [t for target in node.targets for t in ast.walk(target) if isinstance(t, ast.Name)]
                problems += [f"{name}.{t.id} is not Final" for t in targets if _CONSTANT.fullmatch(t.id)]
            elif (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.value, ast.Tuple)
                and ast.unparse(node.annotation) in ("Final", "typing.Final")
            ):
                problems.append(f"{name}.{ast.unparse(node.target)} is a Final tuple of fixed length")
    assert not problems, problems


def _compiled_before_its_source(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One listed module under `root` whose extension is older than its source, with the compiled build asked for;
    returns the extension."""
    source = root / "trackpoint" / "edge" / "build.py"
    source.parent.mkdir(parents=True)
    source.write_text("")
    extension = source.with_suffix(importlib.machinery.EXTENSION_SUFFIXES[0])
    extension.write_bytes(b"")
    os.utime(extension, (1_000, 1_000))
    os.utime(source, (2_000, 2_000))
    monkeypatch.setattr(_native, "_ROOT", root)
    monkeypatch.setattr(_native, "COMPILED", ("trackpoint.edge.build",))
    monkeypatch.setattr(_native, "NATIVE", ())
    monkeypatch.setenv(_native.PURE_PYTHON_VARIABLE, "0")
    return extension


def test_a_source_newer_than_its_extension_falls_back_to_the_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extension = _compiled_before_its_source(tmp_path, monkeypatch)
    assert "changed after it was compiled" in (_native.why_pure_python() or "")
    os.utime(extension, (3_000, 3_000))
    assert _native.why_pure_python() is None
    extension.unlink()
    assert "is not compiled" in (_native.why_pure_python() or "")
    monkeypatch.setenv(_native.PURE_PYTHON_VARIABLE, "1")
    assert _native.why_pure_python() == "TRACKPOINT_PURE_PYTHON=1"


def test_a_native_step_whose_c_source_changed_after_its_build_falls_back_to_the_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _compiled_before_its_source(tmp_path, monkeypatch)
    os.utime(tmp_path / "trackpoint" / "edge" / "build.py", (500, 500))  # the mypyc module is current
    source = tmp_path / "trackpoint" / "fields" / "_query.c"
    source.parent.mkdir()
    source.write_text("")
    monkeypatch.setattr(_native, "NATIVE", ("trackpoint.fields._query",))
    assert _native.why_pure_python() == "trackpoint.fields._query is not compiled"
    extension = source.with_suffix(importlib.machinery.EXTENSION_SUFFIXES[0])
    extension.write_bytes(b"")
    os.utime(extension, (1_000, 1_000))
    os.utime(source, (2_000, 2_000))
    assert "trackpoint.fields._query was changed after it was compiled" in (_native.why_pure_python() or "")
    os.utime(extension, (3_000, 3_000))
    assert _native.why_pure_python() is None


def test_the_compiled_build_calls_its_native_steps_and_the_sources_do_not() -> None:
    from trackpoint.edge import build
    from trackpoint.fields import converters
    from trackpoint.http import connection

    assert (converters._MEMBERS is not None) is _native.ACTIVE
    assert (converters.is_printable is not str.isprintable) is _native.ACTIVE
    assert (connection._CANONICAL is not None) is _native.ACTIVE
    assert (connection._HEAD is not None) is _native.ACTIVE
    assert (build._DERIVED is not None) is _native.ACTIVE
    parser = converters.PairParser(frozenset({"imp"}))
    assert parser(b"imp=1") == parser.pure(b"imp=1") == {"imp": "1"}


def test_a_connection_takes_its_headers_in_the_c_step_where_compiled() -> None:
    """The edge's connections (a set of kept names) hand httptools the C header step in the compiled build and
    `on_header` in the sources; either way the kept headers are in `headers`, under their lower-case names, and the
    next request starts with none."""
    import httptools

    from trackpoint.config.model import Limits
    from trackpoint.fields.converters import Reject
    from trackpoint.http.connection import HeaderNames, HttpConnection
    from trackpoint.http.latency import LatencyHistogram
    from trackpoint.http.limits import Caps

    def ignore(connection: HttpConnection) -> None:
        pass

    connection = HttpConnection(Caps(Limits()), HeaderNames(frozenset({b"host"})), ignore, LatencyHistogram())
    parser = connection.parser = connection.new_parser()
    parser.feed_data(b"GET /i HTTP/1.1\r\nHOST: a.example\r\nX-Other: 1\r\n")
    assert connection.headers == {b"host": b"a.example"}
    assert (connection.head is not None) is _native.ACTIVE
    connection.finish(keep_alive=True)
    assert connection.headers == {}
    with pytest.raises(httptools.HttpParserCallbackError) as raised:  # the same head goes on, into the new dict
        parser.feed_data(b"Host: a.example\r\nhost: b.example\r\nX: 1\r\n")
    assert isinstance(raised.value.__context__, Reject)
    assert raised.value.__context__.reason == "bad_host"


def test_an_installed_wheel_trusts_its_extensions_whatever_their_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pip writes a wheel's files in any order: in site-packages an extension older than its source is not stale."""
    _compiled_before_its_source(tmp_path / "lib" / "python3.11" / "site-packages", monkeypatch)
    assert _native.why_pure_python() is None


def test_the_build_uses_the_mypyc_the_suite_checks_with() -> None:
    """setup.py compiles with the mypy of pyproject's build requirements: the one the dev lock pins."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    [build_mypy] = [requirement for requirement in requires if requirement.startswith("mypy")]
    locked = re.search(r"^mypy==(\S+)", (ROOT / "requirements" / "dev.txt").read_text(), re.M)
    assert locked is not None
    assert build_mypy == f"mypy=={locked.group(1)}"
