"""What every scheduler shares: a worker to run, and a clean stop on a signal."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any, Dict, Optional, Protocol, Tuple

if TYPE_CHECKING:
    from oeleo.workers import RunSummary

log = logging.getLogger("oeleo")

# Signals that stop a scheduler cleanly: Ctrl-C, SIGTERM, and SIGHUP (the terminal window
# closed) where the platform has it (not on Windows).
STOP_SIGNALS: Tuple[int, ...] = (signal.SIGINT, signal.SIGTERM) + (
    (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()
)


class PassWorker(Protocol):
    """What a scheduler asks of its worker: ``oeleo.workers.Worker``, or one of oeleo 0.7's
    shape (``release_db`` is used where there is one)."""

    def connect_to_db(self) -> None: ...

    def filter_local(self, **kwargs: Any) -> Any: ...

    def run(self) -> RunSummary: ...

    def check(self, update_db: bool = ..., force: bool = ...) -> Any: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


class SchedulerBase:
    """Runs ``worker`` passes until told to stop. Subclasses implement ``start``."""

    def __init__(self, worker: PassWorker) -> None:
        self.worker = worker
        self._stop = threading.Event()
        self._old_handlers: Dict[int, Any] = {}

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop after (or, abandoning the current file cleanly, during) the current pass."""
        self._stop.set()
        self.worker.stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _open_books(self) -> None:
        """Open (and lock) the books for one pass; a busy database raises DatabaseBusyError."""
        self.worker.connect_to_db()

    def _release_books(self) -> None:
        """Give the books and their lock back after a pass, so that a run started by hand
        while the scheduler waits is not refused; the connections to the stores stay open."""
        release = getattr(self.worker, "release_db", None)
        if release is not None:  # a worker of oeleo 0.7's shape keeps its books until close()
            release()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            self._old_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers.clear()

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        log.warning("received %s: stopping cleanly", signal.Signals(signum).name)
        self.received_signal = signum
        self.stop()

    received_signal: Optional[int] = None
