"""Durability batches: staged uploads are committed and made durable together (one sync for
many files), and only then booked. With a connector that allows several uploads at once, a
full batch is made durable in a second thread while the next one is staged, and booked when
the next batch is handed over (or at the end of the pass): waiting for the disk overlaps
copying instead of adding to it."""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Deque, List, Tuple

from oeleo.connectors.base import Connector, Failed, FileEntry, PutResult

COMMIT_BYTES = 64 * 1024 * 1024
COMMIT_SECONDS = 1.0
# Batches committed at once by a store without a shared durability barrier (an object store:
# each commit is a request of its own): a large file is a batch by itself, and two of them
# must not wait for each other's PUT.
OBJECT_STORE_BATCHES = 4


def batches_in_flight(connector: Connector) -> int:
    """How many batches may be committed at once: one where a batch shares one sync (a
    folder: the syncs would contend for the same disk), more for an object store."""
    features = connector.features
    if features.max_uploads < 2 or features.batch_sync:
        return 1
    return min(features.max_uploads, OBJECT_STORE_BATCHES)


# What a batch gives back, file by file, to be booked:
# ("copied", entry, code, result), ("error" | "fatal" | "wrong_in_place", entry, reason),
# ("config" | "not_replaced", entry, error): the pass stops with the error, or it is booked,
# or ("stopped", entry, reason): not committed, the pass being asked to stop.
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
        # Batches being made durable in the background, oldest first (booked in that order).
        self._durable: Deque[Future] = deque()
        self._in_flight = batches_in_flight(connector)
        # Files put under their real names so far (committed and durable), booked or not: a
        # pass whose books fail says how many copies it left unbooked.
        self.committed = 0
        self._count = threading.Lock()

    def add(self, entry: FileEntry, code: int, result: PutResult) -> None:
        """A staged upload, whole and verified: committed with the others of its batch."""
        if not self._staged:
            self._since = time.monotonic()
        self._staged.append((entry, code, result))
        self._bytes += result.size
        if (
            len(self._staged) >= self.connector.commit_files
            or self._bytes >= COMMIT_BYTES
            or time.monotonic() - self._since > COMMIT_SECONDS
        ):
            self.commit(wait=False)

    def commit(self, wait: bool = True) -> None:
        """Commit what is staged and make it durable, then book it (``wait=False``: in the
        second thread where the connector allows several uploads at once). The batches
        before it are booked first; until then this one stays staged, so that a failure to
        book them leaves it to ``discard`` (no temporary file left behind)."""
        if wait or self.connector.features.max_uploads < 2:
            self.book_durable()  # the batches before this one: booked in order
            staged = self._take()
            if staged:
                self.book(self._make_durable(staged))
            return
        while len(self._durable) >= self._in_flight:
            self.book(self._durable.popleft().result())  # the oldest first: booked in order
        staged = self._take()
        if staged:
            self._durable.append(self._committer().submit(self._make_durable, staged))

    def _take(self) -> List[Tuple[FileEntry, int, PutResult]]:
        staged, self._staged = self._staged, []
        self._bytes, self._since = 0, time.monotonic()
        return staged

    def book_durable(self) -> None:
        """Wait for the batches being made durable in the background, and book them in order."""
        while self._durable:
            self.book(self._durable.popleft().result())

    def abandon(self) -> None:
        """The pass stops without booking (the books failed): wait for the batches being
        committed in the background (``committed`` then counts them), and abort what is
        staged."""
        try:
            while self._durable:
                future = self._durable.popleft()
                try:
                    future.result()
                except Exception:  # noqa: BLE001 - a batch that failed to commit: nothing in place
                    pass
        finally:
            self.discard()

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
                kind = result.kind
                if kind in ("config", "not_replaced"):  # the error itself: raised, or its words booked
                    outcomes.append((kind, entry, result.error))
                else:
                    outcomes.append((kind, entry, result.reason))
            else:
                outcomes.append(("copied", entry, code, result))
        with self._count:
            self.committed += sum(1 for outcome in outcomes if outcome[0] == "copied")
        return outcomes
