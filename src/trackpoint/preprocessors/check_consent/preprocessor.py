"""check_consent: the consent decision for one event, from Sec-GPC, DNT, the US Privacy string, the IAB GPP string
and IAB TCF v2.

The outcome goes into dims.consent (granted, denied, not_applicable) and dims.consent_reason; a denied event keeps
only non-personal fields. A malformed consent string denies (it never makes a 4xx: the impression still counts).
"""

from __future__ import annotations

from typing import Final

from trackpoint.config.model import INVALID_DIM, FieldSpec
from trackpoint.config.private import UID_DIM
from trackpoint.event import Event
from trackpoint.preprocessors.check_consent.config import CheckConsentConfig
from trackpoint.privacy.gpp import TCF_EU_V2, applicable_sections, decode_gpp, gpp_opt_out
from trackpoint.privacy.signals import InvalidSignal, decode_tc_string, us_privacy_opt_out

CONSENT_DIM: Final = "consent"
REASON_DIM: Final = "consent_reason"
GRANTED: Final = "granted"
DENIED: Final = "denied"
NOT_APPLICABLE: Final = "not_applicable"

# The signals are read into dims under these names by fields the edge adds to the event type (input_fields); they
# are taken out again here, so only the outcome is recorded.
GPC: Final = "consent.gpc"
DNT: Final = "consent.dnt"
USP: Final = "consent.us_privacy"
GDPR: Final = "consent.gdpr"
TC_STRING: Final = "consent.tcf"
GPP: Final = "consent.gpp"
GPP_SID: Final = "consent.gpp_sid"
_SIGNALS: Final[tuple[str, ...]] = (GPC, DNT, USP, GDPR, TC_STRING, GPP, GPP_SID)
# A signal the builder dropped as invalid (`on_invalid: drop`, named in dims.invalid) denies, as a malformed one
# does: an opt-out that could not be read is never taken for no opt-out.
_UNREADABLE: Final = {
    GPC: "gpc",
    DNT: "dnt",
    USP: "usp_invalid",
    GDPR: "gdpr_invalid",
    TC_STRING: "tcf_invalid",
    GPP: "gpp_invalid",
    GPP_SID: "gpp_invalid",
}
_CACHE_LIMIT: Final = 65536


