"""Tests of the nats collector against real JetStream servers: the shared one (TRACKPOINT_TEST_NATS_URL) with unique
streams and subjects per test, and private nats-server processes for outages, restarts and authentication.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from conformance.target_nats import make_target
from conftest import free_port, make_event, until
from trackpoint.collectors.base import CollectorContext, SendResult
from trackpoint.collectors.nats.collector import NatsCollector
from trackpoint.collectors.nats.config import NatsCollectorConfig, stream_subject
from trackpoint.event import Event
from trackpoint.plugins import registry

pytestmark = pytest.mark.e2e  # a real NATS server

NATS_URL = os.environ.get("TRACKPOINT_TEST_NATS_URL", "nats://127.0.0.1:4222")
DECODER = msgspec.json.Decoder(Event)


def config(**options: Any) -> NatsCollectorConfig:
    settings = {"type": "nats", "flush_interval_ms": 20, "connect_timeout_s": 1.0, "reconnect_wait_s": 0.2}
    return msgspec.convert({**settings, **options}, NatsCollectorConfig)


def collector(options: NatsCollectorConfig, tmp_path: Path, name: str = "queue") -> NatsCollector:
    return NatsCollector(name, options, CollectorContext(data_dir=str(tmp_path)))


async def _quiet(exc: Exception) -> None:
    """Connection errors of test clients are asserted on explicitly, not logged."""


@asynccontextmanager
async def shared_nats() -> AsyncIterator[tuple[JetStreamContext, str]]:
    """JetStream on the shared server and a unique tag for subjects and streams; streams named TPTEST_<tag>* are
    deleted afterwards."""
    connection = await nats.connect(NATS_URL, connect_timeout=2, allow_reconnect=False, error_cb=_quiet)
    js = connection.jetstream(timeout=5)
    tag = uuid.uuid4().hex[:12]
    try:
        yield js, tag
    finally:
        for name in await js.streams_info():
            if name.config.name and name.config.name.startswith(f"TPTEST_{tag}"):
                await js.delete_stream(name.config.name)
        await connection.close()


async def stored(js: JetStreamContext, stream: str) -> list[tuple[str, str, bytes]]:
    """(subject, Nats-Msg-Id, payload) of every message of the stream, in order."""
    info = await js.stream_info(stream)
    messages = []
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        message = await js.get_msg(stream, sequence)
        assert message.subject is not None and message.data is not None
        messages.append((message.subject, (message.headers or {}).get("Nats-Msg-Id", ""), message.data))
    return messages


async def until_connected(target: NatsCollector) -> None:
    async def connected() -> bool:
        return target.health().healthy

    await until(connected)


# --- configuration -------------------------------------------------------------------------------------------


def test_defaults_and_validation() -> None:
    defaults = config()
    assert defaults.servers == ["nats://127.0.0.1:4222"]
    assert defaults.subject == "trackpoint.{type}"
    assert (defaults.stream, defaults.create_stream, defaults.max_in_flight) == ("TRACKPOINT", True, 1024)
    bad_options: list[dict[str, Any]] = [
        {"subject": "trackpoint.*"},
        {"subject": "track point.{type}"},
        {"tls_cert": "client.pem"},
        {"password_env": "X"},
        {"password": "inline secrets are not options"},
        {"max_in_flight": 0},
        {"servers": []},
    ]
    for bad in bad_options:
        with pytest.raises(msgspec.ValidationError):
            config(**bad)


def test_the_stream_subject_covers_every_rendered_subject() -> None:
    assert stream_subject("trackpoint.{type}") == "trackpoint.>"
    assert stream_subject("events.{type}.v1") == "events.*.v1"
    assert stream_subject("events.all") == "events.all"


def test_a_missing_secret_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TP_TEST_UNSET_TOKEN"):
        collector(config(token_env="TP_TEST_UNSET_TOKEN"), tmp_path)


def test_the_registry_builds_it_from_a_raw_config() -> None:
    kind = registry().collectors["nats"]
    built = kind.factory("queue", msgspec.convert({"type": "nats"}, kind.config), CollectorContext("/tmp"))
    assert isinstance(built, NatsCollector)


# --- delivery ------------------------------------------------------------------------------------------------


def test_publishes_each_event_with_its_id_and_creates_the_stream(tmp_path: Path) -> None:
    async def main() -> None:
        async with shared_nats() as (js, tag):
            stream = f"TPTEST_{tag}"
            target = collector(
                config(servers=[NATS_URL], subject=f"tptest.{tag}.{{type}}", stream=stream, duplicate_window_s=90),
                tmp_path,
            )
            await target.start()
            await until_connected(target)
            batch = [make_event(i, "impression" if i % 3 else "win") for i in range(300)]
            assert await target.send(batch) is SendResult.DELIVERED
            await target.close(1.0)

            info = await js.stream_info(stream)
            assert info.config.subjects == [f"tptest.{tag}.>"]
            assert info.config.duplicate_window == 90
            messages = await stored(js, stream)
            assert [subject for subject, _, _ in messages] == [f"tptest.{tag}.{e.type}" for e in batch]
            assert [msg_id for _, msg_id, _ in messages] == [e.id for e in batch]
            assert [DECODER.decode(payload) for _, _, payload in messages] == batch

    asyncio.run(main())


def test_a_repeated_batch_is_stored_once_and_in_flight_is_bounded(tmp_path: Path) -> None:
    async def main() -> None:
        async with shared_nats() as (js, tag):
            stream = f"TPTEST_{tag}"
            options = config(servers=[NATS_URL], subject=f"tptest.{tag}.{{type}}", stream=stream, max_in_flight=8)
            target = collector(options, tmp_path)
            await target.start()
            await until_connected(target)
            batch = [make_event(i) for i in range(500)]
            assert await target.send(batch[:200]) is SendResult.DELIVERED
            assert await target.send(batch) is SendResult.DELIVERED  # a retry overlapping a delivered batch
            assert await target.send(batch) is SendResult.DELIVERED  # a replay within the duplicate window
            assert target._js is not None and target._js.publish_async_pending() == 0
            await target.close(1.0)
            assert [msg_id for _, msg_id, _ in await stored(js, stream)] == [e.id for e in batch]

    asyncio.run(main())


def test_an_existing_stream_gets_the_subject_and_window(tmp_path: Path) -> None:
    async def main() -> None:
        async with shared_nats() as (js, tag):
            stream = f"TPTEST_{tag}"
            await js.add_stream(StreamConfig(name=stream, subjects=[f"tptest.{tag}.other"], duplicate_window=30))
            options = config(servers=[NATS_URL], subject=f"tptest.{tag}.ev.{{type}}", stream=stream)
            target = collector(options, tmp_path)
            await target.start()
            await until_connected(target)
            assert await target.send([make_event(1)]) is SendResult.DELIVERED
            await target.close(1.0)
            info = await js.stream_info(stream)
            assert info.config.subjects == [f"tptest.{tag}.other", f"tptest.{tag}.ev.>"]
            assert info.config.duplicate_window == 120
            assert info.state.messages == 1

    asyncio.run(main())


def test_without_a_stream_a_batch_is_retried_not_lost(tmp_path: Path) -> None:
    async def main() -> None:
        async with shared_nats() as (_, tag):
            options = config(servers=[NATS_URL], subject=f"tptest.{tag}.{{type}}", stream=None, ack_timeout_s=2.0)
            target = collector(options, tmp_path)
            await target.start()
            await until_connected(target)
            began = time.monotonic()
            assert await target.send([make_event(1)]) is SendResult.RETRY
            assert time.monotonic() - began < 2.5
            health = target.health()
            assert not health.healthy
            assert health.detail == f"no stream captures tptest.{tag}.>"
            await target.close(1.0)

    asyncio.run(main())


# --- outages -------------------------------------------------------------------------------------------------


def test_starts_and_retries_at_once_while_nats_is_down(tmp_path: Path) -> None:
    async def main() -> None:
        target = collector(config(servers=[f"nats://127.0.0.1:{free_port()}"]), tmp_path)
        began = time.monotonic()
        await target.start()
        assert await target.send([make_event(1)]) is SendResult.RETRY
        assert time.monotonic() - began < 0.5
        await asyncio.sleep(0.3)  # a connection attempt or two
        health = target.health()
        assert not health.healthy
        assert "Connect call failed" in health.detail or health.detail == "connecting"
        await target.close(0.5)
        assert time.monotonic() - began < 2.0

    asyncio.run(main())


def test_outage_and_restart_lose_nothing_and_duplicate_nothing(tmp_path: Path) -> None:
    """Through the public path (offer, flush loop, spool): the server stops, comes back at the same address with its
    store, the client reconnects, and a replay of everything stores nothing new."""

    async def main() -> None:
        server = await make_target()
        try:
            options = msgspec.convert(server.collector_config(), NatsCollectorConfig)
            target = collector(options, tmp_path)
            await target.start()
            events = [make_event(i) for i in range(300)]
            for event in events[:100]:
                target.offer(event)

            async def delivered(count: int) -> bool:
                return await server.read_ids() == [e.id for e in events[:count]]

            await until(lambda: delivered(100))

            await server.stop()
            began = time.monotonic()
            assert await target.send(events[100:110]) is SendResult.RETRY  # at once, not after a timeout
            assert time.monotonic() - began < 1.0
            for event in events[100:]:
                target.offer(event)
            await server.start()
            await until(lambda: delivered(300))
            await until_connected(target)

            for event in events:  # `trackpoint replay` of the same log
                target.offer(event)
            await target.close(5.0)
            assert await server.read_ids() == [e.id for e in events]
        finally:
            await server.close()

    asyncio.run(main())


def test_user_and_password_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TP_TEST_NATS_PASSWORD", "pw")
    monkeypatch.setenv("TP_TEST_NATS_WRONG", "wrong")
    port = free_port()
    store = tmp_path / "store"
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    command = [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store), "--user", "tp", "--pass", "pw"]

    async def main() -> None:
        url = f"nats://127.0.0.1:{port}"
        good = collector(config(servers=[url], user="tp", password_env="TP_TEST_NATS_PASSWORD"), tmp_path)
        bad = collector(config(servers=[url], user="tp", password_env="TP_TEST_NATS_WRONG"), tmp_path, "other")
        await good.start()
        await bad.start()
        await until_connected(good)
        assert await good.send([make_event(1)]) is SendResult.DELIVERED
        assert await bad.send([make_event(2)]) is SendResult.RETRY
        assert not bad.health().healthy
        await good.close(0.5)
        await bad.close(0.5)

        connection = await nats.connect(url, user="tp", password="pw", error_cb=_quiet)
        assert (await connection.jetstream().stream_info("TRACKPOINT")).state.messages == 1
        await connection.close()

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        asyncio.run(main())
    finally:
        process.terminate()
        process.wait(10)


def test_a_stalled_server_makes_the_batch_retry_within_the_ack_timeout(tmp_path: Path) -> None:
    """Acks that never come (the server is frozen) bound the send; the stored copies of the abandoned attempt and its
    retry are one message per id."""

    async def main() -> None:
        server = await make_target()
        try:
            options = msgspec.convert({**server.collector_config(), "ack_timeout_s": 1.0}, NatsCollectorConfig)
            target = collector(options, tmp_path)
            await target.start()
            await until_connected(target)
            batch = [make_event(i) for i in range(50)]
            assert server.server.pid is not None
            os.kill(server.server.pid, signal.SIGSTOP)
            try:
                began = time.monotonic()
                assert await target.send(batch) is SendResult.RETRY
                assert 0.9 < time.monotonic() - began < 2.0
                assert "no acknowledgement" in target.health().detail
            finally:
                os.kill(server.server.pid, signal.SIGCONT)
            assert await target.send(batch) is SendResult.DELIVERED
            await target.close(1.0)
            assert await server.read_ids() == [e.id for e in batch]
        finally:
            await server.close()

    asyncio.run(main())


def test_a_stopped_server_makes_the_collector_unhealthy_while_the_send_waits(tmp_path: Path) -> None:
    """A stopped nats-server keeps its socket open: the publishes' acks never come, and the collector read healthy
    until ack_timeout_s (30 s here). It is unhealthy once the send has been in flight send_stall_s, and delivers
    everything once the server runs again."""

    async def holds(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
        async def check() -> bool:
            return condition()

        await until(check, timeout_s)

    async def main() -> None:
        server = await make_target()
        try:
            options = {**server.collector_config(), "ack_timeout_s": 30.0, "send_stall_s": 0.5}
            target = collector(msgspec.convert(options, NatsCollectorConfig), tmp_path)
            await target.start()
            await until_connected(target)
            offered = [make_event(i) for i in range(60)]
            for event in offered[:10]:
                target.offer(event)
            await holds(lambda: target.stats.sent == 10)
            assert server.server.pid is not None
            os.kill(server.server.pid, signal.SIGSTOP)
            try:
                for event in offered[10:]:
                    target.offer(event)
                await holds(lambda: "send in flight for" in target.snapshot().problem)
                stats = target.snapshot()
                assert not stats.healthy and stats.pending == 50 and stats.errors == 0, stats  # no timeout yet
            finally:
                os.kill(server.server.pid, signal.SIGCONT)
            await holds(lambda: target.stats.sent == 60 and target.snapshot().healthy, 30)
            await target.close(1.0)
            assert await server.read_ids() == [e.id for e in offered]
        finally:
            await server.close()

    asyncio.run(main())
