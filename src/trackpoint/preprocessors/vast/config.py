"""Options of the vast preprocessor (the `type: vast` entries of `preprocessors:`)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from trackpoint.config.model import PreprocessorBase


class VastConfig(PreprocessorBase, tag="vast"):
    """VAST video tracking: checks what each event needs, records how far into the ad it proves playback went
    (`metrics.watch_ms`: a quartile's share of the duration when that is known, or the event's offset if further;
    else the offset, 0 for `start`) and keys the id of events that may legitimately repeat: `progress` by its offset (in
    buckets of `progress_granularity_s`), `error` by its code, viewer interactions (pause, mute, click, ...) by
    the cache buster, else the offset. Everything else (impression, start, each quartile, complete, ...) counts
    once per impression through the type's dedupe key. A `progress` event without an offset is refused (400
    `missing_field`). The fields it reads are added to the event type unless it declares them itself."""

    event_field: Annotated[str, Meta(description="The field with the VAST event name (enum, in dims).")] = "ev"
    offset_field: Annotated[
        str,
        Meta(description="The field with the ad's playhead when the event fired, in seconds (a duration in metrics)."),
    ] = "t"
    duration_field: Annotated[
        str, Meta(description="The field with the ad's duration in seconds, when the ad server knows it (metrics).")
    ] = "dur"
    error_code_field: Annotated[
        str, Meta(description="The field with the VAST error code (`[ERRORCODE]`) of an `error` event (dims).")
    ] = "code"
    progress_granularity_s: Annotated[
        float,
        Meta(
            gt=0,
            le=3600,
            description="A `progress` event's id is keyed by its offset rounded down to this many seconds: players "
            "report the playhead when they notice the tracker's offset passed (`t=[ADPLAYHEAD]`: 4.75 in one "
            "session, 4.8 in a retry or another tab of the same impression), so 4.75 and 4.8 count once at 1.",
        ),
    ] = 1.0
    cachebuster_field: Annotated[
        str,
        Meta(
            description="The field with the player's `[CACHEBUSTING]` value: it tells a repeated interaction from a "
            "retried request, then is removed from the event."
        ),
    ] = "cb"
