"""kafka: each event becomes one message (key: event id, value: the event as JSON, header `type`) on the topic its
type names, from an idempotent producer with acks=all; a batch is delivered when every message is acknowledged.

produce() only queues in librdkafka (C, non-blocking); the wait for delivery reports runs in a thread, bounded by
delivery_timeout_s, so the event loop never waits for a broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from trackpoint.collectors.base import Collector, CollectorContext, Health, SendResult
from trackpoint.collectors.kafka.config import REPORT_MARGIN_S, TOPIC_NAME, KafkaCollectorConfig, topic_for
from trackpoint.event import Event
from trackpoint.security.secrets import env_secret

log = logging.getLogger("trackpoint.collectors.kafka")

# Errors that no retry can cure: the batch is rejected (counted as dropped) rather than retried forever.
PERMANENT_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.TOPIC_EXCEPTION,
    }
)
# Client errors that mean no event can get through now; librdkafka reports and recovers from lesser ones itself.
OUTAGE_ERRORS = frozenset(
    {
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._SSL,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }
)

Headers = list[tuple[str, str | bytes | None]]


def producer_settings(config: KafkaCollectorConfig, environ: Mapping[str, str]) -> dict[str, Any]:
    """The librdkafka configuration of the collector; secrets are read from `environ` here and nowhere else."""

    def secret(variable: str, option: str = "properties_env") -> str:
        return env_secret(variable, option, environ)

    timeout_ms = round(config.delivery_timeout_s * 1000)
    settings: dict[str, Any] = {
        # A request to a hung broker must not outlive the batch it carries.
        "request.timeout.ms": min(30_000, timeout_ms),
        **config.properties,
        **{key: secret(variable) for key, variable in config.properties_env.items()},
        "bootstrap.servers": config.bootstrap_servers,
        "client.id": config.client_id,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": config.compression,
        "linger.ms": config.linger_ms,
        "message.timeout.ms": timeout_ms,
        "security.protocol": config.security_protocol,
    }
    if config.sasl_mechanism == "OAUTHBEARER":
        settings["sasl.mechanism"] = "OAUTHBEARER"
        settings.setdefault("sasl.oauthbearer.method", "oidc")
        if config.sasl_username is not None:
            settings["sasl.oauthbearer.client.id"] = config.sasl_username
        if config.sasl_password_env is not None:
            settings["sasl.oauthbearer.client.secret"] = secret(config.sasl_password_env, "sasl_password_env")
    elif config.sasl_mechanism is not None:
        assert config.sasl_username is not None and config.sasl_password_env is not None  # checked by the config
        settings["sasl.mechanism"] = config.sasl_mechanism
        settings["sasl.username"] = config.sasl_username
        settings["sasl.password"] = secret(config.sasl_password_env, "sasl_password_env")
    if config.ssl_ca_location is not None:
        settings["ssl.ca.location"] = config.ssl_ca_location
    return settings


class _Reports:
    """Delivery reports of one batch. Filled on the thread that serves librdkafka's callbacks; read on the loop
    once that thread is done (a list append is atomic under the GIL)."""

    __slots__ = ("errors", "received")

    def __init__(self) -> None:
        self.received = 0
        self.errors: list[KafkaError] = []

    def report(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.errors.append(error)
        self.received += 1


class KafkaCollector(Collector):
    """Produces each batch, then waits off the loop for its delivery reports: all acknowledged → delivered; any
    retriable failure → the whole batch is retried (at least once; consumers dedupe on the key); a permanent
    failure (e.g. a message too large) → the whole batch is rejected (dead-lettered and counted as dropped by the
    base class, even if some of its events got through: better a replayable duplicate than a batch retried forever)."""

    def __init__(self, name: str, config: KafkaCollectorConfig, context: CollectorContext) -> None:
        super().__init__(name, config, context)
        self.config = config
        self._encoder = msgspec.json.Encoder()
        self._routes: dict[str, tuple[str, Headers] | None] = {}
        self._producer: Producer | None = None
        self._replace_producer = False
        self._sending = False
        self._error = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        # One thread waits for delivery reports, so one batch is in flight and reports never race each other.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kafka-{name}")

    async def start(self) -> None:
        """Creates the producer; it connects in the background, so unreachable brokers do not fail the start."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._producer = self._new_producer()
        await super().start()

    async def send(self, batch: Sequence[Event]) -> SendResult:
        producer = self._ready_producer()
        reports = _Reports()
        produced = 0
        retriable: str | None = None
        permanent: list[str] = []
        self._sending = True
        try:
            for event in batch:
                route = self._route(event.type)
                if route is None:
                    permanent.append(f"event type {event.type!r} makes an invalid topic name")
                    continue
                topic, headers = route
                try:
                    producer.produce(
                        topic,
                        value=self._encoder.encode(event),
                        key=event.id,
                        headers=headers,
                        on_delivery=reports.report,
                    )
                except BufferError:  # librdkafka's queue is full: wait for what is queued, retry the rest later
                    retriable = "producer queue full"
                    break
                except KafkaException as exc:
                    error: KafkaError = exc.args[0]
                    if error.code() in PERMANENT_ERRORS:  # this event can never go; the others still do
                        permanent.append(error.str())
                        continue
                    self._replace_producer = self._replace_producer or error.fatal()
                    retriable = error.str()
                    break
                produced += 1
            timeout = self.config.delivery_timeout_s + REPORT_MARGIN_S
            if produced:
                await asyncio.get_running_loop().run_in_executor(self._io, producer.flush, timeout)
        finally:
            self._sending = False
        return self._outcome(len(batch), produced, reports, retriable, permanent)

    def health(self) -> Health:
        # Serving callbacks here lets an idle collector notice an outage (error callbacks) without sending.
        if self._producer is not None and not self._sending:
            self._producer.poll(0)
        return Health(healthy=not self._error, detail=self._error)

    async def close(self, drain_timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout_s
        await super().close(drain_timeout_s)
        producer, self._producer = self._producer, None
        if producer is not None:
            # Its own thread: the delivery thread may still be waiting on a batch the drain gave up on.
            await asyncio.to_thread(_shut_down, producer, max(0.0, deadline - loop.time()))
        self._io.shutdown(wait=False)

    # --- producer ----------------------------------------------------------------------------------------------

    def _new_producer(self) -> Producer:
        settings = producer_settings(self.config, os.environ)
        settings["error_cb"] = self._client_error
        settings["logger"] = log  # librdkafka's own log lines, through logging rather than raw stderr
        return Producer(settings)

    def _ready_producer(self) -> Producer:
        """The producer; a new one after a fatal error (e.g. the idempotence state was lost), which ends the old."""
        if self._producer is None:
            raise RuntimeError(f"kafka collector {self.name} is not started")
        if self._replace_producer:
            self._replace_producer = False
            old, self._producer = self._producer, self._new_producer()
            self._io.submit(_shut_down, old, 0.0)
        return self._producer

    def _route(self, event_type: str) -> tuple[str, Headers] | None:
        """Topic and headers of an event type, worked out once per type; None when the topic name is invalid."""
        try:
            return self._routes[event_type]
        except KeyError:
            topic = topic_for(self.config.topic, event_type)
            headers: Headers = [("type", event_type.encode())]
            route = (topic, headers) if TOPIC_NAME.fullmatch(topic) else None
            self._routes[event_type] = route
            return route

    # --- outcomes and health -------------------------------------------------------------------------------------

    def _outcome(
        self, size: int, produced: int, reports: _Reports, retriable: str | None, permanent: list[str]
    ) -> SendResult:
        permanent = permanent + [error.str() for error in reports.errors if error.code() in PERMANENT_ERRORS]
        failed = [error for error in reports.errors if error.code() not in PERMANENT_ERRORS]
        if failed:
            retriable = failed[0].str()
        elif retriable is None and reports.received < produced:
            retriable = f"no delivery report within {self.config.delivery_timeout_s:g} s"
        if permanent:
            self._set_error(f"batch of {size} rejected: {permanent[0]}")
            return SendResult.REJECTED
        if retriable is not None:
            self._set_error(f"batch of {size} not delivered: {retriable}")
            return SendResult.RETRY
        self._set_error("")
        return SendResult.DELIVERED

    def _set_error(self, detail: str) -> None:
        """Health follows the last outcome; the base class counts failed sends, so this only logs the changes."""
        if detail and not self._error:
            log.warning("collector %s: unhealthy: %s", self.name, detail)
        elif self._error and not detail:
            log.info("collector %s: delivering again", self.name)
        self._error = detail

    def _client_error(self, error: KafkaError) -> None:
        """librdkafka's error callback, on whichever thread serves callbacks: handled on the event loop."""
        if threading.get_ident() == self._loop_thread or self._loop is None:
            self._on_client_error(error)
        else:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to report to
                self._loop.call_soon_threadsafe(self._on_client_error, error)

    def _on_client_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._replace_producer = True
        elif error.code() not in OUTAGE_ERRORS:
            return  # a single connection failing: librdkafka reconnects, and the batch outcome tells the rest
        self._set_error(f"{error.name()}: {error.str()}")


def _shut_down(producer: Producer, timeout_s: float) -> None:
    """Delivers what the producer still holds within the timeout and discards the rest. librdkafka destroys it
    when the last reference goes: an explicit close could pull it from under a delivery wait still running."""
    if producer.flush(timeout_s) > 0:
        producer.purge()
        producer.poll(0)
