"""A folder on a server reached over SSH: the SFTP connector (paramiko).

The usual deployment: a Windows instrument PC pushes to a Linux data server. One SSH
connection serves the whole run; every copying thread gets its own SFTP channel on it.
A file is written under its temporary name with pipelined requests (one round trip for
the data, its time and, for a small file, reading it back); the worker's batches are then
forced to disk (``fsync@openssh.com``) and renamed into place (``posix-rename@openssh.com``).

Copies are verified on the server with ``md5sum``/``sha256sum`` (one command for many files
when comparing the two sides) when the login runs commands, else by reading the file back
through SFTP; small files are always read back, which is quicker than starting a command.
Unknown host keys are refused unless the user says to trust them. paramiko is imported here
only, so the rest of oeleo starts without it.

Reaching the server works as ``ssh`` does: ``[user@]host[:port]``, an alias of
``~/.ssh/config`` (HostName, Port, User, IdentityFile, ProxyJump through jump hosts), and,
when no key and no password is set, the SSH agent's keys and then ``~/.ssh/id_*``. Paths go
to the server as bytes, so a name that is not UTF-8 keeps its bytes there.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import posixpath
import secrets
import socket
import stat as stat_module
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    FrozenSet,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
)

try:
    import paramiko
except ImportError as exc:  # the message the command shows for OELEO_CONNECTOR=ssh
    raise ImportError('the ssh connector needs paramiko: pip install "oeleo[ssh]"') from exc

from oeleo import compat
from oeleo.connectors import sftp_wire
from oeleo.connectors.base import (
    TEMP_SUFFIX,
    Features,
    FileEntry,
    FolderConnector,
    has_extension,
    matches,
    safe_relpath,
)
from oeleo.connectors.clients import PerThreadClients
from oeleo.connectors.remote import command_lines
from oeleo.connectors.ssh_endpoints import (
    Endpoint,
    _bracket,
    load_ssh_config,
    parse_port,
    resolve_endpoints,
)
from oeleo.connectors.ssh_login import SSHLogin
from oeleo.errors import ConfigError, ConnectionLost, TransferError
from oeleo.names import printable

if TYPE_CHECKING:
    from oeleo.settings import Settings

log = logging.getLogger("oeleo")
# paramiko logs failures (with tracebacks) that oeleo reports itself in one line; without a
# handler of its own, Python would print them to stderr. An application that configures
# logging still gets them.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

# The command that computes each algorithm on a POSIX server (GNU coreutils, BusyBox).
HASH_COMMANDS = {
    "md5": "md5sum",
    "sha1": "sha1sum",
    "sha224": "sha224sum",
    "sha256": "sha256sum",
    "sha384": "sha384sum",
    "sha512": "sha512sum",
    "blake2b": "b2sum",
}
# Below this size, reading a copy back costs less than starting md5sum on the server.
READ_BACK_BELOW = 256 * 1024
# Longest command line sent to the server: a login shell gets it as one argument, and
# Linux limits one argument to 128 KiB.
MAX_COMMAND = 32 * 1024
# OpenSSH's sftp-server takes requests up to 256 KiB (its limits@openssh.com says 261120
# bytes of data); other servers get the 32 KiB every SFTP server must accept.
OPENSSH_REQUEST = 261120
SAFE_REQUEST = 32768


class _PerThread(threading.local):
    # The last file this thread wrote: (path, size, its bytes as read back from the server
    # for a small file, else None).
    written: Optional[Tuple[str, int, Optional[bytes]]] = None
    # (path, mtime in whole seconds) that the last write already gave its file.
    mtime: Optional[Tuple[str, int]] = None


class SSHConnector(SSHLogin, FolderConnector):
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
    features = Features(hashes=frozenset(HASH_COMMANDS), keeps_mtime=True, batch_sync=True, max_uploads=2)

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
        self._lock = threading.RLock()
        self._transport: Optional[paramiko.Transport] = None
        self._jump_transports: List[paramiko.Transport] = []  # first hop first
        self._ever_connected = False
        # One SFTP channel per copying thread on the one connection (the first one opened by
        # connect(), shared when the server allows no more).
        self._channels: PerThreadClients[paramiko.SFTPClient] = PerThreadClients(
            self._close_quietly, lambda sftp: sftp.sock.closed
        )
        self._local = _PerThread()
        self._base: Optional[str] = None
        self._request_size = SAFE_REQUEST
        self._whole_reads = False  # the server's reads return every byte asked for up to EOF
        self._shell_hashes: Optional[FrozenSet[str]] = None  # None: not probed yet
        self._has_fsync = True
        self._has_posix_rename = True
        self._said: set = set()  # things logged once per connector

    @classmethod
    def from_settings(cls, settings: Settings, role: str = "external") -> SSHConnector:
        if role != "external":
            raise ConfigError("the ssh connector is a destination; the source is always a local folder")
        return cls(  # empty strings, not None: a missing setting is reported, not looked up again
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

    # -- names ------------------------------------------------------------------------
    @property
    def where(self) -> str:
        """``user@host:port``, for messages."""
        return self.endpoint.where

    def __repr__(self) -> str:
        return f"SSHConnector({self.where}:{self.directory})"

    def __str__(self) -> str:
        return f"{self.where}:{self.directory}"

    def _path(self, relpath: str) -> str:
        """The server's absolute path of a relative name (never outside the base folder)."""
        return posixpath.join(self._base or self.directory, safe_relpath(relpath))

    def external_name(self, relpath: str) -> str:
        return self._path(relpath)

    @staticmethod
    def _wire(path: str) -> bytes:
        """A server path as SFTP sends it: the name's own bytes. A local name that is not
        UTF-8 reaches oeleo with surrogate escapes (``'m\\udce9sure.csv'``), which paramiko
        would refuse to encode; as bytes it is written under the same bytes on the server."""
        try:
            return path.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone UTF-16 half of a Windows name: no bytes stand for it
            raise TransferError(
                f"{printable(path)}: the name holds characters that cannot be written over SFTP"
            ) from None

    def _say_once(self, key: str, message: str, *args: Any, level: int = logging.INFO) -> None:
        if key not in self._said:
            self._said.add(key)
            log.log(level, message, *args)

    # -- life cycle -------------------------------------------------------------------
    def connect(self, **kwargs: Any) -> None:
        """Open the SSH connection and an SFTP channel; does nothing when already open."""
        with self._lock:
            if self._transport is not None and self._transport.is_active():
                return
            self._close_locked()
            self._open_locked()

    def reconnect(self, **kwargs: Any) -> None:
        """After a dropped connection. Several copying threads call this at once: the first
        one opens a new connection, the others find it open and use it."""
        self.connect()

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        self._channels.stop()
        jumps, self._jump_transports = self._jump_transports, []
        for transport in [self._transport, *reversed(jumps)]:
            if transport is not None:
                try:
                    transport.close()
                except Exception:  # noqa: BLE001
                    pass
        self._transport = None

    def _fail_connect(self, message: str) -> Exception:
        """A network failure: a setting to fix on the first connection, but a dropped
        connection (retried by the worker) when this connector has worked before."""
        if self._ever_connected:
            return ConnectionLost(f"cannot reconnect to {self.where}: {message}")
        return ConfigError(message)

    def _automatic(self, endpoint: Endpoint) -> bool:
        """Whether the agent's keys and the usual key files are tried: no key set, and no
        password either (a jump host never gets the password)."""
        return self.key_filename is None and (self._password is None or endpoint.jump)

    def _open_locked(self) -> None:
        key = self._load_key() if self.key_filename else None
        chain = (*self.jumps, self.endpoint)
        agent = self._open_agent() if any(self._automatic(hop) for hop in chain) else None
        opened: List[paramiko.Transport] = []  # the jump hosts', then the destination's
        try:
            for hop, endpoint in enumerate(chain):
                # Nothing to log in with: said before connecting.
                offers, notes = self._offers(endpoint, key, agent)
                if hop == 0:
                    sock: Any = self._open_socket(endpoint)
                else:  # through the jump host before it
                    sock = self._open_channel(opened[-1], chain[hop - 1], endpoint)
                opened.append(self._log_in_to(endpoint, sock, offers, notes))
            transport = opened[-1]
            sftp = self._new_sftp(transport, first=True)
            openssh = "openssh" in transport.remote_version.lower()
            self._request_size = OPENSSH_REQUEST if openssh else SAFE_REQUEST
            self._whole_reads = openssh
            try:
                self._base = self._resolve_base(sftp)
            except OSError as exc:
                raise ConfigError(f"{self.where}: cannot find the home folder ({exc})") from None
        except BaseException:
            for transport in reversed(opened):
                transport.close()
            raise
        finally:
            if agent is not None:
                agent.close()
        self._transport = transport
        self._jump_transports = opened[:-1]
        self._channels.start(sftp)
        self._shell_hashes = None
        if self._ever_connected:
            log.info("reconnected to %s", self.where)
        else:
            via = "".join(f" via {hop.where}" for hop in self.jumps)
            log.debug("connected to %s%s (%s)", self.where, via, transport.remote_version)
        if not sftp_wire.AVAILABLE:
            self._say_once(
                "wire",
                "paramiko %s lacks %s: copying through its public calls, with more round trips per file",
                paramiko.__version__,
                ", ".join(sftp_wire.MISSING),
                level=logging.WARNING,
            )
        self._ever_connected = True

    def _log_in_to(
        self,
        endpoint: Endpoint,
        sock: Any,
        offers: List[Tuple[str, Optional[paramiko.PKey]]],
        notes: Sequence[str],
    ) -> paramiko.Transport:
        """The SSH handshake over ``sock``, the host key check and the login: an open,
        authenticated transport (closed again when any step fails)."""
        transport = paramiko.Transport(sock)
        try:
            self._prefer_known_key_types(transport, endpoint)
            self._prefer_fast_ciphers(transport)
            try:
                transport.start_client(timeout=self.timeout)
            except paramiko.SSHException as exc:
                text = str(exc) or type(exc).__name__
                if "banner" in text.lower():
                    raise ConfigError(
                        f"{'jump host ' if endpoint.jump else ''}{endpoint.address} does not answer "
                        f"like an SSH server ({text}); check {endpoint.check}"
                    ) from None
                raise self._fail_connect(
                    f"SSH handshake with {self._label(endpoint)} failed: {text}"
                ) from None
            except (EOFError, OSError) as exc:
                raise self._fail_connect(
                    f"{self._label(endpoint)} closed the connection during the SSH handshake "
                    f"({self._text(exc)})"
                ) from None
            self._check_host_key(transport, endpoint)
            self._authenticate(transport, endpoint, offers, notes)
            transport.set_keepalive(30)
        except BaseException:
            transport.close()
            raise
        return transport

    @staticmethod
    def _label(endpoint: Endpoint) -> str:
        return ("jump host " if endpoint.jump else "") + endpoint.address

    def _open_socket(self, endpoint: Endpoint) -> socket.socket:
        label, host, port = self._label(endpoint), endpoint.host, endpoint.port
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout)
        except socket.gaierror as exc:
            what = "jump host" if endpoint.jump else "SSH server"
            raise self._fail_connect(
                f"cannot find the {what} {host!r} ({endpoint.named_by}), port {port}: {exc.strerror or exc}"
            ) from None
        except ConnectionRefusedError:
            raise self._fail_connect(
                f"{label} refused the connection: no SSH server listens there (check {endpoint.check})"
            ) from None
        except socket.timeout:
            raise self._fail_connect(f"{label} is unreachable: no answer within {self.timeout:g} s") from None
        except OSError as exc:
            raise self._fail_connect(f"{label} is unreachable: {exc.strerror or exc}") from None
        # Many small SFTP requests: without TCP_NODELAY each waits for a delayed ACK (40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return sock

    def _open_channel(self, via: paramiko.Transport, jump: Endpoint, endpoint: Endpoint) -> paramiko.Channel:
        """A TCP connection to ``endpoint`` that the jump host ``jump`` opens over its
        transport ``via`` (a ``direct-tcpip`` channel, as ``ssh -J``)."""
        try:
            return via.open_channel(
                "direct-tcpip", (endpoint.host, endpoint.port), ("127.0.0.1", 0), timeout=self.timeout
            )
        except paramiko.ChannelException as exc:
            if exc.code == paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED:
                raise self._fail_connect(
                    f"{self._label(jump)} does not forward connections to {endpoint.address} "
                    f"({exc.text}): its sshd_config must allow it (AllowTcpForwarding yes)"
                ) from None
            raise self._fail_connect(
                f"{self._label(jump)} cannot connect to {endpoint.address} ({exc.text}): "
                f"check {endpoint.check}"
            ) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._fail_connect(
                f"{self._label(jump)} did not open a connection to {endpoint.address} ({self._text(exc)})"
            ) from None

    # -- channels ---------------------------------------------------------------------
    def _new_sftp(self, transport: paramiko.Transport, first: bool = False) -> paramiko.SFTPClient:
        """A new SFTP channel; ``paramiko.ChannelException`` when the server allows no more."""
        try:
            sftp = paramiko.SFTPClient.from_transport(transport)
        except paramiko.ChannelException:
            if not first:
                raise
            raise ConfigError(f"{self.where} refused an SFTP channel (MaxSessions 0?)") from None
        except paramiko.SSHException as exc:
            if not transport.is_active():
                raise self._fail_connect(f"connection to {self.where} lost ({exc})") from None
            raise ConfigError(
                f"{self.where} offers no SFTP ({exc}): the server must allow the sftp subsystem"
            ) from None
        except (EOFError, OSError) as exc:
            raise self._fail_connect(f"connection to {self.where} lost ({self._text(exc)})") from None
        if sftp is None:
            raise ConfigError(f"{self.where} offers no SFTP: the server must allow the sftp subsystem")
        channel = sftp.get_channel()
        if channel is not None:
            channel.settimeout(self.io_timeout)
        return sftp

    def _sftp(self) -> paramiko.SFTPClient:
        """This thread's SFTP channel: one per copying thread, on the one connection."""
        sftp = self._channels.current()
        if sftp is not None:
            return sftp
        with self._lock:
            if self._transport is None:
                self._open_locked()  # first use, or after close() or a failed reconnect
                return self._channels.current() or self._channels.first  # type: ignore[return-value]
            transport = self._transport
            if not transport.is_active():
                raise ConnectionLost(f"connection to {self.where} lost")

            def refused(exc: BaseException) -> None:
                self._say_once(
                    "channels",
                    "%s allows no more SFTP channels (%s): copying threads take turns on one, "
                    "which is slower; lower OELEO_WORKERS, or raise MaxSessions in its sshd_config",
                    self.where,
                    getattr(exc, "text", exc),
                    level=logging.WARNING,
                )

            try:
                return self._channels.make(
                    lambda: self._new_sftp(transport), paramiko.ChannelException, refused
                )
            except paramiko.ChannelException as exc:
                raise ConnectionLost(f"{self.where} refused an SFTP channel ({exc.text})") from None

    @contextmanager
    def _channel(self) -> Iterator[paramiko.SFTPClient]:
        """This thread's SFTP channel for one operation (see ``PerThreadClients.use``)."""
        with self._channels.use(self._sftp()) as sftp:
            yield sftp

    def _alive(self, sftp: Optional[paramiko.SFTPClient] = None) -> bool:
        transport = self._transport
        if transport is None or not transport.is_active():
            return False
        return sftp is None or not sftp.sock.closed

    @contextmanager
    def _remote(self, what: str, path: str, sftp: Optional[paramiko.SFTPClient] = None) -> Iterator[None]:
        """Turn what paramiko raises into oeleo's errors: a dead connection becomes
        ``ConnectionLost`` (the worker reconnects and retries), an SFTP status an ``OSError``
        naming the server and path."""
        try:
            yield
        except (EOFError, paramiko.SSHException, ConnectionError) as exc:
            raise ConnectionLost(
                f"connection to {self.where} lost while {what} {printable(path)} ({self._text(exc)})"
            ) from None
        except socket.timeout:
            self._drop()
            raise ConnectionLost(
                f"{self.where} did not answer for {self.io_timeout:g} s while {what} {printable(path)}"
            ) from None
        except OSError as exc:
            if not self._alive(sftp):
                raise ConnectionLost(
                    f"connection to {self.where} lost while {what} {printable(path)} ({self._text(exc)})"
                ) from None
            raise self._os_error(exc, what, path) from None

    @staticmethod
    def _text(exc: BaseException) -> str:
        return str(exc) or type(exc).__name__

    def _os_error(self, exc: OSError, what: str, path: str) -> OSError:
        where = f"{_bracket(self.host)}:{printable(path)}"
        if exc.errno == errno.ENOENT:
            return FileNotFoundError(errno.ENOENT, "no such file or folder", where)
        if exc.errno == errno.EACCES:
            return PermissionError(errno.EACCES, "permission denied", where)
        return OSError(exc.errno, f"{what} failed on {self.where}: {exc.strerror or exc}", printable(path))

    def _drop(self) -> None:
        """Close a connection that stopped answering, so that reconnect() opens a new one."""
        transport = self._transport
        if transport is not None:
            try:
                transport.close()
            except Exception:  # noqa: BLE001
                pass

    def _resolve_base(self, sftp: paramiko.SFTPClient) -> str:
        folder = self.directory.strip()
        if folder.startswith("/"):
            return posixpath.normpath(folder)
        home = sftp.normalize(".")
        if folder in ("~", "."):
            return home
        if folder.startswith("~/"):
            folder = folder[2:]
        return posixpath.normpath(posixpath.join(home, folder))

    # -- the base folder --------------------------------------------------------------
    def prepare(self) -> None:
        """Create the base folder on the server if needed and check it can be written."""
        with self._channel() as sftp:
            self._prepare(sftp, self._base or self.directory)

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

    def _prepare(self, sftp: paramiko.SFTPClient, base: str) -> None:
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
                sftp.remove(self._wire(probe))
        except OSError as exc:
            reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
            raise ConfigError(f"remote folder {base} on {self.where} is not writable: {reason}") from None

    def _makedirs(self, sftp: paramiko.SFTPClient, folder: str) -> None:
        """``mkdir -p`` over SFTP; another thread making the same folder is fine."""
        try:
            with self._remote("creating", folder, sftp):
                sftp.mkdir(self._wire(folder))
            return
        except FileNotFoundError:
            parent = posixpath.dirname(folder)
            if parent == folder:
                raise
            self._makedirs(sftp, parent)
        except OSError:
            if self._is_dir(sftp, folder):
                return  # it exists (SFTP says only "Failure" for that)
            if self._exists(sftp, folder):
                raise FileExistsError(errno.EEXIST, "exists and is not a folder", folder) from None
            raise
        try:
            with self._remote("creating", folder, sftp):
                sftp.mkdir(self._wire(folder))
        except OSError:
            if not self._is_dir(sftp, folder):
                raise

    def _attrs(self, sftp: paramiko.SFTPClient, path: str) -> Optional[paramiko.SFTPAttributes]:
        try:
            with self._remote("reading", path, sftp):
                return sftp.stat(self._wire(path))
        except FileNotFoundError:
            return None

    def _is_dir(self, sftp: paramiko.SFTPClient, path: str) -> bool:
        attrs = self._attrs(sftp, path)
        return attrs is not None and stat_module.S_ISDIR(attrs.st_mode or 0)

    def _exists(self, sftp: paramiko.SFTPClient, path: str) -> bool:
        return self._attrs(sftp, path) is not None

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
        size = None
        if written is not None and written[0] == path:
            size, data = written[1], written[2]
            if data is not None:  # read back from the server right after it was written
                return hashlib.new(algorithm, data).hexdigest()
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
        return {paths[path]: digest for path, digest in found.items()}

    def _read_back_many(self, relpaths: Sequence[str], algorithm: str) -> Dict[str, str]:
        digests = {}
        for relpath in relpaths:
            try:
                digests[relpath] = self._read_back(self._path(relpath), algorithm)
            except (OSError, TransferError):
                continue  # left out: check() asks for it alone, which says why
        return digests

    def _server_hashes(self) -> FrozenSet[str]:
        """The algorithms the server computes, probed once per connection: a login that
        runs no commands (sftp only, ForceCommand internal-sftp) computes none."""
        if self._shell_hashes is not None:
            return self._shell_hashes
        with self._lock:
            if self._shell_hashes is None:
                self._shell_hashes = self._probe_hashes()
                self.features = replace(self.features, hashes=self._shell_hashes)
                if self._shell_hashes:
                    self._say_once(
                        "hashes",
                        "%s runs md5sum and friends: copies are verified there "
                        "(files under %d KiB are read back, which is quicker)",
                        self.where,
                        READ_BACK_BELOW // 1024,
                    )
                else:
                    self._say_once(
                        "hashes",
                        "%s runs no commands (sftp only): copies are verified by reading them back",
                        self.where,
                    )
        return self._shell_hashes

    def _probe_hashes(self) -> FrozenSet[str]:
        command = "; ".join(f"{tool} /dev/null" for tool in HASH_COMMANDS.values())
        try:
            status, out, _ = self._exec(command, timeout=self.timeout)
        except TransferError as exc:
            self._say_once("hashes", "%s: copies are verified by reading them back", exc)
            return frozenset()
        empty = {hashlib.new(a, b"").hexdigest(): a for a in HASH_COMMANDS}
        found = set()
        for line in out.decode("utf-8", "replace").splitlines():
            digest = line.split(" ", 1)[0].lstrip("\\")
            if digest in empty:
                found.add(empty[digest])
        return frozenset(found)

    def _exec(self, command: str, timeout: Optional[float] = None) -> Tuple[int, bytes, bytes]:
        """Run one command on the server: (exit status, stdout, stderr)."""
        transport = self._transport
        if transport is None or not transport.is_active():
            self._sftp()  # connects, or raises ConnectionLost
            transport = self._transport
            assert transport is not None
        try:
            channel = transport.open_session(timeout=self.timeout)
        except paramiko.ChannelException as exc:  # MaxSessions: the caller reads back instead
            raise TransferError(f"{self.where} refused a channel for a command ({exc.text})") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise ConnectionLost(f"connection to {self.where} lost ({self._text(exc)})") from None
        try:
            with self._remote("running a command on", self.host):
                channel.settimeout(timeout)
                channel.exec_command(command.encode("utf-8", "surrogateescape"))
                channel.shutdown_write()
                stdout = channel.makefile("rb").read()
                stderr = channel.makefile_stderr("rb").read()
                status = channel.recv_exit_status()
        finally:
            channel.close()
        return status, stdout, stderr

    def _hash_on_server(self, paths: List[str], algorithm: str) -> Dict[str, str]:
        """``md5sum a b c ...`` in as few commands as the command-line limit allows."""
        digests: Dict[str, str] = {}
        for command, batch in command_lines(HASH_COMMANDS[algorithm], paths, MAX_COMMAND):
            _, out, err = self._exec(command)
            digests.update(_parse_sums(out))
            if err and len(batch) == 1 and batch[0] not in digests:
                self._raise_for(err, batch[0])  # one file: say why it has no checksum
        return {p: digests[p] for p in paths if p in digests}

    def _raise_for(self, stderr: bytes, path: str) -> None:
        text = stderr.decode("utf-8", "replace").strip().splitlines()[-1] if stderr.strip() else ""
        if "No such file" in text:
            raise FileNotFoundError(
                errno.ENOENT, "no such file or folder", f"{_bracket(self.host)}:{printable(path)}"
            )
        if "Permission denied" in text:
            raise PermissionError(
                errno.EACCES, "permission denied", f"{_bracket(self.host)}:{printable(path)}"
            )
        if "Is a directory" in text:
            raise IsADirectoryError(errno.EISDIR, "is a folder", f"{_bracket(self.host)}:{printable(path)}")

    def _read_back(self, path: str, algorithm: str, size: Optional[int] = None) -> str:
        """Hash a stored file by reading it back through SFTP (pipelined reads)."""
        digest = hashlib.new(algorithm)
        with self._channel() as sftp, self._remote("reading", path, sftp):
            handle = sftp.open(self._wire(path), "rb")
            try:
                handle.MAX_REQUEST_SIZE = self._request_size
                if size is None:
                    size = handle.stat().st_size or 0
                if size > self._request_size:
                    handle.prefetch(size)
                while True:
                    chunk = handle.read(1024 * 1024)
                    if not chunk:
                        break
                    digest.update(chunk)
            finally:
                sftp_wire.close_without_waiting(handle)  # a read-only close has nothing to report
        return digest.hexdigest()

    # -- write side -------------------------------------------------------------------
    def write_stream(self, relpath: str, chunks: Iterable[bytes], size: int) -> None:
        path = self._path(relpath)
        self._local.written = self._local.mtime = None
        with self._channel() as sftp:
            self._write(sftp, path, chunks)

    def _write(self, sftp: paramiko.SFTPClient, path: str, chunks: Iterable[bytes]) -> None:
        try:
            with self._remote("writing", path, sftp):
                handle = sftp.open(self._wire(path), "w+", bufsize=0)
        except FileNotFoundError:
            self._makedirs(sftp, posixpath.dirname(path))
            with self._remote("writing", path, sftp):
                handle = sftp.open(self._wire(path), "w+", bufsize=0)
        # The source's time goes out with the writes when the chunks say it (base.SourceReader
        # does): set_mtime() then has nothing left to ask the server.
        mtime_ns = getattr(chunks, "mtime_ns", None)
        done = False
        written = 0
        try:
            handle.set_pipelined(True)
            handle.MAX_REQUEST_SIZE = self._request_size
            last = b""  # without paramiko's internals, the last chunk: _finish_writes_publicly writes it
            for chunk in chunks:  # errors of the source (a change, a stop) pass untouched
                if chunk and not sftp_wire.AVAILABLE:
                    chunk, last = last, chunk
                with self._remote("writing", path, sftp):
                    handle.write(chunk)
                written += len(chunk)
            written += len(last)
            with self._remote("writing", path, sftp):
                read_back = written if written < READ_BACK_BELOW else None
                if sftp_wire.AVAILABLE:
                    data = self._finish_writes(sftp, handle, read_back, path, mtime_ns)
                else:
                    data = self._finish_writes_publicly(handle, last, read_back, path, mtime_ns)
                # Nothing can fail at the close that the answers above did not report: its
                # answer is read (and dropped) with the next request instead of waited for.
                sftp_wire.close_without_waiting(handle)
            done = True
        finally:
            if not done:
                self._close_quietly(handle)
        self._local.written = (path, written, data)

    def _finish_writes(
        self,
        sftp: paramiko.SFTPClient,
        handle: paramiko.SFTPFile,
        read_back: Optional[int],
        path: str,
        mtime_ns: Optional[int],
    ) -> Optional[bytes]:
        """Wait for every pipelined write's answer, set the file's time and, for a small
        file, read it back through the same handle; returns what was read (None if not).

        Everything is sent before any answer is awaited: the whole file costs one round
        trip. paramiko's own calls would drop the answer of a pipelined write (and with it
        a failed write: a full disk) when another answer is awaited first, so each answer is
        read here, in the order the requests went out (through sftp_wire, which holds the
        paramiko internals this takes).
        """
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
        sftp_wire.wait_for_writes(handle)
        if setstat is not None:
            try:
                sftp_wire.read_answer(sftp, setstat)
                self._local.mtime = (path, mtime)
            except OSError as exc:
                log.debug("cannot set the time of %s on %s: %s", path, self.where, exc)
        if not reads:
            return None
        pieces, whole = [], True
        for length, request in reads:
            piece = sftp_wire.read_data(sftp, request)
            pieces.append(piece)
            whole = whole and len(piece) == length
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

    def sync_data(self, staged: Sequence[Any]) -> None:
        """Force a batch of staged files to the server's disk (``fsync@openssh.com``).

        The requests for the whole batch go out before any answer is awaited (open all,
        then fsync and close all): two round trips for up to 64 files, not two per file.
        """
        if not staged or not self._has_fsync:
            return
        paths = [self._path(item.staging or item.relpath) for item in staged]
        with self._channel() as sftp, self._remote("forcing to disk", paths[0], sftp):
            for start in range(0, len(paths), 64):
                self._fsync_files(sftp, paths[start : start + 64])
                if not self._has_fsync:
                    return

    def _fsync_files(self, sftp: paramiko.SFTPClient, paths: List[str]) -> None:
        if not sftp_wire.AVAILABLE:
            self._sync_by_command(paths)
            return
        failed: List[Tuple[str, OSError]] = []
        opened = [(path, sftp_wire.send_open_for_reading(sftp, self._wire(path))) for path in paths]
        handles = []
        for path, request in opened:  # every answer is read, so no handle is left open
            try:
                handles.append((path, sftp_wire.read_handle(sftp, request)))
            except OSError as exc:
                failed.append((path, exc))
        synced = [
            (path, sftp_wire.send_fsync(sftp, handle), sftp_wire.send_close(sftp, handle))
            for path, handle in handles
        ]
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

    def _sync_by_command(self, paths: List[str]) -> None:
        """Without paramiko's internals SFTP cannot send ``fsync@openssh.com``: ``sync FILE...``
        on the server instead (coreutils forces each file named to disk), when the login runs
        commands."""
        if not self._server_hashes():  # the probe of whether commands run
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
        self._sync_on_server(
            paths,
            "fsync",
            "cannot force files to disk on %s (%s): a server crash may lose recent copies",
            keep_going=True,  # each line names other files: they are still worth forcing
        )

    def sync_names(self, committed: Sequence[Any]) -> None:
        """Make the renames durable: ``sync`` the folders on the server, one command for a
        batch, when the login runs commands (SFTP itself cannot sync a folder)."""
        if not committed or not self._server_hashes():
            return
        folders = sorted({posixpath.dirname(self._path(result.relpath)) for result in committed})
        self._sync_on_server(
            folders,
            "sync",
            "cannot sync folders on %s (%s): renames reach its disk within seconds anyway",
            keep_going=False,
        )

    def _sync_on_server(self, paths: Sequence[str], key: str, warning: str, keep_going: bool) -> None:
        """``sync PATH...`` on the server (as few command lines as it takes); a failure is
        said once (``warning`` takes the server and the reason), and ends the syncing unless
        ``keep_going``."""
        for command, _ in command_lines("sync", paths, MAX_COMMAND):
            try:
                status, _, err = self._exec(command)
            except TransferError as exc:
                status, err = 1, str(exc).encode()
            if status != 0:
                reason = err.decode("utf-8", "replace").strip()[:200]
                self._say_once(key, warning, self.where, reason, level=logging.WARNING)
                if not keep_going:
                    return

    @staticmethod
    def _close_quietly(handle: Union[paramiko.SFTPFile, paramiko.SFTPClient]) -> None:
        try:
            handle.close()
        except Exception:  # noqa: BLE001 - the first error is the one to report
            pass

    def rename(self, src_relpath: str, dst_relpath: str) -> None:
        src, dst = self._path(src_relpath), self._path(dst_relpath)
        with self._channel() as sftp:
            if self._has_posix_rename:
                try:
                    with self._remote("renaming", src, sftp):
                        sftp.posix_rename(self._wire(src), self._wire(dst))
                    return
                except OSError as exc:
                    if "unsupported" not in str(exc).lower():
                        raise
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
        path = self._path(relpath)
        try:
            with self._channel() as sftp, self._remote("removing", path, sftp):
                sftp.remove(self._wire(path))
        except FileNotFoundError:
            pass

    def set_mtime(self, relpath: str, mtime_ns: int) -> None:
        path = self._path(relpath)
        done, self._local.mtime = self._local.mtime, None
        if done == (path, mtime_ns // 1_000_000_000):
            return  # sent with the file's last writes
        with self._channel() as sftp, self._remote("setting the time of", path, sftp):
            sftp.utime(self._wire(path), (time.time(), mtime_ns / 1e9))


def _parse_sums(output: bytes) -> Dict[str, str]:
    """``md5sum`` output to {path: digest}. A name with a backslash or a newline comes back
    escaped, its line starting with a backslash."""
    found = {}
    for line in output.decode("utf-8", "surrogateescape").split("\n"):
        if not line:
            continue
        escaped = line.startswith("\\")
        if escaped:
            line = line[1:]
        digest, _, name = line.partition(" ")
        name = name[1:] if name[:1] in (" ", "*") else name
        if escaped:
            name = _unescape(name)
        found[name] = digest
    return found


def _unescape(name: str) -> str:
    out, i = [], 0
    while i < len(name):
        c = name[i]
        if c == "\\" and i + 1 < len(name):
            nxt = name[i + 1]
            out.append({"n": "\n", "r": "\r", "\\": "\\"}.get(nxt, nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)
