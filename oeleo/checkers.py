"""Checkers decide what a file's fingerprint is. ``ChecksumChecker`` hashes with hashlib.

The worker asks the checker for a fresh hash object and feeds it the bytes it copies, so a
copied file is read once. A developer may subclass ``Checker`` to add a validation step: by
overriding ``validate`` (asked before the copy, with the file's path), or, to validate the
very chunks the copy reads, ``stream_check`` (an object fed each chunk and asked at the end,
before the copy is committed), as ``FitsChecker`` does for FITS and XISF files. What a check
keeps for the books (``FitsChecker``: header keywords) is handed over by ``take_metadata``.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import threading
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Protocol, Sequence, Union

from oeleo import fits
from oeleo.errors import ConfigError, FileIncomplete, TransferError, named_setting
from oeleo.names import printable

log = logging.getLogger("oeleo")

CHUNK_SIZE = 1024 * 1024
FIRST_READ = 64 * 1024


class Hasher(Protocol):
    """What oeleo asks of a hash object: hashlib's, or ``Crc32``."""

    @property
    def name(self) -> str: ...

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


class Crc32:
    """CRC-32 with hashlib's interface. Not a fingerprint for the books: a fast check that a
    copy read back equals what was written (it catches every burst error up to 32 bits, and
    other damage with odds of 1 in 4 billion; zlib computes it about 8x faster than md5)."""

    name = "crc32"

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: Union[bytes, bytearray, memoryview]) -> None:
        self._value = zlib.crc32(data, self._value)

    def hexdigest(self) -> str:
        return f"{self._value:08x}"


def new_hash(algorithm: str) -> Hasher:
    """A hash object for a hashlib name, or for ``crc32``."""
    if algorithm == "crc32":
        return Crc32()
    return hashlib.new(algorithm)


