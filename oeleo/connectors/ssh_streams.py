"""Files over SSH through programs on the server, where the login runs commands: small ones
as one ``tar -x`` stream per batch, large ones on the stdin of ``cat``.

Sent one by one over SFTP, a small file costs its own requests and answers, and paramiko's
cost is per message: about 0.6 ms a file here, most of it Python. Written into the stdin of
``tar -x`` on the server instead, a batch of 8 KiB files is a few hundred channel packets in
all, and no answer is awaited file by file (rsync and ``tar | ssh`` move many small files
the same way). A large file through ``cat`` has no SFTP request and answer per 32 KiB.

What stays true (the engine's rule, DESIGN §2):

- A small file's bytes are held in memory until the source is confirmed unchanged
  (``StreamedUpload.finish``), and only then written into the stream: a changed file never
  reaches the server, and a stream never holds half a file.
- Every member is the file's hidden temporary name, never its real one; tar is told not to
  give files the archive's owner (``-o``), and replaces whatever was under the temporary
  name (a killed run's leftover, a symbolic link) instead of following it.
- Before a batch is renamed into place (``settle``), its stream is closed and tar's exit
  status read, and each file is hashed on the server (``md5sum`` and friends, one command
  for the batch) and compared with the hash of the bytes sent: a file that differs fails
  alone, and its temporary file is removed. What tar did not write is sent over SFTP then
  (and fails with SFTP's words if it fails there too); a full disk stops the run; a lost
  connection sends the batch again over SFTP on a new one. Only then do the batch's sync and
  renames run, as for any other file.

Used only where it can work: the login runs commands, the server hashes with the algorithm
the engine compares with, and the stream's own command lists a test archive of this format
(probed once per connection, writing nothing). Anywhere else (an sftp-only login, no tar, a
channel refused) the files go over SFTP as before.
"""

from __future__ import annotations

import errno
import logging
import posixpath
import shlex
import tarfile
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import paramiko

from oeleo.connectors import readback
from oeleo.connectors.base import (
    Failed,
    FolderUpload,
    PutResult,
    Stored,
    _failed,
    _Unreachable,
    describe_error,
    safe_relpath,
)
from oeleo.connectors.readback import hash_bytes
from oeleo.connectors.session import close_quietly
from oeleo.errors import Behaviour, ConnectionLost, TransferError, VerificationError, behaviour_of, first_line
from oeleo.names import printable
from oeleo.retries import BACKOFF_SECONDS, outcome_of
from oeleo.units import counted

if TYPE_CHECKING:  # pragma: no cover
    from oeleo.connectors.ssh import SSHConnector

log = logging.getLogger("oeleo")

STREAM_BELOW = 256 * 1024  # files smaller than this go into the batch's tar stream
SEND_EVERY = 256 * 1024  # members are sent to the server in writes of about this size
BLOCK = tarfile.BLOCKSIZE
RESEND_ATTEMPTS = 3  # connections tried for a lost stream's files (the worker's retries)

# The probe: a one-member archive, with a name longer than ustar's 100 bytes (a GNU long
# name, as the longest temporary names need), listed to stdout (-O) instead of extracted.
_PROBE_NAME = "oeleo-probe/" + "n" * 120
_PROBE_DATA = b"oeleo tar probe\n"


