"""The oeleo 0.7 compatibility layer: the one place where connectors made without arguments
read the ``OELEO_*`` settings themselves, as the published API promises
(``LocalConnector(directory=None)``, ``SSHConnector(host=None, ...)``, ``register_password``).

Everything else takes values: settings are read at the edge (``from_settings`` and
``oeleo.factories``), never inside a connector, the engine or the bookkeeper.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional


def local_folder(directory: Any) -> Any:
    """``directory``, or ``OELEO_BASE_DIR_FROM`` when it is None (0.7: ``LocalConnector()``)."""
    return directory if directory is not None else os.environ.get("OELEO_BASE_DIR_FROM")


def ssh_arguments(given: Dict[str, Any]) -> Dict[str, Any]:
    """The ``SSHConnector`` arguments, the ones not given (None) read from the settings, as
    0.7's ``SSHConnector(directory=...)`` did. An ``OELEO_EXTERNAL_PORT`` left at its default
    stays None, so that it cannot contradict a port written in ``OELEO_EXTERNAL_HOST``."""
    from oeleo.settings import load_settings

    settings = load_settings()

    def secret(value: Any) -> Optional[str]:
        return value.get_secret_value() if value is not None else None

    from_settings = {
        "host": settings.external_host,
        "directory": settings.base_dir_to,
        "username": settings.username,
        "port": settings.external_port if "external_port" in settings.model_fields_set else None,
        "password": secret(settings.password),
        "passphrase": secret(settings.key_passphrase),
        "key_filename": settings.key_filename,
        "known_hosts": settings.known_hosts,
        "ssh_config": settings.ssh_config,
        "accept_new_host_keys": settings.accept_new_host_keys,
    }
    return {
        name: given[name] if given.get(name) is not None else value for name, value in from_settings.items()
    }


def register_password(pwd: Optional[str] = None) -> None:
    """Make a password available to the connectors that need one (the oeleo 0.7 call).

    It is kept in this process's environment as ``OELEO_PASSWORD``, never written anywhere.
    """
    if pwd is None:
        import getpass

        pwd = getpass.getpass("oeleo password: ")
    os.environ["OELEO_PASSWORD"] = pwd
