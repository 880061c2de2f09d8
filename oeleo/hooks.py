"""Post-transfer hooks: hand each file that arrived to what comes next (docs/hooks.md).

A hook runs after the pass's copies are booked, never in the copying path: it cannot undo or
repeat a copy, and a hook that fails, times out or raises never stops the run. What did not
succeed is written in the file's ``last_error`` as ``hooks not done ["name", ...]: reason`` and
those hooks (only those) run again next pass, for the file as it was booked. Before the hooks of
a pass start, each arrived file is marked ``hooks not done ["*"]``, so that a run killed between
the copy and its hooks runs them next pass (a hook may run twice, never zero times).

Kinds of hooks: ``OELEO_HOOK_COMMAND`` (a program, once per file), ``OELEO_HOOK_PASS_COMMAND``
(once per pass with the list), Python callables given to ``Worker(hooks=[...])`` or registered
under the entry-point group ``oeleo.hooks``: called with one ``Arrival``, or with the list of
them when the callable has ``per_pass = True``.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from oeleo.errors import ConfigError
from oeleo.names import from_books, printable

log = logging.getLogger("oeleo")

ENTRY_POINT_GROUP = "oeleo.hooks"
NOT_DONE = "hooks not done"  # how last_error starts for a file whose hooks must run again
ALL = "*"  # in that list: every hook (the file arrived, its hooks have not run yet)
OUTPUT_LIMIT = 64 * 1024  # bytes kept of a hook command's stdout and of its stderr (the last ones)
REASON_LIMIT = 500  # characters of a hook's error kept in the books and the log line
HOOK_THREADS = 4  # files whose hooks run at the same time


@dataclass(frozen=True)
class Arrival:
    """One file that arrived: what a hook is told about it (also its JSON document)."""

    local_name: str  # relative to the source folder, POSIX separators
    local_path: str  # absolute path of the source file
    external_name: str  # the name in the store
    checksum: str
    algorithm: str
    size: int
    metadata: Dict[str, Any] = field(default_factory=dict)  # FITS header keywords (the fits checker)

    def document(self) -> Dict[str, Any]:
        return asdict(self)

    def environment(self) -> Dict[str, str]:
        return {
            "OELEO_HOOK_LOCAL_PATH": self.local_path,
            "OELEO_HOOK_EXTERNAL_NAME": self.external_name,
            "OELEO_HOOK_CHECKSUM": self.checksum,
        }


class HookFailed(Exception):
    """A hook did not succeed (its reason, short enough for the books)."""


Hook = Callable[..., Any]


def hook_name(hook: Hook) -> str:
    """The name a hook is booked under: its ``hook_name``, else ``module:qualname``."""
    name = getattr(hook, "hook_name", None)
    if name:
        return str(name)
    cls = hook if hasattr(hook, "__qualname__") else type(hook)
    return f"{getattr(cls, '__module__', '?')}:{getattr(cls, '__qualname__', repr(hook))}"


def split_command(command: str, setting: str) -> Union[List[str], str]:
    """The program and arguments of a hook command, without a shell.

    POSIX: split as a shell would split words (``shlex``), no pipes, globs or variables.
    Windows: the command line is given to CreateProcess as written (the program splits its
    own arguments), still without cmd.exe.
    """
    try:
        argv = shlex.split(command, posix=os.name != "nt")
    except ValueError as exc:
        raise ConfigError(
            f"{setting}={command!r}: cannot be split into a program and arguments ({exc})"
        ) from None
    if not argv:
        raise ConfigError(f"{setting} is empty")
    program = argv[0].strip('"') if os.name == "nt" else argv[0]
    if shutil.which(program) is None:
        raise ConfigError(
            f"{setting}: program {program!r} not found (not on PATH, or not executable); "
            "give its full path, or leave the setting empty"
        )
    return command if os.name == "nt" else argv


def _tail(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text[-REASON_LIMIT:]


def run_command(
    args: Union[List[str], str], stdin: bytes, env: Dict[str, str], timeout: float, what: str
) -> Tuple[bytes, bytes]:
    """Run a hook program with ``stdin``; return the last ``OUTPUT_LIMIT`` bytes of its stdout
    and stderr. Raises ``HookFailed`` when it cannot start, exits non-zero or runs too long
    (then it is killed, with the programs it started on POSIX)."""
    posix = os.name != "nt"
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **env},
            start_new_session=posix,  # its own process group: a timeout kills its children too
        )
    except OSError as exc:
        raise HookFailed(f"{what} could not start: {exc.strerror or exc}") from None
    kept = {"out": bytearray(), "err": bytearray()}

    def drain(stream: Any, key: str) -> None:
        # Read everything (a hook that prints megabytes must not block on a full pipe), keep the end.
        buffer = kept[key]
        for chunk in iter(lambda: stream.read(65536), b""):
            buffer += chunk
            if len(buffer) > OUTPUT_LIMIT:
                del buffer[: len(buffer) - OUTPUT_LIMIT]
        stream.close()

    def feed() -> None:
        try:
            assert proc.stdin is not None
            proc.stdin.write(stdin)
            proc.stdin.close()
        except OSError:
            pass  # the hook does not read its standard input: fine

    threads = [
        threading.Thread(target=drain, args=(proc.stdout, "out"), daemon=True),
        threading.Thread(target=drain, args=(proc.stderr, "err"), daemon=True),
        threading.Thread(target=feed, daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        status = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            if posix:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except OSError:
            pass
        proc.wait()
        for thread in threads:
            thread.join(5)
        raise HookFailed(f"{what} timed out after {timeout:g} s (OELEO_HOOK_TIMEOUT)") from None
    for thread in threads:
        thread.join(5)
    out, err = bytes(kept["out"]), bytes(kept["err"])
    if status != 0:
        said = _tail(err) or _tail(out)
        raise HookFailed(f"{what} exited with status {status}" + (f": {said}" if said else ""))
    return out, err


class CommandHook:
    """``OELEO_HOOK_COMMAND``: a program run once per arrived file."""

    hook_name = "command"
    per_pass = False

    def __init__(self, command: str, timeout: float, setting: str = "OELEO_HOOK_COMMAND") -> None:
        self.args = split_command(command, setting)
        self.timeout = timeout

    def __call__(self, arrival: Arrival) -> None:
        stdin = json.dumps(arrival.document()).encode()
        out, _ = run_command(self.args, stdin, arrival.environment(), self.timeout, "OELEO_HOOK_COMMAND")
        if out:
            log.debug("hook command for %s said: %s", printable(arrival.local_name), _tail(out))


class PassCommandHook:
    """``OELEO_HOOK_PASS_COMMAND``: a program run once per pass with the arrived files."""

    hook_name = "pass-command"
    per_pass = True

    def __init__(self, command: str, timeout: float) -> None:
        self.args = split_command(command, "OELEO_HOOK_PASS_COMMAND")
        self.timeout = timeout

    def __call__(self, arrivals: List[Arrival]) -> None:
        stdin = json.dumps({"files": [a.document() for a in arrivals]}).encode()
        env = {"OELEO_HOOK_FILES": str(len(arrivals))}
        out, _ = run_command(self.args, stdin, env, self.timeout, "OELEO_HOOK_PASS_COMMAND")
        if out:
            log.debug("pass hook command said: %s", _tail(out))


def entry_point_hooks() -> List[Hook]:
    """The callables registered under the entry-point group ``oeleo.hooks``."""
    from importlib.metadata import entry_points

    eps = entry_points()
    found = eps.select(group=ENTRY_POINT_GROUP) if hasattr(eps, "select") else eps.get(ENTRY_POINT_GROUP, [])
    hooks = []
    for ep in found:
        try:
            hook = ep.load()
        except Exception as exc:
            raise ConfigError(f"entry point {ENTRY_POINT_GROUP} {ep.name!r} ({ep.value}): {exc}") from None
        if not callable(hook):
            raise ConfigError(f"entry point {ENTRY_POINT_GROUP} {ep.name!r} ({ep.value}) is not callable")
        hooks.append(hook)
    return hooks


def not_done_text(names: Sequence[str], reason: str) -> str:
    return f"{NOT_DONE} {json.dumps(sorted(set(names)))}: {reason}"[:2000]


def not_done_names(last_error: Optional[str]) -> Optional[List[str]]:
    """The hooks a row says must run again (``None``: the row says nothing of hooks)."""
    if not last_error or not last_error.startswith(NOT_DONE + " "):
        return None
    try:
        names, _ = json.JSONDecoder().raw_decode(last_error, len(NOT_DONE) + 1)
    except ValueError:
        return [ALL]
    return [str(n) for n in names] if isinstance(names, list) else [ALL]


class Hooks:
    """The hooks of a worker, and how a pass runs them (``after_pass``)."""

    def __init__(self, hooks: Sequence[Hook] = (), entry_points: bool = True, threads: int = HOOK_THREADS):
        self._given = list(hooks)
        self._entry_points = entry_points
        self._loaded: Optional[List[Hook]] = None
        self.threads = max(1, threads)

    @classmethod
    def from_settings(cls, settings: Any, hooks: Sequence[Hook] = ()) -> Hooks:
        """The commands of ``OELEO_HOOK_COMMAND``/``OELEO_HOOK_PASS_COMMAND``, ``hooks``, and
        the entry-point hooks; a command that is not there is a configuration error now."""
        given: List[Hook] = []
        if settings.hook_command.strip():
            given.append(CommandHook(settings.hook_command, settings.hook_timeout))
        if settings.hook_pass_command.strip():
            given.append(PassCommandHook(settings.hook_pass_command, settings.hook_timeout))
        if isinstance(hooks, Hooks):
            given.extend(hooks._given)
        else:
            given.extend(hooks)
        return cls(given)

    @property
    def all(self) -> List[Hook]:
        if self._loaded is None:
            self._loaded = self._given + (entry_point_hooks() if self._entry_points else [])
        return self._loaded

    def __bool__(self) -> bool:
        return bool(self.all)

    def after_pass(
        self,
        arrived: Sequence[Tuple[str, Any, Optional[Dict[str, Any]]]],
        bookkeeper: Any,
        local_path: Callable[[str], Path],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Dict[str, str]:
        """Run the hooks for the files booked as copied in this pass (``(local name,
        PutResult, metadata)``) and for the ones whose hooks did not succeed before; book
        what did not succeed. Returns ``{local name: reason}`` of those."""
        if not self.all:
            return {}
        this_pass = [
            Arrival(
                name,
                os.fspath(local_path(name)),
                result.external_name,
                result.checksum,
                result.algorithm,
                result.size,
                metadata or {},
            )
            for name, result, metadata in arrived
        ]
        for arrival in this_pass:  # if the run dies now, the next pass runs them
            bookkeeper.record_error(arrival.local_name, not_done_text([ALL], "not run yet"))
        bookkeeper.flush()
        todo: List[Tuple[Arrival, List[str]]] = [(a, [ALL]) for a in this_pass]
        fresh = {a.local_name for a in this_pass}
        before = self._left_before(bookkeeper, local_path)
        todo += [item for item in before if item[0].local_name not in fresh]
        if should_stop() or not todo:
            return {}
        failures: Dict[str, Dict[str, str]] = {a.local_name: {} for a, _ in todo}
        per_file = [h for h in self.all if not getattr(h, "per_pass", False)]
        per_pass = [h for h in self.all if getattr(h, "per_pass", False)]

        def wanted(hook: Hook, names: List[str]) -> bool:
            return ALL in names or hook_name(hook) in names

        def run_file(item: Tuple[Arrival, List[str]]) -> None:
            arrival, names = item
            for hook in per_file:
                if wanted(hook, names) and not should_stop():
                    error = _call(hook, arrival)
                    if error:
                        failures[arrival.local_name][hook_name(hook)] = error

        with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="oeleo-hook") as pool:
            list(pool.map(run_file, todo))
        for hook in per_pass:
            arrivals = [a for a, names in todo if wanted(hook, names)]
            if arrivals and not should_stop():
                error = _call(hook, arrivals)
                if error:
                    for arrival in arrivals:
                        failures[arrival.local_name][hook_name(hook)] = error
        stopped = should_stop()
        problems = {}
        ours = {hook_name(h) for h in self.all}
        for arrival, names in todo:
            failed = failures[arrival.local_name]
            for name in names:  # a hook this worker does not have: still to run, by one that has it
                if name != ALL and name not in ours:
                    failed.setdefault(name, "not run: no hook of that name in this run")
            if failed:
                reason = "; ".join(f"{name}: {error}" for name, error in sorted(failed.items()))
                bookkeeper.record_error(arrival.local_name, not_done_text(list(failed), reason))
                problems[arrival.local_name] = reason
                log.warning(
                    "%s: copied, but a hook did not succeed (run again next pass): %s",
                    printable(arrival.local_name),
                    reason,
                )
            elif not stopped:  # a stop may have left hooks not run: the marker stays
                bookkeeper.clear_error(arrival.local_name)
        bookkeeper.flush()
        return problems

    def _left_before(
        self, bookkeeper: Any, local_path: Callable[[str], Path]
    ) -> List[Tuple[Arrival, List[str]]]:
        """The booked files whose hooks did not all succeed in an earlier pass."""
        left = []
        for row in bookkeeper.rows(errors_only=True):
            names = not_done_names(row.last_error)
            if names is None or not row.checksum:
                continue
            name = from_books(row.local_name)
            try:
                metadata = json.loads(row.metadata) if getattr(row, "metadata", None) else {}
            except ValueError:
                metadata = {}
            arrival = Arrival(
                name,
                os.fspath(local_path(name)),
                from_books(row.external_name or name),
                row.checksum,
                "",
                row.size or 0,
                metadata,
            )
            left.append((arrival, names))
        return left


def _call(hook: Hook, argument: Any) -> Optional[str]:
    """Run one hook; its error as a short reason, or None. Never raises for the hook's sake."""
    try:
        hook(argument)
    except HookFailed as exc:
        return str(exc)[:REASON_LIMIT]
    except Exception as exc:  # a Python hook's bug is that hook's failure, not the run's
        log.debug("hook %s raised", hook_name(hook), exc_info=True)
        return f"{type(exc).__name__}: {exc}"[:REASON_LIMIT]
    return None
