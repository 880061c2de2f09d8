"""The SSH connection of the ssh connector: the socket (or a jump host's channel), the
handshake and login on every hop, one SFTP channel per copying thread, a session channel per
command, what paramiko raises turned into oeleo's errors, and the SFTP calls every side uses.

The life cycle itself (open once under a lock, reconnect once for many threads, the first
failure a setting to fix and later ones a dropped connection) is ``oeleo.connectors.session``;
this module fills it in for paramiko.
"""

from __future__ import annotations

import errno
import logging
import posixpath
import socket
import stat as stat_module
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, ContextManager, FrozenSet, Iterator, List, Optional, Sequence, Set, Tuple

import paramiko

from oeleo.connectors import readback, sftp_wire
from oeleo.connectors.base import Features
from oeleo.connectors.clients import PerThreadClients
from oeleo.connectors.session import Session, close_quietly, describe
from oeleo.connectors.ssh_endpoints import Endpoint, _bracket
from oeleo.connectors.ssh_login import SSHLogin
from oeleo.connectors.ssh_shell import ShellSlot
from oeleo.errors import ConfigError, ConnectionLost, TransferError
from oeleo.names import printable

log = logging.getLogger("oeleo")

# OpenSSH's sftp-server takes requests up to 256 KiB (its limits@openssh.com says 261120
# bytes of data); other servers get the 32 KiB every SFTP server must accept.
OPENSSH_REQUEST = 261120
SAFE_REQUEST = 32768
# Below this size, reading a copy back costs less than starting md5sum on the server.
READ_BACK_BELOW = 256 * 1024


def _keyed(transport: paramiko.Transport) -> bool:
    """Whether the handshake got as far as the server's host key."""
    try:
        transport.get_remote_server_key()
    except paramiko.SSHException:
        return False
    return True


