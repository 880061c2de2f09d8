"""Building workers from settings: the books named by ``OELEO_DB_*``, the connector named by
``OELEO_CONNECTOR``, and the oeleo 0.7 factories ``simple_worker`` and ``ssh_worker``. Settings
are read here, at the edge; the worker and its parts take values."""

from __future__ import annotations

from typing import Any, Optional

from oeleo.checkers import ChecksumChecker
from oeleo.connectors.local import LocalConnector
from oeleo.errors import ConfigError
from oeleo.models import Bookkeeper, PostgresDbHandler, SimpleDbHandler
from oeleo.reporters import Reporter
from oeleo.worker import Worker


def bookkeeper_from_settings(settings: Any, origin: Optional[str] = None) -> Bookkeeper:
    """SQLite unless ``OELEO_DB_HOST`` is set, then PostgreSQL."""
    if settings.db_host:
        password = settings.db_password.get_secret_value() if settings.db_password else None
        return PostgresDbHandler(
            settings.db_name,
            host=settings.db_host,
            port=settings.db_port,
            user=settings.db_user,
            password=password,
            origin=origin,
        )
    return SimpleDbHandler(settings.db_name, origin=origin)


def worker_from_settings(settings: Any, reporter: Optional[Reporter] = None, **options: Any) -> Worker:
    """Build a worker from settings: the connector named by ``OELEO_CONNECTOR``, the books
    named by ``OELEO_DB_*``, the filters, and any ``Worker`` keyword in ``options``."""
    from oeleo.connectors import get_connector_class

    if settings.base_dir_from is None:
        raise ConfigError("OELEO_BASE_DIR_FROM is not set: the folder to copy from (or --from)")
    connector_cls = get_connector_class(settings.connector)
    local = LocalConnector(directory=settings.base_dir_from, follow_links=settings.follow_links)
    external = connector_cls.from_settings(settings, role="external")
    options.setdefault("subdirs", settings.subdirs)
    return Worker(
        checker=ChecksumChecker(settings.checksum),
        bookkeeper=bookkeeper_from_settings(settings),
        local_connector=local,
        external_connector=external,
        extension=settings.extensions,
        reporter=reporter,
        include=settings.include_patterns,
        exclude=settings.exclude_patterns,
        min_age=settings.min_age,
        verify=settings.verify,
        retries=settings.retries,
        workers=settings.workers,
        **options,
    )


def simple_worker(
    base_directory_from: Any = None,
    base_directory_to: Any = None,
    db_name: Optional[str] = None,
    dry_run: bool = False,
    extension: Optional[str] = None,
    reporter: Optional[Reporter] = None,
    include_subdirs: bool = False,
    external_subdirs: bool = False,
) -> Worker:
    """A worker copying between two local folders (the oeleo 0.7 factory).

    Arguments left out are read from the settings (``OELEO_BASE_DIR_FROM``,
    ``OELEO_BASE_DIR_TO``, ``OELEO_DB_NAME``, ``OELEO_FILTER_EXTENSION``).
    """
    return _published_worker(
        "local", base_directory_from, base_directory_to, db_name, extension,
        reporter, dry_run, include_subdirs, external_subdirs,
    )  # fmt: skip


def ssh_worker(
    base_directory_from: Any = None,
    base_directory_to: Any = None,
    db_name: Optional[str] = None,
    extension: Optional[str] = None,
    use_password: bool = False,
    dry_run: bool = False,
    reporter: Optional[Reporter] = None,
    is_posix: bool = True,
    include_subdirs: bool = False,
    external_subdirs: bool = False,
) -> Worker:
    """A worker copying a local folder to a server over SSH (the oeleo 0.7 factory)."""
    return _published_worker(
        "ssh", base_directory_from, base_directory_to, db_name, extension,
        reporter, dry_run, include_subdirs, external_subdirs,
    )  # fmt: skip


def _published_worker(
    connector: str,
    base_directory_from: Any,
    base_directory_to: Any,
    db_name: Optional[str],
    extension: Optional[str],
    reporter: Optional[Reporter],
    dry_run: bool,
    include_subdirs: bool,
    external_subdirs: bool,
) -> Worker:
    """What both 0.7 factories do: the arguments given win over the settings."""
    from oeleo.settings import load_settings

    settings = load_settings(
        base_dir_from=base_directory_from,
        base_dir_to=str(base_directory_to) if base_directory_to is not None else None,
        db_name=db_name,
        filter_extension=extension,
        connector=connector,
    )
    return worker_from_settings(
        settings,
        reporter=reporter,
        dry_run=dry_run,
        subdirs=include_subdirs,
        external_subdirs=external_subdirs,
    )
