"""Options of the check_consent preprocessor (the `type: check_consent` entries of `preprocessors:`)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from trackpoint.config.model import PreprocessorBase


class CheckConsentConfig(PreprocessorBase, tag="check_consent"):
    """Decides consent from Sec-GPC, DNT, the US Privacy string, the IAB GPP string (`gpp`, `gpp_sid`) and IAB TCF v2
    (`gdpr`, `gdpr_consent`); records it in dims.consent (granted, denied, not_applicable) and dims.consent_reason;
    when denied, strips personal data."""

    honor_gpc: Annotated[bool, Meta(description="`Sec-GPC: 1` denies consent.")] = True
    honor_dnt: Annotated[bool, Meta(description="`DNT: 1` denies consent.")] = True
    honor_us_privacy: Annotated[
        bool, Meta(description="A `us_privacy` string saying opt-out of sale (`1YYN`) denies consent.")
    ] = True
    honor_gpp: Annotated[
        bool,
        Meta(
            description="A GPP string (`gpp`; `gpp_sid` lists the sections that apply, all without it) denies consent "
            "where a US section (usnat, a state's) says opt-out of sale, sharing or targeted advertising, or its US "
            "Privacy section opt-out of sale (`gpp_opt_out`), or a US section's GPC subsection is set (`gpc`, with "
            "`honor_gpc`); its TCF EU section stands in for `gdpr=1&gdpr_consent=` when `gpp_sid` lists 2 and "
            "the request has no `gdpr`.",
        ),
    ] = True
    gdpr_default: Annotated[bool, Meta(description="Whether GDPR applies to a request without a `gdpr` parameter.")] = (
        False
    )
    tcf_purposes: Annotated[
        list[Annotated[int, Meta(ge=1, le=24)]],
        Meta(description="TCF purposes that must have consent where GDPR applies (1: store and access on a device)."),
    ] = msgspec.field(default_factory=lambda: [1])
    tcf_consent_from: Annotated[
        Literal["vendors", "publisher"],
        Meta(
            description="Whose consent to `tcf_purposes` the TC string must hold: `vendors`, the consent a CMP "
            "records for the vendors (its core segment), for a tracker run by or for a vendor; `publisher`, the "
            "publisher's own consent (its publisher TC segment), for a first-party tracker the publisher runs. A TC "
            "string without a publisher TC segment has no publisher consent (`tcf_publisher`).",
        ),
    ] = "vendors"
    tcf_custom_purposes: Annotated[
        list[Annotated[int, Meta(ge=1, le=63)]],
        Meta(
            description="The publisher's custom purposes (the ids its CMP gives them, 1 to 63) that must have its "
            "consent too where GDPR applies, read from the publisher TC segment whatever `tcf_consent_from` says "
            "(`tcf_publisher` when one lacks it).",
        ),
    ] = msgspec.field(default_factory=list)
    tcf_vendor_id: Annotated[
        Annotated[int, Meta(ge=1, le=65535)] | None,
        Meta(
            description="Where GDPR applies, this TCF vendor id must also have consent, and no publisher restriction "
            "in the TC string may forbid it those purposes or allow them on legitimate interest only; unset: not "
            "checked.",
        ),
    ] = None
    personal_fields: Annotated[
        list[str],
        Meta(
            description="Dims removed when consent is denied (identifiers). `uid`, ctx.ip, ctx.ua and ctx.referer "
            "are always removed; ctx.device stays."
        ),
    ] = msgspec.field(default_factory=lambda: ["click_id"])
