"""Crash tests: a request that got its 2xx is an event on record, when workers are killed with SIGKILL under load and
when the log's disk is full (issue 12). Both start a real tracker and read its log back with the project's reader.

Before the edge wrote an event's line ahead of its answer, both failed (1,126 of 105,513 acknowledged impressions
missing after 6 kills; 2,911 of 3,000 answered 2xx without their line on a full disk): they detect the loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conformance.target_redis_streams import RedisStreamsTarget
from conftest import CHROME_UA, Tracker

KILLS = 6
CONNECTIONS = 8
ACKS_BETWEEN_KILLS = 300  # the replacement worker serves this many more 2xx before the next kill
READY_TIMEOUT_S = 20.0
LOG_REASON_PREFIX = "log_"  # the reasons of a request refused because its line could not be written


# --------------------------------------------------------------------------- the client


@dataclass
class Answer:
    status: int
    reason: str  # X-Reject-Reason, "" when absent
    closes: bool


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str) -> Answer:
    """One request on a keep-alive connection, its whole response read."""
    writer.write(f"GET {target} HTTP/1.1\r\nHost: t\r\nUser-Agent: {CHROME_UA}\r\n\r\n".encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in head[1:])}
    await reader.readexactly(int(headers.get("content-length", "0")))
    closes = headers.get("connection", "").lower() == "close"
    return Answer(int(head[0].split()[1]), headers.get("x-reject-reason", ""), closes)


@dataclass
class ImpressionLoad:
    """Keep-alive connections sending impressions with distinct ids; every answer is recorded, errors reconnect."""

    port: int
    acknowledged: list[str] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)  # "<status> <reason>" of every non-2xx answer
    broken: int = 0  # requests that got no answer (the worker died under them): not acknowledged
    running: bool = True

    async def connection(self, number: int) -> None:
        sequence = 0
        while self.running:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.01)  # the kernel queue of a dying worker; the next connect goes elsewhere
                continue
            try:
                while self.running:
                    imp = f"k{number}-{sequence}"
                    sequence += 1
                    answer = await exchange(reader, writer, f"/i?imp={imp}&cid=c1&crid=cr1&pub=p1")
                    if 200 <= answer.status < 300:
                        self.acknowledged.append(imp)
                    else:
                        self.refused[f"{answer.status} {answer.reason}"] += 1
                    if answer.closes:
                        break
            except (OSError, asyncio.IncompleteReadError):
                self.broken += 1
            finally:
                writer.close()

    async def until_acknowledged(self, count: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.acknowledged) < count:
            assert time.monotonic() < deadline, f"only {len(self.acknowledged)} of {count} requests acknowledged"
            await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- SIGKILL


async def kill_workers_under_load(tracker: Tracker, load: ImpressionLoad) -> list[int]:
    """SIGKILLs a worker KILLS times, alternating slots, each time once its replacement is ready and serving."""
    killed = []
    for kill in range(KILLS):
        await load.until_acknowledged(len(load.acknowledged) + ACKS_BETWEEN_KILLS)
        pids = sorted(tracker.worker_pids())
        victim = pids[kill % len(pids)]
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while victim in (alive := tracker.worker_pids()) or len(alive) < tracker.workers:
            assert time.monotonic() < deadline, f"worker {victim} not replaced:\n{tracker.output()}"
            await asyncio.sleep(0.02)
        await asyncio.to_thread(tracker.wait_ready, READY_TIMEOUT_S)
    await load.until_acknowledged(len(load.acknowledged) + ACKS_BETWEEN_KILLS)
    return killed


async def load_while_killing(tracker: Tracker) -> tuple[ImpressionLoad, list[int]]:
    load = ImpressionLoad(tracker.port)
    clients = [asyncio.create_task(load.connection(n)) for n in range(CONNECTIONS)]
    try:
        killed = await kill_workers_under_load(tracker, load)
    finally:
        load.running = False
        await asyncio.gather(*clients)
    return load, killed


def test_sigkilled_workers_lose_no_acknowledged_event(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory(workers=2)
    load, killed = asyncio.run(load_while_killing(tracker))
    assert len(set(killed)) == KILLS
    assert tracker.wait_metric("trackpoint_worker_restarts_total", "", KILLS) == KILLS
    assert tracker.stop() == 0, tracker.output()

    logged = {event.dims["imp"] for event in tracker.events()}
    missing = [imp for imp in load.acknowledged if imp not in logged]
    assert len(load.acknowledged) >= (KILLS + 1) * ACKS_BETWEEN_KILLS
    assert not missing, (
        f"{len(missing)} of {len(load.acknowledged)} acknowledged impressions are not in the log after {KILLS} "
        f"SIGKILLs (first: {missing[:5]}); {load.broken} requests got no answer, refused: {dict(load.refused)}"
    )


# --------------------------------------------------------------------------- full disk


LOG_DISK_SIZE = "2m"
HEADROOM = 32 << 10  # bytes left for log lines once the disk is "full": about 80 impressions
MAX_REQUESTS_WHILE_FULL = 3_000  # far past the headroom: the disk is full long before
REFUSALS_TO_STOP = 20  # consecutive refusals that show the tracker noticed


class FullLogDisk:
    """Makes the log's writes fail: a 2 MiB tmpfs mounted on the log directory and filled (ENOSPC), or where
    mounting is not allowed, a file size limit on the workers (EFBIG from RLIMIT_FSIZE)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        logs.mkdir(parents=True)
        mount = ["mount", "-t", "tmpfs", "-o", f"size={LOG_DISK_SIZE}", "tmpfs", str(logs)]
        self.mounted = subprocess.run(mount, capture_output=True, check=False).returncode == 0
        self.how = f"ENOSPC on a {LOG_DISK_SIZE} tmpfs" if self.mounted else "EFBIG from RLIMIT_FSIZE"
        self.filler = logs / "filler.bin"  # not an events-* file: readers do not see it

    def fill(self, tracker: Tracker) -> None:
        if self.mounted:
            disk = os.statvfs(self.logs)
            self.filler.write_bytes(b"\0" * max(0, disk.f_bavail * disk.f_frsize - HEADROOM))
            return
        limit = sum(path.stat().st_size for path in self.logs.iterdir()) + HEADROOM
        for pid in tracker.worker_pids():
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))  # soft: can be raised

    def free(self, tracker: Tracker) -> None:
        if self.mounted:
            self.filler.unlink(missing_ok=True)
            return
        for pid in tracker.worker_pids():
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.logs)], check=True)


