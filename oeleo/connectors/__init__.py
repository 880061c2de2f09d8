"""Connectors: one per kind of store, each a subclass of ``oeleo.connectors.base.Connector``.

Connectors whose client library is heavy (paramiko, boto3, office365) are imported only when
used, so ``import oeleo.connectors`` stays cheap. ``get_connector_class(name)`` finds a
connector by its short name, by ``package.module:ClassName``, or by an entry point in the
group ``oeleo.connectors`` registered by another package.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Dict, Optional, Type

from oeleo.compat import register_password
from oeleo.connectors.base import Connector, Features, FileEntry, FolderConnector, PutResult, Stored, Upload
from oeleo.connectors.local import LocalConnector
from oeleo.errors import ConfigError, named_setting

ENTRY_POINT_GROUP = "oeleo.connectors"

# Short names of the connectors oeleo ships, as "module:Class" (imported on first use).
BUILTIN: Dict[str, str] = {
    "local": "oeleo.connectors.local:LocalConnector",
    "ssh": "oeleo.connectors.ssh:SSHConnector",
    "s3": "oeleo.connectors.s3:S3Connector",
    "arcsecond": "oeleo.connectors.arcsecond:ArcsecondConnector",
    "sharepoint": "oeleo.connectors.sharepoint:SharePointConnector",
}

# attribute name -> "module:Class": imported on first use (paramiko only when SSH is used,
# boto3 only when S3 is)
_LAZY = {
    "SSHConnector": "oeleo.connectors.ssh:SSHConnector",
    "S3Connector": "oeleo.connectors.s3:S3Connector",
    "ArcsecondConnector": "oeleo.connectors.arcsecond:ArcsecondConnector",
    "SharePointConnector": "oeleo.connectors.sharepoint:SharePointConnector",
}

__all__ = [
    "Connector",
    "Features",
    "FileEntry",
    "FolderConnector",
    "PutResult",
    "Stored",
    "Upload",
    "LocalConnector",
    "get_connector_class",
    "register_password",
]


def load_object(spec: str, what: str) -> Any:
    """Import ``package.module:Name``; a one-line ConfigError if it is not there."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{what} {spec!r}: expected a short name or package.module:ClassName")
    if "" not in sys.path and os.getcwd() not in sys.path:
        # As `python -m` does: a module in the current folder can be named (like uvicorn's app dir).
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what} {spec!r}: cannot import {module_name} ({exc})") from exc
    except Exception as exc:  # a plugin with a bug: say which one; --debug shows where
        raise ConfigError(
            f"{what} {spec!r}: importing {module_name} failed ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{what} {spec!r}: {module_name} has no {attr}") from None


def _entry_point(group: str, name: str) -> Optional[str]:
    from importlib.metadata import entry_points

    eps = entry_points()
    found = eps.select(group=group) if hasattr(eps, "select") else eps.get(group, [])
    for ep in found:
        if ep.name == name:
            return ep.value
    return None


def get_connector_class(name: str, where: str = "") -> Type[Connector]:
    """The connector class for ``OELEO_CONNECTOR`` / ``--connector``; ``where`` (``from
    /path/.env``) says in a refusal where the name came from."""
    key = name.strip()
    spec = BUILTIN.get(key.lower())
    if spec is None and ":" in key:
        spec = key
    if spec is None:
        spec = _entry_point(ENTRY_POINT_GROUP, key)
    named = named_setting("OELEO_CONNECTOR", name, where)
    if spec is None:
        known = ", ".join(sorted(BUILTIN))
        raise ConfigError(f"{named}: unknown connector; expected one of {known}, or package.module:ClassName")
    cls = load_object(spec, "OELEO_CONNECTOR")
    if not (isinstance(cls, type) and issubclass(cls, Connector)):
        raise ConfigError(f"{named}: {spec} is not a subclass of oeleo Connector")
    missing = cls._unimplemented()
    if missing:  # said before anything runs, as a setting to fix (not Python's TypeError)
        raise ConfigError(
            f"OELEO_CONNECTOR={name!r}: {spec} does not implement {', '.join(missing)}, which "
            "every connector must have (docs/connectors.md)"
        )
    return cls


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return load_object(_LAZY[name], name)
    raise AttributeError(f"module 'oeleo.connectors' has no attribute {name!r}")
