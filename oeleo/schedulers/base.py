"""What every scheduler shares: a worker to run one pass at a time, a bad pass that does not
end the schedule, connections opened again after a failed pass, a heartbeat in the books,
and a clean stop on a signal.

A pass holds the books (and their lock) from its start to its end, never while the scheduler
waits. The heartbeat (``oeleo_scheduler`` table) is written while the books are held: as a
pass starts, as it ends (with its result and the next pass planned), and once more, without
the lock, when the scheduler stops.
"""

from __future__ import annotations

import datetime
import inspect
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Protocol, Sequence, Tuple

from oeleo.errors import ConfigError, DatabaseBusyError, DestinationUnreachable, OeleoError

if TYPE_CHECKING:
    from oeleo.workers import RunSummary

log = logging.getLogger("oeleo")

# Signals that stop a scheduler cleanly: Ctrl-C, SIGTERM, and SIGHUP (the terminal window
# closed) where the platform has it (not on Windows).
STOP_SIGNALS: Tuple[int, ...] = (signal.SIGINT, signal.SIGTERM) + (
    (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()
)


class PassWorker(Protocol):
    """What a scheduler asks of its worker: ``oeleo.workers.Worker``, or one of oeleo 0.7's
    shape (``release_db`` is used where there is one)."""

    def connect_to_db(self) -> None: ...

    def filter_local(self, **kwargs: Any) -> Any: ...

    def run(self) -> RunSummary: ...

    def check(self, update_db: bool = ..., force: bool = ...) -> Any: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


class SchedulerBase:
    """Runs ``worker`` passes until told to stop. Subclasses implement ``start`` (calling
    ``run_one_pass`` for each pass and ``finish`` at the end) and may plan the next pass in
    ``next_pass_after``."""

    name = "scheduler"

    def __init__(
        self,
        worker: PassWorker,
        update_db: bool = True,
        force: bool = False,
        add_check: bool = False,
        additional_filters: Optional[Sequence[Callable[[Path], bool]]] = None,
    ) -> None:
        self.worker = worker
        self.update_db = update_db
        self.force = force
        self.add_check = add_check
        self.additional_filters = additional_filters
        self.runs = 0
        self.failed_runs = 0
        self.last_summary: Optional[RunSummary] = None
        self.last_run: Optional[datetime.datetime] = None
        self.state = {"iterations": 0}
        self.started = datetime.datetime.now()
        self._stop = threading.Event()
        self._old_handlers: Dict[int, Any] = {}
        self._beats = 0  # heartbeats written; 0: none, so none to close either

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop after (or, abandoning the current file cleanly, during) the current pass."""
        self._stop.set()
        self.worker.stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def describe(self) -> str:
        """The scheduler and its rule, as the heartbeat and ``oeleo status`` show them."""
        return self.name

    def next_pass_after(self, ended: float) -> Optional[float]:
        """When the next pass starts (seconds since the epoch), a pass having ended at
        ``ended``; None when none is planned (the last one, or a scheduler that cannot say)."""
        return None

    def _then(self) -> str:
        """What the line of a failed or skipped pass ends with: nothing after the last one."""
        most = getattr(self, "max_run_intervals", 0)
        return "" if (most and self.runs >= most) or self.stopping else "; the next run goes on"

    # -- one pass ---------------------------------------------------------------------
    def _run_worker(self) -> RunSummary:
        """The worker's pass, told when it began where its ``run`` takes ``started`` (oeleo's
        ``Worker``; a worker of 0.7's shape has a bare ``run()``)."""
        run = self.worker.run
        if _takes_started(run):
            return run(started=self.last_run)  # type: ignore[call-arg]
        return run()

    def run_initial_check(self) -> None:
        """``add_check``: book what is already at the destination, before the first pass."""
        self._open_books()
        try:
            self.worker.check(update_db=self.update_db, force=self.force)
        finally:
            self._release_books()

    def run_one_pass(self, at: Optional[float] = None) -> None:
        """One pass, the books held for its length. An error is logged and counted, and the
        connections are closed so that the next pass opens them again; only a pass that
        cannot start at all the first time (wrong settings, books in use) raises.

        ``at`` (seconds since the epoch, default now): the instant the scheduler decided the
        pass starts, having held its limits (``until``) against it. The heartbeat and the
        pass's run row both record it, so neither says a pass began later than it did."""
        self.runs += 1
        self.state["iterations"] = self.runs
        self.last_run = datetime.datetime.fromtimestamp(time.time() if at is None else at)
        log.debug("scheduled run %d", self.runs)
        failed = False
        try:
            self._open_books()
            if self.runs == 1:
                try:  # before any heartbeat of its own: the other's is left as it is
                    self._refuse_a_second()
                except BaseException:
                    self._release_books()
                    raise
            try:
                self._beat(pass_started=self.last_run, pass_finished=None, next_pass=None)
                try:
                    self.choose_files()
                except BaseException as exc:  # the pass failed before the worker's run: say so
                    report = getattr(self.worker, "report_failed_pass", None)
                    if report is not None:
                        report(exc)
                    raise
                summary = self.last_summary = self._run_worker()
            except BaseException as exc:
                self._beat_end(f"failed: {exc or type(exc).__name__}")
                raise
            else:
                self._beat_end(f"{summary.status}: {summary.describe()}")
            finally:
                self._release_books()
            if summary.exit_status:
                self.failed_runs += 1
            failed = bool(summary.fatal)  # the store went away during the pass
        except DatabaseBusyError as exc:
            if self.runs == 1:
                raise  # another oeleo already works on these books: this one stops (status 2)
            # A run started by hand (or another scheduler) holds them now: it does this
            # pass's work, and the next pass comes as planned.
            log.warning("run %d skipped: %s%s", self.runs, exc, self._then())
            if self._beats:
                self._beat_beside_a_run(result=f"skipped: {exc}", next_pass=self._planned(time.time()))
        except ConfigError as exc:
            if self.runs == 1 and not isinstance(exc, DestinationUnreachable):
                raise  # wrong from the start: say so now rather than fail every interval
            # A destination not reached at the first pass may be a network not up yet (a PC
            # just started): tried again at the next pass, as a lost one is.
            failed = True
            self.failed_runs += 1
            log.error("run %d failed: %s%s", self.runs, exc, self._then())
        except (OeleoError, OSError) as exc:
            failed = True
            self.failed_runs += 1
            log.error("run %d failed: %s%s", self.runs, exc, self._then())
        except Exception:  # noqa: BLE001 - a scheduler outlives a bad pass
            failed = True
            self.failed_runs += 1
            log.exception("run %d failed%s", self.runs, self._then())
        if failed:
            self._reset_connections()

    def choose_files(self) -> None:
        """Tell the worker which files this pass looks at: the source folder's listing (a
        watcher names the files that changed instead)."""
        self.worker.filter_local(additional_filters=self.additional_filters)

    def finish(self) -> None:
        """Close the worker and say in the heartbeat that this scheduler stopped."""
        try:
            self.worker.close()
        finally:
            if self._beats:
                self._beat_stopped()

    def _reset_connections(self) -> None:
        """After a failed pass, close the books and the stores: a connection that was lost
        (or a database that went away) is opened afresh by the next pass."""
        try:
            self.worker.close()
        except Exception as exc:  # noqa: BLE001 - the next pass opens them again anyway
            log.debug("closing after a failed pass: %s", exc)

    def _open_books(self) -> None:
        """Open (and lock) the books for one pass; a busy database raises DatabaseBusyError."""
        self.worker.connect_to_db()

    def _release_books(self) -> None:
        """Give the books and their lock back after a pass, so that a run started by hand
        while the scheduler waits is not refused; the connections to the stores stay open."""
        release = getattr(self.worker, "release_db", None)
        if release is not None:  # a worker of oeleo 0.7's shape keeps its books until close()
            release()

    # -- the heartbeat ----------------------------------------------------------------
    def _beat(self, **values: Any) -> None:
        """Write the heartbeat; a heartbeat that cannot be written never stops a pass."""
        from oeleo.models import Bookkeeper, write_heartbeat

        books = getattr(self.worker, "bookkeeper", None)
        if not isinstance(books, Bookkeeper) or getattr(self.worker, "dry_run", False):
            return
        values.update(pid=os.getpid(), scheduler=self.describe(), started=self.started)
        values.setdefault("stopped", None)
        try:
            write_heartbeat(books, **values)
        except OeleoError as exc:
            log.warning("the scheduler's heartbeat could not be written: %s", exc)
            return
        self._beats += 1

    def _planned(self, ended: float) -> Optional[datetime.datetime]:
        planned = None if self.stopping else self.next_pass_after(ended)
        return datetime.datetime.fromtimestamp(planned) if planned is not None else None

    def _beat_end(self, result: str) -> None:
        self._beat(
            pass_finished=datetime.datetime.now(), result=result[:2000], next_pass=self._planned(time.time())
        )

    def _beat_stopped(self) -> None:
        self._beat_beside_a_run(next_pass=None, stopped=datetime.datetime.now())

    def _refuse_a_second(self) -> None:
        """At the first pass (the books held): another scheduler whose heartbeat says it runs
        for these books and this folder (its process alive, not overdue by more than 10
        minutes) means this one stops with status 2, as for books in use; two schedulers whose
        passes never overlap would each write the heartbeat, and the one that stops would say
        "stopped" while the other runs."""
        from oeleo.models import Bookkeeper, read_heartbeat

        books = getattr(self.worker, "bookkeeper", None)
        if not isinstance(books, Bookkeeper) or getattr(self.worker, "dry_run", False):
            return
        try:
            beat = read_heartbeat(books)
        except OeleoError:
            return
        if beat is None or beat.pid in (None, os.getpid()) or beat.stopped is not None:
            return
        planned = beat.next_pass
        overdue = isinstance(planned, datetime.datetime) and (
            datetime.datetime.now() - planned
        ) > datetime.timedelta(minutes=10)
        if not overdue and pid_alive(int(beat.pid)):
            raise DatabaseBusyError(
                f"another scheduler (process {beat.pid}, {beat.scheduler}) already runs for these "
                f"books and {books.origin}: this one stops (oeleo status shows it)"
            )

    def _beat_beside_a_run(self, **values: Any) -> None:
        """The heartbeat outside a pass (a skipped pass, the stop): with the books opened
        without their lock, beside a run that may hold them now."""
        from oeleo.models import Bookkeeper

        books = getattr(self.worker, "bookkeeper", None)
        if not isinstance(books, Bookkeeper) or getattr(self.worker, "dry_run", False):
            return
        try:
            books.initialize_db(exclusive=False)
            try:
                self._beat(**values)
            finally:
                books.close()
        except OeleoError as exc:
            log.warning("the scheduler's heartbeat could not be written: %s", exc)

    # -- signals ----------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            self._old_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers.clear()

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        log.warning("received %s: stopping cleanly", signal.Signals(signum).name)
        self.received_signal = signum
        self.stop()

    received_signal: Optional[int] = None


def pid_alive(pid: int) -> Optional[bool]:
    """Whether process ``pid`` of this computer still runs (None: this system cannot tell)."""
    if pid <= 0:
        return False
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)  # signal 0: only asks whether it could be sent
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it is there
        return True
    except OSError:
        return None
    try:  # Linux: a process that ended but was not waited for yet is a zombie, not alive
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _windows_pid_alive(pid: int) -> Optional[bool]:  # pragma: no cover - Windows only
    # os.kill(pid, 0) would end the process on Windows: ask through the Windows API instead.
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return kernel32.GetLastError() == 5  # access denied: it exists
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return None
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def _takes_started(run: Callable[..., Any]) -> bool:
    try:
        return "started" in inspect.signature(run).parameters
    except (TypeError, ValueError):  # a callable inspect cannot read: call it bare
        return False
