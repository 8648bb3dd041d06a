"""The banker end to end: real trackers (through the CLI) debiting win notices into a shared Redis or the embedded
SQLite store, the admin API, replays of the logs, `trackpoint banker reconcile`, and a Redis outage.

The exactness tests fire 100,000 distinct win notices plus 30% repeats, shuffled, split at random between two
tracker processes (or two workers of one): the spend must equal the sum over distinct impression ids to the
micro, and three replays of the logs afterwards must change nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from conformance.target_redis_streams import RedisStreamsTarget, make_target
from conftest import SmallDisk, Tracker
from trackpoint.adtech.price import encrypt_price
from trackpoint.plugins.builtin import default_event_types
from trackpoint.security.signing import sign_url

pytestmark = pytest.mark.e2e  # trackers and Redis

REDIS_URL = os.environ.get("TRACKPOINT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CAMPAIGNS = 20
# One key for every tracker of a test (each would generate its own into its data_dir): win notices are signed.
SIGNING_ENV, SIGNING_KEY = "TP_E2E_SIGNING_KEY", b"e2e-banker-signing-key-0123456789"
WIN_SIGNED = default_event_types()["win"].signed_params


@pytest.fixture(autouse=True)
def _signing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIGNING_ENV, SIGNING_KEY.decode())  # the tracker processes inherit it


def signed(path: str) -> str:
    """A notice as the DSP signs it: its own fields covered, the price left for the exchange."""
    return sign_url(path, "e2e", SIGNING_KEY, covered=WIN_SIGNED)


def banker_config(banker: dict[str, Any]) -> dict[str, Any]:
    """Trackers with a shared signing key; their bankers debit campaigns nobody created (the load tests)."""
    return {
        "signing": {"keys": {"e2e": {"secret_env": SIGNING_ENV}}},
        "collectors": {"banker": {"type": "banker", "flush_interval_ms": 20, "unknown_campaigns": "create", **banker}},
        "event_types": {
            "win": {"preset": "win", "collectors": ["log", "banker"]},
            "impression": {"preset": "impression"},
        },
    }


def eventually(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def admin_json(tracker: Tracker, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    status, _, payload = tracker.admin(method, path, None if body is None else json.dumps(body).encode())
    return status, json.loads(payload)


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trackpoint", *args], capture_output=True, text=True, timeout=300, check=False, cwd=cwd
    )


# --- load ----------------------------------------------------------------------------------------------------------


def win_notices(distinct: int, repeat_share: float, seed: int) -> tuple[list[str], dict[str, int]]:
    """Shuffled win-notice paths (repeats carry the same price, as a re-sent notice does) and the expected spend
    per campaign: the sum of round_half_up(CPM micros / 1000) over distinct impression ids."""
    rng = random.Random(seed)
    notices = []
    expected: dict[str, int] = {}
    for i in range(distinct):
        cid = f"c{i % CAMPAIGNS}"
        price_micros = rng.randrange(10_000, 20_000_000)  # CPM 0.01 to 20.00
        price = f"{price_micros // 1_000_000}.{price_micros % 1_000_000:06d}"
        notices.append(signed(f"/win?imp=imp-{seed}-{i}&cid={cid}&price={price}"))
        expected[cid] = expected.get(cid, 0) + (price_micros + 500) // 1000
    paths = notices + rng.choices(notices, k=int(distinct * repeat_share))
    rng.shuffle(paths)
    return paths, expected


async def _fire(port: int, paths: list[str], depth: int = 64) -> int:
    """Sends every path over keep-alive connections, `depth` pipelined requests at a time; counts 204 answers.
    Each connection stays under the tracker's default max_keepalive_requests (10,000). An answer that says
    `Connection: close` (the tracker's pipelining limits) is the connection's last: what it did not answer is sent
    again on a new one, as an HTTP/1.1 client that pipelines must."""
    connections = max(8, len(paths) // 5000)
    queue = [paths[i::connections] for i in range(connections)]

    async def one(mine: list[str]) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answered = sent = 0
        while sent < len(mine):
            chunk = mine[sent : sent + depth]
            writer.write(b"".join(f"GET {p} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for p in chunk))
            for _ in chunk:
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                answered += status == 204
                sent += 1
                if b"\r\nconnection: close" in head.lower():
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    break
        writer.close()
        return answered

    return sum(await asyncio.gather(*(one(mine) for mine in queue if mine)))


def fire(trackers: list[Tracker], paths: list[str], seed: int) -> None:
    rng = random.Random(seed)
    shares: list[list[str]] = [[] for _ in trackers]
    for path in paths:
        shares[rng.randrange(len(trackers))].append(path)

    async def everything() -> list[int]:
        return await asyncio.gather(*(_fire(t.port, share) for t, share in zip(trackers, shares, strict=True)))

    answered = asyncio.run(everything())
    assert answered == [len(share) for share in shares]


def spent(tracker: Tracker) -> dict[str, int]:
    status, document = admin_json(tracker, "GET", "/banker/campaigns")
    assert status == 200, document
    return {c["id"]: c["spent_micros"] for c in document["campaigns"]}


def ledger_sizes(tracker: Tracker) -> dict[str, int]:
    _, document = admin_json(tracker, "GET", "/banker/campaigns")
    return {c["id"]: c["debits"] for c in document["campaigns"]}


# --- exactness -----------------------------------------------------------------------------------------------------


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"tptest:{uuid.uuid4().hex[:12]}:banker"
    yield prefix

    async def clean() -> None:
        client = Redis.from_url(REDIS_URL)
        stale = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        for start in range(0, len(stale), 1000):
            await client.delete(*stale[start : start + 1000])
        await client.aclose()

    asyncio.run(clean())


def check_exact_and_replays(trackers: list[Tracker], expected: dict[str, int], half_budget: str) -> None:
    first = trackers[0]
    eventually(lambda: spent(first) == expected, 120, "the spend of every distinct win")
    debits = ledger_sizes(first)
    assert sum(debits.values()) == 100_000
    # The campaign whose budget was half its spend: one notification, and every debit after it in the ledger.
    _, notes = admin_json(first, "GET", "/banker/notifications?limit=1000")
    assert [(n["campaign"], n["reason"]) for n in notes["notifications"]] == [(half_budget, "total")]
    _, state = admin_json(first, "GET", f"/banker/campaigns/{half_budget}")
    assert state["exhausted"] and state["overspend_micros"] == expected[half_budget] - state["total_budget_micros"]
    for tracker in trackers:
        assert tracker.stop() == 0
    for _ in range(3):
        for tracker in trackers:
            result = cli("replay", "--config", str(tracker.config_path), "--collector", "banker",
                         str(tracker.data_dir / "logs"))  # fmt: skip
            assert result.returncode == 0, result.stderr
    reconciled = cli("banker", "reconcile", "--json", "--config", str(first.config_path),
                     *(str(t.data_dir / "logs") for t in trackers))  # fmt: skip
    report = json.loads(reconciled.stdout)
    assert reconciled.returncode == 0 and report["matches"], reconciled.stdout + reconciled.stderr
    assert {c["campaign"]: c["store_micros"] for c in report["campaigns"]} == expected
    assert report["duplicates_in_logs"] == 30_000  # every repeat was logged, and counted once
    first.start()
    assert spent(first) == expected and ledger_sizes(first) == debits


@pytest.mark.timeout(600)
def test_two_trackers_sharing_redis_debit_each_win_once(tracker_factory: Any, redis_prefix: str) -> None:
    config = banker_config({"store": "redis", "redis_url": REDIS_URL, "key_prefix": redis_prefix})
    trackers: list[Tracker] = [tracker_factory(config, name="a"), tracker_factory(config, name="b")]
    paths, expected = win_notices(100_000, 0.3, seed=1)
    status, _ = admin_json(trackers[0], "PUT", "/banker/campaigns/c7", {"total_budget_micros": expected["c7"] // 2})
    assert status == 200
    fire(trackers, paths, seed=2)
    check_exact_and_replays(trackers, expected, "c7")


@pytest.mark.timeout(600)
def test_two_workers_sharing_sqlite_debit_each_win_once(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory(banker_config({}), workers=2)
    paths, expected = win_notices(100_000, 0.3, seed=3)
    status, _ = admin_json(tracker, "PUT", "/banker/campaigns/c3", {"total_budget_micros": expected["c3"] // 2})
    assert status == 200
    fire([tracker], paths, seed=4)
    check_exact_and_replays([tracker], expected, "c3")


# --- admin API -----------------------------------------------------------------------------------------------------


def test_admin_api_sets_and_reads_budgets(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory(banker_config({"pacing": "even", "pacing_slack": 1.0}))
    status, state = admin_json(
        tracker, "PUT", "/banker/campaigns/summer%2F26", {"total_budget_micros": 10_000, "daily_budget_micros": 4800}
    )
    assert status == 200
    assert state["id"] == "summer/26" and state["remaining_micros"] == 10_000 and state["hourly_cap_micros"] == 200
    assert not state["exhausted"] and state["spent_micros"] == 0
    for i in range(3):
        assert tracker.get(signed(f"/win?imp=w{i}&cid=summer%2F26&price=0.1"))[0] == 204  # CPM 0.10: 100 micros each
    tracker.get(signed("/win?imp=w0&cid=summer%2F26&price=0.1"))  # a repeat
    assert tracker.get(signed("/win?imp=w-gbp&cid=summer%2F26&price=0.1&cur=GBP"))[0] == 204  # no rate: not debited
    eventually(lambda: admin_json(tracker, "GET", "/banker/campaigns/summer%2F26")[1]["debits"] == 3, 10, "debits")
    _, state = admin_json(tracker, "GET", "/banker/campaigns/summer%2F26")
    assert (state["spent_micros"], state["remaining_micros"], state["today_spent_micros"]) == (300, 9700, 300)
    assert state["paced"] and state["hour_spent_micros"] == 300 and state["stale_ms"] < 5000
    _, ledger = admin_json(tracker, "GET", "/banker/campaigns/summer%2F26/ledger?limit=2")
    assert [d["micros"] for d in ledger["debits"]] == [100, 100] and len(ledger["debits"]) == 2
    _, notes = admin_json(tracker, "GET", "/banker/notifications")
    assert [(n["campaign"], n["reason"]) for n in notes["notifications"]] == [("summer/26", "paced")]
    _, listing = admin_json(tracker, "GET", "/banker/campaigns")
    assert [c["id"] for c in listing["campaigns"]] == ["summer/26"]
    labels = 'collector="banker",outcome="{}"'
    assert tracker.wait_metric("trackpoint_collector_outcomes_total", labels.format("duplicates"), 1) == 1
    assert tracker.metric("trackpoint_collector_outcomes_total", labels.format("applied")) == 3
    assert tracker.metric("trackpoint_collector_outcomes_total", labels.format("notifications")) == 1
    assert tracker.metric("trackpoint_collector_outcomes_total", labels.format("skipped_currency_unknown")) == 1


INVALID_REQUESTS = [
    ("PUT", "/banker/campaigns/c1", {"total_budget_micros": -5}, 400, "invalid_budget"),
    ("PUT", "/banker/campaigns/c1", {"daily_budget_micros": 5}, 400, "invalid_budget"),
    ("PUT", "/banker/campaigns/c1", {"total_budget_micros": 5, "weekly": 1}, 400, "invalid_budget"),
    ("PUT", "/banker/campaigns/c1", "not an object", 400, "invalid_budget"),
    ("PUT", "/banker/campaigns/" + "x" * 300, {"total_budget_micros": 5}, 400, "invalid_campaign_id"),
    ("GET", "/banker/campaigns/unknown", None, 404, "campaign_unknown"),
    ("GET", "/banker/campaigns/c1/ledger?limit=0", None, 400, "invalid_query"),
    ("GET", "/banker/notifications?after=abc", None, 400, "invalid_query"),
    ("GET", "/banker/notifications?after=5-0", None, 400, "invalid_query"),  # a Redis seq, not SQLite's
    ("DELETE", "/banker/campaigns/c1", None, 405, "method_not_allowed"),
    ("GET", "/banker/campaigns?banker=other", None, 404, "banker_unknown"),
]


def test_admin_api_validation_errors(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory(banker_config({}))
    for method, path, body, status, error in INVALID_REQUESTS:
        got, document = admin_json(tracker, method, path, body)
        assert (got, document["error"]) == (status, error), (method, path, document)
    assert tracker.admin("DELETE", "/banker/campaigns/c1")[1]["allow"] == "GET, HEAD, PUT"  # what a 405 allows
    assert admin_json(tracker, "GET", "/banker/campaigns") == (
        200,
        {"campaigns": [], "next": None},
    )  # nothing was created


def test_admin_api_without_a_banker_says_so(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory({"event_types": {"win": {"preset": "win", "collectors": ["log"]}}})
    assert admin_json(tracker, "GET", "/banker/campaigns") == (
        404, {"error": "banker_not_configured", "detail": "no event type feeds a collector of type banker"},
    )  # fmt: skip


def test_the_embedded_default_debits_wins_into_sqlite(tracker: Tracker) -> None:
    assert tracker.admin("PUT", "/banker/campaigns/c1", b'{"total_budget_micros": 2000}')[0] == 200
    assert tracker.get(tracker.sign("/win?imp=x1&cid=c1&price=1.5"))[0] == 204
    assert tracker.get(tracker.sign("/win?imp=x2&cid=c1&price=1.5"))[0] == 204
    eventually(lambda: admin_json(tracker, "GET", "/banker/campaigns/c1")[1]["debits"] == 2, 10, "two debits")
    _, state = admin_json(tracker, "GET", "/banker/campaigns/c1")
    assert (state["spent_micros"], state["exhausted"], state["overspend_micros"]) == (3000, True, 1000)
    assert (tracker.data_dir / "banker" / "banker.db").exists()


def test_forged_wins_cannot_spend_or_create_campaigns(tracker: Tracker) -> None:
    """The attack of issue 13 (finding 3) on the embedded default: 12 unsigned wins at price=100000 against a
    1,000-unit budget, a signed nurl replayed with a bigger price, and wins for random campaign ids."""
    budget = 1000 * 1_000_000
    assert tracker.admin("PUT", "/banker/campaigns/c1", b'{"total_budget_micros": %d}' % budget)[0] == 200
    for i in range(12):
        status, headers, _ = tracker.get(f"/win?imp=forged-{i}&cid=c1&price=100000")
        assert (status, headers["x-reject-reason"]) == (403, "signature_missing")
    # The DSP's nurl: its fields and its bid (max_price, CPM 3) signed; the exchange substitutes the macros.
    nurl = tracker.sign("/win?imp=w1&cid=c1&crid=cr1&max_price=3&price=${AUCTION_PRICE}&auction=${AUCTION_ID}")
    status, headers, _ = tracker.get(nurl.replace("${AUCTION_PRICE}", "100000").replace("${AUCTION_ID}", "a1"))
    assert (status, headers["x-reject-reason"]) == (403, "price_above_bound")  # above the signed bid
    assert tracker.get(nurl.replace("cid=c1", "cid=c2").replace("${AUCTION_PRICE}", "1"))[0] == 403  # tampered
    # The currency the banker converts by is signed: a forger's GBP (1.27 x) or unknown one (never debited, and
    # the real notice then ignored as a repeat) is a broken signature, however it is added.
    for forged in (nurl + "&cur=GBP", nurl.replace("cid=c1", "cur=GBP&cid=c1")):
        status, headers, _ = tracker.get(forged.replace("${AUCTION_PRICE}", "2.5").replace("${AUCTION_ID}", "a1"))
        assert (status, headers["x-reject-reason"]) == (403, "signature_invalid"), forged
    assert tracker.get(nurl.replace("${AUCTION_PRICE}", "2.5").replace("${AUCTION_ID}", "a1"))[0] == 204
    assert tracker.get(nurl.replace("${AUCTION_PRICE}", "2.9").replace("${AUCTION_ID}", "a2"))[0] == 204  # replay
    # Signed wins for campaigns nobody created (ids an attacker could pick): recorded, never debited or created.
    for i in range(30):
        assert tracker.get(tracker.sign(f"/win?imp=r{i}&cid=rnd-{i}&price=1"))[0] == 204
    labels = 'collector="banker",outcome="{}"'
    assert tracker.wait_metric("trackpoint_collector_outcomes_total", labels.format("unknown_campaign"), 30) == 30
    assert tracker.wait_metric("trackpoint_collector_outcomes_total", labels.format("applied"), 1) == 1
    _, listing = admin_json(tracker, "GET", "/banker/campaigns")
    assert [(c["id"], c["spent_micros"]) for c in listing["campaigns"]] == [("c1", 2500)]  # the replay: once
    assert listing["next"] is None
    assert tracker.wait_metric("trackpoint_rejected_total", 'reason="signature_missing"', 12) == 12
    assert tracker.metric("trackpoint_rejected_total", 'reason="price_above_bound"') == 1


def test_the_campaign_list_is_paginated_with_a_cap(tracker: Tracker) -> None:
    for i in range(7):
        assert tracker.admin("PUT", f"/banker/campaigns/p{i}", b'{"total_budget_micros": 1}')[0] == 200
    pages, after = [], ""
    while True:
        status, page = admin_json(tracker, "GET", f"/banker/campaigns?limit=3&after={after}")
        assert status == 200
        pages.append([c["id"] for c in page["campaigns"]])
        if page["next"] is None:
            break
        after = page["next"]
    assert pages == [["p0", "p1", "p2"], ["p3", "p4", "p5"], ["p6"]]
    _, everything = admin_json(tracker, "GET", "/banker/campaigns")
    assert len(everything["campaigns"]) == 7 and everything["next"] is None
    for query in ("limit=1001", "limit=0", "after=" + "x" * 300):
        status, refused = admin_json(tracker, "GET", f"/banker/campaigns?{query}")
        assert (status, refused["error"]) == (400, "invalid_query"), query


def test_billing_notices_with_encrypted_prices_or_impressions_can_be_the_spend(
    tracker_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spend from billing notices (burl) whose price the exchange encrypts, instead of wins; or from impressions
    whose pixel carries the price, into a second banker."""
    encryption, integrity = os.urandom(32), os.urandom(32)
    monkeypatch.setenv("TP_BILL_ENC", base64.urlsafe_b64encode(encryption).decode())
    monkeypatch.setenv("TP_BILL_INT", base64.urlsafe_b64encode(integrity).decode())
    notice_fields = {
        "imp": {"required": True, "max_len": 64},
        "cid": {"max_len": 64},
        "price": {"type": "string", "required": True, "max_len": 64},
    }
    tracker: Tracker = tracker_factory({
        "collectors": {
            "banker": {"type": "banker", "flush_interval_ms": 20},
            "impressions": {"type": "banker", "flush_interval_ms": 20, "sqlite_path": "banker/impressions.db"},
        },
        "preprocessors": {
            "decrypt_price": {
                "type": "decrypt_price",
                "exchanges": {"adx": {"encryption_key_env": "TP_BILL_ENC", "integrity_key_env": "TP_BILL_INT"}},
                "max_age_s": 3600,
            }
        },
        "event_types": {
            "win": {"preset": "win", "fields": notice_fields, "preprocessors": ["decrypt_price"],
                    "collectors": ["log"]},
            "billing": {"preset": "billing", "fields": notice_fields, "preprocessors": ["decrypt_price"],
                        "collectors": ["log", "banker"]},
            "impression": {"preset": "impression", "collectors": ["log", "impressions"],
                           "fields": {"imp": {"required": True}, "cid": {}, "price": {"type": "price", "max": 1000}}},
        },
    })  # fmt: skip
    for banker in ("banker", "impressions"):
        assert tracker.admin("PUT", f"/banker/campaigns/c1?banker={banker}", b'{"total_budget_micros": 9000}')[0] == 200
    iv = int(time.time()).to_bytes(4, "big") + os.urandom(12)
    token = encrypt_price(2_500_000, iv, encryption, integrity)  # CPM 2.50: 2,500 micros
    assert tracker.get(tracker.sign(f"/win?imp=b1&cid=c1&price={token}"))[0] == 204  # a win: not spend here
    for _ in range(2):  # the exchange retried the billing notice: one debit
        assert tracker.get(tracker.sign(f"/bill?imp=b1&cid=c1&price={token}"))[0] == 204
    status, headers, _ = tracker.get(tracker.sign(f"/bill?imp=b2&cid=c1&price={token[:-2]}AA"))
    assert (status, headers["x-reject-reason"]) == (400, "price_signature_invalid")
    status, headers, _ = tracker.get(tracker.sign("/bill?imp=b3&cid=c1&price=${AUCTION_PRICE}"))
    assert (status, headers["x-reject-reason"]) == (400, "price_macro_unsubstituted")
    assert tracker.get("/i?imp=i1&cid=c1&price=1.5")[0] == 200

    # The campaigns exist from the start (created above): wait for their debits, not for them.
    def debited(banker: str) -> bool:
        return bool(admin_json(tracker, "GET", f"/banker/campaigns/c1?banker={banker}")[1]["debits"] == 1)

    eventually(lambda: debited("banker"), 10, "the billing notice's debit")
    eventually(lambda: debited("impressions"), 10, "the impression's debit")
    _, state = admin_json(tracker, "GET", "/banker/campaigns/c1")
    assert (state["spent_micros"], state["debits"]) == (2500, 1)
    _, ledger = admin_json(tracker, "GET", "/banker/campaigns/c1/ledger")
    assert [(d["type"], d["micros"]) for d in ledger["debits"]] == [("billing", 2500)]
    _, ledger = admin_json(tracker, "GET", "/banker/campaigns/c1/ledger?banker=impressions")
    assert [(d["type"], d["micros"]) for d in ledger["debits"]] == [("impression", 1500)]
    labels = 'collector="banker",outcome="duplicates"'
    assert tracker.wait_metric("trackpoint_collector_outcomes_total", labels, 1) == 1


# --- reconcile -----------------------------------------------------------------------------------------------------


def test_reconcile_reports_lost_debits_and_replay_restores_them(tracker_factory: Any) -> None:
    tracker: Tracker = tracker_factory(banker_config({}))
    for i in range(40):
        assert tracker.get(signed(f"/win?imp=r{i}&cid=c{i % 2}&price=2.5"))[0] == 204
    eventually(lambda: sum(ledger_sizes(tracker).values()) == 40, 10, "40 debits")
    assert tracker.stop() == 0
    logs = str(tracker.data_dir / "logs")
    assert cli("banker", "reconcile", "--config", str(tracker.config_path), logs).returncode == 0
    # Lose five debits of c1 from the store (as a restore from an old backup would).
    with sqlite3.connect(tracker.data_dir / "banker" / "banker.db") as db:
        lost = [row[0] for row in db.execute("SELECT event_id FROM ledger WHERE campaign = 'c1' LIMIT 5")]
        db.execute(f"DELETE FROM ledger WHERE event_id IN ({','.join('?' * len(lost))})", lost)
        db.execute("UPDATE campaigns SET spent_micros = spent_micros - 5 * 2500, debits = debits - 5 WHERE id = 'c1'")
    differing = cli("banker", "reconcile", "--json", "--config", str(tracker.config_path), logs)
    assert differing.returncode == 1
    report = {c["campaign"]: c for c in json.loads(differing.stdout)["campaigns"]}
    assert (report["c1"]["missing_debits"], report["c1"]["missing_micros"], report["c1"]["difference_micros"]) == (
        5,
        5 * 2500,
        -5 * 2500,
    )  # fmt: skip  (CPM 2.50: 2,500 micros a debit)
    assert report["c0"]["matches"]
    table = cli("banker", "reconcile", "--config", str(tracker.config_path), logs)
    assert table.returncode == 1 and "differs" in table.stdout and "replay --collector banker" in table.stdout
    assert cli("replay", "--config", str(tracker.config_path), "--collector", "banker", logs).returncode == 0
    assert cli("banker", "reconcile", "--config", str(tracker.config_path), logs).returncode == 0


def test_reconcile_needs_a_banker(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "events-w00-1.jsonl").write_text("")
    result = cli("banker", "reconcile", str(logs), cwd=tmp_path)  # the default data_dir is relative
    assert result.returncode == 2, result.stderr  # the embedded default's banker, whose store no tracker made here
    assert "no banker store at trackpoint-data/banker/banker.db" in result.stderr
    assert cli("replay", "--collector", "banker", str(logs), cwd=tmp_path).returncode == 0  # starts it, as a tracker
    assert (tmp_path / "trackpoint-data" / "banker" / "banker.db").exists()
    result = cli("banker", "reconcile", str(logs), cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # no spend in these logs, none in the store
    config = tmp_path / "no-banker.yaml"
    config.write_text("event_types:\n  win: {preset: win, collectors: [log]}\n")
    result = cli("banker", "reconcile", "--config", str(config), str(logs))
    assert result.returncode == 2 and "banker collectors: none" in result.stderr


# --- outage --------------------------------------------------------------------------------------------------------


@pytest.fixture
def private_redis() -> Iterator[RedisStreamsTarget]:
    target = asyncio.run(make_target())
    yield target
    asyncio.run(target.close())


@pytest.mark.timeout(120)
def test_a_redis_outage_delays_spend_and_applies_it_once(
    tracker_factory: Any, private_redis: RedisStreamsTarget
) -> None:
    config = banker_config({
        "store": "redis", "redis_url": private_redis.url, "timeout_s": 1.0, "connect_timeout_s": 0.5,
        "retry_initial_ms": 100, "retry_max_ms": 500, "status_interval_s": 0.2,
    })  # fmt: skip
    tracker: Tracker = tracker_factory(config)
    for i in range(20):
        assert tracker.get(signed(f"/win?imp=before{i}&cid=c1&price=1"))[0] == 204
    eventually(lambda: spent(tracker) == {"c1": 20_000}, 10, "the first spend")
    asyncio.run(private_redis.stop())
    for i in range(300):
        assert tracker.get(signed(f"/win?imp=during{i}&cid=c1&price=1"))[0] == 204
        if i % 3 == 0:  # repeats while the store is away
            assert tracker.get(signed(f"/win?imp=during{i}&cid=c1&price=1"))[0] == 204
    assert tracker.admin("GET", "/banker/campaigns/c1")[0] == 503
    assert tracker.wait_metric("trackpoint_collector_spooled_events", 'collector="banker"', 1, timeout_s=10) >= 1
    # The outage is real for the collector: it has tried the missing store and backed off, more than once.
    assert tracker.wait_metric("trackpoint_collector_retried_total", 'collector="banker"', 2, timeout_s=10) >= 2
    asyncio.run(private_redis.start())
    eventually(lambda: spent(tracker) == {"c1": 320_000}, 30, "the spend held during the outage")
    _, state = admin_json(tracker, "GET", "/banker/campaigns/c1")
    assert state["debits"] == 320
    eventually(lambda: admin_json(tracker, "GET", "/banker/campaigns/c1")[1]["stale_ms"] == 0, 10, "fresh state")
    assert tracker.metric("trackpoint_collector_dropped_total", 'collector="banker"') == 0


async def _config_set(url: str, **settings: str) -> None:
    client = Redis.from_url(url)
    try:
        for name, value in settings.items():
            await client.config_set(name.replace("_", "-"), value)
    finally:
        await client.aclose()


@pytest.mark.timeout(60)
def test_a_required_banker_on_a_redis_that_evicts_is_not_ready(
    tracker_factory: Any, private_redis: RedisStreamsTarget
) -> None:
    """ElastiCache's default, volatile-lru with a maxmemory, evicts the banker's dedupe records (its only keys with
    a TTL) first: the banker reports itself unhealthy, so a required one keeps the tracker out of readiness, and
    its log says what to set."""
    asyncio.run(_config_set(private_redis.url, maxmemory="64mb", maxmemory_policy="volatile-lru"))
    config = banker_config({"store": "redis", "redis_url": private_redis.url, "required": True})
    tracker: Tracker = tracker_factory(config, ready=False)

    def unready() -> bool:
        try:
            status, _, body = tracker.admin("GET", "/readyz")
        except OSError:
            return False
        return status == 503 and json.loads(body)["required_collectors_unhealthy"] == ["banker"]

    eventually(unready, 20, "/readyz to fail on the banker")
    eventually(lambda: "set maxmemory-policy noeviction" in tracker.output(), 10, "the reason in the log")
    assert "maxmemory-policy volatile-lru" in tracker.output()


# --- a full disk ---------------------------------------------------------------------------------------------------

SMALL_DISK = "3m"


def on_small_data_dir(
    tmp_path: Path, small_disk: Callable[..., SmallDisk], event_types: dict[str, Any]
) -> tuple[Tracker, SmallDisk]:
    """Two workers whose whole data_dir (log, spools, banker and rollup databases) is a 3 MiB tmpfs, not started."""
    tracker = Tracker(tmp_path, {
        "signing": {"keys": {"e2e": {"secret_env": SIGNING_ENV}}},
        "collectors": {
            "log": {"type": "log", "rotate_bytes": 262144},
            "banker": {"type": "banker", "store": "sqlite", "flush_interval_ms": 20, "retry_initial_ms": 50,
                       "retry_max_ms": 200},
            "rollup": {"type": "rollup", "flush_interval_ms": 20, "retry_initial_ms": 50, "retry_max_ms": 200},
        },
        "event_types": event_types,
    }, workers=2)  # fmt: skip
    return tracker, small_disk(tracker.data_dir, SMALL_DISK)


def stop_on_room(tracker: Tracker, disk: SmallDisk) -> None:
    """The end of a test on a small disk: room again, so that a tracker still running drains and stops."""
    if tracker.process is not None and tracker.process.poll() is None:
        disk.free()
        with contextlib.suppress(AssertionError):  # the test failed: what matters is that it ends
            tracker.stop()


@pytest.fixture
def tracker_on_small_data_dir(tmp_path: Path, small_disk: Callable[..., SmallDisk]) -> Iterator[Tracker]:
    tracker, disk = on_small_data_dir(
        tmp_path, small_disk, {"win": {"preset": "win", "collectors": ["log", "banker", "rollup"]}}
    )
    try:
        yield tracker
    finally:
        stop_on_room(tracker, disk)


async def _wins_until_refused(
    port: int, prefix: str, connections: int = 8, refusals: int = 50, seconds: float = 0.0
) -> dict[str, int]:
    """Distinct win notices on keep-alive connections until `refusals` in a row are refused on each (or, with
    `seconds`, for that long at most); each answer's status by impression id (the ids answered 204 are the
    acknowledged spend)."""
    answers: dict[str, int] = {}
    deadline = time.monotonic() + seconds if seconds else float("inf")

    async def one(number: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        refused = sequence = 0
        try:
            while refused < refusals and time.monotonic() < deadline:
                imp = f"{prefix}{number}-{sequence}"
                sequence += 1
                writer.write(f"GET {signed(f'/win?imp={imp}&cid=c1&price=1')} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                answers[imp] = int(head.split(b" ", 2)[1])
                refused = 0 if answers[imp] == 204 else refused + 1
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
                await reader.readexactly(length)
                if b"connection: close" in head.lower():
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    await asyncio.gather(*(one(n) for n in range(connections)))
    return answers


@pytest.mark.timeout(180)
@pytest.mark.parametrize("spool", ["spool", "no spool"])
def test_a_hung_redis_under_backpressure_debits_every_acknowledged_win_once(
    tracker_factory: Any, private_redis: RedisStreamsTarget, spool: str
) -> None:
    """The banker's Redis hangs (SIGSTOP: connections open, no answer) under a load of wins, more than
    max_pending_events while a send waits for its timeout: every win beyond it was dropped from memory, with the
    spool empty and no 503 (a probe lost 514,670 of 1,882,876 acknowledged wins in 20 s). Now what exceeds it waits
    in the spool, or with no spool the gate closes (503 backpressure); after SIGCONT every win answered 204 is
    debited exactly once, and the logs and the store reconcile."""
    config = banker_config({
        "store": "redis", "redis_url": private_redis.url, "timeout_s": 2.0, "connect_timeout_s": 0.5,
        "retry_initial_ms": 100, "retry_max_ms": 500, "required": True, "max_pending_events": 300,
        "spool": {"enabled": spool == "spool", "when_full": "backpressure"},
    })  # fmt: skip
    tracker: Tracker = tracker_factory(config)
    assert tracker.get(signed("/win?imp=first&cid=c1&price=1"))[0] == 204
    eventually(lambda: spent(tracker) == {"c1": 1000}, 10, "the first debit")
    assert private_redis.server.pid is not None
    os.kill(private_redis.server.pid, signal.SIGSTOP)
    try:
        answers = asyncio.run(_wins_until_refused(tracker.port, "hung", refusals=1 << 30, seconds=5.0))
    finally:
        os.kill(private_redis.server.pid, signal.SIGCONT)
    acknowledged = 1 + sum(status == 204 for status in answers.values())
    if spool == "spool":  # far more than max_pending_events while Redis hung; the excess in the spool, none refused
        assert acknowledged > 3 * 300 and set(answers.values()) == {204}, acknowledged
        assert tracker.metric("trackpoint_collector_spooled_events", 'collector="banker"') > 0
    else:  # memory full, then the gate closed
        assert acknowledged >= 300 and set(answers.values()) == {204, 503}, acknowledged
        assert tracker.metric("trackpoint_rejected_total", 'reason="backpressure"') > 0

    def debits() -> int:
        status, state = admin_json(tracker, "GET", "/banker/campaigns/c1")
        return int(state["debits"]) if status == 200 else -1

    eventually(lambda: debits() >= acknowledged, 60, f"{acknowledged} debits (the wins answered 204)")
    assert debits() == acknowledged  # each once
    assert tracker.metric("trackpoint_collector_dropped_total", 'collector="banker"') == 0
    assert tracker.stop() == 0, tracker.output()
    reconciled = cli("banker", "reconcile", "--json", "--config", str(tracker.config_path),
                     str(tracker.data_dir / "logs"))  # fmt: skip
    report = json.loads(reconciled.stdout)
    assert reconciled.returncode == 0 and report["matches"], reconciled.stdout + reconciled.stderr


@pytest.mark.timeout(300)
def test_after_a_full_disk_the_banker_and_rollups_catch_up_by_themselves(tracker_on_small_data_dir: Tracker) -> None:
    """The disk fills under load: the log refuses (503), SQLite answers SQLITE_FULL and the spools cannot be written
    either. Every win answered 204 must still be debited, and counted in the rollups, once the disk has room again,
    without a restart. Before the fix the spool's ENOSPC ended both collectors' flush tasks: no debit after the
    disk filled, for ever, while /readyz and the 204s came back."""
    tracker = tracker_on_small_data_dir.start()
    assert tracker.admin("PUT", "/banker/campaigns/c1", b'{"total_budget_micros": 1000000000000}')[0] == 200
    answers = asyncio.run(_wins_until_refused(tracker.port, "full"))
    assert set(answers.values()) == {204, 503}, set(answers.values())
    assert tracker.wait_metric_at_most("trackpoint_collector_healthy", 'collector="banker"', 0, timeout_s=10) == 0

    subprocess.run(["mount", "-o", "remount,size=64m", str(tracker.data_dir)], check=True)
    eventually(lambda: tracker.admin("GET", "/readyz")[0] == 200, 15, "ready again")
    after = [f"after{i}" for i in range(20)]
    for imp in after:
        assert tracker.get(signed(f"/win?imp={imp}&cid=c1&price=1"))[0] == 204
    acknowledged = sum(status == 204 for status in answers.values()) + len(after)

    def debits() -> int:
        status, state = admin_json(tracker, "GET", "/banker/campaigns/c1")
        return int(state["debits"]) if status == 200 else -1

    eventually(lambda: debits() >= acknowledged, 30, f"{acknowledged} debits (the wins answered 204)")
    assert debits() == acknowledged  # each once
    counted = 'collector="rollup",outcome="counted"'
    assert tracker.wait_metric("trackpoint_collector_outcomes_total", counted, acknowledged, 15) == acknowledged
    for name in ("banker", "rollup"):
        assert tracker.wait_metric("trackpoint_collector_healthy", f'collector="{name}"', 1, 10) == 1
    assert tracker.stop() == 0, tracker.output()


@pytest.mark.timeout(300)
def test_a_tracker_restarted_on_a_full_disk_serves_and_catches_up(
    tmp_path: Path, small_disk: Callable[..., SmallDisk]
) -> None:
    """The disk under data_dir full, no block nor inode left, when the tracker starts again (a deploy, a node
    reboot): the log could not create its file nor the banker and the rollups their spools' directories, so every
    worker crash-looped and the tracker answered nothing until some 10 s after space came back. Now the workers start
    and stay up: impressions (logged) answer 503 log_disk_full, /readyz says why; wins (banker and rollups, no log)
    answer 204 and wait in memory. Once there is room, without a restart, every acknowledged win is debited and
    counted once, and impressions are logged again."""
    tracker, disk = on_small_data_dir(tmp_path, small_disk, {
        "impression": {"preset": "impression", "collectors": ["log"]},
        "win": {"preset": "win", "collectors": ["banker", "rollup"]},
    })  # fmt: skip
    counted = 'collector="rollup",outcome="counted"'

    def debits() -> int:
        status, state = admin_json(tracker, "GET", "/banker/campaigns/c1")
        return int(state["debits"]) if status == 200 else -1

    def readiness() -> dict[str, Any]:
        with contextlib.suppress(OSError):  # the admin port not open yet
            answer: dict[str, Any] = admin_json(tracker, "GET", "/readyz")[1]
            return answer
        return {}

    try:
        tracker.start()
        assert tracker.admin("PUT", "/banker/campaigns/c1", b'{"total_budget_micros": 1000000000000}')[0] == 200
        assert tracker.get(signed("/win?imp=before&cid=c1&price=1"))[0] == 204
        assert tracker.get("/i?imp=before&cid=c1")[0] == 200
        eventually(lambda: debits() == 1 and tracker.metric("trackpoint_collector_outcomes_total", counted) == 1, 10,
                   "the first win debited and counted")  # fmt: skip
        assert tracker.stop() == 0, tracker.output()

        disk.fill()
        tracker.start(ready=False)
        eventually(lambda: readiness().get("workers_ready") == 2, 20, "both workers started")
        ready = readiness()
        assert not ready["ready"] and ready["required_collectors_unhealthy"] == ["log"]
        problems = ready["collector_problems"]
        assert problems["log"].endswith("No space left on device"), problems
        assert all("cannot be opened: No space left on device" in problems[name] for name in ("banker", "rollup"))
        assert admin_json(tracker, "GET", "/healthz") == (200, {"status": "ok"})
        status, headers, _ = tracker.get("/i?imp=full&cid=c1")
        assert (status, headers["x-reject-reason"]) == (503, "log_disk_full")
        wins = [f"full-{n}" for n in range(100)]
        assert [tracker.get(signed(f"/win?imp={imp}&cid=c1&price=1"))[0] for imp in wins] == [204] * len(wins)
        assert tracker.wait_metric("trackpoint_collector_pending", 'collector="banker"', len(wins)) == len(wins)
        assert tracker.metric("trackpoint_collector_healthy", 'collector="banker"') == 0
        assert tracker.metric("trackpoint_collector_errors_total", 'collector="banker"') > 0
        assert tracker.metric("trackpoint_rejected_total", 'reason="log_disk_full"') == 1

        disk.free()
        eventually(lambda: readiness().get("ready") is True, 20, "ready again, without a restart")
        assert tracker.get("/i?imp=after&cid=c1")[0] == 200
        eventually(lambda: debits() == 1 + len(wins), 20, "every acknowledged win debited")
        assert tracker.wait_metric("trackpoint_collector_outcomes_total", counted, len(wins)) == len(wins)
        for name in ("banker", "rollup"):
            assert tracker.wait_metric("trackpoint_collector_healthy", f'collector="{name}"', 1) == 1
            duplicates = f'collector="{name}",outcome="duplicates"'
            assert tracker.metric("trackpoint_collector_outcomes_total", duplicates) == 0
        assert tracker.metric("trackpoint_worker_restarts_total") == 0
        assert tracker.stop() == 0, tracker.output()
        assert sorted(event.dims["imp"] for event in tracker.events()) == ["after", "before"]
        assert "Traceback" not in tracker.output() and "failed to start" not in tracker.output()
    finally:
        stop_on_room(tracker, disk)


def test_a_damaged_sqlite_store_is_unavailable_not_healthy(tracker_factory: Any) -> None:
    """A banker.db cut short (a torn copy, a bad disk): every apply failed with `database disk image is malformed`,
    yet the collector was healthy, /readyz 200 and the admin API answered 500. It is an outage: unhealthy (so
    `required` fails /readyz), 503 store_unavailable, the wins spooled and applied once the file is restored."""
    config = banker_config({"required": True, "spool": {"when_full": "backpressure"}, "retry_max_ms": 200})
    tracker: Tracker = tracker_factory(config)
    assert tracker.admin("PUT", "/banker/campaigns/c1", b'{"total_budget_micros": 1000000000}')[0] == 200
    assert tracker.get(signed("/win?imp=before&cid=c1&price=1"))[0] == 204
    eventually(lambda: spent(tracker) == {"c1": 1000}, 10, "the first debit")
    assert tracker.stop() == 0
    database = tracker.data_dir / "banker" / "banker.db"
    backup = database.read_bytes()
    assert not database.with_name("banker.db-wal").exists()  # checkpointed at the stop
    os.truncate(database, 4096)  # its first page: it opens, its tables are gone (SQLITE_CORRUPT)

    tracker.start(ready=False)

    def workers_ready() -> bool:
        with contextlib.suppress(OSError):  # the admin port not open yet
            return bool(admin_json(tracker, "GET", "/readyz")[1]["workers_ready"] == 1)
        return False

    eventually(workers_ready, 20, "the worker")
    assert tracker.get(signed("/win?imp=during&cid=c1&price=1"))[0] == 204
    assert tracker.wait_metric("trackpoint_collector_spooled_events", 'collector="banker"', 1, 10) == 1
    assert tracker.wait_metric_at_most("trackpoint_collector_healthy", 'collector="banker"', 0, 10) == 0
    status, readiness = admin_json(tracker, "GET", "/readyz")
    assert (status, readiness["required_collectors_unhealthy"]) == (503, ["banker"])
    status, answer = admin_json(tracker, "GET", "/banker/campaigns/c1")
    assert (status, answer["error"]) == (503, "store_unavailable") and str(database) in answer["detail"]

    database.with_name("banker.db.restoring").write_bytes(backup)
    os.replace(database.with_name("banker.db.restoring"), database)  # the operator restores it, no restart
    eventually(lambda: admin_json(tracker, "GET", "/banker/campaigns/c1")[0] == 200, 10, "the store back")
    eventually(lambda: spent(tracker) == {"c1": 2000}, 10, "the spooled win applied")
    eventually(lambda: tracker.admin("GET", "/readyz")[0] == 200, 10, "ready again")
