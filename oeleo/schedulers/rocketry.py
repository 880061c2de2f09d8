"""The rocketry scheduler (the ``rocketry`` extra): passes when a rocketry condition says so,
``"every 5 minutes"``, ``"daily between 22:00 and 06:00"``, or a condition object.

rocketry 2.5.1 (December 2022) is its last release and it is unmaintained (its issue #210);
the built-in scheduler (``oeleo.schedulers.rules``) does every 5m, cron and night windows
without it. rocketry and its dependency redbird are written for pydantic 1: with pydantic 2
their import fails (redbird's ``Field(default=False, const=True)``). pydantic 2 ships the
pydantic 1 API as ``pydantic.v1``, so ``_pydantic_v1_as_pydantic`` puts ``pydantic.v1`` and
its submodules into ``sys.modules`` under the ``pydantic`` names only while rocketry and
redbird are imported, and puts pydantic 2 back right after: their classes keep the pydantic 1
they were built with, and everything else (oeleo's settings) keeps pydantic 2. The PyPI package
``rocketry-fix`` does the same without putting pydantic 2 back; it is not used. redbird's SQL
repository imports pydantic when it is used, so it is never used here (rocketry keeps its
task logs in memory, the latest ``KEEP_TASK_LOGS`` of them).

rocketry is imported only in this module, and only when a ``RocketryScheduler`` starts.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import logging
import pkgutil
import sys
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Union

from oeleo.errors import ConfigError
from oeleo.schedulers.base import PassWorker, SchedulerBase
from oeleo.schedulers.simple import _until

log = logging.getLogger("oeleo")

TASK_NAME = "oeleo-pass"
# rocketry logs two records per pass into a list it never trims (a pass every 5 minutes: 200,000
# a year); its conditions read the task's cached times, so only the latest records are kept.
KEEP_TASK_LOGS = 100
# Imported while the shim is on: everything of rocketry and redbird that builds pydantic models
# when imported (a module imported later would meet pydantic 2).
_ROCKETRY_MODULES = ("redbird", "redbird.logging", "redbird.repos", "rocketry", "rocketry.conditions")


@contextlib.contextmanager
def _pydantic_v1_as_pydantic() -> Iterator[None]:
    """While in the block, ``import pydantic`` (and ``pydantic.fields`` ...) gives pydantic 1
    (``pydantic.v1``); afterwards ``sys.modules`` holds exactly the pydantic 2 modules it
    held before. On pydantic 1 itself nothing is changed."""
    import pydantic

    if not str(getattr(pydantic, "VERSION", "1")).startswith("2"):
        yield
        return
    import pydantic.v1

    # Every submodule of pydantic.v1 loaded under its own name first: one imported through the
    # alias would be loaded a second time as another module, with classes of its own.
    for info in pkgutil.iter_modules(pydantic.v1.__path__):
        try:
            importlib.import_module(f"pydantic.v1.{info.name}")
        except ImportError:  # pydantic.v1.mypy needs mypy, and so on: rocketry uses none of them
            pass
    saved: Dict[str, ModuleType] = {n: m for n, m in sys.modules.items() if _is_pydantic(n)}
    aliases = {
        "pydantic" + name[len("pydantic.v1") :]: module
        for name, module in saved.items()
        if name == "pydantic.v1" or name.startswith("pydantic.v1.")
    }
    try:
        sys.modules.update(aliases)
        yield
    finally:
        for name in [n for n in sys.modules if _is_pydantic(n)]:
            if name not in saved:
                del sys.modules[name]
        sys.modules.update(saved)


def _is_pydantic(name: str) -> bool:
    return name == "pydantic" or name.startswith("pydantic.")


def import_rocketry() -> ModuleType:
    """The ``rocketry`` package, imported under the shim; a missing one is a configuration error."""
    if "rocketry" in sys.modules:
        return sys.modules["rocketry"]
    try:
        with _pydantic_v1_as_pydantic():
            for name in _ROCKETRY_MODULES:
                importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(
            f"OELEO_SCHEDULER=rocketry needs rocketry: pip install 'oeleo[rocketry]' ({exc})"
        ) from None
    return sys.modules["rocketry"]


@contextlib.contextmanager
def _log_records_with_process_and_thread() -> Iterator[None]:
    """rocketry's task log records must name their process and thread (its model refuses
    None), which the ``oeleo`` command turns off for speed: on while rocketry runs."""
    names = ("logThreads", "logProcesses", "logMultiprocessing")
    saved = {name: getattr(logging, name) for name in names}
    for name in names:
        setattr(logging, name, True)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(logging, name, value)


class RocketryScheduler(SchedulerBase):
    """Run the worker when a rocketry condition holds, one pass at a time in this thread.

    >>> RocketryScheduler(worker, schedule="every 5 minutes").start()
    >>> RocketryScheduler(worker, schedule="daily between 22:00 and 06:00", max_run_intervals=3).start()

    ``schedule`` is a rocketry condition string or object. ``max_run_intervals`` (0 or None:
    no limit) and ``until`` stop it, as do Ctrl-C, SIGTERM and SIGHUP (cleanly, as the
    built-in scheduler) and ``stop()`` from another thread (``session.shut_down()``).
    ``run_interval_time`` is the condition when ``schedule`` is empty.
    """

    name = "rocketry"

    def __init__(
        self,
        worker: PassWorker,
        schedule: Any = "",
        max_run_intervals: Optional[int] = None,
        update_db: bool = True,
        force: bool = False,
        add_check: bool = False,
        additional_filters: Optional[Sequence[Callable[[Path], bool]]] = None,
        *,
        run_interval_time: Optional[float] = None,
        until: Union[str, float, datetime.datetime, None] = None,
    ) -> None:
        super().__init__(worker, update_db, force, add_check, additional_filters)
        if isinstance(schedule, str) and not schedule.strip():
            schedule = f"every {run_interval_time or 300:g} seconds"
        self.schedule = schedule
        self.max_run_intervals = max_run_intervals
        self.until = _until(until)
        self.session: Any = None
        self._fatal: Optional[BaseException] = None

    def describe(self) -> str:
        return f"{self.name}, {self.schedule}"

    def stop(self) -> None:
        super().stop()
        if self.session is not None:
            self.session.shut_down()

    def start(self) -> Any:
        """Run until the limits are reached or a stop is asked for; the last RunSummary."""
        rocketry = import_rocketry()
        app = rocketry.Rocketry(
            config={
                "execution": "main",  # passes in this thread, one after the other
                "silence_task_prerun": False,
                "cycle_sleep": 0.05,
            }
        )

        def oeleo_pass() -> None:  # a function: rocketry marks it with an attribute
            self._task()

        try:
            app.task(self.schedule, name=TASK_NAME, execution="main")(oeleo_pass)
        except Exception as exc:  # noqa: BLE001 - rocketry's parser raises several kinds
            raise ConfigError(
                f"OELEO_SCHEDULE (--rocketry) {self.schedule!r}: not a rocketry condition ({exc}); "
                "see https://rocketry.readthedocs.io/en/stable/handbooks/conditions/"
            ) from None
        self.session = app.session
        timer = self._until_timer()
        self._install_signal_handlers()
        try:
            if self.add_check:
                self.run_initial_check()
            if not self.stopping:
                log.info("rocketry: a run when %r holds", str(self.schedule))
                with warnings.catch_warnings(), _log_records_with_process_and_thread():
                    # "Logger rocketry.task cannot be read": its task logs stay in memory
                    warnings.simplefilter("ignore", UserWarning)
                    app.run()
        finally:
            if timer is not None:
                timer.cancel()
            self._restore_signal_handlers()
            self.finish()
        if self._fatal is not None:
            raise self._fatal
        return self.last_summary

    def _task(self) -> None:
        if self.stopping:
            return
        now = time.time()  # held against "until", and the start the pass records
        if self.until is not None and now > self.until:
            self.session.shut_down()
            return
        try:
            self.run_one_pass(now)
        except Exception as exc:  # wrong from the first pass: stop as the built-in scheduler does
            self._fatal = exc
            self.session.shut_down()
            return
        self._trim_task_logs()
        if self.max_run_intervals and self.runs >= self.max_run_intervals:
            self.session.shut_down()

    def _trim_task_logs(self) -> None:
        logger = logging.getLogger(self.session.config.task_logger_basename)
        for handler in logger.handlers:
            records = getattr(getattr(handler, "repo", None), "collection", None)
            if isinstance(records, list) and len(records) > KEEP_TASK_LOGS:
                del records[: len(records) - KEEP_TASK_LOGS]

    def _until_timer(self) -> Optional[threading.Timer]:
        if self.until is None:
            return None
        # No pass starts after it; one running then finishes (shut_down waits for it).
        timer = threading.Timer(max(0.0, self.until - time.time()), lambda: self.session.shut_down())
        timer.daemon = True
        timer.start()
        return timer
