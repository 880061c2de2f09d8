"""The errors oeleo raises, each with what the engine does with it.

Every error class says by its ``behaviour`` what happens: the file is retried, failed or left
for the next run, the run stops, or nothing can run before a person acts. Each ``Behaviour``
carries the exit status it gives the command; ``oeleo.cli.EXIT_STATUS`` is that table, and
README.md's "Exit status" list says the same (tests/test_docs.py holds them together).
"""

from __future__ import annotations

import errno
from enum import Enum
from typing import ClassVar


class Behaviour(Enum):
    """What the engine does with an error, and the command's exit status because of it."""

    RETRY = ("reconnect and try the file again with backoff, a bounded number of times", 1)
    FAIL_FILE = ("book the file as failed with the reason and go on; tried again next run", 1)
    LEAVE_FILE = ("leave the file for the next run; not a failure", 0)
    INCOMPLETE = ("leave the file for the next run: its checker says it is not whole yet; not a failure", 0)
    NOT_REPLACED = ("count the file as already there, not replaced (a store that never overwrites)", 0)
    STOP_RUN = ("stop the run: the next files would fail too; what was booked stays booked", 1)
    BOOKS = ("stop the run: the books cannot be opened or written; only booked files count", 2)
    CONFIG = ("nothing runs until a setting, an argument or a path is fixed", 2)
    INTERRUPT = ("abandon the current file cleanly and stop: Ctrl-C, SIGTERM or a scheduler", 130)

    def __init__(self, action: str, exit_status: int) -> None:
        self.action = action
        self.exit_status = exit_status


class OeleoError(Exception):
    """Base class of every error oeleo raises on purpose. By itself: this file failed."""

    behaviour: ClassVar[Behaviour] = Behaviour.FAIL_FILE


class ConfigError(OeleoError):
    """A setting, argument or path is wrong; the message names it."""

    behaviour = Behaviour.CONFIG


class DestinationUnreachable(ConfigError):
    """The destination could not be reached at the first connection of this process (no
    answer, refused, a name that does not resolve, not an SSH/S3 server): said as the setting
    to check, exit 2, for a single run; a scheduler (``oeleo schedule``, ``oeleo watch``)
    goes on and tries again at its next pass, as the network of a PC that just started may
    not be up yet. Once the destination has answered, a failure is ``ConnectionLost``."""


class BookkeeperError(OeleoError):
    """The bookkeeping database cannot be opened, read or written (a full disk under it)."""

    behaviour = Behaviour.BOOKS


class DatabaseBusyError(BookkeeperError):
    """Another oeleo process already works on this database."""


class ConnectorError(OeleoError):
    """A connector cannot use its store any more (for connectors to raise): the run stops."""

    behaviour = Behaviour.STOP_RUN


class ConnectionLost(ConnectorError):
    """The connection dropped; the worker reconnects and retries the file. One that cannot be
    re-opened at all ends the run as a failure (a first connection that fails is a ConfigError)."""

    behaviour = Behaviour.RETRY


class DiskFullError(ConnectorError):
    """The destination has no space left; the run stops."""

    behaviour = Behaviour.STOP_RUN


class TransferError(OeleoError):
    """One file could not be copied. The run goes on with the next file."""

    behaviour = Behaviour.FAIL_FILE


class FileChangedError(TransferError):
    """The source changed while it was copied; it is left for the next run."""

    behaviour = Behaviour.LEAVE_FILE


class FileIncomplete(TransferError):
    """A checker says the file is not whole yet (a FITS file shorter than its headers say):
    not copied, counted as "incomplete, left for the next run", copied once it is whole."""

    behaviour = Behaviour.INCOMPLETE


class AlreadyThere(TransferError):
    """The store already holds another version of this file and never replaces one (Arcsecond):
    counted as "already there, not replaced", booked as seen, not tried again until it changes."""

    behaviour = Behaviour.NOT_REPLACED


class VerificationError(TransferError):
    """The copy's checksum differs from the source's."""


class FoundWrongInPlace(VerificationError):
    """A copy found wrong once under its real name (verified only after its commit, the store
    gave no hash of it before; or a store that ignored the checksum sent with it): the file
    failed, and its row says to copy it again (code 0, unless locked), so that the next run
    sends it even when the source did not change since the copy before."""


class UnsafePathError(TransferError):
    """A name would resolve outside the destination folder."""


class Aborted(OeleoError):
    """The run was asked to stop (Ctrl-C, SIGTERM or a scheduler)."""

    behaviour = Behaviour.INTERRUPT


def behaviour_of(exc: BaseException) -> Behaviour:
    """What the engine does with any exception: an oeleo error says so itself; a full disk
    (``ENOSPC``) stops the run, Ctrl-C stops cleanly, anything else fails the file."""
    if isinstance(exc, OeleoError):
        return exc.behaviour
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return Behaviour.STOP_RUN
    if isinstance(exc, KeyboardInterrupt):
        return Behaviour.INTERRUPT
    return Behaviour.FAIL_FILE


def first_line(exc: BaseException) -> str:
    """The first line of what ``exc`` says (its class's name when it says nothing)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def named_setting(variable: str, value: object, where: str = "") -> str:
    """A setting as a refusal names it: ``OELEO_CHECKER='nope' (from --checker)``; ``where``
    is ``Settings.where()``'s answer, empty when unknown."""
    return f"{variable}={value!r}" + (f" ({where})" if where else "")
