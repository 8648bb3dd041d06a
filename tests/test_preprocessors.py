"""Unit tests of the built-in preprocessors: anonymize_ip (truncation) and parse_user_agent (ua-parser).

Preprocessors are called on real `Event` structs, as the edge calls them after building an event.
"""

from __future__ import annotations

import pytest

from trackpoint.event import Context, Device, Event, Meta
from trackpoint.plugins import registry
from trackpoint.preprocessors.anonymize_ip.config import AnonymizeIpConfig
from trackpoint.preprocessors.anonymize_ip.preprocessor import AnonymizeIp
from trackpoint.preprocessors.parse_user_agent.config import ParseUserAgentConfig
from trackpoint.preprocessors.parse_user_agent.preprocessor import ParseUserAgent

CHROME_DESKTOP = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
IPHONE_SAFARI = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def event(ip: str | None = "192.0.2.1", ua: str | None = None) -> Event:
    return Event(
        id="0" * 32,
        type="impression",
        ts=1_700_000_000_000,
        dims={"imp": "i"},
        metrics={},
        ctx=Context(ip=ip, ua=ua, referer="https://r.example/"),
        meta=Meta(worker=0, config="test"),
    )


# --- anonymize_ip -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "anonymized"),
    [
        ("192.0.2.33", "192.0.2.0"),
        ("203.0.113.255", "203.0.113.0"),
        ("10.1.2.3", "10.1.2.0"),
        ("2001:db8:abcd:1234:5678:9abc:def0:1234", "2001:db8:abcd::"),
        ("2001:DB8:ABCD:1234::1", "2001:db8:abcd::"),
        ("::1", "::"),
        ("::ffff:192.0.2.33", "192.0.2.0"),
        ("::ffff:c000:221", "192.0.2.0"),
    ],
)
def test_anonymize_ip_default_prefixes(ip: str, anonymized: str) -> None:
    assert AnonymizeIp("anonymize_ip", AnonymizeIpConfig()).anonymize(ip) == anonymized


def test_anonymize_ip_custom_prefixes() -> None:
    coarse = AnonymizeIp("coarse", AnonymizeIpConfig(ipv4_prefix=16, ipv6_prefix=32))
    assert coarse.anonymize("192.0.2.33") == "192.0.0.0"
    assert coarse.anonymize("2001:db8:abcd:1234::1") == "2001:db8::"
    assert coarse.anonymize("::ffff:192.0.2.33") == "192.0.0.0"
    odd = AnonymizeIp("odd", AnonymizeIpConfig(ipv4_prefix=20, ipv6_prefix=52))
    assert odd.anonymize("192.0.255.33") == "192.0.240.0"
    assert odd.anonymize("2001:db8:abcd:1fff::1") == "2001:db8:abcd:1000::"
    keep_all = AnonymizeIp("all", AnonymizeIpConfig(ipv4_prefix=32, ipv6_prefix=128))
    assert keep_all.anonymize("192.0.2.33") == "192.0.2.33"
    assert keep_all.anonymize("2001:db8::7") == "2001:db8::7"
    nothing = AnonymizeIp("none", AnonymizeIpConfig(ipv4_prefix=0, ipv6_prefix=0))
    assert nothing.anonymize("192.0.2.33") == "0.0.0.0"
    assert nothing.anonymize("2001:db8::7") == "::"


@pytest.mark.parametrize(
    "ip",
    ["garbage", "", "1.2.3", "1.2.3.4.5", "256.1.1.1", "192.0.2.1/24", " 192.0.2.1", "192.0.2.1 ", "::g", "[::1]"],
)
def test_anonymize_ip_garbage_is_none(ip: str) -> None:
    assert AnonymizeIp("anonymize_ip", AnonymizeIpConfig()).anonymize(ip) is None


