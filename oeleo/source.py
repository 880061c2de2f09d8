"""Reading a source file once for its copy: in chunks, hashed as it goes (a large file in a
second thread), shown to an observer (a checker validating the file as it streams by),
noticing a file that changes meanwhile, stopping when asked."""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, Callable, Iterator, Optional, Union

from oeleo.checkers import new_hash
from oeleo.errors import Aborted, FileChangedError, TransferError

CHUNK_SIZE = 1024 * 1024
HASH_THREAD_MIN_SIZE = 8 * CHUNK_SIZE  # from this size a file is hashed in a second thread
HASH_QUEUE_CHUNKS = 4  # chunks waiting to be hashed, at most (memory: 4 MiB per file)

ProgressCallback = Callable[[int], None]
StopCheck = Callable[[], bool]


class _HashThread:
    """Feeds a hash object from a second thread, so that hashing one chunk overlaps reading
    and writing the next: hashlib releases the GIL on large buffers, and md5 alone is slower
    than a disk. Chunks are ``bytes`` (immutable), so handing them over is safe."""

    def __init__(self, digest: Any) -> None:
        self.digest = digest
        self._queue: queue.Queue = queue.Queue(maxsize=HASH_QUEUE_CHUNKS)
        self._thread = threading.Thread(target=self._run, name="oeleo-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        update = self.digest.update
        get = self._queue.get
        while True:
            chunk = get()
            if chunk is None:
                return
            update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def join(self) -> None:
        """Wait until every chunk handed over is hashed (the thread drains the queue)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class SourceReader:
    """Reads a local file in chunks, hashing as it goes, and notices if it changes meanwhile.

    Iterate to get the chunks; call ``finish()`` after the last one: it raises
    ``FileChangedError`` if the file's size or mtime moved since it was opened. With
    ``check_algorithm`` the chunks are also fed to a second, cheap hash (``check_digest``)
    that a read-back of the copy is compared with. ``observer``, if set before the chunks are
    read, is called with each chunk in the reading thread before it is passed on: what it
    raises ends the read (a checker's ``FileIncomplete``), and that chunk is not sent.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike[str]],
        algorithm: str,
        progress: Optional[ProgressCallback] = None,
        should_stop: Optional[StopCheck] = None,
        chunk_size: int = CHUNK_SIZE,
        check_algorithm: Optional[str] = None,
    ) -> None:
        self.path = path
        self.name = ""  # how the file is named in messages (its relative name); else its path
        self.digest = new_hash(algorithm)
        self.check = new_hash(check_algorithm) if check_algorithm else None
        self.progress = progress
        self.should_stop = should_stop
        self.chunk_size = chunk_size
        self.size = 0
        # A bare descriptor: a Python file object would stat the file once more on opening.
        self._fd: Optional[int] = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            before = os.fstat(self._fd)
        except BaseException:
            self.close()
            raise
        self.expected_size = before.st_size
        self.mtime_ns = before.st_mtime_ns
        self._hasher: Optional[_HashThread] = None
        self.observer: Optional[Callable[[bytes], None]] = None
        self._ended = False  # the reading came to the end of the file (or of its size)

    def __iter__(self) -> Iterator[bytes]:
        fd = self._fd
        assert fd is not None, "a SourceReader is read once"
        read = os.read
        expected = self.expected_size
        size = min(self.chunk_size, expected) or self.chunk_size
        update: Callable[[bytes], None]
        if self.expected_size >= HASH_THREAD_MIN_SIZE:
            self._hasher = _HashThread(self.digest)
            update = self._hasher.update
        else:
            update = self.digest.update
        check = self.check.update if self.check is not None else None
        observe = self.observer
        while True:
            if self.should_stop is not None and self.should_stop():
                raise Aborted(f"stopped while copying {self.path}")
            chunk = read(fd, size)
            if not chunk:
                self._ended = True
                return
            if observe is not None:
                observe(chunk)
            update(chunk)
            if check is not None:
                check(chunk)
            self.size += len(chunk)
            if self.progress is not None:
                self.progress(len(chunk))
            yield chunk
            if self.size == expected:
                self._ended = True
                return  # a file that grew meanwhile is caught by finish(): its size moved

    @property
    def check_digest(self) -> Optional[str]:
        return self.check.hexdigest() if self.check is not None else None

    def finish(self) -> str:
        """Close the file, check it did not change, and return the hex digest."""
        self.close()
        # The name, not the open file: that catches a file changed in place and one replaced
        # under the same name (an instrument rewriting its output) alike.
        try:
            current = os.stat(self.path)
        except OSError:
            current = None
        unchanged = (
            current is not None
            and current.st_mtime_ns == self.mtime_ns
            and current.st_size == self.expected_size
        )
        if unchanged and self.size < self.expected_size and not self._ended:
            # The file is as it was: its reader was left before the end (a connector's own
            # write_stream that does not consume every chunk), not a change of the source.
            raise TransferError(
                f"{self.path}: the copy took {self.size} of its {self.expected_size} bytes (a connector "
                "that stops reading the chunks it is handed: see docs/connectors.md)"
            )
        if self.size != self.expected_size or not unchanged:
            what = "was removed" if current is None and not os.path.lexists(self.path) else "changed"
            raise FileChangedError(
                f"{self.name or self.path} {what} while it was copied; left for the next run"
            )
        return self.digest.hexdigest()

    def close(self) -> None:
        if self._hasher is not None:
            self._hasher.join()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
