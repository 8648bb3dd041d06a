"""CORS for web pages on other origins: origin patterns and their config checks, the header lines and their bounded
cache, and a real tracker answering preflights and cross-origin POSTs (recorded whether or not the origin is allowed).
"""

from __future__ import annotations

import http.client
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import CHROME_UA, Tracker, load_config
from trackpoint.config import ConfigError
from trackpoint.config.model import CorsSpec
from trackpoint.edge.cors import MAX_CACHED_ORIGINS, CorsPolicy, parse_origin, splice
from trackpoint.edge.runtime import Edge
from trackpoint.plugins import registry

SHOP = "https://shop.example.com"

CORS_CONFIG: dict[str, Any] = {
    "event_types": {
        "pageview": {
            "paths": ["/p"],
            "methods": ["POST"],
            "fields": {"url": {"required": True, "max_len": 2048}},
            "response": {
                "kind": "no_content",
                "cors": {
                    "allow_origins": [SHOP, "*.example.org", "http://localhost:3000"],
                    "allow_credentials": True,
                    "allow_headers": ["Content-Type", "x-tp-client"],
                    "max_age_s": 900,
                },
            },
        },
        "custom": {
            "paths": ["/e"],
            "methods": ["GET", "POST"],
            "fields": {"name": {"required": True, "max_len": 64}},
            "response": {"kind": "json", "cors": {"allow_origins": ["*"]}},
        },
        "impression": {"preset": "impression"},
    }
}


