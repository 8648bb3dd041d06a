"""Unit and property tests of the disk spool: FIFO across segments, the byte bound, acknowledgements that survive a
close or a crash, torn and corrupt tails cut off and counted, the directory lock and orphan discovery.

A crash is simulated by copying the directory of a spool that is still open: the files a killed process leaves.
"""

from __future__ import annotations

import itertools
import os
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trackpoint.collectors import spool as spool_module
from trackpoint.collectors.spool import HEADER, Recovery, Spool, SpoolLocked, orphans

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, database=None)  # no .hypothesis dir


def payload_of(ident: int, filler: int) -> bytes:
    """A payload that names its record: 8 bytes of id, then filler."""
    return ident.to_bytes(8, "little") + bytes([ident % 251]) * filler


def ident_of(payload: bytes) -> int:
    return int.from_bytes(payload[:8], "little")


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


@dataclass(frozen=True)
class Stored:
    start: int
    end: int
    payload: bytes


def stored_records(path: Path) -> list[Stored]:
    """The valid records of a segment file, parsed by the documented format, independently of the spool.

    Bytes that do not parse are skipped one at a time: damage before the acknowledged position stays in the file
    (the spool never reads there again).
    """
    data = path.read_bytes()
    found, offset = [], 0
    while offset + HEADER.size <= len(data):
        magic, length, _, checksum = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        payload = data[offset + HEADER.size : end]
        if (
            magic == b"TS"
            and end <= len(data)
            and zlib.crc32(payload, zlib.crc32(data[offset : offset + 10])) == checksum
        ):
            found.append(Stored(offset, end, payload))
            offset = end
        else:
            offset += 1
    return found


def crash_copy(directory: Path, target: Path) -> Path:
    """What a process killed now would leave behind: every file as written so far, no lock held."""
    shutil.copytree(directory, target)
    return target


def drain(spool: Spool) -> list[tuple[bytes, int]]:
    out = []
    while (record := spool.peek()) is not None:
        out.append(record)
        spool.pop()
    return out


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "w00"


@pytest.fixture
def opened(spool_dir: Path) -> Iterator[Spool]:
    spool = Spool(spool_dir, max_bytes=1 << 20, segment_bytes=256)
    spool.open()
    yield spool
    spool.close()


# --- the queue -----------------------------------------------------------------------------------------------------


def test_fifo_across_segment_rollover(opened: Spool, spool_dir: Path) -> None:
    records = [(payload_of(i, i * 7 % 90), i) for i in range(60)]
    for payload, events in records:
        assert opened.push(payload, events)
    assert len(segments(spool_dir)) > 5
    assert all(path.stat().st_size <= 256 for path in segments(spool_dir))
    assert (opened.records, opened.events) == (60, sum(range(60)))
    assert opened.bytes == sum(HEADER.size + len(payload) for payload, _ in records)
    assert opened.peek() == opened.peek() == records[0]  # peek leaves the record in place
    assert drain(opened) == records
    assert (opened.records, opened.events, opened.bytes) == (0, 0, 0)
    assert len(segments(spool_dir)) <= 1  # acknowledged segments are deleted; the one being written stays
    assert opened.peek() is None


def test_pop_on_empty_spool_raises(opened: Spool) -> None:
    with pytest.raises(IndexError):
        opened.pop()


def test_a_record_larger_than_a_segment_gets_a_segment_of_its_own(spool_dir: Path) -> None:
    spool = Spool(spool_dir, max_bytes=4096, segment_bytes=64)
    spool.open()
    assert spool.push(b"a" * 1000, 1)
    assert spool.push(b"b" * 10, 2)
    spool.close()
    spool.open()
    assert drain(spool) == [(b"a" * 1000, 1), (b"b" * 10, 2)]
    spool.close()


