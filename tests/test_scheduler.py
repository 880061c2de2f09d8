"""The built-in scheduler: passes on an interval, a bad pass does not end it, and it stops
promptly (``stop()`` from another thread, SIGTERM to ``oeleo schedule``)."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest

from oeleo.connectors.local import LocalConnector
from oeleo.errors import ConnectorError
from oeleo.locks import ProcessLock
from oeleo.models import SimpleDbHandler
from oeleo.schedulers import SimpleScheduler
from oeleo.workers import RunSummary, Worker

FILES = {"a.csv": "t,v\n0,3.1\n", "run-1/b.csv": "t,v\n0,4.1\n"}


class SpyWorker(Worker):
    """A real worker that notes each pass and can run something after it or fail once."""

    def __init__(self, *args, after_pass: Optional[Callable[[int], None]] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.summaries: List[RunSummary] = []
        self.calls = 0
        self.fail_on: Dict[int, BaseException] = {}
        self.after_pass = after_pass

    def run(self) -> RunSummary:
        self.calls += 1
        if self.calls in self.fail_on:
            raise self.fail_on[self.calls]
        summary = super().run()
        self.summaries.append(summary)
        if self.after_pass is not None:
            self.after_pass(self.calls)
        return summary


def write_tree(root: Path, files: Dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def make_worker(tmp_path: Path, **kwargs) -> SpyWorker:
    src = tmp_path / "src"
    write_tree(src, FILES)
    return SpyWorker(
        bookkeeper=SimpleDbHandler(tmp_path / "books.db"),
        local_connector=LocalConnector(src),
        external_connector=LocalConnector(tmp_path / "dst"),
        subdirs=True,
        **kwargs,
    )


def run_rows(db: Path) -> List[dict]:
    connection = sqlite3.connect(str(db))
    try:
        connection.row_factory = sqlite3.Row
        return [dict(r) for r in connection.execute("SELECT * FROM oeleo_runs ORDER BY id")]
    finally:
        connection.close()


class Records(logging.Handler):
    """Collects the ``oeleo`` logger's records (whatever the root logger is set to do)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []
        self.seen = threading.Event()
        self.waiting_for = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if self.waiting_for and self.waiting_for in record.getMessage():
            self.seen.set()

    def text(self) -> str:
        return "\n".join(
            f"{r.levelname} {r.getMessage()} {self.format(r) if r.exc_info else ''}" for r in self.records
        )


@pytest.fixture
def oeleo_log() -> Iterator[Records]:
    logger = logging.getLogger("oeleo")
    handler = Records()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def test_three_passes_are_run_and_a_file_created_between_passes_is_copied(tmp_path: Path) -> None:
    def add_a_file(pass_number: int) -> None:
        if pass_number == 1:
            (tmp_path / "src" / "late.csv").write_text("t,v\n5,5\n")

    worker = make_worker(tmp_path, after_pass=add_a_file)
    SimpleScheduler(worker, run_interval_time=0.05, max_run_intervals=3).start()

    assert worker.calls == 3
    runs = run_rows(tmp_path / "books.db")
    assert [r["status"] for r in runs] == ["ok", "ok", "ok"]
    assert [r["files_copied"] for r in runs] == [2, 1, 0]
    assert all(r["finished"] for r in runs)
    assert (tmp_path / "dst" / "late.csv").read_text() == "t,v\n5,5\n"
    assert (tmp_path / "dst" / "run-1" / "b.csv").read_text() == FILES["run-1/b.csv"]
    assert worker.bookkeeper.database.is_closed(), "start() closes the books when it is done"


