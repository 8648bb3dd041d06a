"""The floor under trackpoint at a paced load: Python on uvloop answering every request with the 43-byte GIF and
doing nothing else (no parsing, no validation, no id, no log), as nginx's `empty_gif` is the ceiling of the load
generator. What trackpoint's latency has above this is its own work; what this has above Go's is the runtime's.

Not a tracker and not a peer (it keeps no contract): bench/peers.py measures it beside them.

    python server.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: image/gif\r\nContent-Length: 43\r\nCache-Control: no-store\r\n\r\n" + GIF
HEAD_END = b"\r\n\r\n"


class Floor(asyncio.Protocol):
    """One answer per request head (GET or HEAD, no body: the only requests it is sent), pipelined ones included."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.pending:
            data = self.pending + data
        heads = data.count(HEAD_END)
        self.pending = data[data.rfind(HEAD_END) + len(HEAD_END) :] if heads else data
        if heads and self.transport is not None:
            self.transport.write(ANSWER * heads)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Floor, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
