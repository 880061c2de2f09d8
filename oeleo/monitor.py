"""What the monitor shows and does: the documents of ``oeleo serve`` and ``oeleo status --json``
built from the books, and the actions (retry, lock, unlock) taken on them.

Reading never changes the books: each document opens them read-only, without the run lock,
and closes them again, so a run or a scheduler next to the monitor is never blocked and no
file is created. An action opens them for writing, still without the run lock, as
``oeleo lock`` does. Every document is for one origin (this PC and its source folder), except
``origins``, which has a row per origin the books know (PostgreSQL books shared by many PCs).
Nothing here reads a secret: the books' description names no password.
"""

from __future__ import annotations

import datetime
import math
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import peewee

from oeleo import __version__
from oeleo.errors import BookkeeperError, ConfigError, OeleoError
from oeleo.models import (
    SHOULD_BE_COPIED,
    SHOULD_BE_COPIED_IF_CHANGED,
    SHOULD_NOT_BE_COPIED,
    Bookkeeper,
    HeartbeatTable,
    RunLogTable,
    _heartbeat_model,
    make_origin,
)
from oeleo.summary import LEFT_START, NOT_REPLACED_START

if TYPE_CHECKING:
    from oeleo.settings import Settings

PASSES_SHOWN = 50
FAILURES_SHOWN = 100
DAYS_SHOWN = 30
FILES_PER_PAGE = 100
# A scheduler's next pass this late (it plans to the second) means it hangs or was stopped.
HEARTBEAT_GRACE = 120.0
ACTIONS = ("retry", "lock", "unlock")
_NAMES_PER_QUERY = 500  # under SQLite's bound of 999 variables in one statement
_CODE_KEYS = {
    SHOULD_BE_COPIED: "should_be_copied",
    SHOULD_BE_COPIED_IF_CHANGED: "copy_if_changed",
    SHOULD_NOT_BE_COPIED: "do_not_copy",
}


# -- the books beside a run -------------------------------------------------------------------
def require_books(settings: Settings) -> None:
    """The monitor, status, lock and unlock read or change books that a run made; they never
    create them: a SQLite file that is not there is said, with where it was looked for."""
    if settings.db_host:
        return
    path = Path(settings.db_name).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"OELEO_DB_NAME={settings.db_name}: no database file at {path.absolute()} "
            "(run `oeleo run` first, or name the books with --db)"
        )


def open_books(settings: Settings, origin: str, read_only: bool) -> Bookkeeper:
    """The books named by the settings, opened beside a run (without its lock)."""
    from oeleo.factories import bookkeeper_from_settings

    require_books(settings)
    books = bookkeeper_from_settings(settings, origin=origin)
    books.initialize_db(exclusive=False, read_only=read_only)
    return books


def layout(books: Bookkeeper) -> str:
    """``current``, ``legacy`` (tables of oeleo 0.7, not upgraded yet) or ``empty``."""
    try:
        tables = books.database.get_tables()
        if "filelist" not in tables:
            return "empty"
        columns = {column.name for column in books.database.get_columns("filelist")}
    except peewee.PeeweeException as exc:
        raise BookkeeperError(f"{books.description}: {exc}") from None
    current = {"size", "mtime_ns", "origin", "last_error"} <= columns and "oeleo_runs" in tables
    return "current" if current else "legacy"


def check_books(settings: Settings) -> str:
    """That the books are there and of this oeleo (opened read-only); returns their description."""
    books = open_books(settings, origin="", read_only=True)
    try:
        found = layout(books)
    finally:
        books.close()
    if found == "empty":
        raise ConfigError(f"{books.description}: no books in it yet (run `oeleo run` first)")
    if found == "legacy":
        raise ConfigError(
            f"{books.description}: books of oeleo 0.7, not upgraded yet "
            "(run `oeleo status` or `oeleo run` once to upgrade them)"
        )
    return books.description


def known_origins(books: Bookkeeper) -> List[str]:
    """Every origin the books name: in rows, runs or a scheduler's heartbeat."""
    found: Set[str] = set()
    with _reading(books):
        for model in (books.db_model, books.run_model):
            found.update(model.select(model.origin).distinct().scalars())
        beat = _heartbeat_model(books)
        if beat._meta.table_name in books.database.get_tables():
            found.update(beat.select(beat.origin).distinct().scalars())
    return sorted(origin for origin in found if origin)