@pytest.fixture
def tracker_on_small_disk(tmp_path: Path) -> Iterator[tuple[Tracker, FullLogDisk]]:
    tracker = Tracker(tmp_path, {}, workers=1)
    disk = FullLogDisk(tracker.data_dir / "logs")
    try:
        tracker.start()
        yield tracker, disk
    finally:
        if tracker.process is not None and tracker.process.poll() is None:
            with contextlib.suppress(OSError):  # a failed test must not leave the tracker draining into a full disk
                disk.free(tracker)
            with contextlib.suppress(AssertionError):
                tracker.stop()
        disk.close()


def logged_imps(tracker: Tracker) -> set[str]:
    return {event.dims["imp"] for event in tracker.events()}


def send(tracker: Tracker, imps: Iterator[str]) -> list[tuple[str, Answer]]:
    """Impressions one after the other on one keep-alive connection until REFUSALS_TO_STOP in a row are refused."""

    async def run() -> list[tuple[str, Answer]]:
        answers: list[tuple[str, Answer]] = []
        reader, writer = await asyncio.open_connection("127.0.0.1", tracker.port)
        try:
            refusals = 0
            for imp in imps:
                answer = await exchange(reader, writer, f"/i?imp={imp}&cid=c1")
                answers.append((imp, answer))
                refusals = 0 if 200 <= answer.status < 300 else refusals + 1
                if refusals >= REFUSALS_TO_STOP or answer.closes:
                    break
        finally:
            writer.close()
        return answers

    return asyncio.run(run())


