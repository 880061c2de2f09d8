"""The ``oeleo`` command. It parses arguments and calls the library; nothing else.

Exit status: 0 all good, 1 some files failed, 2 a configuration or usage error,
130/143/129 stopped by Ctrl-C/SIGTERM/SIGHUP; an error that ends a command exits as
``EXIT_STATUS`` says for its kind. Heavy imports (pydantic-settings, rich, peewee) happen
inside the commands so that ``oeleo --help`` and ``oeleo --version`` start fast.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import subprocess
import sys
import traceback
import warnings
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    List,
    NoReturn,
    Optional,
    Sequence,
    TextIO,
    Type,
    Union,
)

from oeleo import __version__
from oeleo.errors import Aborted, Behaviour, OeleoError
from oeleo.logfile import BlockLines, MessageFormatter
from oeleo.names import hide_passwords

if TYPE_CHECKING:  # imported by the commands that use them: `oeleo --help` starts fast
    from rich.console import Console

    from oeleo.settings import Settings
    from oeleo.workers import Worker

log = logging.getLogger("oeleo")

# The exit status an error gives the command, by what oeleo/errors.py says the engine does
# with it; README.md's "Exit status" list repeats this table (tests/test_docs.py).
EXIT_STATUS: Dict[Behaviour, int] = {behaviour: behaviour.exit_status for behaviour in Behaviour}
EXIT_OK = 0
EXIT_FAILED = EXIT_STATUS[Behaviour.FAIL_FILE]
EXIT_CONFIG = EXIT_STATUS[Behaviour.CONFIG]
EXIT_SIGNAL: Dict[int, int] = {signal.SIGINT: EXIT_STATUS[Behaviour.INTERRUPT], signal.SIGTERM: 143}
if hasattr(signal, "SIGHUP"):  # the terminal window closed; Windows has no SIGHUP
    EXIT_SIGNAL[signal.SIGHUP] = 129


def exit_status(exc: OeleoError) -> int:
    """The exit status of a command that ``exc`` ended. An error that ends a command fails it,
    even one that only leaves a file for the next run when the engine meets it in a run."""
    return EXIT_STATUS[exc.behaviour] or EXIT_FAILED


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # usage errors: one line, status 2
        # prog is "oeleo" for the command itself, "oeleo run" for a subcommand
        self.exit(EXIT_CONFIG, f"oeleo: {message} (see {self.prog} --help)\n")


def _common(p: argparse.ArgumentParser) -> None:
    s = argparse.SUPPRESS
    p.add_argument("--env-file", metavar="FILE", default=s, help="read settings from FILE (default ./.env)")
    p.add_argument("--debug", action="store_true", default=s, help="log everything, show tracebacks")


def _source(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from", dest="base_dir_from", metavar="FOLDER", help="folder to copy from (OELEO_BASE_DIR_FROM)"
    )
    p.add_argument(
        "--to",
        dest="base_dir_to",
        metavar="DEST",
        help="where to copy to: a folder, or a URL such as s3://bucket/prefix (OELEO_BASE_DIR_TO)",
    )
    p.add_argument(
        "--ext",
        dest="filter_extension",
        metavar="EXT",
        help="extensions, comma separated (OELEO_FILTER_EXTENSION)",
    )
    p.add_argument("--connector", metavar="NAME", help="external connector (OELEO_CONNECTOR)")
    p.add_argument("--db", dest="db_name", metavar="NAME", help="bookkeeping database (OELEO_DB_NAME)")
    p.add_argument(
        "--no-subdirs", dest="subdirs", action="store_false", default=None, help="do not look into subfolders"
    )


def _origin(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--origin",
        metavar="HOST:/FOLDER",
        help="whose files to show: another PC's origin in shared books, or a folder of this one",
    )


def _checker(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checker", metavar="NAME", help="what checks a file before its copy: checksum, fits (OELEO_CHECKER)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="oeleo",
        description="Copy instrument files to where they must live: once, whole, verified, booked.",
        epilog="Settings come from OELEO_* variables and ./.env; see `oeleo config`.",
    )
    parser.add_argument("--version", action="version", version=f"oeleo {__version__}")
    _common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("run", help="copy new and changed files once")
    _common(p)
    _source(p)
    _checker(p)
    p.add_argument("--dry-run", action="store_true", help="show what would be copied; change nothing")
    p.add_argument("--force", action="store_true", help="copy every file again (locked files stay locked)")
    p.add_argument(
        "--include-locked",
        action="store_true",
        help="copy locked files too when they changed (with --force: always)",
    )

    p = sub.add_parser("check", help="compare the two sides and report what differs")
    _common(p)
    _source(p)
    _checker(p)
    p.add_argument(
        "--update-db", action="store_true", help="book identical files as copied, others as to copy"
    )
    p.add_argument(
        "--deep",
        action="store_true",
        help="download and hash the copies of a store that keeps no hash (SharePoint); else by size",
    )

    p = sub.add_parser("status", help="what the books say: files per code, errors, last run")
    _common(p)
    _source(p)
    p.add_argument("--files", action="store_true", help="list every file's row")
    p.add_argument(
        "--fits", action="store_true", help="with --files: the header keywords the fits checker kept"
    )
    p.add_argument(
        "--json", action="store_true", help="print the monitor's status document (GET /api/status) instead"
    )
    _origin(p)

    for name, text in (
        ("lock", "never copy these files (code 2)"),
        ("unlock", "copy these files again when needed"),
    ):
        p = sub.add_parser(name, help=text)
        _common(p)
        _source(p)
        p.add_argument("paths", nargs="+", metavar="PATH", help="files (or folders) in the source folder")

    p = sub.add_parser(
        "schedule", help="run again and again: on an interval, a cron expression or a night window"
    )
    _common(p)
    _source(p)
    _checker(p)
    p.add_argument(
        "--every",
        dest="run_interval",
        type=_duration_arg,
        metavar="DURATION",
        help="time between runs: seconds, or 30s, 5m, 2h; with --between, inside the window "
        "(OELEO_RUN_INTERVAL)",
    )
    when = p.add_mutually_exclusive_group()
    when.add_argument("--cron", metavar="EXPR", help='a cron expression, e.g. "*/10 22-23,0-6 * * *"')
    when.add_argument(
        "--between", nargs=2, metavar=("START", "END"), help="run only in this daily window, e.g. 22:00 06:00"
    )
    when.add_argument(
        "--rocketry",
        metavar="CONDITION",
        help='the rocketry scheduler with a condition, e.g. "every 5 minutes"',
    )
    p.add_argument("--until", metavar="WHEN", help="start no run after this: HH:MM or an ISO date and time")
    p.add_argument(
        "--max-runs",
        dest="max_runs",
        type=int,
        metavar="N",
        help="stop after N runs; 0 for no limit (OELEO_MAX_RUNS)",
    )
    p.add_argument("--scheduler", metavar="NAME", help="scheduler (OELEO_SCHEDULER)")

    p = sub.add_parser("watch", help="copy new and changed files as soon as they are stable")
    _common(p)
    _source(p)
    _checker(p)
    p.add_argument(
        "--full-pass-every",
        dest="full_pass_every",
        type=float,
        metavar="SECONDS",
        help="seconds between full passes that catch missed changes (OELEO_FULL_PASS_EVERY)",
    )
    p.add_argument(
        "--poll",
        dest="watch_poll",
        action="store_const",
        const="yes",
        help="poll the folder instead of the system's change events (OELEO_WATCH_POLL=yes)",
    )
    p.add_argument(
        "--no-poll",
        dest="watch_poll",
        action="store_const",
        const="no",
        help="use the system's change events, even on a network share (OELEO_WATCH_POLL=no)",
    )
    p.add_argument(
        "--until", metavar="WHEN", help="start no pass after this and stop: HH:MM or an ISO date and time"
    )
    p.add_argument(
        "--max-runs",
        dest="max_runs",
        type=int,
        metavar="N",
        help="stop after N passes, full or of changed files; 0 for no limit (OELEO_MAX_RUNS)",
    )

    p = sub.add_parser("task", help="let the system's scheduler run oeleo: install, remove, status")
    _common(p)
    p.add_argument("action", choices=("install", "remove", "status"), help="what to do with the task")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--every", metavar="DURATION", help="install: run oeleo every DURATION (5m, 1h)")
    when.add_argument(
        "--cron", metavar="EXPR", help='install: run oeleo at a cron expression, e.g. "*/10 * * * *"'
    )
    when.add_argument("--watch", action="store_true", help="install: a long-running oeleo watch")
    p.add_argument("--name", metavar="NAME", help="the task's name (default: oeleo- and this folder's name)")
    p.add_argument(
        "--platform",
        choices=("windows", "linux", "macos"),
        help="the platform to make the task for (default: this one; another only with --print)",
    )
    p.add_argument(
        "--print", dest="print_only", action="store_true", help="show what would be written and run"
    )

    p = sub.add_parser("serve", help="a web page, JSON API and /metrics over the books (the monitor)")
    _common(p)
    _source(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="address to listen on (default 127.0.0.1; any other needs the token for every page)",
    )
    p.add_argument("--port", type=int, default=8765, metavar="PORT", help="port to listen on (default 8765)")
    _origin(p)

    p = sub.add_parser("config", help="print the effective settings (secrets masked)")
    _common(p)
    _source(p)
    return parser


def _duration_arg(text: str) -> float:
    """``--every``: seconds (``600``), or a number with s, m or h (``5m``)."""
    from oeleo.schedulers.rules import ScheduleError, parse_duration

    try:
        return parse_duration(text)
    except ScheduleError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _subparsers(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the subcommand's parser, which names its own --help
        chosen = _subparsers(parser).get(getattr(args, "command", None) or "", parser)
        chosen.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not args.command:
        parser.print_help()
        return EXIT_CONFIG
    debug = getattr(args, "debug", False)
    _setup_console_logging(debug)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        _say("oeleo: interrupted")
        return EXIT_SIGNAL[signal.SIGINT]
    except Exception as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_is_gone():
            # `oeleo run --dry-run | head`: the reader has what it wanted. Quietly status 1,
            # as rich does when its console's pipe goes (`oeleo status --files | head`).
            return EXIT_FAILED
        if debug:  # the traceback, then the same line and status as without --debug
            traceback.print_exc()
        if isinstance(exc, OeleoError):
            _say(f"oeleo: {exc}", logged=True)
            return exit_status(exc)
        hint = "" if debug else " (run with --debug for details)"
        _say(f"oeleo: unexpected error: {type(exc).__name__}: {exc}{hint}", logged=True)
        return EXIT_FAILED


def _stdout_is_gone() -> bool:
    """Whether standard output is a pipe whose reader has gone (POSIX); if so, it is pointed at
    the null device, so that Python's own flush at exit does not fail a second time."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        gone = any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() on Windows; no real stdout
        return False
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return gone


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _say(text: str, logged: bool = False) -> None:
    """A line of the command's own on standard error, after the log lines held back before it;
    ``logged``: in the log file too (the error a run ends with: a scheduled task's only trace)."""
    from oeleo.reporters import flush_file_logs, to_file_logs

    if logged:  # an error: never a password a URL in it may hold
        text = hide_passwords(text)  # the log's lines say "oeleo:" already
        to_file_logs(logging.ERROR, "%s", text[len("oeleo: ") :] if text.startswith("oeleo: ") else text)
    flush_file_logs()
    print(text, file=sys.stderr)


