"""oeleo watch: a file is copied once it is stable, whole and once; bursts go in few passes;
the full pass catches what events missed; signals stop it cleanly; network shares are polled."""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Iterator, List, Tuple

import pytest
from helpers import clean_env, db_rows, make_tree, run_oeleo, set_mtime, wait_for

from oeleo.connectors.local import LocalConnector
from oeleo.models import SimpleDbHandler
from oeleo.schedulers import get_scheduler_class
from oeleo.schedulers.watch import (
    MIN_STABLE,
    Filters,
    FolderTimes,
    Pending,
    WatchScheduler,
    choose_polling,
    is_network_share,
    mount_type,
    poll_interval,
)
from oeleo.workers import Worker

pytest.importorskip("watchdog")

OBSERVERS = ["native", "polling"]


def run_rows(db: Path) -> List[dict]:
    try:
        connection = sqlite3.connect(str(db))
        try:
            connection.row_factory = sqlite3.Row
            return [dict(r) for r in connection.execute("SELECT * FROM oeleo_runs ORDER BY id")]
        finally:
            connection.close()
    except sqlite3.OperationalError:  # not made yet, or being written right now
        return []


def booked(db: Path) -> dict:
    try:
        return db_rows(db) if db.exists() else {}
    except sqlite3.OperationalError:
        return {}


class Watcher:
    """``oeleo watch`` in a child process, its standard error in a file."""

    def __init__(self, tmp_path: Path, *extra: str, env: dict = None, command: str = "watch") -> None:
        self.src, self.dst, self.db = tmp_path / "src", tmp_path / "dst", tmp_path / "books.db"
        self.src.mkdir(exist_ok=True)
        self.err_path = tmp_path / "err.txt"
        self._err: IO[bytes] = open(self.err_path, "wb")
        args = ["--from", str(self.src), "--to", str(self.dst), "--db", str(self.db), *extra]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oeleo", command, *args],
            cwd=str(tmp_path),
            env=clean_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._err,
        )

    def wait_first_pass(self) -> None:
        wait_for(
            lambda: any(r["status"] != "running" for r in run_rows(self.db)) or self.proc.poll() is not None,
            30,
            "the first (full) pass",
        )
        assert self.proc.poll() is None, self.stderr()

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self._err.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._err.close()


@pytest.fixture
def watcher_factory(tmp_path: Path) -> Iterator:
    made: List[Watcher] = []

    def make(*extra: str, **kwargs) -> Watcher:
        watcher = Watcher(tmp_path, *extra, **kwargs)
        made.append(watcher)
        return watcher

    yield make
    for watcher in made:
        watcher.kill()


def observer_args(kind: str) -> Tuple[str, ...]:
    return ("--poll",) if kind == "polling" else ("--no-poll",)


# -- through the command ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", OBSERVERS)
def test_a_file_written_slowly_is_copied_once_whole_after_it_stopped_growing(watcher_factory, kind):
    watcher = watcher_factory(*observer_args(kind))
    watcher.wait_first_pass()
    target = watcher.dst / "slow.res"
    chunks = [os.urandom(64 * 1024) for _ in range(12)]
    with open(watcher.src / "slow.res", "wb") as handle:
        for chunk in chunks:  # 12 chunks over about 3 s: never still for MIN_STABLE seconds
            handle.write(chunk)
            handle.flush()
            time.sleep(0.25)
            assert not target.exists(), "copied while it was still growing"
    finished = time.monotonic()
    whole = b"".join(chunks)
    wait_for(lambda: "slow.res" in booked(watcher.db), MIN_STABLE + 5, "the file booked")
    took = time.monotonic() - finished
    assert target.read_bytes() == whole
    row = booked(watcher.db)["slow.res"]
    assert row["size"] == len(whole) and row["code"] == 1
    wait_for(lambda: all(r["status"] != "running" for r in run_rows(watcher.db)), 10, "the pass to end")
    assert sum(r["files_copied"] for r in run_rows(watcher.db)) == 1, "not copied exactly once"
    assert took < MIN_STABLE + 2 + 1.5, f"booked {took:.1f} s after the last write"
    assert watcher.stop() == 143, watcher.stderr()