class CheckConsent:
    """Decides, records and enforces consent."""

    cookie_veto = (CONSENT_DIM, DENIED)  # denied consent: the response sets no user id cookie

    def __init__(self, name: str, config: CheckConsentConfig) -> None:
        self.name = name
        self.honor_gpc = config.honor_gpc
        self.honor_dnt = config.honor_dnt
        self.honor_us_privacy = config.honor_us_privacy
        self.honor_gpp = config.honor_gpp
        self.gdpr_default = "1" if config.gdpr_default else "0"
        self.no_default_gdpr = not config.gdpr_default
        self.purposes = tuple(config.tcf_purposes)
        self.publisher = config.tcf_consent_from == "publisher"
        self.custom_purposes = tuple(config.tcf_custom_purposes)
        self.vendor_id = config.tcf_vendor_id
        self.personal = (UID_DIM, *(f for f in config.personal_fields if f != UID_DIM))
        self.input_fields = {
            GPC: FieldSpec(source="header", name="Sec-GPC", max_len=16),
            DNT: FieldSpec(source="header", name="DNT", max_len=16),
            USP: FieldSpec(name="us_privacy", max_len=16),
            GDPR: FieldSpec(name="gdpr", max_len=16),
            TC_STRING: FieldSpec(name="gdpr_consent", max_len=8192),
            GPP: FieldSpec(name="gpp", max_len=8192),
            GPP_SID: FieldSpec(name="gpp_sid", max_len=256),
        }
        self._tcf_cache: dict[str, str | None] = {}  # TC string → the reason it denies, or None

    def __call__(self, event: Event) -> Event:
        dims = event.dims
        # any() over the names: compiled (mypyc), seven dict lookups, cheaper than dims.keys().isdisjoint(...)
        if self.no_default_gdpr and not any(name in dims for name in _SIGNALS) and INVALID_DIM not in dims:
            dims[CONSENT_DIM] = NOT_APPLICABLE  # the usual request: no signal at all
            return event
        gpc, dnt, usp, gdpr, tc_string, gpp, gpp_sid = [dims.pop(name, None) for name in _SIGNALS]
        reason, applies = self.decide(gpc, dnt, usp, gdpr, tc_string, gpp=gpp, gpp_sid=gpp_sid)
        invalid = dims.get(INVALID_DIM)
        if reason is None and invalid is not None:
            for entry in invalid.split(","):
                unreadable = _UNREADABLE.get(entry.partition(":")[0])
                if unreadable is not None:
                    reason = unreadable
                    break
        if reason is not None:
            dims[CONSENT_DIM] = DENIED
            dims[REASON_DIM] = reason
            for name in self.personal:
                dims.pop(name, None)
            ctx = event.ctx
            ctx.ip = ctx.ua = ctx.referer = None
        elif applies:
            dims[CONSENT_DIM] = GRANTED
            dims[REASON_DIM] = "tcf"
        else:
            dims[CONSENT_DIM] = NOT_APPLICABLE
        return event

    def decide(
        self,
        gpc: str | None,
        dnt: str | None,
        usp: str | None,
        gdpr: str | None,
        tc_string: str | None,
        *,
        gpp: str | None = None,
        gpp_sid: str | None = None,
    ) -> tuple[str | None, bool]:
        """(the reason consent is denied or None, whether GDPR applies)."""
        if self.honor_gpc and gpc is not None and gpc.strip() == "1":
            return "gpc", False
        if self.honor_dnt and dnt is not None and dnt.strip() == "1":
            return "dnt", False
        if self.honor_us_privacy and usp is not None:
            try:
                if us_privacy_opt_out(usp):
                    return "usp_opt_out", False
            except InvalidSignal:
                return "usp_invalid", False
        if self.honor_gpp and gpp is not None:
            try:
                sections = decode_gpp(gpp)
                applicable = applicable_sections(gpp_sid, sections)
                opt_out = gpp_opt_out(sections, applicable, self.honor_gpc)
            except InvalidSignal:
                return "gpp_invalid", False
            if opt_out is not None:
                return opt_out, False
            if gdpr is None and TCF_EU_V2 in applicable:  # the TCF EU section stands in for gdpr, gdpr_consent
                gdpr = "1"
                if tc_string is None:
                    tc_string = sections.get(TCF_EU_V2)
        gdpr = self.gdpr_default if gdpr is None else gdpr
        if gdpr == "0":
            return None, False
        if gdpr != "1":
            return "gdpr_invalid", True
        if tc_string is None:
            return "tcf_missing", True
        try:
            return self._tcf_cache[tc_string], True
        except KeyError:
            return self._remember(tc_string), True

    def tcf_reason(self, tc_string: str) -> str | None:
        try:
            decoded = decode_tc_string(tc_string)
        except InvalidSignal:
            return "tcf_invalid"
        if self.publisher:
            if not all(p in decoded.publisher_purpose_consents for p in self.purposes):
                return "tcf_publisher"
        elif not all(p in decoded.purpose_consents for p in self.purposes):
            return "tcf_purpose"
        if not all(p in decoded.publisher_custom_purpose_consents for p in self.custom_purposes):
            return "tcf_publisher"
        vendor_id = self.vendor_id
        if vendor_id is not None and not all(decoded.vendor_may_rely_on_consent(vendor_id, p) for p in self.purposes):
            return "tcf_vendor"
        return None

    def _remember(self, tc_string: str) -> str | None:
        if len(self._tcf_cache) >= _CACHE_LIMIT:
            self._tcf_cache.clear()
        reason = self._tcf_cache[tc_string] = self.tcf_reason(tc_string)
        return reason
