"""paramiko without ``invoke`` until a ``Match exec`` needs it.

paramiko imports ``invoke`` (a task runner, one of paramiko's requirements since 3.0) only to
run the commands of ``Match exec`` blocks of an SSH config, and that import is 40 % of importing
paramiko: about 45 ms of the start of every run that copies over SSH. ``invoke_left_out`` keeps
it out while paramiko is imported, unless it is imported already; ``import_invoke`` brings it
in when a config lookup reaches a ``Match exec`` (``ssh_endpoints``). This module imports
neither package itself.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator


@contextlib.contextmanager
def invoke_left_out() -> Iterator[None]:
    """Around the first ``import paramiko``: an import of ``invoke`` fails at once (paramiko
    then keeps ``invoke = None`` and the ``ImportError`` it raises for a ``Match exec``)."""
    leave_out = "invoke" not in sys.modules
    if leave_out:
        sys.modules["invoke"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if leave_out and "invoke" in sys.modules and sys.modules["invoke"] is None:
            del sys.modules["invoke"]


def import_invoke(failure: ImportError) -> None:
    """A config lookup raised ``failure``: when it is paramiko's "no invoke" error, import invoke
    now and hand it to paramiko's config module (the lookup can be made again). Raises
    ``failure`` when it was another import, and the import's own error (``No module named
    'invoke'``) when invoke is not installed."""
    config_module = sys.modules.get("paramiko.config")
    if (
        config_module is None
        or getattr(config_module, "invoke", None) is not None
        or failure is not getattr(config_module, "invoke_import_error", None)
    ):
        raise failure
    import invoke

    config_module.invoke = invoke  # type: ignore[attr-defined]
