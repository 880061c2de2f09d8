"""The rocketry scheduler: imported under the pydantic.v1 shim without breaking pydantic 2
(oeleo's settings still validate), real rocketry runs that copy files and stop after their
passes, a stop from another thread and by SIGTERM, bad conditions said in one line."""

from __future__ import annotations

import importlib.util
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import clean_env, db_count, db_rows, make_tree, run_oeleo, start_oeleo, wait_for

# Looked for, not imported: importing rocketry here would skip the shim that the tests check.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("rocketry") is None, reason="the rocketry extra is not installed"
)

FILES = {"a.csv": "t,v\n0,1\n", "run-1/b.csv": "t,v\n0,2\n"}

SHIM_CHECK = """
import sys
import pydantic
before = {n: m for n, m in sys.modules.items() if n == "pydantic" or n.startswith("pydantic.")}
from oeleo.schedulers.rocketry import import_rocketry
rocketry = import_rocketry()
import redbird.base
after = {n: m for n, m in sys.modules.items() if n == "pydantic" or n.startswith("pydantic.")}
assert sys.modules["pydantic"] is pydantic and pydantic.VERSION.startswith("2"), pydantic.VERSION
assert all(after[n] is m for n, m in before.items()), "a pydantic 2 module was not put back"
v2_names = [n for n in after if not n.startswith("pydantic.v1")]
assert all(not after[n].__name__.startswith("pydantic.v1") for n in v2_names), "an alias was left"
# rocketry's models are pydantic 1 models; oeleo's settings are pydantic 2
assert redbird.base.BaseModel.__module__.startswith("pydantic.v1"), redbird.base.BaseModel.__module__
from oeleo.errors import ConfigError
from oeleo.settings import load_settings
try:
    load_settings(None, min_age="ten")
except ConfigError as exc:
    print("refused:", exc)
else:
    raise SystemExit("min_age='ten' was accepted")
print("min_age:", load_settings(None, min_age="2.5").min_age)
"""


def test_rocketry_is_imported_under_the_shim_and_pydantic_settings_still_validate_after(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SHIM_CHECK], cwd=tmp_path, env=clean_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "refused: OELEO_MIN_AGE: expected a number, got 'ten'" in done.stdout
    assert "min_age: 2.5" in done.stdout


def args(tmp_path: Path) -> list:
    return [
        "--from",
        str(tmp_path / "src"),
        "--to",
        str(tmp_path / "dst"),
        "--db",
        str(tmp_path / "books.db"),
    ]


def test_oeleo_schedule_rocketry_runs_three_passes_that_copy_files_and_stops(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", FILES)
    done = run_oeleo(
        "schedule", *args(tmp_path), "--rocketry", "every 0.2 seconds", "--max-runs", "3", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert (tmp_path / "dst" / "run-1" / "b.csv").read_text() == FILES["run-1/b.csv"]
    assert db_count(tmp_path / "books.db", "oeleo_runs") == 3
    beat = sqlite_one(tmp_path / "books.db", "SELECT scheduler, stopped, result FROM oeleo_scheduler")
    assert beat[0] == "rocketry, every 0.2 seconds"
    assert beat[1] is not None, "the heartbeat says the scheduler stopped"
    assert beat[2].startswith("ok: copied 0 files")


def sqlite_one(db: Path, sql: str) -> tuple:
    connection = sqlite3.connect(str(db))
    try:
        return connection.execute(sql).fetchone()
    finally:
        connection.close()


def test_oeleo_scheduler_rocketry_in_the_settings_takes_oeleo_schedule_as_condition(
    tmp_path: Path,
) -> None:
    make_tree(tmp_path / "src", FILES)
    env = {"OELEO_SCHEDULER": "rocketry", "OELEO_SCHEDULE": "every 0.2 seconds", "OELEO_MAX_RUNS": "2"}
    done = run_oeleo("schedule", *args(tmp_path), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert db_count(tmp_path / "books.db", "oeleo_runs") == 2
    assert set(db_rows(tmp_path / "books.db")) == {"a.csv", "run-1/b.csv"}


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--rocketry", "every banana"], "--rocketry) 'every banana': not a rocketry condition"),
        (
            ["--scheduler", "rocketry", "--cron", "* * * * *"],
            "--cron: OELEO_SCHEDULER=rocketry takes a rocketry",
        ),
    ],
)
def test_a_bad_rocketry_condition_is_one_line_and_status_2(tmp_path: Path, extra: list, says: str) -> None:
    make_tree(tmp_path / "src", FILES)
    done = run_oeleo("schedule", *args(tmp_path), *extra, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "dst" / "a.csv").exists()


