"""Options of the nats collector: servers, subject template, stream, in-flight bound, timeouts, auth and TLS.

Imported at start-up by the plugin registry, so it imports no client library. Secrets are never options: the
config names the environment variables that hold them.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from trackpoint.config.model import CollectorBase, Seconds, check_server_url


class NatsCollectorConfig(CollectorBase, tag="nats"):
    """NATS JetStream: one message per event (payload: the event's JSON line, header `Nats-Msg-Id`: the event id,
    so the stream drops a repeated id within its duplicate window); a batch is delivered once every publish is
    acknowledged by the stream."""

    servers: Annotated[
        list[str], Meta(min_length=1, description="NATS server URLs (`nats://host:4222`, `tls://host:4222`).")
    ] = msgspec.field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    subject: Annotated[
        str,
        Meta(
            min_length=1,
            description="Subject of each event; `{type}` is replaced by the event type, the rest is literal.",
        ),
    ] = "trackpoint.{type}"
    stream: Annotated[
        str | None,
        Meta(
            description="The JetStream stream the subjects belong to. Publishes carry it as the expected stream, "
            "so a subject captured by another stream is an error rather than a silent misdelivery. Null: no check."
        ),
    ] = "TRACKPOINT"
    create_stream: Annotated[
        bool,
        Meta(
            description="Create the stream if missing (file storage, subjects covering `subject`, "
            "`duplicate_window_s`), or add the subject and window to an existing one. False: the stream is "
            "managed elsewhere and only used."
        ),
    ] = True
    duplicate_window_s: Annotated[
        Seconds,
        Meta(
            description="For a created stream: how long it remembers message ids, so a retried or replayed event "
            "is stored once. Longer windows cost server memory per id; replays older than this are not deduplicated."
        ),
    ] = 120.0
    max_in_flight: Annotated[
        int, Meta(ge=1, le=65_536, description="Publishes awaiting their acknowledgement at once.")
    ] = 1024
    ack_timeout_s: Annotated[
        Seconds,
        Meta(
            description="Time a batch may take to be published and acknowledged; then it is retried (ids make the "
            "retry harmless). Also bounds stream management requests."
        ),
    ] = 5.0
    connect_timeout_s: Annotated[Seconds, Meta(description="Time allowed for one connection attempt.")] = 2.0
    reconnect_wait_s: Annotated[
        Seconds, Meta(description="Pause between connection attempts to the same server; attempts never stop.")
    ] = 2.0
    user: Annotated[str | None, Meta(description="User name for user/password authentication.")] = None
    password_env: Annotated[
        str | None, Meta(description="Name of the environment variable holding the password of `user`.")
    ] = None
    token_env: Annotated[
        str | None, Meta(description="Name of the environment variable holding an authentication token.")
    ] = None
    credentials_file: Annotated[
        str | None,
        Meta(
            description="A `.creds` file (user JWT and NKey seed) for decentralised auth, relative to data_dir unless "
            "absolute; needs the `nkeys` package."
        ),
    ] = None
    tls_ca: Annotated[
        str | None, Meta(description="CA bundle (PEM) that server certificates are verified against.")
    ] = None
    tls_cert: Annotated[str | None, Meta(description="Client certificate (PEM) for mutual TLS.")] = None
    tls_key: Annotated[str | None, Meta(description="Private key (PEM) of `tls_cert`.")] = None

    def __post_init__(self) -> None:
        for server in self.servers:
            check_server_url(server, ("nats", "tls", "ws", "wss"))
        if any(c in self.subject for c in " \t\r\n*>"):
            raise ValueError("subject must not contain whitespace or wildcards")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.password_env is not None and self.user is None:
            raise ValueError("password_env needs user")


def subject_of(template: str, event_type: str) -> str:
    return template.replace("{type}", event_type)


def stream_subject(subject: str) -> str:
    """The subject filter covering every subject the template yields: `{type}` → `*`, or `>` as the last token
    (event type names may contain dots)."""
    tokens = subject.split(".")
    covered = ["*" if "{type}" in token else token for token in tokens]
    if tokens[-1] == "{type}":
        covered[-1] = ">"
    return ".".join(covered)
