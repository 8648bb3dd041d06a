"""The core schema of the configuration: server, admin, event types, signing, bad rows, and the bases every
collector and preprocessor config extends (`CollectorBase`, `PreprocessorBase`).

Each component's own struct lives in its folder (`collectors/<name>/config.py`, `preprocessors/<name>/config.py`)
and reaches the loader through the registry. These structs are the single source of truth for validation, the JSON
schema (`trackpoint config schema`) and the reference docs; every option carries its description in `Meta`.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Final, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta, Struct

from trackpoint.fields.types import FIELD_TYPES, described_types

Seconds = Annotated[float, Meta(gt=0, le=86_400)]


def check_server_url(url: str, schemes: tuple[str, ...]) -> None:
    """Refuses, at load time, a server URL the client would only fail on at run time (retrying in silence): an
    unknown scheme, no host, or a port outside 1-65535."""
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ValueError(f"{url!r}: the scheme must be one of {', '.join(s + '://' for s in schemes)}")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"{url!r}: a unix socket URL needs a path")
        return
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"{url!r}: the port must be 1-65535")


# forbid_unknown_fields everywhere: a typo in the YAML must be an error, never a silently ignored option.


# Limits the tracking edge and the admin port share (their defaults differ where their traffic does).
RequestLineBytes = Annotated[
    int, Meta(ge=256, le=1 << 20, description="Longest request target (path and query); longer → 414.")
]
HeaderBytes = Annotated[
    int, Meta(ge=1024, le=1 << 20, description="Total size of all header names and values; larger → 431.")
]
HeaderCount = Annotated[int, Meta(ge=4, le=1000, description="Most header fields; more → 431.")]
HeaderTimeout = Annotated[
    Seconds,
    Meta(
        description="Time allowed from a request's first byte to the end of its headers (then 408), and for a new "
        "connection to start its first request (then it is closed)."
    ),
]
BodyTimeout = Annotated[
    Seconds, Meta(description="Time allowed to receive a request body after its headers; then 408.")
]
KeepaliveRequests = Annotated[int, Meta(ge=1, description="Requests served on one connection before it is closed.")]
InflatedBytes = Annotated[
    int,
    Meta(
        ge=0,
        le=64 << 20,
        description="Largest body once inflated (`Content-Encoding: gzip` or `deflate`); more → 413 "
        "`inflated_too_large`. Bodies are inflated as they arrive, never more than this held.",
    ),
]
InflationRatio = Annotated[
    int,
    Meta(
        ge=1,
        le=100_000,
        description="Largest inflated / compressed size of a compressed body (past its first KiB); more → 413 "
        "`inflation_ratio_exceeded`: a compression bomb is refused early.",
    ),
]


class Limits(Struct, forbid_unknown_fields=True, kw_only=True):
    """Per-request and per-connection limits of the tracking edge (safe defaults)."""

    max_request_line_bytes: RequestLineBytes = 8192
    max_header_bytes: HeaderBytes = 16384
    max_header_count: HeaderCount = 100
    max_body_bytes: Annotated[
        int, Meta(ge=0, le=16 << 20, description="Largest request body as sent (compressed or not); larger → 413.")
    ] = 65536
    max_inflated_bytes: InflatedBytes = 1 << 20
    max_inflation_ratio: InflationRatio = 100
    header_timeout_s: HeaderTimeout = 10.0
    body_timeout_s: BodyTimeout = 10.0
    keepalive_timeout_s: Annotated[
        Seconds,
        Meta(description="A keep-alive connection idle this long between requests is closed."),
    ] = 30.0
    max_keepalive_requests: KeepaliveRequests = 10000
    max_connections: Annotated[
        int, Meta(ge=1, description="Open connections per worker; one more is answered 503 and closed.")
    ] = 10000
    max_connections_per_ip: Annotated[
        int,
        Meta(
            ge=1,
            description="Open connections per worker from one client address (not counting trusted proxies, which "
            "carry many clients); one more is answered 503 `too_many_connections_from_ip` and closed, so one "
            "address cannot take every slot.",
        ),
    ] = 512
    max_pipelined_requests: Annotated[
        int,
        Meta(
            ge=1,
            le=100_000,
            description="Requests answered on one connection in one read before its answers are written; the last "
            "is answered `Connection: close` and the rest is not read (a client retries what a closed connection "
            "did not answer). Bounds the memory a client that pipelines without reading can take.",
        ),
    ] = 128
    max_pipelined_per_iteration: Annotated[
        Annotated[int, Meta(ge=1, le=1_000_000)] | None,
        Meta(
            description="Requests pipelined behind the first of a read answered in one event-loop iteration, over "
            "all the worker's connections; past it, a pipelined request is answered `Connection: close` and the "
            "rest of its connection's read is not read (the client retries it on a new connection). Clients that "
            "pipeline without reading answers cannot make one iteration long for everyone else. Unset: 4 x "
            "max_pipelined_requests (512), so four connections each pipelining a full read are never cut by it.",
        ),
    ] = None
    write_timeout_s: Annotated[
        Seconds,
        Meta(
            description="A connection whose answers the client has not read for this long (its send buffer above "
            "the high-water mark) is aborted, whatever it still has to send."
        ),
    ] = 10.0


class TagConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """tp.js, the JavaScript tag served on the tracking port: first party wherever the tracker runs on the site's
    subdomain. Its bytes are the built file shipped in the package, read and gzipped once at start-up."""

    enabled: Annotated[bool, Meta(description="Serve the tag on the tracking port.")] = True
    path: Annotated[
        str,
        Meta(
            pattern=r"^/[A-Za-z0-9._~/-]{0,255}$",
            description="Path of the current tag, cached briefly (`max_age_s`): pages that load it pick up a new "
            "version within that time.",
        ),
    ] = "/tp.js"
    versioned_path: Annotated[
        str,
        Meta(
            pattern=r"^/[A-Za-z0-9._~/-]{0,127}\{version\}[A-Za-z0-9._~/-]{0,127}$",
            description="Path of this version of the tag, `{version}` replaced by the tag's version "
            "(`/tp/1.0.0/tp.js`): cached for a year as immutable, and the path to pin with its integrity hash.",
        ),
    ] = "/tp/{version}/tp.js"
    max_age_s: Annotated[
        int, Meta(ge=0, le=86_400, description="Browser and CDN cache lifetime of the unversioned path.")
    ] = 300


class ServerConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """The tracking edge: where it listens, how many workers, and its limits."""

    host: Annotated[str, Meta(description="Address the tracking port binds to.")] = "0.0.0.0"
    port: Annotated[int, Meta(ge=1, le=65535, description="Tracking port.")] = 8080
    workers: Annotated[
        int,
        Meta(
            ge=0,
            le=256,
            description="Worker processes sharing the port; 0 means one per available core (the CPU affinity, "
            "capped by a container's cgroup CPU limit).",
        ),
    ] = 0
    backlog: Annotated[int, Meta(ge=16, le=65535, description="Listen backlog of each worker's socket.")] = 4096
    drain_timeout_s: Annotated[
        Seconds,
        Meta(
            description="On SIGTERM or reload: time to finish in-flight requests and flush collectors (all at once, "
            "within this time; what a collector cannot deliver in time stays in its spool for the next worker). A "
            "worker still running 5 s after it is killed."
        ),
    ] = 10.0
    shutdown_delay_s: Annotated[
        float,
        Meta(
            ge=0,
            le=300,
            description="On SIGTERM, seconds the tracker keeps serving, /readyz failing (`draining`), before the "
            "drain begins: for platforms that send SIGTERM while their load balancer still routes to the instance and "
            "have no preStop hook (Azure Container Apps, a proxy that polls /readyz). A second SIGTERM or SIGINT "
            "drains at once; a worker that dies meanwhile is started again. 0 (the default): drain at once; on "
            "Kubernetes the manifests' preStop sleep does this.",
        ),
    ] = 0.0
    worker_start_timeout_s: Annotated[
        Seconds,
        Meta(
            description="A worker not ready this long after it was started (a plugin's collector `start()` or "
            "constructor that never returns) is stopped and started again with backoff, its slot reported in "
            "`crash_looping` (/healthz, /readyz) from its second failed start. Also how long a reload waits for its "
            "new workers."
        ),
    ] = 30.0
    worker_max_memory_mb: Annotated[
        int,
        Meta(
            ge=0,
            le=1_048_576,
            description="A worker whose resident memory (RSS, as it reports once a second) passes this many MiB is "
            "replaced without a gap: a new worker for its slot first, then the old one drains (a leaking plugin, a "
            "cache grown past its use), counted in `trackpoint_worker_recycled_total`. 0 (the default) never "
            "replaces one; in a container, set it under the memory limit divided by the workers, so that a worker "
            "is replaced before the kernel's OOM killer takes it (and its in-memory batches) mid-request.",
        ),
    ] = 0
    worker_stall_timeout_s: Annotated[
        float,
        Meta(
            ge=2,
            le=3600,
            description="A serving worker that sent the supervisor no report (one a second, from its event loop) for "
            "this long is stalled (its loop blocked: a plugin calling time.sleep, a wedge): at once not ready "
            '(/readyz `worker_problems`), counted in `trackpoint_worker_stops_total{reason="stalled"}`, logged, '
            "and restarted (SIGTERM, then SIGKILL after drain_timeout_s + 5 s). A worker saturated with requests "
            "still reports about once a second (measured under wrk, docs/running.md): 10 s leaves room for that, "
            "a long garbage collection or a slow disk, and still catches a wedge before many requests time out.",
        ),
    ] = 10.0
    trusted_proxies: Annotated[
        list[str],
        Meta(
            description="Networks (CIDR) of load balancers whose `client_ip_header` is believed; from any other "
            "peer the header is ignored and the peer address is the client IP."
        ),
    ] = msgspec.field(default_factory=list)
    client_ip_header: Annotated[
        Literal["x-forwarded-for", "forwarded"],
        Meta(
            description="The header the trusted proxies name the client in, and the only one read: "
            "`x-forwarded-for` (AWS, GCP and Azure load balancers, nginx, HAProxy) or `forwarded` (RFC 7239: "
            "Envoy or nginx configured to write it). The other header is whatever the client sent, passed on by the "
            "proxy: reading it would let a client choose its own address."
        ),
    ] = "x-forwarded-for"
    limits: Annotated[Limits, Meta(description="Request and connection limits.")] = msgspec.field(
        default_factory=Limits
    )
    tag: Annotated[TagConfig, Meta(description="The JavaScript tag (tp.js) served on the tracking port.")] = (
        msgspec.field(default_factory=TagConfig)
    )


class AdminLimits(Struct, forbid_unknown_fields=True, kw_only=True):
    """Limits of the admin port (served by the supervisor, which must stay free to restart workers whatever admin
    clients do). Caps hold as bytes arrive; at a connection cap the longest-idle connection makes room."""

    max_request_line_bytes: RequestLineBytes = 8192
    max_header_bytes: HeaderBytes = 16384
    max_header_count: HeaderCount = 100
    max_body_bytes: Annotated[
        int, Meta(ge=0, le=16 << 20, description="Largest request body (budgets API); larger → 413.")
    ] = 1 << 20
    max_inflated_bytes: InflatedBytes = 4 << 20
    max_inflation_ratio: InflationRatio = 100
    header_timeout_s: HeaderTimeout = 10.0
    body_timeout_s: BodyTimeout = 10.0
    keepalive_timeout_s: Annotated[
        Seconds, Meta(description="A keep-alive connection idle this long between requests is closed.")
    ] = 15.0
    write_timeout_s: Annotated[
        Seconds, Meta(description="A connection whose answers the client has not read for this long is aborted.")
    ] = 10.0
    max_keepalive_requests: KeepaliveRequests = 1000
    max_pipelined_requests: Annotated[
        int,
        Meta(
            ge=1,
            le=1000,
            description="Requests parsed ahead on one connection while an earlier one is answered (they are "
            "answered in order, one at a time); one more closes the connection after those.",
        ),
    ] = 16
    max_connections: Annotated[
        int,
        Meta(
            ge=1,
            le=100_000,
            description="Open admin connections; one more closes the longest-idle connection to make room (503 "
            "when every connection is busy), so idle connections cannot lock out probes.",
        ),
    ] = 256
    max_connections_per_ip: Annotated[
        int,
        Meta(ge=1, description="Open admin connections from one address; one more closes that address' longest-idle."),
    ] = 64
    fd_reserve: Annotated[
        int,
        Meta(
            ge=0,
            le=100_000,
            description="File descriptors kept free for restarting workers: a new admin connection is refused when "
            "fewer would be left (the soft RLIMIT_NOFILE is raised to the hard limit at start).",
        ),
    ] = 128


class AdminConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """The admin port: health, readiness, metrics, budgets and plugin routes. Never expose it publicly.

    The probes (`/healthz`, `/readyz`, `/startupz`) are open; every other route needs `Authorization: Bearer
    <token>`. Without `token_env` or `token_file` the token is generated into `data_dir/keys/admin.token` (mode 0600)
    on first start, and a non-loopback `host` is refused: expose the port only with a token you configured."""

    host: Annotated[str, Meta(description="Address the admin port binds to.")] = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535, description="Admin port.")] = 8081
    token_env: Annotated[
        str | None,
        Meta(description="Environment variable holding the admin token (at least 16 bytes)."),
    ] = None
    token_file: Annotated[
        str | None,
        Meta(
            description="File holding the admin token (at least 16 bytes; surrounding whitespace ignored); "
            "relative to data_dir unless absolute. Neither set: `keys/admin.token` in data_dir, generated."
        ),
    ] = None
    probe_port: Annotated[
        Annotated[int, Meta(ge=1, le=65535)] | None,
        Meta(
            description="A second listener serving only `/healthz`, `/readyz` and `/startupz` (no token; its own "
            "connections under the same limits), for probes and load balancers that must not reach the rest of the "
            "admin port. Unset: none.",
        ),
    ] = None
    probe_host: Annotated[str, Meta(description="Address the probe listener binds to.")] = "0.0.0.0"
    limits: Annotated[AdminLimits, Meta(description="Admin port limits and timeouts.")] = msgspec.field(
        default_factory=AdminLimits
    )


# The dim naming the optional fields an event was kept without (`on_invalid: drop`): `field:reason`, comma-separated.
INVALID_DIM: Final = "invalid"

FieldSource = Literal["param", "query", "form", "json", "header", "cookie", "ip"]


class FieldSpec(Struct, forbid_unknown_fields=True, kw_only=True):
    """One declared field of an event type: where it comes from, its type and its limits."""

    # The names and descriptions are those of the table of field types (fields/types.py); the loader refuses any
    # other name (config/load.py: field_type_problems), so a type added to the table is accepted as it is.
    type: Annotated[
        str,
        Meta(description=described_types(), extra_json_schema={"enum": list(FIELD_TYPES)}),
    ] = "string"
    source: Annotated[
        FieldSource,
        Meta(
            description="param: query string, then form or JSON body; query; form (urlencoded body); json (body "
            "object key); header; cookie; ip (the client IP)."
        ),
    ] = "param"
    name: Annotated[
        str | None,
        Meta(description="Parameter, header or cookie name when it differs from the field's name."),
    ] = None
    required: Annotated[bool, Meta(description="A request without this field is rejected (400).")] = False
    max_len: Annotated[int, Meta(ge=1, le=65536, description="Longest accepted raw value, in characters.")] = 256
    min: Annotated[float | None, Meta(description="Smallest accepted value of a number or money field.")] = None
    max: Annotated[float | None, Meta(description="Largest accepted value of a number or money field.")] = None
    values: Annotated[list[str] | None, Meta(description="The accepted values of an enum field.")] = None
    default: Annotated[
        str | None,
        Meta(description="Raw value used when the request lacks the field (converted like input)."),
    ] = None
    into: Annotated[
        Literal["dims", "metrics"] | None,
        Meta(
            description="Where the value goes in the event; default: numbers, money and timestamps to metrics, "
            "the rest to dims."
        ),
    ] = None
    unexpanded_macros: Annotated[
        Literal["keep", "absent"],
        Meta(
            description="A value that is a macro nobody expanded (the exchange, player or ad server sent the "
            "placeholder itself: `${AUCTION_ID}`, `[ERRORCODE]`, `%%CACHEBUSTER%%`, `{click_id}`, also URL-encoded "
            "once more, `%5BERRORCODE%5D`; for a duration also VAST's -1 and -2, value unknown or withheld). keep: "
            "a value like any other; absent: never stored, the field counts as absent (its default applies) and "
            "a required field is refused (400 `macro_unsubstituted`). Costs one character test per value."
        ),
    ] = "keep"

    on_invalid: Annotated[
        Literal["reject", "drop"] | None,
        Meta(
            description="A value this field cannot accept (too long, wrong type, out of range, not UTF-8, "
            "controls). reject: the request is refused (400 with the reason); drop: the event is recorded without "
            "the field and `dims.invalid` names it with the reason (`cid:invalid_encoding`, several comma-"
            "separated). Unset: drop on event types that answer with a pixel (`response.kind: gif`: impressions, "
            "video events), reject elsewhere. Required fields and dedupe-key fields always reject."
        ),
    ] = None

    @property
    def is_number(self) -> bool:
        """Whether the field's values are numbers (its type's `numbers` in fields/types.py)."""
        row = FIELD_TYPES.get(self.type)
        return row is not None and row.numbers

    @property
    def place(self) -> Literal["dims", "metrics"]:
        """Where the value goes in the event: `into` when set; else numbers to metrics, the rest to dims."""
        return self.into or ("metrics" if self.is_number else "dims")


class UserIdCookie(Struct, forbid_unknown_fields=True, kw_only=True):
    """The first-party user id cookie: `SameSite=None; Secure; HttpOnly`, on pixel and 204 responses only."""

    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Cookie name.")] = "tp_uid"
    max_age_days: Annotated[
        int, Meta(ge=1, le=400, description="Lifetime (Max-Age) in days; browsers cap cookies at 400 days.")
    ] = 390
    domain: Annotated[
        Annotated[str, Meta(pattern=r"^\.?[A-Za-z0-9.-]{1,253}$")] | None,
        Meta(
            description="Domain attribute (e.g. `example.com` to share it across subdomains); unset: this host only.",
        ),
    ] = None


class CorsSpec(Struct, forbid_unknown_fields=True, kw_only=True):
    """Cross-origin requests from browsers (CORS), for event types a web page calls with `fetch` or `sendBeacon`
    from another origin. Off while `allow_origins` is empty. A preflight (`OPTIONS`, on its paths and its batch
    paths) from an allowed origin is answered 204 with the allowed methods (the event type's;
    POST on a batch path) and headers (a gzipped batch needs `content-encoding`); from any other origin 403
    `cors_origin_not_allowed`. Other responses to an allowed origin carry `Access-Control-Allow-Origin`; a request
    from another origin is still recorded, only without CORS headers (the browser then hides the response)."""

    allow_origins: Annotated[
        list[str],
        Meta(
            description="Allowed origins: exact (`https://shop.example.com`, `http://localhost:3000`), every "
            "subdomain (`https://*.example.com`; not example.com itself), or `*` (any origin, without "
            "credentials). Without a scheme, https (`*.example.com`). Empty: CORS off."
        ),
    ] = msgspec.field(default_factory=list)
    allow_credentials: Annotated[
        bool,
        Meta(
            description="Send `Access-Control-Allow-Credentials: true`: the page's `fetch(..., {credentials: "
            "'include'})` and `sendBeacon` then send and receive cookies (the user id cookie needs it). Not with `*`."
        ),
    ] = False
    allow_headers: Annotated[
        list[Annotated[str, Meta(pattern=r"^[A-Za-z0-9-]{1,64}$")]],
        Meta(description="Request headers a page may send (`content-type` for JSON bodies)."),
    ] = msgspec.field(default_factory=lambda: ["content-type"])
    max_age_s: Annotated[
        int,
        Meta(
            ge=0,
            le=86_400,
            description="How long a browser may reuse a preflight's answer (browsers cap it: Chrome at 7200).",
        ),
    ] = 600


class ResponseSpec(Struct, forbid_unknown_fields=True, kw_only=True):
    """What the client gets back. The response never waits for a collector."""

    kind: Annotated[
        Literal["gif", "no_content", "json", "redirect"],
        Meta(description='gif: 43-byte transparent GIF; no_content: 204; json: {"id": ...}; redirect: 302.'),
    ] = "gif"
    user_id_cookie: Annotated[
        UserIdCookie | None,
        Meta(
            description="For gif and no_content: set a first-party user id cookie (a random id, recorded in "
            "dims.uid) when the request has none and the event type's check_consent allows it. Unset: no cookie."
        ),
    ] = None
    cors: Annotated[
        CorsSpec, Meta(description="Cross-origin requests from web pages (CORS); off unless allow_origins is set.")
    ] = msgspec.field(default_factory=CorsSpec)
    redirect_field: Annotated[str, Meta(description="For redirect: the field holding the destination URL.")] = "url"
    allow_hosts: Annotated[
        list[str],
        Meta(
            description="For redirect: destination hosts allowed, exact (`example.com`) or as a suffix "
            "(`.example.com`), in ASCII (an internationalised host as its `xn--` form). Only http/https "
            "destinations on these hosts (or signed ones, see signed_destinations) are followed; a destination "
            "with non-ASCII characters or spaces (an IRI) is sent percent-encoded, its host in IDNA. Anything "
            "else is 400 (or the fallback_url) and the click is still recorded with `dims.redirect_rejected` "
            "and an id of its own."
        ),
    ] = msgspec.field(default_factory=list)
    signed_destinations: Annotated[
        bool,
        Meta(
            description="For redirect: a destination on any host is followed when the request carries a valid "
            "signature (see `signing`; the signature covers the destination parameter, which must then be a query "
            "parameter, listed in `signed_params` if the type has any). A request with a bad signature is refused "
            "(403) even under `signature: off`."
        ),
    ] = False
    fallback_url: Annotated[
        Annotated[str, Meta(pattern=r"^https?://[!-~]+$", max_length=2048)] | None,
        Meta(
            description="For redirect: where a refused destination sends the user (302 here, with "
            "`X-Reject-Reason: redirect_not_allowed`), so a browser shows a page rather than a JSON body; the "
            "click is recorded as refused either way. An absolute http(s) URL in ASCII. Unset: 400 with the JSON "
            "reason."
        ),
    ] = None
    macros: Annotated[
        bool,
        Meta(
            description="For redirect: expand `{name}` in the destination with the event's field of that name "
            "(`{cid}`, `{crid}`, `{imp}`, ...), `{click_id}` with the click id issue_click_id issued (else the "
            "event id, as `{event_id}`), URL-encoded; unknown names are left as they are."
        ),
    ] = False


class RateLimitSpec(Struct, forbid_unknown_fields=True, kw_only=True):
    """A rate limit of an event type: a token bucket per client network (or per campaign, or per value of a dim
    such as `geo.country`) in each worker. Off unless `rate_per_s` is set. Each worker limits on its own: with N
    workers a client may get up to N times the rate, depending on how the kernel spreads its connections."""

    rate_per_s: Annotated[
        Annotated[float, Meta(gt=0)] | None,
        Meta(description="Requests a second one key may make, on average, per worker; unset: no limit."),
    ] = None
    burst: Annotated[int, Meta(ge=1, le=1_000_000, description="Requests one key may make at once (bucket size).")] = (
        100
    )
    by: Annotated[
        Literal["network", "campaign", "field"],
        Meta(
            description="network: one bucket per client network (the client IP, X-Forwarded-For aware, at "
            "ipv4_prefix / ipv6_prefix); campaign: one bucket per value of campaign_field (requests without it "
            "are not limited); field: one bucket per value of the dim `field`, taken after the event type's "
            "preprocessors, so it may be a dim they add such as `geo.country` (events without it are not limited)."
        ),
    ] = "network"
    campaign_field: Annotated[
        str, Meta(description="For by: campaign, the field (a dims field of this event type) that names it.")
    ] = "cid"
    field: Annotated[
        str | None,
        Meta(
            description="For by: field, the dim whose value is the key: a dims field of this event type or a dim "
            "one of its preprocessors adds (`geo.country`)."
        ),
    ] = None
    ipv4_prefix: Annotated[int, Meta(ge=8, le=32, description="For by: network, bits of an IPv4 address kept.")] = 24
    ipv6_prefix: Annotated[int, Meta(ge=16, le=128, description="For by: network, bits of an IPv6 address kept.")] = 64
    action: Annotated[
        Literal["reject", "shed"],
        Meta(
            description="Over the limit: reject answers 429 (`rate_limited`, counted in trackpoint_rejected_total); "
            "shed answers the normal response but records nothing (counted in trackpoint_shed_total)."
        ),
    ] = "reject"
    max_keys: Annotated[
        int,
        Meta(
            ge=16,
            le=10_000_000,
            description="Buckets kept per worker; idle ones are swept, and at the bound the oldest is evicted.",
        ),
    ] = 100_000


class BatchSpec(Struct, forbid_unknown_fields=True, kw_only=True):
    """Batch endpoints of an event type: many events in one POST body, as analytics SDKs and servers send them.

    The body is a JSON array of items, or an object holding one: Snowplow's `{"schema": ..., "data": [...]}`,
    Segment's and RudderStack's `{"batch": [...]}`, Matomo's `{"requests": ["?idsite=1&...", ...]}` (each a query
    string). Each item is built into its own event (its own id), from its top-level members as a JSON body would
    be; the answer lists the refused items and why, once every accepted item's line is written. The body's size is
    capped by `server.limits` (`max_body_bytes`, `max_inflated_bytes`, `max_inflation_ratio`): raise them for large
    batches. On a signed event type the batch URL's signature covers all of the batch: every parameter of the URL
    (the items inherit them), whatever `signed_params` says, and the whole body, by its digest `bd` (`trackpoint
    sign --data BODY URL`): 403 `body_unsigned` or `body_digest_invalid` otherwise. A type with `postback_auth`
    takes no batches."""

    paths: Annotated[
        list[str], Meta(description="Batch paths (exact match, POST only) of this event type; none by default.")
    ] = msgspec.field(default_factory=list)
    max_items: Annotated[
        int, Meta(ge=1, le=100_000, description="Items per batch; more → 413 `batch_too_large`, nothing recorded.")
    ] = 500


class InvalidTrafficSpec(Struct, forbid_unknown_fields=True, kw_only=True):
    """What happens to an event flagged as invalid traffic (`dims.ivt`: `bot`, `prefetch`, `too_fast`, set by the
    flag_invalid_traffic and attribute_conversion preprocessors). The client's response is the same either way."""

    action: Annotated[
        Literal["keep", "route", "drop"],
        Meta(
            description="keep: recorded like any other event, with its flag; route: recorded only by `collectors` "
            "(counted in trackpoint_invalid_traffic_routed_total); drop: not recorded (counted in "
            "trackpoint_invalid_traffic_dropped_total)."
        ),
    ] = "keep"
    collectors: Annotated[
        list[str], Meta(description="For route: the collectors flagged events go to instead of the type's own.")
    ] = msgspec.field(default_factory=list)


