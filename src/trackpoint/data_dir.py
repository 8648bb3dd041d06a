"""The data_dir lock file (`trackpoint.lock`): its name, what it records (the supervisor's pid and pid namespace), and
whether a tracker holds it now, as any process sharing the directory can tell, in any pid namespace; and which errors
of the disk under data_dir pass by themselves (a worker starts through them) rather than ask for a configuration fix.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

LOCK_FILE = "trackpoint.lock"

# Errors that mean the disk is full (or the quota, or the file size limit, is reached).
DISK_FULL: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# Errors that pass without a change of configuration: the disk fills and is freed, fails for a while or turns
# read-only after errors (the start-up checks and the supervisor's lock refuse a data_dir that is read-only when the
# tracker starts), descriptors or memory run out. What a worker cannot write at start for one of these it does
# without, says so (unhealthy, with the reason) and tries again; any other OSError (a path that is a file, a
# permission) is a configuration error, which stops the worker's start with the path in one line.
PASSING: Final = DISK_FULL | {errno.EIO, errno.EROFS, errno.ENOMEM, errno.EMFILE, errno.ENFILE}


def passing(exc: OSError) -> bool:
    """Whether `exc` is an error of the disk or the process that passes by itself (PASSING)."""
    return exc.errno in PASSING


def pid_namespace() -> str:
    """This process's pid namespace (`pid:[4026531836]`), or "" where it cannot be read: pids from another
    namespace mean nothing here (a cron job or a sidecar run with its own)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def lock_content() -> bytes:
    """What the supervisor writes into the lock file: its pid (for messages), then its pid namespace."""
    return f"{os.getpid()}\n{pid_namespace()}\n".encode("ascii")


@dataclass(frozen=True)
class Holder:
    """A data_dir as seen from this process: whether a tracker (its supervisor or any of its workers, which
    inherit the lock) runs on it, and whether it runs in this pid namespace (only then does a pid in a log file's
    name name the same process here)."""

    running: bool
    here: bool


def holder(data_dir: str | Path) -> Holder:
    """Probes the lock with a shared, non-blocking flock, released at once (a starting supervisor retries its own
    claim for a moment: see claim_data_dir). Whatever cannot be told (no lock file permission, a file system without
    locks) counts as a tracker running elsewhere: the caller then keeps its hands off what a worker may write."""
    try:
        fd = os.open(Path(data_dir) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:  # no tracker ever ran on it
        return Holder(running=False, here=True)
    except OSError:
        return Holder(running=True, here=False)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            running = False
        except OSError:  # held (EWOULDBLOCK), or no locks there: cannot tell
            running = True
        recorded = os.pread(fd, 256, 0).decode("ascii", "replace").split("\n")
    finally:
        os.close(fd)  # releases the probe's lock
    namespace = pid_namespace()
    return Holder(running=running, here=bool(namespace) and len(recorded) > 1 and recorded[1] == namespace)
