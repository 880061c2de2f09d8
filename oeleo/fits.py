"""A pure-Python reader of FITS and XISF headers: is the file whole, and what do its headers say.

FITS (the standard, version 4.0): a file is a sequence of HDUs, each a header of 2880-byte
blocks of 80-character ASCII cards ending with an ``END`` card, then a data unit whose length
the header gives (``|BITPIX|/8 * GCOUNT * (PCOUNT + NAXIS1 * ... * NAXISn)``, padded to whole
blocks). A file shorter than its headers say is *incomplete* (an instrument still writing it);
one whose headers break the rules is *bad*; one that does not start as FITS is *not FITS*. Only
the headers are read: a plain file's data units are skipped by their lengths, so the cost is a
few KiB per HDU whatever the file's size. A ``.fits.gz`` is read through the gzip stream to its
end, so that the trailer's CRC and length are checked too; a ``.fz`` (tile-compressed) is FITS.

XISF (version 1.0): ``XISF0100``, a little-endian 32-bit header length, 4 reserved bytes, the
XML header, and data blocks the header places with ``location="attachment:POSITION:SIZE"``;
every such block must lie inside the file.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import IO, Any, Dict, List, Optional, Protocol, Sequence, Union
from xml.etree import ElementTree

BLOCK = 2880
CARD = 80
CARDS_PER_BLOCK = BLOCK // CARD

FITS_SUFFIXES = (
    ".fits",
    ".fit",
    ".fts",
    ".ft",
    ".mt",
    ".imfits",
    ".imfit",
    ".uvfits",
    ".uvfit",
    ".pha",
    ".rmf",
    ".arf",
    ".rsp",
    ".pi",
)
DEFAULT_KEYWORDS = ("DATE-OBS", "OBJECT", "FILTER", "EXPTIME", "INSTRUME", "TELESCOP", "RA", "DEC")

SIMPLE = b"SIMPLE  ="  # how a FITS file starts
GZIP_MAGIC = b"\x1f\x8b"
XISF_SIGNATURE = b"XISF0100"
XISF_PREAMBLE = 16  # signature, header length, reserved
XISF_NAMESPACE = "{http://www.pixinsight.com/xisf}"
SKIP_PIECE = 1024 * 1024  # what a skip through a gzip stream decompresses at a time
NOT_ASCII = re.compile(rb"[^\x20-\x7e]")  # header cards hold printable ASCII only


class FitsProblem(ValueError):
    """Why a FITS or XISF file cannot be copied as one."""


class NotFits(FitsProblem):
    """The file does not start as its extension says (no ``SIMPLE`` card, no ``XISF0100``)."""


class BadHeader(FitsProblem):
    """The file starts as FITS or XISF but its header breaks the rules: it will not mend itself."""


class Truncated(FitsProblem):
    """The file is shorter than its headers say: still being written, most likely."""


@dataclass
class Inspection:
    """What the headers of a whole file say: its kind, its HDUs (or images) and the chosen keywords."""

    kind: str  # "fits", "fits.gz" or "xisf"
    units: int = 0  # HDUs of a FITS file, data blocks of an XISF file
    keywords: Dict[str, Any] = field(default_factory=dict)


def kind_of(name: str) -> Optional[str]:
    """``"fits"``, ``"fits.gz"`` or ``"xisf"`` for a file name with such an extension, else None."""
    lower = name.lower()
    if lower.endswith(".xisf"):
        return "xisf"
    if lower.endswith(".fz"):
        return "fits"
    if lower.endswith(".gz"):
        return "fits.gz" if lower[:-3].endswith(FITS_SUFFIXES) else None
    return "fits" if lower.endswith(FITS_SUFFIXES) else None


def inspect(path: Union[str, os.PathLike], keywords: Sequence[str] = DEFAULT_KEYWORDS) -> Inspection:
    """Check that the FITS or XISF file at ``path`` is whole and well formed, and read the
    ``keywords`` from its headers. Raises ``NotFits``, ``BadHeader`` or ``Truncated``."""
    kind = kind_of(os.fsdecode(os.fspath(path)))
    with open(path, "rb") as handle:
        if kind == "xisf":
            return _inspect_xisf(handle, os.fstat(handle.fileno()).st_size, keywords)
        if kind == "fits.gz":
            return _inspect_gzip(handle, keywords)
        return _inspect_fits(_PlainReader(handle), keywords, "fits")


# -- FITS ------------------------------------------------------------------------------------
class _Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


class _Reader(Protocol):
    """Where the HDUs come from: a plain file (data skipped by seeking) or a stream."""

    offset: int

    def read(self, n: int) -> bytes: ...

    def skip(self, n: int) -> int: ...

    def at_end(self) -> bool: ...

    def check_whole(self) -> None: ...


class _PlainReader:
    """Reads a file's headers and skips its data units by seeking, knowing the file's size."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.size = os.fstat(handle.fileno()).st_size
        self.offset = 0

    def read(self, n: int) -> bytes:
        data = self.handle.read(n)
        self.offset += len(data)
        return data

    def skip(self, n: int) -> int:
        """Skip ``n`` bytes; returns how many the file had."""
        had = max(0, min(n, self.size - self.offset))
        self.offset += had
        self.handle.seek(self.offset)
        return had

    def at_end(self) -> bool:
        return self.offset >= self.size

    def check_whole(self) -> None:
        if self.size % BLOCK:
            raise Truncated(f"its size ({self.size} bytes) is not a multiple of {BLOCK}")


