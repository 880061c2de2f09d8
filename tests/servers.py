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
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

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


def free_port(host: str = HOST, also: Sequence[str] = ()) -> int:
    """A currently free TCP port on ``host`` (bind to port 0, let the OS choose), free on
    the addresses ``also`` too (``"::1"``)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if all(_port_free(address, port) for address in also):
            return port


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ipv6_loopback() -> bool:
    """Whether this machine can listen on ::1 (containers often have no IPv6)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


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


def children_of(pid: int) -> List[int]:
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
        targets = [pid, *children_of(pid)] if sig == signal.SIGKILL else [pid]
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


# --------------------------------------------------------------------------- OpenSSH
#
# ``start_sshd()`` runs Debian's real ``/usr/sbin/sshd`` on 127.0.0.1 and a free port, with a
# throwaway config, host key, client keys, ``authorized_keys`` and ``known_hosts`` in a fresh
# temporary folder, and returns an ``SSHServer``; ``stop_sshd()`` stops it by PID (with the
# session processes it forked) and removes the folder.
#
# ``listen=("127.0.0.1", "::1")`` makes it listen on the IPv6 loopback too (``known_hosts`` then
# holds a line for each address). Forwarding is allowed (``AllowTcpForwarding yes``), so a
# server can be the jump host of another (``ProxyJump``). ``start_ssh_agent()`` runs a real
# ``ssh-agent`` holding the keys given, until ``stop_ssh_agent()`` stops it by PID.
#
# As root, sshd runs inside ``unshare --mount`` with copies of /etc/passwd, /etc/group and
# /etc/shadow bind-mounted over the real ones. The copies add a throwaway login user (a shell
# user, or sftp-only with ``shell=False``) whose password hash is known, so password
# authentication is tested against the real server without touching the machine's /etc.
# ``binds`` mounts more folders the same way (the published README writes to /srv/data).
# Not as root, sshd runs as the current user, who is then the only user that can log in (by
# key; password authentication needs root and is refused).

SSHD = "/usr/sbin/sshd"
SSH_USER = "oeleo-test"
SSH_MISSING_HINT = (
    "OpenSSH server (/usr/sbin/sshd) or ssh-keygen was not found. Run the tests with "
    "`bash tests/run.sh` from the repository root: it installs the needed Debian packages "
    "(postgresql, openssh-server, rsync)."
)


@dataclass
class SSHServer:
    host: str
    port: int
    user: str
    pid: int
    tmpdir: str
    # where the user may write: each test takes a fresh folder with new_folder()
    data_root: str
    known_hosts: str  # a known_hosts file holding this server's host key
    host_key_line: str  # "[127.0.0.1]:PORT ssh-ed25519 AAAA..." (the first listen address)
    host_key_sha256: str  # "SHA256:..." as ssh-keygen -l prints it
    keys: Dict[str, str] = field(default_factory=dict)  # kind -> private key file
    passphrase: str = field(default="", repr=False)  # of the "*_passphrase" keys
    password: Optional[str] = field(default=None, repr=False)  # None: no password login
    shell: bool = True
    binds: Dict[str, str] = field(default_factory=dict)  # path seen by sshd -> real folder
    uid: int = -1
    gid: int = -1
    listen: List[str] = field(default_factory=lambda: [HOST])  # the addresses sshd listens on
    stopped: bool = field(default=False, repr=False)
    _counter: List[int] = field(default_factory=lambda: [0], repr=False)

    def new_folder(self, name: str = "t") -> str:
        """A fresh empty folder on the server the login user owns (absolute path)."""
        self._counter[0] += 1
        path = os.path.join(self.data_root, f"{name}-{self._counter[0]}")
        os.mkdir(path)
        self.give(path)
        return path

    def give(self, path: str) -> None:
        """Make ``path`` (a file, or a folder with all it holds) the login user's."""
        if not _is_root():
            return
        os.chown(path, self.uid, self.gid)
        for folder, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(folder, name), self.uid, self.gid, follow_symlinks=False)

    def authorize(self, private_key: str) -> None:
        """Let the login user log in with another key too (its ``.pub`` file is added)."""
        with open(os.path.join(self.tmpdir, "authorized_keys"), "a") as fh:
            fh.write(Path(private_key + ".pub").read_text())

    def session_pids(self, client_port: int) -> List[int]:
        """The sshd processes serving the TCP connection that comes from ``client_port``."""
        inodes = _tcp_inodes(self.host, self.port, client_port)
        found = []
        for pid in _descendants(self.pid):
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    found.append(pid)
                    break
        return found

    def env(self, **extra: str) -> Dict[str, str]:
        """``OELEO_*`` variables that point oeleo at this server (key authentication)."""
        values = {
            "OELEO_CONNECTOR": "ssh",
            "OELEO_EXTERNAL_HOST": self.host,
            "OELEO_EXTERNAL_PORT": str(self.port),
            "OELEO_USERNAME": self.user,
            "OELEO_KEY_FILENAME": self.keys["ed25519"],
            "OELEO_KNOWN_HOSTS": self.known_hosts,
        }
        values.update(extra)
        return values


