"""A lock held by this process on a file, released by the OS if the process dies.

Used so that a second oeleo process on the same SQLite database stops at once instead of
racing (Windows Task Scheduler happily starts overlapping runs).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from oeleo.errors import BookkeeperError, DatabaseBusyError


class ProcessLock:
    """An exclusive, non-blocking lock on ``path`` (created if needed)."""

    def __init__(self, path: Path, what: str, busy: str = "is already using {what}") -> None:
        self.path = Path(path)
        self.what = what
        self.busy = busy  # what the other process does, in the message of a lock refused
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise BookkeeperError(
                f"{self.what}: cannot create its lock file {self.path}: {exc.strerror or exc}"
            ) from None
        try:
            _lock(fd)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (process {holder})" if holder else ""
            raise DatabaseBusyError(
                f"another oeleo process{who} {self.busy.format(what=self.what)}; this one stops"
            ) from None
        self._fd = fd
        try:  # who holds it, for the message another process shows; the lock holds without it
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError:
            pass

    def held_elsewhere(self) -> Optional[bool]:
        """Whether another process holds the lock now (None: this system cannot tell)."""
        if self._fd is not None:
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError:
            return None
        try:
            return _held(fd)
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        _unlock(fd)
        os.close(fd)

    def __enter__(self) -> ProcessLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 32).decode(errors="replace").strip()
    except OSError:
        return ""


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        except OSError:
            pass

    def _held(fd: int) -> Optional[bool]:
        return None  # msvcrt cannot probe a lock through a read-only descriptor

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

    def _held(fd: int) -> Optional[bool]:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # refused while a run holds it
        except OSError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
