"""The worker's pass: what it copies, what it books, what it skips, and how it fails."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import db_count, db_rows, make_tree, run_oeleo, run_once, set_mtime, tree_files

import oeleo.compare as compare_module
import oeleo.connectors.base as base_module
import oeleo.connectors.local as local_module
import oeleo.worker as workers_module
from oeleo.checkers import ChecksumChecker
from oeleo.connectors.local import LocalConnector
from oeleo.errors import ConfigError
from oeleo.models import SimpleDbHandler
from oeleo.reporters import Reporter
from oeleo.workers import Worker

FILES = {
    "a.csv": b"time;voltage\n0;3.7\n",
    "sub/b.res": b"\x00\x01binary\xff" * 50,
    "sub/deeper/c.fits": b"SIMPLE  =                    T" * 10,
}


@pytest.fixture
def src(tmp_path):
    make_tree(tmp_path / "src", FILES)
    return tmp_path / "src"


@pytest.fixture
def dst(tmp_path):
    return tmp_path / "dst"


@pytest.fixture
def db(tmp_path):
    return tmp_path / "books.db"


@pytest.fixture
def new_worker(src, dst, db):
    """Build a Worker like a user's script would; every one built is closed afterwards."""
    made = []

    def build(source=None, dest=None, books=None, checker=None, external=None, **options):
        options.setdefault("subdirs", True)
        worker = Worker(
            checker=checker or ChecksumChecker(),
            bookkeeper=SimpleDbHandler(books or db),
            local_connector=LocalConnector(source or src),
            external_connector=external or LocalConnector(dest or dst),
            **options,
        )
        made.append(worker)
        return worker

    yield build
    for worker in made:
        worker.close()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def lock(worker: Worker, *names: str, code: int = 2) -> None:
    worker.connect_to_db()
    worker.bookkeeper.set_code(list(names), code)


@pytest.fixture
def reads(monkeypatch):
    """Counts every read of a file's content for hashing or copying, by file name."""
    counted = []
    real_reader = base_module.SourceReader

    class CountingReader(real_reader):
        def __init__(self, path, *args, **kwargs):
            counted.append(Path(path).name)
            super().__init__(path, *args, **kwargs)

    def counting(real):
        def hash_file(path, *args, **kwargs):
            counted.append(Path(path).name)
            return real(path, *args, **kwargs)

        return hash_file

    monkeypatch.setattr(base_module, "SourceReader", CountingReader)
    monkeypatch.setattr(workers_module, "hash_file", counting(workers_module.hash_file))
    monkeypatch.setattr(compare_module, "hash_file", counting(compare_module.hash_file))
    monkeypatch.setattr(local_module, "hash_file", counting(local_module.hash_file))
    real_read_back = local_module._read_at

    def read_back(fd, offset, length):  # the copy read back through its open descriptor
        if offset == 0:  # once a file: its first chunk
            counted.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name if os.path.isdir("/proc") else fd)
        return real_read_back(fd, offset, length)

    monkeypatch.setattr(local_module, "_read_at", read_back)
    return counted


# -- copying and booking ----------------------------------------------------------------


def test_first_run_copies_everything_and_books_checksums_sizes_and_mtimes(new_worker, src, dst, db):
    summary = run_once(new_worker())

    assert (summary.copied, summary.failed, summary.exit_status) == (3, 0, 0)
    assert tree_files(dst) == FILES
    rows = db_rows(db)
    assert sorted(rows) == sorted(FILES)
    for name, data in FILES.items():
        row = rows[name]
        assert row["code"] == 1
        assert row["checksum"] == md5(data)
        assert row["size"] == len(data)
        assert row["mtime_ns"] == os.stat(src / name).st_mtime_ns
        assert row["last_error"] is None
        assert row["external_name"] == str(dst / name)


def test_second_run_copies_nothing_and_reads_no_unchanged_file(new_worker, dst, reads):
    first = run_once(new_worker())
    assert first.copied == 3 and len(reads) == 3 * 2  # read to copy, read back to verify
    dst_mtimes = {p: p.stat().st_mtime_ns for p in dst.rglob("*")}
    reads.clear()

    second = run_once(new_worker())

    assert (second.copied, second.unchanged, second.exit_status) == (0, 3, 0)
    assert reads == []
    assert {p: p.stat().st_mtime_ns for p in dst.rglob("*")} == dst_mtimes


