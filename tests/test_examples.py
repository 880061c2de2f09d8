"""The scripts in examples/ run as a user runs them (a subprocess, real folders) and do what
their docstrings say: the files arrive whole, the books record them, a second pass copies
nothing, the scheduler runs the number of passes it is asked for."""

from __future__ import annotations

import datetime
import importlib.util
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

SOURCE_FILES = {
    "cycle_000.csv": b"cycle,voltage\n0,3.71\n",
    "run-001/cycle_001.csv": b"cycle,voltage\n1,3.69\n",
    "run-001/spectra/scan_0.res": bytes(range(256)) * 64,
}


def make_source(folder: Path, files: Dict[str, bytes] = SOURCE_FILES) -> Path:
    for relpath, data in files.items():
        path = folder / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def clean_env(**extra: str) -> Dict[str, str]:
    """This process's environment without OELEO_* variables (they would change the run)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("OELEO_")}
    env.pop("PYTHONPATH", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # importing examples/ must not write into the repository
    env.update(extra)
    return env


def run(args: List[str], cwd: Path, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def oeleo_command(*args: str) -> List[str]:
    """``python -m oeleo ...``: the ``oeleo`` command of the interpreter running the tests."""
    return ["-m", "oeleo", *args]


def rows(db: Path, sql: str) -> list:
    with sqlite3.connect(db) as con:
        return con.execute(sql).fetchall()


def assert_arrived(destination: Path, names: Dict[str, str]) -> None:
    """Each source file (key) is in ``destination`` under its name there (value), same bytes."""
    for relpath, stored in names.items():
        assert (destination / stored).read_bytes() == SOURCE_FILES[relpath], stored
    leftovers = [p.name for p in destination.rglob("*") if p.name.endswith(".oeleo-part")]
    assert leftovers == []


# -- examples/local_to_local.py ------------------------------------------------------------
def test_local_to_local_copies_every_file_once_and_books_it(tmp_path):
    source = make_source(tmp_path / "instrument")
    db = tmp_path / "books.db"
    script = str(EXAMPLES / "local_to_local.py")

    first = run([script, str(source), str(tmp_path / "server"), str(db)], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert_arrived(tmp_path / "server", {name: name for name in SOURCE_FILES})
    assert "copied 3 files" in first.stdout
    booked = rows(db, "SELECT local_name, code, size FROM filelist ORDER BY local_name")
    assert booked == sorted((name, 1, len(data)) for name, data in SOURCE_FILES.items())

    second = run([script, str(source), str(tmp_path / "server"), str(db)], cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "copied 0 files" in second.stdout and "3 unchanged" in second.stdout


def test_local_to_local_reads_the_folders_from_a_dotenv_file(tmp_path):
    make_source(tmp_path / "instrument")
    (tmp_path / ".env").write_text(
        "OELEO_BASE_DIR_FROM=instrument\nOELEO_BASE_DIR_TO=server\n"
        "OELEO_DB_NAME=from-env.db\nOELEO_FILTER_EXTENSION=.csv\n",
        encoding="utf-8",
    )
    result = run([str(EXAMPLES / "local_to_local.py")], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    csv_files = {n: n for n in SOURCE_FILES if n.endswith(".csv")}
    assert_arrived(tmp_path / "server", csv_files)
    assert not (tmp_path / "server" / "run-001" / "spectra").exists()  # .res filtered out
    assert len(rows(tmp_path / "from-env.db", "SELECT * FROM filelist")) == len(csv_files)


def test_local_to_local_without_folders_says_how_to_call_it(tmp_path):
    result = run([str(EXAMPLES / "local_to_local.py")], cwd=tmp_path)
    assert result.returncode == 2
    assert "usage:" in result.stderr


# -- examples/scheduled.py ------------------------------------------------------------------
def test_scheduled_example_runs_the_asked_number_of_passes(tmp_path):
    source = make_source(tmp_path / "instrument")
    env = clean_env(
        OELEO_BASE_DIR_FROM=str(source),
        OELEO_BASE_DIR_TO=str(tmp_path / "server"),
        OELEO_DB_NAME=str(tmp_path / "scheduled.db"),
    )
    result = run([str(EXAMPLES / "scheduled.py"), "0", "3"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert_arrived(tmp_path / "server", {name: name for name in SOURCE_FILES})
    runs = rows(tmp_path / "scheduled.db", "SELECT status, files_copied FROM oeleo_runs ORDER BY id")
    assert runs == [("ok", 3), ("ok", 0), ("ok", 0)]
    assert "3 runs, 0 failed" in result.stdout


# -- examples/night_window.py -----------------------------------------------------------------
def test_night_window_example_runs_its_passes_inside_the_window(tmp_path):
    source = make_source(tmp_path / "instrument")
    env = clean_env(
        OELEO_BASE_DIR_FROM=str(source),
        OELEO_BASE_DIR_TO=str(tmp_path / "server"),
        OELEO_DB_NAME=str(tmp_path / "night.db"),
    )
    now = datetime.datetime.now()
    window = [f"{now - datetime.timedelta(minutes=2):%H:%M}", f"{now + datetime.timedelta(hours=2):%H:%M}"]
    result = run([str(EXAMPLES / "night_window.py"), *window, "0.1", "3"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert_arrived(tmp_path / "server", {name: name for name in SOURCE_FILES})
    runs = rows(tmp_path / "night.db", "SELECT status, files_copied FROM oeleo_runs ORDER BY id")
    assert runs == [("ok", 3), ("ok", 0), ("ok", 0)]
    assert (
        f"3 runs (between {window[0]} and {window[1]}, every 0.1s inside the window), 0 failed"
        in result.stdout
    )


# -- examples/rocketry_schedule.py -------------------------------------------------------------
def test_rocketry_example_runs_its_passes_on_a_rocketry_condition(tmp_path):
    if importlib.util.find_spec("rocketry") is None:
        pytest.skip("the rocketry extra is not installed")
    source = make_source(tmp_path / "instrument")
    env = clean_env(
        OELEO_BASE_DIR_FROM=str(source),
        OELEO_BASE_DIR_TO=str(tmp_path / "server"),
        OELEO_DB_NAME=str(tmp_path / "rocketry.db"),
    )
    result = run([str(EXAMPLES / "rocketry_schedule.py"), "every 0.2 seconds", "3"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert_arrived(tmp_path / "server", {name: name for name in SOURCE_FILES})
    runs = rows(tmp_path / "rocketry.db", "SELECT status, files_copied FROM oeleo_runs ORDER BY id")
    assert runs == [("ok", 3), ("ok", 0), ("ok", 0)]
    assert "3 runs (every 0.2 seconds), 0 failed" in result.stdout


# -- examples/my_connector.py -----------------------------------------------------------------
FLAT_NAMES = {
    "cycle_000.csv": "cycle_000.csv",
    "run-001/cycle_001.csv": "run-001__cycle_001.csv",
    "run-001/spectra/scan_0.res": "run-001__spectra__scan_0.res",
}


def test_flat_folder_connector_from_python_stores_files_without_subfolders(tmp_path):
    source = make_source(tmp_path / "instrument")
    drop = tmp_path / "drop"
    result = run(
        [str(EXAMPLES / "my_connector.py"), str(source), str(drop), str(tmp_path / "b.db")], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert_arrived(drop, FLAT_NAMES)
    assert sorted(p.name for p in drop.iterdir()) == sorted(FLAT_NAMES.values())
    external = rows(tmp_path / "b.db", "SELECT external_name FROM filelist WHERE local_name LIKE '%scan_0%'")
    assert external == [(str(drop / "run-001__spectra__scan_0.res"),)]


def test_flat_folder_connector_by_name_in_the_command(tmp_path):
    source = make_source(tmp_path / "instrument")
    (source / "bad__name.csv").write_bytes(b"cannot be stored flat\n")
    env = clean_env(PYTHONPATH=str(REPO))
    common = ["--from", str(source), "--to", str(tmp_path / "drop"), "--db", str(tmp_path / "b.db")]
    connector = ["--connector", "examples.my_connector:FlatFolderConnector"]

    result = run(oeleo_command("run", *common, *connector), cwd=tmp_path, env=env)
    assert result.returncode == 1, result.stderr  # one file failed, the others went on
    assert_arrived(tmp_path / "drop", FLAT_NAMES)
    errors = rows(
        tmp_path / "b.db", "SELECT local_name, last_error FROM filelist WHERE last_error IS NOT NULL"
    )
    assert errors == [("bad__name.csv", "bad__name.csv: contains '__', cannot be stored flat")]

    # check lists, stats and hashes through the connector: everything else is in sync
    (source / "bad__name.csv").unlink()
    check = run(oeleo_command("check", *common, *connector), cwd=tmp_path, env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "same: 3  missing: 0  different: 0" in check.stdout


def test_host_folder_connector_writes_under_the_host_name(tmp_path):
    source = make_source(tmp_path / "instrument")
    env = clean_env(PYTHONPATH=str(REPO))
    args = ["--from", str(source), "--to", str(tmp_path / "share"), "--db", str(tmp_path / "b.db")]
    result = run(
        oeleo_command("run", *args, "--connector", "examples.my_connector:HostFolderConnector"),
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert_arrived(tmp_path / "share" / socket.gethostname(), {name: name for name in SOURCE_FILES})


# -- examples/watch_folder.py -------------------------------------------------------------------
def test_watch_example_copies_what_is_there_and_stops_after_its_passes(tmp_path):
    if importlib.util.find_spec("watchdog") is None:
        pytest.skip("the watch extra is not installed")
    source = make_source(tmp_path / "instrument")
    for path in source.rglob("*"):  # written a minute ago: stable, so the first full pass takes them
        os.utime(path, (path.stat().st_atime - 60, path.stat().st_mtime - 60))
    env = clean_env(
        OELEO_BASE_DIR_FROM=str(source),
        OELEO_BASE_DIR_TO=str(tmp_path / "server"),
        OELEO_DB_NAME=str(tmp_path / "watch.db"),
    )
    result = run([str(EXAMPLES / "watch_folder.py"), "1"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert_arrived(tmp_path / "server", {name: name for name in SOURCE_FILES})
    runs = rows(tmp_path / "watch.db", "SELECT status, files_copied FROM oeleo_runs ORDER BY id")
    assert runs == [("ok", 3)]
    assert "1 runs, 0 failed" in result.stdout


# -- examples/platform_task.py ------------------------------------------------------------------
def test_platform_task_example_prints_the_task_and_installs_nothing(tmp_path):
    make_source(tmp_path / "instrument")
    (tmp_path / ".env").write_text(
        "OELEO_BASE_DIR_FROM=instrument\nOELEO_BASE_DIR_TO=server\n", encoding="utf-8"
    )
    env = clean_env(XDG_CONFIG_HOME=str(tmp_path / "config"), HOME=str(tmp_path))
    result = run([str(EXAMPLES / "platform_task.py"), "print", "5m"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    shown = result.stdout + result.stderr
    if sys.platform.startswith("linux"):
        assert "OnUnitActiveSec=5min" in shown or "OnUnitActiveSec=300" in shown, shown
        assert "oeleo run" in shown or " run" in shown
    assert not (tmp_path / "config").exists()  # --print writes nothing
    bad = run([str(EXAMPLES / "platform_task.py"), "remove"], cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "usage:" in bad.stderr
