"""Comparing the two sides (``oeleo check``): each local file against the store, by size and
then by checksum, computed where the store can (one request for many files)."""

from __future__ import annotations

import functools
from typing import Callable, Iterator, List, Sequence, Tuple

from oeleo.checkers import hash_file, new_hash
from oeleo.compress import file_chunks, gzip_digest, stored_name
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
    compress: str = "",
    deep: bool = False,
) -> CheckReport:
    """Fill ``report`` with how each of ``entries`` compares with ``external``; with
    ``update_db``, book identical files as copied and the others as to be copied. A stop
    asked meanwhile (SIGTERM, Ctrl-C) raises ``Aborted`` between two files.

    A file stored compressed (``compress``: ``NAME.gz``) is compared in that form: the local
    file is compressed again (the output is deterministic) and its size and hash compared
    with the store's, without downloading anything."""
    records = bookkeeper.load()
    # A store whose checksum() downloads the copy (SharePoint) is compared by the size it
    # lists and the checksum the books hold; ``deep`` (``oeleo check --deep``) downloads.
    by_size = external.features.checksum_downloads and not deep
    # (entry, stored name, digest to compare with the store's, digest for the books)
    same_size: List[Tuple[FileEntry, str, str, str]] = []

    def to_copy(bucket: List[str], relpath: str) -> None:
        bucket.append(relpath)
        if update_db:
            bookkeeper.record_code(relpath, SHOULD_BE_COPIED)

    # What the store holds of them, asked at once where it can (an S3 listing, not a HEAD
    # per file); a name it left out is asked alone below, which says why it failed.
    locked = {name for name, row in records.items() if row.code == SHOULD_NOT_BE_COPIED}
    asked = [stored_name(e.relpath, compress) for e in entries if e.relpath not in locked]
    # Only a store that answers for many files at once: the default asks stat() for each,
    # which the loop below does anyway, between two checks of a stop asked meanwhile.
    batched = type(external).stats is not Connector.stats
    try:
        stats = external.stats(asked) if asked and batched else {}
    except Exception:  # noqa: BLE001 - each file is asked alone below, and its error reported
        stats = {}
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
                name = stored_name(entry.relpath, compress)
                remote = stats[name] if name in stats else external.stat(name)
                if remote is None:
                    to_copy(report.missing, entry.relpath)
                    continue
                path = local.path(entry.relpath)
                progress = functools.partial(reporter.file_progress, entry.relpath)
                if name != entry.relpath:
                    hashed = True
                    digest, packed, packed_size = source_and_gzip_digests(str(path), algorithm, progress)
                    if remote.size != packed_size:
                        to_copy(report.different, entry.relpath)
                    elif by_size:
                        booked = record is not None and record.checksum == digest
                        (report.same if booked else report.different).append(entry.relpath)
                    else:
                        same_size.append((entry, name, packed, digest))
                    continue
                if remote.size != entry.size:
                    to_copy(report.different, entry.relpath)
                    continue
                hashed = True
                digest = hash_file(path, algorithm, progress=progress)
                if by_size:
                    booked = record is not None and record.checksum == digest
                    if booked:
                        report.same.append(entry.relpath)
                    else:
                        to_copy(report.different, entry.relpath)
                    continue
                same_size.append((entry, name, digest, digest))
            except (OeleoError, OSError) as exc:
                report.errors.append((entry.relpath, str(exc)))
            except Exception as exc:  # noqa: BLE001 - a store's own error (a connector of one's own): this file is reported, the check goes on
                report.errors.append((entry.relpath, f"{type(exc).__name__}: {exc}"))
            finally:
                if not hashed:
                    reporter.advance(entry.size)
    finally:
        reporter.check_finished()
    # All stored checksums at once: one request for many files where the store can.
    try:
        stored = external.checksums([name for _, name, _, _ in same_size], algorithm)
    except (OeleoError, OSError):
        stored = {}
    for entry, name, wanted, digest in same_size:
        try:
            # A file left out of the batch is asked for alone, which says why it failed.
            remote_digest = stored.get(name) or external.checksum(name, algorithm)
        except (OeleoError, OSError) as exc:
            report.errors.append((entry.relpath, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - a store's own error: this file is reported
            report.errors.append((entry.relpath, f"{type(exc).__name__}: {exc}"))
            continue
        if str(remote_digest).lower() == wanted:  # a store's digest in capitals is the same one
            report.same.append(entry.relpath)
            if update_db:
                bookkeeper.record_copied(
                    entry.relpath,
                    external.external_name(name),
                    digest,
                    entry.size,
                    entry.mtime_ns,
                )
        else:
            to_copy(report.different, entry.relpath)
    if update_db:
        bookkeeper.flush()
    return report


def source_and_gzip_digests(
    path: str, algorithm: str, progress: Callable[[int], None]
) -> Tuple[str, str, int]:
    """The books' digest of a local file and the digest and size of its gzip form (what the
    store holds when it is sent compressed), from one read of the file."""
    source = new_hash(algorithm)

    def chunks() -> Iterator[bytes]:
        for chunk in file_chunks(path):
            source.update(chunk)
            progress(len(chunk))
            yield chunk

    packed, packed_size = gzip_digest(chunks(), algorithm)
    return source.hexdigest(), packed, packed_size
