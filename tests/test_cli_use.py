"""The ``oeleo`` command as people use it (issue 8, section 4): lock a path as it is on disk
right after a run, status and dry runs that only read, output that fits 80 columns and pipes,
progress while ``check`` hashes, one-line errors with honest exit statuses, SIGHUP.

Every test runs the real command (``python -m oeleo``, ``helpers.run_oeleo``) in a folder of
real files; one runs ``oeleo.cli.main`` in a forked child as an unprivileged user, since root
writes to read-only files.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import pty
import pwd
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, Dict, List

import pytest
from helpers import (
    clean_env,
    db_rows,
    make_tree,
    run_oeleo,
    signal_mid_copy,
    tree_files,
    wait_for,
    write_random,
)

FILES = {
    "a.csv": "time,voltage\n0,3.1\n",
    "b.csv": "time,voltage\n0,4.1\n",
    "notes.txt": "cell 7\n",
    "run-1/c.csv": "time,current\n0,0.5\n",
    "run-1/scan.res": "RES 1 2 3\n",
}
MiB = 1024 * 1024


@pytest.fixture
def work(tmp_path: Path) -> Path:
    make_tree(tmp_path / "src", FILES)
    return tmp_path


def run(work: Path, *extra: str, **kwargs: Any) -> subprocess.CompletedProcess:
    done = run_oeleo("run", "--from", "src", "--to", "dst", "--db", "books.db", *extra, cwd=work, **kwargs)
    assert done.returncode == 0, done.stderr
    return done


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


# -- 1. lock and unlock a path as it is on disk -------------------------------------------------
def test_lock_right_after_a_run_finds_the_source_folder_from_the_books(work: Path) -> None:
    run(work)
    relative = run_oeleo("lock", "src/a.csv", "--db", "books.db", cwd=work)
    assert relative.returncode == 0, relative.stderr
    assert relative.stdout.splitlines() == ["locked a.csv"]
    assert relative.stderr.strip() == "1 file locked"
    absolute = run_oeleo("lock", str(work / "src" / "run-1"), "--db", str(work / "books.db"), cwd=work)
    assert absolute.returncode == 0, absolute.stderr
    assert "2 files locked" in absolute.stderr
    rows = db_rows(work / "books.db")
    assert {name: row["code"] for name, row in rows.items()} == {
        "a.csv": 2,
        "b.csv": 1,
        "notes.txt": 1,
        "run-1/c.csv": 2,
        "run-1/scan.res": 2,
    }
    unlocked = run_oeleo("unlock", "src/a.csv", "--db", "books.db", cwd=work)
    assert unlocked.returncode == 0, unlocked.stderr
    assert db_rows(work / "books.db")["a.csv"]["code"] == 1


def test_a_name_the_books_know_is_unlocked_after_its_file_is_gone_without_from(work: Path) -> None:
    run(work)
    assert run_oeleo("lock", "src/run-1/c.csv", "--db", "books.db", cwd=work).returncode == 0
    (work / "src" / "run-1" / "c.csv").unlink()
    done = run_oeleo("unlock", "run-1/c.csv", "--db", "books.db", cwd=work)  # relative to src
    assert done.returncode == 0, done.stderr
    assert "1 file unlocked" in done.stderr
    assert db_rows(work / "books.db")["run-1/c.csv"]["code"] == 1


@pytest.mark.parametrize("verb", ["lock", "unlock"])
def test_an_empty_path_is_refused_and_no_row_changes(work: Path, verb: str) -> None:
    run(work)
    assert run_oeleo("lock", "src/a.csv", "--db", "books.db", cwd=work).returncode == 0
    before = {name: row["code"] for name, row in db_rows(work / "books.db").items()}
    line = one_line_error(run_oeleo(verb, "", "--db", "books.db", cwd=work))  # `oeleo lock "$F"`
    assert "an empty path" in line and f"oeleo {verb} PATH" in line
    assert {name: row["code"] for name, row in db_rows(work / "books.db").items()} == before


def test_lock_picks_the_longest_source_folder_of_the_books_that_holds_the_path(work: Path) -> None:
    run(work)  # books src, and src/run-1 is a second source folder of its own
    done = run_oeleo("run", "--from", "src/run-1", "--to", "dst2", "--db", "books.db", cwd=work)
    assert done.returncode == 0, done.stderr

    locked = run_oeleo("lock", "src/run-1/c.csv", "--db", "books.db", cwd=work)

    assert locked.returncode == 0, locked.stderr
    assert locked.stdout.splitlines() == ["locked c.csv"]
    codes = {(row["origin"].split(":", 1)[1], row["local_name"]): row["code"] for row in all_rows(work)}
    assert codes[(str((work / "src" / "run-1").resolve()), "c.csv")] == 2
    assert codes[(str((work / "src").resolve()), "run-1/c.csv")] == 1


def all_rows(work: Path) -> List[dict]:
    """Every row of ``filelist``, of every origin."""
    connection = sqlite3.connect(str(work / "books.db"))
    connection.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in connection.execute("SELECT * FROM filelist")]
    finally:
        connection.close()


@pytest.mark.parametrize("command", ["lock", "unlock", "status"])
def test_lock_unlock_and_status_never_create_books_and_say_where_they_looked(
    work: Path, command: str
) -> None:
    run(work)
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    paths = [str(work / "src" / "a.csv")] if command != "status" else []

    line = one_line_error(run_oeleo(command, *paths, cwd=elsewhere))

    assert str(elsewhere / "oeleo-file-list.db") in line
    assert list(elsewhere.iterdir()) == []


def test_lock_run_from_the_destination_takes_a_name_relative_to_the_source_folder(work: Path) -> None:
    run(work)
    done = run_oeleo("lock", "a.csv", "--from", "../src", "--db", "../books.db", cwd=work / "dst")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["locked a.csv"]
    assert db_rows(work / "books.db")["a.csv"]["code"] == 2


def test_lock_of_a_name_that_is_not_utf8_books_it_and_prints_it_readably(work: Path) -> None:
    if os.name == "nt":
        pytest.skip("names are UTF-16 on Windows")
    name = os.fsdecode(b"m\xe9sure.csv")  # written in Latin-1 by an old instrument program
    (work / "src" / name).write_text("t,v\n")
    run(work)

    done = run_oeleo("lock", f"src/{name}", "--db", "books.db", cwd=work)

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["locked m\\xe9sure.csv"]
    locked = [row for row in db_rows(work / "books.db").values() if row["code"] == 2]
    assert len(locked) == 1 and locked[0]["local_name"] != "a.csv"
    again = run(work)
    assert "1 locked" in again.stderr


# -- 3. status and dry runs only read -------------------------------------------------------------
def snapshot(folder: Path) -> Dict[str, Any]:
    """Every entry of ``folder`` with its bytes and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()}


