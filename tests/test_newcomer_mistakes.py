"""A newcomer's object-store connector, written from docs/connectors.md, with the mistakes a
newcomer makes: an upload whose ``finish`` gives no hash, a commit that raises a
``ConnectorError``, an ``abort`` that raises, wrong return types, digests in capitals. The
engine must never book a copy it did not verify, and must say which method is wrong."""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

from oeleo.checkers import ChecksumChecker
from oeleo.connectors import Connector, LocalConnector
from oeleo.connectors.base import Features, FileEntry, Stored, Upload, safe_relpath
from oeleo.errors import ConfigError, ConnectorError
from oeleo.models import SimpleDbHandler
from oeleo.workers import Worker


class MemoryUpload(Upload):
    """An honest upload: the bytes staged, their md5 said by ``finish``, moved in by ``commit``."""

    connector: MemoryStore

    def send(self, chunks) -> None:
        self.connector.staged[self.relpath] = b"".join(bytes(chunk) for chunk in chunks)

    def finish(self, algorithm: Optional[str] = None) -> Stored:
        data = self.connector.staged[self.relpath]
        return Stored(len(data), {"md5": hashlib.md5(data).hexdigest()})

    def commit(self) -> None:
        self.connector.commits += 1
        self.connector.objects[self.relpath] = self.connector.staged.pop(self.relpath)

    def abort(self) -> None:
        self.connector.staged.pop(self.relpath, None)


class MemoryStore(Connector):
    features = Features(hashes=frozenset({"md5"}))
    upload = MemoryUpload

    def __init__(self, directory: str = "memory") -> None:
        self.directory = directory
        self.objects: Dict[str, bytes] = {}
        self.staged: Dict[str, bytes] = {}
        self.commits = 0

    def list_files(self, extensions=(), include=(), exclude=(), recursive=True) -> Iterator[FileEntry]:
        return iter([FileEntry(name, len(data), 0) for name, data in sorted(self.objects.items())])

    def stat(self, relpath: str) -> Optional[FileEntry]:
        data = self.objects.get(relpath)
        return None if data is None else FileEntry(relpath, len(data), 0)

    def checksum(self, relpath: str, algorithm: str = "md5") -> str:
        if relpath not in self.objects:
            raise FileNotFoundError(relpath)
        return hashlib.new(algorithm, self.objects[relpath]).hexdigest()

    def open_upload(self, relpath: str, size: int, mtime_ns: int) -> Upload:
        return self.upload(self, safe_relpath(relpath), size, mtime_ns)


class FlipsABit(MemoryUpload):
    """Damages the bytes (same size) and says nothing but the size."""

    def send(self, chunks) -> None:
        data = bytearray(b"".join(bytes(chunk) for chunk in chunks))
        data[0] ^= 1
        self.connector.staged[self.relpath] = bytes(data)

    def finish(self, algorithm: Optional[str] = None) -> Stored:
        return Stored(len(self.connector.staged[self.relpath]))


def make_source(folder: Path, count: int) -> Dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    digests = {}
    for index in range(count):
        data = os.urandom(1000)
        (folder / f"f{index:03d}.csv").write_bytes(data)
        digests[f"f{index:03d}.csv"] = hashlib.md5(data).hexdigest()
    return digests


def worker_for(tmp_path: Path, store: Connector) -> Worker:
    worker = Worker(
        checker=ChecksumChecker(),
        local_connector=LocalConnector(tmp_path / "src"),
        external_connector=store,
        bookkeeper=SimpleDbHandler(tmp_path / "books.db"),
    )
    worker.connect_to_db()
    return worker


def run(tmp_path: Path, store: Connector, count: int = 2):
    worker = worker_for(tmp_path, store)
    try:
        return worker.run()
    finally:
        worker.close()


def check(tmp_path: Path, store: Connector):
    worker = worker_for(tmp_path, store)
    try:
        return worker.check()
    finally:
        worker.close()


def booked(tmp_path: Path) -> Dict[str, tuple]:
    with sqlite3.connect(tmp_path / "books.db") as db:
        rows = db.execute("select local_name, code, checksum, last_error from filelist").fetchall()
    return {name: (code, checksum, error) for name, code, checksum, error in rows}


def copied(tmp_path: Path) -> List[str]:
    return sorted(name for name, (code, checksum, _) in booked(tmp_path).items() if code == 1 and checksum)


