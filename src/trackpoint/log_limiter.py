"""Log lines that a lasting failure repeats, limited by kind: the first of a kind is written at once, then at most one
per interval, which says how many like it were suppressed since the one before.

Every repeated line goes through it (collectors' errors, librdkafka's own lines, request-path errors, shipping), so an
outage gives one clear line, a reminder per interval with a count, and the line of the recovery, not a flood.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Final

# How often a line of one kind may be repeated.
REPEAT_INTERVAL_S: Final = 10.0
# Kinds remembered at once. Kinds are code paths and error texts without their numbers (kind_of_text), so far fewer
# come up; should more, those beyond share one kind, so that even a stream of distinct errors cannot flood.
MAX_KINDS: Final = 256
_OVERFLOW: Final = object()
_NUMBERS: Final = re.compile(r"\d+")


def kind_of_text(text: str) -> str:
    """The kind of an error text: the text with its numbers blanked, so that the same failure with another port, count
    or duration (`after 12ms`) is the same kind, and another failure another kind."""
    return _NUMBERS.sub("#", text)


class LogLimiter:
    """When the lines of each kind may be written. Thread-safe: librdkafka's lines come from whichever thread polls."""

    def __init__(self, interval_s: float = REPEAT_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._kinds: dict[Hashable, tuple[float, int]] = {}  # kind -> (time of its last line, suppressed since)
        self._lock = threading.Lock()

    def due(self, kind: Hashable) -> int | None:
        """None when a line of this kind was written less than interval_s ago (this one is counted as suppressed);
        otherwise how many were suppressed since that line (0 for the first of its kind): write it now."""
        now = self._clock()
        with self._lock:
            kinds = self._kinds
            if kind not in kinds and len(kinds) >= MAX_KINDS:
                # Forget kinds quiet for an interval with nothing suppressed: their next line is due at once anyway.
                for quiet in [k for k, (at, n) in kinds.items() if not n and now - at >= self.interval_s]:
                    del kinds[quiet]
                if len(kinds) >= MAX_KINDS:
                    kind = _OVERFLOW
            last = kinds.get(kind)
            if last is not None and now - last[0] < self.interval_s:
                kinds[kind] = (last[0], last[1] + 1)
                return None
            kinds[kind] = (now, 0)
            return 0 if last is None else last[1]

    def log(
        self, logger: logging.Logger, level: int, kind: Hashable, message: str, *args: Any, exc_info: Any = None
    ) -> bool:
        """Writes `message % args` if a line of this kind is due, with the count of those suppressed since the last
        one; True when written. A level the logger does not write is neither written nor counted."""
        if not logger.isEnabledFor(level):
            return False
        suppressed = self.due(kind)
        if suppressed is None:
            return False
        if suppressed:
            message += " (%d similar suppressed)"
            args = (*args, suppressed)
        logger.log(level, message, *args, exc_info=exc_info, stacklevel=2)
        return True

    def forget_counts(self) -> None:
        """Drops the counts of suppressed lines (their failure is over: a recovery line said so), keeping the times,
        so that a failure that comes back within the interval is still limited."""
        with self._lock:
            self._kinds = {kind: (at, 0) for kind, (at, _) in self._kinds.items()}