def _setup_console_logging(debug: bool) -> None:
    logger = logging.getLogger("oeleo")
    # DEBUG only when asked (--debug; the log file follows this level): a debug line per
    # file costs time even when no handler prints it.
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    handler: logging.StreamHandler
    if _is_terminal(sys.stderr):
        handler = logging.StreamHandler(sys.stderr)  # rich takes it over (_log_through)
    else:
        handler = BlockLines(sys.stderr)  # a line per copied file, without a write per line
    handler.setLevel(logging.DEBUG if debug else logging.INFO)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(message)s") if debug else MessageFormatter()
    )
    logger.addHandler(handler)
    logger.propagate = False
    # The command owns its process and its formats name no caller, process or thread: not
    # looking them up saves a frame walk and a getpid() per line (a line per copied file).
    logging._srcfile = None
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.logThreads = False

    def one_line(
        message: Union[Warning, str],
        category: Type[Warning],
        filename: str,
        lineno: int,
        file: Optional[TextIO] = None,
        line: Optional[str] = None,
    ) -> None:
        _say(f"oeleo: warning: {message}")
        if _LOG_FILE_STARTED:
            _WARNED.append(str(message))
            _warnings_to_file_log()
        elif len(_WARNED) < 100:  # for the log file, once it is there (_start_log_file)
            _WARNED.append(str(message))

    warnings.showwarning = one_line


