"""The local connector: how it lists a folder, where it may write, and how it checks folders."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import threading
from pathlib import Path

import pytest
from helpers import make_tree, set_mtime, tree_files

from oeleo.connectors import local as local_module
from oeleo.connectors.base import HASH_THREAD_MIN_SIZE, safe_relpath, temp_relpath
from oeleo.connectors.local import LocalConnector
from oeleo.errors import Aborted, ConfigError, FileChangedError, UnsafePathError, VerificationError


def names(connector: LocalConnector, **kwargs) -> list:
    return [e.relpath for e in connector.list_files(**kwargs)]


# -- listing ----------------------------------------------------------------------------


def test_listing_recurses_into_subfolders_only_when_asked(tmp_path):
    make_tree(tmp_path, {"top.csv": "1", "a/mid.csv": "2", "a/b/low.csv": "3"})
    conn = LocalConnector(tmp_path)

    assert names(conn, recursive=True) == ["a/b/low.csv", "a/mid.csv", "top.csv"]
    assert names(conn, recursive=False) == ["top.csv"]


def test_listing_gives_sizes_and_mtimes(tmp_path):
    made = make_tree(tmp_path, {"a/x.csv": "12345"})
    mtime_ns = set_mtime(made["a/x.csv"], 3600)

    [entry] = LocalConnector(tmp_path).list_files()

    assert (entry.relpath, entry.size, entry.mtime_ns) == ("a/x.csv", 5, mtime_ns)


def test_listing_filters_by_one_extension(tmp_path):
    make_tree(tmp_path, {"a.csv": "", "b.res": "", "c.csv.bak": "", "d/e.csv": ""})

    assert names(LocalConnector(tmp_path), extensions=[".csv"]) == ["a.csv", "d/e.csv"]


def test_listing_filters_by_several_extensions_ignoring_case(tmp_path):
    make_tree(
        tmp_path,
        {"a.CSV": "", "b.res": "", "c.Res": "", "d.txt": "", "e.fits.gz": "", "F.FITS.GZ": "", "g.gz": ""},
    )
    conn = LocalConnector(tmp_path)

    assert names(conn, extensions=[".csv", ".res"]) == ["a.CSV", "b.res", "c.Res"]
    assert names(conn, extensions=[".fits.gz"]) == ["F.FITS.GZ", "e.fits.gz"]


def test_listing_include_glob_matches_the_name(tmp_path):
    make_tree(tmp_path, {"cell_01.res": "", "cell_02.res": "", "other.res": "", "x/cell_03.res": ""})

    assert names(LocalConnector(tmp_path), include=["cell_*"]) == [
        "cell_01.res",
        "cell_02.res",
        "x/cell_03.res",
    ]


def test_listing_include_glob_with_slash_matches_the_path(tmp_path):
    make_tree(tmp_path, {"raw/a.csv": "", "processed/a.csv": "", "a.csv": ""})

    assert names(LocalConnector(tmp_path), include=["raw/*"]) == ["raw/a.csv"]


def test_listing_exclude_glob_matches_the_name(tmp_path):
    make_tree(tmp_path, {"a.csv": "", "a.tmp": "", "sub/b.tmp": "", "sub/b.csv": ""})

    assert names(LocalConnector(tmp_path), exclude=["*.tmp"]) == ["a.csv", "sub/b.csv"]


def test_listing_exclude_glob_with_slash_matches_the_path(tmp_path):
    make_tree(tmp_path, {"raw/a.csv": "", "raw/b.csv": "", "keep/a.csv": ""})

    assert names(LocalConnector(tmp_path), exclude=["raw/a.csv"]) == ["keep/a.csv", "raw/b.csv"]


def test_listing_exclude_of_a_folder_name_prunes_the_folder(tmp_path):
    make_tree(tmp_path, {"a.csv": "", "scratch/b.csv": "", "x/scratch/c.csv": "", "x/d.csv": ""})

    assert names(LocalConnector(tmp_path), exclude=["scratch"]) == ["a.csv", "x/d.csv"]


def test_listing_skips_hidden_files_hidden_folders_and_temporary_files(tmp_path):
    make_tree(
        tmp_path,
        {
            "seen.csv": "",
            ".hidden.csv": "",
            ".git/config.csv": "",
            "sub/.cache/x.csv": "",
            "sub/seen.csv": "",
            temp_relpath("sub/half.csv"): "",
        },
    )

    assert names(LocalConnector(tmp_path)) == ["seen.csv", "sub/seen.csv"]


def test_a_hidden_file_or_folder_left_out_is_a_debug_line_a_temporary_file_is_not(tmp_path, caplog):
    make_tree(tmp_path, {".hidden.csv": "", "sub/.cache/x.csv": "", temp_relpath("half.csv"): ""})

    with caplog.at_level(logging.DEBUG, logger="oeleo"):
        names(LocalConnector(tmp_path))

    said = sorted(r.getMessage() for r in caplog.records if "hidden" in r.getMessage())
    assert said == [".hidden.csv: hidden, never copied", "sub/.cache: hidden, never copied"], said


def test_listing_is_sorted_by_relative_path(tmp_path):
    files = ["b.csv", "a/z.csv", "a.csv", "a-b.csv", "c/a.csv", "B.csv", "a/b/c.csv", "ab.csv"]
    make_tree(tmp_path, {f: "" for f in reversed(files)})

    listed = names(LocalConnector(tmp_path))

    assert listed == sorted(files)


def test_listing_a_missing_folder_raises_config_error_naming_it(tmp_path):
    missing = tmp_path / "no-such-folder"

    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        list(LocalConnector(missing).list_files())


# -- where it writes --------------------------------------------------------------------


def test_symlinked_subfolder_pointing_outside_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    store = tmp_path / "store"
    store.mkdir()
    (store / "link").symlink_to(outside, target_is_directory=True)
    src = make_tree(tmp_path / "src", {"x.csv": "secret"})["x.csv"]
    conn = LocalConnector(store)

    with pytest.raises(UnsafePathError):
        conn.put(src, "link/x.csv")
    with pytest.raises(UnsafePathError):
        conn.put(src, "link/deeper/x.csv")

    assert tree_files(outside) == {}


def test_symlinked_subfolder_inside_the_destination_is_allowed(tmp_path):
    store = tmp_path / "store"
    (store / "real").mkdir(parents=True)
    (store / "alias").symlink_to(store / "real", target_is_directory=True)
    src = make_tree(tmp_path / "src", {"x.csv": "data"})["x.csv"]

    LocalConnector(store).put(src, "alias/x.csv")

    assert (store / "real" / "x.csv").read_bytes() == b"data"


def test_stale_temporary_symlink_is_replaced_not_followed(tmp_path):
    outside = tmp_path / "outside.csv"
    outside.write_bytes(b"must stay")
    store = tmp_path / "store"
    store.mkdir()
    (store / temp_relpath("x.csv")).symlink_to(outside)
    src = make_tree(tmp_path / "src", {"x.csv": "new data"})["x.csv"]

    LocalConnector(store).put(src, "x.csv")

    assert outside.read_bytes() == b"must stay"
    assert not (store / "x.csv").is_symlink()
    assert (store / "x.csv").read_bytes() == b"new data"


def test_copy_keeps_the_modification_time(tmp_path):
    src = make_tree(tmp_path / "src", {"old.csv": "from last year"})["old.csv"]
    mtime_ns = set_mtime(src, 365 * 24 * 3600)
    store = tmp_path / "store"

    LocalConnector(store).put(src, "sub/old.csv")

    assert os.stat(store / "sub" / "old.csv").st_mtime_ns == mtime_ns


def test_copy_leaves_no_temporary_file(tmp_path):
    src = make_tree(tmp_path / "src", {"a.csv": "a"})["a.csv"]
    store = tmp_path / "store"

    LocalConnector(store).put(src, "a/b/a.csv")

    assert tree_files(store) == {"a/b/a.csv": b"a"}


# -- checking folders -------------------------------------------------------------------


def test_prepare_creates_a_missing_destination(tmp_path):
    dest = tmp_path / "new" / "dest"

    LocalConnector(dest).prepare()

    assert dest.is_dir()
    assert list(dest.iterdir()) == []


def test_a_destination_folder_gone_during_a_run_stops_it_and_is_not_made_again(tmp_path):
    from oeleo.errors import ConnectorError

    src = make_tree(tmp_path / "src", {"a.csv": "a", "b.csv": "b"})
    share = tmp_path / "share"
    share.mkdir()
    store = LocalConnector(share / "raw")
    store.prepare()
    store.put(src["a.csv"], "a.csv")
    (share / "raw" / "a.csv").unlink()
    (share / "raw").rmdir()
    share.rmdir()  # unmounted

    with pytest.raises(ConnectorError, match="does not exist any more"):
        store.put(src["b.csv"], "sub/b.csv")

    assert not share.exists()


def test_prepare_on_a_destination_under_a_file_raises_config_error_naming_it(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    dest = tmp_path / "a-file" / "dest"

    with pytest.raises(ConfigError, match=re.escape(str(dest))):
        LocalConnector(dest).prepare()


def test_prepare_on_a_file_in_place_of_the_folder_raises_config_error_naming_it(tmp_path):
    dest = tmp_path / "dest"
    dest.write_text("a file, not a folder")

    with pytest.raises(ConfigError, match=re.escape(str(dest))):
        LocalConnector(dest).prepare()


@pytest.mark.parametrize("dest", ["/proc/self", "/sys", "/proc/oeleo-no-such/dest"])
def test_prepare_on_an_unwritable_destination_raises_config_error_naming_it(dest):
    with pytest.raises(ConfigError, match=re.escape(dest)):
        LocalConnector(dest).prepare()


def test_check_source_on_a_missing_folder_raises_config_error_naming_it(tmp_path):
    missing = tmp_path / "instrument" / "data"

    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        LocalConnector(missing).check_source()


def test_check_source_on_a_file_raises_config_error_naming_it(tmp_path):
    source = tmp_path / "data.csv"
    source.write_text("x")

    with pytest.raises(ConfigError, match=re.escape(str(source))):
        LocalConnector(source).check_source()


def test_local_connector_without_a_folder_is_a_config_error(monkeypatch):
    monkeypatch.delenv("OELEO_BASE_DIR_FROM", raising=False)

    with pytest.raises(ConfigError, match="OELEO_BASE_DIR_FROM"):
        LocalConnector()


def test_path_of_a_relative_name_is_inside_the_folder(tmp_path):
    conn = LocalConnector(tmp_path)

    assert conn.path("a/b.csv") == Path(tmp_path) / "a" / "b.csv"
    # a backslash separates folders on Windows only; on POSIX it is part of the name
    windows = Path(tmp_path) / "a" / "b.csv"
    assert conn.path("a\\b.csv") == (windows if os.name == "nt" else Path(tmp_path) / "a\\b.csv")
    with pytest.raises(UnsafePathError):
        conn.path("../b.csv")


# -- verification and durability of a copy ---------------------------------------------


def _hash_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "oeleo-hash"]


def test_a_copy_damaged_on_the_way_to_the_disk_is_caught_by_the_read_back(tmp_path, monkeypatch):
    # Each chunk is read back as soon as it is written and compared with the bytes that were
    # hashed: a byte that reaches the file other than it was sent fails the copy, and names
    # where.
    src = make_tree(tmp_path / "src", {"a.res": "x" * 5000})["a.res"]
    store = LocalConnector(tmp_path / "store")
    real_write = os.write

    def write_damaged(fd, data):
        data = bytes(data)
        if len(data) > 1234:
            data = data[:1234] + b"y" + data[1235:]
        return real_write(fd, data)

    monkeypatch.setattr(local_module.os, "write", write_damaged)
    with pytest.raises(VerificationError, match="a.res: the copy differs from the source at byte 1234"):
        store.put(src, "a.res")
    monkeypatch.undo()

    assert tree_files(tmp_path / "store") == {}


def test_a_copy_cut_short_on_the_disk_is_caught_by_the_read_back(tmp_path, monkeypatch):
    src = make_tree(tmp_path / "src", {"a.res": "x" * 5000})["a.res"]
    store = LocalConnector(tmp_path / "store")
    real_read_at = local_module._read_at
    monkeypatch.setattr(local_module, "_read_at", lambda fd, offset, n: real_read_at(fd, offset, n)[:-10])

    with pytest.raises(VerificationError, match="holds 4990 bytes where 5000 were written"):
        store.put(src, "a.res")
    assert tree_files(tmp_path / "store") == {}


def test_a_subclass_writing_its_own_way_is_verified_by_hashing_its_copy(tmp_path):
    # Without the comparison as it writes (its own write_stream), the copy is read back and
    # hashed with the books' algorithm: damage between the source and the store is caught.
    src = make_tree(tmp_path / "src", {"a.res": "x" * 5000})["a.res"]

    class Damaging(LocalConnector):
        def write_stream(self, relpath, chunks, size):
            damaged = (chunk[:1234] + b"y" + chunk[1235:] for chunk in chunks)
            super().write_stream(relpath, damaged, size)

    store = Damaging(tmp_path / "store")
    with pytest.raises(VerificationError, match="md5 of the copy"):
        store.put(src, "a.res")
    assert tree_files(tmp_path / "store") == {}

    class Plain(LocalConnector):
        def write_stream(self, relpath, chunks, size):
            super().write_stream(relpath, chunks, size)

    result = Plain(tmp_path / "plain").put(src, "a.res")
    assert result.verified
    assert (tmp_path / "plain" / "a.res").read_text() == "x" * 5000


def test_a_large_copy_is_hashed_whole_while_copied(tmp_path):
    src = tmp_path / "big.res"
    src.write_bytes(os.urandom(HASH_THREAD_MIN_SIZE + 12345))
    store = LocalConnector(tmp_path / "store")

    result = store.put(src, "big.res")

    data = src.read_bytes()
    assert result.checksum == hashlib.md5(data).hexdigest()
    assert (tmp_path / "store" / "big.res").read_bytes() == data
    assert _hash_threads() == []


def test_a_large_file_that_changes_while_copied_leaves_nothing_and_no_thread(tmp_path):
    src = tmp_path / "big.res"
    src.write_bytes(os.urandom(HASH_THREAD_MIN_SIZE + 1))
    store = LocalConnector(tmp_path / "store")
    seen = []

    def grow_once(n):
        seen.append(n)
        if len(seen) == 2:
            with open(src, "ab") as handle:
                handle.write(b"more")

    with pytest.raises(FileChangedError):
        store.put(src, "big.res", progress=grow_once)

    assert tree_files(tmp_path / "store") == {}
    assert _hash_threads() == []


def test_a_stop_during_a_large_copy_leaves_no_thread(tmp_path):
    src = tmp_path / "big.res"
    src.write_bytes(os.urandom(HASH_THREAD_MIN_SIZE * 2))
    chunks = []

    with pytest.raises(Aborted):
        LocalConnector(tmp_path / "store").put(
            src, "big.res", progress=chunks.append, should_stop=lambda: len(chunks) >= 3
        )

    assert tree_files(tmp_path / "store") == {}
    assert _hash_threads() == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="syncfs is Linux's")
def test_a_batch_is_made_durable_with_one_syncfs_per_filesystem(tmp_path, monkeypatch):
    store = LocalConnector(tmp_path / "store")
    sources = make_tree(tmp_path / "src", {f"d{i}/f{j}.csv": f"{i}{j}" for i in range(3) for j in range(4)})
    staged = [store.stage(path, rel) for rel, path in sources.items()]
    fsyncs, syncfs_calls = [], []
    monkeypatch.setattr(local_module.os, "fsync", lambda fd: fsyncs.append(fd))
    real_syncfs = local_module._syncfs

    def counting(folders):
        folders = set(folders)
        syncfs_calls.append(folders)
        return real_syncfs(folders)

    monkeypatch.setattr(local_module, "_syncfs", counting)

    store.sync_data(staged)
    committed = [store.commit(s) for s in staged]
    store.sync_names(committed)

    assert len(syncfs_calls) == 2 and fsyncs == []
    assert {os.path.basename(f) for f in syncfs_calls[0]} == {"d0", "d1", "d2"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names open files through /proc")
def test_without_syncfs_each_file_and_folder_is_fsynced(tmp_path, monkeypatch):
    store = LocalConnector(tmp_path / "store")
    sources = make_tree(tmp_path / "src", {f"d{i}/f{j}.csv": f"{i}{j}" for i in range(3) for j in range(4)})
    staged = [store.stage(path, rel) for rel, path in sources.items()]
    fsynced = []
    real_fsync = os.fsync
    monkeypatch.setattr(local_module, "_libc", lambda name: False)
    monkeypatch.setattr(
        local_module.os,
        "fsync",
        lambda fd: (fsynced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)),
    )

    store.sync_data(staged)
    committed = [store.commit(s) for s in staged]
    store.sync_names(committed)

    staged_names = {str(tmp_path / "store" / s.staging) for s in staged}
    assert staged_names <= set(fsynced)
    assert {str(tmp_path / "store" / f"d{i}") for i in range(3)} <= set(fsynced)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a/b.csv", "a/b.csv"),
        (".hidden/x.csv", ".hidden/x.csv"),
        ("..x/y", "..x/y"),
        (".../y", ".../y"),
        ("a./b", "a./b"),
        ("file.", "file."),
        ("a\\b.csv", "a/b.csv" if os.name == "nt" else "a\\b.csv"),
        ("a//b.csv", "a/b.csv"),
        ("./a/./b.csv", "a/b.csv"),
        ("a/b/", "a/b"),
    ],
)
def test_relative_names_are_normalised(name, expected):
    assert safe_relpath(name) == expected


@pytest.mark.parametrize(
    "name", ["..", ".", "a/..", "a/../../b", "../b", "/b", "C:b", "C:\\b", "", "a/../.."]
)
def test_names_leaving_the_folder_are_refused(name):
    with pytest.raises(UnsafePathError):
        safe_relpath(name)


def test_a_commit_refused_by_the_destination_names_the_real_name_not_the_temporary_one(tmp_path):
    """The reason a person reads (books, monitor, log) names the file they know."""
    from oeleo.connectors.base import Failed

    make_tree(tmp_path / "src", {"run-001/b.csv": "1,2\n"})
    (tmp_path / "dst" / "run-001" / "b.csv").mkdir(parents=True)  # a folder where the copy goes
    dst = LocalConnector(tmp_path / "dst")
    dst.connect()
    staged = dst.stage(tmp_path / "src" / "run-001" / "b.csv", "run-001/b.csv")
    (result,) = dst.commit_many([staged])
    assert isinstance(result, Failed)
    assert "run-001/b.csv)" in result.reason and ".oeleo-part" not in result.reason, result.reason
    assert (tmp_path / "dst" / "run-001" / "b.csv").is_dir()  # the previous content untouched
    assert not [p for p in (tmp_path / "dst" / "run-001").iterdir() if p.name.endswith(".oeleo-part")]


def test_a_file_in_the_way_of_a_folder_is_named_not_the_temporary_name(tmp_path):
    from helpers import run_oeleo

    make_tree(tmp_path / "src", {"sub/x.csv": b"a", "a/b/z.csv": b"c", "y.csv": b"b"})
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "sub").write_bytes(b"blocker")
    (tmp_path / "dst" / "a").write_bytes(b"blocker")
    result = run_oeleo("run", "--from", "src", "--to", "dst", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert f"failed sub/x.csv: a file is in the way of a folder: {Path('dst', 'sub')}" in lines
    assert f"failed a/b/z.csv: a file is in the way of a folder: {Path('dst', 'a')}" in lines
    assert "oeleo-part" not in result.stderr
    assert (tmp_path / "dst" / "sub").read_bytes() == b"blocker"  # nothing replaced
    assert (tmp_path / "dst" / "y.csv").read_bytes() == b"b"
