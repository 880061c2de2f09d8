"""A folder on this computer: the instrument's folder, a second disk or a mounted share."""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat as stat_module
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from oeleo import compat
from oeleo.checkers import hash_file
from oeleo.connectors.base import (
    TEMP_SUFFIX,
    Features,
    FileEntry,
    FolderConnector,
    FolderUpload,
    PutResult,
    SkipCallback,
    Skipped,
    Stored,
    Upload,
    has_extension,
    matches,
    safe_relpath,
)
from oeleo.errors import (
    ConfigError,
    ConnectorError,
    DestinationUnreachable,
    UnsafePathError,
    VerificationError,
)
from oeleo.names import printable

log = logging.getLogger("oeleo")

_HIDDEN = getattr(stat_module, "FILE_ATTRIBUTE_HIDDEN", 2)


WRITEBACK_EVERY = 8 * 1024 * 1024  # a large copy's bytes start for the disk every 8 MiB
_SYNC_FILE_RANGE_WRITE = 2  # from <fcntl.h>: start writing the range back, do not wait


@functools.cache
def _libc(name: str) -> Any:
    """A function of the C library on Linux (``syncfs``, ``sync_file_range``), looked up
    once; False where there is none (other systems, old C libraries)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return False
    function.argtypes = {
        "syncfs": [ctypes.c_int],
        "sync_file_range": [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint],
    }[name]
    return function


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing these bytes to the disk now, without waiting (Linux
    ``sync_file_range``, as PostgreSQL does for its checkpoints): the fsync that makes the
    copy durable then waits for the last few megabytes, not for the whole file."""
    sync_file_range = _libc("sync_file_range")
    if sync_file_range:
        sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # only a hint: result unused


def _syncfs(folders: Iterable[str]) -> bool:
    """Flush every written file of the filesystems holding ``folders`` (Linux ``syncfs``,
    once per filesystem: a subfolder may be another disk mounted there).

    Returns False where the call does not exist (other systems, old C libraries) or fails;
    the caller then syncs file by file.
    """
    syncfs = _libc("syncfs")
    if not syncfs:
        return False
    one_per_device = {os.stat(folder).st_dev: folder for folder in folders}
    for folder in one_per_device.values():
        fd = os.open(folder, os.O_RDONLY)
        try:
            if syncfs(fd) != 0:
                return False
        finally:
            os.close(fd)
    return True


def _read_at(fd: int, offset: int, length: int) -> bytes:
    """``length`` bytes of an open file from ``offset`` (fewer at its end); the position is
    then ``offset + length`` where there is no ``pread`` (Windows): where the next write goes."""
    pread = getattr(os, "pread", None)
    if pread is not None:
        return pread(fd, length, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, length)


def _first_difference(name: str, offset: int, sent: bytes, back: bytes) -> str:
    if len(back) != len(sent):
        return f"{name}: the copy holds {offset + len(back)} bytes where {offset + len(sent)} were written"
    at = next(i for i, (a, b) in enumerate(zip(bytes(sent), back)) if a != b)
    return f"{name}: the copy differs from the source at byte {offset + at}"


class _LocalUpload(FolderUpload):
    """A folder upload whose every chunk is read back and compared as it is written
    (``Features.compares_writes``): no hash of the copy is needed to verify it."""

    compared = False

    def send(self, chunks: Iterable[bytes]) -> None:
        connector: LocalConnector = self.connector  # type: ignore[assignment]
        writing = connector._writing
        writing.name, writing.done = self.relpath, None  # the name a difference is said under
        try:
            super().send(chunks)
        finally:
            done, writing.name, writing.done = writing.done, "", None
        self.compared = done == self.staging

    def finish(self, algorithm: Optional[str] = None) -> Stored:
        stored = super().finish(algorithm)
        return Stored(stored.size, stored.hashes, self.compared)


_HOW = " (OELEO_FOLLOW_LINKS=true copies what links point to)"


def _ignore(skipped: Skipped) -> None:
    """What ``list_files`` does with a skipped entry when nobody asked."""


def _identity(st: os.stat_result) -> Tuple[int, int]:
    return (st.st_dev, st.st_ino)


def _wanted(
    relpath: str,
    name: str,
    extensions: Sequence[str],
    include: Sequence[str],
    exclude: Sequence[str],
    names_only: bool = True,
) -> bool:
    """Whether the filters keep this name (a folder: only ``exclude`` applies)."""
    if names_only:
        if not has_extension(name, extensions):
            return False
        if include and not matches(relpath, include):
            return False
    return not (exclude and matches(relpath.rstrip("/"), exclude))


