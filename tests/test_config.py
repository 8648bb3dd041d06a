"""Unit tests of configuration loading: the embedded default, merging, validation errors and the JSON schema.

Every error test checks the file name, line number and dotted key path of each reported problem, and the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from conftest import load_config
from trackpoint.cli import app
from trackpoint.collectors.log.config import LogCollectorConfig
from trackpoint.collectors.stdout.config import StdoutCollectorConfig
from trackpoint.config import ConfigError, ConfigIssue, LoadedConfig, json_schema, model
from trackpoint.config.load import DEFAULT_CONFIG_NAME, default_text
from trackpoint.plugins import registry
from trackpoint.preprocessors.anonymize_ip.config import AnonymizeIpConfig
from trackpoint.preprocessors.parse_user_agent.config import ParseUserAgentConfig

TRACKPOINT_BIN = Path(sys.executable).parent / "trackpoint"

# The fields win, billing and loss notices share.
NOTICE_FIELDS = {"imp", "cur", "auction", "bid", "auction_imp", "seat", "ad", "cid", "crid", "pub"}
DEFAULT_FIELDS = {
    "impression": {"imp", "cid", "crid", "pub"},
    "click": {"imp", "cid", "crid", "pub", "url"},
    "conversion": {"click_id", "order_id", "cid", "value", "cur"},
    "video": {"imp", "ev", "t", "dur", "code", "cb", "client_ts", "cid", "crid", "pub"},
    "win": NOTICE_FIELDS | {"price", "mbr", "max_price"},
    "billing": NOTICE_FIELDS | {"price", "mbr", "max_price"},
    "loss": NOTICE_FIELDS | {"loss", "price", "min_to_win"},
}
DEFAULT_PATHS = {
    "impression": "/i",
    "click": "/c",
    "conversion": "/conv",
    "video": "/v",
    "win": "/win",
    "billing": "/bill",
    "loss": "/loss",
}


def write(directory: Path, text: str, name: str = "trackpoint.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def issues_of(path: Path) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.issues


def line_of(path: Path, needle: str) -> int:
    """The 1-based number of the first line of the file that contains `needle`."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def dotted(issue: ConfigIssue) -> str:
    """The key path as the issue prints it (`a.b[0].c`), read back from its string form."""
    text = str(issue)
    prefix = f"{issue.source}:{issue.line}: " if issue.line else f"{issue.source}: "
    assert text.startswith(prefix), text
    suffix = f": {issue.message}" if issue.path else issue.message
    assert text.endswith(suffix), text
    return text[len(prefix) : -len(suffix)] if issue.path else ""


# --- the embedded default -----------------------------------------------------------------------------------


def test_default_loads_from_the_embedded_file() -> None:
    loaded = load_config()
    assert isinstance(loaded, LoadedConfig)
    assert loaded.source == DEFAULT_CONFIG_NAME
    assert loaded.config.data_dir == "./trackpoint-data"
    assert loaded.config.server.port == 8080
    assert loaded.config.admin.host == "127.0.0.1"
    assert "event_types:" in default_text()


def test_default_has_the_seven_event_types_on_their_paths() -> None:
    event_types = load_config().config.event_types
    assert set(event_types) == set(DEFAULT_PATHS)
    for name, path in DEFAULT_PATHS.items():
        assert event_types[name].paths == [path], name


def test_default_event_types_declare_the_documented_fields() -> None:
    event_types = load_config().config.event_types
    for name, fields in DEFAULT_FIELDS.items():
        assert set(event_types[name].fields) == fields, name


