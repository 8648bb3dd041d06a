"""Shipping rotated log files to object storage, against real servers started privately on free ports: moto's S3
server and Azurite's Blob service (GCS shares the code path). Log files are written by the real LogCollector, and what
was stored is checked with each store's own SDK, not through the code under test.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
import zstandard
from azure.storage.blob import BlobServiceClient
from typer.testing import CliRunner

from conftest import Tracker, free_port, load_config, make_event
from trackpoint.cli import app
from trackpoint.collectors.base import CollectorContext
from trackpoint.collectors.log.collector import LogCollector
from trackpoint.collectors.log.config import LogCollectorConfig
from trackpoint.collectors.log.reader import read_events
from trackpoint.collectors.log.shipping import ShipError, Shipper, ShipStats, open_store
from trackpoint.collectors.log.shipping.service import ShippingService
from trackpoint.config import ConfigError
from trackpoint.event import Event

ROOT = Path(__file__).resolve().parent.parent
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="  # public dev key
)
FAST_S3 = {"config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1, "read_timeout": 5}}
boto3: Any = importlib.import_module("boto3")  # untyped
# Imported here, at collection: azure-identity's import runs `uname -p` (platform.platform()), which the unit tests
# of the storage_options check would take for the check reaching out of its process.
importlib.import_module("adlfs")
importlib.import_module("azure.identity")


def _binary(name: str, *candidates: Path) -> str:
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    assert found, f"{name} not found: run scripts/services (it installs Azurite; moto comes with the dev extras)"
    return found


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server exited: {log.read_text(errors='replace')}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}: {log.read_text(errors='replace')}")


class Server:
    """A private server process on a free port, which a test may start late, stop and start again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "server.log"
        with log.open("ab") as output:
            self.process = subprocess.Popen(self.command(), stdout=output, stderr=output)
        _wait_listening(self.port, self.process, log)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # nothing to keep; and Azurite closes on SIGTERM but its process lingers
            self.process.wait(10)


class S3(Server):
    """moto's S3 server; buckets are made and read with boto3."""

    def command(self) -> list[str]:
        binary = _binary("moto_server", Path(sys.executable).with_name("moto_server"))
        return [binary, "-H", "127.0.0.1", "-p", str(self.port)]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id="test", aws_secret_access_key="test",
            region_name="us-east-1",
        )  # fmt: skip


class Azurite(Server):
    """Azurite's Blob service (account devstoreaccount1); containers are made and read with the Azure SDK."""

    def command(self) -> list[str]:
        binary = _binary("azurite-blob", ROOT / ".venv/azurite/node_modules/.bin/azurite-blob")
        return [binary, "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location",
                str(self.directory / "data"), "--silent", "--skipApiVersionCheck"]  # fmt: skip

    @property
    def connection_string(self) -> str:
        return (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{self.port}/devstoreaccount1;"
        )


class Store:
    """A fresh bucket (or container) on a server: the URL and options the shipper gets, and an independent view."""

    scheme = ""

    def __init__(self) -> None:
        self.bucket = f"tp-{uuid.uuid4().hex[:12]}"
        self.options: dict[str, Any] = {}

    def url(self, prefix: str) -> str:
        return f"{self.scheme}://{self.bucket}/{prefix}"

    def object_keys(self) -> list[str]:
        raise NotImplementedError

    def read(self, key: str) -> bytes:
        raise NotImplementedError

    def data_keys(self, prefix: str) -> list[str]:
        return sorted(k for k in self.object_keys() if k.startswith(f"{prefix}/") and "/_manifests/" not in f"/{k}")

    def events(self, prefix: str, into: Path) -> list[Event]:
        """Every event of the shipped files, read back with the project's own reader."""
        into.mkdir()
        for key in self.data_keys(prefix):
            (into / key.rsplit("/", 1)[1]).write_bytes(self.read(key))
        return list(read_events([into]))


