"""check_price_bound: a win's price (the exchange's) may not exceed the bound the DSP signed (its bid).

The only spend check on the request path: two dict look-ups and a comparison.
"""

from __future__ import annotations

from trackpoint.event import Event
from trackpoint.fields.converters import Reject
from trackpoint.preprocessors.check_price_bound.config import CheckPriceBoundConfig

ABOVE_BOUND = "price_above_bound"
BOUND_MISSING = "price_bound_missing"


class CheckPriceBound:
    """Refuses (403) an event whose price metric is above its bound metric; without a bound, refuses (400) or
    passes as configured. An event without a price is left to the price field's own rules."""

    def __init__(self, name: str, config: CheckPriceBoundConfig) -> None:
        self.name = name
        self.price_field = config.price_field
        self.bound_field = config.bound_field
        self.require_bound = config.require_bound

    def __call__(self, event: Event) -> Event:
        metrics = event.metrics
        price = metrics.get(self.price_field)
        bound = metrics.get(self.bound_field)
        if bound is None:
            if self.require_bound:
                raise Reject(400, BOUND_MISSING, self.bound_field)
        elif price is not None and price > bound:
            raise Reject(403, ABOVE_BOUND, self.price_field)
        return event
