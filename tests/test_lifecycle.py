"""Process lifecycle under load: SIGTERM drains and loses no acknowledged event, SIGHUP reloads without failing a
request, a killed worker is replaced, an invalid reload keeps the running configuration.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
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

from conftest import SmallDisk, Tracker, free_port, load_config
from trackpoint.collectors.log.reader import read_events
from trackpoint.process.supervisor import DataDirInUse, available_cpus, claim_data_dir


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


def test_a_draining_tracker_refuses_new_connections_and_finishes_the_accepted_ones(tracker_factory: Any) -> None:
    """After SIGTERM no worker accepts again: a connection that still arrives (a load balancer yet to forget the
    tracker) is refused at once, where it waited in the listening socket's backlog for the whole drain and was then
    reset. A request accepted before the signal is still answered."""
    tracker: Tracker = tracker_factory({"server": {"drain_timeout_s": 30}}, workers=2)
    accepted = socket.create_connection(("127.0.0.1", tracker.port), timeout=10)
    accepted.sendall(b"GET /i?imp=accepted HTTP/1.1\r\nHost: t\r\n")  # its headers unfinished: the drain waits
    assert tracker.wait_metric("trackpoint_connections", "", 1) == 1
    tracker.signal(signal.SIGTERM)
    assert tracker.process is not None
    refused = False
    while not refused and tracker.process.poll() is None:  # it drains until the accepted request ends
        try:
            socket.create_connection(("127.0.0.1", tracker.port), timeout=10).close()
        except ConnectionRefusedError:
            refused = True
        time.sleep(0.01)
    assert refused and tracker.process.poll() is None, tracker.output()
    accepted.sendall(b"\r\n")
    assert accepted.recv(4096).startswith(b"HTTP/1.1 200 "), tracker.output()
    accepted.close()
    assert tracker.process.wait(30) == 0, tracker.output()
    assert "accepted" in {event.dims["imp"] for event in tracker.events()}


def test_shutdown_delay_serves_with_readyz_failing_then_drains(tracker_factory: Any) -> None:
    """server.shutdown_delay_s (platforms without a preStop hook): after SIGTERM the tracker goes on serving, new
    connections included, with /readyz 503 `draining` so that the load balancer stops sending; then it drains. A
    second signal drains at once."""
    tracker: Tracker = tracker_factory({"server": {"shutdown_delay_s": 3}})
    assert tracker.process is not None
    signalled = time.monotonic()
    tracker.signal(signal.SIGTERM)
    status, _, body = tracker.admin("GET", "/readyz")
    assert status == 503 and json.loads(body)["draining"] is True
    served = 0
    while time.monotonic() - signalled < 2.5:  # a new connection for each: the port still accepts
        assert tracker.get(f"/i?imp=lame-{served}")[0] == 200, tracker.output()
        served += 1
        time.sleep(0.05)
    assert tracker.process.poll() is None
    assert tracker.process.wait(30) == 0, tracker.output()
    assert time.monotonic() - signalled >= 3
    assert {f"lame-{n}" for n in range(served)} <= {event.dims["imp"] for event in tracker.events()}
    assert "draining in 3 s (server.shutdown_delay_s)" in tracker.output()


def test_a_worker_that_dies_during_the_shutdown_delay_is_replaced(tracker_factory: Any) -> None:
    """The port takes connections for the whole delay: a worker that dies meanwhile is started again, or they would
    wait unanswered until the drain. Once the drain begins, none is started any more."""
    tracker: Tracker = tracker_factory({"server": {"shutdown_delay_s": 6}})
    assert tracker.process is not None
    [first] = tracker.worker_pids()
    tracker.signal(signal.SIGTERM)
    time.sleep(0.3)
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 4
    while tracker.worker_pids() in ([], [first]) and time.monotonic() < deadline:
        time.sleep(0.05)
    [second] = tracker.worker_pids()
    assert second != first, tracker.output()
    status = 0
    while status != 200 and time.monotonic() < deadline:  # served again once the new worker is ready
        with contextlib.suppress(OSError):
            status = tracker.get("/i?imp=after-the-death")[0]
        time.sleep(0.05)
    assert status == 200, tracker.output()
    assert tracker.process.wait(30) == 0, tracker.output()
    assert "after-the-death" in {event.dims["imp"] for event in tracker.events()}
    assert "died with exit code -9" in tracker.output()


def test_a_second_signal_ends_the_shutdown_delay(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory({"server": {"shutdown_delay_s": 120}})
    assert tracker.process is not None
    tracker.signal(signal.SIGTERM)
    time.sleep(0.5)
    assert tracker.process.poll() is None and tracker.get("/i?imp=still")[0] == 200
    tracker.signal(signal.SIGTERM)
    assert tracker.process.wait(30) == 0, tracker.output()
    assert "still" in {event.dims["imp"] for event in tracker.events()}


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


def test_a_reload_keeps_the_tracker_ready_and_its_counters_whole(tracker_factory: Any) -> None:
    """While a reload's new workers start, the old ones go on serving: /readyz stays 200 (a probe failing there would
    take the pod out of its service on every reload) and the event counter neither drops nor disappears (Prometheus
    would take a drop for a reset and count everything again)."""
    tracker: Tracker = tracker_factory(workers=2)
    for i in range(50):
        assert tracker.get(f"/i?imp=before-{i}")[0] == 200
    assert tracker.wait_metric("trackpoint_events_total", 'type="impression"', 50) == 50
    tracker.signal(signal.SIGHUP)
    ready, counted = [], []
    deadline = time.monotonic() + 20
    while tracker.metric("trackpoint_reloads_total") < 1:
        assert time.monotonic() < deadline, "the reload never finished"
        ready.append(tracker.admin("GET", "/readyz")[0])
        counted.append(tracker.metric("trackpoint_events_total", 'type="impression"'))
    assert len(ready) >= 10, ready  # sampled while the new workers started
    assert set(ready) == {200}, ready
    assert set(counted) == {50.0}, counted


def test_invalid_reload_keeps_the_running_configuration(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory()
    pids = tracker.worker_pids()
    tracker.config_path.write_text("server: {port: not-a-port}\n")
    tracker.signal(signal.SIGHUP)
    assert tracker.wait_metric("trackpoint_reload_failures_total", "", 1) == 1
    assert "server.port" in tracker.output()
    # A file that is not UTF-8, and a number no worker could be sent: refused and counted like any other problem
    # (they killed the reload's task, uncounted; the number left an old worker serving after the next reload).
    data_dir = tracker.data_dir
    tracker.config_path.write_bytes(b"data_dir: %s\n# caf\xe9\n" % str(data_dir).encode())
    tracker.signal(signal.SIGHUP)
    assert tracker.wait_metric("trackpoint_reload_failures_total", "", 2) == 2
    tracker.config_path.write_text(f"data_dir: {data_dir}\nserver: {{limits: {{max_connections: {10**24}}}}}\n")
    tracker.signal(signal.SIGHUP)
    assert tracker.wait_metric("trackpoint_reload_failures_total", "", 3) == 3
    assert "not UTF-8" in tracker.output() and "too large a number" in tracker.output()
    assert "Traceback" not in tracker.output()
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
    if cpu_max is not None:
        (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    cores = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == (cores if expected == "cores" else min(cores, int(expected)))


@pytest.mark.parametrize(
    ("controller", "quota", "expected"),
    [
        ("cpu", "100000", 1),
        ("cpu,cpuacct", "50000", 1),
        ("cpu", "400000", 4),
        ("cpu", "-1", "cores"),
        ("cpu", "garbage", "cores"),
    ],
)
def test_a_cgroup_v1_cpu_quota_caps_the_workers_too(
    tmp_path: Path, controller: str, quota: str, expected: int | str
) -> None:
    """A container on a cgroup v1 host (no cpu.max) sees its limit as a CFS quota and period under cpu/."""
    (tmp_path / controller).mkdir()
    (tmp_path / controller / "cpu.cfs_quota_us").write_text(quota + "\n")
    (tmp_path / controller / "cpu.cfs_period_us").write_text("100000\n")
    cores = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == (cores if expected == "cores" else min(cores, int(expected)))


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
        body = wait_process_ready(process, "127.0.0.2", admin_port)  # the admin port moved there
        assert body["config_version"] == load_config(config).version  # the file named by the environment
        with pytest.raises(ConnectionRefusedError):  # nothing listens on the default admin address
            socket.create_connection(("127.0.0.1", admin_port), timeout=2).close()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def wait_process_ready(process: subprocess.Popen[bytes], host: str, admin_port: int) -> dict[str, Any]:
    """Until a tracker started outside the suite's Tracker answers /readyz ready on its admin port (at most 20 s);
    the readiness document."""
    deadline = time.monotonic() + 20
    while True:
        assert process.poll() is None, process.communicate()[0].decode()
        try:
            connection = http.client.HTTPConnection(host, admin_port, timeout=2)
            connection.request("GET", "/readyz")
            body: dict[str, Any] = json.loads(connection.getresponse().read())
            connection.close()
            if body["ready"]:
                return body
        except OSError:
            pass
        assert time.monotonic() < deadline, f"the tracker never became ready on {host}:{admin_port}"
        time.sleep(0.05)


def wait_logged(tracker: Tracker, text: str) -> None:
    """Until the tracker's log has `text` (polled every 10 ms, at most 20 s)."""
    deadline = time.monotonic() + 20
    while text not in tracker.output():
        assert time.monotonic() < deadline, f"never logged {text!r}:\n{tracker.output()}"
        time.sleep(0.01)


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting for its parent to reap it has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_stop_while_the_workers_start_is_quiet(tracker_factory: Any) -> None:
    """Ctrl-C as soon as the tracker says it is listening, while its workers are still starting: it drains and stops
    with exit code 0, and its log holds no error about the workers it stopped before they were ready (each of them
    failed the future its start was followed by, which nothing awaited: asyncio logged it at exit)."""
    tracker: Tracker = tracker_factory(workers=2, ready=False)
    wait_logged(tracker, "listening on")  # logged once the workers are spawned, before they are ready
    tracker.signal(signal.SIGINT)
    assert tracker.process is not None and tracker.process.wait(30) == 0, tracker.output()
    output = tracker.output()
    assert "draining" in output and "trackpoint stopped" in output, output
    assert " ERROR " not in output and "Traceback" not in output and "never retrieved" not in output, output