def member(name: str, data: bytes, mtime: int) -> bytes:
    """One regular file of a tar archive (GNU format: names of any length, any bytes), with
    its data and padding. ``name`` is relative; surrogate escapes are written as the bytes
    they stand for (a name that is not UTF-8)."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    info.mode = 0o644  # what SFTP gives a new file under the usual umask of 022
    info.type = tarfile.REGTYPE
    header = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    return header + data + tarfile.NUL * (-len(data) % BLOCK)


END_OF_ARCHIVE = tarfile.NUL * (2 * BLOCK)


def probe_archive() -> bytes:
    return member(_PROBE_NAME, _PROBE_DATA, 0) + END_OF_ARCHIVE


class TarStream:
    """``tar -x`` running on the server in the base folder, fed members one at a time.

    ``add`` takes a whole member or nothing (False once the stream is closed: the caller
    opens a new one); ``close`` ends the archive and waits for tar, once: what it returns
    (None or the error) is the same for every file of the stream."""

    def __init__(self, channel: paramiko.Channel, transport: paramiko.Transport, where: str) -> None:
        self.channel = channel
        self.transport = transport
        self.where = where
        self.lock = threading.Lock()
        self._pending: List[bytes] = []
        self._pending_bytes = 0
        self.closed = False
        self.error: Optional[BaseException] = None

    def add(self, data: bytes) -> bool:
        with self.lock:
            if self.closed:
                return False
            self._pending.append(data)
            self._pending_bytes += len(data)
            if self._pending_bytes >= SEND_EVERY:
                self._send()
            return True

    def _send(self) -> None:
        data, self._pending, self._pending_bytes = b"".join(self._pending), [], 0
        try:
            self.channel.sendall(memoryview(data))  # sendall slices what is left: no copies
        except Exception as exc:  # noqa: BLE001 - the stream is over; settle() reports it
            self.closed = True
            self.error = self.error or _lost(self.where, exc)
            raise self.error from None

    def close(self) -> Optional[BaseException]:
        with self.lock:
            if self.closed:
                return self.error
            try:
                self._pending.append(END_OF_ARCHIVE)
                self._send()
                self.closed = True
                self.channel.shutdown_write()
                stderr = self.channel.makefile_stderr("rb").read()
                status = self.channel.recv_exit_status()
            except BaseException as exc:  # noqa: BLE001 - every file of the stream fails with it
                self.closed = True
                self.error = self.error or _lost(self.where, exc)
                return self.error
            finally:
                close_quietly(self.channel)
            if status != 0:
                self.error = _tar_error(self.where, status, stderr)
            return self.error


def _lost(where: str, exc: BaseException) -> BaseException:
    if isinstance(exc, (TransferError, ConnectionLost)):
        return exc
    return ConnectionLost(f"connection to {where} lost while sending small files ({first_line(exc)})")


def _tar_error(where: str, status: int, stderr: bytes) -> OSError:
    text = stderr.decode("utf-8", "replace").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    first = lines[0][:200] if lines else f"exit status {status}"
    lowered = text.lower()
    if "no space left" in lowered or "disk quota" in lowered:
        return OSError(errno.ENOSPC, f"the destination on {where} is full ({first})")
    said = first if first.startswith("tar") else f"tar: {first}"
    return OSError(errno.EIO, f"writing small files on {where} failed ({said})")


class StreamedUpload(FolderUpload):
    """A small file bound for the batch's tar stream: held in memory while the source is
    read, written into the stream once the engine has confirmed the source (``finish``),
    verified by ``settle`` before its batch is renamed into place. Where the stream cannot
    be used after all, it is written over SFTP in ``finish``, as a ``FolderUpload`` is; where
    the connection drops before tar is done, ``settle`` sends it over SFTP once reconnected
    (its bytes are kept until then)."""

    verified_at_commit = True  # by settle(), before the batch is renamed into place

    def __init__(self, connector: SSHConnector, relpath: str, size: int, mtime_ns: int) -> None:
        super().__init__(connector, relpath, size, mtime_ns)
        self.data = b""
        self._chunks: List[bytes] = []
        self.stream: Optional[TarStream] = None
        self.verify_with: Optional[str] = None  # the algorithm settle() compares with
        self.expected = ""  # the digest of the bytes sent, with that algorithm
        self.settled = False  # closed and verified by settle(): may be committed

    def send(self, chunks: Iterable[bytes]) -> None:
        held = [bytes(chunk) for chunk in chunks]  # errors of the source pass untouched
        self._chunks = held
        self.size = getattr(chunks, "size", sum(len(chunk) for chunk in held))

    def finish(self, algorithm: Optional[str] = None) -> Stored:
        connector: SSHConnector = self.connector  # type: ignore[assignment]
        data, self._chunks = b"".join(self._chunks), []
        if algorithm is None or algorithm in connector._server_hashes():
            self._written = True  # from here on, abort() removes what tar may have written
            stream = connector._stream_member(self.staging, data, self.mtime_ns // 1_000_000_000)
            if stream is not None:
                self.stream, self.verify_with, self.data = stream, algorithm, data
                # The bytes sent are the bytes the engine hashed: what the server's copy
                # must hash to (with the algorithm it compares, the books' or another).
                self.expected = hash_bytes(data, algorithm) if algorithm else ""
                self.verified_hashes = {algorithm: self.expected} if algorithm else {}
                return Stored(len(data), {})  # verified by settle(), before the commit
        # No stream here: over SFTP, as any file.
        super().send([data])
        return super().finish(algorithm)

    def resend(self) -> Optional[str]:
        """Write the file over SFTP instead (its stream was lost); the digest the server's
        copy has now with ``verify_with`` (None when not verifying)."""
        self.stream = None
        try:  # whatever tar left under the name: SFTP may write into a spare file instead
            self.connector.remove(self.staging)
        except OSError:
            pass
        super().send([self.data])
        stored = super().finish(self.verify_with)
        return stored.hashes.get(self.verify_with) if self.verify_with else None

    def abort(self) -> None:
        if self.stream is not None and not self.stream.closed:
            self.stream.close()  # tar must be done writing before the file is removed
        self.data = b""
        super().abort()


def settle(connector: SSHConnector, staged: Sequence[PutResult]) -> Dict[int, Union[PutResult, Failed]]:
    """Close the streams that hold these staged files and verify each file on the server:
    {index: the verified result, or why it failed} for every streamed file of ``staged``
    (the others are left out). A file that failed is discarded (its temporary file removed)."""
    streamed: List[Tuple[int, PutResult, StreamedUpload, TarStream]] = []
    for index, item in enumerate(staged):
        upload = item.upload
        if isinstance(upload, StreamedUpload) and upload.stream is not None:
            streamed.append((index, item, upload, upload.stream))
    if not streamed:
        return {}
    out: Dict[int, Union[PutResult, Failed]] = {}
    errors: Dict[int, Optional[BaseException]] = {}
    for _, _, _, stream in streamed:
        if id(stream) not in errors:
            errors[id(stream)] = stream.close()
    to_hash: Dict[str, List[Tuple[int, PutResult, StreamedUpload, Optional[BaseException]]]] = {}
    lost: List[Tuple[int, PutResult, StreamedUpload]] = []  # the connection dropped
    unwritten: List[Tuple[int, PutResult, StreamedUpload]] = []  # tar did not write them
    for index, item, upload, stream in streamed:
        error = errors[id(stream)]
        if isinstance(error, ConnectionLost):
            lost.append((index, item, upload))
        elif error is not None and (not isinstance(error, OSError) or upload.verify_with is None):
            unwritten.append((index, item, upload))  # which ones tar wrote cannot be told
        elif upload.verify_with is None:
            out[index] = item
        else:
            # tar goes on after a file it cannot write (a folder that is a file there, a full
            # disk) and fails at the end: the files it did write verify.
            to_hash.setdefault(upload.verify_with, []).append((index, item, upload, error))
    for algorithm, files in to_hash.items():
        # What the store says it holds: one command per 32 KiB of names on the server, or
        # each file read back where commands stopped running meanwhile.
        try:
            digests = connector.checksums([upload.staging for _, _, upload, _ in files], algorithm)
        except Exception as exc:  # noqa: BLE001 - a dropped connection: sent again below
            if behaviour_of(exc) is Behaviour.RETRY:
                lost.extend((index, item, upload) for index, item, upload, _ in files)
            else:  # these files are not verified: not booked, copied again by the next run
                out.update((index, _write_failed(exc, item.relpath)) for index, item, _, _ in files)
            continue
        for index, item, upload, written in files:
            digest = digests.get(upload.staging)
            if digest != upload.expected and written is not None:  # missing or cut short
                if getattr(written, "errno", None) == errno.ENOSPC:
                    # A full disk, which SFTP could only call a "Failure": the run stops.
                    out[index] = _write_failed(written, item.relpath)
                else:
                    unwritten.append((index, item, upload))
            else:
                out[index] = _compared(connector, item, upload, digest)
    tar_wrote = {index for index, result in out.items() if isinstance(result, PutResult)}
    if unwritten:
        # Over SFTP, now: what tar could not write is written there, or fails with the
        # words the SFTP path has for the cause (permission denied, a full disk, ...).
        _resend(connector, unwritten, out, reconnect=False)
        sftp_wrote = {i for i, _, _ in unwritten if isinstance(out.get(i), PutResult)}
        _stop_streams_that_wrote_nothing(connector, streamed, errors, tar_wrote, sftp_wrote)
    if lost:
        log.info(
            "connection to %s lost while sending small files: sending %d again", connector.where, len(lost)
        )
        _resend(connector, lost, out, reconnect=True)
    for index, result in out.items():
        upload = staged[index].upload
        if isinstance(upload, StreamedUpload):
            upload.data, upload.settled = b"", True
        if isinstance(result, Failed):
            connector.discard(staged[index])
            log.debug("%s: %s", printable(staged[index].relpath), result.reason)
    return out


def _resend(
    connector: SSHConnector,
    files: List[Tuple[int, PutResult, StreamedUpload]],
    out: Dict[int, Union[PutResult, Failed]],
    reconnect: bool,
) -> None:
    """Write these streamed files over SFTP instead, each verified as it is written;
    ``reconnect``: on a new connection first (the stream's dropped). After a drop they are
    tried again, waiting 0.5 s, 1 s, 2 s, as the worker retries a file whose connection
    dropped."""
    pending = files
    # The connections the lost streams were on: only one of those is dropped before a
    # reconnect, never a new one that another thread has opened meanwhile.
    stale = {id(upload.stream.transport) for _, _, upload in files if upload.stream is not None}
    error: BaseException = ConnectionLost(f"connection to {connector.where} lost")
    failed_reconnects = 0  # in a row: the server away for good after as many as the retries
    # As many reconnects and waits as the engine's retries of a file (OELEO_RETRIES): 0.5 s,
    # 1 s, 2 s ..., each followed by a send; without ``reconnect``, a first send before them.
    retries = max(RESEND_ATTEMPTS, connector.commit_retries)
    attempts = retries if reconnect else retries + 1
    for attempt in range(attempts):
        if connector._away is not None:  # found away meanwhile (another batch, a commit's retries)
            break
        if reconnect or attempt:
            time.sleep(BACKOFF_SECONDS * 2 ** (attempt if reconnect else attempt - 1))
            current = connector._transport
            if current is None or not current.is_active() or id(current) in stale:
                connector._session.drop()  # the one the stream was on stopped answering: a new one
            try:
                connector.reconnect()
            except Exception as exc:  # noqa: BLE001 - tried again, then these files fail
                if behaviour_of(exc) is not Behaviour.RETRY:
                    raise  # a setting to fix (a host key that changed): the pass stops
                error = exc
                failed_reconnects += 1
                continue
            failed_reconnects = 0
        again = []
        for index, item, upload in pending:
            try:
                digest = upload.resend()
            except Exception as exc:  # noqa: BLE001 - this file fails alone, or waits for a new connection
                if behaviour_of(exc) is Behaviour.RETRY:
                    error = exc
                    again.append((index, item, upload))
                else:
                    out[index] = _write_failed(exc, item.relpath)
                continue
            out[index] = _compared(connector, item, upload, digest) if upload.verify_with else item
        pending = again
        if not pending:
            return
    if connector._away is None and failed_reconnects >= retries:
        # Every reconnect failed: the server is away, as the commits' retries would find it
        # (the run stops; the next commits and resends give up at once, saying it once).
        connector._away = f"{first_line(error)} (gave up after {counted(failed_reconnects, 'reconnect')})"
    if connector._away is not None:
        for index, _, _ in pending:
            out[index] = Failed(connector._away, True, _Unreachable(connector._away))
        return
    for index, item, _ in pending:
        out[index] = _write_failed(error, item.relpath)


def _stop_streams_that_wrote_nothing(
    connector: SSHConnector,
    streamed: List[Tuple[int, PutResult, StreamedUpload, TarStream]],
    errors: Dict[int, Optional[BaseException]],
    tar_wrote: Set[int],
    sftp_wrote: Set[int],
) -> None:
    """A tar that failed without writing one file that verifies, where SFTP then wrote some
    of them (a server whose tar or shell does not do what the probe showed): small files go
    over SFTP from now on. Files that SFTP could not write either (a folder the login may not
    write) say nothing against tar."""
    for _, _, _, stream in streamed:
        error = errors[id(stream)]
        if (
            error is None
            or isinstance(error, ConnectionLost)
            or getattr(error, "errno", None) == errno.ENOSPC
        ):
            continue
        mine = {i for i, _, _, s in streamed if s is stream}
        if mine & tar_wrote or not mine & sftp_wrote:
            continue
        if connector.stream_small_files:
            connector.stream_small_files = False
            said = getattr(error, "strerror", None) or error
            log.warning("%s: small files go over SFTP from now on: %s", connector.where, said)
        return


def _write_failed(exc: BaseException, relpath: str) -> Failed:
    """A file tar did not write, said as the worker says a write that failed over SFTP."""
    if not isinstance(exc, Exception):
        return _failed(exc, "cannot write the copy")
    kind, reason = outcome_of(exc, relpath, lambda: True)
    return Failed(reason or describe_error(exc, "cannot write the copy"), kind == "fatal", exc)


def _compared(
    connector: SSHConnector, item: PutResult, upload: StreamedUpload, digest: Optional[str]
) -> Union[PutResult, Failed]:
    """The verified result, or a failure: the server's digest of the copy against the bytes sent."""
    if digest is None:
        error = VerificationError(f"{item.relpath}: the copy on {connector.where} could not be hashed")
        return _failed(error, "cannot verify the copy")
    if digest != upload.expected:
        what = "the compressed source" if item.stored_hash else "the source"
        error = VerificationError(
            f"{item.relpath}: {upload.verify_with} of the copy is {digest}, of {what} {upload.expected}"
        )
        return _failed(error, "the copy does not verify")
    return _verified(item)


_REASONS = {
    "permission denied": errno.EACCES,
    "no such file or directory": errno.ENOENT,
    "not a directory": errno.ENOTDIR,
    "is a directory": errno.EISDIR,
    "no space left on device": errno.ENOSPC,
    "file name too long": errno.ENAMETOOLONG,
    "read-only file system": errno.EROFS,
}


def _end_quietly(channel: paramiko.Channel, timeout: float) -> None:
    try:
        channel.shutdown_write()
        channel.status_event.wait(timeout)
    except Exception:  # noqa: BLE001 - a connection that dropped: the next run removes the file
        pass


def _ended_early(
    connector: SSHConnector, transport: paramiko.Transport, channel: paramiko.Channel, path: str
) -> Optional[OSError]:
    """Why a command reading our data ended before it (its exit status and what it wrote on
    standard error), or None when the connection itself is gone."""
    if not transport.is_active() or not channel.status_event.wait(connector.timeout):
        return None
    status = channel.recv_exit_status()
    if status < 0 or not transport.is_active():  # closed without an exit status: the connection went
        return None
    try:
        stderr = channel.makefile_stderr("rb").read()
    except (OSError, EOFError):
        stderr = b""
    if status == 0:  # it ended well before reading everything: never cat's way
        return OSError(errno.EIO, f"writing on {connector.where} failed: cat ended early", printable(path))
    return _command_error(connector, path, status, stderr)


def _command_error(connector: SSHConnector, path: str, status: int, stderr: bytes) -> OSError:
    """What ``mkdir``/``cat`` said, as the SFTP path says it (``permission denied
    (host:path)``, a full disk, ...)."""
    text = stderr.decode("utf-8", "replace").strip()
    first = text.splitlines()[0][:200] if text else f"exit status {status}"
    lowered = text.lower()
    for words, number in _REASONS.items():
        if words in lowered:
            if number == errno.ENOSPC:
                return OSError(errno.ENOSPC, f"the destination on {connector.where} is full ({first})")
            return connector._os_error(OSError(number, words), "writing", path)
    return OSError(errno.EIO, f"writing on {connector.where} failed: {first}", printable(path))


def _verified(item: PutResult) -> PutResult:
    return replace(item, verified=True)


def _start_shell(
    transport: paramiko.Transport, script: str, timeout: float, io_timeout: float
) -> paramiko.Channel:
    """A new channel running ``sh -c SCRIPT`` on the server (whatever the login's shell is);
    what opening it raises is the caller's to judge (a channel refused, a dropped connection)."""
    channel = transport.open_session(timeout=timeout)
    try:
        channel.settimeout(io_timeout)
        channel.exec_command(f"sh -c {shlex.quote(script)}".encode("utf-8", "surrogateescape"))
    except BaseException:
        close_quietly(channel)
        raise
    return channel


class SSHStreams:
    """The ssh connector's tar streams: one open at a time per connection, shared by the
    copying threads (a member is written whole under the stream's lock), closed by the batch
    that commits its files (``settle``)."""

    stream_small_files = True  # False: small files one by one over SFTP (a subclass, a test)
    stream_large_files = True  # False: large files over SFTP

    def _start_streams(self) -> None:
        self._stream: Optional[TarStream] = None
        self._stream_lock = threading.Lock()
        self._tar_probed: Optional[Tuple[object, bool]] = None  # (transport, tar works there)

    def _streams_small(self, size: int) -> bool:
        """Whether a file of ``size`` bytes goes into the batch's tar stream."""
        return self.stream_small_files and size < STREAM_BELOW and self._commands_take_files()

    def _streams_large(self, size: int) -> bool:
        """Whether a file of ``size`` bytes is written by ``cat`` on the server (its bytes
        on a command's stdin: no SFTP request and answer per 32 KiB)."""
        return self.stream_large_files and size >= STREAM_BELOW and self._commands_take_files()

    def _commands_take_files(self) -> bool:
        """The server hashes copies (the login runs commands) and its tar reads our archive."""
        connector: SSHConnector = self  # type: ignore[assignment]
        return bool(connector._server_hashes()) and self._tar_works()

    def _tar_works(self) -> bool:
        connector: SSHConnector = self  # type: ignore[assignment]
        transport = connector._transport
        probed = self._tar_probed
        if probed is not None and probed[0] is transport:
            return probed[1]
        with self._stream_lock:
            if self._tar_probed is None or self._tar_probed[0] is not transport:
                works, why = self._probe_tar(transport)
                self._tar_probed = (transport, works)
                if works:
                    connector._say_once(
                        "tar", "%s: small files go in batches through tar there", connector.where
                    )
                else:
                    connector._say_once(
                        "tar", "%s: small files go one by one over SFTP (%s)", connector.where, why
                    )
            return self._tar_probed[1]

    def _probe_tar(self, transport: Optional[paramiko.Transport]) -> Tuple[bool, str]:
        """Whether the server's ``tar`` reads a test archive of ours (listed to stdout: no
        file written), and why not."""
        connector: SSHConnector = self  # type: ignore[assignment]
        if transport is None or not transport.is_active():
            return False, "not connected"
        # The stream's own command, listing to stdout (-O) instead of writing: the shell, the
        # base folder and tar all checked at once.
        base = connector._base or connector.directory
        script = f"cd -- {shlex.quote(base)} && exec tar -x -o -O -f -"
        try:
            channel = _start_shell(transport, script, connector.timeout, connector.timeout)
        except Exception as exc:  # noqa: BLE001 - no channel for a command: SFTP then
            return False, f"no channel for a command: {exc}"
        try:
            channel.sendall(probe_archive())
            channel.shutdown_write()
            out = channel.makefile("rb").read()
            err = channel.makefile_stderr("rb").read()
            status = channel.recv_exit_status()
        except Exception as exc:  # noqa: BLE001 - any trouble: SFTP then
            return False, f"the tar probe failed: {exc}"
        finally:
            close_quietly(channel)
        if status == 0 and out == _PROBE_DATA:
            return True, ""
        said = err.decode("utf-8", "replace").strip().splitlines()
        first = said[0][:120] if said else f"exit status {status}"
        return False, first if first.startswith("tar") else f"tar: {first}"

    def _write_by_command(self, path: str, chunks: Iterable[bytes], size: int = -1) -> Optional[int]:
        """Write ``chunks`` to ``path`` (a temporary name) through ``cat`` on the server;
        the bytes written, or None when the server gives no channel for it (the caller
        writes over SFTP then). A failure raises what the SFTP path raises for the same
        cause; the command has ended by then, so the abort's removal of the file holds."""
        connector: SSHConnector = self  # type: ignore[assignment]
        folder = posixpath.dirname(path)
        quoted = shlex.quote(path)
        script = f"mkdir -p -- {shlex.quote(folder)} && exec cat > {quoted}"
        # Once cat is done, the same command hashes the file (what checksum() would ask for
        # next, in a command of its own) while it is forced to disk (what the commit's sync
        # would wait for): the two overlap, and a round trip is saved. The commit's sync then
        # finds the file on the disk already. Only a file of the ``size`` expected is: one cut
        # short (a copy abandoned: the source changed, a stop) ends the command at once, for
        # its removal. The command's status stays cat's: a hash or a sync that fails or is
        # left out here is asked again, and reported, by checksum() and the commit.
        algorithm = connector._hash_after_write
        tool = readback.HASH_COMMANDS.get(algorithm) if algorithm in connector._server_hashes() else None
        if tool is not None and size >= 0:
            sync = f"{{ {connector._sync_tool} -- {quoted} & }} 2>/dev/null; " if connector._sync_tool else ""
            whole = f'[ "$(wc -c < {quoted})" -eq {int(size)} ]'
            then = f"{{ {whole} && {{ {sync}{tool} -- {quoted} 2>/dev/null; wait; }}; true; }}"
            script = f"mkdir -p -- {shlex.quote(folder)} && cat > {quoted} && {then}"
        else:
            tool = None
        transport = connector._live_transport()
        try:
            channel = _start_shell(transport, script, connector.timeout, connector.io_timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not transport.is_active():
                raise ConnectionLost(f"connection to {connector.where} lost ({exc})") from None
            # A channel refused (MaxSessions, "Unable to open channel"): SFTP from now on.
            self.stream_large_files = False
            log.debug("no channel for cat on %s (%s): large files over SFTP", connector.where, exc)
            return None
        written = 0
        done = False
        ended: Optional[OSError] = None  # what cat said when it ended before the data did
        with connector._remote("writing", path):
            try:
                for chunk in chunks:  # errors of the source (a change, a stop) pass untouched
                    try:
                        channel.sendall(memoryview(chunk))  # sendall slices what is left: no copies
                    except (OSError, EOFError):
                        # cat ended (a full disk, a folder it may not write): its channel is
                        # closed under the data. What it said is the error, not the socket's.
                        ended = _ended_early(connector, transport, channel, path)
                        if ended is None:
                            raise  # the connection itself dropped
                        break
                    written += len(chunk)
                if ended is None:
                    channel.shutdown_write()
                    stdout = channel.makefile("rb").read()
                    stderr = channel.makefile_stderr("rb").read()
                    status = channel.recv_exit_status()
                done = True
            finally:
                if not done:
                    # Whatever stopped the copy: cat is told the data ended, and waited for
                    # (it may not have created the file yet), before the file is removed.
                    _end_quietly(channel, connector.timeout)
                close_quietly(channel)
        if ended is not None:
            raise ended
        if status != 0:
            raise _command_error(connector, path, status, stderr)
        if tool is not None:
            digest = readback.parse_sums(stdout).get(path)
            connector._local.hashed = (path, algorithm, digest) if digest else None
        return written

    def _stream_member(self, staging: str, data: bytes, mtime: int) -> Optional[TarStream]:
        """Write a file into the open tar stream (opened when needed); the stream, or None
        where none can be opened (the caller sends the file over SFTP)."""
        connector: SSHConnector = self  # type: ignore[assignment]
        connector._wire(staging)  # a name no bytes stand for: the same one-line error as SFTP's
        blob = member(safe_relpath(staging), data, mtime)
        for _ in range(2):  # a stream closed by a batch meanwhile: a new one
            stream = self._open_stream()
            if stream is None:
                return None
            if stream.add(blob):
                return stream
        return None

    def _open_stream(self) -> Optional[TarStream]:
        connector: SSHConnector = self  # type: ignore[assignment]
        with self._stream_lock:
            stream, transport = self._stream, connector._transport
            if stream is not None and not stream.closed and stream.transport is transport:
                return stream
            if transport is None or not transport.is_active():
                return None
            base = connector._base or connector.directory
            script = f"cd -- {shlex.quote(base)} && exec tar -x -o -f -"
            try:
                channel = _start_shell(transport, script, connector.timeout, connector.io_timeout)
            except Exception as exc:  # noqa: BLE001 - MaxSessions and such: SFTP from now on
                self.stream_small_files = False
                log.debug("cannot start tar on %s (%s): small files over SFTP", connector.where, exc)
                return None
            self._stream = TarStream(channel, transport, connector.where)
            return self._stream

    def _close_stream(self) -> None:
        """End the open stream (its files stay under temporary names: not committed)."""
        with self._stream_lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
