"""gzip on the way (``OELEO_COMPRESS=gzip``): what is compressed, that the output is a valid,
deterministic gzip file, and the command end to end (the store-side behaviour for every
connector is in test_connector_contract.py)."""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib

import pytest
from helpers import db_rows, run_oeleo, tree_files

from oeleo.compress import GzipStream, compresses, gzip_digest, stored_name


@pytest.mark.parametrize(
    "name",
    ["a.fits", "b/c.FITS", "x.fit", "x.fts", "x.ft", "x.mt", "x.imfits", "x.imfit", "x.uvfits", "x.uvfit",
     "x.pha", "x.rmf", "x.arf", "x.rsp", "x.pi", "m31.xisf", "M31.XISF"],
)  # fmt: skip
def test_fits_and_xisf_names_are_compressed(name):
    assert compresses(name, "gzip")
    assert stored_name(name, "gzip") == name + ".gz"
    assert stored_name(name, "") == name  # off by default


@pytest.mark.parametrize(
    "name", ["a.fits.gz", "a.fits.fz", "a.fits.bz2", "a.zip", "a.csv", "fits", "a.fits.txt"]
)
def test_other_and_already_compressed_names_go_as_they_are(name):
    assert not compresses(name, "gzip")
    assert stored_name(name, "gzip") == name


def test_the_gzip_form_is_valid_deterministic_and_has_no_time_or_name():
    data = os.urandom(300_000) + bytes(3_000_000)
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    first = b"".join(GzipStream(chunks, "md5"))
    second = b"".join(GzipStream([data], "md5"))  # other chunking, same bytes
    assert first == second
    assert gzip.decompress(first) == data
    assert first[4:8] == b"\0\0\0\0"  # MTIME 0
    assert first[3] == 0  # FLG: no file name, no comment
    assert len(first) < len(data)
    digest, size = gzip_digest(chunks, "sha256")
    assert (digest, size) == (hashlib.sha256(first).hexdigest(), len(first))


def test_the_stream_counts_and_hashes_what_it_yields_in_bounded_pieces():
    data = os.urandom(5 * 1024 * 1024)  # incompressible: the output is as large as the input
    stream = GzipStream((data[i : i + 1048576] for i in range(0, len(data), 1048576)), "crc32")
    pieces = list(stream)
    assert max(len(p) for p in pieces) < 3 * 1024 * 1024
    whole = b"".join(pieces)
    assert stream.size == len(whole)
    assert stream.check_digest == f"{zlib.crc32(whole):08x}"


