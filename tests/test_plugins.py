"""Connectors and schedulers from other packages: ``pkg.mod:Class`` or an entry point.

The plugin modules are written into a folder on PYTHONPATH; the command runs in another
folder, so it finds them only the way a user's installed plugin is found."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, Optional

import pytest

MYCONN = '''\
"""A connector that keeps a note of every file put through it."""
from pathlib import Path

from oeleo.connectors import LocalConnector

NOTES = Path(__file__).with_name("notes.txt")


class NoteConnector(LocalConnector):
    name = "note"

    def put(self, local_path, relpath, **kwargs):
        result = super().put(local_path, relpath, **kwargs)
        with open(NOTES, "a", encoding="utf-8") as handle:
            handle.write(relpath + "\\n")
        return result


class NotAConnector:
    def __init__(self, directory=None):
        self.directory = directory


from oeleo.connectors.base import Connector


class TakesNothing(LocalConnector):
    """A write_stream that writes an empty file and never reads the chunks it is handed."""

    def write_stream(self, relpath, chunks, size):
        return super().write_stream(relpath, iter(()), 0)


class NoStat(Connector):
    """A newcomer's first try: list_files and checksum, but no stat (nor open_upload)."""

    def list_files(self, extensions=(), include=(), exclude=(), recursive=True):
        return iter(())

    def checksum(self, relpath, algorithm="md5"):
        return ""


class NeedsAToken(LocalConnector):
    """Needs more than the folder, and no from_settings() of its own."""

    def __init__(self, directory, token):
        super().__init__(directory)
        self.token = token
'''

MYSCHED = '''\
"""A scheduler that keeps a note of each pass."""
from pathlib import Path

from oeleo.schedulers import SimpleScheduler

NOTES = Path(__file__).with_name("passes.txt")


class NoteScheduler(SimpleScheduler):
    def _one_pass(self):
        super()._one_pass()
        with open(NOTES, "a", encoding="utf-8") as handle:
            handle.write(f"pass {self.runs}\\n")