def test_a_worker_killed_before_it_read_its_start_is_replaced(tracker_factory: Any) -> None:
    """A worker killed while it starts (the OOM killer, a SIGKILL), before it read the configuration sent to it,
    leaves a reset on its control channel rather than an end of file: the supervisor takes it for the exit it is and
    starts another, and the tracker becomes ready."""
    tracker: Tracker = tracker_factory(ready=False)
    wait_logged(tracker, "listening on")  # the worker is spawned and still importing
    (worker,) = tracker.worker_pids()
    os.kill(worker, signal.SIGKILL)
    tracker.wait_ready(timeout_s=30)
    assert tracker.worker_pids() != [worker]
    assert tracker.stop() == 0
    output = tracker.output()
    assert "Traceback" not in output and "never retrieved" not in output, output


def test_a_stop_during_a_reload_drains_the_old_workers_too(tracker_factory: Any) -> None:
    """SIGTERM while a reload's new workers start: the drain stops the old workers (still serving) with the new ones
    and waits for them, and the abandoned reload is not reported as a failed one."""
    tracker: Tracker = tracker_factory(workers=2)
    old = tracker.worker_pids()
    tracker.signal(signal.SIGHUP)
    time.sleep(0.05)
    assert tracker.stop() == 0, tracker.output()
    assert [pid for pid in old if alive(pid)] == [], tracker.output()  # drained before the supervisor exited
    output = tracker.output()
    assert "reload abandoned: shutting down" in output and " ERROR " not in output, output


