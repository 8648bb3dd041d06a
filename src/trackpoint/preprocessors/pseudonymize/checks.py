"""Start-up check of the pseudonymize preprocessor's options: key ids, one secret source per key, `current`."""

from __future__ import annotations

import re
from collections.abc import Iterator

from trackpoint.config.load import KeyPath
from trackpoint.config.model import Config, one_of_problem
from trackpoint.preprocessors.pseudonymize.config import PseudonymizeConfig

_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,16}")


def check_pseudonymize(config: Config) -> Iterator[tuple[KeyPath, str]]:
    for name, preprocessor in config.preprocessors.items():
        if isinstance(preprocessor, PseudonymizeConfig):
            yield from _check_keys(("preprocessors", name), preprocessor)


def _check_keys(base: KeyPath, config: PseudonymizeConfig) -> Iterator[tuple[KeyPath, str]]:
    for key_id, source in config.keys.items():
        if not _KEY_ID.fullmatch(key_id):
            yield (*base, "keys", key_id), "a key id is 1-16 letters, digits, '_' or '-'"
        problem = one_of_problem("secret", source.secret_env, source.secret_file)
        if problem is not None:
            yield (*base, "keys", key_id), f"a key {problem}"
    if config.keys and config.current not in config.keys:
        yield (*base, "current"), "current must name one of keys"
    if not config.keys and config.current is not None:
        yield (*base, "current"), "current needs keys (without keys the generated key `auto` is used)"
