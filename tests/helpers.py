"""Small helpers the tests share: real file trees, the books as rows, the ``oeleo`` command.

Import them with ``from helpers import make_tree`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

Content = Union[bytes, str]


def make_tree(root: Union[str, os.PathLike], files: Mapping[str, Content]) -> Dict[str, Path]:
    """Create ``files`` (POSIX relative name -> content) under ``root``; returns name -> path.

    ``str`` content is written as UTF-8. Folders are created as needed.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    made = {}
    for relpath, content in files.items():
        path = root.joinpath(*relpath.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        made[relpath] = path
    return made


def tree_files(root: Union[str, os.PathLike]) -> Dict[str, bytes]:
    """Every file under ``root`` (hidden ones too), as POSIX relative name -> content."""
    root = Path(root)
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_random(path: Union[str, os.PathLike], size: int, chunk: int = 4 * 1024 * 1024) -> str:
    """Write ``size`` random bytes to ``path`` in chunks; returns their md5 hex digest."""
    digest = hashlib.md5()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        left = size
        while left:
            block = os.urandom(min(chunk, left))
            handle.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def set_mtime(path: Union[str, os.PathLike], seconds_ago: float) -> int:
    """Give ``path`` a modification time ``seconds_ago`` in the past; returns it in ns."""
    mtime_ns = time.time_ns() - int(seconds_ago * 1e9)
    os.utime(path, ns=(os.stat(path).st_atime_ns, mtime_ns))
    return mtime_ns


def db_rows(db_path: Union[str, os.PathLike], table: str = "filelist") -> Dict[str, dict]:
    """The rows of an oeleo SQLite database, keyed by ``local_name`` (read with sqlite3)."""
    connection = sqlite3.connect(str(db_path))
    try:
        connection.row_factory = sqlite3.Row
        rows = connection.execute(f"SELECT * FROM {table}").fetchall()
    finally:
        connection.close()
    return {row["local_name"]: dict(row) for row in rows}


def db_count(db_path: Union[str, os.PathLike], table: str) -> int:
    """How many rows ``table`` of an oeleo SQLite database holds."""
    connection = sqlite3.connect(str(db_path))
    try:
        return connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        connection.close()


def clean_env(extra: Optional[Mapping[str, str]] = None, drop: Iterable[str] = ()) -> Dict[str, str]:
    """This process's environment without any ``OELEO_*`` variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("OELEO_")}
    for name in drop:
        env.pop(name, None)
    env.update(extra or {})
    return env


def run_oeleo(
    *args: str,
    cwd: Union[str, os.PathLike],
    env: Optional[Mapping[str, str]] = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess:
    """Run ``python -m oeleo *args`` in ``cwd`` and return the finished process (text output).

    The child sees this process's environment minus every ``OELEO_*`` variable, plus ``env``,
    so a developer's own settings never leak into a test.
    """
    return subprocess.run(
        [sys.executable, "-m", "oeleo", *args],
        cwd=str(cwd),
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_oeleo(
    args: List[str], cwd: Union[str, os.PathLike], err: Union[str, os.PathLike], env: Mapping[str, str]
) -> subprocess.Popen:
    """Start ``python -m oeleo *args`` in ``cwd`` in the background, its standard error going to
    the file ``err`` (read it while the process runs); stdin and stdout are closed."""
    with open(err, "wb") as stream:
        return subprocess.Popen(
            [sys.executable, "-m", "oeleo", *args],
            cwd=str(cwd),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stream,
        )


def run_once(worker: Any) -> Any:
    """One pass of a worker (it opens its books itself), then close it: the RunSummary."""
    try:
        return worker.run()
    finally:
        worker.close()


def wait_for(condition: Any, timeout: float, what: str) -> None:
    """Poll ``condition()`` until it holds; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def signal_mid_copy(
    args: Iterable[str],
    cwd: Union[str, os.PathLike],
    dst: Path,
    name: str,
    signum: int,
    env: Mapping[str, str],
) -> Tuple[int, str]:
    """Start ``python -m oeleo *args``, wait until ``name`` is being written in ``dst`` (its
    temporary name ``.NAME.<tag>.oeleo-part`` is there), send ``signum``; returns the exit
    status and stderr. Fails if the copy ended before the signal could be sent."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "oeleo", *args],
        cwd=str(cwd),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        started = lambda: dst.is_dir() and any(dst.glob(f".{name}.*.oeleo-part"))  # noqa: E731
        wait_for(lambda: started() or proc.poll() is not None, 30, "the temporary file")
        assert proc.poll() is None, "the copy ended before the signal"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err.decode()


def db_env(pg: Dict[str, Any], **changes: Any) -> Dict[str, str]:
    """The ``OELEO_DB_*`` variables that point oeleo at the server the ``postgres_db`` fixture
    gives (``changes`` replace its values: another database, a wrong password)."""
    settings = {**pg, **changes}
    return {
        "OELEO_DB_HOST": settings["host"],
        "OELEO_DB_PORT": str(settings["port"]),
        "OELEO_DB_USER": settings["user"],
        "OELEO_DB_PASSWORD": settings["password"],
        "OELEO_DB_NAME": settings["dbname"],
    }


def pg_query(pg: Dict[str, Any], sql: str, params: tuple = ()) -> List[dict]:
    """Run ``sql`` on a PostgreSQL connection of its own (so only committed data is seen),
    the server given as the ``postgres_db`` fixture gives it; rows as dicts."""
    import psycopg2
    import psycopg2.extras

    connection = psycopg2.connect(
        host=pg["host"],
        port=pg["port"],
        user=pg["user"],
        password=pg["password"],
        dbname=pg["dbname"],
        connect_timeout=10,
    )
    try:
        connection.autocommit = True
        with connection.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
            cursor.execute(sql, params)
            return [dict(row) for row in cursor.fetchall()] if cursor.description else []
    finally:
        connection.close()
