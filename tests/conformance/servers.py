"""A private server process for a conformance target: started from the binary on PATH on a free port, really
stopped (SIGTERM) and started again at the same address, its data directory kept until close()."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from conftest import free_port


class PrivateServer:
    """`command(port, workdir)` gives the argv; `ready()` answers True once the server serves (a port can open
    before the server is ready, e.g. JetStream recovering its store)."""

    def __init__(
        self,
        name: str,
        command: Callable[[int, Path], list[str]],
        ready: Callable[[], Awaitable[bool]],
    ) -> None:
        self.name = name
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"tp-{name}-"))
        self._command = command
        self._ready = ready
        self._process: subprocess.Popen[bytes] | None = None

    async def start(self, timeout_s: float = 10.0) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        process = self._process = subprocess.Popen(
            self._command(self.port, self.workdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {process.returncode}")
            try:
                if await self._ready():
                    return
            except Exception:
                if asyncio.get_running_loop().time() > deadline:
                    raise
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout_s} s")
            await asyncio.sleep(0.05)

    async def stop(self, timeout_s: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while process.poll() is None:
            if asyncio.get_running_loop().time() > deadline:
                process.kill()
                process.wait()
                return
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        await self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        """The running server's process id (tests freeze it with SIGSTOP)."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None


def binary(name: str, fallback: str) -> str:
    return shutil.which(name) or fallback


class ServerTarget:
    """A conformance target whose outage is its private server stopped and started again."""

    server: PrivateServer

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    async def close(self) -> None:
        await self.server.close()
