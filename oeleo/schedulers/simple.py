"""The built-in scheduler: a pass every ``run_interval_time`` seconds, ``max_run_intervals`` times."""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from oeleo.errors import ConfigError, DatabaseBusyError, OeleoError
from oeleo.schedulers.base import PassWorker, SchedulerBase

if TYPE_CHECKING:
    from oeleo.workers import RunSummary

log = logging.getLogger("oeleo")


class SimpleScheduler(SchedulerBase):
    """Run the worker on an interval. One failing pass is logged; the next one still runs.

    >>> SimpleScheduler(worker, run_interval_time=300, max_run_intervals=12).start()

    ``max_run_intervals`` of 0 or ``None`` means no limit. Ctrl-C, SIGTERM or SIGHUP stops
    cleanly. The books are held (locked) during a pass only, never while it waits: passes run
    one after the other in this thread, and ``oeleo run`` by hand in between is not refused.
    """

    def __init__(
        self,
        worker: PassWorker,
        run_interval_time: float = 43_200,
        max_run_intervals: Optional[int] = 1000,
        update_db: bool = True,
        force: bool = False,
        add_check: bool = False,
        additional_filters: Optional[Sequence[Callable[[Path], bool]]] = None,
    ) -> None:
        super().__init__(worker)
        self.run_interval_time = float(run_interval_time)
        self.max_run_intervals = max_run_intervals
        self.update_db = update_db
        self.force = force
        self.add_check = add_check
        self.additional_filters = additional_filters
        self.runs = 0
        self.failed_runs = 0
        self.last_summary: Optional[RunSummary] = None
        self.last_run: Optional[datetime] = None
        self.state = {"iterations": 0}

    def start(self) -> Optional[RunSummary]:
        """Run until ``max_run_intervals`` passes are done or a stop is asked for."""
        self._install_signal_handlers()
        try:
            if self.add_check:
                self._open_books()
                try:
                    self.worker.check(update_db=self.update_db, force=self.force)
                finally:
                    self._release_books()
            while not self.stopping:
                self._one_pass()
                if self.max_run_intervals and self.runs >= self.max_run_intervals:
                    break
                next_run = datetime.now() + timedelta(seconds=self.run_interval_time)
                log.info("next run at %s", next_run.strftime("%Y-%m-%d %H:%M:%S"))
                if self._stop.wait(self.run_interval_time):
                    break
        finally:
            self._restore_signal_handlers()
            self.worker.close()
        return self.last_summary

    def _one_pass(self) -> None:
        self.runs += 1
        self.state["iterations"] = self.runs
        self.last_run = datetime.now()
        log.debug("scheduled run %d", self.runs)
        try:
            self._open_books()
            try:
                self.worker.filter_local(additional_filters=self.additional_filters)
                self.last_summary = self.worker.run()
            finally:
                self._release_books()
            if self.last_summary.exit_status:
                self.failed_runs += 1
        except DatabaseBusyError as exc:
            if self.runs == 1:
                raise  # another oeleo already works on these books: this one stops (status 2)
            # A run started by hand (or another scheduler) holds them now: it does this
            # pass's work, and the next pass comes as planned.
            log.warning("run %d skipped: %s; the next run goes on", self.runs, exc)
        except ConfigError:
            if self.runs == 1:
                raise  # wrong from the start: say so now rather than fail every interval
            self.failed_runs += 1
            log.error("run %d failed: %s; the next run goes on", self.runs, sys.exc_info()[1])
        except (OeleoError, OSError) as exc:
            self.failed_runs += 1
            log.error("run %d failed: %s; the next run goes on", self.runs, exc)
        except Exception:  # noqa: BLE001 - a scheduler outlives a bad pass
            self.failed_runs += 1
            log.exception("run %d failed; the next run goes on", self.runs)
