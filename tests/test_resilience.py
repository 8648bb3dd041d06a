"""Resilience of the edge, end to end against the real CLI: request smuggling, slowloris, connection floods and
valid traffic next to garbage. A smaller, faster version of the scenarios of bench/flood.py.
"""

from __future__ import annotations

import http.client
import random
import re
import selectors
import socket
import threading
import time
from typing import Any

import pytest

from conftest import CHROME_UA, Tracker, read_until_quiet
from trackpoint.event import derived_id

SMUGGLED = b"GET /i?imp=smuggled-%d HTTP/1.1\r\nHost: t\r\n\r\n"
FORM = b"POST /conv HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n"

# Each carries a second request after the first one's body as the front end would frame it differently.
SMUGGLING: dict[str, bytes] = {
    "content-length then transfer-encoding": FORM + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "transfer-encoding then content-length": FORM + b"Transfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n",
    "duplicate content-length": FORM + b"Content-Length: 7\r\nContent-Length: 0\r\n\r\nvalue=1",
    "duplicate equal content-length": FORM + b"Content-Length: 7\r\nContent-Length: 7\r\n\r\nvalue=1",
    "content-length list": FORM + b"Content-Length: 7, 7\r\n\r\nvalue=1",
    "chunkedx": FORM + b"Transfer-Encoding: chunkedx\r\n\r\n7\r\nvalue=1\r\n0\r\n\r\n",
    "xchunked": FORM + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "chunked, identity": FORM + b"Transfer-Encoding: chunked, identity\r\n\r\n7\r\nvalue=1\r\n0\r\n\r\n",
    "transfer-encoding twice": FORM + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "space before colon": FORM + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "obs-fold": FORM + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "tab and content-length": FORM + b"Transfer-Encoding:\tchunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    "nul after chunked": FORM + b"Transfer-Encoding: chunked\x00\r\n\r\n0\r\n\r\n",
    "plus content-length": FORM + b"Content-Length: +7\r\n\r\nvalue=1",
    "negative content-length": FORM + b"Content-Length: -1\r\n\r\n",
    "hex content-length": FORM + b"Content-Length: 0x7\r\n\r\nvalue=1",
    "content-length with a space": FORM + b"Content-Length: 7 7\r\n\r\nvalue=1",
    "hex chunk size": FORM + b"Transfer-Encoding: chunked\r\n\r\n0x7\r\nvalue=1\r\n0\r\n\r\n",
    "bare LF chunks": FORM + b"Transfer-Encoding: chunked\r\n\r\n7\nvalue=1\n0\n\n",
    "bare CR in a header": FORM + b"Content-Length: 7\rX: y\r\n\r\nvalue=1",
    "GET with both framings": b"GET /i?imp=a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bare LF request": b"GET /i?imp=lf HTTP/1.1\nHost: t\n\n",
}

STATUS_LINE = re.compile(rb"HTTP/1\.1 \d{3} [A-Za-z ]+?(?=\r\n)")


def _status_lines(raw: bytes) -> list[bytes]:
    return STATUS_LINE.findall(raw)


