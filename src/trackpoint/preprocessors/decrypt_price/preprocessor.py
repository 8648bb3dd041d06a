"""decrypt_price: the win price an exchange sends (`${AUCTION_PRICE}`), encrypted or plain, into metrics as micros.

Keys are read once when the worker starts; a request costs two HMAC-SHA1 of a few dozen bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from decimal import Decimal

from trackpoint.adtech.price import (
    EXPIRED,
    PriceDecrypter,
    PriceError,
)
from trackpoint.config.load import KeyPath
from trackpoint.config.model import Config, FieldSpec, one_of_problem
from trackpoint.event import Event
from trackpoint.fields.converters import MICROS, PRICE_OUT_OF_RANGE, Reject, parse_micros
from trackpoint.fields.macros import PRICE_MACRO_UNSUBSTITUTED, unsubstituted_price_macro
from trackpoint.preprocessors.decrypt_price.config import DecryptPriceConfig, read_price_key

UNKNOWN_EXCHANGE = "price_exchange_unknown"


class DecryptPrice:
    """Replaces dims[field] (the price as received) with metrics[field], the CPM in integer micros."""

    def __init__(self, name: str, config: DecryptPriceConfig, data_dir: str) -> None:
        self.name = name
        self.field = config.field
        self.exchange_field = config.exchange_field
        self.default_exchange = config.default_exchange
        if self.default_exchange is None and len(config.exchanges) == 1:
            self.default_exchange = next(iter(config.exchanges))
        self.decrypters = {
            exchange: PriceDecrypter(
                read_price_key(name, exchange, "encryption", keys, data_dir),
                read_price_key(name, exchange, "integrity", keys, data_dir),
            )
            for exchange, keys in config.exchanges.items()
        }
        self.accept_plain = not config.exchanges if config.accept_plain is None else config.accept_plain
        self.max_age_s = config.max_age_s
        self.max_micros = int(Decimal(repr(config.max_cpm)) * MICROS)  # exact: 2.01 is 2_010_000
        self.clock: Callable[[], float] = time.time
        self.input_fields = {self.field: FieldSpec(required=True, max_len=128)}
        if self.exchange_field is not None:
            self.input_fields[self.exchange_field] = FieldSpec(max_len=64)

    def __call__(self, event: Event) -> Event:
        raw = event.dims.pop(self.field, None)
        if raw is None:  # an optional price the request left out
            return event
        event.metrics[self.field] = self.micros(raw, event.dims)
        return event

    def micros(self, raw: str, dims: dict[str, str]) -> int:
        """The CPM in micros of one received price, or `Reject(400, reason, field)`."""
        field = self.field
        micros = parse_micros(raw) if self.accept_plain else None
        if micros is None:
            if unsubstituted_price_macro(raw):
                raise Reject(400, PRICE_MACRO_UNSUBSTITUTED, field)
            exchange = self.default_exchange
            if self.exchange_field is not None:
                exchange = dims.get(self.exchange_field, exchange)
            decrypter = None if exchange is None else self.decrypters.get(exchange)
            if decrypter is None:
                raise Reject(400, UNKNOWN_EXCHANGE, self.exchange_field or field)
            try:
                micros, seconds = decrypter.decrypt(raw)
            except PriceError as error:
                raise Reject(400, error.reason, field) from None
            if self.max_age_s is not None and abs(self.clock() - seconds) > self.max_age_s:
                raise Reject(400, EXPIRED, field)
        if micros < 0 or micros > self.max_micros:
            raise Reject(400, PRICE_OUT_OF_RANGE, field)
        return micros


def check_decrypt_price(config: Config) -> Iterator[tuple[KeyPath, str]]:
    """Config rules of decrypt_price: one source per key, a known default exchange, and event types that declare
    the price as text (a `money` price would be parsed, or refused, before the preprocessor sees it)."""
    users: dict[str, DecryptPriceConfig] = {}
    for name, preprocessor in config.preprocessors.items():
        if not isinstance(preprocessor, DecryptPriceConfig):
            continue
        users[name] = preprocessor
        base: KeyPath = ("preprocessors", name)
        for exchange, keys in preprocessor.exchanges.items():
            for role in ("encryption", "integrity"):
                env, file = getattr(keys, f"{role}_key_env"), getattr(keys, f"{role}_key_file")
                problem = one_of_problem(f"{role}_key", env, file)
                if problem is not None:
                    yield (*base, "exchanges", exchange), f"the {role} key {problem}"
        default = preprocessor.default_exchange
        if default is not None and default not in preprocessor.exchanges:
            yield (*base, "default_exchange"), f"no exchange named {default!r} in exchanges"
    for type_name, spec in config.event_types.items():
        for name in spec.preprocessors:
            user = users.get(name)
            if user is None:
                continue
            for field_name in (user.field, user.exchange_field):
                if field_name is None:
                    continue
                declared = spec.fields.get(field_name)
                if declared is not None and (declared.type != "string" or declared.into == "metrics"):
                    yield (
                        ("event_types", type_name, "fields", field_name),
                        f"preprocessor {name!r} reads {field_name!r} as text: declare it `type: string`",
                    )
