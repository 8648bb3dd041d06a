"""The banker's model and both stores (SQLite on disk, Redis on the shared server): each event id debited once,
budgets crossed notify once, overspend is kept, pacing caps an hour, concurrent writers stay exact."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from conftest import make_event
from trackpoint.collectors.banker.collector import BankerCollector
from trackpoint.collectors.banker.config import BankerCollectorConfig, parse_rate
from trackpoint.collectors.banker.model import Budget, Debit, DebitRule, Notification, TrackerStatus, hour_of, stale_ms
from trackpoint.collectors.banker.sqlite_store import SqliteStore
from trackpoint.collectors.banker.store import Store, StoreUnavailable, open_store
from trackpoint.collectors.base import CollectorContext, SendResult
from trackpoint.collectors.sqlite import SqliteFile
from trackpoint.event import Event

REDIS_URL = os.environ.get("TRACKPOINT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DAY_MS = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def banker(**options: Any) -> BankerCollectorConfig:
    return msgspec.convert({"type": "banker", **options}, BankerCollectorConfig)


def win(i: int, price_micros_cpm: int, cid: str = "c1", cur: str | None = None, ts: int = T0) -> Event:
    event = make_event(i, "win")
    event.dims = {"imp": f"imp-{i}", "cid": cid, **({"cur": cur} if cur else {})}
    event.metrics = {"price": price_micros_cpm}
    event.ts = ts
    return event


def micros(rule: DebitRule, event: Event) -> int:
    made = rule.debit(event)
    assert made is not None
    return made.micros


def debit(i: int, micros: int, cid: str = "c1", ts: int = T0) -> Debit:
    return Debit(f"e{i}", cid, micros, ts, "win")


# --- the model ---------------------------------------------------------------------------------------------------


def test_debit_is_cpm_over_1000_rounded_half_up_once() -> None:
    rule = DebitRule(banker())
    assert rule.debit(win(1, 1_500_000)) == Debit(win(1, 0).id, "c1", 1500, T0, "win")  # CPM 1.50 → 0.0015
    assert micros(rule, win(2, 1_499)) == 1  # 1.499 micros → 1
    assert micros(rule, win(3, 1_500)) == 2  # 1.5 → 2 (half up)
    assert micros(rule, win(4, 499)) == 0
    item = DebitRule(banker(price_unit="item"))
    assert micros(item, win(5, 1_500_000)) == 1_500_000


def test_currency_is_converted_exactly_or_the_event_is_skipped_and_counted() -> None:
    rule = DebitRule(banker(rates={"EUR": "1.08", "JPY": "0.0067"}))
    assert micros(rule, win(1, 2_000_000, cur="EUR")) == 2160  # 2.00 EUR CPM → 0.00216 USD
    assert micros(rule, win(2, 2_000_000, cur="usd")) == 2000
    assert micros(rule, win(3, 150_000_000, cur="JPY")) == 1005  # 150 JPY CPM x 0.0067 / 1000
    assert rule.debit(win(4, 2_000_000, cur="GBP")) is None
    no_campaign = win(5, 1000)
    del no_campaign.dims["cid"]
    assert rule.debit(no_campaign) is None
    no_price = win(6, 0)
    no_price.metrics = {}
    assert rule.debit(no_price) is None
    assert rule.skipped == {"no_campaign": 1, "no_price": 1, "currency_unknown": 1, "negative": 0}


@pytest.mark.parametrize(
    ("code", "rate", "message"),
    [("EURO", "1", "not an ISO 4217"), ("EUR", "abc", "not a decimal"), ("EUR", "0", "positive"),
     ("EUR", "-1.5", "positive"), ("EUR", "NaN", "positive")],
)  # fmt: skip
def test_bad_rates_are_config_errors(code: str, rate: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rate(code, rate)
    with pytest.raises(msgspec.ValidationError, match=message):
        banker(rates={code: rate})


def test_budget_validation() -> None:
    assert msgspec.json.decode(b'{"total_budget_micros": 5}', type=Budget).daily_budget_micros is None
    for bad in (b"{}", b'{"total_budget_micros": -1}', b'{"total_budget_micros": "5"}',
                b'{"total_budget_micros": 5, "weekly": 1}', b'{"total_budget_micros": 1e30}'):  # fmt: skip
        with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)):
            msgspec.json.decode(bad, type=Budget)


def test_stale_ms_counts_backlogs_and_silent_trackers() -> None:
    now = T0
    assert stale_ms([], now, 1.0) == 0
    assert stale_ms([TrackerStatus(now - 500, 0, 0)], now, 1.0) == 0
    assert stale_ms([TrackerStatus(now - 500, 10, now - 40_000)], now, 1.0) == 40_000
    assert stale_ms([TrackerStatus(now - 9_000, 0, 0), TrackerStatus(now, 1, now - 100)], now, 1.0) == 9_000


# --- both stores ---------------------------------------------------------------------------------------------------

StoreFactory = Callable[..., Awaitable[Store]]


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.e2e)])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def stores(kind: str, tmp_path: Path, **options: Any) -> AsyncIterator[Callable[[], Store]]:
    """Makes stores over one shared state (one database file, or one Redis key prefix, removed afterwards)."""
    prefix = f"tptest:{uuid.uuid4().hex[:12]}:banker"
    options.setdefault("unknown_campaigns", "create")  # most tests debit campaigns they never set up
    config = banker(store=kind, redis_url=REDIS_URL, key_prefix=prefix, **options)
    made: list[Store] = []

    def make() -> Store:
        made.append(open_store(config, str(tmp_path)))
        return made[-1]

    try:
        yield make
    finally:
        for store in made:
            await store.close()
        if kind == "redis":
            client = Redis.from_url(REDIS_URL)
            stale = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
            for start in range(0, len(stale), 1000):
                await client.delete(*stale[start : start + 1000])
            await client.aclose()


def test_each_event_id_is_debited_once(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with stores(kind, tmp_path) as make:
            store = make()
            first = await store.apply([debit(1, 100), debit(2, 250), debit(1, 100)], T0)
            assert (first.applied, first.duplicates) == (2, 1)
            again = await store.apply([debit(2, 250), debit(1, 100), debit(3, 5, cid="c2")], T0)
            assert (again.applied, again.duplicates) == (1, 2)
            c1 = await store.campaign("c1")
            assert c1 is not None and (c1.spent_micros, c1.debits) == (350, 2)
            assert c1.total_budget_micros is None and c1.state(T0).remaining_micros is None
            assert [d.id for d in await store.ledger("c1")] == ["e1", "e2"]
            assert [d.id for d in await store.ledger("c1", limit=1)] == ["e2"]
            assert await store.applied_ids(["e1", "e3", "e9"]) == {"e1", "e3"}
            assert [c.id for c in await store.campaigns()] == ["c1", "c2"]
            assert await store.campaign("nope") is None

    asyncio.run(scenario())


def test_only_created_campaigns_are_debited_and_listed_a_page_at_a_time(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with stores(kind, tmp_path, unknown_campaigns="ignore") as make:
            store = make()
            await store.set_budget("c1", Budget(total_budget_micros=10_000), T0)
            forged = [debit(100 + i, 5000, cid=f"rnd{i}") for i in range(50)]
            result = await store.apply([debit(1, 100), *forged, debit(1, 100)], T0)
            assert (result.applied, result.unknown, result.duplicates) == (1, 50, 1)
            assert [c.id for c in await store.campaigns()] == ["c1"]  # random ids created nothing
            assert await store.applied_ids([d.id for d in forged]) == set()  # not marked: a replay can debit them
            await store.set_budget("rnd3", Budget(total_budget_micros=1), T0)
            again = await store.apply(forged[:5], T0)
            assert (again.applied, again.unknown) == (1, 4)
            for i in range(7):
                await store.set_budget(f"p{i}", Budget(total_budget_micros=1), T0)
            pages, after = [], ""
            while page := [c.id for c in await store.campaigns(after, 4)]:
                pages.append(page)
                after = page[-1]
            assert pages == [["c1", "p0", "p1", "p2"], ["p3", "p4", "p5", "p6"], ["rnd3"]]

    asyncio.run(scenario())


def test_a_crossed_budget_notifies_once_and_overspend_is_kept(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with stores(kind, tmp_path) as make:
            store = make()
            await store.set_budget("c1", Budget(total_budget_micros=10_000), T0)
            results = [await store.apply([debit(i, 4000)], T0) for i in range(4)]
            notes = [note for result in results for note in result.notifications]
            assert [(n.reason, n.event_id, n.spent_micros, n.budget_micros) for n in notes] == [
                ("total", "e2", 12_000, 10_000)
            ]
            state = (await store.campaign("c1")).state(T0)  # type: ignore[union-attr]
            assert (state.spent_micros, state.remaining_micros, state.overspend_micros) == (16_000, 0, 6_000)
            assert state.exhausted and state.exhausted_reason == "total"
            assert len(await store.ledger("c1")) == 4  # the debits after the crossing are in the books
            assert [n.event_id for n in await store.notifications("", 10)] == ["e2"]
            # Raising the budget re-arms it: crossing again notifies again, once.
            await store.set_budget("c1", Budget(total_budget_micros=20_000), T0)
            state = (await store.campaign("c1")).state(T0)  # type: ignore[union-attr]
            assert not state.exhausted and state.remaining_micros == 4000
            later = [await store.apply([debit(i, 4000)], T0) for i in range(4, 7)]
            assert [n.event_id for r in later for n in r.notifications] == ["e4"]  # 16,000 + 4,000 = 20,000
            everything = await store.notifications("0", 10)
            assert [n.event_id for n in everything] == ["e2", "e4"]
            assert [n.event_id for n in await store.notifications(everything[0].seq, 10)] == ["e4"]

    asyncio.run(scenario())


def test_daily_budgets_count_the_events_own_day(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with stores(kind, tmp_path) as make:
            store = make()
            await store.set_budget("c1", Budget(total_budget_micros=10**9, daily_budget_micros=5000), T0)
            day2 = T0 + DAY_MS
            result = await store.apply(
                [debit(1, 3000), debit(2, 3000, ts=day2), debit(3, 3000), debit(4, 1000), debit(5, 2000, ts=day2)],
                T0,
            )
            assert [(n.reason, n.period, n.event_id) for n in result.notifications] == [
                ("daily", "20260101", "e3"), ("daily", "20260102", "e5"),
            ]  # fmt: skip
            raw = await store.campaign("c1")
            assert raw is not None and raw.day_spent == {"20260101": 7000, "20260102": 5000}
            assert raw.state(T0 + 1000).exhausted_reason == "daily"
            assert raw.state(T0 + 2 * DAY_MS).exhausted is False  # a new day
            late = await store.apply([debit(6, 100)], T0 + 2 * DAY_MS)  # a late win of day 1: no second notice
            assert late.applied == 1 and late.notifications == []

    asyncio.run(scenario())


def test_even_pacing_caps_each_hour(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with stores(kind, tmp_path, pacing="even", pacing_slack=1.5) as make:
            store = make()
            state = await store.set_budget("c1", Budget(total_budget_micros=10**9, daily_budget_micros=24_000), T0)
            assert state.hourly_cap_micros == 1500  # 24,000 x 1.5 / 24
            hour2 = T0 + 3_600_000
            result = await store.apply(
                [debit(1, 1000), debit(2, 1000), debit(3, 1000), debit(4, 1000, ts=hour2), debit(5, 600, ts=hour2)],
                T0,
            )
            assert [(n.reason, n.period, n.event_id) for n in result.notifications] == [
                ("paced", "2026010100", "e2"), ("paced", "2026010101", "e5"),
            ]  # fmt: skip
            raw = await store.campaign("c1")
            assert raw is not None
            now_state = raw.state(hour2 + 10)
            assert now_state.paced and now_state.hour == hour_of(hour2) and now_state.hour_spent_micros == 1600
            assert not raw.state(hour2 + 3_600_000).paced  # the next hour starts afresh
            explicit = await store.set_budget("c2", Budget(total_budget_micros=10, hourly_budget_micros=7), T0)
            assert explicit.hourly_cap_micros == 7

    asyncio.run(scenario())


def test_concurrent_writers_debit_each_id_once(kind: str, tmp_path: Path) -> None:
    """Four stores (connections) apply overlapping shuffled batches at once: the spend is exact."""

    async def scenario() -> None:
        async with stores(kind, tmp_path) as make:
            writers = [make() for _ in range(4)]
            await writers[0].set_budget("c1", Budget(total_budget_micros=500_000), T0)
            debits = [debit(i, 1 + i % 7, cid=f"c{i % 3}") for i in range(2000)]
            expected = {f"c{k}": sum(d.micros for d in debits if d.campaign == f"c{k}") for k in range(3)}

            notes = await asyncio.gather(*(feed_shuffled(w, debits, seed, 250) for seed, w in enumerate(writers)))
            for campaign, spent in expected.items():
                raw = await writers[0].campaign(campaign)
                assert (
                    raw is not None
                    and raw.spent_micros == spent
                    and raw.debits == sum(1 for d in debits if d.campaign == campaign)
                )
            assert [n.campaign for batch in notes for n in batch] == []  # c1's budget is above its spend
            assert sorted(d.id for d in await writers[1].ledger("c0")) == sorted(
                d.id for d in debits if d.campaign == "c0"
            )

    asyncio.run(scenario())


def test_status_reports_feed_staleness(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with stores(kind, tmp_path) as make:
            store = make()
            now = int(time.time() * 1000)
            await store.report_status("a", TrackerStatus(now, 0, 0))
            await store.report_status("b", TrackerStatus(now, 12, now - 30_000))
            assert sorted(s.backlog for s in await store.statuses()) == [0, 12]
            assert stale_ms(await store.statuses(), now, 1.0) == 30_000
            await store.forget_status("b")
            assert stale_ms(await store.statuses(), now, 1.0) == 0

    asyncio.run(scenario())


@pytest.mark.e2e
def test_redis_publishes_notifications_on_its_channel(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with stores("redis", tmp_path) as make:
            store = make()
            client = Redis.from_url(REDIS_URL)
            pubsub = client.pubsub()
            await pubsub.subscribe(f"{store.config.key_prefix}:notifications")
            await pubsub.get_message(timeout=1.0)  # the subscription confirmation
            await store.set_budget("c1", Budget(total_budget_micros=1), T0)
            await store.apply([debit(1, 5)], T0)
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)
            assert message is not None
            note = msgspec.json.decode(message["data"], type=Notification)
            assert (note.campaign, note.reason, note.event_id, note.spent_micros) == ("c1", "total", "e1", 5)
            await pubsub.aclose()
            await client.aclose()

    asyncio.run(scenario())


def test_an_unreachable_store_raises_store_unavailable(tmp_path: Path) -> None:
    async def scenario() -> None:
        from conftest import free_port

        config = banker(store="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5,
                        connect_timeout_s=0.5)  # fmt: skip
        store = open_store(config, str(tmp_path))
        with pytest.raises(StoreUnavailable):
            await store.apply([debit(1, 5)], T0)
        with pytest.raises(StoreUnavailable):
            await store.campaign("c1")
        await store.close()

    asyncio.run(scenario())


@pytest.mark.e2e
def test_the_collector_reports_how_far_behind_it_is(tmp_path: Path) -> None:
    """While the store is down the collector holds its debits (memory, then spool) and says since when it is
    behind; once the store is back they are applied once and the report clears."""
    from conformance.target_redis_streams import make_target
    from conftest import until

    async def scenario() -> None:
        server = await make_target()
        try:
            collector = fast_collector(server.url, tmp_path)
            await collector.start()
            await server.stop()
            started = int(time.time() * 1000)
            for i in range(50):
                collector.offer(win(i, 1_000_000))
            collector.offer(win(0, 1_000_000))  # a repeat
            await until(lambda: asyncio.sleep(0, collector.stats.retried > 0), what="a failed send")
            status = collector.status()
            assert status.backlog == 51 and started <= status.oldest_ms <= int(time.time() * 1000)
            assert not collector.health().healthy and "redis" in collector.health().detail
            await server.start()
            await until(lambda: asyncio.sleep(0, collector.applied == 50), timeout_s=15, what="the held debits")
            assert collector.duplicates == 1
            await until(lambda: asyncio.sleep(0, collector.status().oldest_ms == 0), what="a clean report")
            store = collector.store
            await until(lambda: _fresh(store), what="the store to see this tracker caught up")
            raw = await store.campaign("c1")
            assert raw is not None and raw.spent_micros == 50 * 1000
            await collector.close(2.0)
        finally:
            await server.close()

    asyncio.run(scenario())


async def _fresh(store: Store) -> bool:
    return stale_ms(await store.statuses(), int(time.time() * 1000), 0.1) == 0


# --- audit: exactness under contention, retries and broken stores -------------------------------------------------


def test_concurrent_writers_crossing_a_budget_notify_once(kind: str, tmp_path: Path) -> None:
    """Four writers race over one campaign whose budget is crossed mid-stream: one notification in all, and every
    debit after it still in the books."""

    async def scenario() -> None:
        async with stores(kind, tmp_path) as make:
            writers = [make() for _ in range(4)]
            await writers[0].set_budget("c1", Budget(total_budget_micros=5_000), T0)
            debits = [debit(i, 10) for i in range(1000)]  # 10,000 micros: the budget is crossed halfway

            batches = await asyncio.gather(*(feed_shuffled(w, debits, seed, 50) for seed, w in enumerate(writers)))
            notes = [n for batch in batches for n in batch]
            assert [(n.campaign, n.reason, n.spent_micros) for n in notes] == [("c1", "total", 5_000)]
            assert [n.event_id for n in await writers[2].notifications("", 10)] == [notes[0].event_id]
            state = (await writers[3].campaign("c1")).state(T0)  # type: ignore[union-attr]
            assert (state.spent_micros, state.overspend_micros, state.debits) == (10_000, 5_000, 1000)
            assert sum(d.micros for d in await writers[1].ledger("c1")) == 10_000

    asyncio.run(scenario())


@pytest.mark.e2e
def test_redis_remembers_each_event_id_for_the_retention(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with stores("redis", tmp_path, retention_s=7200) as make:
            store = make()
            await store.apply([debit(1, 5)], T0)
            client = Redis.from_url(REDIS_URL)
            ttl = await client.ttl(f"{store.config.key_prefix}:seen:e1")
            await client.aclose()
            assert 7190 <= ttl <= 7200

    asyncio.run(scenario())


def test_a_notification_seq_the_store_never_issues_is_a_value_error(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with stores(kind, tmp_path) as make:
            store = make()
            bad = ["5-0", "x"] if kind == "sqlite" else ["99999999999999999999999", "1-99999999999999999999999", "x"]
            for seq in bad:
                with pytest.raises(ValueError, match="is not a notification seq of this store"):
                    await store.notifications(seq, 10)
            assert await store.notifications("0", 10) == []

    asyncio.run(scenario())


def test_sqlite_serves_one_call_at_a_time_even_when_one_is_abandoned(tmp_path: Path) -> None:
    """A send cut off by its timeout leaves its thread running on the shared connection: the next call must wait
    for it, or its BEGIN would land inside the first one's transaction (and its ROLLBACK undo part of it)."""
    import threading

    from trackpoint.collectors.banker.sqlite_store import SqliteStore

    async def scenario() -> None:
        store = open_store(banker(unknown_campaigns="create"), str(tmp_path))
        assert isinstance(store, SqliteStore)
        running, release = threading.Event(), threading.Event()
        overlapped: list[bool] = []

        def slow(db: Any) -> int:
            running.set()
            release.wait(5)
            return 1

        def next_call(db: Any) -> int:
            overlapped.append(not release.is_set())
            return 2

        first = asyncio.ensure_future(store._run(slow))
        assert await asyncio.to_thread(running.wait, 5)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(first, 0.05)  # abandoned, as the collector's send timeout does
        follow = asyncio.ensure_future(store._run(next_call))
        await asyncio.sleep(0.2)
        release.set()
        assert await follow == 2
        assert overlapped == [False]
        await store.close()

    asyncio.run(scenario())


