"""Files over SSH through commands on the server (``oeleo.connectors.ssh_streams``): small
ones through one ``tar -x`` per batch, large ones through ``cat``, against a real OpenSSH
server on 127.0.0.1 and its real GNU tar and coreutils: the copies arrive whole, timed and
verified, with hostile names; a copy that differs on the server, a file that cannot be
written and a full disk fail as they do over SFTP; a server whose tar cannot read the archive
gets every file over SFTP."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List

import paramiko
import pytest
import servers
from helpers import db_rows, make_tree, run_once, tree_files
from test_ssh import connector, ssh_worker_for

from oeleo.connectors import ssh_streams
from oeleo.connectors.base import TEMP_SUFFIX
from oeleo.connectors.ssh import SSHConnector
from oeleo.errors import VerificationError

pytestmark = [pytest.mark.ssh, pytest.mark.usefixtures("no_personal_ssh_setup")]


@pytest.fixture
def streams(monkeypatch):
    """The tar streams a run opens and the SFTP files it opens for writing."""
    seen: Dict[str, List] = {"streams": [], "sftp_writes": []}
    real_open_stream = SSHConnector._open_stream
    real_write = SSHConnector._write

    def open_stream(self):
        stream = real_open_stream(self)
        if stream is not None and all(stream is not s for s in seen["streams"]):
            seen["streams"].append(stream)
        return stream

    def write(self, sftp, path, chunks, size):
        seen["sftp_writes"].append(path)
        return real_write(self, sftp, path, chunks, size)

    monkeypatch.setattr(SSHConnector, "_open_stream", open_stream)
    monkeypatch.setattr(SSHConnector, "_write", write)
    return seen


HOSTILE = {
    "plain.res": b"cycle 1\n",
    "empty.res": b"",
    "with space/cell 01.csv": b"a;b\n1;2\n",
    "-leading-dash.fits": os.urandom(3000),
    "back\\slash.res": b"backslash\n",
    "new\nline.res": b"newline in the name\n",
    "mesure-\u00e9t\u00e9/\u00e5ngstr\u00f6m.csv": b"utf-8 names\n",
    "bytes-\udce9.res": b"a name that is not UTF-8 (Latin-1 e-acute)\n",
    "deep/" + "x" * 150 + ".fits": os.urandom(5000),  # longer than ustar's 100 bytes
    "pct%41+plus$HOME'quote\".res": b"shell characters\n",
}


def test_small_files_go_through_tar_whole_timed_verified_and_books_them(
    sshd_server, tmp_path, streams, caplog
):
    files = dict(HOSTILE)
    files.update({f"run-{i % 4}/scan_{i:04d}.res": os.urandom(100 + 13 * i) for i in range(600)})
    source = tmp_path / "src"
    make_tree(source, files)
    for number, name in enumerate(files):
        os.utime(source / name, (1_700_000_000 + number, 1_600_000_000 + number))
    folder = sshd_server.new_folder()
    caplog.set_level(logging.INFO, logger="oeleo")

    summary = run_once(ssh_worker_for(sshd_server, source, folder, tmp_path / "books.db"))

    assert (summary.copied, summary.failed) == (len(files), 0), summary.errors
    assert tree_files(folder) == files  # every byte, every name, and no temporary file left
    for number, name in enumerate(files):
        assert os.stat(os.path.join(folder, name)).st_mtime == 1_600_000_000 + number, name
    assert not streams["sftp_writes"]  # not one small file over SFTP
    # One tar per batch of at most 256 files (the batches overlap: never more than that).
    assert 3 <= len(streams["streams"]) <= 4, len(streams["streams"])
    assert "small files go in batches through tar" in caplog.text
    rows = db_rows(tmp_path / "books.db")
    assert len(rows) == len(files)
    (row,) = [row for name, row in rows.items() if name.endswith("run-1/scan_0001.res")]
    assert row["checksum"] == hashlib.md5(files["run-1/scan_0001.res"]).hexdigest()


LARGE = {
    "run 1/frame 0001.fits": os.urandom(3 * 1024 * 1024 + 5),
    "-dash 'quote' $x.fits": os.urandom(300_000),
    "bytes-\udce9/b.fits": os.urandom(270_000),
}


def test_large_files_go_through_cat_whole_timed_and_verified(sshd_server, tmp_path, streams):
    source = tmp_path / "src"
    make_tree(source, LARGE)
    for number, name in enumerate(LARGE):
        os.utime(source / name, (1_700_000_000, 1_500_000_000 + number))
    folder = sshd_server.new_folder()
    commands: List[bytes] = []
    real = paramiko.Channel.exec_command

    def exec_command(self, command):
        commands.append(command if isinstance(command, bytes) else command.encode())
        return real(self, command)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(paramiko.Channel, "exec_command", exec_command)
        summary = run_once(ssh_worker_for(sshd_server, source, folder, tmp_path / "books.db"))

    assert (summary.copied, summary.failed) == (3, 0), summary.errors
    assert tree_files(folder) == LARGE
    for number, name in enumerate(LARGE):
        assert os.stat(os.path.join(folder, name)).st_mtime == 1_500_000_000 + number
    assert not streams["sftp_writes"]
    written = [command for command in commands if b"&& cat >" in command]
    assert len(written) == 3
    # Verified there: hashed by the command that wrote it, while it is forced to disk.
    assert all(b"md5sum -- " in command and b"sync -- " in command for command in written), written


def test_a_large_file_cat_cannot_write_fails_alone_with_the_words_sftp_would_use(sshd_server, tmp_path):
    source = tmp_path / "src"
    files = {"a.fits": os.urandom(300_000), "locked/b.fits": os.urandom(300_000)}
    make_tree(source, files)
    folder = sshd_server.new_folder()
    os.mkdir(f"{folder}/locked")
    sshd_server.give(folder)
    os.chmod(f"{folder}/locked", 0o555)

    summary = run_once(ssh_worker_for(sshd_server, source, folder, tmp_path / "books.db"))

    assert (summary.copied, summary.failed) == (1, 1), summary.errors
    ((name, reason),) = summary.errors
    assert name == "locked/b.fits"
    assert reason.startswith("permission denied (127.0.0.1:" + folder + "/locked/.b.fits."), reason
    assert tree_files(folder) == {"a.fits": files["a.fits"]}


def test_a_copy_that_differs_on_the_server_fails_alone_and_the_previous_version_stays(
    sshd_server, tmp_path, monkeypatch
):
    source = tmp_path / "src"
    files = {f"cell_{i:02d}.res": f"version 1 of {i}\n".encode() for i in range(20)}
    make_tree(source, files)
    folder = sshd_server.new_folder()
    assert run_once(ssh_worker_for(sshd_server, source, folder, tmp_path / "books.db")).copied == 20
    changed = {name: f"version 2 of {name}, longer\n".encode() for name in files}
    make_tree(source, changed)
    real_close = ssh_streams.TarStream.close

    def close_then_damage(self):
        error = real_close(self)
        # Once tar is done, one byte of one temporary file changes on the server's disk.
        for path in Path(folder).glob(".cell_07.res.*" + TEMP_SUFFIX):
            data = bytearray(path.read_bytes())
            data[3] ^= 0xFF
            path.write_bytes(bytes(data))
        return error

    monkeypatch.setattr(ssh_streams.TarStream, "close", close_then_damage)
    summary = run_once(ssh_worker_for(sshd_server, source, folder, tmp_path / "books.db"))

    assert (summary.copied, summary.failed) == (19, 1), summary.errors
    ((name, reason),) = summary.errors
    assert name == "cell_07.res" and "md5 of the copy" in reason, reason
    expected = dict(changed, **{"cell_07.res": files["cell_07.res"]})  # the good old copy
    assert tree_files(folder) == expected  # and no temporary file left


def test_a_large_file_damaged_on_its_way_through_cat_fails_alone_and_the_previous_version_stays(
    sshd_server, tmp_path, monkeypatch
):
    # The command that writes a large file also hashes it there: bytes that arrive other than
    # sent must still fail the copy, and never replace the good copy.
    source = tmp_path / "src"
    first = {"a.fits": os.urandom(400_000), "b.fits": os.urandom(400_000)}
    make_tree(source, first)
    folder = sshd_server.new_folder()
    assert run_once(ssh_worker_for(sshd_server, source, folder, tmp_path / "books.db")).copied == 2
    second = {name: os.urandom(500_000) for name in first}
    make_tree(source, second)
    real = paramiko.Channel.sendall
    damaged: List[int] = []

    def sendall(self, data):
        if not damaged and len(data) > 1000 and bytes(data[:8]) == second["b.fits"][:8]:
            changed = bytearray(data)
            changed[100] ^= 0xFF
            damaged.append(len(changed))
            return real(self, bytes(changed))
        return real(self, data)

    monkeypatch.setattr(paramiko.Channel, "sendall", sendall)
    summary = run_once(ssh_worker_for(sshd_server, source, folder, tmp_path / "books.db"))

    assert damaged, "the test damaged nothing"
    assert (summary.copied, summary.failed) == (1, 1), summary.errors
    ((name, reason),) = summary.errors
    assert name == "b.fits" and "md5 of the copy" in reason, reason
    assert tree_files(folder) == {"a.fits": second["a.fits"], "b.fits": first["b.fits"]}


def test_a_file_tar_cannot_write_fails_alone_with_the_words_sftp_uses(sshd_server, tmp_path):
    source = tmp_path / "src"
    files = {"a.res": b"a\n", "run-1/b.res": b"b\n", "run-2/c.res": b"c\n"}
    make_tree(source, files)
    folder = sshd_server.new_folder()
    Path(folder, "run-1").write_bytes(b"a file where the source has a folder\n")
    sshd_server.give(folder)

    summary = run_once(ssh_worker_for(sshd_server, source, folder, tmp_path / "books.db"))

    assert (summary.copied, summary.failed) == (2, 1), summary.errors
    ((name, reason),) = summary.errors
    assert name == "run-1/b.res"
    # Sent again over SFTP, which says why in its own words.
    assert reason == f"exists and is not a folder: {folder}/run-1", reason
    assert tree_files(folder) == {
        "a.res": b"a\n",
        "run-2/c.res": b"c\n",
        "run-1": b"a file where the source has a folder\n",
    }


@pytest.fixture
def full_disk_server(tmp_path):
    """An sshd started after a 1 MiB tmpfs was mounted (root only), and that tmpfs."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    small = Path(tempfile.mkdtemp(prefix="oeleo-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0777", "tmpfs", str(small)], check=True)
    try:
        server = servers.start_sshd()
        try:
            yield server, small
        finally:
            servers.stop_sshd(server)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
        shutil.rmtree(small, ignore_errors=True)