class PostbackAuthSpec(Struct, forbid_unknown_fields=True, kw_only=True):
    """Authentication of server-to-server postbacks with a shared secret per advertiser: header `X-TP-Timestamp`
    (epoch seconds) and `X-TP-Signature`, the hex HMAC-SHA256 under the advertiser's secret of the timestamp, a
    newline, the raw query string (without `?`), a newline and the raw body. Refused: 401 `postback_auth_missing`,
    403 `postback_auth_invalid`, `postback_auth_expired`, `postback_advertiser_unknown`."""

    mode: Annotated[
        Literal["off", "optional", "required"],
        Meta(
            description="required: a postback without credentials is refused (401); optional: it is accepted and "
            'marked `dims.authenticated = "0"` (authenticated ones `"1"`); bad credentials are refused under '
            "both (403)."
        ),
    ] = "off"
    advertiser_field: Annotated[
        str, Meta(description="The field (a dims field of this event type) naming the advertiser whose secret applies.")
    ] = "adv"
    secrets: Annotated[
        dict[str, SecretSource],
        Meta(
            description="Secrets by advertiser (the values of advertiser_field), each at least 16 bytes; a "
            "secret_file is relative to data_dir unless absolute."
        ),
    ] = msgspec.field(default_factory=dict)
    max_skew_s: Annotated[
        int,
        Meta(ge=1, le=86_400, description="A signature whose timestamp is further than this from now is refused."),
    ] = 300
    token_param: Annotated[
        str | None,
        Meta(
            description="Also accept the advertiser's secret itself in this query parameter (e.g. `token`), for "
            "platforms that cannot sign; it travels in the URL, so prefer signatures. Unset: signatures only."
        ),
    ] = None


