"""Secret keys for pseudonyms: from an environment variable, a file, or a random key generated on first run into
the data directory (mode 0600). No key is ever hard-coded.
"""

from __future__ import annotations

from pathlib import Path

from trackpoint.security.keyfile import create_key_file
from trackpoint.security.secrets import read_secret


def auto_key(data_dir: str, name: str) -> bytes:
    """The random key `data_dir/keys/<name>.key`, created on first use. Workers starting together agree: the key
    is written to a private temporary file and linked into place, so whoever links first wins and every worker
    reads the same key."""
    file = f"keys/{name}.key"  # relative: read_secret resolves it against data_dir, as create_key_file's path is
    create_key_file(Path(data_dir) / file)
    return read_secret("secret", None, file, data_dir)