def choose_origin(settings: Settings, given: Optional[str] = None) -> Optional[str]:
    """The origin the documents are for: ``given`` (``--origin``: ``host:/folder``, or a folder
    of this PC), else this PC with ``OELEO_BASE_DIR_FROM``, else the only folder of this PC the
    books know; None when there is none or several to choose from."""
    if given:
        host, sep, folder = given.partition(":")
        if not sep or os.path.isabs(given) or not host:
            return make_origin(given)
        return given
    if settings.base_dir_from is not None:
        return make_origin(settings.base_dir_from)
    books = open_books(settings, origin="", read_only=True)
    try:
        here = [o for o in known_origins(books) if o.startswith(socket.gethostname() + ":")]
    finally:
        books.close()
    return here[0] if len(here) == 1 else None


def _tuples(query: Any) -> List[Tuple[Any, ...]]:
    """The rows of ``query`` as tuples (peewee's types say model objects)."""
    return list(query.tuples())


@contextmanager
def _reading(books: Bookkeeper) -> Iterator[None]:
    try:
        yield
    except peewee.PeeweeException as exc:
        raise BookkeeperError(f"{books.description}: {books._explain(exc)}") from None


# -- values as JSON ---------------------------------------------------------------------------
def iso(value: Optional[datetime.datetime]) -> Optional[str]:
    """A time of the books (naive, this PC's local time) as ISO 8601 with its UTC offset."""
    if value is None:
        return None
    if isinstance(value, str):  # SQLite hands back what it cannot parse as text
        return value
    return value.astimezone().isoformat(timespec="seconds")


def pass_document(run: RunLogTable, alive: Optional[bool] = None) -> Dict[str, Any]:
    """One row of ``oeleo_runs``; a run still "running" that nobody holds was killed."""
    status = run.status
    if status == "running" and alive is False:
        status = "interrupted"
    duration = None
    if run.finished is not None and isinstance(run.finished, datetime.datetime):
        duration = round(max(0.0, (run.finished - run.started).total_seconds()), 3)
    return {
        "id": run.id,
        "started": iso(run.started),
        "finished": iso(run.finished),
        "duration_s": duration,
        "status": status,
        "files_copied": run.files_copied or 0,
        "files_failed": run.files_failed or 0,
        "bytes_copied": run.bytes_copied or 0,
        "message": run.message,
    }


def heartbeat_state(beat: HeartbeatTable, here: bool, now: Optional[float] = None) -> str:
    """``stopped`` (it ended as it should), ``stale`` (its process is gone, or its next pass is
    long overdue) or ``alive``. Whether the process lives is asked only on its own PC (``here``)."""
    from oeleo.schedulers.base import pid_alive

    now = time.time() if now is None else now
    if beat.stopped is not None:
        return "stopped"
    if here and pid_alive(beat.pid) is False:
        return "stale"
    if beat.next_pass is not None and now > beat.next_pass.timestamp() + HEARTBEAT_GRACE:
        return "stale"
    return "alive"


def heartbeat_document(
    beat: Optional[HeartbeatTable], now: Optional[float] = None
) -> Optional[Dict[str, Any]]:
    if beat is None:
        return None
    here = str(beat.origin).startswith(socket.gethostname() + ":")
    return {
        "state": heartbeat_state(beat, here, now),
        "scheduler": beat.scheduler,
        "pid": beat.pid,
        "started": iso(beat.started),
        "pass_started": iso(beat.pass_started),
        "pass_finished": iso(beat.pass_finished),
        "next_pass": iso(beat.next_pass),
        "result": beat.result,
        "updated": iso(beat.updated),
    }


def health(last: Optional[Dict[str, Any]], beat: Optional[Dict[str, Any]], failed: int) -> str:
    """``unknown`` (no pass yet), ``stale`` (its scheduler died), ``failing`` (the last pass did
    not end well, or files carry an error) or ``ok``."""
    if last is None:
        return "unknown"
    if beat is not None and beat["state"] == "stale":
        return "stale"
    if last["status"] in ("ok", "running") and not failed:
        return "ok"
    return "failing"


