"""Privacy by default, as the loader applies it: fields read from the client (its IP, a cookie, a header, the user
id cookie) are added to each untrusted collector's `fields_deny`, and `url` fields to its `fields_trim_url`;
privacy/filter.py enforces the lists per event.
"""

from __future__ import annotations

from typing import Final

import msgspec

from trackpoint.config.model import Config, EventTypeSpec

# The dim the first-party user id cookie is read into (privacy/cookie.py).
UID_DIM: Final = "uid"
# Field sources that carry the client's own data rather than the URL the ad server wrote.
PRIVATE_SOURCES = frozenset({"ip", "cookie", "header"})
# The field type of URLs (fields/types.py): untrusted collectors get them without query string, fragment, user info.
URL_TYPE: Final = "url"


def private_fields(spec: EventTypeSpec) -> dict[str, str]:
    """An event type's fields read from the client IP, a cookie or a header: field name -> its path (`dims.x`).
    Given the type as a worker builds it (`preprocessors.with_input_fields`), the fields its preprocessors read
    count too, a plugin's like a built-in's."""
    private = {name: f"{field.place}.{name}" for name, field in spec.fields.items() if field.source in PRIVATE_SOURCES}
    if spec.response.user_id_cookie is not None:
        private[UID_DIM] = f"dims.{UID_DIM}"
    return private


def url_fields(spec: EventTypeSpec) -> dict[str, str]:
    """An event type's fields of type `url`: field name -> its path (`dims.x`)."""
    return {name: f"dims.{name}" for name, field in spec.fields.items() if field.type == URL_TYPE}


def preprocessor_private_dims(config: Config, spec: EventTypeSpec) -> dict[str, str]:
    """The private dims (`private_dims`, e.g. geo's `geo.city`) the event type's preprocessors add: name -> path."""
    private: dict[str, str] = {}
    for name in spec.preprocessors:
        preprocessor = config.preprocessors.get(name)
        if preprocessor is not None:
            private.update((dim, f"dims.{dim}") for dim in preprocessor.private_dims)
    return private


def deny_private_fields(config: Config) -> Config:
    """The config with each untrusted collector's fields_deny extended by the private fields of the event types
    that feed it (their own collectors or their invalid-traffic route), and its fields_trim_url by their `url`
    fields, except those it names in send_private. Applied again by each worker to its event types with the fields
    their preprocessors read (edge/runtime.py): adding what is there already changes nothing."""
    denied: dict[str, dict[str, str]] = {}
    trimmed: dict[str, dict[str, str]] = {}
    for spec in config.event_types.values():
        private = private_fields(spec) | preprocessor_private_dims(config, spec)
        urls = url_fields(spec)
        for name in {*spec.collectors, *spec.invalid_traffic.collectors}:
            denied.setdefault(name, {}).update(private)
            trimmed.setdefault(name, {}).update(urls)
    collectors = dict(config.collectors)
    for name, private in denied.items():
        collector = collectors.get(name)
        if collector is None or collector.trusted:
            continue
        deny = _extended(collector.fields_deny, private, collector.send_private)
        trim = _extended(collector.fields_trim_url, trimmed[name], collector.send_private)
        if deny != collector.fields_deny or trim != collector.fields_trim_url:
            collectors[name] = msgspec.structs.replace(collector, fields_deny=deny, fields_trim_url=trim)
    return msgspec.structs.replace(config, collectors=collectors)


def _extended(paths: list[str], fields: dict[str, str], opted_in: list[str]) -> list[str]:
    """`paths` with those of `fields` (name -> path) it lacks, but for the fields named in `opted_in`."""
    extra = sorted(path for field, path in fields.items() if field not in opted_in and path not in paths)
    return [*paths, *extra] if extra else paths
