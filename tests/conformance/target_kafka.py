"""Conformance target of the kafka collector: librdkafka's mock cluster (the real Kafka protocol, in process),
driven through librdkafka's mock API with ctypes so the brokers can go down and come back at the same address.

No Kafka broker can be installed here (see DESIGN.md); the mock cluster is what confluent-kafka's own tests use.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time
import uuid
from pathlib import Path
from typing import Any

import confluent_kafka
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

RD_KAFKA_PRODUCER = 0
ALL_BROKERS = -1


def _librdkafka() -> ctypes.CDLL | None:
    """The librdkafka confluent-kafka runs on (the wheels bundle their own), else the system's, else None."""
    package = Path(confluent_kafka.__file__).parent
    bundled = [
        *sorted(package.parent.glob("confluent_kafka.libs/librdkafka*")),
        *sorted(package.glob(".dylibs/librdkafka*")),
    ]
    path = str(bundled[0]) if bundled else ctypes.util.find_library("rdkafka")
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    handle, text, size = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "rd_kafka_conf_new": (handle, []),
        "rd_kafka_conf_set": (ctypes.c_int, [handle, text, text, text, size]),
        "rd_kafka_new": (handle, [ctypes.c_int, handle, text, size]),
        "rd_kafka_destroy": (None, [handle]),
        "rd_kafka_mock_cluster_new": (handle, [handle, ctypes.c_int]),
        "rd_kafka_mock_cluster_destroy": (None, [handle]),
        "rd_kafka_mock_cluster_bootstraps": (text, [handle]),
        "rd_kafka_mock_broker_set_down": (ctypes.c_int, [handle, ctypes.c_int32]),
        "rd_kafka_mock_broker_set_up": (ctypes.c_int, [handle, ctypes.c_int32]),
        "rd_kafka_mock_topic_create": (ctypes.c_int, [handle, text, ctypes.c_int, ctypes.c_int]),
        "rd_kafka_mock_partition_set_leader": (ctypes.c_int, [handle, text, ctypes.c_int32, ctypes.c_int32]),
    }
    for name, (result, arguments) in signatures.items():
        function = getattr(lib, name)
        function.restype = result
        function.argtypes = arguments
    return lib


class MockCluster:
    """A one-broker mock cluster whose broker can be set down (it closes every connection and refuses new ones)
    and up again: an outage and recovery at the same address, with the topics' contents kept."""

    def __init__(self) -> None:
        lib = _librdkafka()
        if lib is None:
            raise RuntimeError("librdkafka's shared library was not found (needed for its mock cluster API)")
        self._lib = lib
        errors = ctypes.create_string_buffer(512)
        conf = lib.rd_kafka_conf_new()
        lib.rd_kafka_conf_set(conf, b"log_level", b"3", errors, len(errors))  # no "bootstrap.servers" warning
        # The handle only hosts the cluster (librdkafka's book keeping); it never connects anywhere itself.
        self._handle = lib.rd_kafka_new(RD_KAFKA_PRODUCER, conf, errors, len(errors))
        if not self._handle:
            raise RuntimeError(f"rd_kafka_new: {errors.value.decode()}")
        self._cluster = lib.rd_kafka_mock_cluster_new(self._handle, 1)
        self.bootstrap_servers: str = lib.rd_kafka_mock_cluster_bootstraps(self._cluster).decode()

    def create_topic(self, topic: str, partitions: int) -> None:
        if self._lib.rd_kafka_mock_topic_create(self._cluster, topic.encode(), partitions, 1) != 0:
            raise RuntimeError(f"mock cluster: cannot create topic {topic}")

    def set_leader(self, topic: str, partition: int, broker: int) -> None:
        """Moves a partition's leadership; broker -1 leaves it without a leader (its messages wait, then time out)."""
        if self._lib.rd_kafka_mock_partition_set_leader(self._cluster, topic.encode(), partition, broker) != 0:
            raise RuntimeError(f"mock cluster: cannot set the leader of {topic} [{partition}]")

    def set_down(self) -> None:
        self._lib.rd_kafka_mock_broker_set_down(self._cluster, ALL_BROKERS)

    def set_up(self) -> None:
        self._lib.rd_kafka_mock_broker_set_up(self._cluster, ALL_BROKERS)

    def destroy(self) -> None:
        if self._cluster:
            self._lib.rd_kafka_mock_cluster_destroy(self._cluster)
            self._lib.rd_kafka_destroy(self._handle)
            self._cluster = self._handle = None


def read_messages(bootstrap_servers: str, topic_prefix: str, timeout_s: float = 10.0) -> list[Message]:
    """Every message of the topics named `<topic_prefix>…`, read from the beginning up to the high watermark of
    each partition. Order: by message timestamp (ms), then topic, partition, offset: the order of one partition
    is exact, across partitions and topics it is as exact as the millisecond timestamps."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"conformance-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "log_level": 3,
        }
    )
    try:
        metadata = consumer.list_topics(timeout=timeout_s)
        ends: dict[tuple[str, int], int] = {}
        for topic in metadata.topics:
            if topic.startswith(topic_prefix):
                for partition in metadata.topics[topic].partitions:
                    _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
                    if high > 0:
                        ends[(topic, partition)] = high
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for topic, partition in ends])
        found: list[tuple[int, str, int, int, Message]] = []
        remaining = dict(ends)
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"kafka: partitions {sorted(remaining)} not read to their end in {timeout_s} s")
            for message in consumer.consume(num_messages=1000, timeout=0.1):
                if message.error() is not None:
                    raise RuntimeError(f"kafka: {message.error()}")
                topic, partition, offset = message.topic(), message.partition(), message.offset()
                assert topic is not None and partition is not None and offset is not None
                found.append((message.timestamp()[1], topic, partition, offset, message))
                if offset + 1 >= remaining.get((topic, partition), 0):
                    remaining.pop((topic, partition), None)
        found.sort(key=lambda entry: entry[:4])
        return [message for *_, message in found]
    finally:
        consumer.close()


class KafkaTarget:
    """The kafka collector's conformance target: its own mock cluster and one single-partition topic for every
    event type, so that its offsets give the delivery order the battery checks (Kafka orders per partition)."""

    name = "kafka"
    supports_restart = True
    # Kafka keeps every message it is sent: a replayed or retried event arrives again, and consumers dedupe on the
    # key (the event id).
    dedupes_replays = False

    def __init__(self, cluster: MockCluster) -> None:
        self.cluster = cluster
        self.topic_prefix = f"conformance-{uuid.uuid4().hex[:12]}."
        self.topic = self.topic_prefix + "events"
        cluster.create_topic(self.topic, partitions=1)

    def collector_config(self) -> dict[str, Any]:
        return {
            "type": "kafka",
            "bootstrap_servers": self.cluster.bootstrap_servers,
            "topic": self.topic,
            "delivery_timeout_s": 2.0,
            "linger_ms": 1,
        }

    async def read_ids(self) -> list[str]:
        messages = await asyncio.to_thread(read_messages, self.cluster.bootstrap_servers, self.topic_prefix)
        return [_text(message.key()) for message in messages]

    async def stop(self) -> None:
        """The broker closes its connections and refuses new ones (connection refused); the data is kept."""
        self.cluster.set_down()

    async def start(self) -> None:
        """The broker accepts connections again, at the same address."""
        self.cluster.set_up()

    async def close(self) -> None:
        await asyncio.to_thread(self.cluster.destroy)


def _text(key: str | bytes | None) -> str:
    return key.decode() if isinstance(key, bytes) else key or ""


async def make_target() -> KafkaTarget:
    return KafkaTarget(await asyncio.to_thread(MockCluster))
