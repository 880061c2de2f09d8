"""The ``oeleo`` command, run as a user runs it: ``python -m oeleo ...`` in a folder of
real files, with a controlled environment, checking files, the books and the exit status."""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from helpers import signal_mid_copy

from oeleo.locks import ProcessLock

FILES = {
    "a.csv": "time,voltage\n0,3.1\n1,3.2\n",
    "b.csv": "time,voltage\n0,4.1\n",
    "notes.txt": "cell 7, second cycle\n",
    "run-1/c.csv": "time,current\n0,0.5\n",
    "run-1/spectra/scan.res": "RES 1 2 3\n",
}

MiB = 1024 * 1024


def oeleo_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("OELEO_")}
    env["COLUMNS"] = "200"  # rich wraps tables at 80 columns when not on a terminal
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra or {})
    return env


def oeleo(cwd: Path, *args: str, env: Optional[Dict[str, str]] = None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "oeleo", *args],
        cwd=cwd,
        env=oeleo_env(env),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
    )


def make_tree(root: Path, files: Dict[str, str] = FILES) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def rows(db: Path) -> Dict[str, sqlite3.Row]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return {r["local_name"]: r for r in con.execute("SELECT * FROM filelist")}
    finally:
        con.close()


def count(db: Path, table: str) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
    finally:
        con.close()


def files_under(root: Path) -> List[str]:
    if not root.exists():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def touch_later(path: Path, text: str) -> None:
    """Change a file so that both its content and its mtime differ."""
    before = path.stat().st_mtime_ns
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(before + 5_000_000_000, before + 5_000_000_000))


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture
def work(tmp_path):
    """A folder with a source tree ``src``; the command runs there."""
    make_tree(tmp_path / "src")
    return tmp_path


def run_args(*extra: str) -> List[str]:
    return ["run", "--from", "src", "--to", "dst", "--db", "books.db", *extra]


# -- copying ------------------------------------------------------------------------------
def test_run_copies_the_tree_and_a_second_run_copies_nothing(work):
    done = oeleo(work, *run_args())
    assert done.returncode == 0, done.stderr
    assert files_under(work / "dst") == sorted(FILES)
    for name, text in FILES.items():
        assert (work / "dst" / name).read_text(encoding="utf-8") == text
    books = rows(work / "books.db")
    assert sorted(books) == sorted(FILES)
    assert {r["code"] for r in books.values()} == {1}
    inodes = {name: (work / "dst" / name).stat().st_ino for name in FILES}

    again = oeleo(work, *run_args())
    assert again.returncode == 0, again.stderr
    assert "copied 0 files" in again.stderr
    assert {name: (work / "dst" / name).stat().st_ino for name in FILES} == inodes
    assert {n: r["processed_date"] for n, r in rows(work / "books.db").items()} == {
        n: r["processed_date"] for n, r in books.items()
    }


def test_changed_file_is_copied_again_on_the_next_run(work):
    assert oeleo(work, *run_args()).returncode == 0
    touch_later(work / "src" / "b.csv", "time,voltage\n0,4.1\n1,4.0\n")
    done = oeleo(work, *run_args())
    assert done.returncode == 0, done.stderr
    assert "copied 1 file (" in done.stderr
    assert (work / "dst" / "b.csv").read_text() == "time,voltage\n0,4.1\n1,4.0\n"


def test_ext_copies_only_files_with_that_extension(work):
    done = oeleo(work, *run_args("--ext", ".csv"))
    assert done.returncode == 0, done.stderr
    assert files_under(work / "dst") == ["a.csv", "b.csv", "run-1/c.csv"]
    assert sorted(rows(work / "books.db")) == ["a.csv", "b.csv", "run-1/c.csv"]


def test_dry_run_lists_the_files_and_writes_nothing(work):
    done = oeleo(work, *run_args("--dry-run"))
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split("\n")[:-1]) == sorted(FILES)
    assert files_under(work / "dst") == []
    assert not (work / "books.db").exists()


