"""Tests of the kafka collector against librdkafka's mock cluster (the real Kafka protocol, in process): delivery,
retry on an outage without blocking the loop, recovery at the same address, health, rejection, drain on close.

Messages are read back with a real confluent_kafka.Consumer; the configuration checks need no broker.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import Producer

from conformance.target_kafka import KafkaTarget, MockCluster, make_target, read_messages
from conftest import assert_limited_per_kind, load_config
from trackpoint.collectors.base import CollectorContext, Health, SendResult
from trackpoint.collectors.kafka.collector import KafkaCollector, producer_settings
from trackpoint.collectors.kafka.config import KafkaCollectorConfig
from trackpoint.config import ConfigError
from trackpoint.event import Context, Event, Meta
from trackpoint.plugins import registry

pytestmark = pytest.mark.e2e  # librdkafka's mock cluster, a broker on sockets


def make_event(i: int, type_name: str = "impression", pad: int = 0) -> Event:
    return Event(
        id=f"{uuid.uuid4().hex[:24]}{i:08x}",
        type=type_name,
        ts=1_700_000_000_000 + i,
        dims={"imp": f"imp-{i}", "pad": "p" * pad, "note": 'é"quoted"'},
        metrics={"price": i * 1_000_000},
        ctx=Context(ip="192.0.2.0"),
        meta=Meta(worker=0, config="test"),
    )


def config(bootstrap_servers: str, **options: Any) -> KafkaCollectorConfig:
    settings = {"bootstrap_servers": bootstrap_servers, "flush_interval_ms": 20, "linger_ms": 1, **options}
    return msgspec.convert(settings, KafkaCollectorConfig)


def run(options: KafkaCollectorConfig, body: Callable[[KafkaCollector], Awaitable[None]], tmp_path: Path) -> None:
    """Starts a collector, runs `body` with it and closes it, on a fresh event loop."""

    async def main() -> None:
        collector = KafkaCollector("kafka", options, CollectorContext(data_dir=str(tmp_path)))
        await collector.start()
        try:
            await body(collector)
        finally:
            await collector.close(5.0)

    asyncio.run(main())


@pytest.fixture(scope="module")
def brokers() -> Iterator[str]:
    """A one-broker mock cluster, alive as long as the client hosting it; its address, found through metadata."""
    host = Producer({"test.mock.num.brokers": 1, "log_level": 3})
    metadata = host.list_topics(timeout=5)
    yield ",".join(f"{broker.host}:{broker.port}" for broker in metadata.brokers.values())
    host.flush(0)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens on it once the socket is closed


# --- delivery ------------------------------------------------------------------------------------------------


def test_a_batch_is_delivered_keyed_by_id_with_the_event_as_value_on_its_types_topic(
    brokers: str, tmp_path: Path
) -> None:
    prefix = f"unit-{uuid.uuid4().hex[:8]}."
    events = [make_event(i, "impression" if i % 3 else "win") for i in range(30)]

    async def body(collector: KafkaCollector) -> None:
        assert await collector.send(events) is SendResult.DELIVERED
        assert collector.health().healthy

    run(config(brokers, topic=prefix + "{type}"), body, tmp_path)
    messages = read_messages(brokers, prefix)
    decoder = msgspec.json.Decoder(Event)
    by_id = {event.id: event for event in events}
    assert sorted(message.key() or b"" for message in messages) == sorted(event.id.encode() for event in events)
    for message in messages:
        event = by_id[(message.key() or b"").decode()]
        assert decoder.decode(message.value() or b"") == event
        assert message.topic() == prefix + event.type
        assert message.headers() == [("type", event.type.encode())]


def test_close_drains_what_is_pending(brokers: str, tmp_path: Path) -> None:
    prefix = f"unit-{uuid.uuid4().hex[:8]}."
    events = [make_event(i) for i in range(50)]

    async def body(collector: KafkaCollector) -> None:
        for event in events:
            collector.offer(event)

    # A long flush interval: only the drain in close() can deliver the events.
    options = config(brokers, topic=prefix + "{type}", flush_interval_ms=60_000)
    run(options, body, tmp_path)
    assert sorted(message.key() or b"" for message in read_messages(brokers, prefix)) == sorted(
        event.id.encode() for event in events
    )


def test_a_message_too_large_is_refused_and_the_others_still_go(brokers: str, tmp_path: Path) -> None:
    prefix = f"unit-{uuid.uuid4().hex[:8]}."
    events = [make_event(0), make_event(1, pad=5000), make_event(2)]

    async def body(collector: KafkaCollector) -> None:
        for event in events:
            collector.offer(event)
        await collector.flush()
        assert collector.stats.dropped == 1 and collector.stats.sent == 2  # refused: not retried forever
        assert collector.stats.pending == 0 and not collector._pending
        assert collector.health().healthy  # the brokers took the others: not an outage

    run(config(brokers, topic=prefix + "{type}", properties={"message.max.bytes": "2000"}), body, tmp_path)
    keys = sorted(message.key() or b"" for message in read_messages(brokers, prefix))
    assert keys == sorted([events[0].id.encode(), events[2].id.encode()])


# --- outages -------------------------------------------------------------------------------------------------


async def longest_pause(work: Awaitable[Any]) -> tuple[Any, float]:
    """Runs `work` while a ticker measures the longest stretch the event loop could not run it."""
    longest = 0.0
    done = False

    async def tick() -> None:
        nonlocal longest
        last = time.monotonic()
        while not done:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            longest, last = max(longest, now - last), now

    ticker = asyncio.create_task(tick())
    try:
        result = await work
    finally:
        done = True
        await ticker
    return result, longest


async def wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_unreachable_brokers_mean_retry_without_blocking_the_loop(tmp_path: Path) -> None:
    events = [make_event(i) for i in range(20)]
    options = config(f"127.0.0.1:{closed_port()}", delivery_timeout_s=1.0)

    async def main() -> None:
        collector = KafkaCollector("kafka", options, CollectorContext(data_dir=str(tmp_path)))
        began = time.monotonic()
        await collector.start()  # the brokers being down must not fail (or slow) the start
        assert time.monotonic() - began < 0.5
        await wait_until(lambda: not collector.health().healthy, 5.0)  # noticed while idle

        began = time.monotonic()
        result, pause = await longest_pause(collector.send(events))
        assert result is SendResult.RETRY
        assert 0.9 < time.monotonic() - began < 4.0  # bounded by delivery_timeout_s
        assert pause < 0.25
        health = collector.health()
        assert not health.healthy and "not delivered" in health.detail

        for event in events:
            collector.offer(event)
        began = time.monotonic()
        await collector.close(1.0)  # gives up within the drain timeout
        assert time.monotonic() - began < 3.0

    asyncio.run(main())


async def started_on_a_target(tmp_path: Path) -> tuple[KafkaTarget, KafkaCollector]:
    """A conformance target (its own mock cluster, whose broker can go down) and a started collector sending to it."""
    target = await make_target()
    options = msgspec.convert(target.collector_config(), KafkaCollectorConfig)
    collector = KafkaCollector("kafka", options, CollectorContext(data_dir=str(tmp_path)))
    await collector.start()
    return target, collector


def test_outage_and_recovery_at_the_same_address(tmp_path: Path) -> None:
    """The conformance target's mock broker goes down (connections refused) and comes back where it was."""
    before = [make_event(i) for i in range(10)]
    during = [make_event(100 + i, "win") for i in range(10)]

    async def main() -> KafkaTarget:
        target, collector = await started_on_a_target(tmp_path)
        try:
            assert await collector.send(before) is SendResult.DELIVERED
            await target.stop()
            result, pause = await longest_pause(collector.send(during))
            assert result is SendResult.RETRY
            assert pause < 0.25
            assert not collector.health().healthy
            await target.start()
            assert await collector.send(during) is SendResult.DELIVERED
            assert collector.health() == Health(healthy=True, detail="")
            ids = await target.read_ids()
        finally:
            await collector.close(5.0)
        assert set(ids) == {event.id for event in before + during}
        assert sorted(ids[: len(before)]) == sorted(event.id for event in before)
        return target

    target = asyncio.run(main())
    asyncio.run(target.close())