def test_a_full_disk_stops_the_run_and_books_nothing_it_did_not_write(full_disk_server, tmp_path):
    server, small = full_disk_server
    source = tmp_path / "src"
    files = {f"run/scan_{i:03d}.res": os.urandom(100_000) for i in range(30)}  # 3 MB for 1 MiB
    files["run/zz-large.fits"] = os.urandom(400_000)  # through cat: the disk is full by then
    make_tree(source, files)

    summary = run_once(ssh_worker_for(server, source, str(small), tmp_path / "books.db"))

    assert summary.fatal and "no space left" in summary.fatal, (summary.fatal, summary.errors)
    assert 0 < summary.copied <= 10  # what fitted (1 MiB) is copied and booked
    # The file that met the full disk fails; the others are left for the next run (not each
    # its own "no space left" line).
    assert summary.failed >= 1 and summary.failed + summary.left >= 20, summary
    copied = tree_files(small)
    assert all(copied[name] == files[name] for name in copied)  # nothing half written
    assert not any(name.endswith(TEMP_SUFFIX) for name in copied)
    rows = db_rows(tmp_path / "books.db")
    booked = {name for name, row in rows.items() if row["checksum"] is not None}
    assert booked == set(copied)  # booked as copied: exactly what is there
    assert all("no space left" in row["last_error"] for name, row in rows.items() if name not in booked)


