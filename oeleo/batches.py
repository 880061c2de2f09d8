"""Durability batches: staged uploads are committed and made durable together (one sync for
many files), and only then booked. With a connector that allows several uploads at once, a
full batch is made durable in a second thread while the next one is staged, and booked when
the next batch is handed over (or at the end of the pass): waiting for the disk overlaps
copying instead of adding to it."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, List, Optional, Tuple

from oeleo.connectors.base import Connector, Failed, FileEntry, PutResult

COMMIT_FILES = 256
COMMIT_BYTES = 64 * 1024 * 1024
COMMIT_SECONDS = 1.0

# What a batch gives back, file by file, to be booked:
# ("copied", entry, code, result) or ("error" | "fatal", entry, reason).
Outcomes = List[Tuple[Any, ...]]


class Batches:
    """The staged uploads of one pass, committed in batches; ``book`` gets each batch's
    outcomes in the calling thread, in the order the batches were made."""

    def __init__(
        self,
        connector: Connector,
        book: Callable[[Outcomes], None],
        committer: Callable[[], ThreadPoolExecutor],
    ) -> None:
        self.connector = connector
        self.book = book
        self._committer = committer  # the worker's second thread, made when first needed
        self._staged: List[Tuple[FileEntry, int, PutResult]] = []
        self._bytes = 0
        self._since = time.monotonic()
        self._durable: Optional[Future] = None  # a batch being made durable in the background

    def add(self, entry: FileEntry, code: int, result: PutResult) -> None:
        """A staged upload, whole and verified: committed with the others of its batch."""
        if not self._staged:
            self._since = time.monotonic()
        self._staged.append((entry, code, result))
        self._bytes += result.size
        if (
            len(self._staged) >= COMMIT_FILES
            or self._bytes >= COMMIT_BYTES
            or time.monotonic() - self._since > COMMIT_SECONDS
        ):
            self.commit(wait=False)

    def commit(self, wait: bool = True) -> None:
        """Commit what is staged and make it durable, then book it (``wait=False``: in the
        second thread where the connector allows several uploads at once)."""
        staged, self._staged = self._staged, []
        self._bytes, self._since = 0, time.monotonic()
        self.book_durable()  # the batch before this one: booked in order
        if not staged:
            return
        if wait or self.connector.features.max_uploads < 2:
            self.book(self._make_durable(staged))
            return
        self._durable = self._committer().submit(self._make_durable, staged)

    def book_durable(self) -> None:
        """Wait for the batch being made durable in the second thread, and book it."""
        if self._durable is not None:
            future, self._durable = self._durable, None
            self.book(future.result())

    def discard(self) -> None:
        """Abort every staged upload that was not committed (never touching a real name)."""
        staged, self._staged = self._staged, []
        self._bytes = 0
        for _, _, result in staged:
            self.connector.discard(result)

    def _make_durable(self, staged: List[Tuple[FileEntry, int, PutResult]]) -> Outcomes:
        results = self.connector.commit_many([result for _, _, result in staged])
        outcomes: Outcomes = []
        for (entry, code, _), result in zip(staged, results):
            if isinstance(result, Failed):
                outcomes.append((result.kind, entry, result.reason))
            else:
                outcomes.append(("copied", entry, code, result))
        return outcomes
