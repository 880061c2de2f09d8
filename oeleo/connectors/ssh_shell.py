"""One ``sh`` kept open on the server that runs the ssh connector's commands one after the
other (``md5sum`` of a batch, ``sync``), read from its standard input.

A command on a channel of its own costs three round trips before its result is in: the
channel is opened, the command started, and its output and exit status come back. Over a
link with 10 ms of latency that is 30 ms per command, and a batch of small files runs four
of them. Written to a shell that is already running, a command costs one round trip.

Each command is followed by a ``printf`` of a marker (a random token, the command's exit
status) on standard output and another on standard error, so its output, errors and status
are read back without closing anything. The command's standard input is ``/dev/null``: it
can never read the commands that follow it. Only logins that run commands get a shell (the
connector probes that first); if the shell cannot be started or dies, the command runs on a
channel of its own as before.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from typing import Optional, Tuple

import paramiko

READ = 65536
POLL = 0.05  # seconds between looks at the other stream while a command runs


class ShellDied(Exception):
    """The shell ended (or never started) before the command's markers came back."""


class CommandShell:
    """A running ``sh`` on one connection; ``run`` is for one thread at a time."""

    def __init__(self, transport: paramiko.Transport, timeout: Optional[float]) -> None:
        self.transport = transport
        self._token = secrets.token_hex(12).encode()
        self._out_marker = b"\n" + self._token + b" "
        self._err_marker = b"\n" + self._token + b"\n"
        # ChannelException (MaxSessions) and SSHException go to the caller, who runs the
        # command on a channel of its own (and says what failed there).
        self._channel = transport.open_session(timeout=timeout)
        try:
            self._channel.exec_command(b"exec sh")
        except BaseException:
            self._channel.close()
            raise
        self._out = b""  # read past the last marker (nothing, unless the login printed some)
        self._err = b""

    @property
    def alive(self) -> bool:
        channel = self._channel
        return not channel.closed and not channel.exit_status_ready() and self.transport.is_active()

    def run(self, command: bytes, timeout: Optional[float]) -> Tuple[int, bytes, bytes]:
        """(exit status, stdout, stderr) of ``command``; ``ShellDied`` when the shell ended
        before answering (the command may or may not have run: run it again elsewhere);
        ``socket.timeout`` after ``timeout`` seconds without its answer."""
        channel = self._channel
        # A group, so that the input of every part of it is /dev/null (a newline before the
        # brace, so that a command ending in a comment still ends there).
        script = (
            b"{ "
            + command
            + b"\n} </dev/null; printf '\\n%s %s\\n' "
            + self._token
            + b" \"$?\"; printf '\\n%s\\n' "
            + self._token
            + b" >&2\n"
        )
        channel.settimeout(timeout)
        try:
            channel.sendall(script)
        except (OSError, EOFError):  # its channel closed meanwhile: the shell is gone
            raise ShellDied("the shell on the server ended") from None
        deadline = None if timeout is None else time.monotonic() + timeout
        out = err = b""
        status: Optional[int] = None
        # Both streams are read as they come: errors left unread would fill the channel's
        # window and hold back the output (and its marker) behind them.
        channel.settimeout(POLL)
        while True:
            if status is None:
                at = self._out.find(self._out_marker)
                end = self._out.find(b"\n", at + len(self._out_marker)) if at >= 0 else -1
                if end >= 0:
                    try:
                        status = int(self._out[at + len(self._out_marker) : end])
                    except ValueError:
                        raise ShellDied("the shell on the server answered in a way it never does") from None
                    out, self._out = self._out[:at], self._out[end + 1 :]
            at = self._err.find(self._err_marker)
            if status is not None and at >= 0:
                err, self._err = self._err[:at], self._err[at + len(self._err_marker) :]
                return status, out, err
            if channel.recv_stderr_ready():
                chunk = channel.recv_stderr(READ)
                if not chunk:
                    raise ShellDied("the shell on the server ended")
                self._err += chunk
                continue
            try:
                chunk = channel.recv(READ) if status is None else channel.recv_stderr(READ)
            except socket.timeout:
                if deadline is not None and time.monotonic() > deadline:
                    raise
                continue
            if not chunk:
                raise ShellDied("the shell on the server ended")
            if status is None:
                self._out += chunk
            else:
                self._err += chunk

    def close(self) -> None:
        try:
            self._channel.close()
        except Exception:  # noqa: BLE001 - closing a channel of a dead connection
            pass


class ShellSlot:
    """At most one shell per connector: a thread that finds it busy runs its command on a
    channel of its own rather than wait (and a server with few sessions to give keeps them
    for the copies)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shell: Optional[CommandShell] = None
        self.broken = False  # a shell died on this connection: commands get channels of their own

    def run(
        self, transport: paramiko.Transport, command: bytes, timeout: Optional[float], open_timeout: float
    ) -> Optional[Tuple[int, bytes, bytes]]:
        """The command's result through the shell, or None when it was not run there (the
        shell is busy, cannot be started, or died before answering)."""
        if self.broken or not self._lock.acquire(blocking=False):
            return None
        try:
            shell = self._shell
            if shell is not None and (shell.transport is not transport or not shell.alive):
                shell.close()
                shell = self._shell = None
            if shell is None:
                try:
                    shell = self._shell = CommandShell(transport, open_timeout)
                except (paramiko.SSHException, EOFError, OSError):
                    return None  # the channel of its own says what is wrong, if anything
            try:
                return shell.run(command, timeout)
            except BaseException as exc:
                # The shell ended, or a timeout, a stop, a dropped connection: what it holds
                # is unknown, so it is not used again.
                shell.close()
                self._shell = None
                if not isinstance(exc, ShellDied):
                    raise
                self.broken = True
                return None
        finally:
            self._lock.release()

    def reset(self) -> None:
        """A new connection: a shell is tried again (the old one, on the old connection, is
        replaced when next used)."""
        self.broken = False
