"""Start-up check tied to check_consent: an event type that sets the user id cookie asks for consent first."""

from __future__ import annotations

from collections.abc import Iterator

from trackpoint.config.load import KeyPath
from trackpoint.config.model import Config
from trackpoint.preprocessors.check_consent.config import CheckConsentConfig


def check_user_id_cookie(config: Config) -> Iterator[tuple[KeyPath, str]]:
    for type_name, spec in config.event_types.items():
        cookie = spec.response.user_id_cookie
        if cookie is None:
            continue
        where: KeyPath = ("event_types", type_name, "response", "user_id_cookie")
        if spec.response.kind not in ("gif", "no_content"):
            yield where, "the user id cookie is set on gif and no_content responses only"
        if not any(isinstance(config.preprocessors.get(p), CheckConsentConfig) for p in spec.preprocessors):
            yield where, "the user id cookie needs a check_consent preprocessor in this event type (consent first)"
