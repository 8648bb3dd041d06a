"""kafka: each event becomes one message (key: event id, value: the event as JSON, header `type`) on the topic its
type names, from an idempotent producer with acks=all; a batch is delivered when every message is acknowledged.

produce() only queues in librdkafka (C, non-blocking); the wait for delivery reports runs in a thread, bounded by
delivery_timeout_s, and so does the metadata request that tells an idle collector its brokers are back: the event
loop never waits for a broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from trackpoint.collectors.base import Collector, CollectorContext, Health, SendResult
from trackpoint.collectors.kafka.config import REPORT_MARGIN_S, TOPIC_NAME, KafkaCollectorConfig, topic_for
from trackpoint.event import Event
from trackpoint.log_limiter import LogLimiter, kind_of_text
from trackpoint.security.secrets import env_secret

log = logging.getLogger("trackpoint.collectors.kafka")

# Errors that no retry can cure: the event is refused (dead-lettered, counted as dropped) rather than retried
# forever, and the rest of its batch still goes. A topic that does not exist (or may not be written) is one: its
# events would otherwise hold back every other type's behind them.
PERMANENT_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
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

# While unhealthy with no batch waiting for a retry (an idle collector), a metadata request this often, bounded by
# PROBE_TIMEOUT_S, tells whether a broker answers again.
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 2.0
# Events delivered by an attempt of a batch that is then retried are remembered, so the retry skips them; at most
# this many batches' worth (beyond that the oldest are forgotten: at worst sent twice, which the key dedupes).
REMEMBERED_BATCHES = 8
# librdkafka logs every failed connection attempt, from each of its threads (75 lines in 15 s of a broker outage on two
# workers): its lines are written the first time of each kind, then at most this often per kind, with the count of
# those suppressed. The collector's own lines report the outage meanwhile (at once, then every 10 s, and its end).
LIBRDKAFKA_LOG_INTERVAL_S = 60.0
_THREAD_PREFIX = re.compile(r"^\[thrd:[^\]]*\]: ")
_OWN_COUNT = re.compile(r", \d+ identical error\(s\) suppressed")  # librdkafka's count of repeats: not a new kind

Headers = list[tuple[str, str | bytes | None]]


def producer_settings(config: KafkaCollectorConfig, environ: Mapping[str, str]) -> dict[str, Any]:
    """The librdkafka configuration of the collector; secrets are read from `environ` here and nowhere else."""

    def secret(variable: str, option: str = "properties_env") -> str:
        return env_secret(variable, option, environ)

    timeout_ms = round(config.delivery_timeout_s * 1000)
    settings: dict[str, Any] = {
        # A request to a hung broker must not outlive the batch it carries.
        "request.timeout.ms": min(30_000, timeout_ms),
        # A topic missing from the metadata is taken as missing (its events refused) within one delivery wait,
        # not after librdkafka's 30 s grace for a topic still propagating, during which every batch carrying one
        # of its events would time out and be retried.
        "topic.metadata.propagation.max.ms": min(30_000, timeout_ms // 2),
        # A broker closing an idle connection (connections.max.idle.ms; Event Hubs every few minutes) is routine, and
        # librdkafka reconnects by itself: no line each time. An outage is logged all the same (failed connects).
        "log.connection.close": False,
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
    """Delivery reports of one batch, by the event's place in it. Filled on the thread that serves librdkafka's
    callbacks; read on the loop once that thread is done (a list append is atomic under the GIL)."""

    __slots__ = ("delivered", "errors", "received")

    def __init__(self) -> None:
        self.received = 0
        self.delivered: list[int] = []
        self.errors: list[tuple[int, KafkaError]] = []

    def report(self, index: int, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.delivered.append(index)
        else:
            self.errors.append((index, error))
        self.received += 1


class KafkaCollector(Collector):
    """Produces each batch, then waits off the loop for its delivery reports: all acknowledged → delivered; a
    permanent failure (a message too large, a topic that does not exist) → that event is refused (dead-lettered and
    counted as dropped) and the others go on; any retriable failure → the batch is retried, and the retry sends
    only the events no attempt delivered (consumers dedupe on the key what a lost report still duplicates).

    Health is whether the brokers can be reached: lost on an outage (a batch not delivered, or librdkafka finding
    every broker down), back on a delivered batch or, with no batch to retry, on a metadata request that a broker
    answers (every PROBE_INTERVAL_S, off the loop), so an idle collector recovers without traffic."""

    def __init__(self, name: str, config: KafkaCollectorConfig, context: CollectorContext) -> None:
        super().__init__(name, config, context)
        self.config = config
        self._encoder = msgspec.json.Encoder()
        self._routes: dict[str, tuple[str, Headers] | None] = {}
        self._producer: Producer | None = None
        self._replace_producer = False
        self._sending = False
        self._error = ""
        self._errors_set = 0  # times health was lost: a probe that began before the last one must not clear it
        # (event id, ts) of events delivered by an attempt of a batch still to be retried, oldest first.
        self._delivered: dict[tuple[str, int], None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        # One thread waits for delivery reports, so one batch is in flight and reports never race each other.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kafka-{name}")
        # Another makes the metadata requests of the health probe, so they never delay a batch.
        self._probe_io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kafka-{name}-probe")
        self._probe_task: asyncio.Task[None] | None = None
        self._librdkafka_log = LibrdkafkaLog(name)  # kept by a replaced producer: its limits go on

    async def start(self) -> None:
        """Creates the producer; it connects in the background, so unreachable brokers do not fail the start."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._producer = self._new_producer()
        self._probe_task = self._loop.create_task(self._probe_while_idle(), name=f"probe-{self.name}")
        await super().start()

    async def send(self, batch: Sequence[Event]) -> SendResult:
        producer = self._ready_producer()
        if not self.retrying:
            self._delivered.clear()  # no batch waits for a retry: what is remembered belongs to batches dropped
        reports = _Reports()
        produced = 0
        retriable: str | None = None
        refused: list[tuple[int, str]] = []
        self._sending = True
        try:
            for index, event in enumerate(batch):
                if (event.id, event.ts) in self._delivered:  # an earlier attempt of this batch delivered it
                    continue
                route = self._route(event.type)
                if route is None:
                    refused.append((index, f"event type {event.type!r} makes an invalid topic name"))
                    continue
                topic, headers = route
                try:
                    producer.produce(
                        topic,
                        value=self._encoder.encode(event),
                        key=event.id,
                        headers=headers,
                        on_delivery=functools.partial(reports.report, index),
                    )
                except BufferError:  # librdkafka's queue is full: wait for what is queued, retry the rest later
                    retriable = "producer queue full"
                    break
                except KafkaException as exc:
                    error: KafkaError = exc.args[0]
                    if error.code() in PERMANENT_ERRORS:  # this event can never go; the others still do
                        refused.append((index, error.str()))
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
        return self._outcome(batch, produced, reports, retriable, refused)

    def health(self) -> Health:
        # Serving callbacks here lets an idle collector notice an outage (error callbacks) without sending.
        if self._producer is not None and not self._sending:
            self._producer.poll(0)
        return Health(healthy=not self._error, detail=self._error)

    async def close(self, drain_timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout_s
        await super().close(drain_timeout_s)
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.wait({self._probe_task}, timeout=1.0)
        self._probe_io.shutdown(wait=False)  # a probe still waiting on a broker ends within PROBE_TIMEOUT_S
        producer, self._producer = self._producer, None
        if producer is not None:
            # Its own thread: the delivery thread may still be waiting on a batch the drain gave up on.
            await asyncio.to_thread(_shut_down, producer, max(0.0, deadline - loop.time()))
        self._io.shutdown(wait=False)

    # --- producer ----------------------------------------------------------------------------------------------

    def _new_producer(self) -> Producer:
        settings = producer_settings(self.config, os.environ)
        settings["error_cb"] = self._client_error
        settings["logger"] = self._librdkafka_log  # librdkafka's own lines, through logging rather than raw stderr
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
        self,
        batch: Sequence[Event],
        produced: int,
        reports: _Reports,
        retriable: str | None,
        refused: list[tuple[int, str]],
    ) -> SendResult:
        refused = refused + [
            (index, error.str()) for index, error in reports.errors if error.code() in PERMANENT_ERRORS
        ]
        failed = [error for _, error in reports.errors if error.code() not in PERMANENT_ERRORS]
        if failed:
            retriable = failed[0].str()
        elif retriable is None and reports.received < produced:
            retriable = f"no delivery report within {self.config.delivery_timeout_s:g} s"
        if retriable is not None:
            self._remember([batch[index] for index in reports.delivered])
            self._set_error(f"batch of {len(batch)} not delivered: {retriable}")
            return SendResult.RETRY
        for event in batch:
            self._delivered.pop((event.id, event.ts), None)
        # The brokers answered: whatever they refused, they are reachable.
        self._set_error("")
        if not refused:
            return SendResult.DELIVERED
        # Counted and logged (at most every 10 s) by the base class, which also dead-letters them.
        self._note_error(f"{len(refused)} of a batch of {len(batch)} events refused: {refused[0][1]}")

        if len(refused) == len(batch):
            return SendResult.REJECTED
        self.refuse([batch[index] for index, _ in refused])
        return SendResult.DELIVERED

    def _remember(self, delivered: list[Event]) -> None:
        """Events of a batch to be retried that this attempt delivered: the retry skips them."""
        for event in delivered:
            self._delivered[(event.id, event.ts)] = None
        excess = len(self._delivered) - REMEMBERED_BATCHES * self.batch_max
        if excess > 0:
            for key in list(itertools.islice(self._delivered, excess)):
                del self._delivered[key]

    def _set_error(self, detail: str) -> None:
        """Health follows the last outcome; the base class counts failed sends, so this only logs the changes."""
        if detail and not self._error:
            log.warning("collector %s: unhealthy: %s", self.name, detail)
        elif self._error and not detail:
            log.info("collector %s: healthy again", self.name)
        if detail:
            self._errors_set += 1
        self._error = detail

    async def _probe_while_idle(self) -> None:
        """While unhealthy with no batch to retry (whose outcome would tell), asks the brokers for metadata off the
        loop every PROBE_INTERVAL_S: an answer makes the collector healthy again without any traffic."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            producer = self._producer
            if not self._error or self._sending or self.retrying or producer is None:
                continue
            errors_set = self._errors_set
            answered = await loop.run_in_executor(self._probe_io, _brokers_answer, producer, self._known_topic())
            if answered and errors_set == self._errors_set and not self._sending and not self.retrying:
                self._set_error("")

    def _known_topic(self) -> str | None:
        """A topic the collector produces to, to ask metadata for (None: every topic's, before the first send)."""
        return next((route[0] for route in self._routes.values() if route is not None), None)

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


class LibrdkafkaLog:
    """confluent-kafka's `logger`: librdkafka's lines, named after their collector and limited per kind (facility and
    text without numbers: a new kind of failure is written at once). Its LOG_ERR lines are mostly connections it
    retries by itself, so they are warnings here: the collector logs the error when events cannot be delivered."""

    def __init__(self, collector: str) -> None:
        self.collector = collector
        self.limiter = LogLimiter(LIBRDKAFKA_LOG_INTERVAL_S)

    def log(self, level: int, template: str, *args: object) -> None:
        """As confluent-kafka calls it: `log(level, "%s [%s] %s", facility, client name, message)`, on whichever
        thread serves librdkafka's callbacks."""
        facility, message = (str(args[0]), str(args[2])) if len(args) == 3 else ("LOG", template % args)
        message = _THREAD_PREFIX.sub("", message)
        level = logging.WARNING if level == logging.ERROR else level
        kind = (facility, kind_of_text(_OWN_COUNT.sub("", message)))
        self.limiter.log(log, level, kind, "collector %s: librdkafka %s: %s", self.collector, facility, message)


def _brokers_answer(producer: Producer, topic: str | None) -> bool:
    """Whether a broker answers a metadata request within PROBE_TIMEOUT_S (it blocks: run it off the loop)."""
    try:
        metadata = producer.list_topics(topic, timeout=PROBE_TIMEOUT_S)
    except KafkaException:
        return False
    return bool(metadata.brokers)


def _shut_down(producer: Producer, timeout_s: float) -> None:
    """Delivers what the producer still holds within the timeout and discards the rest. librdkafka destroys it
    when the last reference goes: an explicit close could pull it from under a delivery wait still running."""
    if producer.flush(timeout_s) > 0:
        producer.purge()
        producer.poll(0)
