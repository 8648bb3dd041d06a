"""What signed tracking URLs cost: the impression benchmark with and without `signature: required`.

Both runs use the default impression (full pipeline: fields, id, anonymize_ip, parse_user_agent, log); the signed
run requires a signature on `/i` and loads a URL signed with the tracker's own generated key. Reported: wrk
throughput and the worker's CPU time per request at saturation, each the mean of ROUNDS alternating runs.

Run ``.venv/bin/python bench/signing.py [--quick] [--record]``; results go to bench/results/signing.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness import (
    PIXEL_PATH,
    RESULTS_DIR,
    SERVER_CPU,
    THROUGHPUT_CONNECTIONS,
    HarnessError,
    Service,
    cpu_seconds,
    free_ports,
    git_state,
    http_get,
    pinned,
    run_wrk,
    start_service,
    wait_ready,
    worker_pid,
)
from trackpoint.security.signing import sign_url

REPO_ROOT = Path(__file__).resolve().parent.parent
TRACKER_BIN = REPO_ROOT / ".venv" / "bin" / "trackpoint"
ROUNDS = 2


@contextlib.contextmanager
def tracker(workdir: Path, signed: bool) -> Iterator[tuple[Service, str]]:
    """The default config (one worker); `signed` requires a signature on the impression. Yields the URL to load."""
    port, admin_port = free_ports(2)
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    config: dict[str, object] = {"data_dir": str(data_dir)}
    if signed:
        config["event_types"] = {
            name: {"preset": name, **({"signature": "required"} if name == "impression" else {})}
            for name in ("impression", "click", "conversion", "video", "win")
        }
    path = workdir / "trackpoint.yaml"
    path.write_text(json.dumps(config))
    argv = [*pinned(SERVER_CPU), str(TRACKER_BIN), "run", "-w", "1", "-p", str(port), "--admin-port"]
    argv += [str(admin_port), "-c", str(path)]
    with start_service("tracker", f"http://127.0.0.1:{port}", argv, workdir, signal.SIGTERM) as service:
        wait_ready(service, f"http://127.0.0.1:{admin_port}/readyz")
        target = PIXEL_PATH
        if signed:
            secret = (data_dir / "keys" / "signing.key").read_bytes().strip()
            target = sign_url(PIXEL_PATH, "auto", secret)
            if http_get(service.url + PIXEL_PATH)[0] != 403:
                raise HarnessError("an unsigned impression was not refused")
        status, _ = http_get(service.url + target)
        if status != 200:
            raise HarnessError(f"GET {target} answered {status}")
        yield service, service.url + target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (CI)")
    parser.add_argument("--record", action="store_true", help="write the results into bench/results")
    args = parser.parse_args(argv)
    duration_s = 5 if args.quick else 20
    console = Console()
    rps: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    try:
        with tempfile.TemporaryDirectory(prefix="trackpoint-signing-") as tmp:
            for round_number in range(ROUNDS):
                for signed in (False, True):
                    label = "signature required" if signed else "unsigned"
                    console.print(f"[bold]signing[/] {round_number + 1}/{ROUNDS}: {label}, {duration_s}s")
                    workdir = Path(tmp) / f"{round_number}-{int(signed)}"
                    with tracker(workdir, signed) as (service, url):
                        run_wrk(url, 2, THROUGHPUT_CONNECTIONS)
                        pid = worker_pid(service)
                        before = cpu_seconds(pid)
                        result = run_wrk(url, duration_s, THROUGHPUT_CONNECTIONS)
                        time.sleep(0.3)
                        rps[signed].append(result.rps)
                        cpu[signed].append(1e6 * (cpu_seconds(pid) - before) / result.requests)
    except HarnessError as exc:
        console.print(f"[bold red]benchmark failed[/]: {exc}")
        return 1
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": dict(zip(("commit", "dirty"), git_state(), strict=True)),
        "quick": args.quick,
        "unsigned": {"rps": statistics.fmean(rps[False]), "cpu_us_per_request": statistics.fmean(cpu[False])},
        "signed": {"rps": statistics.fmean(rps[True]), "cpu_us_per_request": statistics.fmean(cpu[True])},
    }
    cost = report["signed"]["cpu_us_per_request"] - report["unsigned"]["cpu_us_per_request"]
    report["verification_cost_us"] = cost
    table = Table(title="signed tracking URLs: GET /i, full default pipeline, one worker")
    for column in ("", "req/s", "worker CPU µs/req"):
        table.add_column(column, justify="right")
    for key in ("unsigned", "signed"):
        table.add_row(key, f"{report[key]['rps']:,.0f}", f"{report[key]['cpu_us_per_request']:.1f}")
    console.print(table)
    console.print(f"verification costs about {cost:.1f} µs of worker CPU per request")
    out_dir = RESULTS_DIR if args.record else Path(tempfile.gettempdir())
    (out_dir / "signing.json").write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"results: {out_dir / 'signing.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
