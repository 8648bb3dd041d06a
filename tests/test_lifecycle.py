"""Process lifecycle under load: SIGTERM drains and loses no acknowledged event, SIGHUP reloads without failing a
request, a killed worker is replaced, an invalid reload keeps the running configuration.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Tracker, free_port, load_config
from trackpoint.collectors.log.reader import read_events
from trackpoint.process.supervisor import available_cpus


class Load:
    """Client threads sending distinct win notices over keep-alive connections, remembering every answer."""

    def __init__(self, tracker: Tracker, threads: int = 4, path: Callable[[str], str] | None = None) -> None:
        self.tracker = tracker
        self.path = path or (lambda imp: tracker.sign(f"/win?imp={imp}&price=0.5"))
        self.acknowledged: list[str] = []
        self.failures: list[str] = []
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _run(self, number: int) -> None:
        connection: http.client.HTTPConnection | None = None
        sequence = 0
        while not self._stop.is_set():
            imp = f"t{number}-{sequence}"
            sequence += 1
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", self.tracker.port, timeout=10)
                connection.request("GET", self.path(imp))
                response = connection.getresponse()
                response.read()
                with self._lock:
                    self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
                    if 200 <= response.status < 300:
                        self.acknowledged.append(imp)
                    else:
                        self.failures.append(f"{imp}: HTTP {response.status}")
                if response.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.failures.append(f"{imp}: {exc!r}")
                if connection is not None:
                    connection.close()
                connection = None
                time.sleep(0.01)
        if connection is not None:
            connection.close()


def test_sigterm_drains_and_every_acknowledged_event_is_logged(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory(workers=2)
    with Load(tracker) as load:
        time.sleep(1.5)
        tracker.signal(signal.SIGTERM)
        assert tracker.process is not None
        code = tracker.process.wait(30)
        load.stop()
    assert code == 0, tracker.output()
    logged = {event.dims["imp"] for event in tracker.events()}
    assert len(load.acknowledged) > 100
    missing = [imp for imp in load.acknowledged if imp not in logged]
    assert missing == []
    # Rotated and compressed on shutdown: no active file is left behind (a worker that got no event has no file).
    suffixes = [p.name.rsplit(".", 2)[-2:] for p in (tracker.data_dir / "logs").iterdir()]
    assert suffixes and all(suffix == ["jsonl", "zst"] for suffix in suffixes)


def test_sighup_reloads_without_failing_a_request(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory(workers=2)
    old_pids = set(tracker.worker_pids())
    document = yaml.safe_load(tracker.config_path.read_text())
    document["event_types"] = {
        "win": {
            "paths": ["/win", "/win2"],
            "fields": {"imp": {"required": True}, "price": {"type": "money", "required": True}},
            "dedupe_key": ["imp"],
            "response": {"kind": "no_content"},
        }
    }
    with Load(tracker) as load:
        time.sleep(1.0)
        tracker.config_path.write_text(yaml.safe_dump(document))
        tracker.signal(signal.SIGHUP)
        assert tracker.wait_metric("trackpoint_reloads_total", "", 1, timeout_s=20) == 1
        time.sleep(1.5)
    assert load.failures == []
    assert len(load.acknowledged) > 100
    assert tracker.get(tracker.sign("/win2?imp=new&price=1"))[0] == 204
    assert not old_pids & set(tracker.worker_pids())
    assert tracker.stop() == 0
    events = tracker.events()
    logged = {event.dims["imp"] for event in events}
    assert [imp for imp in load.acknowledged if imp not in logged] == []
    assert len({event.meta.config for event in events}) == 2  # events from both configurations


def test_invalid_reload_keeps_the_running_configuration(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory()
    pids = tracker.worker_pids()
    tracker.config_path.write_text("server: {port: not-a-port}\n")
    tracker.signal(signal.SIGHUP)
    assert tracker.wait_metric("trackpoint_reload_failures_total", "", 1) == 1
    assert "server.port" in tracker.output()
    assert tracker.worker_pids() == pids
    assert tracker.get("/i?imp=still")[0] == 200


def test_a_killed_worker_is_replaced_and_its_events_kept(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory(workers=2)
    for i in range(20):
        assert tracker.get(f"/i?imp=before-{i}")[0] == 200
    # No wait before the kill: each line was written before its answer left, so all 20 must survive it.
    victim = tracker.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (victim in tracker.worker_pids() or len(tracker.worker_pids()) < 2):
        time.sleep(0.05)
    assert victim not in tracker.worker_pids() and len(tracker.worker_pids()) == 2
    tracker.wait_ready()
    assert tracker.wait_metric("trackpoint_worker_restarts_total", "", 1) == 1
    for i in range(20):
        assert tracker.get(f"/i?imp=after-{i}")[0] == 200
    assert tracker.stop() == 0
    imps = {event.dims["imp"] for event in tracker.events()}
    assert {f"before-{i}" for i in range(20)} <= imps
    assert {f"after-{i}" for i in range(20)} <= imps


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        (None, "cores"),
        ("max 100000", "cores"),
        ("150000 100000", 1),
        ("400000 100000", 4),
        ("garbage", "cores"),
        ("x 1", "cores"),
    ],
)
def test_workers_default_to_the_available_cores_within_the_cgroup_limit(
    tmp_path: Path, cpu_max: str | None, expected: int | str
) -> None:
    cgroup = tmp_path / "cpu.max"
    if cpu_max is not None:
        cgroup.write_text(cpu_max + "\n")
    cores = len(os.sched_getaffinity(0))
    assert available_cpus(cgroup) == (cores if expected == "cores" else min(cores, int(expected)))


@pytest.mark.e2e
def test_admin_host_and_config_come_from_the_command_line_and_environment(tmp_path: Path) -> None:
    """`--admin-host` moves the admin port (a container binds it to 0.0.0.0 for its probes) and TRACKPOINT_CONFIG
    stands in for --config, as the container image relies on."""
    port, admin_port = free_port(), free_port()
    config = tmp_path / "trackpoint.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "server": {"host": "127.0.0.1"}}))
    command = [sys.executable, "-m", "trackpoint", "run", "--workers", "1", "--port", str(port)]
    command += ["--admin-port", str(admin_port), "--admin-host", "127.0.0.2"]
    environment = {**os.environ, "TRACKPOINT_CONFIG": str(config)}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.communicate()[0].decode()
            try:
                connection = http.client.HTTPConnection("127.0.0.2", admin_port, timeout=2)
                connection.request("GET", "/readyz")
                body = json.loads(connection.getresponse().read())
                connection.close()
                if body["ready"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the admin port never answered on 127.0.0.2"
            time.sleep(0.05)
        assert body["config_version"] == load_config(config).version  # the file named by the environment
        with pytest.raises(ConnectionRefusedError):  # nothing listens on the default admin address
            socket.create_connection(("127.0.0.1", admin_port), timeout=2).close()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


@pytest.mark.e2e
def test_the_embedded_default_runs_in_a_fresh_directory(tmp_path: Path) -> None:
    """The README's first command: `trackpoint run` with no file, in an empty directory, so data_dir is the relative
    `./trackpoint-data`. Every file it keeps there (the generated admin token and signing key) is found again."""
    port, admin_port = free_port(), free_port()
    command = [sys.executable, "-m", "trackpoint", "run", "--workers", "1", "--port", str(port)]
    command += ["--admin-port", str(admin_port)]
    environment = {key: value for key, value in os.environ.items() if key != "TRACKPOINT_CONFIG"}
    process = subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    data = tmp_path / "trackpoint-data"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.communicate()[0].decode()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=2)
                connection.request("GET", "/readyz")
                ready = connection.getresponse().status == 200
                connection.close()
                if ready:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the embedded default never became ready"
            time.sleep(0.05)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/i?imp=fresh-1&cid=c1")
        response = connection.getresponse()
        assert (response.status, response.read()[:4]) == (200, b"GIF8")
        token = (data / "keys" / "admin.token").read_text().strip()
        connection = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
        connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
        assert connection.getresponse().status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert not (data / "trackpoint-data").exists()  # nothing resolved against data_dir twice
    assert [event.dims["imp"] for event in read_events([data / "logs"])] == ["fresh-1"]
