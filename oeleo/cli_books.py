"""The commands that read and change the books: ``oeleo status``, ``oeleo lock`` and
``oeleo unlock`` (imported by ``oeleo.cli`` when one of them runs)."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Set

from oeleo.cli import EXIT_OK, _console, _say, _settings, log
from oeleo.errors import OeleoError

if TYPE_CHECKING:
    from rich.console import Console

    from oeleo.models import Bookkeeper, FileListTable, RunLogTable
    from oeleo.settings import Settings


def _require_books(settings: Settings) -> None:
    """status, lock and unlock read or change books that a run made; they never create them."""
    from oeleo.errors import ConfigError

    if settings.db_host:
        return
    path = Path(settings.db_name).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"OELEO_DB_NAME={settings.db_name}: no database file at {path.absolute()} "
            "(run `oeleo run` first, or name the books with --db)"
        )


def _open_books(settings: Settings, origin: str, read_only: bool) -> Bookkeeper:
    """The books named by the settings, opened beside a run (without its lock)."""
    from oeleo.workers import bookkeeper_from_settings

    _require_books(settings)
    books = bookkeeper_from_settings(settings, origin=origin)
    books.initialize_db(exclusive=False, read_only=read_only)
    return books


def _layout(books: Bookkeeper) -> str:
    """``current``, ``legacy`` (tables of oeleo 0.7, not upgraded yet) or ``empty``."""
    import peewee

    from oeleo.errors import BookkeeperError

    try:
        tables = books.database.get_tables()
        if "filelist" not in tables:
            return "empty"
        columns = {column.name for column in books.database.get_columns("filelist")}
    except peewee.PeeweeException as exc:
        raise BookkeeperError(f"{books.description}: {exc}") from None
    current = {"size", "mtime_ns", "origin", "last_error"} <= columns and "oeleo_runs" in tables
    return "current" if current else "legacy"


def _known_folders(settings: Settings) -> List[Path]:
    """The source folders of this PC that the books name (the ``origin`` of rows and runs)."""
    import peewee

    from oeleo.errors import BookkeeperError

    books = _open_books(settings, origin="", read_only=True)
    origins: Set[str] = set()
    try:
        if _layout(books) == "current":
            for model in (books.db_model, books.run_model):
                origins.update(model.select(model.origin).distinct().scalars())
    except peewee.PeeweeException as exc:
        raise BookkeeperError(f"{books.description}: {exc}") from None
    finally:
        books.close()
    host = socket.gethostname() + ":"
    return [Path(origin[len(host) :]) for origin in sorted(origins) if origin.startswith(host)]


def _absolute(path: Path) -> Path:
    """``path`` made absolute (from the current folder), its folders' links resolved."""
    path = Path(os.path.normpath(Path.cwd() / path.expanduser()))
    return path.parent.resolve() / path.name if path.name else path.resolve()


def _inside(path: Path, folder: Path) -> Optional[str]:
    """``path`` relative to ``folder`` (POSIX, ``.`` for the folder itself), or None."""
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return None


def _source_folder(settings: Settings, paths: Sequence[str] = ()) -> Path:
    """``--from`` (``OELEO_BASE_DIR_FROM``); else the folder the books know that holds the first
    of ``paths`` (the longest such folder wins), or, with no paths, the only one of this PC."""
    from oeleo.errors import ConfigError

    if settings.base_dir_from is not None:
        return Path(settings.base_dir_from).expanduser().resolve()
    folders = _known_folders(settings)
    books = f"the books in {settings.db_name}"
    if not folders:
        raise ConfigError(
            f"OELEO_BASE_DIR_FROM is not set, and {books} name no source folder of this PC: "
            "give --from FOLDER"
        )
    known = ", ".join(str(folder) for folder in folders)
    if not paths:
        if len(folders) == 1:
            return folders[0]
        raise ConfigError(
            f"OELEO_BASE_DIR_FROM is not set, and {books} hold several source folders ({known}): "
            "give --from FOLDER"
        )
    first = paths[0]
    target = _absolute(Path(first))
    holding = [f for f in folders if _inside(target, f) is not None]
    if not holding and not Path(first).is_absolute():
        holding = [f for f in folders if os.path.lexists(f / first)]
    if not holding:
        raise ConfigError(f"{first}: not in a source folder {books} know ({known}); give --from FOLDER")
    return max(holding, key=lambda folder: len(folder.parts))


