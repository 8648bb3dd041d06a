"""Configuration rules of click ids, conversion attribution, postback authentication and invalid-traffic policies.

Run by `trackpoint config check` and at every load, with the other cross-section checks.
"""

from __future__ import annotations

from collections.abc import Iterator

from trackpoint.adtech.ivt import IVT_DIM
from trackpoint.config.load import KeyPath
from trackpoint.config.model import Config, EventTypeSpec, one_of_problem
from trackpoint.preprocessors.attribute_conversion.config import AttributeConversionConfig
from trackpoint.preprocessors.flag_invalid_traffic.config import FlagInvalidTrafficConfig
from trackpoint.preprocessors.issue_click_id.config import IssueClickIdConfig

# A declared click id field must hold the longest click id the default fields (64 characters each) make.
MIN_CLICK_ID_LEN = 256


def check_clicks(config: Config) -> Iterator[tuple[KeyPath, str]]:
    """Every rule, for every event type."""
    for type_name, spec in config.event_types.items():
        yield from _check_type(config, ("event_types", type_name), spec)


def _check_type(config: Config, base: KeyPath, spec: EventTypeSpec) -> Iterator[tuple[KeyPath, str]]:
    flags = spec.invalid_traffic.action != "keep"
    for i, name in enumerate(spec.preprocessors):
        preprocessor = config.preprocessors.get(name)
        if isinstance(preprocessor, IssueClickIdConfig | AttributeConversionConfig) and not config.signing.keys:
            yield (
                (*base, "preprocessors", i),
                f"{name!r} signs click ids with the signing keys: list one in signing.keys",
            )
        if isinstance(preprocessor, AttributeConversionConfig):
            flags = True
            field = spec.fields.get(preprocessor.field)
            if field is not None and (field.type != "string" or field.place != "dims"):
                yield (*base, "fields", preprocessor.field), f"{name!r} reads the click id as text: `type: string`"
            elif field is not None and field.max_len < MIN_CLICK_ID_LEN:
                where = (*base, "fields", preprocessor.field, "max_len")
                yield where, f"a click id takes up to about 300 characters: max_len of at least {MIN_CLICK_ID_LEN}"
        if isinstance(preprocessor, FlagInvalidTrafficConfig):
            flags = True
            time_field = preprocessor.impression_time_field
            field = spec.fields.get(time_field) if time_field is not None else None
            if field is not None and (field.type != "timestamp" or field.place != "metrics"):
                yield (*base, "fields", time_field or ""), f"{name!r} reads the impression time: `type: timestamp`"
    if flags and IVT_DIM in spec.fields:
        yield (*base, "fields", IVT_DIM), f"`{IVT_DIM}` is the invalid-traffic flag: a request may not set it"
    policy = spec.invalid_traffic
    where = (*base, "invalid_traffic", "collectors")
    if policy.action == "route" and not policy.collectors:
        yield where, "action route needs the collectors flagged events go to"
    if policy.action != "route" and policy.collectors:
        yield where, "collectors apply to action route only"
    for i, name in enumerate(policy.collectors):
        if name not in config.collectors:
            yield (*where, i), f"no collector named {name!r}"
    yield from _check_postback_auth(base, spec)


def _check_postback_auth(base: KeyPath, spec: EventTypeSpec) -> Iterator[tuple[KeyPath, str]]:
    auth = spec.postback_auth
    if auth.mode == "off":
        return
    where = (*base, "postback_auth")
    if not auth.secrets:
        yield (*where, "secrets"), "postback authentication needs at least one advertiser's secret"
    for advertiser, source in auth.secrets.items():
        problem = one_of_problem("secret", source.secret_env, source.secret_file)
        if problem is not None:
            yield (*where, "secrets", advertiser), f"a secret {problem}"
    field = spec.fields.get(auth.advertiser_field)
    if field is None or field.place != "dims":
        yield (*where, "advertiser_field"), f"{auth.advertiser_field!r} is not a dims field of this event type"
    token = auth.token_param
    if token is not None and any((declared.name or name) == token for name, declared in spec.fields.items()):
        yield (*where, "token_param"), f"{token!r} is a field: the secret would be recorded"
