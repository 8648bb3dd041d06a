"""Options of the flag_invalid_traffic preprocessor (the `type: flag_invalid_traffic` entries of `preprocessors:`)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from trackpoint.config.model import PreprocessorBase


class FlagInvalidTrafficConfig(PreprocessorBase, tag="flag_invalid_traffic"):
    """Flags invalid traffic in `dims.ivt` (the first finding wins): `bot` (a crawler, tool or headless browser by
    its User-Agent, or none at all), `prefetch` (a browser prefetch or preview, not a person), `too_fast` (sooner
    after the impression than a person could act). Put it after parse_user_agent. The event type's
    `invalid_traffic` decides what happens to flagged events."""

    bots: Annotated[
        bool,
        Meta(
            description="Flag known crawlers, HTTP tools and headless browsers (ctx.device.bot when "
            "parse_user_agent ran first, else the raw User-Agent) and requests without a User-Agent."
        ),
    ] = True
    prefetch: Annotated[
        bool,
        Meta(
            description="Flag requests whose `Purpose`, `Sec-Purpose`, `X-Moz` or `X-Purpose` header says "
            "prefetch, prerender or preview (these headers are read only when this is on)."
        ),
    ] = True
    impression_time_field: Annotated[
        str | None,
        Meta(
            description="Parameter with the impression time (epoch s or ms, or ISO 8601; kept as a timestamp in "
            "metrics), e.g. in click URLs the ad server signs; unset: no too_fast check."
        ),
    ] = "its"
    min_delay_ms: Annotated[
        int,
        Meta(
            ge=0,
            le=86_400_000,
            description="A request sooner than this after its impression time (or before it) is `too_fast`.",
        ),
    ] = 1000
