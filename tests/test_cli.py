"""Unit tests of the `trackpoint` command as a newcomer meets it: `config check` reporting every problem at once
with "did you mean", the version, help, usage lines and shell completion, and URLs `sign` refuses.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trackpoint import __version__
from trackpoint.cli import app
from trackpoint.config import ConfigError, load
from trackpoint.plugins import registry
from trackpoint.reference.cli import commands

MISSPELT = """
data_dir: ./data
server:
  prot: 8080
collectors:
  queue:
    type: redis_stream
    url: redis://127.0.0.1:6379/0
  spool_me:
    type: log
    fsync: alway
event_types:
  impression:
    paths: [/i]
    collectors: [log, queu]
    preprocessors: [anonymise_ip]
    response:
      kind: gi
    fields:
      imp: {type: strin, required: true}
    dedupe_key: [impp]
"""


def write(directory: Path, text: str, name: str = "trackpoint.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env=env, prog_name="trackpoint", terminal_width=200)
    return result.exit_code, result.stdout, result.stderr


def flat(text: str) -> str:
    """Help output as one line of words: panel borders and the terminal's wrapping removed."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


# --- config check: every problem at once, located, with the name that was meant ------------------------------


def test_every_problem_of_a_file_is_reported_at_once_with_line_key_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, MISSPELT)
    with pytest.raises(ConfigError) as caught:
        load(path, registry=registry())
    found = {(issue.line, issue.path): issue.message for issue in caught.value.issues}
    expected = {
        (line_of(path, "prot:"), ("server", "prot")): "did you mean 'port'?",
        (line_of(path, "redis_stream"), ("collectors", "queue", "type")): "did you mean 'redis_streams'?",
        (line_of(path, "alway"), ("collectors", "spool_me", "fsync")): "(valid: interval, none)",
        (line_of(path, "queu]"), ("event_types", "impression", "collectors", 1)): "did you mean 'queue'?",
        (line_of(path, "anonymise_ip"), ("event_types", "impression", "preprocessors", 0)): (
            "did you mean 'anonymize_ip'?"
        ),
        (line_of(path, "kind: gi"), ("event_types", "impression", "response", "kind")): (
            "did you mean 'gif'? valid: gif, json, no_content, redirect"
        ),
        (line_of(path, "strin"), ("event_types", "impression", "fields", "imp", "type")): "did you mean 'string'?",
        (line_of(path, "impp"), ("event_types", "impression", "dedupe_key", 0)): "did you mean 'imp'?",
    }
    assert set(found) == set(expected)
    for where, hint in expected.items():
        assert hint in found[where], (where, found[where])


# Each anchor a list of nine aliases of the one before: 10 lines, 9**10 values once expanded (past the limit at a6).
ALIAS_BOMB = (
    "a0: &a0 [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]\n" for n in range(1, 10))
).encode()


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        (b"data_dir: here\nserver:\n  # caf\xe9\n", 3, "not UTF-8"),
        (b"data_dir: " + b"[" * 5000 + b"]" * 5000 + b"\n", None, "nested too deeply"),
        (b"server:\n  limits:\n    max_connections: 100000000000000000000000\n", 3, "too large a number"),
        (b"data_dir: x\nserver:\n  trusted_proxies: &loop [*loop]\n", 3, "inside itself: an endless document"),
        (ALIAS_BOMB, 7, "aliases expand it past 1,000,000 values"),
    ],
)
def test_a_file_no_option_can_hold_is_a_located_message(
    tmp_path: Path, content: bytes, line: int | None, message: str
) -> None:
    """Not UTF-8, nested past the parser, a number beyond 64 bits (accepted, it crashed `run` sending the
    configuration to its workers), an alias inside its own anchor (a RecursionError traceback) or aliases that
    expand to billions of values (ran for ever): each a message with the file and line, exit 2, no traceback."""
    path = tmp_path / "trackpoint.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load(path, registry=registry())
    assert [(issue.line, message in issue.message) for issue in caught.value.issues] == [(line, True)]
    code, _, stderr = invoke("config", "check", str(path))
    assert code == 2 and message in stderr and "Traceback" not in stderr, stderr


def test_paths_and_keys_with_brackets_are_printed_as_they_are(tmp_path: Path) -> None:
    """Messages are text, not rich markup: `conf[prod]` lost its `[prod]`, and a key or a path holding `[/x]` was a
    MarkupError traceback."""
    directory = tmp_path / "conf[prod]"
    directory.mkdir()
    path = write(directory, 'server:\n  "[/x]": 1\n')
    code, _, stderr = invoke("config", "check", str(path))
    assert code == 2 and f"{path}:2: server.[/x]: unknown option" in stderr, stderr
    assert stderr.rstrip().endswith(f"1 error(s) in {path}")
    empty = tmp_path / "old[red]"
    empty.mkdir()
    code, _, stderr = invoke("replay", str(empty))
    assert code == 2 and f"no log files (events-*.jsonl[.zst|.gz]) in {empty}" in stderr, stderr


