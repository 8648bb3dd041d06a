"""Real-world VAST and OpenRTB tracking URLs, as players and exchanges send them (macros substituted or not, encoded
once, twice or not at all), and the event each must become or the reason it is refused: run through the default
configuration's event builders and preprocessors, then the same table against a running tracker."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from conftest import load_config
from trackpoint.adtech.auction import LOSS_MACROS, WIN_MACROS, notice_url
from trackpoint.edge.build import EventBuilder
from trackpoint.event import Event, Meta
from trackpoint.fields.converters import Reject
from trackpoint.plugins import registry
from trackpoint.preprocessors import Preprocessor, with_input_fields

CONFIG = load_config().config
META = Meta(worker=0, config="urls")


@dataclass(frozen=True)
class Recorded:
    """The event a URL must produce: its type, dims and metrics exactly."""

    type: str
    dims: dict[str, str]
    metrics: dict[str, int | float] = field(default_factory=dict)

    @property
    def logged_dims(self) -> dict[str, str]:
        """The dims as recorded: the default config checks consent on browser events (video here), whose outcome
        joins the dims; exchange notices (win, billing, loss) carry no consent signals."""
        return self.dims | {"consent": "not_applicable"} if self.type == "video" else self.dims


@dataclass(frozen=True)
class Refused:
    """The rejection a URL must get."""

    reason: str
    field: str | None
    status: int = 400


AUCTION = "4f3c1a5e-8d2b-4b8a-9a51-0c7e2e6f1b2d"
CASES: list[tuple[str, str, Recorded | Refused]] = [
    # --- VAST: what players fire ---------------------------------------------------------------------------------
    (
        "ima-quartile-all-macros-substituted",  # VAST 4 players send the timecode URL-encoded
        "/v?imp=vx-01&ev=firstQuartile&t=00%3A00%3A07.512&cb=48213371&cid=c-77&crid=cr-9",
        Recorded(
            "video",
            {"imp": "vx-01", "ev": "firstQuartile", "cid": "c-77", "crid": "cr-9"},
            {"t": 7.512, "watch_ms": 7512},
        ),
    ),
    (
        "vast3-player-leaves-macros-literal",
        "/v?imp=vx-02&ev=midpoint&t=[ADPLAYHEAD]&cb=[CACHEBUSTING]",
        Recorded("video", {"imp": "vx-02", "ev": "midpoint"}),
    ),
    (
        "macro-brackets-percent-encoded",
        "/v?imp=vx-03&ev=thirdQuartile&t=%5BADPLAYHEAD%5D&dur=30",
        Recorded("video", {"imp": "vx-03", "ev": "thirdQuartile"}, {"dur": 30.0, "watch_ms": 22500}),
    ),
    (
        "wrapper-encoded-the-url-twice",
        "/v?imp=vx-04&ev=complete&t=%255BCONTENTPLAYHEAD%255D&dur=00%3A00%3A15.000",
        Recorded("video", {"imp": "vx-04", "ev": "complete"}, {"dur": 15.0, "watch_ms": 15000}),
    ),
    (
        "vast41-unknown-playhead-is-minus-one",
        "/v?imp=vx-05&ev=start&t=-1",
        Recorded("video", {"imp": "vx-05", "ev": "start"}, {"watch_ms": 0}),
    ),
    (
        "progress-timecode-unencoded",
        "/v?imp=vx-06&ev=progress&t=00:00:10.000&cb=10293847",
        Recorded("video", {"imp": "vx-06", "ev": "progress"}, {"t": 10.0, "watch_ms": 10000}),
    ),
    (
        "progress-offset-from-the-ad-server",
        "/v?imp=vx-07&ev=progress&t=15",
        Recorded("video", {"imp": "vx-07", "ev": "progress"}, {"t": 15.0, "watch_ms": 15000}),
    ),
    ("progress-without-its-offset", "/v?imp=vx-08&ev=progress&t=[ADPLAYHEAD]", Refused("missing_field", "t")),
    (
        "error-code-substituted",
        "/v?imp=vx-09&ev=error&code=402&t=00%3A00%3A00.000",
        Recorded("video", {"imp": "vx-09", "ev": "error", "code": "402"}, {"t": 0.0, "watch_ms": 0}),
    ),
    (
        "error-code-left-literal",
        "/v?imp=vx-10&ev=error&code=[ERRORCODE]",
        Recorded("video", {"imp": "vx-10", "ev": "error"}),
    ),
    (
        "error-code-left-encoded",
        "/v?imp=vx-11&ev=error&code=%5BERRORCODE%5D",
        Recorded("video", {"imp": "vx-11", "ev": "error"}),
    ),
    (
        "error-code-left-encoded-twice",
        "/v?imp=vx-12&ev=error&code=%255BERRORCODE%255D",
        Recorded("video", {"imp": "vx-12", "ev": "error"}),
    ),
    (  # a pixel: the error is kept, the bad code dropped and named
        "error-code-not-vast",
        "/v?imp=vx-13&ev=error&code=1009",
        Recorded("video", {"imp": "vx-13", "ev": "error", "invalid": "code:field_out_of_range"}),
    ),
    (  # VAST 4's own [TIMESTAMP] example: a one-digit hour, an hour-only offset
        "impression-with-a-vast4-timestamp",
        "/v?imp=vx-14&ev=impression&ts=2016-01-17T8%3A15%3A07.127-05&cb=93847162",
        Recorded("video", {"imp": "vx-14", "ev": "impression"}, {"client_ts": 1453036507127}),
    ),
    (
        "impression-timestamp-and-cachebuster-literal",
        "/v?imp=vx-15&ev=impression&ts=[TIMESTAMP]&cb=[CACHEBUSTING]",
        Recorded("video", {"imp": "vx-15", "ev": "impression"}),
    ),
    (
        "ad-server-cachebuster-macro-encoded",
        "/v?imp=vx-16&ev=mute&cb=%25%25CACHEBUSTER%25%25&t=3",
        Recorded("video", {"imp": "vx-16", "ev": "mute"}, {"t": 3.0, "watch_ms": 3000}),
    ),
    (
        # Left raw, `%%CACHEBUSTER%%` is not even valid URL encoding (`%CA` decodes to a lone byte).
        "ad-server-cachebuster-macro-raw",
        "/v?imp=vx-17&ev=mute&cb=%%CACHEBUSTER%%",
        Recorded("video", {"imp": "vx-17", "ev": "mute", "invalid": "cb:invalid_encoding"}),
    ),
    (
        "vast3-fullscreen",
        "/v?imp=vx-18&ev=fullscreen&t=8.25&cb=5551212",
        Recorded("video", {"imp": "vx-18", "ev": "fullscreen"}, {"t": 8.25, "watch_ms": 8250}),
    ),
    ("event-name-in-the-wrong-case", "/v?imp=vx-19&ev=FirstQuartile", Refused("invalid_field", "ev")),
    # A player that does not XML-decode the <Tracking> URL sends `&amp;`: the parameter is then `amp;ev`.
    ("xml-escaped-ampersands", "/v?imp=vx-20&amp;ev=start", Refused("missing_field", "ev")),
    (
        "impression-id-macro-unexpanded",
        "/v?imp=%24%7BAUCTION_IMP_ID%7D&ev=start",
        Refused("macro_unsubstituted", "imp"),
    ),
    (
        "verification-not-executed",
        "/v?imp=vx-22&ev=verificationNotExecuted&reason=2",
        Recorded("video", {"imp": "vx-22", "ev": "verificationNotExecuted"}),
    ),
    ("viewable-impression", "/v?imp=vx-23&ev=viewable", Recorded("video", {"imp": "vx-23", "ev": "viewable"})),
    (
        "click-tracking-with-playhead",
        "/v?imp=vx-24&ev=clickTracking&t=00%3A00%3A04.100&cb=77777777",
        Recorded("video", {"imp": "vx-24", "ev": "clickTracking"}, {"t": 4.1, "watch_ms": 4100}),
    ),
    # A negative playhead is never a position: unknown, as VAST's -1 (vast-client sends it before it knows one).
    ("negative-offset", "/v?imp=vx-25&ev=pause&t=-5", Recorded("video", {"imp": "vx-25", "ev": "pause"})),
    (
        "every-vast-macro-left-literal",  # VAST 4 macros a player fills: none of them ever becomes a value
        "/v?imp=vx-27&ev=error&code=[ERRORCODE]&t=[CONTENTPLAYHEAD]&dur=[MEDIAPLAYHEAD]&cb=[CACHEBUSTING]"
        "&ts=[TIMESTAMP]",
        Recorded("video", {"imp": "vx-27", "ev": "error"}),
    ),
    (
        "content-playhead-literal-on-a-quartile",
        "/v?imp=vx-28&ev=midpoint&t=[CONTENTPLAYHEAD]&dur=20",
        Recorded("video", {"imp": "vx-28", "ev": "midpoint"}, {"dur": 20.0, "watch_ms": 10000}),
    ),
    (
        "progress-with-the-content-playhead-unexpanded",
        "/v?imp=vx-29&ev=progress&t=%5BCONTENTPLAYHEAD%5D",
        Refused("missing_field", "t"),
    ),
    ("offset-beyond-a-day", "/v?imp=vx-26&ev=progress&t=25:00:00", Refused("field_out_of_range", "t")),
    # --- OpenRTB: what exchanges call ----------------------------------------------------------------------------
    (
        "win-every-macro-substituted",
        f"/win?imp=dsp-01&cid=c-77&crid=cr-9&price=1.85&cur=USD&auction={AUCTION}&bid=b-77&auction_imp=1"
        "&seat=seat-42&ad=ad-9&mbr=0.83",
        Recorded(
            "win",
            {
                "imp": "dsp-01",
                "cid": "c-77",
                "crid": "cr-9",
                "cur": "USD",
                "auction": AUCTION,
                "bid": "b-77",
                "auction_imp": "1",
                "seat": "seat-42",
                "ad": "ad-9",
            },
            {"price": 1_850_000, "mbr": 0.83},
        ),
    ),
    (
        "win-price-unsubstituted",
        "/win?imp=dsp-02&price=${AUCTION_PRICE}&cur=${AUCTION_CURRENCY}",
        Refused("price_macro_unsubstituted", "price"),
    ),
    (
        "win-price-unsubstituted-encoded",
        "/win?imp=dsp-03&price=%24%7BAUCTION_PRICE%7D",
        Refused("price_macro_unsubstituted", "price"),
    ),
    (
        "win-encrypted-price-macro-unsubstituted",
        "/win?imp=dsp-04&price=${AUCTION_PRICE:B64}",
        Refused("price_macro_unsubstituted", "price"),
    ),
    (
        "win-optional-macros-unsubstituted",
        "/win?imp=dsp-05&price=0.42&cur=${AUCTION_CURRENCY}&auction=${AUCTION_ID}&bid=%24%7BAUCTION_BID_ID%7D"
        "&auction_imp=${AUCTION_IMP_ID}&seat=${AUCTION_SEAT_ID}&ad=%2524%257BAUCTION_AD_ID%257D&mbr=${AUCTION_MBR}",
        Recorded("win", {"imp": "dsp-05", "cur": "USD"}, {"price": 420_000}),
    ),
    ("win-negative-price", "/win?imp=dsp-06&price=-0.5", Refused("price_out_of_range", "price")),
    ("win-absurd-price", "/win?imp=dsp-07&price=250000", Refused("price_out_of_range", "price")),
    ("win-price-in-exponent-notation", "/win?imp=dsp-08&price=1e3", Refused("invalid_field", "price")),
    (
        "win-price-beyond-micros-rounds-half-up",
        "/win?imp=dsp-09&price=0.1234565",
        Recorded("win", {"imp": "dsp-09", "cur": "USD"}, {"price": 123_457}),
    ),
    (
        "win-impression-id-is-an-exchange-macro",
        "/win?imp=${AUCTION_IMP_ID}&price=1",
        Refused("macro_unsubstituted", "imp"),
    ),
    (
        "win-in-euros",
        "/win?imp=dsp-11&price=2&cur=EUR",
        Recorded("win", {"imp": "dsp-11", "cur": "EUR"}, {"price": 2_000_000}),
    ),
    (
        "billing-notice",
        "/bill?imp=dsp-12&price=1.85&cur=USD&auction=a-1&bid=b-1",
        Recorded("billing", {"imp": "dsp-12", "cur": "USD", "auction": "a-1", "bid": "b-1"}, {"price": 1_850_000}),
    ),
    (
        "billing-price-unsubstituted",
        "/bill?imp=dsp-13&price=${AUCTION_PRICE}",
        Refused("price_macro_unsubstituted", "price"),
    ),
    (
        "loss-to-a-higher-bid",
        "/loss?imp=dsp-14&loss=102&price=2.10&min_to_win=2.11&cur=USD&auction=a-2",
        Recorded(
            "loss",
            {"imp": "dsp-14", "loss": "102", "cur": "USD", "auction": "a-2"},
            {"price": 2_100_000, "min_to_win": 2_110_000},
        ),
    ),
    (
        "loss-macros-unsubstituted",
        "/loss?imp=dsp-15&loss=${AUCTION_LOSS}&price=${AUCTION_PRICE}&min_to_win=${AUCTION_MIN_TO_WIN}",
        Recorded("loss", {"imp": "dsp-15", "cur": "USD"}),
    ),
    (
        "loss-exchange-specific-code",
        "/loss?imp=dsp-16&loss=1001",
        Recorded("loss", {"imp": "dsp-16", "loss": "1001", "cur": "USD"}),
    ),
    # -1 and -2 are the IAB macros' unknown and withheld: the notice is kept without a loss code.
    ("loss-unknown-code", "/loss?imp=dsp-17&loss=-1", Recorded("loss", {"imp": "dsp-17", "cur": "USD"})),
    ("loss-negative-code", "/loss?imp=dsp-19&loss=-3", Refused("field_out_of_range", "loss")),
    (
        "loss-below-floor",
        "/loss?imp=dsp-18&loss=100&min_to_win=0.50",
        Recorded("loss", {"imp": "dsp-18", "loss": "100", "cur": "USD"}, {"min_to_win": 500_000}),
    ),
]
IDS = [case[0] for case in CASES]


class Pipeline:
    """The default configuration's route → build → preprocess, without the network."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[EventBuilder, tuple[Preprocessor, ...]]] = {}
        for name, spec in CONFIG.event_types.items():
            preprocessors = tuple(registry().build_preprocessor(p, CONFIG.preprocessors[p]) for p in spec.preprocessors)
            builder = EventBuilder(name, with_input_fields(spec, preprocessors), META)
            for path in spec.paths:
                self.routes[path] = (builder, preprocessors)

    def __call__(self, target: str) -> Event:
        path, _, query = target.partition("?")
        builder, preprocessors = self.routes[path]
        event: Event | None = builder.build(query.encode(), None, {b"user-agent": b"Player/1.0"}, "203.0.113.9")
        for preprocess in preprocessors:
            assert event is not None
            event = preprocess(event)
        assert event is not None
        return event


