"""A stored file's digest when the store does not return one: read back in chunks and hashed
here, or computed where the file is by the POSIX tools (``md5sum`` and friends), whose output
is parsed here. For any store that can open a stored file, or run a command next to it.
"""

from __future__ import annotations

import errno
from typing import Callable, ContextManager, Dict, FrozenSet, Iterable, Optional, Protocol

from oeleo.checkers import new_hash
from oeleo.errors import TransferError

READ_CHUNK = 1024 * 1024

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


class Readable(Protocol):
    """A stored file open for reading (a local file, an SFTP file, an HTTP response body)."""

    def read(self, size: int) -> bytes: ...


# -- reading a copy back -------------------------------------------------------------------
def hash_read_back(open_stored: Callable[[], ContextManager[Readable]], algorithm: str) -> str:
    """Hex digest of a stored file, read through ``open_stored()`` (a context manager that
    gives a binary file-like object and closes it) in chunks of ``READ_CHUNK`` bytes.
    ``algorithm`` is a hashlib name or ``crc32``."""
    digest = new_hash(algorithm)
    with open_stored() as stored:
        while True:
            chunk = stored.read(READ_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def hash_bytes(data: bytes, algorithm: str) -> str:
    """Hex digest of bytes already read back (a small file, right after it was written)."""
    digest = new_hash(algorithm)
    digest.update(data)
    return digest.hexdigest()


def read_back_each(names: Iterable[str], read_back: Callable[[str], str]) -> Dict[str, str]:
    """``{name: read_back(name)}``, leaving out the files that cannot be read (an ``OSError``
    or a ``TransferError``): ``check`` asks for each of those alone, which says why. A dropped
    connection is not left out: it goes on to the worker."""
    digests = {}
    for name in names:
        try:
            digests[name] = read_back(name)
        except (OSError, TransferError):
            continue
    return digests


# -- md5sum and friends on the server --------------------------------------------------------
def probe_command() -> str:
    """One command line that hashes nothing with every tool: which ones exist shows in its
    output (a login that runs no commands prints nothing)."""
    return "; ".join(f"{tool} /dev/null" for tool in HASH_COMMANDS.values())


def hashes_in_probe(output: bytes) -> FrozenSet[str]:
    """The algorithms whose tool answered ``probe_command()`` with the digest of nothing."""
    empty = {hash_bytes(b"", algorithm): algorithm for algorithm in HASH_COMMANDS}
    found = set()
    for line in output.decode("utf-8", "replace").splitlines():
        digest = line.split(" ", 1)[0].lstrip("\\")
        if digest in empty:
            found.add(empty[digest])
    return frozenset(found)


def parse_sums(output: bytes) -> Dict[str, str]:
    """``md5sum`` output to {path: digest}. A name with a backslash or a newline comes back
    escaped, its line starting with a backslash; a name that is not UTF-8 keeps its bytes as
    surrogate escapes."""
    found = {}
    for line in output.decode("utf-8", "surrogateescape").split("\n"):
        if not line:
            continue
        escaped = line.startswith("\\")
        if escaped:
            line = line[1:]
        digest, _, name = line.partition(" ")
        name = name[1:] if name[:1] in (" ", "*") else name  # text or binary mode
        if escaped:
            name = unescape(name)
        found[name] = digest
    return found


def unescape(name: str) -> str:
    """A name as ``md5sum`` escapes it (``\\n``, ``\\r``, ``\\\\``) back to itself."""
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


def sum_error(stderr: bytes, where: str) -> Optional[OSError]:
    """Why the tool printed no digest for one file, from its last line on stderr, as the
    ``OSError`` naming ``where`` (``host:path``); None when it does not say."""
    text = stderr.decode("utf-8", "replace").strip().splitlines()[-1] if stderr.strip() else ""
    if "No such file" in text:
        return FileNotFoundError(errno.ENOENT, "no such file or folder", where)
    if "Permission denied" in text:
        return PermissionError(errno.EACCES, "permission denied", where)
    if "Is a directory" in text:
        return IsADirectoryError(errno.EISDIR, "is a folder", where)
    return None
