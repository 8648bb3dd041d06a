"""The suite's classification holds: every test is `unit` or `e2e`, fixtures that start trackers or services make a
test e2e, and a test classified unit that starts a process fails with a message saying how to mark it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # runs a pytest session whose e2e test starts a process

pytest_plugins = ("pytester",)

TESTS = Path(__file__).resolve().parent
PYPROJECT = TESTS.parent / "pyproject.toml"

SAMPLE = """
import subprocess

import pytest


def test_in_process():
    assert sum([1, 2]) == 3


def test_starts_a_process_unmarked():
    subprocess.run(["true"], check=True)


@pytest.mark.e2e
def test_starts_a_process_marked():
    subprocess.run(["true"], check=True)


def test_with_a_tracker(tracker_factory):
    pass
"""


@pytest.fixture
def session(pytester: pytest.Pytester) -> pytest.Pytester:
    """A directory with the suite's own conftest and pytest settings, and the sample tests above."""
    settings = tomllib.loads(PYPROJECT.read_text())["tool"]["pytest"]["ini_options"]
    markers = "\n".join(f"    {marker}" for marker in settings["markers"])
    pytester.makeini(f"[pytest]\naddopts = {settings['addopts']}\nmarkers =\n{markers}\n")
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makepyfile(test_sample=SAMPLE)
    return pytester


def test_every_test_gets_a_marker(session: pytest.Pytester) -> None:
    unit = session.runpytest_inprocess("--collect-only", "-q", "-m", "unit")
    e2e = session.runpytest_inprocess("--collect-only", "-q", "-m", "e2e")
    unit_ids = {line for line in unit.outlines if "::" in line}
    e2e_ids = {line for line in e2e.outlines if "::" in line}
    assert unit_ids == {"test_sample.py::test_in_process", "test_sample.py::test_starts_a_process_unmarked"}
    assert e2e_ids == {"test_sample.py::test_starts_a_process_marked", "test_sample.py::test_with_a_tracker"}


def test_a_unit_test_that_starts_a_process_fails_and_says_how_to_mark_it(session: pytest.Pytester) -> None:
    result = session.runpytest_inprocess("-q", "-k", "starts_a_process")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*NotAUnitTest: a unit test must stay in its process*mark it `@pytest.mark.e2e`*"])


def test_an_unknown_marker_is_an_error(session: pytest.Pytester) -> None:
    session.makepyfile(test_typo="import pytest\n\n@pytest.mark.e2ee\ndef test_x():\n    pass\n")
    result = session.runpytest_inprocess("-q", "test_typo.py")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*'e2ee' not found in `markers` configuration option*"])
