"""Options of the check_price_bound preprocessor (the `type: check_price_bound` entries of `preprocessors:`)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from trackpoint.config.model import PreprocessorBase


class CheckPriceBoundConfig(PreprocessorBase, tag="check_price_bound"):
    """Refuses a win or billing notice whose price is above the bound the DSP signed into its URL (its own bid,
    `max_price`, a CPM like the price): the exchange substitutes the price, so a signed URL replayed with a
    bigger one is refused (403 `price_above_bound`), counted, and never debited. Put the bound in the event type's
    `signed_params`, and this preprocessor after decrypt_price when prices arrive encrypted."""

    price_field: Annotated[str, Meta(description="The money metric holding the price, in micros.")] = "price"
    bound_field: Annotated[str, Meta(description="The money metric holding the signed bound (the bid), in micros.")] = (
        "max_price"
    )
    require_bound: Annotated[
        bool,
        Meta(description="Refuse a notice without the bound (400 `price_bound_missing`); false: it passes."),
    ] = False
