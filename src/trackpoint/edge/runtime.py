"""A worker's edge: the routes compiled from the config, its collectors and preprocessors, timers and draining.

Everything here is built once at worker start; connections (pipeline.py) only read it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Final, Protocol

from trackpoint.collectors import Collector, CollectorContext, CollectorStartError
from trackpoint.collectors.base import close_all
from trackpoint.config.model import CollectorBase, Config, Limits, PreprocessorBase, TagConfig
from trackpoint.edge import responses
from trackpoint.edge.bad_rows import BadRows
from trackpoint.edge.build import CONTEXT_HEADERS, EventBuilder
from trackpoint.edge.cors import REQUEST_HEADERS as CORS_HEADERS
from trackpoint.edge.cors import CorsPolicy
from trackpoint.edge.counters import EdgeStats
from trackpoint.edge.pipeline import EdgeProtocol
from trackpoint.edge.ratelimit import RateLimiter, build_limiters
from trackpoint.edge.stats import Snapshot, snapshot_of
from trackpoint.edge.tail import RecentEvents
from trackpoint.event import Event, Meta
from trackpoint.http.connection import FRAMING_HEADERS, IDLE, HeaderNames
from trackpoint.http.forwarded import client_address, forwarded_for
from trackpoint.http.limits import Caps
from trackpoint.http.responses import Clock, allow_header, reject
from trackpoint.log_limiter import LogLimiter
from trackpoint.preprocessors import (
    CountsOutcomes,
    FlagsTraffic,
    Preprocessor,
    RedirectParams,
    Refreshes,
    UsesSigningKeys,
    VetoesCookie,
    built_in,
    with_preprocessor_inputs,
)
from trackpoint.privacy.cookie import UidCookie
from trackpoint.security.postback_auth import PostbackAuth
from trackpoint.security.signing import RequestSignature, edge_verifier, load_keys, request_signature, signing_key_id
from trackpoint.tag import CONTENT_TYPE as TAG_CONTENT_TYPE
from trackpoint.tag import served_paths

log = logging.getLogger("trackpoint.edge")

# Expired connections closed per event-loop iteration by the sweep.
SWEEP_BATCH: Final = 64
# On drain, how long an idle keep-alive connection may still send one last request.
DRAIN_IDLE_GRACE_S: Final = 1.0
# Unset, server.limits.max_pipelined_per_iteration is this many connections' full reads (max_pipelined_requests).
PIPELINED_READS: Final = 4
# Each kind of error on the request path is logged at once, then at most once per interval with the count of those
# not logged (all are counted).
ERROR_LOG_INTERVAL_S: Final = 10.0
# How often the rate-limit tables drop their idle buckets (a pass over each table).
LIMIT_SWEEP_INTERVAL_S: Final = 10.0
# The answer mode follows the event loop's own CPU use (its thread's, compression excluded), measured over windows of
# LOAD_WINDOW_S: under ANSWER_AT_ONCE_UNTIL of a core busy, a read's answers go out at the end of that read; from it
# on they wait for the iteration's output step, until the load is back under ANSWER_AT_ONCE_FROM (a gap, so that
# the mode does not flip at every window: answering at once costs more per request than a group does).
LOAD_WINDOW_S: Final = 0.05
ANSWER_AT_ONCE_UNTIL: Final = 0.5
ANSWER_AT_ONCE_FROM: Final = 0.3


def answer_at_once_after(busy: float, at_once: bool) -> bool:
    """The answer mode after a window in which the event loop's thread used `busy` of a core."""
    return busy < (ANSWER_AT_ONCE_UNTIL if at_once else ANSWER_AT_ONCE_FROM)


@dataclass(frozen=True, slots=True)
class Targets:
    """Where a route's events go: the durable collectors (the log), written before the response leaves, and the
    others, offered once that write succeeded."""

    durable: tuple[Collector, ...]
    after: tuple[Collector, ...]

    @classmethod
    def of(cls, collectors: tuple[Collector, ...]) -> Targets:
        return cls(tuple(c for c in collectors if c.durable), tuple(c for c in collectors if not c.durable))

    @property
    def empty(self) -> bool:
        return not self.durable and not self.after