def _tcp_inodes(host: str, port: int, client_port: int) -> set:
    """Socket inodes of the TCP connection host:port <-> 127.0.0.1:client_port (/proc/net/tcp)."""
    address = "".join(reversed([f"{int(p):02X}" for p in host.split(".")]))
    local = f"{address}:{port:04X}"
    remote_port = f"{client_port:04X}"
    inodes = set()
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            parts = line.split()
            if parts[1] == local and parts[2].endswith(":" + remote_port):
                inodes.add(parts[9])
    return inodes


def _descendants(pid: int) -> List[int]:
    found, todo = [], [pid]
    while todo:
        kids = children_of(todo.pop())
        found.extend(kids)
        todo.extend(kids)
    return found


def _keygen(path: str, kind: str, passphrase: str = "") -> None:
    bits = ["-b", "2048"] if kind == "rsa" else []
    _run(
        ["ssh-keygen", "-q", "-t", kind, *bits, "-N", passphrase, "-C", "oeleo-test", "-f", path],
        cwd=os.path.dirname(path),
        what="ssh-keygen",
    )


def _free_id(taken: set, start: int = 42000) -> int:
    while start in taken:
        start += 1
    return start


def _fake_etc(tmp: str, shell: bool, password: str) -> Dict[str, object]:
    """Copies of /etc/passwd, /etc/group and /etc/shadow with the throwaway user added."""
    import grp
    import pwd

    taken = {p.pw_uid for p in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    uid = gid = _free_id(taken)
    home = os.path.join(tmp, "home")
    os.mkdir(home)
    login_shell = "/bin/sh" if shell else "/usr/sbin/nologin"
    hashed = subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"], input=password, capture_output=True, text=True, check=True
    ).stdout.strip()
    etc = os.path.join(tmp, "etc")
    os.mkdir(etc)
    os.chmod(etc, 0o755)
    copies = {}
    for name, line in (
        ("passwd", f"{SSH_USER}:x:{uid}:{gid}:oeleo test user:{home}:{login_shell}\n"),
        ("group", f"{SSH_USER}:x:{gid}:\n"),
        ("shadow", f"{SSH_USER}:{hashed}:19000:0:99999:7:::\n"),
    ):
        source = f"/etc/{name}"
        text = Path(source).read_text()
        if text and not text.endswith("\n"):
            text += "\n"
        target = os.path.join(etc, name)
        Path(target).write_text(text + line)
        st = os.stat(source)
        os.chmod(target, st.st_mode & 0o777)
        os.chown(target, st.st_uid, st.st_gid)
        copies[source] = target
    os.chown(home, uid, gid)
    return {"uid": uid, "gid": gid, "binds": copies}


def _sshd_config(
    tmp: str, port: int, shell: bool, password_auth: bool, extra: Sequence[str], listen: Sequence[str]
) -> str:
    lines = [
        f"Port {port}",
        *(f"ListenAddress {address}" for address in listen),
        f"HostKey {tmp}/ssh_host_ed25519_key",
        f"PidFile {tmp}/sshd.pid",
        f"AuthorizedKeysFile {tmp}/authorized_keys",
        "UsePAM no",
        "StrictModes no",  # the key files live under /tmp
        "PermitRootLogin no",
        f"PasswordAuthentication {'yes' if password_auth else 'no'}",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "Subsystem sftp internal-sftp",
        "MaxSessions 32",
        "MaxStartups 64",
        "AllowTcpForwarding yes",  # a jump host for another server (ProxyJump, direct-tcpip)
        "UseDNS no",
        "LogLevel VERBOSE",
    ]
    if not shell:
        lines.append("ForceCommand internal-sftp")
    # A later line does not override an earlier one in sshd_config: put extra lines first.
    return "\n".join([*extra, *lines]) + "\n"


