"""What untrusted collectors get when plugins push: a trusted collector that changes the events it sends, a plugin's
preprocessor reading a cookie and a header, a dedupe key read from the client, a spool written under a more trusted
config, and page URLs in dims. In-process with the plugin of tests/privacy_plugin.py, then end to end through
`trackpoint run` with the plugin found through its entry point and a real Redis Streams collector.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
import yaml
from redis.asyncio import Redis

from conformance.target_redis_streams import RedisStreamsTarget, make_target
from conftest import CHROME_UA, Tracker, load_config
from privacy_plugin import ReadClientConfig, Recorder, entry_points_site
from privacy_plugin import plugin as privacy_probe
from trackpoint import replay as replaying
from trackpoint.collectors import Collector, CollectorContext
from trackpoint.collectors.log.reader import read_events
from trackpoint.config.load import ConfigError, load
from trackpoint.edge.pipeline import EdgeProtocol
from trackpoint.edge.runtime import Edge
from trackpoint.event import Context, Device, Event, Meta
from trackpoint.plugins import Plugin, PreprocessorKind, resolve
from trackpoint.plugins.builtin import plugin as builtin_plugin
from trackpoint.preprocessors import Preprocessor
from trackpoint.privacy.filter import PrivacyFilter, clean_referer

TESTS = Path(__file__).resolve().parent
REGISTRY = resolve([builtin_plugin, privacy_probe])
PAGE = "https://shop.example/checkout?email=john%40example.org#token=s3cret"
REFERRER = "https://user:pw@search.example/results?q=john+doe"
# What must never reach an untrusted collector of these tests: the client's IP and User-Agent (raw or copied into a
# dim), the e-mail cookie and X-Real-IP header a plugin's preprocessor reads, the queries of the page URLs.
PERSONAL = (b"127.0.0.1", b"198.51.100.23", b"Chrome/120", b"john", b"s3cret", b"user:pw", b"seen_", b"meddled")


class _Transport:
    """A client connection's transport, keeping nothing: what matters here is what the collectors get."""

    def write(self, data: bytes) -> None: ...

    def writelines(self, chunks: list[bytes]) -> None: ...

    def close(self) -> None: ...

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else None

    def get_write_buffer_size(self) -> int:
        return 0


def _config(tmp_path: Path, collectors: dict[str, Any], event_type: dict[str, Any]) -> Path:
    document = {
        "data_dir": str(tmp_path / "data"),
        "collectors": {"log": {"type": "log"}, **collectors},
        "event_types": {"visit": {"paths": ["/visit"], "collectors": ["log", *collectors], **event_type}},
    }
    path = tmp_path / "trackpoint.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


VISIT_FIELDS = {"cid": {}, "url": {"type": "url", "max_len": 2048}, "ref": {"type": "url", "max_len": 2048}}
VISIT = (
    "GET /visit?cid=c1&url=https%3A%2F%2Fshop.example%2Fcheckout%3Femail%3Djohn%2540example.org%23token%3Ds3cret"
    "&ref=https%3A%2F%2Fuser%3Apw%40search.example%2Fresults%3Fq%3Djohn%2Bdoe HTTP/1.1\r\nHost: t\r\n"
    f"User-Agent: {CHROME_UA}\r\nCookie: email=john@example.org\r\nX-Real-IP: 198.51.100.23\r\n"
    "Referer: https://news.example/a?email=john@example.org\r\n\r\n"
).encode()


READ_CLIENT = {"fields": VISIT_FIELDS, "preprocessors": ["read_client"]}


