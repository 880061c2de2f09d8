"""Reporters: what a run tells people while it goes (progress) and when it ends (a summary).

``Reporter`` writes plain log lines (a scheduled task, a script); ``RichReporter`` draws
progress bars for files and bytes in a terminal. ``start_file_log`` adds the rotating log
file in ``OELEO_LOG_DIR``. Connectors never print: the worker calls the reporter.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from oeleo.names import printable

if TYPE_CHECKING:
    from oeleo.workers import RunSummary

log = logging.getLogger("oeleo")

LOG_FILE_NAME = "oeleo.log"
LOG_MAX_BYTES = 1_000_000
LOG_BACKUP_COUNT = 5
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def counted(n: int, noun: str) -> str:
    """``1 file``, ``2 files``: a count with its noun (nouns that take an s)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def human_seconds(seconds: float) -> str:
    """``0.4 s``, ``3 min 05 s``, ``2 h 07 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


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

    def file_done(self, relpath: str, size: int, error: Optional[str] = None) -> None:
        if error is None:
            log.info("copied %s", printable(relpath))
        else:
            log.error("failed %s: %s", printable(relpath), printable(error))

    def run_finished(self, summary: RunSummary) -> None:
        level = logging.WARNING if summary.failed else logging.INFO
        log.log(level, summary.describe())

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

    # oeleo 0.7 reporter calls, kept so old schedulers and scripts run.
    def notify(self, *args: Any, **kwargs: Any) -> None:
        log.debug("notify %s %s", args, kwargs)

    def update_metadata(self, **kwargs: Any) -> None:
        log.debug("metadata %s", kwargs)

    def status(self, *args: Any, **kwargs: Any) -> None:
        log.debug("status %s", args)


class RichReporter(Reporter):
    """Progress bars (files and bytes, with rate) on a terminal, via rich."""

    def __init__(self, console: Any = None) -> None:
        super().__init__()
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self._progress: Any = None
        self._task: Any = None
        self._files_total = 0
        self._files_done = 0
        # None: not checking; False: checking, no file yet; True: a file is being compared.
        self._checking: Optional[bool] = None

    def run_started(self, files: int, nbytes: int, dry_run: bool = False) -> None:
        if dry_run or not files:
            super().run_started(files, nbytes, dry_run)
            return
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
            log.error("failed %s: %s", printable(relpath), printable(error))
        else:
            log.debug("copied %s", printable(relpath))

    def run_finished(self, summary: RunSummary) -> None:
        self.close()
        style = "red" if summary.failed else "green"
        self.console.print(f"[{style}]{summary.describe()}[/{style}]")
        from rich.markup import escape

        for relpath, reason in summary.errors[:20]:
            self.console.print(
                f"  [red]✗[/red] {escape(printable(relpath))}: {escape(printable(reason))}", highlight=False
            )
        if len(summary.errors) > 20:
            self.console.print(f"  … and {len(summary.errors) - 20} more (oeleo status)")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def choose_reporter(stream: Any = None) -> Reporter:
    """Progress bars on a terminal, plain lines otherwise (a scheduled task, a pipe)."""
    stream = stream or sys.stderr
    if hasattr(stream, "isatty") and stream.isatty() and os.environ.get("TERM") != "dumb":
        return RichReporter()
    return Reporter()


def start_file_log(log_dir: Union[str, os.PathLike, None], level: int = logging.DEBUG) -> Path:
    """Add a rotating log file ``oeleo.log`` in ``log_dir`` to the ``oeleo`` logger."""
    folder = Path(log_dir) if log_dir else Path.cwd()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOG_FILE_NAME
    logger = logging.getLogger("oeleo")
    for handler in logger.handlers:
        if isinstance(handler, RotatingFileHandler) and Path(handler.baseFilename) == path.resolve():
            return path
    # A file name that is not UTF-8 is written with \x escapes instead of failing the line.
    handler = RotatingFileHandler(
        path,
        maxBytes=LOG_MAX_BYTES,
        backupCount=LOG_BACKUP_COUNT,
        encoding="utf-8",
        errors="backslashreplace",
    )
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    logger.addHandler(handler)
    logger.setLevel(min(logger.level or logging.DEBUG, level))
    return path