PIPELINE = Pipeline()


@pytest.mark.parametrize(("name", "target", "expected"), CASES, ids=IDS)
def test_url_becomes_its_event_or_its_rejection(name: str, target: str, expected: Recorded | Refused) -> None:
    if isinstance(expected, Refused):
        with pytest.raises(Reject) as caught:
            PIPELINE(target)
        assert (caught.value.status, caught.value.reason, caught.value.field) == (
            expected.status,
            expected.reason,
            expected.field,
        )
        return
    event = PIPELINE(target)
    assert (event.type, event.dims, event.metrics) == (expected.type, expected.logged_dims, expected.metrics)
    assert all(type(value) is int for key, value in event.metrics.items() if key in ("price", "min_to_win"))
    assert not any(value.startswith(("$", "[", "%", "{")) for value in event.dims.values())


def _substituted(macros: dict[str, str], values: dict[str, str]) -> dict[str, str]:
    return {name: values[name] for name in macros}


def test_notice_url_templates_of_the_readme() -> None:
    win_template = notice_url("/win", "dsp-t1", WIN_MACROS, cid="c-1")
    assert "price=${AUCTION_PRICE}" in win_template and win_template.startswith("/win?imp=dsp-t1&cid=c-1&")
    with pytest.raises(Reject, match="price_macro_unsubstituted"):
        PIPELINE(win_template)  # the exchange substituted nothing
    values = {
        "price": "3.20",
        "cur": "USD",
        "auction": AUCTION,
        "bid": "bid-1",
        "auction_imp": "1",
        "seat": "s-1",
        "ad": "ad-1",
        "mbr": "0.9",
        "loss": "102",
        "min_to_win": "3.21",
    }
    bidder = {"cur": "USD"}  # a win's and a bill's currency is the bid's, written (and signed) by the bidder
    for path, macros, fixed in (
        ("/win", WIN_MACROS, bidder),
        ("/bill", WIN_MACROS, bidder),
        ("/loss", LOSS_MACROS, {}),
    ):
        template = notice_url(path, "dsp-t2", macros, **fixed)
        for name, value in _substituted(macros, values).items():
            template = template.replace(macros[name], value)
        event = PIPELINE(template)
        assert set(event.dims) | set(event.metrics) == {"imp", *fixed, *macros}
    loss = PIPELINE(notice_url("/loss", "dsp-t3", LOSS_MACROS))  # nothing substituted: still a loss, no details
    assert (loss.type, loss.dims, loss.metrics) == ("loss", {"imp": "dsp-t3", "cur": "USD"}, {})


