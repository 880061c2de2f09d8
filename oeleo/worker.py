"""The worker: one pass of "list, decide, copy, verify, book" (oeleo.factories builds one).

A ``Worker`` composes a checker, a local connector (the instrument's folder), an external
connector (where files must go) and a bookkeeper. Everything that is the same for every
store lives once, each in a module of its own that the pass puts together: what to copy
(``oeleo.plan``), the transfer engine (``oeleo.connectors.base``), retries (``oeleo.retries``),
parallel copies (``oeleo.pool``), durability batches (``oeleo.batches``), booking
(``oeleo.booking``), comparing two sides (``oeleo.compare``) and the summary (``oeleo.summary``).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

from oeleo.batches import Batches, batches_in_flight
from oeleo.booking import Booking
from oeleo.checkers import Checker, ChecksumChecker, hash_file, streams
from oeleo.compare import compare
from oeleo.compress import stored_name
from oeleo.connectors.base import (
    TEMP_SUFFIX,
    Connector,
    FileEntry,
    Skipped,
    safe_relpath,
    upload_tag,
)
from oeleo.connectors.local import LocalConnector
from oeleo.errors import (
    Aborted,
    BookkeeperError,
    ConfigError,
    DatabaseBusyError,
    OeleoError,
    first_line,
)
from oeleo.hooks import Hooks
from oeleo.locks import ProcessLock
from oeleo.models import (
    Bookkeeper,
    Record,
    SimpleDbHandler,
    make_origin,
)
from oeleo.names import printable, printable_text
from oeleo.plan import CLASH, Action, PlanOptions, decide, same_place, without_name_clashes
from oeleo.pool import copy_in_parallel
from oeleo.reporters import Reporter
from oeleo.retries import Outcome, with_retries
from oeleo.summary import CheckReport, RunSummary
from oeleo.units import counted

log = logging.getLogger("oeleo")

Item = Tuple[FileEntry, Optional[Record], bool]  # a file to copy, its row, "compare checksums first"

PARALLEL_MIN_SIZE = 4 * 1024 * 1024  # with OELEO_WORKERS not set, smaller files go one at a time
AUTO_WORKERS = 2  # files copied at a time when OELEO_WORKERS is not set and the connector allows it
# ... and small files too, where each one waits for the store's answers (Features.waits_per_file).
LATENCY_WORKERS = 4


def _source_path_of(local: Any) -> Callable[[str], Union[str, Path]]:
    """How a copy names its source: the built-in local folder's path as a string (a ``Path``
    built per file costs more than the system calls that use it), else ``path()``."""
    if isinstance(local, LocalConnector) and type(local).path is LocalConnector.path:
        return local._fs_path
    return local.path


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
        compress: str = "",
        manifest: str = "",
        hooks: Any = None,
        alerts: Any = None,
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
        external_connector.commit_retries = self.retries  # a commit whose connection dropped, too
        # Not set: large files two at a time where the connector allows it (on two cores the
        # md5 of one overlaps the reading and writing of the other); small files one at a
        # time, as threads copying small files mostly wait for each other (Python's GIL).
        self._auto_workers = workers is None
        if workers is None:
            workers = min(AUTO_WORKERS, external_connector.features.max_uploads)
        self.workers = max(1, int(workers))
        self.force = force
        self.include_locked = include_locked
        # "gzip": FITS and XISF files are stored as NAME.gz (oeleo.compress); "" as they are.
        self.compress = compress
        # Run after each pass's copies are booked (oeleo.hooks): a Hooks, or callables.
        self.hooks = hooks if isinstance(hooks, Hooks) else Hooks(hooks or ())
        # Told how each pass went, one that raised included (oeleo.alerts.Alerts); None: no alerts.
        self.alerts = alerts
        self._streaming = False  # the checker validates during the copy's read (set each pass)
        self._shows_progress = True  # the reporter takes the bytes of each file (set each pass)
        self._validates = True  # the checker has a validate() of its own (set each pass)
        self._source_path: Callable[[str], Union[str, Path]] = local_connector.path
        # "sha256"/"md5": a MANIFEST.<algorithm> per destination folder after each pass (oeleo.manifest).
        self.manifest = manifest
        if manifest:
            self.exclude.append(f"MANIFEST.{manifest}")  # never copied, listed or counted as a file
        self._entries: Optional[List[FileEntry]] = None
        self._whole = True  # the entries are the whole listing (not a watcher's few files)
        self._place_checked = False  # whether the books' place was held against the destination
        self._noticed: Set[Tuple[str, str]] = set()  # the listing's notices said (a link skipped)
        self._skipped: List[Skipped] = []  # what the last listing did not list, and why
        self._stop = threading.Event()
        self._unreachable = threading.Event()  # set in a pass whose connection cannot be re-opened
        self._db_open = False
        self._no_books = False
        self._connected = False
        self._prepared = False
        self._committer: Optional[ThreadPoolExecutor] = None
        self._destination_lock: Optional[ProcessLock] = None  # see _hold_destination

    def __repr__(self) -> str:
        return f"Worker({self.local_connector!r} -> {self.external_connector!r})"

    # -- life cycle -------------------------------------------------------------------
    def connect_to_db(self) -> None:
        """Open the books (creating or upgrading them); stops if another run holds them."""
        if self._db_open or self._no_books:
            return
        first = not self.bookkeeper.exists()
        if first:
            # A first run from a folder that is not there (a typo) leaves nothing behind: no
            # books, no lock file. Once the books exist, such a run is recorded as failed in
            # them, for `oeleo status` and the monitor (a drive that went away at night).
            self._check_source()
        if self.dry_run and first:
            self._no_books = True
            log.info("dry run: %s does not exist yet; every file is new", self.bookkeeper.description)
            return
        self.bookkeeper.initialize_db(exclusive=not self.dry_run, read_only=self.dry_run)
        self._db_open = True

    def _connect(self) -> None:
        if self._connected:
            return
        self._check_source()
        self.external_connector.connect()
        self._connected = True
        self._prepared = False

    def _check_source(self) -> None:
        """The source side alone: listing needs no destination (an idle pass never opens one)."""
        if not self._connected:
            self.local_connector.check_source()

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
        self._release_destination()
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
        self._release_destination()
        self.bookkeeper.close()
        self._db_open = False

    def _hold_destination(self, refuse: bool = True) -> bool:
        """Lock, on this computer, the copy of this source folder to this destination, for
        the pass: two runs of it at once (a scheduled task and a run by hand with other
        books) would write the same temporary names, and one's clean-up of leftovers would
        remove the other's uploads. A second one stops (``DatabaseBusyError``, as for shared
        books), or with ``refuse=False`` learns it must leave the leftovers alone (False).
        Where the lock file cannot be made (another user's, in a shared temporary folder),
        the run goes on without it."""
        if self._destination_lock is None:
            external = self.external_connector
            if isinstance(external, LocalConnector):
                where = os.path.normcase(os.path.realpath(external.directory))
            else:
                where = f"{type(external).__name__}:{external}"
            key = hashlib.sha1(f"{self.bookkeeper.origin}\n{where}".encode("utf-8", "surrogatepass"))
            path = Path(tempfile.gettempdir()) / f"oeleo-copy-{key.hexdigest()[:16]}.lock"
            what = f"{self.local_connector.directory} to {printable(str(external))}"
            self._destination_lock = ProcessLock(path, what, busy="is already copying {what}")
        try:
            self._destination_lock.acquire()
        except DatabaseBusyError:
            if refuse:
                raise
            return False
        except BookkeeperError as exc:
            log.debug("running without the lock of this copy: %s", exc)
        return True

    def _release_destination(self) -> None:
        if self._destination_lock is not None:
            self._destination_lock.release()

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
        self._check_source()
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
        self._check_source()
        base = Path(self.local_connector.directory)
        entries = []
        for f in local_files:
            path = Path(f)
            relpath = self._relative_name(path if path.is_absolute() else base / path)
            st = path.stat() if path.is_absolute() else (base / path).stat()
            entries.append(FileEntry(relpath, st.st_size, st.st_mtime_ns))
        self._set_entries(entries, whole=False)
        return self.file_names

    def add_entries(self, entries: Iterable[FileEntry]) -> None:
        """Name the next pass's files as the source connector lists them (a folder watcher's
        changed files, checked against the filters by the watcher): nothing else is listed."""
        self._check_source()
        self._skipped = []
        self._set_entries(list(entries), whole=False)

    def _set_entries(self, entries: List[FileEntry], whole: bool = True) -> None:
        """The next pass's files; ``whole``: the source folder's whole listing (else some
        files only: the other files are not known to be gone)."""
        self._entries = entries
        self._whole = whole
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
    def run(self, started: Optional[datetime.datetime] = None) -> RunSummary:
        """Copy every new or changed file once, verified; book each one. Never raises for
        a single file: failures are recorded with their reason and counted. The alerts hear
        how the pass went, a pass that raised included (a dry run tells them nothing).

        ``started``: when the pass began, as its run row in the books says; a scheduler gives
        the instant it held its limits (``until``) against. By default, the start of this call."""
        try:
            summary = self._pass(started or datetime.datetime.now())
        except BaseException as exc:
            self.report_failed_pass(exc)
            raise
        # Books that could not be written cannot hold the alerts' state either.
        if self.alerts is not None and self._db_open and not self.dry_run and not summary.books_error:
            from oeleo.alerts import PassOutcome

            self._tell_alerts(PassOutcome.of_summary(summary, reached=self._connected))
        return summary

    def report_failed_pass(self, exc: BaseException) -> None:
        """Tell the alerts that a pass raised ``exc`` (a scheduler calls this when the pass
        failed before ``run``, while it listed the files)."""
        if self.alerts is None or not self._db_open or self.dry_run:
            return
        from oeleo.alerts import PassOutcome

        outcome = PassOutcome.of_error(exc)
        if outcome is not None:
            self._tell_alerts(outcome)

    def _tell_alerts(self, outcome: Any) -> None:
        folder, destination = str(self.local_connector.directory), str(self.external_connector)
        self.alerts.after_pass(self.bookkeeper, outcome, folder, destination)

    def _record_unlisted(self, began: datetime.datetime, exc: BaseException) -> None:
        """A pass whose source folder could not be read (gone, unreadable) is a failed run in
        the books, for ``oeleo status`` and the monitor: the instrument PC's drive that went
        away at night shows there, not only on a screen nobody reads."""
        if not self._db_open or self.dry_run:
            return
        try:
            self.bookkeeper.start_run(began)
            self.bookkeeper.finish_run("failed", 0, 0, 0, f"source not read: {first_line(exc)}")
        except Exception as books_exc:  # noqa: BLE001 - the source's error is the one to say
            log.debug("the failed start of this run could not be recorded: %s", books_exc)

    def _warn_if_moved(self) -> None:
        """Once per worker: the books say where this folder's copies went (the external name
        of the newest row copied). A destination that names another place gets a warning: the
        files booked as copied are not copied there again (the books are "one-eyed")."""
        self._place_checked = True
        try:
            found = self.bookkeeper.last_copied()
            if found is None:
                return
            local_name, booked = found
            external = self.external_connector
            # Compressed or not: switching OELEO_COMPRESS is no move.
            names = {external.external_name(name) for name in {local_name, stored_name(local_name, "gzip")}}
        except Exception as exc:  # noqa: BLE001 - a warning's check never stops a pass
            log.debug("cannot tell where the books' copies are: %s", exc)
            return
        if any(same_place(booked, name) for name in names):
            return
        log.warning(
            "the books say this folder's files went elsewhere (%s to %s), but the destination is now "
            "%s: the files booked as copied are not copied there again (to copy every file there: "
            "oeleo run --force; docs/destinations.md)",
            printable(local_name),
            printable_text(booked),
            external,
        )

    def _clear_clashes_over(
        self, records: Dict[str, Record], entries: List[FileEntry], skipped: List[Skipped]
    ) -> None:
        """The booked errors of name clashes (``plan.CLASH``) this pass no longer finds: the
        file is listed without one (its copy there was left alone: nothing is wrong), or,
        after a listing of the whole folder, it is gone from the source."""
        clashing = {item.relpath for item in skipped if item.reason.startswith(CLASH)}
        present = None if self._whole else {entry.relpath for entry in entries}
        for name, row in records.items():
            if not (row.last_error and row.last_error.startswith(CLASH)) or name in clashing:
                continue
            if present is None or name in present:
                self.bookkeeper.clear_error(name)

    def _pass(self, began: datetime.datetime) -> RunSummary:
        started = time.monotonic()
        self.connect_to_db()
        if self._entries is None:
            try:
                if type(self).filter_local is not Worker.filter_local:
                    self.filter_local()  # a subclass chooses the files its own way
                else:
                    self._list_local()  # the same, without building 0.7's list of paths
            except (ConfigError, OSError) as exc:
                self._record_unlisted(began, exc)
                raise
        entries = self._entries or []
        records = self.bookkeeper.load() if self._db_open else {}
        if records and not self._place_checked:
            self._warn_if_moved()
        summary = RunSummary(listed=len(entries), dry_run=self.dry_run)
        skipped, self._skipped = self._skipped, []
        if self.compress:
            whole = self._whole
            elsewhere = None if whole else (lambda relpath: self.local_connector.stat(relpath) is not None)
            entries = without_name_clashes(entries, self.compress, skipped, elsewhere)
        if not self.dry_run:
            self._clear_clashes_over(records, entries, skipped)
        now_ns = time.time_ns()
        plan = PlanOptions(force=self.force, include_locked=self.include_locked, min_age=self.min_age)
        todo: List[Item] = []
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
            listing = Booking(self.bookkeeper, self.reporter, self.external_connector, summary)
            listing.noticed = self._noticed
            listing.skipped(skipped)
            self._stop.clear()
            summary.seconds = time.monotonic() - started
            self.reporter.run_finished(summary)
            return summary

        if todo:
            self._hold_destination()  # another process copying here now: this one stops
        previous = self.bookkeeper.start_run(began)
        self._unreachable.clear()  # a scheduler's next pass tries the connection again
        forget = getattr(self.external_connector, "_forget_outage", None)
        if forget is not None:  # the commits' retries too (Connector._again_after_drops)
            forget()
        if todo or previous != "ok" or self.manifest or self._connected:
            try:
                self._prepare_destination()
                external = self.external_connector
                if todo and type(external).prepare_for is not Connector.prepare_for:  # else no list
                    external.prepare_for([stored_name(entry.relpath, self.compress) for entry, _, _ in todo])
            except BaseException as exc:
                # The run log says so (oeleo status, the monitor): a pass that could not reach
                # its destination failed; the next one, even idle, connects again.
                status = "stopped" if isinstance(exc, (KeyboardInterrupt, Aborted)) else "failed"
                message = f"destination not reached: {first_line(exc)}"
                try:
                    self.bookkeeper.finish_run(status, 0, 0, 0, message)
                except Exception as books_exc:  # noqa: BLE001 - the destination's error is the one to say
                    log.debug("the failed start of this run could not be recorded: %s", books_exc)
                raise
            if previous != "ok" and self._hold_destination(refuse=False):
                self._remove_leftovers()  # the run before did not finish cleanly (or there was none)
        # else: nothing to copy after a clean run: the destination is not contacted (no
        # connection, login or request), as an idle pass of a scheduler should be.
        self._streaming = self._checks_while_reading()  # once a pass, not once a file
        self._validates = type(self.checker).validate is not Checker.validate
        self._source_path = _source_path_of(self.local_connector)
        reporter = type(self.reporter)
        self._shows_progress = not (
            reporter.file_progress is Reporter.file_progress and reporter.advance is Reporter.advance
        )
        booking = Booking(self.bookkeeper, self.reporter, self.external_connector, summary)
        booking.noticed = self._noticed
        if type(self.checker).take_metadata is not Checker.take_metadata:  # else: no Path per file
            path_of = self.local_connector.path
            booking.metadata_of = lambda relpath: self.checker.take_metadata(path_of(relpath))
        self.external_connector.stop_asked = self._stop.is_set  # its commits: none after a stop
        batches = Batches(self.external_connector, booking.outcomes, self._commit_thread)
        booking.batches = batches
        booking.skipped(skipped)
        self.reporter.run_started(len(todo), sum(e.size for e, _, _ in todo))

        def book(item: Item, outcome: Outcome) -> None:
            booking.outcome(item[0], item[1], *outcome)

        raised: Optional[BaseException] = None  # what ended the pass early, if anything did
        try:
            one_by_one, parallel = todo, []
            workers = self.workers
            smallest = PARALLEL_MIN_SIZE if self._auto_workers else 0
            features = self.external_connector.features
            if self._auto_workers and features.waits_per_file:
                # Each small file waits for the store's answers: threads overlap the waits.
                workers, smallest = min(LATENCY_WORKERS, features.max_uploads), 0
            if workers > 1:
                parallel = [item for item in todo if item[0].size >= smallest]
                if len(parallel) > 1:
                    one_by_one = [item for item in todo if item[0].size < smallest]
                else:
                    parallel = []
            for item in one_by_one:
                if self._stop.is_set() or summary.fatal:
                    break
                book(item, self._attempt(item))
            if parallel:
                keep_going = lambda: not (self._stop.is_set() or summary.fatal)  # noqa: E731
                copy_in_parallel(parallel, workers, self._attempt, book, keep_going)
            batches.commit()  # staged files are whole and verified: finish them
            self.bookkeeper.flush()  # the pass is not done before its rows are written
            booking.refused()
            self.hooks.after_pass(
                booking.arrived, self.bookkeeper, self.local_connector.path, self._stop.is_set
            )
            if self.manifest:
                from oeleo.manifest import write_manifests

                write_manifests(self, summary)
        except BookkeeperError as exc:
            booking.books_failed(exc)
        except BaseException as exc:
            summary.stopped = isinstance(exc, (KeyboardInterrupt, Aborted))
            raised = exc
            try:
                batches.book_durable()  # renamed into place and durable: book them
            finally:
                batches.discard()
            raise
        finally:
            summary.stopped = summary.stopped or self._stop.is_set()
            if summary.fatal or summary.stopped or raised is not None:  # the files it did not come to
                summary.left += max(0, len(todo) - booking.handled)
            # Cleared when the pass ends, not when it starts: a stop asked while the files
            # were listed (SIGTERM, Ctrl-C, a scheduler) must not be forgotten.
            self._stop.clear()
            summary.seconds = time.monotonic() - started
            self._entries = None  # the next pass lists again
            status, message = summary.status, summary.books_error or summary.fatal or ""
            if booking.unlisted and not message:  # failures with no row of their own
                folder, reason = booking.unlisted[0]
                more = f" and {len(booking.unlisted) - 1} more" if len(booking.unlisted) > 1 else ""
                message = f"not listed: {printable(folder)}{more} ({reason})"
            if raised is not None and not summary.stopped:
                # A setting found wrong in the middle of the pass (a key the uploads refuse):
                # the run failed, whatever the counts say.
                status, message = "failed", message or first_line(raised)
            try:
                self.bookkeeper.finish_run(
                    status, summary.copied, summary.failed, summary.bytes_copied, message
                )
            except BookkeeperError as exc:
                if summary.books_error is None:
                    booking.books_failed(exc)
                else:
                    log.error("the end of this run could not be recorded either: %s", exc)
            self.reporter.run_finished(summary)
        return summary

    def _checks_while_reading(self) -> bool:
        """Whether the checker validates the chunks the copy reads, in the engine's stage()
        (the file is read once); for a connector of its own put() or stage(), it checks first."""
        external = self.external_connector
        engine = type(external).stage is Connector.stage and not _overrides_put_only(external)
        return engine and streams(self.checker)

    def _commit_thread(self) -> ThreadPoolExecutor:
        """The thread(s) that make full batches durable (made when first needed): one for a
        folder, a few for an object store (``batches.batches_in_flight``)."""
        if self._committer is None:
            threads = batches_in_flight(self.external_connector)
            self._committer = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="oeleo-commit")
        return self._committer

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

    def _attempt(self, item: Item) -> Outcome:
        """Copy one file, retrying after dropped connections. Runs in a copying thread; the
        result is booked by the main thread."""
        entry, record, legacy = item
        self.reporter.file_started(entry.relpath, entry.size)
        return with_retries(
            lambda: self._copy_one(entry, record, legacy),
            entry.relpath,
            self.retries,
            self._stop,
            self.external_connector.reconnect,
            lambda: self.local_connector.stat(entry.relpath) is not None,
            self._unreachable,
            # The store found away by a commit's or a batch's retries: no retries of its own.
            lambda: getattr(self.external_connector, "_away", None),
        )

    def _copy_one(self, entry: FileEntry, record: Optional[Record], legacy: bool) -> Tuple[str, Any]:
        source = self._source_path(entry.relpath)  # a str for the built-in local folder
        algorithm = self.checker.algorithm
        if legacy and record is not None and record.checksum:
            # A row from oeleo 0.7 has a checksum but no size/mtime: compare before copying.
            digest = hash_file(source, algorithm)
            if digest == record.checksum:
                return "unchanged", (digest, entry.relpath)
        external = self.external_connector
        streaming = self._streaming
        if not streaming and self._validates:
            reason = self.checker.validate(Path(source))
            if reason:
                return "error", f"refused by {type(self.checker).__name__}: {reason}"
        if not external.features.overwrite:  # a store that never replaces a file it holds
            target = stored_name(entry.relpath, self.compress)
            there = external.stat(target)
            if there is not None:
                same = self._same_as_stored(entry, source, target, there.size)
                if same is not None:  # a copy a killed run made: booked, not counted again
                    return "unchanged", (same, target)
                return "not_replaced", None
        options: Dict[str, Any] = {
            "algorithm": algorithm,
            "verify": self.verify,
            # A reporter that shows no progress (the command's, writing to a file) gets no
            # call per chunk.
            "progress": functools.partial(self.reporter.file_progress, entry.relpath)
            if self._shows_progress
            else None,
            "should_stop": self._stop.is_set,
        }
        if self.compress:  # only then: a connector's own put() of before may not know it
            options["compress"] = self.compress
        if streaming:
            options["stream_check"] = functools.partial(self.checker.stream_check, Path(source))
        if _overrides_put_only(external):
            # A connector written around put() keeps working: one file at a time, unbatched.
            return "copied", external.put(Path(source), entry.relpath, **options)
        return "staged", external.stage(source, entry.relpath, **options)

    def _same_as_stored(self, entry: FileEntry, source: Any, target: str, stored_size: int) -> Optional[str]:
        """For a store that never overwrites and already holds ``target``: the source's
        checksum when the store's copy is this very file (uploaded by a run killed before it
        booked it, copied before and asked for again with --force, or by a PC whose books were
        lost), else None. Only for a copy of the right size: the store's copy is hashed there
        (or read back) only then. A file sent compressed is compressed again to compare (the
        gzip form is deterministic): its size and hash, with those of the store's copy."""
        algorithm = self.checker.algorithm
        try:
            if target != entry.relpath:
                from oeleo.compare import source_and_gzip_digests

                digest, wanted, size = source_and_gzip_digests(str(source), algorithm, lambda n: None)
                if stored_size != size:
                    return None
            elif stored_size != entry.size:
                return None
            else:
                digest = wanted = hash_file(source, algorithm)
            stored = self.external_connector.checksum(target, algorithm)
            return digest if stored == wanted else None
        except (OSError, OeleoError) as exc:
            log.debug("%s: cannot compare with the copy already there: %s", printable(entry.relpath), exc)
            return None

    # -- comparing the two sides ------------------------------------------------------
    def check(
        self, update_db: bool = False, force: bool = True, deep: bool = False, **kwargs: Any
    ) -> CheckReport:
        """Compare each local file with the external side; ``update_db`` books the files
        that are already there (identical) as copied, and the others as to be copied.
        ``deep``: where the store keeps no hash to read (``Features.checksum_downloads``),
        download and hash each copy instead of comparing sizes and the books' checksum."""
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
        try:
            compare(
                entries,
                self.local_connector,
                self.external_connector,
                self.bookkeeper,
                self.reporter,
                self.checker.algorithm,
                update_db,
                report,
                should_stop=self._stop.is_set,
                compress=self.compress,
                deep=deep,
            )
        finally:
            self._stop.clear()
            self._entries = None
        return report
