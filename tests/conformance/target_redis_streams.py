"""The redis_streams conformance target: a private redis-server on a free port, stopped and restarted in place.

The server keeps no snapshots while it runs but saves one when SIGTERM stops it (a save point that never fires
in a test's lifetime makes Redis save on shutdown), so entries and dedupe keys survive the restart, as they would
on a persistent production Redis.
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
from typing import Any, cast

from redis.asyncio import Redis


class RedisStreamsTarget:
    name = "redis_streams"
    supports_restart = True
    dedupes_replays = True  # the collector's script appends an id at most once within dedupe_window_s

    def __init__(self) -> None:
        self.port = _free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="tp-redis-"))
        self.stream = f"tpconf:{uuid.uuid4().hex[:12]}:events"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def collector_config(self) -> dict[str, Any]:
        # One stream for every type: its entry order is the delivery order read_ids reports.
        return {
            "type": "redis_streams",
            "url": self.url,
            "stream": self.stream,
            "maxlen": 0,
            "dedupe_window_s": 3600,
            "timeout_s": 2.0,
            "connect_timeout_s": 1.0,
            "flush_interval_ms": 20,
        }

    async def read_ids(self) -> list[str]:
        client = Redis.from_url(self.url, decode_responses=True)
        ids: list[str] = []
        start = "-"
        try:
            while True:
                page = await client.xrange(self.stream, min=start, count=10_000)
                entries = cast(list[tuple[str, dict[str, str]]], page)  # decode_responses: str, not bytes
                if not entries:
                    return ids
                ids.extend(fields["id"] for _, fields in entries)
                start = "(" + entries[-1][0]
        finally:
            await client.aclose()

    async def start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        binary = shutil.which("redis-server") or "redis-server"
        self._process = subprocess.Popen(
            [
                *(binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)),
                *("--save", "3600 1", "--appendonly", "no", "--daemonize", "no", "--logfile", ""),
            ],
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


async def make_target() -> RedisStreamsTarget:
    target = RedisStreamsTarget()
    await target.start()
    return target


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _wait_until_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}")
        client = Redis.from_url(url, socket_connect_timeout=0.5)
        try:
            if await client.ping():
                return
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
        finally:
            await client.aclose()
        await asyncio.sleep(0.05)


async def _wait_for_exit(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while process.poll() is None:
        if asyncio.get_running_loop().time() > deadline:
            process.kill()
            process.wait()
            return
        await asyncio.sleep(0.02)
