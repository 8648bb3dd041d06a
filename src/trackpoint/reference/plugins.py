"""The plugin API reference in Markdown, from the API's own docstrings and signatures, followed by the components
the installed plugins provide (collector and preprocessor types, event-type presets, admin routes), each described
by its config struct's docstring."""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import Any

import msgspec

from trackpoint.plugins import ENTRY_POINT_GROUP, Registry
from trackpoint.reference.markdown import HEADER, escape

# What a plugin author uses, module by module, in reading order.
API: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("trackpoint.plugins", ("Plugin", "CollectorKind", "PreprocessorKind", "AdminRoute", "Registry", "type_tag")),
    ("trackpoint.config.model", ("CollectorBase", "PreprocessorBase")),
    ("trackpoint.collectors.base", ("Collector", "CollectorContext", "CollectorStartError", "SendResult", "Health")),
    (
        "trackpoint.preprocessors",
        (
            "Preprocessor",
            "InputFields",
            "CountsOutcomes",
            "RedirectParams",
            "UsesSigningKeys",
            "FlagsTraffic",
            "VetoesCookie",
            "Refreshes",
        ),
    ),
    ("trackpoint.event", ("Event",)),
    ("trackpoint.fields.converters", ("Reject",)),
    ("trackpoint.admin.server", ("AdminRequest", "AdminResponse")),
    ("trackpoint.security.secrets", ("read_secret", "SecretError", "SecretHolder")),
    (
        "trackpoint.testing.conformance",
        ("CollectorConformance", "Target", "SqliteFileTarget", "events", "all_delivered", "run"),
    ),
)
# API modules that need a package trackpoint does not install (its tests' battery needs pytest): where it is missing
# the reference says so in their place.
NEEDS: Mapping[str, str] = {"trackpoint.testing.conformance": "pytest"}
# The type aliases of trackpoint.plugins that the classes above name, with what a plugin's function receives.
ALIASES: tuple[tuple[str, str], ...] = (
    (
        "CollectorFactory",
        "Builds one collector per worker, at its start: called with the collector's name in the configuration, its "
        "validated options (an instance of the kind's `config` struct) and the worker's `CollectorContext`.",
    ),
    (
        "PreprocessorFactory",
        "Builds one preprocessor per worker: called with its name in the configuration and its validated options (an "
        "instance of the kind's `config` struct); a kind with `uses_data_dir` gets the tracker's data directory as a "
        "third argument.",
    ),
    (
        "ConfigCheck",
        "A configuration check: the problems it finds in a validated configuration, each a key path "
        '(`("event_types", "click", "fields", "url")`) and a message. Checks run at every load, `trackpoint config '
        "check` and reload, for rules no single struct can state.",
    ),
    (
        "AttributionSource",
        "The notices the data behind a plugin's components asks to be shown where their results are shown (a "
        "licence's attribution), for a configuration: the dashboard's footer shows them.",
    ),
)
_MODULE_PATH = re.compile(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)")


def api_objects() -> Iterator[tuple[str, str, Any]]:
    """(module, name, object) of every documented API object; those of a module whose requirement (`NEEDS`) is
    not installed are left out."""
    for module_name, names in API:
        module = _import(module_name)
        for name in names if module is not None else ():
            yield module_name, name, getattr(module, name)


def _import(module_name: str) -> ModuleType | None:
    """The module, or None when what it needs (`NEEDS`) is not installed."""
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        if module_name in NEEDS and exc.name == NEEDS[module_name]:
            return None
        raise


def public_methods(cls: type) -> Iterator[tuple[str, Callable[..., Any]]]:
    """The public methods a class defines itself (inherited ones are documented on their own class)."""
    for name, member in vars(cls).items():
        if (name == "__call__" or not name.startswith("_")) and inspect.isfunction(member):
            yield name, member


