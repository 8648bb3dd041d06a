"""The OpenAPI 3.1 document of a configuration: every event type's paths and methods with its fields as parameters
or body properties (type, limits, required, default), its response and its rejections, plus the admin port's routes.

It is generated from the same structs the edge runs on, so it cannot drift from the tracker: `trackpoint docs`
writes it beside the reference pages, and the admin port serves the running configuration's at `/openapi.json`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from trackpoint.admin.routes import admin_endpoints
from trackpoint.config.load import LoadedConfig
from trackpoint.config.model import EventTypeSpec, FieldSpec
from trackpoint.fields.reasons import statuses
from trackpoint.fields.types import raw_value_schema
from trackpoint.plugins import Registry
from trackpoint.reference.markdown import HEADER, escape
from trackpoint.tag import served_paths

Schema = dict[str, Any]

_REJECTION: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "The reason code, also in the `X-Reject-Reason` header."},
        "field": {"type": "string", "description": "The field at fault, when there is one."},
    },
}
# Statuses the edge answers before or instead of recording an event, each with its reason codes (one table).
_REJECTIONS = {
    str(status): "\n".join(f"- `{entry.reason}`: {entry.description}" for entry in entries)
    for status, entries in statuses().items()
}
_HEAD = (
    "The status and headers a GET of the same URL would get, without a body, and nothing else: the request is "
    "checked as a GET would be (a bad one gets the same 4xx), but no event is recorded, no preprocessor runs (no "
    "click id is issued), no user id cookie is set and no budget is debited. Counted in "
    "`trackpoint_head_requests_total`. Link scanners and mail gateways send these."
)
_PROXIES = (
    "From a `server.trusted_proxies` peer, the client address is the right-most untrusted node of "
    "`X-Forwarded-For` (entries may carry a port), or of `Forwarded` (RFC 7239; quoted, bracketed IPv6 and ports "
    "read) with `server.client_ip_header: forwarded`; the other header is not read. "
    "Header values are read as UTF-8; bytes that are not UTF-8 become U+FFFD. An absolute-form target "
    "(`GET http://host/path?...`) is routed by its path; a 405's `Allow` lists this path's methods."
)
_BODY = (
    "Form-urlencoded, multipart/form-data (what `sendBeacon(FormData)` sends: declared names only, file parts "
    "ignored, at most 64 parts) or a JSON object (also as text/plain, what `sendBeacon` with a string sends); a "
    "UTF-8 byte-order mark before it is skipped. The body may be compressed (`Content-Encoding`): it is inflated "
    "as it arrives, within `server.limits.max_inflated_bytes` and `max_inflation_ratio` (413), "
    "`server.limits.max_body_bytes` applying to the bytes as sent."
)
_CONTENT_ENCODING: Schema = {
    "name": "Content-Encoding",
    "in": "header",
    "description": "The body's coding: gzip, deflate (zlib or raw) or identity; any other is answered 415.",
    "schema": {"type": "string", "enum": ["gzip", "x-gzip", "deflate", "identity"]},
}


def openapi_document(loaded: LoadedConfig, registry: Registry) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `loaded`: the tracking port's endpoints, then the admin port's (with their own
    `servers` entry, since they are served on another address)."""
    config = loaded.config
    paths: dict[str, dict[str, Any]] = {}
    for name, spec in config.event_types.items():
        for index, path in enumerate(spec.paths):
            item = paths.setdefault(path, {})
            for method in spec.methods:
                suffix = f"_{index}" if index else ""
                item[method.lower()] = _operation(name, spec, method, f"{name}_{method.lower()}{suffix}")
        for index, path in enumerate(spec.batch.paths):
            suffix = f"_{index}" if index else ""
            paths[path] = {"post": _batch_operation(name, spec, f"{name}_batch_post{suffix}")}
    for index, (path, _, what, _) in enumerate(served_paths(config.server.tag)):
        paths[path] = {method: _tag_operation(what, f"tag_{method}_{index}") for method in ("get", "head")}
    admin_server = {"url": f"http://{config.admin.host}:{config.admin.port}", "description": "The admin port."}
    for endpoint in admin_endpoints(registry.admin_routes):
        admin_method, path, summary = endpoint.method, endpoint.path, endpoint.summary
        item = paths.setdefault(path, {"servers": [admin_server]})
        if "servers" not in item:  # an event type took this path on the tracking port: it wins there
            continue
        words = [part.strip("{}") for part in path.strip("/").split("/") if part]  # "/": admin_get
        operation: dict[str, Any] = {
            "tags": ["admin"],
            "summary": summary,
            "operationId": "_".join(["admin", *words, admin_method.lower()]),
            "responses": {"200": {"description": "OK"}},
        }
        parameters = [
            {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for part in path.split("/")
            if part.startswith("{")
        ]
        if parameters:
            operation["parameters"] = parameters
        if not endpoint.public:
            operation["security"] = [{"adminToken": []}]
            operation["responses"]["401"] = {"description": "No or wrong `Authorization: Bearer` admin token."}
        item[admin_method.lower()] = operation
    server = config.server
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "trackpoint",
            "version": loaded.version,
            "description": f"The endpoints of the configuration `{loaded.source}` (version `{loaded.version}`).",
        },
        "servers": [{"url": f"http://{server.host}:{server.port}", "description": "The tracking port."}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The admin token (admin.token_env, admin.token_file, or data_dir/keys/admin.token).",
                }
            },
            "schemas": {"Rejection": _REJECTION},
            "headers": {
                "X-Reject-Reason": {
                    "description": "The machine-readable reason of a rejection (as counted in /metrics).",
                    "schema": {"type": "string"},
                }
            },
            "responses": {
                status: {
                    "description": text,
                    "headers": {"X-Reject-Reason": {"$ref": "#/components/headers/X-Reject-Reason"}},
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Rejection"}}},
                }
                for status, text in _REJECTIONS.items()
            },
        },
    }


