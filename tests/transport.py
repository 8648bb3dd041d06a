"""The transport of a client connection for an edge driven in-process (no socket): tests and the fuzz harness
(tests/fuzz/fuzz_edge.py, which imports it standalone: nothing here but the standard library)."""

from __future__ import annotations


class RecordingTransport:
    """Keeps what the protocol writes and whether it closed; the client reads everything (an expired connection is
    closed, not aborted). `peer`: the client's address."""

    def __init__(self, peer: str = "198.51.100.7") -> None:
        self.written = bytearray()
        self.closed = False
        self.peer = peer

    def write(self, data: bytes) -> None:
        self.written += data

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.written += chunk

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:  # the edge lingers after an error answer; for the peer the stream has ended
        self.closed = True

    def get_extra_info(self, name: str) -> object:
        return (self.peer, 40000) if name == "peername" else None

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...
