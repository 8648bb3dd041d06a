"""The `pageview` event-type preset: a config says `preset: pageview` and overrides whatever it needs.

A preset is an ordinary EventTypeSpec, validated by trackpoint like any event type in a config file.
"""

from __future__ import annotations

from trackpoint.config.model import EventTypeSpec, FieldSpec, ResponseSpec

PAGEVIEW = EventTypeSpec(
    paths=["/pv"],
    methods=["GET", "HEAD"],
    fields={
        # Page addresses: untrusted collectors (sqlite is one) get them without query string and fragment.
        "url": FieldSpec(type="url", required=True, max_len=2048),
        # The page's own referrer: the pixel request's Referer header is the page itself, so the tag sends it.
        "ref": FieldSpec(type="url", max_len=2048),
        "uid": FieldSpec(source="cookie", max_len=64),
        "pub": FieldSpec(max_len=64),
    },
    # No dedupe key: every page view counts, each with a time-ordered random id.
    response=ResponseSpec(kind="gif"),
    preprocessors=["anonymize_ip", "parse_user_agent"],
    collectors=["log"],
)

PRESETS = {"pageview": PAGEVIEW}
