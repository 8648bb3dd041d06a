"""The nats conformance target: a private JetStream nats-server on a free port, stopped and restarted in place.

The server keeps its store directory across restarts, so the stream and its duplicate window survive an outage.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import nats
from nats.js.errors import NotFoundError

from trackpoint.collectors.nats.config import stream_subject


class NatsTarget:
    name = "nats"
    supports_restart = True
    dedupes_replays = True  # Nats-Msg-Id = event id, within the stream's duplicate window

    def __init__(self) -> None:
        self.port = _free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="tp-nats-"))
        tag = uuid.uuid4().hex[:12]
        self.subject = f"tpconf.{tag}.{{type}}"
        self.stream = f"TPCONF_{tag}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def collector_config(self) -> dict[str, Any]:
        return {
            "type": "nats",
            "servers": [self.url],
            "subject": self.subject,
            "stream": self.stream,
            "create_stream": True,
            "duplicate_window_s": 600.0,
            "ack_timeout_s": 2.0,
            "connect_timeout_s": 1.0,
            "reconnect_wait_s": 0.2,
            "flush_interval_ms": 20,
        }

    async def read_ids(self) -> list[str]:
        """Every stored message's Nats-Msg-Id, in stream order, through an ordered (ephemeral) consumer."""
        connection = await nats.connect(self.url, connect_timeout=2, allow_reconnect=False, error_cb=_quiet)
        try:
            js = connection.jetstream(timeout=5)
            try:
                count = (await js.stream_info(self.stream)).state.messages
            except NotFoundError:
                return []
            ids: list[str] = []
            if count == 0:
                return ids
            subscription = await js.subscribe(stream_subject(self.subject), stream=self.stream, ordered_consumer=True)
            try:
                while len(ids) < count:
                    message = await subscription.next_msg(timeout=5)
                    ids.append((message.headers or {}).get("Nats-Msg-Id", ""))
            finally:
                await subscription.unsubscribe()
            return ids
        finally:
            await connection.close()

    async def start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self._process = subprocess.Popen(
            [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await _wait_until_ready(self.url, self._process)

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        await _wait_for_exit(process)

    async def close(self) -> None:
        await self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


async def make_target() -> NatsTarget:
    target = NatsTarget()
    await target.start()
    return target


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _wait_until_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Until JetStream answers (the port opens a little before the stream store is recovered)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited with {process.returncode}")
        try:
            connection = await asyncio.wait_for(
                nats.connect(url, connect_timeout=1, reconnect_time_wait=0, allow_reconnect=False, error_cb=_quiet), 2
            )
            try:
                await connection.jetstream(timeout=1).account_info()
                return
            finally:
                await connection.close()
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.05)


async def _quiet(exc: Exception) -> None:
    """Connection errors while the server starts are expected; the caller's deadline reports a real failure."""


async def _wait_for_exit(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while process.poll() is None:
        if asyncio.get_running_loop().time() > deadline:
            process.kill()
            process.wait()
            return
        await asyncio.sleep(0.02)
