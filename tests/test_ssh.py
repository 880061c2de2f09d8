"""The ssh connector against a real OpenSSH server on 127.0.0.1 (tests/servers.py).

The server's files are on this machine, so what the connector wrote is checked by reading
the server's folder directly. The connector contract itself runs for ``ssh`` in
test_connector_contract.py.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List

import paramiko
import pytest
import servers
from helpers import clean_env, db_rows, make_tree, run_oeleo, run_once, tree_files, wait_for, write_random

from oeleo.connectors.base import TEMP_SUFFIX
from oeleo.connectors.ssh import SSHConnector
from oeleo.errors import ConfigError, ConnectionLost
from oeleo.reporters import Reporter
from oeleo.settings import load_settings
from oeleo.workers import worker_from_settings

MiB = 1024 * 1024

# The ssh example of the published oeleo 0.7 README, verbatim.
README_SSH_SCRIPT = """\
import logging
import os
from pathlib import Path

import dotenv

from oeleo.connectors import register_password
from oeleo.utils import start_logger
from oeleo.workers import ssh_worker

log = start_logger()

print(" ssh ".center(80, "-"))
log.setLevel(logging.DEBUG)
log.info(f"Starting oeleo!")
dotenv.load_dotenv()

external_dir = "/srv/data"
filter_extension = ".res"

register_password(os.environ["OELEO_PASSWORD"])

worker = ssh_worker(
  db_name="ssh_to_server.db",
  base_directory_from=Path(r"data\\raw"),
  base_directory_to=external_dir,
  extension=filter_extension,
)
worker.connect_to_db()
try:
  worker.check(update_db=True)
  worker.filter_local()
  worker.run()
finally:
  worker.close()
"""


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def connector(server: servers.SSHServer, folder: str, **options) -> SSHConnector:
    values = dict(
        host=server.host,
        port=server.port,
        username=server.user,
        directory=folder,
        key_filename=server.keys["ed25519"],
        known_hosts=server.known_hosts,
    )
    values.update(options)
    return SSHConnector(**values)


def ssh_worker_for(server: servers.SSHServer, source: Path, dest: str, db: Path, reporter=None, **settings):
    values = dict(
        connector="ssh",
        base_dir_from=source,
        base_dir_to=dest,
        db_name=str(db),
        external_host=server.host,
        external_port=server.port,
        username=server.user,
        key_filename=server.keys["ed25519"],
        known_hosts=server.known_hosts,
    )
    values.update(settings)
    return worker_from_settings(load_settings(**values), reporter=reporter)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    """The command failed with exactly one line on stderr and no traceback; returns it."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("oeleo: "), lines[0]
    return lines[0]


# The developer's own ~/.ssh and SSH agent stay out of these tests (conftest.py).
pytestmark = pytest.mark.usefixtures("no_personal_ssh_setup")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "instrument", {"a.res": "cycle 1\n", "run-1/b.res": "cycle 2\n"})[
        "a.res"
    ].parent


# -- logging in --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ed25519", "ed25519_passphrase", "rsa_passphrase"])
def test_key_login_copies_with_rsa_ed25519_and_passphrase_keys(sshd_server, source, kind):
    folder = sshd_server.new_folder()
    passphrase = sshd_server.passphrase if kind.endswith("passphrase") else None
    conn = connector(sshd_server, folder, key_filename=sshd_server.keys[kind], passphrase=passphrase)

    with conn:
        conn.prepare()
        conn.put(source / "a.res", "a.res")

    assert tree_files(folder) == {"a.res": b"cycle 1\n"}


def test_key_passphrase_falls_back_to_the_password_as_oeleo_0_7_did(sshd_server, source):
    folder = sshd_server.new_folder()
    key = sshd_server.keys["ed25519_passphrase"]
    conn = connector(sshd_server, folder, key_filename=key, password=sshd_server.passphrase)

    with conn:
        conn.put(source / "a.res", "a.res")

    assert tree_files(folder) == {"a.res": b"cycle 1\n"}


def test_a_key_the_password_does_not_unlock_is_left_and_the_password_logs_in(sshd_server, source, caplog):
    # OELEO_KEY_FILENAME locked by another passphrase, OELEO_PASSWORD the login's: as ssh
    # (and oeleo 0.7) go on to the password, the password logs in, with a warning on the key.
    if sshd_server.password is None:
        pytest.skip("password login is tested as root only: sshd must read a shadow file")
    folder = sshd_server.new_folder()
    key = sshd_server.keys["ed25519_passphrase"]
    conn = connector(sshd_server, folder, key_filename=key, password=sshd_server.password)
    caplog.set_level(logging.WARNING, logger="oeleo")

    with conn:
        conn.put(source / "a.res", "a.res")

    assert tree_files(folder) == {"a.res": b"cycle 1\n"}
    assert "protected by a passphrase that OELEO_PASSWORD does not unlock" in caplog.text
    assert sshd_server.password not in caplog.text


def test_password_login_against_the_real_server(sshd_server, source, tmp_path):
    if sshd_server.password is None:
        pytest.fail("password login is tested as root only: sshd must read a shadow file (unshare --mount)")
    folder = sshd_server.new_folder()
    env = sshd_server.env(OELEO_KEY_FILENAME="", OELEO_PASSWORD=sshd_server.password)

    done = run_oeleo("run", "--from", str(source), "--to", folder, cwd=tmp_path, env=env)

    assert done.returncode == 0, done.stderr
    assert tree_files(folder) == {"a.res": b"cycle 1\n", "run-1/b.res": b"cycle 2\n"}
    assert sshd_server.password not in done.stdout + done.stderr


# -- host keys ---------------------------------------------------------------------------


