"""Shared fixtures: a real tracker started through the CLI as a subprocess, on free ports, with its own data dir.

End-to-end tests talk to it over real sockets and read its log files back with the project's own reader.
Every test is classified `unit` or `e2e` here (see `pytest_collection_modifyitems`), and unit tests are kept honest.
"""

from __future__ import annotations

import os

# The suite tests the pure-Python sources of the request path (set before trackpoint is first imported, and
# inherited by every tracker a test starts); scripts/test repeats the request path's end-to-end tests on the
# mypyc-compiled build with TRACKPOINT_PURE_PYTHON=0.
os.environ.setdefault("TRACKPOINT_PURE_PYTHON", "1")

import contextlib
import http.client
import itertools
import logging
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec
import pytest
import yaml
from mmdb_writer import MMDBWriter
from netaddr import IPSet  # type: ignore[import-untyped]  # mmdb-writer takes its networks as IPSets

from trackpoint.collectors.log.reader import ReadStats, read_events
from trackpoint.config import LoadedConfig, load
from trackpoint.event import Context, Event, Meta, derived_id
from trackpoint.plugins import registry
from trackpoint.testing import until as until  # noqa: PLC0414  (re-exported: the one plugin tests use)

if TYPE_CHECKING:
    from trackpoint.edge.runtime import Edge

CHROME_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)


def load_config(path: str | Path | None = None) -> LoadedConfig:
    """A configuration loaded with this process's plugins, as `trackpoint run` loads it (the loader takes the
    registry explicitly): the file at `path`, else the embedded default."""
    return load(path, registry=registry())


def edge_in_process(data_dir: Path, **limits: int) -> Edge:
    """An edge of the embedded default configuration, driven in-process (no worker, no socket), writing under
    `data_dir`, with `limits` replacing those of `server.limits`."""
    from trackpoint.edge.runtime import Edge

    loaded = load_config()
    config = loaded.config
    server = msgspec.structs.replace(config.server, limits=msgspec.structs.replace(config.server.limits, **limits))
    return Edge(msgspec.structs.replace(config, data_dir=str(data_dir), server=server), loaded.version, 0, registry())


def make_event(i: int, event_type: str = "impression") -> Event:
    """A complete event with a deterministic id, awkward text (quotes, a newline, non-ASCII) and a money metric."""
    return Event(
        id=derived_id(event_type, [f"imp-{i}"]),
        type=event_type,
        ts=1_700_000_000_000 + i,
        dims={"imp": f"imp-{i}", "cid": "c1", "note": 'é"quoted"\n'},
        metrics={"price": i * 1000},
        ctx=Context(ip="192.0.2.0", ua="Agent/1"),
        meta=Meta(worker=0, config="abc123"),
    )


def assert_limited_per_kind(records: Sequence[logging.LogRecord], interval_s: float) -> None:
    """Each kind of line (its text without numbers or a count of suppressed lines) was written at most once per
    interval_s, and the lines suppressed in between were counted on a later one."""
    times: dict[str, list[float]] = {}
    for record in records:
        text = re.sub(r" \(\d+ similar suppressed\)$", "", record.getMessage())
        times.setdefault(re.sub(r"\d+", "#", text), []).append(record.created)
    for kind, written in times.items():
        gaps = [later - earlier for earlier, later in itertools.pairwise(written)]
        assert all(gap > interval_s * 0.9 for gap in gaps), f"{kind!r} written {len(written)} times, gaps {gaps}"
    assert any("similar suppressed)" in record.getMessage() for record in records), "no count of suppressed lines"


