"""End-to-end tests of the tracking edge: the real CLI in a subprocess, real HTTP, log files read back.

Covers the default endpoints, rejections with reasons, HTTP/1.1 details (keep-alive, pipelining, HEAD, HTTP/1.0)
and every limit (request line, headers, body, timeouts, connections) including malformed and smuggling input.
"""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any

from conftest import CHROME_UA, Tracker, read_until_quiet
from trackpoint.edge.responses import PIXEL_GIF
from trackpoint.event import derived_id


def _status_lines(raw: bytes) -> list[bytes]:
    """Status lines of the responses in `raw` (a pixel body is followed directly by the next status line)."""
    return re.findall(rb"HTTP/1\.1 \d{3} [A-Za-z ]+?(?=\r\n)", raw)


def test_impression_returns_the_pixel_and_logs_one_event(tracker: Tracker) -> None:
    status, headers, body = tracker.get("/i?imp=imp-1&cid=c1&crid=cr1&pub=p1")
    assert status == 200
    assert body == PIXEL_GIF and len(body) == 43
    assert headers["content-type"] == "image/gif"
    assert "no-store" in headers["cache-control"]
    assert "date" in headers
    [event] = tracker.wait_events(1)
    assert event.type == "impression"
    assert event.id == derived_id("impression", ["imp-1"])
    assert event.dims == {"imp": "imp-1", "cid": "c1", "crid": "cr1", "pub": "p1", "consent": "not_applicable"}
    assert event.ctx.ip == "127.0.0.0"  # anonymize_ip: /24
    assert event.ctx.device is not None and event.ctx.device.browser == "Chrome"
    assert abs(event.ts - time.time() * 1000) < 60_000


