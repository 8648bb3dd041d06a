"""issue_click_id: gives a click its click id (`dims.click_id`), which a redirect passes on to the destination.

One HMAC-SHA256 of about a hundred bytes per click, with the key's hash states prepared at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping

from trackpoint.adtech.clickid import ClickIds
from trackpoint.event import Event
from trackpoint.preprocessors.check_consent.preprocessor import CONSENT_DIM, DENIED
from trackpoint.preprocessors.issue_click_id.config import IssueClickIdConfig

CLICK_ID_DIM = "click_id"


class IssueClickId:
    """Sets dims.click_id from the click's imp, cid, crid and time. The signing keys arrive from the edge
    (`use_signing_keys`) before the first event."""

    def __init__(self, name: str, config: IssueClickIdConfig) -> None:
        self.name = name
        # (query parameter, dim) pairs the edge's redirect appends to the destination.
        self.redirect_params: tuple[tuple[str, str], ...] = (
            () if config.param is None else ((config.param, CLICK_ID_DIM),)
        )
        self.click_ids: ClickIds | None = None

    def use_signing_keys(self, keys: Mapping[str, bytes], sign_with: str) -> None:
        self.click_ids = ClickIds(keys, sign_with)

    def __call__(self, event: Event) -> Event:
        click_ids = self.click_ids
        assert click_ids is not None, "use_signing_keys is called when the edge starts"
        dims = event.dims
        get = dims.get
        if get(CONSENT_DIM) == DENIED:  # check_consent ran first and said no: no identifier to pass on
            return event
        dims[CLICK_ID_DIM] = click_ids.issue(get("imp", ""), get("cid", ""), get("crid", ""), event.ts)
        return event
