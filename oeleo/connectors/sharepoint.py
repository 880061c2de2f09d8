"""A folder in a SharePoint (or Teams) document library, through Office365-REST-Python-Client.

A file up to ``chunk_size`` bytes is held in memory while the engine reads and hashes it and
is sent by ``commit`` in one request (``Files/add``, overwrite), so a source that changed is
never sent. A larger file goes up while it is read, as an upload session (``startUpload``,
``continueUpload``, ``finishUpload``, one chunk in memory at a time) under a hidden temporary
name next to its real one; ``commit`` moves it onto the real name (``MoveTo``, overwrite).
The session is started on an empty file made by ``Files/add``, which would truncate a file of
that name: that is why it is never the real name. ``abort`` cancels the session and removes
the temporary file; the previous copy is never touched.

SharePoint gives no hash of a stored file that can be read back, so a copy is verified by the
size SharePoint reports for it (``PutResult.verified`` stays False: it is not a checksum);
``checksum`` downloads the file and hashes it (``oeleo check --deep``), and ``read_back=True``
does that for every upload before its commit. Office files (docx, xlsx, pptx, ...) may be
rewritten by SharePoint as they are stored (it writes the library's properties into them):
their size then differs; that is warned once per file and the copy kept.

Every request goes through ``_run``: a 429 or 503 is retried after the server's
``Retry-After`` (bounded), a 401 once with a new token, and a library error becomes one
line that says what to fix. The logins are in ``sharepoint_login``, the uploads in
``sharepoint_upload``, the rules for names in ``sharepoint_names``.
"""

from __future__ import annotations

import logging
import posixpath
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, TypeVar
from urllib.parse import urlsplit

try:
    import requests
    from office365.runtime.client_request_exception import ClientRequestException
    from office365.sharepoint.client_context import ClientContext
except ImportError as exc:  # the message the command shows for OELEO_CONNECTOR=sharepoint
    raise ImportError(
        'the sharepoint connector needs Office365-REST-Python-Client: pip install "oeleo[sharepoint]"'
    ) from exc

from oeleo import __version__
from oeleo.checkers import new_hash
from oeleo.connectors.base import (
    TEMP_SUFFIX,
    Connector,
    Features,
    FileEntry,
    Upload,
    kept_by_filters,
    safe_relpath,
    temp_relpath,
)
from oeleo.connectors.sharepoint_login import Login, MsalToken, TokenProvider, choose_login
from oeleo.connectors.sharepoint_names import (
    MAX_PATH,
    OFFICE_SUFFIXES,
    is_loopback,
    name_problem,
    parse_time,
    site_url_of,
)
from oeleo.connectors.sharepoint_upload import SharePointStagedUpload, SharePointUpload
from oeleo.errors import ConfigError, ConnectionLost, DestinationUnreachable, TransferError, VerificationError
from oeleo.names import printable

if TYPE_CHECKING:
    from oeleo.settings import Settings

log = logging.getLogger("oeleo")
# The library logs every exception a request's handler raises, with its traceback, and raises
# it again; the connector turns it into one line, so that log would only repeat it.
logging.getLogger("office365.runtime.types.event_handler").setLevel(logging.CRITICAL)

MiB = 1024 * 1024
CHUNK_SIZE = 10 * MiB  # OELEO_SHAREPOINT_CHUNK_SIZE: one request's bytes in an upload session
DEFAULT_LIBRARY = "Shared Documents"  # the URL of a site's (or a team's) "Documents" library
USER_AGENT = f"ISV|oeleo|{__version__}"  # as Microsoft asks of applications that call SharePoint
PAGE_SIZE = 2000  # files per listing request (below the 5,000-item list view threshold)
_SELECT = ["Name", "Length", "TimeLastModified", "ServerRelativeUrl"]
T = TypeVar("T")


class _Hashing:
    """A file-like sink that hashes what the library's download writes to it."""

    def __init__(self, algorithm: str) -> None:
        self.digest = new_hash(algorithm)
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return len(data)

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        pass


