"""What an error that ends one file's copy means, and trying again after a dropped connection.

The error classes say what the engine does with them (``oeleo.errors.Behaviour``): a dropped
connection is retried with backoff, a bounded number of times; a change of the source leaves
the file for the next run; a full destination stops the run; anything else fails this file
and the run goes on with the next one.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional, Tuple

from oeleo.errors import Behaviour, FoundWrongInPlace, OeleoError, behaviour_of, first_line
from oeleo.names import printable
from oeleo.units import counted

log = logging.getLogger("oeleo")

BACKOFF_SECONDS = 0.5  # the first wait before a retry; doubled each time

Outcome = Tuple[str, Any]  # ("staged", result), ("error", reason), ("vanished", None), ...


def outcome_of(exc: Exception, relpath: str, source_exists: Callable[[], bool]) -> Outcome:
    """The outcome of a copy that raised ``exc`` (not a dropped connection: see ``with_retries``)."""
    behaviour = behaviour_of(exc)
    if behaviour is Behaviour.BOOKS or behaviour is Behaviour.CONFIG:
        # The books cannot be written, or a setting is wrong (a host key that changed since
        # the run began): the pass stops; what was booked stays booked.
        raise exc
    if behaviour is Behaviour.INTERRUPT:
        return "stopped", None
    if behaviour is Behaviour.LEAVE_FILE:
        return "changing", str(exc)
    if behaviour is Behaviour.INCOMPLETE:
        return "incomplete", str(exc)
    if behaviour is Behaviour.NOT_REPLACED:
        return "not_replaced", str(exc) or None
    if behaviour is Behaviour.STOP_RUN:
        text = str(exc) if isinstance(exc, OeleoError) else ""
        return "fatal", text or f"no space left on the destination while writing {relpath}"
    if isinstance(exc, FileNotFoundError):
        if source_exists():
            return "error", f"not found on the destination side: {exc.filename or exc}"
        return "vanished", None
    if isinstance(exc, PermissionError):
        return "error", f"permission denied ({exc.filename or relpath})"
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return "error", f"{exc.strerror or exc}{where}"
    if isinstance(exc, FoundWrongInPlace):  # a connector's own put(): in place and wrong
        return "wrong_in_place", str(exc)
    if isinstance(exc, OeleoError):
        return "error", str(exc)
    log.debug("unexpected error copying %s", printable(relpath), exc_info=True)
    return "error", f"{type(exc).__name__}: {exc}{_raised_at(exc)}"


def _raised_at(exc: BaseException) -> str:
    """`` (at conns.py:57 in send(); --debug shows the traceback)``: where an error that is
    no error of a store (a bug: an ``AttributeError``, a ``KeyError``) was raised, in the
    innermost frame of code that is neither oeleo's nor Python's own (a connector, a hook)."""
    import os
    import sysconfig
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    ours = os.path.dirname(os.path.abspath(__file__))
    python = os.path.abspath(sysconfig.get_paths()["stdlib"])
    theirs = [
        f for f in frames if not os.path.abspath(f.filename).startswith((ours + os.sep, python + os.sep))
    ]
    if not frames:
        return ""
    frame = (theirs or frames)[-1]
    where = f"{os.path.basename(frame.filename)}:{frame.lineno} in {frame.name}()"
    return f" (at {where}; --debug shows the traceback)"


def with_retries(
    copy: Callable[[], Outcome],
    relpath: str,
    retries: int,
    stop: threading.Event,
    reconnect: Callable[[], None],
    source_exists: Callable[[], bool],
    unreachable: Optional[threading.Event] = None,
    away: Callable[[], Optional[str]] = lambda: None,
) -> Outcome:
    """``copy()``, tried again after a dropped connection (``Behaviour.RETRY``) up to
    ``retries`` times, waiting 0.5 s, 1 s, 2 s, ... and reconnecting in between; a stop
    asked meanwhile ends the wait.

    When the connection cannot be re-opened at all (the last reconnect failed too), the
    outcome is "fatal": the run stops, as it does for a full destination, rather than spend
    the same retries on every file left. ``unreachable`` is set then, so that the copies
    already under way in other threads stop at their first dropped connection, as they do
    when ``away()`` says why the store was found away meanwhile (by the commits). A reconnect
    refused for a setting to fix (a host key that changed) stops the pass at once. A
    connection that re-opens but drops again during this file fails this file alone."""
    attempt = 0
    reconnect_failed: Optional[OeleoError] = None
    while True:
        try:
            return copy()
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the run
            if behaviour_of(exc) is not Behaviour.RETRY:
                return outcome_of(exc, relpath, source_exists)
            if unreachable is not None and unreachable.is_set():
                return "fatal", f"{first_line(exc)} (the connection could not be re-opened)"
            gone = away()
            if gone is not None:
                if unreachable is not None:
                    unreachable.set()
                return "fatal", gone
            attempt += 1
            if attempt > retries:
                if reconnect_failed is not None:
                    if unreachable is not None:
                        unreachable.set()
                    # Counted as the commits' retries count them: the reconnects that failed.
                    gave_up = f"gave up after {counted(retries, 'reconnect')}"
                    return "fatal", f"{first_line(reconnect_failed)} ({gave_up})"
                return "error", f"{exc} (gave up after {attempt} attempts)"
            stopped, reconnect_failed = pause_and_reconnect(relpath, exc, attempt, retries, reconnect, stop)
            if stopped:
                return "stopped", None


def pause_and_reconnect(
    relpath: str,
    exc: BaseException,
    attempt: int,
    retries: int,
    reconnect: Callable[[], None],
    stop: Optional[threading.Event] = None,
) -> Tuple[bool, Optional[OeleoError]]:
    """The step between two tries after a dropped connection (a copy's, or a commit's): say
    so, wait 0.5 s, 1 s, 2 s, ... for ``attempt`` 1, 2, 3, ..., then reconnect. Returns
    (stopped: a stop ended the wait, the reconnect's failure or None). A reconnect refused
    for a setting to fix (a host key that changed) or by the books raises."""
    delay = BACKOFF_SECONDS * (2 ** (attempt - 1))
    log.warning(
        "%s: %s; reconnecting in %.1f s (retry %d of %d)",
        printable(relpath),
        exc,
        delay,
        attempt,
        retries,
    )
    if stop is not None:
        if stop.wait(delay):
            return True, None
    else:
        time.sleep(delay)
    try:
        reconnect()
    except OeleoError as again:
        if behaviour_of(again) in (Behaviour.CONFIG, Behaviour.BOOKS):
            raise
        log.warning("reconnect failed: %s", again)
        return False, again
    return False, None
