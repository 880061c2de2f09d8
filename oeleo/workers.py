"""The published oeleo 0.7 names, as a thin facade: ``Worker``, ``simple_worker``,
``ssh_worker`` (and the newer ``s3_worker``, ``arcsecond_worker``, ``sharepoint_worker``,
``worker_from_settings``, ``bookkeeper_from_settings``, ``RunSummary``, ``CheckReport``). The
work lives in modules of one concern each: ``oeleo.worker`` (one pass), ``oeleo.plan`` (what to copy),
``oeleo.connectors.base`` (the transfer engine), ``oeleo.summary``, ``oeleo.factories``.
"""

from __future__ import annotations

from oeleo.factories import (
    arcsecond_worker,
    bookkeeper_from_settings,
    s3_worker,
    sharepoint_worker,
    simple_worker,
    ssh_worker,
    worker_from_settings,
)
from oeleo.summary import CheckReport, RunSummary
from oeleo.worker import Worker

__all__ = [
    "CheckReport",
    "RunSummary",
    "Worker",
    "arcsecond_worker",
    "bookkeeper_from_settings",
    "s3_worker",
    "sharepoint_worker",
    "simple_worker",
    "ssh_worker",
    "worker_from_settings",
]
