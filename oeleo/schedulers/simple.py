"""The built-in scheduler: a pass every ``run_interval_time`` seconds, or by a time rule
(``every 5m``, a cron expression, a night window; ``oeleo.schedulers.rules``), until
``max_run_intervals`` passes are done, ``until`` has passed, or it is stopped."""

from __future__ import annotations

import datetime
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

from oeleo.errors import ConfigError
from oeleo.schedulers.base import PassWorker, SchedulerBase
from oeleo.schedulers.rules import Rule, ScheduleError, describe_instant, parse_schedule, parse_until

if TYPE_CHECKING:
    from oeleo.workers import RunSummary

log = logging.getLogger("oeleo")

# The longest single wait: a wait is cut into pieces so that a clock set forward or back
# (NTP, a laptop waking up) moves the next pass with the clock rather than by the old wait.
_LONGEST_WAIT = 30.0


class SimpleScheduler(SchedulerBase):
    """Run the worker on an interval or a time rule. One failing pass is logged; the next
    one still runs.

    >>> SimpleScheduler(worker, run_interval_time=300, max_run_intervals=12).start()
    >>> SimpleScheduler(worker, schedule="*/10 22-23,0-6 * * *").start()
    >>> SimpleScheduler(worker, run_interval_time=300, schedule="between 22:00 06:00").start()

    ``max_run_intervals`` of 0 or ``None`` means no limit. ``until`` (an ISO date and time,
    ``HH:MM``, a ``datetime`` or seconds since the epoch): no pass starts after it. Ctrl-C,
    SIGTERM or SIGHUP stops cleanly. The books are held (locked) during a pass only, never
    while it waits: passes run one after the other in this thread, and ``oeleo run`` by hand
    in between is not refused.
    """

    name = "simple"

    def __init__(
        self,
        worker: PassWorker,
        run_interval_time: float = 43_200,
        max_run_intervals: Optional[int] = 1000,
        update_db: bool = True,
        force: bool = False,
        add_check: bool = False,
        additional_filters: Optional[Sequence[Callable[[Path], bool]]] = None,
        *,
        schedule: Union[str, Rule, None] = None,
        until: Union[str, float, datetime.datetime, None] = None,
    ) -> None:
        super().__init__(worker, update_db, force, add_check, additional_filters)
        self.run_interval_time = float(run_interval_time)
        self.max_run_intervals = max_run_intervals
        if isinstance(schedule, Rule):
            self.rule = schedule
        else:
            try:
                self.rule = parse_schedule(schedule or "", self.run_interval_time)
            except ScheduleError as exc:
                raise ConfigError(f"schedule {schedule!r}: {exc}") from None
        self.until = _until(until)
        self.next_run: Optional[float] = None  # when the next pass starts (epoch seconds)
        self._planned_due: Optional[float] = None
        self._pass_at: Optional[float] = None  # the instant the coming pass was held against "until"

    def describe(self) -> str:
        return f"{self.name}, {self.rule.describe()}"

    def next_pass_after(self, ended: float) -> Optional[float]:
        if self.max_run_intervals and self.runs >= self.max_run_intervals:
            return None
        due = self._planned_due = self.rule.next_after(ended)
        if self.until is not None and due > self.until:
            return None
        return due

    def start(self) -> Optional[RunSummary]:
        """Run until ``max_run_intervals`` passes are done, ``until`` has passed, or a stop
        is asked for."""
        self._install_signal_handlers()
        try:
            if self.add_check:
                self.run_initial_check()
            due = self.rule.first(time.time())
            while not self.stopping:
                # A pass that is late starts now, not at its due time: "until" is held to when
                # it would really start.
                # The instant held against "until" is the one the pass records as its start.
                now = time.time()
                if self.until is not None and max(due, now) > self.until:
                    log.info("no run starts after %s: stopping", describe_instant(self.until))
                    break
                if due > now:
                    log.info("next run at %s", describe_instant(due))
                    if self._wait_until(due):
                        break
                    now = time.time()
                    if self.until is not None and now > self.until:  # woken late
                        log.info("no run starts after %s: stopping", describe_instant(self.until))
                        break
                self._planned_due = None
                self._pass_at = now
                self._one_pass()
                if self.max_run_intervals and self.runs >= self.max_run_intervals:
                    break
                # The time the heartbeat was given, if the pass wrote one
                due = self._planned_due or self.rule.next_after(time.time())
                self.next_run = due
        finally:
            self._restore_signal_handlers()
            self.finish()
        return self.last_summary

    def _one_pass(self) -> None:
        """One pass (a subclass that notes or changes something around each pass overrides this)."""
        self.run_one_pass(self._pass_at)

    def _wait_until(self, due: float) -> bool:
        """Wait for ``due`` (epoch seconds); True if a stop was asked for meanwhile."""
        while True:
            left = due - time.time()
            if left <= 0:
                return self.stopping
            if self._stop.wait(min(left, _LONGEST_WAIT)):
                return True


def _until(value: Union[str, float, datetime.datetime, None]) -> Optional[float]:
    if value is None or value == "":
        return None
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return parse_until(value, time.time())
    except ScheduleError as exc:
        raise ConfigError(f"until {value!r}: {exc}") from None