def test_changed_file_of_the_same_size_is_copied_again(new_worker, src, dst, db):
    run_once(new_worker())
    (src / "a.csv").write_bytes(b"time;voltage\n0;9.9\n")
    os.utime(src / "a.csv", ns=(0, os.stat(src / "a.csv").st_mtime_ns + 5_000_000_000))

    summary = run_once(new_worker())

    assert (summary.copied, summary.unchanged) == (1, 2)
    assert (dst / "a.csv").read_bytes() == b"time;voltage\n0;9.9\n"
    assert db_rows(db)["a.csv"]["checksum"] == md5(b"time;voltage\n0;9.9\n")


def test_same_file_name_in_two_folders_is_two_rows(new_worker, tmp_path, db):
    source = tmp_path / "two"
    make_tree(source, {"a/x.csv": "from a", "b/x.csv": "from b"})

    summary = run_once(new_worker(source=source))

    assert summary.copied == 2
    rows = db_rows(db)
    assert sorted(rows) == ["a/x.csv", "b/x.csv"]
    assert rows["a/x.csv"]["checksum"] == md5(b"from a")
    assert rows["b/x.csv"]["checksum"] == md5(b"from b")


# -- lock codes -------------------------------------------------------------------------


def test_locked_file_is_never_copied_even_when_changed_or_forced(new_worker, src, dst, db):
    run_once(new_worker())
    worker = new_worker()
    lock(worker, "a.csv")
    worker.close()
    (src / "a.csv").write_bytes(b"changed after it was locked")

    plain = run_once(new_worker())
    forced = run_once(new_worker(force=True))

    assert plain.locked == 1 and plain.copied == 0
    assert forced.locked == 1 and forced.copied == 2  # the two unlocked files, forced
    assert (dst / "a.csv").read_bytes() == FILES["a.csv"]
    assert db_rows(db)["a.csv"]["code"] == 2


def test_locked_new_file_is_never_copied(new_worker, dst, db):
    worker = new_worker()
    lock(worker, "sub/b.res")

    summary = run_once(worker)

    assert (summary.copied, summary.locked) == (2, 1)
    assert not (dst / "sub" / "b.res").exists()
    assert db_rows(db)["sub/b.res"]["checksum"] is None


def test_locked_file_is_copied_with_force_and_include_locked_and_stays_locked(new_worker, src, dst, db):
    run_once(new_worker())
    worker = new_worker()
    lock(worker, "a.csv")
    worker.close()
    (src / "a.csv").write_bytes(b"changed after it was locked")

    summary = run_once(new_worker(force=True, include_locked=True))

    assert summary.copied == 3 and summary.locked == 0
    assert (dst / "a.csv").read_bytes() == b"changed after it was locked"
    row = db_rows(db)["a.csv"]
    assert row["code"] == 2
    assert row["checksum"] == md5(b"changed after it was locked")


def test_code_0_file_is_copied_again_even_when_unchanged(new_worker, dst, db, reads):
    run_once(new_worker())
    worker = new_worker()
    lock(worker, "a.csv", code=0)
    (dst / "a.csv").write_bytes(b"damaged on the server")
    reads.clear()

    summary = run_once(worker)

    assert (summary.copied, summary.unchanged) == (1, 2)
    assert (dst / "a.csv").read_bytes() == FILES["a.csv"]
    assert db_rows(db)["a.csv"]["code"] == 1
    assert not {"b.res", "c.fits"} & set(reads)


def test_code_1_file_is_copied_only_when_changed(new_worker, src, dst):
    run_once(new_worker())
    (dst / "a.csv").write_bytes(b"server copy left alone")

    unchanged = run_once(new_worker())
    (src / "a.csv").write_bytes(b"new measurement")
    changed = run_once(new_worker())

    assert unchanged.copied == 0 and unchanged.unchanged == 3
    assert changed.copied == 1
    assert (dst / "a.csv").read_bytes() == b"new measurement"


