"""Start and stop throwaway *real* servers for the test suite.

No pytest import here: these helpers can be used from a plain Python shell too.

PostgreSQL
----------
``start_postgres()`` runs ``initdb`` into a fresh temporary folder, starts the
server with ``pg_ctl`` on 127.0.0.1 and a free port (password authentication,
scram-sha-256, over TCP), creates the database ``oeleo_test`` and returns a
``PostgresServer``. ``stop_postgres()`` stops it (``pg_ctl stop -m fast``,
then by PID if needed) and removes the temporary folder.

When running as root the PostgreSQL commands run as the ``postgres`` OS user
(``runuser -u postgres -- ...``), since ``initdb`` refuses to run as root.
"""

from __future__ import annotations

import atexit
import glob
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

HOST = "127.0.0.1"
PG_USER = "postgres"
PG_DBNAME = "oeleo_test"
PG_OS_USER = "postgres"

MISSING_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, psql) were not found under "
    "/usr/lib/postgresql/*/bin nor on PATH. Run the tests with `bash tests/run.sh` "
    "from the repository root: it installs the needed Debian packages "
    "(postgresql, openssh-server, rsync)."
)

_IDENT_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    dbname: str
    pid: int
    datadir: str
    # internals, not part of the public fields above
    bindir: str = field(default="", repr=False)
    tmpdir: str = field(default="", repr=False)
    stopped: bool = field(default=False, repr=False)

    def dsn(self, dbname: Optional[str] = None) -> str:
        """libpq keyword/value connection string (TCP, password)."""
        return (
            f"host={self.host} port={self.port} user={self.user} "
            f"password={self.password} dbname={dbname or self.dbname}"
        )


# --------------------------------------------------------------------------- helpers


def free_port(host: str = HOST) -> int:
    """A currently free TCP port on ``host`` (bind to port 0, let the OS choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our (zombie) child; else no-op."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def pid_alive(pid: int) -> bool:
    """True if process ``pid`` exists and is not a zombie."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    # state is the field right after "(comm)"
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def _version_key(path: str) -> tuple:
    version = Path(path).parent.name
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.]", version))


def find_pg_bindir() -> str:
    """Folder holding initdb, pg_ctl and psql; raises RuntimeError if none."""
    needed = ("initdb", "pg_ctl", "psql")
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, n), os.X_OK) for n in needed):
            return bindir
    found = [shutil.which(n) for n in needed]
    if all(found):
        dirs = {os.path.dirname(p) for p in found if p}
        if len(dirs) == 1:
            return dirs.pop()
    raise RuntimeError(MISSING_HINT)


class _SubreaperWhile:
    """Make this process a Linux "child subreaper" for the duration of a block.

    ``pg_ctl start`` forks the postmaster and exits; the orphaned postmaster is
    then re-parented to the nearest subreaper, i.e. us, instead of PID 1. So at
    stop time we can reap it ourselves (no zombie left waiting for init).
    A no-op where prctl is unavailable.
    """

    _SET, _GET = 36, 37  # PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER

    def __init__(self) -> None:
        self._prctl = None
        self._was = 0

    def __enter__(self) -> _SubreaperWhile:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            was = ctypes.c_int(0)
            if libc.prctl(self._GET, ctypes.byref(was), 0, 0, 0) == 0:
                self._was = was.value
                if libc.prctl(self._SET, 1, 0, 0, 0) == 0:
                    self._prctl = libc.prctl
        except (OSError, AttributeError):
            self._prctl = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._prctl is not None and not self._was:
            self._prctl(self._SET, 0, 0, 0, 0)


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _as_pg_user(cmd: List[str]) -> List[str]:
    if _is_root():
        return ["runuser", "-u", PG_OS_USER, "--", *cmd]
    return cmd


def _clean_env() -> Dict[str, str]:
    """Environment without PG* variables that could redirect the commands."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _run(cmd: List[str], cwd: str, what: str, timeout: float = 120) -> str:
    """Run ``cmd``; output goes to a file (never a pipe a daemon could inherit)."""
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{text}")
    return text


def _psql(server: PostgresServer, sql: str, dbname: str = "postgres") -> str:
    """Run one SQL command with psql over TCP, as the server's superuser."""
    env = _clean_env()
    env["PGPASSWORD"] = server.password
    env["PGCONNECT_TIMEOUT"] = "10"
    cmd = [
        os.path.join(server.bindir, "psql"),
        "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
        "-h", server.host, "-p", str(server.port), "-U", server.user, "-d", dbname,
        "-c", sql,
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"psql failed (exit {proc.returncode}) for {sql!r}:\n{proc.stderr}")
    return proc.stdout


def _check_ident(name: str) -> str:
    if not _IDENT_RE.match(name):
        raise ValueError(f"not a safe database name: {name!r}")
    return name


def create_database(server: PostgresServer, name: str) -> None:
    _psql(server, f'CREATE DATABASE "{_check_ident(name)}"')


def drop_database(server: PostgresServer, name: str) -> None:
    # WITH (FORCE) (PostgreSQL 13+) also ends connections a test left open.
    _psql(server, f'DROP DATABASE IF EXISTS "{_check_ident(name)}" WITH (FORCE)')


# --------------------------------------------------------------------------- start/stop


