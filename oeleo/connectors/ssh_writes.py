"""Writing files over SFTP, and making sure of them, for the ssh connector: the pipelined
writes (a small file's data, time, read-back and close, with the creation of the next
file's temporary file, in one SSH message and one round trip), forcing a batch to disk
(``sync -f`` or ``sync FILE...`` on the server, or ``fsync@openssh.com``), hashing copies on
the server with ``md5sum`` and friends, and reading them back.

What stays true whatever fails: the bytes go to a hidden temporary name only (the file's own,
or a spare made ahead for it, which the engine's temporary name then stands for); a batch is
renamed into place only once forced to disk, and a ``sync`` that fails fails the batch.

paramiko's internals are used through ``sftp_wire`` only; without them (``sftp_wire.AVAILABLE``
false) every step here falls back to paramiko's public calls.
"""

from __future__ import annotations

import errno
import logging
import posixpath
import secrets
import threading
import time
from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import paramiko

from oeleo.connectors import readback, sftp_wire
from oeleo.connectors.base import TEMP_SUFFIX
from oeleo.connectors.remote import command_lines
from oeleo.connectors.session import close_quietly
from oeleo.connectors.ssh_endpoints import _bracket
from oeleo.connectors.ssh_session import READ_BACK_BELOW, SSHSession
from oeleo.errors import TransferError
from oeleo.names import printable

log = logging.getLogger("oeleo")

# What a sync that cannot take files says (an old BusyBox, a BSD): the files are forced to
# disk through SFTP instead. Any other failure of sync is one of the files'.
SYNC_UNSUPPORTED = ("invalid option", "unrecognized option", "illegal option", "usage", "extra operand")

# Longest command line sent to the server: a login shell gets it as one argument, and
# Linux limits one argument to 128 KiB.
MAX_COMMAND = 32 * 1024


class _PerThread(threading.local):
    # The last file this thread wrote: (path, size, its bytes as read back from the server
    # for a small file, else None).
    written: Optional[Tuple[str, int, Optional[bytes]]] = None
    # (path, mtime in whole seconds) that the last write already gave its file.
    mtime: Optional[Tuple[str, int]] = None
    # While commit_many commits a batch: the renames done ahead, {(from, to): the error or
    # None}, each taken by rename(); None otherwise (and {} until they are done).
    renames: Optional[Dict[Tuple[str, str], Optional[OSError]]] = None


class _Spare(NamedTuple):
    """A temporary file created ahead for a thread's next file (``_send_spare``)."""

    sftp: paramiko.SFTPClient  # the channel it was asked on
    folder: str
    path: str
    kept: sftp_wire.Kept  # the request, and its answer once read


class _Finish(NamedTuple):
    """The requests that follow a file's writes, sent before any answer is read."""

    setstat: Optional[int]  # its modification time, when the source's is known
    mtime: int  # that time, in whole seconds
    reads: List[Tuple[int, int]]  # a small file read back: (length asked, request)
    close: int


