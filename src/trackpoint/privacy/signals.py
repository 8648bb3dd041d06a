"""Consent signals decoded by hand: the IAB TCF v2 TC string (its core segment, with the publisher restrictions, and
the publisher's own consents, to standard and custom purposes, from its publisher TC segment; the other segments
after the core are checked, not read) and the IAB US Privacy string.

Only what a consent decision needs is decoded; a malformed string is `InvalidSignal`, never a crash.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Set
from dataclasses import dataclass

# Bit widths of the TCF v2 core segment, in order, up to the vendor consent section.
_CORE_HEADER = (6, 36, 36, 12, 12, 6, 12, 12, 6, 1, 1, 12, 24, 24, 1, 12)
# The segment types that may follow the core: disclosed vendors, allowed vendors, publisher TC.
_SEGMENT_TYPES = range(1, 4)
PUBLISHER_TC = 3
# Bit widths of the publisher TC segment after its type: PubPurposesConsent, PubPurposesLITransparency,
# NumCustomPurposes (then that many bits of custom purpose consents, and as many of their legitimate interests).
_PUBLISHER_HEADER = (24, 24, 6)
_MAX_STRING = 8192
# A segment in base64url, as the IAB's encoder writes it (no padding), or with the `=` padding of other encoders:
# the same bits. Anything else (`+`, `/`, a space where a `+` was, `%`) is refused as the IAB's decoder refuses it;
# skipped, it would shift every bit after it.
_SEGMENT = re.compile(r"([A-Za-z0-9_-]+)={0,2}")
# Publisher restriction types (TCF v2 core segment): the vendor may not process for the purpose at all, or only on
# legitimate interest. Either way its consent does not count for that purpose. (1, require consent, changes nothing
# for a consent check; 3 is undefined.)
RESTRICTION_NOT_ALLOWED = 0
RESTRICTION_REQUIRE_CONSENT = 1
RESTRICTION_REQUIRE_LI = 2


class InvalidSignal(ValueError):
    """A consent string that cannot be decoded."""


class Bits:
    """A big-endian bit reader over an int of `length` bits (slicing is a shift and a mask)."""

    __slots__ = ("length", "position", "value")

    def __init__(self, value: int, length: int) -> None:
        self.value = value
        self.length = length
        self.position = 0

    def read(self, width: int) -> int:
        end = self.position + width
        if end > self.length:
            raise InvalidSignal("the TC string is truncated")
        self.position = end
        return (self.value >> (self.length - end)) & ((1 << width) - 1)


class VendorIds(Set[int]):
    """The vendor ids of a section of a TC string, kept as encoded: a bitfield, or ranges. Never expanded: the
    8 KB a consent string may have hold 1,480 ranges of every id up to 65535, 97 million ids."""

    __slots__ = ("_bits", "_ranges", "_width")

    def __init__(self, bits: int = 0, width: int = 0, ranges: tuple[tuple[int, int], ...] | None = None) -> None:
        self._bits = bits  # bit `width - id` is vendor `id`, when not ranges
        self._width = width
        self._ranges = ranges

    def __contains__(self, vendor_id: object) -> bool:
        if not isinstance(vendor_id, int):
            return False
        if self._ranges is not None:
            return any(start <= vendor_id <= end for start, end in self._ranges)
        return 0 < vendor_id <= self._width and (self._bits >> (self._width - vendor_id)) & 1 == 1

    def __iter__(self) -> Iterator[int]:
        if self._ranges is None:
            return (i for i in range(1, self._width + 1) if self._bits >> (self._width - i) & 1)
        return iter(sorted({i for start, end in self._ranges for i in range(start, end + 1)}))  # tests, debugging

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        if self._ranges is None:
            return f"VendorIds(bitfield of {self._width})"
        return f"VendorIds(ranges={self._ranges!r})"


@dataclass(frozen=True, slots=True)
class PublisherRestriction:
    """A publisher's restriction of a purpose for some vendors (`kind`: RESTRICTION_NOT_ALLOWED, _REQUIRE_CONSENT,
    _REQUIRE_LI)."""

    purpose: int
    kind: int
    vendors: VendorIds


@dataclass(frozen=True, slots=True)
class TCString:
    """The decoded core of a TCF v2 TC string. Times are epoch deciseconds as encoded; purposes and vendors are
    the ids that have consent (or legitimate interest)."""

    version: int
    created_ds: int
    last_updated_ds: int
    cmp_id: int
    cmp_version: int
    consent_screen: int
    consent_language: str
    vendor_list_version: int
    policy_version: int
    is_service_specific: bool
    special_feature_opt_ins: frozenset[int]
    purpose_consents: frozenset[int]
    purpose_legitimate_interests: frozenset[int]
    purpose_one_treatment: bool
    publisher_cc: str
    max_vendor_id: int
    vendor_consents: VendorIds
    vendor_legitimate_interests: VendorIds
    publisher_restrictions: tuple[PublisherRestriction, ...]
    # The publisher's own consent (its publisher TC segment, for a first-party tracker): empty without the segment.
    publisher_purpose_consents: frozenset[int] = frozenset()
    # Its custom purposes (1 to 63, defined by the publisher) with its consent, from the same segment.
    publisher_custom_purpose_consents: frozenset[int] = frozenset()

    def vendor_may_rely_on_consent(self, vendor_id: int, purpose: int) -> bool:
        """Whether the vendor's consent counts for the purpose: it has consent, and no publisher restriction
        forbids the purpose to it or requires legitimate interest instead."""
        return vendor_id in self.vendor_consents and not any(
            r.purpose == purpose
            and r.kind in (RESTRICTION_NOT_ALLOWED, RESTRICTION_REQUIRE_LI)
            and vendor_id in r.vendors
            for r in self.publisher_restrictions
        )


def _flags(bits: int, width: int) -> frozenset[int]:
    """Ids (1-based, most significant bit first) of the set bits of a `width`-bit field."""
    return frozenset(i + 1 for i in range(width) if bits >> (width - 1 - i) & 1)


def _letters(code: int) -> str:
    return chr(ord("A") + (code >> 6)) + chr(ord("A") + (code & 63))


def base64url_bits(segment: str) -> Bits:
    """Six bits a character, as the IAB's decoders (TCF, GPP) read them: a string of any length, not only whole
    bytes."""
    match = _SEGMENT.fullmatch(segment)
    if match is None:
        raise InvalidSignal("not base64url")
    digits = match.group(1)
    filler = -len(digits) % 4  # `A`s: zero bits up to whole bytes, shifted out again
    value = int.from_bytes(base64.urlsafe_b64decode(digits + "A" * filler), "big") >> (6 * filler)
    return Bits(value, 6 * len(digits))


def _ranges(bits: Bits, max_vendor: int) -> tuple[tuple[int, int], ...]:
    ranges = []
    for _ in range(bits.read(12)):
        is_range = bits.read(1)
        start = bits.read(16)
        end = bits.read(16) if is_range else start
        if not 0 < start <= end <= max_vendor:
            raise InvalidSignal("a vendor range is out of bounds")
        ranges.append((start, end))
    return tuple(ranges)


def _vendor_section(bits: Bits) -> tuple[int, VendorIds]:
    max_vendor = bits.read(16)
    if bits.read(1):  # range encoding
        return max_vendor, VendorIds(ranges=_ranges(bits, max_vendor))
    return max_vendor, VendorIds(bits.read(max_vendor), max_vendor)


def _publisher_consents(bits: Bits) -> tuple[frozenset[int], frozenset[int], int]:
    """PubPurposesConsent, CustomPurposesConsent and NumCustomPurposes of a publisher TC segment whose type was read;
    the rest of the segment is read past, so that one cut short is refused, as the IAB's decoder refuses it."""
    consents, _, count = (bits.read(width) for width in _PUBLISHER_HEADER)
    custom = bits.read(count)
    bits.read(count)  # CustomPurposesLITransparency
    return _flags(consents, 24), _flags(custom, count), count


