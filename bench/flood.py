"""Resilience benchmark: valid traffic at 5,000 req/s next to a malformed flood, a slowloris and a connection flood.

Each scenario runs against its own tracker (one worker pinned to core 0, as in run.py) while wrk sends paced valid
impressions with unique ids from core 1; the attack comes from an asyncio client process, also on core 1:

* malformed: random bytes, oversized request lines and headers, invalid parameters and request smuggling
  (Content-Length with Transfer-Encoding, duplicate Content-Length, `chunkedx`, ...) as fast as the client goes.
  Every smuggling attempt must get one 400 and a close, never two responses, and no smuggled event may be logged;
* slowloris: waves of 1,000 connections that send a partial header line and stall; each must be closed at the
  header timeout (no earlier, at most 20% later);
* connection flood: many more connections than `max_connections`; the surplus gets 503 and the worker's RSS stays
  bounded.

After each: no valid request failed, every valid response's event is in the log, valid p99 < 10 ms.
Run ``.venv/bin/python bench/flood.py [--quick] [--record]``; results go to bench/results/flood.json with
``--record``, else to the temp directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import multiprocessing
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harness import (
    LOAD_CPU,
    PACED_UNIQUE_LUA,
    RESULTS_DIR,
    SERVER_CPU,
    HarnessError,
    Service,
    WrkResult,
    free_ports,
    git_state,
    pinned,
    rss_mb,
    run_wrk,
    start_service,
    wait_ready,
    worker_pid,
)
from report import (
    write_report,
)
from trackpoint.collectors.log.reader import read_events
from trackpoint.config import model

FLOOD_JSON = RESULTS_DIR / "flood.json"
REPO_ROOT = Path(__file__).resolve().parent.parent
TRACKER_BIN = REPO_ROOT / ".venv" / "bin" / "trackpoint"

VALID_CONNECTIONS = 60  # x (10 ms pacing + ~1.5 ms response) ≈ 5,200 req/s
VALID_DELAY_MS = 10
VALID_TARGET_RPS = 5_000
TARGET_VALID_P99_MS = 10.0
HEADER_TIMEOUT_S = 2.0
TIMEOUT_SLACK = 1.2  # a stalled connection is closed within +20% of the header timeout
SLOWLORIS_CONNECTIONS = 1_000
FLOOD_MAX_CONNECTIONS = 500
FLOOD_OPEN = 2_000  # connections the connection flood keeps trying to hold
TARGET_FLOOD_RSS_MB = 100.0
MALFORMED_CONCURRENCY = 64
READ_TIMEOUT_S = HEADER_TIMEOUT_S * 2
ATTACK_NICE = 10  # wrk keeps the valid rate; the attack client takes what is left of core 1
# Bad signatures join the flood when the tracker has signed URLs: an event type that requires them, one key.
SIGNING = hasattr(model, "SigningConfig")
SIGNING_ENV = "TRACKPOINT_FLOOD_SIGNING_KEY"


FORM = b"POST /conv HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n"
SMUGGLED = b"GET /i?imp=smuggled-%d HTTP/1.1\r\nHost: t\r\n\r\n"
SMUGGLING_KINDS = {
    "smuggle_cl_te": FORM + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "smuggle_te_cl": FORM + b"Transfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n",
    "smuggle_dup_cl": FORM + b"Content-Length: 7\r\nContent-Length: 0\r\n\r\nvalue=1",
    "smuggle_chunkedx": FORM + b"Transfer-Encoding: chunkedx\r\n\r\n7\r\nvalue=1\r\n0\r\n\r\n",
    "smuggle_te_space": FORM + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
}
INVALID_PARAMS = [
    b"/win?imp=x&price=abc",
    b"/i?cid=no-imp",
    b"/i?imp=%ff%fe",
    b"/c?imp=x&url=https%3A%2F%2Fevil.test%2F",
    b"/v?imp=x&ev=notAnEvent",
    b"/nope",
]


def malformed(kind: str, number: int, rng: random.Random) -> bytes:
    """One attempt of a kind; smuggling attempts carry a second, never-to-be-parsed request with a unique id."""
    if kind in SMUGGLING_KINDS:
        return SMUGGLING_KINDS[kind] + SMUGGLED % number
    if kind == "random_bytes":
        return rng.randbytes(rng.randint(16, 2048))
    if kind == "oversized_line":
        return b"GET /i?imp=" + b"x" * 20_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"
    if kind == "oversized_headers":
        return b"GET /i?imp=o HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 40_000 + b"\r\n\r\n"
    if kind == "too_many_headers":
        return b"GET /i?imp=o HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(300)) + b"\r\n"
    if kind == "bad_signature":  # a forged signature, or a key the tracker does not have
        kid = b"k1" if number % 2 else b"nope"
        target = b"/s?imp=sig-%d&kid=%s&sig=AAAAAAAAAAAAAAAAAAAAAA" % (number, kid)
    else:
        target = INVALID_PARAMS[number % len(INVALID_PARAMS)]
    return b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


MALFORMED_KINDS = [
    "random_bytes",
    "oversized_line",
    "oversized_headers",
    "too_many_headers",
    "invalid_params",
    *(["bad_signature"] if SIGNING else []),
    *SMUGGLING_KINDS,
]


# --------------------------------------------------------------------------- the attacking client (core 1)


@dataclass
class KindStats:
    attempts: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    closed: int = 0  # the server closed the connection (EOF or reset)
    reset: int = 0
    two_responses: int = 0
    no_answer: int = 0
    violations: int = 0  # smuggling attempts not answered by exactly one 400 and a close


def _status(answer: bytes) -> str:
    return answer[9:12].decode("ascii", "replace") if answer.startswith(b"HTTP/1.1 ") else "none"


async def _attempt(port: int, payload: bytes) -> tuple[bytes, bool, bool]:
    """Sends `payload` on a new connection; (answer, closed by the server, reset)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = b""
    try:
        writer.write(payload)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        try:
            answer = await asyncio.wait_for(reader.read(-1), READ_TIMEOUT_S)  # until EOF
        except TimeoutError:
            return answer, False, False
        except ConnectionError:
            return answer, True, True
        return answer, True, False
    finally:
        writer.close()