def test_dry_run_after_a_run_lists_only_new_and_changed_files_and_books_nothing(work):
    assert oeleo(work, *run_args()).returncode == 0
    before = rows(work / "books.db")
    touch_later(work / "src" / "a.csv", "changed\n")
    (work / "src" / "new.csv").write_text("new\n")
    done = oeleo(work, *run_args("--dry-run"))
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == ["a.csv", "new.csv"]
    assert (work / "dst" / "a.csv").read_text() == FILES["a.csv"]
    assert not (work / "dst" / "new.csv").exists()
    assert {n: tuple(r) for n, r in rows(work / "books.db").items()} == {
        n: tuple(r) for n, r in before.items()
    }
    assert count(work / "books.db", "oeleo_runs") == 1


def test_force_copies_everything_again_except_locked_files(work):
    assert oeleo(work, *run_args()).returncode == 0
    assert oeleo(work, "lock", "src/a.csv", "--from", "src", "--db", "books.db").returncode == 0
    touch_later(work / "src" / "a.csv", "locked but changed\n")
    before = rows(work / "books.db")
    inodes = {name: (work / "dst" / name).stat().st_ino for name in FILES}

    done = oeleo(work, *run_args("--force"))
    assert done.returncode == 0, done.stderr
    after = rows(work / "books.db")
    for name in FILES:
        if name == "a.csv":
            continue
        assert after[name]["processed_date"] > before[name]["processed_date"], name
        assert (work / "dst" / name).stat().st_ino != inodes[name], name
    assert after["a.csv"]["processed_date"] == before["a.csv"]["processed_date"]
    assert (work / "dst" / "a.csv").read_text() == FILES["a.csv"]
    assert after["a.csv"]["code"] == 2


def test_force_with_include_locked_copies_locked_files_and_keeps_them_locked(work):
    assert oeleo(work, *run_args()).returncode == 0
    assert oeleo(work, "lock", "src/a.csv", "--from", "src", "--db", "books.db").returncode == 0
    touch_later(work / "src" / "a.csv", "locked but changed\n")

    done = oeleo(work, *run_args("--force", "--include-locked"))
    assert done.returncode == 0, done.stderr
    assert (work / "dst" / "a.csv").read_text() == "locked but changed\n"
    assert rows(work / "books.db")["a.csv"]["code"] == 2


def test_include_locked_without_force_copies_a_locked_file_only_when_it_changed(work):
    assert oeleo(work, *run_args()).returncode == 0
    assert oeleo(work, "lock", "src/a.csv", "src/b.csv", "--from", "src", "--db", "books.db").returncode == 0
    touch_later(work / "src" / "a.csv", "locked but changed\n")
    before_b = (work / "dst" / "b.csv").stat().st_mtime_ns

    done = oeleo(work, *run_args("--include-locked"))

    assert done.returncode == 0, done.stderr
    assert (work / "dst" / "a.csv").read_text() == "locked but changed\n"
    assert (work / "dst" / "b.csv").stat().st_mtime_ns == before_b  # unchanged: not copied again
    assert rows(work / "books.db")["a.csv"]["code"] == 2


def test_a_connector_subclass_without_a_destination_is_a_configuration_error(work):
    (work / "mine.py").write_text(
        "from oeleo.connectors import LocalConnector\n\nclass Mine(LocalConnector):\n    pass\n"
    )
    env = {"OELEO_BASE_DIR_FROM": "src"}
    done = oeleo(work, "run", "--connector", "mine:Mine", "--db", "books.db", env=env)

    assert "OELEO_BASE_DIR_TO" in one_line_error(done)
    assert not (work / "books.db").exists() or rows(work / "books.db") == {}


# -- locking ------------------------------------------------------------------------------
def test_locked_file_is_not_copied_when_it_changes_and_is_again_after_unlock(work):
    assert oeleo(work, *run_args()).returncode == 0
    locked = oeleo(work, "lock", "src/b.csv", "--from", "src", "--db", "books.db")
    assert locked.returncode == 0, locked.stderr
    assert "b.csv" in locked.stdout
    assert rows(work / "books.db")["b.csv"]["code"] == 2

    touch_later(work / "src" / "b.csv", "edited after the lock\n")
    done = oeleo(work, *run_args())
    assert done.returncode == 0, done.stderr
    assert (work / "dst" / "b.csv").read_text() == FILES["b.csv"]

    unlocked = oeleo(work, "unlock", "src/b.csv", "--from", "src", "--db", "books.db")
    assert unlocked.returncode == 0, unlocked.stderr
    assert rows(work / "books.db")["b.csv"]["code"] != 2
    done = oeleo(work, *run_args())
    assert done.returncode == 0, done.stderr
    assert (work / "dst" / "b.csv").read_text() == "edited after the lock\n"


