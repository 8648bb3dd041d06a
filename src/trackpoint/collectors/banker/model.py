"""The banker's model: a debit made from one event, campaign budgets and the state bidders read.

All money is integer micros of the banker's currency. Days and hours are UTC and come from the event's own time,
so a log replayed next week adds to the day it happened on, and every tracker computes the same periods.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import msgspec

from trackpoint.collectors.banker.config import BankerCollectorConfig, parse_rate
from trackpoint.event import Event

MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000


class Debit(msgspec.Struct, array_like=True, gc=False):
    """One spend: the event's id (applied at most once), campaign, amount, event time and type."""

    id: str
    campaign: str
    micros: int
    ts: int
    type: str


class Budget(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What `PUT /banker/campaigns/{id}` takes: a total and optional daily and hourly budgets, in micros."""

    total_budget_micros: int
    daily_budget_micros: int | None = None
    hourly_budget_micros: int | None = None

    def __post_init__(self) -> None:
        for name in ("total_budget_micros", "daily_budget_micros", "hourly_budget_micros"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_BUDGET_MICROS:
                raise ValueError(f"{name} must be between 0 and {MAX_BUDGET_MICROS}")


# 9.2e18 micros is 9.2e12 units: far above any campaign, and every sum stays a 64-bit integer in Redis.
MAX_BUDGET_MICROS = 10**15


class CampaignState(msgspec.Struct, kw_only=True):
    """A campaign as bidders see it. `exhausted`: no more bidding today (`exhausted_reason` says whether the total
    or today's budget ran out); `paced`: this hour's even-pacing cap is reached. Spend beyond a budget is kept
    (`overspend_micros`), never hidden. `stale_ms`: how far behind the store may be (the oldest debit still waiting
    in a tracker's spool or batch, or the age of the newest tracker report when a tracker has gone silent)."""

    id: str
    total_budget_micros: int | None
    daily_budget_micros: int | None
    hourly_budget_micros: int | None
    spent_micros: int
    remaining_micros: int | None
    overspend_micros: int
    exhausted: bool
    exhausted_reason: str | None
    today: str
    today_spent_micros: int
    hour: str
    hour_spent_micros: int
    hourly_cap_micros: int | None
    paced: bool
    debits: int
    updated_ms: int
    stale_ms: int = 0


class RawCampaign(msgspec.Struct, kw_only=True):
    """What a store keeps for a campaign; `state()` derives what bidders see at a given time."""

    id: str
    total_budget_micros: int | None = None
    daily_budget_micros: int | None = None
    hourly_budget_micros: int | None = None
    hourly_cap_micros: int | None = None
    spent_micros: int = 0
    debits: int = 0
    exhausted_total: bool = False
    day_spent: dict[str, int] = {}
    hour: str = ""
    hour_spent_micros: int = 0
    updated_ms: int = 0

    def state(self, now_ms: int, stale_ms: int = 0) -> CampaignState:
        today, this_hour = day_of(now_ms), hour_of(now_ms)
        today_spent = self.day_spent.get(today, 0)
        hour_spent = self.hour_spent_micros if self.hour == this_hour else 0
        cap = self.hourly_cap_micros
        total = self.total_budget_micros
        reason = None
        if total is not None and (self.exhausted_total or self.spent_micros >= total):
            reason = "total"
        elif self.daily_budget_micros is not None and today_spent >= self.daily_budget_micros:
            reason = "daily"
        return CampaignState(
            id=self.id,
            total_budget_micros=total,
            daily_budget_micros=self.daily_budget_micros,
            hourly_budget_micros=self.hourly_budget_micros,
            spent_micros=self.spent_micros,
            remaining_micros=None if total is None else max(0, total - self.spent_micros),
            overspend_micros=0 if total is None else max(0, self.spent_micros - total),
            exhausted=reason is not None,
            exhausted_reason=reason,
            today=today,
            today_spent_micros=today_spent,
            hour=this_hour,
            hour_spent_micros=hour_spent,
            hourly_cap_micros=cap,
            paced=cap is not None and hour_spent >= cap,
            debits=self.debits,
            updated_ms=self.updated_ms,
            stale_ms=stale_ms,
        )


class Notification(msgspec.Struct, kw_only=True):
    """Published once when a campaign crosses a budget: `reason` total, daily or paced (the hourly cap); `period`
    the day (YYYYMMDD) or hour (YYYYMMDDHH) it applies to ("" for total). `seq` orders them (store-assigned)."""

    campaign: str
    reason: str
    period: str
    spent_micros: int
    budget_micros: int
    event_id: str
    ts: int
    seq: str = ""


class TrackerStatus(msgspec.Struct):
    """What each tracker reports to the store: when, and the oldest debit it still holds (0: none)."""

    at_ms: int
    backlog: int
    oldest_ms: int


def stale_ms(statuses: Iterable[TrackerStatus], now_ms: int, interval_s: float) -> int:
    """How far behind the store may be: the age of the oldest debit a tracker still holds; a tracker whose last
    report is older than three intervals counts from that report (it may hold anything since)."""
    worst = 0
    silent_after = int(3 * interval_s * 1000)
    for status in statuses:
        if status.backlog and status.oldest_ms:
            worst = max(worst, now_ms - status.oldest_ms)
        if now_ms - status.at_ms > silent_after and now_ms - status.at_ms < 7 * MS_PER_DAY:
            worst = max(worst, now_ms - status.at_ms)
    return worst


def hourly_cap(daily: int | None, hourly: int | None, pacing: str, slack: float) -> int | None:
    """The hour's cap: the campaign's own hourly budget, else under even pacing ceil(daily x slack / 24)."""
    if hourly is not None:
        return hourly
    if pacing == "even" and daily is not None:
        return -(-int(daily * round(slack * 1000)) // 24_000)
    return None


_PERIODS: dict[int, tuple[str, str]] = {}


def periods(ts_ms: int) -> tuple[str, str]:
    """(day, hour) of a time, cached by hour: a batch of debits spans one or two."""
    key = ts_ms // MS_PER_HOUR
    found = _PERIODS.get(key)
    if found is None:
        if len(_PERIODS) > 4096:
            _PERIODS.clear()
        hour = hour_of(ts_ms)
        found = _PERIODS[key] = (hour[:8], hour)
    return found


def day_of(ts_ms: int) -> str:
    return time.strftime("%Y%m%d", time.gmtime(ts_ms // 1000))


def hour_of(ts_ms: int) -> str:
    return time.strftime("%Y%m%d%H", time.gmtime(ts_ms // 1000))


class DebitRule:
    """How an event becomes a debit under one banker's options; `skipped` counts events that do not, by reason."""

    def __init__(self, config: BankerCollectorConfig) -> None:
        self.campaign_field = config.campaign_field
        self.price_field = config.price_field
        self.currency_field = config.currency_field
        self.currency = config.currency
        self.divisor = 1000 if config.price_unit == "cpm" else 1
        self.rates = {code: parse_rate(code, rate) for code, rate in config.rates.items()}
        self.skipped: dict[str, int] = {"no_campaign": 0, "no_price": 0, "currency_unknown": 0, "negative": 0}

    def debit(self, event: Event) -> Debit | None:
        """The debit of `event`, or None, counted in `skipped` by reason."""
        judged = self.judge(event)
        if isinstance(judged, str):
            self.skipped[judged] += 1
            return None
        return judged

    def judge(self, event: Event) -> Debit | str:
        """The debit of `event`, or the reason it makes none (a key of `skipped`, not counted)."""
        campaign = event.dims.get(self.campaign_field)
        if not campaign:
            return "no_campaign"
        price = event.metrics.get(self.price_field)
        if not isinstance(price, int):
            return "no_price"
        if price < 0:
            return "negative"
        numerator, denominator = 1, self.divisor
        currency = event.dims.get(self.currency_field)
        if currency and currency != self.currency:
            code = currency.upper()
            if code != self.currency:
                rate = self.rates.get(code)
                if rate is None:
                    return "currency_unknown"
                numerator, denominator = rate[0], rate[1] * self.divisor
        # One rounding, half up, on the exact value: price x rate / divisor.
        micros = (2 * price * numerator + denominator) // (2 * denominator)
        return Debit(event.id, campaign, micros, event.ts, event.type)

    def debits(self, events: Sequence[Event]) -> list[Debit]:
        made = [self.debit(event) for event in events]
        return [debit for debit in made if debit is not None]