def test_every_default_endpoint(tracker: Tracker) -> None:
    status, headers, _ = tracker.get("/c?imp=imp-2&cid=c1&url=https%3A%2F%2Fshop.example.com%2Fp%3Fx%3D1")
    assert status == 302
    assert headers["location"].startswith("https://shop.example.com/p?x=1&tp_click=")  # issue_click_id's click id
    status, _, body = tracker.get(tracker.sign("/win?imp=imp-2&price=2.5&cid=c1"))
    assert (status, body) == (204, b"")
    status, _, body = tracker.get("/v?imp=imp-2&ev=firstQuartile&t=3.75")
    assert status == 200 and body == PIXEL_GIF
    status, headers, body = tracker.request(
        "POST",
        "/conv",
        json.dumps({"order_id": "o-9", "value": 19.99, "click_id": "k1"}).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 200
    conversion_id = json.loads(body)["id"]
    assert conversion_id == derived_id("conversion", ["o-9"])
    status, _, _ = tracker.request(
        "POST",
        "/conv",
        b"order_id=o-10&value=5&cur=EUR",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200
    events = tracker.wait_events(5)
    assert sorted(e.type for e in events) == ["click", "conversion", "conversion", "video", "win"]
    wins = [e for e in events if e.type == "win"]
    assert wins[0].metrics == {"price": 2_500_000} and wins[0].dims["cur"] == "USD"
    video = next(e for e in events if e.type == "video")
    assert video.dims["ev"] == "firstQuartile" and video.metrics["t"] == 3.75
    conversions = {e.dims["order_id"]: e for e in events if e.type == "conversion"}
    assert conversions["o-9"].metrics["value"] == 19_990_000 and conversions["o-9"].id == conversion_id
    assert conversions["o-10"].metrics["value"] == 5_000_000 and conversions["o-10"].dims["cur"] == "EUR"


def test_the_same_request_twice_yields_the_same_id(tracker: Tracker) -> None:
    for _ in range(2):
        assert tracker.get(tracker.sign("/win?imp=dup-1&price=1"))[0] == 204
    events = tracker.wait_events(2)
    assert len(events) == 2 and events[0].id == events[1].id


def test_rejections_carry_a_reason_and_are_counted(tracker: Tracker) -> None:
    cases: list[tuple[str, str, int, str]] = [
        ("GET", "/nope", 404, "not_found"),
        ("POST", "/i?imp=x", 405, "method_not_allowed"),
        ("GET", "/i?cid=1", 400, "missing_field"),
        ("GET", "/win?imp=x&price=1", 403, "signature_missing"),  # spend needs the DSP's signature
        ("GET", "/win?imp=x&price=abc", 400, "invalid_field"),
        ("GET", "/win?imp=x&price=-1", 400, "price_out_of_range"),
        ("GET", "/i?imp=" + "x" * 65, 400, "field_too_long"),
        ("GET", "/v?imp=x&ev=notAnEvent", 400, "invalid_field"),
        ("GET", "/c?imp=x&url=https%3A%2F%2Fevil.test%2F", 400, "redirect_not_allowed"),
        ("GET", "/c?imp=x&url=javascript%3Aalert(1)", 400, "redirect_not_allowed"),
        ("GET", "/c?imp=x&url=https%3A%2F%2Fuser%40example.com%2F", 400, "redirect_not_allowed"),
        ("GET", "/c?imp=x&url=https%3A%2F%2Fexample.com%5C%40evil.test%2F", 400, "redirect_not_allowed"),
        ("GET", "/c?imp=x&url=https%3A%2F%2Fexample.com.evil.test%2F", 400, "redirect_not_allowed"),
        ("GET", "/c?imp=x&url=https%3A%2F%2Fexample.com%0d%0aSet-Cookie%3Ax", 400, "invalid_field"),  # controls
        ("GET", "/i?imp=%ff%fe", 400, "invalid_encoding"),
    ]
    for method, path, expected_status, reason in cases:
        signed = path.startswith("/win") and reason != "signature_missing"
        status, headers, body = tracker.request(method, tracker.sign(path) if signed else path)
        assert status == expected_status, (path, status, body)
        assert headers["x-reject-reason"] == reason, path
        assert json.loads(body)["error"] == reason
    status, headers, _ = tracker.request("POST", "/conv", b"<xml/>", {"Content-Type": "application/xml"})
    assert (status, headers["x-reject-reason"]) == (415, "unsupported_media_type")
    assert tracker.wait_metric("trackpoint_rejected_total", 'reason="redirect_not_allowed"', 5) == 5
    assert tracker.metric("trackpoint_rejected_total", 'reason="missing_field"') == 1
    assert tracker.metric("trackpoint_rejected_total", 'reason="not_found"') == 1
    # Lines are written before the answers leave: the log is complete now, with no wait.
    # No half-built event ever reaches a log; a refused redirect is a click, recorded with the reason.
    events = tracker.events()
    assert {(e.type, e.dims["redirect_rejected"]) for e in events} == {
        ("click", reason) for reason in ("host_not_allowed", "scheme", "userinfo", "backslash")
    }
    assert len(events) == 5


def test_keep_alive_and_pipelining_answer_in_order(tracker: Tracker) -> None:
    requests = (
        b"".join(
            f"GET {tracker.sign(f'/win?imp=pipe-{i}&price=1')} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for i in range(5)
        )
        + b"GET /missing HTTP/1.1\r\nHost: t\r\n\r\nGET /i?imp=last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    answer = tracker.raw(requests)
    statuses = [line.split(b" ")[1] for line in _status_lines(answer)]
    assert statuses == [b"204"] * 5 + [b"404", b"200"]
    assert answer.endswith(PIXEL_GIF)
    events = tracker.wait_events(6)
    assert sorted(e.dims["imp"] for e in events) == ["last"] + [f"pipe-{i}" for i in range(5)]


def test_a_pipelined_request_split_across_reads_reads_as_one(tracker: Tracker) -> None:
    """A request pipelined behind one answered in the same read, its head ending in the next read: that read goes
    on with it. It was taken for a new request line: a header value's UTF-8 was percent-encoded as a target's
    would be, and `X-ID:  1` refused as a method followed by two spaces."""
    first = b"GET /i?imp=split-1 HTTP/1.1\r\nHost: t\r\n\r\nGET /i?imp=split-2 HTTP/1.1\r\nHost: t\r\n"
    for rest in ("User-Agent: caf\u00e9\r\n\r\n".encode(), b"X-ID:  1\r\nUser-Agent: plain\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", tracker.port), timeout=5) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(first)
            time.sleep(0.3)  # the rest in a read of its own
            sock.sendall(rest)
            answer = read_until_quiet(sock)
        assert [line.split(b" ")[1] for line in _status_lines(answer)] == [b"200", b"200"], answer
        first = first.replace(b"split-", b"again-")
    events = {e.dims["imp"]: e for e in tracker.wait_events(4)}
    assert (events["split-2"].ctx.ua, events["again-2"].ctx.ua) == ("caf\u00e9", "plain")


def test_head_and_http_1_0(tracker: Tracker) -> None:
    answer = tracker.raw(b"HEAD /i?imp=h1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 43\r\n" in answer
    assert answer.endswith(b"\r\n\r\n")  # no body after a HEAD
    answer = tracker.raw(b"GET /i?imp=h2 HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in answer
    assert answer.endswith(PIXEL_GIF)
    with socket.create_connection(("127.0.0.1", tracker.port), timeout=3) as sock:
        sock.sendall(b"GET /i?imp=h3 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = sock.recv(65536)
        assert b"Connection: keep-alive\r\n" in first
        sock.sendall(b"GET /i?imp=h4 HTTP/1.0\r\n\r\n")
        assert read_until_quiet(sock).startswith(b"HTTP/1.1 200 OK")
    # The three GETs are the sentinels: once they are logged, the HEAD (answered before them) would be too.
    assert sorted(e.dims["imp"] for e in tracker.wait_events(3)) == ["h2", "h3", "h4"]


def test_malformed_input_gets_400_and_close(tracker: Tracker) -> None:
    for garbage in (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),  # a TLS hello on the plain port
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /i?imp=a HTTP/1.1\r\nBad Header\r\n\r\n",
        b"POST /conv HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /conv HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST /conv HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunkedx\r\n\r\nabc",
    ):
        answer = tracker.raw(garbage)
        assert _status_lines(answer) == [b"HTTP/1.1 400 Bad Request"], garbage
        assert b"X-Reject-Reason: bad_request\r\n" in answer and b"Connection: close\r\n" in answer
    assert tracker.wait_metric("trackpoint_rejected_total", 'reason="bad_request"', 6) == 6
    assert tracker.get("/i?imp=still-alive")[0] == 200  # the worker lived through it


def test_smuggled_second_request_is_never_parsed(tracker: Tracker) -> None:
    smuggle = (
        b"POST /conv HTTP/1.1\r\nHost: t\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /i?imp=smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    answer = tracker.raw(smuggle)
    assert _status_lines(answer) == [b"HTTP/1.1 400 Bad Request"]
    # The sentinel comes after the smuggled request would have: once its line is logged, the other's would be too.
    assert tracker.get("/i?imp=sentinel")[0] == 200
    assert [e.dims["imp"] for e in tracker.wait_events(1)] == ["sentinel"]


def test_limits(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory(
        {
            "server": {
                "limits": {
                    "max_request_line_bytes": 1024,
                    "max_header_bytes": 2048,
                    "max_header_count": 10,
                    "max_body_bytes": 1024,
                }
            }
        }
    )
    answer = tracker.raw(b"GET /i?imp=" + b"a" * 2000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    assert _status_lines(answer) == [b"HTTP/1.1 414 URI Too Long"]
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(11))
    answer = tracker.raw(b"GET /i?imp=a HTTP/1.1\r\nHost: t\r\n" + many + b"\r\n")
    assert _status_lines(answer) == [b"HTTP/1.1 431 Request Header Fields Too Large"]
    answer = tracker.raw(b"GET /i?imp=a HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 3000 + b"\r\n\r\n")
    assert _status_lines(answer) == [b"HTTP/1.1 431 Request Header Fields Too Large"]
    answer = tracker.raw(b"POST /conv HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n")
    assert _status_lines(answer) == [b"HTTP/1.1 413 Content Too Large"]
    chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
    answer = tracker.raw(b"POST /conv HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2)
    assert _status_lines(answer) == [b"HTTP/1.1 413 Content Too Large"]
    for reason in ("uri_too_long", "headers_too_large", "body_too_large"):
        assert tracker.wait_metric("trackpoint_rejected_total", f'reason="{reason}"', 1) >= 1


def test_timeouts(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory(
        {
            "server": {
                "limits": {
                    "header_timeout_s": 0.5,
                    "body_timeout_s": 0.5,
                    "keepalive_timeout_s": 0.8,
                }
            }
        }
    )
    # Each wait is bounded below by the timeout (a machine under load can only make it longer) and above by the
    # client's own 5 s socket timeout: an answer, or the server's close, proves the server's timer fired first.
    with socket.create_connection(("127.0.0.1", tracker.port), timeout=5) as slow:
        started = time.monotonic()
        slow.sendall(b"GET /i?imp=slow HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        answer = read_until_quiet(slow)
        elapsed = time.monotonic() - started
    assert _status_lines(answer) == [b"HTTP/1.1 408 Request Timeout"]
    assert b"X-Reject-Reason: header_timeout" in answer
    assert elapsed >= 0.45
    with socket.create_connection(("127.0.0.1", tracker.port), timeout=5) as slow:
        slow.sendall(b"POST /conv HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{")
        answer = read_until_quiet(slow)
    assert b"X-Reject-Reason: body_timeout" in answer
    with socket.create_connection(("127.0.0.1", tracker.port), timeout=5) as idle:
        idle.sendall(b"GET /i?imp=k HTTP/1.1\r\nHost: t\r\n\r\n")
        started = time.monotonic()
        answer = read_until_quiet(idle)  # the response, then the idle close
        elapsed = time.monotonic() - started
        assert idle.recv(1) == b""  # closed by the server (a client timeout would raise here instead)
    assert _status_lines(answer) == [b"HTTP/1.1 200 OK"]
    assert elapsed >= 0.7


def test_connection_cap_answers_503(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory({"server": {"limits": {"max_connections": 5}}})
    held = [socket.create_connection(("127.0.0.1", tracker.port), timeout=3) for _ in range(5)]
    try:
        assert tracker.wait_metric("trackpoint_connections", "", 5) == 5  # the worker holds all five
        answer = tracker.raw(b"GET /i?imp=over HTTP/1.1\r\nHost: t\r\n\r\n")
        assert _status_lines(answer) == [b"HTTP/1.1 503 Service Unavailable"]
        assert b"X-Reject-Reason: too_many_connections" in answer
    finally:
        for sock in held:
            sock.close()
    assert tracker.wait_metric_at_most("trackpoint_connections", "", 0) == 0  # all five closes seen
    assert tracker.get("/i?imp=after")[0] == 200


def test_forwarded_for_is_trusted_only_from_configured_proxies(tracker_factory: Any) -> None:
    trusting: Tracker = tracker_factory({"server": {"trusted_proxies": ["127.0.0.0/8"]}})
    trusting.get("/i?imp=xff1", headers={"X-Forwarded-For": "203.0.113.77, 127.0.0.5"})
    distrusting: Tracker = tracker_factory()
    distrusting.get("/i?imp=xff2", headers={"X-Forwarded-For": "203.0.113.77"})
    assert [e.ctx.ip for e in trusting.wait_events(1)] == ["203.0.113.0"]
    assert [e.ctx.ip for e in distrusting.wait_events(1)] == ["127.0.0.0"]


def test_custom_event_type_is_configuration_only(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory(
        {
            "event_types": {
                "signup": {
                    "paths": ["/track/signup", "/s"],
                    "methods": ["GET", "POST"],
                    "fields": {
                        "plan": {"type": "enum", "values": ["free", "pro"], "required": True},
                        "seats": {"type": "int", "min": 1, "max": 1000},
                        "session": {"source": "cookie", "name": "sid"},
                        "lang": {"source": "header", "name": "Accept-Language", "max_len": 32},
                        "at": {"type": "timestamp"},
                    },
                    "response": {"kind": "json"},
                    "collectors": ["log"],
                }
            }
        }
    )
    status, _, body = tracker.get(
        "/track/signup?plan=pro&seats=12&at=2026-01-02T03:04:05Z",
        headers={"Cookie": "a=1; sid=s-42", "Accept-Language": "de-CH"},
    )
    assert status == 200 and len(json.loads(body)["id"]) == 32
    assert tracker.get("/s?plan=gold")[0] == 400
    assert tracker.get("/i?imp=x")[0] == 404  # the file's event_types replaced the defaults
    [event] = tracker.wait_events(1)
    assert event.type == "signup"
    assert event.dims == {"plan": "pro", "session": "s-42", "lang": "de-CH"}
    assert event.metrics == {"seats": 12, "at": 1767323045000}
    assert event.ctx.ip == "127.0.0.1"  # no anonymize_ip configured for this type: stored as seen


def test_admin_health_readiness_metrics(tracker: Tracker) -> None:
    assert tracker.admin("GET", "/healthz")[0] == 200
    status, _, body = tracker.admin("GET", "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True
    tracker.get("/i?imp=m1")
    tracker.get("/i?imp=m2")
    assert tracker.wait_metric("trackpoint_events_total", 'type="impression"', 2) == 2
    assert tracker.wait_metric("trackpoint_collector_sent_total", 'collector="log"', 2) == 2
    assert tracker.metric("trackpoint_request_duration_seconds_count") >= 2
    assert tracker.metric("trackpoint_workers_ready") == 1
    assert tracker.admin("GET", "/nope")[0] == 404


def test_user_agent_header_reaches_the_parser(tracker: Tracker) -> None:
    tracker.get("/i?imp=ua", headers={"User-Agent": "Googlebot/2.1 (+http://www.google.com/bot.html)"})
    [event] = tracker.wait_events(1)
    assert event.ctx.device is not None and event.ctx.device.bot is True
    assert CHROME_UA not in (event.ctx.ua or "")
