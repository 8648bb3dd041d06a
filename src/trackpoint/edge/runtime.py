"""A worker's edge: the routes compiled from the config, its collectors and preprocessors, timers and draining.

Everything here is built once at worker start; connections (protocol.py) only read it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass

from trackpoint.collectors import Collector, CollectorContext, build_collector
from trackpoint.config.model import CollectorBase, Config, Limits
from trackpoint.edge import responses
from trackpoint.edge.bad_rows import BadRows
from trackpoint.edge.cors import REQUEST_HEADERS as CORS_HEADERS
from trackpoint.edge.cors import CorsPolicy
from trackpoint.edge.protocol import FRAMING_HEADERS, IDLE, EdgeProtocol
from trackpoint.edge.ratelimit import RateLimiter, build_limiters
from trackpoint.edge.stats import EdgeStats, Snapshot
from trackpoint.pipeline.build import CONTEXT_HEADERS, EventBuilder
from trackpoint.pipeline.event import Meta
from trackpoint.preprocessors import Preprocessor, build_preprocessor, with_input_fields
from trackpoint.privacy.cookie import UidCookie
from trackpoint.security.postback_auth import PostbackAuth
from trackpoint.security.signing import RequestSignature, edge_verifier, load_keys, request_signature, signing_key_id

log = logging.getLogger("trackpoint.edge")

# Expired connections closed per event-loop iteration by the sweep.
SWEEP_BATCH = 64
# On drain, how long an idle keep-alive connection may still send one last request.
DRAIN_IDLE_GRACE_S = 1.0
# How often the rate-limit tables drop their idle buckets (a pass over each table).
LIMIT_SWEEP_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class Route:
    """One event type as the request path sees it."""

    name: str
    methods: frozenset[bytes]
    builder: EventBuilder
    preprocessors: tuple[Preprocessor, ...]
    responder: responses.Responder
    collectors: tuple[Collector, ...]
    # The collectors that may refuse events (spool full under the backpressure policy): checked per request.
    gates: tuple[Collector, ...]
    # The event type's rate limit (empty when it has none: no cost per request).
    limiters: tuple[RateLimiter, ...] = ()
    # Signed-URL check, before any other work; None when the type uses no signatures.
    signature: RequestSignature | None = None
    # The first-party user id cookie; None when the response sets none.
    uid_cookie: UidCookie | None = None
    # Advertiser postback authentication, after the event is built; None when the type has none.
    postback_auth: PostbackAuth | None = None
    # Where events flagged as invalid traffic (dims.ivt) go instead of `collectors`: the route policy's collectors,
    # or none (drop). None under the keep policy: flagged events are not even looked for.
    flagged_collectors: tuple[Collector, ...] | None = None
    # Cross-origin requests from web pages (CORS); None when the type allows none.
    cors: CorsPolicy | None = None


def _gates(config: CollectorBase) -> bool:
    """Whether a collector can make the edge refuse events: a spool that answers `full` with backpressure."""
    return config.spool.enabled and config.spool.when_full == "backpressure"


class Edge:
    """Per-worker state shared by all connections of the worker."""

    def __init__(self, config: Config, config_version: str, worker: int) -> None:
        self.limits: Limits = config.server.limits
        # The limits the request path reads, as plain attributes (one look-up each instead of two).
        self.max_request_line_bytes = self.limits.max_request_line_bytes
        self.max_header_count = self.limits.max_header_count
        self.max_header_bytes = self.limits.max_header_bytes
        self.max_keepalive_requests = self.limits.max_keepalive_requests
        self.header_timeout_s = self.limits.header_timeout_s
        self.keepalive_timeout_s = self.limits.keepalive_timeout_s
        self.clock = responses.Clock()
        self.stats = EdgeStats()
        self.connections: set[EdgeProtocol] = set()
        self.draining = False
        self.trusted_networks = [ipaddress.ip_network(n, strict=False) for n in config.server.trusted_proxies]
        self._trusted_cache: dict[str, bool] = {}
        self._last_error_log = 0.0
        meta = Meta(worker=worker, config=config_version)
        preprocessors = {
            name: build_preprocessor(name, pp_config, config.data_dir)
            for name, pp_config in config.preprocessors.items()
            if any(name in spec.preprocessors for spec in config.event_types.values())
        }
        self.collectors: dict[str, Collector] = {
            name: build_collector(name, c_config, CollectorContext(config.data_dir, worker))
            for name, c_config in config.collectors.items()
            if any(
                name in spec.collectors or name in spec.invalid_traffic.collectors
                for spec in config.event_types.values()
            )
            or name in config.rejected.collectors
        }
        # Preprocessors that sign or read click ids get the signing keys (read once per worker).
        keyed = [p for p in preprocessors.values() if hasattr(p, "use_signing_keys")]
        if keyed:
            keys = load_keys(config.signing, config.data_dir)
            for preprocessor in keyed:
                preprocessor.use_signing_keys(keys, signing_key_id(config.signing))
        # Preprocessors that count their outcomes (`counts`), reported on /metrics.
        self._counting: list[tuple[str, dict[str, int]]] = [
            (p.name, counts) for p in preprocessors.values() if isinstance(counts := getattr(p, "counts", None), dict)
        ]
        self.bad_rows = (
            BadRows(config.rejected, tuple(self.collectors[name] for name in config.rejected.collectors), meta)
            if config.rejected.collectors
            else None
        )
        verifier = edge_verifier(config)
        self.routes: dict[bytes, Route] = {}
        kept_headers = set(CONTEXT_HEADERS | FRAMING_HEADERS)
        for type_name, spec in config.event_types.items():
            route_preprocessors = tuple(preprocessors[name] for name in spec.preprocessors)
            builder = EventBuilder(type_name, with_input_fields(spec, route_preprocessors), meta)
            kept_headers |= builder.header_names
            postback_auth = None
            if spec.postback_auth.mode != "off":
                postback_auth = PostbackAuth(spec.postback_auth, config.data_dir)
                kept_headers |= postback_auth.header_names
            invalid_traffic = spec.invalid_traffic
            flagged_collectors = None
            if invalid_traffic.action != "keep":
                flagged_collectors = tuple(self.collectors[name] for name in invalid_traffic.collectors)
                counted = self.stats.ivt_routed if flagged_collectors else self.stats.ivt_dropped
                counted[type_name] = 0
            # Query parameters a preprocessor adds to the redirect destination (issue_click_id's click id).
            redirect_params = tuple(pair for p in route_preprocessors for pair in getattr(p, "redirect_params", ()))
            cors = None
            if spec.response.cors.allow_origins:
                cors = CorsPolicy(spec.response.cors, spec.methods)
                kept_headers |= CORS_HEADERS
            route = Route(
                name=type_name,
                methods=frozenset(m.encode("ascii") for m in spec.methods),
                builder=builder,
                preprocessors=route_preprocessors,
                responder=responses.Responder(spec.response, self.clock, redirect_params),
                uid_cookie=UidCookie(spec.response.user_id_cookie) if spec.response.user_id_cookie else None,
                collectors=tuple(self.collectors[name] for name in spec.collectors),
                gates=tuple(self.collectors[name] for name in spec.collectors if _gates(config.collectors[name])),
                limiters=build_limiters(spec.rate_limit),
                signature=request_signature(spec, verifier),
                postback_auth=postback_auth,
                flagged_collectors=flagged_collectors,
                cors=cors,
            )
            self.stats.events[type_name] = 0
            if spec.rate_limit.rate_per_s is not None and spec.rate_limit.action == "shed":
                self.stats.shed[type_name] = 0
            for path in spec.paths:
                self.routes[path.encode("utf-8")] = route
        self.kept_headers = frozenset(kept_headers)
        self._responders = [route.responder for route in self.routes.values()]
        by_type = {route.name: route for route in self.routes.values()}  # a type with several paths counts once
        self._limiters = [limiter for route in by_type.values() for limiter in route.limiters]
        self._pending_output: list[EdgeProtocol] = []
        self.refresh_date()

    # --- used by connections -------------------------------------------------------------------------------------

    def reject_response(self, status: int, reason: str, field: str | None, keep_alive: bool, is_head: bool) -> bytes:
        return responses.reject(self.clock, status, reason, field, keep_alive, is_head)

    def queue_output(self, connection: EdgeProtocol) -> None:
        """Responses are written after every ready connection has been read: one write per connection per
        iteration, and the client side is woken once for a whole batch instead of once per response."""
        if not self._pending_output:
            asyncio.get_running_loop().call_soon(self._write_output)
        self._pending_output.append(connection)

    def _write_output(self) -> None:
        pending = self._pending_output
        self._pending_output = []
        for connection in pending:
            connection.flush()

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
        return any(address in network for network in self.trusted_networks)

    def forwarded_client(self, header: bytes, peer_ip: str) -> str:
        """The right-most X-Forwarded-For address that is not one of our trusted proxies."""
        for candidate in reversed(header.decode("latin-1").split(",")):
            address = candidate.strip()
            if not self._in_trusted(address):
                try:
                    return str(ipaddress.ip_address(address))
                except ValueError:
                    return peer_ip  # a forged or broken header: trust only what we saw
        return peer_ip

    def preprocessor_failed(self, name: str, exc: BaseException) -> None:
        """A preprocessor raised: its event is dropped (counted under preprocessor_errors), logged once per interval."""
        errors = self.stats.preprocessor_errors
        errors[name] = errors.get(name, 0) + 1
        now = time.monotonic()
        if now - self._last_error_log > 10:
            self._last_error_log = now
            log.error("preprocessor %s failed; its events are dropped and counted", name, exc_info=exc)

    def internal_error(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_error_log > 10:  # logged once per interval, counted always
            self._last_error_log = now
            log.error("internal error on the request path", exc_info=exc)

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
                if self._limiters and next_date >= next_limit_sweep:  # idle rate-limit buckets are dropped
                    next_limit_sweep = next_date + LIMIT_SWEEP_INTERVAL_S
                    for limiter in self._limiters:
                        limiter.sweep()

    # --- lifecycle -----------------------------------------------------------------------------------------------

    async def start_collectors(self) -> None:
        for collector in self.collectors.values():
            await collector.start()

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
        remaining = max(1.0, deadline - time.monotonic())
        for collector in self.collectors.values():
            await collector.close(remaining)

    def snapshot(self) -> Snapshot:
        snapshot = self.stats.snapshot(
            len(self.connections), {name: c.snapshot() for name, c in self.collectors.items()}
        )
        snapshot.preprocessor_outcomes = {name: dict(counts) for name, counts in self._counting}
        return snapshot