class S3Store(Store):
    scheme = "s3"

    def __init__(self, server: S3, create: bool = True) -> None:
        super().__init__()
        self.client = server.client()
        if create:
            self.create()
        self.options = {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": server.endpoint,
                        "region_name": "us-east-1"}, **FAST_S3}  # fmt: skip

    def create(self) -> None:
        self.client.create_bucket(Bucket=self.bucket)

    def object_keys(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def read(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body


class AzureStore(Store):
    scheme = "az"

    def __init__(self, server: Azurite) -> None:
        super().__init__()
        self.container = BlobServiceClient.from_connection_string(server.connection_string).create_container(
            self.bucket
        )
        self.options = {"connection_string": server.connection_string}

    def object_keys(self) -> list[str]:
        return [blob.name for blob in self.container.list_blobs()]

    def read(self, key: str) -> bytes:
        return self.container.download_blob(key).readall()


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    server = S3(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    server = Azurite(tmp_path_factory.mktemp("azurite"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["s3", "azure"])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "s3":
        return S3Store(request.getfixturevalue("s3_server"))
    return AzureStore(request.getfixturevalue("azurite"))


@pytest.fixture
def s3(s3_server: S3) -> S3Store:
    return S3Store(s3_server)


# --- helpers ---------------------------------------------------------------------------------------------------


def write_logs(data_dir: Path, count: int, first: int = 0, compression: str = "zstd") -> list[Event]:
    """`count` events through a real LogCollector that rotates every ~20 events, then closes (all files final)."""
    events = [make_event(i) for i in range(first, first + count)]
    options = msgspec.convert({"rotate_bytes": 4096, "fsync": "none", "compression": compression}, LogCollectorConfig)

    async def main() -> None:
        collector = LogCollector("log", options, CollectorContext(str(data_dir)))
        await collector.start()
        for start in range(0, count, 20):
            for event in events[start : start + 20]:
                collector.offer(event)
            await collector.flush()
        await collector.close(10.0)

    asyncio.run(main())
    return events


def log_config(store: Store, prefix: str = "logs", compression: str = "zstd", **ship: Any) -> LogCollectorConfig:
    settings = {"url": store.url(prefix), "storage_options": store.options, "node": "node-a",
                "retry_initial_s": 0.05, "retry_max_s": 0.2, **ship}  # fmt: skip
    return msgspec.convert({"compression": compression, "ship": settings}, LogCollectorConfig)


def key_of(name: str, prefix: str = "logs", node: str = "node-a") -> str:
    """The expected key, spelled out independently: the date is the file name's."""
    return f"{prefix}/{node}/{name[7:11]}/{name[11:13]}/{name[13:15]}/{name}"


def log_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.glob("events-*"))}


def write_config(tmp_path: Path, ship: dict[str, Any]) -> Path:
    """A tracker configuration whose log collector ships (data under tmp_path)."""
    path = tmp_path / "trackpoint.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path), "collectors": {"log": {"type": "log", "ship": ship}}}))
    return path


def manifest_lines(directory: Path) -> list[dict[str, Any]]:
    path = directory / ".shipped.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --- shipping --------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_ships_verifies_records_and_deletes(store: Store, tmp_path: Path) -> None:
    events = write_logs(tmp_path, 100)
    directory = tmp_path / "logs"
    files = log_files(directory)
    assert len(files) >= 4
    assert all(name.endswith(".jsonl.zst") for name in files)

    shipper = Shipper("log", directory, log_config(store))
    report = shipper.ship_pass()

    assert report.failed == []
    assert sorted(done.name for done in report.shipped) == sorted(files)
    assert store.data_keys("logs") == sorted(key_of(name) for name in files)
    for name, content in files.items():
        assert store.read(key_of(name)) == content
    # One manifest object per upload, beside the data under `_manifests/` (hidden from Hive-style readers).
    manifests = {k: json.loads(store.read(k)) for k in store.object_keys() if k.startswith("logs/_manifests/")}
    assert set(manifests) == {key_of(name, "logs/_manifests") + ".json" for name in files}
    for entry in manifests.values():
        assert entry["bytes"] == len(files[entry["name"]])
        assert entry["verified_by"] == "checksum"  # both stores report the MD5 of a single-shot upload
        assert entry["url"] == f"{store.scheme}://{store.bucket}/{key_of(entry['name'])}"
    local = manifest_lines(directory)
    assert sorted(entry["name"] for entry in local) == sorted(files)
    assert {entry["sha256"] for entry in local} == {entry["sha256"] for entry in manifests.values()}
    assert list(directory.glob("events-*")) == []
    assert store.events("logs", tmp_path / "back") == events
    assert shipper.stats.uploads == {"shipped": len(files), "error": 0, "mismatch": 0}
    assert shipper.stats.backlog_files == 0
    assert shipper.stats.bytes == sum(map(len, files.values()))


CRASH = """
import os, signal, sys
from pathlib import Path
import msgspec
from trackpoint.collectors.log.config import LogCollectorConfig
from trackpoint.collectors.log.shipping import shipper as shipping

def crash(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[1] == "before_record":  # uploaded, verified, manifest object written; not recorded locally
    shipping.Manifest.append = crash
else:  # recorded; the process dies before deleting the file
    Path.unlink = crash
config = msgspec.json.decode(sys.argv[2], type=LogCollectorConfig)
shipping.Shipper("log", Path(sys.argv[3]), config).ship_pass()
"""


@pytest.mark.parametrize("point", ["before_record", "before_delete"])
@pytest.mark.e2e
def test_a_crash_between_upload_and_delete_never_duplicates(store: Store, tmp_path: Path, point: str) -> None:
    events = write_logs(tmp_path, 80)
    directory = tmp_path / "logs"
    files = log_files(directory)
    first = min(files)
    config = log_config(store)
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH, point, msgspec.json.encode(config).decode(), str(directory)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert store.data_keys("logs") == [key_of(first)]
    assert (directory / first).exists()  # nothing is deleted before a verified, recorded upload

    shipper = Shipper("log", directory, config)
    report = shipper.ship_pass()

    assert report.failed == []
    assert store.data_keys("logs") == sorted(key_of(name) for name in files)  # the same key: overwritten
    assert store.read(key_of(first)) == files[first]
    uploaded_again = first in {done.name for done in report.shipped}
    assert uploaded_again == (point == "before_record")  # a recorded upload is verified: deleting is enough
    assert sorted(entry["name"] for entry in manifest_lines(directory)) == sorted(files)
    assert list(directory.glob("events-*")) == []
    assert store.events("logs", tmp_path / "back") == events


def test_a_file_being_written_or_compressed_is_never_shipped(s3: S3Store, tmp_path: Path) -> None:
    write_logs(tmp_path, 60)
    directory = tmp_path / "logs"
    closed = log_files(directory)
    live = LogCollector(
        "log",
        msgspec.convert({"rotate_bytes": 4096, "fsync": "none"}, LogCollectorConfig),
        CollectorContext(str(tmp_path), worker=5),
    )

    async def main() -> None:
        await live.start()
        live.offer(make_event(1000))
        await live.flush()
        active = [p for p in directory.glob("events-*-w05-*") if p.name.endswith(".jsonl")]
        assert len(active) == 1
        # What compress() leaves while it runs: the temporary of the next .zst.
        temporary = directory / active[0].name.replace(".jsonl", ".jsonl.zst.tmp")
        temporary.write_bytes(zstandard.ZstdCompressor().compress(active[0].read_bytes()))
        report = await asyncio.to_thread(Shipper("log", directory, log_config(s3)).ship_pass)
        assert sorted(done.name for done in report.shipped) == sorted(closed)
        assert active[0].exists()
        assert temporary.exists()
        temporary.unlink()
        await live.close(5.0)

    asyncio.run(main())
    assert s3.data_keys("logs") == sorted(key_of(name) for name in closed)


WRITE_AND_EXIT = "import sys; from pathlib import Path; from test_shipping import write_logs; "
WRITE_AND_EXIT += "write_logs(Path(sys.argv[1]), 50, compression='none')"


def test_without_compression_plain_files_ship_once_their_worker_moved_on_or_exited(s3: S3Store, tmp_path: Path) -> None:
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    subprocess.run([sys.executable, "-c", WRITE_AND_EXIT, str(tmp_path)], check=True, env=environment, timeout=60)
    directory = tmp_path / "logs"
    exited = log_files(directory)  # a dead worker's files, its last one included
    assert len(exited) >= 3
    assert all(name.endswith(".jsonl") for name in exited)
    options = msgspec.convert({"rotate_bytes": 4096, "fsync": "none", "compression": "none"}, LogCollectorConfig)
    live = LogCollector("log", options, CollectorContext(str(tmp_path), worker=7))

    async def main() -> None:
        await live.start()
        for batch in range(3):
            for i in range(20):
                live.offer(make_event(2000 + batch * 20 + i))
            await live.flush()
        mine = sorted(p.name for p in directory.glob("events-*-w07-*"))
        assert len(mine) == 3
        report = await asyncio.to_thread(Shipper("log", directory, log_config(s3, compression="none")).ship_pass)
        assert sorted(done.name for done in report.shipped) == sorted([*exited, *mine[:-1]])
        assert (directory / mine[-1]).exists()  # the live worker's current file
        await live.close(5.0)

    asyncio.run(main())
    assert all(key.endswith(".jsonl") for key in s3.data_keys("logs"))


@pytest.mark.e2e
def test_retries_until_the_store_is_up_and_deletes_nothing_before(tmp_path: Path) -> None:
    server = S3(tmp_path / "late-moto")  # not started yet
    events = write_logs(tmp_path, 60)
    directory = tmp_path / "logs"
    files = log_files(directory)
    down = S3Store(server, create=False)

    failing = Shipper("log", directory, log_config(down, retries=0))
    report = failing.ship_pass()
    assert [name for name, _ in report.failed] == [min(files)]  # the pass stops at the first file that fails
    assert failing.stats.uploads["error"] == 1
    assert failing.stats.backlog_files == len(files)
    assert log_files(directory) == files

    patient = Shipper("log", directory, log_config(down, retries=100, retry_initial_s=0.05, retry_max_s=0.1))
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(report=patient.ship_pass()))
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while patient.stats.uploads["error"] < 3:
            assert time.monotonic() < deadline, "no retries seen"
            time.sleep(0.05)
        assert log_files(directory) == files
        server.start()
        down.create()
        worker.join(60)
        assert not worker.is_alive()
        assert result["report"].failed == []
        assert down.data_keys("logs") == sorted(key_of(name) for name in files)
        assert down.events("logs", tmp_path / "back") == events
        assert list(directory.glob("events-*")) == []
    finally:
        worker.join(60)
        server.stop()


def test_kept_files_are_never_uploaded_twice(s3: S3Store, tmp_path: Path) -> None:
    write_logs(tmp_path, 60)
    directory = tmp_path / "logs"
    files = log_files(directory)
    config = log_config(s3, delete_after_upload=False)
    shipper = Shipper("log", directory, config)
    assert len(shipper.ship_pass().shipped) == len(files)
    assert log_files(directory) == files

    assert shipper.ship_pass().shipped == []
    assert Shipper("log", directory, config).ship_pass().shipped == []  # a new process reads the manifest
    assert shipper.stats.uploads["shipped"] == len(files)

    write_logs(tmp_path, 40, first=60)
    later = sorted(set(log_files(directory)) - set(files))
    assert [done.name for done in shipper.ship_pass().shipped] == later
    assert s3.data_keys("logs") == sorted(key_of(name) for name in [*files, *later])
    assert len(manifest_lines(directory)) == len(files) + len(later)


def test_a_multipart_upload_is_verified_by_reading_it_back(s3: S3Store, tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    name = "events-20260102T030405678Z-w00-p1-0001.jsonl.gz"
    content = os.urandom(101 << 20)  # s3fs sends 100 MiB and more in parts: no MD5 ETag
    (directory / name).write_bytes(content)
    report = Shipper("log", directory, log_config(s3)).ship_pass()
    assert [done.verified_by for done in report.shipped] == ["read_back"]
    assert s3.data_keys("logs") == ["logs/node-a/2026/01/02/" + name]  # the file's date, not today's
    head = s3.client.head_object(Bucket=s3.bucket, Key="logs/node-a/2026/01/02/" + name)
    assert "-" in head["ETag"]
    assert s3.read("logs/node-a/2026/01/02/" + name) == content


@pytest.mark.e2e
def test_the_service_logs_a_failure_streak_then_a_reminder_per_interval_and_its_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a line per failed pass: the streak's first, a reminder per interval counting the passes not logged, the
    recovery."""
    interval_s = 0.5
    monkeypatch.setattr("trackpoint.collectors.log.shipping.service.REPEAT_INTERVAL_S", interval_s)
    server = S3(tmp_path / "late-moto")
    write_logs(tmp_path, 40)
    files = log_files(tmp_path / "logs")
    down = S3Store(server, create=False)
    ship = {"url": down.url("logs"), "storage_options": down.options, "interval_s": 0.1, "retries": 0}
    tracker = load_config(write_config(tmp_path, ship)).config

    async def main() -> None:
        service = ShippingService(lambda: tracker)
        service.start()
        deadline = time.monotonic() + 20
        while service.metrics().stats.get("log", ShipStats()).uploads["error"] < 10:  # 10 failing passes
            assert time.monotonic() < deadline, "no failed upload seen"
            await asyncio.sleep(0.05)
        server.start()
        down.create()
        deadline = time.monotonic() + 20
        while list((tmp_path / "logs").glob("events-*")):
            assert time.monotonic() < deadline, "nothing shipped after the store came up"
            await asyncio.sleep(0.1)
        await service.stop()
        assert service.metrics().stats["log"].uploads["shipped"] == len(files)

    caplog.set_level(logging.INFO, logger="trackpoint.shipping")
    try:
        asyncio.run(main())
    finally:
        server.stop()
    records = [r for r in caplog.records if r.name == "trackpoint.shipping"]
    *failing, recovered = records
    assert [r.levelno for r in records] == [logging.ERROR] * len(failing) + [logging.INFO]
    assert "is failing" in failing[0].getMessage() and "still failing" in failing[-1].getMessage()
    assert all(later.created - earlier.created > interval_s * 0.9 for earlier, later in itertools.pairwise(failing))
    assert any("similar suppressed)" in r.getMessage() for r in failing)
    assert re.search(r"recovered after \d+ failed passes$", recovered.getMessage())


@pytest.mark.e2e
def test_stopping_is_bounded_when_the_store_hangs(tmp_path: Path) -> None:
    """A store that takes the connection and never answers: stop() returns after shutdown_timeout_s, files kept."""
    write_logs(tmp_path, 40)
    files = log_files(tmp_path / "logs")
    with socket.create_server(("127.0.0.1", 0)) as blackhole:  # the kernel accepts; nobody ever reads
        options = {"key": "test", "secret": "test", "endpoint_url": f"http://127.0.0.1:{blackhole.getsockname()[1]}",
                   "config_kwargs": {"retries": {"max_attempts": 1}, "read_timeout": 120}}  # fmt: skip
        ship = {"url": "s3://hung/logs", "storage_options": options, "shutdown_timeout_s": 1.0}
        config = load_config(write_config(tmp_path, ship)).config

        async def main() -> float:
            service = ShippingService(lambda: config)
            service.start()
            blackhole.setblocking(False)
            upload, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(blackhole), 20)
            with upload:  # the first upload is on its way, and hangs
                began = time.monotonic()
                await service.stop()
                return time.monotonic() - began

        # Ended by the 1 s bound (a loaded machine only makes it later), not by the upload's 120 s read timeout.
        assert 0.9 < asyncio.run(main()) < 60
    assert log_files(tmp_path / "logs") == files


# --- configuration and CLI -------------------------------------------------------------------------------------


def test_a_store_without_its_backend_names_the_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as without `trackpoint[gcs]`, whether or not it is here
    with pytest.raises(ShipError, match=r"pip install 'trackpoint\[gcs\]'"):
        open_store("gs://bucket/logs", {})
    path = tmp_path / "trackpoint.yaml"
    path.write_text(
        "collectors:\n  log:\n    type: log\n    ship:\n      url: gs://bucket/logs\n"
        "  archive:\n    type: log\n    dir: archive\n    ship:\n      url: ftp://host/logs\n      node: _x\n"
        "  again:\n    type: log\n    dir: again\n    ship:\n      url: gs://bucket/logs/\n"
    )
    with pytest.raises(ConfigError) as failure:
        load_config(path)
    messages = [str(issue) for issue in failure.value.issues]
    assert f"{path}:5: collectors.log.ship.url: gs:// needs gcsfs, not installed: pip install 'trackpoint[gcs]'" in (
        messages
    )
    assert any(m.startswith(f"{path}:10: collectors.archive.ship.url: not an object storage URL") for m in messages)
    assert any(m.startswith(f"{path}:11: collectors.archive.ship.node: ") for m in messages)
    assert any("collectors.again.ship.url: collector 'log' ships to the same url and node" in m for m in messages)


MISSPELT_STORAGE_OPTIONS = """\
data_dir: {data_dir}
collectors:
  log:
    type: log
    ship:
      url: s3://bucket/logs
      storage_options:
        endpoint: http://10.255.255.1:9000
        anon: "false"
        client_kwargs: {{region: eu-west-1, endpoint_url: http://10.255.255.1:9000}}
        config_kwargs: {{connect_timeout: 1, retry: {{max_attempts: 1}}}}
        s3_additional_kwargs: {{ServerSideEncription: AES256}}
        asynchronous: true
  archive:
    type: log
    dir: archive
    ship:
      url: az://container/logs
      storage_options: {{account_nme: devstoreaccount1, connection_string: x}}
  minio:
    type: log
    dir: minio
    ship:
      url: s3://other/logs
      storage_options: {{endpoint_url: "minio:9000", client_kwargs: []}}
"""


def test_storage_options_are_checked_with_the_backends_own_names_without_network(tmp_path: Path) -> None:
    """A misspelt option passed `config check` and the start: s3fs failed on it at every upload (`endpoint`,
    `client_kwargs.region`, `config_kwargs.retry`), or it was dropped without a word (`ServerSideEncription`: files
    stored unencrypted; adlfs's `account_nme`), or it meant the opposite (`anon: "false"` is true). Now each is a
    located configuration error, found from the installed backend's signatures, with no connection made (the
    addresses lead nowhere)."""
    path = tmp_path / "trackpoint.yaml"
    path.write_text(MISSPELT_STORAGE_OPTIONS.format(data_dir=tmp_path / "data"))
    checked = CliRunner().invoke(app, ["config", "check", str(path)])  # in process: connecting would fail the test
    assert checked.exit_code == 2, checked.output
    text = " ".join(checked.stderr.split())
    where = f"{path}:{{}}: collectors.{{}}.ship.storage_options.{{}}: "
    expected = [
        (8, "log", "endpoint", "unknown option of s3fs (did you mean 'endpoint_url'?"),
        (9, "log", "anon", "'false' is text, which counts as true: write true or false, without quotes"),
        (10, "log", "client_kwargs.region",
         "unknown option of botocore's create_client() (did you mean 'region_name'?"),
        (11, "log", "config_kwargs.retry", "unknown option of botocore's Config (did you mean 'retries'?"),
        (12, "log", "s3_additional_kwargs.ServerSideEncription",
         "unknown option of S3's requests (did you mean 'ServerSideEncryption'?"),
        (13, "log", "asynchronous", "set by trackpoint's shipper"),
        (19, "archive", "account_nme", "unknown option of adlfs (did you mean 'account_name'?"),
        (25, "minio", "endpoint_url", "'minio:9000' is not an http(s) URL"),
        (25, "minio", "client_kwargs", "a mapping of options"),
    ]  # fmt: skip
    for line, collector, key, message in expected:
        assert where.format(line, collector, key) + message in text, (line, key, checked.stderr)
    assert "9 error(s)" in text, checked.stderr
    started = CliRunner().invoke(app, ["run", "--config", str(path)])  # refused before any worker starts
    assert started.exit_code == 2 and where.format(8, "log", "endpoint") in " ".join(started.stderr.split())


def test_the_storage_options_each_backend_documents_pass_the_check() -> None:
    """The options the shipping tests give moto and Azurite, and those a backend hands further (s3fs's `profile` to
    its session, adlfs's `managed_identity_client_id` to its credential, fsspec's own)."""
    from trackpoint.collectors.log.shipping.options import problems

    s3_options = {"key": "test", "secret": "test", "profile": "default", "use_listings_cache": False, "anon": False,
                  "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "us-east-1"}, **FAST_S3,
                  "s3_additional_kwargs": {"ServerSideEncryption": "AES256"}}  # fmt: skip
    azure_options = {"connection_string": "AccountName=a", "managed_identity_client_id": "id", "anon": False,
                     "skip_instance_cache": True}  # fmt: skip
    assert list(problems("s3", s3_options)) == []
    assert list(problems("az", azure_options)) == list(problems("abfs", azure_options)) == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trackpoint", "ship", *args], check=False, capture_output=True, text=True, timeout=120
    )


def test_the_ship_command(s3: S3Store, tmp_path: Path) -> None:
    events = write_logs(tmp_path, 60)
    files = log_files(tmp_path / "logs")

    def configure(options: dict[str, Any], **more: Any) -> Path:
        ship = {"url": s3.url("cli"), "storage_options": options, "node": "node-a", "retries": 0, **more}
        return write_config(tmp_path, ship)

    unreachable = {**s3.options, "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{free_port()}"}}
    config = configure(unreachable)
    down = _cli("--config", str(config), "--once")
    assert down.returncode == 1, down.stdout + down.stderr
    assert "failed log " in down.stderr
    assert log_files(tmp_path / "logs") == files

    # Without --once, a store that stays down is not a line per pass (here every 0.1 s): the streak's first line,
    # then a reminder every 10 s.
    config = configure(unreachable, interval_s=0.1)
    command = [sys.executable, "-m", "trackpoint", "ship", "--config", str(config)]
    running = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert running.stderr is not None
        assert " is failing " in running.stderr.readline()
        time.sleep(2.0)  # some twenty passes, all failing
        running.send_signal(signal.SIGTERM)
        _, errors = running.communicate(timeout=30)
    finally:
        running.kill()
        running.wait()
    assert errors == "", errors

    config = configure(s3.options)
    unknown = _cli("--config", str(config), "--collector", "nope", "--once")
    assert unknown.returncode == 2
    assert "not a log collector with ship.url: nope (shipping: log)" in unknown.stderr

    shipped = _cli("--config", str(config), "--collector", "log", "--once")
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    for name in files:
        assert f"shipped log {name} → s3://{s3.bucket}/{key_of(name, 'cli')}" in shipped.stdout
    assert f"{len(files)} files shipped" in shipped.stdout
    assert s3.events("cli", tmp_path / "back") == events
    assert list((tmp_path / "logs").glob("events-*")) == []

    later = write_logs(tmp_path, 40, first=60)  # without --once: keeps shipping until SIGTERM
    names = log_files(tmp_path / "logs")
    command = [sys.executable, "-m", "trackpoint", "ship", "--config", str(config)]
    running = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while list((tmp_path / "logs").glob("events-*")):
            assert time.monotonic() < deadline and running.poll() is None, "trackpoint ship shipped nothing"
            time.sleep(0.1)
        running.send_signal(signal.SIGTERM)
        out, errors = running.communicate(timeout=30)
    finally:
        running.kill()
        running.wait()
    assert running.returncode == 0, errors
    assert all(f"shipped log {name} " in out for name in names)
    assert s3.events("cli", tmp_path / "back-again") == events + later


# --- end to end ------------------------------------------------------------------------------------------------


def test_the_tracker_ships_its_logs_while_running_and_on_sigterm(
    s3: S3Store, tracker_factory: Any, tmp_path: Path
) -> None:
    ship = {"url": s3.url("e2e"), "storage_options": s3.options, "node": "edge-1", "interval_s": 0.3,
            "retry_initial_s": 0.1, "retry_max_s": 0.5}  # fmt: skip
    tracker: Tracker = tracker_factory(
        {"collectors": {"log": {"type": "log", "rotate_bytes": 4096, "fsync": "none", "ship": ship}}}, workers=2
    )
    acknowledged = []
    for i in range(300):
        status, _, _ = tracker.get(tracker.sign(f"/win?imp=e2e-{i}&price=0.5"))
        if status == 204:
            acknowledged.append(f"e2e-{i}")
    assert len(acknowledged) == 300
    deadline = time.monotonic() + 30
    while not s3.data_keys("e2e"):  # rotated files ship while the tracker runs
        local = sorted(path.name for path in (tracker.data_dir / "logs").iterdir())
        assert time.monotonic() < deadline, f"nothing shipped; local files {local}; log:\n{tracker.output()}"
        time.sleep(0.1)
    labels = 'collector="log",outcome="shipped"'
    assert tracker.wait_metric("trackpoint_ship_uploads_total", labels, 1) >= 1
    assert tracker.stop() == 0, tracker.output()

    keys = s3.data_keys("e2e")
    assert all(key.startswith("e2e/edge-1/") and key.endswith(".jsonl.zst") for key in keys)
    shipped = [event.dims["imp"] for event in s3.events("e2e", tmp_path / "back") if event.type == "win"]
    assert sorted(shipped) == sorted(acknowledged)  # every acknowledged event, once
    logs = tracker.data_dir / "logs"
    assert list(logs.glob("events-*")) == []  # the last files shipped on SIGTERM, after the drain
    assert sorted(entry["name"] for entry in manifest_lines(logs)) == sorted(key.rsplit("/", 1)[1] for key in keys)


def test_sigterm_ships_the_files_the_drain_finished(s3: S3Store, tracker_factory: Any, tmp_path: Path) -> None:
    """No periodic pass after the start one (interval_s is an hour): only the last pass can ship these files."""
    ship = {"url": s3.url("last"), "storage_options": s3.options, "node": "edge-2", "interval_s": 3600}
    tracker: Tracker = tracker_factory({"collectors": {"log": {"type": "log", "ship": ship}}}, workers=2)
    acknowledged = [
        f"last-{i}" for i in range(50) if tracker.get(tracker.sign(f"/win?imp=last-{i}&price=0.5"))[0] == 204
    ]
    assert len(acknowledged) == 50
    time.sleep(0.5)
    assert s3.data_keys("last") == []
    assert tracker.stop() == 0, tracker.output()
    shipped = [event.dims["imp"] for event in s3.events("last", tmp_path / "back") if event.type == "win"]
    assert sorted(shipped) == sorted(acknowledged)
    assert list((tracker.data_dir / "logs").glob("events-*")) == []


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="unshare -p needs root")
def test_ship_once_from_another_pid_namespace_never_takes_a_file_a_worker_writes(
    s3: S3Store, tracker_factory: Any, tmp_path: Path
) -> None:
    """A cron job or a sidecar container sharing the volume runs in a pid namespace of its own, where the pids in
    the file names mean nothing: it ships the files the worker left behind, never the one it writes."""
    ship = {"url": s3.url("ns"), "storage_options": s3.options, "node": "edge-ns", "interval_s": 3600}
    log = {"type": "log", "compression": "none", "rotate_bytes": 4096, "rotate_interval_s": 30, "ship": ship}
    tracker: Tracker = tracker_factory({"collectors": {"log": log}}, workers=1)
    logs = tracker.data_dir / "logs"
    acknowledged = [f"ns-{i}" for i in range(60) if tracker.get(tracker.sign(f"/win?imp=ns-{i}&price=0.5"))[0] == 204]
    assert len(acknowledged) == 60
    before = sorted(path.name for path in logs.glob("events-*"))
    assert len(before) >= 3, before  # rotated by size: finished files, and the one being written (the newest)
    command = ["unshare", "-p", "-f", "--mount-proc", sys.executable, "-m", "trackpoint", "ship"]
    once = subprocess.run(
        [*command, "--config", str(tracker.config_path), "--once"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert once.returncode == 0, once.stdout + once.stderr
    shipped = sorted(key.rsplit("/", 1)[1] for key in s3.data_keys("ns"))
    assert shipped == before[:-1]  # the older files shipped, the one being written stayed
    assert (logs / before[-1]).exists()
    # Acknowledged after the pass: written into the file that stayed, not into an unlinked one.
    later = [f"ns-{i}" for i in range(60, 70) if tracker.get(tracker.sign(f"/win?imp=ns-{i}&price=0.5"))[0] == 204]
    assert len(later) == 10
    local = [event.dims["imp"] for event in read_events([logs]) if event.type == "win"]
    assert set(later) <= set(local)
    assert tracker.stop() == 0, tracker.output()
    stored = [event.dims["imp"] for event in s3.events("ns", tmp_path / "back") if event.type == "win"]
    assert sorted(stored) == sorted(acknowledged + later)  # every acknowledged event, once
