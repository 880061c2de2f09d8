"""The bookkeeper: one row per file in the ``filelist`` table (SQLite or PostgreSQL).

A row says "copied" (code 1 with a checksum) only after the external copy is complete and
verified. Rows are keyed by ``origin`` (host and source folder) and ``local_name`` (the path
relative to the source folder, POSIX separators), so many PCs can share one database.

Each ``Bookkeeper`` makes its own peewee model classes bound to its own database: there is
no module-level database state, so two workers with two databases work in one process.
Writes are queued and committed in batches (one transaction per batch, not per file).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Type, TypeVar, Union

import peewee

from oeleo.errors import BookkeeperError, DatabaseBusyError, first_line
from oeleo.locks import ProcessLock
from oeleo.names import QUOTE, from_books, hide_passwords, printable_text, to_books

log = logging.getLogger("oeleo")

DEFAULT_DB_NAME = "oeleo-file-list.db"
T = TypeVar("T")

SHOULD_BE_COPIED = 0
SHOULD_BE_COPIED_IF_CHANGED = 1
SHOULD_NOT_BE_COPIED = 2
CODES = [
    (SHOULD_BE_COPIED, "should-be-copied"),
    (SHOULD_BE_COPIED_IF_CHANGED, "should-be-copied-if-changed"),
    (SHOULD_NOT_BE_COPIED, "should-not-be-copied"),
]
CODE_NAMES = dict(CODES)

BATCH_ROWS = 500
BATCH_SECONDS = 2.0
BUSY_TIMEOUT_MS = 5000  # how long SQLite waits for another program's lock
_ROWS_PER_STATEMENT = 80  # keeps an insert under SQLite's 999 bound variables


class Record:
    """What a pass needs to know about one file, without a peewee object per row.

    Slotted: a pass keeps one per booked file, 100,000 of them at times.
    """

    __slots__ = ("local_name", "checksum", "code", "size", "mtime_ns", "last_error")

    def __init__(
        self,
        local_name: str,
        checksum: Optional[str],
        code: int,
        size: Optional[int],
        mtime_ns: Optional[int],
        last_error: Optional[str] = None,
    ) -> None:
        self.local_name = local_name
        self.checksum = checksum
        self.code = code
        self.size = size
        self.mtime_ns = mtime_ns
        self.last_error = last_error

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"Record({fields})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)


def make_origin(directory: Union[str, os.PathLike], host: Optional[str] = None) -> str:
    """``host:/abs/source/folder`` - which PC and which folder a row belongs to."""
    folder = Path(str(directory)).expanduser()
    try:
        folder = folder.resolve()
    except OSError:
        folder = folder.absolute()
    origin = f"{host or socket.gethostname()}:{folder.as_posix()}"
    try:
        origin.encode("utf-8")
    except UnicodeEncodeError:  # a folder name that is not UTF-8: kept as file names are (‛FF)
        return to_books(origin)
    return origin


class FileListTable(peewee.Model):
    """The columns of the ``filelist`` table; each ``Bookkeeper`` binds a subclass of its own."""

    id = peewee.AutoField()
    processed_date = peewee.DateTimeField(default=datetime.datetime.now)
    local_name = peewee.CharField(max_length=1024)
    external_name = peewee.CharField(max_length=2048, null=True)
    checksum = peewee.CharField(null=True)
    code = peewee.SmallIntegerField(choices=CODES, default=SHOULD_BE_COPIED)
    size = peewee.BigIntegerField(null=True)
    mtime_ns = peewee.BigIntegerField(null=True)
    origin = peewee.CharField(max_length=1024, default="")
    last_error = peewee.TextField(null=True)
    metadata = peewee.TextField(null=True)  # JSON: what the checker kept (FITS header keywords)

    class Meta:
        indexes = ((("origin", "local_name"), True),)


class RunLogTable(peewee.Model):
    """The columns of the ``oeleo_runs`` table (one row per run and origin)."""

    id = peewee.AutoField()
    origin = peewee.CharField(max_length=1024, index=True)
    started = peewee.DateTimeField(default=datetime.datetime.now)
    finished = peewee.DateTimeField(null=True)
    status = peewee.CharField(default="running")
    files_copied = peewee.IntegerField(default=0)
    files_failed = peewee.IntegerField(default=0)
    bytes_copied = peewee.BigIntegerField(default=0)
    message = peewee.TextField(null=True)


def _make_models(database: peewee.Database) -> Tuple[Type[FileListTable], Type[RunLogTable]]:
    """Model classes of the two tables bound to ``database`` alone (the classes above stay
    unbound: two bookkeepers never share a database through them)."""

    class FileList(FileListTable):
        class Meta:
            table_name = "filelist"

    class RunLog(RunLogTable):
        class Meta:
            table_name = "oeleo_runs"

    FileList.bind(database, bind_refs=False, bind_backrefs=False)
    RunLog.bind(database, bind_refs=False, bind_backrefs=False)
    return FileList, RunLog


class Bookkeeper:
    """Reads and writes the ``filelist`` table of one database for one origin."""

    def __init__(self, database: peewee.Database, description: str, origin: Optional[str] = None):
        self.database = database
        self.description = description
        self.origin = origin
        self.db_model, self.run_model = _make_models(database)
        # Keyed by local name: the last write of a file wins within a batch (PostgreSQL refuses
        # an upsert that touches the same row twice in one statement).
        self._pending_copied: Dict[str, dict] = {}
        self._pending_errors: Dict[str, dict] = {}
        self._pending_codes: Dict[str, dict] = {}
        self._pending_seen: Dict[str, dict] = {}
        self._last_flush = time.monotonic()
        self.lost_copies = 0  # copies queued for the books whose write failed (not booked)
        self.lost_bytes = 0  # and their sizes
        self.refused: List[Tuple[str, str, bool]] = []  # rows the database refused, one by one
        self._run_id: Optional[int] = None
        self._initialized = False
        self._layout = "current"  # or "legacy"/"empty" when read-only over an old or no table
        self._has_metadata = True  # False when read-only over a table from before that column
        self.record: Any = None  # the oeleo 0.7 "current record"

    # -- opening ----------------------------------------------------------------------
    def initialize_db(self, exclusive: bool = True, read_only: bool = False) -> None:
        """Connect, create or upgrade the tables, and (``exclusive``) lock out other runs.

        ``read_only`` (a dry run, ``oeleo status``) changes nothing: the database is opened
        read-only where the backend can (SQLite), and an old table is read as it is.
        """
        if self._initialized:
            return
        if self.origin is None:
            raise BookkeeperError("the bookkeeper needs an origin (host and source folder)")
        self._read_only = read_only  # how _connect opens the database
        try:
            self._connect()
            if exclusive:
                self._lock()
            if read_only:
                self._read_only_layout()
            else:
                self._create_or_upgrade()
                self._adopt_legacy_rows()
        except peewee.PeeweeException as exc:
            self.close()
            raise BookkeeperError(f"{self.description}: {self._explain(exc)}") from None
        except OSError as exc:  # a full disk or a read-only folder, around the database file
            self.close()
            where = f" ({exc.filename})" if exc.filename else ""
            raise BookkeeperError(f"{self.description}: {exc.strerror or exc}{where}") from None
        except BaseException:
            self.close()
            raise
        self._initialized = True

    def exists(self) -> bool:
        """Whether the books are already there (a dry run does not create them)."""
        return True

    def _connect(self) -> None:
        self.database.connect(reuse_if_open=True)

    def _lock(self) -> None:
        """Refuse to run beside another oeleo process on the same books (subclasses)."""

    def run_alive(self) -> Optional[bool]:
        """Whether a run of this origin holds the books now (None: cannot tell): a run row
        still "running" with nobody holding the books was killed."""
        return None

    def _create_or_upgrade(self) -> None:
        db = self.database
        with db.atomic():
            self._lock_schema()
            tables = db.get_tables()
            if "filelist" not in tables:
                db.create_tables([self.db_model])
            else:
                self._upgrade_filelist()
            if "oeleo_runs" not in tables:
                db.create_tables([self.run_model])

    def _lock_schema(self) -> None:
        """Keep other processes from creating or upgrading the tables in this transaction."""

    def _upgrade_filelist(self) -> None:
        """Bring an oeleo 0.7 table (no size/mtime/origin/last_error), or one without the
        metadata column, up to date, in place."""
        db = self.database
        model = self.db_model
        columns = {c.name for c in db.get_columns("filelist")}
        missing = [n for n in ("size", "mtime_ns", "origin", "last_error", "metadata") if n not in columns]
        legacy_indexes = [
            index.name
            for index in db.get_indexes("filelist")
            if index.unique and list(index.columns) == ["local_name"]
        ]
        if missing or legacy_indexes:  # peewee's migrations are imported only then (~4 ms)
            from playhouse.migrate import SchemaMigrator, migrate

            migrator = SchemaMigrator.from_database(db)
            if missing:
                count = len(missing)
                log.info("upgrading the filelist table of %s (adding %d columns)", self.description, count)
                fields = model._meta.fields
                migrate(*(migrator.add_column("filelist", name, fields[name]) for name in missing))
            for name in legacy_indexes:
                migrate(migrator.drop_index("filelist", name))
        peewee.SchemaManager(model).create_indexes(safe=True)

    def _adopt_legacy_rows(self) -> None:
        """Rows written by oeleo 0.7 have no origin; they belong to the first origin that opens them."""
        model = self.db_model
        adopted = (
            model.update(origin=self.origin).where((model.origin == "") | (model.origin.is_null())).execute()
        )
        if adopted:
            log.info("%d rows from an older oeleo now belong to %s", adopted, self.origin)

    # -- reading ----------------------------------------------------------------------
    def _read_only_layout(self) -> None:
        tables = self.database.get_tables()
        if "filelist" not in tables:
            self._layout = "empty"
            return
        columns = {c.name for c in self.database.get_columns("filelist")}
        self._has_metadata = "metadata" in columns
        self._layout = "current" if {"size", "mtime_ns", "origin", "last_error"} <= columns else "legacy"

    def load(self) -> Dict[str, Record]:
        """All rows of this origin, as light records keyed by local name."""
        model = self.db_model
        if self._layout == "empty":
            return {}
        if self._layout == "legacy":  # an oeleo 0.7 table read by a dry run, not upgraded
            query = model.select(model.local_name, model.checksum, model.code).tuples()
            return {
                from_books(row[0]): Record(from_books(row[0]), row[1], row[2], None, None)
                for row in self._guard(query.iterator)
            }
        query = (
            model.select(
                model.local_name, model.checksum, model.code, model.size, model.mtime_ns, model.last_error
            )
            .where((model.origin == self.origin) | (model.origin == ""))
            .tuples()
        )
        records = {}
        for name, checksum, code, size, mtime_ns, last_error in self._guard(query.iterator):
            if QUOTE in name:
                name = from_books(name)  # the name as the file system gives it
            records[name] = Record(name, checksum, code, size, mtime_ns, last_error)
        return records

    def rows(self, code: Optional[int] = None, errors_only: bool = False) -> Iterator[FileListTable]:
        """Rows of this origin (peewee objects) for reports, ordered by name."""
        model = self.db_model
        fields = [f for f in model._meta.sorted_fields if self._has_metadata or f.name != "metadata"]
        query = model.select(*fields).where(model.origin == self.origin)
        if code is not None:
            query = query.where(model.code == code)
        if errors_only:
            query = query.where(model.last_error.is_null(False))
        return iter(self._guard(lambda: list(query.order_by(model.local_name))))

    def counts(self) -> Dict[int, int]:
        model = self.db_model
        query = (
            model.select(model.code, peewee.fn.COUNT(model.id))
            .where(model.origin == self.origin)
            .group_by(model.code)
            .tuples()
        )
        pairs: List[Any] = self._guard(lambda: list(query))  # tuples (peewee's types say rows)
        return {code: n for code, n in pairs}

    def last_copied(self) -> Optional[Tuple[str, str]]:
        """The local and external name of the newest row booked as copied (the highest id with
        a checksum and an external name): where this folder's copies went last. None if none."""
        model = self.db_model
        query = (
            model.select(model.local_name, model.external_name)
            .where(
                (model.origin == self.origin)
                & model.checksum.is_null(False)
                & model.external_name.is_null(False)
            )
            .order_by(model.id.desc())
            .limit(1)
            .tuples()
        )
        found: List[Any] = self._guard(lambda: list(query))
        return (from_books(found[0][0]), from_books(found[0][1])) if found else None

    def last_runs(self, limit: int = 1) -> List[RunLogTable]:
        model = self.run_model
        query = model.select().where(model.origin == self.origin).order_by(model.id.desc()).limit(limit)
        return self._guard(lambda: list(query))

    # -- writing (queued, committed in batches) ---------------------------------------
    def record_copied(
        self,
        local_name: str,
        external_name: str,
        checksum: str,
        size: int,
        mtime_ns: int,
        code: int = SHOULD_BE_COPIED_IF_CHANGED,
        metadata: Optional[Dict[str, Any]] = None,
    ) -> None:
        """Queue: this file is now in the store, whole and verified; ``metadata`` is what the
        checker kept of it (FITS header keywords), stored as JSON."""
        local_name = to_books(local_name)
        self._pending_errors.pop(local_name, None)  # this copy supersedes an earlier failure
        self._pending_copied[local_name] = {
            "origin": self.origin,
            "local_name": local_name,
            "external_name": to_books(external_name),
            "checksum": checksum,
            "size": size,
            "mtime_ns": mtime_ns,
            "code": code,
            "processed_date": datetime.datetime.now(),
            "last_error": None,
            "metadata": json.dumps(metadata) if metadata else None,
        }
        self._maybe_flush()

    def record_error(self, local_name: str, reason: str, copy_again: bool = False) -> None:
        """Queue: this file failed; keep the reason, keep the code (it is tried again).
        ``copy_again``: the store's copy is known wrong (``FoundWrongInPlace``): the code
        becomes 0 (should be copied; a locked file stays locked), so that the next run copies
        it even when its size and time are still those of the row."""
        local_name = to_books(local_name)
        row: Dict[str, Any] = {
            "origin": self.origin,
            "local_name": local_name,
            "last_error": printable_text(reason[:2000]),
        }
        if copy_again:
            row["code"] = SHOULD_BE_COPIED
        self._pending_errors[local_name] = row
        self._maybe_flush()

    def clear_error(self, local_name: str) -> None:
        """Queue: the file's last error is over (its hooks ran again and succeeded, oeleo.hooks)."""
        local_name = to_books(local_name)
        row = {"origin": self.origin, "local_name": local_name, "last_error": None}
        self._pending_errors[local_name] = row
        self._maybe_flush()

    def record_seen(self, local_name: str, size: int, mtime_ns: int, note: str) -> None:
        """Queue: this file (as it is now) was looked at and left as the store holds it (a
        store that does not overwrite): its size and time, so it is not tried again until it
        changes again, and ``note`` as its last word. Its checksum stays the stored version's."""
        local_name = to_books(local_name)
        self._pending_codes.pop(local_name, None)
        self._pending_seen[local_name] = {
            "origin": self.origin,
            "local_name": local_name,
            "size": size,
            "mtime_ns": mtime_ns,
            "code": SHOULD_BE_COPIED_IF_CHANGED,
            "last_error": note,
        }
        self._maybe_flush()

    def record_code(self, local_name: str, code: int, external_name: Optional[str] = None) -> None:
        """Queue: set a file's code (creating its row), e.g. from ``check(update_db=True)``."""
        local_name = to_books(local_name)
        self._pending_codes[local_name] = {
            "origin": self.origin,
            "local_name": local_name,
            "code": code,
            "external_name": to_books(external_name) if external_name is not None else None,
        }
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        pending = (
            len(self._pending_copied)
            + len(self._pending_errors)
            + len(self._pending_codes)
            + len(self._pending_seen)
        )
        if pending >= BATCH_ROWS or (pending and time.monotonic() - self._last_flush > BATCH_SECONDS):
            self.flush()

    def flush(self) -> None:
        """Commit every queued write in one transaction."""
        self._last_flush = time.monotonic()
        if not (self._pending_copied or self._pending_errors or self._pending_codes or self._pending_seen):
            return
        model = self.db_model
        copied = list(self._pending_copied.values())
        errors = [row for row in self._pending_errors.values() if "code" not in row]
        errors_again = [row for row in self._pending_errors.values() if "code" in row]
        codes = list(self._pending_codes.values())
        seen = list(self._pending_seen.values())
        self._pending_copied, self._pending_errors, self._pending_codes = {}, {}, {}
        self._pending_seen = {}
        keep_lock = peewee.Case(
            None, [(model.code == SHOULD_NOT_BE_COPIED, SHOULD_NOT_BE_COPIED)], peewee.EXCLUDED.code
        )
        target = [model.origin, model.local_name]

        def upsert_copied(rows: Sequence[Any], fields: Any = None) -> peewee.Insert:
            return model.insert_many(rows, fields=fields).on_conflict(
                conflict_target=target,
                update={
                    model.external_name: peewee.EXCLUDED.external_name,
                    model.checksum: peewee.EXCLUDED.checksum,
                    model.size: peewee.EXCLUDED.size,
                    model.mtime_ns: peewee.EXCLUDED.mtime_ns,
                    model.processed_date: peewee.EXCLUDED.processed_date,
                    model.last_error: None,
                    model.metadata: peewee.EXCLUDED.metadata,
                    model.code: keep_lock,
                },
            )

        def upsert_errors(rows: Sequence[Any], fields: Any = None) -> peewee.Insert:
            return model.insert_many(rows, fields=fields).on_conflict(
                conflict_target=target,
                update={model.last_error: peewee.EXCLUDED.last_error},
            )

        def upsert_errors_again(rows: Sequence[Any], fields: Any = None) -> peewee.Insert:
            return model.insert_many(rows, fields=fields).on_conflict(
                conflict_target=target,
                update={model.last_error: peewee.EXCLUDED.last_error, model.code: keep_lock},
            )

        def upsert_codes(rows: Sequence[Any], fields: Any = None) -> peewee.Insert:
            return model.insert_many(rows, fields=fields).on_conflict(
                conflict_target=target,
                update={
                    model.code: peewee.EXCLUDED.code,
                    model.external_name: peewee.fn.COALESCE(
                        peewee.EXCLUDED.external_name, model.external_name
                    ),
                },
            )

        def upsert_seen(rows: Sequence[Any], fields: Any = None) -> peewee.Insert:
            return model.insert_many(rows, fields=fields).on_conflict(
                conflict_target=target,
                update={
                    model.size: peewee.EXCLUDED.size,
                    model.mtime_ns: peewee.EXCLUDED.mtime_ns,
                    model.last_error: peewee.EXCLUDED.last_error,
                    model.code: keep_lock,
                },
            )

        def run() -> None:
            with self.database.atomic():
                self._write_rows(copied, upsert_copied)
                self._write_rows(errors, upsert_errors)
                self._write_rows(errors_again, upsert_errors_again)
                self._write_rows(codes, upsert_codes)
                self._write_rows(seen, upsert_seen)

        try:
            try:
                run()
            except (peewee.IntegrityError, peewee.DataError):
                # The database refuses one row (a name longer than PostgreSQL's column, say):
                # write them one by one, so that row fails alone and the others are booked.
                self._write_one_by_one(
                    [(row, upsert_copied) for row in copied]
                    + [(row, upsert_errors) for row in errors]
                    + [(row, upsert_errors_again) for row in errors_again]
                    + [(row, upsert_codes) for row in codes]
                    + [(row, upsert_seen) for row in seen]
                )
        except peewee.PeeweeException as exc:
            self.lost_copies += len(copied)  # the transaction is rolled back: none of them booked
            self.lost_bytes += sum(row["size"] or 0 for row in copied)
            raise BookkeeperError(f"{self.description}: {self._explain(exc)}") from None

    def _write_one_by_one(self, rows: List[Tuple[dict, Callable[..., peewee.Insert]]]) -> None:
        for row, statement in rows:
            try:
                with self.database.atomic():
                    statement([row]).execute()
            except (peewee.IntegrityError, peewee.DataError) as exc:
                is_copy = statement.__name__ == "upsert_copied"
                self.refused.append((from_books(row["local_name"]), self._explain(exc), is_copy))

    def take_refused(self) -> List[Tuple[str, str, bool]]:
        """Rows the database refused since the last call: (name, reason, was it a copy)."""
        refused, self.refused = self.refused, []
        return refused

    def drop_pending(self) -> int:
        """Forget every queued write (the books cannot be written); returns how many of them
        were copies, which are then not booked."""
        dropped = len(self._pending_copied)
        self.lost_bytes += sum(row["size"] or 0 for row in self._pending_copied.values())
        self._pending_copied, self._pending_errors, self._pending_codes = {}, {}, {}
        self._pending_seen = {}
        self.lost_copies += dropped
        return dropped

    def _write_rows(self, rows: List[dict], statement: Callable[..., peewee.Insert]) -> None:
        """Run ``statement`` (an INSERT ... ON CONFLICT built by peewee) for every row.

        On SQLite the SQL is built once, for the first row, and run with ``executemany``:
        peewee building the text and parameters of every value costs more than SQLite
        writing them. Elsewhere (PostgreSQL: one round trip per statement) rows go in
        multi-row statements.
        """
        if not rows:
            return
        if isinstance(self.database, peewee.SqliteDatabase):
            names = list(rows[0])
            fields = [self.db_model._meta.fields[name] for name in names]
            sql, params = statement([tuple(rows[0][name] for name in names)], fields).sql()
            values = sql[sql.index(" VALUES (") + 9 :]
            if values[: values.index(")")].count("?") == len(fields):  # no column added by peewee
                tail = tuple(params[len(fields) :])  # parameters of the ON CONFLICT part
                convert = [field.db_value for field in fields]
                self.database.cursor().executemany(
                    sql,
                    [tuple(c(row[n]) for c, n in zip(convert, names)) + tail for row in rows],
                )
                return
        for chunk in _chunks(rows):
            statement(chunk).execute()

    def set_code(self, local_names: Sequence[str], code: int) -> int:
        """Set the code of these files now (creating rows as needed); returns how many."""
        if code not in CODE_NAMES:
            raise ValueError(f"code must be 0, 1 or 2, not {code!r}")
        for name in local_names:
            self.record_code(name, code)
        self.flush()
        return len(local_names)

    def unlock(self, local_names: Sequence[str]) -> int:
        """Code 1 for files that were copied before, 0 for the others."""
        model = self.db_model

        def run() -> int:
            with self.database.atomic():
                done = 0
                for name in map(to_books, local_names):
                    row = model.get_or_none((model.origin == self.origin) & (model.local_name == name))
                    if row is None:
                        model.create(origin=self.origin, local_name=name, code=SHOULD_BE_COPIED)
                    else:
                        row.code = SHOULD_BE_COPIED_IF_CHANGED if row.checksum else SHOULD_BE_COPIED
                        row.save()
                    done += 1
                return done

        return self._guard(run)

    # -- runs -------------------------------------------------------------------------
    def _last_status(self) -> Optional[str]:
        model = self.run_model
        query = model.select(model.status).where(model.origin == self.origin)
        last = query.order_by(model.id.desc()).limit(1).tuples().first()
        return last[0] if last else None

    def start_run(self, started: Optional[datetime.datetime] = None) -> Optional[str]:
        """Record a new run of this origin, begun at ``started`` (default: now), and return the
        status of the one before (None: the first). A run of this origin still marked
        "running" was killed (SIGKILL, a power cut): this process holds the origin's lock, so
        no other run is alive; it becomes "interrupted"."""
        model = self.run_model

        def run() -> Optional[str]:
            with self.database.atomic():
                killed = model.select(model.id, model.started).where(
                    (model.origin == self.origin) & (model.status == "running")
                )
                for dead in list(killed):
                    # What it booked before it died: the rows of this origin copied since it
                    # began (its own counts were to be written at its end).
                    files = self.db_model
                    booked = files.select(peewee.fn.COUNT(files.id), peewee.fn.SUM(files.size)).where(
                        (files.origin == self.origin)
                        & (files.processed_date >= dead.started)
                        & files.checksum.is_null(False)
                        & files.last_error.is_null()
                    )
                    count, nbytes = booked.scalar(as_tuple=True)
                    model.update(
                        status="interrupted",
                        files_copied=count or 0,
                        bytes_copied=nbytes or 0,
                        message="the process ended before the run finished (killed, or the computer stopped)",
                    ).where(model.id == dead.id).execute()
                last = self._last_status()
                self._run_id = model.create(origin=self.origin, started=started or datetime.datetime.now()).id
            return last

        return self._guard(run)

    def finish_run(self, status: str, copied: int, failed: int, nbytes: int, message: str = "") -> None:
        self.flush()
        if self._run_id is None:
            return
        run_id, self._run_id = self._run_id, None
        model = self.run_model
        message = hide_passwords(message)  # an error may quote a URL with its password
        self._guard(
            model.update(
                finished=datetime.datetime.now(),
                status=status,
                files_copied=copied,
                files_failed=failed,
                bytes_copied=nbytes,
                message=message or None,
            )
            .where(model.id == run_id)
            .execute
        )

    def close(self) -> None:
        try:
            if self._initialized:
                self.flush()
        finally:
            self._initialized = False
            if not self.database.is_closed():
                self.database.close()

    def _explain(self, exc: BaseException) -> str:
        """One line saying what went wrong with the database (subclasses add a hint)."""
        return first_line(_cause(exc))

    def _guard(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except peewee.PeeweeException as exc:
            raise BookkeeperError(f"{self.description}: {self._explain(exc)}") from None

    # -- oeleo 0.7 calls --------------------------------------------------------------
    @property
    def db_instance(self) -> peewee.Database:
        return self.database

    def register(self, f: Path) -> None:
        """Get or create the row of a file (0.7): it becomes ``self.record``."""
        model = self.db_model
        self.record, created = model.get_or_create(
            origin=self.origin, local_name=to_books(Path(f).name), defaults={"code": SHOULD_BE_COPIED}
        )

    def is_changed(self, **checks: Any) -> bool:
        if self.record.code == SHOULD_BE_COPIED:
            return True
        return any(getattr(self.record, k) != v for k, v in checks.items())

    def update_record(self, external_name: Any, code: int = 1, **checks: Any) -> None:
        self.record.checksum = checks.get("checksum")
        self.record.processed_date = datetime.datetime.now()
        self.record.code = code
        self.record.external_name = str(external_name)
        self.record.save()

    @property
    def code(self) -> int:
        return self.record.code

    @code.setter
    def code(self, code: int) -> None:
        if code not in CODE_NAMES:
            raise ValueError("code is not valid")
        self.record.code = code
        self.record.save()


class SimpleDbHandler(Bookkeeper):
    """SQLite bookkeeping in one file (the default; the oeleo 0.7 name)."""

    def __init__(
        self, db_name: Union[str, os.PathLike] = DEFAULT_DB_NAME, origin: Optional[str] = None
    ) -> None:
        self.db_name = str(db_name)
        self.path = Path(self.db_name).expanduser()
        database = peewee.SqliteDatabase(
            str(self.path),
            pragmas={"busy_timeout": BUSY_TIMEOUT_MS, "foreign_keys": 1},
            check_same_thread=False,
        )
        super().__init__(database, description=f"database {self.path}", origin=origin)
        self._process_lock = ProcessLock(Path(str(self.path) + ".lock"), f"database {self.path}")

    def _connect(self) -> None:
        folder = self.path.parent
        if not folder.is_dir():
            raise BookkeeperError(f"database {self.path}: folder {folder} does not exist")
        read_only = getattr(self, "_read_only", False)
        if read_only:
            if not os.access(self.path, os.R_OK):
                raise BookkeeperError(f"database {self.path}: not readable by this user")
        elif self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK):
            raise BookkeeperError(f"database {self.path}: not readable and writable by this user")
        if self.database.is_closed():
            # Read-only (a dry run, `oeleo status`): SQLite's own read-only mode, so that a
            # read-only file or folder is fine and no statement can write, by mistake or not.
            target = self.path.absolute().as_uri() + "?mode=ro" if read_only else str(self.path)
            if self.database.database != target:
                self.database.init(target, uri=read_only)
        super()._connect()

    def exists(self) -> bool:
        return self.path.is_file()

    def _explain(self, exc: BaseException) -> str:
        text = first_line(_cause(exc))
        if "database is locked" in text:
            return (
                f"locked by another program (gave up after {BUSY_TIMEOUT_MS / 1000:g} s); "
                "close the program holding it and run again"
            )
        return text

    def _lock(self) -> None:
        self._process_lock.acquire()

    def run_alive(self) -> Optional[bool]:
        return self._process_lock.held_elsewhere()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._process_lock.release()


