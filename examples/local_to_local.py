"""Copy the files of one folder to another, once, with a Worker built by hand.

This is the script of the oeleo 0.7 README, run for one pass instead of a ``while True`` loop:

    python examples/local_to_local.py FROM TO [DB]

Arguments left out are read from ``OELEO_BASE_DIR_FROM``, ``OELEO_BASE_DIR_TO`` and
``OELEO_DB_NAME`` (the environment or ``./.env``); ``OELEO_FILTER_EXTENSION`` picks the
extensions (all files when empty). Exit status 0 when every file is fine, 1 when some failed,
2 when a folder is not given.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List

import dotenv

from oeleo.checkers import ChecksumChecker
from oeleo.connectors import LocalConnector
from oeleo.models import SimpleDbHandler
from oeleo.utils import start_logger
from oeleo.workers import Worker

USAGE = "usage: python examples/local_to_local.py FROM TO [DB]  (or set OELEO_BASE_DIR_FROM/_TO)"


def main(argv: List[str]) -> int:
    dotenv.load_dotenv(Path.cwd() / ".env")  # ./.env, as the oeleo command reads it
    start_logger()  # a rotating oeleo.log in OELEO_LOG_DIR, else in the current folder

    args = argv[1:]
    base_directory_from = args[0] if len(args) > 0 else os.environ.get("OELEO_BASE_DIR_FROM")
    base_directory_to = args[1] if len(args) > 1 else os.environ.get("OELEO_BASE_DIR_TO")
    db_name = args[2] if len(args) > 2 else os.environ.get("OELEO_DB_NAME", "oeleo-file-list.db")
    filter_extension = os.environ.get("OELEO_FILTER_EXTENSION", "")
    if not base_directory_from or not base_directory_to:
        print(USAGE, file=sys.stderr)
        return 2

    worker = Worker(
        checker=ChecksumChecker(),
        local_connector=LocalConnector(directory=Path(base_directory_from)),
        external_connector=LocalConnector(directory=Path(base_directory_to)),
        bookkeeper=SimpleDbHandler(db_name),
        extension=filter_extension,
        subdirs=True,  # oeleo 0.7 looked at the top folder only; this copies subfolders too
    )
    worker.connect_to_db()
    try:
        worker.filter_local()
        summary = worker.run()
    finally:
        worker.close()

    print(summary.describe())
    for name, reason in summary.errors:
        print(f"failed {name}: {reason}", file=sys.stderr)
    return summary.exit_status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
