"""The IAB Global Privacy Platform string (`gpp`, with `gpp_sid`), decoded by hand as far as a consent decision
needs: the header, the opt-outs of the US sections (national and each state's), their GPC subsection, and the US
Privacy and TCF EU sections it may carry. A malformed string is `InvalidSignal`, never a crash.
"""

from __future__ import annotations

from typing import Final

from trackpoint.privacy.signals import Bits, InvalidSignal, base64url_bits, us_privacy_opt_out

TCF_EU_V2: Final = 2  # section ids
US_PRIVACY: Final = 6
# The US sections: where their opt-outs of sale, sharing (California's cross-context behavioural advertising) and
# targeted advertising are, as bit offsets in the core segment (each a 2-bit field: 0 not applicable, 1 opted out,
# 2 did not opt out). As @iabgpp/cmpapi 3.2.0 encodes them; tests/iab/gpp_strings.cjs checks every section that
# library knows is here.
US_OPT_OUTS: Final[dict[int, tuple[int, ...]]] = {
    7: (18, 20, 22),  # usnat: sale, sharing, targeted advertising (versions 1 and 2)
    8: (12, 14),  # usca: sale, sharing
    9: (12, 14),  # usva: sale, targeted advertising (so are the others)
    10: (12, 14),  # usco
    11: (14, 16),  # usut
    12: (12, 14),  # usct
    13: (12, 14),  # usfl
    14: (12, 14),  # usmt
    15: (12, 14),  # usor
    16: (12, 14),  # ustx
    17: (12, 14),  # usde
    18: (14, 16),  # usia
    19: (12, 14),  # usne
    20: (12, 14),  # usnh
    21: (12, 14),  # usnj
    22: (12, 14),  # ustn
    23: (12, 14),  # usmn
    24: (16, 18),  # usmd
    25: (16, 18),  # usin
    26: (16, 18),  # usky
    27: (16, 18),  # usri
}
_OPTED_OUT: Final = 1
_GPC_SUBSECTION: Final = 1
_MAX_SECTION_ID: Final = 255
_MAX_STRING: Final = 8192


def _fibonacci(bits: Bits) -> int:
    """A Fibonacci-coded integer (1, 2, 3, 5, 8 ... for each set bit; `11` ends it)."""
    value, weight, following, previous = 0, 1, 2, 0
    for _ in range(24):  # up to 75,024: far past any section id
        bit = bits.read(1)
        if bit and previous:
            return value
        value += weight * bit
        weight, following, previous = following, weight + following, bit
    raise InvalidSignal("a Fibonacci integer too long")


def _section_ids(bits: Bits) -> list[int]:
    ids: list[int] = []
    offset = 0
    for _ in range(bits.read(12)):
        is_range = bits.read(1)
        start = offset = offset + _fibonacci(bits)  # each id is coded as the step from the one before
        if is_range:
            offset += _fibonacci(bits)
        end = offset
        if end > _MAX_SECTION_ID:
            raise InvalidSignal("a GPP section id out of bounds")
        ids.extend(range(start, end + 1))
    return ids


def decode_gpp(text: str) -> dict[int, str]:
    """The sections of a GPP string by id, as encoded (`DBABLA~CFAYAAAAAABA.QA` -> {7: 'CFAYAAAAAABA.QA'})."""
    if not text or len(text) > _MAX_STRING or not text.isascii():
        raise InvalidSignal("empty, too long or not ASCII")
    header, *sections = text.split("~")
    bits = base64url_bits(header)
    if bits.read(6) != 3 or bits.read(6) != 1:  # type 3 (the GPP header), version 1
        raise InvalidSignal("not a version 1 GPP header")
    ids = _section_ids(bits)
    if len(ids) != len(sections) or len(set(ids)) != len(ids):
        raise InvalidSignal("the GPP header does not list its sections")
    return dict(zip(ids, sections, strict=True))


def applicable_sections(gpp_sid: str | None, sections: dict[int, str]) -> frozenset[int]:
    """The section ids `gpp_sid` says apply (`7`, `7,8`, `7_8`; `-1`: none); without it, all the string has."""
    if gpp_sid is None or not gpp_sid.strip():
        return frozenset(sections)
    try:
        ids = frozenset(int(part) for part in gpp_sid.replace("_", ",").split(","))
    except ValueError:
        raise InvalidSignal("gpp_sid is not a list of section ids") from None
    if not all(-1 <= i <= _MAX_SECTION_ID for i in ids):
        raise InvalidSignal("gpp_sid is not a list of section ids")
    return ids - {-1}


def gpp_opt_out(sections: dict[int, str], applicable: frozenset[int], honor_gpc: bool) -> str | None:
    """Why an applicable section denies: `gpp_opt_out` (a US section's opt-out of sale, sharing or targeted
    advertising, or the US Privacy section's opt-out of sale), `gpc` (a US section's GPC subsection, when GPC is
    honoured), or None."""
    for section_id in sorted(applicable & sections.keys()):
        encoded = sections[section_id]
        if section_id == US_PRIVACY:
            if us_privacy_opt_out(encoded):
                return "gpp_opt_out"
            continue
        offsets = US_OPT_OUTS.get(section_id)
        if offsets is None:
            continue  # not a section with opt-outs (TCF EU is decided as TCF), or one this tracker cannot read
        core, *subsections = encoded.split(".")
        bits = base64url_bits(core)
        for offset in offsets:
            bits.position = offset
            if bits.read(2) == _OPTED_OUT:
                return "gpp_opt_out"
        for subsection in subsections:
            sub = base64url_bits(subsection)
            if sub.read(2) == _GPC_SUBSECTION and sub.read(1) and honor_gpc:
                return "gpc"
    return None
