"""anonymize_ip: truncates the client IP (IPv4 to /24, IPv6 to /48 by default) before anything stores it.

Results are cached per worker: a busy tracker sees the same networks again and again.
"""

from __future__ import annotations

from typing import Final

from trackpoint.event import Event
from trackpoint.preprocessors.anonymize_ip.config import AnonymizeIpConfig
from trackpoint.privacy.network import truncate_ip

_CACHE_LIMIT: Final = 65536


class AnonymizeIp:
    """Replaces ctx.ip with its network address at the configured prefix length."""

    def __init__(self, name: str, config: AnonymizeIpConfig) -> None:
        self.name = name
        self.ipv4_prefix = config.ipv4_prefix
        self.ipv6_prefix = config.ipv6_prefix
        self._cache: dict[str, str | None] = {}

    def __call__(self, event: Event) -> Event:
        ctx = event.ctx
        ip = ctx.ip
        if ip is not None:
            try:
                ctx.ip = self._cache[ip]
            except KeyError:
                ctx.ip = self._remember(ip)
        return event

    def anonymize(self, ip: str) -> str | None:
        """The truncated address, or None when `ip` is not an address (nothing unparsed is ever stored)."""
        return truncate_ip(ip, self.ipv4_prefix, self.ipv6_prefix)

    def _remember(self, ip: str) -> str | None:
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        anonymized = self._cache[ip] = self.anonymize(ip)
        return anonymized