@pytest.mark.parametrize("hashes", [frozenset(), frozenset({"md5"})], ids=["no-hashes", "md5-declared"])
def test_a_copy_whose_upload_gives_no_hash_is_hashed_by_the_store_before_it_is_booked(tmp_path, hashes):
    """``finish`` says the size only; the store's ``checksum`` then verifies the copy (after
    the commit: this upload has no temporary name), and damaged bytes are not booked."""
    make_source(tmp_path / "src", 2)
    store = type("Store", (MemoryStore,), {"upload": FlipsABit, "features": Features(hashes=hashes)})()

    summary = run(tmp_path, store)

    assert summary.copied == 0 and summary.failed == 2, summary.describe()
    assert copied(tmp_path) == []
    assert all("md5 of the copy is" in error for _, _, error in booked(tmp_path).values())


def test_an_honest_upload_without_a_hash_is_verified_by_the_store_and_booked(tmp_path):
    class SizeOnly(MemoryUpload):
        def finish(self, algorithm: Optional[str] = None) -> Stored:
            return Stored(len(self.connector.staged[self.relpath]))

    digests = make_source(tmp_path / "src", 3)
    store = type("Store", (MemoryStore,), {"upload": SizeOnly})()

    summary = run(tmp_path, store, 3)

    assert summary.copied == 3 and summary.failed == 0, summary.describe()
    assert {name: hashlib.md5(data).hexdigest() for name, data in store.objects.items()} == digests


def test_a_connector_error_from_a_commit_stops_the_run(tmp_path):
    class Refuses(MemoryUpload):
        def commit(self) -> None:
            self.connector.commits += 1
            raise ConnectorError("the store refuses every upload")

    make_source(tmp_path / "src", 600)
    store = type("Store", (MemoryStore,), {"upload": Refuses})()

    summary = run(tmp_path, store, 600)

    assert summary.fatal and "refuses every upload" in summary.fatal, summary.describe()
    assert store.commits == 1  # the next ones would be refused too: not asked
    assert copied(tmp_path) == []


@pytest.mark.parametrize("where", ["send", "commit"])
def test_an_abort_that_raises_does_not_hide_the_first_error(tmp_path, caplog, where):
    def fail(self, *args) -> None:
        raise RuntimeError("HTTP 503 from the store")

    def abort(self) -> None:
        raise RuntimeError("abort failed too")

    make_source(tmp_path / "src", 2)
    store = type(
        "Store", (MemoryStore,), {"upload": type("U", (MemoryUpload,), {where: fail, "abort": abort})}
    )()
    caplog.set_level(logging.WARNING, logger="oeleo")

    summary = run(tmp_path, store)

    assert summary.failed == 2 and summary.copied == 0, summary.describe()
    errors = [error for _, _, error in booked(tmp_path).values()]
    assert all("HTTP 503" in error for error in errors), errors
    assert "cannot abort the upload of f000.csv: abort failed too" in caplog.text


def test_a_finish_that_returns_a_dict_is_named_in_the_error(tmp_path):
    class DictFinish(MemoryUpload):
        def finish(self, algorithm=None):
            return {"size": 1000, "md5": "x"}

    make_source(tmp_path / "src", 1)
    with pytest.raises(
        ConfigError, match=r"DictFinish.finish\(\) returned dict, not an oeleo.connectors.Stored"
    ):
        run(tmp_path, type("Store", (MemoryStore,), {"upload": DictFinish})(), 1)

    assert copied(tmp_path) == []


def test_an_open_upload_that_returns_none_is_named_in_the_error(tmp_path):
    make_source(tmp_path / "src", 1)
    store = type("Store", (MemoryStore,), {"open_upload": lambda self, relpath, size, mtime_ns: None})()

    with pytest.raises(
        ConfigError, match=r"Store.open_upload\(\) returned NoneType, not an oeleo.connectors.Upload"
    ):
        run(tmp_path, store, 1)


def test_digests_in_capitals_are_the_same_digests(tmp_path):
    class Capitals(MemoryUpload):
        def finish(self, algorithm=None):
            data = self.connector.staged[self.relpath]
            return Stored(len(data), {"MD5": hashlib.md5(data).hexdigest().upper()})

    class Store(MemoryStore):
        upload = Capitals

        def checksum(self, relpath: str, algorithm: str = "md5") -> str:
            return super().checksum(relpath, algorithm).upper()

    make_source(tmp_path / "src", 2)
    store = Store()
    summary = run(tmp_path, store)
    assert summary.copied == 2 and summary.failed == 0, summary.describe()

    report = check(tmp_path, store)
    assert sorted(report.same) == ["f000.csv", "f001.csv"] and not report.different


