"""The log file (``OELEO_LOG_DIR/oeleo.log``): a line per copied file, rotated by size,
buffered but never losing a line on a normal exit or a SIGTERM to ``oeleo run``."""

from __future__ import annotations

import io
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator, List

import pytest
from helpers import run_oeleo

from oeleo.logfile import LogFile, LogFormatter
from oeleo.reporters import LOG_BACKUP_COUNT, RichReporter, flush_file_logs, start_file_log

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def oeleo_logger() -> Iterator[logging.Logger]:
    """The ``oeleo`` logger as a test found it, handlers and level, once the test is done."""
    logger = logging.getLogger("oeleo")
    handlers, level = list(logger.handlers), logger.level
    yield logger
    for handler in logger.handlers:
        if handler not in handlers:
            handler.close()
    logger.handlers[:] = handlers
    logger.setLevel(level)


def record(msg: str, level: int = logging.INFO, *args: object) -> logging.LogRecord:
    return logging.LogRecord("oeleo", level, __file__, 0, msg, args, None)


def lines(path: Path) -> List[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def env_without_oeleo(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OELEO_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def make_files(folder: Path, n: int) -> List[str]:
    names = [f"d{i // 100:02d}/f{i:05d}.dat" for i in range(n)]
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(name.encode() * 20)
    old = time.time() - 3600  # older than any OELEO_MIN_AGE
    for name in names:
        os.utime(folder / name, (old, old))
    return names


def oeleo_run(work: Path, *args: str, **popen: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "oeleo", "run", "--from", "src", "--to", "dst", "--db", "books.db", *args],
        cwd=work,
        env=env_without_oeleo(OELEO_LOG_DIR=str(work / "logs")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,  # type: ignore[arg-type]
    )


def booked(db: Path) -> List[str]:
    with sqlite3.connect(db) as con:
        return [row[0] for row in con.execute("select local_name from filelist")]


# -- what a run writes ---------------------------------------------------------------------


def test_a_run_logs_a_line_per_copied_file_and_the_summary_but_no_debug_lines(tmp_path: Path) -> None:
    names = make_files(tmp_path / "src", 30)
    proc = oeleo_run(tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    text = lines(tmp_path / "logs" / "oeleo.log")
    assert [line.split(": ", 1)[1] for line in text if " INFO " in line and ": copied d" in line] == [
        f"copied {name}" for name in names
    ]
    assert "copied 30 files" in text[-1]
    assert not [line for line in text if " DEBUG " in line]


def test_debug_puts_the_debug_lines_in_the_log_file_too(tmp_path: Path) -> None:
    make_files(tmp_path / "src", 5)
    proc = oeleo_run(tmp_path, "--debug")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    text = lines(tmp_path / "logs" / "oeleo.log")
    assert sum(" DEBUG " in line and "copying d00/" in line for line in text) == 5


# Enough files that the copy loop is still running 0.2 s after the first one appears: with
# 4,000 an idle CI machine had staged them all before the signal came (all booked, exit 143).
FILES_TO_STOP_IN = 10_000


def test_sigterm_during_a_run_loses_no_line_of_the_log_file(tmp_path: Path) -> None:
    make_files(tmp_path / "src", FILES_TO_STOP_IN)
    proc = oeleo_run(tmp_path)
    deadline = time.monotonic() + 60
    while not (tmp_path / "dst").is_dir() or not any((tmp_path / "dst").iterdir()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)  # some batches booked, lines in the buffer
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    text = lines(tmp_path / "logs" / "oeleo.log")
    logged = {line.split(": copied ", 1)[1] for line in text if ": copied d" in line}
    books = booked(tmp_path / "books.db")
    assert books and set(books) <= logged
    if proc.returncode == 143:  # stopped before the end, as meant
        assert len(books) < FILES_TO_STOP_IN
        assert "stopped on request" in text[-1], text[-3:]
    else:  # the machine was quicker than the signal: the run finished
        assert proc.returncode == 0, err
        assert f"copied {FILES_TO_STOP_IN} files" in text[-1]


def test_a_script_that_just_exits_has_every_line_in_the_file(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import logging
            from oeleo.reporters import start_file_log

            start_file_log({str(tmp_path / "logs")!r})
            log = logging.getLogger("oeleo")
            for i in range(3000):
                log.info("copied file %d", i)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], env=env_without_oeleo(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    text = lines(tmp_path / "logs" / "oeleo.log")
    assert [line.rsplit(" ", 1)[1] for line in text] == [str(i) for i in range(3000)]


# -- the handler ---------------------------------------------------------------------------


def test_a_small_max_size_rotates_into_numbered_files_and_keeps_backup_count(tmp_path: Path) -> None:
    path = tmp_path / "oeleo.log"
    handler = LogFile(path, max_bytes=300, backup_count=3)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(200):
        handler.handle(record(f"line {i:03d} " + "x" * 20))
    handler.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["oeleo.log", "oeleo.log.1", "oeleo.log.2", "oeleo.log.3"]
    for p in tmp_path.iterdir():
        assert 0 < p.stat().st_size <= 300
    kept = lines(tmp_path / "oeleo.log.3") + lines(tmp_path / "oeleo.log.2")
    kept += lines(tmp_path / "oeleo.log.1") + lines(path)
    numbers = [int(line.split()[1]) for line in kept]
    assert numbers == list(range(200 - len(numbers), 200))  # the newest lines, none lost between


def test_the_log_file_keeps_five_old_files(tmp_path: Path, oeleo_logger: logging.Logger) -> None:
    start_file_log(tmp_path)
    (handler,) = [h for h in oeleo_logger.handlers if isinstance(h, LogFile)]
    handler.max_bytes = 500
    for i in range(400):
        oeleo_logger.info("copied %d", i)
    flush_file_logs()
    assert LOG_BACKUP_COUNT == 5  # docs/configuration.md says so
    backups = [f"oeleo.log.{i}" for i in range(1, LOG_BACKUP_COUNT + 1)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["oeleo.log", *backups]


def test_a_name_that_is_not_utf8_is_written_with_backslash_escapes(tmp_path: Path) -> None:
    path = tmp_path / "oeleo.log"
    handler = LogFile(path, max_bytes=10_000, backup_count=1)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.handle(record("copied %s", logging.INFO, "caf\udce9.res"))
    handler.handle(record("copied %s", logging.INFO, "café.res"))
    handler.close()
    assert path.read_bytes().splitlines() == [b"copied caf\\udce9.res", "copied café.res".encode()]


def test_lines_wait_in_the_buffer_until_a_warning_a_second_or_a_flush(tmp_path: Path) -> None:
    path = tmp_path / "oeleo.log"
    handler = LogFile(path, max_bytes=1_000_000, backup_count=1, flush_seconds=0.3)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.handle(record("copied a"))
    assert lines(path) == []
    handler.handle(record("failed b: disk full", logging.ERROR))
    assert lines(path) == ["copied a", "failed b: disk full"]  # at once
    handler.handle(record("copied c"))
    deadline = time.monotonic() + 10
    while lines(path)[-1:] != ["copied c"]:  # the timer writes it out
        assert time.monotonic() < deadline
        time.sleep(0.05)
    handler.handle(record("copied d"))
    handler.flush()
    assert lines(path)[-1] == "copied d"
    handler.close()


def test_the_size_counts_what_others_appended_and_a_file_renamed_away_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "oeleo.log"
    handler = LogFile(path, max_bytes=1_000, backup_count=2)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.handle(record("one"))
    with open(path, "ab") as other:  # a second oeleo writing to the same folder
        other.write(b"x" * 999 + b"\n")
    handler.flush()
    handler.handle(record("two"))  # past 1,000 bytes with the other's line: rotates
    handler.flush()
    assert lines(path) == ["two"]
    os.replace(path, tmp_path / "elsewhere.log")  # the other process rotated it
    handler.flush()
    handler.handle(record("three"))
    handler.close()
    assert lines(path) == ["three"]


def test_the_formatter_writes_the_same_time_stamps_as_logging(tmp_path: Path) -> None:
    fmt = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    ours, theirs = LogFormatter(fmt), logging.Formatter(fmt)
    for created in (1_700_000_000.0, 1_700_000_000.5, 1_700_000_001.25, 1_700_003_600.999):
        rec = record("copied x")
        rec.created, rec.msecs = created, (created - int(created)) * 1000
        assert ours.format(rec) == theirs.format(rec)


def test_starting_the_same_log_file_twice_adds_one_handler(
    tmp_path: Path, oeleo_logger: logging.Logger
) -> None:
    start_file_log(tmp_path)
    start_file_log(tmp_path)
    assert len([h for h in oeleo_logger.handlers if isinstance(h, LogFile)]) == 1


def test_the_progress_bars_leave_the_copied_lines_to_the_log_file(
    tmp_path: Path, oeleo_logger: logging.Logger
) -> None:
    from rich.console import Console

    oeleo_logger.setLevel(logging.INFO)
    start_file_log(tmp_path)
    screen = io.StringIO()
    reporter = RichReporter(console=Console(file=screen, force_terminal=True, width=100))
    reporter.run_started(2, 200)
    reporter.file_started("a.res", 100)
    reporter.file_done("a.res", 100)
    reporter.file_started("b.res", 100)
    reporter.file_done("b.res", 100, error="disk full")
    reporter.close()
    text = lines(tmp_path / "oeleo.log")
    assert any(line.endswith("INFO    oeleo: copying 2 files (200 B)") for line in text)
    assert any(line.endswith("INFO    oeleo: copied a.res") for line in text)
    assert any(line.endswith("ERROR   oeleo: failed b.res: disk full") for line in text)
    assert "copied a.res" not in screen.getvalue()


def test_console_lines_are_held_back_and_written_in_order_in_one_block():
    import io

    from oeleo.logfile import BlockLines

    class Counting(io.StringIO):
        writes = 0

        def write(self, text):
            Counting.writes += 1
            return super().write(text)

    stream = Counting()
    handler = BlockLines(stream, flush_seconds=60)
    logger = logging.getLogger("oeleo.test.blocklines")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        for i in range(100):
            logger.info("copied %d", i)
        assert stream.getvalue() == ""  # held back
        logger.warning("a warning")  # written at once, after what came before it
        lines = stream.getvalue().splitlines()
        assert lines == [f"copied {i}" for i in range(100)] + ["a warning"]
        assert Counting.writes == 1
        logger.info("last")
        handler.flush()
        assert stream.getvalue().splitlines()[-1] == "last"
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_the_timer_writes_held_back_lines_within_its_seconds():
    import io

    from helpers import wait_for

    from oeleo.logfile import BlockLines

    stream = io.StringIO()
    handler = BlockLines(stream, flush_seconds=0.05)
    handler.emit(logging.makeLogRecord({"msg": "copied a.csv", "levelno": logging.INFO}))
    wait_for(lambda: "copied a.csv" in stream.getvalue(), 5, "the held-back line")
    handler.close()


def _records() -> List[logging.LogRecord]:
    """Records of every kind a formatter meets: arguments, a non-str message, non-ASCII, a
    traceback, a stack, levels of every width."""
    records = []
    for level, msg, args in (
        (logging.INFO, "copied %s", ("run-1/cycle 7.res",)),
        (logging.WARNING, "copied %d files, %s", (3, "m\u00e9sure")),
        (logging.ERROR, ValueError("not a str"), ()),
        (logging.DEBUG, "100% done", ()),
        (logging.CRITICAL, "bye", ()),
    ):
        records.append(logging.LogRecord("oeleo", level, __file__, 1, msg, args, None))
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failed = logging.LogRecord("oeleo", logging.ERROR, __file__, 2, "failed %s", ("x",), sys.exc_info())
        records.append(failed)
    with_stack = logging.LogRecord("oeleo", logging.INFO, __file__, 3, "here", (), None)
    with_stack.stack_info = "Stack (most recent call last):\n  a frame"
    records.append(with_stack)
    return records


def test_the_formatters_write_what_the_standard_formatter_writes() -> None:
    from oeleo.logfile import FILE_FORMAT, MessageFormatter

    for ours, standard in (
        (LogFormatter(FILE_FORMAT), logging.Formatter(FILE_FORMAT)),
        (MessageFormatter(), logging.Formatter("%(message)s")),
    ):
        for record, again in zip(_records(), _records()):
            again.created, again.msecs = record.created, record.msecs
            assert ours.format(record) == standard.format(again)


def test_a_log_folder_with_a_tilde_is_in_the_home_folder_as_the_other_paths(tmp_path: Path) -> None:
    # OELEO_LOG_DIR=~/oeleo-logs in a .env: the home folder's, not a folder named "~" here.
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    make_files(work / "src", 3)
    (work / ".env").write_text("OELEO_LOG_DIR=~/oeleo-logs\n")
    env = env_without_oeleo(HOME=str(home))
    done = subprocess.run(
        [sys.executable, "-m", "oeleo", "run", "--from", "src", "--to", "dst", "--db", "books.db"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert not (work / "~").exists()
    assert sum(1 for line in lines(home / "oeleo-logs" / "oeleo.log") if ": copied d00/" in line) == 3


def test_the_error_a_run_ends_with_and_what_check_finds_are_in_the_log_file(tmp_path: Path) -> None:
    # A scheduled task's log is its only trace: the one-line error of a run that cannot start
    # (exit 2), and check's counts and differences, are there as on the screen.
    make_files(tmp_path / "src", 3)
    (tmp_path / ".env").write_text("OELEO_LOG_DIR=logs\n")
    env = env_without_oeleo()

    def oeleo(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "oeleo", *args, "--db", "books.db"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    failed = oeleo("run", "--from", "not-there", "--to", "dst")
    assert failed.returncode == 2
    error = failed.stderr.strip().splitlines()[-1]
    assert error.startswith("oeleo: ") and "not-there" in error
    log_lines = lines(tmp_path / "logs" / "oeleo.log")
    assert any(line.endswith(f"ERROR   {error}") for line in log_lines), log_lines

    assert oeleo("run", "--from", "src", "--to", "dst").returncode == 0
    (tmp_path / "dst" / "d00" / "f00001.dat").unlink()
    checked = oeleo("check", "--from", "src", "--to", "dst")
    assert checked.returncode == 1
    log_lines = lines(tmp_path / "logs" / "oeleo.log")
    assert any("check: same: 2  missing: 1" in line for line in log_lines), log_lines
    assert any(line.endswith("check: missing d00/f00001.dat") for line in log_lines), log_lines


def test_the_warnings_of_the_settings_are_in_the_log_file_too(tmp_path: Path) -> None:
    # A name that is no setting in the .env of a scheduled task: its warning comes before the
    # log file is opened, and the screen is read by no one.
    make_files(tmp_path / "src", 1)
    (tmp_path / ".env").write_text("OELEO_LOG_DIR=logs\nOELEO_NIGHTLY=yes\n")
    done = run_oeleo("run", "--from", "src", "--to", "dst", "--db", "books.db", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    warning = "OELEO_NIGHTLY (in "
    assert warning in done.stderr
    log_lines = lines(tmp_path / "logs" / "oeleo.log")
    said = [line for line in log_lines if warning in line]
    assert len(said) == 1 and " WARNING " in said[0], log_lines
