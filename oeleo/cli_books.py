"""The commands that read and change the books: ``oeleo status``, ``oeleo lock``,
``oeleo unlock`` and ``oeleo serve`` (imported by ``oeleo.cli`` when one of them runs)."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Set, Tuple

from oeleo.cli import EXIT_OK, _console, _say, _settings, log
from oeleo.errors import OeleoError
from oeleo.summary import LEFT_START, NOT_REPLACED, is_left, is_not_replaced

if TYPE_CHECKING:
    from rich.console import Console

    from oeleo.models import Bookkeeper, FileListTable, RunLogTable
    from oeleo.settings import Settings


def _require_books(settings: Settings) -> None:
    from oeleo.monitor import require_books

    require_books(settings)


def _open_books(settings: Settings, origin: str, read_only: bool) -> Bookkeeper:
    from oeleo.monitor import open_books

    return open_books(settings, origin, read_only)


def _layout(books: Bookkeeper) -> str:
    from oeleo.monitor import layout

    return layout(books)


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


def _folders_booking(settings: Settings, folders: List[Path], name: str) -> List[Path]:
    """The folders of ``folders`` whose books have a row for the relative ``name``."""
    import peewee

    from oeleo.connectors.base import safe_relpath
    from oeleo.errors import BookkeeperError, OeleoError
    from oeleo.models import make_origin
    from oeleo.names import to_books

    try:
        wanted = to_books(safe_relpath(Path(name).as_posix()))
    except OeleoError:  # not a name a source folder can hold
        return []
    books = _open_books(settings, origin="", read_only=True)
    try:
        model = books.db_model
        query = model.select(model.origin).where(model.local_name == wanted)
        origins = set(query.scalars())
    except peewee.PeeweeException as exc:
        raise BookkeeperError(f"{books.description}: {exc}") from None
    finally:
        books.close()
    return [folder for folder in folders if make_origin(folder) in origins]


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
        holding = [f for f in folders if _existing(f / first) is not None]
        if not holding:  # a name the books know, the file being gone
            holding = _folders_booking(settings, folders, first)
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
        found = next((c for c in map(_existing, candidates) if c is not None), None)
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


def _existing(path: Path) -> Optional[Path]:
    """``path`` if it is there; else the path whose names oeleo prints as ``path``'s (a newline
    shown as ``\\n``, a byte that is not UTF-8 as ``\\xe9``), folder by folder, if there is
    exactly one: a name as people copy it from oeleo's output. None otherwise."""
    from oeleo.names import printable

    if os.path.lexists(path):
        return path
    if "\\" not in str(path):
        return None
    current = Path(path.anchor) if path.is_absolute() else Path()
    for part in path.parts[1:] if path.is_absolute() else path.parts:
        step = current / part
        if not os.path.lexists(step):
            try:
                names = os.listdir(current)
            except OSError:
                return None
            found = [name for name in names if printable(name) == part]
            if len(found) != 1:
                return None
            step = current / found[0]
        current = step
    return current


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
    from oeleo.monitor import choose_origin

    settings = _settings(args)
    _require_books(settings)
    if args.json:
        return _status_json(settings, args.origin)
    base: Optional[Path] = None
    if args.origin:  # maybe another PC's: its folder is not listed here
        origin = str(choose_origin(settings, args.origin))
        host, _, folder = origin.partition(":")
        base = Path(folder) if host == socket.gethostname() else None
    else:
        base = _source_folder(settings)
        origin = make_origin(base)
    books = _status_books(settings, origin)
    try:
        counts = books.counts()
        errors = list(books.rows(errors_only=True))
        runs = books.last_runs(1)
        alive = books.run_alive() if runs and runs[0].status == "running" else None
        heartbeat = _read_heartbeat(books)
        rows = list(books.rows()) if args.files else []
        not_booked, listed = _not_booked(settings, base, books) if base is not None else ("", None)
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
    if not_booked:
        console.print(not_booked, soft_wrap=True)
    console.print(_describe_run(runs[0], alive) if runs else "last run: never", soft_wrap=True)
    if heartbeat is not None:
        console.print(_describe_heartbeat(heartbeat), soft_wrap=True)
    kept = [row for row in errors if is_not_replaced(row.last_error)]
    left = [row for row in errors if is_left(row.last_error)]
    errors = [row for row in errors if not is_not_replaced(row.last_error) and not is_left(row.last_error)]
    if errors:
        console.print(f"{_counted(len(errors), 'file')} with errors:")
        for row in errors:
            # A file deleted or renamed since keeps its row (oeleo never removes one).
            gone = listed is not None and _name(row) not in listed
            where = ", no longer in the source folder" if gone else ""
            console.print(f"  {_name(row)} (code {row.code}{where}): {row.last_error}", soft_wrap=True)
    if left:  # not failures of their own: a run stopped before them (said once, with its cause)
        causes = sorted({str(row.last_error)[len(LEFT_START) :] for row in left})
        more = f" and {len(left) - 5} more" if len(left) > 5 else ""
        shown = ", ".join(_name(row) for row in left[:5]) + more
        console.print(
            f"{_counted(len(left), 'file')} left for the next run when a run stopped "
            f"({causes[0]}{f'; and {len(causes) - 1} other causes' if len(causes) > 1 else ''}): {shown}",
            soft_wrap=True,
        )
    if kept:  # not errors: the store keeps another version (it never overwrites)
        console.print(
            f"{_counted(len(kept), 'file')} already there in another version, not replaced (the store "
            "does not overwrite files; to send this one: remove its copy there, run `oeleo check "
            "--update-db`, then the next run sends it):",
            soft_wrap=True,
        )
        for row in kept:
            reason = str(row.last_error)
            words = reason[len(NOT_REPLACED) :].lstrip(": ") if reason.startswith(NOT_REPLACED) else ""
            console.print(
                f"  {_name(row)} (code {row.code})" + (f": {words}" if words else ""), soft_wrap=True
            )
    if args.files:
        _print_files(console, rows, metadata=args.fits)
    return EXIT_OK