def test_max_bytes_bounds_the_spool_and_a_refused_push_writes_nothing(spool_dir: Path) -> None:
    spool = Spool(spool_dir, max_bytes=200, segment_bytes=1000)
    spool.open()
    assert spool.push(b"x" * 86, 1)  # 100 bytes with the header
    assert spool.push(b"y" * 86, 1)  # exactly max_bytes
    sizes = [path.stat().st_size for path in segments(spool_dir)]
    assert not spool.push(b"", 1)
    assert [path.stat().st_size for path in segments(spool_dir)] == sizes
    assert (spool.bytes, spool.records) == (200, 2)
    spool.pop()
    assert spool.push(b"z" * 86, 1)  # acknowledged bytes no longer count
    assert not spool.push(b"z", 1)
    spool.close()


def test_drop_oldest_returns_the_event_count(opened: Spool) -> None:
    for events in (3, 1024, 7):
        opened.push(b"batch", events)
    assert opened.drop_oldest() == 3
    assert opened.drop_oldest() == 1024
    assert (opened.records, opened.events) == (1, 7)
    assert opened.peek() == (b"batch", 7)


# --- acknowledgements across close and crash -----------------------------------------------------------------------


def test_acknowledgements_survive_close_and_reopen(opened: Spool, spool_dir: Path) -> None:
    records = [(payload_of(i, 30), 10 + i) for i in range(20)]
    for payload, events in records:
        opened.push(payload, events)
    for _ in range(7):
        opened.pop()
    opened.close()
    assert spool_dir.is_dir()
    recovery = opened.open()
    assert recovery == Recovery(records=13, events=sum(range(17, 30)), corrupt_bytes=0, corrupt_records=0)
    assert opened.bytes == 13 * (HEADER.size + 38)
    assert drain(opened) == records[7:]


def thirty_pushed_twelve_popped(spool_dir: Path, segment_bytes: int) -> tuple[Spool, list[tuple[bytes, int]]]:
    """An open spool with 30 records pushed and the first 12 popped, and the records."""
    spool = Spool(spool_dir, max_bytes=1 << 20, segment_bytes=segment_bytes)
    spool.open()
    records = [(payload_of(i, 20), 1) for i in range(30)]
    for payload, events in records:
        spool.push(payload, events)
    for _ in range(12):
        spool.pop()
    return spool, records


def test_a_crash_redelivers_only_records_after_the_persisted_ack(tmp_path: Path, spool_dir: Path) -> None:
    spool, records = thirty_pushed_twelve_popped(spool_dir, 256)
    copy = crash_copy(spool_dir, tmp_path / "crashed")
    spool.close()
    survivor = Spool(copy, max_bytes=1 << 20, segment_bytes=256)
    survivor.open()
    out = drain(survivor)
    survivor.close()
    # The ack was not persisted yet (at most every ACK_INTERVAL_S): some records come again, none is missing.
    assert out == records[len(records) - len(out) :]
    assert 18 <= len(out) <= 30


def test_with_acks_persisted_at_every_pop_a_crash_redelivers_nothing(
    tmp_path: Path, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "ACK_INTERVAL_S", 0.0)
    spool = Spool(spool_dir, max_bytes=1 << 20, segment_bytes=256)
    spool.open()
    records = [(payload_of(i, 20), 1) for i in range(30)]
    for payload, events in records:
        spool.push(payload, events)
    for _ in range(12):
        spool.pop()
    copy = crash_copy(spool_dir, tmp_path / "crashed")
    spool.close()
    survivor = Spool(copy, max_bytes=1 << 20, segment_bytes=256)
    assert survivor.open().records == 18
    assert drain(survivor) == records[12:]
    survivor.close()


