"""Unexpanded macros: a placeholder such as `${AUCTION_ID}` or `[ERRORCODE]` that reached the tracker as written,
because the exchange, player or ad server that should have replaced it did not. `unexpanded` recognises one;
`unsubstituted_price_macro` the auction price's (OpenRTB `${AUCTION_PRICE}`), which price fields and decrypt_price
refuse with a reason of their own.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

# The reason a required field holding an unexpanded macro is rejected with (400).
UNSUBSTITUTED = "macro_unsubstituted"
# The reason a price holding the auction-price macro is rejected with (400), whether or not it counts as absent.
PRICE_MACRO_UNSUBSTITUTED = "price_macro_unsubstituted"
_PRICE_MACRO = "AUCTION_PRICE"  # also inside `${AUCTION_PRICE:B64}` and its URL-encoded forms once decoded

# Every macro syntax starts with one of these characters, once URL-decoded or still encoded (`%24`, `%5B`, `%7B`):
# a value that starts with anything else is not a macro, and one character test is all the common case costs.
MACRO_START = frozenset("$[%{")

_NAME = r"[A-Za-z][A-Za-z0-9_]{0,63}"
_MACRO = re.compile(
    rf"\$\{{{_NAME}(?::{_NAME})?\}}"  # OpenRTB: ${AUCTION_PRICE}, ${AUCTION_PRICE:B64}
    rf"|\[{_NAME}\]"  # VAST: [ERRORCODE], [CACHEBUSTING]; players also send [timestamp] in lower case
    rf"|%%{_NAME}%%"  # ad servers: %%CACHEBUSTER%%, %%TTD_IMPRESSION_ID%%
    rf"|\{{\{{{_NAME}\}}\}}|\{{{_NAME}\}}",  # templates: {{AUCTION_ID}}, {click_id}
    re.ASCII,
)
# A macro may arrive encoded once more than the query string decodes (`%5BERRORCODE%5D`, `%2524%257B...`).
_MAX_DECODES = 2


def unexpanded(raw: str) -> bool:
    """Whether a whole (URL-decoded) value is a macro nobody expanded, possibly still URL-encoded."""
    text = raw
    for _ in range(_MAX_DECODES + 1):
        if _MACRO.fullmatch(text) is not None:
            return True
        if "%" not in text:
            return False
        decoded = unquote(text)
        if decoded == text:
            return False
        text = decoded
    return False


def unsubstituted_price_macro(raw: str) -> bool:
    """Whether a price parameter is the auction-price macro itself: the exchange (or a proxy) never expanded it."""
    return _PRICE_MACRO in raw