def test_default_field_types_and_options() -> None:
    types = load_config().config.event_types
    assert types["win"].fields["price"].type == "price"
    assert types["win"].fields["price"].required
    assert types["win"].fields["cur"].default == "USD"
    assert types["conversion"].fields["value"].type == "money"
    assert types["conversion"].fields["cur"].default == "USD"
    assert types["conversion"].methods == ["GET", "HEAD", "POST"]
    assert types["video"].fields["t"].type == "duration"
    ev = types["video"].fields["ev"]
    assert ev.type == "enum"
    assert ev.required
    assert ev.values is not None
    assert {"start", "midpoint", "complete", "error"} <= set(ev.values)
    assert types["click"].fields["url"].required
    assert types["click"].response.kind == "redirect"
    assert types["click"].response.allow_hosts
    assert types["impression"].fields["imp"].required
    assert types["impression"].fields["imp"].max_len == 64
    assert types["impression"].dedupe_key == ["imp"]
    assert types["video"].dedupe_key == ["imp", "ev"]
    assert types["conversion"].dedupe_key == ["order_id"]
    assert types["impression"].fields["cid"].type == "string"


def test_default_has_builtin_collectors_and_preprocessors() -> None:
    config = load_config().config
    assert isinstance(config.collectors["log"], LogCollectorConfig)
    assert isinstance(config.collectors["stdout"], StdoutCollectorConfig)
    assert isinstance(config.preprocessors["anonymize_ip"], AnonymizeIpConfig)
    assert isinstance(config.preprocessors["parse_user_agent"], ParseUserAgentConfig)


# --- merging a file onto the default ------------------------------------------------------------------------


def test_file_overriding_only_data_dir_keeps_the_default_event_types(tmp_path: Path) -> None:
    path = write(tmp_path, "data_dir: /var/lib/tp\n")
    loaded = load_config(path)
    assert loaded.source == str(path)
    assert loaded.config.data_dir == "/var/lib/tp"
    assert loaded.config.event_types == load_config().config.event_types
    assert loaded.config.server == load_config().config.server


def test_a_top_level_section_replaces_the_defaults_whole(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        event_types:
          ping:
            paths: [/p]
        server:
          port: 9000
        """,
    )
    config = load_config(path).config
    assert set(config.event_types) == {"ping"}
    assert config.event_types["ping"].collectors == ["log"]
    assert config.server.port == 9000
    assert config.server.workers == 0  # the struct's default, not anything else of the default file
    assert config.admin.port == 8081  # sections the file leaves out stay the default's


def test_an_empty_file_is_the_default(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing here\n")
    loaded = load_config(path)
    assert loaded.config == load_config().config
    assert loaded.version == load_config().version


def test_a_redefined_builtin_collector_keeps_the_other_builtins(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        collectors:
          log: {type: log, dir: elsewhere, durability: power}
        """,
    )
    collectors = load_config(path).config.collectors
    log = collectors["log"]
    assert isinstance(log, LogCollectorConfig)
    assert log.dir == "elsewhere"
    assert log.durability == "power"
    assert isinstance(collectors["stdout"], StdoutCollectorConfig)