@pytest.mark.parametrize("down_at_start", [False, True])
def test_an_idle_collector_is_healthy_again_once_its_broker_is_back_without_traffic(
    down_at_start: bool, tmp_path: Path
) -> None:
    """A required collector that stayed unhealthy until the next event would keep /readyz at 503, and a load
    balancer sends no event to a tracker that is not ready: health must come back without traffic."""

    async def main() -> KafkaTarget:
        target = await make_target()
        options = msgspec.convert(target.collector_config(), KafkaCollectorConfig)
        collector = KafkaCollector("kafka", options, CollectorContext(data_dir=str(tmp_path)))
        if down_at_start:
            await target.stop()
        await collector.start()
        try:
            if not down_at_start:
                assert await collector.send([make_event(0)]) is SendResult.DELIVERED
                await target.stop()
            await wait_until(lambda: not collector.health().healthy, 10.0)  # noticed while idle
            await asyncio.sleep(3.0)  # several probes while the broker is down: still unhealthy
            assert not collector.health().healthy
            await target.start()
            _, pause = await longest_pause(wait_until(lambda: collector.health().healthy, 10.0))
            assert pause < 0.25  # the probes wait for the broker off the loop
            assert collector.stats.received == 0  # no traffic: only send() above, which bypasses offer()
        finally:
            await collector.close(5.0)
        return target

    target = asyncio.run(main())
    asyncio.run(target.close())


