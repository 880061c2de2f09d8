"""Copy files and hand each one that arrived to a dask.distributed cluster.

A Python hook (docs/hooks.md) given to the Worker: for each copied file it submits a task
(``reduce_frame`` here: a stand-in for a pipeline's first step) to the cluster and returns at
once, so the copies never wait for the pipeline. The futures are kept: dask forgets a task whose
future is dropped. After the pass the script waits for them and prints each result.

    python examples/hook_dask.py FROM TO [SCHEDULER] [DB]

``SCHEDULER`` is a scheduler address (``tcp://pipeline.example.org:8786``); without one a
``LocalCluster`` is started in this process. Needs ``pip install distributed``.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List

from distributed import Client, Future, LocalCluster

from oeleo.checkers import ChecksumChecker
from oeleo.connectors import LocalConnector
from oeleo.hooks import Arrival
from oeleo.models import SimpleDbHandler
from oeleo.workers import Worker

USAGE = "usage: python examples/hook_dask.py FROM TO [SCHEDULER] [DB]"


def reduce_frame(local_path: str, external_name: str, header: Dict[str, Any]) -> Dict[str, Any]:
    """Runs on a dask worker: reads the frame (here its size and md5) where the cluster sees it."""
    digest = hashlib.md5()
    size = 0
    with open(local_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return {"path": external_name, "size": size, "md5": digest.hexdigest(), "object": header.get("OBJECT")}


class SubmitToDask:
    """A hook: one task per arrived file; ``futures`` keeps them (by local name)."""

    hook_name = "dask-submit"

    def __init__(self, client: Client) -> None:
        self.client = client
        self.futures: Dict[str, Future] = {}
        self.lock = threading.Lock()  # hooks of several files run at the same time

    def __call__(self, arrival: Arrival) -> None:
        future = self.client.submit(
            reduce_frame,
            arrival.local_path,
            arrival.external_name,
            arrival.metadata,
            key=f"reduce-{arrival.checksum}-{arrival.local_name}",
        )
        with self.lock:
            self.futures[arrival.local_name] = future


def run(source: str, destination: str, client: Client, db_name: str) -> Dict[str, Any]:
    """One pass with the hook; returns the pipeline's results by local name."""
    submit = SubmitToDask(client)
    worker = Worker(
        checker=ChecksumChecker(),
        local_connector=LocalConnector(directory=Path(source)),
        external_connector=LocalConnector(directory=Path(destination)),
        bookkeeper=SimpleDbHandler(db_name),
        subdirs=True,
        hooks=[submit],
    )
    try:
        summary = worker.run()
    finally:
        worker.close()
    print(summary.describe())
    names = list(submit.futures)
    results = client.gather([submit.futures[name] for name in names])
    return dict(zip(names, results))


def main(argv: List[str]) -> int:
    args = argv[1:]
    if len(args) not in (2, 3, 4):
        print(USAGE, file=sys.stderr)
        return 2
    source, destination = args[:2]
    address = args[2] if len(args) > 2 and args[2] else None
    db_name = args[3] if len(args) > 3 else "oeleo-file-list.db"
    if address:
        with Client(address) as client:
            results = run(source, destination, client, db_name)
    else:
        with LocalCluster(processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
            results = run(source, destination, client, db_name)
    for name, result in sorted(results.items()):
        print(f"{name}: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