def test_file_locked_before_its_first_copy_is_never_copied(work):
    make_tree(work / "later", {"a.csv": FILES["a.csv"]})
    assert oeleo(work, "run", "--from", "later", "--to", "dst", "--db", "books.db").returncode == 0
    done = oeleo(work, "lock", "src/run-1", "--from", "src", "--db", "books.db")
    assert done.returncode == 0, done.stderr
    assert "2 files locked" in done.stderr
    assert oeleo(work, *run_args()).returncode == 0
    assert files_under(work / "dst") == ["a.csv", "b.csv", "notes.txt"]


# -- status -------------------------------------------------------------------------------
def block_with_folder(work: Path, name: str) -> None:
    """A destination folder with the same name as a source file: that file cannot land."""
    (work / "dst" / name).mkdir(parents=True)


def test_status_shows_counts_per_code_the_last_run_and_errors_with_reasons(work):
    block_with_folder(work, "b.csv")
    assert oeleo(work, *run_args()).returncode == 1
    assert oeleo(work, "lock", "src/notes.txt", "--from", "src", "--db", "books.db").returncode == 0

    done = oeleo(work, "status", "--from", "src", "--db", "books.db")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    counts = {
        int(m.group(1)): int(m.group(2))
        for m in re.finditer(r"^\W*([012]) \W*should-\S+\W+(\d+)", out, flags=re.MULTILINE)
    }
    # b.csv failed (still to copy), notes.txt locked, three copied.
    assert counts == {0: 1, 1: 3, 2: 1}, out
    assert "last run" in out and "4 copied" in out and "1 failed" in out
    error_lines = [line for line in out.splitlines() if "b.csv" in line]
    assert error_lines and "directory" in error_lines[0].lower(), out
    assert "a.csv" not in out


def test_status_says_which_files_with_errors_are_no_longer_in_the_source(work):
    block_with_folder(work, "b.csv")
    assert oeleo(work, *run_args()).returncode == 1
    (work / "src" / "b.csv").unlink()  # the instrument's file, deleted since: its row stays

    done = oeleo(work, "status", "--from", "src", "--db", "books.db")

    assert done.returncode == 0, done.stderr
    error_lines = [line for line in done.stdout.splitlines() if "b.csv" in line]
    assert len(error_lines) == 1 and "no longer in the source folder" in error_lines[0], done.stdout


def test_status_files_lists_every_row(work):
    assert oeleo(work, *run_args()).returncode == 0
    done = oeleo(work, "status", "--files", "--from", "src", "--db", "books.db")
    assert done.returncode == 0, done.stderr
    digest = hashlib.md5(FILES["a.csv"].encode()).hexdigest()
    for name in FILES:
        assert name in done.stdout
    assert digest in done.stdout


def test_status_files_marks_a_row_whose_last_try_failed(work):
    # a.csv copied, then changed and refused (a folder now stands where its copy was): its
    # line keeps the last good copy's checksum and says that the last try failed.
    assert oeleo(work, *run_args()).returncode == 0
    (work / "dst" / "a.csv").unlink()
    (work / "dst" / "a.csv" / "inner").mkdir(parents=True)
    (work / "src" / "a.csv").write_text("changed since\n")
    assert oeleo(work, *run_args()).returncode == 1

    done = oeleo(work, "status", "--files", "--from", "src", "--db", "books.db")

    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines()[1:] if line.strip()}
    old_digest = hashlib.md5(FILES["a.csv"].encode()).hexdigest()
    assert old_digest in lines["a.csv"], done.stdout
    assert re.search(r"\(last try failed: .*directory.*\)$", lines["a.csv"], flags=re.I), done.stdout
    others = [line for name, line in lines.items() if name != "a.csv"]
    assert others and not any("last try failed" in line for line in others), done.stdout