def test_unknown_host_key_is_refused_with_how_to_trust_it(sshd_server, source, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    folder = sshd_server.new_folder()

    done = run_oeleo(
        "run", "--from", str(source), "--to", folder, cwd=tmp_path,
        env=sshd_server.env(OELEO_KNOWN_HOSTS=str(known_hosts)),
    )  # fmt: skip

    assert done.returncode == 2
    line = one_error_line(done)
    assert f"unknown SSH host key for [127.0.0.1]:{sshd_server.port}" in line
    assert sshd_server.host_key_sha256 in line
    assert f"ssh-keyscan -p {sshd_server.port} 127.0.0.1 >> {known_hosts}" in line
    assert "OELEO_ACCEPT_NEW_HOST_KEYS=true" in line
    assert known_hosts.read_text() == ""
    assert tree_files(folder) == {}
    assert "no such file" not in line, line


def test_a_known_hosts_file_that_is_not_there_is_said_with_the_unknown_key(sshd_server, source, tmp_path):
    typo = tmp_path / "known_host"  # for known_hosts
    done = run_oeleo(
        "run", "--from", str(source), "--to", sshd_server.new_folder(), cwd=tmp_path,
        env=sshd_server.env(OELEO_KNOWN_HOSTS=str(typo)),
    )  # fmt: skip

    assert done.returncode == 2
    line = one_error_line(done)
    assert f"(OELEO_KNOWN_HOSTS={typo}: no such file)" in line, line
    assert not typo.exists()


def test_new_host_key_is_trusted_logged_and_stored_with_the_setting(sshd_server, source, tmp_path):
    known_hosts = tmp_path / "ssh" / "known_hosts"  # its folder is created too
    folder = sshd_server.new_folder()
    env = sshd_server.env(OELEO_KNOWN_HOSTS=str(known_hosts), OELEO_ACCEPT_NEW_HOST_KEYS="true")

    done = run_oeleo("run", "--from", str(source), "--to", folder, cwd=tmp_path, env=env)

    assert done.returncode == 0, done.stderr
    assert f"trusting the new SSH host key of [127.0.0.1]:{sshd_server.port}" in done.stderr
    assert sshd_server.host_key_sha256 in done.stderr
    assert known_hosts.read_text().strip() == sshd_server.host_key_line
    assert tree_files(folder) == {"a.res": b"cycle 1\n", "run-1/b.res": b"cycle 2\n"}
    # From now on the key is known: no setting needed, nothing logged about it.
    env.pop("OELEO_ACCEPT_NEW_HOST_KEYS")
    again = run_oeleo("run", "--from", str(source), "--to", folder, "--db", "again.db", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert "trusting" not in again.stderr


def test_changed_host_key_is_refused_even_when_new_keys_are_accepted(sshd_server, source, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known_hosts = tmp_path / "known_hosts"
    kind, blob = Path(str(other) + ".pub").read_text().split()[:2]
    known_hosts.write_text(f"[127.0.0.1]:{sshd_server.port} {kind} {blob}\n")
    env = sshd_server.env(OELEO_KNOWN_HOSTS=str(known_hosts), OELEO_ACCEPT_NEW_HOST_KEYS="true")

    done = run_oeleo("run", "--from", str(source), "--to", sshd_server.new_folder(), cwd=tmp_path, env=env)

    assert done.returncode == 2
    line = one_error_line(done)
    assert "has CHANGED" in line and str(known_hosts) in line


def test_a_known_hosts_file_with_lines_ssh_skips_is_read_as_ssh_reads_it(sshd_server, source, tmp_path):
    """A @cert-authority line, a damaged line and a key that is not base64 before the server's
    own line: ssh connects, and so does oeleo (paramiko's loader raised InvalidHostKey)."""
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, blob = Path(str(other) + ".pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        f"@cert-authority *.example.org {kind} {blob}\n"
        "q\n"
        f"host.example.org {kind} not-base64!!\n"
        f"@unknown-marker host {kind} {blob}\n"
        f"{sshd_server.host_key_line}\n"
    )
    folder = sshd_server.new_folder()

    done = run_oeleo(
        "run", "--from", str(source), "--to", folder, cwd=tmp_path,
        env=sshd_server.env(OELEO_KNOWN_HOSTS=str(known_hosts)),
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert tree_files(folder) == {"a.res": b"cycle 1\n", "run-1/b.res": b"cycle 2\n"}


@pytest.mark.parametrize("blank", [" ", "  ", "\t"], ids=["space", "two-spaces", "tab"])
def test_a_host_key_marked_revoked_is_refused(sshd_server, source, tmp_path, blank):
    """Fields apart by any run of blanks, as ssh reads them (paramiko's parser split on each
    single blank, found no key, and the revoked key was let through)."""
    known_hosts = tmp_path / "known_hosts"
    kind, blob = sshd_server.host_key_line.split()[1:3]
    known_hosts.write_text(f"{sshd_server.host_key_line}\n@revoked{blank}*{blank}{kind}{blank}{blob}\n")
    folder = sshd_server.new_folder()

    done = run_oeleo(
        "run", "--from", str(source), "--to", folder, cwd=tmp_path,
        env=sshd_server.env(OELEO_KNOWN_HOSTS=str(known_hosts), OELEO_ACCEPT_NEW_HOST_KEYS="true"),
    )  # fmt: skip

    assert done.returncode == 2, done.stderr
    line = one_error_line(done)
    assert f"is marked @revoked in {known_hosts} line 2" in line, line
    assert tree_files(folder) == {}


# -- bad input: one line, the right exit status, no secret -------------------------------


def bad_settings(server: servers.SSHServer, tmp_path: Path) -> Dict[str, tuple]:
    """name -> (environment, text the one line must hold)."""
    stranger = tmp_path / "id_stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    where = f"{server.user}@127.0.0.1:{server.port}"
    return {
        "wrong password": (
            server.env(OELEO_KEY_FILENAME="", OELEO_PASSWORD="wrong " + (server.password or "x")),
            f"cannot log in to {where}: the password (OELEO_PASSWORD) was not accepted",
        ),
        "key the server does not know": (
            server.env(OELEO_KEY_FILENAME=str(stranger)),
            f"cannot log in to {where}: the key {stranger} was not accepted",
        ),
        "wrong passphrase": (
            server.env(OELEO_KEY_FILENAME=server.keys["rsa_passphrase"], OELEO_KEY_PASSPHRASE="not it"),
            "wrong passphrase (OELEO_KEY_PASSPHRASE)",
        ),
        "passphrase missing": (
            server.env(OELEO_KEY_FILENAME=server.keys["ed25519_passphrase"]),
            "the key is protected by a passphrase: set OELEO_KEY_PASSPHRASE",
        ),
        "public key given": (
            server.env(OELEO_KEY_FILENAME=server.keys["ed25519"] + ".pub"),
            "that is the public key",
        ),
        "key file missing": (
            server.env(OELEO_KEY_FILENAME=str(tmp_path / "nothing")),
            f"OELEO_KEY_FILENAME={tmp_path / 'nothing'}: no such file",
        ),
        "connection refused": (
            server.env(OELEO_EXTERNAL_PORT="1"),
            "127.0.0.1:1 refused the connection",
        ),
        "unknown host name": (
            server.env(OELEO_EXTERNAL_HOST="no-such-host.invalid"),
            f"cannot find the SSH server 'no-such-host.invalid' (OELEO_EXTERNAL_HOST), port {server.port}",
        ),
        "no user name": (
            server.env(OELEO_USERNAME=""),
            "OELEO_USERNAME is not set",
        ),
        "no key and no password": (
            server.env(OELEO_KEY_FILENAME=""),
            "set OELEO_KEY_FILENAME (a private key file) or OELEO_PASSWORD",
        ),
    }


BAD_INPUT = [
    "wrong password",
    "key the server does not know",
    "wrong passphrase",
    "passphrase missing",
    "public key given",
    "key file missing",
    "connection refused",
    "unknown host name",
    "no user name",
    "no key and no password",
]


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_setting_is_one_line_exit_2_without_secrets(sshd_server, source, tmp_path, case):
    env, expected = bad_settings(sshd_server, tmp_path)[case]
    folder = sshd_server.new_folder()

    done = run_oeleo("run", "--from", str(source), "--to", folder, cwd=tmp_path, env=env)

    assert done.returncode == 2, done.stderr
    assert expected in one_error_line(done)
    output = done.stdout + done.stderr
    for secret in (sshd_server.password, sshd_server.passphrase, env.get("OELEO_PASSWORD"), "not it"):
        if secret:
            assert secret not in output
    assert tree_files(folder) == {}
    debug = run_oeleo("run", "--debug", "--from", str(source), "--to", folder, cwd=tmp_path, env=env)
    for secret in (sshd_server.password, sshd_server.passphrase, env.get("OELEO_PASSWORD"), "not it"):
        if secret:
            assert secret not in debug.stdout + debug.stderr


def test_port_without_an_ssh_server_is_one_line_exit_2(source, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    port = listener.getsockname()[1]

    def answer_like_a_web_server() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            client.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            client.close()

    threading.Thread(target=answer_like_a_web_server, daemon=True).start()
    env = {
        "OELEO_CONNECTOR": "ssh",
        "OELEO_EXTERNAL_HOST": "127.0.0.1",
        "OELEO_EXTERNAL_PORT": str(port),
        "OELEO_USERNAME": "oeleo",
        "OELEO_PASSWORD": "secret pw",
    }
    try:
        done = run_oeleo("run", "--from", str(source), "--to", "/d", cwd=tmp_path, env=env)
    finally:
        listener.close()

    assert done.returncode == 2
    line = one_error_line(done)  # paramiko's own traceback is not printed
    assert line.startswith(f"oeleo: 127.0.0.1:{port} does not answer like an SSH server")


def silent_server(tmp_path):
    """A listener on 127.0.0.1 that takes connections and says nothing, and a connector to it
    (a timeout of 1 s)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    held = []
    threading.Thread(target=lambda: held.append(listener.accept()), daemon=True).start()
    conn = SSHConnector(
        host="127.0.0.1", port=listener.getsockname()[1], username="oeleo", password="pw",
        directory="/d", known_hosts=str(tmp_path / "known_hosts"), timeout=1,
    )  # fmt: skip
    return listener, conn


def test_a_server_that_takes_the_connection_and_says_nothing_is_said_as_such(tmp_path):
    # paramiko's start_client() returns at its timeout without a session; oeleo said
    # "unexpected error: SSHException: No existing session" and exited 1 (trial 48).
    listener, conn = silent_server(tmp_path)
    port = listener.getsockname()[1]
    try:
        with pytest.raises(ConfigError) as refused:
            conn.connect()
    finally:
        listener.close()
        conn.close()

    said = str(refused.value)
    assert said.startswith(f"127.0.0.1:{port} "), said
    assert "does not answer like an SSH server" in said or "did not finish the SSH handshake" in said, said
    assert "OELEO_EXTERNAL_HOST" in said and "No existing session" not in said, said


def test_a_server_that_worked_and_now_hangs_is_a_dropped_connection_not_a_setting(tmp_path):
    # The worker's retries reconnect after a ConnectionLost; a ConfigError ended the pass at
    # the first reconnect, as if the settings that worked a moment before were wrong (trial 48).
    listener, conn = silent_server(tmp_path)
    conn._session.ever_connected = True  # as after a first connection that worked
    try:
        with pytest.raises(ConnectionLost) as lost:
            conn.reconnect()
    finally:
        listener.close()
        conn.close()

    said = str(lost.value)
    assert said.startswith("cannot reconnect to ") and "check OELEO_" not in said, said


def test_unreachable_host_is_exit_2_naming_host_and_port(source, tmp_path):
    if os.geteuid() != 0:
        pytest.fail("needs root: the command runs in a network namespace without routes (unshare --net)")
    env = {
        "OELEO_CONNECTOR": "ssh",
        "OELEO_EXTERNAL_HOST": "192.0.2.1",
        "OELEO_USERNAME": "oeleo",
        "OELEO_PASSWORD": "secret pw",
    }

    # In a fresh network namespace no address has a route: "Network is unreachable".
    done = subprocess.run(
        ["unshare", "--net", sys.executable, "-m", "oeleo", "run", "--from", str(source), "--to", "/d"],
        cwd=tmp_path, env=clean_env(env), capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert done.returncode == 2, done.stderr
    line = one_error_line(done)
    assert line.startswith("oeleo: 192.0.2.1:22 is unreachable: Network is unreachable")
    assert "secret pw" not in done.stdout + done.stderr


def test_host_that_does_not_answer_is_unreachable_after_the_timeout():
    # A listening socket whose accept queue is full drops new connections unanswered.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = [socket.socket() for _ in range(3)]
    for sock in queued:
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
    conn = SSHConnector(host="127.0.0.1", port=port, username="u", directory="/d", password="pw", timeout=0.5)
    try:
        with pytest.raises(ConfigError) as caught:
            conn.connect()
    finally:
        for sock in [*queued, listener]:
            sock.close()

    assert str(caught.value) == f"127.0.0.1:{port} is unreachable: no answer within 0.5 s"


def test_remote_base_folder_missing_and_not_creatable_is_exit_2(sshd_server, source, tmp_path):
    locked = sshd_server.new_folder()
    os.chmod(locked, 0o555)  # the login user owns it but may not write into it
    base = f"{locked}/instrument-7/raw"

    done = run_oeleo("run", "--from", str(source), "--to", base, cwd=tmp_path, env=sshd_server.env())

    assert done.returncode == 2
    line = one_error_line(done)
    assert f"remote folder {base} on {sshd_server.user}@127.0.0.1:{sshd_server.port}" in line
    assert "does not exist and cannot be created: permission denied" in line


def test_remote_base_folder_not_writable_is_exit_2(sshd_server, source, tmp_path):
    locked = sshd_server.new_folder()
    os.chmod(locked, 0o555)

    done = run_oeleo("run", "--from", str(source), "--to", locked, cwd=tmp_path, env=sshd_server.env())

    assert done.returncode == 2
    assert f"remote folder {locked} on" in one_error_line(done)
    assert "is not writable: permission denied" in done.stderr


def test_permission_denied_in_a_remote_subfolder_fails_that_file_only(sshd_server, source, tmp_path):
    folder = sshd_server.new_folder()
    os.mkdir(f"{folder}/run-1", 0o555)
    sshd_server.give(f"{folder}/run-1")
    os.chmod(f"{folder}/run-1", 0o555)

    done = run_oeleo("run", "--from", str(source), "--to", folder, cwd=tmp_path, env=sshd_server.env())

    assert done.returncode == 1
    failed = [line for line in done.stderr.splitlines() if line.startswith("failed")]
    # The temporary name carries this PC's tag: .b.res.<6 hex digits>.oeleo-part
    temporary = re.escape(f"{folder}/run-1/.b.res.") + "[0-9a-f]{6}" + re.escape(".oeleo-part")
    expected = re.escape("failed run-1/b.res: permission denied (127.0.0.1:") + temporary + r"\)"
    assert len(failed) == 1 and re.fullmatch(expected, failed[0]), failed
    assert "Traceback" not in done.stderr
    assert tree_files(folder) == {"a.res": b"cycle 1\n"}
    rows = db_rows(tmp_path / "oeleo-file-list.db")
    assert rows["a.res"]["code"] == 1 and rows["run-1/b.res"]["last_error"]


# -- what lands on the server ------------------------------------------------------------


def test_subfolders_are_created_on_the_server(sshd_server, tmp_path):
    files = {"2024/05/cell-7/cycle 1.res": b"one", "2024/05/cell-7/cycle 2.res": b"two", "top.res": b"t"}
    make_tree(tmp_path / "src", files)
    folder = sshd_server.new_folder()

    with connector(sshd_server, folder + "/new/base") as conn:
        conn.prepare()
        for relpath in files:
            conn.put(tmp_path / "src" / relpath, relpath)
        listed = {entry.relpath: entry.size for entry in conn.list_files()}

    assert tree_files(folder + "/new/base") == files
    assert listed == {relpath: len(data) for relpath, data in files.items()}
    assert conn.external_name("2024/05/x.res") == f"{folder}/new/base/2024/05/x.res"


def test_copy_keeps_the_source_modification_time(sshd_server, tmp_path):
    source = make_tree(tmp_path / "src", {"a.res": b"x"})["a.res"]
    os.utime(source, (1_700_000_000, 1_700_000_000))
    folder = sshd_server.new_folder()

    with connector(sshd_server, folder) as conn:
        conn.put(source, "a.res")
        entry = conn.stat("a.res")

    assert os.stat(f"{folder}/a.res").st_mtime == 1_700_000_000
    assert entry is not None and entry.mtime_ns == 1_700_000_000 * 10**9


def test_server_without_posix_rename_gets_remove_then_rename(sshd_server, tmp_path, monkeypatch, caplog):
    source = make_tree(tmp_path / "src", {"a.res": b"version 1"})["a.res"]
    folder = sshd_server.new_folder()

    def unsupported(self, old, new):  # what paramiko raises for SSH_FX_OP_UNSUPPORTED
        raise OSError("Operation unsupported")

    monkeypatch.setattr(paramiko.SFTPClient, "posix_rename", unsupported)
    caplog.set_level(logging.INFO, logger="oeleo")
    with connector(sshd_server, folder) as conn:
        conn.put(source, "a.res")
        source.write_bytes(b"version 2, longer")
        conn.put(source, "a.res")

    assert tree_files(folder) == {"a.res": b"version 2, longer"}
    assert caplog.text.count("has no posix-rename@openssh.com") == 1


def test_relative_base_folder_is_under_the_login_home(sshd_server, tmp_path):
    source = make_tree(tmp_path / "src", {"a.res": b"x"})["a.res"]
    name = f"relative-{os.getpid()}"
    home = (
        Path(sshd_server.tmpdir) / "home" if sshd_server.password else Path(pwd.getpwuid(os.getuid()).pw_dir)
    )

    with connector(sshd_server, f"~/{name}/raw") as conn:
        conn.prepare()
        conn.put(source, "a.res")

    assert (home / name / "raw" / "a.res").read_bytes() == b"x"


def test_published_readme_ssh_example_runs_unchanged(start_sshd, tmp_path):
    srv = tmp_path / "srv"  # the server sees this folder as /srv
    srv.mkdir()
    server = start_sshd(binds={"/srv": str(srv)})
    if server.password is None:
        pytest.fail("the README example logs in with a password: needs root (see servers.start_sshd)")
    server.give(str(srv))
    work = tmp_path / "pc"
    # Path(r"data\raw") is a relative path; on Linux the backslash is part of one folder name.
    raw = work / "data\\raw"
    make_tree(raw, {"cell_01.res": b"RES 1", "cell_02.res": b"RES 22", "notes.txt": b"not copied"})
    (work / ".env").write_text(
        f"OELEO_EXTERNAL_HOST={server.host}\n"
        f"OELEO_EXTERNAL_PORT={server.port}\n"
        f"OELEO_USERNAME={server.user}\n"
        f"OELEO_PASSWORD={server.password}\n"
        f"OELEO_KNOWN_HOSTS={server.known_hosts}\n"
    )
    (work / "example.py").write_text(README_SSH_SCRIPT)

    done = subprocess.run(
        [sys.executable, "example.py"], cwd=work, capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("OELEO_")},
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    assert tree_files(srv / "data") == {"cell_01.res": b"RES 1", "cell_02.res": b"RES 22"}
    rows = db_rows(work / "ssh_to_server.db")
    assert {name: (row["code"], row["checksum"]) for name, row in rows.items()} == {
        "cell_01.res": (1, md5(b"RES 1")),
        "cell_02.res": (1, md5(b"RES 22")),
    }
    assert rows["cell_01.res"]["external_name"] == "/srv/data/cell_01.res"
    log = (work / "oeleo.log").read_text()
    assert "copied cell_01.res" in log
    assert server.password not in log + done.stdout + done.stderr


# -- comparing the two sides -------------------------------------------------------------


def test_check_update_db_books_what_is_on_the_server_without_copying(sshd_server, tmp_path, monkeypatch):
    files = {f"run-{i % 3}/cell {i:03d}.res": f"cycle {i}\n".encode() for i in range(40)}
    source = tmp_path / "src"
    make_tree(source, files)
    folder = sshd_server.new_folder()
    on_server = dict(files)
    on_server.pop("run-0/cell 000.res")  # missing on the server
    on_server["run-1/cell 001.res"] = b"cycle X\n"  # same size, other content
    on_server["run-2/cell 002.res"] = b"cycle 2, longer\n"  # other size
    make_tree(folder, on_server)
    sshd_server.give(folder)
    commands: List[str] = []
    real_exec = SSHConnector._exec

    def counting_exec(self, command, timeout=None):
        if "/dev/null" not in command:  # not the probe for md5sum and friends
            commands.append(command.split()[0])
        return real_exec(self, command, timeout)

    monkeypatch.setattr(SSHConnector, "_exec", counting_exec)
    worker = ssh_worker_for(sshd_server, source, folder, tmp_path / "books.db")
    worker.connect_to_db()
    try:
        report = worker.check(update_db=True)
        in_check = list(commands)  # the run's own md5sum (verifying its 3 copies) comes after
        copies_before = tree_files(folder)
        summary = worker.run()
    finally:
        worker.close()

    assert copies_before == on_server  # check() copied nothing
    assert report.missing == ["run-0/cell 000.res"]
    assert sorted(report.different) == ["run-1/cell 001.res", "run-2/cell 002.res"]
    assert len(report.same) == 37 and not report.errors
    assert in_check.count("md5sum") == 1  # 37 files compared with one md5sum on the server
    assert (summary.copied, summary.unchanged, summary.failed) == (3, 37, 0)
    assert tree_files(folder) == files


def test_check_against_a_server_path_that_is_not_a_folder_is_an_error_not_every_file_missing(
    sshd_server, tmp_path
):
    source = tmp_path / "src"
    make_tree(source, {"a.csv": "a\n", "run-1/b.csv": "b\n"})
    folder = os.path.join(sshd_server.new_folder(), "a-file")
    Path(folder).write_text("not a folder")
    worker = ssh_worker_for(sshd_server, source, folder, tmp_path / "books.db")
    worker.connect_to_db()
    try:
        with pytest.raises(ConfigError, match="is not a folder"):
            worker.check(update_db=True)
    finally:
        worker.close()

    assert db_rows(tmp_path / "books.db") == {}


def test_checksums_of_many_awkward_names_are_batched_and_quoted(sshd_server, tmp_path):
    names = [f"batch/{i:04d} it's $HOME `x` {'ø' * 40}.res" for i in range(600)]
    names += ["batch/new\nline.res", "batch/-dash.res", "batch/star*.res"]
    folder = sshd_server.new_folder()
    make_tree(folder, {name: name.encode() for name in names})
    conn = connector(sshd_server, folder)
    commands: List[str] = []
    real_exec = conn._exec
    conn._exec = lambda command, timeout=None: commands.append(command) or real_exec(command, timeout)

    with conn:
        digests = conn.checksums(names + ["batch/not there.res"], "md5")

    assert digests == {name: md5(name.encode()) for name in names}
    batches = [c.encode() for c in commands if "/dev/null" not in c]  # not the probe for md5sum
    total = sum(len(c) for c in batches)
    assert 2 <= len(batches) <= -(-total // (32 * 1024)) + 1
    assert all(len(c) <= 32 * 1024 for c in batches)


# -- connections drop --------------------------------------------------------------------


class KillSessionAfter(Reporter):
    """Kills the server side of the worker's SSH connection once ``limit`` bytes went out,
    and notes whether a real name ever held a file while the copies were under way."""

    def __init__(self, server: servers.SSHServer, real_names: List[Path], limit: int) -> None:
        super().__init__()
        self.server, self.real_names, self.limit = server, real_names, limit
        self.sent, self.killed, self.seen_under_real_name = 0, [], False
        self.connector = None
        self.lock = threading.Lock()

    def advance(self, nbytes: int) -> None:  # called by the copying threads
        with self.lock:
            self.sent += nbytes
            self.seen_under_real_name |= any(name.exists() for name in self.real_names)
            if not self.killed and self.sent >= self.limit:
                # The connection's client port finds its sshd processes (via /proc).
                port = self.connector._transport.sock.getsockname()[1]
                self.killed = self.server.session_pids(port)
                assert self.killed
                for pid in self.killed:
                    os.kill(pid, signal.SIGKILL)


class KillEverySessionOf(Reporter):
    """Kills the server side of the worker's SSH connection each time ``limit`` more bytes
    went out: every attempt at a file larger than that drops its connection."""

    def __init__(self, server: servers.SSHServer, limit: int) -> None:
        super().__init__()
        self.server, self.limit, self.sent, self.kills = server, limit, 0, 0
        self.connector = None
        self.lock = threading.Lock()

    def advance(self, nbytes: int) -> None:
        with self.lock:
            self.sent += nbytes
            if self.sent >= self.limit:
                self.sent = 0
                port = self.connector._transport.sock.getsockname()[1]
                for pid in self.server.session_pids(port):
                    os.kill(pid, signal.SIGKILL)
                self.kills += 1


def test_dropped_connection_mid_file_reconnects_and_completes(sshd_server, tmp_path, caplog):
    source = tmp_path / "src"
    digest = write_random(source / "big.fits", 40 * MiB)
    folder = sshd_server.new_folder()
    reporter = KillSessionAfter(sshd_server, [Path(folder) / "big.fits"], 12 * MiB)
    worker = ssh_worker_for(sshd_server, source, folder, tmp_path / "books.db", reporter=reporter)
    reporter.connector = worker.external_connector
    caplog.set_level(logging.INFO, logger="oeleo")
    summary = run_once(worker)

    assert reporter.killed and not reporter.seen_under_real_name
    assert (summary.copied, summary.failed) == (1, 0), summary.errors
    assert hashlib.md5((Path(folder) / "big.fits").read_bytes()).hexdigest() == digest
    assert tree_files(folder).keys() == {"big.fits"}  # no temporary file left either
    assert "reconnecting" in caplog.text and f"reconnected to {sshd_server.user}@" in caplog.text
    assert db_rows(tmp_path / "books.db")["big.fits"]["checksum"] == digest


def test_dropped_connection_with_four_workers_reconnects_once_and_completes(
    sshd_server, tmp_path, monkeypatch
):
    source = tmp_path / "src"
    digests = {f"cube_{i}.fits": write_random(source / f"cube_{i}.fits", 12 * MiB) for i in range(4)}
    folder = sshd_server.new_folder()
    reporter = KillSessionAfter(sshd_server, [Path(folder) / name for name in digests], 20 * MiB)
    connections: List[int] = []
    real_open = SSHConnector._open_locked
    monkeypatch.setattr(SSHConnector, "_open_locked", lambda self: connections.append(1) or real_open(self))
    worker = ssh_worker_for(sshd_server, source, folder, tmp_path / "books.db", reporter=reporter, workers=4)
    reporter.connector = worker.external_connector
    summary = run_once(worker)

    assert reporter.killed and not reporter.seen_under_real_name
    assert (summary.copied, summary.failed) == (4, 0), summary.errors
    assert {name: md5((Path(folder) / name).read_bytes()) for name in digests} == digests
    assert tree_files(folder).keys() == set(digests)
    assert len(connections) == 2  # the four threads share one new connection


class StopServerAfter(Reporter):
    def __init__(self, server: servers.SSHServer, limit: int) -> None:
        super().__init__()
        self.server, self.limit, self.sent, self.partial = server, limit, 0, None

    def advance(self, nbytes: int) -> None:
        self.sent += nbytes
        if self.sent >= self.limit and self.partial is None:
            servers.kill_sshd(self.server)  # listener and sessions: nothing to reconnect to
            self.partial = True


def test_connection_lost_for_good_stops_the_run_in_one_line_and_leaves_no_partial_file(
    start_sshd, tmp_path, caplog
):
    # The server dies for good while the first file is sent: the run stops once that file's
    # retries found nothing to reconnect to, instead of spending them on each of the 20 left.
    server = start_sshd()
    source = tmp_path / "src"
    write_random(source / "big.fits", 16 * MiB)
    make_tree(source, {f"z{i:02d}.res": b"after" for i in range(20)})
    folder = server.new_folder()
    reporter = StopServerAfter(server, 4 * MiB)
    worker = ssh_worker_for(server, source, folder, tmp_path / "books.db", reporter=reporter, retries=1)
    caplog.set_level(logging.WARNING, logger="oeleo")
    summary = run_once(worker)

    assert summary.copied == 0 and 1 <= summary.failed <= 2  # the files in flight at most
    reason = dict(summary.errors)["big.fits"]
    assert "\n" not in reason and f"{server.user}@127.0.0.1:{server.port}" in reason
    assert "gave up after 1 reconnect)" in reason
    assert summary.fatal == reason  # stopped early: exit status 1
    assert caplog.text.count("reconnecting in") <= 2
    assert not (Path(folder) / "big.fits").exists()
    # At most temporary names (two files are in flight at once), which the next run replaces.
    left = set(tree_files(folder))
    assert all(name.startswith((".big.fits.", ".z")) and name.endswith(TEMP_SUFFIX) for name in left), left
    rows = db_rows(tmp_path / "books.db")
    assert rows["big.fits"]["last_error"] == reason
    assert not any(row["code"] == 1 and not row["last_error"] for row in rows.values())  # none booked copied


def test_a_server_gone_for_good_among_small_files_says_it_once_and_counts_the_files_left(
    start_sshd, tmp_path, caplog
):
    # Small files go in batches through tar; the server dies for good in the middle: one
    # cycle of reconnects, then "stopped early", the files left counted (a trial's 344
    # "failed ... refused" lines), and every file accounted for in the summary.
    server = start_sshd()
    source = tmp_path / "src"
    make_tree(source, {f"run-{i // 100}/f{i:03d}.dat": os.urandom(8192) for i in range(600)})
    folder = server.new_folder()
    reporter = StopServerAfter(server, 300 * 8192)
    worker = ssh_worker_for(server, source, folder, tmp_path / "books.db", reporter=reporter)
    caplog.set_level(logging.WARNING, logger="oeleo")
    summary = run_once(worker)

    assert reporter.partial, "the server was not stopped"
    assert summary.fatal and "gave up after 3 reconnects" in summary.fatal, summary.describe()
    assert summary.failed <= 2, summary.errors
    assert summary.copied + summary.failed + summary.left == 600, summary.describe()
    assert summary.describe().endswith(f"; {summary.left} files left for the next run")
    # A cycle of reconnects for each copying thread at most (the batch's resend and the
    # copies after it give up at once once the server is found away).
    assert caplog.text.count("reconnecting in") <= 3 * 2, caplog.text
    rows = db_rows(tmp_path / "books.db")
    booked = {name for name, row in rows.items() if row["checksum"]}
    assert len(booked) == summary.copied
    assert all((Path(folder) / name).read_bytes() == (source / name).read_bytes() for name in booked)


def test_a_connection_that_comes_back_fails_only_the_file_it_dropped_under(sshd_server, tmp_path):
    # Every attempt at big.fits drops the connection, yet each reconnect works: that file
    # fails alone and the run goes on.
    source = tmp_path / "src"
    write_random(source / "big.fits", 16 * MiB)
    make_tree(source, {"z.res": b"after"})
    folder = sshd_server.new_folder()
    reporter = KillEverySessionOf(sshd_server, 4 * MiB)
    worker = ssh_worker_for(sshd_server, source, folder, tmp_path / "books.db", reporter=reporter, retries=1)
    reporter.connector = worker.external_connector
    summary = run_once(worker)

    assert reporter.kills >= 2
    assert (summary.copied, summary.failed) == (1, 1), summary.errors
    assert "gave up after 2 attempts" in dict(summary.errors)["big.fits"]
    assert not summary.fatal
    left = tree_files(folder)
    assert left.pop("z.res") == b"after"
    assert all(name.startswith(".big.fits.") and name.endswith(TEMP_SUFFIX) for name in left), left
    # The next run replaces what the dropped attempts left and copies the file.
    again = run_once(ssh_worker_for(sshd_server, source, folder, tmp_path / "books.db"))
    assert (again.copied, again.failed) == (1, 0), again.errors
    assert tree_files(folder).keys() == {"big.fits", "z.res"}


def test_a_folder_in_the_way_of_a_copy_on_the_server_is_said(sshd_server, tmp_path):
    """A folder on the server under a file's name: the file fails saying a folder is in the
    way and naming the real name (SFTP said "Failure" against the temporary name); the other
    file is copied."""
    source = tmp_path / "src"
    make_tree(source, {"isdir.csv": b"a,b\n", "ok.csv": b"c,d\n"})
    folder = sshd_server.new_folder()
    os.makedirs(os.path.join(folder, "isdir.csv", "inside"))

    summary = run_once(ssh_worker_for(sshd_server, source, folder, tmp_path / "books.db"))

    assert (summary.copied, summary.failed) == (1, 1), summary.errors
    reason = dict(summary.errors)["isdir.csv"]
    assert "a folder is in the way" in reason and reason.endswith("isdir.csv)"), reason
    assert TEMP_SUFFIX not in reason, reason


def drop_connection_of(server: servers.SSHServer, connector: SSHConnector) -> None:
    """Kill the server side of the connector's connection, and wait until paramiko saw it."""
    transport = connector._transport
    port = transport.sock.getsockname()[1]
    for pid in server.session_pids(port):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not transport.is_active(), 10, "paramiko to see the connection drop")


def test_a_batch_whose_sync_drops_the_connection_is_synced_again_after_a_reconnect(
    sshd_server, tmp_path, monkeypatch, caplog
):
    """The connection drops as the batch's bytes are forced to disk (after tar wrote and the
    server hashed them): the copies are on the server, so the sync and renames go on over a
    new connection instead of failing the batch (256 small files failed before)."""
    files = {f"run/f{i:02d}.csv": os.urandom(2000 + i) for i in range(30)}
    source = tmp_path / "src"
    make_tree(source, files)
    folder = sshd_server.new_folder()
    worker = ssh_worker_for(sshd_server, source, folder, tmp_path / "books.db")
    connector = worker.external_connector
    real = SSHConnector._force_to_disk
    dropped: List[int] = []

    def drop_first(self, paths):
        if not dropped:
            dropped.append(len(paths))
            drop_connection_of(sshd_server, connector)
        return real(self, paths)

    monkeypatch.setattr(SSHConnector, "_force_to_disk", drop_first)
    caplog.set_level(logging.WARNING, logger="oeleo")
    summary = run_once(worker)

    assert dropped == [30]
    assert (summary.copied, summary.failed) == (30, 0), summary.errors
    assert tree_files(folder) == files  # no temporary file left
    assert "a batch of 30 files" in caplog.text and "reconnecting in" in caplog.text


def test_renames_of_a_batch_whose_answers_were_lost_are_found_done(sshd_server, tmp_path, monkeypatch):
    """The batch's renames went out together and the server did them, but their answers were
    lost (the connection dropped as they came back): each rename sent again alone finds its
    temporary name gone, and the real name holding the verified copy; the files are copied
    (89 of 2,000 failed with "no such file" in a trial with sshd restarted mid-run)."""
    files = {f"f{i:02d}.csv": os.urandom(3000 + i) for i in range(20)}
    source = tmp_path / "src"
    make_tree(source, files)
    folder = sshd_server.new_folder()
    real = SSHConnector._rename_ahead
    lost: List[int] = []

    def answers_lost(self, staged):
        real(self, staged)
        lost.append(len(self._local.renames))
        self._local.renames = {}  # none of the answers was read

    monkeypatch.setattr(SSHConnector, "_rename_ahead", answers_lost)
    summary = run_once(ssh_worker_for(sshd_server, source, folder, tmp_path / "books.db"))

    assert lost == [20]
    assert (summary.copied, summary.failed) == (20, 0), summary.errors
    assert tree_files(folder) == files


def test_a_rename_whose_answer_was_lost_is_found_done_after_the_reconnect(sshd_server, tmp_path, monkeypatch):
    """The rename went through but its answer was lost with the connection: sent again, the
    temporary name is gone; the real name holds the copy verified, so the file is copied."""
    source = tmp_path / "src"
    data = os.urandom(300 * 1024)  # over SFTP or cat, renamed alone
    make_tree(source, {"big.fits": data})
    folder = sshd_server.new_folder()
    worker = ssh_worker_for(sshd_server, source, folder, tmp_path / "books.db")
    connector = worker.external_connector
    real = SSHConnector.rename
    calls: List[str] = []

    def answer_lost_once(self, src, dst):
        calls.append(dst)
        real(self, src, dst)
        if len(calls) == 1:
            drop_connection_of(sshd_server, connector)
            raise ConnectionLost(f"connection to {connector.where} lost (test: the answer of the rename)")

    monkeypatch.setattr(SSHConnector, "rename", answer_lost_once)
    summary = run_once(worker)

    assert calls == ["big.fits", "big.fits"]
    assert (summary.copied, summary.failed) == (1, 0), summary.errors
    assert tree_files(folder) == {"big.fits": data}
    assert db_rows(tmp_path / "books.db")["big.fits"]["checksum"] == hashlib.md5(data).hexdigest()


# -- parallel copies ---------------------------------------------------------------------


def test_four_workers_copy_200_files_over_four_sftp_channels(sshd_server, tmp_path, monkeypatch):
    # The SFTP path (small files go through tar where the login can run it: see test_ssh_streams).
    monkeypatch.setattr(SSHConnector, "stream_small_files", False)
    files = {f"run-{i % 7}/scan_{i:03d}.fits": os.urandom(1000 + i * 37) for i in range(200)}
    source = tmp_path / "src"
    make_tree(source, files)
    folder = sshd_server.new_folder()
    channels: List[str] = []
    real_new_sftp = SSHConnector._new_sftp

    def recording_new_sftp(self, transport, first=False):
        channels.append(threading.current_thread().name)
        return real_new_sftp(self, transport, first)

    connections: List[int] = []
    real_open = SSHConnector._open_locked

    def counting_open(self):
        connections.append(1)
        return real_open(self)

    monkeypatch.setattr(SSHConnector, "_new_sftp", recording_new_sftp)
    monkeypatch.setattr(SSHConnector, "_open_locked", counting_open)
    worker = ssh_worker_for(sshd_server, source, folder, tmp_path / "books.db", workers=4)
    summary = run_once(worker)

    assert (summary.copied, summary.failed) == (200, 0), summary.errors
    assert tree_files(folder) == files
    copying = {name for name in channels if name.startswith("oeleo-copy")}
    assert len(copying) == 4  # one SFTP channel per copying thread ...
    assert len(connections) == 1  # ... on one SSH connection
    rows = db_rows(tmp_path / "books.db")
    assert all(rows[name]["checksum"] == md5(data) for name, data in files.items())


def test_more_workers_than_the_server_allows_channels_take_turns(start_sshd, tmp_path, caplog):
    server = start_sshd(config=["MaxSessions 2"])
    files = {f"scan_{i:02d}.fits": os.urandom(300_000 + i) for i in range(24)}
    source = tmp_path / "src"
    make_tree(source, files)
    folder = server.new_folder()
    caplog.set_level(logging.INFO, logger="oeleo")
    worker = ssh_worker_for(server, source, folder, tmp_path / "books.db", workers=4)
    summary = run_once(worker)

    assert (summary.copied, summary.failed) == (24, 0), summary.errors
    assert tree_files(folder) == files
    assert "allows no more SFTP channels" in caplog.text


# -- a login without a shell -------------------------------------------------------------


def test_sftp_only_login_verifies_copies_by_reading_them_back(sftp_only_server, tmp_path, caplog):
    source = tmp_path / "src"
    big = write_random(source / "big.fits", 3 * MiB + 5)
    make_tree(source, {"small.res": b"tiny"})
    folder = sftp_only_server.new_folder()
    caplog.set_level(logging.INFO, logger="oeleo")
    worker = ssh_worker_for(sftp_only_server, source, folder, tmp_path / "books.db")
    worker.connect_to_db()
    try:
        summary = worker.run()
        report = worker.check()
        hashes = worker.external_connector.features.hashes
    finally:
        worker.close()

    assert (summary.copied, summary.failed) == (2, 0), summary.errors
    assert hashes == frozenset()
    assert "runs no commands (sftp only): copies are verified by reading them back" in caplog.text
    assert caplog.text.count("runs no commands") == 1  # logged once
    assert hashlib.md5((Path(folder) / "big.fits").read_bytes()).hexdigest() == big
    assert sorted(report.same) == ["big.fits", "small.res"]


def test_sftp_only_login_still_detects_a_corrupt_copy(sftp_only_server, tmp_path):
    source = make_tree(tmp_path / "src", {"a.res": b"A" * 300_000})["a.res"]
    folder = sftp_only_server.new_folder()
    make_tree(folder, {"a.res": b"B" * 300_000})

    with connector(sftp_only_server, folder) as conn:
        assert conn.checksum("a.res") == md5(b"B" * 300_000)
        assert conn.checksums(["a.res"]) == {"a.res": md5(b"B" * 300_000)}
        conn.put(source, "a.res")

    assert Path(folder, "a.res").read_bytes() == b"A" * 300_000


# -- imports -----------------------------------------------------------------------------


def test_paramiko_is_imported_only_when_the_ssh_connector_is_used(tmp_path):
    code = (
        "import sys, oeleo.connectors, oeleo.workers, oeleo.cli\n"
        "assert 'paramiko' not in sys.modules\n"
        "from oeleo.connectors import SSHConnector, get_connector_class\n"
        "assert get_connector_class('ssh') is SSHConnector and 'paramiko' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