# -- what a pass leaves for later -------------------------------------------------------


def test_young_file_is_left_until_it_is_old_enough(new_worker, src, dst, db):
    for name in FILES:
        set_mtime(src / name, 7200)
    set_mtime(src / "a.csv", 10)

    young = run_once(new_worker(min_age=3600))

    assert (young.copied, young.too_young) == (2, 1)
    assert not (dst / "a.csv").exists()
    assert "a.csv" not in db_rows(db)

    set_mtime(src / "a.csv", 3700)
    old = run_once(new_worker(min_age=3600))

    assert (old.copied, old.too_young, old.unchanged) == (1, 0, 2)
    assert (dst / "a.csv").read_bytes() == FILES["a.csv"]


def test_dry_run_without_books_copies_nothing_and_creates_nothing(new_worker, dst, db):
    summary = run_once(new_worker(dry_run=True))

    assert sorted(summary.would_copy) == sorted(FILES)
    assert summary.copied == 0
    assert not dst.exists()
    assert not db.exists()


def test_dry_run_copies_nothing_and_writes_no_row(new_worker, src, dst, db):
    run_once(new_worker())
    (src / "a.csv").write_bytes(b"changed")
    make_tree(src, {"new.csv": "new"})
    rows_before = db_rows(db)
    runs_before = db_count(db, "oeleo_runs")

    summary = run_once(new_worker(dry_run=True))

    assert sorted(summary.would_copy) == ["a.csv", "new.csv"]
    assert tree_files(dst) == FILES
    assert db_rows(db) == rows_before
    assert db_count(db, "oeleo_runs") == runs_before


# -- failures ---------------------------------------------------------------------------


class RefusesBadFiles(ChecksumChecker):
    """A checker with a validation step, as a developer would write one."""

    def validate(self, path):
        return "header is broken" if Path(path).name.startswith("bad") else None


def test_failed_and_vanished_files_do_not_stop_the_run(new_worker, src, dst, db):
    make_tree(src, {"bad.csv": "broken", "gone.csv": "soon deleted", "z.csv": "last"})
    worker = new_worker(checker=RefusesBadFiles())
    worker.filter_local()
    (src / "gone.csv").unlink()

    summary = run_once(worker)

    assert (summary.copied, summary.failed, summary.vanished) == (4, 1, 1)
    assert summary.exit_status == 1
    assert [name for name, _ in summary.errors] == ["bad.csv"]
    assert sorted(tree_files(dst)) == sorted([*FILES, "z.csv"])
    rows = db_rows(db)
    assert "gone.csv" not in rows
    assert "header is broken" in rows["bad.csv"]["last_error"]
    assert rows["bad.csv"]["checksum"] is None
    assert rows["z.csv"]["code"] == 1


def test_failed_file_is_copied_on_the_next_run_and_its_error_cleared(new_worker, src, dst, db):
    make_tree(src, {"bad.csv": "fixed later"})
    run_once(new_worker(checker=RefusesBadFiles()))

    summary = run_once(new_worker())

    assert (summary.copied, summary.failed, summary.exit_status) == (1, 0, 0)
    assert (dst / "bad.csv").read_bytes() == b"fixed later"
    row = db_rows(db)["bad.csv"]
    assert row["last_error"] is None and row["code"] == 1