def write_mmdb(
    path: Path,
    networks: dict[str, Any],
    database_type: str = "test-geo",
    ip_version: int = 6,
    build_epoch: int | None = None,
) -> Path:
    """Builds a small MaxMind-format database (mmdb-writer) mapping each network (`203.0.113.0/24`) to its record,
    and moves it into place at once, as an updater should (a reader never sees half a file). `build_epoch` replaces
    the build time (now) in its metadata."""
    writer = MMDBWriter(
        ip_version=ip_version,
        ipv4_compatible=ip_version == 6,
        database_type=database_type,
        description={"en": f"{database_type} built by the tests"},
    )
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    if build_epoch is not None:
        build_meta = writer._build_meta
        writer._build_meta = lambda: {**build_meta(), "build_epoch": build_epoch}  # type: ignore[method-assign]
    partial = path.with_name(path.name + ".partial")
    writer.to_db_file(str(partial))
    partial.replace(path)
    return path


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports handed to test servers come from below the kernel's ephemeral range: a port from that range (what binding
# port 0 gives) can be taken by an outgoing connection, a test client's or a worker's, between this check and the
# server's bind, which failed a run now and then with "Address already in use".
PORTS_BELOW = _ephemeral_low()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing holds now, outside the ephemeral range where possible."""
    if PORTS_BELOW > 11_000:
        for _ in range(200):
            port = random.randrange(10_000, PORTS_BELOW)
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


class Tracker:
    """A running `trackpoint run` process and ways to talk to it."""

    def __init__(self, tmp: Path, config: dict[str, Any], workers: int = 1) -> None:
        self.data_dir = tmp / "data"
        self.port = free_port()
        self.admin_port = free_port()
        document = {"data_dir": str(self.data_dir), **config}
        document.setdefault("server", {})
        document["server"] = {**document["server"], "host": "127.0.0.1"}
        self.config_path = tmp / "trackpoint.yaml"
        self.config_path.write_text(yaml.safe_dump(document))
        self.workers = workers
        self.log_path = tmp / "tracker.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._signing: tuple[Any, str, bytes] | None = None  # (config, key id, secret), read on first sign()
        self.fd_limit: int | None = None  # the tracker's RLIMIT_NOFILE (soft and hard), when a test lowers it

    def start(self, ready: bool = True) -> Tracker:
        """Starts the process and, unless `ready` is False, waits until /readyz answers 200."""
        with self.log_path.open("ab") as log:
            limit = [] if self.fd_limit is None else ["prlimit", f"--nofile={self.fd_limit}:{self.fd_limit}", "--"]
            self.process = subprocess.Popen(
                [
                    *limit,
                    sys.executable,
                    "-m",
                    "trackpoint",
                    "run",
                    "--config",
                    str(self.config_path),
                    "--workers",
                    str(self.workers),
                    "--port",
                    str(self.port),
                    "--admin-port",
                    str(self.admin_port),
                ],
                stdout=log,
                stderr=log,
            )
        if ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.output()
            try:
                status, _, _ = self.admin("GET", "/readyz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"tracker not ready in {timeout_s}s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, body=body, headers={"User-Agent": CHROME_UA, **(headers or {})})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def sign(self, url: str, body: bytes | None = None) -> str:
        """The URL signed as `trackpoint sign` would with this tracker's config: its first (or sign_with) key,
        only the event type's `signed_params` covered (a win's price stays free, as an exchange substitutes it)."""
        from trackpoint.security.signing import covered_params, load_key, sign_url, signing_key_id

        if self._signing is None:
            config = load_config(self.config_path).config
            key_id = signing_key_id(config.signing)
            self._signing = (config, key_id, load_key(key_id, config.signing.keys[key_id], config.data_dir))
        config, key_id, secret = self._signing
        return sign_url(url, key_id, secret, None, covered_params(config, url), body)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path, headers=headers)

    def admin_token(self) -> str:
        """The token the tracker generated into its data_dir on first start."""
        return (self.data_dir / "keys" / "admin.token").read_text().strip()

    def admin(
        self, method: str, path: str, body: bytes | None = None, token: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One admin request, with the generated token unless `token` is given ("" sends none)."""
        if token is None:
            token = self.admin_token() if (self.data_dir / "keys" / "admin.token").exists() else ""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        connection = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=10)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def raw(self, payload: bytes, read_timeout_s: float = 3.0) -> bytes:
        """Sends bytes as they are and returns everything the server answers until it closes or goes quiet."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=read_timeout_s) as sock:
            sock.sendall(payload)
            return read_until_quiet(sock)

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of the admin /metrics page (0 when absent)."""
        _, _, body = self.admin("GET", "/metrics")
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in body.decode().splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_metric(self, name: str, labels: str, at_least: float, timeout_s: float = 5.0) -> float:
        deadline = time.monotonic() + timeout_s
        value = self.metric(name, labels)
        while value < at_least and time.monotonic() < deadline:
            time.sleep(0.1)
            value = self.metric(name, labels)
        return value

    def wait_metric_at_most(self, name: str, labels: str, at_most: float, timeout_s: float = 5.0) -> float:
        deadline = time.monotonic() + timeout_s
        value = self.metric(name, labels)
        while value > at_most and time.monotonic() < deadline:
            time.sleep(0.1)
            value = self.metric(name, labels)
        return value

    def events(self, stats: ReadStats | None = None) -> list[Event]:
        return list(read_events([self.data_dir / "logs"], stats))

    def wait_events(self, count: int, timeout_s: float = 5.0) -> list[Event]:
        deadline = time.monotonic() + timeout_s
        events = self.events()
        while len(events) < count and time.monotonic() < deadline:
            time.sleep(0.05)
            events = self.events()
        return events

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then the exit code (the tracker must drain and exit by itself)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"tracker did not stop within {timeout_s}s:\n{self.output()}") from None


