"""What the connector contract passes around, and how it names files: a stored file's entry
(``FileEntry``), what a store can do (``Features``), what an upload says it holds (``Stored``),
what a copy gave (``PutResult``), why a file of a batch failed (``Failed``), safe relative names
and the temporary names of uploads, and the filters of a flat listing. Split from
``oeleo.connectors.base`` (which gives every name here too, as before)."""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import posixpath
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, FrozenSet, Mapping, NamedTuple, Optional, Sequence, Tuple

from oeleo.errors import (
    AlreadyThere,
    Behaviour,
    DiskFullError,
    FoundWrongInPlace,
    OeleoError,
    UnsafePathError,
    behaviour_of,
)
from oeleo.names import without_name as _without_name  # noqa: F401 - a name of this module, as before

if TYPE_CHECKING:
    from oeleo.connectors.base import Upload

TEMP_SUFFIX = ".oeleo-part"
NOT_TRIED = "not tried: "  # the reason of a commit not sent, after its batch met a store away or a refusal
STOPPED_BEFORE_COMMIT = "stopped before its commit; left for the next run"


@dataclass(frozen=True)
class Skipped:
    """Something a listing saw and did not list as a file, with the reason people read.

    ``failed``: a folder or file that could not be read (the run counts it as failed and
    exits 1); otherwise a notice (a symbolic link that is not followed), counted as skipped.
    ``book``: a file whose reason goes into its row, as a failed copy's does (``oeleo status``
    names it among the files with errors).
    """

    relpath: str
    reason: str
    failed: bool = False
    book: bool = False


SkipCallback = Callable[[Skipped], None]


class FileEntry(NamedTuple):
    """One file as a store lists it: POSIX path relative to the base, size, mtime (ns).

    A named tuple, not a dataclass: a listing holds one per file, 100,000 of them at times.
    """

    relpath: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Features:
    """What a store can do, declared once per connector (and narrowed in ``connect()`` when
    the server turns out to lack something). The engine picks its strategy from these.

    - ``hashes``: algorithms the store computes or returns for a stored file (verification
      without reading the copy back through this process).
    - ``readback_hash``: with no such hash, the cheap algorithm a read-back is compared with
      (``crc32``); ``None``: the books' algorithm.
    - ``staged_uploads``: an upload stays invisible until ``commit()`` (a temporary name, a
      multipart upload); ``False``: a single request is the commit (a small PUT), so the
      source is checked before it and the bytes are sent only then.
    - ``overwrite``: the store may replace a file it holds (Arcsecond may not).
    - ``keeps_mtime``: the store keeps the source's modification time.
    - ``batch_sync``: commits are made durable per batch (``sync_data``/``sync_names``).
    - ``max_uploads``: uploads that may run at once (more than 1: several copying threads).
    - ``checksum_downloads``: ``checksum()`` downloads the whole copy (no hash the store keeps
      can be read): ``oeleo check`` compares by the listed size and the books' checksum, and
      only ``--deep`` downloads.
    - ``compares_writes``: the upload reads each chunk back as soon as it is written and
      compares it byte for byte with the chunk it was handed (the one the engine hashed), and
      its ``finish()`` says so (``Stored.compared``): the copy is verified without hashing it
      (a local folder: a comparison costs far less than any hash). An upload that does not
      say so is read back and hashed instead.
    - ``waits_per_file``: each small file waits for the store's answers (a request and an
      answer per file over a link with latency): with ``OELEO_WORKERS`` not set, small files
      are copied ``max_uploads`` at a time too, as the threads overlap their waits (on a fast
      link they would only contend for Python's GIL, and go one at a time).
    - ``confirms_commit``: a ``commit()`` that returns has put the copy under its real name
      (a rename's status, the store's answer to the request that made it visible): the engine
      takes its word. ``False`` (a connector of your own, until you say so): the engine asks
      ``stat()`` for each committed file and compares its size before booking it, so that a
      commit that did nothing is a failure, never a copy booked that is not there.
    """

    hashes: FrozenSet[str] = frozenset()
    readback_hash: Optional[str] = None
    staged_uploads: bool = True
    overwrite: bool = True
    keeps_mtime: bool = False
    batch_sync: bool = False
    max_uploads: int = 1
    checksum_downloads: bool = False
    compares_writes: bool = False
    waits_per_file: bool = False
    confirms_commit: bool = False


