"""A checksum manifest at the destination (``OELEO_MANIFEST=sha256`` or ``md5``): one
``MANIFEST.sha256`` (``MANIFEST.md5``) per destination folder, in the format ``sha256sum -c``
reads, listing every file oeleo has copied into that folder (from the books), so that the
provenance outlives oeleo's own books.

Written once per pass, after the pass's copies are booked, for each folder that got a copy
(or that holds oeleo's copies and no manifest yet), through the connector's own upload path
(``put`` of a local temporary file): a temporary name and a rename on folder stores, one
object per prefix on S3. A line is written only for a file the destination's listing shows;
its hash is of the bytes stored: the books' checksum when it is that (same algorithm, not
compressed, same size), else the one the store computes (``checksums``: ``sha256sum`` over SSH,
S3's metadata, or the copy read back). A manifest that cannot be written is one line, a failure
of the pass (exit 1); the pass's copies stay booked.
"""

from __future__ import annotations

import logging
import os
import posixpath
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from oeleo.connectors.base import FileEntry
from oeleo.errors import BookkeeperError, OeleoError
from oeleo.names import from_books, printable, printable_text
from oeleo.summary import RunSummary
from oeleo.units import counted

if TYPE_CHECKING:
    from oeleo.worker import Worker

log = logging.getLogger("oeleo")

ALGORITHMS = ("sha256", "md5")
NAMES = tuple(f"MANIFEST.{algorithm}" for algorithm in ALGORITHMS)


def manifest_name(algorithm: str) -> str:
    """``MANIFEST.sha256`` for ``sha256``, ``MANIFEST.md5`` for ``md5``."""
    return f"MANIFEST.{algorithm}"


def is_manifest(relpath: str) -> bool:
    """Whether ``relpath`` names a manifest (never copied, listed or counted as a file)."""
    return posixpath.basename(relpath) in NAMES


def manifest_line(digest: str, name: str) -> bytes:
    """One line as ``sha256sum`` writes it (and ``sha256sum -c`` reads it): a name holding a
    backslash, a newline or a carriage return is escaped and the line starts with ``\\``."""
    escaped = name
    prefix = ""
    if any(c in name for c in "\\\n\r"):
        escaped = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        prefix = "\\"
    return f"{prefix}{digest}  {escaped}\n".encode("utf-8", "surrogateescape")


class _Copy:
    __slots__ = ("stored", "checksum", "size", "compressed", "this_pass", "booked_ns")

    def __init__(
        self,
        stored: str,
        checksum: str,
        size: Optional[int],
        compressed: bool,
        this_pass: bool,
        booked_ns: int,
    ) -> None:
        self.stored = stored
        self.checksum = checksum  # of the source's bytes, with the books' algorithm
        self.size = size  # the source's size
        self.compressed = compressed  # stored as NAME.gz: other bytes than the source's
        self.this_pass = this_pass  # booked by this pass
        self.booked_ns = booked_ns  # when it was booked (this computer's clock)


def _booked_copies(worker: Worker) -> List[_Copy]:
    """The copies the books hold for this origin and this destination, each with its name in
    the store (``NAME`` or ``NAME.gz``: the one whose external name the row has)."""
    bookkeeper = worker.bookkeeper
    connector = worker.external_connector
    runs = bookkeeper.last_runs(1)
    since = runs[0].started if runs else None  # this pass's run row (start_run made it)
    copies = []
    for row in bookkeeper.rows():
        if not row.checksum or not row.external_name:
            continue
        local = from_books(row.local_name)
        external = from_books(row.external_name)
        for stored in (local, local + ".gz"):
            if connector.external_name(stored) == external:
                if not is_manifest(stored):
                    this_pass = since is not None and row.processed_date >= since
                    booked_ns = int(row.processed_date.timestamp() * 1e9)
                    copies.append(
                        _Copy(stored, row.checksum, row.size, stored != local, this_pass, booked_ns)
                    )
                break
    return copies


