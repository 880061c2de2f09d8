"""The built-in scheduler: passes on an interval, a bad pass does not end it, and it stops
promptly (``stop()`` from another thread, SIGTERM to ``oeleo schedule``)."""

from __future__ import annotations

import datetime
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
from helpers import (
    clean_env,
    db_env,
    db_rows,
    run_oeleo,
    signal_mid_copy,
    start_oeleo,
    tree_files,
    wait_for,
    write_random,
)

from oeleo.connectors.local import LocalConnector
from oeleo.errors import ConnectorError, DestinationUnreachable
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
    proc = start_oeleo(["schedule", *args, "--every", "60"], cwd=tmp_path, err=tmp_path / "err.txt", env=env)
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
    proc = start_oeleo(
        ["schedule", *args, "--every", "30", "--max-runs", "2"], cwd=tmp_path, err=err_path, env=env
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
    proc = start_oeleo(
        ["schedule", "--from", str(src), "--to", str(dst)] + ["--db", str(db), "--every", "60"],
        cwd=tmp_path,
        err=err_path,
        env=env,
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


# -- time rules, --until, a lost connection or database, the heartbeat ------------------------
def oeleo_args(tmp_path: Path) -> List[str]:
    db = tmp_path / "books.db"
    return ["--from", str(tmp_path / "src"), "--to", str(tmp_path / "dst"), "--db", str(db)]


def clock_in(minutes: float) -> str:
    return (datetime.datetime.now() + datetime.timedelta(minutes=minutes)).strftime("%H:%M")


def test_inside_a_night_window_passes_run_every_interval(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", FILES)
    window = [clock_in(-2), clock_in(120)]  # open now, whatever the time of day
    done = run_oeleo(
        "schedule",
        *oeleo_args(tmp_path),
        "--between",
        *window,
        "--every",
        "0.2",
        "--max-runs",
        "3",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    runs = run_rows(tmp_path / "books.db")
    assert [r["files_copied"] for r in runs] == [2, 0, 0]
    gaps = [(b["started"] > a["finished"]) for a, b in zip(runs, runs[1:])]
    assert all(gaps), "each pass starts after the one before ended"


def test_outside_the_window_the_scheduler_sleeps_until_it_opens_and_stops_promptly(
    tmp_path: Path, oeleo_log: Records
) -> None:
    opens = datetime.datetime.now() + datetime.timedelta(hours=2)
    worker = make_worker(tmp_path)
    scheduler = SimpleScheduler(
        worker,
        run_interval_time=0.2,
        schedule=f"between {opens:%H:%M} {clock_in(180)}",
        max_run_intervals=None,
    )
    oeleo_log.waiting_for = "next run at"
    thread = threading.Thread(target=scheduler.start, daemon=True)
    thread.start()
    try:
        assert oeleo_log.seen.wait(timeout=30)
        scheduler.stop()
        thread.join(timeout=2)
    finally:
        scheduler.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert scheduler.runs == 0 and not (tmp_path / "dst").exists()
    assert f"next run at {opens:%Y-%m-%d %H:%M}:00" in oeleo_log.text()


def test_until_stops_starting_passes_after_it(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", FILES)
    until = datetime.datetime.now() + datetime.timedelta(seconds=1.5)
    done = run_oeleo(
        "schedule", *oeleo_args(tmp_path), "--every", "0.2", "--until", until.isoformat(), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    runs = run_rows(tmp_path / "books.db")
    assert len(runs) >= 2
    assert all(datetime.datetime.fromisoformat(r["started"]) <= until for r in runs)
    assert f"no run starts after {until:%Y-%m-%d %H:%M:%S}: stopping" in done.stderr


class SlowListingWorker(Worker):
    """A worker whose listing (a slow network share) notes when it began and ends only once
    the clock has passed ``listing_ends_after``."""

    listing_began: List[float] = []
    listing_ends_after = 0.0

    def filter_local(self, **kwargs):
        self.listing_began.append(time.time())
        while time.time() <= self.listing_ends_after:
            time.sleep(0.01)
        return super().filter_local(**kwargs)


@pytest.mark.parametrize("scheduler", ["simple", "watch", "rocketry"])
def test_a_pass_records_the_start_held_against_until_however_slow_its_listing(
    tmp_path: Path, scheduler: str
) -> None:
    write_tree(tmp_path / "src", FILES)
    for path in (tmp_path / "src").rglob("*.csv"):
        os.utime(path, (time.time() - 60, time.time() - 60))  # stable: the watcher's full pass takes them
    worker = SlowListingWorker(
        bookkeeper=SimpleDbHandler(tmp_path / "books.db"),
        local_connector=LocalConnector(tmp_path / "src"),
        external_connector=LocalConnector(tmp_path / "dst"),
        subdirs=True,
    )
    worker.listing_began = []
    # The first pass starts before "until" (rocketry takes ~0.4 s to its first one); its
    # listing ends after it.
    until = time.time() + (3.0 if scheduler == "rocketry" else 1.0)
    worker.listing_ends_after = until + 0.05
    if scheduler == "simple":
        SimpleScheduler(worker, run_interval_time=0.05, max_run_intervals=0, until=until).start()
    elif scheduler == "watch":
        from oeleo.schedulers.watch import WatchScheduler

        WatchScheduler(worker, full_pass_every=0.05, max_run_intervals=0, until=until).start()
    else:
        from oeleo.schedulers.rocketry import RocketryScheduler

        RocketryScheduler(worker, run_interval_time=0.05, max_run_intervals=0, until=until).start()
    runs = run_rows(tmp_path / "books.db")
    assert len(runs) == 1 and runs[0]["status"] == "ok", runs
    started = datetime.datetime.fromisoformat(runs[0]["started"]).timestamp()
    assert started <= until, "the books show a pass that began after until"
    assert started <= worker.listing_began[0], "the run row took the time after the listing"
    assert (tmp_path / "dst" / "run-1" / "b.csv").read_text() == FILES["run-1/b.csv"]
    beat = heartbeat(tmp_path / "books.db")
    assert beat["pass_started"] == runs[0]["started"], "the heartbeat and the run row disagree"


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--cron", "61 * * * *"], "oeleo: --cron '61 * * * *': minute 61 is out of range 0-59"),
        (["--every", "5 minutes"], "argument --every: '5 minutes': not a duration"),
        (["--between", "22:00", "6h"], "oeleo: --between 22:00 6h: '6h' is not a time of day"),
        (["--until", "soon"], "oeleo: --until 'soon': not a time"),
        (["--cron", "* * * * *", "--every", "5"], "--every has no meaning with --cron"),
        (["--cron", "* * * * *", "--between", "1:00", "2:00"], "not allowed with argument --cron"),
        (["--scheduler", "watch", "--between", "1:00", "2:00"], "--between: OELEO_SCHEDULER=watch takes no"),
    ],
)
def test_a_bad_time_rule_is_one_line_naming_the_flag_and_status_2(
    tmp_path: Path, extra: list, says: str
) -> None:
    write_tree(tmp_path / "src", FILES)
    done = run_oeleo("schedule", *oeleo_args(tmp_path), *extra, cwd=tmp_path)
    assert done.returncode == 2
    assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "dst").exists()


def test_a_bad_oeleo_schedule_setting_is_named_in_one_line(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", FILES)
    done = run_oeleo("schedule", *oeleo_args(tmp_path), cwd=tmp_path, env={"OELEO_SCHEDULE": "*/10 25 * * *"})
    assert done.returncode == 2
    assert done.stderr.strip() == "oeleo: OELEO_SCHEDULE='*/10 25 * * *': hour 25 is out of range 0-23"


def test_cron_says_its_next_run_on_the_minutes_it_names_and_sigint_stops_it_with_130(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", FILES)
    err_path = tmp_path / "err.txt"
    proc = start_oeleo(
        ["schedule", *oeleo_args(tmp_path), "--cron", "*/5 * * * *"],
        cwd=tmp_path,
        err=err_path,
        env=clean_env(),
    )
    try:
        wait_for(lambda: proc.poll() is not None or "next run at" in err_path.read_text(), 30, "next run")
        assert proc.poll() is None, err_path.read_text()
        proc.send_signal(signal.SIGINT)
        status = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    stderr = err_path.read_text()
    assert status == 130, stderr
    when = datetime.datetime.strptime(stderr.split("next run at ")[1][:19], "%Y-%m-%d %H:%M:%S")
    assert when.minute % 5 == 0 and when.second == 0
    assert datetime.timedelta(0) < when - datetime.datetime.now() <= datetime.timedelta(minutes=5)
    assert "received SIGINT: stopping cleanly" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "dst").exists(), "a cron schedule waits for its first minute"


class CountingConnector(LocalConnector):
    """A real folder store that counts its connections; ``broken`` is a lost connection
    (every upload fails) until it connects again."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.connects = 0
        self.broken = False

    def connect(self) -> None:
        self.connects += 1
        self.broken = False
        super().connect()

    def open_upload(self, *args, **kwargs):
        if self.broken:
            raise ConnectorError("the file server went away")
        return super().open_upload(*args, **kwargs)


def test_a_lost_connection_is_opened_again_at_the_next_pass(tmp_path: Path, oeleo_log: Records) -> None:
    def add_a_file_and_lose_the_connection(pass_number: int) -> None:
        (tmp_path / "src" / f"late-{pass_number}.csv").write_text(f"t,v\n{pass_number},1\n")
        if pass_number == 1:
            external.broken = True

    worker = make_worker(tmp_path, after_pass=add_a_file_and_lose_the_connection)
    external = CountingConnector(tmp_path / "dst")
    external.upload_tag = worker.external_connector.upload_tag
    worker.external_connector = external
    scheduler = SimpleScheduler(worker, run_interval_time=0.05, max_run_intervals=3)
    scheduler.start()

    runs = run_rows(tmp_path / "books.db")
    assert [r["status"] for r in runs] == ["ok", "failed", "ok"], oeleo_log.text()
    assert "the file server went away" in runs[1]["message"]
    assert external.connects == 2, "the failed second pass closed it; the third connected again"
    assert (tmp_path / "dst" / "late-1.csv").read_text() == "t,v\n1,1\n"  # left by pass 2, copied by 3
    assert scheduler.failed_runs == 1


class NotUpYet(CountingConnector):
    """A store out of reach for its first ``down`` connections (a PC whose network is not up
    yet when the scheduled task starts)."""

    down = 1

    def connect(self) -> None:
        if self.connects < self.down:
            self.connects += 1
            raise DestinationUnreachable("file-server:22 is unreachable: no answer within 15 s")
        super().connect()


def test_a_destination_not_reached_at_the_first_pass_is_tried_again_at_the_next(
    tmp_path: Path, oeleo_log: Records
) -> None:
    worker = make_worker(tmp_path)
    external = NotUpYet(tmp_path / "dst")
    external.upload_tag = worker.external_connector.upload_tag
    worker.external_connector = external
    scheduler = SimpleScheduler(worker, run_interval_time=0.05, max_run_intervals=2)
    scheduler.start()  # a ConfigError at the first pass would raise here

    runs = run_rows(tmp_path / "books.db")
    assert [r["status"] for r in runs] == ["failed", "ok"], oeleo_log.text()
    assert "run 1 failed: file-server:22 is unreachable" in oeleo_log.text()
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == sorted(
        p.name for p in (tmp_path / "src").iterdir()
    )
    assert scheduler.failed_runs == 1


def test_a_database_that_went_away_is_opened_again_at_the_next_pass(
    tmp_path: Path, oeleo_log: Records
) -> None:
    share = tmp_path / "share"
    share.mkdir()
    gone = tmp_path / "share-gone"

    def add_a_file(pass_number: int) -> None:
        if pass_number == 1:
            (tmp_path / "src" / "late.csv").write_text("t,v\n5,5\n")

    src = tmp_path / "src"
    write_tree(src, FILES)
    worker = SpyWorker(
        bookkeeper=SimpleDbHandler(share / "books.db"),
        local_connector=LocalConnector(src),
        external_connector=LocalConnector(tmp_path / "dst"),
        subdirs=True,
        after_pass=add_a_file,
    )

    class Scheduler(SimpleScheduler):
        def _one_pass(self) -> None:
            super()._one_pass()
            if self.runs == 1:
                share.rename(gone)  # between passes, as a network share drops
            elif self.runs == 2:
                gone.rename(share)  # and comes back

    scheduler = Scheduler(worker, run_interval_time=0.05, max_run_intervals=3)
    scheduler.start()

    assert scheduler.failed_runs == 1
    assert "run 2 failed" in oeleo_log.text() and "does not exist" in oeleo_log.text()
    assert [r["files_copied"] for r in run_rows(share / "books.db")] == [2, 1]
    assert (tmp_path / "dst" / "late.csv").exists()


def heartbeat(db: Path) -> dict:
    connection = sqlite3.connect(str(db))
    try:
        connection.row_factory = sqlite3.Row
        return dict(connection.execute("SELECT * FROM oeleo_scheduler").fetchone())
    finally:
        connection.close()


def test_the_heartbeat_records_the_last_pass_and_the_stop(tmp_path: Path) -> None:
    worker = make_worker(tmp_path)
    SimpleScheduler(worker, run_interval_time=0.05, max_run_intervals=2).start()
    beat = heartbeat(tmp_path / "books.db")
    assert beat["pid"] == os.getpid()
    assert beat["scheduler"] == "simple, every 0.05s"
    assert beat["result"].startswith("ok: copied 0 files")
    assert beat["pass_started"] <= beat["pass_finished"] <= beat["stopped"]
    assert beat["next_pass"] is None, "the last pass plans none"


def test_oeleo_status_tells_a_live_scheduler_from_a_stale_heartbeat(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", FILES)
    status_args = ["status", "--from", str(tmp_path / "src"), "--db", str(tmp_path / "books.db")]
    err_path = tmp_path / "err.txt"
    proc = start_oeleo(
        ["schedule", *oeleo_args(tmp_path), "--every", "5m"], cwd=tmp_path, err=err_path, env=clean_env()
    )
    try:
        wait_for(lambda: proc.poll() is not None or "next run at" in err_path.read_text(), 30, "next run")
        assert proc.poll() is None, err_path.read_text()
        live = run_oeleo(*status_args, cwd=tmp_path)
        proc.kill()  # SIGKILL: no chance to say it stopped
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert live.returncode == 0, live.stderr
    line = [s for s in live.stdout.splitlines() if s.startswith("scheduler:")]
    assert len(line) == 1, live.stdout
    assert line[0].startswith(f"scheduler: running (pid {proc.pid}, simple, every 5m); last pass started ")
    assert "ok: copied 2 files" in line[0] and "; next pass at " in line[0]

    stale = run_oeleo(*status_args, cwd=tmp_path)
    assert stale.returncode == 0, stale.stderr
    assert "scheduler: not running: stale heartbeat of " in stale.stdout
    assert f"process {proc.pid} is gone" in stale.stdout


def test_a_heartbeat_whose_next_pass_is_long_overdue_is_called_stale() -> None:
    from types import SimpleNamespace

    from oeleo.cli_books import _describe_heartbeat

    due = datetime.datetime(2026, 12, 1, 12, 0)
    beat = SimpleNamespace(
        pid=os.getpid(),  # alive: this process
        scheduler="simple, every 5m",
        started=due,
        pass_started=due - datetime.timedelta(minutes=5),
        pass_finished=due - datetime.timedelta(minutes=5),
        result="ok: copied 1 file",
        next_pass=due,
        stopped=None,
        updated=due,
    )
    soon = due.timestamp() + 60
    assert _describe_heartbeat(beat, now=soon).startswith("scheduler: running")
    late = _describe_heartbeat(beat, now=due.timestamp() + 20 * 60)
    assert late.startswith(
        "scheduler: overdue: its next pass was due at 2026-12-01 12:00:00 (20 minutes ago)"
    )


@pytest.mark.parametrize(
    "signum, status",
    [(signal.SIGINT, 130), (signal.SIGTERM, 143)]
    + ([(signal.SIGHUP, 129)] if hasattr(signal, "SIGHUP") else []),
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_a_signal_during_a_scheduled_copy_leaves_no_partial_file(
    tmp_path: Path, signum: int, status: int
) -> None:
    write_random(tmp_path / "src" / "big.bin", 200 * 1024 * 1024)
    args = ["schedule", *oeleo_args(tmp_path), "--every", "60"]
    got, err = signal_mid_copy(args, tmp_path, tmp_path / "dst", "big.bin", signum, clean_env())
    assert got == status, err
    assert "Traceback" not in err
    assert tree_files(tmp_path / "dst") == {}
    assert [r["status"] for r in run_rows(tmp_path / "books.db")] == ["stopped"]
    assert heartbeat(tmp_path / "books.db")["stopped"] is not None


def test_the_heartbeat_on_postgresql_and_oeleo_status_reading_it(tmp_path: Path, postgres_db) -> None:
    write_tree(tmp_path / "src", FILES)
    env = db_env(postgres_db)
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    done = run_oeleo(
        "schedule", "--from", src, "--to", dst, "--every", "0.2", "--max-runs", "2", cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr
    status = run_oeleo("status", "--from", src, cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stderr
    line = [s for s in status.stdout.splitlines() if s.startswith("scheduler:")]
    assert len(line) == 1 and line[0].startswith("scheduler: stopped at "), status.stdout
    assert "(pid " in line[0] and "simple, every 0.2s); last pass started " in line[0]
    assert "ok: copied 0 files" in line[0]


def test_the_last_pass_that_fails_does_not_promise_a_next_run(tmp_path: Path, oeleo_log: Records) -> None:
    worker = make_worker(tmp_path)
    worker.fail_on[2] = ConnectorError("the share vanished")
    worker.fail_on[3] = ConnectorError("the share vanished again")  # the last pass
    SimpleScheduler(worker, run_interval_time=0.05, max_run_intervals=3).start()

    failures = [r.getMessage() for r in oeleo_log.records if r.levelno >= logging.ERROR]
    assert failures[0].endswith("the share vanished; the next run goes on"), failures
    assert failures[-1].startswith("run 3 failed") and failures[-1].endswith("vanished again"), failures


def test_a_destination_share_gone_between_passes_is_not_made_again_and_its_files_wait(
    tmp_path: Path, oeleo_log: Records
) -> None:
    # The share holding the destination is unmounted while the scheduler runs: no pass makes
    # it again on the local disk (where copies would be booked and then hidden by the share
    # mounted again); the files wait and are copied once it is back (trial 49).
    share = tmp_path / "share"
    share.mkdir()
    unmounted = tmp_path / "share.unmounted"

    def between_passes(pass_number: int) -> None:
        if pass_number == 1:
            share.rename(unmounted)
            (tmp_path / "src" / "late.csv").write_text("t,v\n9,9\n")

    worker = make_worker(tmp_path, after_pass=between_passes)
    external = LocalConnector(share / "raw")
    external.upload_tag = worker.external_connector.upload_tag
    worker.external_connector = external
    prepare = external.prepare

    def prepare_then_mount_again() -> None:  # pass 3 is refused: the share comes back after it
        try:
            prepare()
        except DestinationUnreachable:
            unmounted.rename(share)
            raise

    external.prepare = prepare_then_mount_again
    scheduler = SimpleScheduler(worker, run_interval_time=0.05, max_run_intervals=4)
    scheduler.start()

    runs = run_rows(tmp_path / "books.db")
    assert [r["status"] for r in runs] == ["ok", "failed", "failed", "ok"], oeleo_log.text()
    assert "does not exist any more (a share unmounted?)" in runs[1]["message"], runs[1]
    assert (share / "raw" / "late.csv").read_text() == "t,v\n9,9\n"  # copied by pass 4
    assert db_rows(tmp_path / "books.db")["late.csv"]["code"] == 1


def test_a_second_scheduler_on_the_same_books_stops_and_leaves_the_first_ones_heartbeat(
    tmp_path: Path,
) -> None:
    # Two schedulers whose passes never overlap: the second stops with status 2 at its first
    # pass, and the heartbeat stays the first one's (it said "stopped" when the second
    # stopped, while the first ran on: trial 49).
    src, db = tmp_path / "src", tmp_path / "books.db"
    write_tree(src, FILES)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("OELEO_")}
    args = ["--from", str(src), "--to", str(tmp_path / "dst"), "--db", str(db)]
    first = start_oeleo(["schedule", *args, "--every", "60"], cwd=tmp_path, err=tmp_path / "err.txt", env=env)
    try:
        wait_for(lambda: first_pass_finished(db), timeout=60, what="the first scheduler's first pass")
        second = run_oeleo("schedule", *args, "--every", "1", "--max-runs", "2", cwd=tmp_path, env=env)
        beat = heartbeat(db)
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)

    assert second.returncode == 2, second.stderr
    assert f"another scheduler (process {first.pid}" in second.stderr, second.stderr
    assert beat["pid"] == first.pid and beat["stopped"] is None, beat
