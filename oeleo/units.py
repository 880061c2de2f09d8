"""Numbers as people read them: counts with their noun, sizes, durations."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime


def counted(n: int, noun: str) -> str:
    """``1 file``, ``2 files``: a count with its noun (nouns that take an s)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def human_seconds(seconds: float) -> str:
    """``0.4 s``, ``3 min 05 s``, ``2 h 07 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def from_iso(text: str) -> datetime:
    """``datetime.fromisoformat`` as Python 3.11 reads it, on 3.9 and 3.10 too: a trailing ``Z``
    (UTC) and more than six digits of a second (SharePoint's seven) are taken. ``ValueError``
    for what is not an ISO date and time."""
    import re
    from datetime import datetime

    value = text.strip()
    if value[-1:] in ("Z", "z"):
        value = value[:-1] + "+00:00"
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", value))
