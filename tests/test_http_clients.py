"""What real clients send at the HTTP level (issue 15): compressed bodies, HEAD probes, proxies with ports and RFC 7239
`Forwarded`, raw UTF-8 headers, multipart beacons, a byte-order mark, 204s, absolute-form targets and `Allow`.

Each test reproduces the report as the issue describes it, against a tracker on the default event types.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import time
import zlib
from pathlib import Path
from typing import Any

from conftest import Tracker, read_until_quiet

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _spent(tracker: Tracker, campaign: str, at_least: int, timeout_s: float = 10.0) -> int:
    """The campaign's spend once it reaches `at_least` (or the deadline passes): the banker debits asynchronously."""
    deadline = time.monotonic() + timeout_s
    while True:
        spent = int(json.loads(tracker.admin("GET", f"/banker/campaigns/{campaign}")[2])["spent_micros"])
        if spent >= at_least or time.monotonic() > deadline:
            return spent
        time.sleep(0.05)


def _reason(headers: dict[str, str]) -> str:
    return headers.get("x-reject-reason", "")


# --- (1) Content-Encoding ------------------------------------------------------------------------------------------


def test_gzip_and_deflate_bodies_are_inflated_before_parsing(tracker: Tracker) -> None:
    bodies = [
        ("gzip", FORM, gzip.compress(b"order_id=gz-1&value=12.5")),
        ("deflate", JSON, zlib.compress(b'{"order_id": "zl-1", "value": 3}')),  # the zlib format, as RFC 9110 says
        ("deflate", JSON, _raw_deflate(b'{"order_id": "raw-1", "value": 4}')),  # raw deflate, as some clients send
    ]
    for encoding, content_type, body in bodies:
        status, _, answer = tracker.request("POST", "/conv", body, {**content_type, "Content-Encoding": encoding})
        assert status == 200, (encoding, answer)
    events = {e.dims["order_id"]: e for e in tracker.wait_events(3)}
    assert set(events) == {"gz-1", "zl-1", "raw-1"}
    assert events["gz-1"].metrics["value"] == 12_500_000
    # The id is derived from the order id: a retried compressed conversion is the same event.
    status, _, answer = tracker.request(
        "POST", "/conv", gzip.compress(b"order_id=gz-1&value=12.5"), {**FORM, "Content-Encoding": "gzip"}
    )
    assert json.loads(answer)["id"] == events["gz-1"].id


def test_unknown_or_broken_encodings_are_refused_with_a_reason(tracker: Tracker) -> None:
    status, headers, _ = tracker.request("POST", "/conv", b"x", {**FORM, "Content-Encoding": "br"})
    assert (status, _reason(headers)) == (415, "unsupported_content_encoding")
    status, headers, _ = tracker.request("POST", "/conv", b"x", {**FORM, "Content-Encoding": "gzip, deflate"})
    assert (status, _reason(headers)) == (415, "unsupported_content_encoding")
    cut_short = gzip.compress(b"order_id=cut&value=1")[:-6]
    status, headers, _ = tracker.request("POST", "/conv", cut_short, {**FORM, "Content-Encoding": "gzip"})
    assert (status, _reason(headers)) == (400, "content_encoding_invalid")
    status, headers, _ = tracker.request("POST", "/conv", b"not gzip at all", {**FORM, "Content-Encoding": "gzip"})
    assert (status, _reason(headers)) == (400, "content_encoding_invalid")
    assert tracker.wait_metric("trackpoint_rejected_total", 'reason="unsupported_content_encoding"', 2) == 2


