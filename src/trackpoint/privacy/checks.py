"""Start-up check of the collectors' privacy options (`fields_allow`, `fields_deny`), registered by the built-in
plugin (`Plugin.checks`). The privacy preprocessors check their own options (preprocessors/check_consent/checks.py,
preprocessors/pseudonymize/checks.py).

Each problem is a (key path, message) pair, like every other config check.
"""

from __future__ import annotations

from collections.abc import Iterator

from trackpoint.config.model import Config
from trackpoint.privacy.filter import path_problems

KeyPath = tuple[str | int, ...]


def check_privacy(config: Config) -> Iterator[tuple[KeyPath, str]]:
    for name, collector in config.collectors.items():
        for option in ("fields_allow", "fields_deny"):
            for i, message in path_problems(getattr(collector, option) or ()):
                yield ("collectors", name, option, i), message
