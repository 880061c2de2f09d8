"""Deciding what to do with a file is a pure function: plain values in, an action out."""

from __future__ import annotations

import pytest

from oeleo.connectors.base import FileEntry
from oeleo.models import Record
from oeleo.plan import Action, PlanOptions, decide

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