def _local_names(base: Path, paths: Sequence[str]) -> List[str]:
    """The names in the books (relative to the source folder ``base``) of the paths given.

    A relative path is looked for in the source folder first, then in the current folder; a
    folder stands for the files under it. A path that is not there is booked by its name.
    """
    from oeleo.connectors.base import safe_relpath
    from oeleo.errors import ConfigError
    from oeleo.names import printable

    names: List[str] = []
    for text in paths:
        path = Path(text).expanduser()
        candidates = [path] if path.is_absolute() else [base / path, Path.cwd() / path]
        found = next((c for c in candidates if os.path.lexists(c)), None)
        if found is None:
            # A name the books know, the file being gone - or a typo: say so, it is booked anyway.
            rel = _inside(_absolute(candidates[-1]), base)
            if rel is None and path.is_absolute():
                raise ConfigError(f"{printable(text)}: not inside the source folder {base}")
            name = safe_relpath(rel if rel is not None else path.as_posix())
            _say(
                f"oeleo: warning: {printable(text)}: no such file in {base}; "
                f"booked by name as {printable(name)}"
            )
            names.append(name)
            continue
        rel = _inside(_absolute(found), base)
        if rel is None:
            raise ConfigError(f"{printable(text)}: not inside the source folder {base}")
        if found.is_dir():
            names.extend(
                safe_relpath((Path(rel) / p.relative_to(found)).as_posix())
                for p in sorted(found.rglob("*"))
                if p.is_file()
            )
        else:
            names.append(safe_relpath(rel))
    return names


def _status_books(settings: Settings, origin: str) -> Bookkeeper:
    """The books for ``oeleo status``: read-only (the file may be), upgraded first if they are
    oeleo 0.7's, as every command that opens them does."""
    from oeleo.errors import ConfigError

    books = _open_books(settings, origin, read_only=True)
    layout = _layout(books)
    if layout == "current":
        return books
    books.close()
    if layout == "empty":
        raise ConfigError(f"{books.description}: no books in it yet (run `oeleo run` first)")
    return _open_books(settings, origin, read_only=False)


def cmd_status(args: argparse.Namespace) -> int:
    from rich.table import Table
    from rich.text import Text

    from oeleo.models import CODE_NAMES, make_origin

    settings = _settings(args)
    _require_books(settings)
    base = _source_folder(settings)
    books = _status_books(settings, make_origin(base))
    try:
        counts = books.counts()
        errors = list(books.rows(errors_only=True))
        runs = books.last_runs(1)
        alive = books.run_alive() if runs and runs[0].status == "running" else None
        heartbeat = _read_heartbeat(books)
        rows = list(books.rows()) if args.files else []
        not_booked = _not_booked(settings, base, books)
    finally:
        books.close()
    console = _console()
    console.print(Text.assemble((books.description, "bold"), f", files from {books.origin}"), soft_wrap=True)
    table = Table(title="files per code")
    table.add_column("code", justify="right")
    table.add_column("meaning")
    table.add_column("files", justify="right")
    for code, meaning in CODE_NAMES.items():
        table.add_row(str(code), meaning, str(counts.get(code, 0)))
    console.print(table)
    console.print(not_booked, soft_wrap=True)
    console.print(_describe_run(runs[0], alive) if runs else "last run: never", soft_wrap=True)
    if heartbeat is not None:
        console.print(_describe_heartbeat(heartbeat), soft_wrap=True)
    if errors:
        console.print(f"{_counted(len(errors), 'file')} with errors:")
        for row in errors:
            console.print(f"  {_name(row)} (code {row.code}): {row.last_error}", soft_wrap=True)
    if args.files:
        _print_files(console, rows, metadata=args.fits)
    return EXIT_OK


def _counted(n: int, noun: str) -> str:
    from oeleo.units import counted

    return counted(n, noun)


def _name(row: FileListTable) -> str:
    from oeleo.names import from_books, printable

    return printable(from_books(row.local_name))  # m\xe9sure.csv, not the books' m‛E9sure.csv


def _not_booked(settings: Settings, base: Path, books: Bookkeeper) -> str:
    """How many files of the source folder have no row (no run has tried them yet)."""
    from oeleo.connectors.local import LocalConnector

    try:
        booked = books.load()
        listing = LocalConnector(base, follow_links=settings.follow_links).list_files(
            extensions=settings.extensions,
            include=settings.include_patterns,
            exclude=settings.exclude_patterns,
            recursive=settings.subdirs,
        )
        new = sum(1 for entry in listing if entry.relpath not in booked)
    except (OeleoError, OSError) as exc:
        return f"not booked yet: unknown (the source folder cannot be listed: {exc})"
    return f"not booked yet: {new} (in the source folder, not tried by any run)"


def _describe_run(run: RunLogTable, alive: Optional[bool] = None) -> str:
    """``last run: started ..., finished ... (took 2.1 s), ok: 3 copied (1.2 KiB), 0 failed``."""
    from oeleo.units import human_bytes, human_seconds

    started = run.started
    text = f"last run: started {started:%Y-%m-%d %H:%M:%S}"
    if run.finished:
        shown = (
            f"{run.finished:%H:%M:%S}"
            if run.finished.date() == started.date()
            else f"{run.finished:%Y-%m-%d %H:%M:%S}"
        )
        took = human_seconds(max(0.0, (run.finished - started).total_seconds()))
        text += f", finished {shown} (took {took})"
    if run.status == "running" and alive is False:  # nobody holds the books: it was killed
        state = "interrupted (the process ended before the run did; the next run records it)"
    elif run.status == "running" and alive:
        state = "running (still going)"
    elif run.status == "running":
        state = "running (not finished: still going, or killed before it could say so)"
    elif run.status == "interrupted":
        state = "interrupted (the process ended before the run did)"
    else:
        state = run.status
    text += (
        f", {state}: {run.files_copied} copied ({human_bytes(run.bytes_copied or 0)}), "
        f"{run.files_failed} failed"
    )
    if run.message:
        text += f"; {run.message}"
    return text


