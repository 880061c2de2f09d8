"""A minimal object-store connector (docs/connectors.md); a folder stands in for the bucket."""

import hashlib
import os
import secrets
from pathlib import Path
from typing import Iterable, Iterator, Optional

from oeleo.checkers import hash_file
from oeleo.connectors.base import Connector, Features, FileEntry, Stored, Upload, safe_relpath


class BucketUpload(Upload):
    def __init__(self, store: "BucketConnector", relpath: str, size: int, mtime_ns: int) -> None:
        super().__init__(store, relpath, size, mtime_ns)
        store.uploads.mkdir(parents=True, exist_ok=True)
        self.part, self.md5 = store.uploads / secrets.token_hex(8), hashlib.md5()  # "initiate"

    def send(self, chunks: Iterable[bytes]) -> None:
        with open(self.part, "wb") as handle:
            for chunk in chunks:  # "upload the parts"; iterating hashes the source
                handle.write(chunk)
                self.md5.update(chunk)  # what the store says it received (its ETag)

    def finish(self, algorithm: Optional[str] = None) -> Stored:
        return Stored(self.part.stat().st_size, {"md5": self.md5.hexdigest()})

    def commit(self) -> None:  # "complete": the object appears whole, or not at all
        target = Path(self.connector.directory) / self.relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.part, target)

    def abort(self) -> None:  # never touches the object already there
        self.part.unlink(missing_ok=True)


class BucketConnector(Connector):
    features = Features(hashes=frozenset({"md5"}), staged_uploads=True, max_uploads=4)

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.uploads = self.directory / ".uploads"

    def open_upload(self, relpath: str, size: int, mtime_ns: int) -> Upload:
        return BucketUpload(self, relpath, size, mtime_ns)

    def list_files(self, extensions=(), include=(), exclude=(), recursive=True) -> Iterator[FileEntry]:
        names = (p.relative_to(self.directory).as_posix() for p in sorted(self.directory.rglob("*")))
        return (e for e in map(self.stat, names) if e is not None and not e.relpath.startswith(".uploads/"))

    def stat(self, relpath: str) -> Optional[FileEntry]:  # a HEAD request
        path = self.directory / safe_relpath(relpath)
        return FileEntry(relpath, path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else None

    def checksum(self, relpath: str, algorithm: str = "md5") -> str:  # the object's metadata
        return hash_file(self.directory / safe_relpath(relpath), algorithm)

    def remove(self, relpath: str) -> None:
        (self.directory / safe_relpath(relpath)).unlink(missing_ok=True)
