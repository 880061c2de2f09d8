"""Copy new and changed files again and again with oeleo's SimpleScheduler.

    python examples/scheduled.py [SECONDS [MAX_RUNS]]

Defaults: a pass every 300 seconds, no limit on the number of passes (0). Ctrl-C or SIGTERM
stops cleanly. The folders and the database come from the settings (``OELEO_BASE_DIR_FROM``,
``OELEO_BASE_DIR_TO``, ``OELEO_DB_NAME``, ``OELEO_FILTER_EXTENSION``), which ``simple_worker()``
reads from the environment and ``./.env``. Each pass adds a row to the ``oeleo_runs`` table.

The command ``oeleo schedule --every SECONDS --max-runs N`` does the same without a script.
"""

from __future__ import annotations

import signal
import sys
from typing import List

from oeleo.schedulers import SimpleScheduler
from oeleo.workers import simple_worker

SIGNAL_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}  # the shell's usual exit statuses


def main(argv: List[str]) -> int:
    args = argv[1:]
    interval = float(args[0]) if len(args) > 0 else 300.0
    max_runs = int(args[1]) if len(args) > 1 else 0

    worker = simple_worker(include_subdirs=True)
    scheduler = SimpleScheduler(worker, run_interval_time=interval, max_run_intervals=max_runs)
    last = scheduler.start()  # returns after max_runs passes, or on Ctrl-C/SIGTERM

    print(f"{scheduler.runs} runs, {scheduler.failed_runs} failed")
    if last is not None:
        print(f"last run: {last.describe()}")
    if scheduler.received_signal is not None:
        return SIGNAL_STATUS.get(scheduler.received_signal, 1)
    return 1 if scheduler.failed_runs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