class InstrumentWritesDuringCopy(Reporter):
    """Progress reporter that lets the instrument append to ``name`` once, mid-copy."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.appended = False
        self.current = None

    def file_started(self, relpath, size):
        self.current = relpath

    def advance(self, nbytes):
        if self.current == self.path.name and not self.appended:
            self.appended = True
            with open(self.path, "ab") as handle:
                handle.write(b"0;3.8\n")


def test_file_changing_during_copy_is_not_booked_and_is_copied_next_run(new_worker, src, dst, db, caplog):
    reporter = InstrumentWritesDuringCopy(src / "a.csv")
    caplog.set_level(logging.WARNING, logger="oeleo")

    first = run_once(new_worker(reporter=reporter))

    # Said by its name in the source folder, as every other line names a file, not its full path.
    assert "a.csv changed while it was copied; left for the next run" in caplog.text
    assert str(src) not in caplog.text

    assert reporter.appended
    assert first.copied == 2
    assert not (dst / "a.csv").exists()
    assert list(dst.rglob("*.oeleo-part")) == []
    assert first.changing == 1 and first.failed == 0 and first.exit_status == 0
    assert "a.csv" not in db_rows(db)  # nothing claims a copy

    second = run_once(new_worker())

    assert second.copied == 1
    assert (dst / "a.csv").read_bytes() == FILES["a.csv"] + b"0;3.8\n"


class FillsUp(LocalConnector):
    """A destination disk with ``room`` bytes free: the write that needs more fails half way."""

    def __init__(self, directory, room):
        super().__init__(directory)
        self.room = room

    def write_stream(self, relpath, chunks, size):
        def until_full():
            for chunk in chunks:
                if len(chunk) > self.room:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), relpath)
                self.room -= len(chunk)
                yield chunk

        super().write_stream(relpath, until_full(), size)


def test_disk_full_stops_the_run_without_partial_file_or_copied_row(new_worker, tmp_path, dst, db):
    source = tmp_path / "big"
    size = 3 * 1024 * 1024
    make_tree(source, {name: os.urandom(size) for name in ("a.res", "b.res", "c.res", "d.res")})

    summary = run_once(new_worker(source=source, external=FillsUp(dst, room=size + 1024 * 1024)))

    assert summary.fatal and "space" in summary.fatal
    assert summary.exit_status == 1
    assert summary.copied == 1
    assert tree_files(dst) == {"a.res": (source / "a.res").read_bytes()}
    rows = db_rows(db)
    assert rows["a.res"]["code"] == 1
    assert all(row["checksum"] is None for name, row in rows.items() if name != "a.res")
    assert "c.res" not in rows and "d.res" not in rows


# -- the books --------------------------------------------------------------------------


def test_two_workers_with_two_databases_in_one_process(new_worker, tmp_path):
    make_tree(tmp_path / "src1", {"one.csv": "1"})
    make_tree(tmp_path / "src2", {"two.csv": "2", "three.csv": "3"})
    first = new_worker(source=tmp_path / "src1", dest=tmp_path / "dst1", books=tmp_path / "one.db")
    second = new_worker(source=tmp_path / "src2", dest=tmp_path / "dst2", books=tmp_path / "two.db")
    first.connect_to_db()
    second.connect_to_db()

    s1 = first.run()
    s2 = second.run()
    first.close()
    second.close()

    assert (s1.copied, s2.copied) == (1, 2)
    assert sorted(db_rows(tmp_path / "one.db")) == ["one.csv"]
    assert sorted(db_rows(tmp_path / "two.db")) == ["three.csv", "two.csv"]
    assert sorted(tree_files(tmp_path / "dst1")) == ["one.csv"]
    assert sorted(tree_files(tmp_path / "dst2")) == ["three.csv", "two.csv"]


def test_bookkeeping_commits_in_batches_not_per_file(new_worker, tmp_path, db):
    source = tmp_path / "many"
    make_tree(source, {f"f{i:03d}.csv": str(i) for i in range(300)})
    worker = new_worker(source=source)
    worker.connect_to_db()
    connection = worker.bookkeeper.database.connection()
    commits = []

    def trace(sql):
        statement = sql.lstrip().upper()
        if statement.startswith("COMMIT"):
            commits.append(statement)
        elif statement.startswith(("INSERT", "UPDATE", "DELETE")) and not connection.in_transaction:
            commits.append(statement)  # autocommit: a transaction of its own

    connection.set_trace_callback(trace)
    summary = run_once(worker)

    assert summary.copied == 300
    assert len(db_rows(db)) == 300
    assert 1 <= len(commits) <= 10


def test_check_with_update_db_books_identical_copies_without_copying(new_worker, src, dst, db):
    make_tree(dst, {"a.csv": FILES["a.csv"], "sub/b.res": FILES["sub/b.res"], "sub/deeper/c.fits": b"old"})
    dst_mtimes = {p: set_mtime(p, 86400) for p in dst.rglob("*") if p.is_file()}
    worker = new_worker()
    worker.connect_to_db()

    report = worker.check(update_db=True)
    worker.close()

    assert sorted(report.same) == ["a.csv", "sub/b.res"]
    assert report.different == ["sub/deeper/c.fits"]
    assert {p: p.stat().st_mtime_ns for p in dst_mtimes} == dst_mtimes
    rows = db_rows(db)
    for name in ("a.csv", "sub/b.res"):
        assert rows[name]["code"] == 1
        assert rows[name]["checksum"] == md5(FILES[name])
    assert rows["sub/deeper/c.fits"]["code"] == 0
    assert (dst / "sub" / "deeper" / "c.fits").read_bytes() == b"old"

    summary = run_once(new_worker())

    assert (summary.copied, summary.unchanged) == (1, 2)
    assert tree_files(dst) == FILES


def test_check_with_update_db_books_missing_files_as_to_copy(new_worker, db, dst):
    dst.mkdir()
    worker = new_worker()
    worker.connect_to_db()

    report = worker.check(update_db=True)
    worker.close()

    assert sorted(report.missing) == sorted(FILES)
    assert {name: row["code"] for name, row in db_rows(db).items()} == {name: 0 for name in FILES}
    assert tree_files(dst) == {}


def test_check_of_a_destination_not_there_yet_finds_every_file_missing_and_creates_nothing(
    new_worker, db, dst, caplog
):
    worker = new_worker()
    worker.connect_to_db()

    report = worker.check()
    worker.close()

    assert sorted(report.missing) == sorted(FILES)
    assert "does not exist yet" in caplog.text
    assert not dst.exists()  # check changes nothing at the destination


def test_check_of_a_destination_that_cannot_be_listed_is_an_error_not_every_file_missing(new_worker, db, dst):
    dst.write_text("a file where the folder should be")
    worker = new_worker()
    worker.connect_to_db()

    with pytest.raises(ConfigError, match="cannot be listed"):
        worker.check(update_db=True)
    worker.close()

    assert db_rows(db) == {}


def test_parallel_workers_copy_every_file_correctly(new_worker, tmp_path, dst, db):
    source = tmp_path / "many"
    files = {f"d{i % 5}/f{i:02d}.res": os.urandom(1000 + 997 * i) for i in range(50)}
    make_tree(source, files)

    summary = run_once(new_worker(source=source, workers=3))

    assert (summary.copied, summary.failed) == (50, 0)
    assert tree_files(dst) == files
    rows = db_rows(db)
    assert {name: row["checksum"] for name, row in rows.items()} == {
        name: md5(data) for name, data in files.items()
    }


class OneAtATime(LocalConnector):
    """A user's connector that says nothing about threads."""

    thread_safe = False