class _StreamReader:
    """Reads a decompressed stream (gzip): a skip reads and drops, to the stream's end."""

    def __init__(self, stream: _Readable) -> None:
        self.stream = stream
        self.offset = 0
        self._ahead = b""

    def read(self, n: int) -> bytes:
        data = self._ahead + self.stream.read(n - len(self._ahead)) if self._ahead else self.stream.read(n)
        self._ahead = b""
        self.offset += len(data)
        return data

    def skip(self, n: int) -> int:
        had = min(n, len(self._ahead))
        self._ahead = self._ahead[had:]
        while had < n:
            piece = self.stream.read(min(SKIP_PIECE, n - had))
            if not piece:
                break
            had += len(piece)
        self.offset += had
        return had

    def at_end(self) -> bool:
        if not self._ahead:
            self._ahead = self.stream.read(1)
        return not self._ahead

    def check_whole(self) -> None:
        if self.offset % BLOCK:
            raise Truncated(f"its size ({self.offset} bytes, uncompressed) is not a multiple of {BLOCK}")


def _inspect_fits(reader: _Reader, wanted: Sequence[str], kind: str) -> Inspection:
    first = reader.read(BLOCK)
    if len(first) < len(SIMPLE) and SIMPLE.startswith(first):
        raise Truncated(f"it has only {len(first)} bytes, not yet a FITS header")  # just created
    if not first.startswith(SIMPLE):
        raise NotFits("it does not start with a FITS SIMPLE card")
    found = Inspection(kind)
    block: Optional[bytes] = first
    while True:
        where = "the primary header" if found.units == 0 else f"the header of extension {found.units}"
        cards = _read_header(reader, block, where)
        found.units += 1
        for name in wanted:
            if name not in found.keywords and name in cards:
                found.keywords[name] = cards[name]
        length = _data_length(cards, primary=found.units == 1, where=where)
        padded = -(-length // BLOCK) * BLOCK
        had = reader.skip(padded)
        if had < length:
            unit = "primary data unit" if found.units == 1 else f"data unit of extension {found.units - 1}"
            raise Truncated(f"its {unit} has {had} of the {length} bytes its header says")
        if had < padded or reader.at_end():
            break
        block = reader.read(BLOCK)
        if not block.startswith(b"XTENSION="):
            break  # what follows the last HDU is not an extension: FITS readers ignore it
    reader.check_whole()
    return found


def _read_header(reader: _Reader, block: Optional[bytes], where: str) -> Dict[str, Any]:
    """The cards of one header (keyword -> value, the first of each), read to its END card."""
    cards: Dict[str, Any] = {}
    number = 0
    while True:
        if block is None:
            block = reader.read(BLOCK)
        if len(block) < BLOCK:
            raise Truncated(f"{where} ends before its END card")
        bad = NOT_ASCII.search(block)
        if bad is not None:
            at = number + bad.start() // CARD + 1
            byte = block[bad.start()]
            raise BadHeader(f"{where} has a byte that is not printable ASCII (0x{byte:02x}) in card {at}")
        for start in range(0, BLOCK, CARD):
            number += 1
            card = block[start : start + CARD].decode("ascii")
            keyword = card[:8].rstrip()
            if keyword == "END":
                return cards
            if card[8:10] == "= " and keyword not in cards:
                cards[keyword] = _value(card[10:])
        block = None


def _value(text: str) -> Any:
    """A card's value: a string, a logical, an integer, a float, or the text as it is."""
    text = text.strip()
    if text.startswith("'"):
        found = re.match(r"'((?:[^']|'')*)'", text)
        return found.group(1).replace("''", "'").rstrip() if found else text
    text = text.split("/", 1)[0].strip()
    if text in ("T", "F"):
        return text == "T"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text.replace("D", "E"))
    except ValueError:
        return text


