"""Start-up checks of the privacy options across config sections (called by `config.load.check_references`).

Each problem is a (key path, message) pair, like every other config check.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from trackpoint.config.model import Config
from trackpoint.preprocessors.check_consent.config import CheckConsentConfig
from trackpoint.preprocessors.pseudonymize.config import PseudonymizeConfig
from trackpoint.privacy.filter import path_problems

KeyPath = tuple[str | int, ...]
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,16}")


def check_privacy(config: Config) -> Iterator[tuple[KeyPath, str]]:
    for name, collector in config.collectors.items():
        for option in ("fields_allow", "fields_deny"):
            for i, message in path_problems(getattr(collector, option) or ()):
                yield ("collectors", name, option, i), message
    for name, preprocessor in config.preprocessors.items():
        if isinstance(preprocessor, PseudonymizeConfig):
            yield from _check_pseudonymize(("preprocessors", name), preprocessor)
    for type_name, spec in config.event_types.items():
        cookie = spec.response.user_id_cookie
        if cookie is None:
            continue
        where: KeyPath = ("event_types", type_name, "response", "user_id_cookie")
        if spec.response.kind not in ("gif", "no_content"):
            yield where, "the user id cookie is set on gif and no_content responses only"
        if not any(isinstance(config.preprocessors.get(p), CheckConsentConfig) for p in spec.preprocessors):
            yield where, "the user id cookie needs a check_consent preprocessor in this event type (consent first)"


def _check_pseudonymize(base: KeyPath, config: PseudonymizeConfig) -> Iterator[tuple[KeyPath, str]]:
    for key_id, source in config.keys.items():
        if not _KEY_ID.fullmatch(key_id):
            yield (*base, "keys", key_id), "a key id is 1-16 letters, digits, '_' or '-'"
        if (source.secret_env is None) == (source.secret_file is None):
            yield (*base, "keys", key_id), "a key needs exactly one of secret_env and secret_file"
    if config.keys and config.current not in config.keys:
        yield (*base, "current"), "current must name one of keys"
    if not config.keys and config.current is not None:
        yield (*base, "current"), "current needs keys (without keys the generated key `auto` is used)"
