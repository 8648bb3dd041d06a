"""Secret keys for pseudonyms: from an environment variable, a file, or a random key generated on first run into
the data directory (mode 0600). No key is ever hard-coded.
"""

from __future__ import annotations

import os
from pathlib import Path

from trackpoint.config.model import SecretSource
from trackpoint.security.keyfile import create_key_file

MIN_SECRET_BYTES = 16


def read_secret(source: SecretSource) -> bytes:
    """The secret a source names; ValueError (with the reason) when it is missing or too short."""
    if source.secret_env is not None:
        value = os.environ.get(source.secret_env)
        if value is None:
            raise ValueError(f"environment variable {source.secret_env} is not set")
        secret = value.strip().encode("utf-8")
    elif source.secret_file is not None:
        secret = Path(source.secret_file).read_bytes().strip()
    else:
        raise ValueError("a key needs secret_env or secret_file")
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"a secret key needs at least {MIN_SECRET_BYTES} bytes")
    return secret


def auto_key(data_dir: str, name: str) -> bytes:
    """The random key `data_dir/keys/<name>.key`, created on first use. Workers starting together agree: the key
    is written to a private temporary file and linked into place, so whoever links first wins and every worker
    reads the same key."""
    path = Path(data_dir) / "keys" / f"{name}.key"
    create_key_file(path)
    return read_secret(SecretSource(secret_file=str(path)))