def start_sshd(
    shell: bool = True,
    binds: Optional[Dict[str, str]] = None,
    config: Sequence[str] = (),
    attempts: int = 3,
    timeout: float = 20,
    listen: Sequence[str] = (HOST,),
) -> SSHServer:
    """Start a throwaway OpenSSH server on 127.0.0.1; see the comment above. ``config``:
    more sshd_config lines (``MaxSessions 2``); ``listen``: the addresses (the first one is
    ``host``)."""
    if not (os.access(SSHD, os.X_OK) and shutil.which("ssh-keygen")):
        raise RuntimeError(SSH_MISSING_HINT)
    tmp = tempfile.mkdtemp(prefix="oeleo-sshd-")
    os.chmod(tmp, 0o755)
    try:
        return _start_sshd(tmp, shell, dict(binds or {}), list(config), attempts, timeout, list(listen))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _start_sshd(
    tmp: str,
    shell: bool,
    binds: Dict[str, str],
    config: List[str],
    attempts: int,
    timeout: float,
    listen: List[str],
) -> SSHServer:
    import pwd

    host_key = os.path.join(tmp, "ssh_host_ed25519_key")
    _keygen(host_key, "ed25519")
    keydir = os.path.join(tmp, "keys")
    os.mkdir(keydir, 0o700)
    passphrase = "pass " + secrets.token_urlsafe(8)
    keys = {}
    for kind, key_type, phrase in (
        ("rsa", "rsa", ""),
        ("ed25519", "ed25519", ""),
        ("ed25519_passphrase", "ed25519", passphrase),
        ("rsa_passphrase", "rsa", passphrase),
    ):
        keys[kind] = os.path.join(keydir, f"id_{kind}")
        _keygen(keys[kind], key_type, phrase)
    authorized = os.path.join(tmp, "authorized_keys")
    with open(authorized, "w") as fh:
        for path in keys.values():
            fh.write(Path(path + ".pub").read_text())
    os.chmod(authorized, 0o644)

    password: Optional[str] = None
    if _is_root():
        password = "pw " + secrets.token_urlsafe(12)
        fake = _fake_etc(tmp, shell, password)
        uid, gid, user = int(fake["uid"]), int(fake["gid"]), SSH_USER  # type: ignore[call-overload]
        mounts = dict(fake["binds"])  # type: ignore[call-overload]
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    else:
        uid, gid, user = os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name
        mounts = {}
        if binds:
            raise RuntimeError("start_sshd(binds=...) needs root (unshare --mount)")
    for target, source in binds.items():
        mounts[target] = source
    data_root = os.path.join(tmp, "data")
    os.mkdir(data_root)
    os.chmod(data_root, 0o755)
    if _is_root():
        os.chown(data_root, uid, gid)

    pubkey = Path(host_key + ".pub").read_text().split()
    fingerprint = _run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", host_key + ".pub"], cwd=tmp, what="ssh-keygen"
    )
    config_file = os.path.join(tmp, "sshd_config")
    log = os.path.join(tmp, "sshd.log")
    last_error = ""
    for _ in range(attempts):
        port = free_port(listen[0], also=listen[1:])
        Path(config_file).write_text(_sshd_config(tmp, port, shell, password is not None, config, listen))
        command = [SSHD, "-D", "-e", "-f", config_file]
        if mounts:
            script = " && ".join(f"mount --bind {_q(src)} {_q(dst)}" for dst, src in mounts.items())
            command = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                       f"{script} && exec {' '.join(_q(c) for c in command)}"]  # fmt: skip
        with open(log, "w") as out:
            proc = subprocess.Popen(
                command, cwd=tmp, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        ready = wait_for(partial(_sshd_ready, proc, port, listen, log), timeout=timeout)
        if (
            ready
            and proc.poll() is None
            and "Address already in use" not in Path(log).read_text(errors="replace")
        ):
            break
        _kill_sshd(proc.pid)
        last_error = Path(log).read_text(errors="replace")
        if "Address already in use" not in last_error:
            raise RuntimeError(f"sshd did not start:\n{last_error}")
    else:
        raise RuntimeError(f"sshd did not start:\n{last_error}")

    lines = [f"[{address}]:{port} {pubkey[0]} {pubkey[1]}" for address in listen]
    known_hosts = os.path.join(tmp, "known_hosts")
    Path(known_hosts).write_text("\n".join(lines) + "\n")
    line = lines[0]
    server = SSHServer(
        host=listen[0],
        port=port,
        user=user,
        pid=proc.pid,
        tmpdir=tmp,
        data_root=data_root,
        known_hosts=known_hosts,
        host_key_line=line,
        host_key_sha256=fingerprint.split()[1],
        keys=keys,
        passphrase=passphrase,
        password=password,
        shell=shell,
        binds=dict(binds),
        uid=uid,
        gid=gid,
        listen=list(listen),
    )
    server._proc = proc  # type: ignore[attr-defined]  # keeps the Popen so it can be reaped
    atexit.register(stop_sshd, server)
    return server


def _q(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _sshd_ready(proc: subprocess.Popen, port: int, listen: Sequence[str] = (HOST,), log: str = "") -> bool:
    """True once sshd answers with its banner on every address; raises nothing (False
    while starting)."""
    if proc.poll() is not None:
        return True  # it died: the caller looks at the log
    if log and "Address already in use" in Path(log).read_text(errors="replace"):
        return True  # one address is taken (sshd goes on with the others): the caller retries
    for address in listen:
        try:
            with socket.create_connection((address, port), timeout=1) as sock:
                if not sock.recv(8).startswith(b"SSH-"):
                    return False
        except OSError:
            return False
    return True


def _kill_sshd(pid: int) -> None:
    """SIGTERM the listener, then SIGKILL it and every process it forked (sessions)."""
    family = [pid, *_descendants(pid)]
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    if not wait_for(lambda: not pid_alive(pid), timeout=5):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for other in family[1:]:
        try:
            os.kill(other, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if not wait_for(lambda: not any(pid_alive(p) for p in family), timeout=10):
        raise RuntimeError(f"sshd PID {pid} (or a session it forked) did not die")


def kill_sshd(server: SSHServer) -> None:
    """Kill the server and its sessions by PID, as a crash would; its files stay."""
    _kill_sshd(server.pid)


def stop_sshd(server: SSHServer) -> None:
    """Stop the server and its sessions by PID, then remove its folder."""
    if server.stopped:
        return
    server.stopped = True
    try:
        _kill_sshd(server.pid)
        proc = getattr(server, "_proc", None)
        if proc is not None:
            proc.wait(timeout=10)
    finally:
        shutil.rmtree(server.tmpdir, ignore_errors=True)


# --------------------------------------------------------------------------- ssh-agent


@dataclass
class SSHAgent:
    sock: str  # what SSH_AUTH_SOCK must say
    pid: int
    tmpdir: str
    stopped: bool = field(default=False, repr=False)


def start_ssh_agent(keys: Sequence[str] = (), timeout: float = 10) -> SSHAgent:
    """A real ``ssh-agent`` in the foreground (``-D``) holding ``keys`` (private key files
    without a passphrase, added with ``ssh-add``). Its socket lives in a fresh folder under
    /tmp: a socket path must be short (108 bytes)."""
    if not (shutil.which("ssh-agent") and shutil.which("ssh-add")):
        raise RuntimeError(SSH_MISSING_HINT)
    tmp = tempfile.mkdtemp(prefix="oeleo-agent-")
    sock = os.path.join(tmp, "agent.sock")
    log = os.path.join(tmp, "ssh-agent.log")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["ssh-agent", "-D", "-a", sock], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    agent = SSHAgent(sock=sock, pid=proc.pid, tmpdir=tmp)
    agent._proc = proc  # type: ignore[attr-defined]
    atexit.register(stop_ssh_agent, agent)
    started = wait_for(lambda: os.path.exists(sock) or proc.poll() is not None, timeout=timeout)
    if not started or proc.poll() is not None:
        stop_ssh_agent(agent)
        raise RuntimeError(f"ssh-agent did not start:\n{Path(log).read_text(errors='replace')}")
    env = {**os.environ, "SSH_AUTH_SOCK": sock}
    for key in keys:
        done = subprocess.run(
            ["ssh-add", key], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=30, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            stop_ssh_agent(agent)
            raise RuntimeError(f"ssh-add {key} failed: {done.stderr}")
    return agent


def stop_ssh_agent(agent: SSHAgent) -> None:
    """Stop the agent by its PID and remove its folder (and socket)."""
    if agent.stopped:
        return
    agent.stopped = True
    try:
        os.kill(agent.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    proc = getattr(agent, "_proc", None)
    try:
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    finally:
        shutil.rmtree(agent.tmpdir, ignore_errors=True)


# --------------------------------------------------------------------------- S3 (moto)

# What boto3 sees in the tests: fake keys, no profile or CA bundle of the developer's, and no
# instance-metadata lookup (169.254.169.254 is not on the loopback: no test leaves this machine).
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "oeleo-test-key",
    "AWS_SECRET_ACCESS_KEY": "oeleo-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
S3_ENV_DROP = (
    "AWS_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
)

# A fault: given the WSGI environ of a request, (HTTP status, S3 error code) to answer
# instead of moto, or None to let the request through.
S3Fault = Callable[[Dict[str, object]], Optional[Tuple[int, str]]]


@dataclass
class S3Server:
    """moto's S3 over HTTP on 127.0.0.1, in a thread of this process.

    Every request is recorded in ``requests`` as (method, path, query). ``faults`` answer
    chosen requests with an S3 error. ``cut_answers`` choose requests that moto carries out
    but whose answer is cut short (the connection drops after the store acted: the client
    cannot tell whether it did). moto accepts any Content-MD5; with ``check_md5`` the server
    refuses a body whose Content-MD5 differs (``400 BadDigest``), as AWS does.
    """

    host: str
    port: int
    requests: List[Tuple[str, str, str]] = field(default_factory=list)
    faults: List[S3Fault] = field(default_factory=list)
    cut_answers: List[Callable[[Dict[str, object]], bool]] = field(default_factory=list)
    check_md5: bool = True
    _server: object = field(default=None, repr=False)
    _thread: object = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """The boto3 variables a test process gets (set ``S3_ENV_DROP`` ones to empty)."""
        env = dict(S3_ENV)
        env.update(extra or {})
        return env

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1")

    def new_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def count(self, method: str, path_start: str = "", query: str = "") -> int:
        """How many requests of ``method`` had a path starting with ``path_start`` and a
        query containing ``query``."""
        return sum(
            1 for m, p, q in list(self.requests) if m == method and p.startswith(path_start) and query in q
        )


class _S3Front:
    """WSGI in front of moto: records, injects faults, checks Content-MD5."""

    def __init__(self, app, server: S3Server) -> None:
        self.app = app
        self.server = server

    def __call__(self, environ, start_response):
        import base64
        import hashlib
        import io

        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        self.server.requests.append((method, path, environ.get("QUERY_STRING", "")))
        for fault in list(self.server.faults):
            answer = fault(environ)
            if answer is not None:
                return self._error(start_response, *answer)
        md5 = environ.get("HTTP_CONTENT_MD5")
        chunked = "aws-chunked" in environ.get("HTTP_CONTENT_ENCODING", "") or "STREAMING" in environ.get(
            "HTTP_X_AMZ_CONTENT_SHA256", ""
        )
        if self.server.check_md5 and md5 and not chunked and method in ("PUT", "POST"):
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            if base64.b64encode(hashlib.md5(body).digest()).decode() != md5:
                return self._error(start_response, 400, "BadDigest")
            environ["wsgi.input"] = io.BytesIO(body)
        if any(cut(environ) for cut in list(self.server.cut_answers)):
            return self._cut(environ, start_response)
        return self.app(environ, start_response)

    def _cut(self, environ, start_response):
        """moto carries out the request; then the connection is shut before any answer: the
        client reads a connection closed by the server, after the store acted."""
        import socket as sockets

        for _ in self.app(environ, lambda status, headers, exc_info=None: None):
            pass
        environ["werkzeug.socket"].shutdown(sockets.SHUT_RDWR)
        start_response("500 Internal Server Error", [("Content-Length", "0")])
        return [b""]

    @staticmethod
    def _error(start_response, status: int, code: str):
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>injected by the test server</Message></Error>"
        ).encode()
        reason = {400: "Bad Request", 403: "Forbidden", 500: "Internal Server Error", 503: "Slow Down"}
        start_response(
            f"{status} {reason.get(status, 'Error')}",
            [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
        )
        return [body]


def start_s3() -> S3Server:
    """moto's S3 server on 127.0.0.1 and a free port (``ThreadedMotoServer``'s parts, with
    ``_S3Front`` before them)."""
    import logging
    import threading

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    try:  # moto 5.2 (Python 3.10+): keeps header names as sent; moto 5.1 (Python 3.9) has none
        from moto.server import MotoRequestHandler
    except ImportError:
        MotoRequestHandler = None  # werkzeug's own handler

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = S3Server(HOST, 0)
    app = _S3Front(DomainDispatcherApplication(create_backend_app), server)
    wsgi = make_server(HOST, 0, app, threaded=True, request_handler=MotoRequestHandler)
    server.port = wsgi.server_port
    thread = threading.Thread(target=wsgi.serve_forever, name="moto-s3", daemon=True)
    thread.start()
    server._server, server._thread = wsgi, thread
    return server


def stop_s3(server: S3Server) -> None:
    wsgi, thread = server._server, server._thread
    if wsgi is not None:
        wsgi.shutdown()  # type: ignore[attr-defined]
        wsgi.server_close()  # type: ignore[attr-defined]
    if thread is not None:
        thread.join(timeout=10)  # type: ignore[attr-defined]
    server._server = server._thread = None