def test_a_50_mb_gzip_bomb_is_answered_413_while_inflating(tracker_factory: Any) -> None:
    bomb = gzip.compress(b"\0" * (50 << 20), 9)
    assert len(bomb) < 65536  # within the raw body limit: only inflating can tell
    tracker: Tracker = tracker_factory()
    (worker,) = tracker.worker_pids()
    assert tracker.request("POST", "/conv", gzip.compress(b"order_id=warm"), {**FORM, "Content-Encoding": "gzip"})[0]
    before = _rss_kib(worker)
    for _ in range(5):
        status, headers, _ = tracker.request("POST", "/conv", bomb, {**FORM, "Content-Encoding": "gzip"})
        assert (status, _reason(headers)) == (413, "inflation_ratio_exceeded")
    assert _rss_kib(worker) - before < 8 * 1024  # never inflated into memory (the cap is 1 MiB)
    # Without the ratio cap, the inflated-bytes cap answers.
    lenient: Tracker = tracker_factory({"server": {"limits": {"max_inflation_ratio": 100_000}}})
    status, headers, _ = lenient.request("POST", "/conv", bomb, {**FORM, "Content-Encoding": "gzip"})
    assert (status, _reason(headers)) == (413, "inflated_too_large")


# --- (3) HEAD ------------------------------------------------------------------------------------------------------


def test_head_answers_what_get_would_and_records_nothing(tracker: Tracker) -> None:
    for campaign in ("c-head", "c-get"):
        budget = json.dumps({"total_budget_micros": 1_000_000}).encode()
        assert tracker.admin("PUT", f"/banker/campaigns/{campaign}", budget)[0] == 200
    win = tracker.sign("/win?imp=w-head&cid=c-head&price=2")
    head_status, head_headers, head_body = tracker.request("HEAD", win)
    assert (head_status, head_body) == (204, b"") and "content-length" not in head_headers
    click = "/c?imp=k-head&url=https%3A%2F%2Fexample.com%2Flanding"
    head_status, head_headers, _ = tracker.request("HEAD", click)
    get_status, get_headers, _ = tracker.request("GET", click.replace("k-head", "k-get"))
    assert head_status == get_status == 302
    assert head_headers["location"] == "https://example.com/landing"  # no click id was issued for a probe
    assert get_headers["location"].startswith("https://example.com/landing?tp_click=")
    assert tracker.request("HEAD", "/i")[1].get("x-reject-reason") == "missing_field"  # GET's 400, too
    # Sentinels: a win for the other campaign and the GET click; once both are recorded, the probes would be too.
    assert tracker.request("GET", tracker.sign("/win?imp=w-get&cid=c-get&price=2"))[0] == 204
    events = tracker.wait_events(2)
    assert sorted(e.dims["imp"] for e in events) == ["k-get", "w-get"]
    assert _spent(tracker, "c-get", at_least=1) == 2000  # CPM 2: 2000 micros
    assert json.loads(tracker.admin("GET", "/banker/campaigns/c-head")[2])["spent_micros"] == 0
    assert tracker.wait_metric("trackpoint_head_requests_total", 'type="click"', 1) == 1
    assert tracker.metric("trackpoint_head_requests_total", 'type="win"') == 1
    assert tracker.metric("trackpoint_head_requests_total", 'type="impression"') == 1


# --- (4) proxies ---------------------------------------------------------------------------------------------------


def test_forwarded_addresses_with_ports(tracker_factory: Any) -> None:
    """X-Forwarded-For (the default `client_ip_header`), entries with ports; a `Forwarded` header is the client's own,
    passed on by a proxy that only appends to X-Forwarded-For: believing it would let a client choose its address."""
    tracker: Tracker = tracker_factory({"server": {"trusted_proxies": ["127.0.0.0/8"]}})
    cases = {
        "p1": {"X-Forwarded-For": "203.0.113.77:5555"},
        "p2": {"X-Forwarded-For": "[2001:db8::5]:443, 127.0.0.9"},
        "p3": {"Forwarded": "for=81.2.69.5", "X-Forwarded-For": "203.0.113.1"},
        "p4": {"Forwarded": "for=81.2.69.5"},  # no X-Forwarded-For: the proxy's own address
    }
    for imp, headers in cases.items():
        assert tracker.get(f"/i?imp={imp}", headers=headers)[0] == 200
    # Proxies that each add a line of their own (HAProxy): the lines are one list, in order (RFC 9110 §5.3).
    lines = b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 127.0.0.5\r\n"
    assert tracker.raw(b"GET /i?imp=p5 HTTP/1.1\r\nHost: t\r\n" + lines + b"Connection: close\r\n\r\n").startswith(
        b"HTTP/1.1 200"
    )
    ips = {e.dims["imp"]: e.ctx.ip for e in tracker.wait_events(len(cases) + 1)}
    assert ips == {  # as anonymize_ip stores them: /24 and /48
        "p1": "203.0.113.0",
        "p2": "2001:db8::",
        "p3": "203.0.113.0",
        "p4": "127.0.0.0",
        "p5": "203.0.113.0",
    }


