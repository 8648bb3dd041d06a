"""The dependency locks (requirements/*.txt, written by scripts/lock): every pin exact and hash-checked, and
`scripts/lock --check` failing when pyproject.toml's requirements change without a re-lock.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.e2e  # runs scripts/lock and uv

ROOT = Path(__file__).resolve().parent.parent
LOCKS = sorted((ROOT / "requirements").glob("*.txt"))


def lock_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "scripts" / "lock"), "--check"], capture_output=True, text=True, check=False
    )


def pins(lock: Path) -> dict[str, str]:
    """Package name -> pinned version, each pin followed by at least one sha256 hash."""
    text = lock.read_text()
    found: dict[str, str] = {}
    for match in re.finditer(
        r"^([A-Za-z0-9._-]+)==(\S+) \\\n((?:    --hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)", text, re.M
    ):
        found[canonicalize_name(match[1])] = match[2]
    requirement_lines = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    assert len(requirement_lines) == len(found), f"{lock.name}: a requirement without an exact pin and its hashes"
    return found


@pytest.fixture
def copy_of_the_project(tmp_path: Path) -> Path:
    """What `scripts/lock --check` reads, copied, so a test can edit pyproject.toml."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "lock", tmp_path / "scripts" / "lock")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    return tmp_path


def test_the_locks_match_pyproject() -> None:
    result = lock_check(ROOT)
    assert result.returncode == 0, result.stderr


def test_every_lock_pins_exact_versions_with_hashes_and_agrees_with_the_dev_lock() -> None:
    assert {lock.stem for lock in LOCKS} == {"dev", "run", "run-s3", "run-gcs", "run-azure", "run-reports"}
    dev = pins(ROOT / "requirements" / "dev.txt")
    for lock in LOCKS:
        for name, version in pins(lock).items():
            # The suite runs against the dev lock: a runtime lock must not pin anything else for a shared package.
            assert dev.get(name, version) == version, f"{lock.name}: {name}=={version}, dev.txt has {dev[name]}"


def test_the_runtime_lock_covers_every_runtime_requirement() -> None:
    run = pins(ROOT / "requirements" / "run.txt")
    for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in run, f"{line}: not in requirements/run.txt"
        assert requirement.specifier.contains(run[name]), f"{line}: run.txt pins {run[name]}"


def test_a_dependency_added_without_relocking_fails_the_check(copy_of_the_project: Path) -> None:
    pyproject = copy_of_the_project / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace('    "zstandard>=0.23",\n', '    "zstandard>=0.23",\n    "orjson>=3.10",\n', 1))
    assert pyproject.read_text() != text
    result = lock_check(copy_of_the_project)
    assert result.returncode == 1
    # Every lock carries the runtime dependencies, so every lock is named.
    for lock in LOCKS:
        assert f"requirements/{lock.name}: pyproject.toml has 'dependencies orjson>=3.10', not locked" in result.stderr
    assert "run scripts/lock" in result.stderr


def test_a_changed_extra_fails_only_the_locks_that_install_it(copy_of_the_project: Path) -> None:
    pyproject = copy_of_the_project / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(
        text.replace('s3 = ["fsspec>=2024.2", "s3fs>=2024.2"]', 's3 = ["fsspec>=2024.2", "s3fs>=2025.1"]')
    )
    assert pyproject.read_text() != text
    result = lock_check(copy_of_the_project)
    assert result.returncode == 1
    named = set(re.findall(r"^requirements/([\w-]+)\.txt:", result.stderr, re.M))
    assert named == {"dev", "run-s3"}, result.stderr
    assert "'optional-dependencies.s3 s3fs>=2025.1', not locked" in result.stderr
    assert "locked 'optional-dependencies.s3 s3fs>=2024.2', no longer in pyproject.toml" in result.stderr