def test_a_worker_whose_supervisor_is_killed_exits(tracker_factory: Any) -> None:
    """The supervisor SIGKILLed with a worker's reports unread on its control channel (it was stopped for two report
    intervals first): the worker meets a reset rather than an end of file, and drains and exits all the same, with
    its events logged, rather than live on as an orphan holding the port."""
    tracker: Tracker = tracker_factory()
    assert tracker.get("/i?imp=before-the-kill")[0] == 200
    (worker,) = tracker.worker_pids()
    assert tracker.process is not None
    try:
        tracker.signal(signal.SIGSTOP)
        time.sleep(2.5)  # two reports (one a second) wait unread
        tracker.process.kill()
        tracker.process.wait(10)
        deadline = time.monotonic() + 20
        while alive(worker):
            assert time.monotonic() < deadline, "the worker lived on without its supervisor"
            time.sleep(0.05)
    finally:
        if alive(worker):  # the orphan of a failed run: not left behind
            os.kill(worker, signal.SIGKILL)
    assert [event.dims["imp"] for event in tracker.events()] == ["before-the-kill"]
    assert "Traceback" not in tracker.output(), tracker.output()  # its goodbye to a supervisor that is gone


def test_the_data_dir_lock_is_held_once_and_degrades_where_locks_are_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    held = claim_data_dir(str(tmp_path / "data"))
    try:
        with pytest.raises(DataDirInUse, match=f"in use by another trackpoint \\(pid {os.getpid()}\\)"):
            claim_data_dir(str(tmp_path / "data"))
    finally:
        os.close(held)
    os.close(claim_data_dir(str(tmp_path / "data")))  # released with its descriptor

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)  # a network share without locks: run, and say so
    os.close(claim_data_dir(str(tmp_path / "data")))
    assert "cannot be locked" in caplog.text
    (tmp_path / "a-file").write_text("")
    with pytest.raises(NotADirectoryError):
        claim_data_dir(str(tmp_path / "a-file" / "data"))