# A scheduler's next pass this late (it plans to the second) means it hangs or was stopped.
HEARTBEAT_GRACE = 120.0


def _read_heartbeat(books: Bookkeeper) -> Any:
    from oeleo.models import read_heartbeat

    try:
        return read_heartbeat(books)
    except OeleoError as exc:  # a heartbeat that cannot be read does not hide the rest
        log.warning("the scheduler's heartbeat cannot be read: %s", exc)
        return None


def _describe_heartbeat(beat: Any, now: Optional[float] = None) -> str:
    """``scheduler: running (pid 4242, simple, every 5m); last pass ...; next pass at ...``,
    or why the heartbeat is stale: the process is gone, or its next pass is long overdue."""
    import time

    from oeleo.schedulers.base import pid_alive

    now = time.time() if now is None else now
    who = f"pid {beat.pid}, {beat.scheduler}"
    last = ""
    if beat.pass_started is not None:
        last = f"; last pass started {beat.pass_started:%Y-%m-%d %H:%M:%S}"
        if beat.pass_finished is not None and beat.result:
            last += f", {beat.result}"
    if beat.stopped is not None:
        return f"scheduler: stopped at {beat.stopped:%Y-%m-%d %H:%M:%S} ({who}){last}"
    if pid_alive(beat.pid) is False:
        return (
            f"scheduler: not running: stale heartbeat of {beat.updated:%Y-%m-%d %H:%M:%S}, process "
            f"{beat.pid} is gone (killed, or the computer stopped) ({beat.scheduler}){last}"
        )
    if beat.pass_finished is None and beat.pass_started is not None:
        return f"scheduler: running ({who}), in a pass since {beat.pass_started:%Y-%m-%d %H:%M:%S}"
    if beat.next_pass is not None and now > beat.next_pass.timestamp() + HEARTBEAT_GRACE:
        late = _counted(int((now - beat.next_pass.timestamp()) // 60), "minute")
        return (
            f"scheduler: overdue: its next pass was due at {beat.next_pass:%Y-%m-%d %H:%M:%S} "
            f"({late} ago) and has not started; process {beat.pid} may hang ({beat.scheduler}){last}"
        )
    planned = f"; next pass at {beat.next_pass:%Y-%m-%d %H:%M:%S}" if beat.next_pass is not None else ""
    return f"scheduler: running ({who}){last}{planned}"


def _print_files(console: Console, rows: List[FileListTable], metadata: bool = False) -> None:
    """One line per row, never folded: whole names and checksums, to read or to grep;
    ``metadata``: then the header keywords the fits checker kept, ``KEY=value`` each."""
    import json

    from oeleo.units import human_bytes

    names = [_name(row) for row in rows]
    width = min(max((len(name) for name in names), default=4), 40)
    heading = f"{'file':<{width}}  code  {'size':>10}  {'booked at':19}  checksum"
    console.print(heading + ("  header keywords" if metadata else ""), soft_wrap=True)
    for name, row in zip(names, rows):
        size = human_bytes(row.size) if row.size is not None else ""
        when = f"{row.processed_date:%Y-%m-%d %H:%M:%S}" if row.processed_date else ""
        line = f"{name:<{width}}  {row.code:>4}  {size:>10}  {when:19}  {row.checksum or ''}"
        kept = getattr(row, "metadata", None) if metadata else None
        if kept:
            line += "  " + " ".join(f"{key}={value}" for key, value in json.loads(kept).items())
        console.print(line.rstrip(), soft_wrap=True)


def _set_codes(args: argparse.Namespace, lock: bool) -> int:
    from oeleo.models import SHOULD_NOT_BE_COPIED, make_origin
    from oeleo.names import printable

    settings = _settings(args)
    _require_books(settings)
    base = _source_folder(settings, args.paths)
    names = _local_names(base, args.paths)
    books = _open_books(settings, make_origin(base), read_only=False)
    try:
        n = books.set_code(names, SHOULD_NOT_BE_COPIED) if lock else books.unlock(names)
    finally:
        books.close()
    verb = "locked" if lock else "unlocked"
    for name in names:
        print(f"{verb} {printable(name)}")
    _say(f"{_counted(n, 'file')} {verb}")
    return EXIT_OK


def cmd_lock(args: argparse.Namespace) -> int:
    return _set_codes(args, lock=True)


def cmd_unlock(args: argparse.Namespace) -> int:
    return _set_codes(args, lock=False)