@dataclass(frozen=True, slots=True)
class Route:
    """One event type as the request path sees it."""

    name: str
    methods: frozenset[bytes]
    builder: EventBuilder
    preprocessors: tuple[Preprocessor, ...]
    # The third party's among them, whose results are checked for a well-formed Event (usually none).
    checked: tuple[Preprocessor, ...]
    responder: responses.Responder
    targets: Targets
    # The collectors that may refuse events (spool full under the backpressure policy): checked per request.
    gates: tuple[Collector, ...]
    # The event type's rate limit (empty when it has none: no cost per request): taken before the preprocessors,
    # or after them when it keys on a dim (`by: field`, e.g. geo.country) that a preprocessor may add.
    limiters: tuple[RateLimiter, ...] = ()
    late_limiters: tuple[RateLimiter, ...] = ()
    # Signed-URL check, before any other work; None when the type uses no signatures.
    signature: RequestSignature | None = None
    # The first-party user id cookie; None when the response sets none.
    uid_cookie: UidCookie | None = None
    # Advertiser postback authentication, after the event is built; None when the type has none.
    postback_auth: PostbackAuth | None = None
    # Where events flagged as invalid traffic (dims[flag_dim], set by a preprocessor declaring `flag_dim`) go
    # instead of `targets`: the route policy's collectors, or none (drop). None under the keep policy, or when no
    # preprocessor flags: flagged events are not even looked for.
    flagged: Targets | None = None
    flag_dim: str = ""
    # (dim, value) pairs that withhold the user id cookie (preprocessors' `cookie_veto`, e.g. denied consent).
    cookie_vetoes: tuple[tuple[str, str], ...] = ()
    # Cross-origin requests from web pages (CORS); None when the type allows none.
    cors: CorsPolicy | None = None
    # The `Allow` line of the route's 405: its methods (and OPTIONS, for a preflight, with CORS).
    allow: bytes = b""

    def cookie_vetoed(self, dims: dict[str, str]) -> bool:
        """Whether a preprocessor's verdict on this event withholds the user id cookie: denied consent, or a flag
        as invalid traffic (a bot or a prefetch gets no user id, whatever the type's invalid_traffic policy)."""
        if self.flag_dim and self.flag_dim in dims:
            return True
        return any(dims.get(dim) == value for dim, value in self.cookie_vetoes)


def tag_files(config: TagConfig, clock: Clock) -> dict[bytes, responses.StaticFile]:
    """The JS tag's answers by path: the current tag, and each version at its own path (none when the tag is off)."""
    return {
        path.encode("ascii"): responses.StaticFile(content, TAG_CONTENT_TYPE, cache_control, clock)
        for path, cache_control, _, content in served_paths(config)
    }


def _gates(config: CollectorBase) -> bool:
    """Whether a collector can make the edge refuse events: `when_full: backpressure` (a full spool, or a full memory
    batch where no spool takes the excess)."""
    return config.spool.when_full == "backpressure"


class Components(Protocol):
    """What builds a worker's collectors and preprocessors: the plugin registry (`trackpoint.plugins.registry()`),
    handed in by the worker so that the edge does not reach up to the registry itself."""

    def build_collector(self, name: str, config: CollectorBase, context: CollectorContext) -> Collector: ...

    def build_preprocessor(self, name: str, config: PreprocessorBase, data_dir: str = ".") -> Preprocessor: ...