def _status_json(settings: Settings, given: Optional[str]) -> int:
    """``oeleo status --json``: the document of the monitor's ``GET /api/status``."""
    import json

    from oeleo.errors import ConfigError
    from oeleo.monitor import check_books, choose_origin, status_document

    origin = choose_origin(settings, given) if given or settings.base_dir_from else None
    if origin is None:
        check_books(settings)  # books of oeleo 0.7 are upgraded only for a known origin
        origin = choose_origin(settings)
    if origin is None:
        books = _open_books(settings, "", read_only=True)
    else:
        books = _status_books(settings, origin)
    try:
        if _layout(books) != "current":
            raise ConfigError(f"{books.description}: no books in it yet (run `oeleo run` first)")
        document = status_document(books, origin)
    finally:
        books.close()
    print(json.dumps(document, indent=2, ensure_ascii=False))
    return EXIT_OK


def _counted(n: int, noun: str) -> str:
    from oeleo.units import counted

    return counted(n, noun)


def _name(row: FileListTable) -> str:
    from oeleo.names import from_books, printable

    return printable(from_books(row.local_name))  # m\xe9sure.csv, not the books' m‛E9sure.csv


def _not_booked(settings: Settings, base: Path, books: Bookkeeper) -> Tuple[str, Optional[Set[str]]]:
    """How many files of the source folder have no row (new, or not copied yet), and the
    names listed there as the rows name them (None when the folder cannot be listed)."""
    from oeleo.connectors.local import LocalConnector
    from oeleo.names import printable

    try:
        booked = books.load()
        listing = LocalConnector(base, follow_links=settings.follow_links).list_files(
            extensions=settings.extensions,
            include=settings.include_patterns,
            exclude=settings.exclude_patterns,
            recursive=settings.subdirs,
        )
        names = [entry.relpath for entry in listing]
        new = sum(1 for name in names if name not in booked)
    except (OeleoError, OSError) as exc:
        return f"not booked yet: unknown (the source folder cannot be listed: {exc})", None
    listed = {printable(name) for name in names}
    return f"not booked yet: {new} (in the source folder, not in the books: new, or not copied yet)", listed


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

    from oeleo.monitor import HEARTBEAT_GRACE
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
    ``metadata``: then the header keywords the fits checker kept, ``KEY=value`` each. A row
    whose last try failed says so at its end: its size, time and checksum are then those of
    the last good copy (or empty: never copied), not of the file as it is now."""
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
        failed = (row.last_error or "").strip()
        if failed:  # a reason of blanks alone has no first line
            line = f"{line.rstrip()}  (last try failed: {failed.splitlines()[0]})"
        console.print(line.rstrip(), soft_wrap=True)


def _set_codes(args: argparse.Namespace, lock: bool) -> int:
    from oeleo.errors import ConfigError
    from oeleo.models import SHOULD_NOT_BE_COPIED, make_origin
    from oeleo.names import printable

    settings = _settings(args)
    verb = "lock" if lock else "unlock"
    if any(not text.strip() for text in args.paths):
        # `oeleo lock "$F"` with F unset: never every file of the source folder.
        raise ConfigError(f"an empty path: name the files to {verb} (oeleo {verb} PATH...)")
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


def cmd_serve(args: argparse.Namespace) -> int:
    """``oeleo serve``: the monitor until Ctrl-C or SIGTERM (exit 0). Everything that can be
    wrong (the token, the books, the port) is said before anything is created."""
    import signal
    import threading

    from oeleo.cli import EXIT_SIGNAL, _start_log_file
    from oeleo.errors import ConfigError
    from oeleo.monitor import Monitor, check_books, choose_origin
    from oeleo.names import printable
    from oeleo.serve import check_token, make_server, public_origins

    settings = _settings(args)
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: a port from 1 to 65535, or 0 for any free port")
    secret = settings.monitor_token.get_secret_value() if settings.monitor_token is not None else None
    token, made = check_token(secret)
    public = public_origins(settings.monitor_url)
    description = check_books(settings)
    origin = choose_origin(settings, args.origin)
    server = make_server(args.host, args.port, Monitor(settings, origin), token, public=public)

    def stop(signum: int, frame: Any) -> None:
        # Not an exception raised wherever the main thread is (a lock half taken): serve_forever
        # is asked to end, from a thread, since shutdown() waits for it.
        threading.Thread(target=server.shutdown, name="oeleo-serve-stop", daemon=True).start()

    # SIGINT too: Python turns it into KeyboardInterrupt only when it was not ignored when the
    # process started, and a command started with & by a script, nohup or a service manager
    # inherits it ignored: Ctrl-C and kill -INT then did nothing at all.
    old = {signum: signal.signal(signum, stop) for signum in EXIT_SIGNAL}
    try:
        _start_log_file(settings)
        host = f"[{server.host}]" if ":" in server.host else server.host
        whose = origin or "every origin (no folder of this PC chosen: --from or --origin)"
        _say(
            f"oeleo: serving {printable(description)}, files of {printable(whose)}, at http://{host}:{server.port}/"
        )
        if public:
            _say(f"oeleo: through a reverse proxy at {', '.join(public)} (OELEO_MONITOR_URL)")
        if made:  # on the terminal only, never in the log file
            _say(
                f"oeleo: OELEO_MONITOR_TOKEN is not set: the token of this server is {token} "
                "(shown once; set OELEO_MONITOR_TOKEN to choose one)"
            )
        if not server.loopback:
            _say(
                f"oeleo: {args.host} is not a loopback address: every page needs the token, which "
                "travels unencrypted over HTTP (use a trusted network, or a TLS proxy in front)"
            )
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        for signum, handler in old.items():
            signal.signal(signum, handler)
    _say("oeleo: the monitor stopped")
    return EXIT_OK