def _is_hidden(entry: os.DirEntry) -> bool:
    if entry.name.startswith("."):
        return True
    if sys.platform == "win32":
        try:
            return bool(entry.stat(follow_symlinks=False).st_file_attributes & _HIDDEN)
        except OSError:
            return False
    return False


class LocalConnector(FolderConnector):
    """Files in a local folder. Used on both sides: as the source and as a destination.

    ``LocalConnector(directory="C:/data/raw")``. ``include_subdirs`` is kept for scripts
    written for oeleo 0.7 (its ``base_filter_sub_method``); the worker decides recursion.
    """

    name = "local"
    # A copy on this computer is read back and compared byte for byte as it is written (a
    # subclass writing its own way is read back and hashed with the books' algorithm); a
    # temporary name renamed into place, made durable per batch (syncfs); two files at a time
    # where it pays.
    features = Features(
        compares_writes=True, keeps_mtime=True, batch_sync=True, max_uploads=2, confirms_commit=True
    )
    # Each batch costs two syncfs (its data, then its renames), each a journal commit of the
    # whole filesystem: for 5,000 files of 8 KiB, batches of 4,096 rather than 256 took 13 %
    # less time (benchmarks/run.py, small/initial, 5 runs each in one sitting). A batch still
    # ends after 1 s or 64 MiB, so a crash loses no more than that to a copy again.
    commit_files = 4096

    def __init__(
        self,
        directory: Union[str, os.PathLike, None] = None,
        include_subdirs: bool = False,
        follow_links: bool = False,
        **kwargs: Any,
    ) -> None:
        directory = compat.local_folder(directory)  # 0.7: LocalConnector() reads OELEO_BASE_DIR_FROM
        if directory is None or str(directory).strip() == "":
            raise ConfigError("LocalConnector needs a folder (directory=..., or OELEO_BASE_DIR_FROM)")
        self.directory = Path(directory).expanduser()
        self._base_seen = False  # made or found by prepare(), or made by a first write
        self.include_subdirs = include_subdirs
        self.follow_links = follow_links
        self._root = str(self.directory)
        self._folders: Dict[str, str] = {}  # checked folders: relative -> absolute, with a separator
        self._paths: Dict[str, str] = {}
        self._writing = threading.local()  # per copying thread: the upload being written

    def __str__(self) -> str:
        return str(self.directory)

    # -- life cycle -------------------------------------------------------------------
    def connect(self, **kwargs: Any) -> None:
        """Nothing to open; forgets which folders were checked to be inside the base."""
        self._root = str(self.directory)
        self._folders.clear()
        self._paths.clear()

    def check_source(self) -> None:
        where = "(OELEO_BASE_DIR_FROM, --from)"
        if not self.directory.is_dir():
            raise ConfigError(f"source folder {self.directory} does not exist or is not a folder {where}")
        if not os.access(self.directory, os.R_OK | os.X_OK):
            raise ConfigError(f"source folder {self.directory} is not readable {where}")

    def check_base(self) -> bool:
        try:
            with os.scandir(self.directory) as it:
                next(it, None)
        except FileNotFoundError:
            return False
        except OSError as exc:
            reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
            raise ConfigError(f"destination folder {self.directory} cannot be listed: {reason}") from None
        return True

    def prepare(self) -> None:
        where = "(OELEO_BASE_DIR_TO, --to)"
        if self.directory.exists() and not self.directory.is_dir():
            raise ConfigError(f"destination {self.directory} is a file, not a folder {where}")
        if self._base_seen and not os.path.lexists(self.directory):
            # It was there for an earlier pass of this process (a scheduler's): gone now, a
            # share unmounted, it is not made again on the local disk; the next pass tries.
            raise DestinationUnreachable(
                f"the destination folder {self.directory} does not exist any more (a share "
                f"unmounted?): not made again {where}"
            )
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._base_seen = True  # from now on, a base folder gone is not made again
        except OSError as exc:
            raise ConfigError(
                f"destination folder {self.directory} cannot be created: {exc.strerror} {where}"
            ) from None
        if not self.directory.is_dir():
            raise ConfigError(f"destination {self.directory} is not a folder {where}")
        # Write a probe: os.access says yes to root (and to any user on a Windows share)
        # where writing will still fail.
        try:
            fd, probe = tempfile.mkstemp(prefix=".oeleo-write-test-", dir=self.directory)
            os.close(fd)
            os.remove(probe)
        except OSError as exc:
            raise ConfigError(
                f"destination folder {self.directory} is not writable: {exc.strerror} {where}"
            ) from None

    # -- names ------------------------------------------------------------------------
    def path(self, relpath: str) -> Path:
        """The local path of a relative name; never outside the folder, even via a symlink."""
        return Path(self._fs_path(relpath))

    def _fs_path(self, relpath: str) -> str:
        """``path()`` as a string: a copy asks for the same few paths many times, and
        building a ``Path`` each time costs more than the system calls that use it."""
        known = self._paths.get(relpath)
        if known is not None:
            return known
        safe = safe_relpath(relpath)
        folder, _, name = safe.rpartition("/")
        prefix = self._folders.get(folder)
        if prefix is None:
            parent = os.path.join(self._root, *folder.split("/")) if folder else self._root
            base = os.path.realpath(self._root)
            real_parent = os.path.realpath(parent)
            inside = real_parent == base or real_parent.startswith(base.rstrip(os.sep) + os.sep)
            if not inside and not self.follow_links:  # a followed link may lead anywhere
                raise UnsafePathError(f"{safe!r} would resolve outside {self.directory}")
            if not os.path.isdir(parent):
                return os.path.join(parent, name)  # checked again once the folder exists
            # Resolving symlinks costs a system call per path part: once per folder is enough.
            prefix = os.path.join(parent, "")
            if len(self._folders) >= 4096:
                self._folders.clear()
            self._folders[folder] = prefix
        path = prefix + name
        if len(self._paths) >= 4096:
            self._paths.clear()
        self._paths[relpath] = path
        return path

    def external_name(self, relpath: str) -> str:
        """The copy's absolute path: the books name it so that it holds from any folder (a
        relative ``--to ../dst`` booked as typed would mean another place elsewhere)."""
        path = self._fs_path(relpath)
        return path if os.path.isabs(path) else os.path.abspath(path)

    # -- read side --------------------------------------------------------------------
    def list_files(
        self,
        extensions: Sequence[str] = (),
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        recursive: bool = True,
        on_skip: Optional[SkipCallback] = None,
    ) -> Iterator[FileEntry]:
        """Files under the folder, sorted by relative path, hidden files and folders skipped.

        Symbolic links are not followed unless ``follow_links`` (rclone's default, and its
        ``--copy-links``): each one that would have been copied is reported to ``on_skip``.
        Followed, a link is listed as what it points to, a linked folder is walked unless it
        is one of its own parents (a loop). A subfolder that cannot be read is reported as
        failed; the base folder that cannot be read raises ``ConfigError``.
        """
        report: SkipCallback = on_skip or _ignore
        wanted = functools.partial(_wanted, extensions=extensions, include=include, exclude=exclude)
        parents: FrozenSet[Tuple[int, int]] = frozenset()
        if self.follow_links:
            parents = frozenset([_identity(os.stat(self.directory))])
        stack: List[Tuple[Iterator[Tuple[str, os.DirEntry, bool]], FrozenSet[Tuple[int, int]]]] = [
            (iter(self._scan("", report)), parents)
        ]
        while stack:
            items, parents = stack[-1]
            item = next(items, None)
            if item is None:
                stack.pop()
                continue
            relpath, entry, is_dir = item
            if is_dir and not entry.is_symlink():
                if recursive and not (exclude and matches(relpath, exclude)):
                    inner = parents
                    if self.follow_links:
                        try:
                            inner = parents | {_identity(entry.stat())}
                        except OSError:
                            pass
                    stack.append((iter(self._scan(relpath, report)), inner))
                continue
            try:
                if entry.is_symlink():
                    found = self._follow(relpath, entry, recursive, wanted, parents, report)
                    if found is None:
                        continue
                    if isinstance(found, FileEntry):
                        yield found
                    else:
                        stack.append((iter(self._scan(relpath, report)), parents | {found}))
                    continue
                if extensions and not has_extension(entry.name, extensions):
                    continue
                if include and not matches(relpath, include):
                    continue
                if exclude and matches(relpath, exclude):
                    continue
                if not entry.is_file():
                    report(Skipped(relpath, "not a regular file (a device, a pipe or a socket)"))
                    continue
                st = entry.stat()
            except FileNotFoundError:
                continue  # vanished between listing and stat
            except OSError as exc:
                report(Skipped(relpath, f"cannot read it: {exc.strerror or exc}", failed=True))
                continue
            yield FileEntry(relpath, st.st_size, st.st_mtime_ns)

    def _follow(
        self,
        relpath: str,
        entry: os.DirEntry,
        recursive: bool,
        wanted: Callable[..., bool],
        parents: FrozenSet[Tuple[int, int]],
        report: SkipCallback,
    ) -> Union[FileEntry, Tuple[int, int], None]:
        """A symbolic link in the listing: the file it lists, the identity of the folder to
        walk, or None (reported to ``report`` when it would have been copied)."""
        try:
            st = os.stat(entry.path)
        except OSError as exc:
            if wanted(relpath, entry.name):
                what = "in a loop" if exc.errno == errno.ELOOP else "pointing to nothing"
                report(Skipped(relpath, f"a symbolic link {what} ({os.readlink(entry.path)})"))
            return None
        target = os.readlink(entry.path)
        if stat_module.S_ISDIR(st.st_mode):
            if not recursive or not wanted(relpath + "/", entry.name, names_only=False):
                return None
            if not self.follow_links:
                report(Skipped(relpath + "/", f"a symbolic link to the folder {target}, not followed{_HOW}"))
                return None
            if _identity(st) in parents:
                report(Skipped(relpath + "/", f"a symbolic link to {target}, a folder it is in (a loop)"))
                return None
            return _identity(st)
        if not wanted(relpath, entry.name):
            return None
        if not stat_module.S_ISREG(st.st_mode):
            report(Skipped(relpath, f"a symbolic link to {target}, not a regular file"))
            return None
        if not self.follow_links:
            report(Skipped(relpath, f"a symbolic link to {target}, not followed{_HOW}"))
            return None
        return FileEntry(relpath, st.st_size, st.st_mtime_ns)

    def _scan(
        self, prefix: str, report: Optional[SkipCallback] = None
    ) -> List[Tuple[str, os.DirEntry, bool]]:
        """One folder's visible entries as (relpath, entry, is_folder), in relpath order.

        A folder sorts as its name plus ``/``, so walking depth first yields every file in
        the order of its whole relative path (``a.csv``, ``a/x.csv``, ``b.csv``). A link to a
        folder sorts as a folder when links are followed.
        """
        folder = os.path.join(self.directory, *prefix.split("/")) if prefix else self.directory
        follow = self.follow_links
        try:
            with os.scandir(folder) as it:
                found = []
                for entry in it:
                    if _is_hidden(entry):
                        if not entry.name.endswith(TEMP_SUFFIX):  # a copy being written here
                            hidden = f"{prefix}/{entry.name}" if prefix else entry.name
                            log.debug("%s: hidden, never copied", printable(hidden))
                        continue
                    try:
                        is_dir = entry.is_dir(follow_symlinks=follow and entry.is_symlink())
                    except OSError:
                        is_dir = False  # decided, and reported, when the entry is looked at
                    relpath = f"{prefix}/{entry.name}" if prefix else entry.name
                    found.append((relpath + "/" if is_dir else relpath, relpath, entry, is_dir))
        except (FileNotFoundError, NotADirectoryError) as exc:
            if prefix:
                return []  # a subfolder removed while listing
            what = "is not a folder" if isinstance(exc, NotADirectoryError) else "does not exist"
            raise ConfigError(f"folder {self.directory} {what}") from None
        except OSError as exc:
            # Never "an empty folder": the base folder stops the run, a subfolder fails alone.
            reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
            if not prefix:
                raise ConfigError(f"folder {self.directory} cannot be listed: {reason}") from None
            if report is not None:
                report(Skipped(prefix + "/", f"cannot list this folder: {reason}", failed=True))
            return []
        found.sort(key=lambda item: item[0])
        return [(relpath, entry, is_dir) for _, relpath, entry, is_dir in found]

    def list_temporaries(self) -> Iterator[str]:
        """oeleo's temporary files (``.name.oeleo-part``) under the folder, at any depth."""
        for folder, _, names in os.walk(self.directory):  # links are not followed
            prefix = Path(os.path.relpath(folder, self.directory)).as_posix()
            for name in names:
                if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                    yield name if prefix == "." else f"{prefix}/{name}"

    def stat(self, relpath: str) -> Optional[FileEntry]:
        try:
            st = os.stat(self._fs_path(relpath))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat_module.S_ISREG(st.st_mode):
            return None
        return FileEntry(safe_relpath(relpath), st.st_size, st.st_mtime_ns)

    def checksum(self, relpath: str, algorithm: str = "md5") -> str:
        return hash_file(self._fs_path(relpath), algorithm)

    # -- write side -------------------------------------------------------------------
    def open_upload(self, relpath: str, size: int, mtime_ns: int) -> Upload:
        if type(self).write_stream is not LocalConnector.write_stream:
            return super().open_upload(relpath, size, mtime_ns)  # a subclass writes its own way
        return _LocalUpload(self, relpath, size, mtime_ns)

    def write_stream(self, relpath: str, chunks: Iterable[bytes], size: int) -> None:
        """Write ``chunks`` to a new file ``relpath``, reading each chunk back as soon as it
        is written and comparing it with what was handed over, byte for byte:
        ``VerificationError`` at the first difference."""
        path = self._fs_path(relpath)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(path, flags, 0o666)
        except FileNotFoundError:
            if self._base_seen and not os.path.isdir(self.directory):
                # Gone since the run began (a share unmounted, the folder removed): not made
                # again (a copy on the local disk under a mount point would be booked).
                raise ConnectorError(
                    f"the destination folder {self.directory} does not exist any more (a share "
                    "unmounted?): the run stops; it is not made again"
                ) from None
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                self._base_seen = True
            except (FileExistsError, NotADirectoryError):
                raise self._file_in_the_way(path) from None
            self._paths.pop(relpath, None)  # its folder exists now: check it is inside the base
            path = self._fs_path(relpath)
            fd = os.open(path, flags, 0o666)
        except NotADirectoryError:
            raise self._file_in_the_way(path) from None
        except FileExistsError:
            # A stale file (or a symlink someone left) under this name is replaced, never
            # followed: O_EXCL refuses to open through a symlink.
            os.remove(path)
            fd = os.open(path, flags, 0o666)
        written = flushed = 0
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                # The page the kernel now holds, read back through the same descriptor (a
                # memcmp: a fraction of a CRC-32's time, and exact).
                back = _read_at(fd, written, len(chunk))
                if back != chunk:
                    name = getattr(self._writing, "name", "") or relpath
                    raise VerificationError(_first_difference(name, written, chunk, back))
                written += len(chunk)
                if written - flushed >= WRITEBACK_EVERY:
                    _start_writeback(fd, flushed, written - flushed)
                    flushed = written
        finally:
            os.close(fd)
        self._writing.done = relpath  # every byte compared: what the upload reports
        # Durability comes later, for a whole batch at once: sync_data() then sync_names().

    def _file_in_the_way(self, path: str) -> OSError:
        """The error for a file standing where a folder of ``path`` must be, named by that
        file (not by the temporary name that could not be made under it)."""
        folder = os.path.dirname(path)
        while folder and os.path.dirname(folder) != folder and not os.path.isfile(folder):
            folder = os.path.dirname(folder)
        if not os.path.isfile(folder):  # gone meanwhile: the folder the copy was to go in
            folder = os.path.dirname(path)
        return NotADirectoryError(errno.ENOTDIR, "a file is in the way of a folder", folder)

    def sync_data(self, staged: Sequence[PutResult]) -> None:
        """Make the staged files durable. On Linux one ``syncfs`` for the whole batch: one
        journal commit, where an fsync per file commits the journal once per file. Elsewhere
        (and for a single file) an fsync per file."""
        paths = [self._fs_path(item.staging or item.relpath) for item in staged]
        if len(paths) > 1 and _syncfs({os.path.dirname(path) for path in paths}):
            return
        flags = os.O_RDWR if os.name == "nt" else os.O_RDONLY  # Windows needs write access
        for path in paths:
            fd = os.open(path, flags | getattr(os, "O_BINARY", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def sync_names(self, committed: Sequence[PutResult]) -> None:
        """fsync the folders whose entries changed, so the renames survive a power cut."""
        if os.name == "nt":
            return  # NTFS journals renames itself; folders cannot be opened for fsync
        folders = sorted({os.path.dirname(self._fs_path(item.relpath)) for item in committed})
        if len(folders) > 1 and _syncfs(folders):
            return
        for folder in folders:
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def rename(self, src_relpath: str, dst_relpath: str) -> None:
        os.replace(self._fs_path(src_relpath), self._fs_path(dst_relpath))

    def remove(self, relpath: str) -> None:
        try:
            os.remove(self._fs_path(relpath))
        except FileNotFoundError:
            pass

    def set_mtime(self, relpath: str, mtime_ns: int) -> None:
        # The access time is "now", as a fresh copy's is: no stat needed to keep it.
        os.utime(self._fs_path(relpath), ns=(time.time_ns(), mtime_ns))

    # -- oeleo 0.7 names --------------------------------------------------------------
    def calculate_checksum(self, f: Path, hide: bool = True) -> str:
        return hash_file(Path(f))
