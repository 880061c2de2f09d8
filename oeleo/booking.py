"""Booking what happened to each file of a pass: the row in the books, the count in the
summary, the line for the reporter. A row says "copied" only for a file that is in the store
under its real name, verified and durable; a failed write of the books is counted as what it
is."""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from oeleo.batches import Batches, Outcomes
from oeleo.connectors.base import NOT_TRIED, Connector, FileEntry, PutResult, Skipped
from oeleo.errors import BookkeeperError
from oeleo.models import SHOULD_BE_COPIED_IF_CHANGED, SHOULD_NOT_BE_COPIED, Bookkeeper, Record
from oeleo.names import printable, printable_text
from oeleo.reporters import Reporter
from oeleo.summary import LEFT_START, RunSummary, not_replaced_reason

log = logging.getLogger("oeleo")


class Booking:
    """Books the outcomes of one pass into ``bookkeeper`` and ``summary``."""

    def __init__(
        self, bookkeeper: Bookkeeper, reporter: Reporter, external: Connector, summary: RunSummary
    ) -> None:
        self.bookkeeper = bookkeeper
        self.reporter = reporter
        self.external = external
        self.summary = summary
        self.batches: Optional[Batches] = None  # where staged uploads go to be committed
        # What the checker kept of a file (FITS header keywords), by local name, for its row.
        self.metadata_of: Callable[[str], Optional[Dict[str, Any]]] = lambda relpath: None
        self.arrived: List[Tuple[str, PutResult, Optional[Dict[str, Any]]]] = []  # for oeleo.hooks
        # Notices of the listing said by an earlier pass of the same worker (a scheduler's):
        # said again at the debug level only, not as a warning every minute.
        self.noticed: Set[Tuple[str, str]] = set()
        self.unlisted: List[Tuple[str, str]] = []  # folders that failed to be listed, and why
        self.batch_copies = 0  # copies of the batches handed to ``copied``
        self.handled = 0  # files whose outcome was booked (a staged one: once its batch was)

    def outcome(self, entry: FileEntry, record: Optional[Record], kind: str, value: Any) -> None:
        """What one file's copy gave (see ``oeleo.retries``)."""
        summary = self.summary
        locked = record is not None and record.code == SHOULD_NOT_BE_COPIED
        code = SHOULD_NOT_BE_COPIED if locked else SHOULD_BE_COPIED_IF_CHANGED
        if kind != "staged" and kind != "stopped":  # a copy abandoned for a stop: left for the next run
            self.handled += 1
        if kind == "staged":
            assert self.batches is not None
            self.batches.add(entry, code, value)
        elif kind == "copied":
            self.copied(entry, code, value)
        elif kind == "unchanged":  # an oeleo 0.7 row whose checksum still matches
            digest, stored_as = value  # the name it has there (NAME.gz when sent compressed)
            external_name = self.external.external_name(stored_as)
            self.bookkeeper.record_copied(
                entry.relpath, external_name, digest, entry.size, entry.mtime_ns, code
            )
            summary.unchanged += 1
        elif kind == "not_replaced":
            # Booked as seen, so that it is not tried again until it changes again; the row
            # keeps the checksum of the version the store holds. The store's words, if any.
            reason = not_replaced_reason(value)
            summary.not_replaced += 1
            self.bookkeeper.record_seen(entry.relpath, entry.size, entry.mtime_ns, reason)
            log.warning("%s: %s", printable(entry.relpath), reason)
        elif kind == "changing":
            summary.changing += 1
            log.warning("%s", printable_text(value))
        elif kind == "incomplete":
            # Not a failure and not a copy: the reason is kept, the file is tried next run.
            summary.incomplete += 1
            self.bookkeeper.record_error(entry.relpath, f"incomplete, left for the next run: {value}")
            log.warning("%s: incomplete, left for the next run: %s", printable(entry.relpath), value)
        elif kind == "vanished":
            summary.vanished += 1
            log.warning("%s disappeared before it was copied", printable(entry.relpath))
        elif kind == "stopped":
            summary.stopped = True
        else:
            self.failure(entry, kind, value)

    def failure(self, entry: FileEntry, kind: str, reason: str) -> None:
        """This file failed (``kind`` "fatal": and the run stops); tried again next run.
        After the failure that stopped the run, the files of the copies and commits under way
        fail for the same cause: counted as left for the next run, not said once each."""
        untried = reason.startswith(NOT_TRIED)  # a commit not sent to a store found away
        if kind == "fatal" and (self.summary.fatal is not None or untried):
            if self.summary.fatal is None:  # the cause, without a count of this file's tries
                self.summary.fatal = reason[len(NOT_TRIED) :]
            self.summary.left += 1
            cause = reason[len(NOT_TRIED) :] if untried else reason
            self.bookkeeper.record_error(entry.relpath, f"{LEFT_START}{cause}")
            log.debug("%s: left for the next run: %s", printable(entry.relpath), reason)
            return
        self._count_failure(entry.relpath, entry.size, reason)
        # A copy found wrong under its real name: its row no longer says that the store holds
        # this version (copied again next run, even if the source does not change).
        self.bookkeeper.record_error(entry.relpath, reason, copy_again=kind == "wrong_in_place")
        if kind == "fatal":
            self.summary.fatal = reason

    def copied(self, entry: FileEntry, code: int, result: PutResult) -> None:
        """The file is under its real name, verified and durable: book it. (Counted first: a
        failed write of the books takes it back out with the other rows it lost.)"""
        self.summary.copied += 1
        self.summary.bytes_copied += result.size
        metadata = self.metadata_of(entry.relpath)
        self.bookkeeper.record_copied(
            entry.relpath, result.external_name, result.checksum, result.size, result.mtime_ns, code, metadata
        )
        self.arrived.append((entry.relpath, result, metadata))
        self.reporter.file_done(entry.relpath, result.size)

    def outcomes(self, outcomes: Outcomes) -> None:
        """A batch made durable (``oeleo.batches``): book each file of it. A commit refused
        for a setting (a key, a storage class) stops the pass with that error, once the
        files committed before it are booked."""
        refusal: Optional[BaseException] = None
        for outcome in outcomes:
            # Refused for a setting, or not committed for a stop: left for the next run.
            self.handled += outcome[0] not in ("config", "stopped")
            if outcome[0] == "stopped":
                self.summary.stopped = True
            elif outcome[0] == "copied":
                _, entry, code, result = outcome
                self.batch_copies += 1  # counted, booked or not: see books_failed
                self.copied(entry, code, result)
            elif outcome[0] == "not_replaced":  # the store keeps another version (never overwrites)
                _, entry, error = outcome
                self.outcome(entry, None, "not_replaced", str(error) or None)
            elif outcome[0] == "config":
                refusal = refusal or outcome[2]
            else:
                kind, entry, reason = outcome
                self.failure(entry, kind, reason)
        if refusal is not None:
            raise refusal

    def skipped(self, skipped: Sequence[Skipped]) -> None:
        """What the listing left out: a folder that could not be read is a failure (the run
        exits 1), a symbolic link a notice."""
        for item in skipped:
            if item.failed:
                self._count_failure(item.relpath, 0, item.reason)  # a folder: no row to book
                if item.book:  # a file: its row keeps the reason (oeleo status names it)
                    self.bookkeeper.record_error(item.relpath, item.reason)
                else:  # said by the run's row instead (oeleo status: "N failed; ...")
                    self.unlisted.append((item.relpath, item.reason))
            else:
                self.summary.skipped += 1
                said = (item.relpath, item.reason)
                level = logging.DEBUG if said in self.noticed else logging.WARNING
                self.noticed.add(said)
                log.log(level, "skipped %s: %s", printable(item.relpath), item.reason)

    def refused(self) -> None:
        """Rows the database refused one by one (the others were booked): those files failed."""
        for name, reason, was_copy in self.bookkeeper.take_refused():
            if was_copy:
                self.summary.copied -= 1
            self._count_failure(name, 0, f"the books refused its row ({reason}); copied again next run")

    def _count_failure(self, relpath: str, size: int, reason: str) -> None:
        """A failure in the summary and on the reporter (the callers say what the books get)."""
        self.summary.failed += 1
        self.summary.errors.append((relpath, reason))
        self.reporter.file_done(relpath, size, error=reason)

    def books_failed(self, exc: BookkeeperError) -> None:
        """The books cannot be written (a full disk under the database, a dropped server):
        the pass stops, and only what was booked counts as copied."""
        uncounted = 0  # copies in place that never reached ``copied``
        if self.batches is not None:
            try:
                self.batches.book_durable()  # in place and durable; its rows cannot be written
            except BookkeeperError:
                pass
            finally:
                self.batches.abandon()  # the batches still being committed, then the staged ones
            uncounted = max(0, self.batches.committed - self.batch_copies)
        self.bookkeeper.drop_pending()
        summary = self.summary
        lost = min(self.bookkeeper.lost_copies, summary.copied)
        summary.bytes_copied = max(0, summary.bytes_copied - self.bookkeeper.lost_bytes)
        self.bookkeeper.lost_copies = self.bookkeeper.lost_bytes = 0
        summary.copied -= lost
        summary.unbooked += lost + uncounted
        summary.books_error = str(exc)
        summary.fatal = summary.fatal or "the books could not be written"