def _empty_counts() -> Dict[str, int]:
    counts = {key: 0 for key in _CODE_KEYS.values()}
    # Not failures: kept in another version by a store that never overwrites, and left for
    # the next run by a run that stopped.
    counts.update(failed=0, not_replaced=0, left=0, total=0)
    return counts


# -- reading the books ------------------------------------------------------------------------
class Monitor:
    """The documents and actions over the books named by ``settings``, for ``origin`` (None:
    chosen again at each request, as the books come to name this PC's folder)."""

    def __init__(self, settings: Settings, origin: Optional[str] = None) -> None:
        self.settings = settings
        self.origin = origin

    def _origin(self) -> Optional[str]:
        return self.origin if self.origin is not None else choose_origin(self.settings)

    @contextmanager
    def books(self, origin: Optional[str], read_only: bool = True) -> Iterator[Bookkeeper]:
        books = open_books(self.settings, origin or "", read_only=read_only)
        try:
            if read_only and layout(books) != "current":
                raise BookkeeperError(
                    f"{books.description}: no books of this oeleo in it (run `oeleo run` first)"
                )
            yield books
        finally:
            books.close()

    # -- GET /api/status, oeleo status --json ---------------------------------------------
    def status(self, now: Optional[float] = None) -> Dict[str, Any]:
        origin = self._origin()
        with self.books(origin) as books:
            return status_document(books, origin, now)

    def files(self, code: Optional[str] = None, q: str = "", page: int = 1) -> Dict[str, Any]:
        origin = self._origin()
        with self.books(origin) as books:
            return files_document(books, origin, code, q, page)

    def metrics(self, now: Optional[float] = None) -> str:
        with self.books(None) as books:
            return metrics_text(books, now)

    def act(self, action: str, names: Sequence[str]) -> Dict[str, List[str]]:
        origin = self._origin()
        if origin is None:
            raise ValueError(
                "no origin chosen: start oeleo serve with --from FOLDER or --origin HOST:/FOLDER"
            )
        with self.books(origin, read_only=False) as books:
            return take_action(books, action, names)


def status_document(books: Bookkeeper, origin: Optional[str], now: Optional[float] = None) -> Dict[str, Any]:
    """The document of ``GET /api/status`` and ``oeleo status --json``."""
    now = time.time() if now is None else now
    with _reading(books):
        per_origin = _origins(books, now)
        mine = next((o for o in per_origin if o["origin"] == origin), None)
        passes: List[Dict[str, Any]] = []
        failures: List[Dict[str, Any]] = []
        if origin is not None:
            runs = list(
                books.run_model.select()
                .where(books.run_model.origin == origin)
                .order_by(books.run_model.id.desc())
                .limit(PASSES_SHOWN)
            )
            alive = books.run_alive() if runs and runs[0].status == "running" else None
            passes = [pass_document(run, alive if i == 0 else None) for i, run in enumerate(runs)]
            failures = _failures(books, origin)
    return {
        "oeleo": __version__,
        "generated": datetime.datetime.fromtimestamp(now).astimezone().isoformat(timespec="seconds"),
        "books": books.description,
        "origin": origin,
        "heartbeat": mine["heartbeat"] if mine else None,
        "last_pass": passes[0] if passes else None,
        "passes": passes,
        "counts": mine["counts"] if mine else _empty_counts(),
        "failures": failures,
        "daily": _daily(books, origin, now),
        "origins": per_origin,
    }


def _failures(books: Bookkeeper, origin: str) -> List[Dict[str, Any]]:
    """The files with an error. The books keep no time of an error: a failed file is tried at
    every pass, so its error is as old as the newest pass that had failures, unless the row
    changed after it (a copy's time is kept)."""
    model, runs = books.db_model, books.run_model
    failing = _tuples(
        runs.select(runs.started)
        .where((runs.origin == origin) & (runs.files_failed > 0))
        .order_by(runs.id.desc())
        .limit(1)
    )
    last_failing = failing[0][0] if failing else None
    query = (
        model.select(model.local_name, model.last_error, model.processed_date)
        .where((model.origin == origin) & _has_error(model))
        .order_by(model.local_name)
        .limit(FAILURES_SHOWN)
    )
    found = []
    for name, error, when in _tuples(query):
        if isinstance(last_failing, datetime.datetime) and (
            not isinstance(when, datetime.datetime) or last_failing > when
        ):
            when = last_failing
        found.append({"file": name, "error": error, "when": iso(when)})
    return found