def test_unset_workers_copy_two_at_a_time_only_where_the_connector_allows_it(new_worker, dst):
    assert new_worker(workers=None).workers == 2
    assert new_worker(workers=None, external=OneAtATime(dst)).workers == 1
    assert new_worker(workers=4, external=OneAtATime(dst)).workers == 4  # the user said so


class RecordsThreads(LocalConnector):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.threads = {}

    def stage(self, local_path, relpath, **kwargs):
        self.threads[relpath] = threading.current_thread().name
        return super().stage(local_path, relpath, **kwargs)


def test_unset_workers_copy_small_files_one_at_a_time_and_large_ones_in_parallel(new_worker, tmp_path, dst):
    source = tmp_path / "mixed"
    big = workers_module.PARALLEL_MIN_SIZE
    make_tree(
        source, {"a.csv": b"small", "b.csv": b"small too", "L1.fits": b"1" * big, "L2.fits": b"2" * big}
    )
    external = RecordsThreads(dst)

    summary = run_once(new_worker(source=source, external=external, workers=None))

    assert summary.copied == 4
    main = threading.main_thread().name
    assert external.threads["a.csv"] == external.threads["b.csv"] == main
    assert all(external.threads[n].startswith("oeleo-copy") for n in ("L1.fits", "L2.fits"))


