"""The books never lie: a write of the books that fails is reported as what it is, and no
summary or run row claims bookings that did not happen.

A real full disk under the database is a small tmpfs mounted for the test (root only; the
test says so when it cannot mount); the same SQLite "database or disk is full" is also made
without root by capping the database's pages (``PRAGMA max_page_count``)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from helpers import db_count, make_tree, run_oeleo

from oeleo.checkers import ChecksumChecker
from oeleo.connectors.base import TEMP_SUFFIX
from oeleo.connectors.local import LocalConnector
from oeleo.models import SimpleDbHandler
from oeleo.workers import Worker

FILES = 3000


def many_files(src: Path, n: int = FILES) -> None:
    make_tree(src, {f"run-{i // 500}/f{i:05d}.csv": f"{i}\n" for i in range(n)})


def temporaries(folder: Path) -> list:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(TEMP_SUFFIX))


def copies(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.endswith(TEMP_SUFFIX))


def run_rows(db: Path) -> list:
    with sqlite3.connect(str(db)) as connection:
        return connection.execute("SELECT status, files_copied, message FROM oeleo_runs").fetchall()


def test_a_books_write_that_fails_is_counted_as_not_booked_and_the_run_as_failed(tmp_path):
    src, dst, db = tmp_path / "src", tmp_path / "dst", tmp_path / "books.db"
    many_files(src)
    books = SimpleDbHandler(db)
    worker = Worker(
        checker=ChecksumChecker(),
        bookkeeper=books,
        local_connector=LocalConnector(src),
        external_connector=LocalConnector(dst),
        subdirs=True,
    )
    worker.connect_to_db()
    pages = books.database.execute_sql("PRAGMA page_count").fetchone()[0]
    books.database.execute_sql(f"PRAGMA max_page_count = {pages + 60}")  # room for some rows only
    try:
        summary = worker.run()
    finally:
        worker.close()

    booked = db_count(db, "filelist")
    assert 0 < booked < FILES
    assert summary.copied == booked, summary.describe()
    assert summary.unbooked > 0
    assert summary.exit_status == 2
    assert summary.books_error is not None
    assert str(db) in summary.books_error and "full" in summary.books_error
    assert "rollback" not in summary.books_error
    assert f"copied {booked} files" in summary.describe()
    ((status, copied, message),) = run_rows(db)
    assert (status, copied) == ("failed", booked)
    assert "full" in message
    # What the summary says of the destination is what it holds: no temporary file is left
    # (a batch staged when the books failed is aborted), and every copy in place that has
    # no row is counted as copied but not booked.
    assert temporaries(dst) == []
    assert summary.unbooked == copies(dst) - booked, summary.describe()
    with sqlite3.connect(str(db)) as connection:
        (booked_bytes,) = connection.execute("SELECT SUM(size) FROM filelist").fetchone()
    assert summary.bytes_copied == booked_bytes  # the bytes said are those of the booked files


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a real file system that fills up."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path, leave: int) -> None:
    """Fill the file system of ``folder`` until only ``leave`` bytes are free."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(folder / "filler", "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))


def test_a_nearly_full_disk_under_the_database_books_only_what_it_says(tmp_path, small_disk):
    src, dst = tmp_path / "src", tmp_path / "dst"
    many_files(src)
    db = small_disk / "books.db"
    fill(small_disk, leave=48 * 1024)

    done = run_oeleo("run", "--from", str(src), "--to", str(dst), "--db", str(db), cwd=tmp_path)

    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "rollback" not in done.stderr
    booked = db_count(db, "filelist")
    assert booked < FILES
    summary = done.stderr.strip().splitlines()[-1]
    assert summary.startswith(f"copied {booked} file")
    assert f"database {db}" in summary and "full" in summary
    assert [row[:2] for row in run_rows(db)] == [("failed", booked)]
    assert temporaries(dst) == []
    unbooked = copies(dst) - booked
    assert unbooked > 0 and f"({unbooked} files copied but not booked" in summary, summary


def test_a_database_on_a_full_disk_is_one_line_naming_it_and_exit_2(tmp_path, small_disk):
    src = tmp_path / "src"
    make_tree(src, {"a.csv": "a\n"})
    db = small_disk / "books.db"
    fill(small_disk, leave=0)

    done = run_oeleo("run", "--from", str(src), "--to", str(tmp_path / "dst"), "--db", str(db), cwd=tmp_path)

    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    assert str(db) in line
    assert not (tmp_path / "dst" / "a.csv").exists()