def test_an_unknown_connector_says_where_its_name_came_from(work):
    (work / ".env").write_text("OELEO_CONNECTOR=sftpx\n")
    from_file = one_line_error(oeleo(work, *run_args()))
    from_env = one_line_error(oeleo(work, *run_args(), env={"OELEO_CONNECTOR": "sftpy"}))
    from_argument = one_line_error(oeleo(work, *run_args("--connector", "sftpz")))

    assert "OELEO_CONNECTOR='sftpx'" in from_file and f"(from {work / '.env'})" in from_file
    assert "OELEO_CONNECTOR='sftpy' (from the environment)" in from_env
    assert "OELEO_CONNECTOR='sftpz' (from --connector)" in from_argument
    assert all("unknown connector" in line for line in (from_file, from_env, from_argument))


@pytest.mark.parametrize(
    "args, says",
    [
        (["schedule", "--max-runs", "-1"], "got -1 (from --max-runs)"),
        (["watch", "--full-pass-every", "-3"], "got -3.0 (from --full-pass-every)"),
        (["run", "--checker", "nope"], "(from --checker)"),
    ],
)
def test_a_bad_flag_value_is_named_by_its_flag(work, args, says):
    line = one_line_error(oeleo(work, args[0], "--from", "src", "--to", "dst", *args[1:]))
    assert says in line, line


def test_the_table_of_setting_flags_matches_the_parser():
    from oeleo.cli import SETTING_FLAGS, build_parser

    seen = {}
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for sub in commands.choices.values():
        for action in sub._actions:
            if action.dest in SETTING_FLAGS:
                seen.setdefault(action.dest, set()).update(action.option_strings)
    assert set(seen) == set(SETTING_FLAGS), "a setting the flags give is missing from the table, or gone"
    for dest, flag in SETTING_FLAGS.items():
        assert flag in seen[dest], (dest, flag, seen[dest])


def test_status_before_any_run_is_a_one_line_error(work):
    line = one_line_error(oeleo(work, "status", "--from", "src", "--db", "books.db"))
    assert "books.db" in line


# -- check --------------------------------------------------------------------------------
def test_check_reports_missing_and_different_files_and_exits_1(work):
    (work / "dst").mkdir()
    (work / "dst" / "a.csv").write_text(FILES["a.csv"])
    (work / "dst" / "b.csv").write_text("something else\n")
    done = oeleo(work, "check", "--from", "src", "--to", "dst", "--db", "books.db")
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert "different b.csv" in lines
    assert "missing   notes.txt" in lines
    assert "missing   run-1/c.csv" in lines
    assert not [line for line in lines if line.endswith(" a.csv")]
    assert files_under(work / "dst") == ["a.csv", "b.csv"]


def test_check_exits_0_when_in_sync(work):
    assert oeleo(work, *run_args()).returncode == 0
    done = oeleo(work, "check", "--from", "src", "--to", "dst", "--db", "books.db")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "missing: 0" in done.stdout and "different: 0" in done.stdout


def test_check_update_db_books_identical_files_without_copying(work):
    (work / "dst").mkdir()
    (work / "dst" / "a.csv").write_text(FILES["a.csv"])
    (work / "dst" / "b.csv").write_text("something else\n")
    done = oeleo(work, "check", "--update-db", "--from", "src", "--to", "dst", "--db", "books.db")
    assert done.returncode == 0, done.stdout + done.stderr
    assert files_under(work / "dst") == ["a.csv", "b.csv"]
    assert (work / "dst" / "b.csv").read_text() == "something else\n"
    books = rows(work / "books.db")
    assert books["a.csv"]["code"] == 1
    assert books["a.csv"]["checksum"] == hashlib.md5(FILES["a.csv"].encode()).hexdigest()
    assert books["b.csv"]["code"] == 0
    assert books["notes.txt"]["code"] == 0
    # The next run copies only what is not already there, identical.
    a_inode = (work / "dst" / "a.csv").stat().st_ino
    run = oeleo(work, *run_args())
    assert run.returncode == 0, run.stderr
    assert (work / "dst" / "a.csv").stat().st_ino == a_inode
    assert (work / "dst" / "b.csv").read_text() == FILES["b.csv"]


