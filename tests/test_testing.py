"""trackpoint.testing, the test support shipped to plugins: it needs pytest and says so, nothing trackpoint runs
imports it (nor pytest), it is never compiled, and the plugin API reference describes it, or says why not.

The battery itself runs in tests/conformance (the built-in collectors) and from the example plugin's own tests
(tests/test_plugin_example.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import trackpoint
from trackpoint import _native
from trackpoint.plugins import registry
from trackpoint.reference.plugins import plugin_api_reference

SRC = Path(trackpoint.__file__).resolve().parent


def _without_pytest(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as one without pytest installed: importing it fails, and trackpoint.testing is imported anew."""
    monkeypatch.setitem(sys.modules, "pytest", None)  # `import pytest` raises ImportError
    for name in [name for name in sys.modules if name.split(".")[:2] == ["trackpoint", "testing"]]:
        monkeypatch.delitem(sys.modules, name)


def test_importing_it_without_pytest_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_pytest(monkeypatch)
    with pytest.raises(ImportError) as refused:
        import trackpoint.testing.conformance  # noqa: F401
    assert str(refused.value).startswith("trackpoint.testing needs pytest, which trackpoint does not install")
    assert "pip install pytest" in str(refused.value) and refused.value.name == "pytest"


def test_the_reference_without_pytest_says_the_battery_needs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with_pytest = plugin_api_reference(registry())
    assert "## `CollectorConformance`" in with_pytest and "### `CollectorConformance.make_target`" in with_pytest
    assert "## `Target`" in with_pytest and "needs pytest" not in with_pytest
    _without_pytest(monkeypatch)
    text = plugin_api_reference(registry())
    assert "`trackpoint.testing.conformance` is not described here: it needs pytest, which is not installed." in text
    assert "CollectorConformance" not in text and "## `Plugin`" in text


def test_it_is_never_compiled() -> None:
    """mypyc would compile the test classes into ones pytest cannot collect; setup.py compiles COMPILED alone."""
    assert [name for name in _native.COMPILED if name.startswith("trackpoint.testing")] == []
    assert (SRC / "testing" / "__init__.py").is_file()  # a regular package: setuptools puts it in the wheel


@pytest.mark.e2e  # a fresh interpreter: this one has pytest loaded
def test_nothing_trackpoint_runs_imports_it_or_pytest() -> None:
    modules = sorted(
        ".".join(("trackpoint", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        for path in SRC.rglob("*.py")
    )
    runtime = [name for name in modules if not name.startswith("trackpoint.testing") and name != "trackpoint.__main__"]
    assert len(runtime) > 100
    script = (
        "import importlib, sys\n"
        f"for name in {runtime!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('pytest', '_pytest', 'trackpoint.testing'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