def _has_error(model: Any) -> Any:
    """Rows whose last attempt failed: a reason booked, other than "already there, not
    replaced" (a store that never overwrites keeps another version: a note, not an error) and
    "left for the next run when the run stopped" (the run's own row says why it stopped)."""
    return (
        model.last_error.is_null(False)
        & ~model.last_error.startswith(NOT_REPLACED_START)
        & ~model.last_error.startswith(LEFT_START)
    )


def _daily(books: Bookkeeper, origin: Optional[str], now: float) -> List[Dict[str, Any]]:
    """Files and bytes the passes copied per day (by the day a pass started), the last 30 days."""
    today = datetime.date.fromtimestamp(now)
    days = [today - datetime.timedelta(days=n) for n in range(DAYS_SHOWN - 1, -1, -1)]
    totals = {day: [0, 0] for day in days}
    if origin is not None:
        model = books.run_model
        since = datetime.datetime.combine(days[0], datetime.time())
        query = model.select(model.started, model.files_copied, model.bytes_copied).where(
            (model.origin == origin) & (model.started >= since)
        )
        for started, files, nbytes in _tuples(query):
            if isinstance(started, datetime.datetime) and started.date() in totals:
                totals[started.date()][0] += files or 0
                totals[started.date()][1] += nbytes or 0
    return [{"day": day.isoformat(), "files": totals[day][0], "bytes": totals[day][1]} for day in days]


def _counts_by_origin(books: Bookkeeper) -> Dict[str, Dict[str, int]]:
    """Rows per origin and code, and those with an error, in one pass over the table."""
    model = books.db_model
    counts: Dict[str, Dict[str, int]] = {}
    failed = peewee.fn.SUM(peewee.Case(None, [(_has_error(model), 1)], 0))
    kept = peewee.fn.SUM(peewee.Case(None, [(model.last_error.startswith(NOT_REPLACED_START), 1)], 0))
    left = peewee.fn.SUM(peewee.Case(None, [(model.last_error.startswith(LEFT_START), 1)], 0))
    query = model.select(model.origin, model.code, peewee.fn.COUNT(model.id), failed, kept, left).group_by(
        model.origin, model.code
    )
    for origin, code, n, failed, kept, left in _tuples(query):
        entry = counts.setdefault(origin, _empty_counts())
        if code in _CODE_KEYS:
            entry[_CODE_KEYS[code]] += n
        entry["total"] += n
        entry["failed"] += int(failed or 0)
        entry["not_replaced"] += int(kept or 0)
        entry["left"] += int(left or 0)
    return counts


def _last_runs(books: Bookkeeper) -> Dict[str, RunLogTable]:
    model = books.run_model
    newest = model.select(peewee.fn.MAX(model.id)).group_by(model.origin)
    return {run.origin: run for run in model.select().where(model.id.in_(newest))}


def _heartbeats(books: Bookkeeper) -> Dict[str, HeartbeatTable]:
    model = _heartbeat_model(books)
    if model._meta.table_name not in books.database.get_tables():
        return {}
    return {beat.origin: beat for beat in model.select()}


def _origins(books: Bookkeeper, now: float) -> List[Dict[str, Any]]:
    """A row per origin: its last pass, its scheduler's heartbeat, its counts and its health."""
    counts = _counts_by_origin(books)
    runs = _last_runs(books)
    beats = _heartbeats(books)
    rows = []
    for origin in sorted(set(counts) | set(runs) | set(beats)):
        if not origin:
            continue
        host, _, folder = origin.partition(":")
        run = runs.get(origin)
        last = pass_document(run) if run is not None else None
        beat = heartbeat_document(beats.get(origin), now)
        mine = counts.get(origin, _empty_counts())
        rows.append(
            {
                "origin": origin,
                "host": host,
                "folder": folder,
                "health": health(last, beat, mine["failed"]),
                "last_pass": last,
                "heartbeat": beat,
                "counts": mine,
            }
        )
    return rows


