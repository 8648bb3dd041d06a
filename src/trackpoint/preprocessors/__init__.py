"""Preprocessors: plain objects built once from config and called in order on every event of their types.

A preprocessor takes the built event and returns it (changed in place or replaced), or None to drop it (counted).
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from trackpoint.config.model import EventTypeSpec, PreprocessorBase
from trackpoint.event import Event


class Preprocessor(Protocol):
    """The contract: a name for counters and one call per event."""

    name: str

    def __call__(self, event: Event, /) -> Event | None:
        """Called once per event on the request path: return the event (changed in place or replaced), None to
        drop it (counted), or raise `Reject` to refuse the request with a 4xx and a reason code."""
        ...


def build_preprocessor(name: str, config: PreprocessorBase, data_dir: str = ".") -> Preprocessor:
    """The preprocessor an instance of the configuration stands for, built by the plugin that registered its type."""
    from trackpoint.plugins import registry, type_tag

    try:
        kind = registry().preprocessors.get(type_tag(type(config)))
    except TypeError:
        kind = None
    if kind is None:
        raise ValueError(f"no preprocessor for configuration {type(config).__name__}")
    factory: Any = kind.factory
    return factory(name, config, data_dir) if kind.uses_data_dir else factory(name, config)  # type: ignore[no-any-return]


def with_input_fields(spec: EventTypeSpec, preprocessors: tuple[Preprocessor, ...]) -> EventTypeSpec:
    """The event type with the fields its preprocessors read (a preprocessor's optional `input_fields`, e.g. the
    consent signals) and the user id cookie its response sets; fields the type declares itself win."""
    from trackpoint.privacy.cookie import UID_DIM, uid_field

    extra = {name: field for p in preprocessors for name, field in getattr(p, "input_fields", {}).items()}
    if spec.response.user_id_cookie is not None:
        extra[UID_DIM] = uid_field(spec.response.user_id_cookie)
    return msgspec.structs.replace(spec, fields=extra | spec.fields) if extra else spec
