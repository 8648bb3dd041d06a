"""Rate limiting: token-bucket arithmetic with a fake clock, network and campaign keys, the bounded table, the
config checks, and end to end over real sockets (429 with its reason, shed answered but not recorded, counters).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest

from conftest import Tracker, load_config, read_until_quiet
from trackpoint.config.load import ConfigError
from trackpoint.config.model import RateLimitSpec
from trackpoint.edge.ratelimit import NetworkKeys, RateLimiter, TokenBuckets, build_limiters
from trackpoint.edge.responses import PIXEL_GIF
from trackpoint.event import Context, Event, Meta
from trackpoint.fields.converters import Reject


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _event(dims: dict[str, str]) -> Event:
    return Event("id", "impression", 0, dims, {}, Context(), Meta(worker=0, config="test"))


# --- bucket arithmetic -------------------------------------------------------------------------------------------


def test_a_new_key_gets_its_burst_then_is_limited() -> None:
    buckets = TokenBuckets(rate_per_s=2.0, burst=5, max_keys=100, clock=FakeClock())
    assert [buckets.take("k") for _ in range(7)] == [True] * 5 + [False] * 2


def test_tokens_refill_at_the_rate() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(rate_per_s=2.0, burst=5, max_keys=100, clock=clock)
    for _ in range(5):
        assert buckets.take("k")
    assert not buckets.take("k")
    clock.now += 0.25  # half a token
    assert not buckets.take("k")
    clock.now += 0.25  # the second half: one token
    assert buckets.take("k")
    assert not buckets.take("k")
    clock.now += 1.0  # two tokens
    assert [buckets.take("k") for _ in range(3)] == [True, True, False]


def test_refill_stops_at_the_burst() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(rate_per_s=10.0, burst=3, max_keys=100, clock=clock)
    assert buckets.take("k")
    clock.now += 3600  # an hour idle is worth the burst, not 36,000 requests
    assert [buckets.take("k") for _ in range(4)] == [True, True, True, False]


def test_keys_have_separate_buckets() -> None:
    buckets = TokenBuckets(rate_per_s=1.0, burst=1, max_keys=100, clock=FakeClock())
    assert buckets.take("a")
    assert not buckets.take("a")
    assert buckets.take("b")


def test_the_table_is_bounded_under_many_distinct_keys() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(rate_per_s=1.0, burst=2, max_keys=16, clock=clock)
    for i in range(10_000):
        assert buckets.take(f"net-{i}")  # every new key starts with a full bucket
    assert len(buckets.buckets) == 16
    assert buckets.evicted == 10_000 - 16
    assert "net-9999" in buckets.buckets and "net-0" not in buckets.buckets  # the oldest went first


def test_sweep_drops_only_refilled_buckets() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(rate_per_s=1.0, burst=4, max_keys=100, clock=clock)
    buckets.take("idle")
    clock.now += 10  # refilled: dropping it changes nothing
    for _ in range(4):
        buckets.take("busy")
    assert buckets.sweep() == 1
    assert list(buckets.buckets) == ["busy"]
    assert not buckets.take("busy")  # the busy key kept its empty bucket


# --- keys and the limiter ------------------------------------------------------------------------------------------


def test_network_keys() -> None:
    keys = NetworkKeys(ipv4_prefix=24, ipv6_prefix=64)
    assert keys("203.0.113.7") == keys("203.0.113.200") == "203.0.113.0/24"
    assert keys("203.0.114.7") != keys("203.0.113.7")
    assert keys("2001:db8:1:2:aaaa::1") == keys("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert keys("2001:db8:1:3::1") != keys("2001:db8:1:2::1")
    assert keys("::ffff:203.0.113.9") == "203.0.113.0/24"  # IPv4-mapped: limited with its IPv4 network
    assert keys("not-an-ip") == keys("also-not") == "invalid"
    assert NetworkKeys(16, 48)("10.1.2.3") == "10.1.0.0/16"


def test_limiter_by_network_rejects_with_429() -> None:
    limiter = RateLimiter(RateLimitSpec(rate_per_s=1.0, burst=2), clock=FakeClock())
    event = _event({})
    assert limiter.admit("198.51.100.1", event)
    assert limiter.admit("198.51.100.2", event)  # same /24: same bucket
    with pytest.raises(Reject) as rejected:
        limiter.admit("198.51.100.3", event)
    assert (rejected.value.status, rejected.value.reason) == (429, "rate_limited")
    assert limiter.admit("198.51.101.1", event)  # another network


def test_limiter_by_campaign_sheds_and_ignores_requests_without_one() -> None:
    spec = RateLimitSpec(rate_per_s=1.0, burst=1, by="campaign", action="shed")
    limiter = RateLimiter(spec, clock=FakeClock())
    assert limiter.admit("198.51.100.1", _event({"cid": "c1"}))
    assert not limiter.admit("198.51.100.2", _event({"cid": "c1"}))  # shed: False, no exception
    assert limiter.admit("198.51.100.1", _event({"cid": "c2"}))
    assert all(limiter.admit("198.51.100.1", _event({})) for _ in range(10))


def test_no_rate_limit_means_no_limiters() -> None:
    assert build_limiters(RateLimitSpec()) == ((), ())
    assert all(route.rate_limit.rate_per_s is None for route in load_config().config.event_types.values())
    early, late = build_limiters(RateLimitSpec(rate_per_s=5))
    assert len(early) == 1 and late == ()
    early, late = build_limiters(RateLimitSpec(rate_per_s=5, by="field", field="geo.country"))
    assert early == () and len(late) == 1  # a dim a preprocessor may add: taken after the preprocessors


def test_a_campaign_limit_needs_a_dims_field(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "event_types:\n"
        "  impression:\n"
        "    preset: impression\n"
        "    rate_limit: {rate_per_s: 10, by: campaign, campaign_field: nope}\n"
        "  win:\n"
        "    preset: win\n"
        "    rate_limit: {rate_per_s: 10, by: campaign, campaign_field: price}\n"
    )
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "event_types.impression.rate_limit.campaign_field: 'nope' is not a dims field" in message
    assert "event_types.win.rate_limit.campaign_field: 'price' is not a dims field" in message


def test_rate_limit_options_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "event_types:\n  impression:\n    preset: impression\n    rate_limit: {rate_per_s: 0, action: drop}\n"
    )
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "rate_limit.rate_per_s" in str(error.value) and "rate_limit.action" in str(error.value)


# --- end to end ------------------------------------------------------------------------------------------------------


def _config(rate_limit: dict[str, Any]) -> dict[str, Any]:
    return {
        "server": {"trusted_proxies": ["127.0.0.0/8"]},  # so the tests can be clients from other networks
        "event_types": {
            "impression": {"preset": "impression", "rate_limit": rate_limit},
            "win": {"preset": "win"},
        },
    }


def _from(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


def test_a_burst_beyond_the_limit_gets_429_and_is_counted(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory(_config({"rate_per_s": 0.01, "burst": 3}))
    answers = [tracker.get(f"/i?imp=r{i}", _from("198.51.100.10")) for i in range(5)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 429, 429]
    _, headers, body = answers[3]
    assert headers["x-reject-reason"] == "rate_limited"
    assert b"rate_limited" in body
    # The same /24 shares the bucket; another network and another event type are not limited.
    assert tracker.get("/i?imp=r5", _from("198.51.100.99"))[0] == 429
    assert tracker.get("/i?imp=r6", _from("198.51.101.10"))[0] == 200
    assert tracker.get(tracker.sign("/win?imp=r7&price=1"), _from("198.51.100.10"))[0] == 204
    assert tracker.wait_metric("trackpoint_rejected_total", 'reason="rate_limited"', 3) == 3
    events = tracker.wait_events(5)
    assert sorted(e.dims["imp"] for e in events) == ["r0", "r1", "r2", "r6", "r7"]


def test_shed_answers_the_pixel_but_records_nothing(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory(_config({"rate_per_s": 0.01, "burst": 2, "action": "shed"}))
    for i in range(6):
        status, headers, body = tracker.get(f"/i?imp=s{i}", _from("203.0.113.5"))
        assert (status, body) == (200, PIXEL_GIF)
        assert "x-reject-reason" not in headers
    assert tracker.get("/i?imp=other", _from("203.0.114.5"))[0] == 200
    assert tracker.wait_metric("trackpoint_shed_total", 'type="impression"', 4) == 4
    assert tracker.metric("trackpoint_events_total", 'type="impression"') == 3
    assert tracker.metric("trackpoint_rejected_total", 'reason="rate_limited"') == 0
    events = tracker.wait_events(3)
    assert sorted(e.dims["imp"] for e in events) == ["other", "s0", "s1"]


def test_limit_by_campaign(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory(_config({"rate_per_s": 0.01, "burst": 2, "by": "campaign"}))
    statuses = [tracker.get(f"/i?imp=c{i}&cid=hot", _from(f"192.0.{i}.1"))[0] for i in range(4)]
    assert statuses == [200, 200, 429, 429]  # across networks: the campaign is what is limited
    assert tracker.get("/i?imp=c9&cid=cold")[0] == 200
    assert all(tracker.get(f"/i?imp=n{i}")[0] == 200 for i in range(4))  # no campaign: not limited


def test_many_networks_on_one_connection_stay_bounded_and_served(tracker_factory: Any) -> None:
    config = _config({"rate_per_s": 0.01, "burst": 1, "max_keys": 16})
    config["server"]["limits"] = {"max_pipelined_requests": 1000}  # all 302 requests come pipelined
    tracker: Tracker = tracker_factory(config)
    requests = b"".join(
        b"GET /i?imp=m%d HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.%d.%d.1\r\n\r\n" % (i, i // 256, i % 256)
        for i in range(300)
    )
    with socket.create_connection(("127.0.0.1", tracker.port), timeout=3) as sock:
        sock.sendall(requests + b"GET /i?imp=last HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n")
        sock.sendall(b"GET /i?imp=again HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.1.43.1\r\nConnection: close\r\n\r\n")
        raw = read_until_quiet(sock)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3})", raw)
    # 300 distinct networks each get their first request; 10.0.0.0/24 was evicted long ago (a fresh bucket),
    # while 10.1.43.0/24 (request 299) is still in the table and over its limit.
    assert statuses == [b"200"] * 301 + [b"429"]
    assert tracker.wait_metric("trackpoint_events_total", 'type="impression"', 301) == 301
