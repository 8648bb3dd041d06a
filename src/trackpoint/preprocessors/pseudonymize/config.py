"""Options of the pseudonymize preprocessor (the `type: pseudonymize` entries of `preprocessors:`)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from trackpoint.config.model import PreprocessorBase, SecretSource


class PseudonymizeConfig(PreprocessorBase, tag="pseudonymize"):
    """Replaces identifier dims with keyed pseudonyms: `kid:` + base64url(HMAC-SHA256(key, value))[:22]. The same
    value and key always give the same pseudonym; rotate by adding a key and switching `current`."""

    fields: Annotated[list[str], Meta(description="Dims to pseudonymise (user, device, click ids).")] = msgspec.field(
        default_factory=lambda: ["uid"]
    )
    keys: Annotated[
        dict[str, SecretSource],
        Meta(
            description="Keys by id (1-16 letters, digits, `_`, `-`). Empty: a random key `auto` generated on first "
            "run into data_dir/keys/pseudonymize.key (mode 0600)."
        ),
    ] = msgspec.field(default_factory=dict)
    current: Annotated[str | None, Meta(description="The id of the key new pseudonyms use (required with keys).")] = (
        None
    )
