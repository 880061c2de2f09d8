"""Watch mode: copy files soon after they are written, from the folder's change events.

watchdog tells which paths changed; only those are looked at (a tree of 100,000 files is not
listed again on every event). A file is copied once it is stable: unchanged for
``OELEO_MIN_AGE`` seconds, and at least ``MIN_STABLE`` seconds, since an instrument that
writes in bursts says nothing when it is done (the polling observer never sends "closed").
Files that become stable together go in one pass. A full pass every ``full_pass_every``
seconds, and one at the start, catch what events missed (a full event queue, a share that
sends none). On network shares the native observer hears nothing of changes made by other
computers, so the folder is polled there; ``OELEO_WATCH_POLL`` forces either way.

Passes run one after the other in the calling thread and hold the books only while they run,
as ``SimpleScheduler``'s do; a failing pass is logged and watching goes on. ``max_run_intervals``
(every pass counts, full or over changed files) and ``until`` end the watching, as they end
``SimpleScheduler``'s schedule.
"""

from __future__ import annotations

import datetime
import logging
import os
import stat as stat_module
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import TYPE_CHECKING, Any, Dict, FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple, Union

from oeleo.connectors.base import FileEntry, has_extension, matches
from oeleo.errors import ConfigError
from oeleo.schedulers.base import PassWorker, SchedulerBase
from oeleo.schedulers.rules import describe_instant
from oeleo.schedulers.simple import _until

if TYPE_CHECKING:
    from oeleo.settings import Settings
    from oeleo.workers import RunSummary

log = logging.getLogger("oeleo")

MIN_STABLE = 1.0  # seconds a file must be unchanged before it is copied, when OELEO_MIN_AGE is less
BATCH_WAIT = 0.5  # a stable file waits at most this long for others about to become stable
POLL_MIN_INTERVAL = 1.0  # seconds between two polls of a small tree
# A large tree is polled less often: a poll of every file, as measured at the start, takes at
# most 0.4 % of a core, a look at every folder 0.2 %; with what those measures leave out (the
# events, the passes' own work) the watcher stays under 1 % while idle.
POLL_CPU_SHARE = 0.004
FOLDER_CPU_SHARE = 0.002
RECENT_NS = 2_000_000_000  # a folder whose time is this recent is read again at each look

# File systems whose changes the kernel does not report when another computer makes them
# (Linux /proc/mounts types); every FUSE file system is treated the same (sshfs, rclone, s3fs).
NETWORK_FS_TYPES = frozenset(
    {
        "cifs",
        "smb3",
        "smbfs",
        "nfs",
        "nfs4",
        "9p",
        "afs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "davfs",
        "vboxsf",
        "virtiofs",
    }
)


