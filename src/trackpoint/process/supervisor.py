"""The supervisor: owns the listening sockets, starts and restarts workers, reloads on SIGHUP, drains on SIGTERM.

It binds one SO_REUSEPORT socket per worker slot and keeps it open for the tracker's whole life: a worker that
exits or is replaced closes only its copy, so connections queued on the slot wait for the next worker instead of
being reset. That is what makes reloads and restarts lose no request. The admin port is served from here, by
the handlers of admin/core.py, which read the supervisor as their `Tracker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import msgspec

from trackpoint.admin import metrics
from trackpoint.admin.core import admin_servers
from trackpoint.admin.dashboard import TAIL_KEEP, TAIL_WATCH_S, Dashboard
from trackpoint.admin.server import AdminServer
from trackpoint.collectors.log.budget import LogDiskMetrics
from trackpoint.collectors.log.compression import finalize_orphans
from trackpoint.collectors.log.config import LogCollectorConfig
from trackpoint.collectors.log.files import log_dir
from trackpoint.collectors.log.shipping.service import ShippingService
from trackpoint.collectors.spool import backlog, orphans
from trackpoint.config import ConfigError, LoadedConfig, load
from trackpoint.config.model import Config, collectors_in_use
from trackpoint.data_dir import LOCK_FILE, lock_content, pid_namespace
from trackpoint.edge.stats import Snapshot, add, counters_only
from trackpoint.event import Event
from trackpoint.log_limiter import REPEAT_INTERVAL_S, LogLimiter
from trackpoint.plugins import Registry
from trackpoint.process import control
from trackpoint.reference.openapi import openapi_json
from trackpoint.security.admin_token import (
    AdminTokenError,
    BearerCheck,
    check_admin,
    read_admin_token,
    token_path,
)
from trackpoint.security.resolve import resolve_secrets
from trackpoint.security.signing import SigningKeyError, edge_verifier

log = logging.getLogger("trackpoint.supervisor")

RESTART_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0)
# A slot whose worker failed to start this many times in a row is crash-looping: /healthz and /readyz fail.
CRASH_LOOP_STARTS = 2
# A worker told to stop (SIGTERM) that has not exited drain_timeout_s later, and this much more, is killed.
STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class Overrides:
    """Command-line options that win over the file, on start and on every reload."""

    host: str | None = None
    port: int | None = None
    workers: int | None = None
    admin_port: int | None = None
    admin_host: str | None = None

    def apply(self, config: Config) -> Config:
        server = config.server
        server = msgspec.structs.replace(
            server,
            host=self.host if self.host is not None else server.host,
            port=self.port if self.port is not None else server.port,
            workers=self.workers if self.workers is not None else server.workers,
        )
        admin = config.admin
        if self.admin_port is not None:
            admin = msgspec.structs.replace(admin, port=self.admin_port)
        if self.admin_host is not None:
            admin = msgspec.structs.replace(admin, host=self.admin_host)
        return msgspec.structs.replace(config, server=server, admin=admin)


@dataclass(eq=False)
class WorkerHandle:
    slot: int
    process: subprocess.Popen[bytes]
    ready: asyncio.Future[None]
    snapshot: Snapshot = field(default_factory=Snapshot)
    retiring: bool = False
    exited: asyncio.Future[None] | None = None
    # Started by a reload: if it fails before ready, the reload is refused and the running worker kept (no restart).
    probation: bool = False
    failure: control.Failed | None = None  # why it could not start, as it reported it
    started_at: float = field(default_factory=time.time)
    rss_bytes: int = 0  # as of its last Stats
    recycling: bool = False  # being replaced for its memory (server.worker_max_memory_mb)
    heard_at: float = field(default_factory=time.monotonic)  # when its last message came (the stall watchdog)
    # Why the supervisor is stopping it, to start another (stalled, start_timeout, channel_broken), and the details.
    problem: str | None = None
    problem_detail: str = ""
    start_timer: asyncio.TimerHandle | None = None  # stops it if it is not ready in time (worker_start_timeout_s)
    channel: asyncio.StreamWriter | None = None  # the control channel's sending side, once followed
    kill_timer: asyncio.TimerHandle | None = None  # kills it if it has not exited in time after a stop

    @property
    def serving(self) -> bool:
        """Ready, and neither draining nor being stopped."""
        return self.ready.done() and not self.ready.exception() and not self.retiring and self.problem is None


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity, capped by its cgroup's CPU quota (a container's CPU limit),
    which `os.cpu_count()` ignores: a pod limited to 2 CPUs on a 64-core node must not start 64 workers."""
    cores = len(os.sched_getaffinity(0))
    quota = cpu_quota(cgroup)
    return cores if quota is None else max(1, min(cores, int(quota)))


