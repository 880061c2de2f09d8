"""Deciding what to do with a file is a pure function: plain values in, an action out."""

from __future__ import annotations

from typing import List

import pytest

from oeleo.connectors.base import FileEntry, Skipped
from oeleo.models import Record
from oeleo.plan import CLASH, Action, PlanOptions, decide, same_place, without_name_clashes

NOW = 2_000_000_000 * 10**9
FILE = FileEntry("a.csv", 10, NOW - 60 * 10**9)  # written a minute ago


def row(code: int, size=10, mtime_ns=FILE.mtime_ns, checksum="x") -> Record:
    return Record("a.csv", checksum, code, size, mtime_ns)


@pytest.mark.parametrize(
    "record, options, action",
    [
        (None, PlanOptions(), Action.COPY),
        (row(0), PlanOptions(), Action.COPY),
        (row(1), PlanOptions(), Action.UNCHANGED),
        (row(1, size=11), PlanOptions(), Action.COPY),
        (row(1, mtime_ns=1), PlanOptions(), Action.COPY),
        (row(1), PlanOptions(force=True), Action.COPY),
        (row(1, size=None, mtime_ns=None), PlanOptions(), Action.HASH_FIRST),
        (row(2, size=11), PlanOptions(force=True), Action.LOCKED),
        (row(2, size=11), PlanOptions(include_locked=True), Action.COPY),
        (row(2), PlanOptions(include_locked=True), Action.UNCHANGED),
        (None, PlanOptions(min_age=120), Action.TOO_YOUNG),
        (None, PlanOptions(min_age=30), Action.COPY),
        (row(1, checksum=None), PlanOptions(), Action.UNCHANGED),  # seen, not replaced
    ],
)
def test_decide(record, options, action):
    assert decide(FILE, record, options, NOW) is action


@pytest.mark.parametrize(
    "booked, now, same",
    [
        ("/srv/raw/a.csv", "/srv/raw/a.csv", True),
        ("/srv/raw/a.csv", "/srv/other/a.csv", False),
        ("/home/u/raw/a.csv", "~/raw/a.csv", True),  # ~ before the server said where it is
        ("/home/u/raw/a.csv", "~/other/a.csv", False),
        ("dst/a.csv", "/work/dst/a.csv", True),  # booked relative by an older version
        ("s3://b/p/a.csv", "s3://b/q/a.csv", False),
        ("C:\\data\\a.csv", "C:/data/a.csv", True),
    ],
)  # fmt: skip
def test_the_books_place_and_the_destination_are_compared_as_paths(booked, now, same):
    assert same_place(booked, now) is same


def entries(*names: str) -> List[FileEntry]:
    return [FileEntry(name, 1, 1) for name in names]


def test_a_compressed_name_taken_by_another_file_fails_both_and_copies_neither():
    skipped: List[Skipped] = []
    kept = without_name_clashes(entries("a.fits", "a.fits.gz", "b.fits", "c.fits.gz"), "gzip", skipped)
    assert [e.relpath for e in kept] == ["b.fits", "c.fits.gz"]
    assert sorted(s.relpath for s in skipped) == ["a.fits", "a.fits.gz"]
    assert all(s.failed and s.book and s.reason.startswith(CLASH) for s in skipped)


def test_a_clash_with_a_file_not_listed_is_found_by_asking():
    skipped: List[Skipped] = []
    on_disk = {"a.fits"}
    kept = without_name_clashes(entries("a.fits.gz"), "gzip", skipped, elsewhere=on_disk.__contains__)
    assert kept == [] and sorted(s.relpath for s in skipped) == ["a.fits", "a.fits.gz"]
