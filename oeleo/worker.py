"""The worker: one pass of "list, decide, copy, verify, book" (oeleo.factories builds one).

A ``Worker`` composes a checker, a local connector (the instrument's folder), an external
connector (where files must go) and a bookkeeper. Everything that is the same for every
store lives here once: deciding what to copy from the books, retries after a dropped
connection, parallel copies, progress and the run summary.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from oeleo.checkers import Checker, ChecksumChecker, hash_file
from oeleo.compare import compare
from oeleo.connectors.base import (
    TEMP_SUFFIX,
    Connector,
    Failed,
    FileEntry,
    PutResult,
    Skipped,
    safe_relpath,
    upload_tag,
)
from oeleo.connectors.local import LocalConnector
from oeleo.errors import (
    Aborted,
    BookkeeperError,
    ConfigError,
    ConnectionLost,
    DiskFullError,
    FileChangedError,
    OeleoError,
    TransferError,
)
from oeleo.models import (
    SHOULD_BE_COPIED_IF_CHANGED,
    SHOULD_NOT_BE_COPIED,
    Bookkeeper,
    Record,
    SimpleDbHandler,
    make_origin,
)
from oeleo.names import printable
from oeleo.plan import Action, PlanOptions, decide
from oeleo.reporters import Reporter
from oeleo.summary import NOT_REPLACED, CheckReport, RunSummary
from oeleo.units import counted

log = logging.getLogger("oeleo")

BACKOFF_SECONDS = 0.5
# Copies are made durable and renamed into place in batches (one sync for many files):
COMMIT_FILES = 256
COMMIT_BYTES = 64 * 1024 * 1024
COMMIT_SECONDS = 1.0
PARALLEL_MIN_SIZE = 4 * 1024 * 1024  # with OELEO_WORKERS not set, smaller files go one at a time
AUTO_WORKERS = 2  # files copied at a time when OELEO_WORKERS is not set and the connector allows it


def _overrides_put_only(connector: Connector) -> bool:
    cls = type(connector)
    return cls.put is not Connector.put and cls.stage is Connector.stage


class Worker:
    """Copies the files of ``local_connector`` to ``external_connector``, booking each one.

    >>> worker.connect_to_db()   # open (or create, or upgrade) the books
    >>> worker.filter_local()    # list candidate files
    >>> worker.run()             # copy what is new or changed; returns a RunSummary
    >>> worker.close()
    """

    def __init__(
        self,
        checker: Optional[Checker] = None,
        bookkeeper: Optional[Bookkeeper] = None,
        local_connector: Optional[LocalConnector] = None,
        external_connector: Optional[Connector] = None,
        extension: Any = None,
        dry_run: bool = False,
        reporter: Optional[Reporter] = None,
        external_name_generator: Optional[Callable[..., Any]] = None,
        reconnect: bool = True,
        subdirs: bool = False,
        external_subdirs: bool = False,
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        min_age: float = 0.0,
        verify: bool = True,
        retries: int = 3,
        workers: Optional[int] = 1,
        force: bool = False,
        include_locked: bool = False,
    ) -> None:
        from oeleo.settings import normalise_extensions

        if local_connector is None or external_connector is None:
            raise ConfigError("a Worker needs a local_connector and an external_connector")
        if external_name_generator is not None:
            raise ConfigError(
                "external_name_generator is not supported: files keep their path relative "
                "to the source folder (see docs/connectors.md to map names in a connector)"
            )
        self.checker = checker or ChecksumChecker()
        self.local_connector = local_connector
        self.external_connector = external_connector
        self.bookkeeper = bookkeeper if bookkeeper is not None else SimpleDbHandler()
        if self.bookkeeper.origin is None:
            self.bookkeeper.origin = make_origin(local_connector.directory)
        self._refuse_overlap()
        # Temporary names say whose they are: after a killed run, this origin's own are removed.
        external_connector.upload_tag = upload_tag(self.bookkeeper.origin)
        self.extensions = normalise_extensions(extension)
        self.extension = extension
        self.dry_run = dry_run
        self.reporter = reporter or Reporter()
        self.reconnect = reconnect
        self.subdirs = subdirs
        self.external_subdirs = external_subdirs
        self.include = list(include)
        self.exclude = list(exclude)
        self.min_age = min_age
        self.verify = verify
        self.retries = retries if reconnect else 0
        # Not set: large files two at a time where the connector allows it (on two cores the
        # md5 of one overlaps the reading and writing of the other); small files one at a
        # time, as threads copying small files mostly wait for each other (Python's GIL).
        self._auto_workers = workers is None
        if workers is None:
            workers = min(AUTO_WORKERS, external_connector.features.max_uploads)
        self.workers = max(1, int(workers))
        self.force = force
        self.include_locked = include_locked
        self._entries: Optional[List[FileEntry]] = None
        self._skipped: List[Skipped] = []  # what the last listing did not list, and why
        self._stop = threading.Event()
        self._db_open = False
        self._no_books = False
        self._staged: List[Tuple[FileEntry, int, PutResult]] = []
        self._staged_bytes = 0
        self._staged_since = time.monotonic()
        self._connected = False
        self._prepared = False
        self._committer: Optional[ThreadPoolExecutor] = None
        self._durable: Optional[Future] = None  # a batch being made durable in the background

    def __repr__(self) -> str:
        return f"Worker({self.local_connector!r} -> {self.external_connector!r})"

    # -- life cycle -------------------------------------------------------------------
    def connect_to_db(self) -> None:
        """Open the books (creating or upgrading them); stops if another run holds them."""
        if self._db_open or self._no_books:
            return
        if self.dry_run and not self.bookkeeper.exists():
            self._no_books = True
            log.info("dry run: %s does not exist yet; every file is new", self.bookkeeper.description)
            return
        self.bookkeeper.initialize_db(exclusive=not self.dry_run, read_only=self.dry_run)
        self._db_open = True

    def _connect(self) -> None:
        if self._connected:
            return
        self.local_connector.check_source()
        self.external_connector.connect()
        self._connected = True
        self._prepared = False

    def _prepare_destination(self) -> None:
        """Create the destination if needed, once per connection: only a run that copies
        does (``check`` and a dry run change nothing there)."""
        self._connect()
        if not self._prepared:
            self.external_connector.prepare()
            self._prepared = True

    def _refuse_overlap(self) -> None:
        """A destination folder inside the source (or the source itself, or holding it) is
        refused, as rclone refuses overlapping remotes: every run would copy the copies
        again, or a copy would land on a source file."""
        external = self.external_connector
        if not isinstance(external, LocalConnector):
            return
        src, dst = self.local_connector.directory, external.directory
        source = os.path.normcase(os.path.realpath(src))
        target = os.path.normcase(os.path.realpath(dst))
        where = "(OELEO_BASE_DIR_TO, --to)"
        if source == target:
            raise ConfigError(
                f"the destination {dst} is the source folder {src} itself: choose another destination {where}"
            )
        if target.startswith(source.rstrip(os.sep) + os.sep):
            raise ConfigError(
                f"the destination {dst} is inside the source folder {src}: every run would copy "
                f"the copies again; choose a destination outside it {where}"
            )
        if source.startswith(target.rstrip(os.sep) + os.sep):
            raise ConfigError(
                f"the source folder {src} is inside the destination {dst}: copies could land on "
                f"source files; choose a destination outside the source folder {where}"
            )

    def close(self) -> None:
        """Commit what is queued, release the books and the connections."""
        if self._committer is not None:
            self._committer.shutdown(wait=True)
            self._committer = None
        try:
            if self._db_open:
                self.bookkeeper.close()
                self._db_open = False
        finally:
            if self._connected:
                self.external_connector.close()
                self._connected = False

    def release_db(self) -> None:
        """Release the books (and their lock) but keep the connections: a scheduler between passes."""
        self.bookkeeper.close()
        self._db_open = False

    def __enter__(self) -> Worker:
        self.connect_to_db()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stop(self) -> None:
        """Ask the current pass to stop: the file being copied is abandoned cleanly."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def die_if_necessary(self) -> None:
        if self._stop.is_set():
            raise Aborted("stopped on request")

    # -- choosing files ---------------------------------------------------------------
    def filter_local(self, **kwargs: Any) -> List[Path]:
        """List the source folder's candidate files (extension, include/exclude, subfolders).

        ``additional_filters``: callables taking a ``Path`` and returning ``True`` to keep it.
        """
        self._list_local(**kwargs)
        return self.file_names

    def _list_local(self, **kwargs: Any) -> None:
        self._connect()
        self._skipped = []
        entries = list(
            self.local_connector.list_files(
                extensions=self.extensions,
                include=self.include,
                exclude=self.exclude,
                recursive=self.subdirs,
                on_skip=self._skipped.append,
            )
        )
        extra = kwargs.get("additional_filters") or []
        if extra:
            base = self.local_connector.directory
            entries = [e for e in entries if all(f(base / e.relpath) for f in extra)]
        self._set_entries(entries)

    def add_local(self, local_files: Iterable[Any]) -> List[Path]:
        """Name the files to process yourself (paths inside the source folder)."""
        self._connect()
        base = Path(self.local_connector.directory)
        entries = []
        for f in local_files:
            path = Path(f)
            relpath = self._relative_name(path if path.is_absolute() else base / path)
            st = path.stat() if path.is_absolute() else (base / path).stat()
            entries.append(FileEntry(relpath, st.st_size, st.st_mtime_ns))
        self._set_entries(entries)
        return self.file_names

    def _set_entries(self, entries: List[FileEntry]) -> None:
        self._entries = entries
        log.debug("%d candidate files in %s", len(entries), self.local_connector.directory)

    @property
    def file_names(self) -> List[Path]:
        """The candidate files as paths (the oeleo 0.7 attribute), built when asked for."""
        base = Path(self.local_connector.directory)
        return [base / e.relpath for e in self._entries or []]

    def _relative_name(self, path: Path) -> str:
        base = Path(self.local_connector.directory).resolve()
        try:
            return safe_relpath(path.resolve().relative_to(base).as_posix())
        except ValueError:
            raise ConfigError(f"{path} is not inside the source folder {base}") from None

    def filter_external(self, **kwargs: Any) -> List[FileEntry]:
        """The external side's files with the worker's filters (for comparisons)."""
        self._connect()
        return list(
            self.external_connector.list_files(
                extensions=self.extensions, include=self.include, exclude=self.exclude, recursive=True
            )
        )

    # -- one pass ---------------------------------------------------------------------
    def run(self) -> RunSummary:
        """Copy every new or changed file once, verified; book each one. Never raises for
        a single file: failures are recorded with their reason and counted."""
        started = time.monotonic()
        self.connect_to_db()
        if self._entries is None:
            if type(self).filter_local is not Worker.filter_local:
                self.filter_local()  # a subclass chooses the files its own way
            else:
                self._list_local()  # the same, without building 0.7's list of paths
        entries = self._entries or []
        records = self.bookkeeper.load() if self._db_open else {}
        summary = RunSummary(listed=len(entries), dry_run=self.dry_run)
        skipped, self._skipped = self._skipped, []
        now_ns = time.time_ns()
        plan = PlanOptions(force=self.force, include_locked=self.include_locked, min_age=self.min_age)
        todo: List[Tuple[FileEntry, Optional[Record], bool]] = []
        for entry in entries:
            record = records.get(entry.relpath)
            action = decide(entry, record, plan, now_ns)
            if action is Action.COPY or action is Action.HASH_FIRST:
                todo.append((entry, record, action is Action.HASH_FIRST))
            elif action is Action.UNCHANGED:
                summary.unchanged += 1
            elif action is Action.LOCKED:
                summary.locked += 1
            elif action is Action.TOO_YOUNG:
                summary.too_young += 1
        if self.dry_run:
            self._entries = None  # the next pass lists again
            summary.would_copy = [
                e.relpath for e, r, legacy in todo if not self._same_as_legacy(e, r, legacy)
            ]
            summary.unchanged += len(todo) - len(summary.would_copy)
            for relpath in summary.would_copy:
                log.debug("would copy %s", relpath)
            self._report_skipped(skipped, summary)
            self._stop.clear()
            summary.seconds = time.monotonic() - started
            self.reporter.run_finished(summary)
            return summary

        self._prepare_destination()
        previous = self.bookkeeper.start_run()
        if previous != "ok":
            self._remove_leftovers()  # the run before did not finish cleanly (or there was none)
        self._report_skipped(skipped, summary)
        self.reporter.run_started(len(todo), sum(e.size for e, _, _ in todo))
        try:
            one_by_one, parallel = todo, []
            if self.workers > 1:
                smallest = PARALLEL_MIN_SIZE if self._auto_workers else 0
                parallel = [item for item in todo if item[0].size >= smallest]
                if len(parallel) > 1:
                    one_by_one = [item for item in todo if item[0].size < smallest]
                else:
                    parallel = []
            for item in one_by_one:
                if self._stop.is_set() or summary.fatal:
                    break
                self._book(item, self._attempt(item), summary)
            if parallel:
                self._copy_parallel(parallel, summary)
            self._commit_staged(summary)  # staged files are whole and verified: finish them
            self.bookkeeper.flush()  # the pass is not done before its rows are written
            self._count_refused(summary)
        except BookkeeperError as exc:
            self._books_failed(summary, exc)
        except BaseException as exc:
            summary.stopped = isinstance(exc, KeyboardInterrupt)
            try:
                self._book_durable(summary)  # renamed into place and durable: book them
            finally:
                self._discard_staged()
            raise
        finally:
            summary.stopped = summary.stopped or self._stop.is_set()
            # Cleared when the pass ends, not when it starts: a stop asked while the files
            # were listed (SIGTERM, Ctrl-C, a scheduler) must not be forgotten.
            self._stop.clear()
            summary.seconds = time.monotonic() - started
            self._entries = None  # the next pass lists again
            try:
                self.bookkeeper.finish_run(
                    summary.status,
                    summary.copied,
                    summary.failed,
                    summary.bytes_copied,
                    summary.books_error or summary.fatal or "",
                )
            except BookkeeperError as exc:
                if summary.books_error is None:
                    self._books_failed(summary, exc)
                else:
                    log.error("the end of this run could not be recorded either: %s", exc)
            self.reporter.run_finished(summary)
        return summary

    def _books_failed(self, summary: RunSummary, exc: BookkeeperError) -> None:
        """The books cannot be written (a full disk under the database, a dropped server):
        stop the pass, and count as copied only what was booked."""
        try:
            self._book_durable(summary)  # in place and durable; its rows cannot be written either
        except BookkeeperError:
            pass
        finally:
            self._discard_staged()
        self.bookkeeper.drop_pending()
        lost = min(self.bookkeeper.lost_copies, summary.copied)
        self.bookkeeper.lost_copies = 0
        summary.copied -= lost
        summary.unbooked += lost
        summary.books_error = str(exc)
        summary.fatal = summary.fatal or "the books could not be written"

    def _count_refused(self, summary: RunSummary) -> None:
        """Rows the database refused one by one (the others were booked): those files failed."""
        for name, reason, was_copy in self.bookkeeper.take_refused():
            if was_copy:
                summary.copied -= 1
            why = f"the books refused its row ({reason}); copied again next run"
            summary.failed += 1
            summary.errors.append((name, why))
            self.reporter.file_done(name, 0, error=why)

    def _report_skipped(self, skipped: List[Skipped], summary: RunSummary) -> None:
        """What the listing left out: a folder that could not be read is a failure (the run
        exits 1), a symbolic link a notice."""
        for item in skipped:
            if item.failed:
                summary.failed += 1
                summary.errors.append((item.relpath, item.reason))
                self.reporter.file_done(item.relpath, 0, error=item.reason)
            else:
                summary.skipped += 1
                log.warning("skipped %s: %s", printable(item.relpath), item.reason)

    def _remove_leftovers(self) -> None:
        """Remove the temporary files that a killed run of this origin left at the
        destination (theirs carry this origin's tag; other PCs' uploads are not touched)."""
        external = self.external_connector
        ours = f".{external.upload_tag}{TEMP_SUFFIX}"
        removed = 0
        try:
            for relpath in list(external.list_temporaries()):
                if relpath.endswith(ours):
                    external.remove(relpath)
                    removed += 1
        except (OeleoError, OSError) as exc:
            log.warning("cannot remove the temporary files an earlier run left: %s", exc)
        if removed:
            log.info(
                "removed %s left by an earlier run that did not finish",
                counted(removed, "temporary file"),
            )

    def _same_as_legacy(self, entry: FileEntry, record: Optional[Record], legacy: bool) -> bool:
        """For a dry run: does a checksum-only (oeleo 0.7) row still match the file?"""
        if not (legacy and record is not None and record.checksum):
            return False
        try:
            return (
                hash_file(self.local_connector.path(entry.relpath), self.checker.algorithm) == record.checksum
            )
        except OSError:
            return False

    def _copy_parallel(
        self, todo: List[Tuple[FileEntry, Optional[Record], bool]], summary: RunSummary
    ) -> None:
        pending: Set[Future] = set()
        items = iter(todo)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="oeleo-copy") as pool:
            while True:
                while len(pending) < self.workers * 2 and not (self._stop.is_set() or summary.fatal):
                    item = next(items, None)
                    if item is None:
                        break
                    future = pool.submit(self._attempt, item)
                    future.item = item  # type: ignore[attr-defined]
                    pending.add(future)
                if not pending:
                    return
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    self._book(future.item, future.result(), summary)  # type: ignore[attr-defined]

    def _attempt(self, item: Tuple[FileEntry, Optional[Record], bool]) -> Tuple[str, Any]:
        """Copy one file, retrying after dropped connections. Runs in a copying thread; the
        result is booked by the main thread. Returns (kind, value)."""
        entry, record, legacy = item
        self.reporter.file_started(entry.relpath, entry.size)
        attempt = 0
        while True:
            try:
                return self._copy_one(entry, record, legacy)
            except ConnectionLost as exc:
                attempt += 1
                if attempt > self.retries:
                    return "error", f"{exc} (gave up after {attempt} attempts)"
                delay = BACKOFF_SECONDS * (2 ** (attempt - 1))
                log.warning(
                    "%s: %s; reconnecting in %.1f s (attempt %d of %d)",
                    entry.relpath,
                    exc,
                    delay,
                    attempt,
                    self.retries,
                )
                if self._stop.wait(delay):
                    return "stopped", None
                try:
                    self.external_connector.reconnect()
                except OeleoError as again:
                    log.warning("reconnect failed: %s", again)
            except Aborted:
                return "stopped", None
            except DiskFullError as exc:
                return "fatal", str(exc)
            except FileChangedError as exc:
                return "changing", str(exc)
            except TransferError as exc:
                return "error", str(exc)
            except FileNotFoundError as exc:
                if self.local_connector.stat(entry.relpath) is not None:
                    return "error", f"not found on the destination side: {exc.filename or exc}"
                return "vanished", None
            except PermissionError as exc:
                return "error", f"permission denied ({exc.filename or entry.relpath})"
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    return "fatal", f"no space left on the destination while writing {entry.relpath}"
                where = f": {exc.filename}" if exc.filename else ""
                return "error", f"{exc.strerror or exc}{where}"
            except OeleoError as exc:
                return "error", str(exc)
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the run
                log.debug("unexpected error copying %s", entry.relpath, exc_info=True)
                return "error", f"{type(exc).__name__}: {exc}"

    def _copy_one(self, entry: FileEntry, record: Optional[Record], legacy: bool) -> Tuple[str, Any]:
        source = self.local_connector.path(entry.relpath)
        algorithm = self.checker.algorithm
        if legacy and record is not None and record.checksum:
            # A row from oeleo 0.7 has a checksum but no size/mtime: compare before copying.
            digest = hash_file(source, algorithm)
            if digest == record.checksum:
                return "unchanged", (digest, entry)
        reason = self.checker.validate(source)
        if reason:
            return "error", f"refused by {type(self.checker).__name__}: {reason}"
        external = self.external_connector
        if not external.features.overwrite and external.stat(entry.relpath) is not None:
            return "not_replaced", None  # a store that never replaces a file it holds
        options: Dict[str, Any] = {
            "algorithm": algorithm,
            "verify": self.verify,
            "progress": self.reporter.advance,
            "should_stop": self._stop.is_set,
        }
        if _overrides_put_only(external):
            # A connector written around put() keeps working: one file at a time, unbatched.
            return "copied", external.put(source, entry.relpath, **options)
        return "staged", external.stage(source, entry.relpath, **options)

    def _book(
        self, item: Tuple[FileEntry, Optional[Record], bool], outcome: Tuple[str, Any], summary: RunSummary
    ) -> None:
        entry, record, _ = item
        kind, value = outcome
        code = (
            SHOULD_NOT_BE_COPIED
            if (record and record.code == SHOULD_NOT_BE_COPIED)
            else SHOULD_BE_COPIED_IF_CHANGED
        )
        if kind == "staged":
            if not self._staged:
                self._staged_since = time.monotonic()
            self._staged.append((entry, code, value))
            self._staged_bytes += value.size
            if (
                len(self._staged) >= COMMIT_FILES
                or self._staged_bytes >= COMMIT_BYTES
                or time.monotonic() - self._staged_since > COMMIT_SECONDS
            ):
                self._commit_staged(summary, wait=False)
        elif kind == "copied":
            self._book_copied(entry, code, value, summary)
        elif kind == "unchanged":
            digest, _ = value
            self.bookkeeper.record_copied(
                entry.relpath,
                self.external_connector.external_name(entry.relpath),
                digest,
                entry.size,
                entry.mtime_ns,
                code,
            )
            summary.unchanged += 1
        elif kind == "not_replaced":
            # Booked as seen, so that it is not tried again until it changes again; the row
            # keeps the checksum of the version the store holds.
            summary.not_replaced += 1
            self.bookkeeper.record_seen(entry.relpath, entry.size, entry.mtime_ns, NOT_REPLACED)
            log.warning("%s: %s", printable(entry.relpath), NOT_REPLACED)
        elif kind == "changing":
            summary.changing += 1
            log.warning("%s", value)
        elif kind == "vanished":
            summary.vanished += 1
            log.warning("%s disappeared before it was copied", entry.relpath)
        elif kind == "stopped":
            summary.stopped = True
        else:
            self._book_failure(entry, kind, value, summary)

    def _book_failure(self, entry: FileEntry, kind: str, reason: str, summary: RunSummary) -> None:
        summary.failed += 1
        summary.errors.append((entry.relpath, reason))
        self.bookkeeper.record_error(entry.relpath, reason)
        self.reporter.file_done(entry.relpath, entry.size, error=reason)
        if kind == "fatal":
            summary.fatal = reason

    def _commit_staged(self, summary: RunSummary, wait: bool = True) -> None:
        """Make a batch of staged files durable and move them to their real names, then
        book them: sync the data once, rename each, sync the folders once. A row is queued
        only for a file that is under its real name and durable.

        With ``wait=False`` and a connector that allows several uploads at once, the batch is made
        durable in a second thread while the next one is copied, and booked when the next
        batch is handed over (or at the end of the pass): waiting for the disk then overlaps
        copying instead of adding to it.
        """
        staged, self._staged = self._staged, []
        self._staged_bytes, self._staged_since = 0, time.monotonic()
        self._book_durable(summary)  # the batch before this one: booked in order
        if not staged:
            return
        if wait or self.external_connector.features.max_uploads < 2:
            self._book_outcomes(self._make_durable(staged), summary)
            return
        if self._committer is None:
            self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oeleo-commit")
        self._durable = self._committer.submit(self._make_durable, staged)

    def _book_durable(self, summary: RunSummary) -> None:
        """Wait for the batch being made durable in the second thread, and book it."""
        if self._durable is not None:
            future, self._durable = self._durable, None
            self._book_outcomes(future.result(), summary)

    def _make_durable(self, staged: List[Tuple[FileEntry, int, PutResult]]) -> List[Tuple[Any, ...]]:
        """Commit the batch and make it durable (``Connector.commit_many``); returns what to
        book, file by file: ("copied", entry, code, result) or ("error"/"fatal", entry, reason)."""
        results = self.external_connector.commit_many([result for _, _, result in staged])
        outcomes: List[Tuple[Any, ...]] = []
        for (entry, code, _), result in zip(staged, results):
            if isinstance(result, Failed):
                outcomes.append(("fatal" if result.fatal else "error", entry, result.reason))
            else:
                outcomes.append(("copied", entry, code, result))
        return outcomes

    def _book_outcomes(self, outcomes: List[Tuple[Any, ...]], summary: RunSummary) -> None:
        for outcome in outcomes:
            if outcome[0] == "copied":
                _, entry, code, result = outcome
                self._book_copied(entry, code, result, summary)
            else:
                kind, entry, reason = outcome
                self._book_failure(entry, kind, reason, summary)

    def _book_copied(self, entry: FileEntry, code: int, result: PutResult, summary: RunSummary) -> None:
        """The file is under its real name, verified and durable: book it. (Counted first: a
        failed write of the books takes it back out with the other rows it lost.)"""
        summary.copied += 1
        summary.bytes_copied += result.size
        self.bookkeeper.record_copied(
            entry.relpath, result.external_name, result.checksum, result.size, result.mtime_ns, code
        )
        self.reporter.file_done(entry.relpath, result.size)

    def _discard_staged(self) -> None:
        staged, self._staged = self._staged, []
        self._staged_bytes = 0
        for _, _, result in staged:
            self.external_connector.discard(result)

    # -- comparing the two sides ------------------------------------------------------
    def check(self, update_db: bool = False, force: bool = True, **kwargs: Any) -> CheckReport:
        """Compare each local file with the external side; ``update_db`` books the files
        that are already there (identical) as copied, and the others as to be copied."""
        self.connect_to_db()
        self._connect()
        # A destination that cannot be listed is an error, never "every file missing"; one
        # that is not there yet (before the first run) is missing every file, and says so.
        if not self.external_connector.check_base():
            log.warning("%s does not exist yet: every file is missing there", self.external_connector)
        if self._entries is None:
            self.filter_local(**kwargs)
        entries = self._entries or []
        report = CheckReport()
        report.errors.extend((item.relpath, item.reason) for item in self._skipped if item.failed)
        self._skipped = []
        compare(
            entries,
            self.local_connector,
            self.external_connector,
            self.bookkeeper,
            self.reporter,
            self.checker.algorithm,
            update_db,
            report,
        )
        self._entries = None
        return report