def test_a_commit_that_does_nothing_is_a_failure_not_a_copy(tmp_path):
    """A forgotten 'complete' call: the store never shows the file. The engine asks ``stat``
    after the commit (``Features.confirms_commit`` is False for a connector of one's own)."""

    class Forgets(MemoryUpload):
        def commit(self) -> None:
            self.connector.commits += 1

    make_source(tmp_path / "src", 2)
    store = type("Store", (MemoryStore,), {"upload": Forgets})()

    summary = run(tmp_path, store)

    assert store.commits == 2 and summary.copied == 0 and summary.failed == 2, summary.describe()
    assert all("not in the store after its commit" in error for _, _, error in booked(tmp_path).values())
    assert copied(tmp_path) == []


def test_a_commit_that_does_nothing_over_an_older_copy_of_the_same_size_is_a_failure(tmp_path):
    """The store holds the file's first version; the second, of the same size, is staged and
    its commit does nothing. The size after the commit matches: the store's hash (it declares
    md5) tells the older copy from this one (trial 48: booked as copied, check said different)."""

    class Forgets(MemoryUpload):
        def commit(self) -> None:
            self.connector.commits += 1

    make_source(tmp_path / "src", 1)
    store = MemoryStore()
    assert run(tmp_path, store).copied == 1
    source = tmp_path / "src" / "f000.csv"
    source.write_bytes(bytes(reversed(source.read_bytes())))  # other bytes, the same size
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    store.upload = Forgets

    summary = run(tmp_path, store)

    assert store.commits == 2 and summary.copied == 0 and summary.failed == 1, summary.describe()
    assert "the store holds other bytes after the commit" in summary.errors[0][1], summary.errors


def test_a_folder_connector_whose_rename_does_nothing_books_nothing(tmp_path):
    from oeleo.connectors.base import FolderConnector

    class Folder(FolderConnector):
        """A folder store written from the doc, whose rename forgets to rename."""

        def __init__(self, directory) -> None:
            self.directory = str(directory)

        def _full(self, relpath: str) -> Path:
            return Path(self.directory) / relpath

        def list_files(self, extensions=(), include=(), exclude=(), recursive=True):
            base = Path(self.directory)
            for path in sorted(base.rglob("*")):
                if path.is_file() and not path.name.endswith(".oeleo-part"):
                    info = path.stat()
                    yield FileEntry(path.relative_to(base).as_posix(), info.st_size, info.st_mtime_ns)

        def stat(self, relpath: str):
            path = self._full(relpath)
            if not path.is_file():
                return None
            info = path.stat()
            return FileEntry(relpath, info.st_size, info.st_mtime_ns)

        def checksum(self, relpath: str, algorithm: str = "md5") -> str:
            return hashlib.new(algorithm, self._full(relpath).read_bytes()).hexdigest()

        def write_stream(self, relpath: str, chunks, size: int) -> None:
            path = self._full(relpath)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)

        def rename(self, src_relpath: str, dst_relpath: str) -> None:
            pass  # the mistake

        def remove(self, relpath: str) -> None:
            self._full(relpath).unlink(missing_ok=True)

    make_source(tmp_path / "src", 2)
    # An older copy of the same size is under one real name already: a size check alone would
    # find it "there".
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "f000.csv").write_bytes(b"old" * 333 + b"!")
    summary = run(tmp_path, Folder(tmp_path / "dest"))

    assert summary.copied == 0 and summary.failed == 2, summary.describe()
    assert copied(tmp_path) == []
    assert all("was still there after the commit" in error for _, _, error in booked(tmp_path).values())
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["f000.csv"]  # no temporary left


@pytest.mark.parametrize("answer", ["dict", "raises"])
def test_a_stat_that_answers_wrongly_is_reported_by_check_for_that_file(tmp_path, answer):
    """``check`` reports the file whose ``stat`` returned a dict or raised an error of the
    store's own, and goes on with the others (it stopped at the first such file)."""

    class Odd(MemoryStore):
        features = Features(hashes=frozenset({"md5"}), confirms_commit=True)  # copies without stat()

        def stat(self, relpath: str):
            if relpath == "f000.csv":
                if answer == "dict":
                    return {"size": 1000}
                raise RuntimeError("HTTP 500 from the store")
            return super().stat(relpath)

    make_source(tmp_path / "src", 3)
    store = Odd()
    assert run(tmp_path, store, 3).copied == 3

    report = check(tmp_path, store)
    assert sorted(report.same) == ["f001.csv", "f002.csv"]
    assert [name for name, _ in report.errors] == ["f000.csv"], report.errors


