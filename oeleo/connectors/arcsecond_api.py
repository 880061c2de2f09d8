"""A small client of the Arcsecond.io REST API, on ``requests``: the requests the Arcsecond
connector needs, and what their failures mean for the engine.

Why not the ``arcsecond`` package: it installs docker, alpyca and more (49 MB), and its
uploader annotates ``str | Path`` at run time, so it needs Python 3.10 while declaring 3.9.
The requests, header and field names follow that client (3.14.1: ``api/endpoint.py``,
``cloud/uploader/uploader.py``, ``cloud/uploader/datafiles/``).

Invariants: the key goes into one header and nowhere else (not into a message, a log line,
a ``repr``, nor to another host than the API's); an upload body is streamed from a file,
with its length known up front (Django reads a request body by its Content-Length only).
"""

from __future__ import annotations

import email.utils
import logging
import re
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from oeleo.errors import ConfigError, ConnectionLost, TransferError

log = logging.getLogger("oeleo")

AUTH_HEADER = "X-Arcsecond-API-Authorization"  # arcsecond api/endpoint.py, _check_and_set_auth_key
KEY_ENV = "OELEO_ARCSECOND_API_KEY"
RETRY_AFTER_MAX = 60.0  # a 429 asking to wait longer than this fails the file (tried next run)
PART = 1024 * 1024  # bytes read from the spooled file per chunk of the body
_KEY = re.compile(r"[\x21-\x7e]+")  # what a key can hold: one header value, no space, no line break


def check_key(key: str, where: str) -> str:
    """The key, stripped; a ``ConfigError`` naming ``where`` (never the key) when it is empty
    or could not be sent as a header value (``requests`` would quote it in its error)."""
    key = key.strip()
    if not key:
        raise ConfigError(f"{where} is empty: the Arcsecond API key")
    if not _KEY.fullmatch(key):
        raise ConfigError(
            f"{where} holds characters an Arcsecond key cannot have (spaces, line breaks, non-ASCII)"
        )
    return key


class HTTPFailure(Exception):
    """The API answered with an error status; ``detail`` is its message in one line, ``text``
    the whole body (both without the key)."""

    def __init__(self, status: int, detail: str, text: str = "") -> None:
        super().__init__(f"HTTP {status}: {detail}" if detail else f"HTTP {status}")
        self.status = status
        self.detail = detail
        self.text = text or detail


def _detail(text: str) -> str:
    """The message of a DRF error body (``{"detail": ...}``, a list, field errors), one line."""
    import json

    try:
        body = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:300]
    if isinstance(body, dict) and "detail" in body:
        body = body["detail"]
    if isinstance(body, list) and body:
        body = body[0] if len(body) == 1 else body
    if isinstance(body, dict):
        body = "; ".join(
            f"{k}: {v[0] if isinstance(v, list) and len(v) == 1 else v}" for k, v in body.items()
        )
    return " ".join(str(body).split())[:300]


def retry_after(value: Optional[str]) -> float:
    """Seconds a ``Retry-After`` header asks for (seconds or an HTTP date); 1 when absent."""
    if not value:
        return 1.0
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 1.0
    return max(0.0, when.timestamp() - time.time())


