"""Copy only at night: a pass every 10 minutes between 22:00 and 06:00, none in the day.

    python examples/night_window.py [START END [SECONDS [MAX_RUNS]]]

Defaults: 22:00 06:00, a pass every 600 seconds inside the window, no limit on the number of
passes (0). Outside the window it sleeps until the window opens. The folders and the database
come from the settings (``OELEO_BASE_DIR_FROM``, ``OELEO_BASE_DIR_TO``, ``OELEO_DB_NAME``),
which ``simple_worker()`` reads from the environment and ``./.env``. Ctrl-C or SIGTERM stops
cleanly.

The command ``oeleo schedule --between 22:00 06:00 --every 10m`` does the same without a
script; a cron expression does it too: ``schedule="*/10 22-23,0-5 * * *"``.
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
    start, end = (args[0], args[1]) if len(args) > 1 else ("22:00", "06:00")
    interval = float(args[2]) if len(args) > 2 else 600.0
    max_runs = int(args[3]) if len(args) > 3 else 0

    worker = simple_worker(include_subdirs=True)
    scheduler = SimpleScheduler(
        worker,
        run_interval_time=interval,  # seconds between passes inside the window
        max_run_intervals=max_runs,
        schedule=f"between {start} {end}",
    )
    last = scheduler.start()  # returns after max_runs passes, or on Ctrl-C/SIGTERM

    print(f"{scheduler.runs} runs ({scheduler.rule.describe()}), {scheduler.failed_runs} failed")
    if last is not None:
        print(f"last run: {last.describe()}")
    if scheduler.received_signal is not None:
        return SIGNAL_STATUS.get(scheduler.received_signal, 1)
    return 1 if scheduler.failed_runs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