def test_a_burst_of_1000_files_is_copied_in_few_passes(watcher_factory):
    watcher = watcher_factory("--no-poll")
    watcher.wait_first_pass()
    passes_before = len(run_rows(watcher.db))
    make_tree(watcher.src, {f"run-{i // 100}/f{i:04}.csv": f"{i}\n" for i in range(1000)})
    wait_for(lambda: len(booked(watcher.db)) == 1000, 60, "1,000 files booked")
    wait_for(lambda: all(r["status"] != "running" for r in run_rows(watcher.db)), 10, "the passes to end")
    passes = run_rows(watcher.db)[passes_before:]
    assert sum(r["files_copied"] for r in passes) == 1000
    assert len(passes) <= 5, [r["files_copied"] for r in passes]
    assert len(list(watcher.dst.rglob("*.csv"))) == 1000
    assert watcher.stop() == 143


def test_a_file_there_before_the_watching_began_is_copied_by_the_first_pass(watcher_factory, tmp_path):
    make_tree(tmp_path / "src", {"old.csv": "1\n", "new.csv": "2\n"})
    set_mtime(tmp_path / "src" / "old.csv", 3600)
    watcher = watcher_factory("--no-poll", "--full-pass-every", "600")
    # new.csv is too young for the first pass and sent no event: it is copied all the same.
    wait_for(lambda: len(booked(watcher.db)) == 2, 30, "both files booked")
    assert (watcher.dst / "old.csv").read_text() == "1\n" and (watcher.dst / "new.csv").read_text() == "2\n"
    assert watcher.stop() == 143


@pytest.mark.parametrize(
    "signum,status",
    [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)],
    ids=["SIGINT", "SIGTERM", "SIGHUP"],
)
def test_a_signal_stops_oeleo_watch_cleanly(watcher_factory, signum, status):
    watcher = watcher_factory()
    (watcher.src / "a.csv").write_text("t,v\n")
    watcher.wait_first_pass()
    asked = time.monotonic()
    assert watcher.stop(signum) == status, watcher.stderr()
    assert time.monotonic() - asked < 5
    assert "stopping cleanly" in watcher.stderr()
    assert all(r["status"] != "running" for r in run_rows(watcher.db))
    assert not list(watcher.dst.rglob("*.oeleo-part"))
    beat = heartbeat(watcher.db)
    assert beat["pid"] == watcher.proc.pid and beat["stopped"], beat
    assert beat["scheduler"] == "watch, events, full pass every 600 s"


def heartbeat(db: Path) -> dict:
    connection = sqlite3.connect(str(db))
    try:
        connection.row_factory = sqlite3.Row
        return dict(connection.execute("SELECT * FROM oeleo_scheduler").fetchone())
    finally:
        connection.close()


def test_oeleo_schedule_with_the_watch_scheduler_watches(watcher_factory):
    watcher = watcher_factory(command="schedule", env={"OELEO_SCHEDULER": "watch"})
    watcher.wait_first_pass()
    (watcher.src / "late.csv").write_text("5\n")
    wait_for(lambda: "late.csv" in booked(watcher.db), MIN_STABLE + 5, "late.csv booked")
    assert "watching" in watcher.stderr()
    assert watcher.stop() == 143


# Both ways to watch: `oeleo watch`, and `oeleo schedule` with the watch scheduler.
WATCH_COMMANDS = [("watch", {}), ("schedule", {"OELEO_SCHEDULER": "watch"})]