def test_anonymize_ip_on_events() -> None:
    anonymizer = AnonymizeIp("anonymize_ip", AnonymizeIpConfig())
    first = event(ip="198.51.100.77")
    assert anonymizer(first) is first
    assert first.ctx.ip == "198.51.100.0"
    assert anonymizer(event(ip="198.51.100.77")).ctx.ip == "198.51.100.0"  # the cached answer is the same
    assert anonymizer(event(ip="not an ip")).ctx.ip is None
    assert anonymizer(event(ip="not an ip")).ctx.ip is None
    assert anonymizer(event(ip=None)).ctx.ip is None
    untouched = anonymizer(event(ip="2001:db8:1:2::3"))
    assert untouched.ctx.ip == "2001:db8:1::"
    assert untouched.ctx.referer == "https://r.example/"
    assert untouched.dims == {"imp": "i"}


def test_build_preprocessor_by_config_type() -> None:
    anonymizer = registry().build_preprocessor("strict_ip", AnonymizeIpConfig(ipv4_prefix=8))
    assert isinstance(anonymizer, AnonymizeIp)
    assert anonymizer.name == "strict_ip"
    assert anonymizer(event(ip="192.0.2.33")) is not None
    with pytest.raises(ValueError, match="no preprocessor"):
        registry().build_preprocessor("x", object())  # type: ignore[arg-type]


# --- parse_user_agent ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parser() -> ParseUserAgent:
    """One default parser for the module: building the resolver takes a fraction of a second."""
    return ParseUserAgent("parse_user_agent", ParseUserAgentConfig())


def test_chrome_desktop(parser: ParseUserAgent) -> None:
    device = parser.parse(CHROME_DESKTOP)
    assert device.browser == "Chrome"
    assert device.browser_major == "120"
    assert device.os == "Windows"
    assert device.os_major == "10"
    assert device.bot is False


def test_iphone_safari(parser: ParseUserAgent) -> None:
    device = parser.parse(IPHONE_SAFARI)
    assert device.browser == "Mobile Safari"
    assert device.browser_major == "17"
    assert device.os == "iOS"
    assert device.os_major == "17"
    assert device.device == "iPhone"
    assert device.bot is False


def test_googlebot_is_a_bot(parser: ParseUserAgent) -> None:
    device = parser.parse(GOOGLEBOT)
    assert device.bot is True
    assert device.browser == "Googlebot"
    assert device.device == "Spider"


def test_unknown_user_agent_has_no_details(parser: ParseUserAgent) -> None:
    device = parser.parse("")
    assert device == Device()
    assert device.bot is False


def test_parse_user_agent_sets_the_device_and_keeps_the_raw_string(parser: ParseUserAgent) -> None:
    result = parser(event(ua=IPHONE_SAFARI))
    assert result is not None
    assert result.ctx.ua == IPHONE_SAFARI
    assert result.ctx.device == parser.parse(IPHONE_SAFARI)
    assert result.ctx.ip == "192.0.2.1"
    again = parser(event(ua=IPHONE_SAFARI))
    assert again is not None
    assert again.ctx.device is result.ctx.device  # the second lookup is a cache hit
    no_ua = parser(event(ua=None))
    assert no_ua is not None
    assert no_ua.ctx.device is None


def test_keep_raw_false_removes_the_user_agent() -> None:
    stripping = ParseUserAgent("ua", ParseUserAgentConfig(keep_raw=False, cache_size=0))
    result = stripping(event(ua=CHROME_DESKTOP))
    assert result is not None
    assert result.ctx.ua is None
    assert result.ctx.device is not None
    assert result.ctx.device.browser == "Chrome"
    assert stripping._cache == {}  # cache_size 0: nothing is kept


def test_cache_is_bounded_by_cache_size() -> None:
    small = ParseUserAgent("ua", ParseUserAgentConfig(cache_size=20))
    agents = [f"{CHROME_DESKTOP} Extra/{i}" for i in range(75)]
    for agent in agents:
        result = small(event(ua=agent))
        assert result is not None
        assert result.ctx.device is not None
        assert result.ctx.device.browser == "Chrome"
        assert len(small._cache) <= 20
    assert agents[-1] in small._cache
    assert agents[0] not in small._cache
    assert len(small._cache) >= 18  # only the oldest tenth is evicted at a time
