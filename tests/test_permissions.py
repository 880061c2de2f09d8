"""Real permission errors: a file the user cannot read, a folder the user cannot write.

Root reads and writes everything, so when the tests run as root (CI does) the work happens in
a forked child that has switched to the unprivileged ``nobody`` user; the worker code itself
is the same either way.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pwd
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from oeleo.checkers import ChecksumChecker
from oeleo.connectors import LocalConnector
from oeleo.errors import ConfigError
from oeleo.models import SimpleDbHandler
from oeleo.workers import Worker


@pytest.fixture
def shared_dir():
    """A folder the unprivileged user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="oeleo-perm-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_unprivileged(
    owned: Path, job: Callable[[], Dict[str, Any]], warm_up: Callable[[], Any]
) -> Dict[str, Any]:
    """Run ``job`` as a user without root's rights; ``owned`` is made theirs.

    The interpreter lives under root's home, which the unprivileged user cannot read, so the
    modules the job needs are imported first by running ``warm_up`` as root.
    """
    if os.geteuid() != 0:
        return job()
    warm_up()
    nobody = pwd.getpwnam("nobody")
    for folder, _, files in os.walk(owned):
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        for name in files:
            os.chown(os.path.join(folder, name), nobody.pw_uid, nobody.pw_gid)
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe(duplex=False)

    def child() -> None:
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)
        try:
            child_end.send(job())
        except BaseException as exc:  # report anything back to the test
            child_end.send({"raised": f"{type(exc).__name__}: {exc}"})

    process = ctx.Process(target=child)
    process.start()
    assert parent_end.poll(60), "the unprivileged child did not answer"
    result = parent_end.recv()
    process.join(10)
    return result


def test_an_unreadable_file_fails_alone_and_the_others_are_copied(shared_dir):
    def copy_tree(root: Path, lock_secret: bool) -> Dict[str, Any]:
        src, dst, db = root / "src", root / "dst", root / "books.db"
        if lock_secret:
            (src / "secret.csv").chmod(0o000)  # as the file's owner, so it sticks
        worker = Worker(
            checker=ChecksumChecker(),
            bookkeeper=SimpleDbHandler(db),
            local_connector=LocalConnector(src),
            external_connector=LocalConnector(dst),
        )
        worker.connect_to_db()
        try:
            summary = worker.run()
        finally:
            worker.close()
        return {
            "copied": summary.copied,
            "failed": summary.failed,
            "errors": summary.errors,
            "exit": summary.exit_status,
        }

    def make(root: Path) -> Path:
        (root / "src").mkdir(parents=True)
        for name in ("a.csv", "secret.csv", "z.csv"):
            (root / "src" / name).write_text(f"{name}\n")
        return root

    warm = Path(tempfile.mkdtemp())
    make(shared_dir)
    dst, db = shared_dir / "dst", shared_dir / "books.db"
    result = as_unprivileged(
        shared_dir, lambda: copy_tree(shared_dir, True), lambda: copy_tree(make(warm), False)
    )
    shutil.rmtree(warm)

    assert "raised" not in result, result
    assert (result["copied"], result["failed"], result["exit"]) == (2, 1, 1)
    assert result["errors"][0][0] == "secret.csv"
    assert "ermission denied" in result["errors"][0][1]
    assert sorted(p.name for p in dst.iterdir()) == ["a.csv", "z.csv"]  # no partial, no temp file
    with sqlite3.connect(db) as con:
        rows = dict(con.execute("SELECT local_name, coalesce(last_error, '') FROM filelist"))
        codes = dict(con.execute("SELECT local_name, code FROM filelist"))
    assert "ermission denied" in rows["secret.csv"]
    assert codes == {"a.csv": 1, "secret.csv": 0, "z.csv": 1}


def test_a_destination_the_user_cannot_write_is_a_configuration_error(shared_dir):
    dst = shared_dir / "readonly"
    dst.mkdir()

    def job() -> Dict[str, Any]:
        dst.chmod(0o555)
        try:
            LocalConnector(dst).prepare()
        except ConfigError as exc:
            return {"error": str(exc)}
        return {"error": None}

    result = as_unprivileged(shared_dir, job, lambda: LocalConnector(shared_dir).prepare())

    assert result.get("error") is not None, result
    assert str(dst) in result["error"] and "not writable" in result["error"]
    assert list(dst.iterdir()) == []  # the probe left nothing behind


def test_an_unreadable_subfolder_is_a_failure_named_in_run_and_check(shared_dir):
    def copy_and_check(root: Path, lock_folder: bool) -> Dict[str, Any]:
        src, dst, db = root / "src", root / "dst", root / "books.db"
        if lock_folder:
            (src / "closed").chmod(0o000)  # as the folder's owner, so it sticks

        def worker() -> Worker:
            return Worker(
                checker=ChecksumChecker(),
                bookkeeper=SimpleDbHandler(db),
                local_connector=LocalConnector(src),
                external_connector=LocalConnector(dst),
                subdirs=True,
            )

        first = worker()
        try:
            summary = first.run()
        finally:
            first.close()
        with contextlib.closing(sqlite3.connect(db)) as books:
            (message,) = books.execute("SELECT message FROM oeleo_runs ORDER BY id DESC LIMIT 1").fetchone()
        second = worker()
        try:
            report = second.check()
        finally:
            second.close()
        return {
            "copied": summary.copied,
            "failed": summary.failed,
            "errors": summary.errors,
            "exit": summary.exit_status,
            "check_errors": report.errors,
            "in_sync": report.in_sync,
            "run_message": message,
        }

    def make(root: Path) -> Path:
        (root / "src" / "closed").mkdir(parents=True)
        (root / "src" / "a.csv").write_text("a\n")
        (root / "src" / "closed" / "b.csv").write_text("b\n")
        return root

    warm = Path(tempfile.mkdtemp())
    make(shared_dir)
    result = as_unprivileged(
        shared_dir, lambda: copy_and_check(shared_dir, True), lambda: copy_and_check(make(warm), False)
    )
    shutil.rmtree(warm)

    assert "raised" not in result, result
    assert (result["copied"], result["failed"], result["exit"]) == (1, 1, 1)
    assert result["errors"] == [("closed/", "cannot list this folder: permission denied")]
    assert result["check_errors"] == [("closed/", "cannot list this folder: permission denied")]
    assert result["in_sync"] is False
    # The folder has no row of its own: the run's row says it (oeleo status: "1 failed; ...").
    assert result["run_message"] == "not listed: closed/ (cannot list this folder: permission denied)"