@pytest.mark.parametrize("command,env", WATCH_COMMANDS, ids=["watch", "schedule"])
@pytest.mark.parametrize("by", ["flag", "setting"])
def test_max_runs_2_copies_and_exits_0_by_itself_after_two_passes(
    watcher_factory, tmp_path, command, env, by
):
    make_tree(tmp_path / "src", {"old.csv": "1\n"})
    set_mtime(tmp_path / "src" / "old.csv", 3600)  # stable: the first (full) pass copies it
    extra = ("--max-runs", "2") if by == "flag" else ()
    env = dict(env, **({"OELEO_MAX_RUNS": "2"} if by == "setting" else {}))
    watcher = watcher_factory(*extra, command=command, env=dict(env, OELEO_WATCH_POLL="no"))
    watcher.wait_first_pass()
    (watcher.src / "new.csv").write_text("2\n")  # the second pass: one over the changed file
    assert watcher.proc.wait(timeout=MIN_STABLE + 20) == 0, watcher.stderr()
    assert (watcher.dst / "old.csv").read_text() == "1\n" and (watcher.dst / "new.csv").read_text() == "2\n"
    assert {name: row["code"] for name, row in booked(watcher.db).items()} == {"old.csv": 1, "new.csv": 1}
    runs = run_rows(watcher.db)
    assert [(r["status"], r["files_copied"]) for r in runs] == [("ok", 1), ("ok", 1)], runs
    assert "max runs reached (2): stopping" in watcher.stderr()
    beat = heartbeat(watcher.db)
    assert beat["stopped"] and beat["next_pass"] is None and beat["pid"] == watcher.proc.pid, beat
    assert not list(watcher.dst.rglob("*.oeleo-part"))


@pytest.mark.parametrize("command,env", WATCH_COMMANDS, ids=["watch", "schedule"])
def test_until_stops_the_watcher_at_that_time_with_status_0(watcher_factory, tmp_path, command, env):
    make_tree(tmp_path / "src", {"old.csv": "1\n"})
    set_mtime(tmp_path / "src" / "old.csv", 3600)
    until = datetime.datetime.now().astimezone() + datetime.timedelta(seconds=6)
    watcher = watcher_factory(
        "--until", until.isoformat(), command=command, env=dict(env, OELEO_WATCH_POLL="no")
    )
    watcher.wait_first_pass()
    (watcher.src / "new.csv").write_text("2\n")
    wait_for(lambda: "new.csv" in booked(watcher.db), MIN_STABLE + 5, "new.csv booked before --until")
    assert watcher.proc.poll() is None, "stopped before --until: " + watcher.stderr()
    # Stable only after --until: no pass starts for it.
    wait_for(lambda: time.time() >= until.timestamp() - 0.4, 10, "just before --until")
    (watcher.src / "late.csv").write_text("3\n")
    wait_for(lambda: watcher.proc.poll() is not None, 10, "the watcher to stop by itself")
    stopped = time.time()
    assert watcher.proc.returncode == 0, watcher.stderr()
    assert until.timestamp() <= stopped < until.timestamp() + 2.5
    assert f"no run starts after {until:%Y-%m-%d %H:%M:%S}: stopping" in watcher.stderr()
    assert sorted(p.name for p in watcher.dst.iterdir()) == ["new.csv", "old.csv"]
    assert "late.csv" not in booked(watcher.db)
    runs = run_rows(watcher.db)
    assert runs and all(
        datetime.datetime.fromisoformat(r["started"]) <= until.replace(tzinfo=None) for r in runs
    )
    assert all(r["status"] == "ok" for r in runs), runs
    beat = heartbeat(watcher.db)
    assert beat["stopped"] and beat["next_pass"] is None, beat


BAD_LIMITS = [
    (["--max-runs", "-1"], {}, "OELEO_MAX_RUNS"),
    (["--max-runs", "two"], {}, "argument --max-runs: invalid int value: 'two'"),
    ([], {"OELEO_MAX_RUNS": "many"}, "OELEO_MAX_RUNS"),
    (["--until", "soon"], {}, "--until 'soon': not a time"),
    (["--until", "25:00"], {}, "--until '25:00'"),
]


@pytest.mark.parametrize(
    "command,args,env,named",
    [
        ("watch", ["--full-pass-every", "0"], {}, "OELEO_FULL_PASS_EVERY"),
        ("watch", [], {"OELEO_WATCH_POLL": "sometimes"}, "OELEO_WATCH_POLL"),
        *(("watch", *bad) for bad in BAD_LIMITS),
        *(("schedule", *bad) for bad in BAD_LIMITS),  # with OELEO_SCHEDULER=watch
    ],
)
def test_a_bad_watch_setting_is_one_line_and_status_2(tmp_path, command, args, env, named):
    (tmp_path / "src").mkdir()
    env = dict(env, OELEO_SCHEDULER="watch")
    proc = run_oeleo(command, "--from", "src", "--to", "dst", *args, cwd=tmp_path, env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "dst").exists() and not (tmp_path / "oeleo-file-list.db").exists()