def test_oeleo_run_stores_fits_gzipped_books_the_source_and_leaves_the_source_alone(tmp_path):
    src = tmp_path / "data"
    (src / "night1").mkdir(parents=True)
    frame = b"SIMPLE  =                    T" + bytes(2880 * 30)
    (src / "night1" / "m31.fits").write_bytes(frame)
    (src / "night1" / "m31.fits.gz").write_bytes(gzip.compress(b"other"))  # a name clash
    (src / "night1" / "notes.txt").write_bytes(b"seeing 1.2")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in src.rglob("*") if p.is_file()}
    (tmp_path / ".env").write_text(
        f"OELEO_BASE_DIR_FROM={src}\nOELEO_BASE_DIR_TO={tmp_path / 'copy'}\n"
        f"OELEO_COMPRESS=gzip\nOELEO_LOG_DIR={tmp_path / 'logs'}\n"
    )
    done = run_oeleo("run", cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # the clash: both fail, each said in one line
    assert "m31.fits" in done.stderr
    copied = tree_files(tmp_path / "copy")
    assert copied["night1/notes.txt"] == b"seeing 1.2"
    assert "night1/m31.fits.gz" not in copied  # neither takes the name while they clash
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in src.rglob("*") if p.is_file()} == before
    clash = db_rows(tmp_path / "oeleo-file-list.db")["night1/m31.fits"]  # oeleo status names it
    assert not clash["checksum"] and "the name of another file" in clash["last_error"]
    status = run_oeleo("status", cwd=tmp_path)
    assert "night1/m31.fits" in status.stdout + status.stderr, status.stdout

    (src / "night1" / "m31.fits.gz").unlink()
    done = run_oeleo("run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    stored = (tmp_path / "copy" / "night1" / "m31.fits.gz").read_bytes()
    assert gzip.decompress(stored) == frame
    row = db_rows(tmp_path / "oeleo-file-list.db")["night1/m31.fits"]
    assert row["checksum"] == hashlib.md5(frame).hexdigest()
    assert row["external_name"].endswith("m31.fits.gz")

    again = run_oeleo("run", cwd=tmp_path)
    assert again.returncode == 0 and "copied 0 files" in again.stderr, again.stderr
    check = run_oeleo("check", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "same: 2" in check.stdout, check.stdout

    (tmp_path / "copy" / "night1" / "m31.fits.gz").write_bytes(gzip.compress(frame, mtime=1))
    check = run_oeleo("check", cwd=tmp_path)  # other bytes for the same content: not the copy
    assert "different: 1" in check.stdout or "same: 1" in check.stdout, check.stdout


def test_an_unknown_compression_is_one_line_exit_2(tmp_path):
    done = run_oeleo("run", "--from", str(tmp_path), "--to", str(tmp_path / "c"), cwd=tmp_path,
                     env={"OELEO_COMPRESS": "zip"})  # fmt: skip
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [
        "oeleo: OELEO_COMPRESS: expected gzip, or empty for none, got 'zip' (from the environment)"
    ]


def test_a_gz_file_added_beside_a_copied_fits_never_replaces_its_copy(tmp_path):
    # m31.fits was copied as m31.fits.gz; then a file of that very name appears in the source.
    src = tmp_path / "data"
    src.mkdir()
    frame = b"SIMPLE  =                    T" + bytes(2880 * 4)
    (src / "m31.fits").write_bytes(frame)
    (tmp_path / ".env").write_text(
        f"OELEO_BASE_DIR_FROM={src}\nOELEO_BASE_DIR_TO={tmp_path / 'copy'}\n"
        f"OELEO_COMPRESS=gzip\nOELEO_LOG_DIR={tmp_path / 'logs'}\n"
    )
    assert run_oeleo("run", cwd=tmp_path).returncode == 0
    good = (tmp_path / "copy" / "m31.fits.gz").read_bytes()
    (src / "m31.fits.gz").write_bytes(gzip.compress(b"notes, not a frame"))

    clash = run_oeleo("run", cwd=tmp_path)

    assert clash.returncode == 1, clash.stderr
    assert (tmp_path / "copy" / "m31.fits.gz").read_bytes() == good  # the verified copy stays
    failed = [line for line in clash.stderr.splitlines() if line.startswith("failed ")]
    assert len(failed) == 2 and all("neither is copied" in line for line in failed), clash.stderr

    (src / "m31.fits.gz").rename(src / "notes.fits.gz")  # as the line says: rename one of them
    after = run_oeleo("run", cwd=tmp_path)

    assert after.returncode == 0, after.stderr
    assert gzip.decompress((tmp_path / "copy" / "m31.fits.gz").read_bytes()) == frame
    assert (tmp_path / "copy" / "notes.fits.gz").read_bytes() == (src / "notes.fits.gz").read_bytes()
    books = db_rows(tmp_path / "oeleo-file-list.db")
    assert books["m31.fits"]["last_error"] is None  # the clash is over: nothing is wrong
    assert books["m31.fits.gz"]["last_error"] is None  # gone from the source: no clash left
    status = run_oeleo("status", cwd=tmp_path)
    assert "with errors" not in status.stdout, status.stdout
    checked = run_oeleo("check", cwd=tmp_path)
    assert checked.returncode == 0 and "same: 2" in checked.stdout, checked.stdout + checked.stderr


def test_a_pass_over_some_files_only_sees_the_clash_with_a_file_it_was_not_given(tmp_path):
    # A watcher's pass names the changed files only: m31.fits.gz, new, beside m31.fits copied
    # before. The clash is found on disk, and the copy of m31.fits stays.
    from oeleo.checkers import ChecksumChecker
    from oeleo.connectors.base import FileEntry
    from oeleo.connectors.local import LocalConnector
    from oeleo.models import SimpleDbHandler
    from oeleo.workers import Worker

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "m31.fits").write_bytes(b"SIMPLE  =                    T" + bytes(2880))

    def worker() -> Worker:
        return Worker(
            checker=ChecksumChecker(),
            bookkeeper=SimpleDbHandler(tmp_path / "books.db"),
            local_connector=LocalConnector(src),
            external_connector=LocalConnector(dst),
            compress="gzip",
        )

    first = worker()
    first.connect_to_db()
    assert first.run().copied == 1
    first.close()
    good = (dst / "m31.fits.gz").read_bytes()
    (src / "m31.fits.gz").write_bytes(gzip.compress(b"not the frame"))
    st = (src / "m31.fits.gz").stat()
    watcher = worker()
    watcher.connect_to_db()
    watcher.add_entries([FileEntry("m31.fits.gz", st.st_size, st.st_mtime_ns)])

    summary = watcher.run()
    watcher.close()

    assert (summary.copied, summary.failed) == (0, 2), summary.describe()
    assert (dst / "m31.fits.gz").read_bytes() == good