def write_manifests(worker: Worker, summary: RunSummary) -> None:
    """After a pass: (re)write the manifest of each destination folder that got a copy, or
    that holds oeleo's copies and no manifest yet. Never raises for a folder: a manifest that
    cannot be written is counted as a failure of the pass, with one line."""
    algorithm = getattr(worker, "manifest", "")
    if not algorithm or summary.dry_run or summary.fatal or summary.books_error:
        return
    connector = worker.external_connector
    name = manifest_name(algorithm)
    if not connector.features.overwrite:
        log.warning("no %s: %s cannot replace a file it holds", name, connector)
        return
    try:
        copies = _booked_copies(worker)
        if not copies:
            return
        listed: Dict[str, FileEntry] = {e.relpath: e for e in connector.list_files(recursive=True)}
    except (OeleoError, OSError) as exc:
        if isinstance(exc, BookkeeperError):
            raise
        _failed(summary, name, f"the destination could not be listed: {exc}")
        return
    folders: Dict[str, List[_Copy]] = {}
    for copy in copies:
        if copy.stored in listed:  # a line only for a file the store holds
            folders.setdefault(posixpath.dirname(copy.stored), []).append(copy)
    for folder, in_folder in sorted(folders.items()):
        target = posixpath.join(folder, name) if folder else name
        if not _out_of_date(connector.features.keeps_mtime, listed.get(target), in_folder):
            continue
        try:
            lines = _lines(worker, algorithm, in_folder, listed)
            _put(worker, target, b"".join(line for _, line in sorted(lines)))
        except (OeleoError, OSError) as exc:
            if isinstance(exc, BookkeeperError):
                raise
            _failed(summary, target, str(exc))
        else:
            log.info("wrote %s (%s)", printable(target), counted(len(lines), "file"))


def _out_of_date(keeps_mtime: bool, manifest: Optional[FileEntry], copies: List[_Copy]) -> bool:
    """Whether a folder's manifest must be written: there is none, a copy went there in this
    pass, or (where the store keeps the time oeleo gives a file: this computer's clock, as the
    books' dates) a copy was booked after the manifest was written (an earlier write failed)."""
    if manifest is None or any(copy.this_pass for copy in copies):
        return True
    return keeps_mtime and max(copy.booked_ns for copy in copies) > manifest.mtime_ns


def _lines(
    worker: Worker, algorithm: str, copies: List[_Copy], listed: Dict[str, FileEntry]
) -> List[Tuple[str, bytes]]:
    """(name, line) of each copy: the books' checksum when it is the stored bytes' hash, else
    the store's own (one ``checksums`` call for the folder)."""
    books_algorithm = worker.checker.algorithm
    known: Dict[str, str] = {}
    ask: List[str] = []
    for copy in copies:
        same_bytes = not copy.compressed and copy.size == listed[copy.stored].size
        if algorithm == books_algorithm and same_bytes:
            known[copy.stored] = copy.checksum
        else:
            ask.append(copy.stored)
    if ask:
        found = worker.external_connector.checksums(ask, algorithm)
        for stored in ask:
            if stored in found:
                known[stored] = found[stored]
            else:
                log.warning(
                    "%s: its %s could not be computed; not in the manifest", printable(stored), algorithm
                )
    return [
        (posixpath.basename(stored), manifest_line(digest, posixpath.basename(stored)))
        for stored, digest in known.items()
    ]


def _put(worker: Worker, target: str, content: bytes) -> None:
    """Send ``content`` to ``target`` through the connector's upload path (temporary name and
    rename, or one object), verified like any copy."""
    handle, path = tempfile.mkstemp(prefix="oeleo-manifest-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(content)
        worker.external_connector.put(Path(path), target, algorithm=worker.checker.algorithm, verify=True)
    finally:
        os.unlink(path)


def _failed(summary: RunSummary, target: str, reason: str) -> None:
    summary.failed += 1
    summary.errors.append((target, f"the manifest could not be written: {reason}"))
    log.error("manifest %s not written: %s", printable(target), printable_text(reason))


__all__ = ["ALGORITHMS", "NAMES", "manifest_name", "is_manifest", "manifest_line", "write_manifests"]
