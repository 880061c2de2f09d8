"""Reporters: what a run tells people while it goes (progress) and when it ends (a summary).

``Reporter`` writes plain log lines (a scheduled task, a script); ``RichReporter`` draws
progress bars for files and bytes in a terminal. ``start_file_log`` adds the rotating log
file in ``OELEO_LOG_DIR`` (oeleo/logfile.py). Whichever reporter runs, the log file gets a
line per copied file, each failure and warning, and the summary: people grep it. Connectors
never print: the worker calls the reporter.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, TextIO, Union

from oeleo.logfile import FILE_FORMAT, BlockLines, LogFile, LogFormatter
from oeleo.names import printable, printable_text, without_name
from oeleo.units import counted, human_bytes, human_seconds  # noqa: F401 - also oeleo.reporters names

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from oeleo.summary import RunSummary

log = logging.getLogger("oeleo")

LOG_FILE_NAME = "oeleo.log"
LOG_MAX_BYTES = 1_000_000
LOG_BACKUP_COUNT = 5


class Reporter:
    """Plain reporter: one log line per file and a summary line; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._verb = "copying"  # what file_started says: "checking" during oeleo check

    def run_started(self, files: int, nbytes: int, dry_run: bool = False) -> None:
        verb = "would copy" if dry_run else "copying"
        if files:
            log.info("%s %s (%s)", verb, counted(files, "file"), human_bytes(nbytes))

    def file_started(self, relpath: str, size: int) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s (%s)", self._verb, printable(relpath), human_bytes(size))

    def advance(self, nbytes: int) -> None:
        """Bytes done on the current file(s); called from the copying threads."""

    def file_progress(self, relpath: str, nbytes: int) -> None:
        """``nbytes`` more of ``relpath`` are done (read and sent, or hashed); called from the
        copying threads. By default the bytes go to ``advance``: a reporter that shows files
        one by one overrides this one."""
        self.advance(nbytes)

    def file_done(self, relpath: str, size: int, error: Optional[str] = None) -> None:
        if error is None:
            log.info("copied %s", printable(relpath))
        else:
            log.error("failed %s: %s", printable(relpath), without_name(printable_text(error), relpath))

    def run_finished(self, summary: RunSummary) -> None:
        level = logging.WARNING if summary.failed else logging.INFO
        log.log(level, summary.describe())
        flush_file_logs()

    def check_started(self, files: int, nbytes: int) -> None:
        """``oeleo check`` compares ``files`` files (``nbytes`` in all) with the destination;
        ``file_started`` is called for each one, ``advance`` with the bytes hashed. Plain
        lines: nothing to say until the end."""
        self._verb = "checking"

    def check_finished(self) -> None:
        """The comparison is done (its result is printed by whoever asked for it)."""
        self._verb = "copying"

    def close(self) -> None:
        """Tear down whatever the reporter drew."""
        flush_file_logs()

    # oeleo 0.7 reporter calls, kept so old schedulers and scripts run.
    def notify(self, *args: Any, **kwargs: Any) -> None:
        log.debug("notify %s %s", args, kwargs)

    def update_metadata(self, **kwargs: Any) -> None:
        log.debug("metadata %s", kwargs)

    def status(self, *args: Any, **kwargs: Any) -> None:
        log.debug("status %s", args)