# Warnings said on the screen, for the log file: a scheduled task's screen is read by no one,
# and the warnings of the settings (a misspelt name) come before the log file is opened.
_WARNED: List[str] = []
_LOG_FILE_STARTED = False


def _warnings_to_file_log() -> None:
    from oeleo.reporters import to_file_logs

    while _WARNED:
        to_file_logs(logging.WARNING, "warning: %s", _WARNED.pop(0))


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    """The settings of a command, a destination URL resolved (``oeleo config`` shows them)."""
    from oeleo.places import resolve_destination
    from oeleo.settings import load_settings

    overrides: Dict[str, Any] = {
        n: getattr(args, n) for n in SETTING_FLAGS if getattr(args, n, None) is not None
    }
    overrides.update(extra)
    given_as = {n: SETTING_FLAGS[n] for n in overrides if n in SETTING_FLAGS}
    if overrides.get("watch_poll") is not None:
        given_as["watch_poll"] = "--poll" if overrides["watch_poll"] == "yes" else "--no-poll"
    settings = load_settings(getattr(args, "env_file", None), given_as=given_as, **overrides)
    return resolve_destination(settings, given=overrides)


# The settings the command's flags give, and the flag each comes from: an error about one of
# them names the flag ("OELEO_CONNECTOR='x' (from --connector)"). tests/test_cli.py checks
# this table against the parser.
SETTING_FLAGS = {
    "base_dir_from": "--from",
    "base_dir_to": "--to",
    "filter_extension": "--ext",
    "connector": "--connector",
    "db_name": "--db",
    "subdirs": "--no-subdirs",
    "run_interval": "--every",
    "max_runs": "--max-runs",
    "scheduler": "--scheduler",
    "full_pass_every": "--full-pass-every",
    "watch_poll": "--poll",  # or --no-poll, by its value
    "checker": "--checker",
}


