"""What stores reached through a shell share: command lines for many files at once, kept
under the length a server takes (one ``md5sum`` for a whole folder, one ``sync`` for a batch)."""

from __future__ import annotations

import shlex
from typing import Iterator, List, Sequence, Tuple


def command_lines(tool: str, arguments: Sequence[str], limit: int) -> Iterator[Tuple[str, List[str]]]:
    """``tool arg1 arg2 ...`` with each argument shell-quoted, in as few command lines of at
    most ``limit`` bytes as it takes (an argument longer than that gets a line of its own);
    yields each line with the arguments it holds. Names that are not UTF-8 count as their
    bytes (surrogate escapes)."""
    batch: List[str] = []
    quoted: List[str] = []
    length = len(tool)
    for argument in arguments:
        text = shlex.quote(argument)
        size = len(text.encode("utf-8", "surrogateescape")) + 1
        if batch and length + size > limit:
            yield " ".join([tool, *quoted]), batch
            batch, quoted, length = [], [], len(tool)
        batch.append(argument)
        quoted.append(text)
        length += size
    if batch:
        yield " ".join([tool, *quoted]), batch
