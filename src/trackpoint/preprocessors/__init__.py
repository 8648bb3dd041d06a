"""Preprocessors: plain objects built once from config and called in order on every event of their types.

A preprocessor takes the built event and returns it (changed in place or replaced), or None to drop it (counted).
"""

from __future__ import annotations

from typing import Protocol

from trackpoint.config.model import PreprocessorBase
from trackpoint.pipeline.event import Event


class Preprocessor(Protocol):
    """The contract: a name for counters and one call per event."""

    name: str

    def __call__(self, event: Event, /) -> Event | None: ...


def build_preprocessor(name: str, config: PreprocessorBase) -> Preprocessor:
    """The preprocessor an instance of the configuration stands for, built by the plugin that registered its type."""
    from trackpoint.plugins import registry, type_tag

    try:
        kind = registry().preprocessors.get(type_tag(type(config)))
    except TypeError:
        kind = None
    if kind is None:
        raise ValueError(f"no preprocessor for configuration {type(config).__name__}")
    return kind.factory(name, config)
