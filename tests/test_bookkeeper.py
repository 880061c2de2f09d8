"""The bookkeeper on SQLite: rows written in batches, locks kept, errors kept, origins apart.

The ``check_*`` functions describe behaviours shared by every database; ``test_postgres.py``
runs them against a real PostgreSQL. Here they run against real SQLite files, and the rows
are read back with a separate ``sqlite3`` connection, so only committed data counts.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from oeleo import models
from oeleo.errors import BookkeeperError, DatabaseBusyError
from oeleo.models import (
    SHOULD_BE_COPIED,
    SHOULD_BE_COPIED_IF_CHANGED,
    SHOULD_NOT_BE_COPIED,
    Bookkeeper,
    SimpleDbHandler,
)

OpenBooks = Callable[[str], Bookkeeper]
ReadRows = Callable[[], List[dict]]

ORIGIN = "pc-1:/data/instrument"
OTHER_ORIGIN = "pc-2:/data/instrument"


def by_name(rows: List[dict], origin: str = ORIGIN) -> Dict[str, dict]:
    return {row["local_name"]: row for row in rows if row["origin"] == origin}


# -- behaviours shared by every database -------------------------------------------------
def check_queued_writes_are_committed_on_flush(open_books: OpenBooks, read_rows: ReadRows) -> None:
    books = open_books(ORIGIN)
    try:
        books.record_copied("a.csv", "/srv/a.csv", "c0ffee", 12, 1_700_000_000_000_000_001)
        books.record_error("run-1/b.res", "permission denied (b.res)")
        books.record_code("c.csv", SHOULD_NOT_BE_COPIED)
        assert read_rows() == [], "queued writes are committed by flush(), not one by one"
        books.flush()
        rows = by_name(read_rows())
    finally:
        books.close()
    assert set(rows) == {"a.csv", "run-1/b.res", "c.csv"}
    a = rows["a.csv"]
    assert (a["code"], a["checksum"], a["size"], a["mtime_ns"]) == (
        SHOULD_BE_COPIED_IF_CHANGED,
        "c0ffee",
        12,
        1_700_000_000_000_000_001,
    )
    assert a["external_name"] == "/srv/a.csv" and a["last_error"] is None
    b = rows["run-1/b.res"]
    assert (b["code"], b["checksum"], b["last_error"]) == (
        SHOULD_BE_COPIED,
        None,
        "permission denied (b.res)",
    )
    assert rows["c.csv"]["code"] == SHOULD_NOT_BE_COPIED


def check_copying_a_locked_file_keeps_it_locked(open_books: OpenBooks, read_rows: ReadRows) -> None:
    books = open_books(ORIGIN)
    try:
        books.record_code("locked.csv", SHOULD_NOT_BE_COPIED)
        books.flush()
        books.record_copied("locked.csv", "/srv/locked.csv", "beef", 3, 7, code=SHOULD_BE_COPIED_IF_CHANGED)
        books.flush()
    finally:
        books.close()
    row = by_name(read_rows())["locked.csv"]
    assert row["code"] == SHOULD_NOT_BE_COPIED
    assert row["checksum"] == "beef"


def check_an_error_keeps_the_code_and_a_later_copy_clears_it(
    open_books: OpenBooks, read_rows: ReadRows
) -> None:
    books = open_books(ORIGIN)
    try:
        books.record_copied("a.csv", "/srv/a.csv", "first", 5, 1)
        books.record_code("locked.csv", SHOULD_NOT_BE_COPIED)
        books.flush()
        books.record_error("a.csv", "source changed while it was copied")
        books.record_error("locked.csv", "refused by checker")
        books.flush()
        after_error = by_name(read_rows())
        books.record_copied("a.csv", "/srv/a.csv", "second", 6, 2)
        books.flush()
        after_copy = by_name(read_rows())
    finally:
        books.close()
    a = after_error["a.csv"]
    assert (a["code"], a["checksum"], a["last_error"]) == (
        SHOULD_BE_COPIED_IF_CHANGED,
        "first",
        "source changed while it was copied",
    )
    assert after_error["locked.csv"]["code"] == SHOULD_NOT_BE_COPIED
    assert after_error["locked.csv"]["last_error"] == "refused by checker"
    a = after_copy["a.csv"]
    assert (a["code"], a["checksum"], a["last_error"]) == (SHOULD_BE_COPIED_IF_CHANGED, "second", None)


def check_the_last_write_of_a_file_in_one_batch_wins(open_books: OpenBooks, read_rows: ReadRows) -> None:
    books = open_books(ORIGIN)
    try:
        books.record_copied("a.csv", "/srv/a.csv", "old", 1, 1)
        books.record_copied("a.csv", "/srv/a.csv", "new", 2, 2)
        books.record_error("b.csv", "first failure")
        books.record_error("b.csv", "second failure")
        books.record_error("c.csv", "failed, then copied")
        books.record_copied("c.csv", "/srv/c.csv", "fine", 3, 3)
        books.set_code(["d.csv", "d.csv"], SHOULD_NOT_BE_COPIED)  # e.g. a file named twice
    finally:
        books.close()
    rows = by_name(read_rows())
    assert (rows["a.csv"]["checksum"], rows["a.csv"]["size"]) == ("new", 2)
    assert rows["b.csv"]["last_error"] == "second failure"
    assert (rows["c.csv"]["checksum"], rows["c.csv"]["last_error"]) == ("fine", None)
    assert rows["d.csv"]["code"] == SHOULD_NOT_BE_COPIED
    assert len(read_rows()) == 4


def check_two_origins_keep_separate_rows(open_books: OpenBooks, read_rows: ReadRows) -> None:
    first = open_books(ORIGIN)
    try:
        first.record_copied("same.csv", "/srv/pc-1/same.csv", "from-pc-1", 10, 1)
        first.record_copied("only-pc-1.csv", "/srv/pc-1/only-pc-1.csv", "x", 1, 1)
        first.flush()
    finally:
        first.close()
    second = open_books(OTHER_ORIGIN)
    try:
        second.record_code("same.csv", SHOULD_NOT_BE_COPIED)
        second.record_copied("same.csv", "/srv/pc-2/same.csv", "from-pc-2", 20, 2)
        second.flush()
        loaded_by_second = second.load()
    finally:
        second.close()
    first = open_books(ORIGIN)
    try:
        loaded_by_first = first.load()
    finally:
        first.close()

    rows = read_rows()
    assert len(rows) == 3
    assert by_name(rows, ORIGIN)["same.csv"]["checksum"] == "from-pc-1"
    assert by_name(rows, ORIGIN)["same.csv"]["code"] == SHOULD_BE_COPIED_IF_CHANGED
    assert by_name(rows, OTHER_ORIGIN)["same.csv"]["checksum"] == "from-pc-2"
    assert by_name(rows, OTHER_ORIGIN)["same.csv"]["code"] == SHOULD_NOT_BE_COPIED
    assert set(loaded_by_first) == {"same.csv", "only-pc-1.csv"}
    assert loaded_by_first["same.csv"].checksum == "from-pc-1"
    assert set(loaded_by_second) == {"same.csv"}
    assert (loaded_by_second["same.csv"].checksum, loaded_by_second["same.csv"].code) == (
        "from-pc-2",
        SHOULD_NOT_BE_COPIED,
    )


def check_a_run_is_logged_with_its_counts(open_books: OpenBooks, read_rows: ReadRows) -> None:
    books = open_books(ORIGIN)
    try:
        books.start_run()
        books.record_copied("a.csv", "/srv/a.csv", "c", 1, 1)
        books.finish_run("failed", copied=1, failed=2, nbytes=1234, message="")
        runs = books.last_runs(5)
        counts = books.counts()
    finally:
        books.close()
    assert len(runs) == 1
    run = runs[0]
    assert (run.status, run.files_copied, run.files_failed, run.bytes_copied) == ("failed", 1, 2, 1234)
    assert run.finished is not None and run.finished >= run.started
    assert counts == {SHOULD_BE_COPIED_IF_CHANGED: 1}
    assert len(read_rows()) == 1, "finish_run commits what is queued"


def check_a_killed_run_is_marked_interrupted_with_what_it_booked(
    open_books: OpenBooks, read_rows: ReadRows
) -> None:
    books = open_books(ORIGIN)
    try:
        books.start_run()
        books.record_copied("before.csv", "/srv/before.csv", "b", 5, 1)
        books.finish_run("ok", copied=1, failed=0, nbytes=5)
        books.start_run()  # this one is killed after it booked two copies and an error
        books.record_copied("a.csv", "/srv/a.csv", "c", 10, 1)
        books.record_copied("b.csv", "/srv/b.csv", "d", 20, 1)
        books.record_error("c.csv", "refused")
        books.flush()
    finally:
        books.close()
    books = open_books(ORIGIN)
    try:
        books.start_run()  # the next run finds it "running"
        runs = books.last_runs(5)
    finally:
        books.close()
    killed = [run for run in runs if run.status == "interrupted"]
    assert len(killed) == 1, [run.status for run in runs]
    assert (killed[0].files_copied, killed[0].bytes_copied) == (2, 30)


SHARED_CHECKS = [
    check_a_killed_run_is_marked_interrupted_with_what_it_booked,
    check_queued_writes_are_committed_on_flush,
    check_copying_a_locked_file_keeps_it_locked,
    check_an_error_keeps_the_code_and_a_later_copy_clears_it,
    check_the_last_write_of_a_file_in_one_batch_wins,
    check_two_origins_keep_separate_rows,
    check_a_run_is_logged_with_its_counts,
]


# -- SQLite --------------------------------------------------------------------------------
def sqlite_rows(db: Path) -> List[dict]:
    if not db.exists():
        return []
    connection = sqlite3.connect(str(db))
    try:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute("SELECT * FROM filelist ORDER BY origin, local_name")]
    finally:
        connection.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "books.db"


@pytest.fixture
def open_books(db: Path) -> OpenBooks:
    def open_(origin: str) -> Bookkeeper:
        books = SimpleDbHandler(db, origin=origin)
        books.initialize_db()
        return books

    return open_


@pytest.mark.parametrize("check", SHARED_CHECKS, ids=lambda f: f.__name__[len("check_") :])
def test_sqlite_books(check, open_books: OpenBooks, db: Path) -> None:
    check(open_books, lambda: sqlite_rows(db))


def test_a_new_database_gets_the_filelist_and_run_tables(db: Path) -> None:
    books = SimpleDbHandler(db, origin=ORIGIN)
    books.initialize_db()
    books.close()
    connection = sqlite3.connect(str(db))
    try:
        tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        columns = {r[1] for r in connection.execute("PRAGMA table_info(filelist)")}
        unique = [
            [c[2] for c in connection.execute(f"PRAGMA index_info('{idx[1]}')")]
            for idx in connection.execute("PRAGMA index_list(filelist)")
            if idx[2]
        ]
    finally:
        connection.close()
    assert {"filelist", "oeleo_runs"} <= tables
    assert {
        "id",
        "processed_date",
        "local_name",
        "external_name",
        "checksum",
        "code",
        "size",
        "mtime_ns",
        "origin",
        "last_error",
    } <= columns
    assert ["origin", "local_name"] in unique


class StatementLog:
    """Counts transactions on one SQLite connection from the statements it really runs."""

    def __init__(self) -> None:
        self.statements: List[str] = []

    def __call__(self, sql: str) -> None:
        self.statements.append(sql.strip().split()[0].upper())

    @property
    def transactions(self) -> int:
        # A write outside BEGIN ... COMMIT is a transaction of its own (autocommit).
        count, inside = 0, False
        for word in self.statements:
            if word == "BEGIN":
                count, inside = count + 1, True
            elif word in ("COMMIT", "ROLLBACK", "END"):
                inside = False
            elif word in ("INSERT", "UPDATE", "DELETE", "REPLACE") and not inside:
                count += 1
        return count


def test_many_files_are_booked_in_a_few_transactions(db: Path) -> None:
    books = SimpleDbHandler(db, origin=ORIGIN)
    books.initialize_db()
    log = StatementLog()
    books.database.connection().set_trace_callback(log)
    try:
        for i in range(300):
            books.record_copied(f"cell-{i:03d}.res", f"/srv/cell-{i:03d}.res", f"sum{i}", i, i)
        books.flush()
        batched = log.transactions

        log.statements.clear()
        for i in range(20):  # the same writes, flushed one by one: the counter is real
            books.record_error(f"cell-{i:03d}.res", "disk full")
            books.flush()
        one_by_one = log.transactions
    finally:
        books.close()
    assert len(sqlite_rows(db)) == 300
    assert batched == 1, log.statements
    assert one_by_one == 20


def test_the_queue_commits_itself_when_a_batch_is_full(db: Path) -> None:
    books = SimpleDbHandler(db, origin=ORIGIN)
    books.initialize_db()
    try:
        for i in range(models.BATCH_ROWS - 1):
            books.record_copied(f"f{i}.csv", f"/srv/f{i}.csv", "c", 1, 1)
        assert sqlite_rows(db) == []
        books.record_copied("last.csv", "/srv/last.csv", "c", 1, 1)
        assert len(sqlite_rows(db)) == models.BATCH_ROWS
    finally:
        books.close()


def test_closing_commits_what_is_queued(db: Path) -> None:
    books = SimpleDbHandler(db, origin=ORIGIN)
    books.initialize_db()
    books.record_copied("a.csv", "/srv/a.csv", "c", 1, 1)
    books.close()
    assert [r["local_name"] for r in sqlite_rows(db)] == ["a.csv"]
    assert books.database.is_closed()


def test_two_bookkeepers_on_two_databases_in_one_process(tmp_path: Path) -> None:
    first = SimpleDbHandler(tmp_path / "first.db", origin=ORIGIN)
    second = SimpleDbHandler(tmp_path / "second.db", origin=ORIGIN)
    first.initialize_db()
    second.initialize_db()
    try:
        assert first.db_model is not second.db_model
        first.record_copied("a.csv", "/one/a.csv", "in-first", 1, 1)
        second.record_copied("a.csv", "/two/a.csv", "in-second", 2, 2)
        second.record_copied("b.csv", "/two/b.csv", "only-second", 3, 3)
        first.flush()
        second.flush()
        assert {k: r.checksum for k, r in first.load().items()} == {"a.csv": "in-first"}
        assert {k: r.checksum for k, r in second.load().items()} == {
            "a.csv": "in-second",
            "b.csv": "only-second",
        }
    finally:
        first.close()
        second.close()
    assert [r["checksum"] for r in sqlite_rows(tmp_path / "first.db")] == ["in-first"]
    assert [r["checksum"] for r in sqlite_rows(tmp_path / "second.db")] == ["in-second", "only-second"]


def test_a_second_writer_on_the_same_file_is_refused_until_the_first_closes(db: Path) -> None:
    first = SimpleDbHandler(db, origin=ORIGIN)
    first.initialize_db()
    try:
        second = SimpleDbHandler(db, origin=OTHER_ORIGIN)
        with pytest.raises(DatabaseBusyError, match="another oeleo process .*is already using") as err:
            second.initialize_db()
        assert str(db) in str(err.value)
        assert second.database.is_closed()
        reader = SimpleDbHandler(db, origin=ORIGIN)
        reader.initialize_db(exclusive=False)  # `oeleo status` beside a run
        assert reader.counts() == {}
        reader.close()
    finally:
        first.close()
    second = SimpleDbHandler(db, origin=OTHER_ORIGIN)
    second.initialize_db()
    second.close()


def test_set_code_and_unlock_create_and_change_rows(db: Path) -> None:
    books = SimpleDbHandler(db, origin=ORIGIN)
    books.initialize_db()
    try:
        books.record_copied("copied.csv", "/srv/copied.csv", "sum", 1, 1)
        books.flush()
        assert books.set_code(["copied.csv", "never-seen.csv"], SHOULD_NOT_BE_COPIED) == 2
        locked = by_name(sqlite_rows(db))
        assert books.unlock(["copied.csv", "never-seen.csv"]) == 2
        unlocked = by_name(sqlite_rows(db))
        with pytest.raises(ValueError):
            books.set_code(["copied.csv"], 7)
    finally:
        books.close()
    assert {k: r["code"] for k, r in locked.items()} == {
        "copied.csv": SHOULD_NOT_BE_COPIED,
        "never-seen.csv": SHOULD_NOT_BE_COPIED,
    }
    assert {k: r["code"] for k, r in unlocked.items()} == {
        "copied.csv": SHOULD_BE_COPIED_IF_CHANGED,
        "never-seen.csv": SHOULD_BE_COPIED,
    }


def test_a_database_in_a_missing_folder_is_a_one_line_error(tmp_path: Path) -> None:
    books = SimpleDbHandler(tmp_path / "no-such-folder" / "books.db", origin=ORIGIN)
    with pytest.raises(BookkeeperError) as err:
        books.initialize_db()
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "no-such-folder") in message and "does not exist" in message
    assert not (tmp_path / "no-such-folder").exists()


def test_a_corrupt_database_is_a_one_line_error_and_is_left_untouched(db: Path) -> None:
    garbage = bytes(range(256)) * 64
    db.write_bytes(garbage)
    books = SimpleDbHandler(db, origin=ORIGIN)
    with pytest.raises(BookkeeperError) as err:
        books.initialize_db()
    message = str(err.value)
    assert "\n" not in message and str(db) in message and "not a database" in message
    assert db.read_bytes() == garbage
    assert books.database.is_closed()
    # the process lock went with the failed open: a fixed database opens at once
    db.unlink()
    books = SimpleDbHandler(db, origin=ORIGIN)
    books.initialize_db()
    books.close()


def test_a_database_locked_by_another_program_says_so_after_the_busy_timeout(db: Path, monkeypatch) -> None:
    books = SimpleDbHandler(db, origin=ORIGIN)
    books.initialize_db()
    books.close()
    monkeypatch.setattr(models, "BUSY_TIMEOUT_MS", 300)
    holder = sqlite3.connect(str(db), isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        books = SimpleDbHandler(db, origin=ORIGIN)
        with pytest.raises(BookkeeperError) as err:
            books.initialize_db()
    finally:
        holder.close()
    message = str(err.value)
    assert "\n" not in message
    assert str(db) in message and "locked by another program" in message
    books = SimpleDbHandler(db, origin=ORIGIN)
    books.initialize_db()  # the lock is gone, and so is oeleo's own process lock
    books.close()
