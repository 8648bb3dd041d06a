"""Loading the YAML configuration into the typed structs, reporting every error with its file, line and key path.

msgspec stops at the first error of a document, so a failing section is validated again member by member: the user
sees every wrong key at once, each named as `file:line: key.path: message`.
"""

from __future__ import annotations

import builtins
import difflib
import functools
import hashlib
import ipaddress
import re
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, Union

import msgspec
import yaml

from trackpoint.config.model import INVALID_DIM, Config, EventTypeSpec, one_of_problem
from trackpoint.config.private import deny_private_fields
from trackpoint.fields.types import FIELD_TYPES

DEFAULT_CONFIG_NAME = "<embedded default>"
KeyPath = tuple[str | int, ...]


class ComponentKind(Protocol):
    """A collector or preprocessor kind as the loader sees it: the `type` users write and its config struct."""

    @property
    def type(self) -> str: ...

    @property
    def config(self) -> builtins.type[msgspec.Struct]: ...  # (`type` is the property above)


class CollectorKindLike(ComponentKind, Protocol):
    """A collector kind: an `implicit` one exists under its own name with default options."""

    @property
    def implicit(self) -> bool: ...


class Components(Protocol):
    """What the loader reads of the plugin registry (`trackpoint.plugins.Registry`): the component types a file
    may name, the event-type presets, the plugins that failed to load, and every plugin's checks. The registry is
    passed in, never looked up: the loader knows no plugin."""

    @property
    def collectors(self) -> Mapping[str, CollectorKindLike]: ...

    @property
    def preprocessors(self) -> Mapping[str, ComponentKind]: ...

    @property
    def event_types(self) -> Mapping[str, EventTypeSpec]: ...

    @property
    def failures(self) -> Mapping[str, str]: ...

    def check(self, config: Config) -> Iterator[tuple[KeyPath, str]]: ...


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