def test_an_unusable_sqlite_path_is_store_unavailable(tmp_path: Path) -> None:
    async def scenario() -> None:
        (tmp_path / "not-a-dir").write_text("")
        store = open_store(banker(), str(tmp_path / "not-a-dir"))
        with pytest.raises(StoreUnavailable):
            await store.apply([debit(1, 5)], T0)
        await store.close()

    asyncio.run(scenario())


@pytest.mark.e2e
def test_events_that_are_no_debit_are_counted_once_however_often_their_batch_is_retried(tmp_path: Path) -> None:
    from conformance.target_redis_streams import make_target
    from conftest import until

    async def scenario() -> None:
        server = await make_target()
        try:
            collector = fast_collector(server.url, tmp_path)
            await collector.start()
            await server.stop()
            collector.offer(win(1, 1_000_000))
            collector.offer(win(2, 1_000_000, cur="GBP"))  # no rate: not a debit
            await until(lambda: asyncio.sleep(0, collector.stats.errors >= 3), what="three failed sends")
            await server.start()
            await until(lambda: asyncio.sleep(0, collector.applied == 1), timeout_s=15, what="the debit")
            assert collector.outcomes()["skipped_currency_unknown"] == 1
            await collector.close(2.0)
        finally:
            await server.close()

    asyncio.run(scenario())