def test_on_a_full_disk_a_data_dir_is_claimed_again_and_a_new_one_refused_in_one_line(
    small_disk: Callable[..., SmallDisk], tmp_path: Path
) -> None:
    """The data_dir lock on a full disk. A data_dir a tracker ran on before is claimed: its lock file's content is
    rewritten in place, needing no block more, and the workers then serve what they can. A new one, whose lock file
    has no room, is refused: `trackpoint run` exits 1 with the reason, no traceback (and it could not have written
    its admin token nor its signing key either)."""
    disk = small_disk(tmp_path / "disk")
    os.close(claim_data_dir(str(disk.directory / "ran-before")))
    (disk.directory / "new").mkdir()
    disk.fill(inodes=False)
    os.close(claim_data_dir(str(disk.directory / "ran-before")))
    config = tmp_path / "new.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(disk.directory / "new")}))
    run = [sys.executable, "-m", "trackpoint", "run", "--config", str(config), "--workers", "1",
           "--port", str(free_port()), "--admin-port", str(free_port())]  # fmt: skip
    done = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"cannot use data_dir {disk.directory / 'new'}: No space left on device" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_a_second_tracker_is_refused_its_data_dir_and_its_port(tracker_factory: Any, tmp_path: Path) -> None:
    """A second tracker started on a running one's data_dir would take its active log for a dead worker's and
    compress it away under it (what it acknowledged next was lost); on its port, its SO_REUSEPORT sockets would
    take part of the traffic. Both are refused, with a message, and the running tracker loses nothing."""
    tracker: Tracker = tracker_factory()
    assert tracker.get("/i?imp=before")[0] == 200
    assert tracker.process is not None

    def second(data_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
        config = tmp_path / f"second-{port}.yaml"
        config.write_text(yaml.safe_dump({"data_dir": str(data_dir)}))
        command = [sys.executable, "-m", "trackpoint", "run", "--config", str(config), "--workers", "1",
                   "--port", str(port), "--admin-port", str(free_port())]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    same_dir = second(tracker.data_dir, free_port())
    assert same_dir.returncode == 1, same_dir.stderr
    assert f"data_dir {tracker.data_dir} is in use by another trackpoint (pid {tracker.process.pid})" in same_dir.stderr
    same_port = second(tmp_path / "other-data", tracker.port)
    assert same_port.returncode == 1, same_port.stderr
    assert f"cannot listen on 0.0.0.0:{tracker.port}: Address already in use" in same_port.stderr
    (tmp_path / "a-file").write_text("")
    unusable = second(tmp_path / "a-file" / "data", free_port())  # a message, not a traceback
    assert unusable.returncode == 1 and "cannot use data_dir" in unusable.stderr, unusable.stderr
    assert "Traceback" not in unusable.stderr + same_dir.stderr + same_port.stderr
    assert tracker.get("/i?imp=after")[0] == 200
    tracker.signal(signal.SIGTERM)
    assert tracker.process.wait(30) == 0, tracker.output()
    assert sorted(event.dims["imp"] for event in tracker.events()) == ["after", "before"]
    # Stopped, it leaves the directory to the next tracker: the lock is the process's, not the file's.
    assert (tracker.data_dir / "trackpoint.lock").exists()
    assert tracker.start().get("/i?imp=again")[0] == 200


def test_a_new_tracker_waits_for_the_workers_of_a_killed_one(tracker_factory: Any, tmp_path: Path) -> None:
    """The supervisor SIGKILLed while its worker is still reading a request, and a new tracker started at once on
    the same data_dir: the new one must not take the live worker's log for an orphan's and compress it away under
    it (the answer the worker still gives would then be for a line in an unlinked file). The workers hold the
    data_dir lock too; the new tracker waits for them, then starts."""
    tracker: Tracker = tracker_factory()
    assert tracker.get("/i?imp=before")[0] == 200
    (worker,) = tracker.worker_pids()
    slow = socket.create_connection(("127.0.0.1", tracker.port), timeout=10)
    slow.sendall(b"GET /i?imp=slow HTTP/1.1\r\nHost: t\r\n")  # the head not finished yet
    assert tracker.process is not None
    tracker.process.kill()
    tracker.process.wait(10)
    config = tmp_path / "next.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tracker.data_dir)}))
    admin_port = free_port()
    command = [sys.executable, "-m", "trackpoint", "run", "--config", str(config), "--workers", "1",
               "--port", str(free_port()), "--admin-port", str(admin_port)]  # fmt: skip
    log = tmp_path / "next.log"
    with log.open("wb") as sink:
        successor = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while "waiting for them" not in log.read_text():  # the worker still holds the data_dir: it must wait
            assert successor.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        slow.sendall(b"Connection: close\r\n\r\n")
        assert slow.recv(65536).startswith(b"HTTP/1.1 200")  # acknowledged by the orphan: it must be in the log
        slow.close()
        wait_process_ready(successor, "127.0.0.1", admin_port)
        assert not alive(worker)
    finally:
        successor.send_signal(signal.SIGTERM)
        successor.wait(30)
        output = log.read_text()
        if alive(worker):
            os.kill(worker, signal.SIGKILL)
    assert successor.returncode == 0, output
    assert "held by the workers of a trackpoint that is gone" in output and "waiting for them" in output, output
    assert sorted(event.dims["imp"] for event in tracker.events()) == ["before", "slow"]


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
        wait_process_ready(process, "127.0.0.1", admin_port)
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


def test_a_reload_to_zstd_compresses_the_last_plain_files_of_the_old_workers(tracker_factory: Any) -> None:
    """The old workers wrote with compression none and exit cleanly after the reload: the supervisor compresses
    what they left, so it becomes shippable (finished) under the new codec instead of waiting for the next start."""
    tracker: Tracker = tracker_factory({"collectors": {"log": {"type": "log", "compression": "none"}}}, workers=2)
    old_pids = tracker.worker_pids()
    acknowledged = [f"r-{i}" for i in range(40) if tracker.get(f"/i?imp=r-{i}")[0] == 200]
    logs = tracker.data_dir / "logs"
    document = yaml.safe_load(tracker.config_path.read_text())
    document["collectors"]["log"]["compression"] = "zstd"
    tracker.config_path.write_text(yaml.safe_dump(document))
    tracker.signal(signal.SIGHUP)
    assert tracker.wait_metric("trackpoint_reloads_total", "", 1, timeout_s=20) == 1

    def left_plain() -> list[str]:
        return [p.name for p in logs.glob("events-*.jsonl") if any(f"-p{pid}-" in p.name for pid in old_pids)]

    deadline = time.monotonic() + 20
    while left_plain() or set(old_pids) & set(tracker.worker_pids()):
        assert time.monotonic() < deadline, f"left plain: {left_plain()}\n{tracker.output()}"
        time.sleep(0.05)
    assert [p for p in logs.glob("events-*.jsonl.zst") if any(f"-p{pid}-" in p.name for pid in old_pids)]
    assert tracker.wait_metric_at_most("trackpoint_log_uncompressed_waiting_bytes", 'collector="log"', 0) == 0
    assert tracker.stop() == 0, tracker.output()
    assert sorted(e.dims["imp"] for e in tracker.events()) == sorted(acknowledged)


@pytest.mark.e2e
def test_a_log_dir_that_cannot_be_made_stops_the_start_with_one_located_error(tmp_path: Path) -> None:
    config = tmp_path / "bad-dir.yaml"
    config.write_text(
        yaml.safe_dump(
            {"data_dir": str(tmp_path / "data"), "collectors": {"log": {"type": "log", "dir": "/proc/1/nope"}}}
        )
    )
    run = [sys.executable, "-m", "trackpoint", "run", "--config", str(config), "--workers", "1",
           "--port", str(free_port()), "--admin-port", str(free_port())]  # fmt: skip
    for command in (run, [sys.executable, "-m", "trackpoint", "config", "check", str(config)]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2, done.stdout + done.stderr  # a configuration error, as every check's
        assert "collectors.log.dir" in done.stdout + done.stderr and "/proc/1/nope" in done.stdout + done.stderr
        assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "data").exists()  # the check made nothing it keeps


def test_a_worker_that_cannot_start_its_log_says_so_in_one_line(tracker_factory: Any) -> None:
    """The log directory replaced by a file under a running tracker (the start-up check passed): the restarted
    worker cannot make it, and the supervisor logs why in one line, no traceback; it starts once it is back."""
    tracker: Tracker = tracker_factory()
    assert tracker.get("/i?imp=before")[0] == 200
    logs = tracker.data_dir / "logs"
    logs.rename(tracker.data_dir / "logs-aside")
    logs.write_text("")
    for pid in tracker.worker_pids():
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while "collector log cannot start" not in tracker.output():
        assert time.monotonic() < deadline, tracker.output()
        time.sleep(0.05)
    assert "Traceback" not in tracker.output(), tracker.output()
    logs.unlink()
    (tracker.data_dir / "logs-aside").rename(logs)
    tracker.wait_ready()
    assert tracker.get("/i?imp=after")[0] == 200
    assert tracker.stop() == 0, tracker.output()
    assert sorted(e.dims["imp"] for e in tracker.events()) == ["after", "before"]