def test_stop_from_another_thread_shuts_the_rocketry_session_down(tmp_path: Path) -> None:
    from oeleo.connectors.local import LocalConnector
    from oeleo.models import SimpleDbHandler
    from oeleo.schedulers import RocketryScheduler
    from oeleo.workers import Worker

    make_tree(tmp_path / "src", FILES)
    worker = Worker(
        bookkeeper=SimpleDbHandler(tmp_path / "books.db"),
        local_connector=LocalConnector(tmp_path / "src"),
        external_connector=LocalConnector(tmp_path / "dst"),
        subdirs=True,
    )
    scheduler = RocketryScheduler(worker, schedule="every 60 seconds")
    thread = threading.Thread(target=scheduler.start, daemon=True)
    thread.start()
    try:
        wait_for(lambda: scheduler.runs == 1 and scheduler.last_summary is not None, 30, "the first pass")
        asked = time.monotonic()
        scheduler.stop()
        thread.join(timeout=5)
        took = time.monotonic() - asked
    finally:
        scheduler.stop()
        thread.join(timeout=10)
    assert not thread.is_alive() and took < 5
    assert scheduler.runs == 1
    assert (tmp_path / "dst" / "a.csv").read_text() == FILES["a.csv"]
    assert worker.bookkeeper.database.is_closed()


def test_sigterm_stops_oeleo_schedule_rocketry_with_status_143(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", FILES)
    err_path = tmp_path / "err.txt"
    proc = start_oeleo(
        ["schedule", *args(tmp_path), "--rocketry", "every 60 seconds"],
        cwd=tmp_path,
        err=err_path,
        env=clean_env(),
    )
    try:
        wait_for(
            lambda: proc.poll() is not None or "copied 2 files" in err_path.read_text(), 30, "the first pass"
        )
        assert proc.poll() is None, err_path.read_text()
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    stderr = err_path.read_text()
    assert status == 143, stderr
    assert "received SIGTERM: stopping cleanly" in stderr and "Traceback" not in stderr
    assert sqlite_one(tmp_path / "books.db", "SELECT stopped FROM oeleo_scheduler")[0] is not None


def test_a_long_rocketry_schedule_keeps_only_its_latest_task_logs(tmp_path: Path, monkeypatch) -> None:
    import logging

    import oeleo.schedulers.rocketry as rocketry_scheduler
    from oeleo.connectors.local import LocalConnector
    from oeleo.models import SimpleDbHandler
    from oeleo.schedulers import RocketryScheduler
    from oeleo.workers import Worker

    monkeypatch.setattr(rocketry_scheduler, "KEEP_TASK_LOGS", 4)
    make_tree(tmp_path / "src", FILES)
    worker = Worker(
        bookkeeper=SimpleDbHandler(tmp_path / "books.db"),
        local_connector=LocalConnector(tmp_path / "src"),
        external_connector=LocalConnector(tmp_path / "dst"),
        subdirs=True,
    )
    scheduler = RocketryScheduler(worker, schedule="every 0.1 seconds", max_run_intervals=8)
    scheduler.start()
    assert scheduler.runs == 8
    logger = logging.getLogger(scheduler.session.config.task_logger_basename)
    repos = [getattr(handler, "repo", None) for handler in logger.handlers]
    kept = [len(repo.collection) for repo in repos if hasattr(repo, "collection")]
    assert kept and max(kept) <= 5, kept  # 4 kept, and the record of the last pass's end
