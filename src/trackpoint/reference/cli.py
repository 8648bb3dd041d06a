"""The CLI reference in Markdown, read off the command tree itself: usage, description, arguments and options of
every command, so the page changes when the CLI does.

Typer builds the tree from its own (vendored) copy of click's classes, so the tree is read by attribute, not by
isinstance against the installed click.
"""

from __future__ import annotations

import enum
import inspect
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
import typer.main

from trackpoint.reference.markdown import HEADER, escape

_NAMES: dict[Any, str] = {str: "text", int: "int", float: "number", Path: "path", bool: "bool"}


def cli_reference(app: typer.Typer) -> str:
    """Every command of `app` (the trackpoint CLI), with its usage, help, arguments and options."""
    root = typer.main.get_command(app)
    lines = [HEADER + "# CLI reference\n"]
    for path, command in commands(root):
        lines.append(f"## `{' '.join(path)}`\n")
        lines.append(f"```\n{_usage(path, command)}\n```\n")
        lines.append(inspect.cleandoc(command.help or "") + "\n")
        if _subcommands(command):
            lines.append("| command | what it does |")
            lines.append("|---|---|")
            for name, sub in _subcommands(command):
                lines.append(f"| `{name}` | {escape(sub.get_short_help_str(limit=200))} |")
            lines.append("")
        rows = [row for param in command.params if (row := _param_row(param))]
        if rows:
            lines.append("| argument or option | type | default | description |")
            lines.append("|---|---|---|---|")
            lines.extend(rows)
            lines.append("")
    return "\n".join(lines)


def commands(group: Any, path: tuple[str, ...] = ("trackpoint",)) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command and group under `group`, depth first, with its full name (`trackpoint banker reconcile`)."""
    yield path, group
    for name, command in _subcommands(group):
        yield from commands(command, (*path, name))


def _subcommands(command: Any) -> list[tuple[str, Any]]:
    return sorted((name, sub) for name, sub in getattr(command, "commands", {}).items() if not sub.hidden)


def _usage(path: tuple[str, ...], command: Any) -> str:
    pieces = [*path, "[OPTIONS]"]
    if _subcommands(command):
        pieces.append("COMMAND [ARGS]...")
    for param in command.params:
        if not _is_option(param):
            name = (param.name or "").upper() + ("..." if param.nargs == -1 else "")
            pieces.append(name if param.required else f"[{name}]")
    return " ".join(pieces)


def _is_option(param: Any) -> bool:
    return bool(param.param_type_name == "option")


def _param_row(param: Any) -> str:
    if _is_option(param):
        if param.hidden or param.name == "help":
            return ""
        names = ", ".join(f"`{name}`" for name in (*param.opts, *param.secondary_opts))
        help_text = param.help or ""
    else:
        names = f"`{(param.name or '').upper()}`" + (" ..." if param.nargs == -1 else "")
        help_text = getattr(param, "help", None) or ""
    default = "required" if param.required else _default(param)
    return f"| {names} | {escape(_type(param))} | {default} | {escape(help_text)} |"


def _type(param: Any) -> str:
    if _is_option(param) and param.is_flag:
        return "flag"
    annotation = param.type_descriptor.annotation
    repeatable = typing.get_origin(annotation) is list
    if repeatable:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        name = " \\| ".join(f"`{member.value}`" for member in annotation)
    else:
        name = _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))
    bounds = [f">= {param.min}" if param.min is not None else "", f"<= {param.max}" if param.max is not None else ""]
    limits = ", ".join(b for b in bounds if b)
    return name + (f" ({limits})" if limits else "") + (", repeatable" if repeatable else "")


def _default(param: Any) -> str:
    default = param.default
    if default is None or callable(default) or (_is_option(param) and param.is_flag and not default):
        return ""
    return f"`{default}`"
