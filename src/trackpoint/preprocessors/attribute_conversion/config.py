"""Options of the attribute_conversion preprocessor (the `type: attribute_conversion` entries of `preprocessors:`)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from trackpoint.config.model import PreprocessorBase


class AttributeConversionConfig(PreprocessorBase, tag="attribute_conversion"):
    """Attributes a conversion to the click whose click id it carries, with no look-up: the id's signature is
    checked and its click read. Records `dims.attribution` (`attributed` or `unattributed`, then with
    `dims.attribution_reason`), the click's `dims.click_imp`, `click_cid`, `click_crid`, `metrics.click_ts` (epoch
    ms) and `metrics.latency_ms` (conversion time minus click time). An unattributed conversion is still recorded."""

    field: Annotated[str, Meta(description="The field holding the click id.")] = "click_id"
    window_s: Annotated[
        int,
        Meta(
            ge=1,
            le=400 * 86_400,
            description="Attribution window: a conversion later than this after its click is `window_expired`.",
        ),
    ] = 30 * 86_400
    min_delay_ms: Annotated[
        int,
        Meta(
            ge=0,
            le=86_400_000,
            description="An attributed conversion sooner than this after its click is flagged `dims.ivt = "
            "too_fast` (see the event type's invalid_traffic); 0: never.",
        ),
    ] = 2000
