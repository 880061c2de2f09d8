"""A pure-Python reader of FITS and XISF headers: is the file whole, and what do its headers say.

FITS (the standard, version 4.0): a file is a sequence of HDUs, each a header of 2880-byte
blocks of 80-character ASCII cards ending with an ``END`` card, then a data unit whose length
the header gives (``|BITPIX|/8 * GCOUNT * (PCOUNT + NAXIS1 * ... * NAXISn)``, padded to whole
blocks). A file shorter than its headers say is *incomplete* (an instrument still writing it);
one whose headers break the rules is *bad*; one that does not start as FITS is *not FITS*. A
``.fits.gz`` is read through the gzip stream to its end, so that the trailer's CRC and length
are checked too; a ``.fz`` (tile-compressed) is FITS.

XISF (version 1.0): ``XISF0100``, a little-endian 32-bit header length, 4 reserved bytes, the
XML header, and data blocks the header places with ``location="attachment:POSITION:SIZE"``;
every such block must lie inside the file.

The reading is push-based (``inspector``): an inspector is fed a file's bytes in order, in
chunks of any size (the very chunks a copy reads, so that a file is read once), and says at
the end what the file is. Told the file's size first, it knows a short data unit as soon as its
header is in, before the rest streams by. ``inspect`` feeds one from a file, seeking over the
data units of a plain file (they are not needed): a few KiB per HDU, whatever the file's size.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple, Union
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
XTENSION = b"XTENSION="  # how an extension's header starts
GZIP_MAGIC = b"\x1f\x8b"
GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib reads the gzip format and checks its trailer (CRC-32, ISIZE)
XISF_SIGNATURE = b"XISF0100"
XISF_PREAMBLE = 16  # signature, header length, reserved
XISF_NAMESPACE = "{http://www.pixinsight.com/xisf}"
SKIP_PIECE = 1024 * 1024  # what a gzip stream is decompressed to at most at a time (bounded memory)
NOT_ASCII = re.compile(rb"[^\x20-\x7e]")  # header cards hold printable ASCII only
EVERYTHING = 1 << 62  # what an inspector that needs no more bytes would skip: the rest


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


class Inspector(Protocol):
    """Checks one file from its bytes, fed in order. ``feed`` raises a problem as soon as it
    is certain (``Truncated`` only when the size told says so); ``close`` after the last byte
    returns what the file is or raises what is wrong. ``skippable`` bytes from here on are not
    needed (a data unit): a reader of a file may ``skip`` them instead of feeding them."""

    def feed(self, data: Union[bytes, memoryview]) -> None: ...

    def skippable(self) -> int: ...

    def skip(self, n: int) -> None: ...

    def close(self) -> Inspection: ...


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


def inspector(kind: str, size: Optional[int], keywords: Sequence[str] = DEFAULT_KEYWORDS) -> Inspector:
    """An inspector of a file of ``kind`` (``kind_of``) and of ``size`` bytes (None: not known
    before its end), keeping the ``keywords`` of its headers."""
    if kind == "xisf":
        return _XisfInspector(keywords, size)
    if kind == "fits.gz":
        return _GzipInspector(keywords)
    return _FitsInspector(keywords, "fits", size)


READ_PIECE = {"fits": BLOCK, "xisf": 64 * 1024, "fits.gz": SKIP_PIECE}  # what inspect() reads at a time


def inspect(path: Union[str, os.PathLike], keywords: Sequence[str] = DEFAULT_KEYWORDS) -> Inspection:
    """Check that the FITS or XISF file at ``path`` is whole and well formed, and read the
    ``keywords`` from its headers. Raises ``NotFits``, ``BadHeader`` or ``Truncated``."""
    kind = kind_of(os.fsdecode(os.fspath(path))) or "fits"
    with open(path, "rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        check = inspector(kind, size, keywords)
        piece = READ_PIECE[kind]
        at = 0
        while at < size:
            gap = min(check.skippable(), size - at)
            if gap:
                check.skip(gap)
                at += gap
                handle.seek(at)
                continue
            data = handle.read(piece)
            if not data:
                break
            check.feed(data)
            at += len(data)
        return check.close()


# -- FITS ------------------------------------------------------------------------------------
_START, _HEADER, _DATA, _NEXT, _AFTER = range(5)  # where a FITS inspector is in its file


class _FitsInspector:
    """Reads the HDUs of a FITS file as its bytes stream by: header blocks are collected and
    parsed, data units counted past by the lengths their headers give."""

    def __init__(self, wanted: Sequence[str], kind: str, size: Optional[int] = None) -> None:
        self.wanted = wanted
        self.size = size
        self.found = Inspection(kind)
        self.offset = 0  # bytes fed or skipped
        self._state = _START
        self._block = bytearray()  # the header block being collected
        self._cards: Dict[str, Any] = {}  # of the header being read
        self._number = 0  # cards of that header so far
        self._left = 0  # bytes of the current data unit (with its padding) still to come
        self._length = 0  # of the current data unit, without its padding
        self._padded = 0

    def feed(self, data: Union[bytes, memoryview]) -> None:
        view = memoryview(data)
        while view:
            state = self._state
            if state == _AFTER:
                self.offset += len(view)
                return
            if state == _DATA:
                n = min(self._left, len(view))
                self.skip(n)
                view = view[n:]
                continue
            block = self._block
            piece = view[: BLOCK - len(block)]
            block += piece
            self.offset += len(piece)
            view = view[len(piece) :]
            if state == _START:
                self._check_start()
            elif state == _NEXT and len(block) >= len(XTENSION):
                if not block.startswith(XTENSION):
                    self._state = _AFTER  # not an extension after the last HDU: FITS readers ignore it
                    continue
                self._state = _HEADER
            if len(block) == BLOCK and self._state == _HEADER:
                self._header_block()

    def _check_start(self) -> None:
        block = self._block
        seen = min(len(block), len(SIMPLE))
        if block[:seen] != SIMPLE[:seen]:
            raise NotFits("it does not start with a FITS SIMPLE card")
        if seen == len(SIMPLE):
            self._state = _HEADER
            if self.size is not None and self.size % BLOCK:
                raise Truncated(self._size_problem(self.size))

    def _header_block(self) -> None:
        block, self._block = bytes(self._block), bytearray()
        where = self._where()
        bad = NOT_ASCII.search(block)
        if bad is not None:
            at = self._number + bad.start() // CARD + 1
            raise BadHeader(
                f"{where} has a byte that is not printable ASCII (0x{block[bad.start()]:02x}) in card {at}"
            )
        cards = self._cards
        for start in range(0, BLOCK, CARD):
            self._number += 1
            card = block[start : start + CARD].decode("ascii")
            keyword = card[:8].rstrip()
            if keyword == "END":
                self._header_done(where)
                return
            if card[8:10] == "= " and keyword not in cards:
                cards[keyword] = _value(card[10:])

    def _header_done(self, where: str) -> None:
        cards, found = self._cards, self.found
        found.units += 1
        for name in self.wanted:
            if name not in found.keywords and name in cards:
                found.keywords[name] = cards[name]
        length = _data_length(cards, primary=found.units == 1, where=where)
        self._cards, self._number = {}, 0
        self._length, self._padded = length, -(-length // BLOCK) * BLOCK
        self._left = self._padded
        self._state = _DATA if self._left else _NEXT
        if self.size is not None and self.offset + length > self.size:
            raise Truncated(self._unit_problem(max(0, self.size - self.offset)))

    def skippable(self) -> int:
        if self._state == _DATA:
            return self._left
        return EVERYTHING if self._state == _AFTER else 0

    def skip(self, n: int) -> None:
        self.offset += n
        if self._state == _DATA:
            self._left -= n
            if not self._left:
                self._state = _NEXT

    def close(self) -> Inspection:
        state = self._state
        if state == _START:  # fewer bytes than a SIMPLE card: just created
            raise Truncated(f"it has only {len(self._block)} bytes, not yet a FITS header")
        if state == _HEADER:
            raise Truncated(f"{self._where()} ends before its END card")
        if state == _DATA and self._padded - self._left < self._length:
            raise Truncated(self._unit_problem(self._padded - self._left))
        if self.offset % BLOCK:
            raise Truncated(self._size_problem(self.offset))
        return self.found

    def _where(self) -> str:
        units = self.found.units
        return "the primary header" if units == 0 else f"the header of extension {units}"

    def _unit_problem(self, had: int) -> str:
        units = self.found.units
        unit = "primary data unit" if units == 1 else f"data unit of extension {units - 1}"
        return f"its {unit} has {had} of the {self._length} bytes its header says"

    def _size_problem(self, size: int) -> str:
        what = " bytes, uncompressed" if self.found.kind == "fits.gz" else " bytes"
        return f"its size ({size}{what}) is not a multiple of {BLOCK}"


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


# -- FITS in a gzip stream ---------------------------------------------------------------------
def _zlib_problem(exc: zlib.error) -> BadHeader:
    text = str(exc)
    if "incorrect data check" in text:
        text = "the CRC-32 in its trailer does not match its data"
    elif "incorrect length check" in text:
        text = "the length in its trailer does not match its data"
    return BadHeader(f"its gzip stream is damaged ({text})")


class _GzipInspector:
    """Decompresses a gzip stream as it streams by (in pieces of at most ``SKIP_PIECE``) and
    feeds the FITS file inside to a FITS inspector; zlib checks each member's trailer (CRC-32
    and length) at its end. Members may follow one another, and zero bytes may pad the end, as
    gzip readers allow."""

    def __init__(self, wanted: Sequence[str]) -> None:
        self.inner = _FitsInspector(wanted, "fits.gz")
        self.offset = 0  # compressed bytes fed
        self._inflate: Optional[Any] = None  # the member being decompressed
        self._ahead = b""  # the first bytes of the stream, or of what follows a member's end
        self._started = False

    def feed(self, data: Union[bytes, memoryview]) -> None:
        self.offset += len(data)
        if self._inflate is None:
            data = self._member_start(self._ahead + bytes(data))
            if not data:
                return
        self._decompress(data)

    def _member_start(self, data: bytes) -> bytes:
        """What to decompress of ``data``, which begins where a member may begin (b"": wait)."""
        if self._started:
            data = data.lstrip(b"\0")  # padding after the last member
        if len(data) < len(GZIP_MAGIC) and GZIP_MAGIC.startswith(data):
            self._ahead = data
            return b""
        if not data.startswith(GZIP_MAGIC):
            if self._started:
                raise BadHeader("its gzip stream is damaged (bytes that are not gzip after its end)")
            raise NotFits("it ends in .gz but is not gzip-compressed")
        self._ahead, self._started = b"", True
        self._inflate = zlib.decompressobj(GZIP_WBITS)
        return data

    def _decompress(self, data: Union[bytes, memoryview]) -> None:
        while True:
            inflate = self._inflate
            assert inflate is not None
            try:
                out = inflate.decompress(data, SKIP_PIECE)
            except zlib.error as exc:
                raise _zlib_problem(exc) from None
            if out:
                self.inner.feed(out)
            if inflate.eof:
                self._inflate = None
                data = self._member_start(inflate.unused_data) if inflate.unused_data else b""
                if not data:
                    return
                continue
            data = inflate.unconsumed_tail
            if not data and len(out) < SKIP_PIECE:
                return  # all taken, and nothing held back: the next chunk goes on

    def skippable(self) -> int:
        return 0  # every byte is decompressed: the trailer checks them all

    def skip(self, n: int) -> None:
        raise AssertionError("a gzip stream is never skipped")

    def close(self) -> Inspection:
        if not self._started:
            raise Truncated(f"it has only {len(self._ahead)} bytes, not yet a gzip header")
        if self._inflate is not None:
            raise Truncated("its gzip stream ends before its end-of-stream marker")
        if self._ahead:
            raise BadHeader("its gzip stream is damaged (bytes that are not gzip after its end)")
        try:
            return self.inner.close()
        except Truncated as exc:
            # Inside a gzip stream that is whole, a short FITS file was compressed short: bad.
            raise BadHeader(f"the FITS file inside the gzip stream is short: {exc}") from None


# -- XISF ------------------------------------------------------------------------------------
class _XisfInspector:
    """Collects the preamble and XML header of an XISF file as they stream by, then checks
    that the data blocks the header places lie inside the file; the rest is not looked at."""

    def __init__(self, wanted: Sequence[str], size: Optional[int]) -> None:
        self.wanted = wanted
        self.size = size
        self.offset = 0
        self.found = Inspection("xisf")
        self._head = bytearray()  # the preamble and the XML header, until they are in
        self._length: Optional[int] = None  # of the XML header
        self._blocks: List[Tuple[int, int]] = []  # (position, size) of the attached data blocks
        self._done = False

    def feed(self, data: Union[bytes, memoryview]) -> None:
        self.offset += len(data)
        if self._done:
            return
        head = self._head
        want = XISF_PREAMBLE + (self._length or 0)
        head += memoryview(data)[: max(0, want - len(head))] if self._length is not None else data
        if self._length is None:
            seen = min(len(head), len(XISF_SIGNATURE))
            if head[:seen] != XISF_SIGNATURE[:seen]:
                raise NotFits("it does not start with the XISF0100 signature")
            if len(head) < XISF_PREAMBLE:
                return
            (self._length,) = struct.unpack("<I", head[8:12])
            if self.size is not None and XISF_PREAMBLE + self._length > self.size:
                raise Truncated(self._header_problem(self.size))
            del head[XISF_PREAMBLE + self._length :]
        if len(head) == XISF_PREAMBLE + self._length:
            self._parse(bytes(head[XISF_PREAMBLE:]))
            self._head = bytearray()
            self._done = True
            if self.size is not None:
                self._check_blocks(self.size)

    def _parse(self, text: bytes) -> None:
        try:
            root = ElementTree.fromstring(text.rstrip(b"\x00"))
        except ElementTree.ParseError as exc:
            raise BadHeader(f"its XML header is not well formed ({exc})") from None
        if root.tag not in (f"{XISF_NAMESPACE}xisf", "xisf"):
            raise BadHeader(f"its XML header's root element is <{root.tag}>, not <xisf>")
        found = self.found
        for element in root.iter():
            location = element.get("location", "")
            if location.startswith("attachment:"):
                parts = location.split(":")
                try:
                    self._blocks.append((int(parts[1]), int(parts[2])))
                except (IndexError, ValueError):
                    raise BadHeader(
                        f"its XML header has a location that does not parse: {location!r}"
                    ) from None
            if element.tag in (f"{XISF_NAMESPACE}FITSKeyword", "FITSKeyword"):
                name = element.get("name", "").strip()
                if name in self.wanted and name not in found.keywords:
                    found.keywords[name] = _value(element.get("value", ""))
        found.units = len(self._blocks)

    def _check_blocks(self, size: int) -> None:
        for position, length in self._blocks:
            if position + length > size:
                raise Truncated(
                    f"its data block at {position} of {length} bytes ends past its end ({size} bytes)"
                )

    def _header_problem(self, size: int) -> str:
        return f"it has {max(0, size - XISF_PREAMBLE)} of the {self._length} bytes of its XML header"

    def skippable(self) -> int:
        return EVERYTHING if self._done else 0

    def skip(self, n: int) -> None:
        self.offset += n

    def close(self) -> Inspection:
        if not self._done:
            if len(self._head) < len(XISF_SIGNATURE):
                raise Truncated(f"it has only {len(self._head)} bytes, not yet an XISF signature")
            if self._length is None:
                raise Truncated("it ends before its XISF header length")
            raise Truncated(self._header_problem(self.offset))
        self._check_blocks(self.offset)
        return self.found
