"""Checkers decide what a file's fingerprint is. ``ChecksumChecker`` hashes with hashlib.

The worker asks the checker for a fresh hash object and feeds it the bytes it copies, so a
copied file is read once. A developer may subclass ``Checker`` to add a validation step by
overriding ``validate``, as ``FitsChecker`` does: it reads the headers of FITS and XISF files
before the copy (a few KiB: the data units are skipped by the lengths the headers give) and
keeps the chosen header keywords for the books (``take_metadata``).
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
from oeleo.errors import ConfigError, FileIncomplete
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
        """What ``validate`` found worth keeping in the books for this file (once), or None."""
        return None


class ChecksumChecker(Checker):
    """Compares files by a hashlib checksum (md5 unless told otherwise)."""

    def __init__(self, algorithm: str = "md5") -> None:
        hashlib.new(algorithm)  # fail early on a name hashlib does not know
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
        if fits.kind_of(path.name) is None:
            return None
        try:
            found = fits.inspect(path, self.keywords)
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

    def take_metadata(self, path: Path) -> Optional[Dict[str, Any]]:
        with self._lock:
            return self._found.pop(os.fspath(path), None)


CHECKERS = {"checksum": ChecksumChecker, "fits": FitsChecker}


def checker_from_settings(settings: Any) -> Checker:
    """The checker ``OELEO_CHECKER`` names: ``checksum``, ``fits``, or ``pkg.mod:Class`` (a
    ``Checker`` subclass, built by its ``from_settings(settings)`` if it has one, else with
    the ``OELEO_CHECKSUM`` algorithm)."""
    name = settings.checker.strip()
    cls: Any = CHECKERS.get(name.lower())
    if cls is None:
        module_name, _, class_name = name.partition(":")
        if not (module_name and class_name):
            raise ConfigError(f"OELEO_CHECKER={name}: expected checksum, fits, or pkg.mod:Class")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"OELEO_CHECKER={name}: cannot import it ({exc})") from None
        if not (isinstance(cls, type) and issubclass(cls, Checker)):
            raise ConfigError(f"OELEO_CHECKER={name}: not a subclass of oeleo.checkers.Checker")
    if hasattr(cls, "from_settings"):
        return cls.from_settings(settings)
    if issubclass(cls, ChecksumChecker):
        return cls(settings.checksum)
    return cls()
