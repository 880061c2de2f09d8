"""A minimal folder-like connector (docs/connectors.md): files in a folder, written under a
temporary name and renamed into place; FolderConnector does the rest."""

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from oeleo.checkers import hash_file
from oeleo.connectors.base import TEMP_SUFFIX, FileEntry, FolderConnector, has_extension, safe_relpath


class PlainFolderConnector(FolderConnector):
    """``PlainFolderConnector(directory="/mnt/archive")``: a folder, with subfolders."""

    name = "plainfolder"

    def __init__(self, directory: Any) -> None:
        self.directory = Path(directory)

    def _path(self, relpath: str) -> Path:
        return self.directory / safe_relpath(relpath)

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def list_files(self, extensions=(), include=(), exclude=(), recursive=True) -> Iterator[FileEntry]:
        paths = sorted(self.directory.rglob("*") if recursive else self.directory.glob("*"))
        for path in (p for p in paths if p.is_file() and not p.name.endswith(TEMP_SUFFIX)):
            if has_extension(path.name, extensions):
                yield self.stat(path.relative_to(self.directory).as_posix())  # type: ignore[misc]

    def stat(self, relpath: str) -> Optional[FileEntry]:
        try:
            st = self._path(relpath).stat()
        except FileNotFoundError:
            return None
        return FileEntry(relpath, st.st_size, st.st_mtime_ns)

    def checksum(self, relpath: str, algorithm: str = "md5") -> str:
        return hash_file(self._path(relpath), algorithm)  # read back: this store computes none

    def write_stream(self, relpath: str, chunks: Iterable[bytes], size: int) -> None:
        path = self._path(relpath)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            for chunk in chunks:  # iterating is what hashes the source and reports progress
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())  # durable before rename(); or implement sync_data()

    def rename(self, src_relpath: str, dst_relpath: str) -> None:
        os.replace(self._path(src_relpath), self._path(dst_relpath))

    def remove(self, relpath: str) -> None:
        self._path(relpath).unlink(missing_ok=True)
