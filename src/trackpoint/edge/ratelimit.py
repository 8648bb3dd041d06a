"""Rate limits of an event type: token buckets per client network (or per campaign), one table per worker.

Buckets refill lazily from a monotonic clock when their key is seen; the table is bounded (idle buckets are swept
by the worker's timers, the oldest are evicted at the bound), so a flood of distinct sources cannot grow memory.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

from trackpoint.config.model import RateLimitSpec
from trackpoint.event import Event
from trackpoint.fields.converters import Reject

# Client IPs whose network key is remembered (per worker); the cache is cleared when it grows past this.
_NETWORK_CACHE_LIMIT = 65536


class TokenBuckets:
    """A table of token buckets: `rate_per_s` tokens a second up to `burst`; each admitted request takes one.

    A bucket is `[tokens, last_seen]`. A bucket not seen for burst / rate seconds is full again, so dropping it
    (the sweep) changes nothing: a new bucket starts full."""

    __slots__ = ("buckets", "burst", "clock", "evicted", "max_keys", "rate_per_s")

    def __init__(
        self, rate_per_s: float, burst: int, max_keys: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.max_keys = max_keys
        self.clock = clock
        self.buckets: dict[str, list[float]] = {}
        self.evicted = 0

    def take(self, key: str) -> bool:
        """One token from the bucket of `key`: True if there was one, False if the key is over its limit."""
        now = self.clock()
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_keys:
                # The table is full of recently active keys: the oldest inserted goes (dicts keep insertion order).
                del self.buckets[next(iter(self.buckets))]
                self.evicted += 1
            self.buckets[key] = [self.burst - 1.0, now]
            return True
        tokens = bucket[0] + (now - bucket[1]) * self.rate_per_s
        if tokens > self.burst:  # noqa: PLR1730 - cheaper than min() on every request
            tokens = self.burst
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        return False

    def sweep(self) -> int:
        """Drops the buckets that have refilled completely (idle keys); returns how many were dropped."""
        now = self.clock()
        rate = self.rate_per_s
        burst = self.burst
        before = len(self.buckets)
        self.buckets = {
            key: bucket for key, bucket in self.buckets.items() if bucket[0] + (now - bucket[1]) * rate < burst
        }
        return before - len(self.buckets)


class NetworkKeys:
    """The network of a client IP as a bucket key: IPv4 /24 and IPv6 /64 by default (IPv4-mapped IPv6 as IPv4).
    Unparseable addresses share one key, so they are limited together rather than not at all."""

    __slots__ = ("_cache", "ipv4_prefix", "ipv6_prefix")

    def __init__(self, ipv4_prefix: int, ipv6_prefix: int) -> None:
        self.ipv4_prefix = ipv4_prefix
        self.ipv6_prefix = ipv6_prefix
        self._cache: dict[str, str] = {}

    def __call__(self, ip: str) -> str:
        key = self._cache.get(ip)
        if key is None:
            if len(self._cache) >= _NETWORK_CACHE_LIMIT:
                self._cache.clear()
            key = self._cache[ip] = self.network(ip)
        return key

    def network(self, ip: str) -> str:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return "invalid"
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        prefix = self.ipv4_prefix if address.version == 4 else self.ipv6_prefix
        return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


class RateLimiter:
    """The rate limit of one event type, as the request path calls it: `admit(client_ip, event)`."""

    __slots__ = ("buckets", "key_field", "network_keys", "shed")

    def __init__(self, spec: RateLimitSpec, clock: Callable[[], float] = time.monotonic) -> None:
        assert spec.rate_per_s is not None
        self.buckets = TokenBuckets(spec.rate_per_s, spec.burst, spec.max_keys, clock)
        self.shed = spec.action == "shed"
        self.network_keys = NetworkKeys(spec.ipv4_prefix, spec.ipv6_prefix) if spec.by == "network" else None
        # The dim whose value is the key (by: campaign or by: field).
        self.key_field = (spec.field or "") if spec.by == "field" else spec.campaign_field

    def admit(self, client_ip: str, event: Event) -> bool:
        """True: go on. False: over the limit under `shed` (answer normally, record nothing). Over the limit under
        `reject`: raises Reject(429, rate_limited). A campaign (field) limit does not apply to requests without a
        campaign (without the dim)."""
        if self.network_keys is not None:
            key = self.network_keys(client_ip)
        else:
            value = event.dims.get(self.key_field)
            if value is None:
                return True
            key = value
        if self.buckets.take(key):
            return True
        if self.shed:
            return False
        raise Reject(429, "rate_limited")

    def sweep(self) -> None:
        self.buckets.sweep()


def build_limiters(spec: RateLimitSpec) -> tuple[tuple[RateLimiter, ...], tuple[RateLimiter, ...]]:
    """The limiters of an event type for its Route: those taken before its preprocessors (by network or campaign)
    and those taken after them (by field: the dim may be one a preprocessor adds). Empty (no cost per request)
    when it has no rate limit."""
    if spec.rate_per_s is None:
        return (), ()
    limiter = RateLimiter(spec)
    return ((), (limiter,)) if spec.by == "field" else ((limiter,), ())