def plugin_api_reference(installed: Registry) -> str:
    package = importlib.import_module("trackpoint.plugins")
    lines = [HEADER + "# Plugin API reference\n", inspect.cleandoc(package.__doc__ or "") + "\n"]
    lines.append(
        f"A distribution registers its `Plugin` under the entry-point group `{ENTRY_POINT_GROUP}`; "
        "[writing a plugin](../guides/writing-a-plugin.md) walks through a complete one.\n"
    )
    for module_name, name, obj in api_objects():
        lines.append(f"## `{name}`\n")
        lines.append(f"`from {module_name} import {name}`\n")
        lines.append(f"```python\n{_signature(name, obj)}\n```\n")
        lines.append(inspect.cleandoc(obj.__doc__ or "") + "\n")
        if inspect.isclass(obj):
            fields = _fields(obj)
            if fields:
                lines.append("| member | type | description |")
                lines.append("|---|---|---|")
                lines.extend(f"| `{field}` | `{escape(kind)}` | {escape(text)} |" for field, kind, text in fields)
                lines.append("")
            for method_name, method in public_methods(obj):
                abstract = (
                    " (abstract: a subclass implements it)" if getattr(method, "__isabstractmethod__", False) else ""
                )
                lines.append(f"### `{name}.{method_name}`{abstract}\n")
                lines.append(f"```python\n{_def(method_name, method)}\n```\n")
                lines.append(inspect.cleandoc(method.__doc__ or "") + "\n")
    for module_name, needed in NEEDS.items():
        if _import(module_name) is None:
            lines.append(f"`{module_name}` is not described here: it needs {needed}, which is not installed.\n")
    lines.append("## Type aliases\n")
    for name, text in ALIASES:
        lines.append(f"### `{name}`\n")
        lines.append(f"```python\n{name} = {_alias_text(getattr(package, name))}\n```\n")
        lines.append(text + "\n")
    lines.append("## Installed components\n")
    lines.append(f"Plugins: {', '.join(f'`{p}`' for p in installed.plugins)}.\n")
    for title, docs in (
        ("Collector types", {name: kind.config.__doc__ for name, kind in installed.collectors.items()}),
        ("Preprocessor types", {name: kind.config.__doc__ for name, kind in installed.preprocessors.items()}),
    ):
        lines.append(f"### {title}\n")
        lines.append("| type | what it does |")
        lines.append("|---|---|")
        lines.extend(f"| `{name}` | {escape(first_paragraph(doc))} |" for name, doc in sorted(docs.items()))
        lines.append("")
    lines.append("### Event-type presets\n")
    lines.append("| preset | paths | response | collectors |")
    lines.append("|---|---|---|---|")
    for preset, spec in sorted(installed.event_types.items()):
        paths = ", ".join(f"`{p}`" for p in spec.paths)
        lines.append(f"| `{preset}` | {paths} | {spec.response.kind} | {', '.join(spec.collectors)} |")
    lines.append("")
    return "\n".join(lines)


def _alias_text(alias: object) -> str:
    """`Callable[[str, Any, CollectorContext], Collector]`: the alias as written, without module paths."""
    return _MODULE_PATH.sub(r"\1", repr(alias))


def first_paragraph(doc: str | None) -> str:
    return " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())


def _signature(name: str, obj: Any) -> str:
    if inspect.isfunction(obj):
        return _def(name, obj)
    bases = ", ".join(base.__name__ for base in obj.__bases__ if base is not object)
    header = f"class {name}({bases})" if bases else f"class {name}"
    if "__init__" not in vars(obj) and not hasattr(obj, "__dataclass_fields__"):
        return header  # msgspec structs: their members are in the table below
    return f"{header}:\n    def __init__{_signature_text(obj)}"


def _def(name: str, function: Callable[..., Any]) -> str:
    prefix = "async def" if inspect.iscoroutinefunction(function) else "def"
    return f"{prefix} {name}{_signature_text(function)}"


def _signature_text(obj: Any) -> str:
    """The signature with its annotations as written (they are strings under `from __future__ import annotations`)
    and its defaults as Python writes them (`= '.'`)."""
    signature = inspect.signature(obj)
    parameters = [
        parameter.replace(annotation=_as_written(parameter.annotation)) for parameter in signature.parameters.values()
    ]
    return str(signature.replace(parameters=parameters, return_annotation=_as_written(signature.return_annotation)))


class _Written:
    """An annotation that is shown as its text, unquoted."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _as_written(annotation: Any) -> Any:
    return _Written(annotation) if isinstance(annotation, str) else annotation


def _fields(cls: type) -> list[tuple[str, str, str]]:
    """Declared members (dataclass or msgspec fields): name, annotation, and the description of a msgspec `Meta`."""
    if isinstance(cls, type) and issubclass(cls, msgspec.Struct):
        hints = typing.get_type_hints(cls, include_extras=True)
        rows = []
        for field in msgspec.structs.fields(cls):
            hint = hints[field.name]
            text = ""
            if typing.get_origin(hint) is typing.Annotated:
                hint, *extras = typing.get_args(hint)
                text = " ".join(getattr(m, "description", None) or "" for m in extras).strip()
            rows.append(
                (field.encode_name, inspect.formatannotation(hint, base_module="trackpoint.config.model"), text)
            )
        return rows
    annotations: dict[str, Any] = vars(cls).get("__annotations__", {})
    return [(name, str(kind), "") for name, kind in annotations.items() if not name.startswith("_")]