class PostgresDbHandler(Bookkeeper):
    """PostgreSQL bookkeeping, shared by many PCs (``OELEO_DB_HOST`` set)."""

    def __init__(
        self,
        db_name: str,
        host: str,
        port: int = 5432,
        user: Optional[str] = None,
        password: Optional[str] = None,
        origin: Optional[str] = None,
    ) -> None:
        self.db_name = db_name
        database = peewee.PostgresqlDatabase(
            db_name, host=host, port=port, user=user, password=password, connect_timeout=10
        )
        super().__init__(
            database, description=f"PostgreSQL database {db_name} on {host}:{port}", origin=origin
        )

    def _connect(self) -> None:
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            raise BookkeeperError(
                "PostgreSQL bookkeeping needs psycopg2: pip install 'oeleo[postgres]'"
            ) from None
        super()._connect()

    def _lock_schema(self) -> None:
        # PCs started together on a fresh database would all try CREATE TABLE at once;
        # a transaction-level advisory lock lets one create and the others see the tables.
        self.database.execute_sql("SELECT pg_advisory_xact_lock(%s, 0)", (_SCHEMA_LOCK_CLASS,))

    def _lock(self) -> None:
        # A session-level advisory lock per origin: released when the connection ends.
        got = self.database.execute_sql(
            "SELECT pg_try_advisory_lock(%s, %s)", (_ORIGIN_LOCK_CLASS, self._origin_key())
        ).fetchone()[0]
        if not got:
            raise DatabaseBusyError(
                f"another oeleo process is already copying {self.origin} "
                f"with {self.description}; this one stops"
            )
        self._holds_lock = True

    def close(self) -> None:
        # The lock would go with the connection, but the server ends a backend a moment after
        # the client has gone: a run started right after this one (a scheduler's next pass, a
        # task) could find it still held. Released here, it is free when close() returns.
        if getattr(self, "_holds_lock", False):
            self._holds_lock = False
            try:
                if not self.database.is_closed():
                    self.database.execute_sql(
                        "SELECT pg_advisory_unlock(%s, %s)", (_ORIGIN_LOCK_CLASS, self._origin_key())
                    )
            except peewee.PeeweeException:
                pass  # the connection is gone: so is the lock
        super().close()

    def _origin_key(self) -> int:
        key = zlib.crc32(str(self.origin).encode("utf-8"))
        return key - 2**32 if key >= 2**31 else key  # pg_try_advisory_lock(int4, int4): signed

    def run_alive(self) -> Optional[bool]:
        try:
            got = self.database.execute_sql(
                "SELECT pg_try_advisory_lock(%s, %s)", (_ORIGIN_LOCK_CLASS, self._origin_key())
            ).fetchone()[0]
            if got:
                self.database.execute_sql(
                    "SELECT pg_advisory_unlock(%s, %s)", (_ORIGIN_LOCK_CLASS, self._origin_key())
                )
        except peewee.PeeweeException:
            return None
        return not got