@pytest.mark.parametrize(
    "error",
    [RuntimeError("the instrument share vanished"), ConnectorError("the instrument share vanished")],
    ids=["unexpected-error", "oeleo-error"],
)
def test_a_pass_that_raises_is_logged_and_the_next_pass_still_runs(
    tmp_path: Path, oeleo_log: Records, error: Exception
) -> None:
    worker = make_worker(tmp_path)
    worker.fail_on[1] = error
    scheduler = SimpleScheduler(worker, run_interval_time=0.05, max_run_intervals=3)
    scheduler.start()

    assert worker.calls == 3
    assert scheduler.failed_runs == 1
    failures = [r for r in oeleo_log.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1
    assert "run 1 failed" in failures[0].getMessage()
    assert "the instrument share vanished" in oeleo_log.text()
    assert [r["files_copied"] for r in run_rows(tmp_path / "books.db")] == [2, 0]
    assert (tmp_path / "dst" / "a.csv").read_text() == FILES["a.csv"]


def test_stop_from_another_thread_ends_the_interval_wait_promptly(tmp_path: Path, oeleo_log: Records) -> None:
    worker = make_worker(tmp_path)
    scheduler = SimpleScheduler(worker, run_interval_time=60, max_run_intervals=None)
    oeleo_log.waiting_for = "next run at"
    failure: List[BaseException] = []

    def start() -> None:
        try:
            scheduler.start()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failure.append(exc)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    try:
        assert oeleo_log.seen.wait(timeout=30), "the first pass did not end"
        asked = time.monotonic()
        scheduler.stop()
        thread.join(timeout=2)
        took = time.monotonic() - asked
    finally:
        scheduler.stop()
        thread.join(timeout=10)
    assert not thread.is_alive() and took < 2
    assert failure == []
    assert worker.calls == 1
    assert worker.bookkeeper.database.is_closed()
    with ProcessLock(Path(str(tmp_path / "books.db") + ".lock"), "books"):
        pass  # the books are free for the next process


# -- oeleo schedule, stopped by SIGTERM ------------------------------------------------------
def first_pass_finished(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        return any(r["status"] != "running" for r in run_rows(db))
    except sqlite3.OperationalError:  # no table yet, or written to right now
        return False


def test_sigterm_after_the_first_pass_stops_oeleo_schedule_promptly_and_cleanly(tmp_path: Path) -> None:
    src, dst, db = tmp_path / "src", tmp_path / "dst", tmp_path / "books.db"
    write_tree(src, FILES)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("OELEO_")}
    args = ["--from", str(src), "--to", str(dst), "--db", str(db)]
    with open(tmp_path / "err.txt", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "oeleo", "schedule", *args, "--every", "60"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 30
        while not first_pass_finished(db):
            assert proc.poll() is None, (tmp_path / "err.txt").read_text()
            assert time.monotonic() < deadline, "the first pass did not finish"
            time.sleep(0.01)
        asked = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=5)
        took = time.monotonic() - asked
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    stderr = (tmp_path / "err.txt").read_text()
    assert status == 143, stderr
    assert took < 5
    assert "Traceback" not in stderr
    assert [r["status"] for r in run_rows(db)] == ["ok"]
    assert not Path(str(db) + "-journal").exists()
    assert (dst / "a.csv").read_text() == FILES["a.csv"]

    (src / "new.csv").write_text("t,v\n7,7\n")
    again = subprocess.run(
        [sys.executable, "-m", "oeleo", "run", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    assert (dst / "new.csv").read_text() == "t,v\n7,7\n"
    assert [r["files_copied"] for r in run_rows(db)] == [2, 1]


def test_a_stop_asked_while_files_are_listed_ends_the_pass_before_any_copy(tmp_path: Path) -> None:
    class StopWhileListing(SpyWorker):
        def filter_local(self, **kwargs):
            names = super().filter_local(**kwargs)
            scheduler.stop()  # as a SIGTERM arriving while a big folder is listed
            return names

    worker = make_worker(tmp_path)
    worker.__class__ = StopWhileListing
    scheduler = SimpleScheduler(worker, run_interval_time=60, max_run_intervals=None)
    started = time.monotonic()
    scheduler.start()

    assert time.monotonic() - started < 2
    assert worker.calls == 1
    assert not (tmp_path / "dst" / "a.csv").exists()
    assert [r["status"] for r in run_rows(tmp_path / "books.db")] == ["stopped"]


def test_oeleo_schedule_holds_the_books_only_during_a_pass(tmp_path: Path) -> None:
    """A run by hand while ``oeleo schedule`` waits for its next pass is not refused."""
    src, dst, db = tmp_path / "src", tmp_path / "dst", tmp_path / "books.db"
    write_tree(src, FILES)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("OELEO_")}
    args = ["--from", str(src), "--to", str(dst), "--db", str(db)]
    err_path = tmp_path / "err.txt"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "oeleo", "schedule", *args, "--every", "30", "--max-runs", "2"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 30
        # The pass is booked, and the scheduler has said when the next one comes: it waits.
        while not (first_pass_finished(db) and "next run at" in err_path.read_text()):
            assert proc.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, "the first pass did not finish"
            time.sleep(0.01)
        (src / "by-hand.csv").write_text("t,v\n9,9\n")
        by_hand = subprocess.run(
            [sys.executable, "-m", "oeleo", "run", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert by_hand.returncode == 0, by_hand.stderr
    assert (dst / "by-hand.csv").read_text() == "t,v\n9,9\n"
    assert status == 143, err_path.read_text()
    assert [r["files_copied"] for r in run_rows(db)] == [2, 1]


def test_a_pass_that_finds_the_books_busy_is_skipped_and_the_next_one_runs(
    tmp_path: Path, oeleo_log: Records
) -> None:
    lock = ProcessLock(Path(str(tmp_path / "books.db") + ".lock"), "the books")

    class RunByHandInBetween(SpyWorker):
        def release_db(self) -> None:
            super().release_db()
            if scheduler.runs == 1:
                lock.acquire()  # a run by hand starts while the scheduler waits

        def connect_to_db(self) -> None:
            try:
                super().connect_to_db()
            finally:
                if scheduler.runs == 2:
                    lock.release()  # and ends after the second pass was due

    worker = make_worker(tmp_path)
    worker.__class__ = RunByHandInBetween
    scheduler = SimpleScheduler(worker, run_interval_time=0.01, max_run_intervals=3)
    try:
        scheduler.start()
    finally:
        lock.release()
    assert scheduler.runs == 3
    assert worker.calls == 2, "the second pass was skipped, the third ran"
    assert scheduler.failed_runs == 0
    assert "run 2 skipped" in oeleo_log.text() and "another oeleo process" in oeleo_log.text()


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on Windows")
def test_sighup_while_it_waits_stops_oeleo_schedule_with_status_129(tmp_path: Path) -> None:
    src, dst, db = tmp_path / "src", tmp_path / "dst", tmp_path / "books.db"
    write_tree(src, FILES)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("OELEO_")}
    err_path = tmp_path / "err.txt"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "oeleo", "schedule", "--from", str(src), "--to", str(dst)]
            + ["--db", str(db), "--every", "60"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 30
        while "next run at" not in err_path.read_text():
            assert proc.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, "the first pass did not finish"
            time.sleep(0.01)
        proc.send_signal(signal.SIGHUP)
        status = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert status == 129, err_path.read_text()
    assert "received SIGHUP: stopping cleanly" in err_path.read_text()
    assert [r["status"] for r in run_rows(db)] == ["ok"]
