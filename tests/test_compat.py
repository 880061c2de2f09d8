"""Scripts and databases made for the published oeleo 0.7 keep working unchanged."""

from __future__ import annotations

import hashlib
import importlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
from helpers import clean_env, run_oeleo

# The two local examples of the published oeleo 0.7 README, verbatim.
README_LOCAL_SCRIPT = """\
import os
from pathlib import Path
import time

import dotenv

from oeleo.checkers import ChecksumChecker
from oeleo.models import SimpleDbHandler
from oeleo.connectors import LocalConnector
from oeleo.workers import Worker
from oeleo.utils import start_logger


def main():
  log = start_logger()
  # assuming you have made a .env file:
  dotenv.load_dotenv()

  db_name = os.environ["OELEO_DB_NAME"]
  base_directory_from = Path(os.environ["OELEO_BASE_DIR_FROM"])
  base_directory_to = Path(os.environ["OELEO_BASE_DIR_TO"])
  filter_extension = os.environ["OELEO_FILTER_EXTENSION"]

  # Making a worker using the Worker class.
  # You can also use the `factory` functions in `oeleo.worker`
  # (e.g. `ssh_worker` and `simple_worker`)
  bookkeeper = SimpleDbHandler(db_name)
  checker = ChecksumChecker()
  local_connector = LocalConnector(directory=base_directory_from)
  external_connector = LocalConnector(directory=base_directory_to)

  worker = Worker(
    checker=checker,
    local_connector=local_connector,
    external_connector=external_connector,
    bookkeeper=bookkeeper,
    extension=filter_extension
  )

  # Running the worker with 5 minutes intervals.
  # You can also use an oeleo scheduler for this.
  worker.connect_to_db()
  while True:
    worker.filter_local()
    worker.run()
    time.sleep(300)


if __name__ == "__main__":
  main()
"""

README_SCHEDULER_SCRIPT = """\
import dotenv

from oeleo.schedulers import SimpleScheduler
from oeleo.workers import simple_worker

# assuming you have created an appropriate .env file
dotenv.load_dotenv()
worker = simple_worker()
s = SimpleScheduler(
        worker,
        run_interval_time=4,  # seconds
        max_run_intervals=4,
    )
s.start()
"""

# The oeleo 0.7 schema, as `sqlite3 db .schema` shows it for a database made by oeleo 0.7.0.
SCHEMA_0_7 = [
    'CREATE TABLE "filelist" ("id" INTEGER NOT NULL PRIMARY KEY, "processed_date" DATETIME NOT NULL, '
    '"local_name" VARCHAR(255) NOT NULL, "external_name" VARCHAR(255), "checksum" VARCHAR(255), '
    '"code" INTEGER NOT NULL)',
    'CREATE UNIQUE INDEX "filelist_local_name" ON "filelist" ("local_name")',
]

