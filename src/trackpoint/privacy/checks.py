"""Start-up check of the collectors' privacy options (`fields_allow`, `fields_deny`, `fields_trim_url`) and of the
event ids (no dedupe key read from the client), registered by the built-in plugin (`Plugin.checks`). The privacy
preprocessors check their own options (preprocessors/check_consent/checks.py, preprocessors/pseudonymize/checks.py).

Each problem is a (key path, message) pair, like every other config check.
"""

from __future__ import annotations

from collections.abc import Iterator

from trackpoint.config.model import Config
from trackpoint.config.private import private_fields
from trackpoint.privacy.filter import path_problems

KeyPath = tuple[str | int, ...]


def check_privacy(config: Config) -> Iterator[tuple[KeyPath, str]]:
    for name, collector in config.collectors.items():
        for option in ("fields_allow", "fields_deny"):
            for i, message in path_problems(getattr(collector, option) or ()):
                yield ("collectors", name, option, i), message
        for i, path in enumerate(collector.fields_trim_url):
            if not path.startswith("dims.") or path == "dims.":
                yield ("collectors", name, "fields_trim_url", i), f"not a dim: {path!r} (dims.NAME)"
    for type_name, spec in config.event_types.items():
        private = private_fields(spec)
        for i, key in enumerate(spec.dedupe_key):
            field = spec.fields.get(key)
            if key in private and field is not None:
                # The id is an unkeyed hash of the type and the key values, sent to every collector: whoever gets
                # it finds the value by hashing the candidates (every IPv4 address takes minutes).
                yield (
                    ("event_types", type_name, "dedupe_key", i),
                    f"{key!r} is read from the client ({field.source}): the event id, a hash every collector gets, "
                    "would give it away to anyone who tries the likely values; dedupe on a value the ad server "
                    "or the page writes (an impression id, an order id, an event id)",
                )
