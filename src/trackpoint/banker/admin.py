"""The banker's admin API, served on the admin port by the supervisor (registered as plugin admin routes).

- `PUT /banker/campaigns/{id}` `{"total_budget_micros": N, "daily_budget_micros": M, "hourly_budget_micros": H}`
- `GET /banker/campaigns/{id}` — the campaign's state (see `CampaignState`)
- `GET /banker/campaigns` — every campaign's state
- `GET /banker/campaigns/{id}/ledger?limit=N` — its newest applied debits
- `GET /banker/notifications?after=SEQ&limit=N` — budget notifications after `seq`, oldest first

With several banker collectors in the config, `?banker=NAME` picks one (default: the first by name).
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs

import msgspec

from trackpoint.admin.server import AdminRequest, AdminResponse
from trackpoint.banker.config import bankers_in_use
from trackpoint.banker.model import Budget, CampaignState, RawCampaign, stale_ms
from trackpoint.banker.store import Store, StoreUnavailable, open_store
from trackpoint.config.model import Config

MAX_CAMPAIGN_ID = 256
_stores: dict[tuple[str, str, bytes], Store] = {}  # by (data_dir, name, options): reloads reuse unchanged stores


def _now_ms() -> int:
    return int(time.time() * 1000)


def _error(status: int, error: str, detail: str = "") -> AdminResponse:
    document = {"error": error, "detail": detail} if detail else {"error": error}
    return AdminResponse.json(status, document)


def _store(request: AdminRequest, config: Config) -> Store | AdminResponse:
    bankers = bankers_in_use(config)
    if not bankers:
        return _error(404, "banker_not_configured", "no event type feeds a collector of type banker")
    wanted = parse_qs(request.query).get("banker", [min(bankers)])[0]
    banker = bankers.get(wanted)
    if banker is None:
        return _error(404, "banker_unknown", f"no banker collector named {wanted!r}")
    key = (config.data_dir, wanted, msgspec.json.encode(banker))
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = open_store(banker, config.data_dir)
    return store


async def _states(store: Store, campaigns: list[RawCampaign]) -> list[CampaignState]:
    now = _now_ms()
    stale = stale_ms(await store.statuses(), now, store.config.status_interval_s)
    return [campaign.state(now, stale) for campaign in campaigns]


def _campaign_id(request: AdminRequest) -> str | AdminResponse:
    campaign = request.params.get("id", "")
    if not 0 < len(campaign) <= MAX_CAMPAIGN_ID:
        return _error(400, "invalid_campaign_id", f"a campaign id has 1 to {MAX_CAMPAIGN_ID} characters")
    return campaign


def _int_query(request: AdminRequest, name: str, default: int, high: int) -> int | AdminResponse:
    values = parse_qs(request.query).get(name)
    if not values:
        return default
    try:
        value = int(values[0])
    except ValueError:
        value = -1
    if not 0 < value <= high:
        return _error(400, "invalid_query", f"{name} must be an integer from 1 to {high}")
    return value


async def put_campaign(request: AdminRequest, config: Config) -> AdminResponse:
    store = _store(request, config)
    campaign = _campaign_id(request)
    if isinstance(store, AdminResponse):
        return store
    if isinstance(campaign, AdminResponse):
        return campaign
    try:
        budget = msgspec.json.decode(request.body, type=Budget)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return _error(400, "invalid_budget", str(exc))
    try:
        raw = await store.set_budget(campaign, budget, _now_ms())
        (state,) = await _states(store, [raw])
    except StoreUnavailable as exc:
        return _error(503, "store_unavailable", str(exc))
    return AdminResponse.json(200, state)


async def get_campaign(request: AdminRequest, config: Config) -> AdminResponse:
    store = _store(request, config)
    campaign = _campaign_id(request)
    if isinstance(store, AdminResponse):
        return store
    if isinstance(campaign, AdminResponse):
        return campaign
    try:
        raw = await store.campaign(campaign)
        if raw is None:
            return _error(404, "campaign_unknown", f"no budget or spend recorded for campaign {campaign!r}")
        (state,) = await _states(store, [raw])
    except StoreUnavailable as exc:
        return _error(503, "store_unavailable", str(exc))
    return AdminResponse.json(200, state)


async def list_campaigns(request: AdminRequest, config: Config) -> AdminResponse:
    store = _store(request, config)
    if isinstance(store, AdminResponse):
        return store
    try:
        states = await _states(store, await store.campaigns())
    except StoreUnavailable as exc:
        return _error(503, "store_unavailable", str(exc))
    return AdminResponse.json(200, {"campaigns": states})


async def get_ledger(request: AdminRequest, config: Config) -> AdminResponse:
    store = _store(request, config)
    campaign = _campaign_id(request)
    limit = _int_query(request, "limit", 100, 100_000)
    for answer in (store, campaign, limit):
        if isinstance(answer, AdminResponse):
            return answer
    assert isinstance(store, Store) and isinstance(campaign, str) and isinstance(limit, int)
    try:
        debits = await store.ledger(campaign, limit)
    except StoreUnavailable as exc:
        return _error(503, "store_unavailable", str(exc))
    entries = [{"id": d.id, "micros": d.micros, "ts": d.ts, "type": d.type} for d in debits]
    return AdminResponse.json(200, {"campaign": campaign, "debits": entries})


async def get_notifications(request: AdminRequest, config: Config) -> AdminResponse:
    store = _store(request, config)
    limit = _int_query(request, "limit", 100, 10_000)
    if isinstance(store, AdminResponse):
        return store
    if isinstance(limit, AdminResponse):
        return limit
    after = parse_qs(request.query).get("after", [""])[0]
    if after and not all(part.isdigit() for part in after.split("-", 1)):
        return _error(400, "invalid_query", "after must be a notification seq")
    try:
        notes = await store.notifications(after, limit)
    except StoreUnavailable as exc:
        return _error(503, "store_unavailable", str(exc))
    return AdminResponse.json(200, {"notifications": notes})
