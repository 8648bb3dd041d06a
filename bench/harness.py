"""The benchmark harness every benchmark uses: load shapes, targets, result types, wrk and its output, the
tracker and a throw-away nginx as pinned processes (always stopped on exit), /proc readings and provenance.

The scenarios live in run.py (tracker vs. nginx), flood.py, queues.py, soak.py, crash.py, signing.py, banker.py, geo.py;
their output files and summaries in report.py.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

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
    # The build of trackpoint's request path the tracker ran: "compiled (mypyc)" or "pure Python (why)".
    trackpoint_build: str


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


def active_files(logs: Path) -> list[Path]:
    """A tracker's uncompressed log files, oldest first: the last is the worker's current file, the others are
    finished and waiting for compression."""
    from trackpoint.collectors.log.files import ACTIVE_SUFFIX

    if not logs.exists():
        return []
    return sorted((p for p in logs.glob("events-*") if p.name.endswith(ACTIVE_SUFFIX)), key=lambda p: p.name)


def pinned(cpu: int) -> list[str]:
    """Command prefix that runs a program on one CPU core."""
    return ["taskset", "-c", str(cpu)]


# A busy loop at the lowest priority there is: it runs only while nothing else wants its core, and yields it at the
# next wake-up of any other thread (SCHED_IDLE has a CFS weight of 3 against a nice-0 thread's 1024).
_IDLE_SPIN = "import os\nos.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True:\n    pass\n"


@contextlib.contextmanager
def cores_kept_awake(*cpus: int) -> Iterator[None]:
    """Keeps each core from halting while the block runs: one SCHED_IDLE busy loop pinned to each.

    On a VM an idle virtual CPU halts, and the next packet waits for the host to run it again, its caches cooled by
    whatever the host ran meanwhile: at a light load that wake-up is most of a request's latency, for every server
    alike. A busy loop that gives way at once stands in for a core that does not sleep (polling idle on a host
    tuned for latency), so that what is left of a request's latency is the server's. Its own CPU time is no
    server's: the benchmarks count the CPU of the server's processes only."""
    spinners = [subprocess.Popen([*pinned(cpu), sys.executable, "-c", _IDLE_SPIN]) for cpu in cpus]
    try:
        time.sleep(0.2)  # running before the block's first request
        for spinner in spinners:
            if spinner.poll() is not None:
                raise HarnessError(f"the busy loop on a core exited ({spinner.returncode}): is SCHED_IDLE allowed?")
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


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
        trackpoint_build=trackpoint_build(),
    )


def trackpoint_build() -> str:
    """Which build of the request path a tracker started from this environment runs (trackpoint/_native.py)."""
    from trackpoint import _native

    return "compiled (mypyc)" if _native.ACTIVE else f"pure Python ({_native.REASON})"


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


class Terminated(Exception):
    """SIGTERM arrived: unwind like KeyboardInterrupt, so that the servers get stopped."""


def _raise_terminated(_signum: int, _frame: object) -> None:
    raise Terminated


def unwind_on_sigterm() -> None:
    """SIGTERM raises Terminated in the main thread, so every server's context manager stops it on the way out
    (Python's default action ends the process at once, leaving the servers running)."""
    signal.signal(signal.SIGTERM, _raise_terminated)