@pytest.mark.e2e
def test_a_redis_batch_applies_whole_or_not_at_all(tmp_path: Path) -> None:
    """A key of the wrong type under the prefix fails the script before it writes anything: no id is marked seen
    without its spend, so the retry (once the key is fixed) applies every debit."""

    async def scenario() -> None:
        async with stores("redis", tmp_path) as make:
            store = make()
            prefix = store.config.key_prefix
            client = Redis.from_url(REDIS_URL)
            await client.set(f"{prefix}:days:c2", "not a hash")
            batch = [debit(1, 100), debit(2, 200, cid="c2"), debit(3, 300)]
            with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
                await store.apply(batch, T0)
            assert await store.applied_ids(["e1", "e2", "e3"]) == set()
            assert await store.campaign("c1") is None
            await client.delete(f"{prefix}:days:c2")
            result = await store.apply(batch, T0)
            assert (result.applied, result.duplicates) == (3, 0)
            await client.aclose()

    asyncio.run(scenario())


@pytest.mark.e2e
def test_a_redis_that_may_evict_makes_the_banker_unhealthy_until_it_is_set_to_noeviction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read from INFO memory at start and again periodically: maxmemory 0 (no limit) or noeviction is safe; a
    maxmemory with any other policy is not, whatever the store's reachability."""
    from conformance.target_redis_streams import make_target
    from conftest import until
    from trackpoint.collectors.banker import collector as banker_collector

    monkeypatch.setattr(banker_collector, "UNSAFE_CHECK_S", 0.1, raising=False)

    async def scenario() -> None:
        server = await make_target()
        client = Redis.from_url(server.url)
        try:
            await client.config_set("maxmemory", "64mb")
            await client.config_set("maxmemory-policy", "allkeys-lru")
            collector = fast_collector(server.url, tmp_path)
            await collector.start()
            await until(lambda: asyncio.sleep(0, not collector.health().healthy), what="the check at start")
            await client.config_set("maxmemory", "0")  # no limit: nothing is evicted
            await until(lambda: asyncio.sleep(0, collector.health().healthy), what="no limit to be safe")
            await client.config_set("maxmemory", "64mb")
            await until(lambda: asyncio.sleep(0, not collector.health().healthy), what="the eviction risk")
            detail = collector.health().detail
            assert "maxmemory-policy allkeys-lru" in detail and "set maxmemory-policy noeviction" in detail
            collector.offer(win(1, 1_000_000))  # debits still go through: unhealthy is a warning, not an outage
            await until(lambda: asyncio.sleep(0, collector.applied == 1), what="the debit")
            assert not collector.health().healthy
            await client.config_set("maxmemory-policy", "noeviction")
            await until(lambda: asyncio.sleep(0, collector.health().healthy), what="the check to clear")
            await collector.close(2.0)
        finally:
            await client.aclose()
            await server.close()

    asyncio.run(scenario())


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_a_redis_cluster_node_makes_the_banker_unhealthy_with_the_reason(tmp_path: Path) -> None:
    """Pointed at a node of a Redis Cluster, every batch failed with CROSSSLOT (the script touches keys of many
    slots), read as an outage and retried for ever. The banker now says what is wrong, at start."""
    from conformance.redis_cluster import PrivateRedisCluster
    from conftest import until

    async def scenario() -> None:
        cluster = PrivateRedisCluster()
        try:
            await cluster.start()
            collector = fast_collector(cluster.urls[0], tmp_path)
            await collector.start()
            await until(
                lambda: asyncio.sleep(0, "node of a Redis Cluster" in collector.health().detail), what="the check"
            )
            assert not collector.health().healthy
            assert "point redis_url at a standalone Redis" in collector.health().detail
            await collector.close(1.0)
        finally:
            await cluster.close()

    asyncio.run(scenario())