@dataclass(frozen=True)
class Stored:
    """What the store says it holds after an upload's bytes went out: size and hashes
    (algorithm -> hex digest; empty when it computed none); ``compared``: every byte was read
    back as written and found equal to the bytes sent (``Features.compares_writes``)."""

    size: int
    hashes: Mapping[str, str] = field(default_factory=dict)
    compared: bool = False


@dataclass(frozen=True)
class PutResult:
    """What ``put`` wrote: the name in the store, its size, the source's checksum and the
    source's mtime as it was while read (what the bookkeeper's fast path compares later)."""

    relpath: str
    external_name: str
    size: int
    checksum: str
    algorithm: str
    verified: bool
    mtime_ns: int = 0
    staging: str = ""  # the temporary name while staged; equals relpath once committed
    upload: Optional[Upload] = None  # committed or aborted by the engine; None once committed
    verify_after_commit: bool = False  # the store received the bytes only with the commit
    # (algorithm, hex digest) of the bytes the store holds, when they are not the source's
    # (a compressed copy): what a verification after the commit compares with.
    stored_hash: Optional[Tuple[str, str]] = None
    stored_size: int = -1  # the bytes the store holds (a compressed copy's); -1: not known


# Only on Windows is a backslash a separator (turned into "/"); on POSIX it is a character of
# the name (``back\\slash.csv`` is one file there, and is copied as one).
_TURN_BACKSLASHES = os.name == "nt"


def safe_relpath(relpath: str) -> str:
    """Normalise a relative name to POSIX form and refuse one that leaves the base folder.

    On Windows ``a\\b.csv`` becomes ``a/b.csv``; ``../x``, ``/etc/x`` and ``C:x`` raise
    ``UnsafePathError``.
    """
    text = relpath if type(relpath) is str else str(relpath)
    # Most names are already plain: no separator to convert, colon, empty, "." or ".." part
    # (checked cheaply here: this runs several times per copied file). Others take the long way.
    if (
        text
        and text[0] != "/"
        and text[-1] not in "/."
        and not (_TURN_BACKSLASHES and "\\" in text)
        and ":" not in text
        and "//" not in text
        and "./" not in text
    ):
        return text
    if _TURN_BACKSLASHES:
        text = text.replace("\\", "/")
    if not text or text.startswith("/") or (text[1:2] == ":" and text[0].isalpha()):
        raise UnsafePathError(f"{relpath!r} is not a relative file name")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise UnsafePathError(f"{relpath!r} would resolve outside the destination folder")
    if os.name == "nt" and any(":" in p for p in parts):
        raise UnsafePathError(f"{relpath!r}: a ':' in a name would write an NTFS alternate stream")
    return "/".join(parts)


def temp_relpath(relpath: str, tag: str = "") -> str:
    """The hidden name a file is written under before it is renamed into place.

    The name is fixed for a given file, so a run killed half way leaves at most one stale
    temporary file, which the next run overwrites. ``tag`` says whose it is (the worker
    gives a short digest of its origin: ``.a.csv.1f3a9c.oeleo-part``), so that after a
    killed run its own leftovers can be removed without touching another PC's uploads.
    """
    head, name = posixpath.split(relpath)
    # Name limits are 255 bytes (UTF-8 on POSIX) or 255 UTF-16 units (Windows); a long
    # non-ASCII name plus the prefix and suffix would overflow them.
    # "surrogatepass": a name that is not UTF-8 has surrogate escapes, counted as bytes too.
    encoded = name.encode("utf-8", "surrogatepass")
    if len(encoded) > 200:
        name = hashlib.sha1(encoded).hexdigest()
    return posixpath.join(head, f".{name}.{tag}{TEMP_SUFFIX}" if tag else f".{name}{TEMP_SUFFIX}")


