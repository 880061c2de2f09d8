"""How the ssh connector makes a batch durable and renames it into place, against the real
OpenSSH server on 127.0.0.1: one ``sync FILE...`` command for the batch where the login runs
commands (``fsync@openssh.com`` where it cannot, or where ``sync`` takes no file), and the
batch's renames sent together, each file's answer its own."""

from __future__ import annotations

import logging
import os
import shlex
import sqlite3
from pathlib import Path
from typing import List

import paramiko
import pytest
from helpers import db_rows, make_tree, run_once, tree_files
from test_ssh import KillSessionAfter, ssh_worker_for

from oeleo.connectors import sftp_wire
from oeleo.connectors.base import TEMP_SUFFIX
from oeleo.connectors.ssh import SSHConnector

pytestmark = [pytest.mark.ssh, pytest.mark.usefixtures("no_personal_ssh_setup")]


def files_of(count: int) -> dict:
    return {f"run-{i % 3}/cycle-{i:03d}.res": os.urandom(100 + i) for i in range(count)}


@pytest.fixture
def recorded(monkeypatch):
    """What the connector asks of the server: the commands, the SFTP fsyncs, the renames
    paramiko sends one by one."""
    seen = {"commands": [], "fsyncs": 0, "renames": 0}
    real_exec, real_fsync = SSHConnector._exec, sftp_wire.send_fsync
    real_rename = paramiko.SFTPClient.posix_rename

    def exec_(self, command, *args, **kwargs):
        seen["commands"].append(command)
        return real_exec(self, command, *args, **kwargs)

    def fsync(*args):
        seen["fsyncs"] += 1
        return real_fsync(*args)

    def rename(self, *args):
        seen["renames"] += 1
        return real_rename(self, *args)

    monkeypatch.setattr(SSHConnector, "_exec", exec_)
    monkeypatch.setattr(sftp_wire, "send_fsync", fsync)
    monkeypatch.setattr(paramiko.SFTPClient, "posix_rename", rename)
    return seen


def test_a_batch_is_forced_to_disk_by_one_sync_command_and_renamed_all_at_once(
    sshd_server, tmp_path, recorded
):
    files = files_of(40)
    make_tree(tmp_path / "src", files)
    folder = sshd_server.new_folder()

    summary = run_once(
        ssh_worker_for(sshd_server, tmp_path / "src", folder, tmp_path / "books.db", workers=1)
    )

    assert (summary.copied, summary.failed) == (40, 0), summary.errors
    assert tree_files(folder) == files
    assert set(db_rows(tmp_path / "books.db")) == set(files)
    # One syncfs of the batch's filesystem, named by its three folders (not 40 fsyncs).
    forced = [c for c in recorded["commands"] if c.startswith("sync ") and c != "sync /dev/null"]
    forced = [c for c in forced if c.startswith("sync -f ") or TEMP_SUFFIX in c]
    assert len(forced) == 1 and forced[0].startswith("sync -f "), forced
    assert sorted(shlex.split(forced[0])[2:]) == [f"{folder}/run-{i}" for i in range(3)]
    assert recorded["fsyncs"] == 0  # no fsync@openssh.com: the command did it
    assert recorded["renames"] == 0  # sent together, not one round trip each


def file_syncs_answer(monkeypatch, stderr: bytes) -> None:
    """Every ``sync -f FOLDER...`` and ``sync FILE...`` of temporary files run on the server
    fails with ``stderr`` (the other commands run; a ``recorded`` fixture set up before still
    counts them)."""
    real_exec = SSHConnector._exec

    def failing(self, command, *args, **kwargs):
        if command.startswith("sync -f ") or (command.startswith("sync ") and TEMP_SUFFIX in command):
            return 1, b"", stderr
        return real_exec(self, command, *args, **kwargs)

    monkeypatch.setattr(SSHConnector, "_exec", failing)


def test_a_failed_sync_leaves_the_batch_unbooked_and_no_file_under_its_name(
    sshd_server, tmp_path, monkeypatch
):
    files = files_of(5)
    make_tree(tmp_path / "src", files)
    folder = sshd_server.new_folder()
    file_syncs_answer(monkeypatch, b"sync: error syncing '/srv/x': Input/output error\n")
    summary = run_once(
        ssh_worker_for(sshd_server, tmp_path / "src", folder, tmp_path / "books.db", workers=1)
    )

    assert (summary.copied, summary.failed) == (0, 5)
    assert all("Input/output error" in reason for _, reason in summary.errors), summary.errors
    assert tree_files(folder) == {}  # neither the real names nor the temporary ones
    rows = db_rows(tmp_path / "books.db")
    assert not any(row["checksum"] for row in rows.values()), rows


def test_a_sync_that_takes_no_files_gives_way_to_fsync_over_sftp(
    sshd_server, tmp_path, monkeypatch, recorded, caplog
):
    files = files_of(6)
    make_tree(tmp_path / "src", files)
    folder = sshd_server.new_folder()
    busybox = b"sync: invalid option -- 'x'\nBusyBox v1.2 multi-call binary.\nUsage: sync\n"
    file_syncs_answer(monkeypatch, busybox)
    caplog.set_level(logging.INFO, logger="oeleo")
    summary = run_once(
        ssh_worker_for(sshd_server, tmp_path / "src", folder, tmp_path / "books.db", workers=1)
    )

    assert (summary.copied, summary.failed) == (6, 0), summary.errors
    assert tree_files(folder) == files
    assert recorded["fsyncs"] == 6
    assert caplog.text.count("files are forced to disk through SFTP instead") == 1