def _start_log_file(settings: Settings) -> None:
    if settings.log_dir is not None:
        from oeleo.reporters import start_file_log

        try:
            start_file_log(settings.log_dir)
        except OSError as exc:
            from oeleo.errors import ConfigError

            raise ConfigError(
                f"OELEO_LOG_DIR={settings.log_dir}: cannot write a log there ({exc.strerror})"
            ) from None
        global _LOG_FILE_STARTED
        _LOG_FILE_STARTED = True
        _warnings_to_file_log()


def _worker(settings: Settings, **options: Any) -> Worker:
    from oeleo.reporters import RichReporter, choose_reporter
    from oeleo.workers import worker_from_settings

    reporter = choose_reporter()
    if isinstance(reporter, RichReporter):
        _log_through(reporter.console)
    worker = worker_from_settings(settings, reporter=reporter, **options)
    # Everything imported so far lives as long as the command: keep the garbage collector
    # from walking it again and again while a run makes objects for every file (-7 % of
    # a first copy of 5,000 small files).
    gc.freeze()
    return worker


def _log_through(console: Console) -> None:
    """On a terminal, log lines go through rich's console so they print above the progress
    bars instead of tearing through them."""
    from rich.logging import RichHandler

    logger = logging.getLogger("oeleo")
    for handler in list(logger.handlers):
        if type(handler) is logging.StreamHandler and handler.stream is sys.stderr:
            rich_handler = RichHandler(console=console, show_time=False, show_path=False)
            rich_handler.setLevel(handler.level)
            logger.removeHandler(handler)
            logger.addHandler(rich_handler)


