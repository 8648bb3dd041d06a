"""The table of reject reasons: every (status, reason, description) the edge can answer with `X-Reject-Reason`.

One source for the OpenAPI document, the endpoints reference and the fuzz harness; tests/test_reasons.py checks
that every reason raised in src/ is listed here and every listed reason is raised. Imports nothing.
"""

from __future__ import annotations

from typing import NamedTuple


class RejectReason(NamedTuple):
    """One reason code: the HTTP status it is answered with and what it means to a client."""

    status: int
    reason: str
    description: str


REJECT_REASONS: tuple[RejectReason, ...] = (
    # The request is not HTTP the edge serves.
    RejectReason(
        400, "bad_request", "Malformed HTTP: request line, headers, framing or an HTTP version other than 1.x."
    ),
    RejectReason(400, "bad_host", "HTTP/1.1 without a Host header, or with more than one."),
    RejectReason(400, "upgrade_not_supported", "A protocol upgrade (WebSocket, h2c) was asked for."),
    RejectReason(404, "not_found", "No event type has this path."),
    RejectReason(405, "method_not_allowed", "The method is not one of the event type's methods."),
    RejectReason(408, "header_timeout", "The headers arrived too slowly (`server.limits.header_timeout_s`)."),
    RejectReason(408, "body_timeout", "The body arrived too slowly (`server.limits.body_timeout_s`)."),
    RejectReason(413, "body_too_large", "The body is larger than `server.limits.max_body_bytes`."),
    RejectReason(414, "uri_too_long", "The request line is longer than `server.limits.max_request_line_bytes`."),
    RejectReason(
        415,
        "unsupported_media_type",
        "The body's content type is not form-urlencoded, multipart/form-data or JSON (or text/plain JSON).",
    ),
    RejectReason(415, "unsupported_content_encoding", "A `Content-Encoding` other than gzip, deflate or identity."),
    RejectReason(400, "content_encoding_invalid", "A compressed body that does not inflate, or is cut short."),
    RejectReason(413, "inflated_too_large", "A compressed body inflates past `server.limits.max_inflated_bytes`."),
    RejectReason(
        413,
        "inflation_ratio_exceeded",
        "A compressed body inflates to more than `server.limits.max_inflation_ratio` times its size (a bomb).",
    ),
    RejectReason(413, "batch_too_large", "A batch with more items than its event type's `batch.max_items`."),
    RejectReason(400, "invalid_multipart", "A multipart/form-data body that cannot be read (boundary, parts, UTF-8)."),
    RejectReason(431, "headers_too_large", "The headers exceed `server.limits`."),
    # A field is missing or wrong (the body's `field` names it).
    RejectReason(400, "missing_field", "A required field is absent."),
    # A field that drops invalid values (`on_invalid: drop`, the default on pixels) keeps the event without the value
    # and names it in `dims.invalid` with one of these reasons instead.
    RejectReason(400, "field_too_long", "A value is longer than its field's `max_len`."),
    RejectReason(
        400, "invalid_field", "A value its field's type cannot read (or not one of an enum's values, or controls)."
    ),
    RejectReason(400, "field_out_of_range", "A number outside its field's `min` / `max`."),
    RejectReason(400, "invalid_encoding", "A value (percent-encoded or raw) whose bytes are not UTF-8."),
    RejectReason(400, "invalid_json", "A JSON body that is not a JSON object, or nested too deep."),
    RejectReason(400, "macro_unsubstituted", "A required field holds a macro nobody expanded (`${AUCTION_ID}`)."),
    RejectReason(
        400,
        "redirect_not_allowed",
        "The click destination is not an allowed http(s) URL (still recorded, under an id of its own); a type with "
        "a `fallback_url` answers 302 there with this reason instead.",
    ),
    # Auction prices (decrypt_price and `price` fields).
    RejectReason(400, "price_macro_unsubstituted", "The price is the literal `${AUCTION_PRICE}` macro."),
    RejectReason(400, "price_malformed", "The encrypted price is not a valid token."),
    RejectReason(400, "price_signature_invalid", "The encrypted price's integrity signature does not match."),
    RejectReason(400, "price_expired", "The encrypted price is older than `max_age_s`."),
    RejectReason(400, "price_out_of_range", "The price is negative or above `max_cpm` (or the field's min / max)."),
    RejectReason(
        403, "price_above_bound", "The price is above the bound the DSP signed into the notice (`check_price_bound`)."
    ),
    RejectReason(400, "price_bound_missing", "A notice without its signed price bound (`require_bound: true`)."),
    RejectReason(400, "price_exchange_unknown", "No keys are configured for the exchange the price comes from."),
    # Signed URLs and postback authentication.
    RejectReason(403, "signature_missing", "The event type requires a signed URL and this one is not signed."),
    RejectReason(403, "signature_invalid", "The URL's signature does not match."),
    RejectReason(403, "body_unsigned", "A body under a signed URL without a body digest (`bd`)."),
    RejectReason(403, "body_digest_invalid", "The body is not the one whose digest (`bd`) the URL signs."),
    RejectReason(403, "signature_expired", "The signed URL's `exp` has passed."),
    RejectReason(403, "unknown_key", "The URL is signed with a key id the tracker does not have."),
    RejectReason(401, "postback_auth_missing", "A postback without credentials (the event type requires them)."),
    RejectReason(403, "postback_auth_invalid", "The postback's signature or token does not match."),
    RejectReason(403, "postback_auth_expired", "The postback's timestamp is outside `max_skew_s`."),
    RejectReason(403, "postback_advertiser_unknown", "No secret is configured for the postback's advertiser."),
    RejectReason(403, "cors_origin_not_allowed", "The page's Origin is not allowed for this event type (CORS)."),
    # Load and recording.
    RejectReason(429, "rate_limited", "The event type's rate limit is exceeded."),
    RejectReason(503, "backpressure", "A collector's queue is full: the event could not be taken."),
    RejectReason(503, "too_many_connections", "The worker is at `server.limits.max_connections`."),
    RejectReason(503, "too_many_connections_from_ip", "The client's address is at `max_connections_per_ip`."),
    RejectReason(503, "log_unavailable", "The log could not record the event (write or fsync failed)."),
    RejectReason(503, "log_disk_full", "The log's disk budget or the disk itself is full."),
    RejectReason(503, "collector_unavailable", "A durable collector could not record the event."),
    RejectReason(500, "internal_error", "A bug: counted and logged; never expected."),
)

BY_REASON: dict[str, RejectReason] = {entry.reason: entry for entry in REJECT_REASONS}
assert len(BY_REASON) == len(REJECT_REASONS), "a reason is listed twice"


def statuses() -> dict[int, list[RejectReason]]:
    """The table grouped by status, statuses in ascending order."""
    grouped: dict[int, list[RejectReason]] = {}
    for entry in sorted(REJECT_REASONS, key=lambda entry: entry.status):
        grouped.setdefault(entry.status, []).append(entry)
    return grouped