class SmallDisk:
    """A small tmpfs mounted on `directory` (root only: `mounted` says whether it is, `refusal` why not). `fill` takes
    every block (a filler file) and, unless `inodes` is False, every inode (remounted at its count): each write, and
    each new file or directory, fails with ENOSPC, as on a full disk; `free` gives it room again."""

    ROOM = "size=64m,nr_inodes=65536"

    def __init__(self, directory: Path, size: str = "1m") -> None:
        self.directory = directory
        self.filler = directory / ".filler"
        directory.mkdir(parents=True, exist_ok=True)
        try:
            mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)]
            done = subprocess.run(mount, capture_output=True, check=False)
        except OSError as exc:  # no mount(8)
            self.mounted, self.refusal = False, str(exc)
        else:
            self.mounted, self.refusal = done.returncode == 0, done.stderr.decode(errors="replace").strip()

    def fill(self, inodes: bool = True) -> None:
        usage = os.statvfs(self.directory)
        with self.filler.open("ab") as filler:
            filler.write(b"\0" * (usage.f_bavail * usage.f_frsize))
        if inodes:
            usage = os.statvfs(self.directory)
            self._remount(f"nr_inodes={usage.f_files - usage.f_ffree}")
        assert os.statvfs(self.directory).f_bavail == 0

    def free(self) -> None:
        self._remount(self.ROOM)
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "--lazy", str(self.directory)], check=True)

    def _remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.directory)], check=True, capture_output=True)


@pytest.fixture
def small_disk() -> Iterator[Callable[..., SmallDisk]]:
    """Mounts SmallDisks (`small_disk(directory, size="1m")`), skipping the test where that is not allowed; each is
    unmounted at the end, after the fixtures that use it (a tracker on it) have ended."""
    mounted: list[SmallDisk] = []

    def mount(directory: Path, size: str = "1m") -> SmallDisk:
        disk = SmallDisk(directory, size)
        if not disk.mounted:
            pytest.skip(f"cannot mount a tmpfs (root only): {disk.refusal}")
        mounted.append(disk)
        return disk

    yield mount
    for disk in reversed(mounted):
        disk.close()