def test_a_copy_found_wrong_once_in_place_is_said_as_it_is_and_warned_of_once(tmp_path, caplog):
    """An upload without a hash or a temporary name is verified only after its commit: the
    copy it damaged is in place. The line says so (not "cannot commit", the name once), and
    one warning per run tells the newcomer what ``finish`` should return."""
    make_source(tmp_path / "src", 3)
    store = type("Store", (MemoryStore,), {"upload": FlipsABit})()

    with caplog.at_level(logging.WARNING, logger="oeleo"):
        summary = run(tmp_path, store, 3)

    assert summary.failed == 3 and summary.copied == 0, summary.describe()
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("failed ")]
    assert len(failed) == 3, failed
    for line in failed:
        name = line.split(" ")[1].rstrip(":")
        assert f"failed {name}: md5 of the copy is " in line and "once in place" in line, line
        assert "it replaced the copy before it; sent again on the next run" in line, line
        assert "cannot commit" not in line and line.count(name) == 1, line
    warnings = [r.getMessage() for r in caplog.records if "finish() returns none" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("Store: its uploads give no md5 of the copy before the commit"), warnings


def test_an_upload_that_gives_its_hash_is_not_warned_of(tmp_path, caplog):
    make_source(tmp_path / "src", 2)
    with caplog.at_level(logging.WARNING, logger="oeleo"):
        summary = run(tmp_path, MemoryStore())
    assert summary.copied == 2, summary.describe()
    assert not [r for r in caplog.records if "finish() returns none" in r.getMessage()]


def test_a_wrong_hash_from_finish_names_the_file_once(tmp_path, caplog):
    class SaysWrong(MemoryUpload):
        def finish(self, algorithm: Optional[str] = None) -> Stored:
            return Stored(len(self.connector.staged[self.relpath]), {"md5": "0" * 32})

    make_source(tmp_path / "src", 1)
    store = type("Store", (MemoryStore,), {"upload": SaysWrong})()
    with caplog.at_level(logging.ERROR, logger="oeleo"):
        summary = run(tmp_path, store)
    assert summary.failed == 1, summary.describe()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("failed ")]
    assert lines == [lines[0]] and lines[0].startswith("failed f000.csv: md5 of the copy is 000"), lines


def test_a_source_removed_while_it_is_copied_is_said_removed_not_changed(tmp_path, caplog):
    make_source(tmp_path / "src", 1)
    source = tmp_path / "src" / "f000.csv"

    class RemovesItsSource(MemoryUpload):
        def send(self, chunks) -> None:
            source.unlink()  # the instrument deletes the file while it is sent
            super().send(chunks)

    store = type("Store", (MemoryStore,), {"upload": RemovesItsSource})()
    with caplog.at_level(logging.INFO, logger="oeleo"):
        summary = run(tmp_path, store)
    assert summary.copied == 0 and summary.failed == 0, summary.describe()
    assert store.objects == {}
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "f000.csv was removed while it was copied; left for the next run" in said, said


def test_a_bug_in_a_connector_is_said_with_where_it_was_raised(tmp_path, caplog):
    """Not an error of the store (an ``AttributeError`` of the connector's own code): the line
    says in which file, line and method, the first place to look, and that --debug has more."""

    class Buggy(MemoryUpload):
        def send(self, chunks) -> None:
            handle = None
            handle.write(b"".join(chunks))  # type: ignore[attr-defined]  # the newcomer's bug

    make_source(tmp_path / "src", 1)
    store = type("Store", (MemoryStore,), {"upload": Buggy})()
    with caplog.at_level(logging.ERROR, logger="oeleo"):
        summary = run(tmp_path, store)
    assert summary.failed == 1, summary.describe()
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("failed "))
    assert line.startswith("failed f000.csv: AttributeError: 'NoneType' object has no attribute 'write'"), (
        line
    )
    assert " (at test_newcomer_mistakes.py:" in line, line
    assert line.endswith(" in send(); --debug shows the traceback)"), line
