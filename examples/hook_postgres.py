"""Copy FITS frames and put a row of their header metadata into a PostgreSQL table.

A Python hook (docs/hooks.md) given to the Worker: after each pass's copies are booked, it
inserts one row per copied frame into ``frames`` (created if missing), next to where the frame
now is. A frame booked again with the same checksum is not inserted twice.

    python examples/hook_postgres.py FROM TO DSN [DB]

``DSN`` is a libpq connection string (``host=db.example.org dbname=archive user=oeleo``; the
password from ``PGPASSWORD`` or ``~/.pgpass``). Needs psycopg2 (``pip install oeleo[postgres]``).
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import List

import psycopg2

from oeleo.checkers import FitsChecker
from oeleo.connectors import LocalConnector
from oeleo.hooks import Arrival
from oeleo.models import SimpleDbHandler
from oeleo.workers import Worker

USAGE = "usage: python examples/hook_postgres.py FROM TO DSN [DB]"

CREATE = """
CREATE TABLE IF NOT EXISTS frames (
    id bigserial PRIMARY KEY,
    path text NOT NULL,
    checksum text NOT NULL,
    size bigint NOT NULL,
    object text,
    date_obs text,
    exptime double precision,
    header jsonb NOT NULL DEFAULT '{}',
    archived timestamptz NOT NULL DEFAULT now(),
    UNIQUE (path, checksum)
)
"""

INSERT = """
INSERT INTO frames (path, checksum, size, object, date_obs, exptime, header)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (path, checksum) DO NOTHING
"""


class FrameRows:
    """A hook: one row per arrived file. Hooks of several files run at the same time, in
    threads: each call takes the connection in turn."""

    hook_name = "postgres-frames"

    def __init__(self, dsn: str) -> None:
        self.connection = psycopg2.connect(dsn)
        self.lock = threading.Lock()
        with self.connection, self.connection.cursor() as cursor:
            cursor.execute(CREATE)

    def __call__(self, arrival: Arrival) -> None:
        header = arrival.metadata
        exptime = header.get("EXPTIME")
        row = (
            arrival.external_name,
            arrival.checksum,
            arrival.size,
            header.get("OBJECT"),
            header.get("DATE-OBS"),
            float(exptime) if isinstance(exptime, (int, float)) else None,
            json.dumps(header),
        )
        with self.lock, self.connection, self.connection.cursor() as cursor:
            cursor.execute(INSERT, row)  # committed when the block ends, rolled back on an error

    def close(self) -> None:
        self.connection.close()


def main(argv: List[str]) -> int:
    args = argv[1:]
    if len(args) not in (3, 4):
        print(USAGE, file=sys.stderr)
        return 2
    source, destination, dsn = args[:3]
    db_name = args[3] if len(args) > 3 else "oeleo-file-list.db"
    try:
        rows = FrameRows(dsn)
    except psycopg2.Error as exc:
        print(f"cannot reach the metadata database: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    worker = Worker(
        checker=FitsChecker(),  # keeps the header keywords the hook puts in the row
        local_connector=LocalConnector(directory=Path(source)),
        external_connector=LocalConnector(directory=Path(destination)),
        bookkeeper=SimpleDbHandler(db_name),
        extension=".fits",
        subdirs=True,
        hooks=[rows],
    )
    try:
        summary = worker.run()
    finally:
        worker.close()
        rows.close()
    print(summary.describe())
    return summary.exit_status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
