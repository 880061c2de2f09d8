"""A folder on this computer: the instrument's folder, a second disk or a mounted share."""

from __future__ import annotations

import os
import stat as stat_module
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Union

from oeleo.checkers import hash_file
from oeleo.connectors.base import Connector, FileEntry, has_extension, matches, safe_relpath
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

    def __str__(self) -> str:
        return str(self.directory)

    # -- life cycle -------------------------------------------------------------------
    def connect(self, **kwargs: Any) -> None:
        """Nothing to open; checks that the folder is there and readable."""

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
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise ConfigError(f"destination folder {self.directory} is not writable")

    # -- names ------------------------------------------------------------------------
    def path(self, relpath: str) -> Path:
        """The local path of a relative name; never outside the folder, even via a symlink."""
        relpath = safe_relpath(relpath)
        path = self.directory.joinpath(*relpath.split("/"))
        base = os.path.realpath(self.directory)
        real_parent = os.path.realpath(path.parent)
        if real_parent != base and not real_parent.startswith(base.rstrip(os.sep) + os.sep):
            raise UnsafePathError(f"{relpath!r} would resolve outside {self.directory}")
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
        """Files under the folder, sorted by name, hidden files and folders skipped."""
        stack: List[str] = [""]
        while stack:
            prefix = stack.pop()
            folder = os.path.join(self.directory, *prefix.split("/")) if prefix else self.directory
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except FileNotFoundError:
                if prefix:
                    continue  # a subfolder removed while listing
                raise ConfigError(f"folder {self.directory} does not exist") from None
            except PermissionError:
                if prefix:
                    continue
                raise ConfigError(f"folder {self.directory} is not readable") from None
            subfolders = []
            for entry in entries:
                if _is_hidden(entry):
                    continue
                relpath = f"{prefix}/{entry.name}" if prefix else entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if recursive and not (exclude and matches(relpath, exclude)):
                            subfolders.append(relpath)
                        continue
                    if not entry.is_file():
                        continue
                    if not has_extension(entry.name, extensions):
                        continue
                    if include and not matches(relpath, include):
                        continue
                    if exclude and matches(relpath, exclude):
                        continue
                    st = entry.stat()
                except OSError:
                    continue  # vanished between listing and stat
                yield FileEntry(relpath, st.st_size, st.st_mtime_ns)
            stack.extend(reversed(subfolders))

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
        with open(path, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())

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