# -- GET /api/files ---------------------------------------------------------------------------
def files_document(
    books: Bookkeeper, origin: Optional[str], code: Optional[str], q: str, page: int
) -> Dict[str, Any]:
    """A page of the rows of ``origin``: by code (0, 1, 2 or ``failed``) and name substring."""
    if code not in (None, "", "0", "1", "2", "failed"):
        raise ValueError(f"code={code}: 0, 1, 2 or failed")
    if page < 1:
        raise ValueError(f"page={page}: 1 or more")
    model = books.db_model
    query = model.select(
        model.local_name,
        model.code,
        model.size,
        model.checksum,
        model.processed_date,
        model.external_name,
        model.last_error,
    ).where(model.origin == (origin or ""))
    if code == "failed":
        query = query.where(_has_error(model))
    elif code:
        query = query.where(model.code == int(code))
    if "\x00" in q:  # no file name holds one; SQLite would end the pattern there, PostgreSQL refuse it
        query = query.where(model.id.is_null())
    elif q:
        query = query.where(model.local_name.contains(q))
    with _reading(books):
        total = query.count()
        # a page past the last is empty; its offset is not asked of the database (it may not
        # fit in an SQL integer)
        past = (page - 1) * FILES_PER_PAGE >= total
        rows = [] if past else _tuples(query.order_by(model.local_name).paginate(page, FILES_PER_PAGE))
        files = [
            {
                "file": name,
                "code": row_code,
                "size": size,
                "checksum": checksum,
                # the time of the row's last copy: a row never copied has no copy time
                "copied": iso(when) if checksum else None,
                "external_name": external,
                "error": error,
            }
            for name, row_code, size, checksum, when, external, error in rows
        ]
    return {
        "files": files,
        "page": page,
        "pages": max(1, math.ceil(total / FILES_PER_PAGE)),
        "total": total,
        "per_page": FILES_PER_PAGE,
    }


# -- GET /metrics -----------------------------------------------------------------------------
def _label(value: str) -> str:
    """A label value in the Prometheus text format: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def metrics_text(books: Bookkeeper, now: Optional[float] = None) -> str:
    """Every origin's numbers in the Prometheus text format 0.0.4."""
    now = time.time() if now is None else now
    model = books.run_model
    with _reading(books):
        per_origin = _origins(books, now)
        by_status = _tuples(
            model.select(model.origin, model.status, peewee.fn.COUNT(model.id)).group_by(
                model.origin, model.status
            )
        )
        sums_query = model.select(
            model.origin, peewee.fn.SUM(model.files_copied), peewee.fn.SUM(model.bytes_copied)
        ).group_by(model.origin)
        sums = {origin: (files or 0, nbytes or 0) for origin, files, nbytes in _tuples(sums_query)}
        newest_good = model.select(peewee.fn.MAX(model.id)).where(model.status == "ok").group_by(model.origin)
        good: Dict[str, Any] = {
            origin: finished
            for origin, finished in _tuples(
                model.select(model.origin, model.finished).where(model.id.in_(newest_good))
            )
        }
    families: List[Tuple[str, str, str, List[Tuple[Dict[str, str], float]]]] = [
        ("oeleo_passes_total", "counter", "Passes recorded in the books, by how they ended.", []),
        ("oeleo_files_copied_total", "counter", "Files the passes copied.", []),
        ("oeleo_bytes_copied_total", "counter", "Bytes the passes copied.", []),
        ("oeleo_files_failed", "gauge", "Files whose last attempt failed (rows with an error).", []),
        (
            "oeleo_files_not_replaced",
            "gauge",
            "Files a store that never overwrites keeps in another version (already there, not replaced).",
            [],
        ),
        ("oeleo_files_left", "gauge", "Files left for the next run by a run that stopped.", []),
        ("oeleo_files", "gauge", "Files in the books, by code (0 to copy, 1 copy if changed, 2 locked).", []),
        ("oeleo_seconds_since_last_good_pass", "gauge", "Seconds since the last pass that ended ok.", []),
        ("oeleo_scheduler_up", "gauge", "1 while the origin's scheduler is alive, else 0.", []),
    ]
    samples = {name: found for name, _, _, found in families}
    for origin, status, n in by_status:
        if origin:
            samples["oeleo_passes_total"].append(({"origin": origin, "status": status}, n))
    for row in per_origin:
        origin = row["origin"]
        label = {"origin": origin}
        files, nbytes = sums.get(origin, (0, 0))
        samples["oeleo_files_copied_total"].append((label, files))
        samples["oeleo_bytes_copied_total"].append((label, nbytes))
        samples["oeleo_files_failed"].append((label, row["counts"]["failed"]))
        samples["oeleo_files_not_replaced"].append((label, row["counts"]["not_replaced"]))
        samples["oeleo_files_left"].append((label, row["counts"]["left"]))
        for code, key in _CODE_KEYS.items():
            samples["oeleo_files"].append(({"origin": origin, "code": str(code)}, row["counts"][key]))
        finished = good.get(origin)
        if isinstance(finished, datetime.datetime):
            samples["oeleo_seconds_since_last_good_pass"].append(
                (label, round(max(0.0, now - finished.timestamp()), 3))
            )
        beat = row["heartbeat"]
        samples["oeleo_scheduler_up"].append((label, 1 if beat and beat["state"] == "alive" else 0))
    lines = []
    for name, kind, text, found in families:
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in found:
            shown = ",".join(f'{key}="{_label(str(val))}"' for key, val in labels.items())
            lines.append(
                f"{name}{{{shown}}} {value:g}" if isinstance(value, float) else f"{name}{{{shown}}} {value}"
            )
    return "\n".join(lines) + "\n"


