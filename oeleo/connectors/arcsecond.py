"""Arcsecond.io as a destination, uploading as Oort did: one folder = one dataset.

A file's dataset is named after its folder's path from the source folder's parent: with
``OELEO_BASE_DIR_FROM=/data/night1``, ``a.fits`` goes to dataset ``night1`` and
``run1/b.fits`` to ``night1/run1``. The connector sees paths relative to the source folder,
so it is told that folder's name (``root_name``; ``from_settings`` takes it from
``OELEO_BASE_DIR_FROM``). Datasets are found by name (created when missing) and remembered
for the pass; in an organisation, creating one needs a telescope.

Arcsecond never replaces a file it holds (``Features.overwrite`` is False: the engine books a
changed file as "already there, not replaced"). Its one POST is the commit, so the engine
reads and checks the source first (the bytes wait in a local spool) and the POST happens only
then. Arcsecond returns no checksum: after the POST oeleo compares the size it reports and,
unless ``OELEO_VERIFY=false``, reads the file back from the URL it gives and hashes it; a copy
that does not verify is deleted again (there was no older version: nothing is overwritten).
"""

from __future__ import annotations

import configparser
import errno
import logging
import os
import posixpath
import re
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence
from urllib.parse import unquote, urljoin, urlsplit

from oeleo import __version__
from oeleo.checkers import new_hash
from oeleo.connectors.arcsecond_api import (
    KEY_ENV,
    PART,
    ArcsecondAPI,
    HTTPFailure,
    MultipartBody,
    check_key,
)
from oeleo.connectors.base import (
    Connector,
    Features,
    FileEntry,
    PutResult,
    SpooledUpload,
    Upload,
    has_extension,
    matches,
    safe_relpath,
)
from oeleo.errors import (
    AlreadyThere,
    ConfigError,
    ConnectionLost,
    DestinationUnreachable,
    TransferError,
    VerificationError,
)
from oeleo.names import from_books, printable, to_books

if TYPE_CHECKING:
    from oeleo.settings import Settings

log = logging.getLogger("oeleo")

DEFAULT_API_URL = "https://api.arcsecond.io"
ALREADY_THERE = "already exists in dataset"  # arcsecond cloud/uploader/uploader.py, _perform_upload
# An organisation is a subdomain (https://<organisation>.arcsecond.io) and a part of every URL.
ORGANISATION = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?$")


def config_file() -> Path:
    """Where ``arcsecond login`` stores its keys (arcsecond api/config.py, ``file_path``)."""
    return Path.home() / ".config" / "arcsecond" / "config.ini"


def stored_key(path: Optional[Path] = None) -> Optional[str]:
    """The key ``arcsecond login`` stored: section ``cloud``, ``access_key`` (or its older name
    ``api_key``) preferred over ``upload_key``, as the arcsecond client chooses; None if none."""
    path = path or config_file()
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        # configparser quotes the bad line, which may hold the key: name the file only.
        raise ConfigError(f"{path} is not an ini file as `arcsecond login` writes it") from None
    if not parser.has_section("cloud"):
        return None
    for name in ("access_key", "api_key", "upload_key"):
        value = parser.get("cloud", name, fallback="")
        if value.strip():
            return check_key(value, f"{name} in {path}")
    return None


def sent_name(name: str) -> str:
    """A name as Arcsecond gets it: a name that is valid UTF-8 exactly as it is (a ``‛`` of
    its own included); one that is not, in the books' lossless form (``m‛E9sure.csv``), the
    only text that can stand for it."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return to_books(name)
    return name


def local_name(sent: str) -> str:
    """The name whose ``sent_name`` is ``sent``: the lossless form of a name that is not valid
    UTF-8 is read back as that name; any other name is itself. (A valid UTF-8 name that reads
    like such a form, ``‛FF.dat``, is taken for the other one: the two look the same there.)"""
    name = from_books(sent)
    return name if name != sent and sent_name(name) == sent else sent


@dataclass
class Datafile:
    """A file of a dataset as the API lists it: its name, size (-1: not given), id, and the
    URL its bytes can be read from."""

    name: str
    size: int
    id: Any
    url: str


@dataclass
class Dataset:
    name: str
    uuid: str
    files: Optional[Dict[str, Datafile]] = None  # by name; None until listed


class ArcsecondUpload(SpooledUpload):
    """The source's bytes, held back until the engine confirmed them, then one POST."""

    def __init__(self, connector: ArcsecondConnector, relpath: str, size: int, mtime_ns: int) -> None:
        super().__init__(connector, relpath, size, mtime_ns)
        self.already_there = False  # the store said it holds a file of this name
        self.created: Optional[Datafile] = None

    def commit(self) -> None:
        spool = self._spool
        assert spool is not None, "an upload is committed once"
        size = spool.tell()

        def read() -> Iterator[bytes]:
            spool.seek(0)
            return iter(lambda: spool.read(PART), b"")

        try:
            self.connector.post_file(self, size, read)  # type: ignore[attr-defined]
        finally:
            self.abort()


