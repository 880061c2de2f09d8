"""Comparing the two sides (``oeleo check``): each local file against the store, by size and
then by checksum, computed where the store can (one request for many files)."""

from __future__ import annotations

import functools
from typing import Callable, List, Sequence, Tuple

from oeleo.checkers import hash_file
from oeleo.connectors.base import Connector, FileEntry
from oeleo.connectors.local import LocalConnector
from oeleo.errors import Aborted, OeleoError
from oeleo.models import SHOULD_BE_COPIED, SHOULD_NOT_BE_COPIED, Bookkeeper
from oeleo.reporters import Reporter
from oeleo.summary import CheckReport


def compare(
    entries: Sequence[FileEntry],
    local: LocalConnector,
    external: Connector,
    bookkeeper: Bookkeeper,
    reporter: Reporter,
    algorithm: str,
    update_db: bool,
    report: CheckReport,
    should_stop: Callable[[], bool] = lambda: False,
) -> CheckReport:
    """Fill ``report`` with how each of ``entries`` compares with ``external``; with
    ``update_db``, book identical files as copied and the others as to be copied. A stop
    asked meanwhile (SIGTERM, Ctrl-C) raises ``Aborted`` between two files."""
    records = bookkeeper.load()
    same_size: List[Tuple[FileEntry, str]] = []  # (entry, local digest): compare checksums

    def to_copy(bucket: List[str], relpath: str) -> None:
        bucket.append(relpath)
        if update_db:
            bookkeeper.record_code(relpath, SHOULD_BE_COPIED)

    # Progress: the bytes of each file as it is hashed, the others' at once (not hashed).
    reporter.check_started(len(entries), sum(e.size for e in entries))
    try:
        for entry in entries:
            if should_stop():
                raise Aborted("stopped on request")
            reporter.file_started(entry.relpath, entry.size)
            record = records.get(entry.relpath)
            hashed = False
            try:
                if record is not None and record.code == SHOULD_NOT_BE_COPIED:
                    report.locked.append(entry.relpath)
                    continue
                remote = external.stat(entry.relpath)
                if remote is None:
                    to_copy(report.missing, entry.relpath)
                    continue
                if remote.size != entry.size:
                    to_copy(report.different, entry.relpath)
                    continue
                path = local.path(entry.relpath)
                hashed = True
                progress = functools.partial(reporter.file_progress, entry.relpath)
                same_size.append((entry, hash_file(path, algorithm, progress=progress)))
            except (OeleoError, OSError) as exc:
                report.errors.append((entry.relpath, str(exc)))
            finally:
                if not hashed:
                    reporter.advance(entry.size)
    finally:
        reporter.check_finished()
    # All stored checksums at once: one request for many files where the store can.
    try:
        stored = external.checksums([e.relpath for e, _ in same_size], algorithm)
    except (OeleoError, OSError):
        stored = {}
    for entry, digest in same_size:
        try:
            # A file left out of the batch is asked for alone, which says why it failed.
            remote_digest = stored.get(entry.relpath) or external.checksum(entry.relpath, algorithm)
        except (OeleoError, OSError) as exc:
            report.errors.append((entry.relpath, str(exc)))
            continue
        if remote_digest == digest:
            report.same.append(entry.relpath)
            if update_db:
                bookkeeper.record_copied(
                    entry.relpath,
                    external.external_name(entry.relpath),
                    digest,
                    entry.size,
                    entry.mtime_ns,
                )
        else:
            to_copy(report.different, entry.relpath)
    if update_db:
        bookkeeper.flush()
    return report