def test_librdkafka_lines_of_an_outage_are_limited_per_kind_and_count_the_suppressed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """librdkafka logs each failed connection attempt, at LOG_ERR (75 lines in 15 s of an outage on two workers):
    its first line is kept, the rest are written at most once per interval and kind, counting those suppressed, as
    warnings named after the collector (the collector's own line is the error)."""
    interval_s = 1.0
    monkeypatch.setattr("trackpoint.collectors.kafka.collector.LIBRDKAFKA_LOG_INTERVAL_S", interval_s)
    caplog.set_level(logging.INFO, logger="trackpoint.collectors")

    async def main() -> KafkaTarget:
        target, collector = await started_on_a_target(tmp_path)
        try:
            assert await collector.send([make_event(0)]) is SendResult.DELIVERED
            await target.stop()
            for i in range(1, 60):  # a little traffic through the outage: batches retried, then spooled
                collector.offer(make_event(i))
                await asyncio.sleep(0.1)
            await target.start()
            await wait_until(lambda: collector.health().healthy and not collector.retrying, 20.0)
        finally:
            await collector.close(5.0)
        return target

    target = asyncio.run(main())
    asyncio.run(target.close())
    refused = [record for record in caplog.records if "Connection refused" in record.getMessage()]
    assert refused, "the outage's first line is kept"
    assert {record.levelno for record in refused} == {logging.WARNING}
    assert all(record.getMessage().startswith("collector kafka: librdkafka FAIL: ") for record in refused)
    assert_limited_per_kind(refused, interval_s)


def test_a_topic_that_does_not_exist_refuses_its_events_and_the_other_types_go_once(tmp_path: Path) -> None:
    cluster = MockCluster()
    prefix = f"unit-{uuid.uuid4().hex[:8]}."
    cluster.create_topic(prefix + "impression", 1)  # no topic for clicks, and the brokers create none
    before = [make_event(i) for i in range(5)]
    click = make_event(5, "click")
    after = [make_event(6 + i) for i in range(5)]
    options = config(
        cluster.bootstrap_servers,
        topic=prefix + "{type}",
        delivery_timeout_s=3.0,
        send_timeout_s=5.0,
        properties={"allow.auto.create.topics": "false"},
    )

    async def body(collector: KafkaCollector) -> None:
        for event in [*before, click]:
            collector.offer(event)
        await collector.flush()
        for event in after:
            collector.offer(event)
        await wait_until(lambda: collector.stats.sent == len(before + after), 30.0)
        await collector.flush()
        assert collector.stats.dropped == 1  # the click, refused for good
        assert collector.health().healthy  # the brokers are reachable: a refused event is not an outage

    try:
        run(options, body, tmp_path)
        keys = [message.key() or b"" for message in read_messages(cluster.bootstrap_servers, prefix)]
        assert sorted(keys) == sorted(event.id.encode() for event in before + after)  # each once
        (dead_letters,) = (tmp_path / "deadletter" / "kafka").iterdir()
        assert [event.id for event in msgspec.json.Decoder(Event).decode_lines(dead_letters.read_bytes())] == [click.id]
    finally:
        cluster.destroy()


def test_a_retried_batch_sends_again_only_the_events_no_attempt_delivered(tmp_path: Path) -> None:
    cluster = MockCluster()
    prefix = f"unit-{uuid.uuid4().hex[:8]}."
    for event_type in ("impression", "click"):
        cluster.create_topic(prefix + event_type, 1)
    cluster.set_leader(prefix + "click", 0, -1)  # clicks wait for a leader: they time out, the rest is delivered
    events = [make_event(0), make_event(1, "click"), make_event(2)]

    async def body(collector: KafkaCollector) -> None:
        assert await collector.send(events) is SendResult.RETRY
        collector._failures = 1  # as the base class does after a RETRY
        cluster.set_leader(prefix + "click", 0, 1)
        assert await collector.send(events) is SendResult.DELIVERED

    try:
        run(config(cluster.bootstrap_servers, topic=prefix + "{type}", delivery_timeout_s=1.0), body, tmp_path)
        keys = [message.key() or b"" for message in read_messages(cluster.bootstrap_servers, prefix)]
        assert sorted(keys) == sorted(event.id.encode() for event in events)  # each once
    finally:
        cluster.destroy()


