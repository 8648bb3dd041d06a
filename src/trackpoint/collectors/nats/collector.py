"""nats: events to NATS JetStream, one message per event with `Nats-Msg-Id` = event id, acknowledged publishes.

The connection is made in the background and kept up by the client's reconnect loop, so a NATS outage never stops
the tracker: while it lasts, send() answers RETRY at once and the base class keeps (or spools) the batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import ssl
from collections.abc import Sequence
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck, StorageType, StreamConfig

from trackpoint.collectors.base import Collector, CollectorContext, Health, SendResult
from trackpoint.collectors.nats.config import NatsCollectorConfig, stream_subject, subject_of
from trackpoint.event import Event
from trackpoint.security.secrets import env_secret, secret_path

MSG_ID = "Nats-Msg-Id"
STREAM_NAME_IN_USE = 10058  # JetStream: a stream of that name exists with another configuration


class NatsCollector(Collector):
    """Publishes each batch with up to `max_in_flight` unacknowledged messages and waits for every ack."""

    def __init__(self, name: str, config: NatsCollectorConfig, context: CollectorContext) -> None:
        super().__init__(name, config, context)
        self.config = config
        self._connect_options = _connect_options(config, context.data_dir)  # a missing secret fails here, at start-up
        self._encoder = msgspec.json.Encoder()
        self._subjects: dict[str, str] = {}
        self._nc = Client()
        self._js: JetStreamContext | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._stream_ready = config.stream is None or not config.create_stream
        self._awaiting_acks: list[asyncio.Future[PubAck]] = []
        self._error = "connecting"
        self.oversized = 0  # events larger than the server's max payload, dropped alone (counted in stats.dropped)

    async def start(self) -> None:
        self._connect_task = asyncio.get_running_loop().create_task(self._connect(), name=f"connect-{self.name}")
        await super().start()

    async def send(self, batch: Sequence[Event]) -> SendResult:
        js = self._js
        if js is None or not self._nc.is_connected:
            return SendResult.RETRY
        config = self.config
        futures = self._awaiting_acks = []
        try:
            async with asyncio.timeout(config.ack_timeout_s):
                if not self._stream_ready:
                    await self._ensure_stream(js)
                max_payload = self._nc.max_payload
                for event in batch:
                    payload = self._encoder.encode(event)
                    if len(payload) > max_payload:
                        self._drop_oversized(event, len(payload))
                        continue
                    subject = self._subjects.get(event.type) or self._subject(event.type)
                    futures.append(
                        await js.publish_async(subject, payload, stream=config.stream, headers={MSG_ID: event.id})
                    )
                await asyncio.gather(*futures)
        except TimeoutError:
            self._error = f"no acknowledgement within {config.ack_timeout_s} s"
            return SendResult.RETRY
        except nats.js.errors.NoStreamResponseError:
            # Nothing listens on the subject: the stream is gone (a server restarted without its store) or missing.
            self._stream_ready = config.stream is None or not config.create_stream
            self._error = f"no stream captures {stream_subject(config.subject)}"
            return SendResult.RETRY
        except (nats.errors.Error, OSError) as exc:
            self._error = _describe(exc)
            return SendResult.RETRY
        finally:
            self._awaiting_acks = []
            _settle(futures)
        self._error = ""
        return SendResult.DELIVERED

    def health(self) -> Health:
        if self._nc.is_connected and not self._error:
            return Health(healthy=True)
        return Health(healthy=False, detail=self._error or "disconnected")

    async def close(self, drain_timeout_s: float) -> None:
        await super().close(drain_timeout_s)
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connect_task
        if self._nc.is_connected:
            with contextlib.suppress(Exception):  # flush and close; a dead server must not stall the shutdown
                await asyncio.wait_for(self._nc.drain(), max(drain_timeout_s, 0.1))
        if not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), 1.0)

    # --- connection and stream -----------------------------------------------------------------------------------

    async def _connect(self) -> None:
        """Retries forever (`max_reconnect_attempts=-1` also covers the first connection)."""
        await self._nc.connect(
            **self._connect_options,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self._js = self._nc.jetstream(
            timeout=self.config.ack_timeout_s, publish_async_max_pending=self.config.max_in_flight
        )
        self._error = ""

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        """Creates the stream, or adds the subject and the duplicate window to an existing one."""
        config = self.config
        assert config.stream is not None
        subject = stream_subject(config.subject)
        try:
            await js.add_stream(
                StreamConfig(
                    name=config.stream,
                    subjects=[subject],
                    storage=StorageType.FILE,
                    duplicate_window=config.duplicate_window_s,
                )
            )
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:
                raise
            current = (await js.stream_info(config.stream)).config
            subjects = list(current.subjects or [])
            if subject not in subjects or current.duplicate_window != config.duplicate_window_s:
                current.subjects = subjects if subject in subjects else [*subjects, subject]
                current.duplicate_window = config.duplicate_window_s
                await js.update_stream(current)
        self._stream_ready = True

    async def _on_error(self, exc: Exception) -> None:
        self._error = _describe(exc)

    async def _on_disconnected(self) -> None:
        # Acks of the batch in flight will not come: fail it now instead of at its timeout.
        for future in self._awaiting_acks:
            if not future.done():
                future.set_exception(nats.errors.ConnectionClosedError())
        self._error = self._error or "disconnected"

    async def _on_reconnected(self) -> None:
        self._error = ""

    # --- events --------------------------------------------------------------------------------------------------

    def _subject(self, event_type: str) -> str:
        subject = self._subjects[event_type] = subject_of(self.config.subject, event_type)
        return subject

    def _drop_oversized(self, event: Event, size: int) -> None:
        self.oversized += 1
        self.stats.dropped += 1
        self._note_error(ValueError(f"event {event.id} is {size} bytes, over the server's max payload"))


def _connect_options(config: NatsCollectorConfig, data_dir: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "servers": config.servers,
        "name": "trackpoint",
        "connect_timeout": config.connect_timeout_s,
        "reconnect_time_wait": config.reconnect_wait_s,
        "max_reconnect_attempts": -1,
        # Publishes are made only while connected; a small buffer bounds what a sudden disconnect holds.
        "pending_size": 8 << 20,
        "flush_timeout": config.ack_timeout_s,
    }
    if config.user is not None:
        options["user"] = config.user
        if config.password_env is not None:
            options["password"] = env_secret(config.password_env, "password_env")
    if config.token_env is not None:
        options["token"] = env_secret(config.token_env, "token_env")
    if config.credentials_file is not None:
        if importlib.util.find_spec("nkeys") is None:
            raise ValueError("credentials_file needs the nkeys package (pip install nkeys)")
        options["user_credentials"] = str(secret_path(config.credentials_file, data_dir))
    if config.tls_ca is not None or config.tls_cert is not None:
        context = ssl.create_default_context(cafile=config.tls_ca)
        if config.tls_cert is not None:
            context.load_cert_chain(config.tls_cert, config.tls_key)
        options["tls"] = context
    return options


def _settle(futures: list[asyncio.Future[PubAck]]) -> None:
    """Cancels what is still pending (releasing the in-flight slots) and marks every failure as retrieved."""
    for future in futures:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".rstrip(": ")
