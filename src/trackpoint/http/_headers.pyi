"""The edge's headers, in C (_headers.c): the compiled build's HeaderNames.canonical and header step (Head)."""

from collections.abc import Callable

def canonical(name: bytes, kept: tuple[bytes, ...]) -> bytes: ...

class Head:
    """A connection's header step: called with each header's name and value, as HttpConnection.on_header."""

    headers: dict[bytes, bytes]
    count: int
    size: int
    trailers: bool

    def __init__(
        self,
        kept: tuple[bytes, ...],
        kinds: tuple[int, ...],
        max_count: int,
        max_bytes: int,
        on_framing: Callable[[bytes, bytes], None],
        reject: Callable[[int, str], BaseException],
    ) -> None: ...
    def __call__(self, name: bytes, value: bytes, /) -> None: ...
    def reset(self) -> dict[bytes, bytes]: ...