class RichReporter(Reporter):
    """Progress bars (files and bytes, with rate) on a terminal, via rich."""

    def __init__(self, console: Optional[Console] = None) -> None:
        super().__init__()
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self._progress: Optional[Progress] = None
        self._task: Any = None  # the bar's TaskID while _progress is shown
        self._files_total = 0
        self._files_done = 0
        # None: not checking; False: checking, no file yet; True: a file is being compared.
        self._checking: Optional[bool] = None

    def run_started(self, files: int, nbytes: int, dry_run: bool = False) -> None:
        if dry_run or not files:
            super().run_started(files, nbytes, dry_run)
            return
        to_file_logs(logging.INFO, "copying %s (%s)", counted(files, "file"), human_bytes(nbytes))
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        # One bar for the bytes; the file count rides in its description.
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("•"),
            TransferSpeedColumn(),
            TextColumn("•"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._files_total, self._files_done = files, 0
        self._task = self._progress.add_task(self._files_text(), total=nbytes)
        self._progress.start()

    def _files_text(self) -> str:
        return f"{self._files_done}/{self._files_total} files"

    def check_started(self, files: int, nbytes: int) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        # Hashing 2 GiB takes seconds: a spinner and the time so far show that it goes on,
        # the bar moves per file where the worker reports each one.
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("•"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        super().check_started(files, nbytes)
        self._files_total, self._files_done, self._checking = files, 0, False
        self._task = self._progress.add_task(self._checking_text(), total=nbytes)
        self._progress.start()

    def _checking_text(self) -> str:
        return f"checking {self._files_done}/{counted(self._files_total, 'file')} against the destination"

    def file_started(self, relpath: str, size: int) -> None:
        if self._checking is not None and self._progress is not None:
            with self._lock:  # the bytes move through advance(); here the file count
                if self._checking and self._files_done < self._files_total:
                    self._files_done += 1  # the file before this one is done
                self._checking = True
                self._progress.update(self._task, description=self._checking_text())
        else:
            super().file_started(relpath, size)

    def check_finished(self) -> None:
        super().check_finished()
        self._checking = None
        self.close()

    def advance(self, nbytes: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=nbytes)

    def file_done(self, relpath: str, size: int, error: Optional[str] = None) -> None:
        if self._progress is not None:
            with self._lock:
                self._files_done += 1
                self._progress.update(self._task, description=self._files_text())
        if error is not None:
            log.error("failed %s: %s", printable(relpath), without_name(printable_text(error), relpath))
        else:  # the bar counts it on the screen; the log file names it
            to_file_logs(logging.INFO, "copied %s", printable(relpath))

    def run_finished(self, summary: RunSummary) -> None:
        to_file_logs(logging.WARNING if summary.failed else logging.INFO, "%s", summary.describe())
        self.close()
        style = "red" if summary.failed else "green"
        self.console.print(f"[{style}]{summary.describe()}[/{style}]")
        from rich.markup import escape

        for relpath, reason in summary.errors[:20]:
            line = f"  [red]✗[/red] {escape(printable(relpath))}: {escape(printable_text(reason))}"
            self.console.print(line, highlight=False)
        if len(summary.errors) > 20:
            self.console.print(f"  … and {len(summary.errors) - 20} more (oeleo status)")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        flush_file_logs()


def choose_reporter(stream: Optional[TextIO] = None) -> Reporter:
    """Progress bars on a terminal, plain lines otherwise (a scheduled task, a pipe)."""
    stream = stream or sys.stderr
    if hasattr(stream, "isatty") and stream.isatty() and os.environ.get("TERM") != "dumb":
        return RichReporter()
    return Reporter()


def file_logs() -> List[LogFile]:
    """The log files the ``oeleo`` logger writes to."""
    return [h for h in log.handlers if isinstance(h, LogFile)]


def to_file_logs(level: int, msg: str, *args: Any) -> None:
    """A line for the log files only: what the progress bars already show on the screen."""
    handlers = [h for h in file_logs() if level >= h.level]
    if handlers and log.isEnabledFor(level):
        record = log.makeRecord(log.name, level, __file__, 0, msg, args, None)
        for handler in handlers:
            handler.handle(record)


def flush_file_logs() -> None:
    """Write the log files' buffers out (the end of a run: someone may read the file now),
    and the lines held back for standard error when it is not a terminal."""
    for handler in log.handlers:
        if isinstance(handler, (LogFile, BlockLines)):
            handler.flush()


def start_file_log(log_dir: Union[str, os.PathLike, None], level: Optional[int] = None) -> Path:
    """Add a rotating log file ``oeleo.log`` in ``log_dir`` to the ``oeleo`` logger, receiving
    records of ``level`` and above. By default that is DEBUG when the logger is already set to
    DEBUG (``oeleo --debug``, ``start_logger``), else INFO: a line per copied file, failures,
    warnings and summaries, but not the DEBUG line per file, which costs more than the copy of
    a small file."""
    logger = logging.getLogger("oeleo")
    if level is None:
        level = logging.DEBUG if logger.level and logger.level <= logging.DEBUG else logging.INFO
    folder = Path(log_dir).expanduser() if log_dir else Path.cwd()  # ~ as for the other paths
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOG_FILE_NAME
    for handler in file_logs():
        if handler.path == path.resolve():
            handler.setLevel(min(handler.level, level))
            _lower_to(logger, level)
            return path
    handler = LogFile(path, max_bytes=LOG_MAX_BYTES, backup_count=LOG_BACKUP_COUNT, level=level)
    handler.setFormatter(LogFormatter(FILE_FORMAT))
    logger.addHandler(handler)
    _lower_to(logger, level)
    return path


def _lower_to(logger: logging.Logger, level: int) -> None:
    """Let records of ``level`` through the logger (never raise what someone else lowered)."""
    logger.setLevel(min(logger.level, level) if logger.level else level)