def test_a_drained_spool_says_so_durably(tmp_path: Path, spool_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the last record is acknowledged (and the flush loop has called persist_due) a crash re-delivers nothing,
    however late it comes, and the drained segment is gone from the disk."""
    monkeypatch.setattr(spool_module, "ACK_INTERVAL_S", 3600.0)  # no periodic save: the drain itself must say so
    spool = Spool(spool_dir, max_bytes=1 << 20, segment_bytes=1 << 16)
    spool.open()
    for i in range(30):
        spool.push(payload_of(i, 20), 1)
    assert len(drain(spool)) == 30
    spool.persist_due()
    assert segments(spool_dir) == []
    survivor = Spool(crash_copy(spool_dir, tmp_path / "crashed"), max_bytes=1 << 20)
    assert survivor.open() == Recovery(0, 0, 0, 0)
    survivor.close()
    spool.push(payload_of(30, 20), 1)  # and it goes on taking records, after the drained ones
    assert drain(spool) == [(payload_of(30, 20), 1)]
    spool.close()


def test_a_pending_ack_is_persisted_once_the_interval_has_passed(
    tmp_path: Path, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last pops of a drain that stops (the target down again) are saved by persist_due, which the collector's
    flush loop calls with or without deliveries: a crash later re-sends about ACK_INTERVAL_S of progress at most."""
    monkeypatch.setattr(spool_module, "ACK_INTERVAL_S", 3600.0)
    spool, records = thirty_pushed_twelve_popped(spool_dir, 1 << 16)
    spool.persist_due()  # not due yet
    early = Spool(crash_copy(spool_dir, tmp_path / "early"), max_bytes=1 << 20, segment_bytes=1 << 16)
    assert early.open().records == 30
    early.close()
    monkeypatch.setattr(spool_module, "ACK_INTERVAL_S", 0.0)  # the interval has passed
    spool.persist_due()
    late = Spool(crash_copy(spool_dir, tmp_path / "late"), max_bytes=1 << 20, segment_bytes=1 << 16)
    assert late.open().records == 18
    assert drain(late) == records[12:]
    late.close()
    spool.close()


def test_an_emptied_spool_removes_its_directory(opened: Spool, spool_dir: Path) -> None:
    opened.push(b"one", 1)
    opened.pop()
    opened.close()
    assert not spool_dir.exists()
    assert opened.open() == Recovery(0, 0, 0, 0)  # and opens again from nothing


# --- torn and corrupt data -----------------------------------------------------------------------------------------


def fill(spool_dir: Path, count: int, segment_bytes: int = 1 << 20) -> list[tuple[bytes, int]]:
    spool = Spool(spool_dir, max_bytes=1 << 20, segment_bytes=segment_bytes)
    spool.open()
    records = [(payload_of(i, 40), i + 1) for i in range(count)]
    for payload, events in records:
        spool.push(payload, events)
    spool.close()
    return records


def test_a_torn_tail_is_cut_off_and_counted(spool_dir: Path) -> None:
    records = fill(spool_dir, 5)
    [path] = segments(spool_dir)
    last = stored_records(path)[-1]
    os.truncate(path, last.start + 20)  # the crash hit the middle of the last write
    spool = Spool(spool_dir, max_bytes=1 << 20)
    assert spool.open() == Recovery(records=4, events=10, corrupt_bytes=20, corrupt_records=1)
    assert path.stat().st_size == last.start  # truncated, so it is counted once
    assert spool.push(b"after", 9)
    spool.close()
    assert spool.open() == Recovery(records=5, events=19, corrupt_bytes=0, corrupt_records=0)
    assert drain(spool) == [*records[:4], (b"after", 9)]
    spool.close()


def test_a_corrupt_byte_in_the_middle_keeps_the_prefix_and_later_segments(spool_dir: Path) -> None:
    records = fill(spool_dir, 12, segment_bytes=4 * (HEADER.size + 48))  # 4 records per segment
    _, second, _ = segments(spool_dir)
    stored = stored_records(second)
    with second.open("r+b") as file:  # one flipped bit in the payload of the second record of the second segment
        file.seek(stored[1].start + HEADER.size + 5)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0x01]))
    spool = Spool(spool_dir, max_bytes=1 << 20)
    recovery = spool.open()
    assert recovery.corrupt_bytes == stored[-1].end - stored[1].start
    assert recovery.corrupt_records == 3  # the damaged record and the two after it, found by their headers
    assert drain(spool) == records[:5] + records[8:]
    spool.close()