def test_a_large_file_that_fills_the_disk_through_cat_stops_the_run_saying_so(full_disk_server, tmp_path):
    # cat ends at the full disk while the data is still being sent: its channel closes under
    # the data, and what cat said is the reason, not the closed socket.
    server, small = full_disk_server
    source = tmp_path / "src"
    make_tree(source, {"big.fits": os.urandom(5 * 1024 * 1024), "later.res": b"after"})

    summary = run_once(ssh_worker_for(server, source, str(small), tmp_path / "books.db"))

    reason = dict(summary.errors)["big.fits"]
    assert "Socket is closed" not in reason
    assert "no space left on the destination" in reason, reason
    assert summary.fatal == reason  # the run stops
    assert summary.copied == 0
    assert not any(name.endswith(TEMP_SUFFIX) for name in tree_files(small))


@contextlib.contextmanager
def server_with_a_tar(script: str) -> Iterator[servers.SSHServer]:
    """An sshd whose login finds first on its PATH a ``tar`` that is this shell script."""
    fake = Path(tempfile.mkdtemp(prefix="oeleo-fakebin-"))
    fake.chmod(0o755)
    (fake / "tar").write_text("#!/bin/sh\n" + script)
    (fake / "tar").chmod(0o755)
    server = servers.start_sshd(config=[f"SetEnv PATH={fake}:/usr/local/bin:/usr/bin:/bin"])
    try:
        yield server
    finally:
        servers.stop_sshd(server)
        shutil.rmtree(fake, ignore_errors=True)


