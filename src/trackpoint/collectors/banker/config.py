"""Options of the banker collector: the store, how an event becomes a debit, currencies, pacing and retention.

Imported at start-up by the plugin registry, so it imports no client library.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from typing import Annotated, Literal

from msgspec import Meta

from trackpoint.config.model import CollectorBase, Config, Seconds, check_server_url, collectors_in_use

DEFAULT_RETENTION_S = 35 * 86_400
KeyPath = tuple[str | int, ...]


class BankerCollectorConfig(CollectorBase, tag="banker"):
    """The banker: turns spend events (win or billing notices, or impressions) into debits of their campaign's
    budget, each event id at most once, in Redis (production) or SQLite (the embedded default). Attach it to the
    event types that spend: `collectors: [log, banker]`."""

    # The ledger keeps only id, campaign, amount, time and type: nothing personal reaches the store, so the
    # privacy filter's per-event copy would buy nothing here.
    trusted: Annotated[
        bool, Meta(description="Trusted by default: the store keeps only id, campaign, amount, time and type.")
    ] = True
    store: Annotated[
        Literal["sqlite", "redis"],
        Meta(description="sqlite: a file under data_dir, for one machine; redis: shared by every tracker."),
    ] = "sqlite"
    sqlite_path: Annotated[str, Meta(description="The SQLite database, relative to data_dir (store: sqlite).")] = (
        "banker/banker.db"
    )
    redis_url: Annotated[
        str,
        Meta(description="Redis URL (store: redis): `redis://host:6379/0`, `rediss://` for TLS. No password here."),
    ] = "redis://127.0.0.1:6379/0"
    password_env: Annotated[
        str | None, Meta(description="Name of the environment variable holding the Redis password.")
    ] = None
    key_prefix: Annotated[
        str,
        Meta(
            pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
            description="Prefix of every Redis key and channel of this banker (`<prefix>:campaign:<id>` ...).",
        ),
    ] = "trackpoint:banker"
    unknown_campaigns: Annotated[
        Literal["ignore", "create"],
        Meta(
            description="ignore: only campaigns created with `PUT /banker/campaigns/{id}` are debited; a spend "
            "event for any other is not applied and counted (outcome `unknown_campaign`), so forged campaign ids "
            "cannot fill the store. create: the first debit creates its campaign (no budget)."
        ),
    ] = "ignore"
    campaign_field: Annotated[str, Meta(description="The dim holding the campaign id.")] = "cid"
    price_field: Annotated[str, Meta(description="The money metric holding the price, in micros.")] = "price"
    price_unit: Annotated[
        Literal["cpm", "item"],
        Meta(
            description="cpm: the price is per thousand impressions (OpenRTB), the debit is price / 1000, rounded "
            "half up to the micro; item: the price is the debit itself."
        ),
    ] = "cpm"
    currency: Annotated[
        str, Meta(pattern=r"^[A-Z]{3}$", description="The currency of every budget (ISO 4217 code).")
    ] = "USD"
    currency_field: Annotated[
        str,
        Meta(
            description="The dim holding the event's currency; an event without it is in `currency`. On a signed "
            "event type with `signed_params`, its parameter must be listed there (checked at start-up): the price "
            "is converted by it."
        ),
    ] = "cur"
    rates: Annotated[
        dict[str, str],
        Meta(
            description='Conversion into `currency`: `{EUR: "1.08"}` means 1 EUR = 1.08 budget units (exact '
            "decimals). An event in a currency neither `currency` nor listed here is not debited, and counted."
        ),
    ] = {}
    retention_s: Annotated[
        int,
        Meta(
            ge=3600,
            le=400 * 86_400,
            description="How long an applied event id is remembered (Redis: one small key per debit). It must "
            "be longer than any replay window: a log replayed after it would be debited again.",
        ),
    ] = DEFAULT_RETENTION_S
    ledger_maxlen: Annotated[
        int,
        Meta(
            ge=0,
            description="Redis: approximate bound of each campaign's ledger stream (0: never trim). SQLite keeps "
            "every debit.",
        ),
    ] = 10_000_000
    pacing: Annotated[
        Literal["off", "even"],
        Meta(
            description="even: a campaign with a daily budget and no hourly one may spend at most "
            "daily x pacing_slack / 24 per hour (UTC), so its day is not spent in the first minutes."
        ),
    ] = "off"
    pacing_slack: Annotated[
        float,
        Meta(ge=1.0, le=24.0, description="How far an hour may run ahead of even pacing (1.0: exactly 1/24)."),
    ] = 1.2
    notifications_maxlen: Annotated[
        int, Meta(ge=1, description="Redis: approximate bound of the notification stream.")
    ] = 100_000
    status_interval_s: Annotated[
        Seconds,
        Meta(description="How often each tracker writes its backlog to the store, for the state's `stale_ms`."),
    ] = 1.0
    timeout_s: Annotated[
        Seconds, Meta(description="Time allowed for one batch's round trip to the store; then it is retried.")
    ] = 5.0
    connect_timeout_s: Annotated[Seconds, Meta(description="Time allowed to open a Redis connection.")] = 2.0

    def __post_init__(self) -> None:
        check_server_url(self.redis_url, ("redis", "rediss", "unix"))
        for code, rate in self.rates.items():
            parse_rate(code, rate)


def parse_rate(code: str, rate: str) -> tuple[int, int]:
    """A rate as an exact fraction (numerator, denominator); raises ValueError naming the currency."""
    if len(code) != 3 or not code.isalpha() or not code.isupper():
        raise ValueError(f"rates: {code!r} is not an ISO 4217 currency code")
    try:
        value = Decimal(rate)
    except InvalidOperation:
        raise ValueError(f"rates.{code}: {rate!r} is not a decimal number") from None
    if not value.is_finite() or value <= 0:
        raise ValueError(f"rates.{code}: {rate!r} must be a positive number")
    numerator, denominator = value.as_integer_ratio()
    return numerator, denominator


def bankers_in_use(config: Config) -> dict[str, BankerCollectorConfig]:
    """The banker collectors some event type feeds (the implicit `banker` exists in every config, used or not)."""
    return collectors_in_use(config, BankerCollectorConfig)


def check_banker(config: Config) -> Iterator[tuple[KeyPath, str]]:
    """A signed event type that spends signs its currency: the banker converts the price by it, so a copied
    notice with a currency of the forger's choosing could cost more than the bid it was signed for (or nothing, in
    a currency without a rate, while the real notice, the same id, is then ignored as a repeat)."""
    bankers = bankers_in_use(config)
    for type_name, spec in config.event_types.items():
        if spec.signature == "off" or not spec.signed_params:  # unsigned: trusted for nothing; all signed: covered
            continue
        for name in spec.collectors:
            banker = bankers.get(name)
            field = None if banker is None else spec.fields.get(banker.currency_field)
            if banker is None or field is None or field.source not in ("param", "query"):
                continue
            param = field.name or banker.currency_field
            if param not in spec.signed_params:
                yield (
                    ("event_types", type_name, "signed_params"),
                    f"must list {param!r}, the currency the banker {name!r} converts the price by: write your "
                    "bid's currency into the URL and sign it (not the exchange's ${AUCTION_CURRENCY})",
                )
                break
