"""The fits checker (``OELEO_CHECKER=fits``): FITS and XISF files written here from hand-made
headers, whole and cut short in every way an instrument still writing them leaves them, read
by ``oeleo.fits`` and copied (or left for the next run) by the real ``oeleo run``. The checker
validates the chunks the copy reads: a file is read once, and one that turns out incomplete
or bad is aborted before its copy is committed, on a local folder, S3 (moto) and SSH."""

from __future__ import annotations

import builtins
import gzip
import hashlib
import json
import os
import random
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pytest
from helpers import clean_env, db_rows, run_oeleo, run_once, tree_files

from oeleo import fits
from oeleo.checkers import Checker, ChecksumChecker, FitsChecker
from oeleo.connectors.local import LocalConnector
from oeleo.errors import FileIncomplete, TransferError
from oeleo.models import SimpleDbHandler
from oeleo.settings import load_settings
from oeleo.workers import Worker, worker_from_settings

Cards = Sequence[Tuple[str, Any]]


def card(keyword: str, value: Any) -> str:
    if isinstance(value, bool):
        text = f"{'T' if value else 'F':>20}"
    elif isinstance(value, str):
        text = "'" + value.replace("'", "''").ljust(8) + "'"
    else:
        text = f"{value!s:>20}"
    return f"{keyword:<8}= {text} / a comment".ljust(80)[:80]


def header(cards: Cards, end: bool = True) -> bytes:
    text = "".join(card(k, v) for k, v in cards) + ("END".ljust(80) if end else "")
    return (text + " " * (-len(text) % fits.BLOCK)).encode("ascii")


def padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % fits.BLOCK)


