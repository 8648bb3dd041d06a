"""What a queue collector costs the worker per event, without the network: `Collector.offer` (the privacy filter's
copy for an untrusted collector, the memory estimate, the batch) and the building of the batch's command
(`RedisStreamsCollector._commands`: the JSON lines, the packed ids), on default impressions whose every string is
their own, as the edge builds them. No Redis is needed: nothing is sent.

    .venv/bin/python bench/collector_path.py [--events N] [--rounds R] [--instructions]

`--instructions` counts instead of timing: it runs itself twice under valgrind's callgrind, with no rounds and with R
rounds, and prints the difference per event: the same on every run of the same code whatever else the machine does.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

import msgspec

from harness import USER_AGENT
from trackpoint import _native
from trackpoint.collectors.base import CollectorContext
from trackpoint.collectors.redis_streams.collector import RedisStreamsCollector
from trackpoint.collectors.redis_streams.config import RedisStreamsCollectorConfig
from trackpoint.event import Context, Device, Event, Meta

DEVICE = Device(browser="Chrome", browser_major="124", os="Windows", os_major="10")
META = Meta(worker=0, config="95736cfb0ece")


def impressions(count: int) -> list[Event]:
    """Default impressions (5 dims, IP truncated, user agent and referer), each string its own."""
    return [
        Event(
            id=f"{i:032x}",
            type="impression",
            ts=1796568474844 + i,
            dims={"imp": f"bench-imp-{i}", "cid": "cmp-42", "crid": "crv-7", "pub": "pub-1001", "consent": "granted"},
            metrics={},
            ctx=Context(
                ip=f"198.51.{i % 250}.0",
                ua=USER_AGENT[:-1] + USER_AGENT[-1],  # its own str, as a request's header is
                referer=f"https://news.example.org/article/{i}",
                device=DEVICE,
            ),
            meta=META,
        )
        for i in range(count)
    ]


def run(events: int, rounds: int) -> float:
    """µs per event over `rounds` rounds of `events` offered and built into one command."""
    config = msgspec.convert({"type": "redis_streams", "url": "redis://127.0.0.1:1/0"}, RedisStreamsCollectorConfig)
    with tempfile.TemporaryDirectory(prefix="trackpoint-collector-path-") as data_dir:
        collector = RedisStreamsCollector("queue", config, CollectorContext(data_dir=data_dir))
        batch = impressions(events)
        started = time.process_time()
        for _ in range(rounds):
            for event in batch:
                collector.offer(event)
            collector._commands(collector._pending)  # what send() builds; nothing is sent
            # What a delivered flush leaves: an empty batch, nothing held.
            collector._pending.clear()
            del collector._pending_sizes[:]
            collector._held_bytes = 0
        elapsed = time.process_time() - started
    return elapsed / max(1, rounds * events) * 1e6


def count_instructions(events: int, rounds: int) -> int:
    if not _native.ACTIVE:
        raise SystemExit(f"--instructions counts the compiled build; it is not active: {_native.REASON}")
    totals = []
    for count in (0, rounds):
        argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__]
        argv += ["--events", str(events), "--rounds", str(count)]
        result = subprocess.run(argv, check=True, capture_output=True, text=True)
        totals.append(int(result.stderr.split("Collected : ")[1].split()[0]))
    print(f"{(totals[1] - totals[0]) / (rounds * events):,.0f} instructions per event, compiled (mypyc)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1000, help="events per round (one batch)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--instructions", action="store_true", help="instructions per event (callgrind)")
    options = parser.parse_args(argv)
    if options.instructions:
        return count_instructions(options.events, options.rounds)
    us = run(options.events, options.rounds)
    if options.rounds:
        build = "compiled (mypyc)" if _native.ACTIVE else f"pure Python ({_native.REASON})"
        print(f"{us:.2f} µs CPU per event, {build} ({options.events * options.rounds:,} events)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
