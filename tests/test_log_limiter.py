"""The one limiter of repeated log lines (trackpoint/log_limiter.py): first of a kind at once, then one per interval
with the count of those suppressed; kinds apart; bounded however many kinds come up."""

from __future__ import annotations

import logging

import pytest

from trackpoint.log_limiter import MAX_KINDS, LogLimiter, kind_of_text

log = logging.getLogger("trackpoint.test.limiter")


def test_the_first_of_each_kind_at_once_then_one_per_interval_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limiter = LogLimiter(10.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger=log.name)
    for second in range(25):  # one failure a second for 25 s, and another kind once
        now[0] = float(second)
        limiter.log(log, logging.ERROR, "down", "target down: %s", "refused")
        if second == 3:
            limiter.log(log, logging.ERROR, "auth", "authentication failed")
    assert [record.getMessage() for record in caplog.records] == [
        "target down: refused",
        "authentication failed",
        "target down: refused (9 similar suppressed)",
        "target down: refused (9 similar suppressed)",
    ]


def test_a_level_not_written_is_not_counted(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limiter = LogLimiter(10.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger=log.name)
    assert limiter.log(log, logging.INFO, "kind", "first")
    for _ in range(5):
        assert not limiter.log(log, logging.DEBUG, "kind", "debug, not written")
    now[0] = 10.0
    assert limiter.log(log, logging.INFO, "kind", "again")
    assert caplog.records[-1].getMessage() == "again"


def test_kinds_stay_bounded_and_beyond_the_bound_share_one_limit() -> None:
    now = [0.0]
    limiter = LogLimiter(10.0, clock=lambda: now[0])
    written = [limiter.due(f"error {i}") is not None for i in range(MAX_KINDS + 100)]
    assert written == [True] * (MAX_KINDS + 1) + [False] * 99  # a stream of distinct errors cannot flood
    assert len(limiter._kinds) == MAX_KINDS + 1
    now[0] = 10.0  # kinds quiet for an interval with nothing suppressed make room again
    assert limiter.due("another") == 0


def test_the_kind_of_a_text_is_the_text_without_its_numbers() -> None:
    assert kind_of_text("Connect to 10.0.0.7:9092 failed (after 12ms)") == "Connect to #.#.#.#:# failed (after #ms)"
    assert kind_of_text("Connection refused") != kind_of_text("Connection reset by peer")
