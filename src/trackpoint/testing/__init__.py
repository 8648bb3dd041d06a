"""What a plugin's own test suite uses: the conformance battery every collector passes
(`trackpoint.testing.conformance`), and `until`, which polls for a condition.

It needs pytest, which trackpoint does not depend on (a plugin's tests install it); nothing trackpoint runs imports
this package.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

try:
    import pytest  # noqa: F401  (the battery's tests are pytest tests)
except ImportError as exc:
    raise ImportError(
        "trackpoint.testing needs pytest, which trackpoint does not install: add pytest to your plugin's test "
        "dependencies (pip install pytest)",
        name=exc.name,
    ) from exc


async def until(condition: Callable[[], Awaitable[bool]], timeout_s: float = 8.0, what: str = "condition") -> None:
    """Polls an async condition until it holds; fails the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


__all__ = ["until"]
