"""The uploads of the SharePoint connector: a small file in one request at the commit
(``SharePointUpload``), a large one by an upload session under a hidden temporary name moved
onto its real one by the commit (``SharePointStagedUpload``); see ``oeleo.connectors.sharepoint``."""

from __future__ import annotations

import logging
import posixpath
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from office365.runtime.queries.service_operation import ServiceOperationQuery

from oeleo.connectors.base import Stored, Upload
from oeleo.errors import FileChangedError
from oeleo.names import printable

if TYPE_CHECKING:
    from oeleo.connectors.sharepoint import SharePointConnector

log = logging.getLogger("oeleo")

MOVE_OVERWRITE = 1  # SP.MoveOperations.overwrite


class SharePointUpload(Upload):
    """A file of at most ``chunk_size`` bytes: held in memory, sent by ``commit`` in one
    ``Files/add`` request onto its real name (SharePoint swaps the new version in whole)."""

    connector: SharePointConnector

    def __init__(self, connector: SharePointConnector, relpath: str, size: int, mtime_ns: int) -> None:
        super().__init__(connector, relpath, size, mtime_ns)
        self._chunks: Optional[List[bytes]] = []
        self._sent = 0

    def send(self, chunks: Any) -> None:
        assert self._chunks is not None
        limit = self.connector.chunk_size
        for chunk in chunks:
            self._sent += len(chunk)
            if self._sent > limit:  # it grew while read: never hold an unbounded file in memory
                raise FileChangedError(f"{printable(self.relpath)} grew while it was read")
            self._chunks.append(chunk)

    def finish(self, algorithm: Optional[str] = None) -> Stored:
        return Stored(self._sent)  # nothing is in the store yet; the commit checks the size

    def commit(self) -> None:
        chunks, self._chunks = self._chunks, None
        assert chunks is not None, "an upload is committed once"
        connector = self.connector
        folder, name = connector.split(self.relpath)
        connector.ensure_folder(posixpath.dirname(self.relpath))
        content = b"".join(chunks)
        del chunks
        stored = connector.run(
            "uploading",
            self.relpath,
            lambda ctx: ctx.web.get_folder_by_server_relative_path(folder).files.add(name, content, True),
        )
        connector.check_size(self.relpath, stored, self._sent)

    def abort(self) -> None:
        self._chunks = None


class SharePointStagedUpload(Upload):
    """A file sent under a hidden temporary name (an upload session for a large one, one
    request for a small one when it is read back before its commit), moved onto its real
    name by ``commit``."""

    connector: SharePointConnector

    def __init__(self, connector: SharePointConnector, relpath: str, size: int, mtime_ns: int) -> None:
        super().__init__(connector, relpath, size, mtime_ns)
        self.staging = connector.staging_name(relpath)
        self.upload_id: Optional[str] = None  # a session in progress (cancelled by abort)
        self._created = False  # the temporary file exists (removed by abort)
        self._sent = 0
        self._stored_size = -1

    def send(self, chunks: Any) -> None:
        limit = self.connector.chunk_size
        held = bytearray()
        offset = 0
        for chunk in chunks:
            self._sent += len(chunk)
            held += chunk
            # A chunk is sent once more bytes follow it: the last one goes with finishUpload.
            while len(held) > limit:
                part = bytes(memoryview(held)[:limit])
                del held[:limit]
                self._send_part(offset, part, last=False)
                offset += len(part)
        last = bytes(held)
        del held
        self._stored_size = self.connector.length(self._send_part(offset, last, last=True))

    def _send_part(self, offset: int, part: bytes, last: bool) -> Any:
        """One request of the upload: the whole file (``Files/add``), or a session's start
        (after an empty ``Files/add`` of the temporary name), continuation or end."""
        import uuid

        connector = self.connector
        folder, name = connector.split(self.staging)
        url = connector.server_url(self.staging)
        if self.upload_id is None and offset == 0:
            connector.ensure_folder(posixpath.dirname(self.staging))
            self._created = True
            content = part if last else None  # a file that fits in one request is sent whole
            stored = connector.run(
                "uploading" if last else "starting the upload of",
                self.relpath,
                lambda ctx: ctx.web.get_folder_by_server_relative_path(folder).files.add(name, content, True),
            )
            if last:
                return stored
            self.upload_id = str(uuid.uuid4())
        upload_id = self.upload_id
        assert upload_id is not None

        def build(ctx: Any) -> Any:
            file = ctx.web.get_file_by_server_relative_path(url)
            if offset == 0:
                return file.start_upload(upload_id, part)
            if not last:
                return file.continue_upload(upload_id, offset, part)
            return file.finish_upload(upload_id, offset, part)

        what = "finishing the upload of" if last else "uploading"
        stored = connector.run(what, self.relpath, build)
        if last:
            self.upload_id = None  # finished: nothing to cancel, the temporary file to remove
        return stored

    def finish(self, algorithm: Optional[str] = None) -> Stored:
        hashes: Dict[str, str] = {}
        if algorithm and self.connector.read_back:
            hashes[algorithm] = self.connector.checksum(self.staging, algorithm)
        return Stored(self._stored_size, hashes)

    def commit(self) -> None:
        connector = self.connector
        source, target = connector.server_url(self.staging), connector.server_url(self.relpath)

        def move(ctx: Any) -> Any:
            file = ctx.web.get_file_by_server_relative_path(source)
            query: Any = ServiceOperationQuery(file, "MoveTo", {"newurl": target, "flags": MOVE_OVERWRITE})
            ctx.add_query(query)
            return file

        connector.run("moving into place", self.relpath, move)
        self._created = False

    def abort(self) -> None:
        connector = self.connector
        url = connector.server_url(self.staging)
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            try:
                connector.run(
                    "cancelling the upload of",
                    self.relpath,
                    lambda ctx: ctx.web.get_file_by_server_relative_path(url).cancel_upload(upload_id),
                )
            except Exception as exc:  # noqa: BLE001 - the temporary file is removed below anyway
                log.debug("cannot cancel the upload of %s: %s", printable(self.relpath), exc)
        if self._created:
            self._created = False
            connector._discard(self.staging)


__all__ = ["SharePointUpload", "SharePointStagedUpload"]
