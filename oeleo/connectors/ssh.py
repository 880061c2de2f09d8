"""A folder on a server reached over SSH: the SFTP connector (paramiko).

The usual deployment: a Windows instrument PC pushes to a Linux data server. One SSH
connection serves the whole run; every copying thread gets its own SFTP channel on it.
A file is written under its temporary name. Where the login runs commands, small files go
through one ``tar -x`` per batch and large ones through ``cat`` on the server, verified there
before the renames (``ssh_streams``). Elsewhere they go over SFTP with pipelined requests: for
a small file its data, its time, reading it back, its close and the creation of the next
file's temporary file go out as one SSH message, and cost one round trip (paramiko's cost is
per message, so few and full ones). A temporary file made ahead (a "spare", ``.oeleo-next-*``)
is renamed into place like any other; one not used is removed when the connection closes. The
worker's batches are then forced to disk (one ``sync -f`` on the server where the login runs
commands, ``sync FILE...`` where ``-f`` is refused, else ``fsync@openssh.com``) and renamed
into place all at once (``posix-rename@openssh.com``, every answer read, a failed rename
failing its file alone).

Copies are verified on the server with ``md5sum``/``sha256sum`` (one command for many files
when comparing the two sides) when the login runs commands, else by reading the file back
through SFTP; small files are always read back, which is quicker than starting a command.
Unknown host keys are refused unless the user says to trust them. paramiko is imported here
only, so the rest of oeleo starts without it.

Reaching the server works as ``ssh`` does: ``[user@]host[:port]``, an alias of
``~/.ssh/config`` (HostName, Port, User, IdentityFile, ProxyJump through jump hosts), and,
when no key and no password is set, the SSH agent's keys and then ``~/.ssh/id_*``. Paths go
to the server as bytes, so a name that is not UTF-8 keeps its bytes there.

This module holds the connector's contract methods; the parts behind them are modules of
their own: ``ssh_endpoints`` (where the server is), ``ssh_login`` (host keys, logging in),
``ssh_session`` (the connection, its channels and errors), ``ssh_writes`` (pipelined writes,
forcing to disk, hashing on the server) and ``sftp_wire`` (paramiko's internals); the parts
any store can use are ``session``, ``clients``, ``readback`` and ``remote``.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import secrets
import stat as stat_module
import time
from dataclasses import replace
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from oeleo.connectors.paramiko_import import invoke_left_out

try:
    with invoke_left_out():
        import paramiko
except ImportError as exc:  # the message the command shows for OELEO_CONNECTOR=ssh
    raise ImportError('the ssh connector needs paramiko: pip install "oeleo[ssh]"') from exc

from oeleo import compat
from oeleo.connectors import readback, sftp_wire
from oeleo.connectors.base import (
    TEMP_SUFFIX,
    Failed,
    Features,
    FileEntry,
    FolderConnector,
    FolderUpload,
    PutResult,
    Upload,
    has_extension,
    matches,
    safe_relpath,
)
from oeleo.connectors.readback import HASH_COMMANDS
from oeleo.connectors.ssh_endpoints import load_ssh_config, parse_port, resolve_endpoints
from oeleo.connectors.ssh_streams import SSHStreams, StreamedUpload, settle
from oeleo.connectors.ssh_writes import SSHWrites
from oeleo.errors import ConfigError, TransferError
from oeleo.names import printable

if TYPE_CHECKING:
    from oeleo.settings import Settings

log = logging.getLogger("oeleo")
# paramiko logs failures (with tracebacks) that oeleo reports itself in one line; without a
# handler of its own, Python would print them to stderr. An application that configures
# logging still gets them.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

# A request answered more slowly than this is a link with latency (a LAN answers in under a
# millisecond): small files sent over SFTP, each waiting for its answers, go several at a time.
SLOW_ROUND_TRIP = 0.002
SLOW_LINK_UPLOADS = 4  # SFTP channels copying at once then (OpenSSH allows 10 sessions)


class SSHConnector(SSHStreams, SSHWrites, FolderConnector):
    """Files in a folder on an SSH server, written through SFTP.

    ``SSHConnector(host="data.lab.org", directory="/srv/data", username="oeleo",
    key_filename="C:/Users/me/.ssh/id_ed25519")``; ``host`` may also be ``oeleo@data:2222``
    or an alias of the SSH config (``ssh_config``, default ``~/.ssh/config``). Arguments not
    given are read from the settings (``OELEO_EXTERNAL_HOST``, ``OELEO_BASE_DIR_TO``,
    ``OELEO_USERNAME``, ...), so a script written for oeleo 0.7
    (``SSHConnector(directory=...)``) keeps working.
    """

    name = "ssh"
    # What the server computes itself when the login has a shell; once probed, the
    # instance says what this server actually offers (empty: copies are read back). One SFTP
    # channel per copying thread; a temporary name renamed into place; fsync per batch.
    features = Features(
        hashes=frozenset(HASH_COMMANDS),
        keeps_mtime=True,
        batch_sync=True,
        max_uploads=2,
        confirms_commit=True,
    )

    timeout: float = 15.0  # seconds to connect, read the banner and log in
    io_timeout: float = 300.0  # seconds without an answer before an SFTP request gives up

    def __init__(
        self,
        host: Optional[str] = None,
        directory: Union[str, os.PathLike, None] = None,
        username: Optional[str] = None,
        port: Optional[int] = None,
        password: Optional[str] = None,
        key_filename: Union[str, os.PathLike, None] = None,
        passphrase: Optional[str] = None,
        known_hosts: Union[str, os.PathLike, None] = None,
        accept_new_host_keys: Optional[bool] = None,
        timeout: Optional[float] = None,
        include_subdirs: bool = False,
        ssh_config: Union[str, os.PathLike, None] = None,
        **kwargs: Any,  # oeleo 0.7 arguments without a meaning here (is_posix, use_password)
    ) -> None:
        if host is None or directory is None or username is None:
            # oeleo 0.7: SSHConnector(directory=...) read the rest from the settings itself.
            given = compat.ssh_arguments(
                {
                    "host": host,
                    "directory": directory,
                    "username": username,
                    "port": port,
                    "password": password,
                    "passphrase": passphrase,
                    "key_filename": key_filename,
                    "known_hosts": known_hosts,
                    "ssh_config": ssh_config,
                    "accept_new_host_keys": accept_new_host_keys,
                }
            )
            host, directory, username, port = (given[k] for k in ("host", "directory", "username", "port"))
            password, passphrase = given["password"], given["passphrase"]
            key_filename, known_hosts = given["key_filename"], given["known_hosts"]
            ssh_config, accept_new_host_keys = given["ssh_config"], given["accept_new_host_keys"]
        if not host:
            raise ConfigError("OELEO_EXTERNAL_HOST is not set: the SSH server to copy to")
        if directory is None or not str(directory).strip():
            raise ConfigError(
                "OELEO_BASE_DIR_TO is not set: the folder on the SSH server to copy to (or --to)"
            )
        config, self.ssh_config_file = load_ssh_config(ssh_config)
        self.endpoint, self.jumps = resolve_endpoints(
            host,
            username or None,
            parse_port(port, "OELEO_EXTERNAL_PORT") if port is not None else None,
            config,
            self.ssh_config_file,
        )
        self.host = self.endpoint.host
        self.port = self.endpoint.port
        self.username = self.endpoint.username
        self.directory = str(directory)
        self.key_filename = Path(key_filename).expanduser() if key_filename else None
        self.known_hosts = Path(known_hosts).expanduser() if known_hosts else None
        self.accept_new_host_keys = bool(accept_new_host_keys)
        self.include_subdirs = include_subdirs
        if timeout is not None:
            self.timeout = timeout
        self._password = password or None
        self._passphrase = passphrase or None
        self._key: Optional[paramiko.PKey] = None
        self._file_keys: Dict[Path, Tuple[Optional[paramiko.PKey], str]] = {}  # automatic keys read
        self._start_session()
        self._start_writes()
        self._start_streams()

    @classmethod
    def from_settings(cls, settings: Settings, role: str = "external") -> SSHConnector:
        if role != "external":
            raise ConfigError("the ssh connector is a destination; the source is always a local folder")
        connector = cls(  # empty strings, not None: a missing setting is reported, not looked up again
            host=settings.external_host or "",
            directory=settings.base_dir_to or "",
            username=settings.username or "",
            # Only a port the user set: the default (22) must not contradict OELEO_EXTERNAL_HOST.
            port=settings.external_port if "external_port" in settings.model_fields_set else None,
            password=settings.password.get_secret_value() if settings.password else None,
            key_filename=settings.key_filename,
            passphrase=settings.key_passphrase.get_secret_value() if settings.key_passphrase else None,
            known_hosts=settings.known_hosts,
            accept_new_host_keys=settings.accept_new_host_keys,
            ssh_config=settings.ssh_config,
        )
        connector._hash_after_write = settings.checksum  # the books' algorithm, from the first file
        return connector

    # -- names ------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"SSHConnector({self.where}:{self.directory})"

    def __str__(self) -> str:
        return f"{self.where}:{self.directory}"

    def _path(self, relpath: str) -> str:
        """The server's absolute path of a relative name (never outside the base folder):
        for a temporary name written into a spare file, the spare's."""
        return self._on_server(self._asked(relpath))

    def _asked(self, relpath: str) -> str:
        """The absolute path of a relative name, as the engine names it."""
        return posixpath.join(self._base or self.directory, safe_relpath(relpath))

    def external_name(self, relpath: str) -> str:
        return self._asked(relpath)

    # -- life cycle -------------------------------------------------------------------
    def connect(self, **kwargs: Any) -> None:
        """Open the SSH connection and an SFTP channel; does nothing when already open."""
        self._session.connect()

    def reconnect(self, **kwargs: Any) -> None:
        """After a dropped connection. Several copying threads call this at once: the first
        one opens a new connection, the others find it open and use it."""
        self._session.reconnect()

    def close(self) -> None:
        self._close_stream()
        self._drop_spares()
        self._session.close()

    # -- the base folder --------------------------------------------------------------
    def prepare(self) -> None:
        """Create the base folder on the server if needed and check it can be written. Over
        a link with latency where files go over SFTP (a login that runs no commands), each
        small file waits for its answers: the engine is told so (``waits_per_file``)."""
        with self._channel() as sftp:
            round_trip = self._prepare(sftp, self._base or self.directory)
        if round_trip >= SLOW_ROUND_TRIP and not self._commands_take_files():
            uploads = max(self.features.max_uploads, SLOW_LINK_UPLOADS)
            self.features = replace(self.features, waits_per_file=True, max_uploads=uploads)
            log.debug(
                "%s answers in %.1f ms, and files go over SFTP: small files %d at a time",
                self.where,
                round_trip * 1000,
                self.features.max_uploads,
            )

    def check_base(self) -> bool:
        """Whether the base folder is there (``oeleo check``); one that cannot be read, or
        is not a folder, is a ``ConfigError``."""
        base = self._base or self.directory
        with self._channel() as sftp:
            try:
                attrs = self._attrs(sftp, base)
            except PermissionError:
                raise ConfigError(
                    f"remote folder {base} on {self.where} cannot be read: permission denied"
                ) from None
        if attrs is None:
            return False
        if not stat_module.S_ISDIR(attrs.st_mode or 0):
            raise ConfigError(f"remote {base} on {self.where} is not a folder")
        return True

    def _prepare(self, sftp: paramiko.SFTPClient, base: str) -> float:
        """Make sure ``base`` is a folder oeleo can write to; the seconds one request and
        its answer took (the probe's removal)."""
        missing = f"remote folder {base} on {self.where} does not exist and cannot be created"
        try:
            self._makedirs(sftp, base)
        except PermissionError:
            raise ConfigError(f"{missing}: permission denied") from None
        except FileExistsError:
            raise ConfigError(f"remote {base} on {self.where} is not a folder") from None
        except OSError as exc:
            raise ConfigError(f"{missing}: {exc.strerror or exc}") from None
        probe = posixpath.join(base, f".oeleo-write-test-{secrets.token_hex(4)}")
        try:
            with self._remote("writing", probe, sftp):
                sftp.open(self._wire(probe), "wb").close()
                started = time.monotonic()
                sftp.remove(self._wire(probe))
                return time.monotonic() - started
        except OSError as exc:
            reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
            raise ConfigError(f"remote folder {base} on {self.where} is not writable: {reason}") from None

    # -- read side --------------------------------------------------------------------
    def list_files(
        self,
        extensions: Sequence[str] = (),
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        recursive: bool = True,
    ) -> Iterator[FileEntry]:
        """Files under the base folder, in relative-path order; hidden ones (and oeleo's
        temporary files) skipped."""
        stack: List[Iterator[Tuple[str, paramiko.SFTPAttributes, bool]]] = [iter(self._scan(""))]
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                continue
            relpath, attrs, is_dir = item
            if is_dir:
                if recursive and not (exclude and matches(relpath, exclude)):
                    stack.append(iter(self._scan(relpath)))
                continue
            name = posixpath.basename(relpath)
            if not has_extension(name, extensions):
                continue
            if include and not matches(relpath, include):
                continue
            if exclude and matches(relpath, exclude):
                continue
            yield FileEntry(relpath, attrs.st_size or 0, int(attrs.st_mtime or 0) * 1_000_000_000)

    def _scan(self, prefix: str) -> List[Tuple[str, paramiko.SFTPAttributes, bool]]:
        """One folder's visible files and folders, sorted as LocalConnector sorts them."""
        base = self._base or self.directory
        folder = posixpath.join(base, prefix) if prefix else base
        try:
            with self._channel() as sftp, self._remote("listing", folder, sftp):
                entries = self._listdir(sftp, folder)
        except FileNotFoundError:
            if prefix:
                return []
            raise ConfigError(f"remote folder {base} on {self.where} does not exist") from None
        except PermissionError:
            if prefix:
                return []
            raise ConfigError(f"remote folder {base} on {self.where} is not readable") from None
        found = []
        for attrs in entries:
            if attrs.filename.startswith("."):
                continue
            mode = attrs.st_mode or 0
            is_dir = stat_module.S_ISDIR(mode)
            if not (is_dir or stat_module.S_ISREG(mode)):
                continue  # symlinks, devices, sockets
            relpath = f"{prefix}/{attrs.filename}" if prefix else attrs.filename
            found.append((relpath + "/" if is_dir else relpath, relpath, attrs, is_dir))
        found.sort(key=lambda item: item[0])
        return [(relpath, attrs, is_dir) for _, relpath, attrs, is_dir in found]

    def _listdir(self, sftp: paramiko.SFTPClient, folder: str) -> List[paramiko.SFTPAttributes]:
        """``listdir_attr`` that keeps names which are not UTF-8: each ``filename`` is the
        server's bytes decoded with surrogate escapes, the form ``_wire`` turns back into
        the same bytes."""
        return sftp_wire.listdir(sftp, self._wire(folder))

    def list_temporaries(self) -> Iterator[str]:
        """oeleo's own temporary files under the base folder (``run-1/.a.csv.oeleo-part``),
        as relative POSIX paths, in every subfolder a listing shows (hidden ones are not
        entered, as ``list_files`` does not); a folder that cannot be listed is skipped.
        What a killed run left behind, for the worker to remove."""
        self._sftp()  # connects if need be: the base folder is known from then on
        base = self._base or self.directory
        todo = [""]
        while todo:
            prefix = todo.pop()
            folder = posixpath.join(base, prefix) if prefix else base
            try:
                with self._channel() as sftp, self._remote("listing", folder, sftp):
                    entries = self._listdir(sftp, folder)
            except OSError as exc:
                log.debug("cannot look for temporary files in %s: %s", printable(folder), exc)
                continue
            for attrs in sorted(entries, key=lambda a: a.filename):
                name, mode = attrs.filename, attrs.st_mode or 0
                relpath = f"{prefix}/{name}" if prefix else name
                if stat_module.S_ISDIR(mode) and not name.startswith("."):
                    todo.append(relpath)
                elif stat_module.S_ISREG(mode) and name.startswith(".") and name.endswith(TEMP_SUFFIX):
                    yield relpath

    def stat(self, relpath: str) -> Optional[FileEntry]:
        path = self._path(relpath)
        with self._channel() as sftp:
            attrs = self._attrs(sftp, path)
        if attrs is None or not stat_module.S_ISREG(attrs.st_mode or 0):
            return None
        return FileEntry(safe_relpath(relpath), attrs.st_size or 0, int(attrs.st_mtime or 0) * 1_000_000_000)

    def checksum(self, relpath: str, algorithm: str = "md5") -> str:
        """Hex digest of a stored file: ``md5sum``-like on the server, or read back."""
        path = self._path(relpath)
        written, self._local.written = self._local.written, None
        hashed, self._local.hashed = getattr(self._local, "hashed", None), None
        self._hash_after_write = algorithm  # the large files written next are hashed so there
        if hashed is not None and hashed[0] == path and hashed[1] == algorithm:
            return hashed[2]  # by the command that wrote it, once it was written
        size = None
        if written is not None and written[0] == path:
            size, data = written[1], written[2]
            if data is not None:  # read back from the server right after it was written
                return readback.hash_bytes(data, algorithm)
        if algorithm in self._server_hashes():
            try:
                digest = self._hash_on_server([path], algorithm).get(path)
            except TransferError as exc:
                digest = None
                self._say_once("exec", "%s; reading copies back instead", exc, level=logging.WARNING)
            if digest is not None:
                return digest
        return self._read_back(path, algorithm, size)

    def checksums(self, relpaths: Sequence[str], algorithm: str = "md5") -> Dict[str, str]:
        """Hex digests of many stored files with one command per 32 KiB of names (for
        ``check``); files that cannot be hashed are left out."""
        if algorithm not in self._server_hashes():
            return self._read_back_many(relpaths, algorithm)
        paths = {self._path(relpath): relpath for relpath in relpaths}
        try:
            found = self._hash_on_server(list(paths), algorithm)
        except TransferError as exc:
            self._say_once("exec", "%s; reading copies back instead", exc, level=logging.WARNING)
            return self._read_back_many(relpaths, algorithm)
        except OSError:  # the only file asked for cannot be hashed (missing, unreadable): left out
            return {}
        return {paths[path]: digest for path, digest in found.items()}

    def _read_back_many(self, relpaths: Sequence[str], algorithm: str) -> Dict[str, str]:
        """Each file read back; one that cannot be is left out (check() asks for it alone)."""
        return readback.read_back_each(
            relpaths, lambda relpath: self._read_back(self._path(relpath), algorithm)
        )

    # -- write side -------------------------------------------------------------------
    def open_upload(self, relpath: str, size: int, mtime_ns: int) -> Upload:
        """A small file goes into the batch's tar stream where the server can take it
        (``ssh_streams``), any other over SFTP under its temporary name."""
        if self._streams_small(size):
            return StreamedUpload(self, relpath, size, mtime_ns)
        return super().open_upload(relpath, size, mtime_ns)

    def write_stream(self, relpath: str, chunks: Iterable[bytes], size: int) -> None:
        path = self._asked(relpath)
        self._written_as.pop(path, None)  # an earlier attempt's, removed by its abort
        self._local.written = self._local.mtime = self._local.hashed = None
        if self._streams_large(size):  # its bytes on the stdin of cat there (ssh_streams)
            written = self._write_by_command(path, chunks, size)
            if written is not None:
                self._local.written = (path, written, None)
                return
        with self._channel() as sftp:
            self._write(sftp, path, chunks, size)

    def sync_data(self, staged: Sequence[Any]) -> None:
        """Force a batch of staged files to the server's disk: one ``sync -f`` (or ``sync
        FILE...``) where the login runs commands, else ``fsync@openssh.com`` (see
        ``_force_to_disk``). Within
        ``commit_many``, the batch's renames then go out at once."""
        if staged:
            self._force_to_disk([self._path(item.staging or item.relpath) for item in staged])
        if self._local.renames == {}:  # asked for by commit_many, and not done yet
            self._rename_ahead(staged)

    def commit_many(self, staged: Sequence[PutResult]) -> List[Union[PutResult, Failed]]:
        """``Connector.commit_many`` (synced, each file committed or failed alone, the renames
        synced), with the renames of the batch done together as soon as its bytes are on the
        disk (``_rename_ahead``): each commit then only takes its rename's answer. One round
        trip for the batch instead of one per file."""
        settled = settle(self, staged)  # the small files sent through tar: verified now
        if settled:
            going = [index for index in range(len(staged)) if not isinstance(settled.get(index), Failed)]
            results: List[Union[PutResult, Failed]] = [
                settled.get(index, item) for index, item in enumerate(staged)
            ]
            committed = self._commit_batch([results[index] for index in going])  # type: ignore[misc]
            for index, result in zip(going, committed):
                results[index] = result
            return results
        return self._commit_batch(staged)

    def commit(self, staged: PutResult) -> PutResult:
        """``Connector.commit``; a file sent through tar is first verified (``settle``), as
        ``commit_many`` does for a whole batch."""
        upload = staged.upload
        if isinstance(upload, StreamedUpload) and upload.stream is not None and not upload.settled:
            result = settle(self, [staged]).get(0, staged)
            if isinstance(result, Failed):
                raise result.error
            staged = result
        return super().commit(staged)

    def _commit_batch(self, staged: Sequence[PutResult]) -> List[Union[PutResult, Failed]]:
        if len(staged) < 2 or not (sftp_wire.AVAILABLE and self._has_posix_rename):
            return super().commit_many(staged)
        self._local.renames = {}
        try:
            return super().commit_many(staged)
        finally:
            self._local.renames = None

    def _rename_ahead(self, staged: Sequence[PutResult]) -> None:
        """Send the ``posix-rename@openssh.com`` of every staged upload at once (one write of
        the channel), then read every answer, in order; ``rename`` takes each (a failed one
        raises there, for its file alone). Answers that cannot be read (the connection
        dropped) are left out: that rename is sent again, alone, and says why."""
        pairs = []
        for item in staged:
            upload = item.upload
            if isinstance(upload, FolderUpload):
                pairs.append((self._path(upload.staging), self._path(upload.relpath)))
            elif upload is None and item.staging and item.staging != item.relpath:
                pairs.append((self._path(item.staging), self._path(item.relpath)))
        answers: Dict[Tuple[str, str], Optional[OSError]] = {}
        try:
            with self._channel() as sftp:
                with sftp_wire.Corked(sftp) as cork:
                    sent = [
                        (pair, sftp_wire.send_posix_rename(sftp, self._wire(pair[0]), self._wire(pair[1])))
                        for pair in pairs
                    ]
                    cork.send()
                for pair, request in sent:
                    try:
                        sftp_wire.read_answer(sftp, request)
                        answers[pair] = None
                    except OSError as exc:
                        answers[pair] = exc
        except Exception as exc:  # noqa: BLE001 - the renames not answered go alone, and fail alone
            log.debug("the renames of a batch on %s were not all answered: %s", self.where, exc)
        self._local.renames = answers

    def sync_names(self, committed: Sequence[Any]) -> None:
        """Make the renames durable: ``sync`` the folders on the server, one command for a
        batch, when the login runs commands (SFTP itself cannot sync a folder)."""
        if not committed or not self._server_hashes():
            return
        folders = sorted({posixpath.dirname(self._path(result.relpath)) for result in committed})
        self._sync_on_server(
            folders, "sync", "cannot sync folders on %s (%s): renames reach its disk within seconds anyway"
        )

    def rename(self, src_relpath: str, dst_relpath: str) -> None:
        self._rename(self._path(src_relpath), self._path(dst_relpath))
        self._written_as.pop(self._asked(src_relpath), None)

    def _folder_in_the_way(self, sftp: paramiko.SFTPClient, dst: str) -> Optional[OSError]:
        """SFTP calls a rename onto a folder a bare "Failure": the error that says so, when a
        folder is what stands under the real name."""
        try:
            mode = sftp.stat(self._wire(dst)).st_mode or 0
        except Exception:  # noqa: BLE001 - nothing to say more than the rename's error
            return None
        if not stat_module.S_ISDIR(mode):
            return None
        return IsADirectoryError(errno.EISDIR, f"a folder is in the way on {self.where}", printable(dst))

    def _rename(self, src: str, dst: str) -> None:
        with self._channel() as sftp:
            if self._has_posix_rename:
                done = self._local.renames
                try:
                    with self._remote("renaming", src, sftp):
                        if done and (src, dst) in done:  # done with its batch's: its answer
                            error = done.pop((src, dst))
                            if error is not None:
                                raise error
                        else:
                            sftp.posix_rename(self._wire(src), self._wire(dst))
                    return
                except OSError as exc:
                    if "unsupported" not in str(exc).lower():
                        raise self._folder_in_the_way(sftp, dst) or exc from None
                    self._has_posix_rename = False
                    self._say_once(
                        "rename",
                        "%s has no posix-rename@openssh.com: replacing a file removes the old copy first",
                        self.where,
                        level=logging.WARNING,
                    )
            # Plain SFTP rename refuses to replace a file: remove the old one first. The name
            # is briefly absent, never half written.
            with self._remote("replacing", dst, sftp):
                try:
                    sftp.remove(self._wire(dst))
                except FileNotFoundError:
                    pass
                sftp.rename(self._wire(src), self._wire(dst))

    def remove(self, relpath: str) -> None:
        asked = self._asked(relpath)
        path = self._written_as.pop(asked, asked)
        try:
            with self._channel() as sftp, self._remote("removing", path, sftp):
                sftp.remove(self._wire(path))
        except FileNotFoundError:
            pass
        except Exception:
            if path != asked:  # a spare's name, which no later attempt writes again
                self._orphans.append(path)  # removed at close(), over the connection then
            raise

    def set_mtime(self, relpath: str, mtime_ns: int) -> None:
        path = self._path(relpath)
        done, self._local.mtime = self._local.mtime, None
        if done == (path, mtime_ns // 1_000_000_000):
            return  # sent with the file's last writes
        with self._channel() as sftp, self._remote("setting the time of", path, sftp):
            sftp.utime(self._wire(path), (time.time(), mtime_ns / 1e9))