# -- which observer ---------------------------------------------------------------------
def _unescape_mount(text: str) -> str:
    r"""/proc/mounts writes a space as ``\040`` (and tab, newline, backslash likewise)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def mount_type(path: str, mounts: str) -> Optional[str]:
    """The file system type of the mount that holds ``path`` (absolute, links resolved),
    from the text of Linux ``/proc/mounts``; ``None`` if no line holds it."""
    best: Tuple[int, Optional[str]] = (-1, None)
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape_mount(fields[1]).rstrip("/") or "/"
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best[0]:  # of equal mount points, the last is in force
            best = (len(point), fields[2])
    return best[1]


def is_network_type(fs_type: Optional[str]) -> bool:
    return fs_type is not None and (fs_type in NETWORK_FS_TYPES or fs_type.startswith("fuse."))


def _windows_remote_drive(path: str) -> bool:
    """A mapped network drive (``Z:``) on Windows."""
    import ctypes

    drive = PureWindowsPath(path).drive
    if not drive:
        return False
    get_drive_type = ctypes.windll.kernel32.GetDriveTypeW  # type: ignore[attr-defined]
    return bool(get_drive_type(drive + "\\") == 4)  # DRIVE_REMOTE


def is_network_share(path: str, platform: str = sys.platform, mounts: Optional[str] = None) -> bool:
    """Whether ``path`` is on a network share: a UNC path or a mapped network drive on
    Windows, a CIFS/SMB/NFS/FUSE mount on Linux (``mounts``: the text of /proc/mounts)."""
    if platform == "win32":
        if PureWindowsPath(path).drive.startswith(("\\\\", "//")):
            return True
        try:
            return _windows_remote_drive(path)
        except (AttributeError, OSError):
            return False
    if platform.startswith("linux"):
        if mounts is None:
            try:
                with open("/proc/mounts", encoding="utf-8", errors="replace") as handle:
                    mounts = handle.read()
            except OSError:
                return False
        return is_network_type(mount_type(path, mounts))
    return False


def choose_polling(poll: str, path: str) -> bool:
    """``OELEO_WATCH_POLL``: ``yes`` polls, ``no`` uses the system's events, ``auto`` polls on
    network shares only."""
    if poll == "yes":
        return True
    if poll == "no":
        return False
    return is_network_share(path)


def poll_interval(seconds: float, share: float = POLL_CPU_SHARE) -> float:
    """Seconds between two polls that take ``seconds`` each, so that polling costs at most
    ``share`` of a core: 1 s for a small tree, longer for one that takes long to look at."""
    return max(POLL_MIN_INTERVAL, seconds * (1 - share) / share)


class FolderTimes:
    """Polling's quick look, for new files: the modification time of every folder. Making,
    removing or renaming a file changes its folder's time (on a local disk, an SMB or an NFS
    share), so new files are found by a look at each folder, not at each file; a folder whose
    time moved is read again. A file changed in place is left to the poll of every file and
    to the full passes."""

    def __init__(self, root: str, recursive: bool = True) -> None:
        self.root = root
        self.recursive = recursive
        self._folders: Dict[str, Tuple[int, FrozenSet[str]]] = {}  # relpath -> (mtime, its files)
        self._read("", initial=True)

    def __len__(self) -> int:
        return len(self._folders)

    def _read(self, rel: str, initial: bool = False) -> List[str]:
        """Read one folder (and any new folder in it); the files it holds that were not there."""
        path = os.path.join(self.root, *rel.split("/")) if rel else self.root
        try:
            mtime = os.stat(path).st_mtime_ns  # before the listing: a file made meanwhile moves it
            entries = list(os.scandir(path))
        except OSError:
            self._folders.pop(rel, None)
            return []
        before = self._folders.get(rel)
        names = set()
        found: List[str] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            child = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if not is_dir:
                names.add(entry.name)
            elif self.recursive and child not in self._folders:
                found.extend(self._read(child, initial))
        self._folders[rel] = (mtime, frozenset(names))
        if initial:
            return []
        new = names - before[1] if before is not None else names
        found.extend(f"{rel}/{name}" if rel else name for name in sorted(new))
        return found

    def changed(self) -> List[str]:
        """The files that appeared since the last look, in the folders whose time moved."""
        found: List[str] = []
        for rel, (mtime, _) in list(self._folders.items()):
            path = os.path.join(self.root, *rel.split("/")) if rel else self.root
            try:
                now_ns = time.time_ns()
                # A folder changed in the last seconds is read again even if its time has not
                # moved: a file made in the same clock tick as the last read leaves it as it was.
                moved = os.stat(path).st_mtime_ns != mtime or now_ns - mtime < RECENT_NS
            except OSError:
                self._folders.pop(rel, None)  # removed (or unreachable for now: read again when back)
                continue
            if moved and rel in self._folders:
                found.extend(self._read(rel))
        return found


# -- which files ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Filters:
    """The worker's choice of files, applied to one changed path (as ``list_files`` would)."""

    extensions: Sequence[str] = ()
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    subdirs: bool = True

    def keeps(self, relpath: str) -> bool:
        parts = relpath.split("/")
        if any(part.startswith(".") for part in parts):  # hidden, or a temporary name of oeleo's
            return False
        if len(parts) > 1 and not self.subdirs:
            return False
        if self.exclude and any(matches("/".join(parts[: i + 1]), self.exclude) for i in range(len(parts))):
            return False
        if not has_extension(parts[-1], self.extensions):
            return False
        return not (self.include and not matches(relpath, self.include))