def test_a_changed_event_count_is_detected(spool_dir: Path) -> None:
    fill(spool_dir, 3)
    [path] = segments(spool_dir)
    stored = stored_records(path)
    data = bytearray(path.read_bytes())
    data[stored[2].start + 6] ^= 0x04  # the events field of the last record: the checksum covers the header too
    path.write_bytes(bytes(data))
    spool = Spool(spool_dir, max_bytes=1 << 20)
    recovery = spool.open()
    assert (recovery.records, recovery.corrupt_records) == (2, 1)
    spool.close()


def test_garbage_is_never_read_as_a_huge_length(spool_dir: Path) -> None:
    fill(spool_dir, 2)
    [path] = segments(spool_dir)
    size = path.stat().st_size
    with path.open("ab") as file:
        file.write(HEADER.pack(b"TS", 0xFFFFFFF0, 1, 0) + b"\0" * 100)  # plausible magic, absurd length
    spool = Spool(spool_dir, max_bytes=1 << 20)
    assert spool.open() == Recovery(records=2, events=3, corrupt_bytes=HEADER.size + 100, corrupt_records=1)
    assert path.stat().st_size == size
    spool.close()


def test_a_damaged_ack_file_redelivers_rather_than_loses(opened: Spool, spool_dir: Path) -> None:
    for i in range(6):
        opened.push(payload_of(i, 10), 1)
    opened.pop()
    opened.close()
    (spool_dir / "ack").write_bytes(b"\xff" * 20)
    assert opened.open().records == 6


# --- lock and orphans ----------------------------------------------------------------------------------------------


def test_a_second_spool_on_a_locked_directory_is_refused(opened: Spool, spool_dir: Path) -> None:
    with pytest.raises(SpoolLocked, match=f"pid {os.getpid()}"):
        Spool(spool_dir, max_bytes=1 << 20).open()
    opened.push(b"kept", 1)
    opened.close()
    other = Spool(spool_dir, max_bytes=1 << 20)
    assert other.open().records == 1  # released by close
    other.close()


def test_orphans_are_closed_spools_with_no_live_owner(tmp_path: Path) -> None:
    parent = tmp_path / "spool"
    closed = Spool(parent / "w01-p100", max_bytes=1 << 20)
    closed.open()
    closed.push(b"left behind", 1)
    closed.close()
    live = Spool(parent / "w02-p200", max_bytes=1 << 20)
    live.open()
    live.push(b"in use", 1)
    emptied = Spool(parent / "w03-p300", max_bytes=1 << 20)
    emptied.open()
    emptied.close()
    (parent / "not-a-spool").mkdir()
    assert orphans(parent) == [parent / "w01-p100"]
    assert orphans(parent, exclude=parent / "w01-p100") == []
    assert orphans(tmp_path / "missing") == []
    live.close()
    assert orphans(parent) == [parent / "w01-p100", parent / "w02-p200"]
    adopted = Spool(parent / "w01-p100", max_bytes=1 << 20)
    adopted.open()
    assert drain(adopted) == [(b"left behind", 1)]
    adopted.close()
    assert orphans(parent) == [parent / "w02-p200"]


# --- property: nothing pushed before the damage is lost, nothing unpushed appears ----------------------------------


@dataclass(frozen=True)
class Push:
    filler: int
    events: int


@dataclass(frozen=True)
class Pop:
    drop: bool


@dataclass(frozen=True)
class Reopen:
    crash: bool
    damage: str  # "none", "truncate" or "flip"
    segment: int
    position: float


OPERATIONS = st.lists(
    st.one_of(
        st.builds(Push, st.integers(0, 120), st.integers(0, 5000)),
        st.builds(Push, st.integers(0, 20), st.integers(0, 3)),
        st.builds(Push, st.integers(60, 120), st.integers(0, 3)),
        st.builds(Pop, st.booleans()),
        st.builds(Pop, st.just(False)),
        st.builds(
            Reopen,
            st.booleans(),
            st.sampled_from(["none", "truncate", "flip"]),
            st.integers(0, 50),
            st.floats(0, 1, exclude_max=True),
        ),
    ),
    max_size=80,
)