def test_two_workers_copy_large_files_whole_and_hash_them_right(new_worker, tmp_path, dst, db):
    source = tmp_path / "large"
    files = {f"L{i}.fits": os.urandom(base_module.HASH_THREAD_MIN_SIZE + 4096 * i) for i in range(3)}
    make_tree(source, files)

    summary = run_once(new_worker(source=source, workers=None))

    assert (summary.copied, summary.failed) == (3, 0)
    assert tree_files(dst) == files
    assert {n: r["checksum"] for n, r in db_rows(db).items()} == {n: md5(d) for n, d in files.items()}


# -- the command ------------------------------------------------------------------------


def test_oeleo_command_copies_and_books_like_the_worker(src, dst, db, tmp_path):
    args = ("run", "--from", str(src), "--to", str(dst), "--db", str(db))

    first = run_oeleo(*args, cwd=tmp_path)
    second = run_oeleo(*args, cwd=tmp_path)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert tree_files(dst) == FILES
    assert {name: row["code"] for name, row in db_rows(db).items()} == {name: 1 for name in FILES}


class LosesTemporaryFiles(LocalConnector):
    """A share where something removes our temporary file before it is renamed into place."""

    def rename(self, src_relpath, dst_relpath):
        os.remove(self.path(src_relpath))
        super().rename(src_relpath, dst_relpath)


def test_file_missing_on_the_destination_side_is_a_failure_not_a_vanished_source(new_worker, dst, db):
    summary = run_once(new_worker(external=LosesTemporaryFiles(dst)))

    assert (summary.copied, summary.vanished, summary.failed) == (0, 0, 3)
    assert summary.exit_status == 1
    rows = db_rows(db)
    assert sorted(rows) == sorted(FILES)
    assert all(row["last_error"] and row["checksum"] is None for row in rows.values())


def test_dry_run_repeated_on_one_worker_sees_new_files(new_worker, src):
    worker = new_worker(dry_run=True)
    first = worker.run()
    make_tree(src, {"new.csv": "arrived between two dry runs"})

    second = worker.run()

    assert sorted(first.would_copy) == sorted(FILES)
    assert sorted(second.would_copy) == sorted([*FILES, "new.csv"])


# -- durability in batches --------------------------------------------------------------


def numbered_files(folder, n: int) -> dict:
    """``n`` small files, 100 per subfolder, made in ``folder``: {relative name: text}."""
    names = {f"d{i // 100}/f{i:03d}.csv": f"{i}\n" for i in range(n)}
    make_tree(folder, names)
    return names


class RecordsOrder(LocalConnector):
    """A destination that notes each durability step, to check their order."""

    def __init__(self, directory, events, fail_sync=False):
        super().__init__(directory)
        self.events = events
        self.fail_sync = fail_sync

    def sync_data(self, staged):
        if self.fail_sync:
            raise OSError(errno.EIO, "Input/output error")
        super().sync_data(staged)
        self.events.append(("sync_data", [s.relpath for s in staged]))

    def rename(self, src_relpath, dst_relpath):
        super().rename(src_relpath, dst_relpath)
        self.events.append(("rename", dst_relpath))

    def sync_names(self, committed):
        super().sync_names(committed)
        self.events.append(("sync_names", [c.relpath for c in committed]))


class RecordsBooking(SimpleDbHandler):
    def __init__(self, path, events):
        super().__init__(path)
        self.events = events

    def record_copied(self, local_name, *args, **kwargs):
        self.events.append(("book", local_name))
        super().record_copied(local_name, *args, **kwargs)


def copy_noting_batches(src, dst, db, commit_files=None):
    """Copy ``src`` to a RecordsOrder destination (batches of ``commit_files``, else the local
    folder's own): the summary and the durability steps and bookings, in order."""
    events = []
    external = RecordsOrder(dst, events)
    if commit_files is not None:
        external.commit_files = commit_files
    worker = Worker(
        checker=ChecksumChecker(),
        bookkeeper=RecordsBooking(db, events),
        local_connector=LocalConnector(src),
        external_connector=external,
        subdirs=True,
    )
    return run_once(worker), events