def test_forwarded_rfc_7239_when_configured(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory(
        {"server": {"trusted_proxies": ["127.0.0.0/8"], "client_ip_header": "forwarded"}}
    )
    cases = {
        "p3": {"Forwarded": 'for="[2001:db8:cafe::17]:4711";proto=https, for=127.0.0.9'},
        "p4": {"Forwarded": "for=198.51.100.9:80;by=127.0.0.1"},
        "p5": {"Forwarded": "For=192.0.2.60", "X-Forwarded-For": "203.0.113.1"},  # only Forwarded is read
        "p6": {"Forwarded": "for=_hidden"},  # obfuscated: the proxy's own address
        "p7": {"Forwarded": "for=unknown, for=127.0.0.2"},
        "p8": {"X-Forwarded-For": "203.0.113.1"},  # the client's own: the proxy's address
    }
    for imp, headers in cases.items():
        assert tracker.get(f"/i?imp={imp}", headers=headers)[0] == 200
    ips = {e.dims["imp"]: e.ctx.ip for e in tracker.wait_events(len(cases))}
    assert ips == {
        "p3": "2001:db8:cafe::",
        "p4": "198.51.100.0",
        "p5": "192.0.2.0",
        "p6": "127.0.0.0",
        "p7": "127.0.0.0",
        "p8": "127.0.0.0",
    }


# --- (5) UTF-8 headers ---------------------------------------------------------------------------------------------


def test_raw_utf8_in_headers_is_stored_as_utf8(tracker: Tracker) -> None:
    request = (
        "GET /i?imp=u1 HTTP/1.1\r\nHost: t\r\nReferer: https://x/über\r\nUser-Agent: Tëst/1.0\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    assert tracker.raw(request).startswith(b"HTTP/1.1 200")
    latin1 = b"GET /i?imp=u2 HTTP/1.1\r\nHost: t\r\nReferer: https://x/\xfcber\r\nConnection: close\r\n\r\n"
    assert tracker.raw(latin1).startswith(b"HTTP/1.1 200")
    events = {e.dims["imp"]: e for e in tracker.wait_events(2)}
    assert events["u1"].ctx.referer == "https://x/über"
    assert events["u2"].ctx.referer == "https://x/\ufffdber"  # not UTF-8: a replacement character, never mojibake


def test_raw_utf8_in_the_target_is_read_as_a_browser_would_have_encoded_it(tracker: Tracker) -> None:
    """curl and some servers send a target's UTF-8 unencoded; llhttp refuses such bytes, so the edge percent-encodes
    them first. Bytes that are not UTF-8 stay wrong: on a pixel the optional field is dropped, the event kept."""
    raw = b"GET /i?imp=t1&cid=\xc3\xbcber HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    assert tracker.raw(raw).startswith(b"HTTP/1.1 200")
    latin1 = b"GET /i?imp=t2&cid=\xfcber HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    assert tracker.raw(latin1).startswith(b"HTTP/1.1 200")
    # A request line split over two reads: both halves are encoded.
    with socket.create_connection(("127.0.0.1", tracker.port), timeout=3) as sock:
        sock.sendall(b"GET /i?imp=t3&cid=\xc3")
        time.sleep(0.05)  # not a synchronisation: two reads are what is tested (either way the answer is checked)
        sock.sendall(b"\xbc HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert read_until_quiet(sock).startswith(b"HTTP/1.1 200")
    events = {e.dims["imp"]: e for e in tracker.wait_events(3)}
    assert events["t1"].dims["cid"] == "über"
    assert "cid" not in events["t2"].dims and events["t2"].dims["invalid"] == "cid:invalid_encoding"
    assert events["t3"].dims["cid"] == "ü"


def test_a_large_read_is_scanned_for_raw_utf8_in_its_request_line_only(tracker: Tracker) -> None:
    """A read longer than the request line's cap (here a 40 KB form body, fed in parts under the caps) has only its
    start scanned for bytes to encode: its request line's UTF-8 is still encoded, and the body's UTF-8 past the
    scanned part reaches the form as UTF-8, never percent-encoded."""
    body = ("pad=" + "x" * 40_000 + "&order_id=big-1&cid=gr\u00fc\u00dfe").encode()
    head = "POST /conv?cur=\u20ac HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    request = head.encode() + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
    assert tracker.raw(request).startswith(b"HTTP/1.1 200")
    # Pipelined in one read: a raw UTF-8 target past the first request's line is refused, as llhttp refuses it.
    pipelined = b"GET /i?imp=big-2 HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"y" * 9000 + b"\r\n\r\n"
    answer = tracker.raw(pipelined + b"GET /i?imp=big-3&cid=\xc3\xbc HTTP/1.1\r\nHost: t\r\n\r\n")
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"200", b"400"], answer
    events = {e.dims.get("order_id") or e.dims["imp"]: e for e in tracker.wait_events(2)}
    assert events["big-1"].dims["cid"] == "gr\u00fc\u00dfe"
    assert events["big-1"].dims["cur"] == "\u20ac"  # one character (three bytes of UTF-8): within its cap of 3
    assert "big-2" in events


def test_an_ascii_read_leaves_the_target_open_only_until_its_line_ends(tracker: Tracker) -> None:
    """An all-ASCII read is not scanned for the line's end unless the request goes on in another read: then a
    target cut before its end is still encoded in the next read, and a header after a finished request line is
    not (raw UTF-8 in a header is stored as UTF-8, never percent-encoded)."""
    with socket.create_connection(("127.0.0.1", tracker.port), timeout=3) as sock:
        sock.sendall(b"GET /i?imp=s1&cid=ab")  # ASCII, the target not finished
        time.sleep(0.05)  # not a synchronisation: two reads are what is tested (either way the answer is checked)
        sock.sendall(b"\xc3\xbc HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert read_until_quiet(sock).startswith(b"HTTP/1.1 200")
    with socket.create_connection(("127.0.0.1", tracker.port), timeout=3) as sock:
        sock.sendall(b"GET /i?imp=s2 HTTP/1.1\r\nHost: t\r\n")  # ASCII, the request line finished
        time.sleep(0.05)
        sock.sendall("Referer: https://x/über\r\nConnection: close\r\n\r\n".encode())
        assert read_until_quiet(sock).startswith(b"HTTP/1.1 200")
    events = {e.dims["imp"]: e for e in tracker.wait_events(2)}
    assert events["s1"].dims["cid"] == "abü"
    assert events["s2"].ctx.referer == "https://x/über"


# --- (7) multipart, (9) BOM ----------------------------------------------------------------------------------------


def test_multipart_form_data_beacons_are_read_like_a_form(tracker: Tracker) -> None:
    boundary = "----WebKitFormBoundaryx7Yc"
    parts = [
        ("order_id", "mp-1"),
        ("value", "7.25"),
    ]
    body = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"\r\n\r\n{v}\r\n' for n, v in parts)
    body += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="cid"; filename="secret.txt"\r\n'
        f"Content-Type: text/plain\r\n\r\nfile content\r\n--{boundary}--\r\n"
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, _, answer = tracker.request("POST", "/conv", body.encode(), headers)
    assert status == 200, answer
    status, reply, _ = tracker.request("POST", "/conv", f"--{boundary}\r\nno head".encode(), headers)
    assert (status, _reason(reply)) == (400, "invalid_multipart")
    (event,) = tracker.wait_events(1)
    assert event.dims["order_id"] == "mp-1" and event.metrics["value"] == 7_250_000
    assert "cid" not in event.dims  # a file part is never stored


def test_a_utf8_bom_before_json_or_a_form_is_skipped(tracker: Tracker) -> None:
    bom = b"\xef\xbb\xbf"
    assert tracker.request("POST", "/conv", bom + b'{"order_id": "bom-1"}', JSON)[0] == 200
    assert tracker.request("POST", "/conv", bom + b"order_id=bom-2", FORM)[0] == 200
    gz = gzip.compress(bom + b'{"order_id": "bom-3"}')
    assert tracker.request("POST", "/conv", gz, {**JSON, "Content-Encoding": "gzip"})[0] == 200
    assert sorted(e.dims["order_id"] for e in tracker.wait_events(3)) == ["bom-1", "bom-2", "bom-3"]


# --- (10) conformance ----------------------------------------------------------------------------------------------


def test_204_has_no_content_length_and_absolute_form_targets_are_routed(tracker: Tracker) -> None:
    answer = tracker.raw(
        ("GET " + tracker.sign("/win?imp=n1&price=1") + " HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").encode()
    )
    assert answer.startswith(b"HTTP/1.1 204 No Content\r\n") and b"content-length" not in answer.lower()
    with socket.create_connection(("127.0.0.1", tracker.port), timeout=3) as sock:
        sock.sendall(b"GET http://tracker.example/i?imp=abs1 HTTP/1.1\r\nHost: tracker.example\r\n\r\n")
        sock.sendall(b"GET https://tracker.example/nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answers = read_until_quiet(sock)
    assert answers.startswith(b"HTTP/1.1 200 OK\r\n") and b"HTTP/1.1 404 Not Found\r\n" in answers
    assert sorted(e.dims["imp"] for e in tracker.wait_events(2)) == ["abs1", "n1"]


def test_405_allow_lists_the_methods_of_the_route(tracker: Tracker) -> None:
    status, headers, _ = tracker.request("POST", "/i?imp=x", b"", FORM)
    assert (status, headers["allow"]) == (405, "GET, HEAD")
    status, headers, _ = tracker.request("PUT", "/conv", b"", FORM)
    assert (status, headers["allow"]) == (405, "GET, HEAD, POST")


# --- one HTTP/1.1 protocol for both ports ---------------------------------------------------------------------------


def test_both_ports_answer_a_limit_from_the_same_code(tracker: Tracker) -> None:
    """http/connection.py is the edge's and the admin port's: the same 413, 431 and 100 Continue on either."""
    requests = {
        "413": b"POST /conv HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n\r\n",
        "431": b"GET /i HTTP/1.1\r\nHost: t\r\n" + b"X-Pad: " + b"a" * 20000 + b"\r\n\r\n",
        "100": b"POST /conv HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    }
    for port in (tracker.port, tracker.admin_port):
        answers = {}
        for name, request in requests.items():
            with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
                sock.sendall(request)
                answers[name] = sock.recv(65536)
        assert answers["413"].startswith(b"HTTP/1.1 413 Content Too Large\r\nServer: trackpoint\r\n"), port
        assert b"X-Reject-Reason: body_too_large\r\n" in answers["413"] and answers["413"].endswith(
            b'{"error":"body_too_large"}'
        )
        assert b"X-Reject-Reason: headers_too_large\r\n" in answers["431"], port
        assert answers["100"] == b"HTTP/1.1 100 Continue\r\n\r\n", port