def decode_tc_string(text: str) -> TCString:
    """The core segment of a TCF v2 TC string and the consents of its publisher TC segment; the other segments
    after the core (`.`: disclosed vendors, allowed vendors) must be well-formed but are not read."""
    if not text or len(text) > _MAX_STRING or not text.isascii():
        raise InvalidSignal("empty, too long or not ASCII")
    core, *further = text.split(".")
    publisher: frozenset[int] = frozenset()
    custom: frozenset[int] = frozenset()
    for segment in further:
        bits = base64url_bits(segment)
        kind = bits.read(3)
        if kind not in _SEGMENT_TYPES:  # a second core is not one either
            raise InvalidSignal("an unknown segment")
        if kind == PUBLISHER_TC:
            # Of two, the last counts, as in the IAB's decoder, which keeps the custom purposes of the first that the
            # last does not count up to.
            publisher, fresh, count = _publisher_consents(bits)
            custom = fresh | frozenset(purpose for purpose in custom if purpose > count)
    bits = base64url_bits(core)
    (version, created, updated, cmp_id, cmp_version, screen, language, vendor_list, policy, service_specific, _texts,
     special_features, purposes, legitimate, purpose_one, country) = (bits.read(w) for w in _CORE_HEADER)  # fmt: skip
    if version != 2:
        raise InvalidSignal(f"TCF version {version}, not 2")
    max_vendor, vendor_consents = _vendor_section(bits)
    _, vendor_legitimate = _vendor_section(bits)
    restrictions = []
    for _ in range(bits.read(12)):
        purpose, kind = bits.read(6), bits.read(2)
        restrictions.append(PublisherRestriction(purpose, kind, VendorIds(ranges=_ranges(bits, 65535))))
    return TCString(
        version=version,
        created_ds=created,
        last_updated_ds=updated,
        cmp_id=cmp_id,
        cmp_version=cmp_version,
        consent_screen=screen,
        consent_language=_letters(language),
        vendor_list_version=vendor_list,
        policy_version=policy,
        is_service_specific=bool(service_specific),
        special_feature_opt_ins=_flags(special_features, 12),
        purpose_consents=_flags(purposes, 24),
        purpose_legitimate_interests=_flags(legitimate, 24),
        purpose_one_treatment=bool(purpose_one),
        publisher_cc=_letters(country),
        max_vendor_id=max_vendor,
        vendor_consents=vendor_consents,
        vendor_legitimate_interests=vendor_legitimate,
        publisher_restrictions=tuple(restrictions),
        publisher_purpose_consents=publisher,
        publisher_custom_purpose_consents=custom,
    )


def us_privacy_opt_out(text: str) -> bool:
    """Whether a US Privacy string (`1YYN`: version 1, notice given, opted out of sale, LSPA) says opt-out of
    sale; `-` means not applicable. Anything else is `InvalidSignal`."""
    if len(text) != 4 or text[0] != "1" or any(c not in "YyNn-" for c in text[1:]):
        raise InvalidSignal("not a version 1 US Privacy string")
    return text[2] in "Yy"