class EventTypeSpec(Struct, forbid_unknown_fields=True, kw_only=True):
    """An event type: the paths that receive it, its fields, id, response, preprocessors and collectors."""

    preset: Annotated[
        str | None,
        Meta(
            description="Start from a preset event type (the built-in defaults, or one a plugin provides): its "
            "options apply unless this event type sets them."
        ),
    ] = None
    paths: Annotated[list[str], Meta(min_length=1, description="Request paths (exact match) of this type.")]
    methods: Annotated[
        list[Literal["GET", "HEAD", "POST"]], Meta(min_length=1, description="Accepted HTTP methods.")
    ] = msgspec.field(default_factory=lambda: ["GET", "HEAD"])
    fields: Annotated[dict[str, FieldSpec], Meta(description="Declared fields, by name.")] = msgspec.field(
        default_factory=dict
    )
    dedupe_key: Annotated[
        list[str],
        Meta(
            description="Fields whose values make the event id deterministic (id = hash(type, values)), so a "
            "repeated request or a replayed log yields the same id. Empty: a time-ordered random id."
        ),
    ] = msgspec.field(default_factory=list)
    response: Annotated[ResponseSpec, Meta(description="The response.")] = msgspec.field(default_factory=ResponseSpec)
    preprocessors: Annotated[list[str], Meta(description="Preprocessor names, applied in this order.")] = msgspec.field(
        default_factory=list
    )
    collectors: Annotated[list[str], Meta(description="Collector names this event type feeds.")] = msgspec.field(
        default_factory=lambda: ["log"]
    )
    rate_limit: Annotated[RateLimitSpec, Meta(description="Rate limit of this event type (off by default).")] = (
        msgspec.field(default_factory=RateLimitSpec)
    )
    signature: Annotated[
        Literal["off", "optional", "required"],
        Meta(
            description="Signed URLs (see `signing`), checked before any other work. required: an unsigned "
            'request is refused; optional: an unsigned request is accepted and marked `dims.signed = "0"` '
            '(signed ones `"1"`); a bad, expired or unknown-key signature is refused under both (403). On a '
            "type that takes POST, a signed request's body is covered too: its SHA-256 travels in the signed `bd` "
            "parameter (`trackpoint sign --data`), and a body without one is refused (403 `body_unsigned`)."
        ),
    ] = "off"
    signed_params: Annotated[
        list[str],
        Meta(
            description="The query parameters the signature covers (with `kid`, `exp` and `bd`); the others are "
            "free, so an exchange can substitute its `${AUCTION_*}` macros into a signed URL. A listed parameter "
            "cannot be added, removed or changed. Empty: every parameter is covered."
        ),
    ] = msgspec.field(default_factory=list)
    invalid_traffic: Annotated[
        InvalidTrafficSpec, Meta(description="What happens to events flagged as invalid traffic (kept by default).")
    ] = msgspec.field(default_factory=InvalidTrafficSpec)
    postback_auth: Annotated[
        PostbackAuthSpec, Meta(description="Shared-secret authentication of advertiser postbacks (off by default).")
    ] = msgspec.field(default_factory=PostbackAuthSpec)
    batch: Annotated[BatchSpec, Meta(description="Batch endpoints: many events per request (none by default).")] = (
        msgspec.field(default_factory=BatchSpec)
    )

    def drops_invalid(self, name: str) -> bool:
        """Whether an invalid value of field `name` is dropped rather than refused: its `on_invalid`, else `drop`
        on a type answering with a pixel; never for a required or dedupe-key field (their absence changes the
        event)."""
        spec = self.fields[name]
        if spec.required or name in self.dedupe_key:
            return False
        if spec.on_invalid is not None:
            return spec.on_invalid == "drop"
        return self.response.kind == "gif"


