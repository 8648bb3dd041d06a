"""pseudonymize: identifier dims replaced by keyed pseudonyms, `kid:` + base64url(HMAC-SHA256(key, value))[:22].

The key id prefix makes rotation safe: old pseudonyms keep the id of the key that made them.
"""

from __future__ import annotations

import base64
import re

from trackpoint.event import Event
from trackpoint.preprocessors.pseudonymize.config import PseudonymizeConfig
from trackpoint.security.keyfile import auto_key
from trackpoint.security.precomputed import PrecomputedHmac
from trackpoint.security.secrets import read_source

AUTO_KEY_ID = "auto"
KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,16}")
_b64 = base64.urlsafe_b64encode


class Pseudonymize:
    """Replaces each configured dim present in the event with its pseudonym under the current key."""

    def __init__(self, name: str, config: PseudonymizeConfig, data_dir: str) -> None:
        self.name = name
        self.fields = tuple(config.fields)
        if config.keys:
            if config.current is None or config.current not in config.keys:
                raise ValueError(f"preprocessor {name}: `current` must name one of its keys")
            key_id, secret = config.current, read_source(config.keys[config.current], data_dir)
        else:
            key_id, secret = AUTO_KEY_ID, auto_key(data_dir, "pseudonymize")
        self.prefix = key_id + ":"
        self._mac = PrecomputedHmac(secret).digest

    def pseudonym(self, value: str) -> str:
        return self.prefix + _b64(self._mac(value.encode("utf-8")))[:22].decode("ascii")

    def __call__(self, event: Event) -> Event:
        dims = event.dims
        for field in self.fields:
            value = dims.get(field)
            if value is not None:
                dims[field] = self.pseudonym(value)
        return event