def quoted(value: str) -> str:
    """``value`` as a quoted string of a multipart header (RFC 7578: UTF-8; ``\\`` and ``"``
    escaped as Django's parser reads them back)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class MultipartBody:
    """A ``multipart/form-data`` body: text fields, then one file read from ``open_file()``
    in parts. It has a length (so ``requests`` sends a Content-Length, not chunks) and can be
    iterated again (a retry reads the file again from its start)."""

    def __init__(
        self,
        fields: Mapping[str, str],
        file_field: str,
        filename: str,
        size: int,
        open_file: Callable[[], Iterable[bytes]],
    ) -> None:
        self.boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={self.boundary}"
        head = b"".join(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            for name, value in fields.items()
            for value in [value + "\r\n"]
        )
        head += (
            f"--{self.boundary}\r\nContent-Disposition: form-data; name={quoted(file_field)}; "
            f"filename={quoted(filename)}\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).encode()
        self._head = head
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._size = size
        self._open = open_file

    def __len__(self) -> int:
        return len(self._head) + self._size + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self._head
        sent = 0
        for chunk in self._open():
            sent += len(chunk)
            yield chunk
        if sent != self._size:  # the spool is the engine's, checked already; never send a lie
            raise TransferError(f"the upload body holds {sent} bytes, not {self._size}")
        yield self._tail


class ArcsecondAPI:
    """The API of one account: ``https://api.arcsecond.io/[<organisation>/]<path>/``.

    ``request`` retries what may pass (a 429 after its ``Retry-After``, a 5xx and a dropped
    connection with backoff), ``retries`` times, then raises: ``ConfigError`` for a key that
    is refused (401, 403), ``HTTPFailure`` for other statuses (the caller says what it means),
    ``ConnectionLost`` when the server cannot be reached.
    """

    def __init__(
        self,
        api_url: str,
        key: str,
        organisation: Optional[str] = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        self.api_url = api_url.rstrip("/") + "/"
        self.organisation = organisation or ""
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._key = key
        self._local = threading.local()  # one requests.Session per thread
        self._sessions: List[Any] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ArcsecondAPI({self.api_url!r}, organisation={self.organisation!r})"

    # -- the parts of a request -----------------------------------------------------------
    def url(self, path: str) -> str:
        """The URL of ``path`` (``datasets``), under the organisation when there is one."""
        prefix = f"{self.organisation}/" if self.organisation else ""
        return f"{self.api_url}{prefix}{path.strip('/')}/"

    def redact(self, text: str) -> str:
        """``text`` without the key (a server that quotes the request back)."""
        return text.replace(self._key, "********") if self._key else text

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = requests.Session()
            session.trust_env = True  # proxies from the environment, as any HTTP client
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def _headers(self, url: str) -> Dict[str, str]:
        headers = {"Accept": "application/json"}
        if _same_origin(url, self.api_url):  # a file URL on S3 never sees the key
            headers[AUTH_HEADER] = f"Key {self._key}"
        return headers

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._local = threading.local()

    # -- requests -------------------------------------------------------------------------
    def request(
        self,
        method: str,
        url: str,
        *,
        params: Optional[Mapping[str, str]] = None,
        json: Any = None,
        body: Optional[MultipartBody] = None,
        stream: bool = False,
        resend: bool = True,
    ) -> Any:
        """One request, retried as the class says; the ``requests`` response when it succeeded.

        ``resend=False``: a request that must not be sent twice blindly (one that creates
        something whose name is not unique) is not sent again after a 5xx or a lost answer,
        which may come after the server acted: ``HTTPFailure`` or ``ConnectionLost`` at
        once, for the caller to look first. A 429 is still waited for (nothing was done)."""
        import requests

        headers = self._headers(url)
        if body is not None:
            headers["Content-Type"] = body.content_type
        attempt = 0
        while True:
            attempt += 1
            wait: Optional[float] = None
            try:
                response = self._session().request(
                    method,
                    url,
                    params=params,
                    json=json,
                    data=body,
                    headers=headers,
                    timeout=self.timeout,
                    stream=stream,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                reason = _reason(exc)
                if attempt > self.retries or not resend:
                    raise ConnectionLost(f"Arcsecond at {self.api_url} did not answer: {reason}") from None
                wait = self.pause(attempt)
                log.warning("Arcsecond: %s; trying again in %.1f s", reason, wait)
            else:
                status = response.status_code
                if status < 400:
                    return response
                text = self.redact(response.text)
                detail = _detail(text)
                response.close()
                if status in (401, 403):
                    member = (
                        f" (and that its account is a member of {self.organisation})"
                        if self.organisation
                        else ""
                    )
                    raise ConfigError(
                        f"Arcsecond refused the key (HTTP {status}{': ' + detail if detail else ''}): check "
                        f"{KEY_ENV}, or the key `arcsecond login` stored{member}"
                    )
                if status == 429:
                    wait = retry_after(response.headers.get("Retry-After"))
                    if wait > RETRY_AFTER_MAX or attempt > self.retries:
                        raise TransferError(
                            f"Arcsecond is busy (HTTP 429), asking to wait {wait:.0f} s; tried again next run"
                        )
                    log.warning("Arcsecond asks to wait %.1f s (HTTP 429)", wait)
                elif status >= 500 and attempt <= self.retries and resend:
                    wait = self.pause(attempt)
                    log.warning("Arcsecond: HTTP %d; trying again in %.1f s", status, wait)
                else:
                    raise HTTPFailure(status, detail, text)
            time.sleep(wait)

    def pause(self, attempt: int) -> float:
        """The backoff before attempt ``attempt + 1``: ``backoff``, doubled each time."""
        return self.backoff * 2 ** (attempt - 1)

    def get_json(self, url: str, params: Optional[Mapping[str, str]] = None) -> Any:
        response = self.request("GET", url, params=params)
        return _json(response, url)

    def post_json(
        self, url: str, json: Any = None, body: Optional[MultipartBody] = None, resend: bool = True
    ) -> Any:
        response = self.request("POST", url, json=json, body=body, resend=resend)
        return _json(response, url)

    def list(self, path: str, params: Optional[Mapping[str, str]] = None) -> Iterator[Dict[str, Any]]:
        """Every item of a listing: a plain JSON list, or DRF pages (``results``, ``next``)."""
        url: Optional[str] = self.url(path)
        query: Optional[Mapping[str, str]] = params
        while url is not None:
            page = self.get_json(url, query)
            items, url = _page(page)
            query = None  # the next page's URL carries the query
            yield from items

    def download(self, url: str) -> Iterator[bytes]:
        """The bytes at ``url`` (a file the API points to), in parts."""
        response = self.request("GET", url, stream=True)
        try:
            yield from response.iter_content(PART)
        finally:
            response.close()


def _same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def _reason(exc: BaseException) -> str:
    """A one-line reason for a connection error (requests nests urllib3's several deep)."""
    import requests

    if isinstance(exc, requests.Timeout):
        return "timed out"
    text = str(exc)
    found = re.search(r"\] ([^'\")]+)", text)
    return found.group(1).strip() if found else (text.splitlines()[0][:200] if text else type(exc).__name__)


def _json(response: Any, url: str) -> Any:
    if not response.content:
        return {}
    try:
        return response.json()
    except ValueError:
        raise TransferError(f"Arcsecond answered {url} with something that is not JSON") from None


def _page(page: Any) -> Tuple[List[Dict[str, Any]], Optional[str]]:
    """The items of one page and the URL of the next one (None: the last page)."""
    if isinstance(page, list):
        return page, None
    if isinstance(page, dict) and isinstance(page.get("results"), list):
        return page["results"], page.get("next") or None
    raise TransferError("Arcsecond answered a listing with neither a list nor pages of results")
