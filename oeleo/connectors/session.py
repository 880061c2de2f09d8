"""The life cycle of one connection to a store, for every connector that holds one (SSH today;
S3, SharePoint and Arcsecond next): opened once under a lock, re-opened once when many copying
threads find it dropped at the same time, closed quietly.

Two rules hold for every store. A connection that fails the first time is a setting to fix
(``ConfigError``, exit 2); once the store has worked, a failure is a dropped connection
(``ConnectionLost``: the worker reconnects and retries the file with backoff). And what a
transport raises in the middle of an operation is told apart by whether the connection is
still alive: a dead one is ``ConnectionLost``, a live one that refused is an ``OSError``
naming the file.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from contextlib import contextmanager
from typing import Callable, Generic, Iterator, Optional, Protocol, Tuple, Type, TypeVar

from oeleo.errors import ConnectionLost, DestinationUnreachable
from oeleo.names import printable

log = logging.getLogger("oeleo")
# "(check OELEO_EXTERNAL_HOST and OELEO_EXTERNAL_PORT)" or "; check OELEO_...", at the end.
_SETTINGS_HINT = re.compile(r"(\s*\(check OELEO_[^)]*\)|;\s*check OELEO_.*)$")

Conn = TypeVar("Conn")


def describe(exc: BaseException) -> str:
    """An exception for a message: its text, else its class name (``EOFError()`` says nothing)."""
    return str(exc) or type(exc).__name__


class Closable(Protocol):
    def close(self) -> object: ...


def close_quietly(thing: Closable) -> None:
    """``thing.close()``, ignoring what it raises: by then the first error is the one to
    report, and what hangs off a connection that is gone may fail to close."""
    _quietly(thing.close)


def _quietly(call: Callable[[], object]) -> None:
    try:
        call()
    except Exception:  # noqa: BLE001 - the first error is the one to report
        pass


def _same_error(exc: OSError, what: str, name: str) -> OSError:
    return exc


class Session(Generic[Conn]):
    """One connection (``Conn``: an SSH transport, an HTTP pool) and what happens to it.

    ``open_connection()`` opens a connection (called under ``lock``; it raises
    ``failure(message)`` when the store cannot be reached), ``close_connection(conn)`` closes one
    and whatever hangs off it, ``is_alive(conn)`` says whether one still works. ``drop_connection``
    (default: ``close_connection``) ends one that stopped answering, from any thread and without
    the lock, so that the next ``connect()`` replaces it.

    For ``guard``: ``lost`` are the transport's exceptions that mean the connection is gone
    (besides ``EOFError`` and ``ConnectionError``),
    ``io_timeout`` the seconds after which an operation gave up, and ``os_error`` rewrites an
    ``OSError`` the store answered with (to name the server and the file).
    """

    def __init__(
        self,
        where: str,
        open_connection: Callable[[], Conn],
        close_connection: Callable[[Conn], None],
        is_alive: Callable[[Conn], bool],
        drop_connection: Optional[Callable[[Conn], None]] = None,
        lost: Tuple[Type[BaseException], ...] = (),
        io_timeout: float = 300.0,
        os_error: Callable[[OSError, str, str], OSError] = _same_error,
    ) -> None:
        self.where = where
        self._open = open_connection
        self._close = close_connection
        self._is_alive = is_alive
        self._drop = drop_connection or close_connection
        self.lost: Tuple[Type[BaseException], ...] = (EOFError, ConnectionError, *lost)
        self.io_timeout = io_timeout
        self._os_error = os_error
        self.lock = threading.RLock()
        self.connection: Optional[Conn] = None
        self.ever_connected = False  # from then on a failure to connect is a dropped connection

    # -- opening and closing ------------------------------------------------------------
    def connect(self) -> Conn:
        """The open connection; a new one when there is none or it dropped."""
        with self.lock:
            conn = self.connection
            if conn is not None and self._is_alive(conn):
                return conn
            self._close_locked()
            return self._open_locked()

    def reconnect(self) -> Conn:
        """After a dropped connection. Many copying threads call this at once: the first one
        opens a new connection, the others wait for the lock and find it open."""
        return self.connect()

    def current(self) -> Conn:
        """The connection to use now: opened if there is none (the first use, or after
        ``close()`` or a failed reconnect); one that dropped raises ``ConnectionLost``, so
        that the worker's retry reconnects (with backoff) rather than every caller at once."""
        with self.lock:
            conn = self.connection
            if conn is None:
                return self._open_locked()
            if not self._is_alive(conn):
                raise ConnectionLost(f"connection to {self.where} lost")
            return conn

    def close(self) -> None:
        """Close the connection, if one is open; never raises."""
        with self.lock:
            self._close_locked()

    def alive(self) -> bool:
        conn = self.connection
        return conn is not None and self._is_alive(conn)

    def drop(self) -> None:
        """End a connection that stopped answering (any thread, no lock): ``alive()`` is then
        false and the next ``connect()`` opens a new one."""
        conn = self.connection
        if conn is not None:
            _quietly(lambda: self._drop(conn))

    def failure(self, message: str) -> Exception:
        """What to raise when the store cannot be reached: a setting to fix the first time,
        a dropped connection (retried) once it has worked."""
        if self.ever_connected:
            # It worked with these settings: a hint to check them ("... (check OELEO_EXTERNAL_HOST
            # and OELEO_EXTERNAL_PORT)") would read an outage as a mistake.
            message = _SETTINGS_HINT.sub("", message)
            return ConnectionLost(f"cannot reconnect to {self.where}: {message}")
        return DestinationUnreachable(message)

    def _open_locked(self) -> Conn:
        conn = self._open()
        self.connection = conn
        if self.ever_connected:
            log.info("reconnected to %s", self.where)
        self.ever_connected = True
        return conn

    def _close_locked(self) -> None:
        conn, self.connection = self.connection, None
        if conn is not None:
            _quietly(lambda: self._close(conn))

    # -- errors in the middle of an operation --------------------------------------------
    @contextmanager
    def guard(self, what: str, name: str, alive: Optional[Callable[[], bool]] = None) -> Iterator[None]:
        """Turn what the transport raises while ``what`` (``"writing"``) ``name`` into oeleo's
        errors: the transport's own errors (``lost``) become ``ConnectionLost``; a timeout drops
        the connection (it stopped answering) and is ``ConnectionLost``; any other ``OSError``
        is ``ConnectionLost`` when the connection died with it (``alive``, default ``alive()``)
        and else the store's answer, through ``os_error``."""
        try:
            yield
        except self.lost as exc:
            raise ConnectionLost(
                f"connection to {self.where} lost while {what} {printable(name)} ({describe(exc)})"
            ) from None
        except socket.timeout:
            self.drop()
            raise ConnectionLost(
                f"{self.where} did not answer for {self.io_timeout:g} s while {what} {printable(name)}"
            ) from None
        except OSError as exc:
            if not (alive or self.alive)():
                raise ConnectionLost(
                    f"connection to {self.where} lost while {what} {printable(name)} ({describe(exc)})"
                ) from None
            raise self._os_error(exc, what, name) from None