def _send_and_read_to_eof(port: int, payload: bytes, timeout_s: float = 3.0) -> tuple[bytes, bool]:
    """Sends `payload`; returns the answer and whether the server closed the connection (EOF before the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(payload)
        chunks: list[bytes] = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return b"".join(chunks), False
            except ConnectionResetError:
                return b"".join(chunks), True
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)


def _keepalive_get(connection: http.client.HTTPConnection, path: str) -> int:
    connection.request("GET", path, headers={"User-Agent": CHROME_UA})
    response = connection.getresponse()
    response.read()
    return response.status


def test_smuggling_attempts_get_400_and_close_and_never_two_responses(tracker: Tracker) -> None:
    for number, (name, attempt) in enumerate(SMUGGLING.items()):
        # Whole, and byte by byte at the front (a parser that decides on a partial header must decide the same).
        for split in (False, True):
            payload = attempt + SMUGGLED % number
            with socket.create_connection(("127.0.0.1", tracker.port), timeout=3) as sock:
                if split:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    for byte in payload[:80]:
                        sock.sendall(bytes([byte]))
                    sock.sendall(payload[80:])
                else:
                    sock.sendall(payload)
                answer = read_until_quiet(sock)
            assert _status_lines(answer) == [b"HTTP/1.1 400 Bad Request"], (name, split, answer)
            assert b"X-Reject-Reason: bad_request\r\n" in answer and b"Connection: close\r\n" in answer, name
        answer, closed = _send_and_read_to_eof(tracker.port, attempt + SMUGGLED % number)
        assert closed, name
        assert len(_status_lines(answer)) == 1, name
    expected = 3 * len(SMUGGLING)
    assert tracker.wait_metric("trackpoint_rejected_total", 'reason="bad_request"', expected) == expected
    # HTTP/1.0 cannot frame a chunked body: the one request is answered and the connection closed after it.
    answer, closed = _send_and_read_to_eof(
        tracker.port,
        b"POST /conv HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\n"
        b"7\r\nvalue=1\r\n0\r\n\r\n" + SMUGGLED % 999,
    )
    assert closed and len(_status_lines(answer)) == 1 and b"Connection: close\r\n" in answer
    assert tracker.get("/i?imp=after-smuggling")[0] == 200
    events = tracker.wait_events(2)
    time.sleep(0.3)
    imps = {e.dims.get("imp") for e in tracker.events()}
    assert "after-smuggling" in imps
    assert not any(imp and imp.startswith("smuggled") for imp in imps), imps
    assert len(events) <= 2  # the after-smuggling impression and at most the HTTP/1.0 conversion


def test_slowloris_burst_is_closed_at_the_header_timeout_while_valid_traffic_flows(tracker_factory: Any) -> None:
    timeout_s = 1.0
    stalled = 200
    tracker: Tracker = tracker_factory({"server": {"limits": {"header_timeout_s": timeout_s, "max_connections": 2000}}})
    selector = selectors.DefaultSelector()
    sent_at: dict[socket.socket, float] = {}
    answers: dict[socket.socket, bytes] = {}
    closed_after: dict[socket.socket, float] = {}
    valid_statuses: list[int] = []
    stop = threading.Event()

    def valid_traffic() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", tracker.port, timeout=5)
        number = 0
        while not stop.is_set():
            valid_statuses.append(_keepalive_get(connection, f"/i?imp=slow-ok-{number}"))
            number += 1
            time.sleep(0.01)
        connection.close()

    valid = threading.Thread(target=valid_traffic)
    try:
        for number in range(stalled):
            sock = socket.create_connection(("127.0.0.1", tracker.port), timeout=5)
            sock.sendall(b"GET /i?imp=stall-%d HTTP/1.1\r\nHost: t\r\nX-Stalled: aaa" % number)  # no line end
            sent_at[sock] = time.monotonic()
            answers[sock] = b""
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        valid.start()
        deadline = time.monotonic() + timeout_s * 3
        while len(closed_after) < stalled and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.05):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                try:
                    chunk = ready.recv(4096)
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    answers[ready] += chunk
                else:
                    closed_after[ready] = time.monotonic() - sent_at[ready]
                    selector.unregister(ready)
    finally:
        stop.set()
        if valid.is_alive():
            valid.join(10)
        for sock in sent_at:
            sock.close()
        selector.close()
    assert len(closed_after) == stalled, f"{stalled - len(closed_after)} stalled connections were never closed"
    late = sorted(elapsed for elapsed in closed_after.values() if not timeout_s * 0.95 <= elapsed <= timeout_s * 1.2)
    assert late == [], f"closed outside [0.95, 1.2] x the header timeout: {late[:10]}"
    assert all(_status_lines(answer) == [b"HTTP/1.1 408 Request Timeout"] for answer in answers.values())
    assert tracker.wait_metric("trackpoint_rejected_total", 'reason="header_timeout"', stalled) == stalled
    assert len(valid_statuses) >= 20 and set(valid_statuses) == {200}
    events = tracker.wait_events(len(valid_statuses))
    assert {e.dims["imp"] for e in events} == {f"slow-ok-{n}" for n in range(len(valid_statuses))}


def test_connections_beyond_the_cap_get_503_and_the_held_ones_keep_working(tracker_factory: Any) -> None:
    cap = 20
    tracker: Tracker = tracker_factory({"server": {"limits": {"max_connections": cap}}})
    held = [http.client.HTTPConnection("127.0.0.1", tracker.port, timeout=5) for _ in range(cap)]
    try:
        for number, connection in enumerate(held):
            assert _keepalive_get(connection, f"/i?imp=held-{number}") == 200
        for _ in range(30):
            answer, closed = _send_and_read_to_eof(tracker.port, b"GET /i?imp=over HTTP/1.1\r\nHost: t\r\n\r\n")
            assert closed
            assert _status_lines(answer) == [b"HTTP/1.1 503 Service Unavailable"]
            assert b"X-Reject-Reason: too_many_connections\r\n" in answer
        for number, connection in enumerate(held):  # the cap refused newcomers, not the connections it holds
            assert _keepalive_get(connection, f"/i?imp=held-again-{number}") == 200
    finally:
        for connection in held:
            connection.close()
    assert tracker.wait_metric("trackpoint_rejected_total", 'reason="too_many_connections"', 30) == 30
    time.sleep(0.2)
    assert tracker.get("/i?imp=after-cap")[0] == 200
    events = tracker.wait_events(2 * cap + 1)
    assert not [e for e in events if e.dims["imp"] == "over"]
    assert len(events) == 2 * cap + 1


def _garbage(rng: random.Random, number: int) -> bytes:
    kind = number % 8
    if kind == 0:
        return rng.randbytes(rng.randint(1, 2048))
    if kind == 1:
        return b"GET /i?imp=" + b"x" * 20_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"
    if kind == 2:
        return b"GET /i?imp=g HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 40_000 + b"\r\n\r\n"
    if kind == 3:
        return b"GET /win?imp=g-%d&price=abc HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % number
    if kind == 4:
        return b"GET /i?cid=no-imp HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    if kind == 5:
        return FORM + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED % number
    if kind == 6:
        return b"".join(b"X-H%d: v\r\n" % i for i in range(500))
    return b"GET /i?imp=%ff%fe HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


@pytest.mark.timeout(90)
def test_valid_traffic_next_to_garbage_loses_nothing(tracker: Tracker) -> None:
    [worker] = tracker.worker_pids()
    valid_per_thread = 150
    statuses: list[int] = []
    garbage_answers: list[bytes] = []
    stop = threading.Event()

    def valid_traffic(thread: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", tracker.port, timeout=5)
        for number in range(valid_per_thread):
            statuses.append(_keepalive_get(connection, f"/i?imp=mix-{thread}-{number}&cid=c1"))
        connection.close()

    def garbage_traffic(seed: int) -> None:
        rng = random.Random(seed)
        number = 0
        while not stop.is_set():
            try:
                garbage_answers.append(tracker.raw(_garbage(rng, number), read_timeout_s=2.0))
            except (BrokenPipeError, ConnectionResetError):
                garbage_answers.append(b"")  # the server closed while we were still sending: also a rejection
            number += 1

    garbage = [threading.Thread(target=garbage_traffic, args=(seed,)) for seed in range(3)]
    valid = [threading.Thread(target=valid_traffic, args=(thread,)) for thread in range(2)]
    for thread in garbage + valid:
        thread.start()
    for thread in valid:
        thread.join(60)
    stop.set()
    for thread in garbage:
        thread.join(10)
    assert len(statuses) == 2 * valid_per_thread and set(statuses) == {200}
    assert len(garbage_answers) >= 24  # every garbage kind went out several times
    for answer in garbage_answers:
        for line in _status_lines(answer):
            assert line.startswith((b"HTTP/1.1 4",)), line
    wanted = {derived_id("impression", [f"mix-{t}-{n}"]) for t in range(2) for n in range(valid_per_thread)}
    events = tracker.wait_events(len(wanted))
    assert wanted <= {e.id for e in events}
    assert {e.dims["imp"] for e in events} <= {f"mix-{t}-{n}" for t in range(2) for n in range(valid_per_thread)}
    assert tracker.worker_pids() == [worker]  # the same worker served it all: nothing crashed or restarted
    assert tracker.metric("trackpoint_rejected_total", 'reason="internal_error"') == 0
