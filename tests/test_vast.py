"""VAST video tracking and unexpanded macros: the event list against the spec, offsets in seconds and timecodes,
watch time, the id rule (quartiles once, progress per offset, errors per code, interactions per cache buster),
macro recognition in every field type, and the configuration checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import load_config
from trackpoint.adtech import vast
from trackpoint.config.load import ConfigError
from trackpoint.config.model import EventTypeSpec, FieldSpec, ResponseSpec
from trackpoint.edge.build import EventBuilder
from trackpoint.event import Event, Meta, derived_id
from trackpoint.fields.converters import MacroUnsubstituted, Reject, parse_offset
from trackpoint.fields.macros import MACRO_START, unexpanded
from trackpoint.fields.types import make_converter
from trackpoint.preprocessors import with_input_fields
from trackpoint.preprocessors.vast.config import VastConfig
from trackpoint.preprocessors.vast.preprocessor import Vast

META = Meta(worker=0, config="vast")
VIDEO = load_config().config.event_types["video"]
PREPROCESSOR = Vast("vast", VastConfig())
BUILDER = EventBuilder("video", with_input_fields(VIDEO, (PREPROCESSOR,)), META)


def video(query: str) -> Event:
    event = PREPROCESSOR(BUILDER.build(query.encode(), None, {}, "192.0.2.1"))
    assert event is not None
    return event


def refused(query: str) -> tuple[int, str, str | None]:
    with pytest.raises(Reject) as caught:
        video(query)
    return caught.value.status, caught.value.reason, caught.value.field


# --- the protocol facts --------------------------------------------------------------------------------------


def test_default_video_type_accepts_exactly_the_known_events() -> None:
    values = VIDEO.fields["ev"].values
    assert values is not None and sorted(values) == sorted(vast.EVENTS)
    assert len(set(vast.EVENTS)) == len(vast.EVENTS)
    # The VAST 4.2 schema's <Tracking event> enumeration, plus 4.1's notUsed and SIMID's interactiveStart.
    schema_4_2 = {
        "mute", "unmute", "pause", "resume", "rewind", "skip", "playerExpand", "playerCollapse", "loaded", "start",
        "firstQuartile", "midpoint", "thirdQuartile", "complete", "progress", "closeLinear", "creativeView",
        "acceptInvitation", "adExpand", "adCollapse", "minimize", "close", "overlayViewDuration", "otherAdInteraction",
    }  # fmt: skip
    assert set(vast.TRACKING_EVENTS_4) == schema_4_2 | {"notUsed", "interactiveStart"}
    assert set(vast.EVENTS) >= vast.REPEATABLE
    assert not vast.REPEATABLE & ({vast.PROGRESS, vast.ERROR, vast.START} | set(vast.QUARTILES))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("12.5", 12.5),
        ("0", 0.0),
        (".5", 0.5),
        ("7.", 7.0),
        ("00:00:07.512", 7.512),
        ("00:00:07", 7.0),
        ("01:02:03.004", 3723.004),
        ("120:00:00", 432000.0),
        ("-1", -1.0),
    ],
)
def test_offsets_in_seconds_and_timecodes(text: str, seconds: float) -> None:
    assert parse_offset(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "abc", "1e3", "00:60:00", "00:00:60", "0:0:5", "00:00:05,000", "5s", "nan", "inf", "1" * 13, "25%"]
)
def test_offsets_that_are_neither(text: str) -> None:
    assert parse_offset(text) is None


@given(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
@settings(max_examples=200, deadline=None, database=None)
def test_every_timecode_is_its_seconds(hours: int, minutes: int, seconds: int, millis: int) -> None:
    text = f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"
    assert parse_offset(text) == pytest.approx(hours * 3600 + minutes * 60 + seconds + millis / 1000)


# --- unexpanded macros ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "${AUCTION_ID}",
        "${AUCTION_PRICE:B64}",
        "[ERRORCODE]",
        "[timestamp]",
        "%%CACHEBUSTER%%",
        "{click_id}",
        "{{AUCTION_SEAT_ID}}",
        "%24%7BAUCTION_ID%7D",  # encoded once more than the query string decodes
        "%5BERRORCODE%5D",
        "%5bCACHEBUSTING%5d",
        "%255BERRORCODE%255D",  # twice more
        "%2524%257BAUCTION_LOSS%257D",
    ],
)
def test_unexpanded_macros_are_recognised(raw: str) -> None:
    assert raw[0] in MACRO_START
    assert unexpanded(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "9f1c2a",
        "$5",
        "[1,2]",
        '{"a": 1}',
        "%",
        "%E2%82%AC",
        "${}",
        "${AUCTION_ID",
        "x${AUCTION_ID}",
        "${AUCTION_ID}x",
        "[ERROR CODE]",
        "%%%%",
        "%252525252BAUCTION_ID%25252525D",
    ],
)
def test_other_values_are_not_macros(raw: str) -> None:
    assert not unexpanded(raw)


@given(st.text(max_size=40))
@settings(max_examples=300, deadline=None, database=None)
def test_a_value_not_starting_like_a_macro_never_is_one(raw: str) -> None:
    if raw[:1] not in MACRO_START:
        assert not unexpanded(raw)


@given(st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,20}", fullmatch=True), st.sampled_from(["${%s}", "[%s]", "%%%%%s%%%%"]))
@settings(max_examples=200, deadline=None, database=None)
def test_any_macro_name_is_recognised_plain_and_encoded(name: str, syntax: str) -> None:
    macro = syntax % name
    assert unexpanded(macro)
    assert unexpanded(quote(macro, safe=""))
    assert unexpanded(quote(quote(macro, safe=""), safe=""))


TYPES: list[tuple[str, dict[str, Any], str]] = [
    ("string", {}, "abc"),
    ("int", {}, "42"),
    ("decimal", {}, "1.5"),
    ("money", {}, "2.35"),
    ("price", {}, "2.35"),
    ("duration", {}, "00:00:05"),
    ("enum", {"values": ["a", "b"]}, "a"),
    ("bool", {}, "1"),
    ("timestamp", {}, "1700000000"),
]


@pytest.mark.parametrize(("field_type", "options", "valid"), TYPES, ids=[t[0] for t in TYPES])
def test_every_type_treats_macros_as_absent_when_asked(field_type: str, options: dict[str, Any], valid: str) -> None:
    absent = make_converter("f", FieldSpec(type=field_type, unexpanded_macros="absent", **options))
    keep = make_converter("f", FieldSpec(type=field_type, **options))
    assert absent(valid) == keep(valid)
    for macro in ("[TIMESTAMP]", "${AUCTION_ID}", "%5BERRORCODE%5D"):
        with pytest.raises(MacroUnsubstituted) as caught:
            absent(macro)
        assert (caught.value.status, caught.value.reason, caught.value.field) == (400, "macro_unsubstituted", "f")
        if field_type == "string":
            assert keep(macro) == macro
        else:
            with pytest.raises(Reject) as kept:
                keep(macro)
            assert type(kept.value) is Reject and kept.value.reason == "invalid_field"


def test_a_duration_counts_vast_unknown_values_as_absent() -> None:
    absent = make_converter("t", FieldSpec(type="duration", min=0, unexpanded_macros="absent"))
    keep = make_converter("t", FieldSpec(type="duration", min=0))
    for unknown in ("-1", "-2"):
        with pytest.raises(MacroUnsubstituted):
            absent(unknown)
        with pytest.raises(Reject, match="field_out_of_range"):
            keep(unknown)
    # A negative playhead is never a position: vast-client's "-1:-1:-1.000" before it knows one, too.
    for negative in ("-3", "-0.5", "-1:-1:-1.000"):
        with pytest.raises(MacroUnsubstituted):
            absent(negative)
    with pytest.raises(Reject, match="field_out_of_range"):
        keep("-3")


@pytest.mark.parametrize("field_type", ["int", "decimal", "timestamp"])
def test_numbers_count_vast_unknown_values_as_absent(field_type: str) -> None:
    absent = make_converter("f", FieldSpec(type=field_type, unexpanded_macros="absent"))
    keep = make_converter(
        "f", FieldSpec(type=field_type, min=0) if field_type != "timestamp" else FieldSpec(type=field_type)
    )
    for unknown in ("-1", "-2"):
        with pytest.raises(MacroUnsubstituted):
            absent(unknown)
        with pytest.raises(Reject):
            keep(unknown)


def test_vast_players_error_codes_unknown_and_withheld_are_accepted() -> None:
    for unknown in ("-1", "-2"):
        event = video(f"imp=i-1&ev=error&code={unknown}")
        assert "code" not in event.dims and "invalid" not in event.dims
        assert event.id == derived_id("video", ["i-1", "error"])  # counted once per impression, like [ERRORCODE]


def test_vast_client_before_the_first_progress_sends_an_unknown_playhead() -> None:
    for playhead in ("-1", "-1:-1:-1.000", "[ADPLAYHEAD]"):
        event = video(f"imp=i-1&ev=start&t={quote(playhead)}")
        assert "t" not in event.metrics and "invalid" not in event.dims
        assert event.metrics["watch_ms"] == 0  # start: playback began


def test_progress_dedupes_on_a_bucketed_offset() -> None:
    # Two sessions of one impression fire the 4.5 s progress tracker, each at the playhead it noticed.
    first = video("imp=i-1&ev=progress&t=00:00:04.750")
    assert video("imp=i-1&ev=progress&t=4.8").id == first.id
    assert video("imp=i-1&ev=progress&t=5.01").id != first.id
    assert first.metrics["t"] == 4.75  # the offset itself is kept exactly
    fine = Vast("vast", VastConfig(progress_granularity_s=0.1))
    assert (
        fine(BUILDER.build(b"imp=i-1&ev=progress&t=4.75", None, {}, "")).id
        != fine(BUILDER.build(b"imp=i-1&ev=progress&t=4.8", None, {}, "")).id
    )
    coarse = Vast("vast", VastConfig(progress_granularity_s=5))
    ids = {coarse(BUILDER.build(f"imp=i-1&ev=progress&t={t}".encode(), None, {}, "")).id for t in (5, 7.5, 9.99)}
    assert len(ids) == 1


@pytest.mark.parametrize(
    ("raw", "epoch_ms"),
    [
        ("2026-12-05T06:40:00.123Z", 1796452800123),
        ("2016-01-17T8:15:07.127-08", 1453047307127),  # VAST 4's own example: one-digit hour, hour-only offset
        ("2016-01-17T08:15:07.127-08:00", 1453047307127),
        ("1796452800", 1796452800000),
    ],
)
def test_the_default_video_type_reads_the_timestamp_macro(raw: str, epoch_ms: int) -> None:
    event = video(f"imp=i&ev=impression&ts={quote(raw)}")
    assert event.metrics["client_ts"] == epoch_ms
    assert "client_ts" not in video("imp=i&ev=impression&ts=[TIMESTAMP]").metrics


def test_a_price_keeps_its_own_reasons() -> None:
    price = make_converter("price", FieldSpec(type="price", min=0, max=500, unexpanded_macros="absent"))
    money = make_converter("value", FieldSpec(type="money", min=0, max=500))
    assert price("500") == 500_000_000
    for raw in ("-0.01", "500.000001"):
        with pytest.raises(Reject, match="price_out_of_range"):
            price(raw)
        with pytest.raises(Reject, match="field_out_of_range"):
            money(raw)
    with pytest.raises(MacroUnsubstituted, match="price_macro_unsubstituted"):
        price("${AUCTION_PRICE}")
    with pytest.raises(MacroUnsubstituted, match=r"^macro_unsubstituted$"):
        price("${AUCTION_MIN_TO_WIN}")


def test_the_builder_drops_a_macro_uses_the_default_and_refuses_a_required_one() -> None:
    fields = {
        "id": FieldSpec(required=True, max_len=16, unexpanded_macros="absent"),
        "cur": FieldSpec(max_len=3, default="USD", unexpanded_macros="absent"),
        "seat": FieldSpec(max_len=8, unexpanded_macros="absent"),
        "raw": FieldSpec(max_len=8),
    }
    spec = EventTypeSpec(paths=["/n"], fields=fields, dedupe_key=["id"], response=ResponseSpec(kind="no_content"))
    builder = EventBuilder("n", spec, META)
    event = builder.build(b"id=a&cur=${AUCTION_CURRENCY}&seat=%24%7BAUCTION_SEAT_ID%7D&raw=[X]", None, {}, "")
    assert event.dims == {"id": "a", "cur": "USD", "raw": "[X]"}
    assert event.id == derived_id("n", ["a"])
    # A macro longer than the field's max_len is still a macro, not a value too long; anything else too long is.
    assert builder.build(b"id=a&seat=${AUCTION_SEAT_ID}", None, {}, "").dims == {"id": "a", "cur": "USD"}
    for query, reason, field in [
        (b"id=${AUCTION_IMP_ID}", "macro_unsubstituted", "id"),
        (b"id=%5BIMPID%5D", "macro_unsubstituted", "id"),
        (b"id=a&seat=123456789", "field_too_long", "seat"),
        (b"id=a&raw=${AUCTION_ID}", "field_too_long", "raw"),
    ]:
        with pytest.raises(Reject) as caught:
            builder.build(query, None, {}, "")
        assert (caught.value.reason, caught.value.field) == (reason, field)


# --- the preprocessor ----------------------------------------------------------------------------------------


def test_watch_time_from_the_offset_start_and_quartiles() -> None:
    assert video("imp=i&ev=progress&t=00:00:05.250").metrics == {"t": 5.25, "watch_ms": 5250}
    assert video("imp=i&ev=pause&t=12").metrics["watch_ms"] == 12_000
    assert video("imp=i&ev=start").metrics == {"watch_ms": 0}
    assert video("imp=i&ev=midpoint&dur=30").metrics == {"dur": 30.0, "watch_ms": 15_000}
    assert video("imp=i&ev=thirdQuartile&dur=00:00:15").metrics["watch_ms"] == 11_250
    # A quartile proves its share of the ad; vast-client's [ADPLAYHEAD] is the playhead a progress update earlier.
    assert video("imp=i&ev=firstQuartile&dur=10&t=00:00:02.250").metrics["watch_ms"] == 2_500
    assert video("imp=i&ev=complete&dur=15&t=14.9").metrics["watch_ms"] == 15_000
    assert video("imp=i&ev=midpoint&dur=10&t=5.3").metrics["watch_ms"] == 5_300  # a playhead further on: it
    assert video("imp=i&ev=midpoint&t=4.75").metrics["watch_ms"] == 4_750  # no duration: the offset is all there is
    assert video("imp=i&ev=firstQuartile").metrics == {}  # no offset, no duration: nothing to say
    assert video("imp=i&ev=impression&dur=30").metrics == {"dur": 30.0}


def test_quartiles_count_once_per_impression() -> None:
    first = video("imp=i-1&ev=firstQuartile&t=7.5&cb=11111111")
    again = video("imp=i-1&ev=firstQuartile&t=7.52&cb=22222222")
    assert first.id == again.id == derived_id("video", ["i-1", "firstQuartile"])
    assert video("imp=i-1&ev=midpoint").id != first.id
    assert video("imp=i-2&ev=firstQuartile").id != first.id


def test_progress_events_are_distinct_per_offset_and_need_one() -> None:
    five = video("imp=i-1&ev=progress&t=5")
    assert video("imp=i-1&ev=progress&t=00:00:05.000").id == five.id  # the same offset, however written
    assert video("imp=i-1&ev=progress&t=10").id != five.id
    assert five.id == derived_id("video", [derived_id("video", ["i-1", "progress"]), "5000"])
    assert video("imp=i-1&ev=progress&t=5.25").id == five.id  # within the same second (progress_granularity_s)
    for query in ("imp=i&ev=progress", "imp=i&ev=progress&t=[ADPLAYHEAD]", "imp=i&ev=progress&t=-1"):
        assert refused(query) == (400, "missing_field", "t")


def test_errors_are_distinct_per_code() -> None:
    e402 = video("imp=i-1&ev=error&code=402")
    assert e402.dims["code"] == "402"
    assert video("imp=i-1&ev=error&code=402&cb=123").id == e402.id
    assert video("imp=i-1&ev=error&code=405").id != e402.id
    unknown = video("imp=i-1&ev=error&code=[ERRORCODE]")
    assert "code" not in unknown.dims
    assert unknown.id == derived_id("video", ["i-1", "error"])  # an error without its code: once per impression
    assert video("imp=i&ev=error&code=1009").dims["invalid"] == "code:field_out_of_range"  # kept, flagged
    assert video("imp=i&ev=error&code=99").dims["invalid"] == "code:field_out_of_range"


def test_interactions_repeat_per_cache_buster_else_per_offset() -> None:
    pause = video("imp=i-1&ev=pause&cb=12345678&t=4")
    assert "cb" not in pause.dims
    assert video("imp=i-1&ev=pause&cb=12345678&t=4").id == pause.id  # a retried request
    assert video("imp=i-1&ev=pause&cb=87654321&t=4").id != pause.id  # a second pause at the same point
    assert video("imp=i-1&ev=pause&t=4").id != video("imp=i-1&ev=pause&t=9").id
    bare = video("imp=i-1&ev=pause&cb=[CACHEBUSTING]")
    assert bare.id == video("imp=i-1&ev=pause").id == derived_id("video", ["i-1", "pause"])


def test_preprocessor_declares_the_fields_it_reads() -> None:
    fields = PREPROCESSOR.input_fields
    assert set(fields) == {"ev", "t", "dur", "code", "cb"}
    for name in ("ev", "t", "dur", "code", "cb"):
        declared = VIDEO.fields[name]
        assert (declared.type, declared.into) == (fields[name].type, fields[name].into), name
    bare = EventTypeSpec(paths=["/x"], fields={"imp": FieldSpec(required=True)}, preprocessors=["vast"])
    assert set(with_input_fields(bare, (PREPROCESSOR,)).fields) == {"imp", "ev", "t", "dur", "code", "cb"}


def test_config_check_names_fields_declared_where_vast_does_not_look(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "event_types:\n"
        "  video:\n"
        "    preset: video\n"
        "    fields:\n"
        "      imp: {required: true}\n"
        "      ev: {type: enum, values: [start]}\n"
        "      t: {max_len: 16}\n"
        "      code: {type: int}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "event_types.video.fields.t" in message and "reads 't' from metrics: declare it a duration" in message
    assert "event_types.video.fields.code" in message and "reads 'code' from dims" in message
    assert "fields.ev" not in message
