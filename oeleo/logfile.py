"""The log file: ``oeleo.log``, rotated by size, written through a buffer.

A run writes a line per copied file, so the file must cost less than the copy. The standard
``RotatingFileHandler`` stats, seeks and flushes the file for every record; ``LogFile``
counts the bytes it writes itself, rotates when the next line would pass the limit, and
writes through a buffer that it flushes at once for a record of WARNING or above, within
``flush_seconds`` otherwise (a timer thread), and when asked (the end of a run) or closed.
``logging.shutdown``, which Python runs at a normal exit (and the CLI's exit after SIGTERM
or Ctrl-C), flushes it: only a process killed outright (SIGKILL, or SIGTERM to a script
that does not handle it) loses the last ``flush_seconds`` of lines.

Text is UTF-8; what cannot be encoded (a file name that is not UTF-8, held as surrogates) is
written with backslash escapes instead of failing the line.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, List, Optional, Tuple, Union

FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
BUFFER_BYTES = 64 * 1024


class LogFormatter(logging.Formatter):
    """``logging.Formatter`` with the date of the current second formatted once, not per line,
    and the file's own format (``FILE_FORMAT``) built directly: the same text, without the
    generic formatting's steps for every copied file's line."""

    def __init__(self, fmt: str = FILE_FORMAT) -> None:
        super().__init__(fmt)
        self._second: Tuple[int, str] = (-1, "")  # one tuple: threads never see half of it
        self._direct = fmt == FILE_FORMAT

    def format(self, record: logging.LogRecord) -> str:
        if not self._direct or record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        record.message = record.getMessage()
        record.asctime = self.formatTime(record)
        return f"{record.asctime} {record.levelname:<7} {record.name}: {record.message}"

    def formatTime(self, record: logging.LogRecord, datefmt: Optional[str] = None) -> str:  # noqa: N802
        second, stamp = self._second
        if int(record.created) != second:
            second = int(record.created)
            stamp = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = (second, stamp)
        return f"{stamp},{int(record.msecs):03d}"  # as logging's default_msec_format


class MessageFormatter(logging.Formatter):
    """``logging.Formatter("%(message)s")``, with a line that has no traceback built directly
    (the console's lines when it is not a terminal: one per copied file)."""

    def __init__(self) -> None:
        super().__init__("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        record.message = record.getMessage()
        return record.message


class LogFile(logging.Handler):
    """Append log lines to ``path``; past ``max_bytes`` the file becomes ``path.1`` (``.1``
    becomes ``.2`` ...), keeping ``backup_count`` old files; with either 0 it never rotates."""

    def __init__(
        self,
        path: Union[str, os.PathLike],
        max_bytes: int,
        backup_count: int,
        flush_seconds: float = 1.0,
        level: int = logging.NOTSET,
    ) -> None:
        super().__init__(level)
        self.path = Path(path).resolve()
        self.baseFilename = str(self.path)  # the name logging's own file handlers use
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.flush_seconds = flush_seconds
        self.rotates = max_bytes > 0 and backup_count > 0  # as RotatingFileHandler: 0 means never
        self._newline = os.linesep.encode()
        self._timer: Optional[threading.Timer] = None
        self._stream: Optional[BinaryIO] = None
        self._size = 0
        self._open()

    def _open(self) -> None:
        self._stream = open(self.path, "ab", buffering=BUFFER_BYTES)
        self._size = os.fstat(self._stream.fileno()).st_size

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if os.linesep != "\n":
                text = text.replace("\n", os.linesep)
            data = text.encode("utf-8", "backslashreplace") + self._newline
            if self._stream is None:  # closed, then used again (as FileHandler allows)
                self._open()
            if self._size and self._size + len(data) > self.max_bytes and self.rotates:
                self._rotate()
            assert self._stream is not None
            self._stream.write(data)
            self._size += len(data)
            if record.levelno >= logging.WARNING:
                self._flush()
            elif self._timer is None:
                self._timer = threading.Timer(self.flush_seconds, self.flush)
                self._timer.daemon = True  # never keeps the process alive: shutdown flushes
                self._timer.start()
        except Exception:
            self.handleError(record)

    def _rotate(self) -> None:
        assert self._stream is not None
        self._stream.close()  # Windows renames no open file
        self._stream = None
        try:
            for i in range(self.backup_count - 1, 0, -1):
                older = self._backup(i)
                if older.exists():
                    os.replace(older, self._backup(i + 1))
            os.replace(self.path, self._backup(1))
        except OSError:
            pass  # another process holds the file (Windows): go on appending, try again later
        self._open()
        # After a failed rename the count restarts: the next try comes after the next flush
        # (which counts the real size again), not at every line.
        self._size = 0

    def _backup(self, i: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{i}")

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._stream is None:
            return
        self._stream.flush()
        # Another process may append to the same file, or rotate it: follow the file's real
        # size, and the new file when ours was renamed away (one fstat and stat per flush).
        try:
            mine = os.fstat(self._stream.fileno())
            there = os.stat(self.path)
        except FileNotFoundError:
            there = None
        except OSError:
            return
        if there is None or not os.path.samestat(mine, there):
            self._stream.close()
            self._open()
        else:
            self._size = mine.st_size

    def flush(self) -> None:
        """Write what the buffer holds to the file."""
        self.acquire()
        try:
            self._flush()
        except OSError:
            pass  # a full disk: the next flush tries again; logging must not stop the run
        finally:
            self.release()

    def close(self) -> None:
        self.acquire()
        try:
            self.flush()
            if self._stream is not None:
                self._stream.close()
                self._stream = None
        except OSError:
            pass
        finally:
            self.release()
            super().close()

    def __repr__(self) -> str:
        return f"<LogFile {self.path} ({logging.getLevelName(self.level)})>"


class BlockLines(logging.StreamHandler):
    """Log lines to a stream that is not a terminal (a scheduled task's log, a pipe), written
    in blocks: Python's standard error writes each line at once, which is a system call per
    copied file. A record of WARNING or above is written at once with what came before it;
    the others within ``flush_seconds`` (a timer thread), at the end of a run, and at exit
    (``logging.shutdown`` flushes every handler)."""

    def __init__(self, stream: Any = None, flush_seconds: float = 1.0) -> None:
        super().__init__(stream)
        self.flush_seconds = flush_seconds
        self._lines: List[str] = []
        self._chars = 0
        self._timer: Optional[threading.Timer] = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + self.terminator
            self._lines.append(text)
            self._chars += len(text)
            if record.levelno >= logging.WARNING or self._chars >= BUFFER_BYTES:
                self._write()
            elif self._timer is None:
                self._timer = threading.Timer(self.flush_seconds, self.flush)
                self._timer.daemon = True
                self._timer.start()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _write(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        text, self._lines, self._chars = "".join(self._lines), [], 0
        self.stream.write(text)
        self.stream.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
        except (OSError, ValueError):
            pass  # the reader went away (a closed pipe): logging must not stop the run
        finally:
            self.release()
