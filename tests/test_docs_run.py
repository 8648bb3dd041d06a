"""The shell examples of the README, the quickstart and the endpoints page, run as a reader runs them (bash, curl,
zstdcat) against a real tracker: the conversion example attributes as its page shows, and the greps find the events
both while the tracker runs and after it stopped and compressed its logs.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from conftest import Tracker

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^(?P<indent> *)```(?P<info>\w*)")


def blocks(page: Path, info: str) -> list[str]:
    """The fenced blocks of a page with this info string (`sh`, `json`), dedented, in order."""
    found: list[str] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    number = 0
    while number < len(lines):
        opening = FENCE.match(lines[number])
        number += 1
        if opening is None or opening["info"] != info:
            continue
        body = []
        while not lines[number].strip().startswith("```"):
            body.append(lines[number].removeprefix(opening["indent"]))
            number += 1
        number += 1
        found.append("\n".join(body))
    return found


def block_with(page: Path, needle: str, info: str = "sh") -> str:
    (block,) = [block for block in blocks(page, info) if needle in block]
    return block


def run(script: str, tracker: Tracker, cwd: Path) -> str:
    """A page's commands as bash runs them, aimed at the test's tracker: its ports for 8080 and 8081, and its data
    directory as ./trackpoint-data."""
    link = cwd / "trackpoint-data"
    if not link.exists():
        link.symlink_to(tracker.data_dir)
    script = script.replace("localhost:8080", f"127.0.0.1:{tracker.port}")
    script = script.replace("localhost:8081", f"127.0.0.1:{tracker.admin_port}")
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, f"{script}\n{result.stdout}{result.stderr}"
    return result.stdout


def test_the_conversion_example_attributes_as_its_page_shows(tracker: Tracker, tmp_path: Path) -> None:
    page = ROOT / "docs" / "try-it.md"
    answer = run(block_with(page, "/conv"), tracker, tmp_path)
    shown = json.loads(block_with(page, '"type":"conversion"', info="json"))
    conversion_id = json.loads(answer)["id"]
    assert conversion_id == shown["id"]  # derived from the order id (and its flag): the same on every tracker
    [conversion] = [event for event in tracker.wait_events(2) if event.type == "conversion"]
    for key in ("attribution", "click_imp", "click_cid", "click_crid", "order_id", "cur"):
        assert conversion.dims[key] == shown["dims"][key], key
    assert conversion.dims["attribution"] == "attributed"
    assert conversion.metrics["value"] == shown["metrics"]["value"]


def test_the_readme_grep_finds_the_impression_while_running_and_after_the_stop(
    tracker: Tracker, tmp_path: Path
) -> None:
    block = block_with(ROOT / "README.md", "zstdcat")
    grep = next(line for line in block.splitlines() if line.startswith("zstdcat"))
    running = run(block, tracker, tmp_path)
    assert running.splitlines()[0] == "200"
    assert '"imp":"9f1c2a"' in running.splitlines()[1]
    assert tracker.stop() == 0
    assert {path.suffix for path in (tracker.data_dir / "logs").glob("events-*")} == {".zst"}  # compressed on stop
    [line] = run(grep, tracker, tmp_path).splitlines()
    assert json.loads(line)["dims"]["imp"] == "9f1c2a"


def test_the_quickstart_grep_finds_the_repeated_impression_after_the_stop(tracker: Tracker, tmp_path: Path) -> None:
    page = ROOT / "docs" / "quickstart.md"
    run(block_with(page, "/i?cid=summer-sale"), tracker, tmp_path)  # step 5: fire events
    run(block_with(page, "for i in 2 3 4"), tracker, tmp_path)  # the repeat and three more
    tracker.wait_events(6)
    assert tracker.stop() == 0
    grep = block_with(page, "zstdcat")
    shown = [line.removeprefix("# ") for line in grep.splitlines() if line.startswith("# ")]
    found = run("\n".join(line for line in grep.splitlines() if not line.startswith("#")), tracker, tmp_path)
    assert sorted(line[41:60] for line in found.splitlines()) == sorted(line[41:60] for line in shown)
    impressions = [line[:41] for line in found.splitlines() if '"impression"' in line]
    assert len(impressions) == 2 and impressions[0] == impressions[1]  # the repeat: the same id
