"""Options of the decrypt_price preprocessor (the `type: decrypt_price` entries of `preprocessors:`)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from trackpoint.config.model import PreprocessorBase


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