# --- end to end: the same URLs against a running tracker ------------------------------------------------------

SPEND_PATHS = ("/win?", "/bill?")


def _as_sent(tracker: Any, target: str) -> str:
    """Win and billing notices as a DSP's signed nurl / burl after the exchange's substitutions (the table keeps
    what the exchange sends; the default config signs the DSP's own fields)."""
    return tracker.sign(target) if target.startswith(SPEND_PATHS) else target


def test_the_table_against_a_running_tracker(tracker: Any) -> None:
    for name, target, expected in CASES:
        status, headers, body = tracker.get(_as_sent(tracker, target), {"User-Agent": "Player/1.0"})
        if isinstance(expected, Refused):
            assert (status, headers.get("x-reject-reason")) == (expected.status, expected.reason), name
            assert json.loads(body) == {"error": expected.reason, "field": expected.field}, name
        else:
            assert status == (200 if expected.type == "video" else 204), (name, status, body)
    recorded = [expected for _, _, expected in CASES if isinstance(expected, Recorded)]
    events = tracker.wait_events(len(recorded))
    assert len(events) == len(recorded)
    logged = {(e.type, e.dims["imp"]): e for e in events}
    for expected in recorded:
        event = logged[(expected.type, expected.dims["imp"])]
        assert (event.dims, event.metrics) == (expected.logged_dims, expected.metrics)
    refused = [expected.reason for _, _, expected in CASES if isinstance(expected, Refused)]
    for reason in ("macro_unsubstituted", "price_macro_unsubstituted", "price_out_of_range"):
        count = tracker.wait_metric("trackpoint_rejected_total", f'reason="{reason}"', refused.count(reason))
        assert count == refused.count(reason), reason


