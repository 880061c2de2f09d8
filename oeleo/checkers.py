"""Checkers decide what a file's fingerprint is. ``ChecksumChecker`` hashes with hashlib.

The worker asks the checker for a fresh hash object and feeds it the bytes it copies, so a
copied file is read once. A developer may subclass ``Checker`` to add a validation step (a
FITS header check, say) by overriding ``validate``.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path
from typing import Callable, Dict, Optional, Protocol, Union

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
        """Return a reason to refuse this file, or ``None`` to copy it."""
        return None


class ChecksumChecker(Checker):
    """Compares files by a hashlib checksum (md5 unless told otherwise)."""

    def __init__(self, algorithm: str = "md5") -> None:
        hashlib.new(algorithm)  # fail early on a name hashlib does not know
        self.algorithm = algorithm

    def __repr__(self) -> str:
        return f"ChecksumChecker(algorithm={self.algorithm!r})"