def fast_collector(redis_url: str, tmp_path: Path) -> BankerCollector:
    """A banker collector on a private Redis with short timeouts and retries, for outage tests."""
    options = banker(
        store="redis", redis_url=redis_url, timeout_s=0.3, connect_timeout_s=0.2, flush_interval_ms=20,
        retry_initial_ms=20, retry_max_ms=100, status_interval_s=0.1, unknown_campaigns="create",
    )  # fmt: skip
    return BankerCollector("banker", options, CollectorContext(data_dir=str(tmp_path)))


async def feed_shuffled(writer: Store, debits: list[Debit], seed: int, batch: int) -> list[Notification]:
    """Applies every debit through one writer, in its own shuffled order and batches; the notifications it got."""
    mine = debits[:]
    random.Random(seed).shuffle(mine)
    notes = []
    for start in range(0, len(mine), batch):
        notes += (await writer.apply(mine[start : start + batch], T0)).notifications
    return notes


def damage(database: Path) -> None:
    """Cuts a closed SQLite file to its first page, as a torn copy leaves it: it opens, and its tables are gone
    (SQLITE_CORRUPT, `database disk image is malformed`)."""
    assert not database.with_name(database.name + "-wal").exists()
    os.truncate(database, 4096)


def test_a_damaged_sqlite_file_is_store_unavailable_and_the_collector_unhealthy_until_restored(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = banker(sqlite_path="banker/banker.db")
        first = open_store(config, str(tmp_path))
        await first.set_budget("c1", Budget(total_budget_micros=10**9), T0)
        await first.apply([debit(1, 5)], T0)
        await first.close()
        database = tmp_path / "banker" / "banker.db"
        backup = database.read_bytes()
        damage(database)

        collector = BankerCollector("banker", config, CollectorContext(str(tmp_path)))
        assert await collector.send([win(2, 5000)]) is SendResult.RETRY  # spooled for later, as in any outage
        health = collector.health()
        assert not health.healthy and str(database) in health.detail and "malformed" in health.detail
        with pytest.raises(StoreUnavailable, match="malformed"):  # the admin API's 503 store_unavailable
            await collector.store.campaign("c1")
        # A bug is not an outage: it is raised as it is (and still makes the collector unhealthy).
        with pytest.raises(sqlite3.IntegrityError):
            await SqliteFile(tmp_path / "other.db", "", 1.0).run(_integrity_error)

        # The operator restores the file: the same collector applies the batch, without a restart.
        database.write_bytes(backup)
        assert await collector.send([win(2, 5000)]) is SendResult.DELIVERED
        assert collector.health().healthy
        state = await collector.store.campaign("c1")
        assert state is not None and (state.debits, state.spent_micros) == (2, 10)
        await collector.store.close()

    asyncio.run(scenario())


def _integrity_error(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE t (id TEXT PRIMARY KEY)")
    db.execute("INSERT INTO t VALUES ('a')")
    db.execute("INSERT INTO t VALUES ('a')")


def test_a_full_sqlite_database_reports_the_full_disk_not_the_rollback(tmp_path: Path) -> None:
    """SQLITE_FULL ends the transaction by itself: the ROLLBACK after it failed with "cannot rollback - no
    transaction is active", which replaced the real error in the logs and in StoreUnavailable."""

    async def scenario() -> None:
        store = open_store(banker(unknown_campaigns="create"), str(tmp_path))
        assert isinstance(store, SqliteStore)
        await store.apply([debit(0, 5)], T0)
        # A database that cannot grow: the same error as a full disk (SQLITE_FULL), without filling one.
        await store._file.run(lambda db: db.execute("PRAGMA max_page_count = 1"))
        with pytest.raises(StoreUnavailable, match="database or disk is full"):
            await store.apply([debit(i, 5, cid=f"c{i}") for i in range(1, 2000)], T0)
        await store._file.run(lambda db: db.execute("PRAGMA max_page_count = 1073741823"))
        await store.apply([debit(i, 5) for i in range(1, 2000)], T0)  # the connection is usable again
        assert len(await store.applied_ids([f"e{i}" for i in range(2000)])) == 2000
        await store.close()

    asyncio.run(scenario())