# -- the actions ------------------------------------------------------------------------------
def take_action(books: Bookkeeper, action: str, names: Sequence[str]) -> Dict[str, List[str]]:
    """``retry``, ``lock`` or ``unlock`` the files ``names`` (as the books hold them) of the
    books' origin. A name the books do not hold is not booked: it is listed in ``unknown``.

    Retry clears the error and forgets what the row knew of the file (checksum, size, time),
    keeping code 0 or 1, so the next pass copies it again; a locked file is ``refused``. Lock
    and unlock are those of ``oeleo lock`` and ``oeleo unlock``.
    """
    from oeleo.names import from_books

    if action not in ACTIONS:
        raise ValueError(f"{action}: retry, lock or unlock")
    model = books.db_model
    wanted = list(dict.fromkeys(names))
    codes: Dict[str, int] = {}
    with _reading(books):
        for start in range(0, len(wanted), _NAMES_PER_QUERY):
            chunk = wanted[start : start + _NAMES_PER_QUERY]
            query = model.select(model.local_name, model.code).where(
                (model.origin == books.origin) & model.local_name.in_(chunk)
            )
            codes.update((name, code) for name, code in _tuples(query))
    known = [name for name in wanted if name in codes]
    reply: Dict[str, List[str]] = {
        "done": [],
        "unknown": [name for name in wanted if name not in codes],
        "refused": [],
    }
    if action == "lock":
        books.set_code([from_books(name) for name in known], SHOULD_NOT_BE_COPIED)
        reply["done"] = known
    elif action == "unlock":
        books.unlock([from_books(name) for name in known])
        reply["done"] = known
    else:
        reply["refused"] = [name for name in known if codes[name] == SHOULD_NOT_BE_COPIED]
        retried = [name for name in known if codes[name] != SHOULD_NOT_BE_COPIED]
        with _reading(books), books.database.atomic():
            for start in range(0, len(retried), _NAMES_PER_QUERY):
                chunk = retried[start : start + _NAMES_PER_QUERY]
                model.update(last_error=None, checksum=None, size=None, mtime_ns=None).where(
                    (model.origin == books.origin) & model.local_name.in_(chunk)
                ).execute()
        reply["done"] = retried
    return reply


def describe_error(exc: BaseException) -> str:
    """One line for an error met while answering a request (never a traceback)."""
    if isinstance(exc, OeleoError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