async def _malformed_flood(port: int, duration_s: float) -> dict[str, Any]:
    stats = {kind: KindStats() for kind in MALFORMED_KINDS}
    deadline = time.monotonic() + duration_s
    counter = 0

    async def worker(seed: int) -> None:
        nonlocal counter
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            counter += 1
            kind = MALFORMED_KINDS[counter % len(MALFORMED_KINDS)]
            entry = stats[kind]
            entry.attempts += 1
            try:
                answer, closed, reset = await _attempt(port, malformed(kind, counter, rng))
            except OSError:  # connect refused / reset while connecting
                answer, closed, reset = b"", True, True
            status = _status(answer)
            entry.statuses[status] = entry.statuses.get(status, 0) + 1
            entry.closed += closed
            entry.reset += reset
            responses = answer.count(b"HTTP/1.1 ")
            entry.two_responses += responses > 1
            entry.no_answer += responses == 0
            if kind in SMUGGLING_KINDS and not (
                status == "400" and responses == 1 and closed and b"Connection: close\r\n" in answer
            ):
                entry.violations += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(seed) for seed in range(MALFORMED_CONCURRENCY)))
    elapsed = time.monotonic() - started
    attempts = sum(entry.attempts for entry in stats.values())
    return {"seconds": elapsed, "attempts": attempts, "rate": attempts / elapsed, "kinds": {
        kind: asdict(entry) for kind, entry in stats.items()
    }}  # fmt: skip


