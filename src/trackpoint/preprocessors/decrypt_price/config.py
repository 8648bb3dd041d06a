"""Options of the decrypt_price preprocessor (the `type: decrypt_price` entries of `preprocessors:`), and how its
price keys are read (by the preprocessor, and by `config check`, `run` and reload before any worker starts).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from trackpoint.adtech.price import decode_websafe
from trackpoint.config.load import KeyPath
from trackpoint.config.model import PreprocessorBase
from trackpoint.security.secrets import MIN_SECRET_BYTES, SecretError, read_secret, secret_option

ROLES = ("encryption", "integrity")


class ExchangeKeys(Struct, forbid_unknown_fields=True, kw_only=True):
    """One exchange's price keys, in the web-safe base64 the exchange hands out, from an environment variable or a
    file (never the config itself). `trackpoint config check` and `trackpoint run` read them before any worker
    starts."""

    encryption_key_env: Annotated[
        str | None, Meta(description="Environment variable holding the encryption key (web-safe base64).")
    ] = None
    encryption_key_file: Annotated[
        str | None,
        Meta(description="File holding the encryption key (web-safe base64), relative to data_dir unless absolute."),
    ] = None
    integrity_key_env: Annotated[
        str | None, Meta(description="Environment variable holding the integrity key (web-safe base64).")
    ] = None
    integrity_key_file: Annotated[
        str | None,
        Meta(description="File holding the integrity key (web-safe base64), relative to data_dir unless absolute."),
    ] = None


class DecryptPriceConfig(PreprocessorBase, tag="decrypt_price"):
    """Turns the win price an exchange sends (`${AUCTION_PRICE}`) into `metrics.<field>`, CPM in integer micros:
    an encrypted price (Google's scheme: web-safe base64 of IV, price and signature, HMAC-SHA1 with the exchange's
    encryption and integrity keys) is checked and decrypted; a plain CPM is parsed when `accept_plain`. The event
    type declares `field` as a string (`type: string`); the raw text is removed from dims. Rejected (400): an
    unexpanded macro (`price_macro_unsubstituted`), a bad token (`price_malformed`), a forged one
    (`price_signature_invalid`), an old one (`price_expired`), a negative or absurd price (`price_out_of_range`),
    an exchange without keys (`price_exchange_unknown`)."""

    field: Annotated[
        str, Meta(description="The field with the price as received; declared `type: string` by the event type.")
    ] = "price"
    exchange_field: Annotated[
        str | None,
        Meta(description="Field naming the exchange of a request (e.g. `exch`), to pick its keys; unset: none."),
    ] = None
    default_exchange: Annotated[
        str | None,
        Meta(
            description="Exchange whose keys apply when exchange_field is unset or absent from the request; "
            "default: the only exchange, when exactly one is listed."
        ),
    ] = None
    exchanges: Annotated[
        dict[str, ExchangeKeys], Meta(description="Price keys by exchange name (the values of exchange_field).")
    ] = msgspec.field(default_factory=dict)
    max_age_s: Annotated[
        Annotated[float, Meta(gt=0)] | None,
        Meta(
            description="An encrypted price whose IV timestamp is further than this from now (either way) is "
            "rejected (`price_expired`); unset: not checked."
        ),
    ] = None
    max_cpm: Annotated[
        float,
        Meta(gt=0, description="Highest credible CPM in currency units; above it (or below 0): `price_out_of_range`."),
    ] = 100000.0
    accept_plain: Annotated[
        bool | None,
        Meta(
            description="Accept a plain decimal CPM as well as encrypted prices; unset: only when `exchanges` is "
            "empty (a plain price can be forged by anyone who sees the URL)."
        ),
    ] = None

    def secret_readers(self, path: KeyPath, data_dir: str) -> Iterator[tuple[KeyPath, Callable[[], object]]]:
        """Each exchange key's option and its reader (`security.secrets.SecretHolder`): the keys are web-safe base64
        of at least 16 bytes, which reading the variable or file alone would not check."""
        for exchange, keys in self.exchanges.items():
            for role in ROLES:
                where = (*path, "exchanges", exchange, secret_option(f"{role}_key", getattr(keys, f"{role}_key_env")))
                yield where, functools.partial(read_price_key, str(path[-1]), exchange, role, keys, data_dir)


def read_price_key(name: str, exchange: str, role: str, keys: ExchangeKeys, data_dir: str) -> bytes:
    """One exchange key's bytes, from its variable or file (web-safe base64); SecretError naming the option."""
    where = f"preprocessor {name}, exchange {exchange}: {role} key"
    env: str | None = getattr(keys, f"{role}_key_env")
    file: str | None = getattr(keys, f"{role}_key_file")
    try:
        text = read_secret(f"{role}_key", env, file, data_dir, min_bytes=0)
    except SecretError as exc:
        raise SecretError(exc.option, f"{where}: {exc.reason}") from None
    option = secret_option(f"{role}_key", env)
    try:
        key = decode_websafe(text.decode("ascii"))
    except ValueError:  # UnicodeDecodeError included
        raise SecretError(option, f"{where}: not web-safe base64") from None
    if len(key) < MIN_SECRET_BYTES:
        raise SecretError(option, f"{where}: a key needs at least {MIN_SECRET_BYTES} bytes")
    return key