def _visit_edge(
    tmp_path: Path,
    collectors: dict[str, Any],
    event_type: dict[str, Any] = READ_CLIENT,
    meddle: Callable[[Edge], Any] | None = None,
) -> tuple[Edge, list[Event]]:
    """An edge of the `visit` type (by default: url fields, the plugin's read_client preprocessor) that got one
    VISIT; `meddle` flushes first (the trusted meddler's send), then every other collector flushes. The events the
    untrusted `partner` recorder was sent, decoded."""
    path = _config(tmp_path, collectors, event_type)
    loaded = load(path, registry=REGISTRY)
    Recorder.sent.clear()

    async def run() -> Edge:
        edge = Edge(loaded.config, loaded.version, 0, REGISTRY)
        await edge.start_collectors()
        protocol = EdgeProtocol(edge)
        protocol.connection_made(_Transport())  # type: ignore[arg-type]
        protocol.data_received(VISIT)
        await asyncio.sleep(0)  # the log's group commit, then the other collectors are offered the event
        if meddle is not None:
            await meddle(edge)
        for collector in edge.collectors.values():
            await collector.flush()
        protocol.connection_lost(None)
        for collector in edge.collectors.values():
            await collector.close(1.0)
        return edge

    edge = asyncio.run(run())
    return edge, [msgspec.json.decode(line, type=Event) for line in Recorder.sent.get("partner", [])]


LAZY = {"flush_interval_ms": 60_000}  # only the test's own flush() sends
PARTNER = {"type": "recorder", **LAZY}


def test_a_trusted_collector_that_changes_its_events_changes_nothing_an_untrusted_one_gets(tmp_path: Path) -> None:
    """The probe's case: an event type with nothing private of its own, so the partner's filter has no dim to take
    away; the meddler's send() still must not reach the partner's copy."""
    meddler = {"type": "meddler", "trusted": True, **LAZY}
    _, [sent] = _visit_edge(
        tmp_path,
        {"meddler": meddler, "partner": PARTNER},
        {"fields": {"cid": {}}},
        lambda edge: edge.collectors["meddler"].flush(),
    )
    assert sent.dims == {"cid": "c1"} and sent.metrics == {}  # the meddler popped cid from its own events only
    assert sent.ctx.referer == "https://news.example/a" and sent.ctx.ip is None and sent.ctx.ua is None
    assert not [marker for marker in PERSONAL if marker in msgspec.json.encode(sent)]


def test_shared_parts_of_an_event_cannot_be_changed() -> None:
    """ctx.device (one per User-Agent, parse_user_agent's cache) and meta (one per worker) are shared by every
    collector's copy: they are immutable, so no collector can write into what another one sends."""
    event = Event("e1", "t", 1, {"a": "1"}, {}, Context(ip="1.2.3.4", device=Device(browser="Chrome")), Meta(0, "v"))
    copy = PrivacyFilter(trusted=False, allow=None, deny=[])(event)
    assert copy.ctx.device is event.ctx.device and copy.meta is event.meta
    for shared, member in ((event.ctx.device, "os"), (event.meta, "config")):
        with pytest.raises(AttributeError):
            setattr(shared, member, "1.2.3.4")
    event.dims["b"] = "2"
    event.metrics["m"] = 1
    assert copy.dims == {"a": "1"} and copy.metrics == {}


def test_fields_a_plugins_preprocessor_reads_from_the_client_stay_private(tmp_path: Path) -> None:
    """read_client declares `email` (a cookie) and `real_ip` (X-Real-IP) as input fields: neither the partner nor the
    dashboard's tail gets them, unless a collector's send_private names one; the log (trusted) keeps them."""
    vendor = {"type": "recorder", "send_private": ["email"], **LAZY}
    edge, [sent] = _visit_edge(tmp_path, {"partner": PARTNER, "vendor": vendor})
    assert "email" not in sent.dims and "real_ip" not in sent.dims and sent.dims["cid"] == "c1"
    [vendor_event] = [msgspec.json.decode(line, type=Event) for line in Recorder.sent["vendor"]]
    assert vendor_event.dims["email"] == "john@example.org" and "real_ip" not in vendor_event.dims
    [logged] = list(_logged(tmp_path))
    assert (logged.dims["email"], logged.dims["real_ip"]) == ("john@example.org", "198.51.100.23")
    [taken] = edge.recent.take()  # the dashboard's newest events
    shown = msgspec.msgpack.decode(taken, type=Event)
    assert not [marker for marker in PERSONAL if marker in msgspec.json.encode(shown)]
    assert shown.dims["cid"] == "c1" and shown.dims["url"] == "https://shop.example/checkout"