async def _stall(port: int, number: int) -> tuple[float | None, str]:
    """One slowloris connection: a partial header line, then nothing; (seconds until closed, status)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None, "connect_failed"
    try:
        writer.write(b"GET /i?imp=stall-%d HTTP/1.1\r\nHost: t\r\nX-Stalled: aaaa" % number)  # no line end
        sent = time.monotonic()
        try:
            answer = await asyncio.wait_for(reader.read(-1), HEADER_TIMEOUT_S * 3)
        except TimeoutError:
            return None, "never_closed"
        except ConnectionError:
            return time.monotonic() - sent, "reset"
        return time.monotonic() - sent, _status(answer)
    finally:
        writer.close()


async def _slowloris(port: int, duration_s: float) -> dict[str, Any]:
    closed_after: list[float] = []
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + duration_s
    waves = 0
    while time.monotonic() < deadline:
        waves += 1
        results = await asyncio.gather(*(_stall(port, n) for n in range(SLOWLORIS_CONNECTIONS)))
        for seconds, status in results:
            outcomes[status] += 1
            if seconds is not None:
                closed_after.append(seconds)
    closed_after.sort()
    low, high = HEADER_TIMEOUT_S, HEADER_TIMEOUT_S * TIMEOUT_SLACK
    return {
        "waves": waves,
        "connections": SLOWLORIS_CONNECTIONS * waves,
        "outcomes": dict(outcomes),
        "closed_min_s": closed_after[0] if closed_after else None,
        "closed_p50_s": statistics.median(closed_after) if closed_after else None,
        "closed_p99_s": closed_after[int(0.99 * (len(closed_after) - 1))] if closed_after else None,
        "closed_max_s": closed_after[-1] if closed_after else None,
        "outside_window": sum(not low * 0.98 <= s <= high for s in closed_after)
        + (SLOWLORIS_CONNECTIONS * waves - len(closed_after)),
    }


async def _hold(port: int) -> str:
    """One connection of the connection flood: connect and wait for the server's verdict."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "connect_failed"
    try:
        try:
            answer = await asyncio.wait_for(reader.read(-1), HEADER_TIMEOUT_S * 3)
        except TimeoutError:
            return "never_closed"
        except ConnectionError:
            return "reset"
        if not answer:
            return "accepted_then_idle_closed"  # a silent connection is closed at the header timeout
        return "503" if _status(answer) == "503" and b"too_many_connections" in answer else _status(answer)
    finally:
        writer.close()