def copy_to(server: servers.SSHServer, tmp_path: Path, files: Dict[str, bytes]):
    """One run of ``files`` (made under tmp_path/src) to a new folder of ``server``."""
    make_tree(tmp_path / "src", files)
    folder = server.new_folder()
    summary = run_once(ssh_worker_for(server, tmp_path / "src", folder, tmp_path / "books.db"))
    return summary, folder


@pytest.fixture
def server_with_a_tar_that_cannot_read_it():
    with server_with_a_tar("echo 'tar: Archive format not recognised' >&2\nexit 2\n") as server:
        yield server


def test_a_server_whose_tar_cannot_read_the_archive_gets_every_file_over_sftp(
    server_with_a_tar_that_cannot_read_it, tmp_path, streams, caplog
):
    files = {f"run-{i % 2}/c_{i:02d}.res": os.urandom(200 + i) for i in range(12)}
    caplog.set_level(logging.INFO, logger="oeleo")
    summary, folder = copy_to(server_with_a_tar_that_cannot_read_it, tmp_path, files)

    assert (summary.copied, summary.failed) == (12, 0), summary.errors
    assert tree_files(folder) == files
    assert not streams["streams"] and len(streams["sftp_writes"]) == 12
    assert "small files go one by one over SFTP (tar: Archive format not recognised)" in caplog.text


@pytest.fixture
def server_whose_tar_lists_but_cannot_extract():
    """A ``tar`` that passes oeleo's probe (it lists to stdout) but extracts nothing (a
    read-only quirk, a wrapper gone wrong)."""
    script = (
        'case " $* " in *" -O "*) exec /usr/bin/tar "$@";; esac\n'
        "cat > /dev/null\necho 'tar: Cannot extract: Operation not permitted' >&2\nexit 2\n"
    )
    with server_with_a_tar(script) as server:
        yield server


def test_a_tar_that_writes_nothing_hands_its_files_and_the_next_ones_to_sftp(
    server_whose_tar_lists_but_cannot_extract, tmp_path, streams, caplog
):
    files = {f"run-{i % 3}/c_{i:03d}.res": os.urandom(300 + i) for i in range(600)}
    summary, folder = copy_to(server_whose_tar_lists_but_cannot_extract, tmp_path, files)

    assert (summary.copied, summary.failed) == (600, 0), summary.errors
    assert tree_files(folder) == files  # and no temporary file left
    # The first batch's tar failed; the one opened meanwhile for the next batch is the last.
    assert len(streams["streams"]) <= 2, len(streams["streams"])
    said = "small files go over SFTP from now on: writing small files on"
    assert said in caplog.text and "(tar: Cannot extract: Operation not permitted)" in caplog.text