def wait_readyz(tracker: Tracker, status: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (got := tracker.admin("GET", "/readyz")[0]) != status:
        assert time.monotonic() < deadline, f"/readyz answered {got}, not {status}, for {timeout_s}s"
        time.sleep(0.05)


def test_a_full_log_disk_refuses_requests_and_recovers(tracker_on_small_disk: tuple[Tracker, FullLogDisk]) -> None:
    tracker, disk = tracker_on_small_disk
    before = send(tracker, (f"before-{n}" for n in range(20)))
    assert [answer.status for _, answer in before] == [200] * 20
    tracker.wait_events(len(before))  # the log file exists before the disk fills
    assert {imp for imp, _ in before} <= logged_imps(tracker)

    disk.fill(tracker)
    full = send(tracker, (f"full-{n}" for n in range(MAX_REQUESTS_WHILE_FULL)))
    acknowledged = [imp for imp, answer in full if 200 <= answer.status < 300]
    refused = Counter(f"{answer.status} {answer.reason}" for _, answer in full if not 200 <= answer.status < 300)
    # Checked before any space comes back: an acknowledged event's line is already written, not waiting in memory.
    unrecorded = [imp for imp in acknowledged if imp not in logged_imps(tracker)]
    assert not unrecorded, (
        f"{disk.how}: {len(unrecorded)} of {len(acknowledged)} requests answered 2xx are not in the log "
        f"(first: {unrecorded[:5]}); refused: {dict(refused)}"
    )
    assert refused, f"{disk.how}: all {len(full)} requests answered 2xx"
    assert all(key.startswith(f"503 {LOG_REASON_PREFIX}") for key in refused), f"{disk.how}: {dict(refused)}"
    reasons = {key.split()[1] for key in refused}
    counted = sum(
        tracker.wait_metric("trackpoint_rejected_total", f'reason="{r}"', refused[f"503 {r}"]) for r in reasons
    )
    assert counted == sum(refused.values())
    wait_readyz(tracker, 503)

    disk.free(tracker)
    deadline = time.monotonic() + 15
    recovered: list[tuple[str, Answer]] = []
    while not recovered or recovered[-1][1].status != 200:
        assert time.monotonic() < deadline, f"{disk.how}: still refused after space was freed: {recovered[-3:]}"
        recovered += send(tracker, iter([f"retry-{len(recovered)}"]))
        time.sleep(0.05)
    after = send(tracker, (f"after-{n}" for n in range(20)))
    assert [answer.status for _, answer in after] == [200] * 20
    wait_readyz(tracker, 200)
    assert tracker.stop() == 0, tracker.output()

    acknowledged += [imp for imp, answer in [*before, *recovered, *after] if answer.status == 200]
    assert not [imp for imp in acknowledged if imp not in logged_imps(tracker)]


def test_durability_power_answers_pipelined_requests_in_order_across_rotations(tracker_factory: Any) -> None:
    """Under `durability: power` answers wait for the fsync of their group: pipelined requests on several
    connections, with files rotating every few lines, are all answered in order and all on record."""
    log = {"type": "log", "durability": "power", "rotate_bytes": 4096, "compression": "none"}
    tracker: Tracker = tracker_factory({"collectors": {"log": log}})

    async def client(number: int) -> list[int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", tracker.port)
        statuses: list[int] = []
        for batch in range(10):
            imps = [f"power-{number}-{batch}-{i}" for i in range(8)]
            writer.write(b"".join(f"GET /i?imp={imp} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for imp in imps))
            for _ in imps:
                answer = await exchange_answer(reader)
                statuses.append(answer)
        writer.close()
        return statuses

    async def main() -> list[list[int]]:
        return list(await asyncio.gather(*(client(n) for n in range(4))))

    results = asyncio.run(main())
    assert all(statuses == [200] * 80 for statuses in results)
    logged = [event.dims["imp"] for event in tracker.events()]
    assert sorted(logged) == sorted(f"power-{n}-{b}-{i}" for n in range(4) for b in range(10) for i in range(8))
    assert len(list((tracker.data_dir / "logs").iterdir())) > 5  # the lines spanned many rotations


async def exchange_answer(reader: asyncio.StreamReader) -> int:
    """The status of the next whole answer on the connection (its body read past)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")), 0)
    await reader.readexactly(length)
    return int(lines[0].split()[1])


@pytest.mark.timeout(120)
def test_a_killed_worker_says_what_its_collectors_held_and_how_to_refill_them(tracker_factory: Any) -> None:
    """A worker SIGKILLed while a queue target is down took its collector's memory batch with it: the supervisor
    counts those events (trackpoint_collector_undelivered_at_exit_total) and logs the replay that refills the
    target; that very command, once the target is up, delivers every acknowledged event."""
    target = RedisStreamsTarget()  # its port reserved, its server not started yet: the target is down
    stream = target.collector_config() | {"spool": {"enabled": False}, "retry_max_ms": 200}
    impression = {"preset": "impression", "collectors": ["log", "queue"]}
    tracker: Tracker = tracker_factory({
        "collectors": {"log": {"type": "log", "fsync": "none"}, "queue": stream},
        "event_types": {"impression": impression},
    })  # fmt: skip
    try:
        for number in range(40):
            assert tracker.get(f"/i?imp=held-{number}")[0] == 200
        (worker,) = tracker.worker_pids()
        assert tracker.wait_metric("trackpoint_requests_total", "", 40) == 40
        time.sleep(1.2)  # a report of the worker's taken after the 40
        os.kill(worker, signal.SIGKILL)
        assert tracker.wait_metric("trackpoint_collector_undelivered_at_exit_total", 'collector="queue"', 40) == 40
        tracker.wait_ready(READY_TIMEOUT_S)
        line = next(line for line in tracker.output().splitlines() if "ended without draining" in line)
        assert f"pid {worker}" in line and "at least: queue 40" in line, line
        command = line.split("refill with `", 1)[1].split("`", 1)[0]
        logs = tracker.data_dir / "logs"
        expected = f"trackpoint replay --config {tracker.config_path} {logs} --collector queue --since "
        assert command.startswith(expected), line
        asyncio.run(target.server.start())
        replay = subprocess.run(
            [sys.executable, "-m", "trackpoint", *command.split()[1:], "--json"],  # the command as logged
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert replay.returncode == 0, replay.stdout + replay.stderr
        ids = asyncio.run(target.read_ids())
        logged = {event.id for event in tracker.events()}
        assert len(logged) == 40 and set(ids) == logged
    finally:
        asyncio.run(target.close())
