"""OpenRTB auction notices as protocol facts: the `${AUCTION_*}` macros an exchange substitutes in win (`nurl`),
billing (`burl`) and loss (`lurl`) URLs, the default fields they map to, and the range of OpenRTB's loss reason codes.
"""

from __future__ import annotations

from urllib.parse import quote

# Macro → the default field that receives it (OpenRTB 2.6 §4.4). `imp` is not among them: it is the bidder's own
# impression id, unique per bid and written into the URL when bidding. `${AUCTION_IMP_ID}` is the exchange's
# imp.id, unique only within one bid request (usually "1"): as a dedupe key it would merge unrelated wins. Nor is
# `cur` on a win or billing notice: the price is in the bid's currency, which the bidder writes and signs (the
# banker converts the price by it; `${AUCTION_CURRENCY}` only confirms it, and a free one could be forged).
WIN_MACROS = {
    "price": "${AUCTION_PRICE}",
    "auction": "${AUCTION_ID}",
    "bid": "${AUCTION_BID_ID}",
    "auction_imp": "${AUCTION_IMP_ID}",
    "seat": "${AUCTION_SEAT_ID}",
    "ad": "${AUCTION_AD_ID}",
    "mbr": "${AUCTION_MBR}",
}
LOSS_MACROS = {
    "loss": "${AUCTION_LOSS}",
    "price": "${AUCTION_PRICE}",  # in a loss notice: the clearing price, when the exchange discloses it
    "min_to_win": "${AUCTION_MIN_TO_WIN}",
    "cur": "${AUCTION_CURRENCY}",
    "auction": "${AUCTION_ID}",
    "bid": "${AUCTION_BID_ID}",
    "auction_imp": "${AUCTION_IMP_ID}",
    "seat": "${AUCTION_SEAT_ID}",
    "ad": "${AUCTION_AD_ID}",
}

# OpenRTB 2.x loss reason codes (list 5.25, `${AUCTION_LOSS}`): 0 bid won, 1-10 errors, 100-104 auction outcomes
# (102: lost to a higher bid), 200 and up creative filtered; 1000 and above are the exchange's own codes.
EXCHANGE_LOSS_REASONS = 1000
LOSS_REASON_MAX = 999_999


def notice_url(base: str, imp: str, macros: dict[str, str], **fixed: str) -> str:
    """The notice URL a bidder puts in its bid: its own impression id and fields, then every macro as the value of
    its field, left unencoded so the exchange finds and replaces it."""
    pairs = [f"imp={quote(imp, safe='')}"]
    pairs += [f"{name}={quote(value, safe='')}" for name, value in fixed.items()]
    pairs += [f"{name}={macro}" for name, macro in macros.items()]
    return f"{base}?{'&'.join(pairs)}"