def test_replay_keeps_what_a_plugins_preprocessor_reads_from_the_client_private(tmp_path: Path) -> None:
    """The log holds the e-mail and X-Real-IP read_client read; replayed into the partner, they stay behind as
    they did live (replay builds the preprocessors to know their input fields)."""
    _visit_edge(tmp_path, {"partner": PARTNER})
    Recorder.sent.clear()
    config = load(tmp_path / "trackpoint.yaml", registry=REGISTRY).config
    replay_plan = replaying.plan(config, collectors=["partner"])
    collectors = replaying.build_collectors(config, replay_plan, REGISTRY)
    report = asyncio.run(replaying.replay([tmp_path / "data" / "logs"], collectors, replay_plan))
    assert report.collectors["partner"].sent == 1
    [sent] = [msgspec.json.decode(line, type=Event) for line in Recorder.sent["partner"]]
    assert sent.dims == {"cid": "c1", "url": "https://shop.example/checkout", "ref": "https://search.example/results"}


def test_replay_that_cannot_tell_what_a_preprocessor_reads_sends_nothing(tmp_path: Path) -> None:
    _visit_edge(tmp_path, {"partner": PARTNER})
    config = load(tmp_path / "trackpoint.yaml", registry=REGISTRY).config

    def unbuildable(name: str, options: ReadClientConfig) -> Preprocessor:
        raise OSError("its database is gone")

    failing = PreprocessorKind(ReadClientConfig, unbuildable)
    broken = resolve(
        [builtin_plugin, Plugin("privacy_probe", collectors=privacy_probe.collectors, preprocessors=[failing])]
    )
    with pytest.raises(replaying.ReplayError, match="preprocessor read_client cannot be built"):
        replaying.build_collectors(config, replaying.plan(config, collectors=["partner"]), broken)


def _logged(tmp_path: Path) -> Iterator[Event]:
    return read_events([tmp_path / "data" / "logs"])


def test_url_fields_reach_untrusted_collectors_without_query_fragment_or_user_info(tmp_path: Path) -> None:
    _, [sent] = _visit_edge(tmp_path, {"partner": PARTNER, "whole": {"type": "recorder", "send_private": ["url"]}})
    assert (sent.dims["url"], sent.dims["ref"]) == ("https://shop.example/checkout", "https://search.example/results")
    [whole] = [msgspec.json.decode(line, type=Event) for line in Recorder.sent["whole"]]
    assert whole.dims["url"] == PAGE and whole.dims["ref"] == "https://search.example/results"  # only url opted in
    [logged] = list(_logged(tmp_path))
    assert (logged.dims["url"], logged.dims["ref"]) == (PAGE, REFERRER)  # the trusted log keeps them whole
    config = load(_config(tmp_path, {"partner": PARTNER}, {"fields": VISIT_FIELDS}), registry=REGISTRY).config
    assert config.collectors["partner"].fields_trim_url == ["dims.ref", "dims.url"]
    assert config.collectors["log"].fields_trim_url == []


def test_clean_referer_cuts_any_url() -> None:
    assert clean_referer(PAGE) == "https://shop.example/checkout"
    assert clean_referer(REFERRER) == "https://search.example/results"
    assert clean_referer(REFERRER, keep_query=True) == "https://search.example/results?q=john+doe"
    assert clean_referer("https://a.example/p?next=https://b.example/#x@y") == "https://a.example/p"
    assert clean_referer("https://a.example/p?mail=a@b.example", keep_query=True) == (
        "https://a.example/p?mail=a@b.example"  # an @ in the query is not user info
    )
    assert clean_referer("https://a.example#u@v") == "https://a.example"
    assert clean_referer("not a url?q=1") == "not a url"


def test_fields_trim_url_names_dims_only(tmp_path: Path) -> None:
    path = _config(tmp_path, {"partner": {"type": "recorder", "fields_trim_url": ["ctx.referer", "dims.url"]}}, {})
    with pytest.raises(ConfigError) as refused:
        load(path, registry=REGISTRY)
    assert "collectors.partner.fields_trim_url[0]: not a dim: 'ctx.referer' (dims.NAME)" in str(refused.value)


