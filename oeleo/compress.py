"""gzip on the way (``OELEO_COMPRESS=gzip``): FITS and XISF files are compressed while they
are sent and stored as ``NAME.gz``; the source folder is never touched.

The output depends only on the bytes (and this zlib's version and level): the gzip header
carries no file name and no time (MTIME 0, OS 255 "unknown"), so a re-run over an unchanged
file produces the same bytes, and ``oeleo check`` can compress the local file again and
compare hashes without downloading anything. The books keep the source's checksum and the
compressed name; verification compares what the store holds with the compressed bytes sent.
"""

from __future__ import annotations

import struct
import zlib
from typing import Iterable, Iterator, List, Tuple

from oeleo.checkers import Hasher, new_hash

GZIP = "gzip"
SUFFIX = ".gz"
# What is compressed: FITS (the list Oort accepts) and XISF.
COMPRESSIBLE = (
    ".fits", ".fit", ".fts", ".ft", ".mt", ".imfits", ".imfit", ".uvfits", ".uvfit",
    ".pha", ".rmf", ".arf", ".rsp", ".pi", ".xisf",
)  # fmt: skip
# Already compressed: sent as they are.
COMPRESSED = (".gz", ".bz2", ".zip", ".fz", ".xz", ".zst", ".7z")
LEVEL = 6  # zlib's default: gzip -6
# ID1 ID2, CM=deflate, FLG=0 (no name, no comment), MTIME=0, XFL=0, OS=255 (unknown)
HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
OUTPUT_CHUNK = 1024 * 1024


def compresses(relpath: str, compress: str) -> bool:
    """Whether ``relpath`` is sent compressed under ``compress`` (``"gzip"`` or ``""``)."""
    if compress != GZIP:
        return False
    name = relpath.rsplit("/", 1)[-1].lower()
    if name.endswith(COMPRESSED):
        return False
    return name.endswith(COMPRESSIBLE)


def stored_name(relpath: str, compress: str) -> str:
    """The name a file gets at the destination: ``a/b.fits`` -> ``a/b.fits.gz`` when it is
    compressed, else ``relpath`` itself."""
    return relpath + SUFFIX if compresses(relpath, compress) else relpath


class GzipStream:
    """The gzip form of ``chunks``, chunk by chunk, with a hash of the compressed bytes
    (``check``, the one the store's copy is compared with) and their count (``size``).

    Memory stays bounded: each source chunk is compressed as it comes, and what zlib gives
    back is passed on in pieces of about ``OUTPUT_CHUNK`` bytes.
    """

    def __init__(self, chunks: Iterable[bytes], check_algorithm: str, level: int = LEVEL) -> None:
        self.chunks = chunks
        self.check: Hasher = new_hash(check_algorithm)
        self.size = 0
        self.level = level

    @property
    def check_digest(self) -> str:
        return self.check.hexdigest()

    def __iter__(self) -> Iterator[bytes]:
        deflate = zlib.compressobj(self.level, zlib.DEFLATED, -zlib.MAX_WBITS)
        crc = 0
        length = 0
        pending: List[bytes] = [HEADER]
        waiting = len(HEADER)
        for chunk in self.chunks:
            crc = zlib.crc32(chunk, crc)
            length += len(chunk)
            out = deflate.compress(chunk)
            if out:
                pending.append(out)
                waiting += len(out)
            if waiting >= OUTPUT_CHUNK:
                yield self._count(b"".join(pending))
                pending, waiting = [], 0
        pending.append(deflate.flush())
        pending.append(struct.pack("<II", crc & 0xFFFFFFFF, length & 0xFFFFFFFF))
        yield self._count(b"".join(pending))

    def _count(self, data: bytes) -> bytes:
        self.check.update(data)
        self.size += len(data)
        return data


def gzip_digest(chunks: Iterable[bytes], algorithm: str) -> Tuple[str, int]:
    """Hash and size of the gzip form of ``chunks`` (what ``oeleo check`` compares with)."""
    stream = GzipStream(chunks, algorithm)
    for _ in stream:
        pass
    return stream.check_digest, stream.size


def file_chunks(path: str, chunk_size: int = OUTPUT_CHUNK) -> Iterator[bytes]:
    """A local file's bytes, chunk by chunk."""
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(chunk_size)
            if not chunk:
                return
            yield chunk


__all__ = ["GZIP", "COMPRESSIBLE", "COMPRESSED", "GzipStream", "compresses", "stored_name", "gzip_digest"]