def test_integers_are_accepted_for_seconds_options(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  drain_timeout_s: 5\n  limits: {header_timeout_s: 2}\n")
    server = load_config(path).config.server
    assert server.drain_timeout_s == 5.0
    assert server.limits.header_timeout_s == 2.0


# --- structural errors: every problem, with file, line and key path -----------------------------------------


def test_every_problem_of_a_file_is_reported_with_line_and_key_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        data_dir: ./data
        server:
          port: 70000
          workerz: 3
          limits:
            max_body_bytes: big
        admin:
          port: 0
        collectors:
          kinesis:
            type: kinesis
            stream: events
        event_types:
          impression:
            paths: [/i]
            fields:
              imp: {required: true, colour: red}
              t: {type: float}
        """,
        name="several.yaml",
    )
    issues = issues_of(path)
    found = {(issue.line, issue.path) for issue in issues}
    assert found == {
        (line_of(path, "port: 70000"), ("server", "port")),
        (line_of(path, "workerz"), ("server", "workerz")),
        (line_of(path, "max_body_bytes"), ("server", "limits", "max_body_bytes")),
        (line_of(path, "port: 0"), ("admin", "port")),
        (line_of(path, "type: kinesis"), ("collectors", "kinesis", "type")),
        (line_of(path, "colour"), ("event_types", "impression", "fields", "imp", "colour")),
        (line_of(path, "type: float"), ("event_types", "impression", "fields", "t", "type")),
    }
    assert len(issues) == len(found)
    assert all(issue.source == str(path) for issue in issues)
    assert {dotted(issue) for issue in issues} == {
        "server.port",
        "server.workerz",
        "server.limits.max_body_bytes",
        "admin.port",
        "collectors.kinesis.type",
        "event_types.impression.fields.imp.colour",
        "event_types.impression.fields.t.type",
    }
    message = str(ConfigError(issues))
    assert message.count(str(path)) == len(issues)


@pytest.mark.parametrize(
    ("text", "needle", "key_path", "message"),
    [
        pytest.param(
            "server:\n  host: 127.0.0.1\n  prot: 80\n",
            "prot",
            ("server", "prot"),
            "unknown option",
            id="unknown-key",
        ),
        pytest.param("data_dir: ./d\nbogus: 1\n", "bogus", ("bogus",), "unknown option", id="unknown-section"),
        pytest.param(
            "admin:\n  port: eighty\n",
            "eighty",
            ("admin", "port"),
            "Expected `int`, got `str`",
            id="wrong-type",
        ),
        pytest.param(
            "server:\n  limits:\n    max_header_count: 2\n",
            "max_header_count",
            ("server", "limits", "max_header_count"),
            ">= 4",
            id="below-range",
        ),
        pytest.param("server:\n  workers: 1000\n", "workers", ("server", "workers"), "<= 256", id="above-range"),
        pytest.param(
            "server:\n  drain_timeout_s: 0\n",
            "drain_timeout_s",
            ("server", "drain_timeout_s"),
            "> 0",
            id="seconds-not-positive",
        ),
        pytest.param(
            "collectors:\n  out:\n    type: kinesis\n",
            "kinesis",
            ("collectors", "out", "type"),
            "unknown type 'kinesis' (known: banker, kafka, log, nats, redis_streams, rollup, stdout)",
            id="unknown-collector-type",
        ),
        pytest.param(
            "preprocessors:\n  geo:\n    type: geoip\n",
            "geoip",
            ("preprocessors", "geo", "type"),
            "unknown type 'geoip'",
            id="unknown-preprocessor-type",
        ),
        pytest.param(
            "collectors:\n  out:\n    type: stdout\n    dir: logs\n",
            "dir: logs",
            ("collectors", "out", "dir"),
            "unknown option",
            id="option-of-another-collector-type",
        ),
        pytest.param(
            "event_types:\n  x:\n    paths: [/x]\n    methods: [GET, PUT]\n",
            "methods",
            ("event_types", "x", "methods", 1),
            "PUT",
            id="bad-list-item",
        ),
        pytest.param(
            "event_types:\n  x:\n    fields: {}\n",
            "x:",
            ("event_types", "x", "paths"),
            "required option is missing",
            id="missing-required-option",
        ),
        pytest.param("server: 8080\n", "server", ("server",), "Expected `object`", id="section-not-a-mapping"),
    ],
)
def test_a_structural_problem_is_located(
    tmp_path: Path, text: str, needle: str, key_path: tuple[str | int, ...], message: str
) -> None:
    path = write(tmp_path, text, name="one.yaml")
    issues = issues_of(path)
    assert len(issues) == 1, issues
    issue = issues[0]
    assert issue.source == str(path)
    assert issue.path == key_path
    assert issue.line == line_of(path, needle)
    assert message in issue.message
    assert str(issue).startswith(f"{path}:{issue.line}: ")


def test_a_list_item_is_named_with_its_index(tmp_path: Path) -> None:
    path = write(tmp_path, "event_types:\n  x:\n    paths: [/x]\n    methods:\n      - GET\n      - PUT\n")
    (issue,) = issues_of(path)
    assert issue.path == ("event_types", "x", "methods", 1)
    assert issue.line == line_of(path, "- PUT")
    assert dotted(issue) == "event_types.x.methods[1]"


def test_yaml_syntax_error_reports_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "data_dir: ./d\nserver:\n  port: [80, 81\nadmin:\n  port: 1\n", name="broken.yaml")
    (issue,) = issues_of(path)
    assert issue.source == str(path)
    assert issue.line is not None
    assert 3 <= issue.line <= 4
    assert "not valid YAML" in issue.message
    assert str(issue).startswith(f"{path}:{issue.line}: ")


def test_tab_indentation_is_a_yaml_error_on_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 80\n\thost: x\n")
    (issue,) = issues_of(path)
    assert issue.line == 3
    assert "not valid YAML" in issue.message


@pytest.mark.parametrize("text", ["- data_dir: x\n- server: {}\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    (issue,) = issues_of(path)
    assert issue.source == str(path)
    assert issue.line == 1
    assert issue.message == "the top level must be a mapping of sections"


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    (issue,) = issues_of(missing)
    assert issue.source == str(missing)
    assert issue.line is None
    assert "cannot read" in issue.message
    assert str(issue) == f"{missing}: {issue.message}"


# --- cross-reference errors ---------------------------------------------------------------------------------


def event_types_file(directory: Path, body: str) -> Path:
    return write(directory, "event_types:\n" + textwrap.indent(textwrap.dedent(body).lstrip("\n"), "  "))


@pytest.mark.parametrize(
    ("body", "needle", "key_path", "message"),
    [
        pytest.param(
            """
            a:
              paths: [/a]
              preprocessors: [anonymize_ip, geoip]
            """,
            "preprocessors",
            ("event_types", "a", "preprocessors", 1),
            "no preprocessor named 'geoip'",
            id="unknown-preprocessor",
        ),
        pytest.param(
            """
            a:
              paths: [/a]
              collectors:
                - log
                - kafka
            """,
            "- kafka",
            ("event_types", "a", "collectors", 1),
            "no collector named 'kafka'",
            id="unknown-collector",
        ),
        pytest.param(
            """
            a:
              paths: [/a]
              fields:
                imp: {}
              dedupe_key: [impression_id]
            """,
            "dedupe_key",
            ("event_types", "a", "dedupe_key", 0),
            "'impression_id' is not a field of this event type",
            id="dedupe-key-not-a-field",
        ),
        pytest.param(
            """
            a:
              paths: [/a]
              fields:
                kind:
                  type: enum
            """,
            "kind:",
            ("event_types", "a", "fields", "kind", "values"),
            "an enum field needs its list of values",
            id="enum-without-values",
        ),
        pytest.param(
            """
            a:
              paths: [/a]
              fields:
                kind: {type: enum, values: []}
            """,
            "kind:",
            ("event_types", "a", "fields", "kind", "values"),
            "an enum field needs its list of values",
            id="enum-with-empty-values",
        ),
        pytest.param(
            """
            a:
              paths: [/a]
            b:
              paths: [/b, /a]
              methods: [GET]
            """,
            "[/b, /a]",
            ("event_types", "b", "paths", 1),
            "GET /a is already taken by event type 'a'",
            id="duplicate-method-and-path",
        ),
        pytest.param(
            """
            a:
              paths: [/go]
              fields:
                url: {}
              response:
                kind: redirect
            """,
            "response:",  # the key is absent: the line of its parent
            ("event_types", "a", "response", "allow_hosts"),
            "a redirect needs at least one allowed host",
            id="redirect-without-allow-hosts",
        ),
        pytest.param(
            """
            a:
              paths: [/go]
              response: {kind: redirect, allow_hosts: [example.com]}
            """,
            "response",
            ("event_types", "a", "response", "redirect_field"),
            "'url' is not a field of this event type",
            id="redirect-field-not-a-field",
        ),
        pytest.param(
            """
            a:
              paths: [a]
            """,
            "paths",
            ("event_types", "a", "paths", 0),
            "a path starts with /",
            id="path-without-slash",
        ),
        pytest.param(
            """
            a:
              paths: [/a]
              fields:
                n: {type: int, min: 10, max: 1}
            """,
            "n:",
            ("event_types", "a", "fields", "n"),
            "min is greater than max",
            id="min-above-max",
        ),
        pytest.param(
            """
            a:
              paths: [/a]
              fields:
                body: {source: json}
            """,
            "body:",
            ("event_types", "a", "fields", "body", "source"),
            "needs POST",
            id="body-field-without-post",
        ),
    ],
)
def test_a_cross_reference_problem_is_located(
    tmp_path: Path, body: str, needle: str, key_path: tuple[str | int, ...], message: str
) -> None:
    path = event_types_file(tmp_path, body)
    issues = issues_of(path)
    assert [issue.path for issue in issues] == [key_path]
    (issue,) = issues
    assert issue.source == str(path)
    assert issue.line == line_of(path, needle)
    assert message in issue.message


@pytest.mark.parametrize(
    "field", ["{into: metrics}", "{type: bool, into: metrics}", "{type: enum, values: [a], into: metrics}"]
)
def test_into_metrics_is_refused_for_a_field_that_is_not_a_number(tmp_path: Path, field: str) -> None:
    # metrics hold numbers only: a text value there makes a log line that read_events cannot decode.
    path = event_types_file(tmp_path, f"a:\n  paths: [/a]\n  fields:\n    flag: {field}\n")
    issues = issues_of(path)
    assert [issue.path[:4] for issue in issues] == [("event_types", "a", "fields", "flag")]
    assert issues[0].line == line_of(path, "flag:")


def test_into_dims_is_allowed_for_numbers(tmp_path: Path) -> None:
    path = event_types_file(tmp_path, "a:\n  paths: [/a]\n  fields:\n    n: {type: int, into: dims}\n")
    assert load_config(path).config.event_types["a"].fields["n"].into == "dims"


def test_a_duplicate_path_is_reported_for_each_shared_method(tmp_path: Path) -> None:
    path = event_types_file(tmp_path, "a:\n  paths: [/a]\nb:\n  paths: [/a]\n  methods: [GET, HEAD, POST]\n")
    messages = sorted(issue.message for issue in issues_of(path))
    assert messages == [
        "GET /a is already taken by event type 'a'",
        "HEAD /a is already taken by event type 'a'",
    ]


def test_same_path_with_disjoint_methods_is_allowed(tmp_path: Path) -> None:
    path = event_types_file(tmp_path, "a:\n  paths: [/a]\n  methods: [GET]\nb:\n  paths: [/a]\n  methods: [POST]\n")
    assert set(load_config(path).config.event_types) == {"a", "b"}


def test_bad_trusted_proxy_network_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  trusted_proxies:\n    - 10.0.0.0/8\n    - 192.168.0.0/33\n    - fd00::/8\n")
    (issue,) = issues_of(path)
    assert issue.path == ("server", "trusted_proxies", 1)
    assert issue.line == line_of(path, "192.168.0.0/33")
    assert issue.message == "not a network: '192.168.0.0/33'"


def test_every_cross_reference_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        server:
          trusted_proxies: [not-a-network]
        event_types:
          a:
            paths: [/a]
            fields:
              kind: {type: enum}
            dedupe_key: [nope]
            preprocessors: [nope_pp]
            collectors: [nope_c]
        """,
    )
    issues = issues_of(path)
    assert {(issue.line, issue.path) for issue in issues} == {
        (line_of(path, "trusted_proxies"), ("server", "trusted_proxies", 0)),
        (line_of(path, "kind:"), ("event_types", "a", "fields", "kind", "values")),
        (line_of(path, "dedupe_key"), ("event_types", "a", "dedupe_key", 0)),
        (line_of(path, "nope_pp"), ("event_types", "a", "preprocessors", 0)),
        (line_of(path, "nope_c"), ("event_types", "a", "collectors", 0)),
    }
    assert len(issues) == 5