def test_docs_into_a_file_is_a_message(tmp_path: Path) -> None:
    taken = tmp_path / "reference"
    taken.write_text("a file where the directory would go")
    code, _, stderr = invoke("docs", str(taken))
    assert code == 2 and f"cannot write the reference into {taken}" in " ".join(stderr.split()), stderr


def test_the_cross_section_rules_are_checked_beside_structural_problems(tmp_path: Path) -> None:
    # A wrong option in one section does not hide a collector name misspelt in another.
    path = write(tmp_path, "server:\n  workerz: 2\nevent_types:\n  a:\n    paths: [/a]\n    collectors: [lgo]\n")
    with pytest.raises(ConfigError) as caught:
        load(path, registry=registry())
    assert [(issue.line, issue.path) for issue in caught.value.issues] == [
        (2, ("server", "workerz")),
        (6, ("event_types", "a", "collectors", 0)),
    ]
    assert "did you mean 'log'?" in caught.value.issues[1].message


def test_a_broken_component_is_reported_once_not_again_where_it_is_used(tmp_path: Path) -> None:
    text = "collectors:\n  q:\n    type: redis_streams\n    stream: [1]\nevent_types:\n  a:\n    paths: [/a]\n"
    path = write(tmp_path, text + "    collectors: [q]\n")
    with pytest.raises(ConfigError) as caught:
        load(path, registry=registry())
    assert [issue.path for issue in caught.value.issues] == [("collectors", "q", "stream")]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        pytest.param("data_dir: ./d\nserver:\n  port: [80, 81\nadmin:\n  port: 1\n", 3, "not closed", id="bracket"),
        pytest.param("data_dir: 'abc\nserver:\n  port: 80\n", 1, "not closed", id="quote"),
        pytest.param("server:\n  port: 80\n\thost: x\n", 3, "tab", id="tab"),
        pytest.param("server:\n  port: 80\n   host: x\n", 3, "indentation", id="indentation"),
    ],
)
def test_a_yaml_syntax_error_names_its_line_in_plain_words(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = write(tmp_path, text, name="broken.yaml")
    code, _stdout, stderr = invoke("config", "check", str(path))
    assert code == 2
    assert f"{path}:{line}: not valid YAML: " in stderr
    assert words in stderr
    assert not re.search(r"<unicode string>|column \d|line \d|\^", stderr.replace(str(path), "")), stderr


def test_config_check_reads_the_file_from_the_argument_the_option_or_the_environment(tmp_path: Path) -> None:
    bad = write(tmp_path, "admin:\n  prot: 1\n", name="bad.yaml")
    good = write(tmp_path, "data_dir: ./d\n", name="good.yaml")
    for args, env in [
        (["config", "check", str(bad)], None),
        (["config", "check", "--config", str(bad)], None),
        (["config", "check", "-c", str(bad)], None),
        (["config", "check"], {"TRACKPOINT_CONFIG": str(bad)}),
    ]:
        code, _, stderr = invoke(*args, env=env)
        assert code == 2, args
        assert f"{bad}:2: admin.prot: unknown option (did you mean 'port'?" in stderr, args
    code, stdout, _ = invoke("config", "check", env={"TRACKPOINT_CONFIG": str(good)})
    assert code == 0
    assert f"{good}: ok" in stdout
    code, stdout, _ = invoke("config", "check", str(good), env={"TRACKPOINT_CONFIG": str(bad)})
    assert (code, f"{good}: ok" in stdout) == (0, True)  # the argument wins over the environment
    code, _, stderr = invoke("config", "check", str(good), "--config", str(bad))
    assert code == 2
    assert "two files" in stderr


def test_config_check_without_a_file_checks_the_embedded_default() -> None:
    code, stdout, _ = invoke("config", "check", env={"TRACKPOINT_CONFIG": ""})
    assert code == 0
    assert "<embedded default>: ok" in stdout


# --- version, help, usage, completion ------------------------------------------------------------------------


def test_version_is_printed_with_long_and_short_option() -> None:
    for option in ("--version", "-V"):
        code, stdout, _ = invoke(option)
        assert (code, stdout) == (0, f"trackpoint {__version__}\n")


def test_h_is_help_on_every_command() -> None:
    root = _root()
    for path, _ in commands(root):
        code, stdout, _ = invoke(*path[1:], "-h")
        assert code == 0, path
        assert f"Usage: {' '.join(path)} " in stdout


def test_usage_and_help_show_words_not_python_types() -> None:
    for path, command in commands(_root()):
        code, stdout, _ = invoke(*path[1:], "--help")
        assert code == 0
        python = re.search(r"<[a-z]|\{[a-z]|list\[|\bPath\b", stdout)
        assert python is None, (path, python, stdout)
        usage = next(line for line in stdout.splitlines() if "Usage:" in line)
        for param in command.params:
            if param.param_type_name == "argument":
                assert (param.name or "").upper() in usage, (path, usage)


def test_help_text_of_every_command_is_shown_whole() -> None:
    root = _root()
    for path, command in commands(root):
        docstring = inspect.cleandoc(command.help or "")
        paragraphs = [" ".join(paragraph.split()) for paragraph in re.split(r"\n\s*\n", docstring)]
        assert paragraphs[0].endswith((".", ")")), (path, paragraphs[0])
        _, stdout, _ = invoke(*path[1:], "--help")
        for paragraph in paragraphs:
            assert paragraph in flat(stdout), (path, paragraph)
        if len(path) > 1:  # the list in the parent's help shows the first paragraph whole, never cut with "..."
            _, parent_help, _ = invoke(*path[1:-1], "--help")
            assert paragraphs[0] in flat(parent_help), (path, paragraphs[0])


def test_shell_completion_script_and_completions() -> None:
    code, stdout, _ = invoke("--show-completion", "bash")
    assert code == 0
    assert "_TRACKPOINT_COMPLETE=complete_bash" in stdout
    completion = {"_TRACKPOINT_COMPLETE": "complete_bash", "COMP_WORDS": "trackpoint con", "COMP_CWORD": "1"}
    code, stdout, _ = invoke(env=completion)
    assert (code, stdout.split()) == (0, ["config"])
    completion = {"_TRACKPOINT_COMPLETE": "complete_bash", "COMP_WORDS": "trackpoint replay --coll", "COMP_CWORD": "2"}
    code, stdout, _ = invoke(env=completion)
    assert stdout.split() == ["--collector"]


# --- sign ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "not-a-url",
        "/c?imp=1",
        "ftp://t.example.com/c?imp=1",
        "https:///c?imp=1",
        "http://[::1/c?imp=1",  # an unclosed IPv6 bracket: a ValueError traceback
        "http://t.example.com:99999/c?imp=1",  # signed as it was
    ],
)
def test_sign_refuses_what_is_not_a_tracking_url(url: str) -> None:
    code, stdout, stderr = invoke("sign", url)
    assert code == 2
    assert stdout == ""
    assert f"not a tracking URL: {url!r}" in stderr


