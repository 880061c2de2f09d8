"""paramiko's private SFTP helpers, in one place: what the ssh connector needs beyond paramiko's API.

Why they are needed: paramiko's public calls wait for one answer at a time, and a pipelined
``SFTPFile`` drops the answer of a write (and with it a failed write: a full disk) when the
answer of another request is awaited first. The ssh connector sends a small file's writes,
its time and a read-back all at once (one round trip for the whole file), forces a batch of
files to disk in two round trips, and reads every answer itself, in the order the requests
went out, so that no failure is dropped. It also lists folders keeping names that are not
UTF-8 as their bytes, which ``listdir_attr`` cannot.

Many small requests also go out together (``Corked``): paramiko makes one SSH message of
each request, and its cost per message (~55 µs) is most of a small file's; held back and sent
as one write, a small file's write, time, read-back and close are one message.

That takes paramiko's internals: ``SFTPClient._async_request``, ``._read_response``,
``._send_packet``, ``._write_all`` and ``._convert_status``, ``SFTPFile._reqs`` and ``._close(async_=True)``,
``SFTPAttributes._from_msg`` and ``paramiko.sftp.int64``. They are checked once, at import:
``AVAILABLE`` says whether they are all there with the call shape used here, ``MISSING``
names those that are not. Without them ``listdir`` and ``close_without_waiting`` use public
calls, and the connector asks ``AVAILABLE`` before the rest and copies through public calls:
more round trips, but every write's answer is still read, and the same bytes end up on the
server.
tests/test_sftp_wire.py fails, naming the helper and paramiko's version, after an upgrade
that removes or renames one.
"""

from __future__ import annotations

import errno
import inspect
import struct
from collections import deque
from typing import Any, Callable, List, Tuple

import paramiko
import paramiko.sftp

# The protocol's numbers (draft-ietf-secsh-filexfer-02, which OpenSSH speaks): they do not
# change with paramiko.
_OPEN, _CLOSE, _READ, _FSETSTAT, _OPENDIR, _READDIR, _REMOVE = 3, 4, 5, 10, 11, 12, 13
_HANDLE, _DATA, _NAME = 102, 103, 104
_EXTENDED = 200
_FLAG_READ, _FLAG_WRITE, _FLAG_CREATE, _FLAG_EXCL = 0x1, 0x2, 0x8, 0x20
_STATUS = 101

int64: Any = getattr(paramiko.sftp, "int64", None)  # paramiko sends an int64 as 8 bytes, a plain int as 4


class _NoServer:
    """Just enough of an ``SFTPClient`` to build an ``SFTPFile`` without a server."""

    sock = None


def _cannot_call(func: Any, *args: Any, **kwargs: Any) -> bool:
    try:
        inspect.signature(func).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return True
    return False


def _missing() -> Tuple[str, ...]:
    """The internals this module uses that this paramiko lacks, or has with another call shape."""
    missing: List[str] = []
    client, file, attributes = paramiko.SFTPClient, paramiko.SFTPFile, paramiko.SFTPAttributes
    # (where, how this module calls it, check): a check is true when the call cannot work
    calls: List[Tuple[Any, str, Callable[[Any], bool]]] = [
        (
            client,
            "_async_request(fileobj, kind, *args)",
            lambda f: _cannot_call(f, None, None, _READ, b"h", 0),
        ),
        (client, "_read_response(request)", lambda f: _cannot_call(f, None, 0)),
        (client, "_send_packet(kind, message)", lambda f: _cannot_call(f, None, _READ, None)),
        (client, "_write_all(data)", lambda f: _cannot_call(f, None, b"")),
        (client, "_convert_status(message)", lambda f: _cannot_call(f, None, None)),
        (file, "_close(async_=True)", lambda f: _cannot_call(f, None, async_=True)),
        (attributes, "_from_msg(message, name, longname)", lambda f: _cannot_call(f, None, "n", "l")),
    ]
    for owner, call, fails in calls:
        name = call.partition("(")[0]
        func = getattr(owner, name, None)
        if not callable(func) or fails(func):
            missing.append(f"{owner.__name__}.{call}")
    wide = getattr(paramiko.sftp, "int64", None)
    if not (isinstance(wide, type) and issubclass(wide, int)):
        missing.append("paramiko.sftp.int64")
    try:
        handle = file(_NoServer(), b"", "w")  # type: ignore[arg-type]
        # Nothing to close: no request goes out when it is collected.
        handle._closed = True  # type: ignore[attr-defined]
        pending = getattr(handle, "_reqs", None)
    except Exception:  # noqa: BLE001 - a constructor that changed shape is a missing internal too
        pending = None
    if not isinstance(pending, deque):
        missing.append("SFTPFile._reqs (the deque of pipelined writes)")
    return tuple(missing)


MISSING: Tuple[str, ...] = _missing()
AVAILABLE: bool = not MISSING


