"""What the source listing copies, skips and refuses: symbolic links (skipped with a notice
unless OELEO_FOLLOW_LINKS), and destinations that overlap the source."""

from __future__ import annotations

import os

import pytest
from helpers import db_rows, make_tree, run_oeleo, tree_files

posix_only = pytest.mark.skipif(os.name == "nt", reason="symbolic links need privileges on Windows")


@pytest.fixture
def linked(tmp_path):
    """A source with a real file, and links: to a file outside, to a folder outside, a
    dangling one, and a loop back to the source itself."""
    outside = tmp_path / "outside"
    make_tree(outside, {"target.csv": "outside\n", "folder/inner.csv": "inner\n"})
    src = tmp_path / "src"
    make_tree(src, {"real.csv": "real\n", "sub/deep.csv": "deep\n"})
    (src / "to-file.csv").symlink_to(outside / "target.csv")
    (src / "to-folder").symlink_to(outside / "folder")
    (src / "dangling.csv").symlink_to(tmp_path / "nothing.csv")
    (src / "sub" / "loop").symlink_to(src)
    return src


@posix_only
def test_links_are_skipped_by_default_and_each_one_is_reported(tmp_path, linked):
    dst, db = tmp_path / "dst", tmp_path / "books.db"

    done = run_oeleo("run", "--from", str(linked), "--to", str(dst), "--db", str(db), cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert tree_files(dst) == {"real.csv": b"real\n", "sub/deep.csv": b"deep\n"}
    assert set(db_rows(db)) == {"real.csv", "sub/deep.csv"}
    assert "4 skipped" in done.stderr
    for name in ("to-file.csv", "to-folder/", "dangling.csv", "sub/loop/"):
        assert f"skipped {name}: a symbolic link" in done.stderr
    assert "OELEO_FOLLOW_LINKS=true" in done.stderr


@posix_only
def test_a_scheduler_says_each_skipped_link_once_not_at_every_pass(tmp_path, linked):
    dst, db = tmp_path / "dst", tmp_path / "books.db"
    args = ["schedule", "--from", str(linked), "--to", str(dst), "--db", str(db)]

    done = run_oeleo(*args, "--every", "0.05", "--max-runs", "3", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stderr.count("skipped dangling.csv: a symbolic link") == 1, done.stderr
    assert done.stderr.count("4 skipped") == 3, done.stderr  # each pass still counts them


@posix_only
def test_with_follow_links_what_links_point_to_is_copied_and_loops_are_not_walked(tmp_path, linked):
    dst, db = tmp_path / "dst", tmp_path / "books.db"

    done = run_oeleo(
        "run",
        "--from",
        str(linked),
        "--to",
        str(dst),
        "--db",
        str(db),
        cwd=tmp_path,
        env={"OELEO_FOLLOW_LINKS": "true"},
    )

    assert done.returncode == 0, done.stderr
    assert tree_files(dst) == {
        "real.csv": b"real\n",
        "sub/deep.csv": b"deep\n",
        "to-file.csv": b"outside\n",
        "to-folder/inner.csv": b"inner\n",
    }
    assert not any(p.is_symlink() for p in dst.rglob("*"))  # copies, not links
    assert "skipped dangling.csv: a symbolic link pointing to nothing" in done.stderr
    assert "skipped sub/loop/: a symbolic link to" in done.stderr and "(a loop)" in done.stderr
    assert "2 skipped" in done.stderr


@pytest.mark.parametrize("where", ["inside", "same", "same-dotted", "around"])
def test_a_destination_overlapping_the_source_is_refused(tmp_path, where):
    src = tmp_path / "src"
    make_tree(src, {"a.csv": "a\n", "run-1/b.csv": "b\n"})
    to = {
        "inside": "src/backup",
        "same": "src",
        "same-dotted": "./src/",
        "around": ".",
    }[where]
    before = tree_files(tmp_path)

    done = run_oeleo("run", "--from", "src", "--to", to, "--db", "books.db", cwd=tmp_path)

    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert "source folder" in line and "OELEO_BASE_DIR_TO" in line
    assert tree_files(tmp_path) == before  # nothing copied, no books made


def test_a_flat_listing_is_filtered_as_a_folder_walk_is():
    """Object stores (S3, SharePoint) list keys, not folders: an exclude that names a folder
    still drops the files under it, as the walk of a folder prunes it."""
    from oeleo.connectors.base import kept_by_filters

    assert kept_by_filters("run 1/a.csv", [".csv"], [], [])
    assert not kept_by_filters("run 1/a.res", [".csv"], [], [])
    assert not kept_by_filters("run 1/a.csv", [], [], ["run 1"])  # the folder's name
    assert not kept_by_filters("x/run 1/a.csv", [], [], ["x/run*"])  # a path pattern of a folder
    assert kept_by_filters("x/run 1/a.csv", [], [], ["y"])
    assert not kept_by_filters("a.csv", [], ["*.res"], [])
    assert kept_by_filters("b/a.res", [], ["*.res"], [])