# --- origin patterns ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "parsed"),
    [
        ("https://shop.example.com", ("https://", "shop.example.com", False)),
        ("HTTPS://Shop.Example.COM:443", ("https://", "shop.example.com", False)),  # as browsers serialise it
        ("http://localhost:3000", ("http://", "localhost:3000", False)),
        ("http://127.0.0.1:80", ("http://", "127.0.0.1", False)),
        ("shop.example.com", ("https://", "shop.example.com", False)),
        ("*.example.com", ("https://", ".example.com", True)),
        ("http://*.example.com:8080", ("http://", ".example.com:8080", True)),
    ],
)
def test_origin_patterns_parse(pattern: str, parsed: tuple[str, str, bool]) -> None:
    assert parse_origin(pattern) == parsed


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("https://shop.example.com/", "an origin has no path"),
        ("https://shop.example.com/checkout", "an origin has no path"),
        ("ftp://shop.example.com", "not an origin"),
        ("https://*.", "not an origin"),
        ("https://shop.*.com", "not an origin"),
        ("https://user@shop.example.com", "not an origin"),
        ("https://shop.example.com:99999", "not a port"),
        ("https://exa mple.com", "not an origin"),
        ("null", "the `null` origin"),
    ],
)
def test_bad_origin_patterns_are_refused(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_origin(pattern)


def test_config_check_names_every_cors_problem(tmp_path: Path) -> None:
    path = tmp_path / "cors.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            event_types:
              pageview:
                paths: [/p]
                methods: [POST]
                response:
                  kind: no_content
                  cors:
                    allow_origins: ["*"]
                    allow_credentials: true
              other:
                paths: [/o]
                response:
                  cors:
                    allow_origins:
                      - https://shop.example.com/
                      - "*"
                    allow_headers: ["content type"]
            """
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = [(issue.line, ".".join(map(str, issue.path)), issue.message) for issue in caught.value.issues]
    # The wrong header and the cross-section rules at once: every one, each at its line.
    assert problems == [
        (8, "event_types.pageview.response.cors.allow_origins.0", problems[0][2]),
        (15, "event_types.other.response.cors.allow_origins.0", problems[1][2]),
        (16, "event_types.other.response.cors.allow_origins.1", problems[2][2]),
        (17, "event_types.other.response.cors.allow_headers.0", "Expected `str` matching regex '^[A-Za-z0-9-]{1,64}$'"),
    ]
    assert "cannot go with allow_credentials" in problems[0][2]
    assert "an origin has no path" in problems[1][2]
    assert "already allows every origin" in problems[2][2]


# --- header lines ------------------------------------------------------------------------------------------------


def test_lines_for_exact_wildcard_and_refused_origins() -> None:
    policy = CorsPolicy(
        CorsSpec(allow_origins=[SHOP, "*.example.org"], allow_credentials=True, max_age_s=60), ["GET", "POST"]
    )
    assert policy.lines_for(SHOP.encode()) == (
        b"Access-Control-Allow-Origin: https://shop.example.com\r\n"
        b"Access-Control-Allow-Credentials: true\r\nVary: Origin\r\n"
    )
    assert policy.lines_for(b"https://a.b.example.org") == (
        b"Access-Control-Allow-Origin: https://a.b.example.org\r\n"
        b"Access-Control-Allow-Credentials: true\r\nVary: Origin\r\n"
    )
    refused = [
        b"https://example.org",  # the wildcard stands for subdomains only
        b"http://a.example.org",  # another scheme is another origin
        b"https://a.example.org:8443",
        b"https://.example.org",
        b"https://evil.test/.example.org",
        b"https://evil.test?.example.org",
        b"https://a.example.org.evil.test",
        b"https://shop.example.com.evil.test",
        b"https://evil.test\x00.example.org",
        b"https://SHOP.example.com",  # browsers send origins in lower case: anything else is not one
        b"null",
        b"",
    ]
    for origin in refused:
        assert policy.lines_for(origin) is None, origin
    assert policy.preflight(b"https://a.example.org") == (
        b"Access-Control-Allow-Origin: https://a.example.org\r\n"
        b"Access-Control-Allow-Credentials: true\r\nVary: Origin\r\n"
        b"Access-Control-Allow-Methods: GET, POST\r\n"
        b"Access-Control-Allow-Headers: content-type\r\nAccess-Control-Max-Age: 60\r\n"
    )
    assert policy.preflight(b"https://evil.test") is None


def test_any_origin_names_none_and_sends_no_credentials() -> None:
    policy = CorsPolicy(CorsSpec(allow_origins=["*"]), ["POST"])
    for origin in (b"https://a.test", b"null", b"https://evil.test\r\nSet-Cookie: x=1"):
        assert policy.lines_for(origin) == b"Access-Control-Allow-Origin: *\r\nVary: Origin\r\n"
    assert len(policy.cache) == 0  # nothing to remember per origin


def test_wildcard_cache_is_bounded() -> None:
    policy = CorsPolicy(CorsSpec(allow_origins=[SHOP, "*.example.org"]), ["POST"])
    for i in range(3 * MAX_CACHED_ORIGINS):
        origin = f"https://s{i}.example.org".encode()
        assert policy.lines_for(origin) == b"Access-Control-Allow-Origin: " + origin + b"\r\nVary: Origin\r\n"
        assert len(policy.cache) <= 1 + MAX_CACHED_ORIGINS
    assert SHOP.encode() in policy.cache  # exact origins are never evicted
    for i in range(100):  # refused origins are never cached
        assert policy.lines_for(f"https://s{i}.evil.test".encode()) is None
    assert not any(b"evil" in origin for origin in policy.cache)


def test_decorate_splices_after_the_status_line() -> None:
    response = b"HTTP/1.1 204 No Content\r\nServer: trackpoint\r\nContent-Length: 0\r\n\r\n"
    assert splice(response, b"A: 1\r\n") == (
        b"HTTP/1.1 204 No Content\r\nA: 1\r\nServer: trackpoint\r\nContent-Length: 0\r\n\r\n"
    )
    policy = CorsPolicy(CorsSpec(allow_origins=[SHOP]), ["POST"])
    assert policy.decorate(response, None) is response
    assert policy.decorate(response, b"https://evil.test") is response
    assert policy.decorate(response, SHOP.encode()).startswith(
        b"HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Origin: https://shop.example.com\r\nVary: Origin\r\n"
    )


def test_types_without_cors_cost_nothing(tmp_path: Path) -> None:
    path = tmp_path / "default-and-cors.yaml"
    path.write_text(json.dumps({"data_dir": str(tmp_path / "data"), **CORS_CONFIG}))
    edge = Edge(load_config(path).config, "test", 0, registry())
    assert {route.name: route.cors is not None for route in edge.routes.values()} == {
        "pageview": True,
        "custom": True,
        "impression": False,
    }
    assert b"origin" in edge.kept_headers
    plain = tmp_path / "plain.yaml"
    plain.write_text(json.dumps({"data_dir": str(tmp_path / "data2")}))
    edge = Edge(load_config(plain).config, "test", 0, registry())
    assert all(route.cors is None for route in edge.routes.values())
    assert b"origin" not in edge.kept_headers  # the header is not even kept


# --- a real tracker ----------------------------------------------------------------------------------------------


def _preflight(tracker: Tracker, path: str, origin: str | None, method: str | None = "POST") -> Any:
    headers = {"Access-Control-Request-Headers": "content-type"}
    if origin is not None:
        headers["Origin"] = origin
    if method is not None:
        headers["Access-Control-Request-Method"] = method
    return tracker.request("OPTIONS", path, headers=headers)


def test_preflights(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory(CORS_CONFIG)
    for origin in (SHOP, "https://www.example.org", "https://a.b.example.org", "http://localhost:3000"):
        status, headers, body = _preflight(tracker, "/p", origin)
        assert (status, body) == (204, b""), origin
        assert headers["access-control-allow-origin"] == origin
        assert headers["access-control-allow-credentials"] == "true"
        assert headers["access-control-allow-methods"] == "POST"
        assert headers["access-control-allow-headers"] == "content-type, x-tp-client"
        assert headers["access-control-max-age"] == "900"
        assert headers["vary"] == "Origin"
    status, headers, _ = _preflight(tracker, "/e", "https://anyone.test", "GET")
    assert status == 204
    assert headers["access-control-allow-origin"] == "*"
    assert headers["access-control-allow-methods"] == "GET, POST"
    assert "access-control-allow-credentials" not in headers
    refused = ("https://evil.test", "https://example.org", "http://shop.example.com", "http://localhost:3001")
    for origin in refused:
        status, headers, body = _preflight(tracker, "/p", origin)
        assert status == 403, origin
        assert headers["x-reject-reason"] == "cors_origin_not_allowed"
        assert json.loads(body) == {"error": "cors_origin_not_allowed"}
        assert not any(name.startswith("access-control-") for name in headers)
    assert tracker.wait_metric("trackpoint_rejected_total", 'reason="cors_origin_not_allowed"', 4) == 4
    # Not a preflight (no Origin, or no Access-Control-Request-Method), or a type without CORS: 405 as before.
    not_preflights: list[tuple[str, str | None, str | None]] = [
        ("/p", None, "POST"),
        ("/p", SHOP, None),
        ("/i", SHOP, "GET"),
    ]
    for path, sender, method in not_preflights:
        status, headers, _ = _preflight(tracker, path, sender, method)
        assert (status, headers["x-reject-reason"]) == (405, "method_not_allowed"), (path, sender, method)
        # The page may read the refusal on a type with CORS; the impression type has none.
        assert headers.get("access-control-allow-origin") == (SHOP if (path, sender) == ("/p", SHOP) else None)
    # A preflight is never an event: the sentinel, sent after them all, is the only line in the log.
    assert tracker.get("/i?imp=sentinel")[0] == 200
    assert [e.dims.get("imp") for e in tracker.wait_events(1)] == ["sentinel"]


def test_cross_origin_posts_are_answered_and_recorded(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory(CORS_CONFIG)
    page = json.dumps({"url": "https://shop.example.com/"}).encode()
    json_type = {"Content-Type": "application/json"}
    status, headers, _ = tracker.request("POST", "/p", page, {**json_type, "Origin": SHOP})
    assert status == 204
    assert headers["access-control-allow-origin"] == SHOP
    assert headers["access-control-allow-credentials"] == "true"
    assert headers["vary"] == "Origin"
    assert headers["cache-control"].startswith("no-store")  # the rest of the response is untouched
    # An origin that is not allowed gets no CORS headers (the browser hides the answer); the event counts anyway.
    status, headers, _ = tracker.request("POST", "/p", page, {**json_type, "Origin": "https://evil.test"})
    assert status == 204
    assert not any(name.startswith("access-control-") for name in headers)
    status, headers, _ = tracker.request("POST", "/p", page, json_type)  # same origin, or not a browser
    assert status == 204 and "access-control-allow-origin" not in headers
    # A page on an allowed origin can read why a request was refused.
    status, headers, body = tracker.request("POST", "/p", b"{}", {**json_type, "Origin": SHOP})
    assert (status, headers["access-control-allow-origin"]) == (400, SHOP)
    assert json.loads(body) == {"error": "missing_field", "field": "url"}
    status, headers, _ = tracker.request("POST", "/p", b"{}", {**json_type, "Origin": "https://evil.test"})
    assert status == 400 and "access-control-allow-origin" not in headers
    # `*`: every origin may read the JSON answer, none is named.
    status, headers, body = tracker.request(
        "POST", "/e", b'{"name":"signup"}', {**json_type, "Origin": "https://a.test"}
    )
    assert (status, headers["access-control-allow-origin"]) == (200, "*")
    assert "access-control-allow-credentials" not in headers
    event_id = json.loads(body)["id"]
    events = tracker.wait_events(4)
    assert sorted(e.type for e in events) == ["custom", "pageview", "pageview", "pageview"]
    assert event_id in {e.id for e in events}


def test_preflight_and_post_on_one_keep_alive_connection(tracker_factory: Any) -> None:
    """The spliced headers keep the framing intact: a preflight, a POST and a pixel answered in turn on one
    connection, each read to its exact end."""
    tracker: Tracker = tracker_factory(CORS_CONFIG)
    connection = http.client.HTTPConnection("127.0.0.1", tracker.port, timeout=10)
    try:
        base = {"User-Agent": CHROME_UA, "Origin": "https://m.example.org"}
        connection.request("OPTIONS", "/p", headers={**base, "Access-Control-Request-Method": "POST"})
        first = connection.getresponse()
        assert (first.status, first.read(), first.getheader("connection")) == (204, b"", "keep-alive")
        connection.request("POST", "/p", body=b'{"url":"u"}', headers={**base, "Content-Type": "application/json"})
        second = connection.getresponse()
        assert (second.status, second.read()) == (204, b"")
        assert second.getheader("access-control-allow-origin") == "https://m.example.org"
        connection.request("GET", "/i?imp=k1", headers=base)
        third = connection.getresponse()
        assert third.status == 200 and len(third.read()) == 43
        assert third.getheader("access-control-allow-origin") is None  # the impression type has no CORS
    finally:
        connection.close()
    assert sorted(e.type for e in tracker.wait_events(2)) == ["impression", "pageview"]
