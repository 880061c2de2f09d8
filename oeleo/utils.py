"""Helpers kept under their oeleo 0.7 names: ``start_logger`` and ``calculate_checksum``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Union

from oeleo.checkers import hash_file
from oeleo.reporters import start_file_log

SCREEN_FORMAT = "%(message)s"


def calculate_checksum(file_path: Union[str, os.PathLike]) -> str:
    """md5 hex digest of a local file."""
    return hash_file(Path(file_path), "md5")


def start_logger(
    logdir: Union[str, os.PathLike, None] = None,
    only_oeleo: bool = False,
    screen_level: int = logging.CRITICAL,
) -> logging.Logger:
    """Log to the screen (at ``screen_level``) and to a rotating ``oeleo.log`` in ``logdir``
    (default ``OELEO_LOG_DIR``, else the current folder). Returns the ``oeleo`` logger."""
    from rich.logging import RichHandler

    logger = logging.getLogger("oeleo")
    logger.setLevel(logging.DEBUG)
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        screen = RichHandler(show_path=False)
        screen.setLevel(screen_level)
        screen.setFormatter(logging.Formatter(SCREEN_FORMAT))
        logger.addHandler(screen)
    folder: Optional[Union[str, os.PathLike]] = logdir or os.environ.get("OELEO_LOG_DIR") or None
    try:
        start_file_log(folder)
    except OSError as exc:
        logger.warning("cannot write a log file in %s (%s); logging to the current folder", folder, exc)
        start_file_log(Path.cwd())
    return logger