async def _connection_flood(port: int, duration_s: float) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + duration_s
    slots = asyncio.Semaphore(FLOOD_OPEN)

    async def one() -> None:
        try:
            outcomes[await _hold(port)] += 1
        finally:
            slots.release()

    tasks = set()
    started = time.monotonic()
    while time.monotonic() < deadline:
        await slots.acquire()
        task = asyncio.ensure_future(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    total = sum(outcomes.values())
    return {"connections": total, "rate": total / (time.monotonic() - started), "outcomes": dict(outcomes)}


ATTACKS: dict[str, Callable[[int, float], Any]] = {
    "malformed": _malformed_flood,
    "slowloris": _slowloris,
    "connection_flood": _connection_flood,
}


def _attack_process(attack: str, port: int, duration_s: float, results: Connection) -> None:
    os.sched_setaffinity(0, {LOAD_CPU})
    os.nice(ATTACK_NICE)
    import uvloop

    results.send(uvloop.run(ATTACKS[attack](port, duration_s)))
    results.close()


def run_attack(attack: str, port: int, duration_s: float) -> dict[str, Any]:
    receive, send = multiprocessing.get_context("fork").Pipe(duplex=False)
    process = multiprocessing.get_context("fork").Process(
        target=_attack_process, args=(attack, port, duration_s, send), daemon=True
    )
    process.start()
    send.close()
    if not receive.poll(duration_s + HEADER_TIMEOUT_S * 4 + 60):
        process.kill()
        raise HarnessError(f"the {attack} client did not report")
    result: dict[str, Any] = receive.recv()
    process.join(10)
    return result


# --------------------------------------------------------------------------- tracker and scenarios


@contextlib.contextmanager
def tracker(workdir: Path, max_connections: int) -> Iterator[tuple[Service, int]]:
    port, admin_port = free_ports(2)
    workdir.mkdir(parents=True, exist_ok=True)
    limits = {"header_timeout_s": HEADER_TIMEOUT_S, "max_connections": max_connections}
    config: dict[str, Any] = {"data_dir": str(workdir / "data"), "server": {"limits": limits}}
    if SIGNING:
        os.environ.setdefault(SIGNING_ENV, os.urandom(16).hex())  # inherited by the tracker
        config["signing"] = {"keys": {"k1": {"secret_env": SIGNING_ENV}}}
        defaults = ("impression", "click", "conversion", "video", "win")  # a file's event_types replace these
        config["event_types"] = {name: {"preset": name} for name in defaults} | {
            "signed": {"preset": "impression", "paths": ["/s"], "signature": "required"}
        }
    (workdir / "trackpoint.yaml").write_text(json.dumps(config))  # JSON is YAML
    argv = [*pinned(SERVER_CPU), str(TRACKER_BIN), "run", "-w", "1", "-p", str(port), "--admin-port"]
    argv += [str(admin_port), "-c", str(workdir / "trackpoint.yaml")]
    with start_service("tracker", f"http://127.0.0.1:{port}/", argv, workdir, signal.SIGTERM) as service:
        wait_ready(service, f"http://127.0.0.1:{admin_port}/readyz")
        yield service, port


@dataclass(frozen=True)
class Scenario:
    name: str
    valid: WrkResult
    logged_valid: int  # events of the valid traffic found in the log
    smuggled_logged: int  # events of smuggled second requests found in the log (must be 0)
    forged_logged: int  # events of badly signed requests found in the log (must be 0)
    rss_idle_mb: float
    rss_max_mb: float
    rss_after_mb: float
    tracker_exit_code: int | None
    attack: dict[str, Any]

    @property
    def lost(self) -> int:
        return max(0, self.valid.requests - self.valid.non_2xx - self.logged_valid)


def run_scenario(name: str, workdir: Path, duration_s: int, max_connections: int, console: Console) -> Scenario:
    script = workdir / f"{name}.lua"
    script.write_text(PACED_UNIQUE_LUA.format(delay_ms=VALID_DELAY_MS, prefix=name))
    console.print(f"[bold]{name}[/]: ~{VALID_TARGET_RPS:,} valid req/s for {duration_s}s")
    rss_samples: list[float] = []
    with tracker(workdir / name, max_connections) as (service, port):
        pid = worker_pid(service)
        rss_idle = rss_mb(pid)
        results: list[WrkResult] = []
        errors: list[BaseException] = []

        def valid_load() -> None:
            try:
                results.append(run_wrk(service.url, duration_s, VALID_CONNECTIONS, script))
            except BaseException as exc:  # reported in the main thread
                errors.append(exc)

        load = threading.Thread(target=valid_load, daemon=True)
        load.start()
        sampling = threading.Event()

        def sample_rss() -> None:
            while not sampling.is_set():
                with contextlib.suppress(HarnessError, OSError):
                    rss_samples.append(rss_mb(pid))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        time.sleep(1)
        attack = {}
        if name in ATTACKS:
            attack = run_attack(name, port, max(1.0, duration_s - 2 - (HEADER_TIMEOUT_S if name != "malformed" else 0)))
        load.join(duration_s + 120)
        sampling.set()
        sampler.join()
        rss_after = rss_mb(pid)
        service.stop(signal.SIGTERM)  # drains: every answered event is in the log
    if errors:
        raise HarnessError(f"valid load failed: {errors[0]}")
    if not results:
        raise HarnessError("the valid load did not finish")
    prefix = f"{name}-"
    valid_ids: set[str] = set()
    smuggled = forged = 0
    for event in read_events([workdir / name / "data" / "logs"]):
        imp = event.dims.get("imp", "")
        if imp.startswith(prefix):
            valid_ids.add(event.id)
        elif imp.startswith("smuggled"):
            smuggled += 1
        elif imp.startswith("sig-"):
            forged += 1
    return Scenario(
        name=name,
        valid=results[0],
        logged_valid=len(valid_ids),
        smuggled_logged=smuggled,
        forged_logged=forged,
        rss_idle_mb=rss_idle,
        rss_max_mb=max(rss_samples, default=rss_after),
        rss_after_mb=rss_after,
        tracker_exit_code=service.exit_code,
        attack=attack,
    )


# --------------------------------------------------------------------------- judging and report


def checks(scenarios: list[Scenario]) -> list[tuple[str, str, bool]]:
    found: list[tuple[str, str, bool]] = []
    for s in scenarios:
        v = s.valid
        found += [
            (
                f"{s.name}: valid rate ≥ 95% of {VALID_TARGET_RPS:,} req/s",
                f"{v.rps:,.0f} req/s",
                v.rps >= 0.95 * VALID_TARGET_RPS,
            ),
            (f"{s.name}: valid requests failed", f"{v.non_2xx} non-2xx, {v.socket_errors} socket errors", not v.errors),
            (f"{s.name}: valid events logged", f"{s.logged_valid:,} of {v.requests:,} answered", s.lost == 0),
            (
                f"{s.name}: valid p99 < {TARGET_VALID_P99_MS:g} ms",
                f"{v.latency_p99_ms:.2f} ms",
                v.latency_p99_ms < TARGET_VALID_P99_MS,
            ),
            (f"{s.name}: tracker exit code", str(s.tracker_exit_code), s.tracker_exit_code == 0),
        ]
        attack = s.attack
        if s.name == "baseline":
            continue
        if s.name == "malformed":
            kinds = attack["kinds"]
            violations = sum(kinds[k]["violations"] for k in SMUGGLING_KINDS)
            attempts = sum(kinds[k]["attempts"] for k in SMUGGLING_KINDS)
            found.append(
                ("malformed: smuggling → one 400 + close", f"{violations} of {attempts:,} not", not violations)
            )
            found.append(("malformed: smuggled requests logged", str(s.smuggled_logged), s.smuggled_logged == 0))
            fives = sum(int(count) for k in kinds.values() for st, count in k["statuses"].items() if st[:1] == "5")
            found.append(("malformed: 5xx answers", str(fives), fives == 0))
            if "bad_signature" in kinds:
                forged = kinds["bad_signature"]
                refused = forged["statuses"].get("403", 0)
                found.append(
                    (
                        "malformed: bad signatures refused 403, none logged",
                        f"{refused:,} of {forged['attempts']:,}; {s.forged_logged} logged",
                        refused == forged["attempts"] and s.forged_logged == 0,
                    )
                )
        elif s.name == "slowloris":
            window = f"[{HEADER_TIMEOUT_S:g}, {HEADER_TIMEOUT_S * TIMEOUT_SLACK:g}] s"
            found.append(
                (
                    f"slowloris: closed within {window}",
                    f"{attack['outside_window']} of {attack['connections']:,} outside "
                    f"(min {attack['closed_min_s'] or 0:.2f}, max {attack['closed_max_s'] or 0:.2f} s)",
                    attack["outside_window"] == 0,
                )
            )
        else:
            over = attack["outcomes"].get("503", 0)
            found.append(("connection flood: surplus answered 503", f"{over:,} answered 503", over > 0))
            found.append(
                (
                    f"connection flood: worker RSS < {TARGET_FLOOD_RSS_MB:g} MB",
                    f"{s.rss_idle_mb:.1f} → max {s.rss_max_mb:.1f} → {s.rss_after_mb:.1f} MB",
                    s.rss_max_mb < TARGET_FLOOD_RSS_MB,
                )
            )
    return found


def print_report(console: Console, scenarios: list[Scenario], results: list[tuple[str, str, bool]]) -> None:
    table = Table(title="valid traffic under attack")
    for column in ("scenario", "req/s", "requests", "p50 ms", "p99 ms", "max ms", "errors", "logged", "attack"):
        table.add_column(column, justify="left" if column in ("scenario", "attack") else "right")
    for s in scenarios:
        v = s.valid
        attack = s.attack
        if s.name == "baseline":
            summary = "none: this machine's latency floor for the valid load"
        elif s.name == "malformed":
            summary = f"{attack['attempts']:,} attempts, {attack['rate']:,.0f}/s"
        elif s.name == "slowloris":
            summary = f"{attack['connections']:,} stalled in {attack['waves']} waves"
        else:
            summary = f"{attack['connections']:,} connections, {attack['rate']:,.0f}/s: {attack['outcomes']}"
        table.add_row(
            s.name,
            f"{v.rps:,.0f}",
            f"{v.requests:,}",
            f"{v.latency_p50_ms:.2f}",
            f"{v.latency_p99_ms:.2f}",
            f"{v.latency_max_ms:.1f}",
            str(v.errors),
            f"{s.logged_valid:,}",
            summary,
        )
    console.print(table)
    kinds = Table(title="malformed flood by kind")
    for column in ("kind", "attempts", "answers", "closed", "resets", "two responses", "violations"):
        kinds.add_column(column, justify="left" if column in ("kind", "answers") else "right")
    for s in scenarios:
        if s.name == "malformed":
            for kind, k in s.attack["kinds"].items():
                answers = ", ".join(f"{status}: {count:,}" for status, count in sorted(k["statuses"].items()))
                kinds.add_row(
                    kind, f"{k['attempts']:,}", answers, f"{k['closed']:,}", f"{k['reset']:,}",
                    str(k["two_responses"]), str(k["violations"]),
                )  # fmt: skip
    console.print(kinds)
    verdicts = Table(title="checks")
    for column in ("check", "result", ""):
        verdicts.add_column(column)
    for name, value, passed in results:
        verdicts.add_row(name, value, "[green]ok[/]" if passed else "[red]missed[/]")
    console.print(verdicts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short scenarios (CI, under a minute)")
    parser.add_argument("--record", action="store_true", help="write the results into bench/results")
    parser.add_argument("--duration", type=int, help="seconds of valid load per scenario (default 30, quick 10)")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 140)
    duration_s = args.duration or (8 if args.quick else 30)
    plan = [
        ("baseline", 10_000),
        ("malformed", 10_000),
        ("slowloris", 5_000),
        ("connection_flood", FLOOD_MAX_CONNECTIONS),
    ]
    scenarios: list[Scenario] = []
    try:
        with tempfile.TemporaryDirectory(prefix="trackpoint-flood-") as tmp:
            for name, max_connections in plan:
                scenarios.append(run_scenario(name, Path(tmp), duration_s, max_connections, console))
                time.sleep(1)
    except HarnessError as exc:
        console.print(f"[bold red]benchmark failed[/]: {exc}")
        return 1
    results = checks(scenarios)
    print_report(console, scenarios, results)
    commit, dirty = git_state()
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": {"commit": commit, "dirty": dirty},
        "quick": args.quick,
        "duration_s": duration_s,
        "header_timeout_s": HEADER_TIMEOUT_S,
        "scenarios": [asdict(s) | {"lost": s.lost} for s in scenarios],
        "checks": [{"name": name, "value": value, "passed": passed} for name, value, passed in results],
    }
    out = write_report(report, FLOOD_JSON.name, args.record)
    missed = sum(not passed for _, _, passed in results)
    console.print(f"{'all checks met' if not missed else f'{missed} checks missed'}; results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
