"""The rollups end to end: a tracker with two workers counting the banker's stream of win notices with 30% repeats
(plus impressions and clicks with repeats), `GET /reports/hourly` on the admin port, `trackpoint report` agreeing
with it, a replay of the logs changing nothing, and `trackpoint report --logs` (DuckDB) agreeing with the rollups."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest

from conftest import Tracker
from test_banker_e2e import SIGNING_ENV, SIGNING_KEY, cli, eventually, fire, win_notices

pytestmark = pytest.mark.e2e  # trackers through the CLI

DISTINCT_WINS = 20_000
CONFIG: dict[str, Any] = {
    "signing": {"keys": {"e2e": {"secret_env": SIGNING_ENV}}},
    "collectors": {"rollup": {"type": "rollup", "flush_interval_ms": 20}},
    "event_types": {
        "win": {"preset": "win", "collectors": ["log", "rollup"]},
        "impression": {"preset": "impression", "collectors": ["log", "rollup"]},
        "click": {"preset": "click", "collectors": ["log", "rollup"]},
    },
}


@pytest.fixture(autouse=True)
def _signing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIGNING_ENV, SIGNING_KEY.decode())  # the tracker processes inherit it


def hourly(tracker: Tracker, query: str) -> dict[str, Any]:
    status, _, body = tracker.admin("GET", "/reports/hourly?" + query)
    assert status == 200, body
    document: dict[str, Any] = json.loads(body)
    return document


def per(rows: list[dict[str, Any]], type_name: str, metric: str) -> dict[str, int]:
    """A metric per campaign, summed over hours (and crid, pub)."""
    summed: dict[str, int] = {}
    for row in rows:
        if row["type"] == type_name:
            cid = row["dims"]["cid"]
            summed[cid] = summed.get(cid, 0) + (row["events"] if metric == "events" else row["metrics"][metric])
    return summed


@pytest.mark.timeout(600)
def test_two_workers_count_each_event_once_and_every_report_agrees(tracker_factory: Any) -> None:
    started = int(time.time())
    tracker: Tracker = tracker_factory(CONFIG, workers=2)
    paths, spend = win_notices(DISTINCT_WINS, 0.3, seed=21)
    fire([tracker], paths, seed=22)
    rng = random.Random(23)
    impressions = [f"/i?imp=r{i}&cid=c{i % 5}&crid=k{i % 2}&pub=p1" for i in range(400)]
    clicks = [
        f"/c?imp=r{i}&cid=c{i % 5}&crid=k{i % 2}&pub=p1&url=https%3A%2F%2Fexample.com%2F" for i in range(0, 400, 4)
    ]
    requests = impressions + clicks + rng.choices(impressions + clicks, k=150)  # 30% repeats
    rng.shuffle(requests)
    for path in requests:
        assert tracker.get(path)[0] in {200, 302}
    window = f"from={started - 3600}&to={started + 7200}"

    def counted() -> bool:
        totals: dict[str, int] = {}
        for row in hourly(tracker, window + "&by=")["rows"]:  # per hour and type
            totals[row["type"]] = totals.get(row["type"], 0) + row["events"]
        return totals == {"win": DISTINCT_WINS, "impression": 400, "click": 100}

    eventually(counted, 120, "every distinct event counted")
    rows = hourly(tracker, window)["rows"]
    assert per(rows, "win", "spend_micros") == spend  # the banker's expectation, to the micro
    assert per(rows, "win", "wins") == {f"c{i}": DISTINCT_WINS // 20 for i in range(20)}
    assert per(rows, "impression", "impressions") == {f"c{i}": 80 for i in range(5)}
    assert per(rows, "click", "clicks") == {f"c{i}": 20 for i in range(5)}
    # Clicks went to every 4th impression, all of creative k0: half of k0's impressions (unless an hour ended
    # between them, splitting the rows).
    ctr = {row["metrics"]["ctr"] for row in rows if row["type"] == "click"}
    assert ctr == {0.5} or len({row["hour"] for row in rows}) > 1
    assert {row["dims"]["crid"] for row in rows if row["type"] == "click"} == {"k0"}
    one = hourly(tracker, window + "&by=cid&type=win&where=cid%3Dc3")["rows"]
    assert {row["dims"]["cid"] for row in one} == {"c3"} and sum(r["metrics"]["spend_micros"] for r in one) == spend[
        "c3"
    ]
    assert tracker.admin("GET", "/reports/hourly", token="")[0] == 401
    assert tracker.admin("GET", "/reports/hourly?by=nope")[0] == 400

    # trackpoint report reads the same store: the same document as the admin route.
    since, until = str(started - 3600), str(started + 7200)
    window_options = ["--config", str(tracker.config_path), "--from", since, "--to", until]
    from_cli = cli("report", "--format", "json", *window_options)
    assert from_cli.returncode == 0, from_cli.stderr
    assert json.loads(from_cli.stdout) == hourly(tracker, window)
    as_csv = cli("report", "--format", "csv", "--by", "cid", *window_options)
    assert as_csv.returncode == 0 and len(as_csv.stdout.splitlines()) == 1 + len(
        hourly(tracker, window + "&by=cid")["rows"]
    )

    # Replays of the logs change nothing; the report over the logs agrees with the rollups.
    assert tracker.stop() == 0
    logs = str(tracker.data_dir / "logs")
    for _ in range(2):
        replayed = cli("replay", "--config", str(tracker.config_path), "--collector", "rollup", logs)
        assert replayed.returncode == 0 and "rollup" in replayed.stderr, replayed.stderr
    after = cli("report", "--format", "json", *window_options)
    assert json.loads(after.stdout)["rows"] == json.loads(from_cli.stdout)["rows"]
    over_logs = cli("report", "--logs", "--format", "json", *window_options, logs)
    assert over_logs.returncode == 0, over_logs.stderr
    assert json.loads(over_logs.stdout)["rows"] == json.loads(from_cli.stdout)["rows"]
    assert f"read {DISTINCT_WINS + int(DISTINCT_WINS * 0.3) + len(requests):,} events" in over_logs.stderr
    assert "events/s" in over_logs.stderr