# --- collectors: one config struct per collector type, tagged by `type` ---------------------------------------


class SpoolConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """The disk spool of a collector: where batches wait, in order, while the collector's target is down."""

    enabled: Annotated[
        bool,
        Meta(
            description="Spool failed batches to disk and retry them in order. Off: a failed batch is retried "
            "from memory only, and what exceeds max_pending_events is dropped (counted), or under `when_full: "
            "backpressure` refused (503) at the edge."
        ),
    ] = True
    max_bytes: Annotated[
        int,
        Meta(
            ge=1 << 16,
            description="Disk the spool of one worker may take, the backlogs it adopted from earlier workers "
            "included; then the `when_full` policy.",
        ),
    ] = 1 << 30
    segment_bytes: Annotated[
        int, Meta(ge=1 << 12, le=1 << 30, description="Size of one spool segment file; emptied segments are deleted.")
    ] = 16 << 20
    when_full: Annotated[
        Literal["drop_newest", "drop_oldest", "backpressure"],
        Meta(
            description="When the spool is full: drop_newest refuses new batches, drop_oldest discards the oldest "
            "spooled batch (both counted exactly as dropped; `trackpoint replay` refills from the logs); "
            "backpressure answers 503 (`backpressure`) on the event types feeding this collector until there is room. "
            "The same applies to the memory batch at max_pending_events when no spool can take its excess (off, "
            "full, or unwritable)."
        ),
    ] = "drop_newest"
    fsync: Annotated[bool, Meta(description="fsync each spooled batch (survives power loss, costs a disk flush).")] = (
        False
    )


