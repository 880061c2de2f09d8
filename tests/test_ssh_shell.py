"""The ssh connector's commands through one shell kept open on the server
(``oeleo.connectors.ssh_shell``), against a real OpenSSH server on 127.0.0.1: output, errors
and exit status come back apart; a command never reads the commands after it; a shell that
dies, or a command that ends it, falls back to a channel of its own; a login that runs no
commands gets no shell; a run of small files sends its md5sum and sync commands through it."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from typing import List

import paramiko
import pytest
import servers
from helpers import make_tree, run_once, tree_files
from test_ssh import connector, ssh_worker_for

from oeleo.connectors.ssh import SSHConnector
from oeleo.errors import ConnectionLost

pytestmark = [pytest.mark.ssh, pytest.mark.usefixtures("no_personal_ssh_setup")]


@pytest.fixture
def channels(monkeypatch) -> List[bytes]:
    """The commands started on channels of their own (``exec_command``), in order."""
    seen: List[bytes] = []
    real = paramiko.Channel.exec_command

    def exec_command(self, command):
        seen.append(command if isinstance(command, bytes) else command.encode())
        return real(self, command)

    monkeypatch.setattr(paramiko.Channel, "exec_command", exec_command)
    return seen


def probed(server: servers.SSHServer, **options) -> SSHConnector:
    c = connector(server, server.new_folder("shell"), **options)
    c.connect()
    c._server_hashes()  # the probe: from then on, commands go to the shell
    return c


def test_commands_after_the_probe_share_one_shell(sshd_server, channels):
    c = probed(sshd_server)
    try:
        before = len(channels)
        for _ in range(20):
            status, out, err = c._exec("md5sum /dev/null")
            assert (status, err) == (0, b"")
            assert out.split()[0].decode() == hashlib.md5(b"").hexdigest()
        assert channels[before:] == [b"exec sh"]  # one shell started, no channel per command
    finally:
        c.close()


def test_output_errors_and_status_come_back_apart(sshd_server):
    c = probed(sshd_server)
    try:
        assert c._exec("printf 'a\\nb'; printf oops >&2; sh -c 'exit 3'") == (3, b"a\nb", b"oops")
        assert c._exec("printf 'x\\n'; printf 'e\\n' >&2") == (0, b"x\n", b"e\n")
        assert c._exec("true") == (0, b"", b"")
        name = 'it\'s a "name" with $HOME and\nnewline \u00e9'
        assert c._exec("printf %s " + _quote(name)) == (0, name.encode(), b"")
    finally:
        c.close()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def test_a_command_reading_its_input_gets_nothing_and_the_next_one_runs(sshd_server, channels):
    c = probed(sshd_server)
    try:
        before = len(channels)
        assert c._exec("cat; echo after", timeout=20) == (0, b"after\n", b"")  # not a hang
        assert c._exec("echo next") == (0, b"next\n", b"")
        assert channels[before:] == [b"exec sh"]
    finally:
        c.close()


def test_megabytes_on_both_streams_come_back_whole(sshd_server):
    c = probed(sshd_server)
    try:
        n = 3_000_000  # more than the channel's window: errors unread would hold the output back
        command = f"head -c {n} /dev/zero | tr '\\0' e >&2; head -c {n} /dev/zero | tr '\\0' o"
        status, out, err = c._exec(command, timeout=60)
        assert status == 0
        assert out == b"o" * n
        assert err == b"e" * n
    finally:
        c.close()


def test_a_killed_shell_is_replaced_and_the_command_still_runs(sshd_server):
    c = probed(sshd_server)
    try:
        status, out, _ = c._exec("echo $$")  # the shell's own process id
        assert status == 0
        pid = int(out)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c._exec("echo still here") == (0, b"still here\n", b"")
        status, out, _ = c._exec("echo $$")
        assert status == 0 and int(out) != pid
    finally:
        c.close()


def test_a_command_that_ends_the_shell_runs_again_on_a_channel_of_its_own(sshd_server, channels):
    c = probed(sshd_server)
    try:
        c._exec("true")
        before = len(channels)
        assert c._exec("exit 7") == (7, b"", b"")
        assert channels[before:] == [b"exit 7"]  # the shell ended; the channel gave the status
        assert c._exec("echo on") == (0, b"on\n", b"")  # channels of their own from then on
        assert channels[before + 1 :] == [b"echo on"]
    finally:
        c.close()


def test_a_command_that_does_not_answer_in_time_drops_the_connection(sshd_server):
    c = probed(sshd_server)
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match="did not answer"):
            c._exec("sleep 30", timeout=0.5)
        assert time.monotonic() - started < 10
        c.reconnect()  # what the worker's retry does after ConnectionLost
        assert c._exec("echo back") == (0, b"back\n", b"")  # a new connection, a new shell
    finally:
        c.close()


def test_a_login_that_runs_no_commands_gets_no_shell(sftp_only_server, channels):
    c = probed(sftp_only_server)
    try:
        assert not c._server_hashes()
        assert b"exec sh" not in channels
        assert c._shell._shell is None
    finally:
        c.close()


def test_a_connector_told_to_keep_no_shell_runs_each_command_on_a_channel_of_its_own(sshd_server, channels):
    c = connector(sshd_server, sshd_server.new_folder("each"))
    c.keep_shell = False  # what a subclass sets as a class attribute
    c.connect()
    try:
        c._server_hashes()
        before = len(channels)
        assert c._exec("echo one") == (0, b"one\n", b"")
        assert channels[before:] == [b"echo one"]
    finally:
        c.close()


def test_a_run_of_small_files_sends_its_hashes_and_syncs_through_the_shell(sshd_server, tmp_path, channels):
    files = {f"run-{i % 3}/scan_{i:04d}.res": os.urandom(200 + 7 * i) for i in range(700)}
    source = tmp_path / "src"
    make_tree(source, files)
    dest = sshd_server.new_folder("run")
    worker = ssh_worker_for(sshd_server, source, dest, tmp_path / "books.db")
    summary = run_once(worker)
    assert summary.copied == len(files) and summary.failed == 0
    assert tree_files(dest) == files
    started = [c.split()[0] for c in channels]
    assert started.count(b"exec") == 1  # "exec sh": the shell
    # After the probe, no md5sum or sync got a channel of its own: all went to the shell
    # (700 files: three batches, each hashed and synced twice).
    probe = next(i for i, c in enumerate(channels) if c.startswith(b"md5sum /dev/null"))
    assert not [c for c in channels[probe + 1 :] if c.split()[0] in (b"md5sum", b"sync")]