def test_status_and_a_dry_run_write_nothing_even_while_another_program_writes(work: Path) -> None:
    run(work)
    (work / "src" / "new.csv").write_text("new\n")
    books = work / "books"
    books.mkdir()
    shutil.move(str(work / "books.db"), str(books / "books.db"))
    for leftover in work.glob("books.db*"):
        leftover.unlink()
    before = snapshot(books)
    # A database editor in the middle of a write transaction: a reader goes on, a writer waits.
    writer = sqlite3.connect(str(books / "books.db"), isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        status = run_oeleo("status", "--from", "src", "--db", "books/books.db", cwd=work)
        dry = run_oeleo(
            "run", "--dry-run", "--from", "src", "--to", "dst", "--db", "books/books.db", cwd=work
        )
        took = time.monotonic() - started
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert status.returncode == 0, status.stderr
    assert "last run" in status.stdout
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == ["new.csv"]
    assert took < 4, "a reader never waits for the writer's lock"
    assert snapshot(books) == before


@pytest.fixture
def shared_dir():
    """A folder the unprivileged user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="oeleo-ro-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    for folder, _, _ in os.walk(path):
        os.chmod(folder, 0o755)
    shutil.rmtree(path, ignore_errors=True)


def commands_as_unprivileged(root: Path, commands: List[List[str]]) -> List[Dict[str, Any]]:
    """Run ``oeleo.cli.main`` for each command in ``root`` as a user without root's rights.

    Not root: the real command, with run_oeleo. Root (CI): root writes to read-only files, so
    a forked child runs the commands once as root on a copy (to import what they import: the
    interpreter lives under root's home) and then, as ``nobody``, on ``root`` itself.
    """
    if os.geteuid() != 0:
        results = []
        for argv in commands:
            done = run_oeleo(*argv, cwd=root)
            results.append({"status": done.returncode, "out": done.stdout, "err": done.stderr})
        return results
    rehearsal = root.parent / (root.name + "-rehearsal")
    shutil.copytree(root, rehearsal)
    nobody = pwd.getpwnam("nobody")
    context = multiprocessing.get_context("fork")
    parent_end, child_end = context.Pipe(duplex=False)

    def main_in(folder: Path, argv: List[str]) -> Dict[str, Any]:
        from oeleo.cli import main

        os.chdir(folder)
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            try:
                status = main(argv)
            except SystemExit as exc:
                status = exc.code
        return {"status": status, "out": out.getvalue(), "err": err.getvalue()}

    def child() -> None:
        try:
            for name in [n for n in os.environ if n.upper().startswith("OELEO_")]:
                del os.environ[name]
            for argv in commands:
                main_in(rehearsal, argv)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            child_end.send([main_in(root, argv) for argv in commands])
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            child_end.send([{"raised": f"{type(exc).__name__}: {exc}"}])

    process = context.Process(target=child)
    process.start()
    try:
        assert parent_end.poll(60), "the unprivileged child did not answer"
        return parent_end.recv()
    finally:
        process.join(10)
        shutil.rmtree(rehearsal, ignore_errors=True)


def test_status_and_a_dry_run_work_on_a_read_only_database_in_a_read_only_folder(shared_dir: Path) -> None:
    work = shared_dir / "work"
    make_tree(work / "src", FILES)
    books = work / "books"
    books.mkdir()
    run_oeleo("run", "--from", "src", "--to", "dst", "--db", "books/books.db", cwd=work)
    (work / "books" / "books.db.lock").unlink(missing_ok=True)
    (work / "src" / "new.csv").write_text("new\n")
    for folder, _, files in os.walk(work):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    (books / "books.db").chmod(0o444)
    books.chmod(0o555)
    before = snapshot(books)

    status, dry = commands_as_unprivileged(
        work,
        [
            ["status", "--from", "src", "--db", "books/books.db"],
            ["run", "--dry-run", "--from", "src", "--to", "dst", "--db", "books/books.db"],
        ],
    )

    assert "raised" not in status, status
    assert status["status"] == 0, status["err"]
    assert "last run" in status["out"] and "not booked yet: 1" in status["out"]
    assert dry["status"] == 0, dry["err"]
    assert dry["out"].splitlines() == ["new.csv"]
    assert snapshot(books) == before


def test_a_dry_run_does_not_create_the_log_file(work: Path) -> None:
    done = run(work, "--dry-run", env={"OELEO_LOG_DIR": str(work / "logs")})
    assert sorted(done.stdout.splitlines()) == sorted(FILES)
    assert not (work / "logs").exists()
    assert not (work / "books.db").exists()


# -- 4. status and check, at 80 columns and on a terminal ----------------------------------------
LONG = "spectra-" + "x" * 44 + "-0001.csv"  # 60 characters


def test_status_says_when_the_last_run_started_and_finished_and_how_long_it_took(work: Path) -> None:
    run(work)
    done = run_oeleo("status", "--from", "src", "--db", "books.db", cwd=work)
    assert done.returncode == 0, done.stderr
    assert re.search(
        r"^last run: started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d, finished \d\d:\d\d:\d\d "
        r"\(took \d+\.\d s\), ok: 5 copied \(\d+ B\), 0 failed$",
        done.stdout,
        flags=re.M,
    ), done.stdout


@pytest.mark.parametrize(
    "state, holder, shown",
    [
        ("running", True, "running (still going)"),
        ("running", False, "interrupted"),  # nobody holds the books: the run was killed
        ("interrupted", False, "interrupted"),
    ],
)
def test_status_says_a_run_that_did_not_finish_is_running_or_interrupted(
    work: Path, state: str, holder: bool, shown: str
) -> None:
    from oeleo.locks import ProcessLock

    run(work)
    connection = sqlite3.connect(str(work / "books.db"))
    with connection:
        origin = connection.execute("SELECT origin FROM oeleo_runs").fetchone()[0]
        connection.execute(
            "INSERT INTO oeleo_runs (origin, started, status, files_copied, files_failed, bytes_copied) "
            "VALUES (?, '2026-11-24 07:34:42', ?, 0, 0, 0)",
            (origin, state),
        )
    connection.close()
    lock = ProcessLock(work / "books.db.lock", "the books")  # what a live run holds
    if holder:
        lock.acquire()
    try:
        done = run_oeleo("status", "--from", "src", "--db", "books.db", cwd=work)
    finally:
        lock.release()
    assert done.returncode == 0, done.stderr
    pattern = rf"^last run: started 2026-11-24 07:34:42, {re.escape(shown)}"
    assert re.search(pattern, done.stdout, flags=re.M), done.stdout


def test_status_at_80_columns_keeps_every_name_reason_and_checksum_whole(tmp_path: Path) -> None:
    failing = "z-" + "y" * 58  # 60 characters
    make_tree(tmp_path / "src", {LONG: "1\n", failing: "2\n", "short.csv": "3\n"})
    (tmp_path / "dst" / failing).mkdir(parents=True)  # a folder in its place: it cannot land
    done = run_oeleo("run", "--from", "src", "--to", "dst", "--db", "books.db", cwd=tmp_path)
    assert done.returncode == 1, done.stderr

    status = run_oeleo(
        "status", "--files", "--from", "src", "--db", "books.db", cwd=tmp_path, env={"COLUMNS": "80"}
    )

    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    digest = hashlib.md5(b"1\n").hexdigest()
    assert [line for line in lines if LONG in line and digest in line], status.stdout
    reason = db_rows(tmp_path / "books.db")[failing]["last_error"]
    assert [line for line in lines if failing in line and reason in line], status.stdout
    last_run = [line for line in lines if line.startswith("last run:")]
    assert len(last_run) == 1 and last_run[0].endswith("1 failed"), status.stdout


def test_status_counts_the_files_no_run_has_tried_yet(work: Path) -> None:
    run(work, "--ext", ".csv")
    done = run_oeleo("status", "--from", "src", "--db", "books.db", cwd=work)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^not booked yet: 2\b", done.stdout, flags=re.M), done.stdout
    csv_only = run_oeleo("status", "--from", "src", "--ext", ".csv", "--db", "books.db", cwd=work)
    assert re.search(r"^not booked yet: 0\b", csv_only.stdout, flags=re.M), csv_only.stdout


def run_on_a_terminal(args: List[str], cwd: Path) -> tuple:
    """Run ``python -m oeleo`` with stderr on a pseudo-terminal; returns (status, stdout, terminal)."""
    main_end, terminal_end = pty.openpty()
    env = clean_env({"TERM": "xterm-256color", "COLUMNS": "100"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "oeleo", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal_end,
    )
    os.close(terminal_end)
    seen = bytearray()

    def drain() -> None:
        while True:
            ready, _, _ = select.select([main_end], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(main_end, 65536)
                except OSError:  # the other end closed
                    return
                if not chunk:
                    return
                seen.extend(chunk)
            elif proc.poll() is not None:
                return

    reader = threading.Thread(target=drain)
    reader.start()
    out, _ = proc.communicate(timeout=120)
    reader.join(10)
    os.close(main_end)
    return proc.returncode, out.decode("utf-8", "replace"), seen.decode("utf-8", "replace")


def test_check_on_a_terminal_shows_that_it_is_checking_and_in_a_pipe_prints_only_the_result(
    tmp_path: Path,
) -> None:
    write_random(tmp_path / "src" / "big.bin", 64 * MiB)
    make_tree(tmp_path / "src", {"a.csv": "1\n"})
    run_oeleo("run", "--from", "src", "--to", "dst", "--db", "books.db", cwd=tmp_path)
    args = ["check", "--from", "src", "--to", "dst", "--db", "books.db"]

    status, out, terminal = run_on_a_terminal(args, tmp_path)

    assert status == 0, terminal
    assert "same: 2" in out
    assert re.search(r"checking \d+/2 files", terminal), terminal
    piped = run_oeleo(*args, cwd=tmp_path)
    assert piped.returncode == 0, piped.stderr
    assert "checking" not in piped.stderr + piped.stdout


# -- 5. wording --------------------------------------------------------------------------------
def test_counts_of_one_say_file_not_files(work: Path) -> None:
    run(work)
    (work / "src" / "new.csv").write_text("new\n")
    done = run(work)
    assert "copying 1 file (" in done.stderr
    locked = run_oeleo("lock", "src/new.csv", "--from", "src", "--db", "books.db", cwd=work)
    assert locked.stderr.strip() == "1 file locked"


def test_a_usage_error_names_the_help_to_read(tmp_path: Path) -> None:
    top = one_line_error(run_oeleo("--bogus", cwd=tmp_path))
    assert top.endswith("(see oeleo --help)"), top
    sub = one_line_error(run_oeleo("status", "--bogus", cwd=tmp_path))
    assert sub.endswith("(see oeleo status --help)"), sub


# -- 7. --debug ----------------------------------------------------------------------------------
def test_debug_shows_the_traceback_and_keeps_the_exit_status(work: Path) -> None:
    (work / "books.db").write_bytes(os.urandom(8192))
    args = ["run", "--from", "src", "--to", "dst", "--db", "books.db"]
    plain = run_oeleo(*args, cwd=work)
    debug = run_oeleo(*args, "--debug", cwd=work)
    assert "not a database" in one_line_error(plain)
    assert debug.returncode == plain.returncode == 2
    assert "Traceback" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1] == plain.stderr.strip()


# -- 8. SIGHUP ---------------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on Windows")
def test_sighup_stops_a_copy_cleanly_with_status_129(tmp_path: Path) -> None:
    write_random(tmp_path / "src" / "big.bin", 300 * MiB)
    dst = tmp_path / "dst"
    args = ["run", "--from", "src", "--to", "dst", "--db", "books.db"]
    status, err = signal_mid_copy(args, tmp_path, dst, "big.bin", signal.SIGHUP, clean_env())
    assert status == 129, err
    assert "Traceback" not in err
    assert tree_files(dst) == {}
    books = db_rows(tmp_path / "books.db")
    assert "big.bin" not in books or not books["big.bin"]["checksum"]
    (tmp_path / "src" / "big.bin").unlink()


# -- 6. Windows paths on Linux and macOS ----------------------------------------------------------
@pytest.mark.skipif(os.name == "nt", reason="these are paths on Windows")
def test_a_windows_path_from_the_docs_gets_a_one_line_warning(work: Path) -> None:
    done = run_oeleo("config", cwd=work, env={"OELEO_DB_NAME": "C:\\oeleo\\raw.db"})
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "OELEO_DB_NAME" in line]
    assert len(warnings) == 1, done.stderr
    assert "C:\\oeleo\\raw.db" in warnings[0] and "looks like a Windows path" in warnings[0]


def test_a_listing_cut_short_by_head_ends_quietly(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", {f"run-{i:05d}-{'spectrum' * 4}.csv": "1\n" for i in range(3000)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "oeleo", "run", "--dry-run", "--from", "src", "--to", "dst"],
        cwd=tmp_path,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    first = proc.stdout.readline()  # `| head -1`: one line, then the reader goes
    proc.stdout.close()
    err = proc.stderr.read().decode()
    status = proc.wait(timeout=60)
    assert first.startswith(b"run-00000-")
    assert status == 1
    assert "Traceback" not in err and "unexpected error" not in err, err


def test_status_on_an_oeleo_0_7_database_upgrades_it_and_shows_its_rows(work: Path) -> None:
    connection = sqlite3.connect(str(work / "local2pub.db"))
    connection.execute(
        'CREATE TABLE "filelist" ("id" INTEGER NOT NULL PRIMARY KEY, "processed_date" DATETIME NOT NULL, '
        '"local_name" VARCHAR(255) NOT NULL, "external_name" VARCHAR(255), "checksum" VARCHAR(255), '
        '"code" INTEGER NOT NULL)'
    )
    connection.execute('CREATE UNIQUE INDEX "filelist_local_name" ON "filelist" ("local_name")')
    connection.execute(
        "INSERT INTO filelist VALUES (1, '2022-03-01 10:00:00', 'a.csv', 'pub/a.csv', 'abc', 2)"
    )
    connection.commit()
    connection.close()

    done = run_oeleo("status", "--files", "--from", "src", "--db", "local2pub.db", cwd=work)

    assert done.returncode == 0, done.stderr
    assert "upgrading the filelist table" in done.stderr
    assert re.search(r"^a\.csv +2 .* abc$", done.stdout, flags=re.M), done.stdout
    assert "not booked yet: 4" in done.stdout
    assert "last run: never" in done.stdout


def test_sigterm_stops_a_check_between_two_files_with_status_143(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    block = b"\0" * (4 * MiB)
    for i in range(200):  # 800 MiB on each side (hard links): seconds of md5 to compare
        (src / f"f{i:04d}.dat").write_bytes(block)
        os.link(src / f"f{i:04d}.dat", dst / f"f{i:04d}.dat")
    err_path = tmp_path / "err.txt"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "oeleo",
                "check",
                "--from",
                "src",
                "--to",
                "dst",
                "--db",
                "books.db",
                "--debug",
            ],
            cwd=tmp_path,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_for(lambda: b"checking f0002" in err_path.read_bytes() or proc.poll() is not None, 60, "check")
        assert proc.poll() is None, "the check ended before the signal"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143, err_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err_path.read_text()
    assert "SIGTERM received, stopping cleanly" in text
    assert "checking f0199" not in text  # it stopped, it did not finish
    assert "Traceback" not in text