class Pending:
    """The changed files not copied yet, each with the size and time it was last seen with.

    ``ready(now)`` gives the ones whose last change is ``stable`` seconds old (by their
    modification time, which is what ``OELEO_MIN_AGE`` means for a run too) and still
    what was seen; a file that changed again waits again."""

    def __init__(self, root: str, stable: float, follow_links: bool = False) -> None:
        self.root = root
        self.stable = stable
        self.follow_links = follow_links
        self._files: Dict[str, Tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._files)

    def __contains__(self, relpath: object) -> bool:
        return relpath in self._files

    def _stat(self, relpath: str) -> Optional[FileEntry]:
        path = os.path.join(self.root, *relpath.split("/"))
        try:
            st = os.stat(path) if self.follow_links else os.lstat(path)
        except OSError:
            return None
        if not stat_module.S_ISREG(st.st_mode):
            return None  # gone, a folder, or a link that is not followed (a full pass reports it)
        return FileEntry(relpath, st.st_size, st.st_mtime_ns)

    def touch(self, relpath: str) -> None:
        entry = self._stat(relpath)
        if entry is None:
            self._files.pop(relpath, None)
        else:
            self._files[relpath] = (entry.size, entry.mtime_ns)

    def discard(self, relpaths: Iterable[str]) -> None:
        for relpath in relpaths:
            self._files.pop(relpath, None)

    def clear(self) -> None:
        self._files.clear()

    def ready(self, now_ns: int) -> List[FileEntry]:
        """The files stable now, taken out; a file that is gone is forgotten."""
        limit = now_ns - int(self.stable * 1e9)
        found: List[FileEntry] = []
        for relpath, (_, mtime_ns) in list(self._files.items()):
            if mtime_ns > limit:
                continue
            entry = self._stat(relpath)
            if entry is None:
                del self._files[relpath]
            elif entry.mtime_ns <= limit:
                found.append(entry)
                del self._files[relpath]
            else:
                self._files[relpath] = (entry.size, entry.mtime_ns)  # written again meanwhile
        return sorted(found)

    def becoming_ready(self, now: float, within: float) -> bool:
        """Whether a file that is not stable at ``now`` (s) will be within ``within`` seconds."""
        limit = now - self.stable
        return any(limit < mtime_ns / 1e9 <= limit + within for _, mtime_ns in self._files.values())

    def next_ready(self) -> Optional[float]:
        """The wall-clock time (s) at which the first file becomes stable, if one is waiting."""
        if not self._files:
            return None
        return min(mtime_ns for _, mtime_ns in self._files.values()) / 1e9 + self.stable


class _Events:
    """watchdog's handler: notes the changed paths (observer thread) for the loop to take."""

    def __init__(self, root: str, wake: threading.Event) -> None:
        self.root = root
        self.wake = wake
        self.lock = threading.Lock()
        self.files: Set[str] = set()
        self.folders: Set[str] = set()

    def _relative(self, path: Any) -> Optional[str]:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        rel = os.path.relpath(path, self.root)
        if rel == "." or rel.startswith(".." + os.sep) or rel == "..":
            return None
        return Path(rel).as_posix()

    def dispatch(self, event: Any) -> None:
        kind = event.event_type
        if kind not in ("created", "modified", "moved", "closed", "attrib"):
            return  # deleted, opened, closed_no_write: nothing to copy
        path = event.dest_path if kind == "moved" else event.src_path
        rel = self._relative(path)
        if rel is None:
            return
        with self.lock:
            if event.is_directory:
                if kind != "modified":  # a folder made or moved in: the files it brings
                    self.folders.add(rel)
            else:
                self.files.add(rel)
        self.wake.set()

    def take(self) -> Tuple[Set[str], Set[str]]:
        with self.lock:
            files, self.files = self.files, set()
            folders, self.folders = self.folders, set()
        return files, folders


