"""paramiko's internals behind oeleo/connectors/sftp_wire.py, and the public fallback.

The first tests fail after a paramiko upgrade that removes or renames a private helper the
module relies on, naming it and the version: then adapt sftp_wire.py (and the version range
in pyproject.toml). The wire calls are then exercised against the real OpenSSH server, and
the connector is run as it runs when the internals are missing (``sftp_wire.AVAILABLE``
false): it must still copy, verify and force files to disk through public calls.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import posixpath
import re
import shlex
import time
from collections import deque
from pathlib import Path
from typing import Any, Dict, List

import paramiko
import paramiko.sftp
import pytest
import servers
from helpers import db_rows, make_tree, run_once, tree_files, write_random
from test_ssh import ssh_worker_for

import oeleo.connectors.ssh as ssh_module
from oeleo.connectors import sftp_wire
from oeleo.connectors.base import TEMP_SUFFIX
from oeleo.connectors.ssh import SSHConnector
from oeleo.source import SourceReader

VERSION = f"paramiko {paramiko.__version__}"
MiB = 1024 * 1024


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def connector(server: servers.SSHServer, folder: str) -> SSHConnector:
    return SSHConnector(
        host=server.host,
        port=server.port,
        username=server.user,
        directory=folder,
        key_filename=server.keys["ed25519"],
        known_hosts=server.known_hosts,
    )


# The developer's own ~/.ssh and SSH agent stay out of these tests (conftest.py).
pytestmark = pytest.mark.usefixtures("no_personal_ssh_setup")


# -- the private helpers are there, with the call shape sftp_wire uses ---------------------------

# (owner, name, the arguments sftp_wire passes, self first where it is a method)
CALLS = [
    (paramiko.SFTPClient, "_async_request", (None, type(None), 5, b"handle", 0), {}),
    (paramiko.SFTPClient, "_read_response", (None, 7), {}),
    (paramiko.SFTPClient, "_send_packet", (None, 5, None), {}),
    (paramiko.SFTPClient, "_write_all", (None, b"data"), {}),
    (paramiko.SFTPFile, "_close", (None,), {"async_": True}),
    (paramiko.SFTPAttributes, "_from_msg", (None, "name", "longname"), {}),
]


@pytest.mark.parametrize("owner, name, args, kwargs", CALLS, ids=[f"{c[0].__name__}.{c[1]}" for c in CALLS])
def test_paramiko_still_has_the_private_helper_with_the_call_shape_used(owner, name, args, kwargs):
    helper = getattr(owner, name, None)
    assert callable(helper), (
        f"{VERSION} has no {owner.__name__}.{name}: oeleo's ssh connector falls back to slower "
        "public calls; adapt oeleo/connectors/sftp_wire.py to this paramiko"
    )
    try:
        inspect.signature(helper).bind(*args, **kwargs)
    except TypeError as exc:
        pytest.fail(
            f"{VERSION}: {owner.__name__}.{name}{inspect.signature(helper)} cannot be called as "
            f"oeleo/connectors/sftp_wire.py calls it ({exc}); adapt the module to this paramiko"
        )


def test_paramiko_still_sends_an_int64_as_eight_bytes():
    int64 = getattr(paramiko.sftp, "int64", None)
    assert isinstance(int64, type) and issubclass(int64, int), (
        f"{VERSION} has no paramiko.sftp.int64: adapt oeleo/connectors/sftp_wire.py (read offsets)"
    )
    message = paramiko.Message()
    message.add_int64(int64(2**40))
    assert len(message.asbytes()) == 8


def test_paramiko_still_keeps_pipelined_writes_in_file_reqs():
    """sftp_wire.wait_for_writes reads the answers of the ids ``SFTPFile._reqs`` holds."""

    class Recorder:
        sock = None

        def __init__(self):
            self.sent: List[tuple] = []

        def _async_request(self, fileobj, kind, *args):
            self.sent.append((kind, *args))
            return 41 + len(self.sent)

    handle = paramiko.SFTPFile(Recorder(), b"h", "w", bufsize=0)
    try:
        handle.set_pipelined(True)
        handle.write(b"abc")
        handle.write(b"def")
        pending = getattr(handle, "_reqs", None)
        assert isinstance(pending, deque), (
            f"{VERSION}: SFTPFile keeps no deque _reqs of pipelined writes; adapt "
            "oeleo/connectors/sftp_wire.py (wait_for_writes)"
        )
        assert list(pending) == [42, 43], f"{VERSION}: SFTPFile._reqs does not hold the writes' request ids"
    finally:
        handle._closed = True  # nothing to close on the recorder


def test_the_module_finds_every_helper_in_the_installed_paramiko():
    assert sftp_wire.AVAILABLE, f"{VERSION} lacks {', '.join(sftp_wire.MISSING)} (see the tests above)"
    assert sftp_wire.MISSING == ()


def test_the_protocol_numbers_are_paramikos():
    for ours, theirs in [
        ("_OPEN", "CMD_OPEN"),
        ("_CLOSE", "CMD_CLOSE"),
        ("_READ", "CMD_READ"),
        ("_FSETSTAT", "CMD_FSETSTAT"),
        ("_OPENDIR", "CMD_OPENDIR"),
        ("_READDIR", "CMD_READDIR"),
        ("_REMOVE", "CMD_REMOVE"),
        ("_STATUS", "CMD_STATUS"),
        ("_HANDLE", "CMD_HANDLE"),
        ("_DATA", "CMD_DATA"),
        ("_NAME", "CMD_NAME"),
        ("_EXTENDED", "CMD_EXTENDED"),
        ("_FLAG_READ", "SFTP_FLAG_READ"),
        ("_FLAG_WRITE", "SFTP_FLAG_WRITE"),
        ("_FLAG_CREATE", "SFTP_FLAG_CREATE"),
        ("_FLAG_EXCL", "SFTP_FLAG_EXCL"),
    ]:
        assert getattr(sftp_wire, ours) == getattr(paramiko.sftp, theirs), theirs


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda mp: mp.delattr(paramiko.SFTPClient, "_async_request"), "SFTPClient._async_request"),
        (lambda mp: mp.delattr(paramiko.SFTPClient, "_read_response"), "SFTPClient._read_response"),
        (lambda mp: mp.delattr(paramiko.sftp.BaseSFTP, "_send_packet"), "SFTPClient._send_packet"),
        (
            lambda mp: reshape(mp, paramiko.sftp.BaseSFTP, "_write_all", lambda self: None),
            "SFTPClient._write_all",
        ),
        (lambda mp: reshape(mp, paramiko.SFTPFile, "_close", lambda self: None), "SFTPFile._close"),
        (lambda mp: mp.delattr(paramiko.SFTPAttributes, "_from_msg"), "SFTPAttributes._from_msg"),
        (lambda mp: mp.delattr(paramiko.sftp, "int64"), "paramiko.sftp.int64"),
        (lambda mp: mp.setattr(paramiko.SFTPFile, "__init__", without_reqs), "SFTPFile._reqs"),
    ],
    ids=["async_request", "read_response", "send_packet", "write_all", "close", "from_msg", "int64", "reqs"],
)
def test_a_missing_or_reshaped_helper_is_named(monkeypatch, change, named):
    change(monkeypatch)
    missing = sftp_wire._missing()
    assert [item for item in missing if item.startswith(named)], missing


def reshape(monkeypatch, owner, name, helper):
    monkeypatch.setattr(owner, name, helper)
    monkeypatch.setattr(paramiko.SFTPFile, "__del__", lambda self: None)  # it calls _close(async_=True)


REAL_INIT = paramiko.SFTPFile.__init__


def without_reqs(self, *args, **kwargs):
    REAL_INIT(self, *args, **kwargs)
    del self._reqs


@pytest.mark.parametrize("module", ["ssh", "ssh_session", "ssh_writes", "ssh_login", "ssh_endpoints"])
def test_the_ssh_connector_itself_uses_no_paramiko_internals(module):
    text = Path(ssh_module.__file__).with_name(f"{module}.py").read_text()
    private = r"_async_request|_read_response|_request\(|_reqs|_close\(async|_from_msg|int64|\bCMD_\w+"
    assert re.findall(private, text) == []
    assert re.findall(r"from paramiko[.\w]* import|import paramiko\.", text) == []


# -- the wire calls against the real server ----------------------------------------------------


def test_pipelined_writes_time_and_read_back_answer_in_order(sshd_server):
    folder = sshd_server.new_folder()
    data = os.urandom(100_000)
    with connector(sshd_server, folder) as conn, conn._channel() as sftp:
        handle = sftp.open(f"{folder}/a.bin".encode(), "w+", bufsize=0)
        handle.set_pipelined(True)
        for start in range(0, len(data), 30_000):
            handle.write(data[start : start + 30_000])
        setstat = sftp_wire.send_set_times(sftp, handle, int(time.time()), 1_600_000_000)
        reads = [
            sftp_wire.send_read(sftp, handle, 0, 60_000),
            sftp_wire.send_read(sftp, handle, 60_000, 60_000),
        ]
        past_the_end = sftp_wire.send_read(sftp, handle, len(data), 1)
        sftp_wire.wait_for_writes(handle)
        sftp_wire.read_answer(sftp, setstat)
        back = b"".join(sftp_wire.read_data(sftp, request) for request in reads)
        assert sftp_wire.read_data(sftp, past_the_end) == b""
        sftp_wire.close_without_waiting(handle)
        sftp.stat(folder)  # the next request reads the close's answer

    assert back == data
    assert Path(folder, "a.bin").read_bytes() == data
    assert os.stat(f"{folder}/a.bin").st_mtime == 1_600_000_000


def test_a_failed_pipelined_write_is_reported_not_dropped(sshd_server):
    folder = sshd_server.new_folder()
    with connector(sshd_server, folder) as conn, conn._channel() as sftp:
        handle = paramiko.SFTPFile(sftp, b"999999", "w", bufsize=0)  # a handle the server never gave
        handle.set_pipelined(True)
        handle.write(b"x" * 1000)
        handle.write(b"y" * 1000)
        with pytest.raises(OSError):
            sftp_wire.wait_for_writes(handle)
        handle._closed = True  # nothing was opened
        assert sftp.stat(folder).st_mode  # the channel goes on serving


def test_a_batch_is_opened_forced_to_disk_and_closed(sshd_server):
    folder = sshd_server.new_folder()
    make_tree(folder, {"a.res": b"a", "b.res": b"b"})
    sshd_server.give(folder)
    with connector(sshd_server, folder) as conn, conn._channel() as sftp:
        opened = [sftp_wire.send_open_for_reading(sftp, f"{folder}/{n}".encode()) for n in ("a.res", "b.res")]
        missing = sftp_wire.send_open_for_reading(sftp, f"{folder}/nothing.res".encode())
        handles = [sftp_wire.read_handle(sftp, request) for request in opened]
        with pytest.raises(FileNotFoundError):
            sftp_wire.read_handle(sftp, missing)
        answers = [(sftp_wire.send_fsync(sftp, h), sftp_wire.send_close(sftp, h)) for h in handles]
        for fsync, close in answers:
            sftp_wire.read_answer(sftp, fsync)
            sftp_wire.read_answer(sftp, close)


def test_a_listing_keeps_names_that_are_not_utf8(sshd_server):
    folder = sshd_server.new_folder()
    Path(os.fsdecode(os.fsencode(folder) + b"/m\xe9sure.csv")).write_bytes(b"123")
    make_tree(folder, {"plain.csv": b"4567"})
    sshd_server.give(folder)
    with connector(sshd_server, folder) as conn, conn._channel() as sftp:
        listed = {attrs.filename: attrs.st_size for attrs in sftp_wire.listdir(sftp, folder.encode())}

    assert listed == {"m\udce9sure.csv": 3, "plain.csv": 4}


# -- without the internals: public calls only ------------------------------------------------


@pytest.fixture
def without_internals(monkeypatch):
    """The connector as it runs on a paramiko that lacks the internals: the flag says so,
    and every wire call that needs them fails the test if the connector still makes it."""
    monkeypatch.setattr(sftp_wire, "AVAILABLE", False)
    monkeypatch.setattr(sftp_wire, "MISSING", ("SFTPClient._async_request(fileobj, kind, *args)",))
    # Every file over SFTP (small files would go through tar, large ones through cat, where
    # the login runs commands).
    monkeypatch.setattr(SSHConnector, "stream_small_files", False)
    monkeypatch.setattr(SSHConnector, "stream_large_files", False)

    def internal(name):
        def called(*args: Any, **kwargs: Any):
            raise AssertionError(f"sftp_wire.{name} used without the internals")

        return called

    for name in (
        "send_read",
        "send_set_times",
        "send_open_for_reading",
        "send_fsync",
        "send_close",
        "read_answer",
        "read_handle",
        "read_data",
        "wait_for_writes",
    ):
        monkeypatch.setattr(sftp_wire, name, internal(name))


def test_without_internals_files_are_copied_verified_timed_and_forced_to_disk(
    sshd_server, tmp_path, monkeypatch, caplog, without_internals
):
    source = tmp_path / "src"
    files: Dict[str, bytes] = {
        "empty.res": b"",
        "tiny.res": b"cycle 1\n",
        "run-1/small.csv": os.urandom(100_000),  # read back in the same round trips
        "run-1/deeper/300k.fits": os.urandom(300_000),  # verified by md5sum on the server
        "run-2/two-requests.fits": os.urandom(200_000),
    }
    big = write_random(source / "big.fits", 3 * MiB + 5)  # many pipelined writes
    files["big.fits"] = (source / "big.fits").read_bytes()
    make_tree(source, files)
    for number, name in enumerate(files):
        os.utime(source / name, (1_700_000_000 + number, 1_700_000_000 + number))
    commands: List[str] = []
    real_exec = SSHConnector._exec

    def recording_exec(self, command, *args, **kwargs):
        commands.append(command)
        return real_exec(self, command, *args, **kwargs)

    monkeypatch.setattr(SSHConnector, "_exec", recording_exec)
    caplog.set_level(logging.INFO, logger="oeleo")
    folder = sshd_server.new_folder()
    summary = run_once(ssh_worker_for(sshd_server, source, folder, tmp_path / "books.db"))

    assert (summary.copied, summary.failed) == (len(files), 0), summary.errors
    assert tree_files(folder) == files
    assert md5(files["big.fits"]) == big
    rows = db_rows(tmp_path / "books.db")
    assert {name: rows[name]["checksum"] for name in files} == {
        name: md5(data) for name, data in files.items()
    }
    for name in files:
        assert os.stat(f"{folder}/{name}").st_mtime == (source / name).stat().st_mtime, name
    # Forced to disk by a command: the batch's filesystem (sync -f, named by its folders), or
    # the file itself.
    synced = [shlex.split(c) for c in commands if c.startswith("sync -f ") or TEMP_SUFFIX in c]
    named = {argument for command in synced for argument in command[1:]}
    for name in files:
        temporary = f"{folder}/{posixpath.dirname(name)}".rstrip("/")
        assert temporary in named or any(
            TEMP_SUFFIX in n and f"/{posixpath.basename(name)}." in n for n in named
        )
    assert caplog.text.count("copying through its public calls") == 1
    assert "cannot force files to disk" not in caplog.text


def test_without_internals_a_failed_write_is_still_reported(sshd_server, without_internals):
    folder = sshd_server.new_folder()
    with connector(sshd_server, folder) as conn, conn._channel() as sftp:
        handle = paramiko.SFTPFile(sftp, b"999999", "w+", bufsize=0)  # the server refuses its writes
        handle.set_pipelined(True)
        handle.write(b"x" * 1000)
        with pytest.raises(OSError):
            conn._finish_writes_publicly(handle, b"last", None, f"{folder}/a.res", None)
        handle._closed = True


def test_without_internals_an_sftp_only_login_copies_and_says_files_are_not_forced_to_disk(
    sftp_only_server, tmp_path, caplog, without_internals
):
    source = tmp_path / "src"
    big = write_random(source / "big.fits", 2 * MiB + 7)  # read back with prefetch to verify
    make_tree(source, {"small.res": b"tiny"})
    folder = sftp_only_server.new_folder()
    caplog.set_level(logging.INFO, logger="oeleo")
    summary = run_once(ssh_worker_for(sftp_only_server, source, folder, tmp_path / "books.db"))

    assert (summary.copied, summary.failed) == (2, 0), summary.errors
    assert md5(Path(folder, "big.fits").read_bytes()) == big
    assert Path(folder, "small.res").read_bytes() == b"tiny"
    assert caplog.text.count("cannot force files to disk") == 1


def test_without_internals_a_listing_works_for_utf8_names_and_fails_loudly_otherwise(
    sshd_server, without_internals
):
    folder = sshd_server.new_folder()
    make_tree(folder, {"mésure.csv": b"123", "run-1/b.csv": b"45"})
    sshd_server.give(folder)
    with connector(sshd_server, folder) as conn:
        listed = {entry.relpath: entry.size for entry in conn.list_files()}
        Path(os.fsdecode(os.fsencode(folder) + b"/gro\xdf.fits")).write_bytes(b"6")
        sshd_server.give(folder)
        with pytest.raises(OSError, match="not UTF-8"):
            list(conn.list_files())

    assert listed == {"mésure.csv": 3, "run-1/b.csv": 2}


def test_a_small_files_requests_after_its_open_go_out_in_one_write(sshd_server, tmp_path, monkeypatch):
    """Writes, time, read-back and close of a small file: one write of the channel (one SSH
    message), not one each; the copy is still whole, timed and read back."""
    source = tmp_path / "a.res"
    source.write_bytes(os.urandom(8192))
    os.utime(source, (1_700_000_000, 1_700_000_000))
    folder = sshd_server.new_folder()
    sent: List[bytes] = []
    real = paramiko.sftp.BaseSFTP._write_all

    def counting(self, data):
        sent.append(data)
        return real(self, data)

    with connector(sshd_server, folder) as conn:
        conn.connect()
        monkeypatch.setattr(paramiko.sftp.BaseSFTP, "_write_all", counting)
        reader = SourceReader(source, "md5", None, None)
        conn.write_stream("a.res", reader, 8192)
        monkeypatch.undo()
        digest = conn.checksum("a.res")
        conn.set_mtime("a.res", reader.mtime_ns)

    assert len(sent) == 2, [len(data) for data in sent]  # the open, then everything else
    assert digest == reader.finish() == md5(source.read_bytes())
    assert os.stat(f"{folder}/a.res").st_mtime == 1_700_000_000


def test_corked_requests_go_out_together_and_are_answered_in_order(sshd_server):
    folder = sshd_server.new_folder()
    for name in "abc":
        Path(folder, name).write_bytes(name.encode())
    with connector(sshd_server, folder) as conn, conn._channel() as sftp:
        with sftp_wire.Corked(sftp) as cork:
            renames = [
                sftp_wire.send_posix_rename(sftp, f"{folder}/{name}".encode(), f"{folder}/{name}2".encode())
                for name in "abx"
            ]
            cork.send()
        sftp_wire.read_answer(sftp, renames[0])
        sftp_wire.read_answer(sftp, renames[1])
        with pytest.raises(OSError):  # x is not there: its answer is its own
            sftp_wire.read_answer(sftp, renames[2])
    assert sorted(os.listdir(folder)) == ["a2", "b2", "c"]
