"""Runs the atheris harness over the edge (tests/fuzz/fuzz_edge.py) for a fixed budget, so CI fuzzes every change.

The budget is a number of executions (deterministic seed), capped in time; a crash, an unknown reject reason or a
5xx fails the run and libFuzzer leaves the input that did it in the temp directory, printed below.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # runs the fuzz harness as a program

HARNESS = Path(__file__).parent / "fuzz" / "fuzz_edge.py"
RUNS = 100_000
MAX_TIME_S = 40


@pytest.mark.timeout(MAX_TIME_S + 60)
def test_the_edge_fuzz_harness_finds_nothing_in_its_budget(tmp_path: Path) -> None:
    sys.path.insert(0, str(HARNESS.parent))
    try:
        import fuzz_edge  # the seeds live next to the harness
    finally:
        sys.path.remove(str(HARNESS.parent))
    seeds = tmp_path / "seeds"
    fuzz_edge.write_seeds(seeds)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            f"-runs={RUNS}",
            f"-max_total_time={MAX_TIME_S}",
            "-seed=1",
            "-max_len=4096",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
            str(seeds),
        ],
        capture_output=True,
        text=True,
        timeout=MAX_TIME_S + 50,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    match = re.search(r"Done (\d+) runs in (\d+) second", output)
    assert match is not None, output[-2000:]
    executed = int(match.group(1))
    assert executed >= min(RUNS, 2_000), output[-2000:]  # the budget was spent on inputs, not on start-up
    assert list(corpus.iterdir()), "libFuzzer kept no corpus: the harness saw no coverage"


def test_the_harness_checks_catch_a_5xx_and_an_unknown_reason() -> None:
    sys.path.insert(0, str(HARNESS.parent))
    try:
        import fuzz_edge
    finally:
        sys.path.remove(str(HARNESS.parent))
    fuzz_edge.check(b"HTTP/1.1 200 OK\r\n\r\n", {})
    with pytest.raises(AssertionError):
        fuzz_edge.check(b"HTTP/1.1 500 Internal Server Error\r\n\r\n", {})
    with pytest.raises(AssertionError):
        fuzz_edge.check(b"", {"internal_error": 1})
    with pytest.raises(AssertionError):
        fuzz_edge.check(b"HTTP/1.1 400 Bad Request\r\nX-Reject-Reason: made_up\r\n\r\n", {})
    written, rejected = fuzz_edge.run_one(bytes([0, 0]) + b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n")
    assert rejected == {"not_found": 1} and b"X-Reject-Reason: not_found\r\n" in written
    written, rejected = fuzz_edge.run_one(bytes([4, 0]) + b"GET /i?imp=a HTTP/1.1\r\nHost: t\r\n")
    assert rejected == {"header_timeout": 1} and written.startswith(b"HTTP/1.1 408 ")
