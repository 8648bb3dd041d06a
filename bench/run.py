"""Benchmark harness for trackpoint: tracker vs. a reference nginx ``empty_gif``.

What lives here, top to bottom:

* constants: CPU pinning, load shapes, pass/fail targets, file locations;
* result types (``WrkResult``, ``WorkerMemory``, ``Check``, ``BenchRun``, ...);
* ``wrk`` invocation and parsing of its text output (``--latency``);
* process management: the tracker (one worker, temp ``data_dir``) and a
  throw-away nginx, both pinned to core 0, always stopped on exit;
* the scenarios: saturating throughput for both targets, a paced
  ~2,000 req/s "brief load" on the tracker, worker RSS after the throughput run;
* reporting: ``bench/results/latest.json``, ``history.json``, ``latest.png``
  and a rich summary table on stdout.

Run ``.venv/bin/python bench/run.py [--duration S] [--quick] [--record]``.
Exit status is 0 whenever the benchmark ran, even if targets were missed;
1 when the harness itself failed (a server did not start, wrk missing, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
LATEST_JSON = RESULTS_DIR / "latest.json"
LATEST_PNG = RESULTS_DIR / "latest.png"
HISTORY_JSON = RESULTS_DIR / "history.json"

SERVER_CPU = 0  # tracker supervisor + worker, nginx master + worker
LOAD_CPU = 1  # wrk
USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
PIXEL_PATH = "/i?imp=bench-imp-0001&cid=cmp-42&crid=crv-7&pub=pub-1001"
GIF_SIZE = 43

FULL_DURATION_S = 30
FULL_BRIEF_DURATION_S = 15
QUICK_DURATION_S = 5
THROUGHPUT_CONNECTIONS = 64
BRIEF_CONNECTIONS = 20
BRIEF_TARGET_RPS = 2_000
SETTLE_S = 1.0  # pause between scenarios

MAX_FOREIGN_CPU_PCT = 10.0  # CPU of processes outside the benchmark, in % of one core

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
WRK_GRACE_S = 60
MIN_RUN_SHARE = 0.9  # a wrk run shorter than this share of its duration is not a result

TARGET_TRACKER_RPS = 35_000.0
TARGET_RATIO_PCT = 35.0
TARGET_BRIEF_P99_MS = 2.0
TARGET_BRIEF_AVG_MS = 1.0
TARGET_RSS_MB = 80.0
MEMORY_SOAK_REQUESTS = 1_000_000  # the worker's RSS is read after this many requests (full runs)
SOAK_RATE_SHARE = 0.8  # wrk's Lua request() costs it some rate: plan the soak for this share

# multiprocessing helpers that may show up as children of the supervisor
HELPER_MARKERS = ("resource_tracker", "forkserver", "semaphore_tracker")
CLK_TCK = os.sysconf("SC_CLK_TCK")

HTTP_ERRORS = (OSError, http.client.HTTPException)
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never use a proxy


class HarnessError(Exception):
    """The benchmark could not be carried out (not: a target was missed)."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class WrkResult:
    """One wrk run, latencies in milliseconds."""

    requests: int
    duration_s: float
    rps: float
    latency_avg_ms: float
    latency_p50_ms: float
    latency_p75_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    socket_errors: int
    non_2xx: int

    @property
    def errors(self) -> int:
        return self.socket_errors + self.non_2xx


@dataclass(frozen=True)
class WorkerMemory:
    """Resident memory of the tracker's worker process."""

    pid: int
    cpu_affinity: list[int]
    rss_idle_mb: float
    rss_mb: float
    requests_served: int


@dataclass(frozen=True)
class BriefLoad:
    """The paced scenario: its shape and what wrk measured."""

    connections: int
    delay_ms: int
    target_rps: int
    result: WrkResult


@dataclass(frozen=True)
class BenchRun:
    """Everything measured in one run, before judging it."""

    tracker: WrkResult
    nginx: WrkResult
    brief: BriefLoad
    nginx_brief: BriefLoad  # the same paced load on nginx: this machine's latency floor
    memory: WorkerMemory
    tracker_exit_code: int | None
    foreign_cpu_pct: float
    warnings: list[str]

    @property
    def scenarios(self) -> list[tuple[str, WrkResult]]:
        return [
            ("nginx throughput", self.nginx),
            ("tracker throughput", self.tracker),
            ("tracker brief load", self.brief.result),
            ("nginx brief load", self.nginx_brief.result),
        ]

    @property
    def ratio_pct(self) -> float:
        return 100.0 * self.tracker.rps / self.nginx.rps if self.nginx.rps else 0.0


@dataclass(frozen=True)
class Check:
    """One pass/fail target."""

    name: str
    value: float
    op: str
    threshold: float
    unit: str
    passed: bool


@dataclass(frozen=True)
class MachineInfo:
    nproc: int
    cpu_model: str
    kernel: str
    python: str
    wrk: str
    nginx: str


