"""Two small custom connectors: how to add a store to oeleo (see docs/connectors.md).

- ``FlatFolderConnector`` fills in the whole contract of ``oeleo.connectors.Connector`` for a
  "drop folder" that takes no subfolders (as some LIMS import folders do):
  ``run-001/cycle_000.csv`` is stored as ``run-001__cycle_000.csv``. The base class does the
  rest: temporary name then rename, hashing while copying, verification, cleanup.
- ``HostFolderConnector`` subclasses ``LocalConnector`` and only overrides ``from_settings``:
  each PC writes into ``<OELEO_BASE_DIR_TO>/<host name>/``, so many instruments can share one
  destination folder without mixing their files.

From the command line, run from the repository root (the ``oeleo`` program imports modules
under the folder it runs in; books of their own for this destination, ``--db``):

    oeleo run --from examples/data/instrument --to drop --db drop.db \\
        --connector examples.my_connector:FlatFolderConnector

From Python: ``python examples/my_connector.py FROM TO [DB]`` (see ``main`` below).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Sequence

from oeleo.checkers import hash_file
from oeleo.connectors import FileEntry, LocalConnector, PutResult
from oeleo.connectors.base import TEMP_SUFFIX, FolderConnector, has_extension, matches, safe_relpath
from oeleo.errors import ConfigError, TransferError


class FlatFolderConnector(FolderConnector):
    """A destination folder without subfolders; ``a/b.csv`` is stored as ``a__b.csv``."""

    name = "flatfolder"
    # FolderConnector: a temporary name, then rename() (os.replace is atomic). The store
    # computes no hash itself (features.hashes is empty): checksum() reads the file back.

    separator = "__"

    def __init__(self, directory: Any = None) -> None:
        if directory is None or str(directory).strip() == "":
            raise ConfigError("FlatFolderConnector needs a folder (OELEO_BASE_DIR_TO or --to)")
        self.directory = Path(directory).expanduser()

    # from_settings is inherited: cls(directory=settings.base_dir_to) is all this one needs.

    def _path(self, relpath: str) -> Path:
        parts = safe_relpath(relpath).split("/")
        if any(self.separator in part for part in parts):
            # "a__b/c.csv" and "a/b__c.csv" would land on the same flat name.
            raise TransferError(f"{relpath}: contains {self.separator!r}, cannot be stored flat")
        return self.directory / self.separator.join(parts)

    def stage(self, local_path: Path, relpath: str, **options: Any) -> PutResult:
        self._path(relpath)  # refuse a name with the separator before anything is written
        return super().stage(local_path, relpath, **options)

    def prepare(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"drop folder {self.directory} cannot be created: {exc.strerror}") from None

    def external_name(self, relpath: str) -> str:
        return str(self._path(relpath))

    # -- read side --------------------------------------------------------------------
    def list_files(
        self,
        extensions: Sequence[str] = (),
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        recursive: bool = True,
    ) -> Iterator[FileEntry]:
        try:
            with os.scandir(self.directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            return  # nothing copied yet
        for entry in entries:
            if not entry.is_file() or entry.name.startswith(".") or entry.name.endswith(TEMP_SUFFIX):
                continue
            relpath = entry.name.replace(self.separator, "/")
            if not has_extension(relpath, extensions):
                continue
            if (include and not matches(relpath, include)) or (exclude and matches(relpath, exclude)):
                continue
            st = entry.stat()
            yield FileEntry(relpath, st.st_size, st.st_mtime_ns)

    def stat(self, relpath: str) -> Optional[FileEntry]:
        try:
            st = os.stat(self._path(relpath))
        except FileNotFoundError:
            return None
        return FileEntry(relpath, st.st_size, st.st_mtime_ns)

    def checksum(self, relpath: str, algorithm: str = "md5") -> str:
        return hash_file(self._path(relpath), algorithm)

    # -- write side -------------------------------------------------------------------
    def write_stream(self, relpath: str, chunks: Iterable[bytes], size: int) -> None:
        with open(self._path(relpath), "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())

    def rename(self, src_relpath: str, dst_relpath: str) -> None:
        os.replace(self._path(src_relpath), self._path(dst_relpath))

    def remove(self, relpath: str) -> None:
        try:
            os.remove(self._path(relpath))
        except FileNotFoundError:
            pass

    def set_mtime(self, relpath: str, mtime_ns: int) -> None:
        os.utime(self._path(relpath), ns=(mtime_ns, mtime_ns))


class HostFolderConnector(LocalConnector):
    """A local (or mounted) folder; each PC writes into its own ``<host name>`` subfolder."""

    name = "hostfolder"

    @classmethod
    def from_settings(cls, settings: Any, role: str = "external") -> HostFolderConnector:
        if not settings.base_dir_to:
            raise ConfigError("OELEO_BASE_DIR_TO is not set: the shared folder to copy to (or --to)")
        return cls(directory=Path(settings.base_dir_to) / socket.gethostname())


def main(argv: List[str]) -> int:
    """``python examples/my_connector.py FROM TO [DB]``: one pass into a flat folder."""
    from oeleo.models import SimpleDbHandler
    from oeleo.workers import Worker

    if len(argv) < 3:
        print("usage: python examples/my_connector.py FROM TO [DB]", file=sys.stderr)
        return 2
    db_name = argv[3] if len(argv) > 3 else "oeleo-file-list.db"
    worker = Worker(
        local_connector=LocalConnector(directory=argv[1]),
        external_connector=FlatFolderConnector(directory=argv[2]),
        bookkeeper=SimpleDbHandler(db_name),
        subdirs=True,
    )
    with worker:  # connect_to_db() ... close()
        summary = worker.run()
    print(summary.describe())
    return summary.exit_status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