def test_a_folder_the_login_may_not_write_fails_its_files_alone_with_the_reason_every_run(
    sshd_server, tmp_path, streams, caplog
):
    # tar cannot write into ro/, nor can SFTP: that says nothing against tar, which goes on
    # with the other files, and the file fails with SFTP's words on every run.
    if os.geteuid() == 0 and sshd_server.uid == os.geteuid():
        pytest.skip("the login is root here: it can write into any folder")
    files = {"ro/a.csv": b"1,2\n", **{f"ok/f{i:02d}.csv": b"%d\n" % i for i in range(5)}}
    make_tree(tmp_path / "src", files)
    folder = sshd_server.new_folder()
    os.makedirs(Path(folder) / "ro")
    os.chown(Path(folder) / "ro", sshd_server.uid, sshd_server.gid)
    os.chmod(Path(folder) / "ro", 0o555)
    caplog.set_level(logging.INFO, logger="oeleo")
    try:
        for _ in range(2):  # the second run finds ro/a.csv to copy again, alone in its batch
            summary = run_once(ssh_worker_for(sshd_server, tmp_path / "src", folder, tmp_path / "books.db"))
            assert summary.failed == 1, summary.errors
            reason = dict(summary.errors)["ro/a.csv"]
            assert reason.startswith("permission denied ("), reason
        assert "from now on" not in caplog.text
        assert len(streams["streams"]) >= 2  # tar was used by both runs
        assert db_rows(tmp_path / "books.db")["ro/a.csv"]["last_error"] == reason
        assert {n: d for n, d in tree_files(folder).items()} == {
            n: d for n, d in files.items() if n != "ro/a.csv"
        }
    finally:
        os.chmod(Path(folder) / "ro", 0o755)


def test_the_archive_is_what_gnu_tar_lists_back(tmp_path):
    """The members oeleo writes, read by the local GNU tar: names of any length and any
    bytes, sizes, times, and the end of the archive."""
    names = ["a.res", "d/" + "n" * 180 + ".fits", "bytes-\udce9.res", "new\nline"]
    archive = b"".join(
        ssh_streams.member(n, n.encode("utf-8", "surrogateescape") * 3, 1_650_000_000) for n in names
    )
    archive += ssh_streams.END_OF_ARCHIVE
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-x", "-o", "-f", "-", "-C", str(out)], input=archive, check=True)
    for name in names:
        path = out / name
        assert path.read_bytes() == name.encode("utf-8", "surrogateescape") * 3
        assert path.stat().st_mtime == 1_650_000_000


def test_a_large_file_on_a_full_disk_stops_the_run_and_leaves_nothing(full_disk_server, tmp_path):
    server, small = full_disk_server
    source = tmp_path / "src"
    make_tree(source, {"big.fits": os.urandom(2 * 1024 * 1024)})  # 2 MiB for 1 MiB, through cat

    summary = run_once(ssh_worker_for(server, source, str(small), tmp_path / "books.db"))

    assert summary.fatal and "no space left" in summary.fatal, (summary.fatal, summary.errors)
    assert summary.copied == 0
    assert tree_files(small) == {}  # not even a temporary file


def test_commit_of_one_streamed_file_verifies_it_first(sshd_server, tmp_path, monkeypatch):
    """``stage`` then ``commit`` (not ``commit_many``): the tar stream is closed and the copy
    hashed on the server before the rename; a copy that differs is refused, and the old one
    stays under the real name."""
    folder = sshd_server.new_folder()
    Path(folder, "a.res").write_bytes(b"old good copy\n")
    sshd_server.give(folder)
    good = tmp_path / "good.res"
    good.write_bytes(b"first version\n")
    bad = tmp_path / "bad.res"
    bad.write_bytes(b"second version\n")
    conn = connector(sshd_server, folder)
    try:
        conn.connect()
        staged = conn.stage(good, "b.res")
        assert isinstance(staged.upload, ssh_streams.StreamedUpload)
        committed = conn.commit(staged)
        assert committed.verified and Path(folder, "b.res").read_bytes() == b"first version\n"

        real_close = ssh_streams.TarStream.close

        def close_then_damage(self):
            error = real_close(self)
            for path in Path(folder).glob(".a.res*" + TEMP_SUFFIX):
                path.write_bytes(b"SECOND version\n")
            return error

        monkeypatch.setattr(ssh_streams.TarStream, "close", close_then_damage)
        staged = conn.stage(bad, "a.res")
        with pytest.raises(VerificationError, match="md5 of the copy"):
            conn.commit(staged)
    finally:
        conn.close()
    assert tree_files(folder) == {"a.res": b"old good copy\n", "b.res": b"first version\n"}