@dataclass(frozen=True)
class Settings:
    duration_s: int
    brief_duration_s: int
    warmup_s: int
    quick: bool
    record: bool
    tracker_bin: Path


# --------------------------------------------------------------------------- wrk

_TIME_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_TIME_UNITS = "|".join(_TIME_UNIT_MS)  # "ms" is tried before "m"
_TIME = rf"[\d.]+(?:{_TIME_UNITS})"
_LATENCY_RE = re.compile(rf"^\s*Latency\s+({_TIME})\s+{_TIME}\s+({_TIME})", re.M)
_PERCENTILE_RE = re.compile(rf"^\s*(\d+)%\s+({_TIME})\s*$", re.M)
_REQUESTS_RE = re.compile(rf"^\s*(\d+) requests in ({_TIME}),", re.M)
_RPS_RE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_SOCKET_ERRORS_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX_RE = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def to_ms(text: str) -> float:
    """Convert a wrk duration such as ``812.00us``, ``1.25ms`` or ``2.00s`` to ms."""
    match = re.fullmatch(rf"([\d.]+)({_TIME_UNITS})", text.strip())
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return round(float(match.group(1)) * _TIME_UNIT_MS[match.group(2)], 6)  # no float noise


def _search(pattern: re.Pattern[str], output: str, what: str) -> re.Match[str]:
    match = pattern.search(output)
    if match is None:
        raise HarnessError(f"could not find {what} in wrk output:\n{output}")
    return match


