"""VAST video tracking, as protocol facts: the event names players fire, which of them happen once per impression,
the quartiles' share of the ad. The offsets players report (seconds, or VAST's `HH:MM:SS.mmm` timecode) are the
`duration` field type's (fields/converters.py: `parse_offset`).
"""

from __future__ import annotations

# <Tracking event="..."> names of VAST 4.x (4.2 schema, 4.3 spec §3.14.1), in the spec's order.
TRACKING_EVENTS_4 = (
    # player operation
    "mute",
    "unmute",
    "pause",
    "resume",
    "rewind",
    "skip",
    "playerExpand",
    "playerCollapse",
    "notUsed",
    # linear
    "loaded",
    "start",
    "firstQuartile",
    "midpoint",
    "thirdQuartile",
    "complete",
    "otherAdInteraction",
    "progress",
    "closeLinear",
    # non-linear and companion
    "creativeView",
    "acceptInvitation",
    "adExpand",
    "adCollapse",
    "minimize",
    "close",
    "overlayViewDuration",
    # interactive (SIMID)
    "interactiveStart",
)
# VAST 3 names that VAST 4 replaced or removed, still fired by older players.
TRACKING_EVENTS_3 = ("fullscreen", "exitFullscreen", "expand", "collapse", "acceptInvitationLinear", "timeSpentViewing")
# URLs of other VAST elements, named after the element: <Impression>, <Error>, <ClickTracking>, <CustomClick>,
# <IconClickTracking>, <IconViewTracking>, <ViewableImpression> (<Viewable>, <NotViewable>, <ViewUndetermined>)
# and the verification vendor's <Tracking event="verificationNotExecuted">.
ELEMENT_EVENTS = (
    "impression",
    "error",
    "clickTracking",
    "customClick",
    "iconClickTracking",
    "iconViewTracking",
    "viewable",
    "notViewable",
    "viewUndetermined",
    "verificationNotExecuted",
)
EVENTS = ELEMENT_EVENTS + TRACKING_EVENTS_4 + TRACKING_EVENTS_3

PROGRESS = "progress"
ERROR = "error"
START = "start"
# How much of the ad a quartile event proves was played.
QUARTILES = {"firstQuartile": 0.25, "midpoint": 0.5, "thirdQuartile": 0.75, "complete": 1.0}
# Events a viewer can cause several times during one impression; every other event happens once per impression
# (progress once per offset, error once per code).
REPEATABLE = frozenset(
    {
        "mute",
        "unmute",
        "pause",
        "resume",
        "rewind",
        "playerExpand",
        "playerCollapse",
        "otherAdInteraction",
        "acceptInvitation",
        "adExpand",
        "adCollapse",
        "minimize",
        "fullscreen",
        "exitFullscreen",
        "expand",
        "collapse",
        "acceptInvitationLinear",
        "clickTracking",
        "customClick",
        "iconClickTracking",
    }
)

# VAST error codes are three digits: 100 (XML parsing error) to 902 (SIMID error), 900 "undefined error".
ERROR_CODE_MIN = 100
ERROR_CODE_MAX = 999


def watch_ms(event: str, offset_s: float | None, duration_s: float | None) -> int | None:
    """How far into the ad (ms) an event proves playback went: for a quartile, its share of the ad's duration when
    that is known, or the offset the player sent if it is further; else the offset, 0 for `start`; None when the
    event says nothing about it. A quartile's offset alone falls short: @dailymotion/vast-client fills
    `[ADPLAYHEAD]` with the playhead of its previous progress update, a tick before the quartile was reached."""
    share = QUARTILES.get(event)
    if share is not None and duration_s is not None:
        reached = duration_s * share
        return round(max(reached, offset_s) * 1000) if offset_s is not None else round(reached * 1000)
    if offset_s is not None:
        return round(offset_s * 1000)
    if event == START:
        return 0
    return None