def read_until_quiet(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def tracker_factory(tmp_path: Path) -> Iterator[Any]:
    """Starts trackers with a given config; every one still running at the end is stopped and must exit 0."""
    started: list[Tracker] = []

    def start(config: dict[str, Any] | None = None, workers: int = 1, name: str = "t", ready: bool = True) -> Tracker:
        directory = tmp_path / f"{name}{len(started)}"
        directory.mkdir()
        tracker = Tracker(directory, config or {}, workers)
        started.append(tracker)
        return tracker.start(ready)

    yield start
    for tracker in started:
        if tracker.process is not None and tracker.process.poll() is None:
            code = tracker.stop()
            assert code == 0, tracker.output()


@pytest.fixture
def tracker(tracker_factory: Any) -> Tracker:
    """A tracker on the embedded default event types, one worker."""
    result: Tracker = tracker_factory()
    return result


# --- a real browser ------------------------------------------------------------------------------------------------


class StaticSite:
    """An origin of its own for a real browser's tests (a publisher's page, a shop, an ad server): `files` maps a path
    to HTML, or to (content type, body); tests may fill it after the site started."""

    def __init__(self, files: dict[str, str | tuple[str, bytes]] | None = None) -> None:
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.files: dict[str, str | tuple[str, bytes]] = {} if files is None else files
        served = self.files

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = served.get(urlsplit(self.path).path)
                if isinstance(found, str):
                    content_type, body = "text/html; charset=utf-8", found.encode()
                else:
                    content_type, body = found or ("text/plain", b"not found")
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# Debian's chromium (installed by scripts/services), driven by Playwright for Python: no browser download.
CHROMIUM = os.environ.get("TRACKPOINT_CHROMIUM", "/usr/bin/chromium")
# The flags a root, headless, offline machine needs: without the background-networking ones chromium keeps trying
# hosts this network refuses.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless chromium per module (a Playwright `Browser`); each test opens its own context. Not one per
    session: while Playwright's sync API is open, the main thread counts as running an event loop, so every later
    module's asyncio.run() would refuse to start."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no chromium at {CHROMIUM}: scripts/services installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=list(CHROMIUM_ARGS))
        try:
            yield launched
        finally:
            launched.close()


os.environ.setdefault("PYTHONUNBUFFERED", "1")
# Every CLI command takes its file from TRACKPOINT_CONFIG when --config is absent: the suite's default-config runs
# (the generated reference, the default endpoints) must not pick up a developer's own.
os.environ.pop("TRACKPOINT_CONFIG", None)


# --- unit or end to end -------------------------------------------------------------------------------------------

# Fixtures that start a tracker, a service or a server: a test using one (directly or through another fixture) is
# end to end. A new such fixture belongs here; if it is forgotten, the guard below fails its tests as unit tests.
E2E_FIXTURES = frozenset({
    "tracker",
    "tracker_factory",
    "tracker_on_small_disk",  # test_crash: a tracker whose log disk fills up
    "tracker_on_small_data_dir",  # test_banker_e2e: a tracker whose whole data_dir fills up
    "small_disk",  # mounts a file system
    "private_redis",  # test_banker_e2e: a Redis server of its own, stopped and restarted
    "redis_target",  # test_queues_e2e
    "redis_cluster",  # test_redis_cluster_e2e: three redis-server primaries joined in a Redis Cluster
    "brokers",  # test_collector_kafka: librdkafka's mock cluster
    "s3_server",  # test_shipping: the object stores, moto's S3 and Azurite
    "azurite",
    "rendered",  # test_deploy: the Kubernetes overlays, rendered by `kubectl kustomize`
    "browser",  # a headless chromium (Playwright)
})  # fmt: skip

# Where the suite's services listen (Redis, NATS, PostgreSQL, RabbitMQ, Azurite): a unit test never connects there.
SERVICE_PORTS = frozenset({6379, 4222, 5432, 5672, 10000, 10001, 10002})


def pytest_collection_modifyitems(items: Sequence[pytest.Item]) -> None:
    """Marks every test not marked by hand: `e2e` when it uses an e2e fixture, `unit` otherwise."""
    for item in items:
        if item.get_closest_marker("unit") or item.get_closest_marker("e2e"):
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        item.add_marker(pytest.mark.e2e if fixtures & E2E_FIXTURES else pytest.mark.unit)


class NotAUnitTest(AssertionError):
    """Raised when a test classified `unit` reaches out of its process."""


def _refuse(what: str) -> NotAUnitTest:
    return NotAUnitTest(
        f"a unit test must stay in its process, and this one {what}: mark it `@pytest.mark.e2e` (or its module "
        "`pytestmark = pytest.mark.e2e`), or add the fixture that does this to E2E_FIXTURES in tests/conftest.py"
    )


@contextlib.contextmanager
def _in_process_only(item: pytest.Item) -> Iterator[None]:
    """For a unit test, starting a process or connecting to a service or another host raises `NotAUnitTest`."""
    if item.get_closest_marker("unit") is None:
        yield
        return
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex

    def check(address: Any) -> None:
        if isinstance(address, tuple) and len(address) >= 2:
            host, port = str(address[0]), address[1]
            if port in SERVICE_PORTS or host not in {"127.0.0.1", "::1", "localhost"}:
                raise _refuse(f"connects to {host}:{port}")

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return original_connect_ex(self, address)

    def popen(self: subprocess.Popen[Any], args: Any, *rest: Any, **options: Any) -> None:
        raise _refuse(f"starts a process ({args!r})")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        patch.setattr(socket.socket, "connect_ex", connect_ex)
        patch.setattr(subprocess.Popen, "__init__", popen)
        yield


# Around setup too: a module- or session-scoped fixture is set up in the setup of the first test that needs it.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _in_process_only(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _in_process_only(item):
        return (yield)