def test_without_watchdog_oeleo_watch_says_what_to_install(tmp_path):
    (tmp_path / "src").mkdir()
    code = (
        "import sys; sys.modules['watchdog'] = None; from oeleo.cli import main; "
        "sys.exit(main(['watch', '--from', 'src', '--to', 'dst']))"
    )
    command = [sys.executable, "-c", code]
    proc = subprocess.run(command, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "pip install 'oeleo[watch]'" in proc.stderr and "Traceback" not in proc.stderr


# -- in this process -------------------------------------------------------------------------
def make_worker(tmp_path: Path) -> Worker:
    (tmp_path / "src").mkdir(exist_ok=True)
    return Worker(
        bookkeeper=SimpleDbHandler(tmp_path / "books.db"),
        local_connector=LocalConnector(tmp_path / "src"),
        external_connector=LocalConnector(tmp_path / "dst"),
        subdirs=True,
    )


def test_the_full_pass_catches_a_file_whose_event_was_missed(tmp_path: Path):
    scheduler = WatchScheduler(make_worker(tmp_path), full_pass_every=2, poll="no")
    thread = threading.Thread(target=scheduler.start, daemon=True)
    thread.start()
    try:
        wait_for(lambda: scheduler.last_summary is not None, 30, "the first full pass")
        scheduler.observer.stop()  # no more events: as when the system's queue overflows
        scheduler.observer.join(timeout=10)
        (tmp_path / "src" / "missed.csv").write_text("1\n")
        books = tmp_path / "books.db"
        wait_for(lambda: "missed.csv" in booked(books), 2 + MIN_STABLE + 5, "the full pass")
        assert "missed.csv" not in scheduler.pending, "it was seen by an event, not the full pass"
        assert (tmp_path / "dst" / "missed.csv").read_text() == "1\n"
    finally:
        scheduler.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_scheduler_name_watch_is_the_watch_scheduler():
    assert get_scheduler_class("watch") is WatchScheduler


# -- decisions, without a watcher ------------------------------------------------------------
MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
//nas/lab /mnt/lab cifs rw,vers=3.1.1 0 0
nas:/export /mnt/nfs nfs4 rw 0 0
me@host:/data /mnt/ssh\\040data fuse.sshfs rw 0 0
/dev/sdb1 /mnt/lab/local ext4 rw 0 0
tmpfs /tmp tmpfs rw 0 0
"""


@pytest.mark.parametrize(
    "path,fs_type,network",
    [
        ("/home/me/data", "ext4", False),
        ("/mnt/lab", "cifs", True),
        ("/mnt/lab/raw/run1", "cifs", True),
        ("/mnt/lab/local/raw", "ext4", False),  # a local disk mounted inside the share
        ("/mnt/labx", "ext4", False),
        ("/mnt/nfs/x", "nfs4", True),
        ("/mnt/ssh data/x", "fuse.sshfs", True),
        ("/tmp/x", "tmpfs", False),
    ],
)
def test_network_shares_are_told_from_proc_mounts(path, fs_type, network):
    assert mount_type(path, MOUNTS) == fs_type
    assert is_network_share(path, platform="linux", mounts=MOUNTS) is network


@pytest.mark.parametrize(
    "path,network",
    [(r"\\server\share\raw", True), ("//server/share/raw", True), (r"C:\data\local", False)],
)
def test_a_unc_path_on_windows_is_a_network_share(path, network):
    assert is_network_share(path, platform="win32") is network


def test_watch_poll_forces_either_way(tmp_path):
    assert choose_polling("yes", str(tmp_path)) is True
    assert choose_polling("no", "/mnt/lab") is False


def test_a_large_tree_is_polled_less_often():
    assert poll_interval(0.001) == 1.0
    assert poll_interval(0.4) == pytest.approx(99.6)  # a poll of 0.4 s: 0.4 % of a core


@pytest.mark.parametrize(
    "relpath,kept",
    [
        ("a.csv", True),
        ("run1/a.csv", True),
        ("a.txt", False),
        (".a.csv.oeleo-part", False),
        (".cache/a.csv", False),
        ("tmp/a.csv", False),
        ("a-draft.csv", False),
    ],
)
def test_the_filters_keep_what_a_listing_would(relpath, kept):
    filters = Filters(extensions=(".csv",), exclude=("tmp", "*-draft.csv"))
    assert filters.keeps(relpath) is kept


def test_without_subfolders_only_top_level_files_are_kept():
    assert Filters(subdirs=False).keeps("a.csv") and not Filters(subdirs=False).keeps("run1/a.csv")


def test_a_file_is_ready_once_unchanged_for_the_stable_time(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("1\n")
    pending = Pending(str(tmp_path), stable=5)
    pending.touch("a.csv")
    assert pending.ready(time.time_ns()) == [] and "a.csv" in pending
    set_mtime(path, 6)
    pending.touch("a.csv")
    ready = pending.ready(time.time_ns())
    assert [e.relpath for e in ready] == ["a.csv"] and "a.csv" not in pending
    pending.touch("gone.csv")
    assert "gone.csv" not in pending


def test_the_look_at_every_folder_finds_new_files_and_new_folders(tmp_path):
    make_tree(tmp_path, {"a.csv": "1", "run1/b.csv": "2", ".hidden/c.csv": "3"})
    folders = FolderTimes(str(tmp_path))
    assert folders.changed() == []  # read again (changed just now), nothing new
    make_tree(
        tmp_path, {"new.csv": "4", "run1/new.csv": "5", "run2/deep/new.csv": "6", ".hidden/new.csv": "7"}
    )
    assert {"new.csv", "run1/new.csv", "run2/deep/new.csv"} <= set(folders.changed())
    for folder in (tmp_path, tmp_path / "run1", tmp_path / "run2", tmp_path / "run2" / "deep"):
        set_mtime(folder, 60)  # changed long ago: not read again
    assert folders.changed() == []
    (tmp_path / "run1" / "later.csv").write_text("8")
    assert folders.changed() == ["run1/later.csv"]


def test_polling_finds_a_new_file_by_its_folder_without_the_poll_of_every_file(tmp_path: Path):
    scheduler = WatchScheduler(make_worker(tmp_path), full_pass_every=600, poll="yes")
    thread = threading.Thread(target=scheduler.start, daemon=True)
    thread.start()
    try:
        wait_for(lambda: scheduler.last_summary is not None, 30, "the first full pass")
        scheduler.observer.stop()  # the poll of every file: gone
        scheduler.observer.join(timeout=10)
        (tmp_path / "src" / "run9").mkdir()
        (tmp_path / "src" / "run9" / "new.csv").write_text("1\n")
        wait_for(
            lambda: "run9/new.csv" in booked(tmp_path / "books.db"), MIN_STABLE + 5, "the new file booked"
        )
    finally:
        scheduler.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()


@pytest.mark.parametrize("poll", ["no", "yes"])
def test_a_source_folder_that_went_away_and_came_back_is_watched_again(tmp_path: Path, poll):
    scheduler = WatchScheduler(make_worker(tmp_path), full_pass_every=1, poll=poll)
    thread = threading.Thread(target=scheduler.start, daemon=True)
    thread.start()
    src = tmp_path / "src"
    try:
        wait_for(lambda: scheduler.last_summary is not None, 30, "the first full pass")
        first = scheduler.observer
        shutil.rmtree(src)  # the share dropped
        wait_for(lambda: not all(e.is_alive() for e in first.emitters), 10, "the observer to notice")
        src.mkdir()  # and came back
        wait_for(lambda: scheduler.observer is not first, 10, "a new observer")
        (src / "back.csv").write_text("1\n")
        wait_for(lambda: "back.csv" in booked(tmp_path / "books.db"), MIN_STABLE + 5, "back.csv booked")
    finally:
        scheduler.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()