# -- schedule -----------------------------------------------------------------------------
def test_schedule_runs_the_given_number_of_passes(work):
    started = time.monotonic()
    done = oeleo(
        work,
        "schedule",
        "--every",
        "0.1",
        "--max-runs",
        "3",
        "--from",
        "src",
        "--to",
        "dst",
        "--db",
        "books.db",
    )
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 30
    assert count(work / "books.db", "oeleo_runs") == 3
    assert files_under(work / "dst") == sorted(FILES)


# -- config -------------------------------------------------------------------------------
def test_config_prints_the_settings_with_the_password_masked(work):
    (work / ".env").write_text("OELEO_DB_PASSWORD=db-pa55-word\nOELEO_FILTER_EXTENSION=.csv\n")
    done = oeleo(work, "config", env={"OELEO_PASSWORD": "s3cr3t-pa55"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "OELEO_PASSWORD=********" in lines
    assert "OELEO_DB_PASSWORD=********" in lines
    assert "OELEO_FILTER_EXTENSION=.csv" in lines
    for secret in ("s3cr3t-pa55", "db-pa55-word"):
        assert secret not in done.stdout + done.stderr


# -- failures -----------------------------------------------------------------------------
def test_failed_file_gives_exit_status_1_and_is_named_while_the_others_are_copied(work):
    block_with_folder(work, "b.csv")
    done = oeleo(work, *run_args())
    assert done.returncode == 1, done.stderr
    failed = [line for line in done.stderr.splitlines() if "b.csv" in line]
    assert failed, done.stderr
    assert "Traceback" not in done.stderr
    assert (work / "dst" / "b.csv").is_dir()
    assert (work / "dst" / "a.csv").read_text() == FILES["a.csv"]
    books = rows(work / "books.db")
    assert books["b.csv"]["code"] == 0
    assert books["b.csv"]["last_error"]


def test_failed_file_is_copied_on_a_later_run_once_the_cause_is_gone(work):
    block_with_folder(work, "b.csv")
    assert oeleo(work, *run_args()).returncode == 1
    (work / "dst" / "b.csv").rmdir()
    done = oeleo(work, *run_args())
    assert done.returncode == 0, done.stderr
    assert (work / "dst" / "b.csv").read_text() == FILES["b.csv"]
    assert rows(work / "books.db")["b.csv"]["last_error"] is None


def test_a_relative_destination_is_booked_as_the_absolute_path_of_each_copy(work):
    done = oeleo(work, "run", "--from", "src", "--to", f"../{work.name}/./dst", "--db", "books.db")

    assert done.returncode == 0, done.stderr
    booked = {name: row["external_name"] for name, row in rows(work / "books.db").items()}
    assert booked and all(Path(name).is_absolute() for name in booked.values()), booked
    assert all(Path(booked[name]).read_bytes() == (work / "src" / name).read_bytes() for name in booked)


def test_a_destination_other_than_the_books_place_is_a_warning_not_silence(work):
    assert oeleo(work, *run_args()).returncode == 0
    moved = "the books say this folder's files went elsewhere"

    elsewhere = oeleo(work, "run", "--from", "src", "--to", "new-place", "--db", "books.db")
    same = oeleo(work, *run_args())
    compressed = oeleo(work, *run_args(), env={"OELEO_COMPRESS": "gzip"})

    assert elsewhere.returncode == 0, elsewhere.stderr
    line = next(line for line in elsewhere.stderr.splitlines() if moved in line)
    assert str(work / "dst") in line and "new-place" in line and "oeleo run --force" in line
    assert moved not in same.stderr and moved not in compressed.stderr, same.stderr + compressed.stderr


def test_a_newest_copy_whose_name_the_books_escape_is_not_taken_for_a_move(work):
    # The books write "\u201b" (their escape character) doubled: read back, it is the name again.
    (work / "src" / "~it\u201bs.csv").write_text("x\n")  # "~": the last name, the newest row
    assert oeleo(work, *run_args()).returncode == 0
    (work / "src" / "~new.csv").write_text("y\n")

    again = oeleo(work, *run_args())

    assert again.returncode == 0, again.stderr
    assert "went elsewhere" not in again.stderr, again.stderr


def test_missing_base_dir_from_is_one_line_naming_the_variable(work):
    line = one_line_error(oeleo(work, "run", "--to", "dst", "--db", "books.db"))
    assert "OELEO_BASE_DIR_FROM" in line


def test_missing_source_folder_is_one_line_naming_it_and_a_first_run_leaves_nothing(work):
    before = sorted(p.name for p in work.iterdir())

    line = one_line_error(oeleo(work, "run", "--from", "no-such-folder", "--to", "dst"))

    assert "no-such-folder" in line
    assert sorted(p.name for p in work.iterdir()) == before  # no books, no lock file, no dst


def test_a_source_folder_gone_after_the_books_exist_is_a_failed_run_in_them(work):
    assert oeleo(work, *run_args()).returncode == 0
    (work / "src").rename(work / "unplugged")

    line = one_line_error(oeleo(work, *run_args()))

    assert "src" in line
    with sqlite3.connect(work / "books.db") as db:
        last = db.execute("SELECT status FROM oeleo_runs ORDER BY id DESC LIMIT 1").fetchone()
    assert last == ("failed",)


def test_min_age_not_a_number_in_dot_env_is_one_line(work):
    (work / ".env").write_text("OELEO_MIN_AGE=ten\n")
    line = one_line_error(oeleo(work, *run_args()))
    assert "OELEO_MIN_AGE" in line and "a number" in line
    assert files_under(work / "dst") == []


def test_env_file_that_does_not_exist_is_one_line(work):
    line = one_line_error(oeleo(work, "run", "--env-file", "missing.env", "--from", "src", "--to", "dst"))
    assert "missing.env" in line


def test_env_file_dev_null_reads_no_settings_and_a_folder_is_refused(work):
    (work / ".env").write_text("OELEO_MIN_AGE=abc\n")  # never read with --env-file
    done = oeleo(work, "run", "--env-file", os.devnull, "--from", "src", "--to", "dst", "--db", "b.db")
    assert done.returncode == 0, done.stderr
    line = one_line_error(oeleo(work, "run", "--env-file", "src", "--from", "src", "--to", "dst"))
    assert line == "oeleo: --env-file src: a folder, not a file"


@pytest.mark.parametrize("line", ['OELEO_FILTER_EXTENSION=".res', "OELEO_FILTER_EXTENSION='.res"])
def test_a_dot_env_line_that_cannot_be_read_is_one_line_naming_the_file_and_the_line(work, line):
    # python-dotenv skips such a line with a warning: the run would copy every file.
    (work / ".env").write_text(f"OELEO_BASE_DIR_FROM=src\nOELEO_BASE_DIR_TO=dst\n{line}\n")
    error = one_line_error(oeleo(work, "run", "--db", "books.db"))
    assert error.startswith(f"oeleo: {work / '.env'}, line 3: cannot be read"), error
    assert line in error
    assert files_under(work / "dst") == [] and not (work / "books.db").exists()


def test_destination_that_is_a_file_is_one_line_naming_the_setting(work):
    (work / "plain-file").write_text("not a folder")
    line = one_line_error(oeleo(work, "run", "--from", "src", "--to", "plain-file", "--db", "books.db"))
    assert "plain-file is a file, not a folder" in line and "OELEO_BASE_DIR_TO" in line
    assert (work / "plain-file").read_text() == "not a folder"


def test_destination_that_cannot_be_created_is_one_line(work):
    (work / "plain-file").write_text("not a folder")
    line = one_line_error(oeleo(work, "run", "--from", "src", "--to", "plain-file/dst", "--db", "books.db"))
    assert "plain-file/dst" in line


def test_unknown_connector_is_one_line(work):
    line = one_line_error(oeleo(work, *run_args("--connector", "nope")))
    assert "nope" in line and "connector" in line.lower()


def test_corrupt_database_is_one_line_naming_the_file(work):
    (work / "books.db").write_bytes(os.urandom(8192))
    line = one_line_error(oeleo(work, *run_args()))
    assert "books.db" in line
    assert "not a database" in line
    assert files_under(work / "dst") == []


def test_unknown_option_is_a_usage_error_with_exit_status_2(work):
    line = one_line_error(oeleo(work, "run", "--frmo", "src"))
    assert "--frmo" in line


def test_second_run_on_the_same_database_stops_at_once(work):
    db = work / "books.db"
    lock = ProcessLock(Path(str(db) + ".lock"), "test")
    lock.acquire()
    try:
        started = time.monotonic()
        done = oeleo(work, *run_args(), timeout=5)
        elapsed = time.monotonic() - started
    finally:
        lock.release()
    assert elapsed < 5
    assert done.returncode != 0
    assert "another oeleo process" in done.stderr
    assert "books.db" in done.stderr
    assert "Traceback" not in done.stderr
    assert files_under(work / "dst") == []


# -- stopping -----------------------------------------------------------------------------
def test_sigterm_stops_a_copy_cleanly_and_the_next_run_completes_it(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big.bin"
    digest = hashlib.md5()
    with open(big, "wb") as handle:
        for _ in range(400):
            chunk = os.urandom(MiB)
            digest.update(chunk)
            handle.write(chunk)
    dst = tmp_path / "dst"
    status, err = signal_mid_copy(run_args(), tmp_path, dst, "big.bin", signal.SIGTERM, oeleo_env())
    assert status == 143, err
    assert not (tmp_path / "dst" / "big.bin").exists()
    assert files_under(tmp_path / "dst") == []
    books = rows(tmp_path / "books.db")
    assert "big.bin" not in books or books["big.bin"]["code"] != 1

    done = oeleo(tmp_path, *run_args())
    assert done.returncode == 0, done.stderr
    copy = tmp_path / "dst" / "big.bin"
    assert copy.stat().st_size == 400 * MiB
    assert rows(tmp_path / "books.db")["big.bin"]["checksum"] == digest.hexdigest()
    assert files_under(tmp_path / "dst") == ["big.bin"]
    copy.unlink()
    big.unlink()


# -- the command itself -------------------------------------------------------------------
def test_help_lists_the_commands(tmp_path):
    done = oeleo(tmp_path, "--help")
    assert done.returncode == 0
    for command in ("run", "check", "status", "lock", "unlock", "schedule", "config"):
        assert command in done.stdout


def test_version_prints_the_version(tmp_path):
    from oeleo import __version__

    done = oeleo(tmp_path, "--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"oeleo {__version__}"


def test_version_does_not_import_the_heavy_libraries(tmp_path):
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "oeleo", "--version"],
        cwd=tmp_path,
        env=oeleo_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "oeleo.cli" in imported  # the output is what we think it is
    top_level = {name.split(".")[0] for name in imported}
    for heavy in ("pydantic_settings", "pydantic", "peewee", "rich", "paramiko", "boto3"):
        assert heavy not in top_level, heavy


def test_run_writes_a_log_file_naming_the_copied_files(work):
    done = oeleo(work, *run_args(), env={"OELEO_LOG_DIR": str(work / "logs")})
    assert done.returncode == 0, done.stderr
    text = (work / "logs" / "oeleo.log").read_text(encoding="utf-8")
    for name in FILES:
        assert name in text


def test_a_misspelt_setting_in_dot_env_is_one_line_exit_2_and_nothing_is_copied(work):
    # Left out, it would have copied every file instead of the .csv ones.
    (work / ".env").write_text("OELEO_FILTER_EXTENSON=.csv\n")
    line = one_line_error(oeleo(work, *run_args()))
    assert "OELEO_FILTER_EXTENSON" in line and "did you mean OELEO_FILTER_EXTENSION?" in line
    assert files_under(work / "dst") == []


def test_an_unknown_oeleo_name_in_dot_env_is_a_one_line_warning_and_the_run_goes_on(work):
    (work / ".env").write_text("OELEO_NIGHTLY=yes\n")
    done = oeleo(work, *run_args())
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "OELEO_NIGHTLY" in line]
    assert len(warnings) == 1 and "warning" in warnings[0]
    assert files_under(work / "dst") == sorted(FILES)


def test_debug_shows_the_traceback_of_a_configuration_error(work):
    done = oeleo(work, "run", "--debug", "--from", "no-such-folder", "--to", "dst")
    assert done.returncode != 0
    assert "Traceback" in done.stderr
    assert "no-such-folder" in done.stderr


BRACKETED = {"[draft] notes.csv": "1\n", "[bold]x.csv": "2\n"}


def test_check_prints_file_names_with_square_brackets_as_they_are(tmp_path):
    make_tree(tmp_path / "src", BRACKETED)
    make_tree(tmp_path / "dst", {"[draft] notes.csv": "changed\n"})
    done = oeleo(tmp_path, "check", "--from", "src", "--to", "dst", "--db", "books.db")
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert "different [draft] notes.csv" in lines
    assert "missing   [bold]x.csv" in lines


def test_status_prints_file_names_with_square_brackets_and_whole_checksums(tmp_path):
    make_tree(tmp_path / "src", BRACKETED)
    (tmp_path / "dst" / "[bold]x.csv").mkdir(parents=True)
    assert oeleo(tmp_path, *run_args()).returncode == 1
    # No COLUMNS: rich's 80 columns, as when the listing is saved to a file.
    done = oeleo(tmp_path, "status", "--files", "--from", "src", "--db", "books.db", env={"COLUMNS": ""})
    assert done.returncode == 0, done.stderr
    assert "[draft] notes.csv" in done.stdout
    assert "[bold]x.csv" in done.stdout
    assert "…" not in done.stdout
    digest = hashlib.md5(b"1\n").hexdigest()
    assert re.search(rf"^\[draft\] notes\.csv +1 .* {digest}$", done.stdout, flags=re.M), done.stdout


def test_terminal_summary_prints_file_names_with_square_brackets_as_they_are():
    import io

    from rich.console import Console

    from oeleo.reporters import RichReporter
    from oeleo.workers import RunSummary

    out = io.StringIO()
    reporter = RichReporter(Console(file=out, width=200))
    reporter.run_finished(RunSummary(failed=1, errors=[("[draft] a.csv", "[bold]blocked")]))
    assert "[draft] a.csv: [bold]blocked" in out.getvalue()


def test_lock_of_a_path_that_is_not_there_warns_naming_it(work):
    assert oeleo(work, *run_args()).returncode == 0
    done = oeleo(work, "lock", "src/typo.csv", "--from", "src", "--db", "books.db")
    assert done.returncode == 0, done.stderr
    warning = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and "src/typo.csv" in warning[0]
    quiet = oeleo(work, "lock", "src/a.csv", "--from", "src", "--db", "books.db")
    assert "warning" not in quiet.stderr


def test_schedule_with_a_missing_source_folder_stops_at_once_with_status_2(tmp_path):
    done = oeleo(tmp_path, "schedule", "--from", "nope", "--to", "out", "--every", "60", "--max-runs", "0")

    assert done.returncode == 2
    assert "nope" in one_line_error(done)
    assert count_runs_or_zero(tmp_path / "oeleo-file-list.db") == 0


def count_runs_or_zero(db: Path) -> int:
    return count(db, "oeleo_runs") if db.exists() else 0


def test_a_second_run_with_other_books_on_the_same_copy_stops_at_once(work):
    # A scheduled task and a run by hand with its own --db, same source, same destination:
    # they would write the same temporary names, and one's clean-up would remove the other's.
    from oeleo.connectors.local import LocalConnector
    from oeleo.models import SimpleDbHandler
    from oeleo.worker import Worker

    first = Worker(
        local_connector=LocalConnector(work / "src"),
        external_connector=LocalConnector(work / "dst"),
        bookkeeper=SimpleDbHandler(str(work / "scheduled.db")),
    )
    assert first._hold_destination()
    try:
        done = oeleo(work, *run_args(), timeout=20)
        elsewhere = oeleo(work, "run", "--from", "src", "--to", "dst2", "--db", "dst2.db")
    finally:
        first.close()
    assert done.returncode == 2, done.stderr
    line = one_line_error(done)
    assert f"another oeleo process (process {os.getpid()}) is already copying" in line
    assert "this one stops" in line
    assert files_under(work / "dst") == []
    assert elsewhere.returncode == 0, elsewhere.stderr  # another destination is another copy
    again = oeleo(work, *run_args())  # the first one is done: the lock is free
    assert again.returncode == 0, again.stderr
    assert files_under(work / "dst") == sorted(FILES)
