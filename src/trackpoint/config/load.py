"""Loading the YAML configuration into the typed structs, reporting every error with its file, line and key path.

msgspec stops at the first error of a document, so a failing section is validated again member by member: the user
sees every wrong key at once, each named as `file:line: key.path: message`.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import msgspec
import yaml

from trackpoint.config.model import INVALID_DIM, Config, EventTypeSpec
from trackpoint.privacy.filter import deny_private_fields
from trackpoint.security.secrets import one_of_problem

if TYPE_CHECKING:
    from trackpoint.plugins import Registry

DEFAULT_CONFIG_NAME = "<embedded default>"
KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file."""

    source: str
    line: int | None
    path: KeyPath
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        key = _dotted(self.path)
        return f"{where}: {key}: {self.message}" if key else f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; `issues` holds every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        issues = sorted(issues, key=lambda issue: issue.line or 0)
        super().__init__("\n".join(str(issue) for issue in issues))
        self.issues = issues


@dataclass(frozen=True)
class LoadedConfig:
    """A validated configuration with its provenance and version (a hash of the effective config)."""

    config: Config
    source: str
    version: str


def default_text() -> str:
    return resources.files("trackpoint.config").joinpath("default.yaml").read_text(encoding="utf-8")


def load(path: str | Path | None = None, registry: Registry | None = None) -> LoadedConfig:
    """Reads, merges onto the embedded default, validates and checks a configuration; raises ConfigError.
    Component types are those of the installed plugins (`registry`, by default this process's)."""
    if registry is None:
        from trackpoint.plugins import registry as process_registry

        registry = process_registry()
    default_doc = yaml.safe_load(default_text())
    if path is None:
        return _validate(default_doc, None, DEFAULT_CONFIG_NAME, registry)
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(source, None, (), f"cannot read: {exc.strerror or exc}")]) from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        user_doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([ConfigIssue(source, line, (), f"not valid YAML: {exc}")]) from exc
    if user_doc is None:
        user_doc = {}
    if not isinstance(user_doc, dict):
        raise ConfigError([ConfigIssue(source, 1, (), "the top level must be a mapping of sections")])
    # A file's top-level sections replace the default's whole: a file that lists event types lists all of them.
    merged = {**default_doc, **user_doc}
    return _validate(merged, node, source, registry)


def _validate(document: dict[str, Any], node: yaml.Node | None, source: str, registry: Registry) -> LoadedConfig:
    document, problems = apply_presets(document, registry)
    if not problems:
        value, problems = convert_collecting(document, config_type(registry), ())
    if problems:
        if registry.failures:
            failed = "; ".join(f"{name}: {reason}" for name, reason in registry.failures.items())
            problems.append(((), f"(plugins that failed to load: {failed})"))
        raise ConfigError([ConfigIssue(source, _line_of(node, path), path, msg) for path, msg in problems])
    config = with_builtin_instances(value, registry)
    # The core's rules, then those of the components, which every plugin (the built-in one too) registers.
    problems = [*check_references(config), *registry.check(config)]
    if problems:
        raise ConfigError([ConfigIssue(source, _line_of(node, path), path, msg) for path, msg in problems])
    config = deny_private_fields(config)  # privacy by default: the policy each collector's filter applies
    encoded = msgspec.json.encode(config)
    return LoadedConfig(config=config, source=source, version=hashlib.sha256(encoded).hexdigest()[:12])


def config_error(source: str, problems: list[tuple[KeyPath, str]]) -> ConfigError:
    """The error for problems found in a loaded configuration after the fact (e.g. its secrets), each located by
    its key path in the source file."""
    node = _compose(source)
    return ConfigError([ConfigIssue(source, _line_of(node, path), path, msg) for path, msg in problems])


