"""Property test of the edge's request handling: mutated and random bytes fed to the real protocol object only ever
reach the tracker's own rejection paths (a 4xx with a reason), never an internal error.
"""

from __future__ import annotations

import asyncio
import tempfile

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import load_config
from trackpoint.edge.pipeline import EdgeProtocol
from trackpoint.edge.runtime import Edge
from trackpoint.plugins import registry
from transport import RecordingTransport

VALID = [
    b"GET /i?imp=a&cid=b HTTP/1.1\r\nHost: t\r\nUser-Agent: Mozilla/5.0\r\n\r\n",
    b"POST /conv HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 28\r\n\r\n"
    b'{"order_id":"o","value":1.5}',
    b"POST /conv HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n7\r\nvalue=1\r\n0\r\n\r\n",
    b"GET /c?imp=a&url=https%3A%2F%2Fexample.com%2F HTTP/1.1\r\nHost: t\r\nCookie: a=b\r\n\r\n",
    b"GET /win?imp=x&price=1.5&cur=EUR HTTP/1.0\r\n\r\n",
    b"GET /v?imp=x&ev=midpoint&t=3.5 HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
]
NASTY = [b"%", b"%ff", b"%C3%A9", b"\xc3", b"\xff", b"\x00", b"\r\n", b"&imp=", b"=", b"?", b"{", b'"', b"\\u0000"]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=1, max_size=400))
    payload = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(payload)))
        action = draw(st.integers(0, 3))
        if action == 0 and at < len(payload):
            payload[at] = draw(st.integers(0, 255))
        elif action == 1:
            payload[at:at] = draw(st.sampled_from(NASTY))
        elif action == 2:
            del payload[at : at + draw(st.integers(1, 12))]
        else:
            payload[at:at] = draw(st.binary(max_size=24))
    return bytes(payload)


# One edge for every example (building one loads the user-agent parser); each example reads its counter deltas.
# Its log writes into a temporary data dir: requests are answered only once their lines are written.
LOOP = asyncio.new_event_loop()
LOADED = load_config()
DATA_DIR = tempfile.mkdtemp(prefix="trackpoint-fuzz-")
EDGE = Edge(msgspec.structs.replace(LOADED.config, data_dir=DATA_DIR), LOADED.version, 0, registry())
LOOP.run_until_complete(EDGE.start_collectors())


def _feed(chunks: list[bytes]) -> tuple[dict[str, int], RecordingTransport]:
    """Feeds one connection; returns the rejections it caused (by reason) and what it was sent."""

    async def run() -> RecordingTransport:
        protocol = EdgeProtocol(EDGE)
        transport = RecordingTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        for chunk in chunks:
            protocol.data_received(chunk)
        await asyncio.sleep(0)  # let the batched responses be written
        protocol.connection_lost(None)
        return transport

    before = dict(EDGE.stats.rejected)
    transport = LOOP.run_until_complete(run())
    after = EDGE.stats.rejected
    return {
        reason: count - before.get(reason, 0) for reason, count in after.items() if count != before.get(reason, 0)
    }, transport


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=requests(), split=st.integers(1, 64))
def test_any_input_reaches_only_rejection_paths(payload: bytes, split: int) -> None:
    chunks = [payload[i : i + split] for i in range(0, len(payload), split)]
    rejected, transport = _feed(chunks)
    assert "internal_error" not in rejected
    assert b"HTTP/1.1 5" not in transport.written
    if rejected:
        assert b"X-Reject-Reason: " in transport.written


def test_invalid_utf8_in_a_json_body_is_invalid_json() -> None:
    body = b'{"order_id":"\xa2"}'
    request = (
        b"POST /conv HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    rejected, transport = _feed([request])
    assert rejected == {"invalid_json": 1}
    assert b"X-Reject-Reason: invalid_json" in transport.written
