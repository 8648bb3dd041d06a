"""Options of the kafka collector: brokers, topic template, producer tuning and the security settings that make
Confluent Cloud, Amazon MSK and Azure Event Hubs' Kafka endpoint work by configuration alone.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from trackpoint.config.model import CollectorBase, Seconds

# Kafka's own rule for topic names (legal characters, at most 249 of them).
TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")

# librdkafka properties the collector sets from its own options; `properties` may not override them, so each
# guarantee (idempotence, acks=all, secrets from the environment) holds whatever else is configured.
OWNED_PROPERTIES = {
    "bootstrap.servers": "bootstrap_servers",
    "client.id": "client_id",
    "compression.type": "compression",
    "compression.codec": "compression",
    "linger.ms": "linger_ms",
    "queue.buffering.max.ms": "linger_ms",
    "message.timeout.ms": "delivery_timeout_s",
    "delivery.timeout.ms": "delivery_timeout_s",
    "enable.idempotence": "(always true)",
    "acks": "(always all)",
    "request.required.acks": "(always all)",
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_username",
    "sasl.password": "sasl_password_env",
    "ssl.ca.location": "ssl_ca_location",
}
# Time beyond message.timeout.ms granted to librdkafka to report the messages it has just timed out.
REPORT_MARGIN_S = 1.0

SECRET_PROPERTY = re.compile(r"(password|secret)$")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def topic_for(template: str, event_type: str) -> str:
    return template.replace("{type}", event_type)


class KafkaCollectorConfig(CollectorBase, tag="kafka"):
    """Kafka: one message per event (key: event id, value: the event as JSON, header `type`); idempotent, acks=all."""

    bootstrap_servers: Annotated[
        str,
        Meta(
            min_length=1,
            description="Comma-separated host:port list of brokers to start from. Confluent Cloud: "
            "`pkc-….confluent.cloud:9092`; MSK: the cluster's bootstrap brokers for the chosen auth (SASL/SCRAM "
            "port 9096, TLS 9094); Event Hubs: `<namespace>.servicebus.windows.net:9093`.",
        ),
    ]
    topic: Annotated[
        str,
        Meta(
            min_length=1,
            description="Topic name template; `{type}` is replaced by the event type (a name without `{type}` "
            "sends every type to one topic). Topics must exist unless the brokers auto-create them (Event Hubs: "
            "one event hub per topic): the events of a type whose topic does not exist (or may not be written) "
            "are refused, dead-lettered and counted as dropped, while the other types go on.",
        ),
    ] = "trackpoint.{type}"
    client_id: Annotated[
        str, Meta(min_length=1, description="Client id the brokers see (quotas, logs); `client.id`.")
    ] = "trackpoint"
    compression: Annotated[
        Literal["none", "gzip", "snappy", "lz4", "zstd"],
        Meta(description="Compression of produced batches (`compression.type`)."),
    ] = "lz4"
    linger_ms: Annotated[
        int,
        Meta(
            ge=0,
            le=60_000,
            description="How long librdkafka waits to fill a produce request (`linger.ms`). Each collector "
            "batch is flushed as soon as it is queued, so a small value is enough.",
        ),
    ] = 5
    delivery_timeout_s: Annotated[
        Seconds,
        Meta(
            description="Longest wait for one batch's delivery reports (also librdkafka's `message.timeout.ms`); "
            "a batch not wholly acknowledged by then is retried (or spooled), and the retry sends only the events "
            "no attempt delivered. A topic still missing after half of it is taken as missing "
            "(`topic.metadata.propagation.max.ms`, which `properties` may set). At least 1 s below send_timeout_s.",
        ),
    ] = 10.0
    security_protocol: Annotated[
        Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
        Meta(
            description="Transport and authentication (`security.protocol`). Confluent Cloud, MSK with "
            "SASL/SCRAM and Event Hubs: SASL_SSL; MSK with TLS (client certificates in `properties`): SSL."
        ),
    ] = "PLAINTEXT"
    sasl_mechanism: Annotated[
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None,
        Meta(
            description="SASL mechanism, required with the SASL_* protocols. Confluent Cloud: PLAIN; MSK: "
            "SCRAM-SHA-512; Event Hubs: PLAIN. OAUTHBEARER uses OIDC client credentials (`sasl_username` is the "
            "client id, the secret comes from `sasl_password_env`; token endpoint and scope in `properties`)."
        ),
    ] = None
    sasl_username: Annotated[
        str | None,
        Meta(
            description="SASL user name. Confluent Cloud: the API key; MSK: the SCRAM user; Event Hubs: "
            "`$ConnectionString` (literally)."
        ),
    ] = None
    sasl_password_env: Annotated[
        str | None,
        Meta(
            description="Name of the environment variable holding the SASL password; never the secret itself. "
            "Confluent Cloud: the API secret; MSK: the SCRAM password (from Secrets Manager); Event Hubs: the "
            "namespace connection string (`Endpoint=sb://…`).",
        ),
    ] = None
    ssl_ca_location: Annotated[
        str | None,
        Meta(
            description="CA certificate file (PEM) to verify the brokers with, for a private CA. Unset: the "
            "system's CA store, which Confluent Cloud, MSK and Event Hubs certificates verify against."
        ),
    ] = None
    properties: Annotated[
        dict[str, str],
        Meta(
            description="Further librdkafka properties, passed as they are (e.g. `socket.keepalive.enable: "
            "'true'` and `metadata.max.age.ms: '180000'`, recommended for Event Hubs). Properties the options "
            "above set, and secrets (`*password`, `*secret`), are refused here."
        ),
    ] = msgspec.field(default_factory=dict)
    properties_env: Annotated[
        dict[str, str],
        Meta(
            description="librdkafka properties whose values come from environment variables (property: variable "
            "name), for secrets such as `ssl.key.password`."
        ),
    ] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = check_topic_template(self.topic)
        if self.security_protocol.startswith("SASL_") and self.sasl_mechanism is None:
            problems.append(f"security_protocol {self.security_protocol} needs a sasl_mechanism")
        if self.sasl_mechanism is not None and not self.security_protocol.startswith("SASL_"):
            problems.append("sasl_mechanism needs security_protocol SASL_SSL (or SASL_PLAINTEXT)")
        if self.sasl_mechanism not in (None, "OAUTHBEARER") and None in (self.sasl_username, self.sasl_password_env):
            problems.append(f"sasl_mechanism {self.sasl_mechanism} needs sasl_username and sasl_password_env")
        problems += [
            f"{variable!r} is not an environment variable name"
            for variable in (self.sasl_password_env, *self.properties_env.values())
            if variable is not None and not ENV_NAME.fullmatch(variable)
        ]
        for key in (*self.properties, *self.properties_env):
            if key in OWNED_PROPERTIES:
                problems.append(f"property {key!r} is set by the option {OWNED_PROPERTIES[key]}")
        problems += [
            f"property {key!r} holds a secret: name its environment variable in properties_env"
            for key in self.properties
            if SECRET_PROPERTY.search(key)
        ]
        if self.delivery_timeout_s + REPORT_MARGIN_S >= self.send_timeout_s:
            problems.append(f"delivery_timeout_s must be at least {REPORT_MARGIN_S:g} s below send_timeout_s")
        if problems:
            raise ValueError("; ".join(problems))


def check_topic_template(template: str) -> list[str]:
    """What is wrong with a topic template: fields other than `{type}`, or a name Kafka would refuse."""
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)]
    except ValueError as exc:
        return [f"topic {template!r}: {exc}"]
    if any(name not in (None, "type") or spec or conversion for name, spec, conversion in fields):
        return [f"topic {template!r}: the only placeholder is {{type}}"]
    if not TOPIC_NAME.fullmatch(topic_for(template, "t")) or template in (".", ".."):
        return [f"topic {template!r}: a topic name is 1 to 249 of A-Z a-z 0-9 . _ -"]
    return []
