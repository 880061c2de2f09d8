"""Deciding what to do with one file: a pure function of the file as listed, its row in the
books and the options of the run; which files a compressed name would put in one place; and
whether a copy booked is where the destination names it. No files are read and nothing is
written here, so a test can call these with plain values."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from oeleo.compress import SUFFIX, stored_name
from oeleo.connectors.base import FileEntry, Skipped
from oeleo.models import SHOULD_BE_COPIED, SHOULD_NOT_BE_COPIED, Record
from oeleo.names import printable


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


# How the booked reason of a file in a name clash starts (cleared once the clash is gone).
CLASH = "name clash: "


def without_name_clashes(
    entries: List[FileEntry],
    compress: str,
    skipped: List[Skipped],
    elsewhere: Optional[Callable[[str], bool]] = None,
) -> List[FileEntry]:
    """The files whose stored name no other source file would take: ``m31.fits`` compressed
    and ``m31.fits.gz`` as it is would both be stored as ``m31.fits.gz``. Both fail, named,
    and neither is copied until one is renamed: either copy would replace the other's (a
    verified copy of the other file may be there already). ``elsewhere(relpath)``: whether a
    file not among ``entries`` is in the source folder (a pass over some files only, such as
    a watcher's); None when ``entries`` is the whole listing. Folders on Windows do not tell
    case apart: neither do the names here."""

    def key(name: str) -> str:
        return name.casefold() if os.name == "nt" else name

    names = {key(entry.relpath): entry.relpath for entry in entries}

    def there(relpath: str) -> Optional[str]:
        known = names.get(key(relpath))
        if known is None and elsewhere is not None and elsewhere(relpath):
            return relpath
        return known

    clashing: Dict[str, str] = {}  # relpath -> why it is not copied
    plain: Optional[str]
    gz: Optional[str]
    for entry in entries:
        relpath = entry.relpath
        target = stored_name(relpath, compress)
        if target != relpath:  # compressed: is a file of its stored name there too?
            plain, gz = relpath, there(target)
        elif key(relpath).endswith(key(SUFFIX)):  # as it is: is a file there stored so?
            candidate = relpath[: -len(SUFFIX)]
            stored = stored_name(candidate, compress)
            plain = there(candidate) if key(stored) == key(relpath) else None
            gz, target = relpath, relpath
        else:
            continue
        if plain is None or gz is None:
            continue
        clashing[plain] = (
            f"{CLASH}compressed it would be stored as {printable(target)}, the name of another file "
            "in the source folder; neither is copied until one of them is renamed (or OELEO_COMPRESS "
            "is left empty)"
        )
        clashing[gz] = (
            f"{CLASH}{printable(plain)}, compressed, would be stored under this name too; "
            "neither is copied until one of them is renamed (or OELEO_COMPRESS is left empty)"
        )
    if not clashing:
        return entries
    for relpath in sorted(clashing):
        skipped.append(Skipped(relpath, clashing[relpath], failed=True, book=True))
    return [entry for entry in entries if entry.relpath not in clashing]


def same_place(booked: str, now: str) -> bool:
    """Whether a copy booked as ``booked`` is where the destination now names it (``now``):
    the same text, or, where one side is relative (``~/raw/a.csv`` before the server said
    where ``~`` is; a path booked relative), the other ends with it."""
    booked, now = booked.replace("\\", "/"), now.replace("\\", "/")
    if booked == now:
        return True

    def relative(name: str) -> Optional[str]:
        if name.startswith("/") or "://" in name or (len(name) > 1 and name[1] == ":"):
            return None  # absolute, a URL, a drive
        for start in ("~/", "./"):
            if name.startswith(start):
                name = name[len(start) :]
        return name

    for one, other in ((now, booked), (booked, now)):
        tail = relative(one)
        if tail is not None and (other == tail or other.endswith("/" + tail)):
            return True
    return False
