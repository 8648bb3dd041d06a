"""The configuration reference in Markdown, generated from the typed structs (their types, defaults, limits and
descriptions), and the endpoint table of a given configuration. `trackpoint docs OUT_DIR` writes both.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import msgspec.inspect as mi

from trackpoint.admin.routes import admin_endpoints
from trackpoint.config.load import LoadedConfig, config_type
from trackpoint.fields.reasons import statuses
from trackpoint.plugins import Registry
from trackpoint.reference.markdown import HEADER, escape
from trackpoint.tag import served_paths


def configuration_reference(registry: Registry) -> str:
    """Every option of the configuration file, section by section."""
    lines = [HEADER + "# Configuration reference\n"]
    for title, struct in config_sections(registry):
        lines.append(f"## `{title or 'top level'}`\n")
        lines.append((struct.cls.__doc__ or "").strip() + "\n")
        lines.append("| option | type | default | description |")
        lines.append("|---|---|---|---|")
        for field in struct.fields:
            if struct.tag_field is not None and field.name == struct.tag_field:
                continue
            inner, description = _unwrap(field.type)
            names = _enum_of(field.type) or _type_name(inner)
            lines.append(f"| `{field.encode_name}` | {names} | {_default(field)} | {escape(description)} |")
        lines.append("")
    return "\n".join(lines)


def config_sections(registry: Registry) -> list[tuple[str, mi.StructType]]:
    """Every struct of the configuration with its dotted path (`server.limits`, `collectors.<name> (type: log)`),
    for every component type the installed plugins provide; a struct used in several places is listed once."""
    root = mi.type_info(config_type(registry))
    assert isinstance(root, mi.StructType)
    return list(_sections(root, "", set()))


def _sections(struct: mi.StructType, path: str, seen: set[type]) -> Iterator[tuple[str, mi.StructType]]:
    if struct.cls in seen:
        return
    seen.add(struct.cls)
    if struct.tag is not None:
        path = f"{path} (type: {struct.tag})"
    yield path, struct
    for field in struct.fields:
        inner, _ = _unwrap(field.type)
        child = f"{path}.{field.encode_name}" if path else field.encode_name
        if isinstance(inner, mi.StructType):
            yield from _sections(inner, child, seen)
        elif isinstance(inner, mi.DictType):
            value, _ = _unwrap(inner.value_type)
            members = value.types if isinstance(value, mi.UnionType) else (value,)
            for member in members:
                if isinstance(member, mi.StructType):
                    yield from _sections(member, f"{child}.<name>", seen)


def _unwrap(kind: mi.Type) -> tuple[mi.Type, str]:
    if isinstance(kind, mi.Metadata):
        description = (kind.extra_json_schema or {}).get("description", "")
        return kind.type, description
    return kind, ""


def _enum_of(kind: mi.Type) -> str:
    """The values a text option accepts when its schema lists them (a field's `type`: the table of field types)."""
    values = (kind.extra_json_schema or {}).get("enum") if isinstance(kind, mi.Metadata) else None
    return " \\| ".join(f"`{value}`" for value in values) if values else ""


def _type_name(kind: mi.Type) -> str:
    limits = ""
    if isinstance(kind, mi.IntType | mi.FloatType):
        bounds = [
            f"{op} {value}"
            for op, value in ((">", kind.gt), (">=", kind.ge), ("<", kind.lt), ("<=", kind.le))
            if value is not None
        ]
        limits = f" ({', '.join(bounds)})" if bounds else ""
    if isinstance(kind, mi.LiteralType):
        return " \\| ".join(f"`{value}`" for value in kind.values)
    if isinstance(kind, mi.UnionType):
        return " or ".join(_type_name(member) for member in kind.types)
    if isinstance(kind, mi.ListType):
        return f"list of {_type_name(_unwrap(kind.item_type)[0])}"
    if isinstance(kind, mi.DictType):
        return "mapping"
    if isinstance(kind, mi.StructType):
        return "section"
    names = {mi.IntType: "int", mi.FloatType: "number", mi.StrType: "string", mi.BoolType: "bool", mi.NoneType: "null"}
    return names.get(type(kind), type(kind).__name__) + limits


def _default(field: mi.Field) -> str:
    if field.required:
        return "required"
    if field.default is not msgspec.NODEFAULT:
        value: Any = field.default
    elif field.default_factory is not msgspec.NODEFAULT:
        value = field.default_factory()
        if isinstance(value, msgspec.Struct):
            return "(section)"
    else:
        return ""
    return f"`{msgspec.json.encode(value).decode()}`"


def endpoints_reference(loaded: LoadedConfig, registry: Registry) -> str:
    """The endpoints of one configuration: paths, methods, fields, response, preprocessors and collectors."""
    config = loaded.config
    lines = [HEADER + "# Endpoints\n", f"Configuration: `{loaded.source}` (version `{loaded.version}`).\n"]
    for name, spec in config.event_types.items():
        lines.append(f"## {name}\n")
        methods = ", ".join(spec.methods)
        lines.append(f"- paths: {', '.join(f'`{p}`' for p in spec.paths)} ({methods})")
        if spec.batch.paths:
            lines.append(
                f"- batch paths: {', '.join(f'`{p}`' for p in spec.batch.paths)} (POST; at most "
                f"{spec.batch.max_items} items; see [batches](../guides/batches.md))"
            )
        response = spec.response.kind + (
            f" (destination from `{spec.response.redirect_field}`; hosts: {', '.join(spec.response.allow_hosts)}"
            + (f"; refused: to `{spec.response.fallback_url}`" if spec.response.fallback_url else "")
            + ")"
            if spec.response.kind == "redirect"
            else ""
        )
        lines.append(f"- response: {response}")
        key = ", ".join(spec.dedupe_key) or "none (time-ordered random id)"
        lines.append(f"- event id from: {key}")
        lines.append(f"- preprocessors: {', '.join(spec.preprocessors) or 'none'}")
        lines.append(f"- collectors: {', '.join(spec.collectors) or 'none'}\n")
        if spec.fields:
            lines.append("| field | source | type | required | max length | limits | default | invalid value |")
            lines.append("|---|---|---|---|---|---|---|---|")
            for field_name, field in spec.fields.items():
                source = field.source + (f" `{field.name}`" if field.name else "")
                limits = ", ".join(
                    part
                    for part in (
                        f"min {field.min}" if field.min is not None else "",
                        f"max {field.max}" if field.max is not None else "",
                        f"one of {', '.join(field.values)}" if field.values else "",
                    )
                    if part
                )
                lines.append(
                    f"| `{field_name}` | {source} | {field.type} | {'yes' if field.required else 'no'} "
                    f"| {field.max_len} | {escape(limits)} | {field.default or ''} "
                    f"| {'dropped (`dims.invalid`)' if spec.drops_invalid(field_name) else 'refused'} |"
                )
            lines.append("")
    served = served_paths(config.server.tag)
    if served:
        lines.append("## tp.js\n")
        lines.append("The JavaScript tag (`server.tag`), GET and HEAD; ETag and 304, gzip; nothing is recorded.\n")
        lines += [f"- `{path}`: {what}" for path, _, what, _ in served]
        lines.append("")
    lines += _rejections()
    lines += _admin_endpoints(registry)
    return "\n".join(lines)


def _rejections() -> list[str]:
    """Every reject reason the tracking port can answer with, from the table in pipeline/reasons.py."""
    lines = [
        "## Rejections\n",
        "A refused request gets the status below, an `X-Reject-Reason` header and a JSON body "
        '`{"error": reason, "field": name}` (`field` when one field is at fault); each reason is counted in '
        "`trackpoint_rejected_total`.\n",
        "| status | reason | meaning |",
        "|---|---|---|",
    ]
    lines += [
        f"| {entry.status} | `{entry.reason}` | {escape(entry.description)} |"
        for entries in statuses().values()
        for entry in entries
    ]
    lines.append("")
    return lines


def _admin_endpoints(registry: Registry) -> list[str]:
    """The admin port's endpoints, from the route table the supervisor serves (admin/routes.py)."""
    lines = [
        "## Admin port\n",
        "Served on `admin.host:admin.port` (127.0.0.1:8081 by default), never on the tracking port. "
        "The probes (`/healthz`, `/readyz`, `/startupz`) are open; every other route needs "
        "`Authorization: Bearer <token>` (`admin.token_env` / `admin.token_file`, else generated into "
        "`data_dir/keys/admin.token`): 401 without.\n",
        "| method | path | what it does |",
        "|---|---|---|",
    ]
    lines += [f"| {e.method} | `{e.path}` | {escape(e.summary)} |" for e in admin_endpoints(registry.admin_routes)]
    lines.append("")
    return lines