class ArcsecondConnector(Connector):
    """Uploads to the datasets of an Arcsecond.io account (personal, or an organisation's).

    ``root_name`` is the source folder's name, the first part of every dataset name. The key
    is ``api_key`` or else the one ``arcsecond login`` stored; it is sent in one header and
    never shown.
    """

    name = "arcsecond"
    features = Features(staged_uploads=False, overwrite=False, max_uploads=1, confirms_commit=True)

    def __init__(
        self,
        api_key: Optional[str] = None,
        organisation: Optional[str] = None,
        telescope: Optional[str] = None,
        api_url: str = DEFAULT_API_URL,
        *,
        root_name: Optional[str] = None,
        is_raw: bool = True,
        tags: Optional[Sequence[str]] = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        key_file: Optional[Path] = None,
    ) -> None:
        if not root_name or "/" in root_name.strip("/"):
            raise ConfigError(
                "ArcsecondConnector needs root_name, the source folder's name (datasets are named after it)"
            )
        if not api_url.startswith(("https://", "http://")):
            raise ConfigError(f"OELEO_ARCSECOND_API_URL={api_url!r}: expected an http:// or https:// URL")
        if api_key is not None:
            key = check_key(api_key, KEY_ENV)
        else:
            found = stored_key(key_file)
            if found is None:
                raise ConfigError(
                    f"no Arcsecond key: set {KEY_ENV}, or run `arcsecond login` "
                    f"(it stores one in {key_file or config_file()})"
                )
            key = found
        self.root_name = root_name.strip("/")
        self.organisation = (organisation or "").strip().strip("/")
        if self.organisation and not ORGANISATION.match(self.organisation):
            # It becomes a part of every URL: "../lab" or "lab/x" would reach another's.
            raise ConfigError(
                f"OELEO_ARCSECOND_ORGANISATION={organisation!r}: expected an organisation's subdomain "
                "(letters, digits, '-' and '_', as in https://<organisation>.arcsecond.io)"
            )
        self.telescope = (telescope or "").strip() or None
        self.is_raw = is_raw
        # The host name, as Oort tagged its uploads; nothing else about the machine.
        host = f"oeleo|origin|{socket.gethostname()}"
        self.tags: List[str] = [host, f"oeleo|version|{__version__}", *(tags or ())]
        self.api = ArcsecondAPI(
            api_url, key, self.organisation, timeout=timeout, retries=retries, backoff=backoff
        )
        self.directory = f"arcsecond://{self.organisation}"
        self._datasets: Dict[str, Optional[Dataset]] = {}  # by name; None: looked up, not there
        self._lock = threading.RLock()
        self._reached = False
        # A key an upload was refused with (HTTP 401, 403): no other upload of the pass is tried.
        self._refused: Optional[ConfigError] = None

    @classmethod
    def from_settings(cls, settings: Settings, role: str = "external") -> Connector:
        if role != "external":
            raise ConfigError("Arcsecond can only be copied to: OELEO_CONNECTOR=arcsecond is the destination")
        if settings.base_dir_from is None:
            raise ConfigError("OELEO_BASE_DIR_FROM is not set: the folder to copy from (or --from)")
        root = Path(os.path.abspath(settings.base_dir_from)).name
        if not root:
            raise ConfigError(
                f"OELEO_BASE_DIR_FROM={settings.base_dir_from}: Arcsecond datasets are named after "
                "the source folder, and this one has no name"
            )
        key = settings.arcsecond_api_key.get_secret_value() if settings.arcsecond_api_key else None
        return cls(
            api_key=key,
            organisation=settings.arcsecond_organisation,
            telescope=settings.arcsecond_telescope,
            api_url=settings.arcsecond_api_url,
            root_name=root,
            retries=settings.retries,
            timeout=settings.arcsecond_timeout,
        )

    def __repr__(self) -> str:
        return f"ArcsecondConnector({self.directory!r}, datasets {self.root_name!r}...)"

    def __str__(self) -> str:
        where = f"organisation {self.organisation}" if self.organisation else "the personal account"
        return f"Arcsecond ({where}, datasets {self.root_name}...)"

    # -- life cycle -----------------------------------------------------------------------
    def connect(self, **kwargs: Any) -> None:
        """Forget what the last pass saw, and ask for the first dataset: a key that is
        refused, an organisation or a server that is not there fails here, before any file."""
        with self._lock:
            self._datasets.clear()
        self._refused = None
        try:
            self.dataset(sent_name(self.root_name))
        except ConnectionLost as exc:
            if self._reached:
                raise
            raise DestinationUnreachable(f"{exc}: check OELEO_ARCSECOND_API_URL") from None
        self._reached = True

    def close(self) -> None:
        self.api.close()

    # -- names ----------------------------------------------------------------------------
    def locate(self, relpath: str) -> tuple:
        """The dataset name and the file name in it of a relative path (Oort's naming), as
        Arcsecond gets them (``sent_name``)."""
        folder, name = posixpath.split(safe_relpath(relpath))
        dataset = f"{self.root_name}/{folder}" if folder else self.root_name
        return sent_name(dataset), sent_name(name)

    def external_name(self, relpath: str) -> str:
        dataset, name = self.locate(relpath)
        return f"arcsecond://{self.organisation}/{dataset}/{name}"

    # -- datasets -------------------------------------------------------------------------
    def dataset(self, name: str, create: bool = False) -> Optional[Dataset]:
        """The dataset called ``name``, looked up once per pass; created when ``create``."""
        with self._lock:
            known = self._datasets.get(name)
            if known is not None or (name in self._datasets and not create):
                return known
            found = self._find(name)
            if found is None and create:
                found = self._create(name)
            self._datasets[name] = found
            return found

    def _find(self, name: str) -> Optional[Dataset]:
        try:
            items = [d for d in self.api.list("datasets", {"name": name}) if d.get("name") == name]
        except HTTPFailure as exc:
            raise self._datasets_failure(exc) from None
        if len(items) > 1:
            where = f" in organisation {self.organisation}" if self.organisation else ""
            raise ConfigError(
                f"{len(items)} Arcsecond datasets{where} are named {name!r}: oeleo puts the files of that "
                "folder into the one dataset of its name; rename or remove the others"
            )
        return Dataset(name, str(items[0]["uuid"])) if items else None

    def prepare_for(self, relpaths: Sequence[str]) -> None:
        """Before the first upload of a pass, the names it is about to copy: in an organisation
        without ``OELEO_ARCSECOND_TELESCOPE``, a dataset they need that is not there (it would
        have to be created) stops the pass now, before any file, naming the setting. The
        datasets are looked up by name as the copies would look them up (once a pass): no
        request more; with a telescope, or in the personal account, nothing is asked here."""
        if not self.organisation or self.telescope:
            return
        for name in sorted({self.locate(relpath)[0] for relpath in relpaths}):
            if self.dataset(name) is None:
                raise self._no_telescope(name)

    def _no_telescope(self, name: str) -> ConfigError:
        return ConfigError(
            f"OELEO_ARCSECOND_TELESCOPE is not set: a new dataset ({name!r}) of organisation "
            f"{self.organisation} needs a telescope UUID (its portal lists them)"
        )

    def _create(self, name: str) -> Dataset:
        if self.organisation and not self.telescope:
            raise self._no_telescope(name)
        data = {"name": name}
        if self.telescope:
            data["telescope"] = self.telescope
        attempt = 0
        while True:
            attempt += 1
            try:
                created = self.api.post_json(self.api.url("datasets"), json=data, resend=False)
            except HTTPFailure as exc:
                if exc.status == 404:
                    raise self._datasets_failure(exc) from None
                if exc.status < 500:
                    raise ConfigError(
                        f"Arcsecond cannot create dataset {name!r} ({exc}): check OELEO_ARCSECOND_TELESCOPE"
                    ) from None
                failure: Exception = TransferError(f"Arcsecond cannot create dataset {name!r} ({exc})")
            except ConnectionLost as exc:
                failure = exc
            else:
                log.info("created Arcsecond dataset %s", printable(name))
                return Dataset(name, str(created["uuid"]), files={})
            # Dataset names are not unique: the answer may have been lost after the dataset
            # was made, and sending again would make a second one. Look before sending again.
            found = self._find(name)
            if found is not None:
                log.info("Arcsecond dataset %s was made, its answer lost", printable(name))
                return found
            if attempt > self.api.retries:
                raise failure
            wait = self.api.pause(attempt)
            log.warning("Arcsecond: %s; trying again in %.1f s", failure, wait)
            time.sleep(wait)

    def _datasets_failure(self, exc: HTTPFailure) -> Exception:
        if exc.status == 404 and self.organisation:
            return ConfigError(
                f"Arcsecond has no organisation {self.organisation!r} (HTTP 404): "
                "check OELEO_ARCSECOND_ORGANISATION"
            )
        if exc.status == 404:
            return ConfigError(
                f"{self.api.api_url} has no Arcsecond datasets (HTTP 404): check OELEO_ARCSECOND_API_URL"
            )
        return TransferError(f"Arcsecond cannot list its datasets ({exc})")

    def files(self, dataset: Dataset) -> Dict[str, Datafile]:
        """The files of a dataset by name (``GET datafiles/?dataset=<uuid>``), once per pass."""
        with self._lock:
            if dataset.files is None:
                try:
                    items = list(self.api.list("datafiles", {"dataset": dataset.uuid}))
                except HTTPFailure as exc:
                    raise TransferError(f"Arcsecond cannot list dataset {dataset.name!r} ({exc})") from None
                dataset.files = {}
                for item in items:
                    datafile = self._datafile(item)
                    dataset.files[datafile.name] = datafile
            return dataset.files

    def _datafile(self, item: Dict[str, Any]) -> Datafile:
        url = str(item.get("file") or "")
        name = item.get("name") or unquote(posixpath.basename(urlsplit(url).path))
        size = item.get("size")
        return Datafile(str(name), size if isinstance(size, int) else -1, item.get("id", item.get("pk")), url)

    def _stored(self, relpath: str) -> Optional[Datafile]:
        dataset_name, name = self.locate(relpath)
        dataset = self.dataset(dataset_name)
        return None if dataset is None else self.files(dataset).get(name)

    # -- read side ------------------------------------------------------------------------
    def list_files(
        self,
        extensions: Sequence[str] = (),
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        recursive: bool = True,
    ) -> Iterator[FileEntry]:
        """The files of the datasets of this source folder (``root_name`` and below), as
        relative paths; Arcsecond keeps no modification time (0)."""
        try:
            names = [str(d.get("name", "")) for d in self.api.list("datasets")]
        except HTTPFailure as exc:
            raise self._datasets_failure(exc) from None
        root = sent_name(self.root_name)
        prefix = root + "/"
        entries = []
        for dataset_name in names:
            if dataset_name != root and not (recursive and dataset_name.startswith(prefix)):
                continue
            dataset = self.dataset(dataset_name)
            if dataset is None:
                continue
            folder = local_name(dataset_name[len(prefix) :]) if dataset_name != root else ""
            for datafile in self.files(dataset).values():
                relpath = posixpath.join(folder, local_name(datafile.name))
                if not has_extension(relpath, extensions):
                    continue
                if (include and not matches(relpath, include)) or (exclude and matches(relpath, exclude)):
                    continue
                entries.append(FileEntry(relpath, datafile.size, 0))
        return iter(sorted(entries))

    def stat(self, relpath: str) -> Optional[FileEntry]:
        datafile = self._stored(relpath)
        return None if datafile is None else FileEntry(safe_relpath(relpath), datafile.size, 0)

    def checksum(self, relpath: str, algorithm: str = "md5") -> str:
        """Arcsecond computes none: the file is read back from the URL the API gives."""
        datafile = self._stored(relpath)
        if datafile is None or not datafile.url:
            raise FileNotFoundError(errno.ENOENT, "not on Arcsecond", relpath)
        digest = new_hash(algorithm)
        try:
            for chunk in self.api.download(urljoin(self.api.api_url, datafile.url)):
                digest.update(chunk)
        except HTTPFailure as exc:
            raise TransferError(f"{printable(relpath)}: cannot read it back from Arcsecond ({exc})") from None
        return digest.hexdigest()

    # -- write side -----------------------------------------------------------------------
    def open_upload(self, relpath: str, size: int, mtime_ns: int) -> Upload:
        if self._refused is not None:
            raise ConfigError(str(self._refused))
        name = posixpath.basename(relpath)
        if "\\" in name:
            # The server's form parser (Django) keeps only what follows a backslash.
            raise TransferError(f"{printable(relpath)}: Arcsecond cuts a file name at a backslash; rename it")
        if "\r" in name or "\n" in name:
            raise TransferError(
                f"{printable(relpath)}: a line break in a file name cannot be sent to Arcsecond"
            )
        # The dataset is found or made here, in the copying thread, where a setting that is
        # missing (a telescope) stops the pass; the commit would count it as one failed file.
        self.dataset(self.locate(relpath)[0], create=True)
        return ArcsecondUpload(self, relpath, size, mtime_ns)

    def post_file(self, upload: ArcsecondUpload, size: int, read: Any) -> None:
        """``POST datafiles/`` with the fields the arcsecond client sends (``dataset``,
        ``is_raw``, ``tags``, ``file``), streamed from the spool."""
        dataset_name, name = self.locate(upload.relpath)
        dataset = self.dataset(dataset_name, create=True)
        assert dataset is not None
        fields = {"dataset": dataset.uuid, "is_raw": str(self.is_raw), "tags": ",".join(self.tags)}
        body = MultipartBody(fields, "file", name, size, read)
        what = printable(upload.relpath)
        try:
            reply = self.api.post_json(self.api.url("datafiles"), body=body)
        except HTTPFailure as exc:
            if ALREADY_THERE in exc.text.lower():
                upload.already_there = True
                with self._lock:
                    dataset.files = None  # list it again: it holds a file this pass did not see
                return
            if exc.status == 413:
                raise TransferError(f"{what}: too large for Arcsecond (HTTP 413)") from None
            if exc.status == 404:
                with self._lock:
                    self._datasets.pop(dataset_name, None)
                raise TransferError(
                    f"{what}: Arcsecond has no dataset {dataset_name!r} any more (HTTP 404); "
                    "it is looked up again for the next file"
                ) from None
            verb = "failed" if exc.status is not None and exc.status >= 500 else "refused"
            raise TransferError(f"{what}: Arcsecond {verb} the upload ({exc})") from None
        datafile = self._datafile(reply if isinstance(reply, dict) else {})
        upload.created = datafile
        with self._lock:
            if dataset.files is not None:
                dataset.files[datafile.name] = datafile
        if datafile.name != name or datafile.size not in (size, -1):
            self.delete(dataset, datafile)
            raise VerificationError(
                f"{what}: Arcsecond holds {datafile.name!r} of {datafile.size} bytes, not {name!r} of {size}"
            )

    def delete(self, dataset: Dataset, datafile: Datafile) -> None:
        """Remove a copy that did not verify (``DELETE datafiles/<id>/``); never raises."""
        with self._lock:
            if dataset.files is not None:
                dataset.files.pop(datafile.name, None)
        try:
            self.api.request("DELETE", self.api.url(f"datafiles/{datafile.id}"))
        except Exception as exc:  # noqa: BLE001 - the verification error is the one to report
            log.error(
                "a copy that did not verify is left in Arcsecond dataset %s: %s (%s); remove it there",
                printable(dataset.name),
                printable(datafile.name),
                exc,
            )

    def commit(self, staged: PutResult) -> PutResult:
        """POST the file, then verify it (Arcsecond returns no checksum: read it back). A
        file that was there already is a success only if it holds these very bytes."""
        upload = staged.upload
        if not isinstance(upload, ArcsecondUpload):
            return super().commit(staged)
        if self._refused is not None:  # the same key would be refused again
            upload.abort()
            raise ConfigError(str(self._refused))
        try:
            upload.commit()
        except ConfigError as exc:  # the key (ArcsecondAPI.request): a setting, not this file
            self._refused = exc
            raise
        relpath = staged.relpath
        # What the store's copy must hash to: the source's checksum, or that of the bytes sent
        # when they are not the source's (a compressed copy).
        stored_hash = getattr(staged, "stored_hash", None)
        used, wanted = stored_hash or (staged.algorithm, staged.checksum)
        what = "the compressed source" if stored_hash else "the source"
        if upload.already_there:
            if self.checksum(relpath, used) != wanted:
                # Not a failure: the engine counts it as "already there, not replaced" (as a
                # changed file found by the listing) and books this reason; the path is its own.
                raise AlreadyThere(
                    "Arcsecond holds other content under this name (another upload: from another PC, "
                    "or an earlier version of this file)"
                )
            return replace(staged, staging=relpath, upload=None, verified=True, verify_after_commit=False)
        verified = staged.verified
        if staged.verify_after_commit:
            stored = self.checksum(relpath, used)
            if stored != wanted:
                dataset = self.dataset(self.locate(relpath)[0])
                if dataset is not None and upload.created is not None:
                    self.delete(dataset, upload.created)
                raise VerificationError(
                    f"{printable(relpath)}: {used} of the copy read back from Arcsecond is {stored}, "
                    f"of {what} {wanted}; the copy was removed"
                )
            verified = True
        return replace(staged, staging=relpath, upload=None, verified=verified, verify_after_commit=False)