def test_one_failed_rename_of_a_batch_fails_that_file_alone(sshd_server, tmp_path, recorded):
    files = {"a.res": b"a" * 10, "b.res": b"b" * 20, "c.res": b"c" * 30}
    make_tree(tmp_path / "src", files)
    folder = sshd_server.new_folder()
    Path(folder, "b.res").mkdir()  # a folder that is not empty: no file can be renamed onto it
    Path(folder, "b.res", "keep").write_bytes(b"k")
    sshd_server.give(folder)

    summary = run_once(
        ssh_worker_for(sshd_server, tmp_path / "src", folder, tmp_path / "books.db", workers=1)
    )

    assert (summary.copied, summary.failed) == (2, 1), summary.errors
    ((name, reason),) = summary.errors
    assert name == "b.res" and "cannot commit" in reason, reason
    assert tree_files(folder) == {"a.res": files["a.res"], "c.res": files["c.res"], "b.res/keep": b"k"}
    assert recorded["renames"] == 0  # the three went out together
    rows = db_rows(tmp_path / "books.db")
    assert rows["a.res"]["checksum"] and rows["c.res"]["checksum"] and not rows["b.res"]["checksum"]


def test_renames_sent_together_all_answer_in_order(sshd_server, tmp_path):
    """The connector's own calls: commit_many with many files, one of them failing in the
    middle; the answers after it still belong to their own files."""
    names: List[str] = [f"f{i:02d}.res" for i in range(20)]
    make_tree(tmp_path / "src", {name: name.encode() for name in names})
    folder = sshd_server.new_folder()
    Path(folder, "f07.res").mkdir()
    Path(folder, "f07.res", "x").write_bytes(b"x")
    sshd_server.give(folder)
    conn = SSHConnector(
        host=sshd_server.host,
        port=sshd_server.port,
        username=sshd_server.user,
        key_filename=sshd_server.keys["ed25519"],
        known_hosts=sshd_server.known_hosts,
        directory=folder,
    )
    with conn:
        staged = [conn.stage(tmp_path / "src" / name, name) for name in names]
        results = conn.commit_many(staged)
        listed = sorted(entry.relpath for entry in conn.list_files())

    failed = [name for name, result in zip(names, results) if not hasattr(result, "relpath")]
    assert failed == ["f07.res"]
    assert listed == sorted([name for name in names if name != "f07.res"] + ["f07.res/x"])
    for name in names:
        if name != "f07.res":
            assert Path(folder, name).read_bytes() == name.encode()


def test_the_files_of_a_folder_are_written_into_files_created_ahead(sshd_server, tmp_path, monkeypatch):
    """Each file's temporary file is created with the previous file's last requests (no
    round trip of its own); none is left once the run ends."""
    monkeypatch.setattr(SSHConnector, "stream_small_files", False)  # spares are the SFTP path's
    files = files_of(40)
    make_tree(tmp_path / "src", files)
    folder = sshd_server.new_folder()
    opened: List[bytes] = []
    real_open = paramiko.SFTPClient.open

    def open_(self, name, mode="r", *args, **kwargs):
        if "w" in mode:
            opened.append(name)
        return real_open(self, name, mode, *args, **kwargs)

    monkeypatch.setattr(paramiko.SFTPClient, "open", open_)
    summary = run_once(
        ssh_worker_for(sshd_server, tmp_path / "src", folder, tmp_path / "books.db", workers=1)
    )

    assert (summary.copied, summary.failed) == (40, 0), summary.errors
    assert tree_files(folder) == files  # no temporary file, no spare left
    written = [name for name in opened if TEMP_SUFFIX.encode() in name]
    assert len(written) <= 6, written  # the first file of each folder (twice: its folder is new)


def test_a_spare_file_left_by_a_killed_run_is_removed_by_the_next_run(sshd_server, tmp_path, monkeypatch):
    # Spare files are the SFTP path's (small files go through tar where the login can run it).
    monkeypatch.setattr(SSHConnector, "stream_small_files", False)
    files = files_of(4)
    make_tree(tmp_path / "src", files)
    folder = sshd_server.new_folder()
    with monkeypatch.context() as killed:  # the run ends without closing its connection cleanly
        killed.setattr(SSHConnector, "_drop_spares", lambda self: None)
        first = run_once(ssh_worker_for(sshd_server, tmp_path / "src", folder, tmp_path / "books.db"))
    left = [name for name in tree_files(folder) if name not in files]
    assert first.copied == 4 and len(left) == 1 and left[0].endswith(TEMP_SUFFIX), left
    books = sqlite3.connect(str(tmp_path / "books.db"))
    with books:  # as a killed run leaves its row
        books.execute("UPDATE oeleo_runs SET status = 'running'")
    books.close()

    (tmp_path / "src" / "new.res").write_bytes(b"new")
    second = run_once(ssh_worker_for(sshd_server, tmp_path / "src", folder, tmp_path / "books.db"))

    assert second.copied == 1, second.errors
    assert tree_files(folder) == {**files, "new.res": b"new"}


def test_a_dropped_connection_among_small_files_leaves_no_spare_file(sshd_server, tmp_path):
    files = files_of(30)
    make_tree(tmp_path / "src", files)
    folder = sshd_server.new_folder()
    reporter = KillSessionAfter(sshd_server, [], sum(len(data) for data in list(files.values())[:12]))
    worker = ssh_worker_for(
        sshd_server, tmp_path / "src", folder, tmp_path / "books.db", reporter=reporter, workers=1
    )
    reporter.connector = worker.external_connector
    summary = run_once(worker)

    assert reporter.killed
    assert (summary.copied, summary.failed) == (30, 0), summary.errors
    assert tree_files(folder) == files  # the spare of the dropped connection was removed too
