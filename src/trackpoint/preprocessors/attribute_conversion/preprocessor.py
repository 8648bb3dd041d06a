"""attribute_conversion: a conversion postback attributed to its click from the click id alone (no look-up).

The click id's signature is checked, its click read, and the attribution window applied; a conversion that cannot
be attributed is still recorded, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping

from trackpoint.adtech.clickid import FORGED, MALFORMED, UNKNOWN_KEY, ClickIdError, ClickIds
from trackpoint.adtech.ivt import IVT_DIM, TOO_FAST, flag
from trackpoint.config.model import FieldSpec
from trackpoint.event import Event
from trackpoint.preprocessors.attribute_conversion.config import AttributeConversionConfig

ATTRIBUTION_DIM = "attribution"
REASON_DIM = "attribution_reason"
ATTRIBUTED = "attributed"
UNATTRIBUTED = "unattributed"
# Reasons a conversion is unattributed, besides the click id's own (malformed, unknown key, forged).
NO_CLICK_ID = "no_click_id"
BEFORE_CLICK = "before_click"
WINDOW_EXPIRED = "window_expired"
OUTCOMES = (ATTRIBUTED, NO_CLICK_ID, MALFORMED, UNKNOWN_KEY, FORGED, BEFORE_CLICK, WINDOW_EXPIRED, TOO_FAST)
# The longest click id an event type accepts when it does not declare the field itself.
CLICK_ID_MAX_LEN = 512


class AttributeConversion:
    """Reads dims[field] (the click id) and records the attribution; counts each outcome (`counts`, on /metrics)."""

    flag_dim = IVT_DIM  # a conversion too soon after its click is flagged `too_fast`

    def __init__(self, name: str, config: AttributeConversionConfig) -> None:
        self.name = name
        self.field = config.field
        self.window_ms = config.window_s * 1000
        self.min_delay_ms = config.min_delay_ms
        self.input_fields = {self.field: FieldSpec(max_len=CLICK_ID_MAX_LEN)}
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.click_ids: ClickIds | None = None

    def use_signing_keys(self, keys: Mapping[str, bytes], sign_with: str) -> None:
        self.click_ids = ClickIds(keys, sign_with)

    def __call__(self, event: Event) -> Event:
        click_ids = self.click_ids
        assert click_ids is not None, "use_signing_keys is called when the edge starts"
        dims = event.dims
        text = dims.get(self.field)
        if not text:
            return self.unattributed(event, NO_CLICK_ID)
        try:
            click = click_ids.read(text)
        except ClickIdError as error:
            return self.unattributed(event, error.reason)
        if click.imp:
            dims["click_imp"] = click.imp
        if click.cid:
            dims["click_cid"] = click.cid
        if click.crid:
            dims["click_crid"] = click.crid
        metrics = event.metrics
        metrics["click_ts"] = click.ts
        latency = metrics["latency_ms"] = event.ts - click.ts
        if latency < 0:
            return self.unattributed(event, BEFORE_CLICK)
        if latency > self.window_ms:
            return self.unattributed(event, WINDOW_EXPIRED)
        dims[ATTRIBUTION_DIM] = ATTRIBUTED
        self.counts[ATTRIBUTED] += 1
        if latency < self.min_delay_ms and IVT_DIM not in dims:
            flag(event, TOO_FAST)
            self.counts[TOO_FAST] += 1
        return event

    def unattributed(self, event: Event, reason: str) -> Event:
        dims = event.dims
        dims[ATTRIBUTION_DIM] = UNATTRIBUTED
        dims[REASON_DIM] = reason
        self.counts[reason] += 1
        return event