def test_repeats_and_retries_against_a_running_tracker(tracker: Any) -> None:
    fired = [
        "/v?imp=e2e-1&ev=firstQuartile&t=7.5&cb=11111111",
        "/v?imp=e2e-1&ev=firstQuartile&t=7.52&cb=22222222",  # fired again: the same quartile, once
        "/v?imp=e2e-1&ev=progress&t=00%3A00%3A05.000",
        "/v?imp=e2e-1&ev=progress&t=5",  # a retry of the same offset
        "/v?imp=e2e-1&ev=progress&t=10",
        "/v?imp=e2e-1&ev=error&code=402",
        "/v?imp=e2e-1&ev=error&code=405",
        "/v?imp=e2e-1&ev=pause&cb=31415926&t=3",
        "/v?imp=e2e-1&ev=pause&cb=27182818&t=3",  # a second pause at the same point
        "/win?imp=e2e-1&price=1.5&seat=${AUCTION_SEAT_ID}",
        "/win?imp=e2e-1&price=1.5&seat=seat-1",  # the exchange retried the notice
        "/bill?imp=e2e-1&price=1.5",
    ]
    for target in fired:
        assert tracker.get(_as_sent(tracker, target))[0] in (200, 204), target
    events = tracker.wait_events(len(fired))
    assert len(events) == len(fired)
    ids: dict[str, set[str]] = {}
    for event in events:
        ids.setdefault(f"{event.type}:{event.dims.get('ev', '')}", set()).add(event.id)
    assert {key: len(value) for key, value in ids.items()} == {
        "video:firstQuartile": 1,
        "video:progress": 2,
        "video:error": 2,
        "video:pause": 2,
        "win:": 1,
        "billing:": 1,
    }
    assert ids["win:"] != ids["billing:"]  # the same impression's win and billing notices are two events