# --- configuration -------------------------------------------------------------------------------------------


def test_producer_settings_force_the_guarantees_and_read_secrets_from_the_environment() -> None:
    options = config(
        "broker:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="$ConnectionString",
        sasl_password_env="EH_CONNECTION",
        compression="zstd",
        properties={"socket.keepalive.enable": "true"},
        properties_env={"ssl.key.password": "KEY_PASSWORD"},
    )
    settings = producer_settings(options, {"EH_CONNECTION": "Endpoint=sb://x/", "KEY_PASSWORD": "k"})
    assert settings["enable.idempotence"] is True and settings["acks"] == "all"
    assert settings["sasl.username"] == "$ConnectionString" and settings["sasl.password"] == "Endpoint=sb://x/"
    assert settings["sasl.mechanism"] == "PLAIN" and settings["security.protocol"] == "SASL_SSL"
    assert settings["compression.type"] == "zstd" and settings["message.timeout.ms"] == 10_000
    assert settings["socket.keepalive.enable"] == "true" and settings["ssl.key.password"] == "k"
    with pytest.raises(ValueError, match="EH_CONNECTION is not set"):
        producer_settings(options, {"KEY_PASSWORD": "k"})


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"topic": "events.{kind}"}, "the only placeholder is {type}"),
        ({"topic": "events {type}"}, "a topic name is"),
        ({"topic": "events.{type"}, "topic"),
        ({"security_protocol": "SASL_SSL"}, "needs a sasl_mechanism"),
        ({"sasl_mechanism": "PLAIN"}, "needs security_protocol"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512"}, "needs sasl_username"),
        ({"properties": {"acks": "1"}}, "set by the option"),
        ({"properties": {"ssl.keystore.password": "hunter2"}}, "holds a secret"),
        ({"sasl_password_env": "not a name"}, "not an environment variable name"),
        ({"delivery_timeout_s": 60.0}, "below send_timeout_s"),
        ({"compression": "brotli"}, "Invalid enum value"),
    ],
)
def test_invalid_options_are_refused_at_config_time(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=problem.replace("{", r"\{").replace("}", r"\}")):
        config("broker:9092", **options)


def test_the_builtin_plugin_provides_the_kafka_collector(tmp_path: Path) -> None:
    kind = registry().collectors["kafka"]
    assert kind.config is KafkaCollectorConfig and not kind.implicit
    collector = kind.factory("queue", config("broker:9092"), CollectorContext(data_dir=str(tmp_path)))
    assert isinstance(collector, KafkaCollector)


def test_a_config_file_declares_a_kafka_collector_and_a_bad_template_is_reported_with_its_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "trackpoint.yaml"
    declaration = "collectors:\n  events:\n    type: kafka\n    bootstrap_servers: broker:9092\n"
    path.write_text(declaration)
    assert isinstance(load_config(path).config.collectors["events"], KafkaCollectorConfig)
    path.write_text(declaration + '    topic: "tp.{kind}"\n')
    with pytest.raises(ConfigError, match=r"trackpoint\.yaml:2: collectors\.events: topic 'tp\.\{kind\}'"):
        load_config(path)


def test_a_tracker_delivers_its_events_to_kafka(brokers: str, tracker_factory: Any) -> None:
    """End to end: `trackpoint run` builds the collector from the config file and a pixel lands in Kafka."""
    prefix = f"e2e-{uuid.uuid4().hex[:8]}."
    queue = {"type": "kafka", "bootstrap_servers": brokers, "topic": prefix + "{type}", "flush_interval_ms": 20}
    tracker = tracker_factory(
        {
            "collectors": {"queue": queue},
            "event_types": {"impression": {"preset": "impression", "collectors": ["log", "queue"]}},
        }
    )
    status, _, _ = tracker.get("/i?imp=imp-1&cid=c1&crid=cr1&pub=p1")
    assert status == 200
    (logged,) = tracker.wait_events(1)
    deadline = time.monotonic() + 5.0
    while not (messages := read_messages(brokers, prefix)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [(message.topic(), message.key()) for message in messages] == [(prefix + "impression", logged.id.encode())]
    published = msgspec.json.decode(messages[0].value() or b"", type=Event)
    # The log is trusted and keeps the (anonymised) client IP and user agent; a queue is not and never gets them.
    assert logged.ctx.ip is not None and logged.ctx.ua is not None
    assert published == msgspec.structs.replace(logged, ctx=msgspec.structs.replace(logged.ctx, ip=None, ua=None))
