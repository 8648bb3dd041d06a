"""CPU per event of compressing rotated log files, per codec and level, next to CPU per event of serving.

Writes a log file of real log lines (impressions as the default config records them: derived ids, campaign fields,
a parsed user agent, anonymised IP; about 450 bytes a line, as the tracker writes them) with the collector's
encoder, then compresses a copy with each codec and level through the collector's own compress(), measuring the
thread's CPU time.

Run ``.venv/bin/python bench/compression.py [--mib 128] [--serving-rps 57000]``; prints a table and writes
bench/results/compression.json. The serving figure is the tracker's throughput on one pinned core (bench/run.py):
one core serving R requests/s spends 1/R s of CPU per event.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import msgspec

from trackpoint.collectors.log.compression import compress
from trackpoint.collectors.log.config import Compression
from trackpoint.event import Context, Device, Event, Meta, derived_id

RESULTS = Path(__file__).resolve().parent / "results" / "compression.json"
CODECS: list[tuple[Compression, int]] = [("zstd", 1), ("zstd", 3), ("zstd", 6), ("gzip", 1), ("gzip", 6)]
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
    "Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.6312.118 Mobile "
    "Safari/537.36",
]
DEVICES = [Device("Chrome", "124", "Windows", "10"), Device("Mobile Safari", "17", "iOS", "17", "iPhone"),
           Device("Chrome Mobile", "123", "Android", "14", "Samsung SM-S918B")]  # fmt: skip


def impression(i: int, rng: random.Random) -> Event:
    imp = f"{rng.getrandbits(128):032x}"
    which = rng.randrange(len(USER_AGENTS))
    return Event(
        id=derived_id("impression", [imp]),
        type="impression",
        ts=1_767_225_600_000 + i * 17 + rng.randrange(17),
        dims={
            "imp": imp,
            "cid": f"cmp-{rng.randrange(400)}",
            "crid": f"cr-{rng.randrange(5000)}",
            "pub": f"pub-{rng.randrange(2000)}",
        },
        metrics={},
        ctx=Context(
            ip=f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.0",
            ua=USER_AGENTS[which],
            device=DEVICES[which],
        ),
        meta=Meta(worker=1, config="3f2a9c1b"),
    )


def write_log(path: Path, target_bytes: int) -> int:
    """A log file of about target_bytes, written in batches as the collector writes them; returns its events."""
    encoder, rng, events = msgspec.json.Encoder(), random.Random(12), 0
    with path.open("wb") as log:
        while log.tell() < target_bytes:
            batch = [impression(events + k, rng) for k in range(1000)]
            log.write(encoder.encode_lines(batch))
            events += len(batch)
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=128, help="size of the log file (rotate_bytes' default: 128)")
    parser.add_argument("--serving-rps", type=float, default=57_000, help="one core's throughput (bench/run.py)")
    args = parser.parse_args()
    serving_cpu = 1 / args.serving_rps
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        source = Path(workdir) / "events-20260101T000000000Z-w01-p1-0001.jsonl"
        events = write_log(source, args.mib << 20)
        size = source.stat().st_size
        print(f"{events} events, {size / events:.0f} bytes a line, {size / 2**20:.0f} MiB")
        print(f"serving: {serving_cpu * 1e6:.2f} µs CPU per event ({args.serving_rps:.0f} events/s on one core)")
        for codec, level in CODECS:
            copy = source.with_name(source.name.replace("-0001", f"-{codec}{level}"))
            shutil.copyfile(source, copy)
            began = time.thread_time()
            target = compress(copy, codec, level)
            cpu = time.thread_time() - began
            per_event, ratio = cpu / events, size / target.stat().st_size
            share = per_event / serving_cpu
            row = {"codec": codec, "level": level, "cpu_s": round(cpu, 3), "ratio": round(ratio, 2)}
            rows.append({**row, "cpu_us_per_event": round(per_event * 1e6, 3), "share_of_serving": round(share, 4)})
            print(f"{codec} {level:>2}: {cpu:6.2f} s CPU, {per_event * 1e6:5.2f} µs/event = {100 * share:5.1f}% of "
                  f"serving, ratio {ratio:4.1f}")  # fmt: skip
            target.unlink()
    report = {"events": events, "bytes_per_line": round(size / events), "serving_rps": args.serving_rps, "codecs": rows}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
