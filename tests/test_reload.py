"""Reloads refuse nothing: 20 SIGHUP reloads under keep-alive load, and every request that got an answer got a 2xx,
and every acknowledged impression is in the log.

The clients behave as real ones do: they reuse their connection until the server closes it, then reconnect, and
retry a request only when its connection closed before any byte of the answer (the request was not taken).
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from typing import Any

import pytest

from conftest import Tracker
from trackpoint.collectors.log.reader import read_events

RELOADS = 20
CLIENTS = 6
# Each client waits this long after an answer: six clients then keep a request in flight most of the time (the
# drains meet requests), without the test's own threads taking the cores the reloads' new workers start on. At full
# speed a slow machine ran 20 reloads in minutes, not seconds.
PAUSE_S = 0.001


class NotAnswered(Exception):
    """The connection closed (or was reset) before any byte of the answer: the request may be sent again."""


class KeepAliveClient(threading.Thread):
    """Sends distinct impressions over one keep-alive connection at a time, recording every answer."""

    def __init__(self, port: int, number: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.number = number
        self.stop = stop
        self.acknowledged: list[str] = []
        self.failures: list[str] = []
        self.statuses: dict[int, int] = {}
        self.retries = 0
        self.connections = 0

    def run(self) -> None:
        sock: socket.socket | None = None
        sequence = 0
        while not self.stop.is_set():
            imp = f"r{self.number}-{sequence}"
            sequence += 1
            for _attempt in range(10):
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                    self.connections += 1
                try:
                    status, close = self.exchange(sock, imp)
                except NotAnswered:
                    sock.close()
                    sock = None
                    self.retries += 1
                    continue
                except OSError as exc:  # part of an answer, then nothing: a failed request
                    self.failures.append(f"{imp}: {exc!r}")
                    sock.close()
                    sock = None
                    break
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if 200 <= status < 300:
                    self.acknowledged.append(imp)
                else:
                    self.failures.append(f"{imp}: HTTP {status}")
                if close:
                    sock.close()
                    sock = None
                break
            else:
                self.failures.append(f"{imp}: not answered in 10 attempts")
            time.sleep(PAUSE_S)
        if sock is not None:
            sock.close()

    def exchange(self, sock: socket.socket, imp: str) -> tuple[int, bool]:
        """One request and its whole answer: (status, whether the server closes the connection)."""
        request = f"GET /i?imp={imp}&cid=c1 HTTP/1.1\r\nHost: t\r\nUser-Agent: reload-test\r\n\r\n".encode()
        try:
            sock.sendall(request)
        except OSError:
            raise NotAnswered from None
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = self.receive(sock, answered=bool(received))
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            body += self.receive(sock, answered=True)
        return status, headers.get("connection") == "close"

    @staticmethod
    def receive(sock: socket.socket, answered: bool) -> bytes:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError) as exc:
            if not answered:
                raise NotAnswered from None
            raise OSError(f"reset in the middle of an answer: {exc!r}") from None
        if not chunk:
            if not answered:
                raise NotAnswered
            raise OSError("closed in the middle of an answer")
        return chunk


@pytest.mark.timeout(300)
def test_twenty_reloads_under_keep_alive_load_refuse_nothing(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory(workers=2)
    started = time.monotonic()
    phases: list[str] = []  # where the time went, for a run that is slow
    stop = threading.Event()
    clients = [KeepAliveClient(tracker.port, n, stop) for n in range(CLIENTS)]
    for client in clients:
        client.start()
    try:
        for reload in range(1, RELOADS + 1):
            before = sum(len(client.acknowledged) for client in clients)
            tracker.signal(signal.SIGHUP)
            assert tracker.wait_metric("trackpoint_reloads_total", "", reload, timeout_s=60) == reload, phases
            phases.append(f"reload {reload} at {time.monotonic() - started:.1f}s")
            # Some load on the new workers before the next reload (a sentinel, not a pause).
            deadline = time.monotonic() + 10
            while sum(len(client.acknowledged) for client in clients) < before + 50:
                assert time.monotonic() < deadline, ("no requests answered after a reload", phases)
                time.sleep(0.01)
    finally:
        stop.set()
        for client in clients:
            client.join(30)
    assert tracker.metric("trackpoint_reload_failures_total") == 0
    failures = [failure for client in clients for failure in client.failures]
    statuses: dict[int, int] = {}
    for client in clients:
        for status, count in client.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    assert failures == [], (statuses, failures[:20])
    assert set(statuses) == {200}, statuses
    acknowledged = [imp for client in clients for imp in client.acknowledged]
    assert len(acknowledged) > RELOADS * 50
    # The reloads did close connections (each worker drains), and the clients came back on new ones.
    assert sum(client.connections for client in clients) > CLIENTS
    assert tracker.stop() == 0
    phases.append(f"stopped at {time.monotonic() - started:.1f}s")
    logged = {event.dims["imp"] for event in read_events([tracker.data_dir / "logs"])}
    phases.append(f"{len(logged)} events read at {time.monotonic() - started:.1f}s")
    assert [imp for imp in acknowledged if imp not in logged] == [], phases