def test_copies_are_synced_in_batches_and_booked_only_after_they_are_durable(tmp_path, dst, db):
    src = tmp_path / "many"
    names = numbered_files(src, 300)
    # A store's own batch size (the local folder's is larger).
    summary, events = copy_noting_batches(src, dst, db, commit_files=256)

    assert summary.copied == 300
    syncs = [e for e in events if e[0] == "sync_data"]
    assert 2 <= len(syncs) <= 3  # batches of up to 256 files, not one sync per file
    position = {
        (kind, name): i
        for i, (kind, value) in enumerate(events)
        for name in (value if isinstance(value, list) else [value])
    }
    for name in names:
        assert position[("sync_data", name)] < position[("rename", name)]
        assert position[("rename", name)] < position[("sync_names", name)]
        assert position[("sync_names", name)] < position[("book", name)]
    assert sorted(tree_files(dst)) == sorted(names)


@pytest.mark.parametrize("commit_files", [100, None])  # None: the local folder's own
def test_a_batch_holds_at_most_the_connectors_commit_files(tmp_path, dst, db, commit_files):
    # LocalConnector's batches are 4,096 files (two syncfs per batch cost more than the
    # overlap smaller ones buy); any connector may say its own, and the engine keeps to it.
    src = tmp_path / "many"
    numbered_files(src, 300)
    assert LocalConnector.commit_files == 4096

    summary, events = copy_noting_batches(src, dst, db, commit_files=commit_files)

    assert summary.copied == 300
    sizes = [len(value) for kind, value in events if kind == "sync_data"]
    assert sum(sizes) == 300 and max(sizes) <= (commit_files or 4096)
    if commit_files == 100:
        assert sizes == [100, 100, 100]  # the count ends these batches (not 1 s, not 64 MiB)


def test_a_failed_sync_leaves_no_file_under_its_real_name_and_books_no_copy(new_worker, src, dst, db):
    worker = new_worker(external=RecordsOrder(dst, [], fail_sync=True))

    summary = run_once(worker)

    assert summary.copied == 0 and summary.failed == len(FILES) and summary.exit_status == 1
    assert tree_files(dst) == {}  # no real names, no temporary names
    assert list(dst.rglob("*.oeleo-part")) == []
    rows = db_rows(db)
    assert all(row["checksum"] is None for row in rows.values())
    assert all("Input/output error" in row["last_error"] for row in rows.values())


class RecordsSyncThreads(LocalConnector):
    def __init__(self, directory, thread_safe):
        super().__init__(directory)
        self.features = replace(self.features, max_uploads=2 if thread_safe else 1)
        self.commit_files = 256  # 600 files: two full batches and a partial one
        self.sync_threads = []
        self.stage_threads = set()

    def stage(self, local_path, relpath, **kwargs):
        self.stage_threads.add(threading.current_thread().name)
        return super().stage(local_path, relpath, **kwargs)

    def sync_data(self, staged):
        self.sync_threads.append(threading.current_thread().name)
        super().sync_data(staged)


@pytest.mark.parametrize("thread_safe", [True, False])
def test_a_batch_is_made_durable_while_the_next_is_copied_only_where_the_connector_allows_it(
    new_worker, tmp_path, dst, db, thread_safe
):
    names = numbered_files(tmp_path / "many", 600)
    external = RecordsSyncThreads(dst, thread_safe)

    summary = run_once(new_worker(source=tmp_path / "many", external=external, workers=None))

    assert summary.copied == 600 and tree_files(dst) == {n: d.encode() for n, d in names.items()}
    assert len(db_rows(db)) == 600 and all(r["checksum"] for r in db_rows(db).values())
    main = threading.main_thread().name
    assert external.stage_threads == {main}
    # Full batches go to the second thread; the last, partial one is finished in the main one.
    expected = ["oeleo-commit", "oeleo-commit", main] if thread_safe else [main] * 3
    assert [name.rsplit("_", 1)[0] for name in external.sync_threads] == expected