def test_a_dedupe_key_read_from_the_client_is_refused_where_it_is_written(tmp_path: Path) -> None:
    """id = an unkeyed hash of the type and the key: with the client IP as the key, every collector could find
    the IP again by hashing the four billion candidates."""
    text = (
        "event_types:\n"
        "  t_visit:\n"
        "    paths: [/t_visit]\n"
        "    fields: {cip: {source: ip}, page: {}, sess: {source: cookie}}\n"
        "    dedupe_key: [page,\n"
        "                 cip]\n"
        "  t_session:\n"
        "    paths: [/t_session]\n"
        "    fields: {sess: {source: cookie}, lang: {source: header, name: Accept-Language}}\n"
        "    dedupe_key: [sess, lang]\n"
    )
    path = tmp_path / "trackpoint.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert [str(issue) for issue in refused.value.issues] == [
        f"{path}:6: event_types.t_visit.dedupe_key[1]: 'cip' is read from the client (ip): the event id, a hash "
        "every collector gets, would give it away to anyone who tries the likely values; dedupe on a value the ad "
        "server or the page writes (an impression id, an order id, an event id)",
        f"{path}:10: event_types.t_session.dedupe_key[0]: 'sess' is read from the client (cookie): the event id, a "
        "hash every collector gets, would give it away to anyone who tries the likely values; dedupe on a value "
        "the ad server or the page writes (an impression id, an order id, an event id)",
        f"{path}:10: event_types.t_session.dedupe_key[1]: 'lang' is read from the client (header): the event id, a "
        "hash every collector gets, would give it away to anyone who tries the likely values; dedupe on a value "
        "the ad server or the page writes (an impression id, an order id, an event id)",
    ]


def _recorder(tmp_path: Path, worker: int, trusted: bool) -> Collector:
    options = {"type": "recorder", "trusted": trusted, "flush_interval_ms": 10, "retry_initial_ms": 10}
    config = msgspec.convert(options, REGISTRY.collectors["recorder"].config)
    return REGISTRY.build_collector("partner", config, CollectorContext(str(tmp_path), worker))


@pytest.mark.parametrize("worker", [0, 1], ids=["own spool recovered", "spool adopted"])
def test_a_spool_written_while_trusted_is_filtered_once_untrusted(tmp_path: Path, worker: int) -> None:
    """A trusted collector spools the raw IP and User-Agent while its target is down; a reload makes it untrusted,
    the target is back, and the new worker (another slot adopting the spool, or the same slot and pid finding it
    as its own) sends those events as an untrusted collector gets them."""
    meta = Meta(worker=0, config="v1")
    events = [
        Event(f"e{i}", "impression", i, {"cid": "c1"}, {}, Context(ip="127.0.0.1", ua=CHROME_UA), meta)
        for i in range(5)
    ]
    Recorder.sent.clear()
    Recorder.down = True

    async def run() -> None:
        trusted = _recorder(tmp_path, 0, trusted=True)
        await trusted.start()
        for event in events:
            trusted.offer(event)
        await trusted.flush()  # fails: the batch goes to the spool
        await trusted.close(0.2)
        assert trusted.stats.dropped == 0 and not Recorder.sent
        Recorder.down = False
        untrusted = _recorder(tmp_path, worker, trusted=False)
        await untrusted.start()
        await untrusted.flush()
        await untrusted.close(2.0)

    try:
        asyncio.run(run())
    finally:
        Recorder.down = False
    sent = Recorder.sent["partner"]
    assert len(sent) == 5
    assert not [line for line in sent if b"127.0.0.1" in line or b"Chrome" in line]
    assert all(b'"cid":"c1"' in line for line in sent)


# --- end to end: `trackpoint run`, the plugin found through its entry point, a real Redis Streams collector ------


@pytest.fixture
def redis_target() -> Iterator[RedisStreamsTarget]:
    target = asyncio.run(make_target())
    yield target
    asyncio.run(target.close())