# -- the scheduler -------------------------------------------------------------------------
class WatchScheduler(SchedulerBase):
    """Copy new and changed files of the worker's source folder soon after they are stable.

    >>> WatchScheduler(worker, full_pass_every=600).start()   # until Ctrl-C, SIGTERM, SIGHUP

    ``poll``: ``"yes"``, ``"no"`` or ``"auto"`` (``OELEO_WATCH_POLL``). ``min_age``: seconds a
    file must be unchanged (``OELEO_MIN_AGE``; at least ``MIN_STABLE``), the worker's own by
    default. ``max_run_intervals`` (0 or ``None``: no limit): stop after that many passes, each
    pass counting, full or over changed files. ``until`` (an ISO date and time, ``HH:MM``, a
    ``datetime`` or seconds since the epoch): no pass starts after it, and the watching stops
    then (a pass running then finishes first). Needs the ``watch`` extra (watchdog).
    """

    name = "watch"

    def __init__(
        self,
        worker: PassWorker,
        full_pass_every: float = 600.0,
        poll: str = "auto",
        min_age: Optional[float] = None,
        filters: Optional[Filters] = None,
        max_run_intervals: Optional[int] = None,
        until: Union[str, float, datetime.datetime, None] = None,
    ) -> None:
        super().__init__(worker)
        if full_pass_every <= 0:
            raise ConfigError(f"full_pass_every={full_pass_every}: expected a positive number of seconds")
        if max_run_intervals is not None and max_run_intervals < 0:
            raise ConfigError(f"max_run_intervals={max_run_intervals}: expected 0 (no limit) or more")
        self.max_run_intervals = max_run_intervals or None
        self.until = _until(until)
        self._ended = False  # max_run_intervals or until reached: no pass starts any more
        if poll not in ("yes", "no", "auto"):
            raise ConfigError(f"OELEO_WATCH_POLL={poll!r}: expected yes, no or auto")
        self.full_pass_every = float(full_pass_every)
        self.poll = poll
        age = getattr(worker, "min_age", 0.0) if min_age is None else min_age
        self.stable = max(float(age or 0.0), MIN_STABLE)
        if hasattr(worker, "min_age"):
            worker.min_age = self.stable  # the full passes leave a file being written, too
        self.filters = filters if filters is not None else _filters_of(worker)
        local = getattr(worker, "local_connector", None)
        if local is None:
            raise ConfigError("a WatchScheduler needs a worker with a local_connector (its source folder)")
        self.root = os.path.realpath(str(local.directory))
        self.pending = Pending(self.root, self.stable, bool(getattr(local, "follow_links", False)))
        self.polling = False
        self.interval: Optional[float] = None  # seconds between polls of every file, when polling
        self.folders: Optional[FolderTimes] = None  # the quick look at every folder, when polling
        self.folder_interval = POLL_MIN_INTERVAL
        self.observer: Any = None
        self._wake = threading.Event()
        self._events = _Events(self.root, self._wake)
        self.ignored = _books_files(worker, self.root)
        self._entries: Optional[List[FileEntry]] = None  # the files of the pass that runs now
        self._next_full = 0.0  # when the next full pass is due (time.monotonic())

    @classmethod
    def from_settings(cls, worker: PassWorker, settings: Settings, **options: Any) -> WatchScheduler:
        """``oeleo watch`` and ``OELEO_SCHEDULER=watch``: ``OELEO_FULL_PASS_EVERY``,
        ``OELEO_WATCH_POLL``, ``OELEO_MAX_RUNS`` and ``OELEO_MIN_AGE`` (``until`` comes as an option)."""
        values: Dict[str, Any] = {
            "full_pass_every": settings.full_pass_every,
            "poll": settings.watch_poll,
            "max_run_intervals": settings.max_runs or None,
        }
        values.update({k: v for k, v in options.items() if v is not None})
        return cls(worker, **values)

    def stop(self) -> None:
        super().stop()
        self._wake.set()

    # -- the observer -----------------------------------------------------------------------
    def _start_observer(self) -> None:
        try:
            from watchdog.observers import Observer
            from watchdog.observers.polling import PollingObserver
        except ImportError:
            raise ConfigError(
                "oeleo watch needs watchdog: pip install 'oeleo[watch]' (or pip install watchdog)"
            ) from None
        self.polling = choose_polling(self.poll, self.root)
        handler: Any = self._events  # what watchdog calls is dispatch(event), nothing else
        if not self.polling:
            try:
                observer = Observer()
                observer.schedule(handler, self.root, recursive=self.filters.subdirs)
                observer.start()
                self.observer = observer
                return
            except OSError as exc:  # inotify's watch or instance limit, for one
                log.warning(
                    "the system's change events cannot watch %s (%s): polling instead", self.root, exc
                )
                self.polling = True
        self.interval = poll_interval(self._snapshot_seconds())
        self.folders = FolderTimes(self.root, self.filters.subdirs)
        started = time.perf_counter()
        self.folders.changed()
        self.folder_interval = poll_interval(time.perf_counter() - started, FOLDER_CPU_SHARE)
        observer = PollingObserver(timeout=self.interval)
        observer.schedule(handler, self.root, recursive=self.filters.subdirs)
        observer.start()
        self.observer = observer

    def _snapshot_seconds(self) -> float:
        """How long one poll of the whole tree takes: a look at every file, and its
        comparison with the look before (which takes about as long again)."""
        from watchdog.utils.dirsnapshot import DirectorySnapshot, DirectorySnapshotDiff

        try:
            before = DirectorySnapshot(self.root, recursive=self.filters.subdirs)
            started = time.perf_counter()
            DirectorySnapshotDiff(before, DirectorySnapshot(self.root, recursive=self.filters.subdirs))
        except OSError:
            return 0.0  # the pass says what is wrong with the folder
        return time.perf_counter() - started

    def _revive_observer(self) -> None:
        """An observer whose folder went away (a share that dropped, a folder removed and made
        again) stops watching for good: start a new one once the folder is back."""
        observer = self.observer
        if observer is None or (observer.emitters and all(e.is_alive() for e in observer.emitters)):
            return
        if not os.path.isdir(self.root):
            return
        log.warning("watching %s again (its observer had stopped: the folder went away meanwhile)", self.root)
        self._stop_observer()
        self.folders = None
        self._start_observer()

    def _stop_observer(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=10)
            self.observer = None

    def describe(self) -> str:
        """As the heartbeat (and ``oeleo status``) shows it: ``watch, events, full pass every 600 s``."""
        how = f"polling every {self.interval:.0f} s" if self.polling else "events"
        return f"watch, {how}, full pass every {self.full_pass_every:g} s"

    def _polling(self) -> str:
        return (
            f"polling (new files: every {self.folder_interval:.0f} s, changes to every file: "
            f"every {self.interval:.0f} s)"
        )

    def _watching(self) -> str:
        how = self._polling() if self.polling else "with the system's change events"
        limits = ""
        if self.max_run_intervals:
            n = self.max_run_intervals
            limits += f"; stopping after {n} pass{'' if n == 1 else 'es'}"
        if self.until is not None:
            limits += f"; no pass starts after {describe_instant(self.until)}"
        return (
            f"watching {self.root} {how}: a file is copied {self.stable:g} s after its last change; "
            f"a full pass every {self.full_pass_every:g} s{limits}"
        )

    def _done(self, now: Optional[float] = None) -> bool:
        """Whether no pass may start any more at ``now`` (default: now): ``max_run_intervals``
        passes done, or ``until`` past (said once, as ``SimpleScheduler`` says it)."""
        if self._ended:
            return True
        if self.max_run_intervals and self.runs >= self.max_run_intervals:
            log.info("max runs reached (%d): stopping", self.runs)
        elif self.until is not None and (time.time() if now is None else now) >= self.until:
            log.info("no run starts after %s: stopping", describe_instant(self.until))
        else:
            return False
        self._ended = True
        return True

    # -- the loop -----------------------------------------------------------------------------
    def start(self) -> Optional[RunSummary]:
        """Watch until a stop is asked for (``stop()``, Ctrl-C, SIGTERM, SIGHUP), or until
        ``max_run_intervals`` passes are done or ``until`` has come."""
        self._install_signal_handlers()
        try:
            check = getattr(getattr(self.worker, "local_connector", None), "check_source", None)
            if check is not None:
                check()  # a folder that is not there is one line (status 2), not an observer's error
            self._start_observer()  # before the first pass: nothing written during it is missed
            log.info(self._watching())
            self._next_full = next_full = time.monotonic()
            next_look = time.monotonic() + self.folder_interval
            first_ready: Optional[float] = None
            while not self.stopping and not self._done():
                self._take_events()
                if self.folders is not None and time.monotonic() >= next_look:
                    self._take(self.folders.changed())
                    next_look = time.monotonic() + self.folder_interval
                if time.monotonic() >= next_full:
                    self._revive_observer()
                    # The stable ones are the full pass's; the others wait (it leaves them as too young).
                    self.pending.ready(time.time_ns())
                    began = time.monotonic()
                    self._next_full = began + self.full_pass_every
                    self.last_summary = None
                    self._one_pass(None)
                    next_full = time.monotonic() + self.full_pass_every
                    if self.last_summary is not None and self.last_summary.too_young:
                        # Files written just before the watching began have sent no event: a
                        # full pass again once they are stable (not sooner than ten of this one).
                        spent = time.monotonic() - began
                        next_full = min(next_full, time.monotonic() + max(self.stable, 10 * spent) + 0.05)
                    self._next_full = next_full
                    first_ready = None
                    continue
                ready_at = self.pending.next_ready()
                wait = next_full - time.monotonic()
                if self.folders is not None:
                    wait = min(wait, next_look - time.monotonic())
                now = time.time()
                if ready_at is not None and ready_at <= now:
                    if first_ready is None:
                        first_ready = time.monotonic()
                    # Files about to be stable too go in the same pass (a burst), within BATCH_WAIT.
                    soon = self.pending.becoming_ready(now, BATCH_WAIT)
                    if not soon or time.monotonic() - first_ready >= BATCH_WAIT:
                        entries = self.pending.ready(time.time_ns())
                        first_ready = None
                        if entries:
                            self._one_pass(entries)
                        continue
                    wait = min(wait, 0.05)
                elif ready_at is not None:
                    wait = min(wait, ready_at - now + 0.01)
                if self.until is not None:  # by the wall clock, in pieces: a clock set meanwhile counts
                    wait = min(wait, self.until - time.time(), 30.0)
                self._wake.wait(max(0.0, wait))
                self._wake.clear()
        finally:
            self._stop_observer()
            self._restore_signal_handlers()
            self.finish()
        return self.last_summary

    def _take_events(self) -> None:
        files, folders = self._events.take()
        for folder in folders:
            files.update(self._files_under(folder))
        self._take(files)

    def _take(self, relpaths: Iterable[str]) -> None:
        for relpath in relpaths:
            if self.filters.keeps(relpath) and relpath not in self.ignored:
                self.pending.touch(relpath)

    def _files_under(self, folder: str) -> List[str]:
        """The files of a folder that was made or moved in (its own events may never come)."""
        found: List[str] = []
        if not self.filters.subdirs:
            return found
        top = os.path.join(self.root, *folder.split("/"))
        for dirpath, _, names in os.walk(top):
            rel = Path(os.path.relpath(dirpath, self.root)).as_posix()
            found.extend(f"{rel}/{name}" for name in names)
        return found

    def _one_pass(self, entries: Optional[List[FileEntry]]) -> None:
        """One pass (``SchedulerBase.run_one_pass``: errors logged, the heartbeat, a reconnect
        after a failed pass): over ``entries`` only, or, with ``None``, over the whole folder.
        The files of a pass that failed as a whole wait for the next full pass (not tried at
        once: a destination that is down would be asked again and again). None starts once
        ``max_run_intervals`` passes are done or ``until`` has come."""
        now = time.time()  # held against "until", and the start the pass records
        if self._done(now):
            return
        self._entries = entries
        try:
            self.run_one_pass(now)
        finally:
            self._entries = None

    def choose_files(self) -> None:
        if self._entries is None:
            super().choose_files()
        else:
            self.worker.add_entries(self._entries)  # type: ignore[attr-defined]

    def next_pass_after(self, ended: float) -> Optional[float]:
        """The next full pass (a changed file may start one sooner); None after the last one."""
        if self.max_run_intervals and self.runs >= self.max_run_intervals:
            return None
        due = ended + max(0.0, self._next_full - time.monotonic())
        return None if self.until is not None and due > self.until else due


def _books_files(worker: Any, root: str) -> Set[str]:
    """The books' own files when they lie in the watched folder: every pass writes them,
    and their events must not start the next pass."""
    path = getattr(getattr(worker, "bookkeeper", None), "path", None)
    if path is None:
        return set()
    rel = os.path.relpath(os.path.realpath(str(path)), root)
    if rel.startswith(".."):
        return set()
    name = Path(rel).as_posix()
    return {name} | {name + suffix for suffix in ("-journal", "-wal", "-shm", ".lock")}


def _filters_of(worker: Any) -> Filters:
    return Filters(
        extensions=tuple(getattr(worker, "extensions", None) or ()),
        include=tuple(getattr(worker, "include", None) or ()),
        exclude=tuple(getattr(worker, "exclude", None) or ()),
        subdirs=bool(getattr(worker, "subdirs", True)),
    )
