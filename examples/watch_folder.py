"""Copy each new file as soon as the instrument has finished writing it (watch mode).

    python examples/watch_folder.py [MAX_RUNS [FULL_PASS_SECONDS]]

A first full pass copies what is there; then every file that appears or changes is copied once
it has been still for ``OELEO_MIN_AGE`` seconds (at least 1 s), and a full pass every
FULL_PASS_SECONDS (default 600) catches anything the file events missed. MAX_RUNS (default 0:
no limit) stops it after that many passes. The folders and the database come from the settings
(``OELEO_BASE_DIR_FROM``, ``OELEO_BASE_DIR_TO``, ``OELEO_DB_NAME``) in the environment or
``./.env``. Needs the ``watch`` extra (watchdog). Ctrl-C or SIGTERM stops cleanly.

The command ``oeleo watch`` does the same without a script.
"""

from __future__ import annotations

import signal
import sys
from typing import List

from oeleo.schedulers.watch import WatchScheduler
from oeleo.workers import simple_worker

SIGNAL_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


def main(argv: List[str]) -> int:
    args = argv[1:]
    max_runs = int(args[0]) if args else 0
    full_pass_every = float(args[1]) if len(args) > 1 else 600.0

    worker = simple_worker(include_subdirs=True)
    scheduler = WatchScheduler(worker, full_pass_every=full_pass_every, max_run_intervals=max_runs)
    last = scheduler.start()  # returns after max_runs passes, or on Ctrl-C/SIGTERM

    print(f"{scheduler.runs} runs, {scheduler.failed_runs} failed")
    if last is not None:
        print(f"last run: {last.describe()}")
    if scheduler.received_signal is not None:
        return SIGNAL_STATUS.get(scheduler.received_signal, 1)
    return 1 if scheduler.failed_runs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
