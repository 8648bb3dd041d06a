"""The click redirect judged by a real browser: hostile destinations go through the default click (allow_hosts
example.com and its subdomains), and headless Chromium says where it then goes. Every request the browser makes
off the tracker goes to a local proxy that records it and answers itself, so nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from conftest import Tracker

pytestmark = pytest.mark.e2e


class Proxy:
    """An HTTP proxy that goes nowhere: it records what the browser asked for (`GET http://host/path` or
    `CONNECT host:443`) and answers a page itself (a CONNECT: 502, so an https landing page fails to load)."""

    def __init__(self) -> None:
        self.asked: list[str] = []  # since the last clear()
        self.everything: list[str] = []
        asked, everything = self.asked, self.everything

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the name http.server calls
                asked.append(self.path)  # absolute-form: the whole URL the browser requests
                everything.append(self.path)
                body = b"<title>landed</title>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_CONNECT(self) -> None:
                asked.append("https://" + self.path)
                everything.append("https://" + self.path)
                self.send_error(502)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    sink = Proxy()
    yield sink
    sink.close()


# (destination, the reason it is refused): the click is recorded with `dims.redirect_rejected`, answered 400, and
# the browser goes nowhere. None: refused as a field (a control character), before any event exists.
REFUSED = [
    ("https://evil.test/", "host_not_allowed"),
    ("https:\\\\evil.test/", "backslash"),
    ("https://example.com\\@evil.test/", "backslash"),
    ("/\\evil.test", "backslash"),
    ("\\/\\/evil.test", "backslash"),
    ("//evil.test/", "scheme"),
    ("https:/evil.test", "scheme"),
    ("https:///evil.test", "scheme"),
    ("ht\ttps://evil.test/", "characters"),
    ("https://evil.test\t.example.com/", "characters"),
    ("https://example.com\r\nSet-Cookie: x=1", None),
    ("https://example.com@evil.test/", "userinfo"),
    ("https://example.com:443@evil.test/", "userinfo"),
    ("https://example.com%40evil.test/", "host"),
    ("https://example.com\uff20evil.test/", "userinfo"),  # a full-width at sign
    ("https://evil.test%2f.example.com/", "host"),
    ("https://evil%2etest/", "host"),
    ("https://evil.test\u3002/", "host"),  # an ideographic full stop: a trailing dot
    ("https://example.com./", "host"),
    ("https://example.com.evil.test/", "host_not_allowed"),
    ("https://evilexample.com/", "host_not_allowed"),
    ("https://evil.test#@example.com", "host_not_allowed"),
    ("https://ex\u0430mple.com/", "mixed_scripts"),  # a Cyrillic a
    ("javascript:alert(document.domain)", "scheme"),
    ("data:text/html,<script>alert(1)</script>", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("https://example.com:99999/", "syntax"),
    # Python's urlsplit reads the host between `[` and `]` wherever they are (`v1.example.com`, an "IPvFuture"
    # literal to it); to a browser these are no URL at all (ERR_INVALID_REDIRECT), and they were answered 302.
    ("https://evil.test[v1.example.com]/", "host"),
    ("https://evil.test:[v1.example.com]/", "syntax"),
    ("https://[v1.example.com]/", "host"),
    # A host ending in a number is an IPv4 address to a browser, whatever it looks like to Python.
    ("http://2130706433/", "host"),
    ("http://0x7f.0.0.1/", "host"),
]

# (destination, the URL the browser asks for, without the click id the tracker adds).
FOLLOWED = [
    ("http://example.com/landing?x=1", "http://example.com/landing?x=1"),
    ("HTTP://EXAMPLE.COM/X", "http://example.com/X"),
    ("http://shop.example.com:8080/p", "http://shop.example.com:8080/p"),
    ("http://shop.example.com:/p", "http://shop.example.com/p"),  # an empty port is the default one
    ("http://evil.test\u3002example\u3002com/", "http://evil.test.example.com/"),  # a subdomain: allowed
    ("http://\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com/", "http://example.com/"),  # full-width letters
    ("http://b\u00fccher.example.com/\u00e4", "http://xn--bcher-kva.example.com/%C3%A4"),
    ("http://example.com/x/..//evil.test", "http://example.com//evil.test"),  # still example.com
    ("https://example.com/secure", "https://example.com:443"),  # a CONNECT: the proxy sees the host only
]


def test_chromium_goes_only_where_the_tracker_checked(tracker: Tracker, browser: Any, proxy: Proxy) -> None:
    """Every hostile destination is refused and leaves the browser on the tracker; every accepted one takes the
    browser to the allowed host the tracker checked, and nowhere else."""
    from playwright.sync_api import Error as PlaywrightError

    context = browser.new_context(proxy={"server": proxy.url, "bypass": "127.0.0.1"})
    page = context.new_page()
    tracker_origin = f"http://127.0.0.1:{tracker.port}"
    statuses: dict[str, int] = {}  # imp -> the tracker's answer, as the browser got it

    def answered(response: Any) -> None:
        if response.url.startswith(tracker_origin):
            statuses.setdefault(response.url.partition("imp=")[2].partition("&")[0], response.status)

    page.on("response", answered)
    asked: dict[str, list[str]] = {}  # imp -> what the browser asked the proxy for after the tracker's answer
    cases = [destination for destination, _ in REFUSED] + [destination for destination, _ in FOLLOWED]
    for n, destination in enumerate(cases):
        proxy.asked.clear()
        # Raises for an https landing page (the proxy refuses the tunnel) and a redirect the browser cannot follow.
        with contextlib.suppress(PlaywrightError):
            page.goto(f"{tracker_origin}/c?imp=click-{n}&url={quote(destination, safe='')}")
        asked[f"click-{n}"] = list(proxy.asked)
    context.close()
    everywhere = {urlsplit(url).hostname or "" for url in proxy.everything}
    assert {host for host in everywhere if host != "example.com" and not host.endswith(".example.com")} == set()

    # Every click but those refused as a field is recorded (before its answer): no wait, and none missing.
    recorded = len(cases) - sum(reason is None for _, reason in REFUSED)
    events = {event.dims["imp"]: event for event in tracker.wait_events(recorded)}
    assert len(events) == recorded
    for n, (destination, reason) in enumerate(REFUSED):
        assert (statuses.get(f"click-{n}"), asked[f"click-{n}"]) == (400, []), destination
        event = events.get(f"click-{n}")
        assert (event.dims["redirect_rejected"] if event else None) == reason, destination
    for n, (destination, expected) in enumerate(FOLLOWED, start=len(REFUSED)):
        assert "redirect_rejected" not in events[f"click-{n}"].dims, destination
        went = [url for url in asked[f"click-{n}"] if not url.endswith("/favicon.ico")]  # the page's icon
        assert len(went) == 1, (destination, went)  # the browser followed the 302, to exactly one place
        host = urlsplit(went[0]).hostname or ""
        assert host == "example.com" or host.endswith(".example.com"), (destination, went)
        assert went[0].partition("tp_click=")[0].rstrip("?&") == expected, destination
