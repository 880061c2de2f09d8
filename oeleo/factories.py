"""Building workers from settings: the books named by ``OELEO_DB_*``, the connector named by
``OELEO_CONNECTOR`` (or by a destination URL, oeleo.places), the oeleo 0.7 factories
``simple_worker`` and ``ssh_worker``, and ``s3_worker``, ``arcsecond_worker`` and
``sharepoint_worker``. Settings are read here, at the edge; the worker and its parts take values."""

from __future__ import annotations

from typing import Any, Optional

from oeleo.checkers import checker_from_settings
from oeleo.connectors.local import LocalConnector
from oeleo.errors import ConfigError
from oeleo.hooks import Hooks
from oeleo.models import Bookkeeper, PostgresDbHandler, SimpleDbHandler
from oeleo.places import resolve_destination
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
    """Build a worker from settings: the connector named by ``OELEO_CONNECTOR`` or by a
    destination URL (``OELEO_BASE_DIR_TO=s3://bucket/prefix``), the books named by
    ``OELEO_DB_*``, the filters, and any ``Worker`` keyword in ``options``."""
    from oeleo.connectors import get_connector_class

    settings = resolve_destination(settings)
    if settings.base_dir_from is None:
        raise ConfigError("OELEO_BASE_DIR_FROM is not set: the folder to copy from (or --from)")
    connector_cls = get_connector_class(settings.connector, settings.where("connector"))
    local = LocalConnector(directory=settings.base_dir_from, follow_links=settings.follow_links)
    external = connector_cls.from_settings(settings, role="external")
    options.setdefault("subdirs", settings.subdirs)
    options["hooks"] = Hooks.from_settings(settings, options.get("hooks") or ())
    wants_alerts = getattr(settings, "alert_webhook", None) or getattr(settings, "alert_email", "").strip()
    if "alerts" not in options and wants_alerts:
        from oeleo.alerts import Alerts  # smtplib and urllib: imported only by a worker that alerts

        options["alerts"] = Alerts.from_settings(settings)
    return Worker(
        checker=checker_from_settings(settings),
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
        compress=settings.compress,
        manifest=settings.manifest,
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


def s3_worker(
    base_directory_from: Any = None,
    bucket: Optional[str] = None,
    prefix: Optional[str] = None,
    db_name: Optional[str] = None,
    extension: Optional[str] = None,
    dry_run: bool = False,
    reporter: Optional[Reporter] = None,
    endpoint_url: Optional[str] = None,
    include_subdirs: Optional[bool] = None,
) -> Worker:
    """A worker copying a local folder to an S3 bucket, or an S3-compatible store with
    ``endpoint_url``. Credentials come from boto3's own chain (``AWS_ACCESS_KEY_ID``, profiles).

    Arguments left out are read from the settings (``OELEO_S3_BUCKET``, ``OELEO_S3_PREFIX``,
    ``OELEO_S3_ENDPOINT_URL``, or ``OELEO_BASE_DIR_TO=s3://bucket/prefix``; ``OELEO_SUBDIRS``).
    """
    return _worker_for(
        "s3", reporter, dry_run, include_subdirs,
        base_dir_from=base_directory_from, db_name=db_name, filter_extension=extension,
        s3_bucket=bucket, s3_prefix=prefix, s3_endpoint_url=endpoint_url,
    )  # fmt: skip


def arcsecond_worker(
    base_directory_from: Any = None,
    organisation: Optional[str] = None,
    telescope: Optional[str] = None,
    db_name: Optional[str] = None,
    extension: Optional[str] = None,
    dry_run: bool = False,
    reporter: Optional[Reporter] = None,
    include_subdirs: Optional[bool] = None,
) -> Worker:
    """A worker uploading a local folder to Arcsecond.io: each folder a dataset, in the
    personal account or in ``organisation`` (whose new datasets need a ``telescope``).

    Arguments left out are read from the settings (``OELEO_ARCSECOND_ORGANISATION``,
    ``OELEO_ARCSECOND_TELESCOPE``, or ``OELEO_BASE_DIR_TO=arcsecond://organisation``); the key
    from ``OELEO_ARCSECOND_API_KEY`` or the one ``arcsecond login`` stored.
    """
    return _worker_for(
        "arcsecond", reporter, dry_run, include_subdirs,
        base_dir_from=base_directory_from, db_name=db_name, filter_extension=extension,
        arcsecond_organisation=organisation, arcsecond_telescope=telescope,
    )  # fmt: skip


def sharepoint_worker(
    base_directory_from: Any = None,
    base_directory_to: Any = None,
    db_name: Optional[str] = None,
    extension: Optional[str] = None,
    dry_run: bool = False,
    reporter: Optional[Reporter] = None,
    include_subdirs: Optional[bool] = None,
    url: Optional[str] = None,
    sitename: Optional[str] = None,
    doc_library: Optional[str] = None,
) -> Worker:
    """A worker copying a local folder to a folder (``base_directory_to``; empty: the top) of
    a SharePoint or Teams document library. The login is chosen from the settings
    (``OELEO_SHAREPOINT_AUTH``, see docs/sharepoint.md).

    Arguments left out are read from the settings (``OELEO_SHAREPOINT_URL``,
    ``OELEO_SHAREPOINT_SITENAME``, ``OELEO_SHAREPOINT_DOC_LIBRARY``, ``OELEO_BASE_DIR_TO``).
    """
    return _worker_for(
        "sharepoint", reporter, dry_run, include_subdirs,
        base_dir_from=base_directory_from, db_name=db_name, filter_extension=extension,
        base_dir_to=str(base_directory_to) if base_directory_to is not None else None,
        sharepoint_url=url, sharepoint_sitename=sitename, sharepoint_doc_library=doc_library,
    )  # fmt: skip


def _worker_for(
    connector: str,
    reporter: Optional[Reporter],
    dry_run: bool,
    include_subdirs: Optional[bool],
    **given: Any,
) -> Worker:
    """The factories after 0.7: the arguments given win over the settings, and an argument
    left out (None) is read from them, ``OELEO_SUBDIRS`` included."""
    from oeleo.settings import load_settings

    settings = load_settings(connector=connector, subdirs=include_subdirs, **given)
    return worker_from_settings(settings, reporter=reporter, dry_run=dry_run)


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
    from oeleo.errors import ConfigError
    from oeleo.places import parse_destination
    from oeleo.settings import load_settings

    settings = load_settings(
        base_dir_from=base_directory_from,
        base_dir_to=str(base_directory_to) if base_directory_to is not None else None,
        db_name=db_name,
        filter_extension=extension,
        connector=connector,
    )
    place = parse_destination(settings.base_dir_to or "")
    if place is not None and place.connector != connector:
        # The factory chose the connector, not the user: name the factory that fits the URL.
        factory = "simple_worker" if connector == "local" else f"{connector}_worker"
        fitting = "simple_worker" if place.connector == "local" else f"{place.connector}_worker"
        raise ConfigError(
            f"{factory}() copies with the {connector} connector, but OELEO_BASE_DIR_TO={place.url} "
            f"names the {place.connector} connector: use oeleo.workers.{fitting}()"
        )
    return worker_from_settings(
        settings,
        reporter=reporter,
        dry_run=dry_run,
        subdirs=include_subdirs,
        external_subdirs=external_subdirs,
    )
