"""File names as the books hold them, and as people read them.

On POSIX a file name is bytes. Python hands a name that is not valid UTF-8 (``m\\xe9sure.csv``
written in Latin-1 by old instrument software) to oeleo as a ``str`` with "surrogate
escapes" (``'m\\udce9sure.csv'``), which a database cannot store. The books therefore keep a
lossless text form of every name:

- a name that is valid UTF-8 and holds no ``‛`` (U+201B) is kept as it is (nearly all names);
- a byte that is not UTF-8 becomes ``‛`` and two hex digits (``m‛E9sure.csv``), and a ``‛``
  of the name itself becomes ``‛‛`` (and an unpaired UTF-16 half of a Windows name
  ``‛uD800``), so that no two names share a form (rclone's encoding
  of invalid bytes, with the same quote character).

``to_books`` and ``from_books`` are each other's inverse for every name; ``printable``
gives a form that any terminal, log file or pipe can show (``m\\xe9sure.csv``).
"""

from __future__ import annotations

import os
import re

QUOTE = "\u201b"  # ‛ SINGLE HIGH-REVERSED-9 QUOTATION MARK, as rclone uses it
_QUOTED = re.compile(QUOTE + "(" + QUOTE + "|[0-9A-F]{2}|u[0-9A-F]{4})")


def to_books(name: str) -> str:
    """The text the books store for ``name`` (a str that may hold surrogate escapes)."""
    if name.isascii():
        return name  # the common case: nothing to escape
    if QUOTE in name:
        name = name.replace(QUOTE, QUOTE + QUOTE)
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    out = []
    for char in name:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"{QUOTE}{code - 0xDC00:02X}")
        elif 0xD800 <= code <= 0xDFFF:  # an unpaired UTF-16 half (a Windows name)
            out.append(f"{QUOTE}u{code:04X}")
        else:
            out.append(char)
    return "".join(out)


def from_books(text: str) -> str:
    """The name (with surrogate escapes where it had bytes that are not UTF-8) of a books text."""
    if QUOTE not in text:
        return text

    def unquote(match: re.Match) -> str:
        found = match.group(1)
        if found == QUOTE:
            return QUOTE
        if found[0] == "u":
            return chr(int(found[1:], 16))
        return chr(0xDC00 + int(found, 16))

    return _QUOTED.sub(unquote, text)


# Control characters, and the ones that reorder or break a line where they are shown: the bidi
# controls (U+202E turns "txt.exe" around) and the line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROL_NAMES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _control(match: re.Match) -> str:
    char = match.group()
    code = ord(char)
    return _CONTROL_NAMES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


# What a backslash in a printed name may start: an escape of printable() (\\xe9, \\n, \\u202e)
# or a doubled backslash.
_ESCAPE_LIKE = re.compile(r"\\(?:x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|[nrt\\])")


def printable(name: str) -> str:
    """``name`` for people: bytes that are not UTF-8 shown as ``\\xe9``, control characters as
    ``\\n``, ``\\t``, ``\\x1b`` (a newline in a name never makes a line of its own in a log or
    on the console), the bidi controls and line separators as ``\\u202e`` (a name cannot turn
    the rest of its line around), the rest as it is.

    Two names never print alike: where a name holds a backslash and something is escaped, or
    a backslash is followed by what an escape looks like (the name ``bad\\xe9.csv`` typed with
    a backslash, beside ``bad`` + the byte 0xE9 + ``.csv``), every backslash of the name is
    shown doubled, as Python's ``repr`` does (``bad\\\\xe9.csv``). A backslash that can mean
    nothing else stays single (``back\\slash.csv``). On Windows, where a backslash is a
    separator and never part of a name, it stays single (``C:\\data\\new``).

    For free text that quotes names (an error's reason): ``printable_text``."""
    if "\\" in name and os.name != "nt":
        doubled = name.replace("\\", "\\\\")
        escaped = _escaped(doubled)
        if escaped != doubled or _ESCAPE_LIKE.search(name):
            return escaped
        return name  # only backslashes that start no escape: as they are
    return _escaped(name)


def printable_text(text: str) -> str:
    """``text`` (a reason, a message that may quote names) for people: escaped as ``printable``
    escapes a name, its own backslashes left as they are."""
    return _escaped(text)


def _escaped(name: str) -> str:
    if name.isascii():
        return name if name.isprintable() else _CONTROL.sub(_control, name)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        try:
            name = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that stands for no byte (Windows)
            name = name.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(_control, name)


# The password of user:password@host, in a URL (http://, a broken http//) or at the start of a
# value or word without a scheme (OELEO_S3_ENDPOINT_URL=alice:pw@minio.lab:9000).
_PASSWORD = re.compile(
    r"(?P<head>(?:[A-Za-z][A-Za-z0-9+.\-]*:)?//[^:/@\s'\"<>]*:|(?:^|(?<=[\s'\"(=]))[^:/@\s'\"<>]+:)"
    r"[^@/\s'\"<>]+@"
)


def hide_passwords(text: str) -> str:
    """``text`` with the password of every ``user:password@`` in it shown as ``***``."""
    return _PASSWORD.sub(r"\g<head>***@", text) if "@" in text else text


def without_name(reason: str, relpath: str) -> str:
    """``cannot commit (a.csv: refused)`` -> ``cannot commit (refused)``, and ``a.csv:
    refused`` -> ``refused``, for a line that names the file already (``failed a.csv: ...``)."""
    name = f"{printable(relpath)}: "
    if reason.startswith(name):
        return reason[len(name) :]
    return reason.replace(f"({name}", "(", 1)