class Model:
    """What may and what must come out of the spool, given what the test pushed, popped and damaged."""

    def __init__(self) -> None:
        self.pushed: dict[int, tuple[bytes, int]] = {}
        self.expected: list[int] = []  # ids that must still come out, oldest first
        self.acknowledged: set[int] = set()  # popped before a clean close: must never come out again
        self.popped: set[int] = set()  # popped in this open: acknowledged by a clean close, not by a crash
        self.last_out = -1  # FIFO within one open: every record out is newer than the one before

    def check(self, spool: Spool) -> int | None:
        record = spool.peek()
        if record is None:
            assert not self.expected, f"lost {self.expected}"
            assert (spool.records, spool.events, spool.bytes) == (0, 0, 0)
            return None
        payload, events = record
        ident = ident_of(payload)
        assert self.pushed.get(ident) == (payload, events), "a record that was never pushed"
        assert ident not in self.acknowledged, f"{ident} came back after a clean close"
        assert ident > self.last_out, "out of order"
        assert not self.expected or self.expected[0] >= ident, f"lost {self.expected[0]}"
        return ident

    def out(self, ident: int) -> None:
        if self.expected and self.expected[0] == ident:
            self.expected.pop(0)
        self.popped.add(ident)
        self.last_out = ident

    def damaged(self, path: Path, cut: int) -> None:
        """Records reaching past the damaged byte may be lost (those before the ack may also still come out)."""
        lost = {ident_of(stored.payload) for stored in stored_records(path) if stored.end > cut}
        self.expected = [ident for ident in self.expected if ident not in lost]


def damage(directory: Path, reopen: Reopen, model: Model) -> None:
    files = segments(directory)
    if reopen.damage == "none" or not files:
        return
    path = files[reopen.segment % len(files)]
    size = path.stat().st_size
    if not size:
        return
    cut = int(reopen.position * size)
    model.damaged(path, cut)
    if reopen.damage == "truncate":
        os.truncate(path, cut)
    else:
        data = bytearray(path.read_bytes())
        data[cut] ^= 0xFF
        path.write_bytes(bytes(data))


@PROPERTY_SETTINGS
@given(OPERATIONS)
def test_random_pushes_pops_crashes_and_damage_never_lose_or_invent_records(
    operations: list[Push | Pop | Reopen],
) -> None:
    with TemporaryDirectory() as temporary:
        names = (Path(temporary) / f"spool{n}" for n in itertools.count())
        directory = next(names)
        spool = Spool(directory, max_bytes=400, segment_bytes=150)
        spool.open()
        model = Model()
        damaged = False
        for operation in operations:
            if isinstance(operation, Push):
                new_ident = len(model.pushed)
                payload = payload_of(new_ident, operation.filler)
                fits = spool.bytes + HEADER.size + len(payload) <= spool.max_bytes
                before = spool.bytes
                assert spool.push(payload, operation.events) == fits
                if fits:
                    model.pushed[new_ident] = (payload, operation.events)
                    model.expected.append(new_ident)
                else:
                    assert spool.bytes == before
            elif isinstance(operation, Pop):
                out = model.check(spool)
                if out is not None:
                    if operation.drop:
                        assert spool.drop_oldest() == model.pushed[out][1]
                    else:
                        spool.pop()
                    model.out(out)
            else:
                if operation.crash:
                    directory = crash_copy(directory, next(names))
                    spool.close()
                    model.popped = set()  # may all come again
                else:
                    spool.close()
                    model.acknowledged |= model.popped
                    model.popped = set()
                damage(directory, operation, model)
                damaged = damaged or operation.damage != "none"
                spool = Spool(directory, max_bytes=400, segment_bytes=150)
                recovery = spool.open()
                model.last_out = -1
                assert (recovery.records, recovery.events) == (spool.records, spool.events)
                assert recovery.corrupt_records >= (recovery.corrupt_bytes > 0)
                assert damaged or recovery.corrupt_bytes == 0
                assert spool.records >= len(model.expected)
        while (last := model.check(spool)) is not None:
            spool.pop()
            model.out(last)
        spool.close()
        assert not directory.exists()