_ORIGIN_LOCK_CLASS = 0x0E1E0  # advisory lock keys (class, key): one class per purpose
_SCHEMA_LOCK_CLASS = 0x0E1E1


def _chunks(rows: List[dict]) -> Iterator[List[dict]]:
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        yield rows[start : start + _ROWS_PER_STATEMENT]


def _cause(exc: BaseException) -> BaseException:
    """The error that started it: a failed write (SQLite: "database or disk is full") makes
    the transaction's rollback fail too ("cannot rollback - no transaction is active"),
    and that second error is the one raised."""
    seen = exc
    while "rollback" in str(seen) and isinstance(seen.__context__, Exception):
        seen = seen.__context__
    return seen


# -- the scheduler's heartbeat -------------------------------------------------------------
class HeartbeatTable(peewee.Model):
    """The ``oeleo_scheduler`` table: one row per origin, written by a scheduler as each pass
    starts and ends and when it stops, so that ``oeleo status`` can say whether one is alive."""

    origin = peewee.CharField(max_length=1024, unique=True)
    pid = peewee.IntegerField()
    scheduler = peewee.CharField()  # which one, and its rule: "simple, every 5m"
    started = peewee.DateTimeField()  # when the scheduler started
    pass_started = peewee.DateTimeField(null=True)
    pass_finished = peewee.DateTimeField(null=True)  # None while a pass runs
    result = peewee.TextField(null=True)  # the last pass's status and counts
    next_pass = peewee.DateTimeField(null=True)  # None: in a pass, or none planned
    stopped = peewee.DateTimeField(null=True)  # set when the scheduler ends as it should
    updated = peewee.DateTimeField(default=datetime.datetime.now)


def _heartbeat_model(books: Bookkeeper) -> Type[HeartbeatTable]:
    class Heartbeat(HeartbeatTable):
        class Meta:
            table_name = "oeleo_scheduler"  # peewee does not inherit a table's name

    Heartbeat.bind(books.database, bind_refs=False, bind_backrefs=False)
    return Heartbeat


def write_heartbeat(books: Bookkeeper, **values: Any) -> None:
    """Create or update this origin's heartbeat row (the table is made when first needed)."""
    model = _heartbeat_model(books)

    def run() -> None:
        with books.database.atomic():
            model.create_table(safe=True)
            row = dict(values, origin=books.origin, updated=datetime.datetime.now())
            model.insert(row).on_conflict(conflict_target=[model.origin], update=row).execute()

    books._guard(run)


def read_heartbeat(books: Bookkeeper) -> Optional[HeartbeatTable]:
    """This origin's heartbeat row, or None (no scheduler ever ran on these books)."""
    model = _heartbeat_model(books)

    def run() -> Optional[HeartbeatTable]:
        if "oeleo_scheduler" not in books.database.get_tables():
            return None
        return model.get_or_none(model.origin == books.origin)

    return books._guard(run)