def parse_wrk(output: str) -> WrkResult:
    """Parse the text report of ``wrk --latency``."""
    latency = _search(_LATENCY_RE, output, "the latency line")
    requests = _search(_REQUESTS_RE, output, "the request count")
    rps = _search(_RPS_RE, output, "Requests/sec")
    percentiles = {int(p): to_ms(t) for p, t in _PERCENTILE_RE.findall(output)}
    missing = {50, 75, 90, 99} - percentiles.keys()
    if missing:
        raise HarnessError(f"wrk output lacks percentiles {sorted(missing)}:\n{output}")
    socket_errors = _SOCKET_ERRORS_RE.search(output)
    non_2xx = _NON_2XX_RE.search(output)
    return WrkResult(
        requests=int(requests.group(1)),
        duration_s=round(to_ms(requests.group(2)) / 1e3, 3),
        rps=float(rps.group(1)),
        latency_avg_ms=to_ms(latency.group(1)),
        latency_p50_ms=percentiles[50],
        latency_p75_ms=percentiles[75],
        latency_p90_ms=percentiles[90],
        latency_p99_ms=percentiles[99],
        latency_max_ms=to_ms(latency.group(2)),
        socket_errors=sum(map(int, socket_errors.groups())) if socket_errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def pinned(cpu: int) -> list[str]:
    """Command prefix that runs a program on one CPU core."""
    return ["taskset", "-c", str(cpu)]


def run_wrk(url: str, duration_s: int, connections: int, script: Path | None = None) -> WrkResult:
    """Run wrk on the load core against ``url`` and parse its report."""
    argv = [
        *pinned(LOAD_CPU),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
        "-H",
        f"User-Agent: {USER_AGENT}",
        *(["-s", str(script)] if script else []),
        url,
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + WRK_GRACE_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"wrk did not finish: {' '.join(argv)}") from exc
    if done.returncode != 0:
        raise HarnessError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    result = parse_wrk(done.stdout)
    if result.duration_s < MIN_RUN_SHARE * duration_s:  # e.g. wrk got a SIGINT of its own
        raise HarnessError(f"wrk stopped after {result.duration_s:.1f} of {duration_s}s")
    return result


PACING_LUA = """\
-- generated by bench/run.py: every connection waits {delay_ms} ms before each request
function delay()
  return {delay_ms}
end
"""


def write_pacing_script(path: Path, delay_ms: int) -> Path:
    """wrk Lua script making each connection wait ``delay_ms`` between requests."""
    path.write_text(PACING_LUA.format(delay_ms=delay_ms))
    return path


UNIQUE_IMP_LUA = """\
-- generated by bench/run.py: every request carries a new impression id, as real traffic does
local counter = 0
function request()
  counter = counter + 1
  return wrk.format(nil, "/i?imp={prefix}-" .. counter .. "&cid=c1&crid=cr9&pub=pub7")
end
"""


PACED_UNIQUE_LUA = """\
-- generated by the trackpoint benchmark: paced requests, each with a new impression id
local counter = 0
function delay()
  return {delay_ms}
end
function request()
  counter = counter + 1
  return wrk.format(nil, "/i?imp={prefix}-" .. counter .. "&cid=c1&crid=cr9&pub=p7")
end
"""


def write_unique_imp_script(path: Path, prefix: str = "soak") -> Path:
    """wrk Lua script giving every request its own impression id (and so its own event id), `<prefix>-<n>`."""
    path.write_text(UNIQUE_IMP_LUA.format(prefix=prefix))
    return path


def write_report(report: dict[str, Any], name: str, record: bool) -> Path:
    """A benchmark's JSON results: into bench/results with --record, else into the temp directory."""
    out = (RESULTS_DIR if record else Path(tempfile.gettempdir())) / name
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out


# --------------------------------------------------------------------------- processes


@dataclass
class Service:
    """A server process started in its own session, so its whole group can be reaped."""

    name: str
    url: str  # what the benchmark loads
    proc: subprocess.Popen[bytes]
    log_path: Path
    exit_code: int | None = None
    left_processes: bool = False

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
            return "\n".join(f"  | {line}" for line in text)
        return "  | (no log)"

    def stop(self, sig: signal.Signals) -> None:
        """Send ``sig``, wait, escalate to SIGKILL; then reap any leftover group member."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self.proc.wait()
        self.exit_code = self.proc.returncode
        self.left_processes = self._kill_group()

    def _kill_group(self) -> bool:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True


@contextlib.contextmanager
def start_service(
    name: str, url: str, argv: Sequence[str], cwd: Path, stop_signal: signal.Signals
) -> Iterator[Service]:
    """Start ``argv`` with output to ``cwd/<name>.log``; stop it when the block exits."""
    cwd.mkdir(parents=True, exist_ok=True)
    log_path = cwd / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = Service(name, url, proc, log_path)
    try:
        yield service
    finally:
        service.stop(stop_signal)


def http_get(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET ``url`` directly (no proxy) with the benchmark User-Agent."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def admin_get(url: str, data_dir: Path, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET an authenticated admin route (``/metrics``, ``/banker/...``) of a tracker whose admin token was
    generated into ``data_dir/keys/admin.token``."""
    token = (data_dir / "keys" / "admin.token").read_text().strip()
    return http_get(url, timeout, {"Authorization": f"Bearer {token}"})


def wait_ready(service: Service, url: str) -> None:
    """Poll ``url`` until it answers 200; fail early if the process dies."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise HarnessError(
                f"{service.name} exited with code {service.proc.returncode} before it was "
                f"ready ({url}):\n{service.log_tail()}"
            )
        with contextlib.suppress(*HTTP_ERRORS):
            if http_get(url, timeout=1.0)[0] == 200:
                return
        time.sleep(0.1)
    raise HarnessError(f"{service.name} not ready at {url} after {READY_TIMEOUT_S:.0f}s:\n{service.log_tail()}")


def verify_pixel(service: Service) -> None:
    """Make sure the target really serves the 43-byte GIF before loading it."""
    url = service.url
    try:
        status, body = http_get(url)
    except HTTP_ERRORS as exc:
        raise HarnessError(f"{service.name}: GET {url} failed: {exc}") from exc
    if status != 200 or len(body) != GIF_SIZE or not body.startswith(b"GIF8"):
        raise HarnessError(
            f"{service.name}: GET {url} gave status {status} and {len(body)} bytes, "
            f"expected 200 and a {GIF_SIZE}-byte GIF:\n{service.log_tail()}"
        )


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def nginx_config(workdir: Path, port: int) -> str:
    """Reference server: one pinned worker answering /i with the built-in 1x1 GIF."""
    temp_paths = "\n".join(
        f"    {kind}_temp_path {workdir / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
daemon off;
master_process on;
worker_processes 1;
worker_cpu_affinity {1 << SERVER_CPU:b};
pid {workdir / "nginx.pid"};
error_log stderr warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
{temp_paths}
    server {{
        listen 127.0.0.1:{port};
        location = /i {{
            empty_gif;
        }}
    }}
}}
"""


@contextlib.contextmanager
def run_nginx(workdir: Path, port: int) -> Iterator[Service]:
    """Start the reference nginx in ``workdir`` and wait until it serves the pixel."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "nginx.conf"
    config.write_text(nginx_config(workdir, port))
    argv = [*pinned(SERVER_CPU), "nginx", "-p", f"{workdir}/", "-c", str(config)]
    url = f"http://127.0.0.1:{port}{PIXEL_PATH}"
    with start_service("nginx", url, argv, workdir, signal.SIGTERM) as service:
        wait_ready(service, url)
        yield service


@contextlib.contextmanager
def run_tracker(binary: Path, workdir: Path, port: int, admin_port: int, extra_config: str = "") -> Iterator[Service]:
    """Start trackpoint with one worker and a temporary data_dir (plus `extra_config` YAML); wait for /readyz."""
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    config = workdir / "trackpoint.yaml"
    config.write_text(f"data_dir: {json.dumps(str(data_dir))}\n{extra_config}")
    argv = [
        *pinned(SERVER_CPU),
        str(binary),
        "run",
        "--workers",
        "1",
        "--port",
        str(port),
        "--admin-port",
        str(admin_port),
        "--config",
        str(config),
    ]
    url = f"http://127.0.0.1:{port}{PIXEL_PATH}"
    with start_service("tracker", url, argv, workdir, signal.SIGTERM) as service:
        wait_ready(service, f"http://127.0.0.1:{admin_port}/readyz")
        yield service


# --------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3 (state) onwards of /proc/<pid>/stat: index i is field i + 3 of proc(5)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = _stat_fields(pid)
    if fields is None:
        raise HarnessError(f"process {pid} is gone")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _parent_pid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


@dataclass(frozen=True)
class CpuSnapshot:
    """User CPU ticks, to tell how much other processes ran during the measurements."""

    at: float  # time.monotonic()
    machine: int  # user + nice of all CPUs (/proc/stat)
    ours: int  # the harness, the wrk runs it reaped, and the server process groups


def cpu_snapshot(server_pgids: Collection[int]) -> CpuSnapshot:
    with Path("/proc/stat").open() as stat:
        user, nice = (int(v) for v in stat.readline().split()[1:3])
    rusage = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = round(sum(r.ru_utime for r in rusage) * CLK_TCK)
    for pid in _pids():
        fields = _stat_fields(pid)
        if fields and int(fields[2]) in server_pgids:
            ours += int(fields[11]) + int(fields[13])  # utime + cutime (reaped workers)
    return CpuSnapshot(time.monotonic(), user + nice, ours)


def foreign_cpu_pct(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """User CPU of everything else between two snapshots, in % of one core.

    System time is left out: the kernel's share of our own loopback traffic would count.
    """
    ticks = (after.machine - before.machine) - (after.ours - before.ours)
    return max(0.0, 100.0 * ticks / CLK_TCK / (after.at - before.at))


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 2)
    raise HarnessError(f"no VmRSS for pid {pid}")


def worker_pids(supervisor: Service) -> list[int]:
    """The tracker's workers: the supervisor's children that are not multiprocessing helpers."""
    children = [pid for pid in _pids() if _parent_pid(pid) == supervisor.proc.pid]
    return [pid for pid in children if not any(m in _cmdline(pid) for m in HELPER_MARKERS)]


def worker_pid(supervisor: Service) -> int:
    """The tracker worker (the largest, where there are several)."""
    workers = worker_pids(supervisor)
    if not workers:
        raise HarnessError(f"tracker supervisor (pid {supervisor.proc.pid}) has no worker child process")
    return max(workers, key=rss_mb)


# --------------------------------------------------------------------------- scenarios


def measure_throughput(url: str, settings: Settings, console: Console, name: str) -> tuple[WrkResult, int]:
    """Warm up, then saturate ``url``; return the result and all requests sent."""
    console.print(f"[bold]{name}[/]: warm-up {settings.warmup_s}s, throughput {settings.duration_s}s")
    warmup = run_wrk(url, settings.warmup_s, THROUGHPUT_CONNECTIONS)
    result = run_wrk(url, settings.duration_s, THROUGHPUT_CONNECTIONS)
    return result, warmup.requests + result.requests


def measure_brief_load(url: str, settings: Settings, workdir: Path, console: Console, name: str) -> BriefLoad:
    """~BRIEF_TARGET_RPS spread over BRIEF_CONNECTIONS paced connections."""
    delay_ms = round(BRIEF_CONNECTIONS * 1000 / BRIEF_TARGET_RPS)
    script = write_pacing_script(workdir / "pacing.lua", delay_ms)
    console.print(
        f"[bold]{name} brief load[/]: {BRIEF_CONNECTIONS} connections x {delay_ms} ms delay, "
        f"{settings.brief_duration_s}s"
    )
    result = run_wrk(url, settings.brief_duration_s, BRIEF_CONNECTIONS, script)
    return BriefLoad(BRIEF_CONNECTIONS, delay_ms, BRIEF_TARGET_RPS, result)


def soak(url: str, requests: int, rps: float, workdir: Path, console: Console) -> int:
    """More load, each request with a new impression id, until about ``requests`` more have been served."""
    duration_s = max(2, math.ceil(requests / max(rps * SOAK_RATE_SHARE, 1.0)))
    console.print(f"[bold]tracker soak[/]: unique impression ids for {duration_s}s (memory after 1M requests)")
    script = write_unique_imp_script(workdir / "unique.lua")
    base = url.split("/i?", 1)[0] + "/"
    return run_wrk(base, duration_s, THROUGHPUT_CONNECTIONS, script).requests


def measure_tracker(
    tracker: Service, settings: Settings, workdir: Path, console: Console
) -> tuple[WrkResult, WorkerMemory, BriefLoad]:
    """Throughput, worker RSS right after it, then the paced brief load."""
    pid = worker_pid(tracker)
    rss_idle = rss_mb(pid)
    result, served = measure_throughput(tracker.url, settings, console, "tracker")
    if not settings.quick and served < MEMORY_SOAK_REQUESTS:
        served += soak(tracker.url, MEMORY_SOAK_REQUESTS - served, result.rps, workdir, console)
    memory = WorkerMemory(pid, sorted(os.sched_getaffinity(pid)), rss_idle, rss_mb(pid), served)
    time.sleep(SETTLE_S)
    return result, memory, measure_brief_load(tracker.url, settings, workdir, console, "tracker")


def run_benchmark(settings: Settings, console: Console) -> BenchRun:
    """Start both servers, measure them, stop them (also on errors)."""
    with (
        tempfile.TemporaryDirectory(prefix="trackpoint-bench-") as tmp,
        contextlib.ExitStack() as servers,
    ):
        workdir = Path(tmp)
        port, admin_port, nginx_port = free_ports(3)
        tracker = servers.enter_context(run_tracker(settings.tracker_bin, workdir / "tracker", port, admin_port))
        nginx = servers.enter_context(run_nginx(workdir / "nginx", nginx_port))
        run = measure_all(settings, console, workdir, tracker, nginx)
        servers.close()  # stop now, so the tracker's exit code can be reported
    run = replace(run, tracker_exit_code=tracker.exit_code)
    run.warnings.extend(collect_warnings(run, (tracker, nginx)))
    return run


def measure_all(settings: Settings, console: Console, workdir: Path, tracker: Service, nginx: Service) -> BenchRun:
    """nginx throughput, then the tracker's scenarios; watch for CPU used by others."""
    verify_pixel(tracker)
    verify_pixel(nginx)
    servers = (tracker.proc.pid, nginx.proc.pid)  # each leads its own process group
    cpu_before = cpu_snapshot(servers)
    nginx_result, _ = measure_throughput(nginx.url, settings, console, "nginx")
    time.sleep(SETTLE_S)
    nginx_brief = measure_brief_load(nginx.url, settings, workdir, console, "nginx")
    time.sleep(SETTLE_S)
    tracker_result, memory, brief = measure_tracker(tracker, settings, workdir, console)
    foreign = foreign_cpu_pct(cpu_before, cpu_snapshot(servers))
    return BenchRun(tracker_result, nginx_result, brief, nginx_brief, memory, None, foreign, [])


def collect_warnings(run: BenchRun, services: Sequence[Service]) -> list[str]:
    """Things that make the numbers suspect without being a target miss."""
    warnings = [
        f"{name}: {result.non_2xx} non-2xx responses, {result.socket_errors} socket errors"
        for name, result in run.scenarios
        if result.errors
    ]
    for service in services:
        if service.exit_code == -signal.SIGKILL:
            warnings.append(f"{service.name} did not stop within {STOP_TIMEOUT_S:.0f}s (killed)")
        elif service.exit_code != 0:
            warnings.append(f"{service.name} exited with code {service.exit_code} on SIGTERM")
        if service.left_processes:
            warnings.append(f"{service.name} left processes behind after stopping (killed)")
    if run.memory.cpu_affinity != [SERVER_CPU]:
        warnings.append(f"tracker worker ran on CPUs {run.memory.cpu_affinity}, not {SERVER_CPU}")
    if run.foreign_cpu_pct > MAX_FOREIGN_CPU_PCT:
        warnings.append(
            f"other processes used {run.foreign_cpu_pct:.0f}% of a core during the measurements: "
            "the machine was not quiet, numbers are likely too low"
        )
    return warnings


# --------------------------------------------------------------------------- judging


def check(name: str, value: float, op: str, threshold: float, unit: str) -> Check:
    passed = value >= threshold if op == ">=" else value < threshold
    return Check(name, round(value, 3), op, threshold, unit, passed)


def evaluate(run: BenchRun) -> list[Check]:
    """The performance targets of the tracker."""
    brief = run.brief.result
    return [
        check("tracker throughput", run.tracker.rps, ">=", TARGET_TRACKER_RPS, "req/s"),
        check("tracker / nginx", run.ratio_pct, ">=", TARGET_RATIO_PCT, "%"),
        check("brief-load p99", brief.latency_p99_ms, "<", TARGET_BRIEF_P99_MS, "ms"),
        check("brief-load avg", brief.latency_avg_ms, "<", TARGET_BRIEF_AVG_MS, "ms"),
        check("worker RSS", run.memory.rss_mb, "<", TARGET_RSS_MB, "MB"),
    ]


# --------------------------------------------------------------------------- provenance


def _first_output_line(argv: Sequence[str]) -> str:
    """First line a tool prints about itself (stdout or stderr), or ``unknown``."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        lines = (done.stdout + done.stderr).strip().splitlines()
        if lines:
            return lines[0].strip()
    return "unknown"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def machine_info() -> MachineInfo:
    return MachineInfo(
        nproc=os.cpu_count() or 0,
        cpu_model=_cpu_model(),
        kernel=platform.release(),
        python=platform.python_version(),
        wrk=_first_output_line(["wrk", "--version"]).split(" Copyright")[0],
        nginx=_first_output_line(["nginx", "-v"]).removeprefix("nginx version: "),
    )


def git_state() -> tuple[str | None, bool | None]:
    """(HEAD commit, work tree dirty?) of the repository, or Nones outside git."""

    def git(*args: str) -> str | None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                ["git", "-C", str(REPO_ROOT), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            return done.stdout.strip()
        return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain")
    return commit, (bool(status) if status is not None else None)


# --------------------------------------------------------------------------- output files


def build_report(run: BenchRun, checks: Sequence[Check], settings: Settings, date: str) -> dict[str, Any]:
    """Content of latest.json."""
    commit, dirty = git_state()
    return {
        "schema": 1,
        "date": date,
        "git": {"commit": commit, "dirty": dirty},
        "machine": asdict(machine_info()),
        "settings": {
            "duration_s": settings.duration_s,
            "brief_duration_s": settings.brief_duration_s,
            "warmup_s": settings.warmup_s,
            "quick": settings.quick,
            "throughput_connections": THROUGHPUT_CONNECTIONS,
            "server_cpu": SERVER_CPU,
            "load_cpu": LOAD_CPU,
            "path": PIXEL_PATH,
            "user_agent": USER_AGENT,
        },
        "targets": {"tracker": asdict(run.tracker), "nginx": asdict(run.nginx)},
        "ratio": round(run.ratio_pct / 100, 4),
        "brief_load": asdict(run.brief),
        "nginx_brief_load": asdict(run.nginx_brief),
        "worker": asdict(run.memory),
        "rss_mb": round(run.memory.rss_mb, 1),
        "requests_served": run.memory.requests_served,
        "tracker_exit_code": run.tracker_exit_code,
        "foreign_cpu_pct": round(run.foreign_cpu_pct, 1),
        "checks": [asdict(c) for c in checks],
        "passed": all(c.passed for c in checks),
        "warnings": run.warnings,
    }


def history_record(report: dict[str, Any]) -> dict[str, Any]:
    """The compact line appended to history.json."""
    tracker, nginx = report["targets"]["tracker"], report["targets"]["nginx"]
    brief = report["brief_load"]["result"]
    commit = report["git"]["commit"]
    return {
        "date": report["date"],
        "commit": commit[:12] if commit else None,
        "dirty": report["git"]["dirty"],
        "quick": report["settings"]["quick"],
        "duration_s": report["settings"]["duration_s"],
        "tracker_rps": tracker["rps"],
        "nginx_rps": nginx["rps"],
        "ratio": report["ratio"],
        "tracker_p99_ms": tracker["latency_p99_ms"],
        "brief_rps": brief["rps"],
        "brief_avg_ms": brief["latency_avg_ms"],
        "brief_p99_ms": brief["latency_p99_ms"],
        "nginx_brief_p99_ms": report["nginx_brief_load"]["result"]["latency_p99_ms"],
        "rss_mb": report["rss_mb"],
        "requests_served": report["requests_served"],
        "foreign_cpu_pct": report["foreign_cpu_pct"],  # > 10: the machine was busy, numbers low
        "passed": report["passed"],
    }


def load_history() -> list[dict[str, Any]]:
    """Recorded runs; an absent file is an empty history, a corrupt one an error."""
    if not HISTORY_JSON.exists():
        return []
    try:
        history = json.loads(HISTORY_JSON.read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"cannot read {HISTORY_JSON}: {exc}") from exc
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise HarnessError(f"{HISTORY_JSON} is not a JSON list of objects")
    return history


def save_history(history: Sequence[dict[str, Any]]) -> None:
    """One record per line, so that diffs of the file stay readable."""
    lines = ",\n".join(f"  {json.dumps(record, sort_keys=True)}" for record in history)
    HISTORY_JSON.write_text(f"[\n{lines}\n]\n")


# --------------------------------------------------------------------------- plot

TRACKER_COLOR = "#1f77b4"
NGINX_COLOR = "#7f7f7f"
MAX_HISTORY_TICKS = 8
LOG_WIDTH = 120
THOUSANDS = FuncFormatter(lambda value, _pos: f"{value:,.0f}")


def render_plot(run: BenchRun, history: Sequence[dict[str, Any]], recorded: bool, title: str, path: Path) -> None:
    """Three panels: throughput, latency percentiles, recorded rps history."""
    fig = Figure(figsize=(17, 5.4), layout="constrained")
    FigureCanvasAgg(fig)  # Agg backend, no pyplot global state
    fig.suptitle(title)
    ax_rps, ax_latency, ax_history = fig.subplots(1, 3)
    plot_throughput(ax_rps, run)
    plot_latency(ax_latency, run)
    plot_history(ax_history, history, None if recorded else run)
    fig.savefig(path, dpi=100)


def plot_throughput(ax: Axes, run: BenchRun) -> None:
    values = [run.tracker.rps, run.nginx.rps]
    bars = ax.bar(["tracker", "nginx"], values, color=[TRACKER_COLOR, NGINX_COLOR])
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values])
    ax.axhline(TARGET_TRACKER_RPS, color="red", linestyle="--", label="tracker target")
    ax.set_ylim(0, max(*values, TARGET_TRACKER_RPS) * 1.3)  # headroom for labels and legend
    ax.set_title(f"Throughput, {THROUGHPUT_CONNECTIONS} connections (tracker = {run.ratio_pct:.0f}% of nginx)")
    ax.yaxis.set_major_formatter(THOUSANDS)
    ax.set_ylabel("requests/s")
    ax.legend(loc="upper right")


def plot_latency(ax: Axes, run: BenchRun) -> None:
    labels = ["tracker\nthroughput", "nginx\nthroughput", "tracker\nbrief load", "nginx\nbrief load"]
    results = [run.tracker, run.nginx, run.brief.result, run.nginx_brief.result]
    width = 0.38
    for offset, name, values in (
        (-width / 2, "p50", [r.latency_p50_ms for r in results]),
        (width / 2, "p99", [r.latency_p99_ms for r in results]),
    ):
        bars = ax.bar([i + offset for i in range(len(results))], values, width, label=name)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8)
    ax.axhline(TARGET_BRIEF_P99_MS, color="red", linestyle="--", label="brief-load p99 target")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yscale("log")
    top = max(TARGET_BRIEF_P99_MS, *(r.latency_p99_ms for r in results))
    ax.set_ylim(top=top * 4)  # headroom for the legend on the log scale
    plain = FuncFormatter(lambda value, _pos: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title("Latency percentiles")
    ax.legend(loc="upper right", ncols=3, fontsize=8)


def plot_history(ax: Axes, history: Sequence[dict[str, Any]], unrecorded: BenchRun | None) -> None:
    """Recorded runs as lines; an unrecorded (quick) run as hollow markers after them."""
    records = [r for r in history if _is_number(r.get("tracker_rps")) and _is_number(r.get("nginx_rps"))]
    ticks = [f"{str(r.get('date', ''))[:10]}\n{str(r.get('commit') or '')[:7]}" for r in records]
    for key, marker, color, name in (
        ("tracker_rps", "o", TRACKER_COLOR, "tracker"),
        ("nginx_rps", "s", NGINX_COLOR, "nginx"),
    ):
        ax.plot(range(len(records)), [r[key] for r in records], f"{marker}-", color=color, label=name)
        if unrecorded is not None:
            rps = unrecorded.tracker.rps if key == "tracker_rps" else unrecorded.nginx.rps
            ax.plot([len(records)], [rps], marker, mfc="none", color=color, label=f"{name}, this run")
    if unrecorded is not None:
        ticks.append("this run\n(not recorded)")
    ax.axhline(TARGET_TRACKER_RPS, color="red", linestyle="--", label="tracker target")
    shown = _thinned(len(ticks), MAX_HISTORY_TICKS)
    ax.set_xticks(shown, [ticks[i] for i in shown], fontsize=7, rotation=30, ha="right")
    ax.set_xlim(-0.5, max(len(ticks), 1) - 0.5)
    current = [unrecorded.tracker.rps, unrecorded.nginx.rps] if unrecorded else []
    highest = max([TARGET_TRACKER_RPS, *current, *(r[k] for r in records for k in ("tracker_rps", "nginx_rps"))])
    ax.set_ylim(0, highest * 1.15)
    ax.yaxis.set_major_formatter(THOUSANDS)
    ax.set_ylabel("requests/s")
    ax.set_title(f"History of recorded runs ({len(records)})")
    ax.legend(loc="lower left", fontsize=8)


def _thinned(count: int, most: int) -> list[int]:
    """At most about ``most`` evenly spaced indices of ``count`` items, always the last."""
    if count == 0:
        return []
    step = -(-count // most)
    shown = list(range(0, count, step))
    shown[-1] = count - 1  # the newest run replaces the tick that would crowd it
    return shown


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --------------------------------------------------------------------------- stdout


def print_summary(console: Console, run: BenchRun, checks: Sequence[Check]) -> None:
    scenarios = Table(title="trackpoint benchmark")
    for column in (
        "scenario",
        "req/s",
        "requests",
        "avg ms",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "errors",
    ):
        scenarios.add_column(column, justify="left" if column == "scenario" else "right")
    for name, r in run.scenarios:
        scenarios.add_row(
            name,
            f"{r.rps:,.0f}",
            f"{r.requests:,}",
            f"{r.latency_avg_ms:.3f}",
            f"{r.latency_p50_ms:.3f}",
            f"{r.latency_p90_ms:.3f}",
            f"{r.latency_p99_ms:.3f}",
            f"{r.latency_max_ms:.2f}",
            str(r.errors),
        )
    console.print(scenarios)
    m = run.memory
    console.print(
        f"worker pid {m.pid}: RSS {m.rss_idle_mb:.1f} MB idle, {m.rss_mb:.1f} MB after "
        f"{m.requests_served:,} requests; tracker exit code {run.tracker_exit_code}; "
        f"other processes used {run.foreign_cpu_pct:.0f}% of a core meanwhile"
    )
    targets = Table(title="targets")
    for column in ("target", "value", "goal", "result"):
        targets.add_column(column)
    for c in checks:
        result = "[green]PASS[/]" if c.passed else "[red]FAIL[/]"
        targets.add_row(c.name, f"{c.value:,.2f} {c.unit}", f"{c.op} {c.threshold:,g} {c.unit}", result)
    console.print(targets)
    for warning in run.warnings:
        console.print(f"warning: {warning}", style="yellow", markup=False)
    missed = sum(not c.passed for c in checks)
    console.print("all targets met" if not missed else f"{missed} of {len(checks)} targets missed")


# --------------------------------------------------------------------------- main


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument(
        "--duration",
        type=positive_int,
        help=f"seconds of each throughput run (default {FULL_DURATION_S}, {QUICK_DURATION_S} with --quick)",
    )
    parser.add_argument(
        "--brief-duration",
        type=positive_int,
        help=f"seconds of the brief-load run (default {FULL_BRIEF_DURATION_S}, {QUICK_DURATION_S} with --quick)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short runs for CI; not added to history.json unless --record"
    )
    parser.add_argument(
        "--record", action="store_true", help="append a --quick run to history.json (full runs always are)"
    )
    parser.add_argument(
        "--tracker-bin",
        type=Path,
        default=Path(sys.prefix) / "bin" / "trackpoint",
        help="trackpoint executable (default: the one of this venv)",
    )
    args = parser.parse_args(argv)
    duration = args.duration or (QUICK_DURATION_S if args.quick else FULL_DURATION_S)
    brief = args.brief_duration or (QUICK_DURATION_S if args.quick else FULL_BRIEF_DURATION_S)
    return Settings(
        duration_s=duration,
        brief_duration_s=brief,
        warmup_s=max(1, min(3, duration // 10)),
        quick=args.quick,
        record=args.record or not args.quick,
        tracker_bin=args.tracker_bin,
    )


def preflight(settings: Settings) -> None:
    """Fail early, with a clear message, on anything the run cannot do without."""
    for tool in ("wrk", "nginx", "taskset"):
        if shutil.which(tool) is None:
            raise HarnessError(f"`{tool}` not found on PATH")
    if not os.access(settings.tracker_bin, os.X_OK):
        raise HarnessError(
            f"tracker executable {settings.tracker_bin} not found; install the project into "
            "the venv (pip install -e .) or pass --tracker-bin"
        )
    cpus = os.sched_getaffinity(0)
    if not {SERVER_CPU, LOAD_CPU} <= cpus:
        raise HarnessError(f"needs CPUs {SERVER_CPU} and {LOAD_CPU}; this process may use {sorted(cpus)}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)


def publish(run: BenchRun, settings: Settings, history: list[dict[str, Any]], date: str, console: Console) -> None:
    """Write latest.json, maybe history.json, latest.png, and print the summary."""
    checks = evaluate(run)
    report = build_report(run, checks, settings, date)
    LATEST_JSON.write_text(json.dumps(report, indent=2) + "\n")
    if settings.record:
        history.append(history_record(report))
        save_history(history)
    commit = report["git"]["commit"]
    title = f"trackpoint benchmark {date}  commit {commit[:12] if commit else 'n/a'}"
    title += "  (quick)" if settings.quick else ""
    if run.foreign_cpu_pct > MAX_FOREIGN_CPU_PCT:
        title += f"  - machine busy: other processes used {run.foreign_cpu_pct:.0f}% of a core"
    render_plot(run, history, settings.record, title, LATEST_PNG)
    print_summary(console, run, checks)
    written = [LATEST_JSON, LATEST_PNG, *([HISTORY_JSON] if settings.record else [])]
    console.print("wrote " + ", ".join(str(p.relative_to(REPO_ROOT)) for p in written))


class Terminated(Exception):
    """SIGTERM arrived: unwind like KeyboardInterrupt, so that the servers get stopped."""


def _raise_terminated(_signum: int, _frame: FrameType | None) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_terminated)
    # rich would squeeze the tables into 80 columns when stdout is not a terminal (CI logs)
    console = Console(width=None if sys.stdout.isatty() else LOG_WIDTH)
    errors = Console(stderr=True, width=None if sys.stderr.isatty() else LOG_WIDTH)
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    try:
        preflight(settings)
        history = load_history()
        run = run_benchmark(settings, console)
        publish(run, settings, history, date, console)
    except HarnessError as exc:
        errors.print(f"benchmark harness failed: {exc}", style="bold red", markup=False)
        return 1
    except KeyboardInterrupt:
        errors.print("interrupted; servers stopped", style="bold red")
        return 128 + signal.SIGINT
    except Terminated:
        errors.print("terminated; servers stopped", style="bold red")
        return 128 + signal.SIGTERM
    return 0


if __name__ == "__main__":
    sys.exit(main())
