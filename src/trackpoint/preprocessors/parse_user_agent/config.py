"""Options of the parse_user_agent preprocessor (the `type: parse_user_agent` entries of `preprocessors:`)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from trackpoint.config.model import PreprocessorBase


class ParseUserAgentConfig(PreprocessorBase, tag="parse_user_agent"):
    """Parses the User-Agent into browser, OS and device (ua-parser, Rust-backed resolver), with a cache."""

    cache_size: Annotated[int, Meta(ge=0, le=10_000_000, description="User agents kept parsed per worker.")] = 20000
    keep_raw: Annotated[bool, Meta(description="Keep the raw User-Agent string in ctx.ua.")] = True