def _prepare_tmpdir(password: str) -> tuple:
    tmp = tempfile.mkdtemp(prefix="oeleo-pg-")
    os.chmod(tmp, 0o755)
    datadir = os.path.join(tmp, "data")
    os.mkdir(datadir)
    os.chmod(datadir, 0o700)  # initdb wants 0700 (or 0750) on the data dir
    pwfile = os.path.join(tmp, "pwfile")
    with open(pwfile, "w") as fh:
        fh.write(password + "\n")
    os.chmod(pwfile, 0o600)
    if _is_root():
        import pwd

        pw = pwd.getpwnam(PG_OS_USER)
        # the tmp folder holds the socket and the log: postgres must write there
        for path in (tmp, datadir, pwfile):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    return tmp, datadir, pwfile


def _read_pid(datadir: str) -> int:
    pidfile = os.path.join(datadir, "postmaster.pid")
    with open(pidfile) as fh:
        return int(fh.readline().strip())


def start_postgres(dbname: str = PG_DBNAME, attempts: int = 3, timeout: float = 60) -> PostgresServer:
    """initdb + start a private PostgreSQL on 127.0.0.1 and create ``dbname``."""
    bindir = find_pg_bindir()
    if _is_root() and shutil.which("runuser") is None:
        raise RuntimeError("running as root but `runuser` is missing (util-linux)")
    password = secrets.token_urlsafe(18)
    tmp, datadir, pwfile = _prepare_tmpdir(password)
    server: Optional[PostgresServer] = None
    try:
        _run(
            _as_pg_user([
                os.path.join(bindir, "initdb"),
                "-D", datadir,
                "--auth-host=scram-sha-256",
                "-U", PG_USER,
                f"--pwfile={pwfile}",
                "--encoding=UTF8", "--locale=C", "--no-sync",
            ]),
            cwd=tmp,
            what="initdb",
        )  # fmt: skip
        os.unlink(pwfile)
        logfile = os.path.join(tmp, "log")
        last_error: Optional[Exception] = None
        for _ in range(attempts):
            port = free_port()
            opts = f"-c listen_addresses={HOST} -p {port} -k {tmp} -c fsync=off"
            cmd = _as_pg_user([
                os.path.join(bindir, "pg_ctl"),
                "-D", datadir, "-w", "-t", str(int(timeout)),
                "-o", opts, "-l", logfile, "start",
            ])  # fmt: skip
            try:
                with _SubreaperWhile():
                    _run(cmd, cwd=tmp, what="pg_ctl start", timeout=timeout + 30)
            except RuntimeError as exc:
                log = Path(logfile).read_text(errors="replace") if os.path.exists(logfile) else ""
                last_error = RuntimeError(f"{exc}\n--- server log ---\n{log}")
                if "already in use" in log or "could not bind" in log:
                    continue  # port race: try another port
                raise last_error from None
            break
        else:
            assert last_error is not None
            raise last_error
        server = PostgresServer(
            host=HOST,
            port=port,
            user=PG_USER,
            password=password,
            dbname=dbname,
            pid=_read_pid(datadir),
            datadir=datadir,
            bindir=bindir,
            tmpdir=tmp,
        )
        atexit.register(stop_postgres, server)  # safety net if teardown never runs
        create_database(server, dbname)
        return server
    except BaseException:
        if server is not None:
            stop_postgres(server)
        else:
            _stop_datadir(bindir, datadir, tmp)
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def _stop_datadir(bindir: str, datadir: str, cwd: str) -> bool:
    """pg_ctl stop -m fast if a postmaster.pid exists; False if that failed."""
    if not os.path.exists(os.path.join(datadir, "postmaster.pid")):
        return True
    try:
        _run(
            _as_pg_user([os.path.join(bindir, "pg_ctl"), "-D", datadir,
                         "-w", "-t", "30", "-m", "fast", "stop"]),
            cwd=cwd,
            what="pg_ctl stop",
            timeout=60,
        )  # fmt: skip
    except (RuntimeError, OSError, subprocess.TimeoutExpired):
        return False  # caller falls back to killing by PID
    return True


def _children(pid: int) -> List[int]:
    kids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 1 and fields[1] == str(pid):
            kids.append(int(Path(stat).parent.name))
    return kids


def _kill(pid: int) -> None:
    if not pid_alive(pid):
        return
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        targets = [pid, *_children(pid)] if sig == signal.SIGKILL else [pid]
        for target in targets:
            try:
                os.kill(target, sig)
            except (ProcessLookupError, PermissionError):
                pass
        if wait_for(lambda: not pid_alive(pid), timeout=wait):
            return
    raise RuntimeError(f"PostgreSQL postmaster PID {pid} did not die")


def stop_postgres(server: PostgresServer) -> None:
    """Stop the server (fast), kill by PID if still alive, remove its folder."""
    if server.stopped:
        return
    server.stopped = True
    try:
        stopped = _stop_datadir(server.bindir, server.datadir, server.tmpdir or "/")
        # after a successful fast stop the postmaster exits right away
        grace = 5.0 if stopped else 0.0
        if not wait_for(lambda: not pid_alive(server.pid), timeout=grace):
            _kill(server.pid)
    finally:
        if server.tmpdir:
            shutil.rmtree(server.tmpdir, ignore_errors=True)