def _root() -> object:
    import typer.main

    from trackpoint.cli import _for_reading

    root = typer.main.get_command(app)
    _for_reading(root)
    return root


def test_wrong_list_items_past_the_tenth_are_each_reported(tmp_path: Path) -> None:
    # Setting aside items 9 and 10 of one list must not shift one onto the other.
    methods = ", ".join(["GET"] * 9 + ["PUT", "PATCH"])
    path = write(tmp_path, f"event_types:\n  a:\n    paths: [/a]\n    methods: [{methods}]\n    collectors: [lgo]\n")
    with pytest.raises(ConfigError) as caught:
        load(path, registry=registry())
    assert [issue.path for issue in caught.value.issues] == [
        ("event_types", "a", "methods", 9),
        ("event_types", "a", "methods", 10),
        ("event_types", "a", "collectors", 0),
    ]


def test_completion_offers_the_collectors_and_event_types_of_the_configuration(tmp_path: Path) -> None:
    path = write(
        tmp_path, "collectors:\n  queue: {type: stdout}\nevent_types:\n  page: {paths: [/p]}\n  pixel: {paths: [/x]}\n"
    )

    def complete(words: str, env: dict[str, str] | None = None) -> list[str]:
        word = len(words.split()) - (0 if words.endswith(" ") else 1)  # the word being completed
        completion = {"_TRACKPOINT_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(word)}
        return invoke(env={**completion, **(env or {})})[1].split()

    assert complete(f"trackpoint replay --config {path} --type p") == ["page", "pixel"]
    assert complete("trackpoint replay --type pa", {"TRACKPOINT_CONFIG": str(path)}) == ["page"]
    collectors = complete(f"trackpoint replay -c {path} --collector ")
    assert "queue" in collectors
    assert sorted(collectors) == sorted(load(path, registry=registry()).config.collectors)
    assert "banker" in complete("trackpoint banker reconcile --collector ", {"TRACKPOINT_CONFIG": ""})
    broken = write(tmp_path, "server: {prot: 1}\n", name="broken.yaml")
    assert complete(f"trackpoint replay --config {broken} --collector ") == []
