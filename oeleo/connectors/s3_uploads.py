"""The uploads of the S3 connector (``oeleo.connectors.s3``): a small file held in memory and
sent whole by ``commit`` with its Content-MD5; a medium one (up to ``single_put_limit``) only
hashed while the engine reads it, and sent again from its file by ``commit`` in one PutObject
with the Content-MD5 of that read; and a large one sent as a multipart upload while it is
read, completed by ``commit`` or aborted by ``abort``. They talk to S3 through their
connector (its client, its pool of part senders, its error translation), so boto3 is imported
in ``s3.py`` only."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import zlib
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_futures
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional

from oeleo.checkers import new_hash
from oeleo.connectors.base import Stored, Upload, temp_relpath
from oeleo.errors import FileChangedError, FoundWrongInPlace, TransferError, VerificationError
from oeleo.names import printable
from oeleo.source import SourceReader

if TYPE_CHECKING:
    from oeleo.connectors.s3 import S3Connector

MiB = 1024 * 1024
PART_SIZE = 8 * MiB  # the smallest part; larger for files that would need more than MAX_PARTS
MAX_PARTS = 10_000  # S3's limit per upload

PLAIN_ETAG = re.compile(r'^"?([0-9a-f]{32})"?$')
MULTIPART_ETAG = re.compile(r'^"?([0-9a-f]{32})-(\d+)"?$')


class UploadGone(TransferError):
    """S3 knows no multipart upload of this id (``NoSuchUpload``): it was completed (by a
    request whose answer was lost) or aborted."""


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def sse_hides_md5(response: Dict[str, Any]) -> bool:
    """Whether the object's ETag is not the MD5 of its bytes (SSE-KMS, SSE-C)."""
    return str(response.get("ServerSideEncryption", "")).startswith("aws:kms") or bool(
        response.get("SSECustomerAlgorithm")
    )


class _Digests:
    """The hashes of what an upload sends: md5 (S3 checks it per request) and the books'."""

    def __init__(self, algorithms: Iterable[str]) -> None:
        self.hashes = {name: new_hash(name) for name in algorithms}

    def update(self, chunk: bytes) -> None:
        for digest in self.hashes.values():
            digest.update(chunk)

    def hexdigests(self) -> Dict[str, str]:
        return {name: digest.hexdigest() for name, digest in self.hashes.items()}


class S3Upload(Upload):
    """A file below the multipart threshold: held in memory, sent whole by ``commit``."""

    connector: S3Connector

    def __init__(self, connector: S3Connector, relpath: str, size: int, mtime_ns: int) -> None:
        super().__init__(connector, relpath, size, mtime_ns)
        self.key = connector.key(relpath)
        self._chunks: Optional[List[bytes]] = []
        self._sent = 0
        self._digests = _Digests(connector.upload_algorithms)
        self._hashes: Dict[str, str] = {}

    def send(self, chunks: Iterable[bytes]) -> None:
        assert self._chunks is not None
        limit = self.connector.multipart_threshold
        for chunk in chunks:
            self._sent += len(chunk)
            if self._sent > limit:  # it grew while read: never hold an unbounded file in memory
                raise FileChangedError(f"{printable(self.relpath)} grew while it was read")
            self._chunks.append(chunk)
            self._digests.update(chunk)

    def finish(self, algorithm: Optional[str] = None) -> Stored:
        # What the PutObject will carry, with its Content-MD5: S3 refuses other bytes.
        self._hashes = self._digests.hexdigests()
        return Stored(self._sent, self._hashes)

    # The body is kept until S3 took it: a PutObject whose connection dropped is sent again.
    recommit = True

    def commit(self) -> None:
        chunks = self._chunks
        assert chunks is not None, "an upload is committed once"
        connector = self.connector
        md5 = self._hashes["md5"]
        options = connector.object_options(self.mtime_ns, self._hashes)
        with connector.errors("uploading", self.relpath):
            response = connector.client.put_object(
                Bucket=connector.bucket,
                Key=self.key,
                Body=b"".join(chunks),
                ContentMD5=_b64(bytes.fromhex(md5)),
                **options,
            )
        self._chunks = None
        _check_etag(self.relpath, response, md5)

    def abort(self) -> None:
        self._chunks = None