class SSHWrites(SSHSession):
    """Writes, syncs and server-side hashes, for ``SSHConnector`` (which calls ``_start_writes``)."""

    upload_tag: str
    # A batch of several files is forced to disk with one syncfs of their filesystem (``sync
    # -f``) rather than one fsync per file; False (a subclass) for ``sync FILE...``.
    sync_whole_filesystem = True

    def _start_writes(self) -> None:
        self._local = _PerThread()
        self._has_fsync = True
        self._has_posix_rename = True
        self._sync_tool = "sync"  # the command that forces files to disk; "" once it cannot run
        # The algorithm checksum() was last asked for: a large file written through cat is
        # hashed by the same command (ssh_streams), md5 until the engine asks for another.
        self._hash_after_write = "md5"
        self._syncfs_works = True  # ``sync -f`` (syncfs) is taken: one journal commit a batch
        # Temporary names written under another name (a spare's): {the name asked: the name
        # on the server}, until renamed into place or removed.
        self._written_as: Dict[str, str] = {}
        self._spares: Dict[threading.Thread, _Spare] = {}  # the next file's, by copying thread
        self._orphans: List[str] = []  # spares whose connection dropped: removed at close()

    def _on_server(self, path: str) -> str:
        """Where a temporary file the engine names ``path`` is on the server."""
        return self._written_as.get(path, path)

    # -- writing one file -------------------------------------------------------------
    def _open_for_writing(self, sftp: paramiko.SFTPClient, path: str) -> Tuple[paramiko.SFTPFile, str]:
        """``path`` (a temporary name) open for writing, and the name it has on the server:
        this thread's spare when it waits in the same folder (created with the previous
        file's last requests: no round trip now), else ``path`` itself."""
        spare = self._spares.pop(threading.current_thread(), None)
        if spare is not None and spare.sftp is sftp and spare.folder == posixpath.dirname(path):
            try:
                with self._remote("writing", path, sftp):
                    handle = sftp_wire.take_file(sftp, spare.kept)
                self._written_as[path] = spare.path
                return handle, spare.path
            except OSError as exc:  # the folder went away meanwhile, or the server refused it
                log.debug("cannot use the spare file %s on %s: %s", printable(spare.path), self.where, exc)
        elif spare is not None:
            self._drop_spare(spare)
        try:
            with self._remote("writing", path, sftp):
                return sftp.open(self._wire(path), "w+", bufsize=0), path
        except FileNotFoundError:
            self._makedirs(sftp, posixpath.dirname(path))
            with self._remote("writing", path, sftp):
                return sftp.open(self._wire(path), "w+", bufsize=0), path

    def _send_spare(self, sftp: paramiko.SFTPClient, folder: str) -> None:
        """Create the next file's temporary file in ``folder`` now, with this file's last
        requests (its answer is taken when that file comes). A hidden name of oeleo's, with
        this origin's tag: a run killed meanwhile leaves it for the next run to remove."""
        tag = f".{self.upload_tag}" if self.upload_tag else ""
        path = posixpath.join(folder, f".oeleo-next-{secrets.token_hex(6)}{tag}{TEMP_SUFFIX}")
        kept = sftp_wire.send_create(sftp, self._wire(path))
        self._spares[threading.current_thread()] = _Spare(sftp, folder, path, kept)

    def _drop_spare(self, spare: _Spare, wait: bool = False) -> None:
        """Close and remove a spare file that will not be used; ``wait``: for the answers too
        (before the connection closes), else they are read, and dropped, with later ones."""
        if spare.sftp.sock.closed:  # the connection dropped since: removed over the next one
            self._orphans.append(spare.path)
            return
        try:
            with self._channels.use(spare.sftp):
                handle = sftp_wire.take_file(spare.sftp, spare.kept)
                close = sftp_wire.send_close_of(handle)
                remove = sftp_wire.send_remove(spare.sftp, self._wire(spare.path))
                if wait:
                    sftp_wire.read_answer(spare.sftp, close)
                    sftp_wire.read_answer(spare.sftp, remove)
        except Exception as exc:  # noqa: BLE001 - a spare left behind is removed by the next run
            log.debug("cannot remove the spare file %s on %s: %s", printable(spare.path), self.where, exc)

    def _drop_spares(self) -> None:
        """Before the connection closes: remove every thread's spare file, and those a dropped
        connection left (a killed run's are removed by the next run: they carry its tag)."""
        spares, self._spares = list(self._spares.values()), {}
        for spare in spares:
            self._drop_spare(spare, wait=True)
        orphans, self._orphans = self._orphans, []
        if not orphans or not self._alive():
            return
        for path in orphans:
            try:
                with self._channel() as sftp, self._remote("removing", path, sftp):
                    sftp.remove(self._wire(path))
            except Exception as exc:  # noqa: BLE001 - left for the next run that did not finish
                log.debug("cannot remove the spare file %s on %s: %s", printable(path), self.where, exc)

    def _write(self, sftp: paramiko.SFTPClient, path: str, chunks: Iterable[bytes], size: int) -> None:
        handle, stored = self._open_for_writing(sftp, path)
        # The source's time goes out with the writes when the chunks say it (base.SourceReader
        # does): set_mtime() then has nothing left to ask the server.
        mtime_ns = getattr(chunks, "mtime_ns", None)
        done = False
        written = 0
        # A small file's requests (its writes, time, read-back and close) go out together,
        # as one SSH message: paramiko's cost is per message, not per byte.
        cork: ContextManager[Any] = (
            sftp_wire.Corked(sftp) if sftp_wire.AVAILABLE and size < READ_BACK_BELOW else nullcontext()
        )
        try:
            handle.set_pipelined(True)
            handle.MAX_REQUEST_SIZE = self._request_size
            last = b""  # without paramiko's internals, the last chunk: _finish_writes_publicly writes it
            with cork:
                for chunk in chunks:  # errors of the source (a change, a stop) pass untouched
                    if chunk and not sftp_wire.AVAILABLE:
                        chunk, last = last, chunk
                    with self._remote("writing", path, sftp):
                        handle.write(chunk)
                    written += len(chunk)
                written += len(last)
                read_back = written if written < READ_BACK_BELOW else None
                with self._remote("writing", path, sftp):
                    if sftp_wire.AVAILABLE:
                        sent = self._send_finish(sftp, handle, read_back, mtime_ns)
                        if isinstance(cork, sftp_wire.Corked):
                            self._send_spare(sftp, posixpath.dirname(path))
                            cork.send()
            with self._remote("writing", path, sftp):
                if sftp_wire.AVAILABLE:
                    data = self._finish_writes(sftp, handle, sent, stored)
                else:
                    data = self._finish_writes_publicly(handle, last, read_back, stored, mtime_ns)
                    # Nothing can fail at the close that the answers above did not report: its
                    # answer is read (and dropped) with the next request instead of waited for.
                    sftp_wire.close_without_waiting(handle)
            done = True
        finally:
            if not done:
                close_quietly(handle)
        self._local.written = (stored, written, data)

    def _send_finish(
        self,
        sftp: paramiko.SFTPClient,
        handle: paramiko.SFTPFile,
        read_back: Optional[int],
        mtime_ns: Optional[int],
    ) -> _Finish:
        """After the writes, without waiting: set the file's time, read a small file back
        through the same handle, and close it."""
        setstat, mtime = None, 0
        if isinstance(mtime_ns, int):
            mtime = mtime_ns // 1_000_000_000
            setstat = sftp_wire.send_set_times(sftp, handle, int(time.time()), mtime)
        reads: List[Tuple[int, int]] = []  # (length asked, request)
        if read_back is not None and self._whole_reads and read_back < self._request_size:
            # OpenSSH answers a read of a regular file with all the bytes there are, so
            # asking for one byte more than was written also proves nothing follows.
            reads.append((read_back, sftp_wire.send_read(sftp, handle, 0, read_back + 1)))
        elif read_back is not None:
            for offset in range(0, read_back, self._request_size):
                length = min(self._request_size, read_back - offset)
                reads.append((length, sftp_wire.send_read(sftp, handle, offset, length)))
            # One byte more must be the end of the file: nothing else wrote to it.
            reads.append((0, sftp_wire.send_read(sftp, handle, read_back, 1)))
        return _Finish(setstat, mtime, reads, sftp_wire.send_close_of(handle))

    def _finish_writes(
        self, sftp: paramiko.SFTPClient, handle: paramiko.SFTPFile, sent: _Finish, path: str
    ) -> Optional[bytes]:
        """Read the answer of every pipelined write, of the time, of a small file's read-back
        and of the close; returns what was read back (None if nothing was).

        Everything was sent before any answer is awaited: the whole file costs one round
        trip. paramiko's own calls would drop the answer of a pipelined write (and with it
        a failed write: a full disk) when another answer is awaited first, so each answer is
        read here, in the order the requests went out (through sftp_wire, which holds the
        paramiko internals this takes). A failed close fails the write too (a network
        filesystem may report a lost write only there).
        """
        sftp_wire.wait_for_writes(handle)
        if sent.setstat is not None:
            try:
                sftp_wire.read_answer(sftp, sent.setstat)
                self._local.mtime = (path, sent.mtime)
            except OSError as exc:
                log.debug("cannot set the time of %s on %s: %s", path, self.where, exc)
        pieces, whole = [], True
        for length, request in sent.reads:
            piece = sftp_wire.read_data(sftp, request)
            pieces.append(piece)
            whole = whole and len(piece) == length
        sftp_wire.read_answer(sftp, sent.close)
        if not sent.reads:
            return None
        # A short answer (allowed by SFTP) or more bytes than written: checksum() reads
        # the file again the ordinary way, and the verification decides.
        return b"".join(pieces) if whole else None

    def _finish_writes_publicly(
        self,
        handle: paramiko.SFTPFile,
        last: bytes,
        read_back: Optional[int],
        path: str,
        mtime_ns: Optional[int],
    ) -> Optional[bytes]:
        """``_finish_writes`` through paramiko's public calls, when its internals are missing
        (sftp_wire.AVAILABLE): a round trip each for the last chunk, the time and the read-back.

        The last chunk goes out unpipelined: paramiko then reads the answer of every
        pipelined write first, in order, and raises the first that failed.
        """
        handle.set_pipelined(False)
        handle.write(last)
        if isinstance(mtime_ns, int):
            mtime = mtime_ns // 1_000_000_000
            try:
                handle.utime((int(time.time()), mtime))
                self._local.mtime = (path, mtime)
            except OSError as exc:
                log.debug("cannot set the time of %s on %s: %s", path, self.where, exc)
        if read_back is None:
            return None
        handle.seek(0)
        data = handle.read(read_back + 1)  # one byte more must be the end of the file
        return data if len(data) == read_back else None

    # -- forcing to disk ----------------------------------------------------------------
    def _force_to_disk(self, paths: List[str]) -> None:
        """Force a batch of written files to the server's disk; a failure raises (the batch
        is then not committed).

        Where the login runs commands: ``sync -f FOLDER...`` for several files, else ``sync
        FILE...`` (one command for the batch, in as few command lines as it takes; see
        ``_sync_by_command``). Else
        ``fsync@openssh.com`` through SFTP: an open, an fsync and a close per file, the
        requests of up to 64 files sent before any answer is read. The command costs the
        client a few messages for the whole batch where SFTP costs six per file, and
        paramiko's cost is per message.
        """
        if self._sync_tool and self._server_hashes() and self._sync_by_command(paths):
            return
        if not self._has_fsync:
            return
        if not sftp_wire.AVAILABLE:  # no fsync@openssh.com without paramiko's internals
            self._has_fsync = False
            self._say_once(
                "fsync",
                "%s cannot force files to disk: paramiko %s lacks %s, and commands cannot run "
                "there; a server crash may lose recent copies",
                self.where,
                paramiko.__version__,
                ", ".join(sftp_wire.MISSING),
                level=logging.WARNING,
            )
            return
        with self._channel() as sftp, self._remote("forcing to disk", paths[0], sftp):
            for start in range(0, len(paths), 64):
                self._fsync_files(sftp, paths[start : start + 64])
                if not self._has_fsync:
                    return

    def _fsync_files(self, sftp: paramiko.SFTPClient, paths: List[str]) -> None:
        """``fsync@openssh.com`` for up to 64 files: open all, then fsync and close all, every
        answer read (so no handle is left open); the first failure is raised."""
        failed: List[Tuple[str, OSError]] = []
        with sftp_wire.Corked(sftp) as cork:
            opened = [(path, sftp_wire.send_open_for_reading(sftp, self._wire(path))) for path in paths]
            cork.send()
        handles = []
        for path, request in opened:  # every answer is read, so no handle is left open
            try:
                handles.append((path, sftp_wire.read_handle(sftp, request)))
            except OSError as exc:
                failed.append((path, exc))
        with sftp_wire.Corked(sftp) as cork:
            synced = [
                (path, sftp_wire.send_fsync(sftp, handle), sftp_wire.send_close(sftp, handle))
                for path, handle in handles
            ]
            cork.send()
        for path, fsync, close in synced:
            try:
                sftp_wire.read_answer(sftp, fsync)
            except OSError as exc:
                failed.append((path, exc))
            try:
                sftp_wire.read_answer(sftp, close)
            except OSError:
                pass
        if not failed:
            return
        path, error = failed[0]
        if "unsupported" in str(error).lower():
            self._has_fsync = False
            self._say_once(
                "fsync",
                "%s cannot force files to disk (no fsync@openssh.com): a server crash may lose recent copies",
                self.where,
                level=logging.WARNING,
            )
            return
        raise self._os_error(error, "forcing to disk", path)

    def _sync_by_command(self, paths: List[str]) -> bool:
        """Force a batch to the server's disk with a command: True once every file is on its
        disk, False when the server cannot run one (no ``sync``, a ``sync`` that takes no file,
        no channel for a command: SFTP forces the files instead). A ``sync`` that fails for a
        file (an I/O error, a file gone) raises ``OSError``.

        Several files: ``sync -f FOLDER...`` (Linux ``syncfs``, once per filesystem: one
        journal commit for the batch, where ``sync FILE...`` commits it once per file: 0.6 s
        against 0.8 s for 1,000 small files here), as the local connector does; a ``sync``
        without ``-f`` (coreutils before 8.24, old BusyBox) gets ``sync FILE...``.
        """
        if self.sync_whole_filesystem and self._syncfs_works and len(paths) > 1:
            folders = sorted({posixpath.dirname(path) for path in paths})
            done = self._run_sync("sync -f", folders)
            if done is not None:
                return done
            self._syncfs_works = False
        return bool(self._run_sync(self._sync_tool, paths))

    def _run_sync(self, tool: str, arguments: List[str]) -> Optional[bool]:
        """``tool ARGUMENT...`` (as few command lines as it takes): True once it succeeded,
        False when it cannot run, None when it refuses an option (``sync -f``)."""
        for command, _ in command_lines(tool, arguments, MAX_COMMAND):
            try:
                status, _, err = self._exec(command)
            except TransferError as exc:  # MaxSessions: fsync@openssh.com, this batch
                log.debug("cannot run sync on %s (%s): forcing files to disk through SFTP", self.where, exc)
                return False
            if status == 0:
                continue
            reason = err.decode("utf-8", "replace").strip()
            if status in (126, 127) or any(word in reason.lower() for word in SYNC_UNSUPPORTED):
                if tool != self._sync_tool:
                    log.debug("%s: %r is refused (%s)", self.where, tool, reason[:200])
                    return None
                self._say_once(
                    "sync",
                    "%s cannot run %r (%s): files are forced to disk through SFTP instead",
                    self.where,
                    self._sync_tool,
                    reason[:200] or f"exit status {status}",
                )
                self._sync_tool = ""
                return False
            first = reason.splitlines()[0] if reason else f"exit status {status}"
            raise OSError(errno.EIO, f"forcing to disk failed on {self.where}: {first[:200]}")
        return True

    def _sync_on_server(self, paths: Sequence[str], key: str, warning: str) -> None:
        """``sync PATH...`` on the server (as few command lines as it takes); a failure is
        said once (``warning`` takes the server and the reason), and ends the syncing."""
        for command, _ in command_lines("sync", paths, MAX_COMMAND):
            try:
                status, _, err = self._exec(command)
            except TransferError as exc:
                status, err = 1, str(exc).encode()
            if status != 0:
                reason = err.decode("utf-8", "replace").strip()[:200]
                self._say_once(key, warning, self.where, reason, level=logging.WARNING)
                return

    # -- verifying ----------------------------------------------------------------------
    def _hash_on_server(self, paths: List[str], algorithm: str) -> Dict[str, str]:
        """``md5sum a b c ...`` in as few commands as the command-line limit allows; a file
        that cannot be hashed is left out, except when it is the only one asked for: then
        the error says why (missing, unreadable)."""
        digests: Dict[str, str] = {}
        for command, batch in command_lines(readback.HASH_COMMANDS[algorithm], paths, MAX_COMMAND):
            _, out, err = self._exec(command)
            digests.update(readback.parse_sums(out))
            if err and len(paths) == 1 and batch[0] not in digests:
                # One file: say why it has no checksum.
                error = readback.sum_error(err, f"{_bracket(self.host)}:{printable(batch[0])}")
                if error is not None:
                    raise error
        return {p: digests[p] for p in paths if p in digests}

    def _read_back(self, path: str, algorithm: str, size: Optional[int] = None) -> str:
        """Hash a stored file by reading it back through SFTP (pipelined reads)."""
        return readback.hash_read_back(lambda: self._reading(path, size), algorithm)

    @contextmanager
    def _reading(self, path: str, size: Optional[int]) -> Iterator[paramiko.SFTPFile]:
        """A stored file open for reading, ``size`` bytes (asked when None) prefetched in
        requests as large as the server takes; what paramiko raises meanwhile is oeleo's."""
        with self._channel() as sftp, self._remote("reading", path, sftp):
            handle = sftp.open(self._wire(path), "rb")
            try:
                handle.MAX_REQUEST_SIZE = self._request_size
                if size is None:
                    size = handle.stat().st_size or 0
                if size > self._request_size:
                    handle.prefetch(size)
                yield handle
            finally:
                sftp_wire.close_without_waiting(handle)  # a read-only close has nothing to report
