"""docs/architecture.md stays true: every repository path it names exists, and every `file.py:name` it names is
defined in that file, so moving code without updating the page fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "architecture.md"
# The repository's top-level folders and files: a code span starting with one of them is a path the page relies on.
TOP_LEVEL = frozenset(path.name for path in ROOT.iterdir() if not path.name.startswith("."))
CODE_SPAN = re.compile(r"`([^`\n]+)`")


def named_paths(text: str) -> list[tuple[str, str | None]]:
    """(path, name or None) for each code span that names a repository path, optionally as `path.py:name`."""
    found = []
    for span in CODE_SPAN.findall(text):
        candidate = span.split()[0] if span.split() else span
        path, _, name = candidate.partition(":")
        if path.split("/")[0] in TOP_LEVEL and (path.count("/") or "." in path):
            found.append((path.rstrip("/"), name or None))
    return found


def exists(path: str) -> bool:
    """A file a change would add is written with a placeholder (`src/trackpoint/collectors/<name>/`): its folder
    exists."""
    if "<" in path:
        return (ROOT / path[: path.index("<")].rsplit("/", 1)[0]).is_dir()
    return (ROOT / path).exists()


def defined_names(source: Path) -> set[str]:
    """Top-level functions, classes and assignments of a module, and the methods of its classes."""
    names: set[str] = set()
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(item.name for item in node.body if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef))
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(target.id for target in targets if isinstance(target, ast.Name))
    return names


def test_every_path_and_name_on_the_page_exists() -> None:
    paths = named_paths(PAGE.read_text(encoding="utf-8"))
    assert len(paths) >= 40, "the page names files for each change: the extraction lost them"
    missing = [path for path, _ in paths if not exists(path)]
    assert missing == [], f"docs/architecture.md names paths that do not exist: {missing}"
    undefined = [f"{path}:{name}" for path, name in paths if name and name not in defined_names(ROOT / path)]
    assert undefined == [], f"docs/architecture.md names definitions that are gone: {undefined}"


def test_the_extraction_finds_paths_and_names_and_ignores_the_rest() -> None:
    text = (
        "See `src/trackpoint/edge/pipeline.py:EdgeProtocol`, `tests/` and `pyproject.toml`; "
        'not `SO_REUSEPORT`, `Reject(413, "body_too_large")` or `trackpoint docs docs/reference`.'
    )
    assert named_paths(text) == [
        ("src/trackpoint/edge/pipeline.py", "EdgeProtocol"),
        ("tests", None),
        ("pyproject.toml", None),
    ]
    assert {"EdgeProtocol", "on_message_complete"} <= defined_names(ROOT / "src/trackpoint/edge/pipeline.py")
