"""What a pass did (``RunSummary``) and how two sides compare (``CheckReport``): plain values
that the worker fills in and the reporters, the command and the schedulers read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from oeleo.errors import Behaviour
from oeleo.units import counted, human_bytes


def _count_files(n: int) -> str:
    return counted(n, "file")


NOT_REPLACED = "already there, not replaced (the store does not overwrite files)"
# Every booked reason of a file the store keeps in another version starts so: not an error.
NOT_REPLACED_START = "already there, not replaced"


def not_replaced_reason(words: Optional[str] = None) -> str:
    """The reason booked for a file the store keeps in another version: ``NOT_REPLACED``,
    then the store's own words when it gave some."""
    words = (words or "").strip()
    if not words or words.startswith(NOT_REPLACED_START):
        return words or NOT_REPLACED
    return f"{NOT_REPLACED}: {words}"


# How the booked reason of a file starts that a run stopped before (a full destination, a store
# found away): not a failure of its own; ``oeleo status`` lists these files apart.
LEFT_START = "left for the next run when the run stopped: "


def is_left(reason: Optional[str]) -> bool:
    """Whether a booked reason says the file was left because its run stopped."""
    return bool(reason) and str(reason).startswith(LEFT_START)


def is_not_replaced(reason: Optional[str]) -> bool:
    """Whether a booked reason says "already there, not replaced" (a note, not an error)."""
    return bool(reason) and str(reason).startswith(NOT_REPLACED_START)


@dataclass
class RunSummary:
    """What one pass did. ``exit_status`` is 0 when every file is fine, 1 when some failed."""

    listed: int = 0
    copied: int = 0
    failed: int = 0
    unchanged: int = 0
    locked: int = 0
    too_young: int = 0
    changing: int = 0
    incomplete: int = 0  # a checker says the file is not whole yet (left for the next run)
    vanished: int = 0
    not_replaced: int = 0  # changed, but the store never replaces a file it holds
    skipped: int = 0  # symbolic links and other entries that are not copied (a notice each)
    unbooked: int = 0  # copies in place whose row could not be written (copied again next run)
    # A pass that stopped early (the store away for good, a stop asked): the files it did not
    # finish, after the one whose failure stopped it (said once, not once per file).
    left: int = 0
    bytes_copied: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    stopped: bool = False
    fatal: Optional[str] = None
    books_error: Optional[str] = None  # the books could not be written: what the database said
    would_copy: List[str] = field(default_factory=list)
    errors: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """0 all good, 1 some files failed or the run stopped early, 2 the books could not be
        written: the statuses of those behaviours (``oeleo.errors.Behaviour``)."""
        if self.books_error:
            return Behaviour.BOOKS.exit_status
        if self.fatal:
            return Behaviour.STOP_RUN.exit_status
        return Behaviour.FAIL_FILE.exit_status if self.failed else 0

    @property
    def status(self) -> str:
        if self.stopped:
            return "stopped"
        return "failed" if self.exit_status else "ok"

    def describe(self) -> str:
        if self.dry_run:
            head = f"dry run: would copy {len(self.would_copy)} of {_count_files(self.listed)}"
        else:
            rate = self.bytes_copied / self.seconds if self.seconds > 0 else 0.0
            head = (
                f"copied {_count_files(self.copied)} ({human_bytes(self.bytes_copied)}, "
                f"{human_bytes(rate)}/s), {self.failed} failed"
            )
        parts = [head, f"{self.unchanged} unchanged", f"{self.locked} locked"]
        if self.too_young:
            parts.append(f"{self.too_young} too young")
        if self.changing:
            parts.append(f"{self.changing} changing (left for the next run)")
        if self.incomplete:
            parts.append(f"{self.incomplete} incomplete, left for the next run")
        if self.vanished:
            parts.append(f"{self.vanished} vanished")
        if self.not_replaced:
            parts.append(f"{self.not_replaced} already there, not replaced")
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        text = ", ".join(parts) + f" in {self.seconds:.2f} s"
        if self.books_error:
            text += f"; the books could not be written: {self.books_error}"
            if self.unbooked:
                text += f" ({_count_files(self.unbooked)} copied but not booked: copied again next run)"
        elif self.fatal:
            text += f"; stopped early: {self.fatal}"
        elif self.stopped:
            text += "; stopped on request"
        if self.left and not self.books_error:
            text += f"; {_count_files(self.left)} left for the next run"
        return text


@dataclass
class CheckReport:
    """How the two sides compare (``Worker.check``)."""

    same: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    different: List[str] = field(default_factory=list)
    locked: List[str] = field(default_factory=list)
    errors: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def in_sync(self) -> bool:
        return not (self.missing or self.different or self.errors)
