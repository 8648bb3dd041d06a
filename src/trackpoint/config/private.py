"""Privacy by default, as the loader applies it: fields read from the client (its IP, a cookie, a header, the user
id cookie) are added to each untrusted collector's `fields_deny`; privacy/filter.py enforces the lists per event.
"""

from __future__ import annotations

from typing import Final

import msgspec

from trackpoint.config.model import Config, EventTypeSpec

# The dim the first-party user id cookie is read into (privacy/cookie.py).
UID_DIM: Final = "uid"
# Field sources that carry the client's own data rather than the URL the ad server wrote.
PRIVATE_SOURCES = frozenset({"ip", "cookie", "header"})


def private_fields(spec: EventTypeSpec) -> dict[str, str]:
    """An event type's fields read from the client IP, a cookie or a header: field name -> its path (`dims.x`)."""
    private = {name: f"{field.place}.{name}" for name, field in spec.fields.items() if field.source in PRIVATE_SOURCES}
    if spec.response.user_id_cookie is not None:
        private[UID_DIM] = f"dims.{UID_DIM}"
    return private


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
    that feed it (their own collectors or their invalid-traffic route), except those it names in send_private."""
    feeds: dict[str, dict[str, str]] = {}
    for spec in config.event_types.values():
        private = private_fields(spec) | preprocessor_private_dims(config, spec)
        if private:
            for name in {*spec.collectors, *spec.invalid_traffic.collectors}:
                feeds.setdefault(name, {}).update(private)
    collectors = dict(config.collectors)
    for name, private in feeds.items():
        collector = collectors.get(name)
        if collector is None or collector.trusted:
            continue
        denied = sorted(path for field, path in private.items() if field not in collector.send_private)
        extra = [path for path in denied if path not in collector.fields_deny]
        if extra:
            collectors[name] = msgspec.structs.replace(collector, fields_deny=[*collector.fields_deny, *extra])
    return msgspec.structs.replace(config, collectors=collectors)