def _compose(source: str) -> yaml.Node | None:
    """The YAML node tree of a config file, for line numbers (None for the embedded default or an unreadable file)."""
    if source == DEFAULT_CONFIG_NAME:
        return None
    try:
        return yaml.compose(Path(source).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return None


def with_builtin_instances(config: Config, registry: Registry) -> Config:
    """Implicit collector kinds (log, stdout) and every preprocessor kind exist under their own name with default
    options, unless the file defines that name."""
    implicit = {kind.type: kind.config() for kind in registry.collectors.values() if kind.implicit}
    preprocessors = {kind.type: kind.config() for kind in registry.preprocessors.values()}
    return msgspec.structs.replace(
        config, collectors=implicit | config.collectors, preprocessors=preprocessors | config.preprocessors
    )


def apply_presets(document: dict[str, Any], registry: Registry) -> tuple[dict[str, Any], list[tuple[KeyPath, str]]]:
    """An event type that names a `preset` starts from that preset's options; its own keys win."""
    event_types = document.get("event_types")
    if not isinstance(event_types, dict):
        return document, []
    problems: list[tuple[KeyPath, str]] = []
    merged: dict[str, Any] = {}
    for name, spec in event_types.items():
        preset = spec.get("preset") if isinstance(spec, dict) else None
        if preset is None:
            merged[name] = spec
        elif not isinstance(preset, str) or preset not in registry.event_types:
            known = ", ".join(sorted(registry.event_types)) or "none"
            problems.append((("event_types", name, "preset"), f"unknown preset {preset!r} (known: {known})"))
        else:
            merged[name] = msgspec.to_builtins(registry.event_types[preset]) | spec
    return {**document, "event_types": merged}, problems


def config_type(registry: Registry) -> type[Config]:
    """`Config` whose collector and preprocessor sections accept every type the registry holds."""
    config_class: type[Config] = _config_type(
        tuple(kind.config for kind in registry.collectors.values()),
        tuple(kind.config for kind in registry.preprocessors.values()),
    )
    return config_class


@functools.cache
def _config_type(collectors: tuple[type[msgspec.Struct], ...], preprocessors: tuple[type[msgspec.Struct], ...]) -> Any:
    hints = typing.get_type_hints(Config, include_extras=True)

    def section(name: str, members: tuple[type[msgspec.Struct], ...]) -> tuple[str, Any, Any]:
        metadata = typing.get_args(hints[name])[1:]
        union: Any = Union[members]  # noqa: UP007 (a union built at run time)
        return name, typing.Annotated[(dict[str, union], *metadata)], msgspec.field(default_factory=dict)

    config_class = msgspec.defstruct(
        "Config",
        [section("collectors", collectors), section("preprocessors", preprocessors)],
        bases=(Config,),
        module=Config.__module__,
        kw_only=True,
        forbid_unknown_fields=True,
    )
    config_class.__doc__ = Config.__doc__
    return config_class


# --- validation that reports every error -----------------------------------------------------------------------

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def convert_collecting(obj: Any, typ: Any, path: KeyPath) -> tuple[Any, list[tuple[KeyPath, str]]]:
    """Converts `obj` to `typ`; on failure descends into members to return every error, not only the first."""
    try:
        return msgspec.convert(obj, typ, strict=True), []
    except msgspec.ValidationError as exc:
        problems = _descend(obj, typ, path)
        return None, problems or [_parse_error(str(exc), path)]


def _descend(obj: Any, typ: Any, path: KeyPath) -> list[tuple[KeyPath, str]]:
    origin = typing.get_origin(typ)
    if origin is typing.Annotated:
        return _descend(obj, typing.get_args(typ)[0], path)
    if isinstance(typ, type) and issubclass(typ, msgspec.Struct) and isinstance(obj, dict):
        return _descend_struct(obj, typ, path)
    if origin in (typing.Union, types.UnionType) and isinstance(obj, dict):
        tagged = {tag: member for member in typing.get_args(typ) if (tag := _tag_of(member)) is not None}
        if tagged:
            tag = obj.get("type")
            if tag not in tagged:
                known = ", ".join(sorted(tagged))
                return [((*path, "type"), f"unknown type {tag!r} (known: {known})")]
            return _descend_struct({k: v for k, v in obj.items() if k != "type"}, tagged[tag], path)
    if origin is dict and isinstance(obj, dict):
        value_type = typing.get_args(typ)[1]
        return [p for key, item in obj.items() for p in convert_collecting(item, value_type, (*path, key))[1]]
    if origin is list and isinstance(obj, list):
        item_type = typing.get_args(typ)[0]
        return [p for i, item in enumerate(obj) for p in convert_collecting(item, item_type, (*path, i))[1]]
    return []


def _descend_struct(obj: dict[str, Any], typ: type[msgspec.Struct], path: KeyPath) -> list[tuple[KeyPath, str]]:
    fields = {f.encode_name: f for f in msgspec.structs.fields(typ)}
    problems: list[tuple[KeyPath, str]] = []
    for key in obj:
        if key not in fields:
            problems.append(((*path, key), f"unknown option (known: {', '.join(sorted(fields))})"))
    for name, field in fields.items():
        if name in obj:
            problems.extend(convert_collecting(obj[name], field.type, (*path, name))[1])
        elif field.required:
            problems.append(((*path, name), "required option is missing"))
    return problems


def _tag_of(member: Any) -> str | None:
    if isinstance(member, type) and issubclass(member, msgspec.Struct):
        tag = member.__struct_config__.tag
        return tag if isinstance(tag, str) else None
    return None


def _parse_error(message: str, path: KeyPath) -> tuple[KeyPath, str]:
    match = _AT.match(message)
    if match is None or not match.group("path"):
        return path, message
    parts: list[str | int] = []
    for name, index in _PATH_PART.findall(match.group("path")):
        parts.append(int(index) if index else name)
    return path + tuple(parts), match.group("msg")


# --- checks across sections ------------------------------------------------------------------------------------


_TYPE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HOST = re.compile(r"\.?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", re.I)  # ASCII (IDNA)
_SIGNATURE_PARAMS = frozenset({"kid", "exp", "sig", "bd"})  # security.signing: SIGNATURE_PARAMS, BODY_DIGEST_PARAM


def check_references(config: Config) -> Iterator[tuple[KeyPath, str]]:
    """Cross-section rules of the core schema no single struct can state: names resolve, paths are unique, fields
    are coherent. The components' own rules are the registry's checks (`Plugin.checks`)."""
    for i, network in enumerate(config.server.trusted_proxies):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            yield ("server", "trusted_proxies", i), f"not a network: {network!r}"
    seen_paths: dict[tuple[str, str], str] = {}
    for type_name, spec in config.event_types.items():
        base: KeyPath = ("event_types", type_name)
        if not _TYPE_NAME.fullmatch(type_name):
            # Type names end up in topic and stream names, metric labels and JSON: keep them plain.
            yield base, "an event type name is 1-64 letters, digits, '_', '-' or '.'"
        for i, route in enumerate(spec.paths):
            if not route.startswith("/") or "?" in route or "#" in route:
                yield (*base, "paths", i), f"a path starts with / and has no query: {route!r}"
            for method in spec.methods:
                other = seen_paths.setdefault((route, method), type_name)
                if other != type_name:
                    yield (*base, "paths", i), f"{method} {route} is already taken by event type {other!r}"
        yield from _check_event_type(config, base, spec)
    for i, name in enumerate(config.rejected.collectors):
        if name not in config.collectors:
            yield ("rejected", "collectors", i), f"no collector named {name!r}"
    yield from _check_signing(config)


def _check_signing(config: Config) -> Iterator[tuple[KeyPath, str]]:
    signing = config.signing
    for key_id, key in signing.keys.items():
        where: KeyPath = ("signing", "keys", key_id)
        if not re.fullmatch(r"[A-Za-z0-9_.~-]{1,32}", key_id):
            yield where, "a key id is 1-32 letters, digits, '_', '.', '~' or '-'"
        problem = one_of_problem("secret", key.secret_env, key.secret_file)
        if problem is not None:
            yield where, f"a key {problem}"
        if key.generate and key.secret_file is None:
            yield (*where, "generate"), "generate needs secret_file"
    if signing.sign_with is not None and signing.sign_with not in signing.keys:
        yield ("signing", "sign_with"), f"no key named {signing.sign_with!r}"


def _check_event_type(config: Config, base: KeyPath, spec: EventTypeSpec) -> Iterator[tuple[KeyPath, str]]:
    for name, field in spec.fields.items():
        where = (*base, "fields", name)
        if field.type == "enum" and not field.values:
            yield (*where, "values"), "an enum field needs its list of values"
        if field.type != "enum" and field.values is not None:
            yield (*where, "values"), "values apply to enum fields only"
        if field.min is not None and field.max is not None and field.min > field.max:
            yield where, "min is greater than max"
        if field.into == "metrics" and not field.is_number:
            yield (*where, "into"), f"metrics hold numbers: a {field.type} field goes to dims"
        if field.source in ("form", "json") and "POST" not in spec.methods:
            yield (*where, "source"), f"a {field.source} field needs POST among the event type's methods"
        if field.on_invalid == "drop" and (field.required or name in spec.dedupe_key):
            yield (*where, "on_invalid"), "a required or dedupe-key field always rejects an invalid value"
    if INVALID_DIM in spec.fields and any(spec.drops_invalid(n) for n in spec.fields):
        yield (*base, "fields", INVALID_DIM), f"{INVALID_DIM!r} is the dim naming dropped invalid fields"
    for i, key in enumerate(spec.dedupe_key):
        if key not in spec.fields:
            yield (*base, "dedupe_key", i), f"{key!r} is not a field of this event type"
    if spec.response.kind == "redirect":
        target = spec.response.redirect_field
        if target not in spec.fields:
            yield (*base, "response", "redirect_field"), f"{target!r} is not a field of this event type"
        if not spec.response.allow_hosts and not spec.response.signed_destinations:
            where = (*base, "response", "allow_hosts")
            yield where, "a redirect needs at least one allowed host (or signed_destinations)"
        for i, host in enumerate(spec.response.allow_hosts):
            if not _HOST.fullmatch(host):
                yield (*base, "response", "allow_hosts", i), f"not a host name (`a.test` or `.a.test`): {host!r}"
    if spec.signature != "off" or (spec.response.kind == "redirect" and spec.response.signed_destinations):
        if not config.signing.keys:
            yield (*base, "signature"), "signed URLs need at least one key in signing.keys"
        for name, field in spec.fields.items():
            if (field.name or name) in _SIGNATURE_PARAMS and field.source in ("param", "query"):
                yield (*base, "fields", name), f"{field.name or name!r} is a parameter of the URL signature"
    if spec.signed_params:
        if spec.signature == "off":
            yield (*base, "signed_params"), "signed_params needs `signature: required` or `optional`"
        for i, param in enumerate(spec.signed_params):
            if not param or param in _SIGNATURE_PARAMS:
                yield (*base, "signed_params", i), f"{param!r} cannot be listed (kid, exp and bd are always signed)"
    for i, name in enumerate(spec.preprocessors):
        if name not in config.preprocessors:
            yield (*base, "preprocessors", i), f"no preprocessor named {name!r}"
    for i, name in enumerate(spec.collectors):
        if name not in config.collectors:
            yield (*base, "collectors", i), f"no collector named {name!r}"
    limit = spec.rate_limit
    if limit.rate_per_s is not None and limit.by == "campaign":
        campaign = spec.fields.get(limit.campaign_field)
        if campaign is None or campaign.place != "dims":
            yield (*base, "rate_limit", "campaign_field"), f"{limit.campaign_field!r} is not a dims field of this type"


# --- locating a key path in the YAML source ---------------------------------------------------------------------


def _line_of(node: yaml.Node | None, path: KeyPath) -> int | None:
    """The line of the deepest node of `path` that exists in the file (the key itself when the value is absent)."""
    if node is None:
        return None
    line: int = node.start_mark.line + 1
    for part in path:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == part:
                    line = key_node.start_mark.line + 1
                    child = value_node
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            return line
        node = child
    return line


def _dotted(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def json_schema(registry: Registry | None = None) -> dict[str, Any]:
    """The JSON schema of a configuration file, generated from the structs of every installed component."""
    if registry is None:
        from trackpoint.plugins import registry as process_registry

        registry = process_registry()
    schema: dict[str, Any] = msgspec.json.schema(config_type(registry))
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "trackpoint configuration"
    return schema
