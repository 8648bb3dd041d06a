"""Options of the issue_click_id preprocessor (the `type: issue_click_id` entries of `preprocessors:`)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from trackpoint.config.model import PreprocessorBase


class IssueClickIdConfig(PreprocessorBase, tag="issue_click_id"):
    """Issues a click id into `dims.click_id`: the click's `imp`, `cid`, `crid` and time, with the key id and a
    truncated HMAC-SHA256 under the `signing` key (`sign_with`), in base64url. A redirect passes it on to the
    destination; a conversion postback that brings it back is attributed by attribute_conversion."""

    param: Annotated[
        Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.~-]{1,64}$")] | None,
        Meta(
            description="For redirects: the query parameter the click id is appended to the destination under "
            "(before any `#fragment`; a parameter of that name already there is replaced). Unset: not appended "
            "(place `{click_id}` in the destination with `response.macros` instead)."
        ),
    ] = "tp_click"
