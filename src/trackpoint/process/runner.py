"""Running a process's event loop to its end: asyncio.run, except that tasks which ignore their cancellation (a
plugin's send or close abandoned after its timeout) are left behind instead of holding the process for ever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

log = logging.getLogger("trackpoint.process")

# How long the tasks left when the main coroutine has returned are given to end once cancelled.
LEFTOVER_GRACE_S: Final = 1.0

T = TypeVar("T")


def run(
    main: Coroutine[Any, Any, T],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    grace_s: float = LEFTOVER_GRACE_S,
) -> T:
    """asyncio.run(main) (on uvloop with `loop_factory=uvloop.new_event_loop`), Ctrl-C included. At the end,
    asyncio.run cancels the tasks left and waits until every one has ended: one that swallows its cancellation
    kept the worker from exiting until the supervisor killed it (its final counters lost), and `trackpoint replay`
    until someone did. They get grace_s here; those still running are logged by name and left behind."""
    runner = asyncio.Runner(loop_factory=loop_factory)
    try:
        return runner.run(main)
    finally:
        stuck = runner.run(_end_tasks(grace_s))
        if not stuck:
            runner.close()
        else:
            log.error(
                "%d tasks did not end when cancelled (%s): exiting without them",
                len(stuck),
                ", ".join(sorted(task.get_name() for task in stuck)),
            )
            loop = runner.get_loop()
            for task in stuck:
                task._log_destroy_pending = False  # type: ignore[attr-defined]  # as run_until_complete does
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()


async def _end_tasks(grace_s: float) -> set[asyncio.Task[Any]]:
    """Cancels every task but this one and waits grace_s at most: those still running."""
    others = asyncio.all_tasks() - {asyncio.current_task()}
    for task in others:
        task.cancel()
    if not others:
        return set()
    _, pending = await asyncio.wait(others, timeout=grace_s)
    for task in others - pending:
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed at exit: %r", task.get_name(), task.exception())
    return pending
