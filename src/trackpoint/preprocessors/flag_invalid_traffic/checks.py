"""Start-up check of flag_invalid_traffic: with `bots` on it runs before check_consent, which removes the
User-Agent it reads when consent is denied (a bot sending `Sec-GPC: 1` would pass, a browser without
parse_user_agent would be taken for one). Run by `config check`, `run` and every reload."""

from __future__ import annotations

from collections.abc import Iterator

from trackpoint.config.load import KeyPath
from trackpoint.config.model import Config
from trackpoint.preprocessors.check_consent.config import CheckConsentConfig
from trackpoint.preprocessors.flag_invalid_traffic.config import FlagInvalidTrafficConfig


def check_ivt_order(config: Config) -> Iterator[tuple[KeyPath, str]]:
    for type_name, spec in config.event_types.items():
        consent_at = None  # the first check_consent of the type: every bot check must come before it
        for i, name in enumerate(spec.preprocessors):
            preprocessor = config.preprocessors.get(name)
            if isinstance(preprocessor, CheckConsentConfig) and consent_at is None:
                consent_at = name
            elif isinstance(preprocessor, FlagInvalidTrafficConfig) and preprocessor.bots and consent_at is not None:
                yield (
                    ("event_types", type_name, "preprocessors", i),
                    f"{name!r} reads the User-Agent: list it before {consent_at!r}, which removes it when consent "
                    "is denied",
                )
