"""The bookkeeper on a real PostgreSQL: the behaviours of ``test_bookkeeper.py``, the
per-origin advisory lock, errors a person can act on, and ``oeleo`` with ``OELEO_DB_*``."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import servers
from helpers import db_env, pg_query
from test_bookkeeper import ORIGIN, SHARED_CHECKS, by_name

from oeleo.errors import BookkeeperError, DatabaseBusyError
from oeleo.models import SHOULD_BE_COPIED_IF_CHANGED, Bookkeeper, PostgresDbHandler, make_origin


def handler(pg: Dict[str, Any], origin: str = ORIGIN, **changes: Any) -> PostgresDbHandler:
    settings = {**pg, **changes}
    return PostgresDbHandler(
        settings["dbname"],
        host=settings["host"],
        port=settings["port"],
        user=settings["user"],
        password=settings["password"],
        origin=origin,
    )


query = pg_query


def pg_rows(pg: Dict[str, Any]) -> List[dict]:
    exists = query(pg, "SELECT to_regclass('public.filelist') IS NOT NULL AS there")[0]["there"]
    if not exists:
        return []
    return query(pg, "SELECT * FROM filelist ORDER BY origin, local_name")


def open_books_on(pg: Dict[str, Any]):
    def open_(origin: str) -> Bookkeeper:
        books = handler(pg, origin)
        books.initialize_db()
        return books

    return open_


@pytest.mark.parametrize("check", SHARED_CHECKS, ids=lambda f: f.__name__[len("check_") :])
def test_postgres_books(check, postgres_db: Dict[str, Any]) -> None:
    check(open_books_on(postgres_db), lambda: pg_rows(postgres_db))


def test_a_new_database_gets_the_filelist_and_run_tables(postgres_db: Dict[str, Any]) -> None:
    books = handler(postgres_db)
    books.initialize_db()
    books.close()
    tables = {r["tablename"] for r in query(postgres_db, "SELECT tablename FROM pg_tables")}
    columns = {
        r["column_name"]
        for r in query(
            postgres_db, "SELECT column_name FROM information_schema.columns WHERE table_name = 'filelist'"
        )
    }
    assert {"filelist", "oeleo_runs"} <= tables
    assert {"local_name", "checksum", "code", "size", "mtime_ns", "origin", "last_error"} <= columns


def next_xid(pg: Dict[str, Any]) -> int:
    """The next transaction id PostgreSQL will hand out: each writing transaction takes one."""
    return int(query(pg, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS x")[0]["x"])


def test_many_files_are_booked_in_a_few_transactions(postgres_db: Dict[str, Any]) -> None:
    books = handler(postgres_db)
    books.initialize_db()
    try:
        before = next_xid(postgres_db)
        for i in range(300):
            books.record_copied(f"cell-{i:03d}.res", f"/srv/cell-{i:03d}.res", f"sum{i}", i, i)
        books.flush()
        batched = next_xid(postgres_db) - before

        before = next_xid(postgres_db)
        for i in range(20):  # the same kind of writes, flushed one by one: the counter is real
            books.record_error(f"cell-{i:03d}.res", "disk full")
            books.flush()
        one_by_one = next_xid(postgres_db) - before
    finally:
        books.close()
    assert len(pg_rows(postgres_db)) == 300
    assert 1 <= batched <= 2  # one flush; a background autoanalyze may take one more
    assert one_by_one >= 20


def test_two_bookkeepers_on_two_databases_in_one_process(
    postgres_server: Any, postgres_db: Dict[str, Any]
) -> None:
    other = {**postgres_db, "dbname": f"oeleo_t_{uuid.uuid4().hex[:16]}"}
    servers.create_database(postgres_server, other["dbname"])
    try:
        first, second = handler(postgres_db), handler(other)
        first.initialize_db()
        second.initialize_db()  # same origin, other database: the lock is per database
        try:
            first.record_copied("a.csv", "/one/a.csv", "in-first", 1, 1)
            second.record_copied("a.csv", "/two/a.csv", "in-second", 2, 2)
            second.record_copied("b.csv", "/two/b.csv", "only-second", 3, 3)
            first.flush()
            second.flush()
            assert {k: r.checksum for k, r in first.load().items()} == {"a.csv": "in-first"}
            assert set(second.load()) == {"a.csv", "b.csv"}
        finally:
            first.close()
            second.close()
        assert [r["checksum"] for r in pg_rows(postgres_db)] == ["in-first"]
        assert [r["checksum"] for r in pg_rows(other)] == ["in-second", "only-second"]
    finally:
        servers.drop_database(postgres_server, other["dbname"])


# Origins whose crc32 does and does not fit a signed 32-bit lock key.
LOCK_ORIGINS = ["pc-1:/data/instrument", "pc2:/data/b", "x", "y", "z"]


def test_one_process_per_origin_holds_the_advisory_lock(postgres_db: Dict[str, Any]) -> None:
    assert any(zlib.crc32(o.encode()) >= 2**31 for o in LOCK_ORIGINS)
    assert any(zlib.crc32(o.encode()) < 2**31 for o in LOCK_ORIGINS)
    holders = []
    try:
        for origin in LOCK_ORIGINS:  # different origins share one database
            books = handler(postgres_db, origin)
            books.initialize_db()
            holders.append(books)
        for origin in LOCK_ORIGINS:
            rival = handler(postgres_db, origin)
            with pytest.raises(DatabaseBusyError) as err:
                rival.initialize_db()
            assert origin in str(err.value) and "another oeleo process" in str(err.value)
            assert rival.database.is_closed()
    finally:
        for books in holders:
            books.close()
    again = handler(postgres_db, LOCK_ORIGINS[1])  # the lock goes with the connection
    again.initialize_db()
    again.close()


def test_a_reader_does_not_need_the_lock(postgres_db: Dict[str, Any]) -> None:
    runner = handler(postgres_db)
    runner.initialize_db()
    try:
        runner.record_copied("a.csv", "/srv/a.csv", "c", 1, 1)
        runner.flush()
        reader = handler(postgres_db)
        reader.initialize_db(exclusive=False)
        try:
            assert reader.counts() == {SHOULD_BE_COPIED_IF_CHANGED: 1}
        finally:
            reader.close()
    finally:
        runner.close()


def test_a_wrong_password_is_one_line_without_the_password(postgres_db: Dict[str, Any]) -> None:
    secret = "Wrong-" + postgres_db["password"]
    books = handler(postgres_db, password=secret)
    with pytest.raises(BookkeeperError) as err:
        books.initialize_db()
    message = str(err.value)
    assert "\n" not in message
    assert "password authentication failed" in message
    assert f"{postgres_db['host']}:{postgres_db['port']}" in message
    assert secret not in message and postgres_db["password"] not in message
    assert books.database.is_closed()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


def test_an_unreachable_server_is_named_with_host_and_port(postgres_db: Dict[str, Any]) -> None:
    port = closed_port()
    books = handler(postgres_db, port=port)
    with pytest.raises(BookkeeperError) as err:
        books.initialize_db()
    message = str(err.value)
    assert "\n" not in message
    assert f"127.0.0.1:{port}" in message
    assert "refused" in message.lower()


# -- the oeleo command with OELEO_DB_* ------------------------------------------------------
def oeleo(cwd: Path, *args: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("OELEO_")}
    clean.update(COLUMNS="200", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "oeleo", *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


FILES = {"a.csv": "t,v\n0,1\n", "b.res": "RES 1 2\n", "run-1/c.csv": "t,i\n0,0.5\n"}


def test_oeleo_run_books_into_postgres_and_status_reads_it_back(
    tmp_path: Path, postgres_db: Dict[str, Any]
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    for name, text in FILES.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    env = db_env(postgres_db)

    first = oeleo(tmp_path, "run", "--from", str(src), "--to", str(dst), env=env)
    assert first.returncode == 0, first.stderr
    assert {p.relative_to(dst).as_posix(): p.read_text() for p in dst.rglob("*") if p.is_file()} == FILES
    assert not (tmp_path / "oeleo-file-list.db").exists(), "PostgreSQL, not SQLite, holds the books"
    rows = by_name(pg_rows(postgres_db), make_origin(src))
    assert set(rows) == set(FILES)
    assert all(r["code"] == SHOULD_BE_COPIED_IF_CHANGED and r["checksum"] for r in rows.values())
    runs = query(postgres_db, "SELECT status, files_copied FROM oeleo_runs")
    assert runs == [{"status": "ok", "files_copied": 3}]

    again = oeleo(tmp_path, "run", "--from", str(src), "--to", str(dst), env=env)
    assert again.returncode == 0, again.stderr
    assert "3 unchanged" in again.stderr + again.stdout

    status = oeleo(tmp_path, "status", "--from", str(src), "--files", env=env)
    assert status.returncode == 0, status.stderr
    out = status.stdout
    assert f"{postgres_db['host']}:{postgres_db['port']}" in out
    assert re.search(r"\b1\W+should-be-copied-if-changed\W+3\b", out), out
    assert re.search(r"\b0\W+should-be-copied\W+0\b", out), out
    assert re.search(r"last run: .*ok: 0 copied", out), out
    for name, row in rows.items():
        assert re.search(rf"{re.escape(name)}\W+1\W.*{row['checksum']}", out), out


def test_oeleo_with_a_wrong_database_password_exits_2_without_the_password(
    tmp_path: Path, postgres_db: Dict[str, Any]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.csv").write_text("1\n")
    secret = "Not-The-" + postgres_db["password"]
    result = oeleo(
        tmp_path,
        "run",
        "--from",
        str(src),
        "--to",
        str(tmp_path / "dst"),
        env=db_env(postgres_db, password=secret),
    )
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "password authentication failed" in result.stderr
    assert "Traceback" not in output
    assert secret not in output and postgres_db["password"] not in output
    assert not (tmp_path / "dst" / "a.csv").exists()


def test_pcs_starting_together_on_a_fresh_database_all_get_the_tables(postgres_db: Dict[str, Any]) -> None:
    pcs = [handler(postgres_db, f"pc-{i}:/data/instrument") for i in range(8)]
    for books in pcs:
        books.database.connect()
    together = threading.Barrier(len(pcs))
    errors: List[str] = []

    def start(books: PostgresDbHandler) -> None:
        together.wait(timeout=30)
        try:
            books.initialize_db()
            books.record_copied("same.csv", "/srv/same.csv", books.origin, 1, 1)
            books.flush()
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            errors.append(str(exc))
        finally:
            books.close()

    threads = [threading.Thread(target=start, args=(books,)) for books in pcs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(r["checksum"] for r in pg_rows(postgres_db)) == sorted(b.origin for b in pcs)


def test_a_row_postgresql_refuses_fails_alone_and_the_other_files_are_booked(
    tmp_path: Path, postgres_db: Dict[str, Any]
) -> None:
    from oeleo.checkers import ChecksumChecker
    from oeleo.connectors.local import LocalConnector
    from oeleo.workers import Worker

    src, dst = tmp_path / "src", tmp_path / "dst"
    deep = "/".join(["d" * 250] * 5) + "/too-long-for-the-column.csv"  # 1,280 characters
    for name in ("a.csv", deep, "z.csv"):
        path = src.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name[-5:])
    books = handler(postgres_db, make_origin(src))
    worker = Worker(
        checker=ChecksumChecker(),
        bookkeeper=books,
        local_connector=LocalConnector(src),
        external_connector=LocalConnector(dst),
        subdirs=True,
    )
    try:
        summary = worker.run()
    finally:
        worker.close()

    assert (summary.copied, summary.failed, summary.exit_status) == (2, 1, 1), summary.describe()
    assert summary.errors[0][0] == deep and "the books refused its row" in summary.errors[0][1]
    assert {row["local_name"] for row in pg_rows(postgres_db)} == {"a.csv", "z.csv"}
    (run,) = query(postgres_db, "SELECT status, files_copied FROM oeleo_runs")
    assert (run["status"], run["files_copied"]) == ("failed", 2)


def test_run_alive_says_whether_a_run_of_the_origin_holds_the_books(postgres_db: Dict[str, Any]) -> None:
    running = handler(postgres_db)
    reader = handler(postgres_db)
    reader.initialize_db(exclusive=False)
    try:
        assert reader.run_alive() is False
        running.initialize_db()  # a run: holds the origin's advisory lock
        assert reader.run_alive() is True
        running.close()
        # The server ends the closed session (and releases its lock) a moment later.
        deadline = time.monotonic() + 10
        while reader.run_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reader.run_alive() is False
    finally:
        running.close()
        reader.close()