def test_a_file_may_name_its_own_collector_and_preprocessor(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        collectors:
          archive: {type: log, dir: archive, rotate_bytes: 4096}
        preprocessors:
          strict_ip: {type: anonymize_ip, ipv4_prefix: 16}
        event_types:
          a:
            paths: [/a]
            preprocessors: [strict_ip]
            collectors: [archive, log]
        """,
    )
    config = load_config(path).config
    assert config.event_types["a"].collectors == ["archive", "log"]
    archive = config.collectors["archive"]
    assert isinstance(archive, LogCollectorConfig)
    assert archive.rotate_bytes == 4096
    strict = config.preprocessors["strict_ip"]
    assert isinstance(strict, AnonymizeIpConfig)
    assert strict.ipv4_prefix == 16


# --- version ------------------------------------------------------------------------------------------------


def test_version_is_stable_for_the_same_content(tmp_path: Path) -> None:
    text = "data_dir: /data\nserver:\n  port: 9000\n"
    first = load_config(write(tmp_path, text, name="a.yaml")).version
    second = load_config(write(tmp_path, text, name="b.yaml")).version
    assert first == second
    assert load_config(tmp_path / "a.yaml").version == first
    assert len(first) == 12
    assert all(char in "0123456789abcdef" for char in first)


def test_version_ignores_comments_and_layout(tmp_path: Path) -> None:
    plain = load_config(write(tmp_path, "data_dir: /data\nserver:\n  port: 9000\n", name="a.yaml")).version
    styled_text = "# a comment\nserver: {port: 9000}   # inline\ndata_dir: '/data'\n"
    styled = load_config(write(tmp_path, styled_text, name="b.yaml"))
    assert styled.version == plain


def test_version_changes_when_content_changes(tmp_path: Path) -> None:
    versions = {
        load_config(write(tmp_path, "data_dir: /data\n", name="a.yaml")).version,
        load_config(write(tmp_path, "data_dir: /data2\n", name="b.yaml")).version,
        load_config(write(tmp_path, "data_dir: /data\nserver: {port: 9001}\n", name="c.yaml")).version,
        load_config().version,
    }
    assert len(versions) == 4


# --- JSON schema --------------------------------------------------------------------------------------------


def test_json_schema_is_a_json_schema_of_the_config() -> None:
    schema = json_schema(registry())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "trackpoint configuration"
    assert schema["$ref"] == "#/$defs/Config"
    assert json.loads(json.dumps(schema)) == schema
    config_def = schema["$defs"]["Config"]
    sections = {field.encode_name for field in msgspec.structs.fields(model.Config)}
    expected = {"data_dir", "server", "admin", "collectors", "preprocessors", "event_types", "rejected", "signing"}
    assert sections == expected
    assert set(config_def["properties"]) == sections
    assert config_def["additionalProperties"] is False


@pytest.mark.e2e
def test_json_schema_defines_every_struct_with_descriptions() -> None:
    definitions = json_schema(registry())["$defs"]
    structs = [
        model.Config,
        model.ServerConfig,
        model.Limits,
        model.AdminConfig,
        model.FieldSpec,
        model.ResponseSpec,
        model.EventTypeSpec,
        LogCollectorConfig,
        StdoutCollectorConfig,
        AnonymizeIpConfig,
        ParseUserAgentConfig,
    ]
    for struct in structs:
        definition = definitions[struct.__name__]
        assert definition.get("description"), struct.__name__
        tagged = isinstance(struct.__struct_config__.tag, str)
        for name, prop in definition.get("properties", {}).items():
            if not (tagged and name == "type"):  # the `type` of a tagged struct is its tag, not an option
                assert prop.get("description"), f"{struct.__name__}.{name}"
    limits = definitions["Limits"]["properties"]["max_body_bytes"]
    assert limits["description"] == "Largest request body as sent (compressed or not); larger → 413."
    assert limits["maximum"] == 16 << 20
    assert definitions["LogCollectorConfig"]["properties"]["fsync"]["enum"] == ["interval", "none"]


# --- the CLI ------------------------------------------------------------------------------------------------


def test_cli_config_check_accepts_a_good_file(tmp_path: Path) -> None:
    path = write(tmp_path, "data_dir: /data\n", name="good.yaml")
    result = CliRunner().invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: ok" in result.stdout
    assert load_config(path).version in result.stdout
    assert "impression" in result.stdout


def test_cli_config_check_reports_each_problem_with_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 0\nadmin:\n  prot: 1\n", name="bad.yaml")
    result = CliRunner().invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert f"{path}:2: server.port:" in result.stderr
    assert f"{path}:4: admin.prot: unknown option" in result.stderr
    assert "2 error(s)" in result.stderr
    assert "ok" not in result.stdout


def test_cli_config_schema_prints_the_json_schema() -> None:
    result = CliRunner().invoke(app, ["config", "schema"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json_schema(registry())


@pytest.mark.e2e
def test_installed_command_checks_a_file(tmp_path: Path) -> None:
    good = write(tmp_path, "data_dir: /data\n", name="good.yaml")
    bad = write(tmp_path, "event_types:\n  a:\n    paths: [/a]\n    collectors: [nope]\n", name="bad.yaml")
    ok = subprocess.run(
        [str(TRACKPOINT_BIN), "config", "check", str(good)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    failed = subprocess.run(
        [str(TRACKPOINT_BIN), "config", "check", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert failed.returncode == 2
    assert f"{bad}:4: event_types.a.collectors[0]: no collector named 'nope'" in failed.stderr


@pytest.mark.parametrize(
    ("collector", "problem"),
    [
        ("{type: nats, servers: ['nats://127.0.0.1:114222']}", "port must be 1-65535"),
        ("{type: nats, servers: ['http://127.0.0.1:4222']}", "scheme must be one of"),
        ("{type: redis_streams, url: 'redis://:6379/0'}", "no host"),
        ("{type: banker, store: redis, redis_url: 'redis://127.0.0.1:0/0'}", "port must be 1-65535"),
    ],
)
def test_a_server_url_the_client_could_never_reach_is_a_config_error(
    tmp_path: Path, collector: str, problem: str
) -> None:
    path = write(tmp_path, f"collectors:\n  q: {collector}\n")
    [issue] = issues_of(path)
    assert problem in str(issue)
    assert str(issue).startswith(f"{path}:{line_of(path, 'q:')}")


def test_on_invalid_and_fallback_url_mistakes_are_config_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        event_types:
          pixel:
            paths: [/p]
            fields:
              imp: {required: true, on_invalid: drop}
              key: {on_invalid: drop}
              invalid: {}
            dedupe_key: [imp, key]
        """,
    )
    problems = {dotted(issue): issue.message for issue in issues_of(path)}
    assert "required or dedupe-key" in problems["event_types.pixel.fields.imp.on_invalid"]
    assert "required or dedupe-key" in problems["event_types.pixel.fields.key.on_invalid"]
    assert "dropped invalid fields" in problems["event_types.pixel.fields.invalid"]
    path = write(
        tmp_path,
        """
        event_types:
          click:
            paths: [/c]
            fields:
              url: {required: true}
            response: {kind: redirect, allow_hosts: [example.com], fallback_url: "javascript:alert(1)"}
        """,
    )
    assert [dotted(issue) for issue in issues_of(path)] == ["event_types.click.response.fallback_url"]
