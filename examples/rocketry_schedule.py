"""Copy when a rocketry condition holds (needs the rocketry extra: pip install 'oeleo[rocketry]').

    python examples/rocketry_schedule.py [CONDITION [MAX_RUNS]]

Defaults: "every 5 minutes", no limit on the number of passes (0). A condition is any string
rocketry reads, such as "daily between 22:00 and 06:00" or "every 30 seconds", or a condition
object. The folders and the database come from the settings (``OELEO_BASE_DIR_FROM``,
``OELEO_BASE_DIR_TO``, ``OELEO_DB_NAME``), as in examples/scheduled.py. Ctrl-C or SIGTERM stops
cleanly.

rocketry is no longer maintained; the built-in scheduler does intervals, cron expressions and
night windows without it (examples/night_window.py). The command
``oeleo schedule --rocketry "every 5 minutes"`` does the same as this script.
"""

from __future__ import annotations

import signal
import sys
from typing import List

from oeleo.schedulers import RocketryScheduler
from oeleo.workers import simple_worker

SIGNAL_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


def main(argv: List[str]) -> int:
    args = argv[1:]
    condition = args[0] if args else "every 5 minutes"
    max_runs = int(args[1]) if len(args) > 1 else 0

    worker = simple_worker(include_subdirs=True)
    scheduler = RocketryScheduler(worker, schedule=condition, max_run_intervals=max_runs)
    last = scheduler.start()  # returns after max_runs passes, or on Ctrl-C/SIGTERM

    print(f"{scheduler.runs} runs ({condition}), {scheduler.failed_runs} failed")
    if last is not None:
        print(f"last run: {last.describe()}")
    if scheduler.received_signal is not None:
        return SIGNAL_STATUS.get(scheduler.received_signal, 1)
    return 1 if scheduler.failed_runs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