SOURCE = {
    "cell_01.csv": "time,voltage\n0,3.1\n",
    "cell_02.csv": "time,voltage\n0,3.3\n",
    "cell_03.csv": "time,voltage\n0,3.5\n",
    "notes.txt": "not a csv\n",
}


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def run_python(cwd: Path, script: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def make_files(root: Path, files: Dict[str, str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)


def write_dot_env(folder: Path, db_name: str = "local2pub.db") -> None:
    (folder / ".env").write_text(
        f"OELEO_BASE_DIR_FROM={folder / 'local'}\n"
        f"OELEO_BASE_DIR_TO={folder / 'pub'}\n"
        "OELEO_FILTER_EXTENSION=.csv\n"
        f"OELEO_DB_NAME={db_name}\n"
        f"OELEO_LOG_DIR={folder / 'logs'}\n"
    )


def copied(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- the README examples ------------------------------------------------------------------
def test_readme_local_folders_script_copies_the_csv_files(tmp_path):
    make_files(tmp_path / "local", SOURCE)
    write_dot_env(tmp_path)
    # The published script loops forever with a 5 minute sleep; the only change is that
    # the sleep becomes a `break`, so the loop body (filter_local, run) runs once.
    assert README_LOCAL_SCRIPT.count("    time.sleep(300)\n") == 1
    script = tmp_path / "copy_local.py"
    script.write_text(README_LOCAL_SCRIPT.replace("    time.sleep(300)\n", "    break\n"))

    done = run_python(tmp_path, script)
    assert done.returncode == 0, done.stderr
    assert copied(tmp_path / "pub") == ["cell_01.csv", "cell_02.csv", "cell_03.csv"]
    assert (tmp_path / "pub" / "cell_02.csv").read_text() == SOURCE["cell_02.csv"]
    con = sqlite3.connect(tmp_path / "local2pub.db")
    names = sorted(r[0] for r in con.execute("SELECT local_name FROM filelist WHERE code = 1"))
    con.close()
    assert names == ["cell_01.csv", "cell_02.csv", "cell_03.csv"]


def test_readme_scheduler_script_copies_the_csv_files(tmp_path):
    make_files(tmp_path / "local", SOURCE)
    write_dot_env(tmp_path, db_name=str(tmp_path / "scheduled.db"))
    # The published example waits 4 s between 4 runs; only those two numbers are made
    # smaller here (str.replace) so the test is fast. Everything else is as published.
    text = README_SCHEDULER_SCRIPT.replace("run_interval_time=4,", "run_interval_time=0.1,").replace(
        "max_run_intervals=4,", "max_run_intervals=2,"
    )
    assert text.count("0.1,") == 1 and text.count("max_run_intervals=2,") == 1
    script = tmp_path / "scheduled.py"
    script.write_text(text)

    done = run_python(tmp_path, script)
    assert done.returncode == 0, done.stderr
    assert copied(tmp_path / "pub") == ["cell_01.csv", "cell_02.csv", "cell_03.csv"]
    con = sqlite3.connect(tmp_path / "scheduled.db")
    runs = con.execute("SELECT COUNT(*) FROM oeleo_runs").fetchone()[0]
    con.close()
    assert runs == 2


# -- the published names ------------------------------------------------------------------
PUBLISHED_NAMES = [
    ("oeleo.workers", "Worker"),
    ("oeleo.workers", "simple_worker"),
    ("oeleo.workers", "ssh_worker"),
    ("oeleo.checkers", "ChecksumChecker"),
    ("oeleo.models", "SimpleDbHandler"),
    ("oeleo.connectors", "LocalConnector"),
    ("oeleo.connectors", "register_password"),
    ("oeleo.schedulers", "SimpleScheduler"),
    ("oeleo.utils", "start_logger"),
]


@pytest.mark.parametrize("module, name", PUBLISHED_NAMES, ids=[f"{m}.{n}" for m, n in PUBLISHED_NAMES])
def test_published_import_path_still_imports(module, name):
    assert callable(getattr(importlib.import_module(module), name))


def test_register_password_makes_the_password_available_as_oeleo_password(monkeypatch):
    from oeleo.connectors import register_password
    from oeleo.settings import load_settings

    monkeypatch.delenv("OELEO_PASSWORD", raising=False)
    register_password("pa55")
    assert os.environ["OELEO_PASSWORD"] == "pa55"
    assert load_settings().password.get_secret_value() == "pa55"


# -- the worker calls ---------------------------------------------------------------------
def make_worker(tmp_path: Path, db_name: str = "books.db"):
    from oeleo.checkers import ChecksumChecker
    from oeleo.connectors import LocalConnector
    from oeleo.models import SimpleDbHandler
    from oeleo.workers import Worker

    return Worker(
        checker=ChecksumChecker(),
        local_connector=LocalConnector(directory=tmp_path / "local"),
        external_connector=LocalConnector(directory=tmp_path / "pub"),
        bookkeeper=SimpleDbHandler(str(tmp_path / db_name)),
        extension=".csv",
    )


def test_worker_connect_filter_run_close_copies_the_filtered_files(tmp_path):
    make_files(tmp_path / "local", SOURCE)
    worker = make_worker(tmp_path)
    worker.connect_to_db()
    try:
        found = worker.filter_local()
        assert sorted(p.name for p in found) == ["cell_01.csv", "cell_02.csv", "cell_03.csv"]
        summary = worker.run()
    finally:
        worker.close()
    assert summary.copied == 3
    assert copied(tmp_path / "pub") == ["cell_01.csv", "cell_02.csv", "cell_03.csv"]


def test_worker_add_local_copies_only_the_named_files(tmp_path):
    make_files(tmp_path / "local", SOURCE)
    worker = make_worker(tmp_path)
    worker.connect_to_db()
    try:
        worker.add_local([tmp_path / "local" / "cell_02.csv"])
        worker.run()
    finally:
        worker.close()
    assert copied(tmp_path / "pub") == ["cell_02.csv"]


def test_worker_check_update_db_books_what_is_already_there(tmp_path):
    make_files(tmp_path / "local", SOURCE)
    make_files(tmp_path / "pub", {"cell_01.csv": SOURCE["cell_01.csv"], "cell_02.csv": "other\n"})
    worker = make_worker(tmp_path)
    worker.connect_to_db()
    try:
        worker.filter_local()
        report = worker.check(update_db=True)
    finally:
        worker.close()
    assert report.same == ["cell_01.csv"]
    assert report.different == ["cell_02.csv"]
    assert report.missing == ["cell_03.csv"]
    assert copied(tmp_path / "pub") == ["cell_01.csv", "cell_02.csv"]
    con = sqlite3.connect(tmp_path / "books.db")
    codes = dict(con.execute("SELECT local_name, code FROM filelist"))
    con.close()
    assert codes == {"cell_01.csv": 1, "cell_02.csv": 0, "cell_03.csv": 0}

    # A run afterwards copies the two that are not there yet, and leaves the third alone.
    inode = (tmp_path / "pub" / "cell_01.csv").stat().st_ino
    worker = make_worker(tmp_path)
    worker.connect_to_db()
    try:
        worker.filter_local()
        summary = worker.run()
    finally:
        worker.close()
    assert summary.copied == 2
    assert (tmp_path / "pub" / "cell_01.csv").stat().st_ino == inode
    assert (tmp_path / "pub" / "cell_02.csv").read_text() == SOURCE["cell_02.csv"]


def test_simple_worker_reads_the_published_variables(tmp_path, monkeypatch):
    from oeleo.workers import simple_worker

    for name in list(os.environ):
        if name.upper().startswith("OELEO_"):
            monkeypatch.delenv(name)
    make_files(tmp_path / "local", SOURCE)
    monkeypatch.setenv("OELEO_BASE_DIR_FROM", str(tmp_path / "local"))
    monkeypatch.setenv("OELEO_BASE_DIR_TO", str(tmp_path / "pub"))
    monkeypatch.setenv("OELEO_FILTER_EXTENSION", ".csv")
    monkeypatch.setenv("OELEO_DB_NAME", str(tmp_path / "simple.db"))
    worker = simple_worker()
    worker.connect_to_db()
    try:
        worker.filter_local()
        worker.run()
    finally:
        worker.close()
    assert copied(tmp_path / "pub") == ["cell_01.csv", "cell_02.csv", "cell_03.csv"]
    assert (tmp_path / "simple.db").is_file()


# -- an oeleo 0.7 database ----------------------------------------------------------------
def make_0_7_database(path: Path, rows: list) -> None:
    con = sqlite3.connect(path)
    for statement in SCHEMA_0_7:
        con.execute(statement)
    con.executemany(
        "INSERT INTO filelist (id, processed_date, local_name, external_name, checksum, code) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )
    con.commit()
    con.close()


def test_oeleo_0_7_database_is_upgraded_in_place_and_its_books_respected(tmp_path):
    local, pub = tmp_path / "local", tmp_path / "pub"
    files = {
        "file_number_1.xyz": "one\n",
        "file_number_10.xyz": "ten\n",
        "file_number_2.xyz": "two, edited after the last copy\n",
        "file_number_3.xyz": "three, locked\n",
    }
    make_files(local, files)
    # What 0.7 copied earlier: the first two are the same as now, the third is older.
    make_files(
        pub, {"file_number_1.xyz": "one\n", "file_number_10.xyz": "ten\n", "file_number_2.xyz": "two\n"}
    )
    db = tmp_path / "local2pub.db"
    ext = str(pub) + os.sep
    published_rows = [
        (1, "2022-07-05 15:55:02.521154", "file_number_1.xyz", ext + "file_number_1.xyz", md5("one\n"), 1),
        (2, "2022-07-05 15:55:02.536152", "file_number_10.xyz", ext + "file_number_10.xyz", md5("ten\n"), 1),
        (3, "2022-07-05 15:55:02.553157", "file_number_2.xyz", ext + "file_number_2.xyz", md5("two\n"), 1),
        (5, "2022-07-05 15:55:02.601234", "file_number_3.xyz", None, None, 2),
        (9, "2022-07-05 15:55:02.702345", "gone.xyz", ext + "gone.xyz", md5("gone\n"), 1),
    ]
    make_0_7_database(db, published_rows)
    untouched = {n: (pub / n).stat() for n in ("file_number_1.xyz", "file_number_10.xyz")}

    done = run_oeleo("run", "--from", "local", "--to", "pub", "--db", db.name, cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    columns = {r["name"] for r in con.execute("PRAGMA table_info(filelist)")}
    after = {r["local_name"]: r for r in con.execute("SELECT * FROM filelist")}
    con.close()
    assert {"size", "mtime_ns", "origin", "last_error"} <= columns
    assert len(after) == len(published_rows)
    assert {(r["id"], n) for n, r in after.items()} == {(row[0], row[2]) for row in published_rows}

    for name in ("file_number_1.xyz", "file_number_10.xyz"):
        now = (pub / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (untouched[name].st_ino, untouched[name].st_mtime_ns)
        assert after[name]["size"] == (local / name).stat().st_size
        assert after[name]["mtime_ns"] == (local / name).stat().st_mtime_ns
        assert after[name]["code"] == 1

    assert (pub / "file_number_2.xyz").read_text() == files["file_number_2.xyz"]
    assert after["file_number_2.xyz"]["checksum"] == md5(files["file_number_2.xyz"])

    assert not (pub / "file_number_3.xyz").exists()
    assert after["file_number_3.xyz"]["code"] == 2
    assert after["gone.xyz"]["checksum"] == md5("gone\n")

    # Unchanged files are now known by size and time: the next run copies nothing.
    again = run_oeleo("run", "--from", "local", "--to", "pub", "--db", db.name, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "copied 0 files" in again.stderr


def test_dry_run_on_an_oeleo_0_7_database_changes_nothing_and_reports_only_changed_files(tmp_path):
    local, pub = tmp_path / "local", tmp_path / "pub"
    make_files(local, {"same.xyz": "same\n", "edited.xyz": "edited\n", "new.xyz": "new\n"})
    db = tmp_path / "old.db"
    make_0_7_database(
        db,
        [
            (1, "2022-07-05 15:55:02.521154", "same.xyz", "x", md5("same\n"), 1),
            (2, "2022-07-05 15:55:02.536152", "edited.xyz", "x", md5("before\n"), 1),
        ],
    )
    before = db.read_bytes()

    done = run_oeleo("run", "--dry-run", "--from", "local", "--to", "pub", "--db", db.name, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == ["edited.xyz", "new.xyz"]
    assert db.read_bytes() == before  # not upgraded, not written
    assert not pub.exists()
