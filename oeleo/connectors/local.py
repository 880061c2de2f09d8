"""A folder on this computer: the instrument's folder, a second disk or a mounted share."""

from __future__ import annotations

import os
import stat as stat_module
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union

from oeleo.checkers import hash_file
from oeleo.connectors.base import Connector, FileEntry, PutResult, has_extension, matches, safe_relpath
from oeleo.errors import ConfigError, UnsafePathError

_HIDDEN = getattr(stat_module, "FILE_ATTRIBUTE_HIDDEN", 2)


def _is_hidden(entry: os.DirEntry) -> bool:
    if entry.name.startswith("."):
        return True
    if os.name == "nt":
        try:
            return bool(entry.stat(follow_symlinks=False).st_file_attributes & _HIDDEN)
        except OSError:
            return False
    return False


class LocalConnector(Connector):
    """Files in a local folder. Used on both sides: as the source and as a destination.

    ``LocalConnector(directory="C:/data/raw")``. ``include_subdirs`` is kept for scripts
    written for oeleo 0.7 (its ``base_filter_sub_method``); the worker decides recursion.
    """

    name = "local"

    def __init__(
        self,
        directory: Union[str, os.PathLike, None] = None,
        include_subdirs: bool = False,
        **kwargs: Any,
    ) -> None:
        if directory is None:
            directory = os.environ.get("OELEO_BASE_DIR_FROM")
        if directory is None or str(directory).strip() == "":
            raise ConfigError("LocalConnector needs a folder (directory=..., or OELEO_BASE_DIR_FROM)")
        self.directory = Path(directory).expanduser()
        self.include_subdirs = include_subdirs
        self._safe_folders: Set[Path] = set()
        self._paths: Dict[str, Path] = {}

    def __str__(self) -> str:
        return str(self.directory)

    # -- life cycle -------------------------------------------------------------------
    def connect(self, **kwargs: Any) -> None:
        """Nothing to open; forgets which folders were checked to be inside the base."""
        self._safe_folders.clear()
        self._paths.clear()

    def check_source(self) -> None:
        if not self.directory.is_dir():
            raise ConfigError(f"source folder {self.directory} does not exist or is not a folder")
        if not os.access(self.directory, os.R_OK | os.X_OK):
            raise ConfigError(f"source folder {self.directory} is not readable")

    def prepare(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"destination folder {self.directory} cannot be created: {exc.strerror}"
            ) from None
        if not self.directory.is_dir():
            raise ConfigError(f"destination {self.directory} is not a folder")
        # Write a probe: os.access says yes to root (and to any user on a Windows share)
        # where writing will still fail.
        try:
            fd, probe = tempfile.mkstemp(prefix=".oeleo-write-test-", dir=self.directory)
            os.close(fd)
            os.remove(probe)
        except OSError as exc:
            raise ConfigError(
                f"destination folder {self.directory} is not writable: {exc.strerror}"
            ) from None

    # -- names ------------------------------------------------------------------------
    def path(self, relpath: str) -> Path:
        """The local path of a relative name; never outside the folder, even via a symlink."""
        known = self._paths.get(relpath)
        if known is not None:
            return known  # a copy asks for the same few paths many times
        safe = safe_relpath(relpath)
        path = self.directory.joinpath(*safe.split("/"))
        parent = path.parent
        if parent not in self._safe_folders:
            base = os.path.realpath(self.directory)
            real_parent = os.path.realpath(parent)
            if real_parent != base and not real_parent.startswith(base.rstrip(os.sep) + os.sep):
                raise UnsafePathError(f"{safe!r} would resolve outside {self.directory}")
            if not os.path.isdir(parent):
                return path  # checked again once the folder exists
            # Resolving symlinks costs a system call per path part: once per folder is enough.
            self._safe_folders.add(parent)
        if len(self._paths) >= 4096:
            self._paths.clear()
        self._paths[relpath] = path
        return path

    def external_name(self, relpath: str) -> str:
        return str(self.path(relpath))

    # -- read side --------------------------------------------------------------------
    def list_files(
        self,
        extensions: Sequence[str] = (),
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        recursive: bool = True,
    ) -> Iterator[FileEntry]:
        """Files under the folder, sorted by relative path, hidden files and folders skipped."""
        stack: List[Iterator[Tuple[str, os.DirEntry, bool]]] = [iter(self._scan(""))]
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                continue
            relpath, entry, is_dir = item
            if is_dir:
                if recursive and not (exclude and matches(relpath, exclude)):
                    stack.append(iter(self._scan(relpath)))
                continue
            if not has_extension(entry.name, extensions):
                continue
            if include and not matches(relpath, include):
                continue
            if exclude and matches(relpath, exclude):
                continue
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except OSError:
                continue  # vanished between listing and stat
            yield FileEntry(relpath, st.st_size, st.st_mtime_ns)

    def _scan(self, prefix: str) -> List[Tuple[str, os.DirEntry, bool]]:
        """One folder's visible entries as (relpath, entry, is_folder), in relpath order.

        A folder sorts as its name plus ``/``, so walking depth first yields every file in
        the order of its whole relative path (``a.csv``, ``a/x.csv``, ``b.csv``).
        """
        folder = os.path.join(self.directory, *prefix.split("/")) if prefix else self.directory
        try:
            with os.scandir(folder) as it:
                found = []
                for entry in it:
                    if _is_hidden(entry):
                        continue
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        continue
                    relpath = f"{prefix}/{entry.name}" if prefix else entry.name
                    found.append((relpath + "/" if is_dir else relpath, relpath, entry, is_dir))
        except (FileNotFoundError, NotADirectoryError) as exc:
            if prefix:
                return []  # a subfolder removed while listing
            what = "is not a folder" if isinstance(exc, NotADirectoryError) else "does not exist"
            raise ConfigError(f"folder {self.directory} {what}") from None
        except PermissionError:
            if prefix:
                return []
            raise ConfigError(f"folder {self.directory} is not readable") from None
        found.sort(key=lambda item: item[0])
        return [(relpath, entry, is_dir) for _, relpath, entry, is_dir in found]

    def stat(self, relpath: str) -> Optional[FileEntry]:
        try:
            st = os.stat(self.path(relpath))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat_module.S_ISREG(st.st_mode):
            return None
        return FileEntry(safe_relpath(relpath), st.st_size, st.st_mtime_ns)

    def checksum(self, relpath: str, algorithm: str = "md5") -> str:
        return hash_file(self.path(relpath), algorithm)

    # -- write side -------------------------------------------------------------------
    def write_stream(self, relpath: str, chunks: Iterable[bytes], size: int) -> None:
        path = self.path(relpath)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A stale file (or a symlink someone left) under this name is replaced, never
        # followed: O_EXCL refuses to open through a symlink.
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with open(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        # Durability comes later, for a whole batch at once: sync_data() then sync_names().

    def sync_data(self, staged: Sequence[PutResult]) -> None:
        """fsync the staged files. ext4 and friends commit their journal once for the first
        file and find the others already clean, so a batch costs about one commit."""
        flags = os.O_RDWR if os.name == "nt" else os.O_RDONLY  # Windows needs write access
        for item in staged:
            fd = os.open(self.path(item.staging or item.relpath), flags | getattr(os, "O_BINARY", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def sync_names(self, committed: Sequence[PutResult]) -> None:
        """fsync the folders whose entries changed, so the renames survive a power cut."""
        if os.name == "nt":
            return  # NTFS journals renames itself; folders cannot be opened for fsync
        for folder in sorted({self.path(item.relpath).parent for item in committed}):
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def rename(self, src_relpath: str, dst_relpath: str) -> None:
        os.replace(self.path(src_relpath), self.path(dst_relpath))

    def remove(self, relpath: str) -> None:
        try:
            os.remove(self.path(relpath))
        except FileNotFoundError:
            pass

    def set_mtime(self, relpath: str, mtime_ns: int) -> None:
        path = self.path(relpath)
        atime_ns = os.stat(path).st_atime_ns
        os.utime(path, ns=(atime_ns, mtime_ns))

    # -- oeleo 0.7 names --------------------------------------------------------------
    def calculate_checksum(self, f: Path, hide: bool = True) -> str:
        return hash_file(Path(f))