def openapi_json(loaded: LoadedConfig, registry: Registry) -> bytes:
    """The document as indented JSON with a final newline (the committed file and `/openapi.json`)."""
    return msgspec.json.format(msgspec.json.encode(openapi_document(loaded, registry)), indent=2) + b"\n"


def _tag_operation(what: str, operation_id: str) -> dict[str, Any]:
    return {
        "tags": ["tag"],
        "summary": "tp.js: " + what,
        "operationId": operation_id,
        "parameters": [
            {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
            {"name": "Accept-Encoding", "in": "header", "required": False, "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {
                "description": "The tag (gzipped when accepted), with its ETag.",
                "content": {"text/javascript": {"schema": {"type": "string"}}},
            },
            "304": {"description": "Not modified: the If-None-Match named this ETag."},
        },
    }


def _operation(name: str, spec: EventTypeSpec, method: str, operation_id: str) -> dict[str, Any]:
    in_body = method == "POST"
    parameters: list[dict[str, Any]] = []
    body: dict[str, Schema] = {}
    required: list[str] = []
    for field_name, field in spec.fields.items():
        key = field.name or field_name
        if field.source == "ip":
            continue
        schema = _schema(field)
        if spec.drops_invalid(field_name):
            schema["description"] = (schema.get("description", "") + " " + _DROPPED).lstrip()
        if field.source in ("form", "json") or (field.source == "param" and in_body):
            body[key] = schema
            if field.required:
                required.append(key)
            continue
        location = {"param": "query", "query": "query", "header": "header", "cookie": "cookie"}[field.source]
        parameter: dict[str, Any] = {"name": key, "in": location, "schema": schema}
        if field.required:
            parameter["required"] = True
        parameters.append(parameter)
    if spec.signature != "off":
        for key, text in (
            ("kid", "Signing key id."),
            ("exp", "Expiry, epoch seconds."),
            ("sig", "HMAC of the URL (see `trackpoint sign`)."),
        ):
            parameters.append(
                {"name": key, "in": "query", "required": spec.signature == "required", "description": text}
                | {"schema": {"type": "string"}}
            )
    key = ", ".join(f"`{f}`" for f in spec.dedupe_key) or "none (a time-ordered random id)"
    if method == "HEAD":
        summary, description = f"Probe the `{name}` endpoint (records nothing).", _HEAD
    else:
        summary = f"Record a `{name}` event."
        description = (
            f"Event id from: {key}. Preprocessors: {', '.join(spec.preprocessors) or 'none'}. "
            f"Collectors: {', '.join(spec.collectors) or 'none'}. The response never waits for a collector. " + _PROXIES
        )
    operation: dict[str, Any] = {
        "tags": [name],
        "summary": summary,
        "description": description,
        "operationId": operation_id,
        "responses": _responses(spec)
        | {status: {"$ref": f"#/components/responses/{status}"} for status in _REJECTIONS},
    }
    if parameters:
        operation["parameters"] = parameters
    if body:
        body_schema: Schema = {"type": "object", "properties": body}
        if required:
            body_schema["required"] = required
        operation["requestBody"] = {
            "required": bool(required),
            "description": _BODY,
            "content": {
                "application/x-www-form-urlencoded": {"schema": body_schema},
                "multipart/form-data": {"schema": body_schema},
                "application/json": {"schema": body_schema},
                "text/plain": {"schema": body_schema},
            },
        }
        operation["parameters"] = [*parameters, _CONTENT_ENCODING]
    return operation


def _batch_operation(name: str, spec: EventTypeSpec, operation_id: str) -> dict[str, Any]:
    """A batch path: many `name` events in one body, each item shaped as the event type's JSON body."""
    item = _operation(name, spec, "POST", operation_id).get("requestBody", {}).get("content", {})
    item_schema: Schema = item.get("application/json", {}).get("schema", {"type": "object"})
    items: Schema = {"type": "array", "items": item_schema, "maxItems": spec.batch.max_items}
    body: Schema = {
        "oneOf": [
            items,
            {"type": "object", "required": ["data"], "properties": {"schema": {"type": "string"}, "data": items}},
            {"type": "object", "required": ["batch"], "properties": {"batch": items}},
            {
                "type": "object",
                "required": ["requests"],
                "properties": {
                    "requests": {"type": "array", "items": {"type": "string"}, "maxItems": spec.batch.max_items}
                },
            },
        ]
    }
    refused: Schema = {
        "type": "object",
        "required": ["index", "error"],
        "properties": {"index": {"type": "integer"}, "error": {"type": "string"}, "field": {"type": "string"}},
    }
    answer: Schema = {
        "type": "object",
        "required": ["accepted", "refused"],
        "properties": {"accepted": {"type": "integer"}, "refused": {"type": "array", "items": refused}},
    }
    return {
        "tags": [name],
        "summary": f"Record a batch of `{name}` events.",
        "description": (
            "A JSON array of items, or an object holding one: Snowplow's `data`, Segment's and RudderStack's "
            "`batch`, Matomo's `requests` (query strings). Each item becomes its own event (its own id); the answer "
            "lists the refused items with their reasons and leaves once the accepted items are recorded. " + _BODY
        ),
        "operationId": operation_id,
        "parameters": [_CONTENT_ENCODING],
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            "200": {
                "description": "The batch was read: how many items were recorded, and which were refused.",
                "content": {"application/json": {"schema": answer}},
            }
        }
        | {status: {"$ref": f"#/components/responses/{status}"} for status in _REJECTIONS},
    }