@pytest.fixture
def with_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tracker and its workers find tests/privacy_plugin.py through its entry point, as an installed package."""
    site = entry_points_site(tmp_path / "site")
    paths = [str(site), str(TESTS), os.environ.get("PYTHONPATH")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, paths)))


def _stream(target: RedisStreamsTarget) -> list[bytes]:
    async def read() -> list[bytes]:
        client = Redis.from_url(target.url)
        try:
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await client.xrange(target.stream))
            return [fields[b"event"] for _, fields in entries]
        finally:
            await client.aclose()

    return asyncio.run(read())


def _eventually(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.e2e
@pytest.mark.timeout(90)
@pytest.mark.usefixtures("with_plugin")
def test_what_an_untrusted_redis_stream_gets_end_to_end(tracker_factory: Any, redis_target: RedisStreamsTarget) -> None:
    streams = {**redis_target.collector_config(), "flush_interval_ms": 300}  # after the meddler's sends
    tracker: Tracker = tracker_factory({
        "collectors": {"log": {"type": "log"}, "streams": streams,
                       "meddler": {"type": "meddler", "trusted": True, "flush_interval_ms": 5}},
        "event_types": {
            "visit": {"paths": ["/visit"], "fields": VISIT_FIELDS, "response": {"kind": "no_content"},
                      "preprocessors": ["read_client", "anonymize_ip", "parse_user_agent", "check_consent"],
                      "collectors": ["log", "meddler", "streams"]},
        },
    })  # fmt: skip
    request = VISIT.split(b" ")[1].decode()
    headers = {"Cookie": "email=john@example.org", "X-Real-IP": "198.51.100.23", "Referer": REFERRER}
    assert tracker.get(request, headers)[0] == 204
    assert tracker.get(request.replace("c1", "gpc"), {**headers, "Sec-GPC": "1"})[0] == 204
    _eventually(lambda: len(_stream(redis_target)) == 2, 10, "both events in the stream")
    lines = _stream(redis_target)
    assert not [marker for marker in PERSONAL if any(marker in line for line in lines)], lines
    plain, gpc = (msgspec.json.decode(line, type=Event) for line in lines)
    assert plain.dims["cid"] == "c1" and gpc.dims["consent"] == "denied"
    for event in (plain, gpc):
        assert (event.dims["url"], event.dims["ref"]) == (
            "https://shop.example/checkout",
            "https://search.example/results",
        )
    logged = {event.dims["cid"]: event for event in tracker.wait_events(2)}
    assert logged["c1"].dims["email"] == "john@example.org" and logged["c1"].dims["url"] == PAGE


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_a_reload_that_makes_a_spooling_collector_untrusted_end_to_end(
    tracker_factory: Any, redis_target: RedisStreamsTarget
) -> None:
    """The stream is trusted while Redis is down: its events, raw IP and User-Agent included, go to the spool. A
    reload makes it untrusted as Redis comes back: the new worker adopts the spool and sends them filtered."""
    streams = {**redis_target.collector_config(), "retry_initial_ms": 100, "retry_max_ms": 300}
    document = {
        "collectors": {"log": {"type": "log"}, "streams": {**streams, "trusted": True}},
        "event_types": {"impression": {"preset": "impression", "preprocessors": [], "collectors": ["log", "streams"]}},
    }
    asyncio.run(redis_target.stop())
    tracker: Tracker = tracker_factory(document)
    for i in range(5):
        assert tracker.get(f"/i?imp=i{i}&cid=c1")[0] == 200
    assert len(tracker.wait_events(5)) == 5
    tracker.wait_metric("trackpoint_collector_spooled_events", 'collector="streams"', 5)
    document["collectors"]["streams"]["trusted"] = False
    config = yaml.safe_load(tracker.config_path.read_text())
    config["collectors"] = document["collectors"]
    tracker.config_path.write_text(yaml.safe_dump(config))
    old_workers = set(tracker.worker_pids())
    tracker.signal(signal.SIGHUP)
    _eventually(lambda: not old_workers & set(tracker.worker_pids()), 30, "the reload")
    asyncio.run(redis_target.start())
    _eventually(lambda: len(_stream(redis_target)) == 5, 30, "the spooled events in the stream")
    lines = _stream(redis_target)
    assert not [line for line in lines if b"127.0.0.1" in line or b"Chrome/120" in line], lines
    assert all(b'"cid":"c1"' in line for line in lines)
