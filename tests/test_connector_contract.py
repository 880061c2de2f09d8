"""The connector contract, run against every connector.

To add a connector, add one entry to ``FACTORIES`` (a callable building it from the test's
``tmp_path``) and, if it needs a server, the name of that server's fixture to
``SERVER_FIXTURES``: the factory is then called as ``factory(tmp_path, server)``. Every test
below talks to the store only through the connector's own methods, so it holds for any store.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import os
import posixpath
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict

import pytest
from helpers import db_rows, run_once, write_random

from oeleo.checkers import ChecksumChecker, hash_file
from oeleo.connectors.base import Connector, FileEntry, PutResult, safe_relpath, temp_relpath
from oeleo.connectors.local import LocalConnector
from oeleo.errors import (
    Aborted,
    DiskFullError,
    FileChangedError,
    UnsafePathError,
    VerificationError,
)
from oeleo.models import SimpleDbHandler
from oeleo.workers import Worker


def ssh_connector(tmp_path: Path, server) -> Connector:
    from oeleo.connectors.ssh import SSHConnector

    return SSHConnector(
        host=server.host,
        port=server.port,
        username=server.user,
        directory=server.new_folder("contract"),
        key_filename=server.keys["ed25519"],
        known_hosts=server.known_hosts,
    )


def ssh_sftp_connector(tmp_path: Path, server) -> Connector:
    """The ssh connector with every file over SFTP, as on a login that runs no commands'
    writes (its hashes still come from md5sum on the server)."""
    conn = ssh_connector(tmp_path, server)
    conn.stream_small_files = conn.stream_large_files = False  # type: ignore[attr-defined]
    return conn


def s3_connector(tmp_path: Path, server) -> Connector:
    from oeleo.connectors.s3 import S3Connector

    bucket = server.new_bucket(f"contract-{hashlib.md5(str(tmp_path).encode()).hexdigest()[:12]}")
    return S3Connector(bucket, prefix="contract", endpoint_url=server.endpoint_url)


def arcsecond_connector(tmp_path: Path, server) -> Connector:
    from oeleo.connectors.arcsecond import ArcsecondConnector

    return ArcsecondConnector(api_key=server.key, api_url=server.url, root_name="contract", backoff=0.01)


# Contract tests whose premise Arcsecond does not share, skipped for it with the reason
# (tests/test_arcsecond.py holds its own forms of them: a new file rewritten while it is sent).
_NEVER_REPLACES = "Arcsecond never replaces a file it holds (Features.overwrite=False)"
ARCSECOND_CANNOT = {
    "test_put_over_a_changed_file_replaces_its_content": _NEVER_REPLACES,
    "test_verification_mismatch_keeps_previous_version": _NEVER_REPLACES,
    "test_a_file_rewritten_while_it_is_uploaded_leaves_the_previous_copy_and_its_row": _NEVER_REPLACES,
    "test_a_corrupted_compressed_copy_is_refused_and_the_previous_one_kept": _NEVER_REPLACES,
    "test_a_backslash_in_a_posix_name_is_kept_in_the_stored_name": (
        "Arcsecond's form parser (Django) keeps only what follows a backslash: such a name is refused"
    ),
}


@pytest.fixture
def arcsecond_server(request):
    from arcsecond_server import FakeArcsecond

    if request.node.originalname in ARCSECOND_CANNOT:
        pytest.skip(ARCSECOND_CANNOT[request.node.originalname])
    server = FakeArcsecond().start()
    yield server
    server.stop()


def sharepoint_connector(tmp_path: Path, server) -> Connector:
    from oeleo.connectors.sharepoint import SharePointConnector

    # read_back: each upload is downloaded and hashed before its commit, so the verification
    # cases below hold (by default SharePoint's copies are verified by size: test_sharepoint.py).
    return SharePointConnector(
        server.url, folder="contract", token=server.token_provider, chunk_size=1024 * 1024, read_back=True
    )


SHAREPOINT_CANNOT = {
    "test_a_backslash_in_a_posix_name_is_kept_in_the_stored_name": (
        "SharePoint does not allow a backslash in a name: that file is refused with the reason"
    ),
}


@pytest.fixture
def sharepoint_server(request):
    from sharepoint_server import FakeSharePoint

    if request.node.originalname in SHAREPOINT_CANNOT:
        pytest.skip(SHAREPOINT_CANNOT[request.node.originalname])
    server = FakeSharePoint().start()
    yield server
    server.stop()


def example(module: str, name: str) -> Callable[[Path], Connector]:
    """A connector of examples/ (the ones docs/connectors.md shows), built on ``tmp_path``."""

    def build(tmp_path: Path) -> Connector:
        path = Path(__file__).resolve().parent.parent / "examples" / f"{module}.py"
        spec = importlib.util.spec_from_file_location(f"example_{module}", path)
        assert spec is not None and spec.loader is not None
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = loaded
        spec.loader.exec_module(loaded)
        return getattr(loaded, name)(tmp_path / "store")

    return build


FACTORIES: Dict[str, Callable[..., Connector]] = {
    "local": lambda tmp_path: LocalConnector(directory=tmp_path / "store"),
    "ssh": ssh_connector,
    "ssh-sftp": ssh_sftp_connector,
    "arcsecond": arcsecond_connector,
    "s3": s3_connector,
    "sharepoint": sharepoint_connector,
    "example-folder": example("folder_connector", "PlainFolderConnector"),
    "example-bucket": example("object_store", "BucketConnector"),
}
SERVER_FIXTURES: Dict[str, str] = {  # connector name -> its server's fixture
    "ssh": "sshd_server",
    "ssh-sftp": "sshd_server",
    "s3": "s3_server",
    "arcsecond": "arcsecond_server",
    "sharepoint": "sharepoint_server",
}


# A connector whose server is a fixture carries its marker (tests/conftest.py cannot see a
# fixture asked for with getfixturevalue).
MARKS = {"ssh": [pytest.mark.ssh], "ssh-sftp": [pytest.mark.ssh], "s3": [pytest.mark.s3]}


@pytest.fixture(params=[pytest.param(name, marks=MARKS.get(name, [])) for name in sorted(FACTORIES)])
def connector(request, tmp_path):
    factory = FACTORIES[request.param]
    if request.param in SERVER_FIXTURES:
        conn = factory(tmp_path, request.getfixturevalue(SERVER_FIXTURES[request.param]))
    else:
        conn = factory(tmp_path)
    conn.connect()
    conn.prepare()
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "source"
    folder.mkdir()
    return folder


def write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def listed(conn: Connector) -> Dict[str, int]:
    return {e.relpath: e.size for e in conn.list_files()}


def assert_nothing_stored(conn: Connector, relpath: str) -> None:
    """Neither the real name nor the temporary name of ``relpath`` is in the store."""
    assert conn.stat(relpath) is None
    assert conn.stat(temp_relpath(relpath)) is None


def fill_disk_after(conn: Connector, monkeypatch, chunks: int) -> list:
    """Make ``conn``'s uploads fail with ENOSPC after ``chunks`` chunks reached the store.

    The store's own upload is still the one writing, so it is left with whatever a real full
    disk leaves (a partial temporary file, a half-sent upload). Returns the sizes of the
    chunks that got through.
    """
    consumed: list = []

    def until_full(chunks_in):
        for chunk in chunks_in:
            if len(consumed) == chunks:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            consumed.append(len(chunk))
            yield chunk

    if type(conn).write_stream is not Connector.write_stream:
        real_write = conn.write_stream  # a folder-like store, and one whose write is the commit
        monkeypatch.setattr(
            conn, "write_stream", lambda relpath, stream, size: real_write(relpath, until_full(stream), size)
        )
    else:
        wrap_uploads(conn, monkeypatch, send=lambda real, stream: real(until_full(stream)))
    return consumed


def wrap_uploads(conn: Connector, monkeypatch, send=None, finish=None) -> None:
    """Wrap the ``send``/``finish`` of every upload ``conn`` opens: ``send(real, chunks)``,
    ``finish(real, algorithm)``."""
    open_upload = conn.open_upload

    def opening(relpath, size, mtime_ns):
        upload = open_upload(relpath, size, mtime_ns)
        if send is not None:
            real_send = upload.send
            upload.send = lambda chunks: send(real_send, chunks)  # type: ignore[method-assign]
        if finish is not None:
            real_finish = upload.finish
            upload.finish = lambda algorithm=None: finish(real_finish, algorithm)  # type: ignore[method-assign]
        return upload

    monkeypatch.setattr(conn, "open_upload", opening)


def store_reports_another_checksum(conn: Connector, monkeypatch) -> None:
    """The store says it holds other bytes than were sent: every hash it gives is wrong (and
    a store that compares its writes found a difference)."""
    monkeypatch.setattr(conn, "checksum", lambda relpath, algorithm="md5": "0" * 32)
    monkeypatch.setattr(conn, "checksums", lambda relpaths, algorithm="md5": {r: "0" * 32 for r in relpaths})

    def wrong(real, algorithm):
        stored = real(algorithm)
        return replace(stored, hashes={name: "0" * 32 for name in stored.hashes}, compared=False)

    wrap_uploads(conn, monkeypatch, finish=wrong)


# -- a put that works ---------------------------------------------------------------------


def test_put_file_has_source_size_and_checksums(connector, source):
    data = b"time;voltage\n0;3.71\n1;3.72\n" * 100
    src = write(source / "cell.csv", data)

    connector.put(src, "cell.csv")

    entry = connector.stat("cell.csv")
    assert entry is not None and entry.size == len(data)
    assert connector.checksum("cell.csv", "md5") == hashlib.md5(data).hexdigest()
    assert connector.checksum("cell.csv", "sha256") == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_put_returns_result_with_source_checksum(connector, source, algorithm):
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = write(source / "run 7.res", data)

    result = connector.put(src, "run 7.res", algorithm=algorithm)

    assert isinstance(result, PutResult)
    assert result.checksum == hashlib.new(algorithm, data).hexdigest()
    assert (result.relpath, result.size, result.algorithm) == ("run 7.res", len(data), algorithm)
    assert result.verified is True
    assert result.external_name == connector.external_name("run 7.res")


def test_list_files_returns_put_files_with_posix_relpaths_and_sizes(connector, source):
    files = {"a.csv": b"1", "sub/b.csv": b"22", "sub/deeper/c.res": b"333"}
    for relpath, data in files.items():
        connector.put(write(source / relpath, data), relpath)

    assert listed(connector) == {"a.csv": 1, "sub/b.csv": 2, "sub/deeper/c.res": 3}


@pytest.mark.skipif(os.name != "nt", reason="a backslash separates folders on Windows only")
def test_windows_separators_are_stored_as_posix_names(connector, source):
    src = write(source / "x.csv", b"x")

    result = connector.put(src, "sub\\x.csv")

    assert result.relpath == "sub/x.csv"
    assert listed(connector) == {"sub/x.csv": 1}


@pytest.mark.skipif(os.name == "nt", reason="on POSIX a backslash is a character of the name")
def test_a_backslash_in_a_posix_name_is_kept_in_the_stored_name(connector, source):
    src = write(source / "x.csv", b"x")

    result = connector.put(src, "sub\\x.csv")

    assert result.relpath == "sub\\x.csv"
    assert listed(connector) == {"sub\\x.csv": 1}


def test_put_over_a_changed_file_replaces_its_content(connector, source):
    src = write(source / "log.csv", b"old content that is long")
    connector.put(src, "log.csv")
    write(src, b"new")

    connector.put(src, "log.csv")

    assert connector.stat("log.csv").size == 3
    assert connector.checksum("log.csv", "md5") == md5(b"new")
    assert listed(connector) == {"log.csv": 3}


def test_empty_file_is_copied(connector, source):
    src = write(source / "empty.csv", b"")

    result = connector.put(src, "empty.csv")

    assert result.size == 0
    assert connector.stat("empty.csv").size == 0
    assert connector.checksum("empty.csv", "md5") == md5(b"")


def test_file_larger_than_64_mib_is_copied_whole(connector, source):
    size = 64 * 1024 * 1024 + 12345
    digest = write_random(source / "big.fits", size)

    result = connector.put(source / "big.fits", "big.fits")

    assert result.checksum == digest
    assert connector.stat("big.fits").size == size
    assert connector.checksum("big.fits", "md5") == digest


def test_names_with_spaces_and_non_ascii_characters(connector, source):
    relpath = "målinger 2024/prøve ü.csv"
    src = write(source / "målinger 2024" / "prøve ü.csv", "å;ø\n".encode())

    connector.put(src, relpath)

    assert listed(connector) == {relpath: len("å;ø\n".encode())}
    assert connector.stat(relpath).size == src.stat().st_size
    assert connector.checksum(relpath, "md5") == md5(src.read_bytes())


def test_deep_subfolders_are_created(connector, source):
    relpath = "/".join(f"level{i}" for i in range(8)) + "/deep.csv"
    src = write(source / "deep.csv", b"deep")

    connector.put(src, relpath)

    assert listed(connector) == {relpath: 4}


def test_longest_allowed_non_ascii_name_is_copied(connector, source):
    name = "ø" * 125 + ".csv"  # 254 bytes in UTF-8: just under the usual 255-byte limit
    src = write(source / name, b"long name")

    connector.put(src, f"sub/{name}")

    assert listed(connector) == {f"sub/{name}": 9}
    assert connector.stat(temp_relpath(f"sub/{name}")) is None


@pytest.mark.parametrize("unsafe", ["../x", "/etc/x", "C:\\x", "a/../../x", ""])
def test_unsafe_name_is_refused_and_nothing_is_written(connector, source, tmp_path, unsafe):
    src = write(source / "x", b"payload")
    before = sorted(p for p in tmp_path.rglob("*"))

    with pytest.raises(UnsafePathError):
        connector.put(src, unsafe)

    assert listed(connector) == {}
    assert sorted(p for p in tmp_path.rglob("*")) == before


# -- a put that fails leaves nothing --------------------------------------------------------


def test_source_changing_during_put_leaves_nothing(connector, source):
    src = write(source / "growing.csv", b"first line\n")
    appended = []

    def append_on_first_chunk(nbytes: int) -> None:
        if not appended:
            appended.append(nbytes)
            with open(src, "ab") as handle:
                handle.write(b"a line written by the instrument during the copy\n")

    with pytest.raises(FileChangedError):
        connector.put(src, "growing.csv", progress=append_on_first_chunk)

    assert appended
    assert_nothing_stored(connector, "growing.csv")
    assert listed(connector) == {}


def test_source_changed_since_it_was_checked_leaves_nothing(connector, source):
    src = write(source / "a.csv", b"now")

    with pytest.raises(FileChangedError):
        connector.put(src, "a.csv", expected_checksum=md5(b"then"))

    assert_nothing_stored(connector, "a.csv")


def test_write_failing_half_way_with_disk_full_leaves_nothing(connector, source, monkeypatch):
    src = source / "big.res"
    write_random(src, 5 * 1024 * 1024)
    consumed = fill_disk_after(connector, monkeypatch, chunks=2)

    with pytest.raises(DiskFullError):
        connector.put(src, "big.res")

    assert len(consumed) == 2
    assert_nothing_stored(connector, "big.res")
    assert listed(connector) == {}


def test_verification_mismatch_keeps_previous_version(connector, source, monkeypatch):
    src = write(source / "a.csv", b"version 1")
    connector.put(src, "a.csv")
    real_checksum = connector.checksum
    write(src, b"version 2, longer")
    store_reports_another_checksum(connector, monkeypatch)

    with pytest.raises(VerificationError):
        connector.put(src, "a.csv")

    assert connector.stat(temp_relpath("a.csv")) is None
    assert connector.stat("a.csv").size == len(b"version 1")
    assert real_checksum("a.csv", "md5") == md5(b"version 1")


def test_verification_mismatch_on_a_new_file_leaves_nothing(connector, source, monkeypatch):
    src = write(source / "a.csv", b"content")
    store_reports_another_checksum(connector, monkeypatch)

    with pytest.raises(VerificationError):
        connector.put(src, "a.csv")

    assert_nothing_stored(connector, "a.csv")


def test_stop_request_during_put_leaves_nothing(connector, source):
    src = source / "big.res"
    write_random(src, 3 * 1024 * 1024)
    chunks = []

    with pytest.raises(Aborted):
        connector.put(src, "big.res", progress=chunks.append, should_stop=lambda: len(chunks) >= 1)

    assert len(chunks) == 1
    assert_nothing_stored(connector, "big.res")


def test_stat_of_a_missing_file_is_none(connector):
    assert connector.stat("not/there.csv") is None


def test_disk_full_while_replacing_a_file_keeps_the_previous_version(connector, source, monkeypatch):
    src = write(source / "a.res", b"version 1")
    connector.put(src, "a.res")
    write_random(src, 3 * 1024 * 1024)
    fill_disk_after(connector, monkeypatch, chunks=1)

    with pytest.raises(DiskFullError):
        connector.put(src, "a.res")

    assert connector.stat(temp_relpath("a.res")) is None
    assert connector.checksum("a.res", "md5") == md5(b"version 1")


# -- the copy engine for stores that commit an upload themselves ----------------------------


class CommitsUploadsItself(LocalConnector):
    """Like an object store: no rename; an upload appears whole when it completes, or not at all."""

    atomic_rename = False

    def write_stream(self, relpath, chunks, size):
        upload = posixpath.join(posixpath.dirname(relpath), ".upload-in-progress")
        try:
            super().write_stream(upload, chunks, size)
            os.replace(self.path(upload), self.path(relpath))
        finally:
            self.remove(upload)


def test_store_without_rename_receives_the_final_name_directly(tmp_path, source):
    store = CommitsUploadsItself(tmp_path / "bucket")
    store.prepare()
    src = write(source / "a.csv", b"whole")

    result = store.put(src, "a.csv")

    assert result.checksum == md5(b"whole")
    assert listed(store) == {"a.csv": 5}


def test_failed_upload_to_a_store_without_rename_keeps_the_previous_version(tmp_path, source, monkeypatch):
    store = CommitsUploadsItself(tmp_path / "bucket")
    store.prepare()
    src = write(source / "a.csv", b"version 1")
    store.put(src, "a.csv")
    write_random(src, 3 * 1024 * 1024)
    fill_disk_after(store, monkeypatch, chunks=1)

    with pytest.raises(DiskFullError):
        store.put(src, "a.csv")

    assert store.checksum("a.csv", "md5") == md5(b"version 1")


# -- the rule, through the worker, for every store -------------------------------------------


class FinalNameStore(Connector):
    """A newcomer's object-store connector as docs/connectors.md once suggested: no rename,
    and ``write_stream`` writes the final name (the store's one write is its commit)."""

    name = "final-name"
    atomic_rename = False

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _path(self, relpath: str) -> Path:
        return self.directory / safe_relpath(relpath)

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def list_files(self, extensions=(), include=(), exclude=(), recursive=True):
        for path in sorted(p for p in self.directory.rglob("*") if p.is_file()):
            st = path.stat()
            yield FileEntry(path.relative_to(self.directory).as_posix(), st.st_size, st.st_mtime_ns)

    def stat(self, relpath):
        try:
            st = self._path(relpath).stat()
        except FileNotFoundError:
            return None
        return FileEntry(relpath, st.st_size, st.st_mtime_ns)

    def checksum(self, relpath, algorithm="md5"):
        return hash_file(self._path(relpath), algorithm)

    def write_stream(self, relpath, chunks, size):
        self._path(relpath).parent.mkdir(parents=True, exist_ok=True)
        with open(self._path(relpath), "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)

    def remove(self, relpath):
        self._path(relpath).unlink(missing_ok=True)


STORES = [*sorted(FACTORIES), "final-name"]


@pytest.fixture(params=STORES)
def any_store(request, tmp_path):
    """Every connector of the contract suite, and the newcomer's final-name store."""
    if request.param == "final-name":
        conn: Connector = FinalNameStore(tmp_path / "bucket")
    elif request.param in SERVER_FIXTURES:
        conn = FACTORIES[request.param](tmp_path, request.getfixturevalue(SERVER_FIXTURES[request.param]))
    else:
        conn = FACTORIES[request.param](tmp_path)
    yield conn
    conn.close()


def copy_with_worker(store: Connector, src: Path, db: Path):
    worker = Worker(
        checker=ChecksumChecker(),
        bookkeeper=SimpleDbHandler(db),
        local_connector=LocalConnector(src),
        external_connector=store,
    )
    return run_once(worker)


def rewrite_while_uploading(store: Connector, monkeypatch, path: Path, content: bytes) -> None:
    """The instrument rewrites ``path`` once the first chunk of its upload went out."""
    open_upload = store.open_upload

    def opening(relpath, size, mtime_ns):
        upload = open_upload(relpath, size, mtime_ns)
        send = upload.send

        def sending(chunks):
            def rewritten_after_the_first():
                for index, chunk in enumerate(chunks):
                    yield chunk
                    if index == 0:
                        path.write_bytes(content)

            send(rewritten_after_the_first())

        upload.send = sending  # type: ignore[method-assign]
        return upload

    monkeypatch.setattr(store, "open_upload", opening)


def test_a_file_rewritten_while_it_is_uploaded_leaves_the_previous_copy_and_its_row(
    any_store, tmp_path, monkeypatch
):
    src, db = tmp_path / "instrument", tmp_path / "books.db"
    v1, v2, v3 = b"version 1\n", os.urandom(3 * 1024 * 1024), os.urandom(3 * 1024 * 1024 + 1)
    a = write(src / "a.csv", v1)
    assert copy_with_worker(any_store, src, db).copied == 1

    a.write_bytes(v2)  # the instrument rewrites it, and again while it is being uploaded
    rewrite_while_uploading(any_store, monkeypatch, a, v3)
    second = copy_with_worker(any_store, src, db)
    monkeypatch.undo()

    assert (second.copied, second.changing, second.failed) == (0, 1, 0), second.describe()
    any_store.connect()
    assert any_store.checksum("a.csv", "md5") == md5(v1)  # the good copy is still there
    assert db_rows(db)["a.csv"]["checksum"] == md5(v1)  # and the books say so
    third = copy_with_worker(any_store, src, db)
    assert third.copied == 1
    any_store.connect()
    assert any_store.checksum("a.csv", "md5") == md5(v3)
    assert db_rows(db)["a.csv"]["checksum"] == md5(v3)


def test_a_store_that_may_not_overwrite_reports_a_changed_file_as_already_there(any_store, tmp_path):
    any_store.features = replace(any_store.features, overwrite=False)
    src, db = tmp_path / "instrument", tmp_path / "books.db"
    a = write(src / "a.csv", b"version 1\n")
    write(src / "b.csv", b"b\n")
    assert copy_with_worker(any_store, src, db).copied == 2

    a.write_bytes(b"version 2, longer\n")
    second = copy_with_worker(any_store, src, db)

    assert (second.copied, second.failed, second.not_replaced, second.exit_status) == (0, 0, 1, 0)
    assert "1 already there, not replaced" in second.describe()
    any_store.connect()
    assert any_store.checksum("a.csv", "md5") == md5(b"version 1\n")
    row = db_rows(db)["a.csv"]
    assert row["checksum"] == md5(b"version 1\n") and "not replaced" in row["last_error"]
    third = copy_with_worker(any_store, src, db)  # no loop: it is not tried again
    assert (third.copied, third.not_replaced, third.unchanged) == (0, 0, 2), third.describe()


def test_a_connector_missing_a_method_fails_when_it_is_made_naming_the_method(tmp_path):
    class NoStat(Connector):  # a newcomer forgot stat()
        def list_files(self, extensions=(), include=(), exclude=(), recursive=True):
            return iter(())

        def checksum(self, relpath, algorithm="md5"):
            return ""

        def write_stream(self, relpath, chunks, size):
            pass

    with pytest.raises(TypeError, match="stat"):
        NoStat()

    class WritesNowhere(Connector):
        def list_files(self, extensions=(), include=(), exclude=(), recursive=True):
            return iter(())

        def stat(self, relpath):
            return None

        def checksum(self, relpath, algorithm="md5"):
            return ""

    with pytest.raises(TypeError, match="open_upload"):
        WritesNowhere()

    class ReadsNothing(Connector):  # neither side: everything it lacks, said at once
        pass

    with pytest.raises(TypeError) as raised:
        ReadsNothing()
    assert str(raised.value) == (
        "ReadsNothing cannot be created: it does not implement checksum(), list_files(), stat(), "
        "open_upload() (an object store) or write_stream() and rename() (a folder); see docs/connectors.md"
    )


# -- gzip on the way (OELEO_COMPRESS=gzip), for every store --------------------------------
def gzip_form(data: bytes) -> bytes:
    from oeleo.compress import GzipStream

    return b"".join(GzipStream([data], "md5"))


def test_a_fits_file_is_stored_gzipped_under_its_name_dot_gz_and_verified(any_store, tmp_path):
    import gzip

    src, db = tmp_path / "instrument", tmp_path / "books.db"
    frame = b"SIMPLE  =                    T" + b" " * 50 + os.urandom(4000) + bytes(2880 * 40)
    write(src / "night 1/frame.fits", frame)
    write(src / "night 1/frame2.fits.gz", b"already compressed")
    write(src / "log.csv", b"a,b\n")
    worker = Worker(
        checker=ChecksumChecker(),
        bookkeeper=SimpleDbHandler(db),
        local_connector=LocalConnector(src),
        external_connector=any_store,
        subdirs=True,
        compress="gzip",
    )
    first = run_once(worker)
    assert (first.copied, first.failed) == (3, 0), first.describe()

    any_store.connect()
    stored = listed(any_store)
    assert set(stored) == {"night 1/frame.fits.gz", "night 1/frame2.fits.gz", "log.csv"}
    packed = gzip_form(frame)
    assert stored["night 1/frame.fits.gz"] == len(packed) < len(frame)
    assert any_store.checksum("night 1/frame.fits.gz", "md5") == md5(packed)
    assert gzip.decompress(packed) == frame
    assert any_store.checksum("night 1/frame2.fits.gz", "md5") == md5(b"already compressed")
    row = db_rows(db)["night 1/frame.fits"]
    assert row["checksum"] == md5(frame)  # the books keep the source's checksum
    assert row["external_name"].endswith("frame.fits.gz")
    assert (src / "night 1/frame.fits").read_bytes() == frame  # the source is not touched
    assert not (src / "night 1/frame.fits.gz").exists()


def test_a_corrupted_compressed_copy_is_refused_and_the_previous_one_kept(connector, source, monkeypatch):
    frame = bytes(2880 * 20)
    src = write(source / "f.fits", frame)
    connector.put(src, "f.fits", compress="gzip")
    good = md5(gzip_form(frame))
    assert connector.checksum("f.fits.gz", "md5") == good

    # A store that never replaces a file is shown a new one; the others the changed file.
    name = "f.fits" if connector.features.overwrite else "g.fits"
    src = write(source / name, b"\x01" * 2880 * 20)
    store_reports_another_checksum(connector, monkeypatch)
    with pytest.raises(VerificationError, match="compressed source"):
        connector.put(src, name, compress="gzip")
    monkeypatch.undo()

    assert connector.checksum("f.fits.gz", "md5") == good
    assert connector.stat("f.fits") is None
    assert connector.stat(temp_relpath(name + ".gz")) is None
    if name == "g.fits":
        assert connector.stat("g.fits.gz") is None