def upload_tag(origin: str) -> str:
    """The tag of the temporary names written for ``origin`` (see ``temp_relpath``)."""
    return hashlib.sha1(origin.encode("utf-8", "surrogatepass")).hexdigest()[:6]


def _disk_full(exc: OSError, relpath: str) -> Exception:
    """``DiskFullError`` for a full destination, the error itself otherwise."""
    if exc.errno == errno.ENOSPC:
        return DiskFullError(f"no space left on the destination while writing {relpath}")
    return exc


@dataclass(frozen=True)
class Failed:
    """A file of a batch that could not be committed: why, in words for people, whether the
    run must stop (a full destination), and the error itself."""

    reason: str
    fatal: bool
    error: BaseException

    @property
    def kind(self) -> str:
        """How the worker books it: ``fatal`` (the run stops), ``config`` (refused for a
        setting: the pass stops with the error, exit 2), ``not_replaced`` (the store keeps
        another version and never overwrites: not a failure), ``wrong_in_place`` (a failure
        whose copy under the real name is not the source's bytes: copied again next run,
        changed or not), ``stopped`` (not committed, a stop being asked: left for the next
        run) or ``error``."""
        if self.fatal:
            return "fatal"
        if behaviour_of(self.error) is Behaviour.CONFIG:
            return "config"
        if isinstance(self.error, AlreadyThere):
            return "not_replaced"
        if isinstance(self.error, FoundWrongInPlace):
            return "wrong_in_place"
        if behaviour_of(self.error) is Behaviour.INTERRUPT:  # not committed, for a stop
            return "stopped"
        return "error"


def describe_error(exc: BaseException, what: str) -> str:
    """``what (reason: file)`` in one line; ``reason: file`` when ``what`` is empty."""
    if isinstance(exc, OSError):
        # A rename names its target second: that one (the real name) is what a person looks at.
        name = exc.filename2 or exc.filename
        where = f": {name}" if name else ""
        text = f"{exc.strerror or exc}{where}"
    else:
        text = str(exc)
    return f"{what} ({text})" if what else text


class _Unreachable(OeleoError):
    """A commit's retries found the store away each time: the run stops (``Failed.fatal``)."""


def _failed(exc: BaseException, what: str) -> Failed:
    """Why a file of a batch failed; fatal where the error stops the run (a full destination,
    a ``ConnectorError``, a store found away for good: the next files would fail too)."""
    fatal = behaviour_of(exc) is Behaviour.STOP_RUN or isinstance(exc, _Unreachable)
    return Failed(describe_error(exc, what), fatal, exc)


def _lowered(stored: Stored) -> Stored:
    """The store's hashes with lower-case names and hex digests, as the engine's are."""
    hashes = {str(name).lower(): str(value).lower() for name, value in stored.hashes.items()}
    return stored if hashes == stored.hashes else replace(stored, hashes=hashes)


def matches(relpath: str, patterns: Sequence[str]) -> bool:
    """Glob match: a pattern with a ``/`` is matched against the path, else the name."""
    name = posixpath.basename(relpath)
    for pattern in patterns:
        target = relpath if "/" in pattern else name
        if fnmatch.fnmatch(target, pattern):
            return True
    return False


def has_extension(name: str, extensions: Sequence[str]) -> bool:
    if not extensions:
        return True
    lowered = name.lower()
    return any(lowered.endswith(ext.lower()) for ext in extensions)


def kept_by_filters(
    relpath: str, extensions: Sequence[str], include: Sequence[str], exclude: Sequence[str]
) -> bool:
    """Whether the filters keep a file of a flat listing (an object store's keys) as a folder
    walk keeps it: ``exclude`` also drops a file under a folder it names, which a walk prunes."""
    folders = relpath.split("/")[:-1]
    if not has_extension(relpath.rsplit("/", 1)[-1], extensions):
        return False
    if include and not matches(relpath, include):
        return False
    if not exclude:
        return True
    paths = [relpath] + ["/".join(folders[: index + 1]) for index in range(len(folders))]
    return not any(matches(path, exclude) for path in paths)