def load(path: str | Path | None = None, *, registry: Components) -> LoadedConfig:
    """Reads, merges onto the embedded default, validates and checks a configuration; raises ConfigError.
    Component types are those of the installed plugins (`registry`: `trackpoint.plugins.registry()`)."""
    default_doc = yaml.safe_load(default_text())
    if path is None:
        return _validate(default_doc, None, DEFAULT_CONFIG_NAME, registry)
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([ConfigIssue(source, None, (), f"cannot read: {exc.strerror or exc}")]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError([ConfigIssue(source, at, (), "not UTF-8: a configuration file is UTF-8 text")]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_aliases(node, source)
        user_doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line, message = _yaml_problem(exc)
        raise ConfigError([ConfigIssue(source, line, (), message)]) from exc
    except RecursionError:  # thousands of nested brackets: no configuration nests so deep
        raise ConfigError([ConfigIssue(source, None, (), "not valid YAML: nested too deeply")]) from None
    repeated = list(_repeated_keys(node, ()))
    if repeated:  # YAML keeps the last silently: what the operator wrote first would not apply
        raise ConfigError([ConfigIssue(source, line, path, message) for line, path, message in repeated])
    if user_doc is None:
        user_doc = {}
    if not isinstance(user_doc, dict):
        raise ConfigError([ConfigIssue(source, 1, (), "the top level must be a mapping of sections")])
    # A file's top-level sections replace the default's whole: a file that lists event types lists all of them.
    merged = {**default_doc, **user_doc}
    return _validate(merged, node, source, registry)


# Values a document may hold once its aliases are expanded. A configuration has a few thousand; an alias bomb (each
# anchor a list of aliases of the one before: 9 lines, 9**9 values) passes this long before it exhausts the machine.
MAX_EXPANDED_VALUES = 1_000_000


def _check_aliases(root: yaml.Node | None, source: str) -> None:
    """Raises ConfigError when the document's aliases make it endless (an alias inside the node it names) or
    expand it past MAX_EXPANDED_VALUES; every later walk of the document (the repeated keys, the validation, the
    version's hash) would recurse for ever or for hours. A node an alias repeats is sized once."""
    sizes: dict[int, int] = {}
    walking: set[int] = set()

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        line = node.start_mark.line + 1
        if id(node) in walking:
            problem = "not valid YAML: the anchor on this line is used (`*alias`) inside itself: an endless document"
            raise ConfigError([ConfigIssue(source, line, (), problem)])
        walking.add(id(node))
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_EXPANDED_VALUES:
                problem = f"not valid YAML: its aliases expand it past {MAX_EXPANDED_VALUES:,} values (an alias bomb?)"
                raise ConfigError([ConfigIssue(source, line, (), problem)])
        walking.discard(id(node))
        sizes[id(node)] = total
        return total

    if root is not None:
        size(root)


def _yaml_problem(exc: yaml.YAMLError) -> tuple[int | None, str]:
    """The line and a plain message of a YAML syntax error, without the parser's internals (marks, stream names).
    An unclosed bracket or quote is reported where it opens, not where the parser noticed (often the file's end)."""
    problem: str = getattr(exc, "problem", None) or "cannot be parsed"
    context: str = getattr(exc, "context", None) or ""
    mark = getattr(exc, "problem_mark", None)
    opening = getattr(exc, "context_mark", None)
    if opening is not None and context == "while scanning a simple key":
        mark, problem = opening, "a key without ':' after it (or a value that runs over several lines)"
    elif opening is not None and context.startswith(("while scanning a", "while parsing a flow")):
        mark = opening
        what = context.removeprefix("while scanning ").removeprefix("while parsing ")
        problem = f"{what} that starts on this line is not closed ({problem})"
    elif "'\\t'" in problem:
        problem = "a tab character: YAML indents with spaces only"
    elif problem == "mapping values are not allowed here":
        problem = "a `key: value` where none may be (check the indentation here, or a missing ':' above)"
    return (None if mark is None else mark.line + 1), f"not valid YAML: {problem}"


def _validate(document: dict[str, Any], node: yaml.Node | None, source: str, registry: Components) -> LoadedConfig:
    """Every problem at once: the structural ones, then the rules across sections on what remains once the wrong
    parts are set aside, leaving out the problems that only follow from setting them aside."""
    typ = config_type(registry)
    document, problems = apply_presets(document, registry)
    # A number no 64-bit integer holds fits no option, and could not be sent to the workers (msgpack).
    problems = [*problems, *_huge_numbers(document, ())]
    value, found = convert_collecting(document, typ, ())
    problems += found
    removed: list[KeyPath] = []
    for _ in range(4):  # a removed key can leave its parent incomplete: remove that too, a few levels at most
        if value is not None or not found:
            break
        document, gone = _without(document, [path for path, _ in found], _stand_ins(registry))
        removed += gone
        value, found = convert_collecting(document, typ, ())
    type_problems = field_type_problems(document)  # field types are names in fields/types.py's table
    problems += type_problems
    if value is not None and type_problems:  # the fields with an unknown type checked as the default type
        document, gone = _without(document, [path for path, _ in type_problems], _stand_ins(registry))
        removed += gone
        value, _ = convert_collecting(document, typ, ())
    if value is not None:
        # The core's rules, then those of the components, which every plugin (the built-in one too) registers.
        config = with_builtin_instances(value, registry)
        checked = [*check_references(config), *registry.check(config)]
        problems += [(path, message) for path, message in checked if not _follows(path, message, removed)]
    if problems:
        if registry.failures:
            failed = "; ".join(f"{name}: {reason}" for name, reason in registry.failures.items())
            problems.append(((), f"(plugins that failed to load: {failed})"))
        raise ConfigError([ConfigIssue(source, _line_of(node, path), path, msg) for path, msg in problems])
    assert value is not None  # no problems: the first conversion succeeded
    config = deny_private_fields(config)  # privacy by default: the policy each collector's filter applies
    encoded = msgspec.json.encode(config)
    return LoadedConfig(config=config, source=source, version=hashlib.sha256(encoded).hexdigest()[:12])


def _repeated_keys(node: yaml.Node | None, path: KeyPath) -> Iterator[tuple[int, KeyPath, str]]:
    """Keys given twice in one mapping, anywhere in the file: (line, key path, message) of each repeat."""
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in first:
                yield line, (*path, key), f"given twice (first on line {first[key]}): only one would apply"
            else:
                first[key] = line
            yield from _repeated_keys(value_node, (*path, key))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _repeated_keys(item, (*path, index))


def _huge_numbers(document: object, path: KeyPath) -> Iterator[tuple[KeyPath, str]]:
    """The integers of a document beyond 64 bits, by key path."""
    if isinstance(document, dict):
        for key, value in document.items():
            yield from _huge_numbers(value, (*path, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from _huge_numbers(value, (*path, index))
    elif isinstance(document, int) and not -(1 << 63) <= document < 1 << 64:
        yield path, f"{document} is too large a number"


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


def with_builtin_instances(config: Config, registry: Components) -> Config:
    """Implicit collector kinds (log, stdout) and every preprocessor kind exist under their own name with default
    options, unless the file defines that name."""
    implicit = {kind.type: kind.config() for kind in registry.collectors.values() if kind.implicit}
    preprocessors = {kind.type: kind.config() for kind in registry.preprocessors.values()}
    return msgspec.structs.replace(
        config, collectors=implicit | config.collectors, preprocessors=preprocessors | config.preprocessors
    )


def apply_presets(document: dict[str, Any], registry: Components) -> tuple[dict[str, Any], list[tuple[KeyPath, str]]]:
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
            problems.append(
                (
                    ("event_types", name, "preset"),
                    f"unknown preset {preset!r}" + did_you_mean(preset, registry.event_types),
                )
            )
        else:
            merged[name] = msgspec.to_builtins(registry.event_types[preset]) | spec
    return {**document, "event_types": merged}, problems


def config_type(registry: Components) -> type[Config]:
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


# --- setting wrong parts aside, to check the rest ----------------------------------------------------------


def _stand_ins(registry: Components) -> dict[str, dict[str, str]]:
    """What takes the place of a wrong collector or preprocessor, so that its name stays defined: a kind that
    builds with its defaults."""
    implicit = [kind.type for kind in registry.collectors.values() if kind.implicit]
    stand_ins = {"collectors": {"type": implicit[0]}} if implicit else {}
    return stand_ins | (
        {"preprocessors": {"type": next(iter(registry.preprocessors))}} if registry.preprocessors else {}
    )


def _without(
    document: dict[str, Any], paths: list[KeyPath], stand_ins: dict[str, dict[str, str]]
) -> tuple[dict[str, Any], list[KeyPath]]:
    """A copy of `document` without the value at each path (or, when the key is absent, e.g. a required option
    missing, without its parent), and the paths removed. Defaults take the place of what is removed; a wrong
    component's `type` takes its whole entry with it, replaced by a stand-in of its section."""
    copy: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(document))
    removed: list[KeyPath] = []
    for path in sorted(paths, key=_path_order, reverse=True):  # list items from the end: indexes stay right
        parent: Any = copy
        for part in path[:-1]:
            try:
                parent = parent[part]
            except (KeyError, IndexError, TypeError):
                break
        else:
            target = path
            if path and (not _has(parent, path[-1]) or (len(path) == 3 and path[0] in stand_ins and path[2] == "type")):
                target = path[:-1]
                parent = _at(copy, target[:-1])
            if not target or parent is None or not _has(parent, target[-1]):
                continue
            if len(target) == 2 and target[0] in stand_ins:
                parent[target[-1]] = dict(stand_ins[target[0]])
            else:
                del parent[target[-1]]
            removed.append(target)
    return copy, removed


def _path_order(path: KeyPath) -> list[tuple[int, str]]:
    return [(part, "") if isinstance(part, int) else (-1, part) for part in path]


def _has(container: Any, key: str | int) -> bool:
    if isinstance(container, dict):
        return key in container
    return isinstance(container, list) and isinstance(key, int) and 0 <= key < len(container)


def _at(document: Any, path: KeyPath) -> Any:
    for part in path:
        if not _has(document, part):
            return None
        document = document[part]
    return document


def _follows(path: KeyPath, message: str, removed: list[KeyPath]) -> bool:
    """Whether a cross-section problem only follows from a part set aside: it lies inside or above it, or names a
    collector, preprocessor or event type that was removed."""
    named = message.split(" (", 1)[0]  # not the suggestions
    for gone in removed:
        shorter = min(len(gone), len(path))
        if (shorter and path[:shorter] == gone[:shorter]) or (len(gone) == 2 and f"{gone[1]!r}" in named):
            return True
    return False


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
                return [((*path, "type"), f"unknown type {tag!r}" + did_you_mean(tag, tagged))]
            return _descend_struct({k: v for k, v in obj.items() if k != "type"}, tagged[tag], path)
    values = _literal_values(typ)
    if values and isinstance(obj, str) and obj not in values:
        return [(path, f"invalid value {obj!r}" + did_you_mean(obj, values, "valid"))]
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
            problems.append(((*path, key), "unknown option" + did_you_mean(key, fields)))
    for name, field in fields.items():
        if name in obj:
            problems.extend(convert_collecting(obj[name], field.type, (*path, name))[1])
        elif field.required:
            problems.append(((*path, name), "required option is missing"))
    return problems


def _literal_values(typ: Any) -> list[str]:
    """The strings a `Literal[...]` type (also optional or annotated) allows; [] for any other type."""
    origin = typing.get_origin(typ)
    if origin is typing.Annotated:
        return _literal_values(typing.get_args(typ)[0])
    if origin is typing.Literal:
        return [str(value) for value in typing.get_args(typ)]
    if origin in (typing.Union, types.UnionType):
        return [value for member in typing.get_args(typ) for value in _literal_values(member)]
    return []


def _tag_of(member: Any) -> str | None:
    if isinstance(member, type) and issubclass(member, msgspec.Struct):
        tag = member.__struct_config__.tag
        return tag if isinstance(tag, str) else None
    return None


def field_type_problems(document: dict[str, Any]) -> list[tuple[KeyPath, str]]:
    """Each declared field whose `type` is not in the table of field types (fields/types.py). The names are read
    from the table as the file is loaded, not written into the structs: a type added there is accepted as it is."""
    problems: list[tuple[KeyPath, str]] = []
    event_types = document.get("event_types")
    for type_name, spec in event_types.items() if isinstance(event_types, dict) else ():
        fields = spec.get("fields") if isinstance(spec, dict) else None
        for name, field in fields.items() if isinstance(fields, dict) else ():
            declared = field.get("type") if isinstance(field, dict) else None
            if isinstance(declared, str) and declared not in FIELD_TYPES:
                problem = f"unknown field type {declared!r}" + did_you_mean(declared, FIELD_TYPES)
                problems.append((("event_types", type_name, "fields", name, "type"), problem))
    return problems


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
    yield from _check_batch_paths(config, {path for path, _ in seen_paths})
    for i, name in enumerate(config.rejected.collectors):
        if name not in config.collectors:
            yield (
                ("rejected", "collectors", i),
                f"no collector named {name!r}" + did_you_mean(name, config.collectors, "defined"),
            )
    yield from _check_signing(config)


def _check_batch_paths(config: Config, paths: set[str]) -> Iterator[tuple[KeyPath, str]]:
    """A batch path is a path of its own: not another batch path, not an event type's path; and not on a type
    whose postbacks are authenticated."""
    seen: set[str] = set()
    for type_name, spec in config.event_types.items():
        for i, route in enumerate(spec.batch.paths):
            where: KeyPath = ("event_types", type_name, "batch", "paths", i)
            if not route.startswith("/") or "?" in route or "#" in route:
                yield where, f"a path starts with / and has no query: {route!r}"
            if route in paths or route in seen:
                yield where, f"{route} is already taken: a batch path is a path of its own"
            seen.add(route)
        if spec.batch.paths and spec.postback_auth.mode != "off":
            # Postback credentials authenticate one advertiser's request; a batch would need them per item.
            yield ("event_types", type_name, "batch"), "an event type with postback_auth takes no batches"


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
        yield (
            ("signing", "sign_with"),
            f"no key named {signing.sign_with!r}" + did_you_mean(signing.sign_with, signing.keys, "defined"),
        )


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
            yield (
                (*base, "dedupe_key", i),
                f"{key!r} is not a field of this event type" + did_you_mean(key, spec.fields, "fields"),
            )
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
        destination = spec.fields.get(target)
        if spec.response.signed_destinations and destination is not None:
            # A signed destination is followed to any host: the signature must cover it, or any signed click URL
            # could be pointed anywhere by changing its destination (an open redirect).
            where = (*base, "response", "signed_destinations")
            param = destination.name or target
            if destination.source not in ("param", "query"):
                yield where, f"the destination field {target!r} must come from the URL's query to be signed"
            elif spec.signed_params and param not in spec.signed_params:
                yield where, f"signed_params must list the destination parameter {param!r}: the signature covers it"
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
            yield (
                (*base, "preprocessors", i),
                f"no preprocessor named {name!r}" + did_you_mean(name, config.preprocessors, "defined"),
            )
    for i, name in enumerate(spec.collectors):
        if name not in config.collectors:
            yield (
                (*base, "collectors", i),
                f"no collector named {name!r}" + did_you_mean(name, config.collectors, "defined"),
            )
    limit = spec.rate_limit
    if limit.rate_per_s is not None and limit.by == "campaign":
        campaign = spec.fields.get(limit.campaign_field)
        if campaign is None or campaign.place != "dims":
            yield (*base, "rate_limit", "campaign_field"), f"{limit.campaign_field!r} is not a dims field of this type"
    if limit.rate_per_s is not None and limit.by == "field":
        added = {dim for name in spec.preprocessors if name in config.preprocessors
                 for dim in config.preprocessors[name].output_dims}  # fmt: skip
        declared = spec.fields.get(limit.field or "")
        if limit.field is None:
            yield (*base, "rate_limit", "field"), "by: field needs `field`, the dim to key on"
        elif limit.field not in added and (declared is None or declared.place != "dims"):
            yield (
                (*base, "rate_limit", "field"),
                f"{limit.field!r} is neither a dims field of this type nor a dim its preprocessors add",
            )


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


def did_you_mean(word: object, known: Iterable[str], what: str = "known") -> str:
    """` (did you mean 'x'?; known: a, b, c)`: the closest of the names a misspelt `word` could have been, and all
    of them, for a message."""
    names = sorted(known)
    close = difflib.get_close_matches(str(word), names, n=1, cutoff=0.6) if isinstance(word, str) else []
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f" ({hint}{what}: {', '.join(names) or 'none'})"


def _dotted(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def json_schema(registry: Components) -> dict[str, Any]:
    """The JSON schema of a configuration file, generated from the structs of every installed component."""
    schema: dict[str, Any] = msgspec.json.schema(config_type(registry))
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "trackpoint configuration"
    return schema
