"""Preprocessors: plain objects built once from config and called in order on every event of their types.

A preprocessor takes the built event and returns it (changed in place or replaced), or None to drop it (counted).
"""

from __future__ import annotations

from typing import Protocol

from trackpoint.config.model import AnonymizeIpConfig, ParseUserAgentConfig, PreprocessorBase
from trackpoint.pipeline.event import Event


class Preprocessor(Protocol):
    """The contract: a name for counters and one call per event."""

    name: str

    def __call__(self, event: Event, /) -> Event | None: ...


def build_preprocessor(name: str, config: PreprocessorBase) -> Preprocessor:
    """The preprocessor an instance of the configuration stands for."""
    if isinstance(config, AnonymizeIpConfig):
        from trackpoint.preprocessors.anonymize_ip import AnonymizeIp

        return AnonymizeIp(name, config)
    if isinstance(config, ParseUserAgentConfig):
        from trackpoint.preprocessors.parse_user_agent import ParseUserAgent

        return ParseUserAgent(name, config)
    raise ValueError(f"no preprocessor for configuration {type(config).__name__}")
