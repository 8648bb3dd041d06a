"""Coverage-guided fuzzing (atheris / libFuzzer) of the edge's request handling, in process with a fake transport.

Any input may only reach the tracker's own rejection paths: 2xx, 3xx or 4xx answers whose `X-Reject-Reason` is one
the source names, never a 5xx, an `internal_error` or an exception escaping the protocol object.

    .venv/bin/python tests/fuzz/fuzz_edge.py -max_total_time=60 [CORPUS_DIR ...]

tests/test_fuzz_budget.py runs it for a fixed number of executions in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any


def _instrumented() -> Any:
    """Coverage instrumentation of the tracker's modules when run as the fuzzer; plain imports under pytest."""
    if __name__ == "__main__":
        import atheris  # type: ignore[import-untyped]  # no stubs

        return atheris.instrument_imports()
    return contextlib.nullcontext()


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: the shared in-process transport
from transport import RecordingTransport  # noqa: E402

with _instrumented():
    import msgspec

    from trackpoint.config import load
    from trackpoint.config.model import Config, Limits, ServerConfig
    from trackpoint.edge import build
    from trackpoint.edge.pipeline import EdgeProtocol
    from trackpoint.edge.runtime import Edge
    from trackpoint.fields import converters
    from trackpoint.fields.reasons import BY_REASON
    from trackpoint.plugins import registry

STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")
REJECT_REASON = re.compile(rb"X-Reject-Reason: ([^\r]*)\r\n")

SEEDS = [
    b"GET /i?imp=a&cid=b HTTP/1.1\r\nHost: t\r\nUser-Agent: Mozilla/5.0\r\n\r\n",
    b"POST /conv HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 28\r\n\r\n"
    b'{"order_id":"o","value":1.5}',
    b"POST /conv HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n7\r\nvalue=1\r\n0\r\n\r\n",
    b"GET /c?imp=a&url=https%3A%2F%2Fexample.com%2F HTTP/1.1\r\nHost: t\r\nCookie: a=b\r\n\r\n",
    b"GET /win?imp=x&price=1.5&cur=EUR HTTP/1.0\r\n\r\n",
    b"GET /v?imp=x&ev=midpoint&t=3.5 HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
    b"POST /conv HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    b"GET /i?imp=s HTTP/1.1\r\n\r\n",
    b"POST /conv HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 2\r\n\r\n{}",
    b"HEAD /i?imp=h HTTP/1.1\r\nHost: t\r\n\r\nGET /i?imp=k HTTP/1.1\r\nConnection: close\r\n\r\n",
]


def known_reasons() -> frozenset[str]:
    """Every reason code the tracker can send: the table (tests/test_reasons.py keeps it true to the source)."""
    return frozenset(BY_REASON)


def _edges() -> list[Edge]:
    loaded = load(registry=registry())
    loaded = replace(
        loaded, config=msgspec.structs.replace(loaded.config, data_dir=tempfile.mkdtemp(prefix="tp-fuzz-"))
    )
    tight = Limits(max_request_line_bytes=256, max_header_bytes=1024, max_header_count=8, max_body_bytes=64)
    server = msgspec.structs.replace(loaded.config.server, limits=tight, trusted_proxies=["10.0.0.0/8"])
    tight_config: Config = msgspec.structs.replace(loaded.config, server=server)
    assert isinstance(tight_config.server, ServerConfig)
    return [Edge(config, loaded.version, slot, registry()) for slot, config in enumerate((loaded.config, tight_config))]


LOOP = asyncio.new_event_loop()
EDGES = _edges()
for _edge in EDGES:  # answers wait for their log lines: each edge's log writes into a temporary directory
    LOOP.run_until_complete(_edge.start_collectors())
KNOWN = known_reasons() - {"internal_error"}
assert {"bad_request", "invalid_field", "header_timeout"} <= KNOWN, KNOWN  # the pattern still finds the source's
assert build is not None and converters is not None  # instrumented for coverage, used through the edge


def check(written: bytes, rejected: dict[str, int]) -> None:
    assert "internal_error" not in rejected, rejected
    unknown = set(rejected) - KNOWN
    assert not unknown, f"unknown reject reasons {unknown}"
    for status in STATUS_LINE.findall(written):
        assert status[:1] in b"1234", f"status {status!r} in {written[:300]!r}"
    for reason in REJECT_REASON.findall(written):
        assert reason.decode() in KNOWN, reason


def run_one(data: bytes) -> tuple[bytes, dict[str, int]]:
    """One connection fed `data`: byte 0 picks the edge, the peer, the read size and whether the timeout fires."""
    if len(data) < 2:
        return b"", {}
    control, size = data[0], data[1]
    payload = data[2:]
    edge = EDGES[control & 1]
    split = 1 + size % 97 if size & 0x80 else len(payload) or 1

    async def feed() -> RecordingTransport:
        protocol = EdgeProtocol(edge)
        transport = RecordingTransport("10.1.2.3" if control & 2 else "198.51.100.7")
        protocol.connection_made(transport)  # type: ignore[arg-type]
        for at in range(0, len(payload), split):
            protocol.data_received(payload[at : at + split])
        if control & 4:
            protocol.expire()  # the sweep's view: whatever phase the connection is in has timed out
        await asyncio.sleep(0)  # the batched responses are written
        protocol.connection_lost(None)
        return transport

    before = dict(edge.stats.rejected)
    transport = LOOP.run_until_complete(feed())
    rejected = {
        reason: count - before.get(reason, 0)
        for reason, count in edge.stats.rejected.items()
        if count != before.get(reason, 0)
    }
    return bytes(transport.written), rejected


def fuzz_one_input(data: bytes) -> None:
    written, rejected = run_one(data)
    check(written, rejected)


def write_seeds(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for number, seed in enumerate(SEEDS):
        for control in (0, 1, 6):
            (directory / f"seed-{number}-{control}").write_bytes(bytes([control, 0]) + seed)


def main(argv: list[str]) -> None:
    import atheris

    atheris.Setup(argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
