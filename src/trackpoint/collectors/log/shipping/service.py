"""Shipping as a background task of the supervisor (and of `trackpoint ship` without --once): passes run in daemon
threads, never on the event loop; failures are retried, counted on /metrics and logged when a failure streak begins,
as a reminder at most every REPEAT_INTERVAL_S while it lasts, and when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from trackpoint.collectors.log.shipping.shipper import PassReport, ShipError, Shipper, ShipStats, Wait, shippers
from trackpoint.config.model import Config
from trackpoint.log_limiter import REPEAT_INTERVAL_S, LogLimiter

log = logging.getLogger("trackpoint.shipping")

IDLE_CHECK_S = 10.0  # with nothing to ship, how often a reloaded configuration is looked at
T = TypeVar("T")


class ShippingService:
    """Periodic passes for every log collector with ship.url, following the current configuration (reloads
    included), and one last pass over the finished files on stop."""

    def __init__(
        self,
        config: Callable[[], Config],
        only: Sequence[str] = (),
        on_pass: Callable[[Shipper, PassReport], None] | None = None,
    ) -> None:
        self._config = config
        self._only = only
        self._on_pass = on_pass
        self._shippers: dict[str, Shipper] = {}
        self._stats: dict[str, ShipStats] = {}  # outlive a reload that rebuilds a shipper: counters stay monotonic
        self._due: dict[str, float] = {}
        self._failing: dict[str, int] = {}  # collectors whose last pass failed: how many passes in a row
        self._failure_log = LogLimiter(REPEAT_INTERVAL_S)  # by collector
        self._stopping = threading.Event()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts the periodic passes on the running loop. Always started: a reload may turn shipping on."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Ends the periodic passes (a retry wait is cut short), then makes one last pass per collector over the
        files finished by then. All of it is bounded by the longest shutdown_timeout_s, each last pass by its own:
        what is left ships on the next start."""
        self._stopping.set()
        self._wakeup.set()
        current = self._current()
        timeout = max((shipper.ship.shutdown_timeout_s for shipper in current), default=IDLE_CHECK_S)
        began = time.monotonic()
        if self._task is not None:
            _, late = await asyncio.wait({self._task}, timeout=timeout)
            if late:  # an upload hangs (a store that accepts and never answers): no last pass either
                self._task.cancel()
                log.error("shipping: an upload still hangs at shutdown; the rest ships on the next start")
                return
        finals = [
            _in_thread(functools.partial(self._pass, shipper, _until(began + shipper.ship.shutdown_timeout_s)))
            for shipper in current
        ]
        if finals and (await asyncio.wait(finals, timeout=began + timeout + 1 - time.monotonic()))[1]:
            log.error("shipping: the last pass ran out of time (shutdown_timeout_s); the rest ships on the next start")

    async def serve(self) -> None:
        """Runs until SIGINT or SIGTERM, then stops (the last pass included)."""
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopped.set)
        self.start()
        await stopped.wait()
        await self.stop()

    def metrics(self) -> ShipMetrics:
        """The collector to register in the /metrics registry."""
        return ShipMetrics(self._stats)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                for shipper in self._current():
                    if self._due.get(shipper.collector, 0.0) <= time.monotonic() and not self._stopping.is_set():
                        await _in_thread(functools.partial(self._pass, shipper, self._stopping.wait))
                        self._due[shipper.collector] = time.monotonic() + shipper.ship.interval_s
                next_due = min(self._due.values(), default=time.monotonic() + IDLE_CHECK_S)
            except Exception:  # a bug must not end shipping for the life of the process, nor the supervisor
                log.exception("shipping: unexpected error")
                next_due = time.monotonic() + IDLE_CHECK_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), max(0.0, next_due - time.monotonic()))

    def _current(self) -> list[Shipper]:
        """The shippers of the current configuration; one whose settings changed is rebuilt, keeping its stats."""
        config = self._config()
        try:
            wanted = shippers(config, self._only)
        except ShipError:  # nothing ships (no ship.url anywhere): the supervisor's usual case
            wanted = {}
        for name, fresh in wanted.items():
            kept = self._shippers.get(name)
            if kept is None or (kept.directory, kept.config) != (fresh.directory, fresh.config):
                fresh.stats = self._stats.setdefault(name, fresh.stats)
                self._shippers[name] = fresh
        for name in set(self._shippers) - set(wanted):
            del self._shippers[name]
            self._due.pop(name, None)
        return list(self._shippers.values())

    def _pass(self, shipper: Shipper, wait: Wait) -> PassReport:
        name = shipper.collector
        try:
            report = shipper.ship_pass(wait)
        except Exception as exc:  # a local disk error or a bug: counted like a failed pass, never fatal
            report = PassReport(failed=[("*", f"{type(exc).__name__}: {exc}")])
        if report.failed:
            streak = self._failing[name] = self._failing.get(name, 0) + 1
            what, reason = report.failed[0]
            if streak == 1:
                message = "shipping %s to %s is failing (%s: %s); retrying every %gs, reminded every %gs until back"
                details: tuple[object, ...] = (what, reason, shipper.ship.interval_s, self._failure_log.interval_s)
            else:
                message = "shipping %s to %s still failing (%s: %s): %d passes in a row"
                details = (what, reason, streak)
            self._failure_log.log(log, logging.ERROR, name, message, name, shipper.url, *details)
        elif name in self._failing:
            failed = self._failing.pop(name)
            log.info("shipping %s to %s recovered after %d failed passes", name, shipper.url, failed)
        if self._on_pass is not None:
            self._on_pass(shipper, report)
        return report


class ShipMetrics:
    """trackpoint_ship_* on the supervisor's /metrics, by collector."""

    def __init__(self, stats: dict[str, ShipStats]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        uploads = CounterMetricFamily(
            "trackpoint_ship_uploads",
            "Upload attempts of log files to object storage, by outcome: shipped (verified and recorded), error, "
            "mismatch (the stored object differed from the file).",
            labels=["collector", "outcome"],
        )
        shipped_bytes = CounterMetricFamily(
            "trackpoint_ship_bytes", "Bytes of log files shipped (verified).", labels=["collector"]
        )
        backlog = GaugeMetricFamily(
            "trackpoint_ship_backlog_files",
            "Finished log files not shipped yet, as of the last pass.",
            labels=["collector"],
        )
        last = GaugeMetricFamily(
            "trackpoint_ship_last_success_timestamp_seconds",
            "When the last file was shipped (Unix time; 0: never since start).",
            labels=["collector"],
        )
        for name, stats in sorted(self.stats.items()):
            for outcome, count in stats.uploads.items():
                uploads.add_metric([name, outcome], count)
            shipped_bytes.add_metric([name], stats.bytes)
            backlog.add_metric([name], stats.backlog_files)
            last.add_metric([name], stats.last_success)
        yield from (uploads, shipped_bytes, backlog, last)


def _until(deadline: float) -> Wait:
    """A wait bounded by a deadline instead of the stop signal (the last pass runs after the stop)."""

    def wait(seconds: float) -> bool:
        time.sleep(max(0.0, min(seconds, deadline - time.monotonic())))
        return time.monotonic() >= deadline

    return wait


def _in_thread(work: Callable[[], T]) -> asyncio.Future[T]:
    """Runs `work` in a daemon thread: an upload stuck on an unreachable store never holds up the process's exit
    (the default executor's threads are joined at exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], Any]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:
            action: Callable[[], Any] = functools.partial(future.set_exception, exc)
        else:
            action = functools.partial(future.set_result, result)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(settle, action)

    threading.Thread(target=run, name="ship", daemon=True).start()
    return future