class SSHSession(SSHLogin):
    """The connection, its channels and its errors, for ``SSHConnector`` (which sets the
    endpoints, the folder and the timeouts, then calls ``_start_session``)."""

    jumps: Sequence[Endpoint]
    # Commands go to one shell kept open on the server (False: a channel per command).
    keep_shell = True
    host: str
    directory: str
    timeout: float
    io_timeout: float
    features: Features

    def _start_session(self) -> None:
        self._session: Session[paramiko.Transport] = Session(
            self.where,
            lambda: self._open_locked(),
            self._close_link,
            lambda transport: transport.is_active(),
            drop_connection=lambda transport: transport.close(),  # its channels die with it
            lost=(paramiko.SSHException,),
            io_timeout=self.io_timeout,
            os_error=self._os_error,
        )
        self._jump_transports: List[paramiko.Transport] = []  # first hop first
        # One SFTP channel per copying thread on the one connection (the first one opened by
        # connect(), shared when the server allows no more).
        self._channels: PerThreadClients[paramiko.SFTPClient] = PerThreadClients(
            close_quietly, lambda sftp: sftp.sock.closed
        )
        self._base: Optional[str] = None
        self._request_size = SAFE_REQUEST
        self._whole_reads = False  # the server's reads return every byte asked for up to EOF
        self._shell_hashes: Optional[FrozenSet[str]] = None  # None: not probed yet
        # Where the login runs commands, they go to one shell kept open (ssh_shell).
        self._shell = ShellSlot()
        self._said: Set[str] = set()  # things logged once per connector

    # -- names ------------------------------------------------------------------------
    @property
    def where(self) -> str:
        """``user@host:port``, for messages."""
        return self.endpoint.where

    @property
    def _transport(self) -> Optional[paramiko.Transport]:
        """The destination's SSH transport while a connection is open (or has just dropped)."""
        return self._session.connection

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

    # -- opening the connection (under the session's lock) --------------------------------
    def _fail_connect(self, message: str) -> Exception:
        """A network failure: a setting to fix on the first connection, but a dropped
        connection (retried by the worker) when this connector has worked before."""
        return self._session.failure(message)

    def _automatic(self, endpoint: Endpoint) -> bool:
        """Whether the agent's keys and the usual key files are tried: no key set, and no
        password either (a jump host never gets the password)."""
        return self.key_filename is None and (self._password is None or endpoint.jump)

    def _open_locked(self) -> paramiko.Transport:
        """Connect through the jump hosts, log in, open the first SFTP channel and find the
        base folder: the destination's transport (every hop closed again when a step fails)."""
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
        self._jump_transports = opened[:-1]
        self._channels.start(sftp)
        self._shell_hashes = None
        self._shell.reset()
        if not self._session.ever_connected:  # a reconnect is said by the session
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
        return transport

    def _close_link(self, transport: paramiko.Transport) -> None:
        """Close the channels, the destination's transport and the jump hosts', last hop first."""
        self._channels.stop()
        jumps, self._jump_transports = self._jump_transports, []
        for hop in [transport, *reversed(jumps)]:
            close_quietly(hop)

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
                text = describe(exc)
                if "banner" in text.lower():
                    # A setting to fix the first time; a server that hangs once it has worked.
                    raise self._fail_connect(
                        f"{self._label(endpoint)} does not answer like an SSH server ({text}); "
                        f"check {endpoint.check}"
                    ) from None
                raise self._fail_connect(
                    f"SSH handshake with {self._label(endpoint)} failed: {text}"
                ) from None
            except (EOFError, OSError) as exc:
                raise self._fail_connect(
                    f"{self._label(endpoint)} closed the connection during the SSH handshake "
                    f"({describe(exc)})"
                ) from None
            if not transport.is_active() or not _keyed(transport):
                # start_client() returns at its timeout without a session: a server that
                # took the connection and said nothing more (frozen, or not SSH at all).
                raise self._fail_connect(
                    f"{self._label(endpoint)} did not finish the SSH handshake within {self.timeout:g} s; "
                    f"check {endpoint.check}"
                )
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
                f"{self._label(jump)} did not open a connection to {endpoint.address} ({describe(exc)})"
            ) from None

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
            if not first:
                # Threads opening channels at once may get paramiko's "Unable to open
                # channel." instead of the server's refusal (MaxSessions): refused all the same.
                raise paramiko.ChannelException(1, str(exc)) from None
            raise ConfigError(
                f"{self.where} offers no SFTP ({exc}): the server must allow the sftp subsystem"
            ) from None
        except (EOFError, OSError) as exc:
            raise self._fail_connect(f"connection to {self.where} lost ({describe(exc)})") from None
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
        with self._session.lock:
            # Opens the connection the first time (or after close() or a failed reconnect);
            # one that dropped is ConnectionLost: the worker reconnects and retries.
            transport = self._session.current()
            sftp = self._channels.current()
            if sftp is not None:  # opened just now, with this thread's channel
                return sftp

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

    def _remote(
        self, what: str, path: str, sftp: Optional[paramiko.SFTPClient] = None
    ) -> ContextManager[None]:
        """Turn what paramiko raises into oeleo's errors (``Session.guard``): a dead connection
        becomes ``ConnectionLost`` (the worker reconnects and retries), an SFTP status an
        ``OSError`` naming the server and path."""
        return self._session.guard(what, path, lambda: self._alive(sftp))

    def _os_error(self, exc: OSError, what: str, path: str) -> OSError:
        where = f"{_bracket(self.host)}:{printable(path)}"
        if exc.errno == errno.ENOENT:
            return FileNotFoundError(errno.ENOENT, "no such file or folder", where)
        if exc.errno == errno.EACCES:
            return PermissionError(errno.EACCES, "permission denied", where)
        return OSError(exc.errno, f"{what} failed on {self.where}: {exc.strerror or exc}", printable(path))

    # -- commands ---------------------------------------------------------------------
    def _live_transport(self) -> paramiko.Transport:
        """The open connection (connected first when there is none, or ConnectionLost)."""
        transport = self._transport
        if transport is None or not transport.is_active():
            self._sftp()  # connects, or raises ConnectionLost
            transport = self._transport
            assert transport is not None
        return transport

    def _exec(self, command: str, timeout: Optional[float] = None) -> Tuple[int, bytes, bytes]:
        """Run one command on the server: (exit status, stdout, stderr). Once the login is
        known to run commands, through the shell kept open there (one round trip), else (or
        when that shell is busy or gone) on a channel of its own (three)."""
        transport = self._live_transport()
        wire = command.encode("utf-8", "surrogateescape")
        if self._shell_hashes and self.keep_shell:
            with self._remote("running a command on", self.host):
                done = self._shell.run(transport, wire, timeout, self.timeout)
            if done is not None:
                return done
        try:
            channel = transport.open_session(timeout=self.timeout)
        except paramiko.ChannelException as exc:  # MaxSessions: the caller reads back instead
            raise TransferError(f"{self.where} refused a channel for a command ({exc.text})") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise ConnectionLost(f"connection to {self.where} lost ({describe(exc)})") from None
        try:
            with self._remote("running a command on", self.host):
                channel.settimeout(timeout)
                channel.exec_command(wire)
                channel.shutdown_write()
                stdout = channel.makefile("rb").read()
                stderr = channel.makefile_stderr("rb").read()
                status = channel.recv_exit_status()
        finally:
            channel.close()
        return status, stdout, stderr

    def _server_hashes(self) -> FrozenSet[str]:
        """The algorithms the server computes, probed once per connection: a login that
        runs no commands (sftp only, ForceCommand internal-sftp) computes none."""
        if self._shell_hashes is not None:
            return self._shell_hashes
        with self._session.lock:
            if self._shell_hashes is None:
                self._shell_hashes = self._probe_hashes()
                self.features = replace(self.features, hashes=self._shell_hashes)
                if self._shell_hashes:
                    self._say_once(
                        "hashes",
                        "%s runs md5sum and friends: copies are verified there "
                        "(one written over SFTP under %d KiB is read back instead, which is quicker)",
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
        try:
            status, out, _ = self._exec(readback.probe_command(), timeout=self.timeout)
        except TransferError as exc:
            self._say_once("hashes", "%s: copies are verified by reading them back", exc)
            return frozenset()
        return readback.hashes_in_probe(out)

    # -- SFTP calls every side uses ----------------------------------------------------
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