class StopsAfter(LocalConnector):
    """Asks the worker to stop once it has staged ``after`` files (a Ctrl-C in the middle)."""

    def __init__(self, directory, after):
        super().__init__(directory)
        self.after = after
        self.worker = None
        self.staged = 0

    def stage(self, local_path, relpath, **kwargs):
        result = super().stage(local_path, relpath, **kwargs)
        self.staged += 1
        if self.staged == self.after:
            self.worker.stop()
        return result


def test_a_stop_with_a_batch_being_made_durable_books_exactly_the_files_in_place(
    new_worker, tmp_path, dst, db
):
    names = numbered_files(tmp_path / "many", 600)
    external = StopsAfter(dst, after=300)  # the first batch of 256 is in the second thread
    worker = new_worker(source=tmp_path / "many", external=external, workers=None)
    external.worker = worker

    summary = run_once(worker)

    assert summary.stopped and summary.failed == 0
    in_place = tree_files(dst)
    rows = {n: r for n, r in db_rows(db).items() if r["checksum"]}
    assert summary.copied == len(rows) == len(in_place) == 300  # staged ones are finished
    assert set(rows) == set(in_place)
    assert all(in_place[n] == names[n].encode() for n in in_place)
    assert list(dst.rglob("*.oeleo-part")) == []


class InterruptedAfter(LocalConnector):
    """Ctrl-C arrives while the file after the first ``after`` ones is being copied."""

    commit_files = 256  # batches of 256 (a local folder's own are larger)

    def __init__(self, directory, after):
        super().__init__(directory)
        self.after = after
        self.staged = 0

    def stage(self, local_path, relpath, **kwargs):
        if self.staged == self.after:
            raise KeyboardInterrupt
        self.staged += 1
        return super().stage(local_path, relpath, **kwargs)


def test_ctrl_c_with_a_batch_being_made_durable_books_it_and_leaves_no_temporary_file(
    new_worker, tmp_path, dst, db
):
    names = numbered_files(tmp_path / "many", 600)
    external = InterruptedAfter(dst, after=300)  # the first batch of 256 is in the second thread
    worker = new_worker(source=tmp_path / "many", external=external, workers=None)

    with pytest.raises(KeyboardInterrupt):
        run_once(worker)

    in_place = tree_files(dst)
    rows = {n: r for n, r in db_rows(db).items() if r["checksum"]}
    assert len(in_place) == 256 and set(rows) == set(in_place)  # the batch in flight, booked
    assert all(in_place[n] == names[n].encode() for n in in_place)
    assert list(dst.rglob("*.oeleo-part")) == []


def test_progress_says_which_file_the_bytes_belong_to(new_worker, tmp_path, dst):
    source = tmp_path / "two"
    make_tree(source, {"a.csv": b"a" * 3000, "b.res": b"b" * 5000})

    class PerFile(Reporter):
        def __init__(self):
            super().__init__()
            self.done = {}
            self.advanced = 0

        def file_progress(self, relpath, nbytes):
            self.done[relpath] = self.done.get(relpath, 0) + nbytes
            super().file_progress(relpath, nbytes)

        def advance(self, nbytes):  # a reporter written before file_progress still gets the bytes
            self.advanced += nbytes

    reporter = PerFile()
    summary = run_once(new_worker(source=source, reporter=reporter))

    assert summary.copied == 2
    assert reporter.done == {"a.csv": 3000, "b.res": 5000}
    assert reporter.advanced == 8000


def test_a_stop_during_a_copy_counts_that_file_as_left_for_the_next_run(new_worker, src, tmp_path):
    for i in range(5):
        (src / f"n{i}.csv").write_bytes(b"x" * 100)
    listed = len(tree_files(src))

    class StopAtTheThird(Reporter):
        started = 0

        def file_started(self, relpath: str, size: int) -> None:
            self.started += 1
            if self.started == 3:
                worker.stop()  # seen by the copy of this very file, which is abandoned

    worker = new_worker(reporter=StopAtTheThird())
    summary = worker.run()

    assert summary.stopped and summary.copied == 2, summary.describe()
    assert summary.copied + summary.failed + summary.left == listed, summary.describe()
    assert summary.describe().endswith(f"; {listed - 2} files left for the next run"), summary.describe()