# -- requests sent without waiting: each returns the request's id for read_answer() ------------
def send_read(sftp: paramiko.SFTPClient, handle: paramiko.SFTPFile, offset: int, length: int) -> int:
    """Ask for ``length`` bytes of an open file from ``offset``."""
    return sftp._async_request(type(None), _READ, handle.handle, int64(offset), length)  # type: ignore[attr-defined]


def send_set_times(sftp: paramiko.SFTPClient, handle: paramiko.SFTPFile, atime: int, mtime: int) -> int:
    """Set an open file's access and modification times (whole seconds)."""
    attrs = paramiko.SFTPAttributes()
    attrs.st_atime, attrs.st_mtime = atime, mtime
    return sftp._async_request(type(None), _FSETSTAT, handle.handle, attrs)  # type: ignore[attr-defined]


def send_open_for_reading(sftp: paramiko.SFTPClient, path: bytes) -> int:
    """Open a file read-only; its answer, read with ``read_handle``, is the server's handle."""
    return sftp._async_request(type(None), _OPEN, path, _FLAG_READ, paramiko.SFTPAttributes())  # type: ignore[attr-defined]


def send_fsync(sftp: paramiko.SFTPClient, handle: bytes) -> int:
    """Force an open file to the server's disk (OpenSSH's ``fsync@openssh.com``)."""
    return sftp._async_request(type(None), _EXTENDED, "fsync@openssh.com", handle)  # type: ignore[attr-defined]


def send_close(sftp: paramiko.SFTPClient, handle: bytes) -> int:
    """Close a handle that ``send_open_for_reading`` opened."""
    return sftp._async_request(type(None), _CLOSE, handle)  # type: ignore[attr-defined]


def send_posix_rename(sftp: paramiko.SFTPClient, src: bytes, dst: bytes) -> int:
    """Move ``src`` onto ``dst``, replacing it atomically (OpenSSH's ``posix-rename@openssh.com``)."""
    return sftp._async_request(type(None), _EXTENDED, "posix-rename@openssh.com", src, dst)  # type: ignore[attr-defined]


def send_close_of(handle: paramiko.SFTPFile) -> int:
    """Close an open ``SFTPFile`` now, whatever answers of its writes are still to be read
    (``wait_for_writes`` reads them, then this one's with ``read_answer``)."""
    handle.set_pipelined(False)  # paramiko's close would wait for the writes' answers first
    handle.flush()
    handle._closed = True  # type: ignore[attr-defined]  # paramiko sends no second CLOSE
    return send_close(handle.sftp, handle.handle)  # type: ignore[arg-type]  # bytes, typed as its handle


class Corked:
    """Hold back every request sent on ``sftp`` inside ``with Corked(sftp) as cork:`` and send
    them together with ``cork.send()`` (one SSH message where paramiko makes one each): for
    the few small requests of one small file, or the renames of a batch. Whatever is still
    held when the block ends (it raised) is sent then, so no answer is waited for in vain."""

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        self.sftp = sftp
        self._held: List[bytes] = []
        self._size = 0

    def __enter__(self) -> Corked:
        self.sftp._send_packet = self._hold  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc: object) -> None:
        del self.sftp._send_packet  # type: ignore[attr-defined]  # paramiko's own again
        if self._held:
            try:
                self.send()
            except Exception:  # noqa: BLE001 - the block's own error is the one to report
                if exc[0] is None:
                    raise

    def _hold(self, kind: int, message: paramiko.Message) -> None:
        data = message.asbytes()
        self._held.append(struct.pack(">IB", len(data) + 1, kind) + data)
        self._size += len(data) + 5
        if self._size >= CORK_LIMIT:
            self.send()

    def send(self) -> None:
        """Send what is held (a write of the channel's; paramiko splits it into SSH messages
        of the size the server takes)."""
        held, self._held, self._size = self._held, [], 0
        if held:
            self.sftp._write_all(b"".join(held))  # type: ignore[attr-defined]


# Held back at most: beyond this much the requests go out (a large file's writes are not
# kept in memory).
CORK_LIMIT = 1024 * 1024


class Kept:
    """A request whose answer is kept, not dropped, when another request's answer is awaited
    first (paramiko hands such an answer to the object a request was sent for)."""

    def __init__(self) -> None:
        self.request = -1
        self.answer: Any = None  # (kind, message) once passed over

    def _async_response(self, kind: int, message: paramiko.Message, request: int) -> None:
        self.answer = (kind, message)


def send_create(sftp: paramiko.SFTPClient, path: bytes) -> Kept:
    """Create a new file (it must not exist) open for writing and reading; ``take_file``
    gives it as an ``SFTPFile`` whenever it is needed, whatever was read meanwhile."""
    kept = Kept()
    flags = _FLAG_READ | _FLAG_WRITE | _FLAG_CREATE | _FLAG_EXCL
    kept.request = sftp._async_request(kept, _OPEN, path, flags, paramiko.SFTPAttributes())  # type: ignore[attr-defined]
    return kept