class Edge:
    """Per-worker state shared by all connections of the worker."""

    def __init__(self, config: Config, config_version: str, worker: int, components: Components) -> None:
        self.limits: Limits = config.server.limits
        # The limits the request path reads, as plain attributes, and the byte caps derived from them.
        self.caps = Caps(self.limits)
        self.connections_per_ip: dict[str, int] = {}
        self.clock = Clock()
        self.stats = EdgeStats()
        self.connections: set[EdgeProtocol] = set()
        self.draining = False
        self.trusted_networks = [ipaddress.ip_network(n, strict=False) for n in config.server.trusted_proxies]
        # The one header a trusted proxy names the client in (the other is the client's own, passed on).
        self.client_ip_header = config.server.client_ip_header.encode()
        self._rfc7239 = config.server.client_ip_header == "forwarded"
        self._trusted_cache: dict[str, bool] = {}
        self._error_log = LogLimiter(ERROR_LOG_INTERVAL_S)  # per kind: one noisy kind must not hide the others
        meta = Meta(worker=worker, config=config_version)
        preprocessors = {
            name: components.build_preprocessor(name, pp_config, config.data_dir)
            for name, pp_config in config.preprocessors.items()
            if any(name in spec.preprocessors for spec in config.event_types.values())
        }
        # The event types as built, with the fields their preprocessors read; those read from the client are denied
        # to untrusted collectors and the dashboard's tail like declared ones, whoever wrote the preprocessor.
        built = with_preprocessor_inputs(config, preprocessors)
        # The live tail for the admin dashboard: the request path appends to `recent_events`, nothing more.
        self.recent = RecentEvents(built)
        self.recent_events = self.recent.events
        self.collectors: dict[str, Collector] = {
            name: components.build_collector(name, c_config, CollectorContext(config.data_dir, worker))
            for name, c_config in built.collectors.items()
            if any(
                name in spec.collectors or name in spec.invalid_traffic.collectors
                for spec in config.event_types.values()
            )
            or name in config.rejected.collectors
        }
        # Preprocessors that sign or read click ids get the signing keys (read once per worker).
        keyed = [p for p in preprocessors.values() if isinstance(p, UsesSigningKeys)]
        if keyed:
            keys = load_keys(config.signing, config.data_dir)
            for preprocessor in keyed:
                preprocessor.use_signing_keys(keys, signing_key_id(config.signing))
        # Preprocessors that count their outcomes (`counts`), reported on /metrics.
        self._counting: list[tuple[str, dict[str, int]]] = [
            (p.name, p.counts) for p in preprocessors.values() if isinstance(p, CountsOutcomes)
        ]
        # Preprocessors with periodic upkeep (`refresh`), called by the timers, never per request.
        self._refreshing = [p for p in preprocessors.values() if isinstance(p, Refreshes)]
        self.bad_rows = (
            BadRows(
                config.rejected, tuple(self.collectors[name] for name in config.rejected.collectors), meta, self.offer
            )
            if config.rejected.collectors
            else None
        )
        # The durable collectors (logs) and this iteration's group: events per type awaiting the log write, and
        # events for the other collectors, offered once it succeeded.
        self.durable = [c for c in self.collectors.values() if c.durable]
        self.uncommitted: dict[str, int] = {}
        # A durable collector whose offer() raised in this iteration: the group's requests are refused as on a failed
        # commit.
        self._unrecorded: Collector | None = None
        self.after_commit: list[tuple[tuple[Collector, ...], Event]] = []
        # durability power: responses wait for the fsync of their lines; `_held` are the groups written since the
        # fsync in flight started, `_syncing` that fsync.
        self.power = any(c.sync_before_answer for c in self.durable)
        self._held: list[list[tuple[EdgeProtocol, bytes | list[bytes], int]]] = []
        self._syncing = False
        verifier = edge_verifier(config)
        self.routes: dict[bytes, Route] = {}
        # Batch paths (POST only): the event type's route, and its items per batch.
        # A batch path: its event type's route, max_items, and the CORS a batch gets (preflights allow POST).
        self.batch_routes: dict[bytes, tuple[Route, int, CorsPolicy | None]] = {}
        kept_headers = set(CONTEXT_HEADERS | FRAMING_HEADERS | {b"host", self.client_ip_header})
        for type_name, spec in config.event_types.items():
            route_preprocessors = tuple(preprocessors[name] for name in spec.preprocessors)
            builder = EventBuilder(type_name, built.event_types[type_name], meta)
            kept_headers |= builder.header_names
            postback_auth = None
            if spec.postback_auth.mode != "off":
                postback_auth = PostbackAuth(spec.postback_auth, config.data_dir)
                kept_headers |= postback_auth.header_names
            invalid_traffic = spec.invalid_traffic
            flagged = None
            flag_dims = {p.flag_dim for p in route_preprocessors if isinstance(p, FlagsTraffic)}
            if len(flag_dims) > 1:
                raise ValueError(f"event type {type_name}: preprocessors flag invalid traffic in {sorted(flag_dims)}")
            if invalid_traffic.action != "keep":
                flagged = Targets.of(tuple(self.collectors[name] for name in invalid_traffic.collectors))
                counted = self.stats.ivt_dropped if flagged.empty else self.stats.ivt_routed
                counted[type_name] = 0
                if not flag_dims:
                    flagged = None  # no preprocessor of the type flags: nothing to look for
            # Query parameters a preprocessor adds to the redirect destination (issue_click_id's click id).
            redirect_params = tuple(
                pair for p in route_preprocessors if isinstance(p, RedirectParams) for pair in p.redirect_params
            )
            cors = None
            if spec.response.cors.allow_origins:
                cors = CorsPolicy(spec.response.cors, spec.methods)
                kept_headers |= CORS_HEADERS
            limiters, late_limiters = build_limiters(spec.rate_limit)
            vetoes = tuple(p.cookie_veto for p in route_preprocessors if isinstance(p, VetoesCookie))
            route = Route(
                name=type_name,
                methods=frozenset(m.encode("ascii") for m in spec.methods),
                builder=builder,
                preprocessors=route_preprocessors,
                checked=tuple(p for p in route_preprocessors if not built_in(p)),
                responder=responses.Responder(spec.response, self.clock, redirect_params, vetoes),
                uid_cookie=UidCookie(spec.response.user_id_cookie) if spec.response.user_id_cookie else None,
                targets=Targets.of(tuple(self.collectors[name] for name in spec.collectors)),
                gates=tuple(self.collectors[name] for name in spec.collectors if _gates(config.collectors[name])),
                limiters=limiters,
                late_limiters=late_limiters,
                signature=request_signature(spec, verifier),
                postback_auth=postback_auth,
                flagged=flagged,
                flag_dim=next(iter(flag_dims), ""),
                cookie_vetoes=vetoes,
                cors=cors,
                allow=allow_header([*spec.methods, *(["OPTIONS"] if cors is not None else [])]),
            )
            self.stats.events[type_name] = 0
            self.stats.head[type_name] = 0
            if spec.rate_limit.rate_per_s is not None and spec.rate_limit.action == "shed":
                self.stats.shed[type_name] = 0
            for path in spec.paths:
                self.routes[path.encode("utf-8")] = route
            batch_cors = CorsPolicy(spec.response.cors, ["POST"]) if cors is not None and spec.batch.paths else None
            for path in spec.batch.paths:  # looked up only where `routes` has no entry: no cost per request
                self.batch_routes[path.encode("utf-8")] = (route, spec.batch.max_items, batch_cors)
        # Files served as they are (the JS tag), by path: looked up only for a path no event type has.
        self.files = tag_files(config.server.tag, self.clock)
        if self.files:
            kept_headers |= {b"accept-encoding", b"if-none-match"}
        self.kept_headers = frozenset(kept_headers)
        self.header_names = HeaderNames(self.kept_headers)
        self._responders: list[responses.Responder | responses.StaticFile] = [
            route.responder for route in self.routes.values()
        ]
        self._responders.extend(self.files.values())
        by_type = {route.name: route for route in self.routes.values()}  # a type with several paths counts once
        self._limiters = [limiter for route in by_type.values() for limiter in (*route.limiters, *route.late_limiters)]
        self._pending_output: list[EdgeProtocol] = []
        # Pipelined requests (behind the first of a read) answered in this iteration, and how many it may answer.
        self.pipelined_in_iteration = 0
        budget = self.limits.max_pipelined_per_iteration
        self.pipelined_budget: int = PIPELINED_READS * self.limits.max_pipelined_requests if budget is None else budget
        # The loop the output step is scheduled on, kept: asyncio.get_running_loop() makes a getpid() system call
        # each time (CPython checks for a fork), once per request when requests come one per iteration.
        self._loop: asyncio.AbstractEventLoop | None = None
        # Whether a read's answers go out at the end of that read (a light load) or at the iteration's output step
        # (watch_load decides; an idle worker starts answering at once).
        self.answer_at_once = True
        # True during a read answered at its end (EdgeProtocol.data_received): no output step is scheduled for it.
        self.reading = False
        self.refresh_date()

    # --- used by connections -------------------------------------------------------------------------------------

    def admit(self, connection: EdgeProtocol) -> str | None:
        """Takes a new connection into the count, or says why it is refused (503)."""
        if len(self.connections) >= self.limits.max_connections:
            return "too_many_connections"
        if not connection.trusted_peer:  # a proxy carries many clients: only direct clients are capped per address
            per_ip = self.connections_per_ip
            count = per_ip.get(connection.peer_ip, 0)
            if count >= self.limits.max_connections_per_ip:
                return "too_many_connections_from_ip"
            per_ip[connection.peer_ip] = count + 1
        self.connections.add(connection)
        return None

    def pipelining_spent(self) -> bool:
        """One more pipelined request answered in this iteration: True once the iteration's budget is spent (that
        request is the connection's last)."""
        count = self.pipelined_in_iteration = self.pipelined_in_iteration + 1
        if count == 1 and self.reading:  # no output step is scheduled to start the next iteration's budget
            self._schedule_output_step()
        if count < self.pipelined_budget:
            return False
        self.stats.pipelines_cut += 1
        return True

    def release(self, connection: EdgeProtocol) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            if not connection.trusted_peer:
                per_ip = self.connections_per_ip
                count = per_ip.get(connection.peer_ip, 1) - 1
                if count > 0:
                    per_ip[connection.peer_ip] = count
                else:
                    per_ip.pop(connection.peer_ip, None)

    def reject_response(  # noqa: PLR0917 - the request's own flags
        self, status: int, reason: str, field: str | None, keep_alive: bool, is_head: bool, extra: bytes = b""
    ) -> bytes:
        """An error answer; `extra`: header lines of the route's (its 405's `Allow`)."""
        if status == 401:
            extra += responses.POSTBACK_CHALLENGE
        return reject(self.clock, status, reason, field, keep_alive, is_head, extra)

    def queue_output(self, connection: EdgeProtocol) -> None:
        """Under load, responses are written after every ready connection has been read: one write per log and
        per connection per iteration (a group commit), and the client side is woken once for a whole batch
        instead of once per response. Under a light load (`answer_at_once`) each read's answers go out at the end
        of that read (`end_read`): a burst of requests arriving together is then answered one by one, as it
        is read, instead of each waiting for the whole burst to be read and built. No output step is scheduled
        for those (bench/hotpath.py counted 1,500 instructions a request for the call_soon and the step's call, and
        the loop's run of its handle comes on top); a response sent outside a read (a timeout's 408, sent by the
        sweep) still gets one."""
        if not self._pending_output and not self.reading:
            self._schedule_output_step()
        self._pending_output.append(connection)

    def _schedule_output_step(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():  # the first request, or (in tests) a new loop
            loop = self._loop = asyncio.get_running_loop()
        loop.call_soon(self._write_output)

    def end_read(self) -> None:
        """The end of a read answered at once: its answers go out (their log lines first)."""
        self.reading = False
        if self._pending_output:
            self.write_answers()

    def _write_output(self) -> None:
        """The iteration's output step: what is still pending is written, and the iteration's pipelining budget
        starts again."""
        self.pipelined_in_iteration = 0
        if self._pending_output:
            self.write_answers()

    def write_answers(self) -> None:
        """The log lines first (one write per log), then the responses. A response whose event could not be
        written becomes a 503."""
        pending = self._pending_output
        self._pending_output = []
        if self.durable and not self._commit(pending):
            return
        for connection in pending:
            try:
                connection.flush()
            except Exception as exc:  # one broken connection must not cost the others their answers
                self.internal_error(exc)

    def _commit(self, pending: list[EdgeProtocol]) -> bool:
        """Writes the group. False when the responses are held for the group's fsync (durability power)."""
        failed, self._unrecorded = self._unrecorded, None
        for collector in self.durable:
            try:
                committed = collector.commit()
            except Exception as exc:  # a plugin's commit that raises fails its group as one that says False does
                self.collector_failed(collector, exc)
                collector.commit_problem = f"commit() raised {exc!r}"[:200]  # unhealthy: /readyz, if required
                committed = False
            else:
                if collector.commit_problem:  # healthy again
                    collector.commit_problem = ""
            if not committed:
                failed = collector
        uncommitted = self.uncommitted
        recorded = 0
        if uncommitted:  # the types recorded since the last commit (usually one), not every type
            self.uncommitted = {}
            for name, count in uncommitted.items():
                recorded += count
                if failed is None:
                    self.stats.events[name] += count
        after = self.after_commit
        if after:  # a new list only when there was something for it (not for a type with the log alone)
            self.after_commit = []
        if failed is not None:
            for connection in pending:
                if connection.recorded:
                    connection.refuse_unrecorded(failed.failure_reason)
        else:
            for collectors, event in after:
                self.offer(collectors, event)
        if not self.power or not (recorded or self._held or self._syncing):
            return True
        # Every response waits behind the fsync in flight, recorded or not: a connection's answers keep their order.
        self._held.append([(connection, *connection.take_output()) for connection in pending])
        if not self._syncing:
            self._syncing = True  # set here, not when the task starts: one sync loop at a time
            asyncio.get_running_loop().create_task(self._sync_held())
        return False

    async def _sync_held(self) -> None:
        """fsyncs the logs and then releases the responses written before the fsync began; groups written meanwhile
        wait for the next fsync, so several groups share one."""
        try:
            while self._held:
                groups, self._held = self._held, []
                results = await asyncio.gather(*(c.sync() for c in self.durable), return_exceptions=True)
                failure = next((r for r in results if isinstance(r, BaseException)), None)
                for group in groups:
                    for connection, out, after in group:
                        if failure is None:
                            connection.write_output(out, after)
                        elif out:
                            connection.refuse_now("log_unavailable")
                if failure is not None:
                    self.internal_error(failure)
        finally:
            self._syncing = False

    def is_trusted_proxy(self, ip: str) -> bool:
        if not self.trusted_networks:
            return False
        trusted = self._trusted_cache.get(ip)
        if trusted is None:
            if len(self._trusted_cache) > 65536:
                self._trusted_cache.clear()
            trusted = self._trusted_cache[ip] = self._in_trusted(ip)
        return trusted

    def _in_trusted(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # An IPv4 peer of a dual-stack socket (host "::") arrives as ::ffff:a.b.c.d: its IPv4 network decides.
            mapped = address.ipv4_mapped
            if any(mapped in network for network in self.trusted_networks):
                return True
        return any(address in network for network in self.trusted_networks)

    def forwarded_client(self, header: bytes | None, peer_ip: str) -> str:
        """The client behind our trusted proxies, from the value of `server.client_ip_header` (http/forwarded.py)."""
        if header is None:
            return peer_ip
        text = header.decode("latin-1")
        nodes = forwarded_for(text) if self._rfc7239 else text.split(",")
        return client_address(nodes, peer_ip, self._in_trusted)

    def preprocessor_failed(self, name: str, failure: BaseException | str) -> None:
        """A preprocessor raised, or returned no well-formed Event (`failure` says what is wrong with it): its event is
        dropped (counted under preprocessor_errors), logged once per interval and kind."""
        errors = self.stats.preprocessor_errors
        errors[name] = errors.get(name, 0) + 1
        if isinstance(failure, str):
            self._error_log.log(
                log, logging.ERROR, f"preprocessor:{name}:contract",
                "preprocessor %s returned no well-formed Event (%s); its events are dropped and counted", name, failure,
            )  # fmt: skip
            return
        self._error_log.log(
            log, logging.ERROR, f"preprocessor:{name}", "preprocessor %s failed; its events are dropped and counted",
            name, exc_info=failure,
        )  # fmt: skip

    def collector_failed(self, collector: Collector, exc: BaseException) -> None:
        """A collector's offer() or commit() raised (a plugin's bug: neither may): counted in its errors, logged once
        per interval and collector; the event is lost to it (a durable one's group is answered 503), never to the
        other collectors or connections."""
        collector.stats.errors += 1
        self._error_log.log(
            log, logging.ERROR, f"collector:{collector.name}", "collector %s failed on the request path",
            collector.name, exc_info=exc,
        )  # fmt: skip

    def offer(self, collectors: tuple[Collector, ...], event: Event) -> None:
        """Hands the event to each collector; one that raises loses it (counted, logged), the others still get it."""
        for collector in collectors:
            try:
                collector.offer(event)
            except Exception as exc:
                collector.offer_failed()
                self.collector_failed(collector, exc)

    def durable_offer_failed(self, collector: Collector, exc: BaseException) -> None:
        """A durable collector could not take an event: none of this iteration's recorded requests may be answered
        2xx (as when its commit fails)."""
        self.collector_failed(collector, exc)
        self._unrecorded = collector

    def internal_error(self, exc: BaseException) -> None:
        kind = f"internal:{type(exc).__name__}"  # counted always, logged once per interval and kind
        self._error_log.log(log, logging.ERROR, kind, "internal error on the request path", exc_info=exc)

    # --- timers --------------------------------------------------------------------------------------------------

    def refresh_date(self) -> None:
        self.clock.refresh()
        for responder in self._responders:
            responder.rebuild()

    def sweep(self) -> None:
        """Closes connections whose phase deadline has passed (header, body or keep-alive idle timeout), at most
        SWEEP_BATCH at a time: a thousand stalled connections expiring together are closed over several event-loop
        iterations, with requests served in between, instead of in one long pause."""
        now = time.monotonic()
        expired = [c for c in self.connections if c.deadline < now]
        for connection in expired[:SWEEP_BATCH]:
            connection.expire()
        if len(expired) > SWEEP_BATCH:
            asyncio.get_running_loop().call_soon(self.sweep)

    def sweep_interval_s(self) -> float:
        shortest = min(self.limits.header_timeout_s, self.limits.body_timeout_s, self.limits.keepalive_timeout_s)
        return min(1.0, max(0.05, shortest / 20))

    async def watch_load(self) -> None:
        """Sets `answer_at_once` from the share of a core the event loop's thread used in the last window."""
        wall, cpu = time.monotonic(), time.thread_time()
        while True:
            await asyncio.sleep(LOAD_WINDOW_S)
            now, used = time.monotonic(), time.thread_time()
            busy = (used - cpu) / (now - wall) if now > wall else 1.0
            wall, cpu = now, used
            self.answer_at_once = answer_at_once_after(busy, self.answer_at_once)

    async def run_timers(self) -> None:
        interval = self.sweep_interval_s()
        next_date = time.monotonic() + 1
        next_limit_sweep = next_date + LIMIT_SWEEP_INTERVAL_S
        while True:
            await asyncio.sleep(interval)
            self.sweep()
            if time.monotonic() >= next_date:
                next_date += 1
                self.refresh_date()
                for preprocessor in self._refreshing:
                    self._refresh(preprocessor)
                if self._limiters and next_date >= next_limit_sweep:  # idle rate-limit buckets are dropped
                    next_limit_sweep = next_date + LIMIT_SWEEP_INTERVAL_S
                    for limiter in self._limiters:
                        limiter.sweep()

    def _refresh(self, preprocessor: Refreshes) -> None:
        try:
            preprocessor.refresh()
        except Exception as exc:  # upkeep that fails must not stop the timers (sweeps, the date)
            self._error_log.log(
                log, logging.ERROR, "refresh", "the periodic refresh of a preprocessor failed", exc_info=exc
            )

    # --- lifecycle -----------------------------------------------------------------------------------------------

    async def start_collectors(self) -> None:
        """Starts every collector, all at once, each within its start_timeout_s (Collector.launch): one whose start
        fails or hangs runs not started, unhealthy, and retries, while the worker serves the log and the others.
        One that fails on its configuration (a directory, a permission: stops_the_start) or a durable one (the
        log) stops the worker's start: CollectorStartError names it and says why in one line."""
        collectors = list(self.collectors.items())
        results = await asyncio.gather(*(c.launch() for _, c in collectors), return_exceptions=True)
        for (name, _), result in zip(collectors, results, strict=True):
            if isinstance(result, (CollectorStartError, OSError)):
                raise CollectorStartError(f"collector {name} cannot start: {result}") from result
            if isinstance(result, BaseException):
                raise result

    async def drain(self, timeout_s: float) -> None:
        """Finishes the accepted connections (the listener is closed already) and flushes. Responses from now on
        say `Connection: close`; a keep-alive client between two requests gets a grace period to send its next one
        (answered, then closed) before idle connections are closed, so a reload does not cut an active client off
        mid-stream. A connection that has not sent its first request yet (accepted as the listener closed) is
        not idle but waiting for its request: it is served, within its header timeout."""
        self.draining = True
        now = time.monotonic()
        deadline = now + timeout_s
        grace_end = now + min(DRAIN_IDLE_GRACE_S, timeout_s / 2)
        while self.connections and time.monotonic() < grace_end:
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            if connection.phase == IDLE and connection.requests:
                connection.close()
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            connection.close()
        while (self._syncing or self._held) and time.monotonic() < deadline:  # answers waiting for an fsync
            await asyncio.sleep(0.005)
        # Every collector drains at once, against the same deadline: one after the other, each given what was left,
        # N collectors with a target down took N drain timeouts (and the supervisor killed the worker mid-drain,
        # before the last ones had spooled what they held and persisted their spool's position).
        await close_all(list(self.collectors.values()), max(1.0, deadline - time.monotonic()))

    def snapshot(self) -> Snapshot:
        collectors = {name: c.snapshot() for name, c in self.collectors.items()}
        snapshot = snapshot_of(self.stats, len(self.connections), collectors)
        snapshot.preprocessor_outcomes = {name: dict(counts) for name, counts in self._counting}
        snapshot.invalid_dropped = {
            route.name: dict(route.builder.dropped) for route in self.routes.values() if route.builder.dropped
        }
        return snapshot