class CollectorBase(Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    """Options every collector has."""

    required: Annotated[
        bool,
        Meta(
            description="The tracker is ready (/readyz) only while this collector is healthy. Leave false for "
            "targets whose outage the spool absorbs."
        ),
    ] = False
    max_pending_events: Annotated[
        int,
        Meta(
            ge=1,
            description="Bound of the in-memory batch (about 1.3 KB per event of the default types). Beyond it the "
            "oldest events move to the spool, a step per event-loop iteration, even while a send hangs (memory may "
            "exceed it by a quarter, at least batch_max_events, meanwhile); with no spool that can take them, "
            "`spool.when_full` applies: dropped and counted, or 503 backpressure.",
        ),
    ] = 20_000
    max_pending_bytes: Annotated[
        int,
        Meta(
            ge=1 << 16,
            description="Bound, in bytes (48 MiB by default), of the memory the events held take, the in-memory "
            "batch and the batch being sent together (each event's encoded length plus its Python objects' "
            "overhead, estimated once as it is offered, from above: `trackpoint_collector_memory_bytes`). It "
            "applies beside max_pending_events, as that one does (the spool, then `spool.when_full`; a quarter more "
            "meanwhile), and bounds large events (long user agents, fields up to their max_len): events of the "
            "default types reach max_pending_events first.",
        ),
    ] = 48 << 20
    flush_interval_ms: Annotated[
        int, Meta(ge=1, le=60_000, description="The batch is flushed at least this often.")
    ] = 100
    batch_max_events: Annotated[
        int,
        Meta(
            ge=1,
            description="A batch this large is flushed at once, without waiting for the interval. Flushing runs "
            "on the worker's event loop: smaller batches keep each pause (and the tail latency) short.",
        ),
    ] = 1024
    send_timeout_s: Annotated[
        Seconds,
        Meta(description="A send that takes longer is abandoned and retried (a hung target or plugin is isolated)."),
    ] = 30.0
    send_stall_s: Annotated[
        float,
        Meta(
            ge=0,
            le=86_400,
            description="A send still running after this long makes the collector unhealthy (`send in flight for N "
            "s` in /readyz; a `required` one fails it) until a send ends, without waiting for its timeout: a target "
            "that takes the connection but does not answer (a blackholed broker, a paused Redis, a stopped NATS) "
            "shows within this, not at the first timeout (send_timeout_s, or the collector's own). Sends normally "
            "take milliseconds; raise it for a target whose sends are slow by nature. 0: only the timeout tells.",
        ),
    ] = 2.0
    start_timeout_s: Annotated[
        Seconds,
        Meta(
            description="A start that takes longer is abandoned, as one that fails: the worker serves without this "
            "collector, which holds its events (spool, or memory) and is unhealthy until a retried start succeeds "
            "(the log: the worker does not start).",
        ),
    ] = 10.0
    retry_initial_ms: Annotated[
        int, Meta(ge=1, le=600_000, description="First wait before retrying a failed batch; doubles per failure.")
    ] = 200
    retry_max_ms: Annotated[
        int, Meta(ge=1, le=3_600_000, description="Longest wait between retries (each wait has ±50% jitter).")
    ] = 10_000
    spool: Annotated[SpoolConfig, Meta(description="The disk spool for outages of the target.")] = msgspec.field(
        default_factory=SpoolConfig
    )
    trusted: Annotated[
        bool,
        Meta(
            description="Whether this collector may receive the client IP (ctx.ip) and User-Agent (ctx.ua). An "
            "untrusted collector never gets them, not even a truncated IP (parsed ctx.device is kept)."
        ),
    ] = False
    fields_allow: Annotated[
        list[str] | None,
        Meta(
            description="Only these parts of an event reach this collector: `dims`, `metrics`, `ctx` (whole "
            "sections) or `dims.NAME`, `metrics.NAME`, `ctx.ip|ua|referer|device`; id, type, ts and meta always "
            "do. Unset: everything the privacy policy allows."
        ),
    ] = None
    fields_deny: Annotated[
        list[str],
        Meta(
            description="Parts of an event never sent to this collector (same paths as fields_allow). On an "
            "untrusted collector, every field an event type reads from the client IP, a cookie or a header "
            "(`source: ip|cookie|header`, the user id cookie's `dims.uid`, a field its preprocessors read from "
            "there, and private dims they add, such as geo's `dims.geo.city`) is added here, unless `send_private` "
            "names it."
        ),
    ] = msgspec.field(default_factory=list)
    send_private: Annotated[
        list[str],
        Meta(
            description="Fields read from the client IP, a cookie or a header (by field name; `uid` for the user "
            "id cookie; a preprocessor's private dim by its name, e.g. `geo.city`; a field a preprocessor reads "
            "by its name) that this untrusted collector may receive all the same, and `url` fields it gets whole: "
            "the explicit opt-in."
        ),
    ] = msgspec.field(default_factory=list)
    fields_trim_url: Annotated[
        list[str],
        Meta(
            description="Dims holding URLs (`dims.NAME`) that reach this collector as scheme, host and path only: "
            "without user info, query string and fragment (`?email=...#token=...`). On an untrusted collector, "
            "every field of type `url` of the event types that feed it is added here, unless `send_private` names "
            "it."
        ),
    ] = msgspec.field(default_factory=list)
    referer_query: Annotated[
        bool,
        Meta(
            description="Send ctx.referer whole to this untrusted collector. By default it gets the referer "
            "without its query string and fragment (they often carry emails, tokens, search terms)."
        ),
    ] = False


# --- preprocessors: each type's struct (in its folder) extends this one, tagged by `type` -----------------------


class PreprocessorBase(Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    """Options every preprocessor has (none yet); the `type` tag picks the preprocessor. Two class variables say
    what a preprocessor adds to events: `output_dims`, the dims it adds (a rate limit `by: field` may key on them),
    and `private_dims`, those of them that can identify a person (untrusted collectors get them only when their
    `send_private` names them)."""

    # Dims the preprocessor adds to events (e.g. geo's `geo.country`): a rate limit `by: field` may key on them.
    output_dims: ClassVar[tuple[str, ...]] = ()
    # Those of output_dims that can identify a person: untrusted collectors get them only when they name them in
    # `send_private`, like fields read from the client IP, a cookie or a header.
    private_dims: ClassVar[tuple[str, ...]] = ()


def type_tag(config: type[CollectorBase] | type[PreprocessorBase]) -> str:
    """The `type:` a user writes for a component: the tag of its config struct."""
    struct_config = getattr(config, "__struct_config__", None)
    tag = getattr(struct_config, "tag", None)
    if not isinstance(tag, str):
        name = getattr(config, "__name__", repr(config))
        raise TypeError(f"{name} is not a tagged config struct (class {name}(CollectorBase, tag='...'))")
    return tag


def one_of_problem(name: str, env: str | None, file: str | None) -> str | None:
    """What is wrong with a secret option pair `<name>_env` / `<name>_file` unless exactly one is set, else None
    (the rule of every such pair; security/secrets.py reads them)."""
    if (env is None) == (file is None):
        return f"needs exactly one of {name}_env and {name}_file"
    return None


class SecretSource(Struct, forbid_unknown_fields=True, kw_only=True):
    """Where a secret key comes from: an environment variable or a file (never the config itself)."""

    secret_env: Annotated[
        str | None, Meta(description="Name of the environment variable holding the secret (at least 16 bytes).")
    ] = None
    secret_file: Annotated[
        str | None,
        Meta(
            description="File holding the secret (at least 16 bytes; surrounding whitespace is ignored), relative "
            "to data_dir unless absolute."
        ),
    ] = None


class RejectedConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """Bad rows: a sample of rejected requests, as events of type `rejected` (reason, status, event type, method,
    anonymised client IP, truncated target with parameter values removed unless listed in keep_values), sent to
    their own collectors so operators can see what is thrown away. Off while `collectors` is empty."""

    collectors: Annotated[
        list[str], Meta(description="Collector names the rejected stream feeds (use a collector of its own).")
    ] = msgspec.field(default_factory=list)
    sample_rate: Annotated[
        float, Meta(ge=0, le=1, description="Share of rejected requests recorded (1.0: every one, up to max_per_s).")
    ] = 0.01
    max_per_s: Annotated[
        int, Meta(ge=1, le=1_000_000, description="Most bad rows a worker records per second (a flood stays small).")
    ] = 100
    max_target_len: Annotated[
        int, Meta(ge=16, le=8192, description="The recorded request target is cut to this many characters.")
    ] = 256
    keep_values: Annotated[
        list[str],
        Meta(
            description="Query parameters whose values are kept in the recorded target; every other value is "
            "replaced by `*` (values may be personal)."
        ),
    ] = msgspec.field(default_factory=lambda: ["cid", "crid", "pub", "price", "cur", "ev", "t", "value"])


class SigningKey(Struct, forbid_unknown_fields=True, kw_only=True):
    """One signing key: its secret comes from an environment variable or a file (never from the config itself)."""

    secret_env: Annotated[
        str | None, Meta(description="Environment variable holding the secret (at least 16 bytes).")
    ] = None
    secret_file: Annotated[
        str | None,
        Meta(
            description="File holding the secret (at least 16 bytes; surrounding whitespace ignored), relative "
            "to data_dir unless absolute."
        ),
    ] = None
    generate: Annotated[
        bool,
        Meta(description="Create secret_file with 32 random bytes (hex, mode 0600) when it does not exist."),
    ] = False


class SigningConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """Keys of signed tracking URLs (HMAC-SHA256). Every listed key is accepted, so keys rotate without downtime:
    add the new key, sign with it, remove the old one when its URLs have expired."""

    keys: Annotated[
        dict[str, SigningKey],
        Meta(description="Keys by key id (the `kid` parameter of a signed URL)."),
    ] = msgspec.field(default_factory=dict)
    sign_with: Annotated[
        str | None, Meta(description="Key id `trackpoint sign` uses; default: the first key listed.")
    ] = None


class Config(Struct, forbid_unknown_fields=True, kw_only=True):
    """The whole tracker. A file's top-level sections replace those of the embedded default."""

    data_dir: Annotated[
        str,
        Meta(description="Where logs and other state live; relative paths are from the working directory."),
    ] = "./trackpoint-data"
    server: Annotated[ServerConfig, Meta(description="The tracking edge.")] = msgspec.field(
        default_factory=ServerConfig
    )
    admin: Annotated[AdminConfig, Meta(description="The admin port.")] = msgspec.field(default_factory=AdminConfig)
    # Statically the base classes; the loader decodes into a subclass whose unions hold every registered type.
    collectors: Annotated[
        dict[str, CollectorBase],
        Meta(description="Collector instances by name; `log` and `stdout` exist with defaults unless redefined."),
    ] = msgspec.field(default_factory=dict)
    preprocessors: Annotated[
        dict[str, PreprocessorBase],
        Meta(description="Preprocessor instances by name; each built-in exists under its own name with defaults."),
    ] = msgspec.field(default_factory=dict)
    event_types: Annotated[dict[str, EventTypeSpec], Meta(description="Event types by name.")] = msgspec.field(
        default_factory=dict
    )
    rejected: Annotated[RejectedConfig, Meta(description="Bad rows: the sampled stream of rejected requests.")] = (
        msgspec.field(default_factory=RejectedConfig)
    )
    signing: Annotated[SigningConfig, Meta(description="Keys of signed tracking URLs.")] = msgspec.field(
        default_factory=SigningConfig
    )


CollectorT = TypeVar("CollectorT", bound=CollectorBase)
PreprocessorT = TypeVar("PreprocessorT", bound=PreprocessorBase)


def collectors_in_use(config: Config, kind: type[CollectorT]) -> dict[str, CollectorT]:
    """The collectors of one kind that some event type feeds, by name (implicit instances exist in every config,
    used or not)."""
    fed = {name for spec in config.event_types.values() for name in spec.collectors}
    return {name: c for name, c in config.collectors.items() if isinstance(c, kind) and name in fed}


def preprocessors_in_use(config: Config, kind: type[PreprocessorT]) -> dict[str, PreprocessorT]:
    """The preprocessors of one kind that some event type runs, by name (a defined but unused one opens nothing)."""
    used = {name for spec in config.event_types.values() for name in spec.preprocessors}
    return {name: p for name, p in config.preprocessors.items() if isinstance(p, kind) and name in used}
