"""Deciding what to do with one file: a pure function of the file as listed, its row in the
books and the options of the run. No files are read and nothing is written here, so a test
can call it with plain values."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

from oeleo.connectors.base import FileEntry
from oeleo.models import SHOULD_BE_COPIED, SHOULD_NOT_BE_COPIED, Record


class Action(enum.Enum):
    COPY = "copy"
    HASH_FIRST = "hash"  # an oeleo 0.7 row (a checksum, no size or time): compare checksums first
    UNCHANGED = "unchanged"
    LOCKED = "locked"
    TOO_YOUNG = "too_young"


@dataclass(frozen=True)
class PlanOptions:
    """The settings that decide: ``--force``, ``--include-locked``, ``OELEO_MIN_AGE``."""

    force: bool = False
    include_locked: bool = False
    min_age: float = 0.0


def decide(entry: FileEntry, record: Optional[Record], options: PlanOptions, now_ns: int) -> Action:
    """What to do with ``entry``, given its row (``None``: never booked).

    A locked file (code 2) is never copied, unless ``include_locked`` (then as code 1). A file
    younger than ``min_age`` waits. Code 0, no row, or ``force``: copy. Code 1: copy when the
    size or modification time differs from the row's.
    """
    locked = record is not None and record.code == SHOULD_NOT_BE_COPIED
    if locked and not options.include_locked:
        return Action.LOCKED
    if options.min_age and now_ns - entry.mtime_ns < options.min_age * 1e9:
        return Action.TOO_YOUNG
    if record is None or options.force or record.code == SHOULD_BE_COPIED:
        return Action.COPY
    # From here: code 1, or a locked file with include_locked: copied when it changed.
    if record.size is None or record.mtime_ns is None:
        return Action.HASH_FIRST
    if record.size == entry.size and record.mtime_ns == entry.mtime_ns:
        return Action.UNCHANGED
    return Action.COPY
