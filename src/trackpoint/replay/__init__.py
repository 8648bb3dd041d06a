"""Replay: re-feeds collectors from the log files after an incident, any number of times without double counting.

Every event keeps the id it was logged with, and every consumer dedupes on it (Kafka key, Nats-Msg-Id, the Redis
Streams dedupe window, the banker's ledger), so a replay only fills the gaps. Of an id logged more than once, the
line sent is its first, or for a banker its earliest (reader.precedence): the one the banker debited live.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from trackpoint.collectors import Collector, CollectorContext
from trackpoint.collectors.banker.config import BankerCollectorConfig
from trackpoint.collectors.base import close_all
from trackpoint.collectors.log.config import LogCollectorConfig
from trackpoint.collectors.log.reader import LogSearchError, ReadStats, log_files, not_a_log, read_located
from trackpoint.config.model import Config, SpoolConfig
from trackpoint.event import Event
from trackpoint.plugins import Registry
from trackpoint.preprocessors import Preprocessor, with_preprocessor_inputs

PROGRESS_BYTES = 256 << 10  # of the files as stored (some 600 plain or 10,000 zstd-compressed impressions)


class ReplayError(Exception):
    """The replay cannot start: an unknown collector, a file that is not a tracker log, a directory that cannot be
    listed. Nothing was sent."""


class GaveUp(Exception):
    """A collector did not take a batch for give_up_after_s (ReplayReport.gave_up says which)."""


Located = tuple[tuple[int, int], Event]  # an event and where it was read (reader.read_located)


@dataclass
class CollectorReport:
    """What one collector got: the events it was given (sent + refused), those delivered, those it refused
    (dead-lettered), and the retries of its batches."""

    events: int = 0
    sent: int = 0
    refused: int = 0
    retries: int = 0


@dataclass
class ReplayReport:
    """What a replay did. The events read add up: filtered + duplicates + replayed; each collector's events add
    up: sent + refused."""

    files: int = 0
    bytes: int = 0  # of the files as stored (compressed or not)
    read: ReadStats = field(default_factory=ReadStats)
    filtered: int = 0  # outside --since/--until, not of a --type, or of a type no chosen collector takes
    duplicates: int = 0  # an id already replayed in this run: sent once
    replayed: int = 0  # given to at least one collector
    collectors: dict[str, CollectorReport] = field(default_factory=dict)
    seconds: float = 0.0
    gave_up: str | None = None  # why the replay stopped early: a collector did not take a batch in time

    def summary(self) -> dict[str, Any]:
        """The report as one JSON object (`trackpoint replay --json`)."""
        return {
            "files": self.files,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "read": self.read.events,
            "filtered": self.filtered,
            "duplicates": self.duplicates,
            "replayed": self.replayed,
            "torn_lines": self.read.skipped,
            "torn_at": self.read.skipped_at[:100],
            "truncated_files": self.read.truncated,
            "missing_files": self.read.missing,
            "gave_up": self.gave_up,
            "collectors": {name: asdict(report) for name, report in self.collectors.items()},
        }


@dataclass(frozen=True)
class ReplayPlan:
    """Which collectors get which event types, and which events qualify."""

    collectors: dict[str, list[str]]  # collector name -> event types it is fed
    since_ms: int | None = None
    until_ms: int | None = None
    types: frozenset[str] | None = None
    batch_events: int = 1024
    give_up_after_s: float = 300.0
    # Repeats are found among this many latest distinct ids (about 150 bytes each); a repeat further apart is sent
    # again, and its consumers drop it by id as they drop every repeat.
    dedupe_window: int = 1_000_000
    # Send the earliest line of each id (reader.precedence), not the first read: a banker debits the first line it
    # gets of an id, and a repeat may carry another price. It costs a first pass over the files.
    earliest: bool = False


def plan(
    config: Config,
    *,
    collectors: Sequence[str] = (),
    types: Sequence[str] = (),
    since_ms: int | None = None,
    until_ms: int | None = None,
    batch_events: int = 1024,
    give_up_after_s: float = 300.0,
) -> ReplayPlan:
    """Each chosen collector gets the events of the types the config attaches to it. Without a choice: every
    collector in use except log collectors (they are where the events come from)."""
    feeds: dict[str, list[str]] = {}
    for type_name, spec in config.event_types.items():
        for name in spec.collectors:
            feeds.setdefault(name, []).append(type_name)
    if collectors:
        unknown = [name for name in collectors if name not in config.collectors]
        if unknown:
            raise ReplayError(f"no collector named {', '.join(unknown)} in the configuration")
        chosen = {name: feeds.get(name, []) for name in collectors}
    else:
        chosen = {
            name: event_types
            for name, event_types in feeds.items()
            if not isinstance(config.collectors[name], LogCollectorConfig)
        }
    if not chosen:
        raise ReplayError("no collector to replay into: name one with --collector")
    return ReplayPlan(
        collectors=chosen,
        since_ms=since_ms,
        until_ms=until_ms,
        types=frozenset(types) if types else None,
        batch_events=batch_events,
        give_up_after_s=give_up_after_s,
        earliest=any(isinstance(config.collectors[name], BankerCollectorConfig) for name in chosen),
    )


def build_collectors(config: Config, replay_plan: ReplayPlan, registry: Registry) -> dict[str, Collector]:
    """The chosen collectors, built by `registry` (the one `config` was loaded with), without their spool: replay
    waits for each batch to be delivered instead."""
    context = CollectorContext(data_dir=config.data_dir, worker=0)
    collectors = _as_workers_filter(config, replay_plan, registry).collectors
    built: dict[str, Collector] = {}
    for name in replay_plan.collectors:
        options = msgspec.structs.replace(collectors[name], spool=SpoolConfig(enabled=False))
        built[name] = registry.build_collector(name, options, context)
    return built


def _as_workers_filter(config: Config, replay_plan: ReplayPlan, registry: Registry) -> Config:
    """The config with the fields the replayed types' preprocessors read from the client (a plugin's `input_fields`)
    denied to untrusted collectors, as the workers deny them (preprocessors.with_preprocessor_inputs): the log holds
    them, and a replay must not send what live traffic did not. It takes building those preprocessors, as a worker
    does (their keys and files read): one that cannot be built stops the replay before anything is sent."""
    if all(config.collectors[name].trusted for name in replay_plan.collectors):
        return config
    replayed = {name for types in replay_plan.collectors.values() for name in types}
    event_types = {name: spec for name, spec in config.event_types.items() if name in replayed}
    preprocessors: dict[str, Preprocessor] = {}
    for name in sorted({name for spec in event_types.values() for name in spec.preprocessors}):
        try:
            preprocessors[name] = registry.build_preprocessor(name, config.preprocessors[name], config.data_dir)
        except Exception as exc:
            raise ReplayError(
                f"preprocessor {name} cannot be built ({exc}); without it the fields it reads from the client "
                "are not known, and could reach an untrusted collector"
            ) from exc
    return with_preprocessor_inputs(msgspec.structs.replace(config, event_types=event_types), preprocessors)


async def replay(
    paths: Iterable[Path],
    collectors: dict[str, Collector],
    replay_plan: ReplayPlan,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayReport:
    """Reads the logs in order and sends every qualifying event, once per id, to its collectors, batch by batch; a
    batch is retried with backoff until delivered (or refused for good), for at most give_up_after_s per batch.
    `progress` is told the events and bytes read so far, every PROGRESS_BYTES of the files and at the end (of the
    pass that sends). A file that is not a tracker log stops the replay before anything is sent (ReplayError); a
    compressed log cut short is one (delivery.md: every reader yields what decoded), replayed up to where it ends
    and listed in the report's `read.truncated`; a file gone when opened (compressed meanwhile is not gone: it is
    read under its new name) in `read.missing`. A collector that gives up stops the replay: the report says so in
    `gave_up`, and counts what was done."""
    started = time.monotonic()
    report = ReplayReport(collectors={name: CollectorReport() for name in collectors})
    fed_by = {name: frozenset(types) for name, types in replay_plan.collectors.items()}
    try:
        files = log_files(paths)
    except LogSearchError as exc:
        raise ReplayError(str(exc)) from None
    for path in files:
        if (reason := not_a_log(path)) is not None:
            raise ReplayError(reason)
    report.files = len(files)

    told = 0

    def consumed(size: int) -> None:  # progress every PROGRESS_BYTES read, filtered stretches included
        nonlocal told
        report.bytes += size
        if progress is not None and report.bytes >= told + PROGRESS_BYTES:
            told = report.bytes
            progress(report.read.events, report.bytes)

    # As a worker starts them: one whose start fails or hangs retries it meanwhile, its sends failing until then.
    await asyncio.gather(*(collector.launch() for collector in collectors.values()))
    try:
        batches: dict[str, list[Event]] = {name: [] for name in collectors}
        # Events no chosen collector takes are filtered before the repeats are looked for: a repeat of such an
        # event is not a duplicate of this replay (it sends neither).
        taken = frozenset().union(*fed_by.values())
        chosen: dict[str, tuple[int, int]] = {}
        if replay_plan.earliest:
            scratch = ReplayReport()
            chosen = _earliest(_qualifying(read_located(files, scratch.read), replay_plan, scratch, taken), replay_plan)
        read = _qualifying(read_located(files, report.read, consumed), replay_plan, report, taken)
        for event in _once(_skip_later(read, chosen, report), replay_plan, report):
            for name, batch in batches.items():
                if event.type in fed_by[name]:
                    batch.append(event)
                    if len(batch) >= replay_plan.batch_events:
                        await _send(collectors[name], batch, report.collectors[name], replay_plan)
                        batch.clear()
            report.replayed += 1
        for name, batch in batches.items():
            if batch:
                await _send(collectors[name], batch, report.collectors[name], replay_plan)
    except GaveUp as exc:
        report.gave_up = str(exc)
    finally:
        await close_all(list(collectors.values()), drain_timeout_s=10.0)
    if progress is not None:
        progress(report.read.events, report.bytes)
    report.seconds = time.monotonic() - started
    return report


def _qualifying(
    events: Iterator[Located], replay_plan: ReplayPlan, report: ReplayReport, taken: frozenset[str]
) -> Iterator[Located]:
    """The events in the period, of the asked types, that a chosen collector takes; the others are filtered."""
    since, until, types = replay_plan.since_ms, replay_plan.until_ms, replay_plan.types
    for located in events:
        event = located[1]
        too_early = since is not None and event.ts < since
        too_late = until is not None and event.ts >= until
        if too_early or too_late or event.type not in taken or (types is not None and event.type not in types):
            report.filtered += 1
        else:
            yield located


def _earliest(events: Iterator[Located], replay_plan: ReplayPlan) -> dict[str, tuple[int, int]]:
    """The first pass: where the earliest line of an id is (reader.precedence), for the ids whose earliest line is
    not their first read, among the same window of latest ids as _once (only the time of each is kept: a later
    line of the same time comes after in precedence too). Usually few ids, so little memory."""
    window: OrderedDict[str, int] = OrderedDict()
    chosen: dict[str, tuple[int, int]] = {}
    for where, event in events:
        earliest = window.get(event.id)
        if earliest is None:
            window[event.id] = event.ts
            if len(window) > replay_plan.dedupe_window:
                window.popitem(last=False)
        elif event.ts < earliest:
            window[event.id] = event.ts
            chosen[event.id] = where
    return chosen


def _skip_later(events: Iterator[Located], chosen: dict[str, tuple[int, int]], report: ReplayReport) -> Iterator[Event]:
    """The events, but of an id in `chosen` only the line there: the others are duplicates."""
    for where, event in events:
        at = chosen.get(event.id)
        if at is not None and at != where:
            report.duplicates += 1
            continue
        yield event


def _once(events: Iterator[Event], replay_plan: ReplayPlan, report: ReplayReport) -> Iterator[Event]:
    """The first event of each id; the repeats (a retried request, logs given twice) are counted as duplicates."""
    seen: OrderedDict[str, None] = OrderedDict()
    for event in events:
        if event.id in seen:
            report.duplicates += 1
            continue
        seen[event.id] = None
        if len(seen) > replay_plan.dedupe_window:
            seen.popitem(last=False)
        yield event


async def _send(collector: Collector, batch: list[Event], report: CollectorReport, replay_plan: ReplayPlan) -> None:
    give_up_at = time.monotonic() + replay_plan.give_up_after_s
    delay = 0.2
    dropped_before = collector.stats.dropped
    privacy_filter = collector.privacy_filter  # the log keeps what its collectors may not receive
    outgoing = list(batch) if privacy_filter is None else [privacy_filter(event) for event in batch]
    while not await collector.deliver(list(outgoing)):
        report.retries += 1
        # Retries up to the deadline, the last one at it: a backoff step longer than the time left is cut short.
        remaining = give_up_at - time.monotonic()
        if remaining <= 0:
            raise GaveUp(
                f"collector {collector.name}: not delivered after {replay_plan.give_up_after_s:g} s of retries "
                f"({report.sent} events sent before); the replay can be run again safely"
            )
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, 10.0)
    refused = collector.stats.dropped - dropped_before
    report.events += len(batch)
    report.refused += refused
    report.sent += len(batch) - refused