# How a field that drops invalid values (`on_invalid`) says so.
_DROPPED = "An invalid value is left out, not refused: the event is recorded with `dims.invalid` naming it."


def _responses(spec: EventTypeSpec) -> dict[str, Any]:
    kind = spec.response.kind
    if kind == "gif":
        return {"200": {"description": "A 43-byte transparent GIF.", "content": {"image/gif": {}}}}
    if kind == "no_content":
        return {"204": {"description": "Recorded (no body and no Content-Length, as RFC 9110 §8.6 requires)."}}
    if kind == "json":
        schema = {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}
        return {"200": {"description": "The event id.", "content": {"application/json": {"schema": schema}}}}
    hosts = ", ".join(spec.response.allow_hosts) or "none"
    description = (
        f"To the destination in `{spec.response.redirect_field}` (allowed hosts: {hosts}); a destination with "
        "non-ASCII characters or spaces (an IRI) as its URI: the host in IDNA, the rest percent-encoded as UTF-8."
    )
    headers: dict[str, Any] = {"Location": {"schema": {"type": "string", "format": "uri"}}}
    if spec.response.fallback_url is not None:
        description += (
            f" A refused destination goes to `{spec.response.fallback_url}` instead, with `X-Reject-Reason: "
            "redirect_not_allowed` (the click is recorded as refused), rather than the 400."
        )
        headers["X-Reject-Reason"] = {"$ref": "#/components/headers/X-Reject-Reason"}
    return {"302": {"description": description, "headers": headers}}


def _schema(field: FieldSpec) -> Schema:
    """The JSON Schema of a field's raw value (its type's, fields/types.py), with the field's default."""
    schema = raw_value_schema(field)
    if field.default is not None:
        schema["default"] = field.default
    return schema