class S3FileUpload(Upload):
    """A medium file (``multipart_threshold`` to ``single_put_limit``): nothing is held or sent
    while the engine reads and hashes it; ``commit`` sends the file again from disk in one
    PutObject carrying the MD5 of that read (``Content-MD5``), so S3 refuses a body that
    differs from what the engine hashed and verified (the file changed since: ``BadDigest``).
    Memory stays bounded (the body is streamed from the file), the metadata is in the PutObject
    (no copy onto itself afterwards), and nothing is visible before the commit: a PutObject
    that does not arrive whole is discarded by S3. A stream that cannot be read again from a
    file (gzip on the way) goes up as a multipart upload instead."""

    connector: S3Connector

    def __init__(self, connector: S3Connector, relpath: str, size: int, mtime_ns: int) -> None:
        super().__init__(connector, relpath, size, mtime_ns)
        self.key = connector.key(relpath)
        self._reader: Optional[SourceReader] = None
        self._multipart: Optional[S3MultipartUpload] = None
        self._digests: Optional[_Digests] = None
        self._sent = 0
        self._hashes: Dict[str, str] = {}
        self._committed = False

    def send(self, chunks: Iterable[bytes]) -> None:
        if not isinstance(chunks, SourceReader):  # nothing to read again: parts as it is read
            self._multipart = S3MultipartUpload(self.connector, self.relpath, self.size, self.mtime_ns)
            self.staging = self._multipart.staging
            self._multipart.send(chunks)
            return
        reader = chunks
        self._reader = reader
        # The engine's reader hashes with its algorithm: the others are hashed here.
        own = [name for name in self.connector.upload_algorithms if name != reader.digest.name]
        digests = self._digests = _Digests(own)
        update = digests.update if own else None
        for chunk in reader:
            self._sent += len(chunk)
            if update is not None:
                update(chunk)

    def finish(self, algorithm: Optional[str] = None) -> Stored:
        if self._multipart is not None:
            return self._multipart.finish(algorithm)
        assert self._reader is not None and self._digests is not None, "finish follows send"
        reader = self._reader
        reader.close()  # done by the engine's reader.finish() already; the hash is complete
        hashes = self._digests.hexdigests()
        hashes[reader.digest.name] = reader.digest.hexdigest()
        # What the PutObject will carry, with its Content-MD5: S3 refuses other bytes.
        self._hashes = {name: hashes[name] for name in self.connector.upload_algorithms}
        return Stored(self._sent, self._hashes)

    # Committed again after a dropped connection: the PutObject reads the file again (checked
    # unchanged, refused by S3 if other bytes arrive), a multipart one completes again.
    recommit = True

    def commit(self) -> None:
        if self._multipart is not None:
            self._multipart.commit()
            return
        assert self._reader is not None and not self._committed, "an upload is committed once"
        connector = self.connector
        md5 = self._hashes["md5"]
        options = connector.object_options(self.mtime_ns, self._hashes)
        try:
            body = open(self._reader.path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise FileChangedError(
                f"{printable(self.relpath)} cannot be read again ({exc.strerror}); nothing sent"
            ) from None
        try:
            now = os.fstat(body.fileno())
            if now.st_size != self._sent or now.st_mtime_ns != self.mtime_ns:
                raise FileChangedError(f"{printable(self.relpath)} changed since it was read; nothing sent")
            with connector.errors("uploading", self.relpath):
                response = connector.client.put_object(
                    Bucket=connector.bucket,
                    Key=self.key,
                    Body=body,
                    ContentLength=self._sent,
                    ContentMD5=_b64(bytes.fromhex(md5)),
                    **options,
                )
        finally:
            body.close()
        self._committed = True
        _check_etag(self.relpath, response, md5)

    def abort(self) -> None:
        if self._multipart is not None:
            self._multipart.abort()
        self._reader = None


class S3MultipartUpload(Upload):
    """A large file sent as a multipart upload while it is read; ``commit`` completes it."""

    connector: S3Connector

    def __init__(self, connector: S3Connector, relpath: str, size: int, mtime_ns: int) -> None:
        super().__init__(connector, relpath, size, mtime_ns)
        self.key = connector.key(relpath)
        self.staging = temp_relpath(relpath, connector.upload_tag)  # the marker's name
        self.upload_id: Optional[str] = None
        # Parts of at least PART_SIZE, whole MiB, so that the file fits in MAX_PARTS - 1000
        # parts (room for a file that grows a little; it is refused anyway).
        wanted = -(-size // (MAX_PARTS - 1000))
        self.part_size = max(PART_SIZE, -(-wanted // MiB) * MiB)
        self._futures: List[Future] = []
        self._sent = 0
        self._digests = _Digests(connector.upload_algorithms)
        self._hashes: Dict[str, str] = {}
        self._parts: List[Dict[str, Any]] = []
        self._part_md5s: List[bytes] = []

    def _start(self) -> None:
        connector = self.connector
        options = connector.object_options(self.mtime_ns, {})
        if connector.crc_parts:
            options["ChecksumAlgorithm"] = "CRC32"
        with connector.errors("starting the upload of", self.relpath):
            response = connector.client.create_multipart_upload(
                Bucket=connector.bucket, Key=self.key, **options
            )
        self.upload_id = response["UploadId"]
        connector.started(self)

    def send(self, chunks: Iterable[bytes]) -> None:
        self._start()
        buffer = bytearray()
        number = 0
        for chunk in chunks:
            self._digests.update(chunk)
            self._sent += len(chunk)
            buffer += chunk
            while len(buffer) >= self.part_size:
                number += 1
                if len(buffer) == self.part_size:
                    part, buffer = bytes(buffer), bytearray()
                else:
                    part = bytes(buffer[: self.part_size])
                    del buffer[: self.part_size]
                self._submit(number, part)
        if buffer or number == 0:
            number += 1
            self._submit(number, bytes(buffer))
        del buffer
        wait_for_futures(self._futures)
        self._parts = [future.result() for future in self._futures]  # a failed part raises here

    def _submit(self, number: int, data: bytes) -> None:
        if number > MAX_PARTS:
            raise FileChangedError(f"{printable(self.relpath)} grew while it was read")
        for future in self._futures:  # a part that failed ends the upload now, not at the end
            if future.done() and future.exception() is not None:
                future.result()
        self._futures.append(self.connector.send_part(self, number, data))

    def upload_part(self, number: int, data: bytes) -> Dict[str, Any]:
        """Send one part (in a thread of the connector's pool); its entry for the completion."""
        connector = self.connector
        md5 = hashlib.md5(data).digest()
        options: Dict[str, Any] = {}
        part: Dict[str, Any] = {"PartNumber": number}
        if connector.crc_parts:
            options["ChecksumCRC32"] = part["ChecksumCRC32"] = _b64(zlib.crc32(data).to_bytes(4, "big"))
        with connector.errors(f"uploading part {number} of", self.relpath):
            response = connector.client.upload_part(
                Bucket=connector.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=data,
                ContentMD5=_b64(md5),
                **options,
            )
        etag = PLAIN_ETAG.match(response.get("ETag", ""))
        if etag and not sse_hides_md5(response) and etag.group(1) != md5.hex():
            raise VerificationError(
                f"{printable(self.relpath)}: part {number} arrived as other bytes (ETag {etag.group(1)}, "
                f"md5 sent {md5.hex()})"
            )
        part["ETag"] = response["ETag"]
        part["md5"] = md5
        return part

    def finish(self, algorithm: Optional[str] = None) -> Stored:
        # The digests of exactly the bytes S3 acknowledged, each part checked by its Content-MD5.
        self._hashes = self._digests.hexdigests()
        return Stored(self._sent, self._hashes)

    # Completed again after a dropped connection: S3 completes an upload once, and answers a
    # completion again either as the first time or with NoSuchUpload (``_completed_before``).
    recommit = True

    def commit(self) -> None:
        connector = self.connector
        assert self.upload_id is not None, "an upload is committed once"
        parts = [{k: v for k, v in part.items() if k != "md5"} for part in self._parts]
        expected = hashlib.md5(b"".join(part["md5"] for part in self._parts)).hexdigest()
        try:
            with connector.errors("completing the upload of", self.relpath):
                response = connector.client.complete_multipart_upload(
                    Bucket=connector.bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except UploadGone:
            response = self._completed_before(f"{expected}-{len(parts)}")
        self.upload_id = None
        etag = MULTIPART_ETAG.match(response.get("ETag", ""))
        if etag and not sse_hides_md5(response) and etag.group(1) != expected:
            connector.forget_marker(self)
            raise FoundWrongInPlace(
                f"{printable(self.relpath)}: the completed object is not the parts sent "
                f"(ETag {etag.group(1)}-{etag.group(2)}, expected {expected}-{len(parts)}); "
                "sent again on the next run"
            )
        connector.add_checksums(self, self._hashes)
        connector.forget_marker(self)

    def _completed_before(self, etag: str) -> Dict[str, Any]:
        """S3 no longer knows the upload (a completion whose answer was lost, botocore's retry
        or ours, got NoSuchUpload): the object's answer, when it is the completion of exactly
        these parts (its ETag, the MD5 of the parts' MD5s and their count); else the upload
        was aborted elsewhere, and that is the error."""
        connector = self.connector
        with connector.errors("checking", self.relpath):
            head = connector.client.head_object(Bucket=connector.bucket, Key=self.key)
        if head.get("ETag", "").strip('"') == etag:
            return head
        raise UploadGone(
            f"completing the upload of {printable(self.relpath)}: the multipart upload is gone "
            "(aborted elsewhere?)"
        )

    def abort(self) -> None:
        for future in self._futures:
            future.cancel()
        wait_for_futures(self._futures)  # S3 may keep a part that lands after the abort
        self._futures = []
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            if self.connector.abort_upload(self.key, upload_id):
                self.connector.forget_marker(self)
            # else its marker stays, naming the upload, until the abort is tried again


def _check_etag(relpath: str, response: Dict[str, Any], md5: str) -> None:
    """A PutObject's ETag (the MD5 of the body, where no SSE hides it) against the source's."""
    etag = PLAIN_ETAG.match(response.get("ETag", ""))
    if etag and not sse_hides_md5(response) and etag.group(1) != md5:
        # Only a store that ignores Content-MD5 gets here (S3 refuses the request), and the
        # object under the real name is now those other bytes: the file is sent again on the
        # next run, changed or not (the books no longer say it is there).
        raise FoundWrongInPlace(
            f"{printable(relpath)}: the store holds other bytes (ETag {etag.group(1)}, "
            f"md5 of the source {md5}); it ignored the Content-MD5; sent again on the next run"
        )