class _StopOnSignal:
    """SIGINT, SIGTERM and SIGHUP (the terminal closed) ask ``target`` to stop cleanly;
    a second Ctrl-C interrupts at once."""

    def __init__(self, target: Worker) -> None:
        self.target = target
        self.signum: Optional[int] = None
        self._old: Dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        for signum in EXIT_SIGNAL:
            self._old[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        self.target.stop()
        try:
            _say(f"oeleo: {signal.Signals(signum).name} received, stopping cleanly")
        except OSError:  # after SIGHUP the terminal may be gone: stopping matters, not saying so
            pass

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._old.items():
            signal.signal(signum, handler)

    def status(self, default: int) -> int:
        return EXIT_SIGNAL.get(self.signum, default) if self.signum is not None else default


def cmd_run(args: argparse.Namespace) -> int:
    from oeleo.names import printable

    settings = _settings(args)
    if not args.dry_run:  # a dry run changes nothing, not even the log folder: the screen only
        _start_log_file(settings)
    worker = _worker(settings, dry_run=args.dry_run, force=args.force, include_locked=args.include_locked)
    with _StopOnSignal(worker) as stopper:
        try:
            worker.connect_to_db()
            summary = worker.run()
        finally:
            worker.close()
    if args.dry_run:
        for relpath in summary.would_copy:
            print(printable(relpath))
    return stopper.status(summary.exit_status)


def cmd_check(args: argparse.Namespace) -> int:
    from oeleo.names import printable

    settings = _settings(args)
    _start_log_file(settings)
    worker = _worker(settings)
    with _StopOnSignal(worker) as stopper:
        try:
            worker.connect_to_db()
            # with progress through the reporter
            report = worker.check(update_db=args.update_db, deep=args.deep)
        except Aborted:  # SIGTERM, SIGHUP or Ctrl-C: what was booked stays booked
            return stopper.status(EXIT_STATUS[Behaviour.INTERRUPT])
        finally:
            worker.close()
    from oeleo.reporters import flush_file_logs, to_file_logs

    console = _console()
    counts = (
        f"same: {len(report.same)}  missing: {len(report.missing)}  different: {len(report.different)}  "
        f"locked: {len(report.locked)}  errors: {len(report.errors)}"
    )
    console.print(counts)
    to_file_logs(logging.INFO, "check: %s", counts)  # the log file keeps what check found
    for title, names in (("missing", report.missing), ("different", report.different)):
        for name in names:
            console.print(f"{title:9} {printable(name)}", soft_wrap=True)
            to_file_logs(logging.WARNING, "check: %s %s", title, printable(name))
    for name, reason in report.errors:
        console.print(f"error     {printable(name)}: {reason}", soft_wrap=True)
        to_file_logs(logging.ERROR, "check: cannot compare %s: %s", printable(name), reason)
    from oeleo.units import counted

    keeps = not worker.external_connector.features.overwrite  # Arcsecond: the first version stays
    if report.different and keeps:
        kept = (
            f"{worker.external_connector.name} does not overwrite files: its copies of "
            f"{counted(len(report.different), 'different file')} stay as they are; to send the new "
            "versions, remove them there and run `oeleo check --update-db` again: the next run sends them"
        )
        console.print(kept, soft_wrap=True)
        to_file_logs(logging.WARNING, "check: %s", kept)
    if args.update_db:
        # The differences are booked as to copy: the next run copies them. Nothing is wrong
        # unless a file could not be compared.
        updated = "the books are updated: the next run copies what is missing" + (
            "" if keeps else " or different"
        )
        console.print(updated)
        to_file_logs(logging.INFO, "check: %s", updated)
        flush_file_logs()
        return EXIT_FAILED if report.errors else EXIT_OK
    flush_file_logs()
    return EXIT_OK if report.in_sync else EXIT_FAILED


def _console() -> Console:
    from rich.console import Console

    # File names like "[draft] a.csv" or "x :smile: y.csv" are neither markup nor emoji codes.
    return Console(markup=False, emoji=False, highlight=False)


# -- the books beside a run: status, lock, unlock, serve ---------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    from oeleo.cli_books import cmd_status as status

    return status(args)


def cmd_lock(args: argparse.Namespace) -> int:
    from oeleo.cli_books import cmd_lock as lock

    return lock(args)


def cmd_unlock(args: argparse.Namespace) -> int:
    from oeleo.cli_books import cmd_unlock as unlock

    return unlock(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from oeleo.cli_books import cmd_serve as serve

    return serve(args)


def cmd_schedule(args: argparse.Namespace) -> int:
    from oeleo.errors import ConfigError
    from oeleo.schedulers import get_scheduler_class

    if args.rocketry is not None:
        args.scheduler = "rocketry"
    settings = _settings(args)
    options = _schedule_options(args, settings)
    _start_log_file(settings)
    scheduler_cls = get_scheduler_class(settings.scheduler, settings.where("scheduler"))
    from_settings = callable(getattr(scheduler_cls, "from_settings", None))  # reads its own settings
    until = {k: v for k, v in options.items() if k == "until"}  # what one that reads its settings takes
    if from_settings:
        flags = (("--cron", args.cron), ("--between", args.between))
        given = [flag for flag, value in flags if value]
        if given:
            raise ConfigError(f"{given[0]}: OELEO_SCHEDULER={settings.scheduler} takes no time rule")
        _accepts_options(scheduler_cls.from_settings, settings.scheduler, until)
    else:
        _accepts_options(scheduler_cls, settings.scheduler, options)
    worker = _worker(settings)
    if from_settings:
        scheduler = scheduler_cls.from_settings(worker, settings, **until)
    else:
        interval, max_runs = settings.run_interval, settings.max_runs or None
        scheduler = scheduler_cls(worker, run_interval_time=interval, max_run_intervals=max_runs, **options)
    return _scheduled(scheduler)


def _schedule_options(args: argparse.Namespace, settings: Settings) -> Dict[str, Any]:
    """``schedule`` and ``until`` for the scheduler, from the flags or ``OELEO_SCHEDULE``.

    ``--cron``, ``--between`` and ``--rocketry`` replace ``OELEO_SCHEDULE``; ``--every`` alone
    replaces an ``every`` or cron schedule, and is the interval inside a window. Bad input is
    one configuration error naming the flag or the setting.
    """
    import time

    from oeleo.errors import ConfigError
    from oeleo.schedulers import rules

    interval = settings.run_interval
    options: Dict[str, Any] = {}
    source = ""
    try:
        if args.until is not None:
            source = f"--until {args.until!r}"
            options["until"] = rules.parse_until(args.until, time.time())
        if settings.scheduler.strip().lower() == "rocketry":
            for flag, value in (("--cron", args.cron), ("--between", args.between)):
                if value is not None:
                    raise ConfigError(
                        f"{flag}: OELEO_SCHEDULER=rocketry takes a rocketry condition: "
                        'give it with --rocketry "...", or drop OELEO_SCHEDULER for the built-in scheduler'
                    )
            every = f"every {interval:g} seconds"
            options["schedule"] = args.rocketry or settings.schedule.strip() or every
            return options
        if args.cron is not None:
            if args.run_interval is not None:
                raise ConfigError(
                    "--every has no meaning with --cron: the cron expression says when runs start"
                )
            source = f"--cron {args.cron!r}"
            options["schedule"] = rules.parse_cron(args.cron)
        elif args.between is not None:
            source = f"--between {' '.join(args.between)}"
            options["schedule"] = rules.parse_between(args.between[0], args.between[1], interval)
        elif settings.schedule.strip():
            source = f"OELEO_SCHEDULE={settings.schedule!r}"
            rule = rules.parse_schedule(settings.schedule, interval)
            if args.run_interval is not None and not isinstance(rule, rules.Between):
                rule = rules.Every(interval)  # --every replaces an every or cron schedule
            options["schedule"] = rule
    except rules.ScheduleError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return options


def _accepts_options(scheduler_cls: Any, name: str, options: Dict[str, Any]) -> None:
    """A plug-in scheduler that takes no time rule is refused when one is given."""
    import inspect

    from oeleo.errors import ConfigError

    try:
        parameters = inspect.signature(scheduler_cls).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    for option in options:
        if option not in parameters:
            flag = "--until" if option == "until" else "--cron, --between or OELEO_SCHEDULE"
            raise ConfigError(f"OELEO_SCHEDULER={name}: this scheduler takes no {option} ({flag})")


def cmd_watch(args: argparse.Namespace) -> int:
    import time

    from oeleo.errors import ConfigError
    from oeleo.schedulers.rules import ScheduleError, parse_until
    from oeleo.schedulers.watch import WatchScheduler

    settings = _settings(args)
    try:
        until = None if args.until is None else parse_until(args.until, time.time())
    except ScheduleError as exc:
        raise ConfigError(f"--until {args.until!r}: {exc}") from None
    _start_log_file(settings)
    return _scheduled(WatchScheduler.from_settings(_worker(settings), settings, until=until))


def cmd_task(args: argparse.Namespace) -> int:
    from oeleo import tasks
    from oeleo.errors import ConfigError
    from oeleo.settings import find_env_file

    here = tasks.current_platform()
    platform = args.platform or here
    if platform != here and not (args.action == "install" and args.print_only):
        raise ConfigError(
            f"--platform {platform}: this computer is {here}; another platform only with --print"
        )
    workdir = os.getcwd()
    if args.action != "install":
        for flag, value in (("--every", args.every), ("--cron", args.cron), ("--watch", args.watch)):
            if value:
                raise ConfigError(f"{flag}: only oeleo task install takes it")
        plan = tasks.existing_plan(platform, workdir, args.name)
        if args.action == "remove":
            tasks.remove(plan, say=_say)
            return EXIT_OK
        return _task_status(plan)
    when = tasks.When.parse(args.every, args.cron, args.watch)
    settings = _settings(args)  # a .env that does not validate is refused now, not at every start
    if settings.base_dir_from is None or settings.base_dir_to is None:
        raise ConfigError(
            "OELEO_BASE_DIR_FROM and OELEO_BASE_DIR_TO: the task reads its settings from the .env of "
            f"this folder ({workdir}); set both there first"
        )
    env_file = find_env_file(getattr(args, "env_file", None))
    env_path = str(Path(env_file).resolve()) if env_file is not None else None
    python = sys.executable if platform == here else ("python.exe" if platform == "windows" else "python3")
    plan = tasks.plan_task(when, platform, workdir, env_path, python, args.name)
    if args.print_only:
        for line in tasks.describe_plan(plan):
            print(line)
        return EXIT_OK
    if env_path is None:
        _say("oeleo: warning: no .env file here: the task sees only the variables set for your account")
    tasks.install(plan, say=lambda line: _say(f"oeleo: {line}"))
    for note in plan.notes:
        _say(f"oeleo: {note}")
    return EXIT_OK


def _task_status(plan: Any) -> int:
    from oeleo import tasks

    for item in plan.files:
        print(f"{item.path}: {'there' if os.path.exists(item.path) else 'not there'}")
    why = tasks.can_run_here(plan.platform, os.environ)
    if why is not None:
        print(f"not asked: {why}; run: " + "; ".join(tasks.shown(c, plan.platform) for c in plan.status))
        return EXIT_FAILED
    status = EXIT_OK
    for command in plan.status:
        sys.stdout.flush()
        if subprocess.run(command, check=False).returncode != 0:
            status = EXIT_FAILED
    return status


def _scheduled(scheduler: Any) -> int:
    """Run a scheduler until it stops; the exit status says how it ended."""
    scheduler.start()
    signum = getattr(scheduler, "received_signal", None)
    if signum is not None:
        return EXIT_SIGNAL.get(signum, EXIT_FAILED)
    return EXIT_FAILED if getattr(scheduler, "failed_runs", 0) else EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    from oeleo.settings import find_env_file

    settings = _settings(args)
    env_file = find_env_file(getattr(args, "env_file", None))
    print(f"# .env read: {env_file if env_file else 'none'}")
    for name, value in settings.masked().items():
        print(f"{name}={value}")
    if settings.connector.strip().lower() == "arcsecond" and settings.arcsecond_api_key is None:
        from oeleo.connectors.arcsecond import config_file, stored_key

        where = config_file()
        if stored_key():
            print(f"# OELEO_ARCSECOND_API_KEY is not set: the key `arcsecond login` keeps in {where} is used")
        else:
            print(f"# OELEO_ARCSECOND_API_KEY is not set, and {where} holds no key (`arcsecond login`)")
    return EXIT_OK


COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "check": cmd_check,
    "status": cmd_status,
    "lock": cmd_lock,
    "unlock": cmd_unlock,
    "schedule": cmd_schedule,
    "watch": cmd_watch,
    "task": cmd_task,
    "serve": cmd_serve,
    "config": cmd_config,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