'''

FILES = {"a.csv": "1,2\n", "sub/b.csv": "3,4\n", "c.res": "5\n"}


@pytest.fixture
def plugins(tmp_path) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "myconn.py").write_text(MYCONN, encoding="utf-8")
    (folder / "mysched.py").write_text(MYSCHED, encoding="utf-8")
    return folder


@pytest.fixture
def work(tmp_path) -> Path:
    folder = tmp_path / "work"
    for name, text in FILES.items():
        path = folder / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def oeleo(cwd: Path, *args: str, pythonpath: Optional[Path] = None, env: Optional[Dict[str, str]] = None):
    full_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("OELEO_")}
    full_env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        full_env["PYTHONPATH"] = str(pythonpath)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "oeleo", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def notes(plugins: Path, name: str = "notes.txt") -> list:
    path = plugins / name
    return sorted(path.read_text().splitlines()) if path.exists() else []


def arrived(work: Path) -> list:
    dst = work / "dst"
    return (
        sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) if dst.exists() else []
    )


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


RUN = ["run", "--from", "src", "--to", "dst", "--db", "books.db"]


def test_connector_named_by_module_and_class_copies_the_files(plugins, work):
    done = oeleo(work, *RUN, "--connector", "myconn:NoteConnector", pythonpath=plugins)
    assert done.returncode == 0, done.stderr
    assert notes(plugins) == sorted(FILES)
    assert arrived(work) == sorted(FILES)
    assert (work / "dst" / "sub" / "b.csv").read_text() == FILES["sub/b.csv"]


def test_connector_named_in_dot_env_is_used(plugins, work):
    (work / ".env").write_text("OELEO_CONNECTOR=myconn:NoteConnector\nOELEO_FILTER_EXTENSION=.csv\n")
    done = oeleo(work, *RUN, pythonpath=plugins)
    assert done.returncode == 0, done.stderr
    assert notes(plugins) == ["a.csv", "sub/b.csv"]
    assert arrived(work) == ["a.csv", "sub/b.csv"]


def test_connector_module_that_cannot_be_imported_is_one_line(work):
    line = one_line_error(oeleo(work, *RUN, "--connector", "myconn:NoteConnector"))
    assert "myconn" in line
    assert arrived(work) == []


def test_connector_class_missing_from_its_module_is_one_line(plugins, work):
    line = one_line_error(oeleo(work, *RUN, "--connector", "myconn:Nope", pythonpath=plugins))
    assert "myconn" in line and "Nope" in line


def test_class_that_is_not_a_connector_is_refused_with_one_line(plugins, work):
    line = one_line_error(oeleo(work, *RUN, "--connector", "myconn:NotAConnector", pythonpath=plugins))
    assert "NotAConnector" in line
    assert "not a subclass" in line and "Connector" in line
    assert arrived(work) == []


def test_connector_that_needs_more_than_the_folder_is_one_line_saying_what_to_add(plugins, work):
    line = one_line_error(oeleo(work, *RUN, "--connector", "myconn:NeedsAToken", pythonpath=plugins))
    assert "NeedsAToken(directory=...) cannot be made from the settings" in line and "token" in line, line
    assert "from_settings(settings, role)" in line and "unexpected" not in line
    assert arrived(work) == []


def test_connector_missing_a_method_every_connector_has_is_one_line_naming_it(plugins, work):
    line = one_line_error(oeleo(work, *RUN, "--connector", "myconn:NoStat", pythonpath=plugins))
    assert "myconn:NoStat" in line and "stat()" in line and "docs/connectors.md" in line
    # All it lacks, in one line: the read side's method and a way to write, as Python says it
    assert "open_upload() (an object store) or write_stream() and rename() (a folder)" in line, line
    assert "unexpected" not in line and "TypeError" not in line
    assert arrived(work) == []
    assert not (work / "books.db").exists()


def test_a_connector_that_does_not_read_its_chunks_fails_the_file_saying_so(plugins, work):
    # Not "the source changed" (it did not), left for a next run that would do the same.
    done = oeleo(work, *RUN, "--connector", "myconn:TakesNothing", pythonpath=plugins)
    assert done.returncode == 1, done.stderr
    assert "changed while it was copied" not in done.stderr
    assert "a connector that stops reading the chunks it is handed" in done.stderr, done.stderr
    assert arrived(work) == []  # nothing under a real name


def write_distribution(folder: Path, entry_points: str) -> None:
    """A minimal installed distribution (as pip leaves it) so importlib.metadata finds it."""
    info = folder / "oeleo_note_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: oeleo-note-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points).lstrip())


def test_connector_registered_as_an_entry_point_is_found_by_its_name(plugins, work):
    write_distribution(plugins, "[oeleo.connectors]\nnote = myconn:NoteConnector\n")
    done = oeleo(work, *RUN, "--connector", "note", pythonpath=plugins)
    assert done.returncode == 0, done.stderr
    assert notes(plugins) == sorted(FILES)
    assert arrived(work) == sorted(FILES)


def test_entry_point_name_without_its_distribution_is_unknown(plugins, work):
    line = one_line_error(oeleo(work, *RUN, "--connector", "note", pythonpath=plugins))
    assert "note" in line and "unknown connector" in line


def test_scheduler_named_by_module_and_class_in_dot_env_is_used(plugins, work):
    (work / ".env").write_text("OELEO_SCHEDULER=mysched:NoteScheduler\n")
    done = oeleo(
        work,
        "schedule",
        "--every",
        "0.05",
        "--max-runs",
        "2",
        "--from",
        "src",
        "--to",
        "dst",
        "--db",
        "books.db",
        pythonpath=plugins,
    )
    assert done.returncode == 0, done.stderr
    assert notes(plugins, "passes.txt") == ["pass 1", "pass 2"]
    assert arrived(work) == sorted(FILES)


def test_scheduler_registered_as_an_entry_point_is_found_by_its_name(plugins, work):
    write_distribution(plugins, "[oeleo.schedulers]\nnotes = mysched:NoteScheduler\n")
    args = ["schedule", "--scheduler", "notes", "--every", "0.05", "--max-runs", "1"]
    done = oeleo(work, *args, "--from", "src", "--to", "dst", "--db", "books.db", pythonpath=plugins)
    assert done.returncode == 0, done.stderr
    assert notes(plugins, "passes.txt") == ["pass 1"]


def test_scheduler_that_is_not_a_scheduler_is_refused_with_one_line(plugins, work):
    args = ["schedule", "--scheduler", "myconn:NotAConnector", "--max-runs", "1"]
    line = one_line_error(
        oeleo(work, *args, "--from", "src", "--to", "dst", "--db", "books.db", pythonpath=plugins)
    )
    assert "OELEO_SCHEDULER" in line and "NotAConnector" in line
    assert arrived(work) == []


def test_connector_module_with_a_bug_is_one_line_naming_it(plugins, work):
    (plugins / "brokenconn.py").write_text("from oeleo.connectors import LocalConnector\nclass Broken(\n")
    line = one_line_error(oeleo(work, *RUN, "--connector", "brokenconn:Broken", pythonpath=plugins))
    assert "brokenconn" in line and "SyntaxError" in line


def test_connector_module_with_a_bug_shows_where_with_debug(plugins, work):
    (plugins / "brokenconn.py").write_text("raise RuntimeError('plugin setup failed')\n")
    done = oeleo(work, *RUN, "--debug", "--connector", "brokenconn:Broken", pythonpath=plugins)
    assert done.returncode != 0
    assert "Traceback" in done.stderr
    assert "brokenconn.py" in done.stderr and "plugin setup failed" in done.stderr
