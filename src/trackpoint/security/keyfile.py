"""Secret key files the tracker makes itself (signing and pseudonymisation keys under `data_dir/keys/`): 32 random
bytes as hex, mode 0600, created atomically so that processes starting together end up with one and the same key.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from trackpoint.security.secrets import read_secret


def create_key_file(path: Path) -> None:
    """Writes a new random key to `path` unless one is there: the key goes to a private temporary file that is
    linked into place, so of two racing processes the first link wins and both read that key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        return
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            content = os.urandom(32).hex().encode("ascii") + b"\n"
            if os.write(descriptor, content) != len(content):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(temporary))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.link(temporary, path)
    except FileExistsError:
        pass  # another process made the key first: theirs is kept
    finally:
        # Also when the write failed (a full disk): a worker retried with backoff would leave one file per attempt.
        temporary.unlink()


def auto_key(data_dir: str, name: str) -> bytes:
    """The random key `data_dir/keys/<name>.key`, created on first use. Workers starting together agree: the key
    is written to a private temporary file and linked into place, so whoever links first wins and every worker
    reads the same key."""
    file = f"keys/{name}.key"  # relative: read_secret resolves it against data_dir, as create_key_file's path is
    create_key_file(Path(data_dir) / file)
    return read_secret("secret", None, file, data_dir)