def take_file(sftp: paramiko.SFTPClient, kept: Kept) -> paramiko.SFTPFile:
    """The file a ``send_create`` request opened (``OSError`` when the server refused it)."""
    if kept.answer is None:
        kind, message = sftp._read_response(kept.request)  # type: ignore[attr-defined]
    else:
        kind, message = kept.answer
        if kind == _STATUS:
            sftp._convert_status(message)  # type: ignore[attr-defined]  # raises the failure
    if kind != _HANDLE:
        raise paramiko.SFTPError(f"expected an SFTP answer of type {_HANDLE}, got {kind}")
    return paramiko.SFTPFile(sftp, message.get_binary(), "w+", bufsize=0)


def send_remove(sftp: paramiko.SFTPClient, path: bytes) -> int:
    """Remove a file."""
    return sftp._async_request(type(None), _REMOVE, path)  # type: ignore[attr-defined]


# -- answers --------------------------------------------------------------------------------
def read_answer(sftp: paramiko.SFTPClient, request: int) -> paramiko.Message:
    """Wait for the answer to ``request``; answers to earlier requests that nobody waits for
    are read and dropped on the way, so wait for them first. A failure status raises
    ``OSError`` (``errno`` set for a missing file and a refused permission), the end of a
    file or listing ``EOFError``, a lost connection ``paramiko.SSHException``."""
    return _answer(sftp, request)


def read_handle(sftp: paramiko.SFTPClient, request: int) -> bytes:
    """The handle a ``send_open_for_reading`` request got."""
    return _answer(sftp, request, _HANDLE).get_binary()


def read_data(sftp: paramiko.SFTPClient, request: int) -> bytes:
    """The bytes a ``send_read`` request got: empty at the end of the file."""
    try:
        return _answer(sftp, request, _DATA).get_string()
    except EOFError:  # here the end of the file, not of the connection
        return b""


def _answer(sftp: paramiko.SFTPClient, request: int, expected: int = 0) -> paramiko.Message:
    kind, message = sftp._read_response(request)  # type: ignore[attr-defined]
    if expected and kind != expected:
        raise paramiko.SFTPError(f"expected an SFTP answer of type {expected}, got {kind}")
    return message


def wait_for_writes(handle: paramiko.SFTPFile) -> None:
    """Read the answer of every pipelined write to ``handle``, in the order they went out;
    the first that failed raises (``OSError``)."""
    pending = handle._reqs  # type: ignore[attr-defined]
    while pending:
        read_answer(handle.sftp, pending.popleft())


def close_without_waiting(handle: paramiko.SFTPFile) -> None:
    """Close ``handle`` without waiting for the answer, which the next request reads and
    drops: for a handle whose failures were all reported already. Without the internals,
    an ordinary close (one round trip)."""
    if AVAILABLE:
        handle._close(async_=True)  # type: ignore[attr-defined]
    else:
        handle.close()


# -- listing -----------------------------------------------------------------------------------
def listdir(sftp: paramiko.SFTPClient, folder: bytes) -> List[paramiko.SFTPAttributes]:
    """``listdir_attr`` that keeps names which are not UTF-8 (paramiko's would fail on them):
    each ``filename`` is the server's bytes decoded with surrogate escapes, the form that
    ``os.fsencode`` turns back into the same bytes. Without the internals, ``listdir_attr``,
    and a name that is not UTF-8 makes the listing fail (``OSError``, ``EILSEQ``)."""
    if not AVAILABLE:
        try:
            return sftp.listdir_attr(folder)  # type: ignore[arg-type]
        except UnicodeDecodeError:
            raise OSError(
                errno.EILSEQ,
                f"it holds a name that is not UTF-8, which paramiko {paramiko.__version__} "
                f"cannot list (it lacks {', '.join(MISSING)})",
            ) from None
    handle = _answer(sftp, sftp._async_request(type(None), _OPENDIR, folder), _HANDLE).get_binary()  # type: ignore[attr-defined]
    found = []
    try:
        while True:
            try:
                message = _answer(sftp, sftp._async_request(type(None), _READDIR, handle), _NAME)  # type: ignore[attr-defined]
            except EOFError:  # the end of the listing, not of the connection
                break
            for _ in range(message.get_int()):
                name = message.get_string().decode("utf-8", "surrogateescape")
                longname = message.get_string().decode("utf-8", "surrogateescape")
                attrs = paramiko.SFTPAttributes._from_msg(message, name, longname)  # type: ignore[attr-defined]
                if name not in (".", ".."):
                    found.append(attrs)
    finally:
        read_answer(sftp, send_close(sftp, handle))
    return found