class SharePointConnector(Connector):
    """Files under ``folder`` in the document library ``library`` of the site ``site_url``:
    ``SharePointConnector("https://contoso.sharepoint.com/sites/lab", "Shared Documents",
    "instrument 1", login=choose_login(...))``.

    ``token``: a callable giving ``{"access_token", "token_type", "expires_in"}`` instead of a
    login (a program that gets its tokens its own way; the tests). ``read_back``: download
    each upload before its commit and compare its hash (twice the traffic; without it a copy
    is verified by its size).
    """

    name = "sharepoint"
    # No hash SharePoint computes can be read back: verified by size (or read back).
    # ``oeleo check`` compares by the listed size and the books' checksum; ``--deep`` downloads.
    features = Features(
        staged_uploads=True,
        overwrite=True,
        keeps_mtime=False,
        max_uploads=4,
        checksum_downloads=True,
        confirms_commit=True,
    )

    retries = 5  # a throttled (429/503) request is sent again this many times
    max_wait = 120.0  # seconds: the longest Retry-After waited for (longer: this is the wait)
    timeout: Tuple[float, float] = (10.0, 120.0)  # connect, read (seconds)

    def __init__(
        self,
        site_url: str,
        library: Optional[str] = None,
        folder: Optional[str] = "",
        *,
        login: Optional[Login] = None,
        token: Optional[TokenProvider] = None,
        chunk_size: int = CHUNK_SIZE,
        read_back: bool = False,
        page_size: int = PAGE_SIZE,
        retries: Optional[int] = None,
        max_wait: Optional[float] = None,
    ) -> None:
        if login is None and token is None:
            raise ConfigError("SharePointConnector needs a login (or a token provider)")
        self.site_url = site_url_of(site_url)
        host = urlsplit(self.site_url).hostname or ""
        ntlm = login is not None and login.kind == "ntlm"
        if self.site_url.startswith("http://") and not (ntlm or is_loopback(host)):
            raise ConfigError(
                f"OELEO_SHAREPOINT_URL={self.site_url}: a token is never sent over plain http; use https://"
            )
        self.site_path = urlsplit(self.site_url).path.rstrip("/")
        self.library = (library or DEFAULT_LIBRARY).strip().strip("/")
        if not self.library or any(p in ("", ".", "..") for p in self.library.split("/")):
            raise ConfigError(
                f"OELEO_SHAREPOINT_DOC_LIBRARY={library!r}: expected a library such as Shared Documents"
            )
        self.folder = self.normalise_folder(folder)
        self.base_url = "/".join(p for p in (self.site_path, self.library, self.folder) if p)
        if not self.base_url.startswith("/"):
            self.base_url = "/" + self.base_url
        self.login = login
        self._token: Optional[TokenProvider] = token
        if token is None and not ntlm:
            assert login is not None
            self._token = MsalToken(login, self.site_url)
        self.chunk_size = max(int(chunk_size), 1)
        self.read_back = read_back
        if read_back:
            self.features = replace(type(self).features, readback_hash="crc32")
        self.page_size = max(1, min(int(page_size), 4999))
        if retries is not None:
            self.retries = max(0, int(retries))
        if max_wait is not None:
            self.max_wait = float(max_wait)
        self.directory = f"{self.site_url}/{self.library}" + (f"/{self.folder}" if self.folder else "")
        self._idle: List[Any] = []  # client contexts no thread uses now
        self._lock = threading.Lock()
        self._folders: Set[str] = set()  # server-relative URLs known to exist in this pass
        self._ensuring: Dict[str, threading.Event] = {}  # folders being created by a thread
        self._warned: Set[str] = set()  # Office files whose rewriting was reported
        self._closing = threading.Event()
        self._reached = False  # SharePoint has answered: a network error later is a dropped connection
        self.requests = 0  # HTTP requests sent (the benchmark reads it)

    @staticmethod
    def normalise_folder(folder: Optional[str]) -> str:
        """``instr1``, ``/instr1/`` -> ``instr1``; empty: the library's top folder."""
        text = str(folder or "").replace("\\", "/").strip().strip("/")
        if text in ("", "."):
            return ""
        if any(part in ("", ".", "..") for part in text.split("/")):
            raise ConfigError(
                f"OELEO_BASE_DIR_TO={folder!r}: expected a folder in the library (no part that is "
                "empty (//), . or ..)"
            )
        problem = name_problem(text)
        if problem:
            raise ConfigError(f"OELEO_BASE_DIR_TO={folder!r}: {problem}")
        return text

    @classmethod
    def from_settings(
        cls, settings: Settings, role: str = "external", token: Optional[TokenProvider] = None
    ) -> SharePointConnector:
        if role != "external":
            raise ConfigError(
                "the sharepoint connector is a destination; the source is always a local folder"
            )
        password = settings.password.get_secret_value() if settings.password is not None else None
        secret = settings.sharepoint_client_secret
        login = None
        if token is None:
            login = choose_login(
                settings.sharepoint_auth,
                tenant=settings.sharepoint_tenant,
                client_id=settings.sharepoint_client_id,
                username=settings.sharepoint_username or getattr(settings, "username", None),
                password=password,
                client_secret=secret.get_secret_value() if secret else None,
                cert_path=settings.sharepoint_cert_path,
                thumbprint=settings.sharepoint_cert_thumbprint,
                token_cache=settings.sharepoint_token_cache,
                authority=settings.sharepoint_authority,
            )
        return cls(
            site_url_of(settings.sharepoint_url, settings.sharepoint_sitename),
            settings.sharepoint_doc_library,
            settings.base_dir_to,
            login=login,
            token=token,
            chunk_size=settings.sharepoint_chunk_size,
        )

    def __repr__(self) -> str:
        return f"SharePointConnector({self.directory!r})"

    def __str__(self) -> str:
        return self.directory

    # -- names ----------------------------------------------------------------------------
    def server_url(self, relpath: str) -> str:
        """The server-relative URL of a relative name; a name SharePoint refuses raises
        ``TransferError`` with the reason (that file fails, the run goes on)."""
        relpath = safe_relpath(relpath)
        problem = name_problem(relpath)
        if problem:
            raise TransferError(f"{printable(relpath)}: {problem}")
        try:
            relpath.encode("utf-8")
        except UnicodeEncodeError:
            raise TransferError(
                f"{printable(relpath)}: the name is not valid UTF-8, as SharePoint's must be"
            ) from None
        url = f"{self.base_url}/{relpath}"
        if len(url) > MAX_PATH:
            raise TransferError(
                f"{printable(relpath)}: the path in SharePoint would be {len(url)} characters; "
                f"it allows {MAX_PATH}"
            )
        return url

    def split(self, relpath: str) -> Tuple[str, str]:
        """The server-relative URL of a file's folder, and its name."""
        url = self.server_url(relpath)
        folder, name = url.rsplit("/", 1)
        return folder, name

    def staging_name(self, relpath: str) -> str:
        """The hidden temporary name of an upload: next to its real one, or, when that would
        make the path too long, a short one in the base folder."""
        staging = temp_relpath(relpath, self.upload_tag)
        if len(f"{self.base_url}/{staging}") <= MAX_PATH:
            return staging
        import hashlib

        digest = hashlib.sha1(relpath.encode("utf-8", "surrogatepass")).hexdigest()
        return temp_relpath(digest, self.upload_tag)

    def external_name(self, relpath: str) -> str:
        return (
            f"{urlsplit(self.site_url).scheme}://{urlsplit(self.site_url).netloc}{self.server_url(relpath)}"
        )

    # -- life cycle -----------------------------------------------------------------------
    def _new_context(self) -> Any:
        ntlm = self.login is not None and self.login.kind == "ntlm"
        ctx = ClientContext(self.site_url, allow_ntlm=ntlm)
        if ntlm:
            assert self.login is not None
            try:
                ctx.with_user_credentials(self.login.username, self.login.password)
            except ImportError:
                raise ConfigError(
                    "the SharePoint ntlm login needs the requests_ntlm package: pip install requests_ntlm "
                    '(it comes with pip install "oeleo[sharepoint]")'
                ) from None
            # The library's NTLM provider puts a 10 s timeout on each request, over the transport's.
            provider = getattr(getattr(ctx.authentication_context, "_authenticate", None), "__self__", None)
            if provider is not None and hasattr(provider, "timeout"):
                provider.timeout = self.timeout
        else:
            assert self._token is not None
            ctx.with_access_token(self._token)
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
        session.hooks["response"].append(self._counted)
        ctx.with_transport(session=session, timeout=self.timeout)
        return ctx

    def _counted(self, response: Any, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self.requests += 1

    def _checkout(self) -> Any:
        """A client context no other thread uses now (the library's are not for sharing):
        an idle one, else a new one; at most one per copying thread, each with its digest."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._new_context()

    def _checkin(self, ctx: Any) -> None:
        with self._lock:
            if not self._closing.is_set():
                self._idle.append(ctx)
                return
        self._close_context(ctx)

    @staticmethod
    def _close_context(ctx: Any) -> None:
        try:
            ctx.close()
        except Exception:  # noqa: BLE001 - closing must not hide the first error
            pass

    def _drop_contexts(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for ctx in idle:
            self._close_context(ctx)

    def connect(self, **kwargs: Any) -> None:
        """Reach the site and its library (a wrong URL, login or library fails here, before
        any file); the folders seen in the last pass are forgotten."""
        self._closing.clear()
        with self._lock:
            self._folders.clear()
        if not self._reached:
            self._probe()
        self.check_base()

    def _probe(self) -> None:
        """One plain request to the site first: the library's form-digest request retries a
        host that cannot be reached for over a minute before it fails."""
        try:
            with requests.Session() as session:
                session.headers["User-Agent"] = USER_AGENT
                session.head(self.site_url, timeout=self.timeout, allow_redirects=False)
        except requests.exceptions.SSLError as exc:
            raise ConfigError(f"cannot check the certificate of {self._host()}: {exc}") from None
        except requests.exceptions.RequestException as exc:
            raise DestinationUnreachable(
                f"cannot reach SharePoint at {self._host()} ({exc}); check OELEO_SHAREPOINT_URL"
            ) from None
        with self._lock:
            self.requests += 1

    def reconnect(self, **kwargs: Any) -> None:
        self._drop_contexts()
        self.connect()

    def close(self) -> None:
        self._closing.set()
        self._drop_contexts()

    def prepare(self) -> None:
        """Create the base folder in the library when it is not there yet."""
        self.check_base()
        if self.folder:
            self.ensure_folder("")

    def check_base(self) -> bool:
        """The library is there (``ConfigError`` otherwise); whether the base folder is."""
        library = "/".join(p for p in (self.site_path, self.library) if p) or "/"
        if not library.startswith("/"):
            library = "/" + library
        found = self.run(
            "opening", None, lambda ctx: self._folder_props(ctx, library), setup=True, missing=None
        )
        if found is None:
            raise ConfigError(
                f"OELEO_SHAREPOINT_DOC_LIBRARY={self.library!r}: no such library at {self.site_url} "
                f"(the library's name in its address: a site's Documents library is {DEFAULT_LIBRARY!r})"
            )
        if not self.folder:
            with self._lock:
                self._folders.add(self.base_url)
            return True
        there = self.run("opening", None, lambda ctx: self._folder_props(ctx, self.base_url), missing=None)
        if there is not None:
            with self._lock:
                self._folders.add(self.base_url)
        return there is not None

    @staticmethod
    def _folder_props(ctx: Any, url: str) -> Any:
        return ctx.web.get_folder_by_server_relative_path(url).get().select(["ServerRelativeUrl", "Name"])

    def ensure_folder(self, folder_relpath: str) -> None:
        """Make sure a folder under the base exists, asked once per folder per pass (also when
        several threads need it at once): the base through ``web.ensure_folder_path``, a
        subfolder by one ``Folders/Add`` in its parent."""
        url = self.base_url + (f"/{folder_relpath}" if folder_relpath else "")
        while True:
            with self._lock:
                if url in self._folders:
                    return
                pending = self._ensuring.get(url)
                if pending is None:
                    pending = self._ensuring[url] = threading.Event()
                    break
            pending.wait()  # another thread asks for it; if that failed, this one tries
        try:
            if not folder_relpath:
                self.run("creating the folder", None, lambda ctx: ctx.web.ensure_folder_path(url), setup=True)
            else:
                self.server_url(folder_relpath)  # its name is one SharePoint takes
                parent, name = posixpath.split(folder_relpath)
                self.ensure_folder(parent)
                parent_url = url.rsplit("/", 1)[0]
                self.run(
                    "creating the folder",
                    folder_relpath,
                    lambda ctx: ctx.web.get_folder_by_server_relative_path(parent_url).folders.add(name),
                )
            with self._lock:
                self._folders.add(url)
        finally:
            with self._lock:
                self._ensuring.pop(url, None)
            pending.set()

    # -- requests ---------------------------------------------------------------------------
    def run(
        self,
        what: str,
        relpath: Optional[str],
        build: Callable[[Any], T],
        *,
        setup: bool = False,
        missing: Any = ...,
    ) -> T:
        """Build queries on this thread's context and execute them. A 429 or 503 is retried
        after its ``Retry-After`` (``retries`` times, at most ``max_wait`` each), a 401 once
        with a new token; a 404 returns ``missing`` when one is given; anything else becomes
        an oeleo error in one line. A failed context is dropped (a new one next time)."""
        throttled = 0
        refreshed = False
        while True:
            ctx = self._checkout()
            keep = False  # a context whose request failed is closed: its queue may hold leftovers
            try:
                result = build(ctx)
                ctx.execute_query()
                self._reached = keep = True
                return result
            except ClientRequestException as exc:
                response = getattr(exc, "response", None)
                status = int(getattr(response, "status_code", 0) or 0)
                if status == 404 and "/_api/contextinfo" in str(getattr(response, "url", "")).lower():
                    raise self._error(exc, status, what, relpath, True, throttled) from None  # no site
                if status == 404 and missing is not ...:
                    self._reached = keep = True
                    return missing
                self._reached = self._reached or status != 0
                if status in (429, 503) and throttled < self.retries:
                    throttled += 1
                    wait = self._retry_after(response, throttled)
                    log.info(
                        "SharePoint answered %d %s; waiting %.1f s (attempt %d of %d)",
                        status,
                        self._what(what, relpath),
                        wait,
                        throttled,
                        self.retries,
                    )
                    if self._closing.wait(wait):
                        raise ConnectionLost("stopped while waiting for SharePoint") from None
                    continue
                if status == 401 and not refreshed and self._token is not None:
                    refreshed = True  # an expired or revoked token: one more try with a new one
                    forget = getattr(self._token, "forget", None)
                    if callable(forget):
                        forget()
                    continue
                raise self._error(exc, status, what, relpath, setup, throttled) from None
            except requests.exceptions.SSLError as exc:
                raise ConfigError(f"cannot check the certificate of {self._host()}: {exc}") from None
            except requests.exceptions.RequestException as exc:
                if self._reached:
                    raise ConnectionLost(f"lost the connection to {self._host()}: {exc}") from None
                raise ConfigError(
                    f"cannot reach SharePoint at {self._host()} ({exc}); check OELEO_SHAREPOINT_URL"
                ) from None
            except ValueError as exc:  # the library: a token response or a reply it cannot use
                raise TransferError(f"{self._what(what, relpath)}: {str(exc)[:300]}") from None
            finally:
                if keep:
                    self._checkin(ctx)
                else:
                    self._close_context(ctx)

    def _retry_after(self, response: Any, attempt: int) -> float:
        from office365.runtime.retry import response_retry_after

        seconds = response_retry_after(response)
        wait = float(seconds) if seconds is not None else min(2.0 ** (attempt - 1), 30.0)
        return max(0.0, min(wait, self.max_wait))

    def _host(self) -> str:
        parts = urlsplit(self.site_url)
        return f"{parts.scheme}://{parts.netloc}"

    def _what(self, what: str, relpath: Optional[str]) -> str:
        return f"{what} {printable(relpath)}" if relpath else f"{what} {self.directory}"

    def _error(
        self, exc: Any, status: int, what: str, relpath: Optional[str], setup: bool, throttled: int
    ) -> Exception:
        doing = self._what(what, relpath)
        message = " ".join(str(getattr(exc, "message", "") or "").split())[:300] or f"HTTP {status}"
        code = str(getattr(exc, "code", "") or "")
        if status == 401 and self.login is not None and self.login.kind == "ntlm":
            return ConfigError(self._ntlm_refusal(exc))
        if status == 401:
            return ConfigError(
                f"SharePoint refused the login for {self.site_url} (401): check the app's permission "
                "on SharePoint (Sites.Selected or Sites.ReadWrite.All, with admin consent) and the "
                "login settings"
            )
        if status == 403:
            text = (
                f"SharePoint denied {doing} (403: {message}): the login needs write permission on the "
                f"library {self.library!r}"
            )
            return ConfigError(text) if setup else TransferError(text)
        if status == 404 and setup:
            return ConfigError(
                f"OELEO_SHAREPOINT_URL/OELEO_SHAREPOINT_SITENAME: no SharePoint site at {self.site_url} (404)"
            )
        if status == 423:
            return TransferError(
                f"{doing}: the file is locked in SharePoint (checked out or open): {message}"
            )
        if status in (429, 503):
            return TransferError(
                f"{doing}: SharePoint is throttling ({status}) after {throttled + 1} attempts; "
                "tried again next run"
            )
        if "-2130575245" in code or "-2147024809" in code:
            return TransferError(f"{doing}: SharePoint refused the name ({message})")
        return TransferError(f"{doing}: SharePoint answered {status}: {message}")

    def _ntlm_refusal(self, exc: Any) -> str:
        """A 401 to the NTLM login: after a whole handshake, the password (or user) is wrong;
        on a connection that had signed in, the user may not use the site."""
        assert self.login is not None
        response = getattr(exc, "response", None)
        handshake = len(getattr(response, "history", None) or []) >= 2
        if handshake:
            return (
                f"SharePoint Server refused {self.login.username}: wrong user name or password "
                "(OELEO_SHAREPOINT_USERNAME as DOMAIN\\user, OELEO_PASSWORD)"
            )
        return (
            f"SharePoint Server refused {self.login.username} access to {self.site_url} (401): the user "
            "needs permission to edit the library"
        )

    # -- read side ------------------------------------------------------------------------
    def _listing(self, recursive: bool = True) -> List[Tuple[str, int, int]]:
        """Every file under the base folder as (relative name, size, mtime), hidden ones too."""
        if not self.check_base():
            return []

        def build(ctx: Any) -> Any:
            folder = ctx.web.get_folder_by_server_relative_path(self.base_url)
            return folder.get_files(recursive=recursive, page_size=self.page_size).select(_SELECT)

        files = self.run("listing", None, build)
        prefix = self.base_url + "/"
        found = []
        for file in files:
            url = str(file.properties.get("ServerRelativeUrl", ""))
            if not url.startswith(prefix):
                continue
            found.append(
                (
                    url[len(prefix) :],
                    int(file.properties.get("Length", 0) or 0),
                    parse_time(file.properties.get("TimeLastModified")),
                )
            )
        return found

    def list_files(
        self,
        extensions: Sequence[str] = (),
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        recursive: bool = True,
    ) -> Iterator[FileEntry]:
        """The files under the base folder, in relative-path order (a page of ``page_size``
        at a time, one listing per folder); hidden names (oeleo's temporary files among
        them) skipped. The mtime is when SharePoint stored the file."""
        found = []
        for relpath, size, mtime_ns in self._listing(recursive):
            parts = relpath.split("/")
            if any(part.startswith(".") for part in parts):
                continue
            if not kept_by_filters(relpath, extensions, include, exclude):
                continue
            found.append(FileEntry(relpath, size, mtime_ns))
        found.sort()
        return iter(found)

    def list_temporaries(self) -> Iterator[str]:
        for relpath, _, _ in self._listing(True):
            name = posixpath.basename(relpath)
            if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                yield relpath

    def stat(self, relpath: str) -> Optional[FileEntry]:
        try:
            url = self.server_url(relpath)
        except TransferError:
            return None  # a name SharePoint cannot hold is not there
        file = self.run(
            "reading the size of",
            relpath,
            lambda ctx: ctx.web.get_file_by_server_relative_path(url).get().select(_SELECT),
            missing=None,
        )
        if file is None:
            return None
        return FileEntry(
            safe_relpath(relpath), self.length(file), parse_time(file.properties.get("TimeLastModified"))
        )

    def checksum(self, relpath: str, algorithm: str = "md5") -> str:
        """The file downloaded and hashed (SharePoint keeps no hash that can be read)."""
        url = self.server_url(relpath)
        sink: List[_Hashing] = []

        def build(ctx: Any) -> Any:
            sink[:] = [_Hashing(algorithm)]
            return ctx.web.get_file_by_server_relative_path(url).download_session(sink[0], chunk_size=MiB)

        if self.run("reading back", relpath, build, missing=None) is None:
            raise FileNotFoundError(2, "not in the SharePoint library", self.external_name(relpath))
        return sink[0].digest.hexdigest()

    # -- write side -----------------------------------------------------------------------
    def open_upload(self, relpath: str, size: int, mtime_ns: int) -> Upload:
        self.server_url(relpath)  # a name SharePoint refuses fails now, before any byte
        if self.read_back or size > self.chunk_size:
            return SharePointStagedUpload(self, relpath, size, mtime_ns)
        return SharePointUpload(self, relpath, size, mtime_ns)

    @staticmethod
    def length(file: Any) -> int:
        """The size SharePoint reports for a file it returned (``Length`` comes as a string)."""
        try:
            return int(file.properties.get("Length", -1))
        except (TypeError, ValueError):
            return -1

    def check_size(self, relpath: str, file: Any, sent: int) -> None:
        """After a one-request upload: the size SharePoint reports must be the bytes sent; an
        Office file that SharePoint rewrote is kept, with a warning once."""
        stored = self.length(file)
        if stored == sent:
            return
        if relpath.lower().endswith(OFFICE_SUFFIXES) and stored > 0:
            with self._lock:
                first = relpath not in self._warned
                self._warned.add(relpath)
            if first:
                log.warning(
                    "%s: SharePoint rewrote this Office file as it stored it (%d bytes, %d sent), as it "
                    "does to add the library's properties; the copy is kept, `oeleo check` shows it "
                    "as different",
                    printable(relpath),
                    stored,
                    sent,
                )
            return
        raise VerificationError(f"{printable(relpath)}: SharePoint holds {stored} bytes, {sent} were sent")

    def remove(self, relpath: str) -> None:
        url = self.server_url(relpath)
        self.run(
            "removing",
            relpath,
            lambda ctx: ctx.web.get_file_by_server_relative_path(url).delete_object(),
            missing=None,
        )


__all__ = ["SharePointConnector", "SharePointUpload", "SharePointStagedUpload", "site_url_of", "name_problem"]