def cpu_quota(cgroup: Path) -> float | None:
    """The CPUs the cgroup mounted at `cgroup` may use (None: no limit, or none readable), as a container sees its
    own cgroup there: cgroup v2's `cpu.max`, else v1's CFS quota and period (hosts still on cgroup v1, such as
    Amazon Linux 2, where `cpu.max` does not exist and the limit would otherwise be missed)."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        pass
    for controller in ("cpu", "cpu,cpuacct"):
        try:
            v1_quota = int((cgroup / controller / "cpu.cfs_quota_us").read_text())
            v1_period = int((cgroup / controller / "cpu.cfs_period_us").read_text())
            return None if v1_quota < 0 else v1_quota / v1_period
        except (OSError, ValueError, ZeroDivisionError):
            continue
    return None


_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})  # flock not supported there


class DataDirInUse(Exception):
    """Another tracker holds the data directory."""


class DataDirDraining(DataDirInUse):
    """The data directory is held by the workers of a tracker whose supervisor is gone: they are finishing the
    requests they accepted, and writing their lines, before they exit."""


def claim_data_dir(data_dir: str) -> int:
    """The data directory for this tracker alone, for as long as it or any of its workers runs: an exclusive lock on
    `data_dir/trackpoint.lock` (created with the directory), which the kernel releases when the last process holding
    it ends, however it ends (the workers inherit it). A second tracker on the same directory would take the first
    one's active log files for a dead worker's and compress them away under it: every event acknowledged after that
    would be lost, and so would a request that a worker whose supervisor was killed is still answering. The file
    holds the supervisor's pid, for the message, and its pid namespace: a shipper that finds the lock held knows
    from it whether the pids in log file names are its own (trackpoint/data_dir.py). Raises DataDirInUse
    (DataDirDraining when that pid is gone), or OSError when the directory cannot be used."""
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _lock(fd)
    except BlockingIOError:
        recorded = os.pread(fd, 256, 0).decode("ascii", "replace").split("\n")
        owner = recorded[0].strip() or "unknown"
        os.close(fd)
        # A pid is only checked in its own namespace (another container sharing the volume: refused at once).
        ours = len(recorded) < 2 or not recorded[1] or recorded[1] == pid_namespace()
        if ours and owner.isdigit() and not _alive(int(owner)):
            raise DataDirDraining(
                f"data_dir {data_dir} is held by the workers of a trackpoint that is gone (pid {owner})"
            ) from None
        raise DataDirInUse(f"data_dir {data_dir} is in use by another trackpoint (pid {owner})") from None
    except OSError as exc:
        if exc.errno not in _NO_LOCKS:
            os.close(fd)
            raise
        # A file system without locks (some network shares): run, unguarded, rather than not at all.
        log.warning("data_dir %s cannot be locked (%s): make sure no other tracker uses it", data_dir, exc.strerror)
    content = lock_content()
    try:
        # Written over the previous content, then cut to length (never emptied first, so the file keeps its block):
        # a tracker restarted on a full disk takes its lock, and its workers serve what they can. A data_dir that
        # never had one has no room for it then: OSError (ENOSPC), which run() reports in one line, exit code 1.
        os.pwrite(fd, content, 0)
        os.ftruncate(fd, len(content))
    except OSError:
        os.close(fd)
        raise
    return fd


def _lock(fd: int, attempts: int = 20) -> None:
    """LOCK_EX, tried for up to 0.2 s: a shipper probing the lock (trackpoint/data_dir.py) holds a shared one for an
    instant, and must not make a tracker that starts at that moment refuse its directory."""
    for _ in range(attempts - 1):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.01)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def port_free(host: str, port: int) -> None:
    """Raises OSError (EADDRINUSE) when a socket already listens on the port, even one of another tracker's: the
    slots' SO_REUSEPORT sockets would join a running tracker's group and take part of its traffic."""
    if port == 0:
        return
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections in TIME_WAIT do not count
        probe.bind((host, port))
    finally:
        probe.close()


def listener(host: str, port: int, backlog: int | None) -> socket.socket:
    """A slot's SO_REUSEPORT socket; with no backlog bound only: the kernel sends it no connection until the
    worker that gets it starts serving (and listening)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if backlog is not None:
        sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(self, loaded: LoadedConfig, config_path: str | None, overrides: Overrides, plugins: Registry) -> None:
        self.config_path = config_path
        self.overrides = overrides
        self.loaded = loaded
        self.plugins = plugins  # the components a reload may name, and the plugins' admin routes
        self.config = overrides.apply(loaded.config)
        self.slots = self.config.server.workers or available_cpus()
        self.sockets: list[socket.socket] = []
        self.workers: dict[int, WorkerHandle] = {}
        self.retiring: set[WorkerHandle] = set()  # replaced workers still draining: their counters still count
        # A reload's old workers by slot, serving (and counted) until every new one is ready.
        self.replacing: dict[int, WorkerHandle] = {}
        self.retired = Snapshot()
        self.state = metrics.SupervisorState()
        self.state.workers_wanted = self.slots
        self.shutting_down = False
        self.restart_counts = [0] * self.slots
        self.started_at = time.time()
        self.slot_restarts = [0] * self.slots  # restarts after a death, per slot, since start (the dashboard)
        self.recent: deque[Event] = deque(maxlen=TAIL_KEEP)  # the workers' newest events, filtered (the dashboard)
        self._tail_watched_until = 0.0  # monotonic; the workers send their newest events until then (watch_tail)
        self._tail_expiry: asyncio.TimerHandle | None = None
        self.dashboard = Dashboard(self)
        # Per slot: failed starts in a row, the last start error logged, and the backoff before the next attempt.
        self.failed_starts = [0] * self.slots
        self.start_errors: list[str | None] = [None] * self.slots
        self.backoff_s = [0.0] * self.slots
        self._stopped = asyncio.Event()
        self.shipping = ShippingService(lambda: self.config)  # finished log files to object storage
        self._reloading: asyncio.Lock | None = None
        self._retries: set[asyncio.Task[None]] = set()  # restarts scheduled after a failed spawn, spool checks
        self._stranded_logged: set[Path] = set()  # spools no worker drains, warned about once
        self.probes: AdminServer | None = None  # admin.probe_port's listener: the probes only
        self._openapi: dict[str, bytes] = {}  # the OpenAPI document by config version
        self._data_dir_lock: int | None = None  # held while it runs (claim_data_dir)
        self._skipped_log = LogLimiter(REPEAT_INTERVAL_S)  # worker messages that do not decode, by reason

    # --- life ----------------------------------------------------------------------------------------------------

    async def run(self) -> int:
        server = self.config.server
        admin_config = self.config.admin
        for _, refusal in check_admin(admin_config):  # again: --admin-host may have moved it off loopback
            log.error("%s", refusal)
            return 2
        if not await self._claim_data_dir():
            return 1
        try:
            admin_token = read_admin_token(admin_config, self.config.data_dir)
        except AdminTokenError as exc:
            log.error("%s", exc)
            return 1
        except OSError as exc:  # the generated token's file cannot be written
            log.error("cannot create the admin token: %s", exc)
            return 1
        raise_fd_limit()
        try:
            port_free(server.host, server.port)
            self.sockets = [listener(server.host, server.port, server.backlog) for _ in range(self.slots)]
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", server.host, server.port, exc.strerror or exc)
            return 1
        try:
            edge_verifier(self.config)  # reads the signing keys (generating one on first run) before any worker
        except SigningKeyError as exc:
            log.error("%s", exc)
            return 1
        self._reloading = asyncio.Lock()
        self._finalize_logs(pid=None)
        admin = self._admin_server(BearerCheck(admin_token))
        listeners = [(admin, "admin", admin_config.host, admin_config.port)]
        if self.probes is not None and admin_config.probe_port is not None:
            listeners.append((self.probes, "probes", admin_config.probe_host, admin_config.probe_port))
        for index, (listening, what, host, port) in enumerate(listeners):
            try:
                await listening.start(host, port)
            except OSError as exc:
                log.error("cannot listen on %s %s:%d: %s", what, host, port, exc.strerror or exc)
                for started, *_ in listeners[:index]:
                    started.close()
                return 1
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._request_shutdown)
        loop.add_signal_handler(signal.SIGINT, self._request_shutdown)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        self.shipping.start()
        self.dashboard.start()
        for slot in range(self.slots):
            self._spawn_or_retry(slot)
        self._check_stranded_later()
        watchdog = loop.create_task(self._watch_stalls())
        log.info(
            "trackpoint listening on %s:%d with %d workers (config %s, version %s); admin on %s:%d",
            server.host,
            server.port,
            self.slots,
            self.loaded.source,
            self.loaded.version,
            self.config.admin.host,
            self.config.admin.port,
        )
        log.info(
            "admin token: %s (send it as Authorization: Bearer; the probes /healthz, /readyz and /startupz need none)",
            f"environment variable {admin_config.token_env}"
            if admin_config.token_env is not None
            else token_path(admin_config, self.config.data_dir),
        )
        await self._stopped.wait()
        watchdog.cancel()
        await self._drain_all()
        await self.shipping.stop()  # after the drain: the files the workers just finished ship too
        admin.close()
        if self.probes is not None:
            self.probes.close()
        for sock in self.sockets:
            sock.close()
        log.info("trackpoint stopped")
        return 0

    def _request_shutdown(self) -> None:
        """SIGTERM or SIGINT: /readyz fails from now on, and the drain begins after server.shutdown_delay_s (the
        workers serve meanwhile, while a load balancer notices), at once on a second signal."""
        if self.shutting_down:
            self._drain_now()
            return
        self.shutting_down = True
        delay = self.config.server.shutdown_delay_s
        if delay > 0:
            log.info(
                "stopping: draining in %g s (server.shutdown_delay_s), serving meanwhile with /readyz failing; "
                "a second signal drains at once",
                delay,
            )
            asyncio.get_running_loop().call_later(delay, self._drain_now)
        else:
            self._drain_now()

    @property
    def draining(self) -> bool:
        """The drain has begun: workers are being retired and none is started any more (shutting_down is set from
        the signal on, shutdown_delay_s earlier)."""
        return self._stopped.is_set()

    def _drain_now(self) -> None:
        if not self._stopped.is_set():
            log.info("draining: finishing in-flight requests and flushing collectors")
            self._stopped.set()

    async def _drain_all(self) -> None:
        handles = self._every_worker()
        for handle in handles:
            self._retire(handle)
        # No worker will accept again. Kept open, the listening sockets would queue the connections that still
        # arrive (a load balancer yet to forget this tracker) for the whole drain, then reset them: closed once the
        # workers close theirs, such a connection is refused at once and can be retried on another tracker.
        for sock in self.sockets:
            sock.close()
        waits = [handle.exited for handle in handles if handle.exited is not None]
        if waits:
            _, late = await asyncio.wait(waits, timeout=self.config.server.drain_timeout_s + STOP_GRACE_S)
            for handle in handles:
                if handle.process.poll() is None:
                    log.error("worker %d did not drain in time; killing it", handle.slot)
                    handle.process.kill()
            if late:
                await asyncio.wait(late, timeout=5)

    async def _claim_data_dir(self) -> bool:
        """Takes the data_dir lock (claim_data_dir), or says why not. Workers that outlive a killed supervisor hold
        it while they finish their requests and flush their collectors (a drain timeout each): they are waited for,
        since what they answer is written there."""
        waited_s = 2 * self.config.server.drain_timeout_s + 5
        deadline = time.monotonic() + waited_s
        warned = False
        while True:
            try:
                self._data_dir_lock = claim_data_dir(self.config.data_dir)
                return True
            except DataDirDraining as exc:
                if time.monotonic() >= deadline:
                    log.error("%s, still after %.0f s: one tracker per data_dir", exc, waited_s)
                    return False
                if not warned:
                    log.warning("%s: waiting for them to finish (at most %.0f s)", exc, waited_s)
                    warned = True
                await asyncio.sleep(0.1)
            except DataDirInUse as exc:
                log.error("%s: one tracker per data_dir", exc)
                return False
            except OSError as exc:
                log.error("cannot use data_dir %s: %s", self.config.data_dir, exc.strerror or exc)
                return False

    # --- workers -------------------------------------------------------------------------------------------------

    def _spawn(self, slot: int, version: str, probation: bool = False) -> WorkerHandle:
        """Starts a worker; OSError (EMFILE, ENOMEM, EAGAIN...) when it cannot, with nothing left open."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        listen_fd = self.sockets[slot].fileno()
        try:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "trackpoint.process.worker",
                    "--slot",
                    str(slot),
                    "--listen-fd",
                    str(listen_fd),
                    "--control-fd",
                    str(child.fileno()),
                ],
                # The data_dir lock too: held while any worker lives, even one that outlives this process.
                pass_fds=(listen_fd, child.fileno(), *(() if self._data_dir_lock is None else (self._data_dir_lock,))),
            )
        except OSError:
            parent.close()
            raise
        finally:
            child.close()
        loop = asyncio.get_running_loop()
        handle = WorkerHandle(slot=slot, process=process, ready=loop.create_future(), probation=probation)
        control.send_start(parent, control.Start.of(self.config, version, slot))
        if not probation:  # a reload waits for its new workers itself
            timeout = self.config.server.worker_start_timeout_s
            handle.start_timer = loop.call_later(timeout, self._start_timed_out, handle, timeout)
        handle.exited = loop.create_task(self._follow(handle, parent))
        handle.exited.add_done_callback(functools.partial(self._followed, handle))
        self.workers.setdefault(slot, handle)
        return handle

    async def _follow(self, handle: WorkerHandle, channel: socket.socket) -> None:
        """Reads a worker's messages until it exits, then accounts for it and restarts it if it died (or was stopped
        for a problem)."""
        reader, writer = await asyncio.open_unix_connection(sock=channel)
        handle.channel = writer
        clean = await self._read(handle, reader)
        handle.channel = None
        writer.close()
        for timer in (handle.start_timer, handle.kill_timer):
            if timer is not None:
                timer.cancel()
        code = await asyncio.get_running_loop().run_in_executor(None, handle.process.wait)
        self._bury(handle)
        failed_start = not handle.ready.done()
        if not clean and not failed_start:
            self._undelivered(handle, code)
        if failed_start:
            reason = f": {handle.failure.error}" if handle.failure is not None else ""
            handle.ready.set_exception(RuntimeError(f"worker {handle.slot} exited with {code} before ready{reason}"))
            # Marked as seen: a restart or a reload awaiting it gets it, and a failed start is logged below
            # (_failed_start), not by asyncio at exit for a first start or one stopped by a shutdown.
            handle.ready.exception()
        # Whatever its exit: a clean one can leave files too (a compression that failed, a reload from
        # compression none), finished now that no process writes or compresses them; off the loop (it compresses).
        await asyncio.get_running_loop().run_in_executor(None, self._finalize_logs, handle.process.pid)
        if handle.retiring and not self.retiring and not self.draining:
            self._check_stranded_later()  # a reload's old workers are gone: their spools are closed
        # Until the drain begins a dead worker is replaced, shutdown_delay_s included: the port still takes
        # connections then, and with no worker to accept them they would wait unanswered for the whole delay.
        if handle.retiring or self.draining or (failed_start and handle.probation):
            return  # (a reload whose worker failed says so, and keeps the running one)
        if failed_start:
            self._failed_start(handle, code)
        elif handle.problem is not None:  # logged when it was stopped
            log.info("worker %d (pid %d) exited with code %s; starting another", handle.slot, handle.process.pid, code)
        elif not clean:
            log.error("worker %d (pid %d) died with exit code %s", handle.slot, handle.process.pid, code)
        await self._restart(handle.slot, clean)

    def _undelivered(self, handle: WorkerHandle, code: int) -> None:
        """A worker that ended without its goodbye (killed, crashed, stopped for a wedge) took with it what its
        collectors held in memory and had not delivered (their spools stay, for the next worker). Every acknowledged
        event is in the log: counted here (what its last report held in memory, a floor: it took more in its last
        second) and logged with the replay that refills those collectors."""
        held = {name: stats for name, stats in handle.snapshot.collectors.items() if stats.pending > 0}
        if not held:
            return
        for name, stats in held.items():
            self.state.undelivered[name] = self.state.undelivered.get(name, 0) + stats.pending
        # Delivery is in order: what was still held came after the last batch delivered, which was cut at most
        # send_timeout_s before it was; a collector that delivered nothing since its worker started holds all since.
        since = min(
            (stats.last_success_s or handle.started_at) - self._send_timeout_s(name) for name, stats in held.items()
        )
        logs = [
            str(log_dir(self.config.data_dir, collector))
            for collector in collectors_in_use(self.config, LogCollectorConfig).values()
        ]
        counts = ", ".join(f"{name} {stats.pending:,}" for name, stats in sorted(held.items()))
        refill = " ".join(
            [
                "trackpoint replay",
                *(["--config", str(self.config_path)] if self.config_path else []),
                *(logs or ["<log dir>"]),
                *(f"--collector {name}" for name in sorted(held)),
                "--since",
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(since))),
            ]
        )
        log.error(
            "worker %d (pid %d) ended without draining (exit code %s): events its collectors held in memory were not "
            "delivered (at least: %s); the log has them, refill with `%s` (consumers dedupe on the event id)",
            handle.slot, handle.process.pid, code, counts, refill,
        )  # fmt: skip

    def _send_timeout_s(self, collector: str) -> float:
        config = self.config.collectors.get(collector)  # None: a reload removed it since; the option's default
        return config.send_timeout_s if config is not None else 30.0

    async def _read(self, handle: WorkerHandle, reader: asyncio.StreamReader) -> bool:
        """Handles a worker's messages until its channel ends; whether it said goodbye (a clean exit). Whatever the
        worker sends, this goes on until the worker has exited, or it would be neither accounted for nor restarted:
        a frame that is not a message is skipped (the channel is still in sync), and a channel that cannot be read on
        (a frame over the limit, or a read error) stops the worker, to start another, and is read to its end."""
        clean = False
        while True:
            try:
                message = await control.receive(reader)
            except control.Undecodable as exc:
                handle.heard_at = time.monotonic()  # its loop runs all the same
                self._skipped(handle, "undecodable", str(exc))
                continue
            except OSError as exc:  # ChannelBroken among them
                log.error(
                    "worker %d (pid %d): %s; stopping it and starting another",
                    handle.slot,
                    handle.process.pid,
                    exc,
                )
                self._stop(handle, "channel_broken", str(exc))
                with contextlib.suppress(OSError):
                    while await reader.read(1 << 16):
                        pass
                return False
            if message is None:
                return clean
            handle.heard_at = time.monotonic()
            clean = self._on_message(handle, message) or clean

    def _on_message(self, handle: WorkerHandle, message: control.FromWorker) -> bool:
        """Takes in one message of a worker; True for its goodbye."""
        if isinstance(message, control.Ready):
            handle.snapshot = message.snapshot
            if handle.problem is not None:  # ready after it was stopped (too late): it still exits
                return False
            if handle.start_timer is not None:
                handle.start_timer.cancel()
            if not handle.ready.done():
                handle.ready.set_result(None)
            self._started(handle.slot)
            self._count_ready()
            if self.tail_watched:
                self._command(handle, control.Tail(watched=True))
        elif isinstance(message, control.Stats):
            handle.snapshot = message.snapshot
            handle.rss_bytes = message.rss_bytes
            if self.workers.get(handle.slot) is handle:
                self.state.worker_rss[handle.slot] = message.rss_bytes
                limit_mb = self.config.server.worker_max_memory_mb
                if limit_mb and message.rss_bytes > limit_mb << 20 and handle.serving and not handle.recycling:
                    handle.recycling = True
                    task = asyncio.get_running_loop().create_task(self._recycle(handle, limit_mb))
                    self._retries.add(task)
                    task.add_done_callback(self._retries.discard)
            events, errors = control.recent_events(message.recent)
            self.recent.extend(events)
            if errors:
                self._skipped(handle, "recent_event", f"an event of its dashboard sample: {errors[0]}", len(errors))
        elif isinstance(message, control.Failed):
            handle.failure = message
        else:
            handle.snapshot = message.snapshot
            return True
        return False

    @property
    def tail_watched(self) -> bool:
        return self._tail_expiry is not None

    def watch_tail(self) -> None:
        """Someone reads the dashboard: its live tail is watched for TAIL_WATCH_S more, and the workers are told when
        it starts. While no one watches, they leave their newest events out of their reports (control.Tail)."""
        self._tail_watched_until = time.monotonic() + TAIL_WATCH_S
        if self._tail_expiry is None:
            self._tail_expiry = asyncio.get_running_loop().call_later(TAIL_WATCH_S, self._tail_expired)
            self._command_all(control.Tail(watched=True))

    def _tail_expired(self) -> None:
        left = self._tail_watched_until - time.monotonic()
        if left > 0:  # read again meanwhile
            self._tail_expiry = asyncio.get_running_loop().call_later(left, self._tail_expired)
            return
        self._tail_expiry = None
        self._command_all(control.Tail(watched=False))

    def _command_all(self, command: control.Command) -> None:
        """Sends every serving worker a command (one not ready yet is told on its Ready; a retiring one needs none)."""
        for handle in [*self.workers.values(), *self.replacing.values()]:
            if handle.ready.done() and not handle.ready.exception():
                self._command(handle, command)

    def _command(self, handle: WorkerHandle, command: control.Command) -> None:
        """Sends a worker a command, if its channel is still open (a worker that is gone has no use for it)."""
        if handle.channel is not None and not handle.channel.is_closing():
            with contextlib.suppress(ConnectionError, RuntimeError):  # RuntimeError: uvloop's closed transport
                handle.channel.write(control.frame(command))

    def _skipped(self, handle: WorkerHandle, reason: str, detail: str, count: int = 1) -> None:
        """Counts what could not be decoded of a worker's messages, and logs it (limited: a worker may send one a
        second for as long as it runs)."""
        self.state.messages_skipped[reason] = self.state.messages_skipped.get(reason, 0) + count
        self._skipped_log.log(
            log,
            logging.ERROR,
            reason,
            "worker %d (pid %d) sent what does not decode, skipped (trackpoint_worker_messages_skipped_total"
            "{reason=%s}): %s",
            handle.slot,
            handle.process.pid,
            reason,
            detail,
        )

    def _followed(self, handle: WorkerHandle, following: asyncio.Task[None]) -> None:
        """Says at once if following a worker failed (a bug): asyncio would say it only at exit."""
        if not following.cancelled() and following.exception() is not None:
            log.error(
                "worker %d (pid %d): following it failed",
                handle.slot,
                handle.process.pid,
                exc_info=following.exception(),
            )

    def _stop(self, handle: WorkerHandle, problem: str, detail: str) -> None:
        """Stops a worker that is alive but failing (SIGTERM, SIGKILL drain_timeout_s + STOP_GRACE_S later), not
        ready from now on; once it has exited, _follow starts another (with the backoff of a crash loop) and keeps
        its counters, as for any dead worker."""
        if handle.problem is not None or handle.retiring:
            return
        handle.problem, handle.problem_detail = problem, detail
        self.state.worker_stops[problem] = self.state.worker_stops.get(problem, 0) + 1
        self._count_ready()
        if handle.process.poll() is None:
            handle.process.send_signal(signal.SIGTERM)
            grace = self.config.server.drain_timeout_s + STOP_GRACE_S
            handle.kill_timer = asyncio.get_running_loop().call_later(grace, self._kill, handle, grace)

    def _kill(self, handle: WorkerHandle, grace: float) -> None:
        if handle.process.poll() is None:
            log.error(
                "worker %d (pid %d) did not exit %g s after SIGTERM; killing it", handle.slot, handle.process.pid, grace
            )
            handle.process.kill()

    async def _recycle(self, handle: WorkerHandle, limit_mb: int) -> None:
        """Replaces a worker grown past server.worker_max_memory_mb without a gap: a new worker for its slot (on the
        same socket) first, then the old one drains, as a reload does for one slot. If the new one does not start, the
        old one goes on serving and the next report past the limit tries again."""
        assert self._reloading is not None
        async with self._reloading:  # not while a reload replaces every worker
            slot = handle.slot
            if self.shutting_down or self.workers.get(slot) is not handle or not handle.serving:
                return  # it died, was stopped, or a reload replaced it meanwhile
            log.warning(
                "worker %d (pid %d) uses %d MiB, past server.worker_max_memory_mb (%d): replacing it",
                slot, handle.process.pid, handle.rss_bytes >> 20, limit_mb,
            )  # fmt: skip
            del self.workers[slot]
            self.replacing[slot] = handle  # serving (and counted ready) until the new one is
            try:
                fresh = self._spawn(slot, self.loaded.version, probation=True)
                await asyncio.wait_for(asyncio.shield(fresh.ready), self.config.server.worker_start_timeout_s)
            except Exception as exc:  # not started, or not ready in time: the old one stays
                if self.replacing.get(slot) is handle:
                    del self.replacing[slot]
                if self.workers.get(slot) is not None and self.workers[slot] is not handle:
                    self._retire(self.workers[slot])
                if handle.process.poll() is None and not self.shutting_down:
                    self.workers[slot] = handle
                    handle.recycling = False
                elif not self.shutting_down:
                    self._spawn_or_retry(slot)
                self._count_ready()
                log.error("worker %d: its replacement did not start (%s); the running worker stays", slot, exc)
                return
            if self.replacing.get(slot) is handle:
                del self.replacing[slot]
            self._retire(handle)
            self.state.worker_recycled += 1
            self._count_ready()

    def _start_timed_out(self, handle: WorkerHandle, timeout: float) -> None:
        """A worker not ready worker_start_timeout_s after it was started (a plugin's start that never returns) is a
        failed start: logged with its slot at once, stopped, and started again with backoff (a crash loop from its
        second time, in /healthz)."""
        if handle.ready.done() or handle.retiring or self.draining:
            return
        handle.failure = control.Failed(
            error=f"not ready {timeout:g} s after it was started (server.worker_start_timeout_s)", traceback=""
        )
        self._log_start_failure(handle.slot, handle.failure)
        self._stop(handle, "start_timeout", handle.failure.error)

    async def _watch_stalls(self) -> None:
        """Stops (and so restarts) a serving worker that sent nothing for worker_stall_timeout_s: its event loop is
        blocked, and so is every request it accepted. A check that comes late (this loop was held up) is skipped:
        the reports that waited meanwhile are read first."""
        while True:
            interval = min(1.0, self.config.server.worker_stall_timeout_s / 4)
            due = time.monotonic() + interval
            await asyncio.sleep(interval)
            if time.monotonic() - due < interval:
                self._check_stalls()

    def _check_stalls(self) -> None:
        timeout = self.config.server.worker_stall_timeout_s
        now = time.monotonic()
        for handle in [*self.workers.values(), *self.replacing.values()]:
            silent_s = now - handle.heard_at
            if handle.serving and silent_s > timeout:
                detail = (
                    f"no report for {silent_s:.1f} s (server.worker_stall_timeout_s: {timeout:g}): its loop is blocked"
                )
                log.error(
                    "worker %d (pid %d) stalled, %s; stopping it and starting another",
                    handle.slot,
                    handle.process.pid,
                    detail,
                )
                self._stop(handle, "stalled", detail)

    def _failed_start(self, handle: WorkerHandle, code: int) -> None:
        """A worker died before it was ready: counted, and logged once per streak of the same error (a crash loop
        restarts it with backoff for as long as it lasts, and its log must not drown everything else)."""
        slot = handle.slot
        self.failed_starts[slot] += 1
        if self.failed_starts[slot] == CRASH_LOOP_STARTS:
            self._stop_listening(slot)
        self._log_start_failure(
            slot, handle.failure or control.Failed(error=f"exited with code {code} before it was ready", traceback="")
        )

    def _log_start_failure(self, slot: int, failure: control.Failed) -> None:
        if failure.error != self.start_errors[slot]:
            self.start_errors[slot] = failure.error
            log.error(
                "worker %d failed to start: %s; restarting it with backoff, /healthz failing until it starts "
                "(logged once while the error stays the same)%s",
                slot,
                failure.error,
                "\n" + failure.traceback.rstrip() if failure.traceback else "",
            )

    def _stop_listening(self, slot: int) -> None:
        """A crash-looping slot gives its share of new connections to the other workers: its listening socket
        (with the connections queued on it, which would wait for a worker that does not come) is replaced by a
        bound one that listens once a worker starts serving it."""
        server = self.config.server
        try:
            replacement = listener(server.host, server.port, backlog=None)
        except OSError as exc:
            log.error("worker %d: cannot rebind %s:%d: %s", slot, server.host, server.port, exc.strerror or exc)
            return
        self.sockets[slot].close()
        self.sockets[slot] = replacement

    def _started(self, slot: int) -> None:
        if self.failed_starts[slot]:
            log.info("worker %d started after %d failed starts", slot, self.failed_starts[slot])
        self.failed_starts[slot] = 0
        self.start_errors[slot] = None
        self.backoff_s[slot] = 0.0

    def worker_problems(self) -> list[dict[str, object]]:
        """The workers being stopped, to start others, and why (/readyz)."""
        return [
            {"slot": h.slot, "pid": h.process.pid, "problem": h.problem, "detail": h.problem_detail}
            for h in self._every_worker()
            if h.problem is not None
        ]

    def crash_loops(self) -> list[dict[str, object]]:
        """The slots whose worker keeps failing at start, with the last error and the backoff before the next try."""
        return [
            {
                "slot": slot,
                "failed_starts": self.failed_starts[slot],
                "error": self.start_errors[slot],
                "backoff_s": self.backoff_s[slot],
            }
            for slot in range(self.slots)
            if self.failed_starts[slot] >= CRASH_LOOP_STARTS
        ]

    def _bury(self, handle: WorkerHandle) -> None:
        """Keeps an exited worker's counters so the totals stay monotonic; its gauges stop counting."""
        self.retired = add(self.retired, counters_only(handle.snapshot))
        self.retiring.discard(handle)
        if self.workers.get(handle.slot) is handle:
            del self.workers[handle.slot]
        if self.replacing.get(handle.slot) is handle:
            del self.replacing[handle.slot]
        self._count_ready()

    def _spawn_or_retry(self, slot: int) -> None:
        """Starts a slot's worker; one that cannot be started now (out of descriptors, memory or processes) is
        logged at once and retried with backoff until it starts."""
        try:
            self._spawn(slot, self.loaded.version)
        except OSError as exc:
            self._spawn_failed(slot, exc)
            self._retry_later(slot)

    def _spawn_failed(self, slot: int, exc: OSError) -> None:
        self.state.spawn_failures += 1
        log.error("worker %d: cannot start a process: %s; retrying with backoff", slot, exc.strerror or exc)

    def _retry_later(self, slot: int) -> None:
        task = asyncio.get_running_loop().create_task(self._restart(slot, clean=False))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _restart(self, slot: int, clean: bool) -> None:
        while True:
            attempt = self.restart_counts[slot]
            self.restart_counts[slot] += 1
            delay = self.backoff_s[slot] = RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)]
            await asyncio.sleep(delay)
            if self.draining or slot in self.workers:
                return
            self.state.restarts += 1
            self.slot_restarts[slot] += 1
            try:
                handle = self._spawn(slot, self.loaded.version)
            except OSError as exc:  # e.g. EMFILE: the slot must not stay empty, so try again after the backoff
                self._spawn_failed(slot, exc)
                continue
            try:  # ready, or failed: by its exit, or its start timeout (_start_timed_out)
                await asyncio.shield(handle.ready)
                self.restart_counts[slot] = 0
            except RuntimeError:
                pass
            return

    def _retire(self, handle: WorkerHandle) -> None:
        """Stops a worker no longer wanted (replaced by a reload or a recycle, or the tracker stopping): SIGTERM, its
        drain, and SIGKILL drain_timeout_s + STOP_GRACE_S later if it has not exited (one wedged in a plugin cannot
        act on SIGTERM, and ran on, holding its memory and its connections, for good)."""
        handle.retiring = True
        if self.workers.get(handle.slot) is handle:
            del self.workers[handle.slot]
        self.retiring.add(handle)
        if handle.process.poll() is None:
            handle.process.send_signal(signal.SIGTERM)
            if handle.kill_timer is None:
                grace = self.config.server.drain_timeout_s + STOP_GRACE_S
                handle.kill_timer = asyncio.get_running_loop().call_later(grace, self._kill, handle, grace)

    def _every_worker(self) -> list[WorkerHandle]:
        """Every worker process still running: serving, being replaced by a reload, or draining."""
        return [*self.workers.values(), *self.replacing.values(), *self.retiring]

    def _count_ready(self) -> None:
        """Slots with a worker serving: its own, or during a reload the one it replaces, until the reload ends."""
        self.state.workers_ready = sum(
            1
            for slot in range(self.slots)
            if any(h is not None and h.serving for h in (self.workers.get(slot), self.replacing.get(slot)))
        )

    # --- reload --------------------------------------------------------------------------------------------------

    async def reload(self) -> None:
        """New workers with the new configuration first; old workers drain only once all new ones are ready."""
        assert self._reloading is not None
        async with self._reloading:
            if self.shutting_down:
                return
            try:
                loaded = load(self.config_path, registry=self.plugins)
                resolve_secrets(loaded)  # a secret gone missing refuses the reload, not the new workers
            except ConfigError as exc:
                self.state.reload_failures += 1
                log.error("reload refused, keeping the running configuration:\n%s", exc)
                return
            except Exception:  # a bug in reading it: refused and counted all the same, never a dead reload task
                self.state.reload_failures += 1
                log.exception("reload refused, keeping the running configuration: it could not be read")
                return
            config = self._keep_listening(self.overrides.apply(loaded.config))
            previous = (self.config, self.loaded)
            self.config, self.loaded = config, loaded
            # Until the new workers are ready the old ones go on serving: /readyz, the counters and a shutdown
            # still see them (`replacing`).
            self.replacing, self.workers = self.workers, {}
            fresh: list[WorkerHandle] = []
            try:
                fresh.extend(self._spawn(slot, loaded.version, probation=True) for slot in range(self.slots))
                await asyncio.wait_for(
                    asyncio.gather(*(asyncio.shield(h.ready) for h in fresh)), config.server.worker_start_timeout_s
                )
            except Exception as exc:  # not ready in time, or not even started: the running workers stay
                old = list(self.replacing.values())  # less any that died meanwhile
                self.replacing = {}
                self.config, self.loaded = previous
                for handle in fresh:
                    self._retire(handle)
                if self.shutting_down:  # the drain stops old and new workers alike: not a failed reload
                    log.info("reload abandoned: shutting down")
                    return
                log.error("reload failed, new workers not ready (%s); keeping the running workers", exc)
                self.state.reload_failures += 1
                self.workers = {h.slot: h for h in old}
                for slot in range(self.slots):
                    if slot not in self.workers:  # its old worker died during the reload
                        self._spawn_or_retry(slot)
                self._count_ready()
                return
            old = list(self.replacing.values())
            self.replacing = {}
            for handle in old:
                self._retire(handle)
            self._count_ready()
            self.state.reloads += 1
            log.info("reloaded configuration %s (version %s)", loaded.source, loaded.version)

    def _keep_listening(self, config: Config) -> Config:
        """Sockets and the admin port outlive reloads: changing them needs a restart, and we say so."""
        server, admin = self.config.server, self.config.admin
        if (
            (config.server.host, config.server.port) != (server.host, server.port)
            or (config.server.workers != server.workers)
            or (config.admin.host, config.admin.port) != (admin.host, admin.port)
        ):
            log.warning("host, port, workers and admin address change only on restart; keeping the current ones")
        return msgspec.structs.replace(
            config,
            server=msgspec.structs.replace(config.server, host=server.host, port=server.port, workers=server.workers),
            admin=admin,
        )

    # --- logs ----------------------------------------------------------------------------------------------------

    def _finalize_logs(self, pid: int | None) -> None:
        """Compresses the plain log files that exited workers left (at start: all of them; after any exit: that
        worker's), with the current configuration's codec, and removes their compression temporaries: only then are
        they shippable. A file that fails (a full disk) stays plain and is tried again at the next start."""
        for collector in self.config.collectors.values():
            if isinstance(collector, LogCollectorConfig):
                directory: Path = log_dir(self.config.data_dir, collector)
                try:
                    finalize_orphans(directory, pid, collector.compression, collector.compression_level)
                except OSError as exc:
                    log.error("cannot finalize log files in %s: %s", directory, exc)

    # --- spools --------------------------------------------------------------------------------------------------

    def _check_stranded_later(self) -> None:
        task = asyncio.get_running_loop().create_task(self._check_stranded())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _check_stranded(self) -> None:
        """Spools that no worker of the running configuration drains: a collector removed by a reload (or whose
        spool it turned off) while its target was down leaves its backlog there. Counted in
        trackpoint_spool_stranded_{events,bytes} and logged once per directory, with the way to recover it."""
        drained = {name for name, collector in self.config.collectors.items() if collector.spool.enabled}
        parent = Path(self.config.data_dir) / "spool"
        try:
            found = await asyncio.get_running_loop().run_in_executor(None, _stranded_spools, parent, drained)
        except OSError as exc:
            log.error("cannot look for stranded spools in %s: %s", parent, exc.strerror or exc)
            return
        totals: dict[str, tuple[int, int]] = {}
        for name, directory, events, size in found:
            held = totals.get(name, (0, 0))
            totals[name] = (held[0] + events, held[1] + size)
            if directory not in self._stranded_logged:
                self._stranded_logged.add(directory)
                log.warning(
                    "collector %s is not in the configuration (or has its spool off), and its spool %s holds %d "
                    "events (%d bytes) that no worker will send: they are in the log, so `trackpoint replay "
                    "--config <the previous configuration> --collector %s` sends them; then remove the directory "
                    "(counted in trackpoint_spool_stranded_events)",
                    name,
                    directory,
                    events,
                    size,
                    name,
                )
        self.state.stranded_spools = totals

    # --- admin ---------------------------------------------------------------------------------------------------

    def totals(self) -> Snapshot:
        total = self.retired
        for handle in self._every_worker():
            total = add(total, handle.snapshot)
        return total

    def _admin_server(self, auth: BearerCheck | None = None) -> AdminServer:
        """The admin server (and the probe listener's, kept in `probes`), reading this supervisor as its `Tracker`."""
        prometheus = metrics.registry(self.totals, self.state)
        prometheus.register(self.shipping.metrics())
        prometheus.register(LogDiskMetrics(lambda: self.config))
        prometheus.register(metrics.CollectorInfo(lambda: self.config))
        admin, self.probes = admin_servers(
            self, self.config.admin, auth, self.plugins.admin_routes, prometheus, more_core=self.dashboard.handlers
        )
        self.state.admin_connections = admin.counts
        return admin

    # --- what the admin port reads (admin/core.py: Tracker) ------------------------------------------------------

    @property
    def workers_ready(self) -> int:
        return self.state.workers_ready

    @property
    def config_version(self) -> str:
        return self.loaded.version

    @property
    def configuration(self) -> Config:
        return self.loaded.config

    def serving(self) -> Snapshot:
        live = Snapshot()
        for handle in [*self.workers.values(), *self.replacing.values()]:
            live = add(live, handle.snapshot)
        return live

    def openapi_json(self) -> bytes:
        """Built on the first request after each reload."""
        version = self.loaded.version
        if version not in self._openapi:
            self._openapi.clear()
            self._openapi[version] = openapi_json(replace(self.loaded, config=self.config), self.plugins)
        return self._openapi[version]


def _stranded_spools(parent: Path, drained: set[str]) -> list[tuple[str, Path, int, int]]:
    """(collector, directory, events, bytes) of every spool under `parent` that holds events, belongs to no collector
    in `drained` and that no process holds."""
    if not parent.is_dir():
        return []
    found = []
    for collector in sorted(parent.iterdir()):
        if collector.name in drained or not collector.is_dir():
            continue
        for directory in orphans(collector):
            events, size = backlog(directory)
            if events:
                found.append((collector.name, directory, events, size))
    return found


def raise_fd_limit() -> None:
    """Raises the soft RLIMIT_NOFILE to the hard limit: the supervisor's descriptors (workers' channels, admin
    connections, log files) must not run out at a default soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the file descriptor limit from %d to %d: %s", soft, hard, exc)


def run(loaded: LoadedConfig, config_path: str | None, overrides: Overrides, plugins: Registry) -> int:
    import uvloop

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return uvloop.run(Supervisor(loaded, config_path, overrides, plugins).run())