def openapi_markdown(document: dict[str, Any]) -> str:
    """The OpenAPI document as a reference page: every operation of the tracking port, then of the admin port, with
    its parameters, body and responses, so the site shows the API as a page and not as raw JSON."""
    servers = {server["description"]: server["url"] for server in document["servers"]}
    lines = [
        HEADER + "# HTTP API\n",
        f"{document['info']['description']} The same document as OpenAPI 3.1: [openapi.json](openapi.json) (the "
        "admin port serves the running configuration's at `/openapi.json`), for Swagger UI, Redoc or a client "
        "generator.\n",
    ]
    tracking: list[tuple[list[str], str, dict[str, Any]]] = []
    admin: list[tuple[list[str], str, dict[str, Any]]] = []
    for path, item in document["paths"].items():
        shown: dict[bytes, list[str]] = {}  # GET and HEAD of one route read the same: one section for both
        for method, operation in item.items():
            if method == "servers":
                continue
            same = msgspec.json.encode({k: v for k, v in operation.items() if k != "operationId"})
            if same in shown:
                shown[same].append(method.upper())
                continue
            shown[same] = methods = [method.upper()]
            (admin if "servers" in item else tracking).append((methods, path, operation))
    lines.append(f"## The tracking port\n\nServed on `{next(iter(servers.values()))}` by default.\n")
    lines.extend(_operation_markdown(methods, path, op) for methods, path, op in tracking)
    admin_url = next((item["servers"][0]["url"] for item in document["paths"].values() if "servers" in item), "")
    lines.append(
        f"## The admin port\n\nServed on `{admin_url}` by default, never on the tracking port. Routes marked "
        "*token* need `Authorization: Bearer <token>` "
        f"({document['components']['securitySchemes']['adminToken']['description']}).\n"
    )
    lines.extend(_operation_markdown(methods, path, op) for methods, path, op in admin)
    lines += ["## Rejections\n", "Every tracking route answers bad input with a small JSON body and the reason in "
              "`X-Reject-Reason`:\n", "| status | reasons |", "|---|---|"]  # fmt: skip
    for status, response in document["components"]["responses"].items():
        reasons = "<br>".join(line.removeprefix("- ") for line in response["description"].splitlines())
        lines.append(f"| {status} | {escape(reasons)} |")
    return "\n".join(lines) + "\n"


def _operation_markdown(methods: list[str], path: str, operation: dict[str, Any]) -> str:
    token = " · *token*" if operation.get("security") else ""
    lines = [f"### `{', '.join(methods)} {path}`\n", f"{operation.get('summary', '')}{token}\n"]
    if operation.get("description"):
        lines.append(operation["description"] + "\n")
    parameters = operation.get("parameters", [])
    if parameters:
        lines += ["| parameter | in | type | required | notes |", "|---|---|---|---|---|"]
        for parameter in parameters:
            schema = parameter.get("schema", {})
            notes = parameter.get("description") or _schema_notes(schema)
            required = "yes" if parameter.get("required") else ""
            lines.append(
                f"| `{parameter['name']}` | {parameter['in']} | {_schema_type(schema)} | {required} | {escape(notes)} |"
            )
        lines.append("")
    body = operation.get("requestBody")
    if body:
        media = ", ".join(f"`{kind}`" for kind in body["content"])
        schema = next(iter(body["content"].values()))["schema"]
        needed = set(schema.get("required", []))
        lines += [f"Body ({media}):\n", "| field | type | required | notes |", "|---|---|---|---|"]
        for name, field in schema.get("properties", {}).items():
            required = "yes" if name in needed else ""
            lines.append(f"| `{name}` | {_schema_type(field)} | {required} | {escape(_schema_notes(field))} |")
        lines.append("")
    answers, rejections = [], []
    for status, response in operation.get("responses", {}).items():
        if "$ref" in response:
            rejections.append(status)
        else:
            answers.append(f"| {status} | {escape(response.get('description', ''))} |")
    lines += ["| status | answer |", "|---|---|", *answers]
    if rejections:
        lines.append(f'| {", ".join(rejections)} | a rejection: `{{"error": reason}}` ([reasons](#rejections)) |')
    return "\n".join(lines) + "\n"


def _schema_type(schema: dict[str, Any]) -> str:
    kind = schema.get("type", "")
    kinds = kind if isinstance(kind, list) else [kind]
    return " or ".join(str(k) for k in kinds if k) or "string"


def _schema_notes(schema: dict[str, Any]) -> str:
    notes = []
    if "enum" in schema:
        notes.append("one of " + ", ".join(f"`{value}`" for value in schema["enum"]))
    if "minimum" in schema:
        notes.append(f">= {schema['minimum']}")
    if "maximum" in schema:
        notes.append(f"<= {schema['maximum']}")
    if "maxLength" in schema:
        notes.append(f"at most {schema['maxLength']} characters")
    if "default" in schema:
        notes.append(f"default `{schema['default']}`")
    if schema.get("description"):
        notes.append(schema["description"])
    return "; ".join(notes)