def _data_length(cards: Dict[str, Any], primary: bool, where: str) -> int:
    """Bytes of the data unit the header describes (before the padding to whole blocks)."""
    mandatory = ["BITPIX", "NAXIS"] if primary else ["XTENSION", "BITPIX", "NAXIS"]
    for name in mandatory:
        if name not in cards:
            raise BadHeader(f"{where} has no {name} card (a mandatory keyword)")
    bitpix, naxis = cards["BITPIX"], cards["NAXIS"]
    if bitpix not in (8, 16, 32, 64, -32, -64):
        raise BadHeader(f"{where}: BITPIX = {bitpix!r} is not 8, 16, 32, 64, -32 or -64")
    if not isinstance(naxis, int) or isinstance(naxis, bool) or not 0 <= naxis <= 999:
        raise BadHeader(f"{where}: NAXIS = {naxis!r} is not a whole number from 0 to 999")
    axes: List[int] = []
    for i in range(1, naxis + 1):
        value = cards.get(f"NAXIS{i}")
        if value is None:
            raise BadHeader(f"{where} has no NAXIS{i} card (a mandatory keyword)")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadHeader(f"{where}: NAXIS{i} = {value!r} is not a whole number")
        axes.append(value)
    pcount, gcount = cards.get("PCOUNT", 0), cards.get("GCOUNT", 1)
    if not primary:
        for name in ("PCOUNT", "GCOUNT"):
            if name not in cards:
                raise BadHeader(f"{where} has no {name} card (a mandatory keyword)")
    groups = primary and cards.get("GROUPS") is True and axes[:1] == [0]
    if naxis == 0 and not groups:
        return 0
    product = 1
    for n in axes[1:] if groups else axes:
        product *= n
    for name, value in (("PCOUNT", pcount), ("GCOUNT", gcount)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadHeader(f"{where}: {name} = {value!r} is not a whole number")
    return abs(bitpix) // 8 * gcount * (pcount + product)


def _inspect_gzip(handle: IO[bytes], wanted: Sequence[str]) -> Inspection:
    magic = handle.read(2)
    if len(magic) < 2 and GZIP_MAGIC.startswith(magic):
        raise Truncated(f"it has only {len(magic)} bytes, not yet a gzip header")
    if magic != GZIP_MAGIC:
        raise NotFits("it ends in .gz but is not gzip-compressed")
    handle.seek(0)
    stream = gzip.GzipFile(fileobj=handle, mode="rb")
    try:
        found = _inspect_fits(_StreamReader(stream), wanted, "fits.gz")
        while stream.read(SKIP_PIECE):  # to the end: gzip checks the trailer's CRC and length
            pass
    except EOFError:
        raise Truncated("its gzip stream ends before its end-of-stream marker") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise BadHeader(f"its gzip stream is damaged ({exc})") from None
    except Truncated as exc:
        # Inside a gzip stream that is whole, a short FITS file was compressed short: bad.
        try:
            while stream.read(SKIP_PIECE):
                pass
        except EOFError:
            raise Truncated("its gzip stream ends before its end-of-stream marker") from None
        except (gzip.BadGzipFile, zlib.error) as damaged:
            raise BadHeader(f"its gzip stream is damaged ({damaged})") from None
        raise BadHeader(f"the FITS file inside the gzip stream is short: {exc}") from None
    return found


# -- XISF ------------------------------------------------------------------------------------
def _inspect_xisf(handle: IO[bytes], size: int, wanted: Sequence[str]) -> Inspection:
    preamble = handle.read(XISF_PREAMBLE)
    if len(preamble) < len(XISF_SIGNATURE) and XISF_SIGNATURE.startswith(preamble):
        raise Truncated(f"it has only {len(preamble)} bytes, not yet an XISF signature")
    if not preamble.startswith(XISF_SIGNATURE):
        raise NotFits("it does not start with the XISF0100 signature")
    if len(preamble) < XISF_PREAMBLE:
        raise Truncated("it ends before its XISF header length")
    (length,) = struct.unpack("<I", preamble[8:12])
    if XISF_PREAMBLE + length > size:
        raise Truncated(f"it has {size - XISF_PREAMBLE} of the {length} bytes of its XML header")
    text = handle.read(length).rstrip(b"\x00")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise BadHeader(f"its XML header is not well formed ({exc})") from None
    if root.tag not in (f"{XISF_NAMESPACE}xisf", "xisf"):
        raise BadHeader(f"its XML header's root element is <{root.tag}>, not <xisf>")
    found = Inspection("xisf")
    for element in root.iter():
        location = element.get("location", "")
        if location.startswith("attachment:"):
            parts = location.split(":")
            try:
                position, length_ = int(parts[1]), int(parts[2])
            except (IndexError, ValueError):
                raise BadHeader(f"its XML header has a location that does not parse: {location!r}") from None
            found.units += 1
            if position + length_ > size:
                raise Truncated(
                    f"its data block at {position} of {length_} bytes ends past its end ({size} bytes)"
                )
        if element.tag in (f"{XISF_NAMESPACE}FITSKeyword", "FITSKeyword"):
            name = element.get("name", "").strip()
            if name in wanted and name not in found.keywords:
                found.keywords[name] = _value(element.get("value", ""))
    return found
