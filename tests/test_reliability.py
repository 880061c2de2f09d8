"""What happens when things go wrong around ``oeleo run``: a kill in the middle of a copy,
a second process, a corrupt or locked database, Ctrl-C. Real files, real processes."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest

from oeleo import models
from oeleo.connectors.base import upload_tag
from oeleo.models import SHOULD_BE_COPIED_IF_CHANGED, make_origin

MiB = 1024 * 1024
BIG = "big.bin"
BIG_CHUNKS = 38  # 608 MiB: a local copy takes seconds, long enough to catch it half way
SMALL = {"a.csv": "t,v\n0,3.1\n", "b.csv": "t,v\n0,4.1\n", "run-1/c.csv": "t,i\n0,0.5\n"}


@dataclass
class Source:
    folder: Path
    big_md5: str
    big_size: int


@pytest.fixture(scope="module")
def big_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    """A source folder with one big random file and a few small ones (read-only in tests)."""
    folder = tmp_path_factory.mktemp("big-source")
    digest = hashlib.md5()
    with open(folder / BIG, "wb") as handle:
        for _ in range(BIG_CHUNKS):
            block = os.urandom(16 * MiB)
            digest.update(block)
            handle.write(block)
    write_tree(folder, SMALL)
    yield Source(folder, digest.hexdigest(), BIG_CHUNKS * 16 * MiB)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    shutil.rmtree(tmp_path / "dst", ignore_errors=True)  # do not keep 600 MiB copies around


def write_tree(root: Path, files: Dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(8 * MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def oeleo_env() -> Dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("OELEO_")}


class Oeleo:
    """``python -m oeleo ...`` in the background; output goes to files, not pipes."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.out_path = cwd / f"out-{time.monotonic_ns()}.txt"
        self.err_path = cwd / f"err-{time.monotonic_ns()}.txt"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "oeleo", *args],
                cwd=cwd,
                env=oeleo_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def oeleo(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "oeleo", *args],
        cwd=cwd,
        env=oeleo_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(condition: Callable[[], bool], timeout: float, running: Optional[Oeleo] = None) -> None:
    """Poll ``condition`` until it holds; fail at the deadline or if ``running`` ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if running is not None and running.proc.poll() is not None:
            pytest.fail(f"oeleo ended ({running.proc.returncode}) too early:\n{running.stderr}")
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.001)


def temp_file(dst: Path, name: str = BIG) -> Path:
    """The temporary name ``name`` is written under (``.NAME.<tag>.oeleo-part``)."""
    found = sorted(dst.glob(f".{name}.*.oeleo-part")) if dst.is_dir() else []
    return found[0] if found else dst / f".{name}.oeleo-part"


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def rows(db: Path) -> Dict[str, dict]:
    connection = sqlite3.connect(str(db))
    try:
        connection.row_factory = sqlite3.Row
        return {r["local_name"]: dict(r) for r in connection.execute("SELECT * FROM filelist")}
    finally:
        connection.close()


def runs(db: Path) -> List[dict]:
    connection = sqlite3.connect(str(db))
    try:
        connection.row_factory = sqlite3.Row
        return [dict(r) for r in connection.execute("SELECT * FROM oeleo_runs ORDER BY id")]
    finally:
        connection.close()


def run_args(src: Path, dst: Path, db: Path) -> List[str]:
    return ["run", "--from", str(src), "--to", str(dst), "--db", str(db)]


def start_big_copy(work: Path, source: Source) -> Oeleo:
    """Start a run and return once the big file is being written (> 8 MiB in its temp file)."""
    running = Oeleo(work, *run_args(source.folder, work / "dst", work / "books.db"))
    try:
        wait_for(lambda: size_of(temp_file(work / "dst")) > 8 * MiB, timeout=60, running=running)
    except BaseException:
        running.kill()
        raise
    return running


def one_line_error(result_stderr: str) -> str:
    lines = result_stderr.strip().splitlines()
    assert len(lines) == 1, result_stderr
    assert "Traceback" not in result_stderr
    return lines[0]


# -- a kill at the worst moment ---------------------------------------------------------
def test_a_run_killed_mid_copy_leaves_no_partial_file_and_the_next_run_finishes_it(
    work: Path, big_source: Source
) -> None:
    dst, db = work / "dst", work / "books.db"
    running = start_big_copy(work, big_source)
    os.kill(running.pid, signal.SIGKILL)
    assert running.wait(timeout=10) == -signal.SIGKILL
    assert 8 * MiB < size_of(temp_file(dst)) < big_source.big_size, "killed half way"

    final = dst / BIG
    if final.exists():  # the real name may only ever hold the whole, verified file
        assert md5_of(final) == big_source.big_md5
    assert rows(db).get(BIG, {}).get("code") != SHOULD_BE_COPIED_IF_CHANGED

    again = oeleo(work, *run_args(big_source.folder, dst, db))
    assert again.returncode == 0, again.stderr
    assert md5_of(final) == big_source.big_md5
    row = rows(db)[BIG]
    assert (row["code"], row["checksum"], row["size"]) == (
        SHOULD_BE_COPIED_IF_CHANGED,
        big_source.big_md5,
        big_source.big_size,
    )
    assert not temp_file(dst).exists(), "the stale temporary file is gone"
    assert not list(dst.rglob("*.oeleo-part"))
    for name, text in SMALL.items():
        assert (dst / name).read_text() == text
        assert rows(db)[name]["code"] == SHOULD_BE_COPIED_IF_CHANGED


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_during_a_big_copy_abandons_it_cleanly(
    work: Path, big_source: Source, signum: int, status: int
) -> None:
    dst, db = work / "dst", work / "books.db"
    running = start_big_copy(work, big_source)
    running.proc.send_signal(signum)
    try:
        assert running.wait(timeout=10) == status, running.stderr
    finally:
        running.kill()
    assert not (dst / BIG).exists()
    assert not temp_file(dst).exists()
    assert "Traceback" not in running.stderr
    assert BIG not in rows(db)
    assert [r["status"] for r in runs(db)] == ["stopped"]
    assert not Path(str(db) + "-journal").exists()


# -- one worker per database ----------------------------------------------------------
def test_a_second_run_on_the_same_database_stops_at_once(work: Path, big_source: Source) -> None:
    dst, db = work / "dst", work / "books.db"
    running = start_big_copy(work, big_source)
    try:
        started = time.monotonic()
        second = oeleo(work, *run_args(big_source.folder, dst, db), timeout=5)
        elapsed = time.monotonic() - started
        assert second.returncode == 2, second.stderr
        assert elapsed < 5
        message = one_line_error(second.stderr)
        assert "another oeleo process" in message
        assert str(db) in message and f"process {running.pid}" in message
        assert second.stdout == ""

        assert running.wait(timeout=60) == 0, running.stderr  # the first run is not disturbed
    finally:
        running.kill()
    assert md5_of(dst / BIG) == big_source.big_md5
    assert rows(db)[BIG]["checksum"] == big_source.big_md5
    assert len(runs(db)) == 1, "the refused run did not even log a run"


# -- the database itself is the problem -------------------------------------------------
@pytest.mark.parametrize(
    "content",
    [os.urandom(64 * 1024), b"SQLite format 3\x00" + os.urandom(64 * 1024 - 16)],
    ids=["random-bytes", "sqlite-header-then-garbage"],
)
def test_a_corrupt_database_is_named_in_one_line_and_left_as_it_was(tmp_path: Path, content: bytes) -> None:
    src, dst, db = tmp_path / "src", tmp_path / "dst", tmp_path / "books.db"
    write_tree(src, SMALL)
    db.write_bytes(content)

    result = oeleo(tmp_path, *run_args(src, dst, db))

    assert result.returncode == 2, result.stderr
    message = one_line_error(result.stderr)
    assert message.startswith("oeleo: ") and str(db) in message
    assert db.read_bytes() == content
    assert not (dst / "a.csv").exists()


def test_a_database_locked_by_another_program_is_a_one_line_error_after_the_busy_timeout(
    tmp_path: Path,
) -> None:
    src, dst, db = tmp_path / "src", tmp_path / "dst", tmp_path / "books.db"
    write_tree(src, SMALL)
    assert oeleo(tmp_path, *run_args(src, dst, db)).returncode == 0
    (src / "new.csv").write_text("t,v\n9,9\n")

    holder = sqlite3.connect(str(db), isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        result = oeleo(tmp_path, *run_args(src, dst, db))
        elapsed = time.monotonic() - started
    finally:
        holder.close()

    assert result.returncode != 0
    message = one_line_error(result.stderr)
    assert str(db) in message and "locked by another program" in message
    assert elapsed >= 0.9 * models.BUSY_TIMEOUT_MS / 1000, "it waited for the other program first"
    assert not (dst / "new.csv").exists()

    again = oeleo(tmp_path, *run_args(src, dst, db))
    assert again.returncode == 0, again.stderr
    assert (dst / "new.csv").read_text() == "t,v\n9,9\n"


def test_a_killed_run_is_marked_interrupted_and_its_orphaned_temporary_file_removed(
    work: Path, big_source: Source
) -> None:
    src, dst, db = work / "src", work / "dst", work / "books.db"
    src.mkdir()
    os.link(big_source.folder / BIG, src / BIG)  # a file of this test's own, without a copy
    write_tree(src, SMALL)
    write_tree(dst, {".x.csv.0a1b2c.oeleo-part": "another PC's upload in progress"})
    running = Oeleo(work, *run_args(src, dst, db))
    try:
        wait_for(lambda: size_of(temp_file(dst)) > 8 * MiB, timeout=60, running=running)
    finally:
        running.kill()
    assert [r["status"] for r in runs(db)] == ["running"]
    orphan = temp_file(dst)
    assert orphan.exists()
    (src / BIG).unlink()  # the instrument software moved it away: no copy will replace the orphan

    again = oeleo(work, *run_args(src, dst, db))

    assert again.returncode == 0, again.stderr
    assert [r["status"] for r in runs(db)] == ["interrupted", "ok"]
    assert "killed" in runs(db)[0]["message"]
    assert not orphan.exists()
    assert re.search(r"removed \d+ temporary files? left by an earlier run", again.stderr)
    assert not list(dst.rglob(f"*.{upload_tag(make_origin(src))}.oeleo-part"))
    assert (dst / ".x.csv.0a1b2c.oeleo-part").exists(), "another origin's upload is not touched"