def hash_file(
    path: Union[str, os.PathLike],
    algorithm: str = "md5",
    chunk_size: int = CHUNK_SIZE,
    progress: Optional[Callable[[int], None]] = None,
) -> str:
    """Hex digest of a local file, read in chunks; ``progress`` gets the bytes of each one."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        return hash_fd(fd, algorithm, chunk_size=chunk_size, progress=progress)
    finally:
        os.close(fd)


def hash_fd(
    fd: int,
    algorithm: str = "md5",
    size: Optional[int] = None,
    chunk_size: int = CHUNK_SIZE,
    progress: Optional[Callable[[int], None]] = None,
) -> str:
    """Hex digest of what an open file holds from where it stands: to its end, or the next
    ``size`` bytes (fewer if it ends before)."""
    digest = new_hash(algorithm)
    left = size
    # A small first read: most instrument files fit, and a whole chunk's buffer costs more
    # than reading them. Then whole chunks.
    want = FIRST_READ
    while left is None or left > 0:
        data = os.read(fd, want if left is None else min(left, want))
        if not data:
            break
        digest.update(data)
        if left is not None:
            left -= len(data)
        if progress is not None:
            progress(len(data))
        want = chunk_size
    return digest.hexdigest()


class StreamCheck(Protocol):
    """Validates one file from the chunks its copy reads: ``update`` gets each, in order, in
    the reading thread; ``finish`` is asked after the last one, before the copy is committed.

    ``finish`` returns what to keep in the books for the file (or None), or raises
    ``oeleo.errors.FileIncomplete`` (the copy is aborted and the file left for the next run)
    or another ``TransferError`` (the copy is aborted and the file fails with that reason).
    ``update`` may raise ``FileIncomplete`` too, once it is certain: nothing more is sent.
    """

    def update(self, chunk: bytes, /) -> None: ...

    def finish(self) -> Optional[Dict[str, Any]]: ...


class Checker:
    """What the worker needs from a checker: an algorithm name and a way to hash a file."""

    algorithm: str = "md5"

    def new_hash(self) -> Hasher:
        return hashlib.new(self.algorithm)

    def check(self, f: Path, connector: object = None, **kwargs: object) -> Dict[str, str]:
        """Fingerprint of a local file, as ``{"checksum": hex}`` (the oeleo 0.7 call)."""
        return {"checksum": hash_file(Path(f), self.algorithm)}

    def validate(self, path: Path) -> Optional[str]:
        """Return a reason to refuse this file, or ``None`` to copy it; raise
        ``oeleo.errors.FileIncomplete`` to leave a file that is not whole yet for the next run."""
        return None

    def take_metadata(self, path: Path) -> Optional[Dict[str, Any]]:
        """What ``validate`` (or a ``stream_check``'s ``finish``) found worth keeping in the
        books for this file (once), or None."""
        return None

    def stream_check(self, path: Path, size: int) -> Optional[StreamCheck]:
        """A check of this file fed the chunks its copy reads (``size``: its bytes when the
        copy opened it), or None when there is nothing to check. A checker that overrides
        this is not asked ``validate`` by the worker (its stream check is the validation),
        unless a subclass overrides ``validate`` again (``streams``)."""
        return None


def streams(checker: Checker) -> bool:
    """Does ``checker`` validate while the copy reads (``stream_check``), not before it?

    Not when a subclass overrides ``validate`` below the class that gave the stream check (a
    ``FitsChecker`` subclass adding a rule of its own): its ``validate`` is then asked before
    the copy, as a checker of oeleo 0.7's shape is."""
    cls = type(checker)
    if cls.stream_check is Checker.stream_check:
        return False

    def owner(name: str) -> type:
        return next(k for k in cls.__mro__ if name in vars(k))

    validate, stream = owner("validate"), owner("stream_check")
    return validate is stream or not issubclass(validate, stream)


class ChecksumChecker(Checker):
    """Compares files by a hashlib checksum (md5 unless told otherwise)."""

    def __init__(self, algorithm: str = "md5") -> None:
        hashlib.new(algorithm)  # fail early on a name hashlib does not know
        if algorithm.lower().startswith("shake_"):
            raise ValueError(f"{algorithm}: its digests have no length of their own; use md5 or sha256")
        self.algorithm = algorithm

    def __repr__(self) -> str:
        return f"ChecksumChecker(algorithm={self.algorithm!r})"


class FitsChecker(ChecksumChecker):
    """A checksum checker that also refuses FITS and XISF files that are not whole yet.

    A file with a FITS or XISF extension (``oeleo.fits.FITS_SUFFIXES``, also gzipped, ``.fz``,
    ``.xisf``) shorter than its headers say is incomplete: left for the next run, copied once
    whole. A bad header is refused (the file fails); a file that is not FITS at all is refused
    when ``strict``, else copied as a plain file with a warning. Other files are copied as the
    checksum checker copies them. ``keywords`` of the headers go to the books.

    The worker checks while the copy reads the file (``stream_check``): a file is read once,
    and one that turns out incomplete or bad is aborted before its copy is committed.
    ``validate`` does the same check before a copy, reading the headers (a few KiB per HDU).
    """

    def __init__(
        self, algorithm: str = "md5", keywords: Sequence[str] = fits.DEFAULT_KEYWORDS, strict: bool = True
    ) -> None:
        super().__init__(algorithm)
        self.keywords = tuple(keywords)
        self.strict = strict
        self._found: Dict[str, Dict[str, Any]] = {}  # path -> keywords, until booked
        self._lock = threading.Lock()  # files are validated in copying threads

    def __repr__(self) -> str:
        return (
            f"FitsChecker(algorithm={self.algorithm!r}, keywords={self.keywords!r}, strict={self.strict!r})"
        )

    @classmethod
    def from_settings(cls, settings: Any) -> FitsChecker:
        """``OELEO_CHECKSUM``, ``OELEO_FITS_KEYWORDS`` and ``OELEO_FITS_STRICT``."""
        keywords = [k.strip().upper() for k in settings.fits_keywords.split(",") if k.strip()]
        return cls(settings.checksum, keywords, settings.fits_strict)

    def validate(self, path: Path) -> Optional[str]:
        """The check before a copy, reading the file's headers (the worker uses ``stream_check``)."""
        if fits.kind_of(path.name) is None:
            return None
        return self._judge(path, lambda: fits.inspect(path, self.keywords))

    def stream_check(self, path: Path, size: int) -> Optional[StreamCheck]:
        kind = fits.kind_of(path.name)
        if kind is None:
            return None
        return _FitsStreamCheck(self, path, fits.inspector(kind, size, self.keywords))

    def take_metadata(self, path: Path) -> Optional[Dict[str, Any]]:
        with self._lock:
            return self._found.pop(os.fspath(path), None)

    def _judge(self, path: Path, inspect: Callable[[], fits.Inspection]) -> Optional[str]:
        """What ``inspect()`` says of the file at ``path``: None to copy it (its keywords kept
        for ``take_metadata``), a reason to refuse it; ``FileIncomplete`` if it is not whole."""
        try:
            found = inspect()
        except fits.Truncated as exc:
            raise FileIncomplete(str(exc)) from None
        except fits.NotFits as exc:
            if self.strict:
                return f"not a FITS/XISF file despite its extension: {exc} (OELEO_FITS_STRICT is on)"
            log.warning(
                "%s: not a FITS/XISF file despite its extension (%s); copied as a plain file "
                "(OELEO_FITS_STRICT is off)",
                printable(path.name),
                exc,
            )
            return None
        except fits.BadHeader as exc:
            return f"bad FITS/XISF header: {exc}"
        with self._lock:
            self._found[os.fspath(path)] = found.keywords
        return None


class _FitsStreamCheck:
    """``FitsChecker``'s check of one file while its copy reads it (see ``StreamCheck``)."""

    def __init__(self, checker: FitsChecker, path: Path, inspector: fits.Inspector) -> None:
        self.checker = checker
        self.path = path
        self.inspector = inspector
        self.problem: Optional[fits.FitsProblem] = None  # what the bytes so far said, for finish()

    def update(self, chunk: bytes) -> None:
        if self.problem is not None:
            return
        try:
            self.inspector.feed(chunk)
        except fits.Truncated as exc:
            raise FileIncomplete(str(exc)) from None  # certain from the size: nothing more is sent
        except fits.FitsProblem as exc:
            self.problem = exc  # said at the end: a file that is not FITS may be copied anyway

    def finish(self) -> Optional[Dict[str, Any]]:
        def inspection() -> fits.Inspection:
            if self.problem is not None:
                raise self.problem
            return self.inspector.close()

        checker = self.checker
        reason = checker._judge(self.path, inspection)
        if reason:
            raise TransferError(f"refused by {type(checker).__name__}: {reason}")
        with checker._lock:
            return checker._found.get(os.fspath(self.path))


CHECKERS = {"checksum": ChecksumChecker, "fits": FitsChecker}


def checker_from_settings(settings: Any) -> Checker:
    """The checker ``OELEO_CHECKER`` names: ``checksum``, ``fits``, or ``pkg.mod:Class`` (a
    ``Checker`` subclass, built by its ``from_settings(settings)`` if it has one, else with
    the ``OELEO_CHECKSUM`` algorithm)."""
    name = settings.checker.strip()
    where = getattr(settings, "where", None)  # a Settings says where the name came from
    named = named_setting("OELEO_CHECKER", name, where("checker") if where else "")
    cls: Any = CHECKERS.get(name.lower())
    if cls is None:
        module_name, _, class_name = name.partition(":")
        if not (module_name and class_name):
            raise ConfigError(f"{named}: expected checksum, fits, or pkg.mod:Class")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{named}: cannot import it ({exc})") from None
        if not (isinstance(cls, type) and issubclass(cls, Checker)):
            raise ConfigError(f"{named}: not a subclass of oeleo.checkers.Checker")
    if hasattr(cls, "from_settings"):
        return cls.from_settings(settings)
    if issubclass(cls, ChecksumChecker):
        return cls(settings.checksum)
    return cls()
