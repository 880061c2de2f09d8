"""The errors oeleo raises. The command turns them into one-line messages.

``ConfigError`` means the user must change a setting (exit status 2); the others are
failures of one file or one connection (exit status 1 when they end a run).
"""

from __future__ import annotations


class OeleoError(Exception):
    """Base class of every error oeleo raises on purpose."""


class ConfigError(OeleoError):
    """A setting, argument or path is wrong; the message names it."""


class BookkeeperError(OeleoError):
    """The bookkeeping database cannot be opened, read or written."""


class DatabaseBusyError(BookkeeperError):
    """Another oeleo process already works on this database."""


class ConnectorError(OeleoError):
    """A connector could not reach or use its store."""


class ConnectionLost(ConnectorError):
    """The connection dropped; the worker reconnects and retries the file."""


class TransferError(OeleoError):
    """One file could not be copied. The run goes on with the next file."""


class FileChangedError(TransferError):
    """The source changed while it was copied; it is left for the next run."""


class VerificationError(TransferError):
    """The copy's checksum differs from the source's."""


class UnsafePathError(TransferError):
    """A name would resolve outside the destination folder."""


class DiskFullError(TransferError):
    """The destination has no space left; the run stops."""


class Aborted(OeleoError):
    """The run was asked to stop (Ctrl-C, SIGTERM or a scheduler)."""
