"""Attacks on the tracking edge, each reproduced bounded in time and size against a real tracker, with legitimate
traffic measured alongside where the attack was about availability (issue 13's findings on the edge).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Tracker, load_config, read_until_quiet
from trackpoint.edge.runtime import ERROR_LOG_INTERVAL_S, Edge
from trackpoint.plugins import registry


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _status_lines(answer: bytes) -> list[bytes]:
    return [line for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.")]


class LegitClient:
    """A keep-alive client sending impressions in a thread while an attack runs: counts answers by status."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.port = port
        self.source = source
        self.ok = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LegitClient:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        sock: socket.socket | None = None
        reused = False
        i = 0
        while not self._stop.is_set():
            answer = b""
            try:
                if sock is None:
                    address = ("127.0.0.1", self.port)
                    sock = socket.create_connection(address, timeout=5, source_address=(self.source, 0))
                    reused = False
                i += 1
                sock.sendall(b"GET /i?imp=legit-%d HTTP/1.1\r\nHost: t\r\n\r\n" % i)
                while b"\r\n\r\n" not in answer or not answer.endswith(b";"):  # the GIF ends with ';'
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed")
                    answer += chunk
                reused = True
                if answer.startswith(b"HTTP/1.1 200"):
                    self.ok += 1
                else:
                    self.failed += 1
            except OSError:
                # An idle keep-alive connection the server closed before our request reached it: a real client
                # retries on a new connection (RFC 9112 §9.3.1). Anything else is a failure.
                if not (reused and not answer):
                    self.failed += 1
                if sock is not None:
                    sock.close()
                sock = None
        if sock is not None:
            sock.close()


@pytest.fixture
def hardened(tracker_factory: Any) -> Tracker:
    """Short timeouts so that the attacks' bounded runs see their effect; one worker, as the findings had per worker."""
    config = {
        "server": {
            "limits": {
                "keepalive_timeout_s": 2.0,
                "header_timeout_s": 5.0,
                "write_timeout_s": 2.0,
                "max_connections_per_ip": 40,
            }
        }
    }
    tracker: Tracker = tracker_factory(config)
    return tracker


# --- severe 1: an endless header line ---------------------------------------------------------------------------


