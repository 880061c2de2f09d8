"""The fits checker (``OELEO_CHECKER=fits``): FITS and XISF files written here from hand-made
headers, whole and cut short in every way an instrument still writing them leaves them, read
by ``oeleo.fits`` and copied (or left for the next run) by the real ``oeleo run``."""

from __future__ import annotations

import gzip
import json
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Sequence, Tuple

import pytest
from helpers import clean_env, db_rows, run_oeleo, tree_files

from oeleo import fits
from oeleo.checkers import ChecksumChecker, FitsChecker
from oeleo.errors import FileIncomplete

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
        ("astro", "OELEO_CHECKER=astro: expected checksum, fits, or pkg.mod:Class"),
        ("nowhere.at_all:Checker", "OELEO_CHECKER=nowhere.at_all:Checker: cannot import it"),
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
