"""parse_user_agent: browser, OS and device from the User-Agent, with ua-parser's Rust-backed resolver.

The resolver costs tens of microseconds per new string; a bounded per-worker cache makes the usual case a dict hit.
"""

from __future__ import annotations

from typing import Any, Final

from trackpoint.adtech.ivt import automated
from trackpoint.event import Device, Event
from trackpoint.preprocessors.parse_user_agent.config import ParseUserAgentConfig

# Devices ua-parser reports for crawlers; HTTP tools and headless browsers are `automated` (once per new string).
_BOT_DEVICES: Final = frozenset({"Spider"})


def _regex_parser() -> Any:
    import ua_parser

    if ua_parser.RegexResolver is None:  # the pure-Python fallback is ~100x slower: refuse it rather than limp
        raise RuntimeError("parse_user_agent needs ua-parser's Rust resolver: pip install 'ua-parser[regex]'")
    return ua_parser.Parser(ua_parser.RegexResolver(ua_parser.load_builtins()))


class ParseUserAgent:
    """Sets ctx.device from ctx.ua; drops ctx.ua unless keep_raw."""

    def __init__(self, name: str, config: ParseUserAgentConfig) -> None:
        self.name = name
        self.keep_raw = config.keep_raw
        self.cache_size = config.cache_size
        self._parser = _regex_parser()
        self._cache: dict[str, Device] = {}

    def __call__(self, event: Event) -> Event:
        ctx = event.ctx
        ua = ctx.ua
        if ua is not None:
            device = self._cache.get(ua)
            if device is None:
                device = self._remember(ua)
            ctx.device = device
            if not self.keep_raw:
                ctx.ua = None
        return event

    def parse(self, ua: str) -> Device:
        result = self._parser.parse(ua)
        browser, system, hardware = result.user_agent, result.os, result.device
        return Device(
            browser=browser.family if browser else None,
            browser_major=browser.major if browser else None,
            os=system.family if system else None,
            os_major=system.major if system else None,
            device=hardware.family if hardware else None,
            bot=bool(hardware and hardware.family in _BOT_DEVICES) or automated(ua),
        )

    def _remember(self, ua: str) -> Device:
        device = self.parse(ua)
        if self.cache_size:
            if len(self._cache) >= self.cache_size:
                # Evict the oldest tenth (dicts keep insertion order): cheap, and hot strings come straight back.
                for key in list(self._cache)[: max(1, self.cache_size // 10)]:
                    del self._cache[key]
            self._cache[ua] = device
        return device
