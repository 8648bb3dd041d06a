"""The banker's admin API, served on the admin port by the supervisor (registered as plugin admin routes).

- `PUT /banker/campaigns/{id}` `{"total_budget_micros": N, "daily_budget_micros": M, "hourly_budget_micros": H}`
- `GET /banker/campaigns/{id}` — the campaign's state (see `CampaignState`)
- `GET /banker/campaigns?limit=N&after=ID` — campaigns' states by id, a page at a time (`next`: the `after` of
  the next page, null on the last)
- `GET /banker/campaigns/{id}/ledger?limit=N` — its newest applied debits
- `GET /banker/notifications?after=SEQ&limit=N` — budget notifications after `seq`, oldest first

With several banker collectors in the config, `?banker=NAME` picks one (default: the first by name).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

import msgspec

from trackpoint.admin.server import AdminRequest, AdminResponse
from trackpoint.collectors.banker.config import bankers_in_use
from trackpoint.collectors.banker.model import Budget, CampaignState, RawCampaign, stale_ms
from trackpoint.collectors.banker.store import Store, StoreUnavailable, open_store
from trackpoint.config.model import Config

MAX_CAMPAIGN_ID = 256
PAGE_DEFAULT = 100
PAGE_MAX = 1000  # one page's answer stays small whatever the store holds
_stores: dict[tuple[str, str, bytes], Store] = {}  # by (data_dir, name, options): reloads reuse unchanged stores


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Refused(Exception):
    """Ends a handler with an error answer: 4xx for the request, 503 when the store cannot be reached."""

    def __init__(self, status: int, error: str, detail: str = "") -> None:
        super().__init__(error)
        self.response = AdminResponse.json(status, {"error": error, "detail": detail} if detail else {"error": error})


Handler = Callable[[AdminRequest, Config], Awaitable[AdminResponse]]


def _answers(handler: Handler) -> Handler:
    """The handler, with refusals and an unreachable store turned into their answers."""

    @functools.wraps(handler)
    async def wrapped(request: AdminRequest, config: Config) -> AdminResponse:
        try:
            return await handler(request, config)
        except _Refused as refused:
            return refused.response
        except StoreUnavailable as exc:
            return _Refused(503, "store_unavailable", str(exc)).response

    return wrapped


def _store(request: AdminRequest, config: Config) -> Store:
    bankers = bankers_in_use(config)
    if not bankers:
        raise _Refused(404, "banker_not_configured", "no event type feeds a collector of type banker")
    wanted = parse_qs(request.query).get("banker", [min(bankers)])[0]
    banker = bankers.get(wanted)
    if banker is None:
        raise _Refused(404, "banker_unknown", f"no banker collector named {wanted!r}")
    key = (config.data_dir, wanted, msgspec.json.encode(banker))
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = open_store(banker, config.data_dir)
    return store


async def _states(store: Store, campaigns: list[RawCampaign]) -> list[CampaignState]:
    now = _now_ms()
    stale = stale_ms(await store.statuses(), now, store.config.status_interval_s)
    return [campaign.state(now, stale) for campaign in campaigns]


def _campaign_id(request: AdminRequest) -> str:
    campaign = request.params.get("id", "")
    if not 0 < len(campaign) <= MAX_CAMPAIGN_ID:
        raise _Refused(400, "invalid_campaign_id", f"a campaign id has 1 to {MAX_CAMPAIGN_ID} characters")
    return campaign


def _int_query(request: AdminRequest, name: str, default: int, high: int) -> int:
    values = parse_qs(request.query).get(name)
    if not values:
        return default
    try:
        value = int(values[0])
    except ValueError:
        value = -1
    if not 0 < value <= high:
        raise _Refused(400, "invalid_query", f"{name} must be an integer from 1 to {high}")
    return value


@_answers
async def put_campaign(request: AdminRequest, config: Config) -> AdminResponse:
    """Sets a campaign's budgets from `{"total_budget_micros": N, "daily_budget_micros": M,
    "hourly_budget_micros": H}` (daily and hourly optional) and answers its state; 400 `invalid_budget`."""
    store, campaign = _store(request, config), _campaign_id(request)
    try:
        budget = msgspec.json.decode(request.body, type=Budget)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _Refused(400, "invalid_budget", str(exc)) from None
    (state,) = await _states(store, [await store.set_budget(campaign, budget, _now_ms())])
    return AdminResponse.json(200, state)


@_answers
async def get_campaign(request: AdminRequest, config: Config) -> AdminResponse:
    """A campaign's state: budgets, `spent_micros`, `remaining_micros`, `overspend_micros`, `exhausted` and its
    reason, today's and this hour's spend, the hourly cap and `paced`, `debits`, `stale_ms`; 404 when unknown."""
    store, campaign = _store(request, config), _campaign_id(request)
    raw = await store.campaign(campaign)
    if raw is None:
        raise _Refused(404, "campaign_unknown", f"no budget or spend recorded for campaign {campaign!r}")
    (state,) = await _states(store, [raw])
    return AdminResponse.json(200, state)


@_answers
async def list_campaigns(request: AdminRequest, config: Config) -> AdminResponse:
    """Campaigns' states ordered by id, a page at a time: `?limit=N` (default 100, at most 1000) after `?after=ID`
    (`{"campaigns": [...], "next": ID or null}`; pass `next` as `after` for the next page)."""
    store, limit = _store(request, config), _int_query(request, "limit", PAGE_DEFAULT, PAGE_MAX)
    after = parse_qs(request.query).get("after", [""])[0]
    if len(after) > MAX_CAMPAIGN_ID:
        raise _Refused(400, "invalid_query", f"after is a campaign id: at most {MAX_CAMPAIGN_ID} characters")
    campaigns = await store.campaigns(after, limit + 1)  # one more: is there a next page?
    page = campaigns[:limit]
    following = page[-1].id if len(campaigns) > limit else None
    return AdminResponse.json(200, {"campaigns": await _states(store, page), "next": following})


@_answers
async def get_ledger(request: AdminRequest, config: Config) -> AdminResponse:
    """A campaign's newest applied debits (`?limit=N`, default 100): event id, micros, event time, type."""
    store, campaign = _store(request, config), _campaign_id(request)
    debits = await store.ledger(campaign, _int_query(request, "limit", 100, 100_000))
    entries = [{"id": d.id, "micros": d.micros, "ts": d.ts, "type": d.type} for d in debits]
    return AdminResponse.json(200, {"campaign": campaign, "debits": entries})


@_answers
async def get_notifications(request: AdminRequest, config: Config) -> AdminResponse:
    """Budget notifications (`total`, `daily`, `paced`) after `?after=SEQ`, oldest first (`?limit=N`)."""
    store, limit = _store(request, config), _int_query(request, "limit", 100, 10_000)
    after = parse_qs(request.query).get("after", [""])[0]
    try:
        notifications = await store.notifications(after, limit)
    except ValueError:
        raise _Refused(400, "invalid_query", "after must be a notification seq") from None
    return AdminResponse.json(200, {"notifications": notifications})