def test_an_endless_header_line_is_cut_off_at_the_cap_as_bytes_arrive(hardened: Tracker) -> None:
    """16 connections stream one header value that never ends: each is answered 431 and closed once the head cap is
    reached, long before the header timeout; a legitimate client keeps being served; the worker's memory stays flat."""
    (worker,) = hardened.worker_pids()
    rss_before = _rss_kib(worker)
    answers: list[bytes] = []

    def attack() -> None:
        with socket.create_connection(("127.0.0.1", hardened.port), timeout=5) as sock:
            sock.sendall(b"GET /i?imp=a HTTP/1.1\r\nHost: t\r\nX-Endless: ")
            try:
                for _ in range(2000):  # up to 8 MB, far past any cap
                    sock.sendall(b"a" * 4096)
            except OSError:
                pass  # closed by the tracker: what this test wants
            answers.append(read_until_quiet(sock))

    with LegitClient(hardened.port) as legit:
        threads = [threading.Thread(target=attack) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        time.sleep(0.5)
    assert len(answers) == 16
    assert all(_status_lines(answer) == [b"HTTP/1.1 431 Request Header Fields Too Large"] for answer in answers)
    assert legit.failed == 0 and legit.ok > 50
    assert hardened.wait_metric("trackpoint_rejected_total", 'reason="headers_too_large"', 16) == 16
    assert _rss_kib(worker) - rss_before < 20_000


def test_a_chunk_extension_counts_against_the_request_cap(hardened: Tracker) -> None:
    head = b"POST /conv HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = hardened.raw(head + b"2;ext=" + b"x" * (1 << 20) + b"\r\n{}\r\n0\r\n\r\n")
    assert _status_lines(answer)[0] in (b"HTTP/1.1 413 Content Too Large", b"HTTP/1.1 400 Bad Request")
    assert not hardened.events()


# --- severe 4: slow read with deep pipelining -------------------------------------------------------------------


def test_deep_pipelining_without_reading_is_bounded_and_aborted(hardened: Tracker) -> None:
    """40 connections each send 6,000 pipelined requests and never read: each gets at most one read's worth of
    answers (the last says close), connections that still do not read are aborted at the write timeout, and a
    legitimate client keeps being served."""
    (worker,) = hardened.worker_pids()
    rss_before = _rss_kib(worker)
    batch = b"GET /i?imp=p HTTP/1.1\r\nHost: t\r\n\r\n" * 6000
    attackers = []
    with LegitClient(hardened.port, source="127.0.0.2") as legit:
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", hardened.port), timeout=5)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.send(batch)
            attackers.append(sock)
        deadline = time.monotonic() + 15
        closed = 0
        while time.monotonic() < deadline and closed < len(attackers):
            closed = sum(1 for sock in attackers if _peer_closed(sock))
            time.sleep(0.2)
        peak = _rss_kib(worker)
    for sock in attackers:
        sock.close()
    assert closed == len(attackers)  # none outlives the write timeout (2 s) by much
    assert legit.failed == 0 and legit.ok > 50
    time.sleep(1.5)  # the counters reach /metrics once a second
    answered = hardened.metric("trackpoint_requests_total")
    assert answered <= 40 * 128 + legit.ok + 10  # at most one read's worth of answers per attacker
    assert peak - rss_before < 60_000


def _peer_closed(sock: socket.socket) -> bool:
    """True once the tracker closed or aborted the connection (what it sent is drained and discarded)."""
    try:
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return True
    except BlockingIOError:
        return False
    except OSError:  # reset by the abort
        return True


# --- 7: one client address cannot take every slot ---------------------------------------------------------------


def test_one_address_cannot_fill_every_connection_slot(hardened: Tracker) -> None:
    silent = [socket.create_connection(("127.0.0.1", hardened.port), timeout=5) for _ in range(40)]
    try:
        extra = socket.create_connection(("127.0.0.1", hardened.port), timeout=5)
        with extra:
            answer = read_until_quiet(extra)
        assert _status_lines(answer) == [b"HTTP/1.1 503 Service Unavailable"]
        assert b"X-Reject-Reason: too_many_connections_from_ip" in answer
        # Another client address is still served.
        with socket.create_connection(("127.0.0.1", hardened.port), timeout=5, source_address=("127.0.0.3", 0)) as ok:
            ok.sendall(b"GET /i?imp=other HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert read_until_quiet(ok).startswith(b"HTTP/1.1 200 OK")
    finally:
        for sock in silent:
            sock.close()


# --- 8, 11: single answers and strict parsing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "statuses", "reason"),
    [
        # Upgrade is ignored (RFC 9110 allows it): one answer, then the connection closes.
        (
            b"GET /i?imp=up HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            [b"HTTP/1.1 200 OK"],
            None,
        ),
        (b"CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n", [b"HTTP/1.1 404 Not Found"], b"not_found"),
        (b"GET /i?imp=a\r\n\r\n", [b"HTTP/1.1 400 Bad Request"], b"bad_request"),  # HTTP/0.9
        (b"GET /i?imp=a HTTP/1.1\r\n\r\n", [b"HTTP/1.1 400 Bad Request"], b"bad_host"),  # no Host
        (b"GET /i?imp=a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", [b"HTTP/1.1 400 Bad Request"], b"bad_host"),
        (b"GET  /i?imp=a HTTP/1.1\r\nHost: a\r\n\r\n", [b"HTTP/1.1 400 Bad Request"], b"bad_request"),
        (
            b"POST /conv HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: identity, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            [b"HTTP/1.1 400 Bad Request"],
            b"bad_request",
        ),
        # 413 at once, and no `100 Continue` before it.
        (
            b"POST /conv HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 99999999\r\n\r\n",
            [b"HTTP/1.1 413 Content Too Large"],
            b"body_too_large",
        ),
        (b"GET /i?imp=a%00b HTTP/1.1\r\nHost: a\r\n\r\n", [b"HTTP/1.1 400 Bad Request"], b"invalid_field"),
        (b"GET /i?imp=a%0Ab HTTP/1.1\r\nHost: a\r\n\r\n", [b"HTTP/1.1 400 Bad Request"], b"invalid_field"),
    ],
)
def test_one_answer_and_strict_parsing(
    tracker: Tracker, request_bytes: bytes, statuses: list[bytes], reason: bytes | None
) -> None:
    answer = tracker.raw(request_bytes)
    assert _status_lines(answer) == statuses
    if reason is not None:
        assert b"X-Reject-Reason: " + reason + b"\r\n" in answer


def test_expect_continue_is_answered_once_the_head_passed(tracker: Tracker) -> None:
    body = b'{"order_id":"o-continue","value":2}'
    head = (
        b"POST /conv HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with socket.create_connection(("127.0.0.1", tracker.port), timeout=5) as sock:
        sock.sendall(head)
        assert sock.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK")
    assert [e.dims["order_id"] for e in tracker.events()] == ["o-continue"]


def test_no_interim_answer_follows_the_final_one(tracker: Tracker) -> None:
    """A request with `Expect: 100-continue` answered within the read that brought it (no body, or the body with
    the head) gets no 100 after its answer: on a kept-alive connection the client would take it for the answer to
    its next request."""
    body = b"order_id=o-expect"
    with socket.create_connection(("127.0.0.1", tracker.port), timeout=5) as sock:
        sock.sendall(b"GET /i?imp=e-expect HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n")
        sock.sendall(
            b"POST /conv HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        time.sleep(0.3)
        sock.sendall(b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n")
        answer = read_until_quiet(sock)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"200", b"200", b"404"]  # the pixel's body ends in no CRLF


def test_a_chunked_trailer_changes_nothing_the_head_said(tracker_factory: Any) -> None:
    """Trailer fields are counted and dropped (RFC 9110 §6.5.1): merged into the headers, a client behind a proxy
    that passes trailers on would choose its own address (X-Forwarded-For), user agent or body media type. And a
    Content-Length with whitespace around it frames its body (RFC 9110 §5.5), not a 413."""
    tracker: Tracker = tracker_factory({"server": {"trusted_proxies": ["127.0.0.0/8"]}})
    head = (
        b"POST /conv HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\nUser-Agent: head-ua\r\n"
        b"X-Forwarded-For: 9.9.9.9\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    trailer = b"X-Forwarded-For: 1.2.3.4\r\nUser-Agent: trailer-ua\r\nContent-Type: application/json\r\n\r\n"
    answer = tracker.raw(head + b"e\r\norder_id=o-trl\r\n0\r\n" + trailer)
    assert _status_lines(answer) == [b"HTTP/1.1 200 OK"], answer
    spaced = b"POST /conv HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    answer = tracker.raw(spaced + b"Content-Length: 13 \t\r\n\r\norder_id=o-sp")
    assert _status_lines(answer) == [b"HTTP/1.1 200 OK"], answer
    events = {e.dims["order_id"]: e for e in tracker.wait_events(2)}
    assert (events["o-trl"].ctx.ip, events["o-trl"].ctx.ua) == ("9.9.9.0", "head-ua")


@pytest.mark.e2e
def test_an_ipv4_proxy_is_trusted_on_a_dual_stack_socket(tmp_path: Path) -> None:
    """With `host: "::"` an IPv4 peer arrives as ::ffff:a.b.c.d; its IPv4 network in trusted_proxies still decides
    (else the load balancer's X-Forwarded-For was ignored, and the balancer itself capped as one client)."""
    tracker = Tracker(tmp_path, {"server": {"trusted_proxies": ["127.0.0.0/8"]}})
    document = yaml.safe_load(tracker.config_path.read_text())
    document["server"]["host"] = "::"  # the suite's trackers listen on 127.0.0.1: this one on every address
    tracker.config_path.write_text(yaml.safe_dump(document))
    tracker.start()
    try:
        request = b"GET /i?imp=dual HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 9.9.9.9\r\nConnection: close\r\n\r\n"
        assert _status_lines(tracker.raw(request)) == [b"HTTP/1.1 200 OK"]
        assert [e.ctx.ip for e in tracker.wait_events(1)] == ["9.9.9.0"]
    finally:
        assert tracker.stop() == 0, tracker.output()


def test_an_absolute_form_target_reaches_the_tag_too(tracker: Tracker) -> None:
    answer = tracker.raw(b"GET http://a/tp.js HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert _status_lines(answer) == [b"HTTP/1.1 200 OK"]


# --- 9: deep JSON, and error logs per kind ----------------------------------------------------------------------


def test_deeply_nested_json_is_a_small_400(tracker: Tracker) -> None:
    for body in (b"[" * 10_000 + b"]" * 10_000, b'{"order_id":"o","x":' + b"[" * 10_000 + b"]" * 10_000 + b"}"):
        status, headers, _ = tracker.request("POST", "/conv", body, {"Content-Type": "application/json"})
        assert (status, headers["x-reject-reason"]) == (400, "invalid_json")
    assert tracker.metric("trackpoint_rejected_total", 'reason="internal_error"') == 0
    assert "RecursionError" not in tracker.output()


def test_each_kind_of_error_has_its_own_log_interval(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A flood of one kind of error is logged once per interval, and does not hide another kind."""
    loaded = load_config()

    async def main() -> None:
        edge = Edge(loaded.config, loaded.version, 0, registry())
        for _ in range(100):
            edge.internal_error(ValueError("noisy"))
        edge.internal_error(KeyError("rare"))
        edge.preprocessor_failed("geo", OSError("db"))
        edge.preprocessor_failed("geo", OSError("db"))

    with caplog.at_level("ERROR", logger="trackpoint.edge"):
        asyncio.run(main())
    logged = [record.exc_info[1] for record in caplog.records if record.exc_info]
    assert [type(exc).__name__ for exc in logged] == ["ValueError", "KeyError", "OSError"]
    assert ERROR_LOG_INTERVAL_S >= 1


def test_a_field_named_twice_keeps_the_first_in_json_as_in_a_query(tracker: Tracker) -> None:
    body = b'{"order_id":"first","value":1,"order_id":"second"}'
    assert tracker.request("POST", "/conv", body, {"Content-Type": "application/json"})[0] == 200
    assert tracker.get("/conv?order_id=q-first&order_id=q-second")[0] == 200
    assert sorted(e.dims["order_id"] for e in tracker.events()) == ["first", "q-first"]