def primary(naxes: List[int], bitpix: int = 16, extend: bool = False, **extra: Any) -> Tuple[bytes, bytes]:
    cards: List[Tuple[str, Any]] = [("SIMPLE", True), ("BITPIX", bitpix), ("NAXIS", len(naxes))]
    cards += [(f"NAXIS{i}", n) for i, n in enumerate(naxes, 1)]
    if extend:
        cards.append(("EXTEND", True))
    cards += list(extra.items())
    size = abs(bitpix) // 8
    for n in naxes:
        size *= n
    return header(cards), padded(bytes(range(256)) * (size // 256) + bytes(size % 256) if naxes else b"")


def image_extension(naxes: List[int], bitpix: int = -32, **extra: Any) -> Tuple[bytes, bytes]:
    cards: List[Tuple[str, Any]] = [("XTENSION", "IMAGE"), ("BITPIX", bitpix), ("NAXIS", len(naxes))]
    cards += [(f"NAXIS{i}", n) for i, n in enumerate(naxes, 1)]
    cards += [("PCOUNT", 0), ("GCOUNT", 1)] + list(extra.items())
    size = abs(bitpix) // 8
    for n in naxes:
        size *= n
    return header(cards), padded(b"\x42" * size)


def table_extension(rows: int, width: int, heap: int, **extra: Any) -> Tuple[bytes, bytes]:
    """A binary table of ``rows`` rows of ``width`` bytes and a heap of ``heap`` bytes."""
    cards: List[Tuple[str, Any]] = [
        ("XTENSION", "BINTABLE"),
        ("BITPIX", 8),
        ("NAXIS", 2),
        ("NAXIS1", width),
        ("NAXIS2", rows),
        ("PCOUNT", heap),
        ("GCOUNT", 1),
        ("TFIELDS", 1),
        ("TFORM1", f"{width}B"),
    ] + list(extra.items())
    return header(cards), padded(b"\x07" * (rows * width + heap))


def join(*hdus: Tuple[bytes, bytes]) -> bytes:
    return b"".join(h + d for h, d in hdus)


def m31() -> bytes:
    """A whole file: a primary image, an image extension and a table with a heap."""
    return join(
        primary([100, 50], extend=True, OBJECT="M31", FILTER="R", EXPTIME=30.0, RA=10.6847, DEC=41.269),
        image_extension([20, 20]),
        table_extension(10, 12, 500),
    )


def xisf(body: str, blocks: bytes = b"", header_length: int = 0) -> bytes:
    """An XISF file: the preamble, the XML ``body`` (``{at}`` is where ``blocks`` start)."""
    text = body
    for _ in range(2):  # the offset depends on the header's own length
        at = fits.XISF_PREAMBLE + len(text.encode())
        text = body.replace("{at}", str(at))
    data = text.encode()
    length = header_length or len(data)
    return b"XISF0100" + struct.pack("<I", length) + b"\0" * 4 + data + blocks


XISF_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<xisf version="1.0" xmlns="http://www.pixinsight.com/xisf">'
    '<Image geometry="8:4:1" sampleFormat="UInt16" location="attachment:{at}:64">'
    '<FITSKeyword name="OBJECT" value="\'NGC 7000\'" comment=""/>'
    '<FITSKeyword name="EXPTIME" value="120." comment="s"/>'
    "</Image></xisf>"
)


# -- the header reader, on files ---------------------------------------------------------------
def test_a_whole_file_with_extensions_is_read_to_its_last_hdu_with_its_keywords(tmp_path):
    path = tmp_path / "m31.fits"
    path.write_bytes(m31())
    found = fits.inspect(path, ("OBJECT", "FILTER", "EXPTIME", "RA", "DEC", "TELESCOP"))
    assert found.units == 3
    assert found.keywords == {"OBJECT": "M31", "FILTER": "R", "EXPTIME": 30.0, "RA": 10.6847, "DEC": 41.269}


def test_a_header_only_file_and_random_groups_are_whole(tmp_path):
    empty = tmp_path / "empty.fits"
    empty.write_bytes(header([("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 0), ("OBJECT", "dark")]))
    assert fits.inspect(empty).keywords == {"OBJECT": "dark"}
    # Random groups: NAXIS1 = 0, data = GCOUNT * (PCOUNT + NAXIS2 * NAXIS3) values.
    cards = [("SIMPLE", True), ("BITPIX", -32), ("NAXIS", 3), ("NAXIS1", 0), ("NAXIS2", 3), ("NAXIS3", 4)]
    cards += [("GROUPS", True), ("PCOUNT", 2), ("GCOUNT", 60)]
    groups = tmp_path / "vis.uvfits"
    groups.write_bytes(header(cards) + padded(b"\1" * (4 * 60 * (2 + 12))))
    assert fits.inspect(groups).units == 1
    groups.write_bytes(header(cards) + padded(b"\1" * (4 * 60 * 12)))  # without the parameters
    with pytest.raises(fits.Truncated, match="primary data unit has 2880 of the 3360"):
        fits.inspect(groups)


@pytest.mark.parametrize(
    "cut, says",
    [
        (lambda whole: whole[:-1000], f"not a multiple of {fits.BLOCK}"),
        (lambda whole: whole[: fits.BLOCK], "primary data unit has 0 of the 10000 bytes"),
        (lambda whole: whole[: 3 * fits.BLOCK], "primary data unit has 5760 of the 10000 bytes"),
        (lambda whole: whole[: 6 * fits.BLOCK], "data unit of extension 1 has 0 of the 1600 bytes"),
        (lambda whole: whole[: 8 * fits.BLOCK], "data unit of extension 2 has 0 of the 620 bytes"),
    ],
    ids=["odd size", "primary data missing", "primary data short", "extension 1 short", "table short"],
)
def test_a_file_shorter_than_its_headers_say_is_truncated(tmp_path, cut, says):
    whole = m31()
    assert len(whole) == 9 * fits.BLOCK  # 1+4 primary, 1+1 image, 1+1 table
    path = tmp_path / "m31.fits"
    path.write_bytes(cut(whole))
    with pytest.raises(fits.Truncated, match=says):
        fits.inspect(path)


def test_a_header_without_its_end_card_is_truncated_in_the_primary_and_in_an_extension(tmp_path):
    path = tmp_path / "dark.fits"
    path.write_bytes(header([("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 0)], end=False))
    with pytest.raises(fits.Truncated, match="the primary header ends before its END card"):
        fits.inspect(path)
    first = join(primary([10], bitpix=8, extend=True))
    path.write_bytes(first + header([("XTENSION", "IMAGE"), ("BITPIX", 8)], end=False))
    with pytest.raises(fits.Truncated, match="the header of extension 1 ends before its END card"):
        fits.inspect(path)


def test_a_header_with_a_byte_that_is_not_ascii_is_bad(tmp_path):
    whole = bytearray(m31())
    at = whole.index(b"M31")
    whole[at : at + 3] = "Mé".encode()
    path = tmp_path / "m31.fits"
    path.write_bytes(bytes(whole))
    with pytest.raises(
        fits.BadHeader, match=r"primary header has a byte that is not printable ASCII \(0xc3\) in card 7"
    ):
        fits.inspect(path)


@pytest.mark.parametrize(
    "hdus, says",
    [
        ([header([("SIMPLE", True), ("NAXIS", 0)])], "the primary header has no BITPIX card"),
        ([header([("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 2), ("NAXIS1", 4)])], "has no NAXIS2 card"),
        ([header([("SIMPLE", True), ("BITPIX", 12), ("NAXIS", 0)])], "BITPIX = 12 is not 8"),
        (
            [
                join(primary([], extend=True)),
                header([("XTENSION", "IMAGE"), ("BITPIX", 8), ("NAXIS", 1), ("NAXIS1", 4), ("GCOUNT", 1)]),
            ],
            "the header of extension 1 has no PCOUNT card",
        ),
    ],
    ids=["BITPIX", "NAXIS2", "BITPIX value", "PCOUNT of an extension"],
)
def test_a_header_without_a_mandatory_keyword_is_bad(tmp_path, hdus, says):
    path = tmp_path / "bad.fits"
    path.write_bytes(b"".join(hdus))
    with pytest.raises(fits.BadHeader, match=says):
        fits.inspect(path)


@pytest.mark.parametrize("name", ["new.fits", "new.fits.gz", "new.xisf"])
@pytest.mark.parametrize("size", [0, 1])
def test_a_file_just_created_is_truncated_not_foreign(tmp_path, name, size):
    path = tmp_path / name
    path.write_bytes({"new.fits": b"S", "new.fits.gz": b"\x1f", "new.xisf": b"X"}[name][:size])
    with pytest.raises(fits.Truncated, match=f"it has only {size} bytes"):
        fits.inspect(path)


def test_a_file_that_does_not_start_as_fits_is_not_fits(tmp_path):
    path = tmp_path / "notes.fits"
    path.write_bytes(b"observing log, night of the 1st\n" * 90)
    with pytest.raises(fits.NotFits, match="does not start with a FITS SIMPLE card"):
        fits.inspect(path)


def test_a_gzipped_file_is_read_through_its_stream_to_the_trailer(tmp_path):
    path = tmp_path / "m31.fits.gz"
    packed = gzip.compress(m31(), mtime=0)
    path.write_bytes(packed)
    assert fits.inspect(path, ("OBJECT",)).keywords == {"OBJECT": "M31"}
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(fits.Truncated, match="gzip stream ends before its end-of-stream marker"):
        fits.inspect(path)
    path.write_bytes(packed[:-8])  # no trailer at all
    with pytest.raises(fits.Truncated, match="gzip stream ends"):
        fits.inspect(path)
    wrong_crc = bytearray(packed)
    wrong_crc[-8] ^= 0xFF
    path.write_bytes(bytes(wrong_crc))
    with pytest.raises(fits.BadHeader, match="gzip stream is damaged.*CRC"):
        fits.inspect(path)
    wrong_length = bytearray(packed)
    wrong_length[-4] ^= 0x01
    path.write_bytes(bytes(wrong_length))
    with pytest.raises(fits.BadHeader, match="gzip stream is damaged.*length"):
        fits.inspect(path)
    path.write_bytes(gzip.compress(m31()[:-2880], mtime=0))  # whole gzip of a short FITS file
    with pytest.raises(fits.BadHeader, match="FITS file inside the gzip stream is short"):
        fits.inspect(path)
    path.write_bytes(m31())  # not compressed despite its name
    with pytest.raises(fits.NotFits, match="not gzip-compressed"):
        fits.inspect(path)


def test_an_fz_file_is_fits_and_its_keywords_come_from_its_compressed_image_header(tmp_path):
    path = tmp_path / "m31.fits.fz"
    tiles = table_extension(50, 8, 2000, ZIMAGE=True, ZBITPIX=16, OBJECT="M31", EXPTIME=30.0)
    path.write_bytes(join(primary([], extend=True), tiles))
    found = fits.inspect(path, ("OBJECT", "EXPTIME"))
    assert (found.kind, found.units, found.keywords) == ("fits", 2, {"OBJECT": "M31", "EXPTIME": 30.0})
    path.write_bytes(join(primary([], extend=True), tiles)[: 2 * fits.BLOCK])
    with pytest.raises(fits.Truncated, match="extension 1 has 0 of the 2400"):
        fits.inspect(path)


def test_xisf_whole_and_cut_short_and_bad(tmp_path):
    path = tmp_path / "ngc7000.xisf"
    whole = xisf(XISF_BODY, b"\x11" * 64)
    path.write_bytes(whole)
    found = fits.inspect(path, ("OBJECT", "EXPTIME", "FILTER"))
    assert (found.kind, found.units, found.keywords) == ("xisf", 1, {"OBJECT": "NGC 7000", "EXPTIME": 120.0})
    path.write_bytes(whole[:-1])
    with pytest.raises(fits.Truncated, match="data block at .* of 64 bytes ends past its end"):
        fits.inspect(path)
    path.write_bytes(whole[:100])
    with pytest.raises(fits.Truncated, match="bytes of its XML header"):
        fits.inspect(path)
    path.write_bytes(whole[:10])
    with pytest.raises(fits.Truncated, match="before its XISF header length"):
        fits.inspect(path)
    path.write_bytes(xisf(XISF_BODY.replace("</Image>", ""), b"\x11" * 64))
    with pytest.raises(fits.BadHeader, match="XML header is not well formed"):
        fits.inspect(path)
    path.write_bytes(xisf(XISF_BODY.replace("<xisf ", "<fits ").replace("</xisf>", "</fits>")))
    with pytest.raises(fits.BadHeader, match="root element is <{http://www.pixinsight.com/xisf}fits>"):
        fits.inspect(path)
    path.write_bytes(b"XISF0099" + whole[8:])
    with pytest.raises(fits.NotFits, match="XISF0100 signature"):
        fits.inspect(path)


def test_astropy_reads_the_hand_made_files_the_same_way(tmp_path):
    astropy_fits = pytest.importorskip("astropy.io.fits")  # not a dependency: only if installed
    path = tmp_path / "m31.fits"
    path.write_bytes(m31())
    with astropy_fits.open(path) as hdus:
        assert len(hdus) == fits.inspect(path).units
        assert hdus[0].header["OBJECT"] == "M31"


# -- the checker -------------------------------------------------------------------------------
def test_the_fits_checker_is_a_checksum_checker_that_leaves_an_incomplete_file(tmp_path):
    checker = FitsChecker("sha256", keywords=("OBJECT",))
    assert isinstance(checker, ChecksumChecker) and checker.algorithm == "sha256"
    whole, short, other = tmp_path / "m31.fits", tmp_path / "m32.fits", tmp_path / "log.csv"
    whole.write_bytes(m31())
    short.write_bytes(m31()[:-2880])
    other.write_bytes(b"not looked at")
    assert checker.validate(whole) is None
    assert checker.take_metadata(whole) == {"OBJECT": "M31"}
    assert checker.take_metadata(whole) is None  # once: it goes to the books
    with pytest.raises(FileIncomplete, match="extension 2 has 0 of the 620"):
        checker.validate(short)
    assert checker.validate(other) is None and checker.take_metadata(other) is None


# -- through `oeleo run` -----------------------------------------------------------------------
def fits_env(tmp_path: Path, **extra: str) -> dict:
    env = {
        "OELEO_BASE_DIR_FROM": str(tmp_path / "night"),
        "OELEO_BASE_DIR_TO": str(tmp_path / "archive"),
        "OELEO_DB_NAME": str(tmp_path / "books.db"),
        "OELEO_CHECKER": "fits",
    }
    env.update(extra)
    return env


def test_incomplete_files_are_left_for_the_next_run_and_copied_once_whole(tmp_path):
    night = tmp_path / "night"
    night.mkdir()
    whole = m31()
    (night / "m31.fits").write_bytes(whole)
    (night / "primary.fits").write_bytes(whole[: 3 * fits.BLOCK])
    (night / "extension.fit").write_bytes(whole[: 6 * fits.BLOCK])
    (night / "no-end.fts").write_bytes(header([("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 0)], end=False))
    (night / "m31.fits.gz").write_bytes(gzip.compress(whole, mtime=0)[:-100])
    (night / "ngc7000.xisf").write_bytes(xisf(XISF_BODY, b"\x11" * 10))
    (night / "log.csv").write_text("not a FITS file: copied as it is\n")
    first = run_oeleo("run", cwd=tmp_path, env=fits_env(tmp_path))
    out = first.stdout + first.stderr
    assert first.returncode == 0, out
    assert "copied 2 files" in out and "0 failed" in out
    assert "5 incomplete, left for the next run" in out
    assert (
        "primary.fits: incomplete, left for the next run: its primary data unit has 5760 of the 10000" in out
    )
    assert "Traceback" not in out
    assert set(tree_files(tmp_path / "archive")) == {"m31.fits", "log.csv"}
    rows = db_rows(tmp_path / "books.db")
    assert json.loads(rows["m31.fits"]["metadata"]) == {
        "OBJECT": "M31", "FILTER": "R", "EXPTIME": 30.0, "RA": 10.6847, "DEC": 41.269
    }  # fmt: skip
    assert rows["log.csv"]["metadata"] is None
    for name in ("primary.fits", "extension.fit", "no-end.fts", "m31.fits.gz", "ngc7000.xisf"):
        assert rows[name]["checksum"] is None, name
        assert rows[name]["last_error"].startswith("incomplete, left for the next run: "), name

    # The instrument finishes writing: the next run copies each once, whole.
    (night / "primary.fits").write_bytes(whole)
    (night / "extension.fit").write_bytes(whole)
    (night / "m31.fits.gz").write_bytes(gzip.compress(whole, mtime=0))
    second = run_oeleo("run", cwd=tmp_path, env=fits_env(tmp_path))
    out = second.stdout + second.stderr
    assert second.returncode == 0, out
    assert "copied 3 files" in out and "2 incomplete, left for the next run" in out
    copies = tree_files(tmp_path / "archive")
    assert copies["primary.fits"] == whole and copies["extension.fit"] == whole
    assert gzip.decompress(copies["m31.fits.gz"]) == whole
    rows = db_rows(tmp_path / "books.db")
    assert rows["primary.fits"]["last_error"] is None and rows["primary.fits"]["checksum"]
    assert json.loads(rows["m31.fits.gz"]["metadata"])["OBJECT"] == "M31"

    status = run_oeleo("status", "--files", "--fits", cwd=tmp_path, env=fits_env(tmp_path))
    assert status.returncode == 0, status.stderr
    line = next(x for x in status.stdout.splitlines() if x.startswith("extension.fit "))
    assert line.endswith("OBJECT=M31 FILTER=R EXPTIME=30.0 RA=10.6847 DEC=41.269")
    assert "header keywords" in status.stdout


def test_without_the_fits_checker_a_half_written_frame_is_copied(tmp_path):
    night = tmp_path / "night"
    night.mkdir()
    (night / "m31.fits").write_bytes(m31()[: 3 * fits.BLOCK])
    done = run_oeleo("run", cwd=tmp_path, env=fits_env(tmp_path, OELEO_CHECKER="checksum"))
    assert done.returncode == 0 and "copied 1 file" in done.stdout + done.stderr
    again = run_oeleo("run", "--checker", "fits", "--force", cwd=tmp_path, env=fits_env(tmp_path))
    assert again.returncode == 0 and "1 incomplete, left for the next run" in again.stdout + again.stderr


def test_a_file_that_is_not_fits_is_refused_unless_strict_is_off(tmp_path):
    night = tmp_path / "night"
    night.mkdir()
    (night / "notes.fits").write_text("observing log\n")
    refused = run_oeleo("run", cwd=tmp_path, env=fits_env(tmp_path))
    out = refused.stdout + refused.stderr
    assert refused.returncode == 1, out
    assert "notes.fits: refused by FitsChecker: not a FITS/XISF file despite its extension" in out
    assert "OELEO_FITS_STRICT is on" in out and "Traceback" not in out
    assert tree_files(tmp_path / "archive") == {}
    plain = run_oeleo("run", cwd=tmp_path, env=fits_env(tmp_path, OELEO_FITS_STRICT="false"))
    out = plain.stdout + plain.stderr
    assert plain.returncode == 0, out
    assert "copied as a plain file (OELEO_FITS_STRICT is off)" in out
    assert tree_files(tmp_path / "archive") == {"notes.fits": b"observing log\n"}
    assert db_rows(tmp_path / "books.db")["notes.fits"]["metadata"] is None


def test_a_bad_header_fails_the_file_in_one_line_and_the_run_goes_on(tmp_path):
    night = tmp_path / "night"
    night.mkdir()
    broken = bytearray(m31())
    broken[broken.index(b"M31")] = 0x00
    (night / "a.fits").write_bytes(bytes(broken))
    (night / "b.fits").write_bytes(header([("SIMPLE", True), ("NAXIS", 0)]))
    (night / "c.fits").write_bytes(m31())
    done = run_oeleo("run", cwd=tmp_path, env=fits_env(tmp_path))
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "copied 1 file" in out and "2 failed" in out and "Traceback" not in out
    lines = [x for x in out.splitlines() if "bad FITS/XISF header" in x]
    assert any("a.fits" in x and "not printable ASCII (0x00)" in x for x in lines), out
    assert any("b.fits" in x and "the primary header has no BITPIX card" in x for x in lines), out
    assert set(tree_files(tmp_path / "archive")) == {"c.fits"}


@pytest.mark.parametrize(
    "value, says",
    [
        ("astro", "OELEO_CHECKER='astro' (from the environment): expected checksum, fits, or pkg.mod:Class"),
        (
            "nowhere.at_all:Checker",
            "OELEO_CHECKER='nowhere.at_all:Checker' (from the environment): cannot import it",
        ),
        ("oeleo.fits:Inspection", "not a subclass of oeleo.checkers.Checker"),
    ],
)
def test_an_unknown_checker_is_one_line_and_status_2(tmp_path, value, says):
    (tmp_path / "night").mkdir()
    done = run_oeleo("run", cwd=tmp_path, env=fits_env(tmp_path, OELEO_CHECKER=value))
    assert done.returncode == 2
    assert says in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_checker_named_by_its_class_is_built_from_the_settings(tmp_path):
    night = tmp_path / "night"
    night.mkdir()
    (night / "m31.fits").write_bytes(m31()[:-2880])
    env = fits_env(tmp_path, OELEO_CHECKER="oeleo.checkers:FitsChecker", OELEO_CHECKSUM="sha256")
    done = run_oeleo("run", cwd=tmp_path, env=env)
    assert done.returncode == 0 and "1 incomplete" in done.stdout + done.stderr
    (night / "m31.fits").write_bytes(m31())
    assert run_oeleo("run", cwd=tmp_path, env=env).returncode == 0
    assert len(db_rows(tmp_path / "books.db")["m31.fits"]["checksum"]) == 64  # sha256


def test_books_from_before_the_metadata_column_are_read_as_they_are_and_upgraded_by_a_run(tmp_path):
    night = tmp_path / "night"
    night.mkdir()
    (night / "m31.fits").write_bytes(m31())
    env = fits_env(tmp_path)
    assert run_oeleo("run", cwd=tmp_path, env=env).returncode == 0
    connection = sqlite3.connect(str(tmp_path / "books.db"))
    with connection:
        connection.execute("ALTER TABLE filelist DROP COLUMN metadata")  # as books of before were
    connection.close()
    status = run_oeleo("status", "--files", "--fits", cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stderr
    assert "m31.fits" in status.stdout and "OBJECT=" not in status.stdout
    assert "metadata" not in db_rows(tmp_path / "books.db")["m31.fits"]  # status changed nothing
    (night / "m31.fits").write_bytes(m31() + m31())  # changed: copied again, with its keywords
    assert run_oeleo("run", cwd=tmp_path, env=env).returncode == 0
    assert json.loads(db_rows(tmp_path / "books.db")["m31.fits"]["metadata"])["OBJECT"] == "M31"


def test_the_fits_benchmark_runs_both_checkers_and_writes_json(tmp_path):
    out = tmp_path / "fits.json"
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "fits_bench.py"
    done = subprocess.run(
        [sys.executable, str(script), "--files", "3", "--mib", "0.05", "--repeat", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    for workload in ("fits", "fits.gz"):
        samples = results["workloads"][workload]["samples"]
        assert set(samples) == {"checksum", "fits"}
        assert all(len(times) == 1 and times[0] > 0 for s in samples.values() for times in s.values())
    assert "| fits.gz | 3 |" in done.stdout


# -- validating while the copy reads ------------------------------------------------------------
def feed_in_chunks(kind: str, data: bytes, chunk: int, size: Optional[int]) -> fits.Inspection:
    check = fits.inspector(kind, size, ("OBJECT", "EXPTIME"))
    for start in range(0, len(data), chunk):
        check.feed(data[start : start + chunk])
    return check.close()


def problem_of(call: Callable[..., Any], *args: Any) -> Tuple[str, str, Any]:
    """What ``call(*args)`` says: the problem's class and message, or the inspection."""
    try:
        found = call(*args)
    except fits.FitsProblem as exc:
        return type(exc).__name__, str(exc), None
    return "whole", "", (found.units, found.keywords)


WHOLE_AND_CUT = {
    "fits": [
        m31(),
        m31()[:-1000],
        m31()[: 3 * fits.BLOCK],
        m31()[: 8 * fits.BLOCK],
        m31()[:5],
        m31()[: 5 * fits.BLOCK] + b"XTENSION= 'IMAGE'",
        header([("SIMPLE", True), ("NAXIS", 0)]),
        b"observing log\n" * 300,
    ],
    "fits.gz": [
        gzip.compress(m31(), mtime=0),
        gzip.compress(m31(), mtime=0)[:-8],
        gzip.compress(m31()[:-2880], mtime=0),
        gzip.compress(b"not FITS at all" * 200, mtime=0),
        b"\x1f",
    ],
    "xisf": [
        xisf(XISF_BODY, b"\x11" * 64),
        xisf(XISF_BODY, b"\x11" * 63),
        xisf(XISF_BODY)[:100],
        xisf(XISF_BODY)[:10],
        xisf(XISF_BODY.replace("</Image>", ""), b"\x11" * 64),
    ],
}


@pytest.mark.parametrize("kind", sorted(WHOLE_AND_CUT))
@pytest.mark.parametrize("chunk", [1, 79, fits.BLOCK, 4096, 1 << 20])
def test_an_inspector_fed_in_chunks_of_any_size_says_what_inspect_says(tmp_path, kind, chunk):
    path = tmp_path / f"m31.{kind}"
    said = []
    for data in WHOLE_AND_CUT[kind]:
        path.write_bytes(data)
        expected = problem_of(fits.inspect, path, ("OBJECT", "EXPTIME"))
        said.append(expected[0])
        assert problem_of(feed_in_chunks, kind, data, chunk, len(data)) == expected, data[:20]
        # Not told the size first (a FITS file inside a gzip stream): the same, though a size
        # that is not a multiple of 2880 may be said after what is wrong at the end.
        unsized = problem_of(feed_in_chunks, kind, data, chunk, None)
        assert (unsized[0], unsized[2]) == (expected[0], expected[2]), data[:20]
    assert said[0] == "whole" and "whole" not in said[1:]
    assert "Truncated" in said and ("BadHeader" in said or "NotFits" in said)


def test_an_inspector_told_the_size_knows_a_short_data_unit_once_its_header_is_in():
    whole = m31()
    check = fits.inspector("fits", 6 * fits.BLOCK)  # the file as it is: cut in extension 1's data
    check.feed(whole[: 5 * fits.BLOCK])  # the primary HDU: fine
    with pytest.raises(fits.Truncated, match="data unit of extension 1 has 0 of the 1600 bytes"):
        check.feed(whole[5 * fits.BLOCK : 6 * fits.BLOCK])  # extension 1's header
    check = fits.inspector("fits", 9 * fits.BLOCK + 5)
    with pytest.raises(fits.Truncated, match=f"not a multiple of {fits.BLOCK}"):
        check.feed(whole[:9])  # SIMPLE: a FITS file, of a size no FITS file has
    check = fits.inspector("fits", 9 * fits.BLOCK + 5)
    with pytest.raises(fits.NotFits):  # what is not FITS is said first: it may be copied anyway
        check.feed(b"observing")
    check = fits.inspector("xisf", 200)
    with pytest.raises(fits.Truncated, match="of its XML header"):
        check.feed(xisf(XISF_BODY)[:16])


def test_a_gzip_stream_of_several_members_or_padded_with_zeros_is_whole_and_garbage_after_it_is_bad():
    whole = m31()
    members = gzip.compress(whole[: 5 * fits.BLOCK], mtime=0) + gzip.compress(
        whole[5 * fits.BLOCK :], mtime=0
    )
    for data in (members, members + b"\0" * 100):
        assert feed_in_chunks("fits.gz", data, 1000, len(data)).units == 3
    with pytest.raises(fits.BadHeader, match="bytes that are not gzip after its end"):
        feed_in_chunks("fits.gz", members + b"trailing junk", 1000, None)


def test_a_gzip_stream_is_decompressed_in_bounded_memory():
    import tracemalloc
    import zlib

    length = 36000 * fits.BLOCK  # 99 MiB of zeros, a few hundredth of that compressed
    pack = zlib.compressobj(1, zlib.DEFLATED, 31)
    pieces = [pack.compress(header([("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 1), ("NAXIS1", length)]))]
    zeros = bytes(1 << 20)
    for _ in range(length // len(zeros)):
        pieces.append(pack.compress(zeros))
    pieces.append(pack.compress(bytes(length % len(zeros))) + pack.flush())
    bomb = b"".join(pieces)
    assert len(bomb) < length // 100
    check = fits.inspector("fits.gz", len(bomb))
    tracemalloc.start()
    try:
        check.feed(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert check.close().units == 1
    assert peak < 4 * fits.SKIP_PIECE  # decompressed a piece at a time, not 99 MiB at once


def test_the_stream_check_of_the_fits_checker_says_what_validate_says(tmp_path):
    checker = FitsChecker(keywords=("OBJECT",))
    cases = {
        "m31.fits": m31(),
        "short.fits": m31()[: 6 * fits.BLOCK],
        "bad.fits": header([("SIMPLE", True), ("NAXIS", 0)]),
        "notes.fits": b"observing log\n" * 300,
        "log.csv": b"not looked at",
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        check = checker.stream_check(path, len(data))
        if name == "log.csv":
            assert check is None and checker.validate(path) is None
            continue
        assert check is not None
        try:
            for start in range(0, len(data), 1000):
                check.update(data[start : start + 1000])
            said: Any = check.finish()
        except (FileIncomplete, TransferError) as exc:
            said = (type(exc).__name__, str(exc))
        streamed = checker.take_metadata(path)
        try:
            reason = checker.validate(path)
            before: Any = ("TransferError", f"refused by FitsChecker: {reason}") if reason else None
        except FileIncomplete as exc:
            before = ("FileIncomplete", str(exc))
        if before is None:
            before = checker.take_metadata(path)
            assert said == streamed == before == {"OBJECT": "M31"}
        else:
            assert said == before, name
    assert checker.take_metadata(tmp_path / "m31.fits") is None  # once: it goes to the books


def random_frame(mib: float, seed: int, object_name: str) -> bytes:
    """A FITS file whose primary image (``mib`` MiB of random 16-bit pixels) does not compress,
    then an image extension and a binary table."""
    rng = random.Random(seed)
    side = int((mib * 1024 * 1024 / 2) ** 0.5)
    cards = [("SIMPLE", True), ("BITPIX", 16), ("NAXIS", 2), ("NAXIS1", side), ("NAXIS2", side)]
    cards += [("EXTEND", True), ("OBJECT", object_name), ("EXPTIME", 30.0)]
    first = (header(cards), padded(rng.randbytes(2 * side * side)))
    return join(first, image_extension([64, 64]), table_extension(100, 16, 1000))


def cut_in_its_second_hdu(frame: bytes) -> bytes:
    """The frame up to one block into its second HDU's data: a size FITS files have."""
    first = frame.index(b"XTENSION=")
    return frame[: first + 2 * fits.BLOCK]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def streaming_cases(mib: float) -> Dict[str, Tuple[bytes, bytes, bytes]]:
    """name -> (the version copied first, the next one not whole yet or bad, that one made whole).

    The frames are larger than a chunk of the copy's reading (1 MiB): the copy has sent bytes
    when the check finds out."""
    frame = random_frame(mib, 1, "NGC 1976")
    packed = gzip.compress(frame, compresslevel=1, mtime=0)
    bad_crc = bytearray(packed)
    bad_crc[-8] ^= 0xFF
    old_xisf = xisf(XISF_BODY.replace("NGC 7000", "M42"), b"\x22" * 64)
    new_xisf = xisf(XISF_BODY, b"\x11" * 64)
    return {
        "frame.fits": (m31(), cut_in_its_second_hdu(frame), frame),
        "bad-crc.fits.gz": (gzip.compress(m31(), mtime=0), bytes(bad_crc), packed),
        "cut.fits.gz": (gzip.compress(m31(), mtime=0), packed[: len(packed) - 1000], packed),
        "image.xisf": (old_xisf, new_xisf[:-1], new_xisf),
    }


STREAMING_SAYS = {
    "frame.fits": "incomplete, left for the next run: its data unit of extension 1 has 2880 of the 16384",
    "bad-crc.fits.gz": "refused by FitsChecker: bad FITS/XISF header: its gzip stream is damaged (the CRC-32",
    "cut.fits.gz": "incomplete, left for the next run: its gzip stream ends before its end-of-stream marker",
    "image.xisf": "incomplete, left for the next run: its data block at",
}


def check_streaming_cases(
    tmp_path: Path,
    settings: Dict[str, Any],
    stored: Callable[[], Dict[str, bytes]],
    mib: float = 1.5,
    **set_up: Any,
) -> None:
    """Three passes: the first versions are copied; their next versions, not whole yet or bad,
    are aborted (the first copies stay as they were, under their names only, and the books
    still describe them); made whole, they are copied."""
    night = tmp_path / "night"
    night.mkdir(exist_ok=True)
    cases = streaming_cases(mib)

    def one_pass() -> Any:
        worker = worker_from_settings(
            load_settings(base_dir_from=night, db_name=str(tmp_path / "books.db"), checker="fits", **settings)
        )
        for name, value in set_up.items():
            setattr(worker.external_connector, name, value)
        return run_once(worker)

    for step in range(3):
        for name, versions in cases.items():
            (night / name).write_bytes(versions[step])
        summary = one_pass()
        rows = db_rows(tmp_path / "books.db")
        if step == 1:
            assert (summary.copied, summary.incomplete, summary.failed) == (0, 3, 1), summary.errors
            assert summary.exit_status == 1
            for name, says in STREAMING_SAYS.items():
                assert rows[name]["last_error"].startswith(says), rows[name]["last_error"]
        else:
            assert (summary.copied, summary.incomplete, summary.failed) == (4, 0, 0), summary.errors
        version = 2 if step == 2 else 0
        assert stored() == {name: versions[version] for name, versions in cases.items()}, step
        for name, versions in cases.items():
            # The books name the version the store holds: an aborted copy claims nothing.
            assert (rows[name]["checksum"], rows[name]["size"]) == (
                md5(versions[version]),
                len(versions[version]),
            )
            assert (rows[name]["last_error"] is None) == (step != 1), name
    assert json.loads(rows["frame.fits"]["metadata"])["OBJECT"] == "NGC 1976"
    assert json.loads(rows["image.xisf"]["metadata"])["OBJECT"] == "NGC 7000"


def test_a_copy_that_turns_out_incomplete_or_bad_is_aborted_and_the_previous_copy_kept_local(tmp_path):
    archive = tmp_path / "archive"
    check_streaming_cases(tmp_path, {"base_dir_to": str(archive)}, lambda: tree_files(archive))


def test_a_copy_that_turns_out_incomplete_or_bad_is_aborted_and_the_previous_copy_kept_ssh(
    tmp_path, sshd_server
):
    folder = sshd_server.new_folder()
    settings = dict(
        connector="ssh",
        base_dir_to=folder,
        external_host=sshd_server.host,
        external_port=sshd_server.port,
        username=sshd_server.user,
        key_filename=sshd_server.keys["ed25519"],
        known_hosts=sshd_server.known_hosts,
    )
    check_streaming_cases(tmp_path, settings, lambda: tree_files(folder))  # hidden names too


@pytest.mark.parametrize("multipart", [False, True], ids=["put at the commit", "multipart"])
def test_a_copy_that_turns_out_incomplete_or_bad_is_aborted_and_the_previous_copy_kept_s3(
    tmp_path, s3_server, s3_bucket, multipart
):
    client = s3_server.client()

    def stored() -> Dict[str, bytes]:
        assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
        listed = client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])
        bodies = {o["Key"]: client.get_object(Bucket=s3_bucket, Key=o["Key"])["Body"].read() for o in listed}
        return {key[len("night/") :]: body for key, body in bodies.items()}

    settings = dict(
        connector="s3", s3_bucket=s3_bucket, s3_prefix="night/", s3_endpoint_url=s3_server.endpoint_url
    )
    # Multipart: the 9 MiB frame goes up in parts (S3 sends files up to 200 MiB in one PutObject
    # at the commit by default), some of them sent before the check finds its second HDU short.
    options = {"single_put_limit": 0} if multipart else {}
    check_streaming_cases(tmp_path, settings, stored, mib=9 if multipart else 1.5, **options)


def test_a_file_not_whole_yet_is_never_posted_to_arcsecond_and_posted_once_whole(tmp_path):
    from arcsecond_server import FakeArcsecond

    from oeleo.connectors.arcsecond import ArcsecondConnector

    # Arcsecond never replaces a file it holds: the case is a new file, sent only once whole.
    fake = FakeArcsecond().start()
    try:
        night = tmp_path / "night1"
        night.mkdir()
        cases = streaming_cases(1.5)
        conn = ArcsecondConnector(api_key=fake.key, api_url=fake.url, root_name="night1", backoff=0.01)
        conn.connect()
        for step in (1, 2):
            for name, versions in cases.items():
                (night / name).write_bytes(versions[step])
            worker = Worker(
                checker=FitsChecker(),
                bookkeeper=SimpleDbHandler(str(tmp_path / "books.db")),
                local_connector=LocalConnector(night),
                external_connector=conn,
            )
            summary = worker.run()
            worker.release_db()
            if step == 1:
                assert (summary.copied, summary.incomplete, summary.failed) == (0, 3, 1), summary.errors
                assert fake.count("POST", "datafiles") == 0
                assert fake.stored().get("night1", {}) == {}
            else:
                assert summary.copied == 4, summary.errors
                assert fake.stored()["night1"] == {name: versions[2] for name, versions in cases.items()}
                assert fake.count("POST", "datafiles") == 4
        conn.close()
    finally:
        fake.stop()


class CountingFile:
    """A file object that counts the bytes read through it."""

    def __init__(self, handle: Any, count: Callable[[int], None]) -> None:
        self._handle, self._count = handle, count

    def read(self, *args: Any) -> bytes:
        data = self._handle.read(*args)
        self._count(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        n = self._handle.readinto(buffer)
        self._count(n or 0)
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> CountingFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.close()


def count_reads(monkeypatch: Any, paths: Sequence[Path]) -> Dict[str, int]:
    """Bytes this process reads from each of ``paths`` from now on, by ``os.read`` or by a file
    object ``open`` gives (how the checker's ``validate`` reads headers): name -> bytes."""
    watched = {(st.st_dev, st.st_ino): path.name for path in paths for st in [path.stat()]}
    counts = dict.fromkeys(watched.values(), 0)
    real_read, real_open = os.read, builtins.open

    def counting_read(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        st = os.fstat(fd)
        name = watched.get((st.st_dev, st.st_ino))
        if name is not None:
            counts[name] += len(data)
        return data

    def counting_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        if isinstance(file, int) or "r" not in mode:
            return handle
        st = os.fstat(handle.fileno())
        name = watched.get((st.st_dev, st.st_ino))
        if name is None:
            return handle
        return CountingFile(handle, lambda n: counts.__setitem__(name, counts[name] + n))

    monkeypatch.setattr(os, "read", counting_read)
    monkeypatch.setattr(builtins, "open", counting_open)
    return counts


def test_a_fits_file_and_a_fits_gz_file_are_read_once_for_their_check_and_copy(tmp_path, monkeypatch):
    night, archive = tmp_path / "night", tmp_path / "archive"
    night.mkdir()
    frame = random_frame(3, 2, "M31")
    files = {"m31.fits": frame, "m31.fits.gz": gzip.compress(frame, mtime=0), "log.csv": b"t,v\n0,1\n"}
    for name, data in files.items():
        (night / name).write_bytes(data)
    worker = worker_from_settings(
        load_settings(
            base_dir_from=night, base_dir_to=str(archive), db_name=str(tmp_path / "books.db"), checker="fits"
        )
    )
    counts = count_reads(monkeypatch, [night / name for name in files])
    summary = run_once(worker)
    monkeypatch.undo()
    assert summary.copied == 3, summary.errors
    assert counts == {name: len(data) for name, data in files.items()}
    rows = db_rows(tmp_path / "books.db")
    assert json.loads(rows["m31.fits"]["metadata"])["OBJECT"] == "M31"
    assert json.loads(rows["m31.fits.gz"]["metadata"])["OBJECT"] == "M31"
    # The counting sees the reads of a check before the copy: validate() reads headers again.
    counts = count_reads(monkeypatch, [night / "m31.fits"])
    assert FitsChecker().validate(night / "m31.fits") is None
    assert 0 < counts["m31.fits"] < len(frame)


class ValidatesBefore(Checker):
    """A checker as a developer of oeleo 0.7's time writes one: ``validate`` and ``take_metadata``."""

    def __init__(self) -> None:
        self.seen: List[str] = []

    def validate(self, path: Path) -> Optional[str]:
        self.seen.append(path.name)
        return "not this one" if path.name.startswith("bad") else None

    def take_metadata(self, path: Path) -> Optional[Dict[str, Any]]:
        return {"LENGTH": path.stat().st_size}


class PutOnly(LocalConnector):
    """A connector of its own ``put()`` (as connectors were written before the upload objects)."""

    def put(self, local_path: Path, relpath: str, **options: Any) -> Any:
        assert "stream_check" not in options
        return super().put(local_path, relpath, **options)


def test_a_checker_of_validate_and_take_metadata_and_a_connector_of_its_own_put_still_check_first(tmp_path):
    night, archive = tmp_path / "night", tmp_path / "archive"
    night.mkdir()
    (night / "good.csv").write_text("1\n")
    (night / "bad.csv").write_text("2\n")
    (night / "short.fits").write_bytes(m31()[: 6 * fits.BLOCK])
    (night / "m31.fits").write_bytes(m31())
    checker = ValidatesBefore()
    worker = Worker(
        checker=checker,
        bookkeeper=SimpleDbHandler(str(tmp_path / "a.db")),
        local_connector=LocalConnector(night),
        external_connector=LocalConnector(archive),
    )
    summary = run_once(worker)
    assert (summary.copied, summary.failed) == (3, 1)
    assert sorted(checker.seen) == ["bad.csv", "good.csv", "m31.fits", "short.fits"]
    rows = db_rows(tmp_path / "a.db")
    assert json.loads(rows["good.csv"]["metadata"]) == {"LENGTH": 2}
    assert rows["bad.csv"]["last_error"] == "refused by ValidatesBefore: not this one"

    for name in ("short.fits", "m31.fits"):
        (night / name).rename(night / f"x-{name}")
    worker = Worker(
        checker=FitsChecker(),
        bookkeeper=SimpleDbHandler(str(tmp_path / "b.db")),
        local_connector=LocalConnector(night),
        external_connector=PutOnly(tmp_path / "b"),
    )
    summary = run_once(worker)
    assert (summary.copied, summary.incomplete) == (3, 1), summary.errors
    assert "x-short.fits" not in tree_files(tmp_path / "b")
    assert json.loads(db_rows(tmp_path / "b.db")["x-m31.fits"]["metadata"])["OBJECT"] == "M31"


def test_a_fits_checker_subclass_with_its_own_validate_is_asked_before_each_copy(tmp_path):
    """A rule of the user's own in validate() is never skipped by the streaming path."""
    from oeleo.checkers import streams

    asked = []

    class NoFlats(FitsChecker):
        def validate(self, path):
            asked.append(path.name)
            if "flat" in path.name:
                return "flats stay on the PC"
            return super().validate(path)

    class Plain(FitsChecker):
        pass

    assert streams(FitsChecker()) and streams(Plain())
    assert not streams(NoFlats())
    night = tmp_path / "night"
    night.mkdir()
    (night / "flat-1.fits").write_bytes(m31())
    (night / "light-1.fits").write_bytes(m31())
    (night / "light-2.fits").write_bytes(m31()[: 6 * fits.BLOCK])  # cut short: FITS's own check
    worker = Worker(
        checker=NoFlats(),
        bookkeeper=SimpleDbHandler(str(tmp_path / "a.db")),
        local_connector=LocalConnector(night),
        external_connector=LocalConnector(tmp_path / "archive"),
    )
    summary = run_once(worker)
    assert sorted(asked) == ["flat-1.fits", "light-1.fits", "light-2.fits"]
    assert (summary.copied, summary.failed, summary.incomplete) == (1, 1, 1), summary.errors
    archived = tree_files(tmp_path / "archive")
    assert "light-1.fits" in archived and "flat-1.fits" not in archived and "light-2.fits" not in archived
    refused = db_rows(tmp_path / "a.db")["flat-1.fits"]["last_error"]
    assert refused == "refused by NoFlats: flats stay on the PC"
