"""``oeleo serve``: the monitor's web page, JSON API and ``/metrics`` (standard library only).

Safe by default: it listens on 127.0.0.1; every action (a POST) needs the token, as
``Authorization: Bearer <token>`` or as the session cookie that ``POST /api/login`` sets plus
its ``X-CSRF-Token`` header; a POST must be JSON and, when the browser says where it comes from
(``Origin``), come from this server's own page. On an address that is not loopback every page
and GET needs the token too. The books are opened for each request and closed after it
(oeleo.monitor), so the server never holds them between requests. Requests are logged at DEBUG.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Set, Tuple
from urllib.parse import parse_qs, urlsplit

from oeleo import __version__
from oeleo.errors import ConfigError, OeleoError
from oeleo.monitor import ACTIONS, Monitor, describe_error

log = logging.getLogger("oeleo")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MIN_TOKEN_LENGTH = 16
PAGE_FOLDER = Path(__file__).with_name("monitor_page")
COOKIE = "oeleo_session"
MAX_BODY = 1024 * 1024  # an action's JSON: a list of names, not an upload
MAX_FILES = 10_000  # names per action
MAX_SESSIONS = 256  # logins kept; the oldest is forgotten first
SESSION_SECONDS = 12 * 3600  # a login lasts a working day (or night)
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}
SECURITY_HEADERS = {
    # no inline script or style, nothing from elsewhere, never inside another site's frame
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>oeleo monitor</title></head>
<body><h1>oeleo monitor</h1>
<p>The page is not installed; the API answers: <a href="/api/status">/api/status</a>,
<a href="/api/files">/api/files</a>, <a href="/metrics">/metrics</a>.</p></body></html>
"""
LOGIN_PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>oeleo monitor: log in</title></head>
<body><h1>oeleo monitor</h1><p>This server needs its token (OELEO_MONITOR_TOKEN): send it as
<code>Authorization: Bearer &lt;token&gt;</code>, or log in with <code>POST /api/login</code>.</p>
</body></html>
"""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this PC alone."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token(token: Optional[str]) -> Tuple[str, bool]:
    """The token of the actions and whether it was made here (``OELEO_MONITOR_TOKEN`` empty)."""
    if token is None or not token.strip():
        return secrets.token_urlsafe(24), True
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"OELEO_MONITOR_TOKEN: at least {MIN_TOKEN_LENGTH} characters, it has {len(token)} "
            "(leave it empty to have one made)"
        )
    return token, False


_DEFAULT_PORTS = {"http": 80, "https": 443}


def public_origins(text: str) -> Tuple[str, ...]:
    """The origins (``https://lab.example.org``) of ``OELEO_MONITOR_URL``: where people open the
    monitor through a reverse proxy. Comma separated; empty: none."""
    found = []
    for url in (part.strip() for part in text.split(",")):
        if not url:
            continue
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname or port == -1:
            raise ConfigError(
                f"OELEO_MONITOR_URL: {url!r} is not an address such as https://lab.example.org/oeleo/"
            )
        found.append(_origin(parts.scheme, parts.hostname, port))
    return tuple(found)


def _origin(scheme: str, host: str, port: Optional[int]) -> str:
    """``scheme://host[:port]`` as browsers send it in ``Origin``: lower case, no default port."""
    scheme, host = scheme.lower(), host.lower()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS[scheme]) else f"{scheme}://{host}:{port}"


def _hosts_of(origin: str) -> Set[str]:
    """The ``Host`` headers that name ``origin``: with its port, and without it when default."""
    parts = urlsplit(origin)
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    host = parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc
    return {f"{host}:{port}"} | ({host} if port == _DEFAULT_PORTS[parts.scheme] else set())


class MonitorServer(ThreadingHTTPServer):
    """The HTTP server: its monitor, its token and the sessions of the page's logins."""

    daemon_threads = True  # a request in progress does not keep the command from stopping
    # A restart right after a stop may bind the port (TIME_WAIT); on Windows that option would
    # let two servers share it, so a port in use would not be said.
    allow_reuse_address = sys.platform != "win32"

    def __init__(
        self,
        host: str,
        port: int,
        monitor: Monitor,
        token: str,
        page: Path = PAGE_FOLDER,
        public: Sequence[str] = (),
    ):
        if ":" in host.strip("[]"):
            self.address_family = socket.AF_INET6
        self.monitor = monitor
        self.token = token
        self.page = page
        self.public = tuple(public)  # origins of OELEO_MONITOR_URL (a reverse proxy's address)
        self.host = host.strip("[]")
        self.loopback = is_loopback(host)
        self.sessions: Dict[str, Tuple[str, float]] = {}  # id -> (CSRF token, until), oldest first
        self.sessions_lock = threading.Lock()
        self._last_warning = ""
        super().__init__((self.host, port), MonitorHandler)
        self.port = self.server_address[1]

    def allowed_hosts(self) -> Optional[Set[str]]:
        """The ``Host`` headers a loopback server answers (None: any): its own address, and the
        public one of a proxy that passes the Host on. A page of another site whose name is made
        to point to 127.0.0.1 (DNS rebinding) says its own name, not one of these."""
        if not self.loopback:
            return None
        shown = f"[{self.host}]" if ":" in self.host else self.host
        allowed = {f"{name}:{self.port}" for name in (shown, "localhost", "127.0.0.1", "[::1]")}
        for origin in self.public:
            # nginx's $host is the name without the port: a name is what DNS rebinding fakes
            allowed |= _hosts_of(origin) | {urlsplit(origin).netloc.rsplit(":", 1)[0]}
        return allowed

    def same_origin(self, origin: str, host: str) -> bool:
        """Whether a browser's ``Origin`` is this server's page: one of OELEO_MONITOR_URL, or the
        host it asked for (``Host``, checked already) whatever the scheme: a TLS proxy that passes
        the Host on is ``https://`` + that host. Another site says its own host."""
        parts = urlsplit(origin.strip().lower())
        try:
            port = parts.port
        except ValueError:
            return False
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
            return False
        normal = _origin(parts.scheme, parts.hostname, port)
        return normal in self.public or host.lower() in _hosts_of(normal)

    def token_matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8"))

    def warn_once(self, message: str) -> None:
        """Log why the books cannot be read, once while it lasts (the page asks every few seconds)."""
        with self.sessions_lock:
            if message == self._last_warning:
                return
            self._last_warning = message
        log.warning("monitor: %s", message)

    def login(self) -> Tuple[str, str]:
        session, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self.sessions_lock:
            self.sessions[session] = (csrf, time.monotonic() + SESSION_SECONDS)
            while len(self.sessions) > MAX_SESSIONS:
                self.sessions.pop(next(iter(self.sessions)))
        return session, csrf

    def logout(self, session: str) -> None:
        with self.sessions_lock:
            self.sessions.pop(session, None)

    def csrf_of(self, session: Optional[str]) -> Optional[str]:
        """The CSRF token of a session that is logged in (None: not one, or it expired)."""
        if not session:
            return None
        now = time.monotonic()
        with self.sessions_lock:
            for known, (csrf, until) in list(self.sessions.items()):
                if until < now:
                    del self.sessions[known]
                elif hmac.compare_digest(known.encode("utf-8"), session.encode("utf-8")):
                    return csrf
        return None


class _Refused(Exception):
    """A request answered with an error status and a one-line JSON reason."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class MonitorHandler(BaseHTTPRequestHandler):
    server: MonitorServer
    server_version = f"oeleo/{__version__}"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a connection may idle or dawdle before it is closed
    # Headers and body are two writes: without TCP_NODELAY a kept-alive connection waits for
    # the client's delayed ACK (40 ms) before the body goes out.
    disable_nagle_algorithm = True

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("monitor: %s %s", self.address_string(), format % args)

    # -- who asks ---------------------------------------------------------------------------
    def _session(self) -> Optional[str]:
        header = self.headers.get("Cookie")
        if not header:
            return None
        try:
            cookie = SimpleCookie(header)
        except CookieError:
            return None
        morsel = cookie.get(COOKIE)
        return morsel.value if morsel is not None else None

    def _bearer(self) -> Optional[str]:
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None

    def _authorised(self) -> str:
        """``bearer``, ``cookie`` or empty (neither is valid)."""
        bearer = self._bearer()
        if bearer is not None and self.server.token_matches(bearer):
            return "bearer"
        if self.server.csrf_of(self._session()) is not None:
            return "cookie"
        return ""

    def _check_host(self) -> None:
        allowed = self.server.allowed_hosts()
        host = (self.headers.get("Host") or "").lower()
        if allowed is not None and host not in allowed:
            raise _Refused(HTTPStatus.FORBIDDEN, f"Host {host or '(none)'}: not this server's address")

    # -- answers ----------------------------------------------------------------------------
    def _send(
        self, status: int, body: bytes, content_type: str, extra: Optional[Dict[str, str]] = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, document: Any, extra: Optional[Dict[str, str]] = None) -> None:
        body = json.dumps(document, ensure_ascii=False).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8", extra)

    def _error(self, status: HTTPStatus, message: str) -> None:
        extra = None
        if self.command == "POST":
            # Its body may not have been read: what is left of it must not be taken for the
            # next request on this connection.
            self.close_connection = True
            extra = {"Connection": "close"}
        self._json(status, {"error": message}, extra)

    def _answer(self, respond: Any) -> None:
        try:
            self._check_host()
            respond()
        except _Refused as refused:
            self._error(refused.status, refused.message)
        except ValueError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except OeleoError as exc:  # the books cannot be read now (locked, gone, unreachable)
            self.server.warn_once(describe_error(exc))
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, describe_error(exc))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # one request fails alone; the server goes on
            log.error("monitor: %s %s: %s", self.command, self.path, describe_error(exc))
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, describe_error(exc))

    # -- GET --------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._answer(self._get)

    def do_HEAD(self) -> None:
        self._answer(self._get)

    def _get(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        if path.startswith("/static/"):
            return self._static(path[len("/static/") :])  # the page's code: no data, no login
        if path == "/api/session":
            csrf = self.server.csrf_of(self._session())
            return self._json(
                HTTPStatus.OK,
                {
                    "logged_in": csrf is not None,
                    "csrf": csrf,
                    "token_required_for_pages": not self.server.loopback,
                },
            )
        allowed = self.server.loopback or bool(self._authorised())
        if path in ("/", "/index.html"):
            if not allowed:
                return self._page("login.html", LOGIN_PLACEHOLDER)
            return self._page("index.html", PLACEHOLDER)
        if path == "/login.html":
            return self._page("login.html", LOGIN_PLACEHOLDER)
        documents = {"/api/status", "/api/files", "/metrics"}
        if path not in documents:
            raise _Refused(HTTPStatus.NOT_FOUND, f"{path}: no such page")
        if not allowed:
            raise _Refused(HTTPStatus.UNAUTHORIZED, "this server needs its token (OELEO_MONITOR_TOKEN)")
        monitor = self.server.monitor
        if path == "/api/status":
            return self._json(HTTPStatus.OK, monitor.status())
        if path == "/metrics":
            body = monitor.metrics().encode("utf-8")
            return self._send(HTTPStatus.OK, body, "text/plain; version=0.0.4; charset=utf-8")
        query = parse_qs(url.query)
        one = {name: values[-1] for name, values in query.items()}
        try:
            page = int(one.get("page") or 1)
        except ValueError:
            raise ValueError(f"page={one.get('page')}: a number, 1 or more") from None
        return self._json(HTTPStatus.OK, monitor.files(one.get("code") or None, one.get("q", ""), page))

    def _page(self, name: str, placeholder: str) -> None:
        path = self.server.page / name
        body = path.read_bytes() if path.is_file() else placeholder.encode("utf-8")
        self._send(HTTPStatus.OK, body, CONTENT_TYPES[".html"])

    def _static(self, name: str) -> None:
        """A file of the page's folder, by its plain name: no folder, no way out of it."""
        folder = self.server.page
        known = {p.name for p in folder.iterdir() if p.is_file()} if folder.is_dir() else set()
        suffix = Path(name).suffix.lower()
        if name not in known or name.startswith(".") or suffix not in CONTENT_TYPES:
            raise _Refused(HTTPStatus.NOT_FOUND, f"/static/{name}: no such file")
        self._send(HTTPStatus.OK, (folder / name).read_bytes(), CONTENT_TYPES[suffix])

    # -- POST -------------------------------------------------------------------------------
    def do_POST(self) -> None:
        self._answer(self._post)

    # -- anything else ----------------------------------------------------------------------
    def _not_allowed(self) -> None:
        self.close_connection = True  # a body, if any, is not read
        body = json.dumps({"error": f"{self.command}: only GET, HEAD and POST are answered"}).encode()
        extra = {"Allow": "GET, HEAD, POST", "Connection": "close"}
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, body, "application/json; charset=utf-8", extra)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """http.server's own refusals (a broken request line, an unknown method, headers too
        long) as JSON with the same headers as every answer, instead of its HTML page."""
        self.close_connection = True
        try:
            text = message or HTTPStatus(code).phrase
        except ValueError:
            text = message or "refused"
        self.log_error("code %d, message %s", code, text)
        body = json.dumps({"error": text}).encode()
        self._send(code, body, "application/json; charset=utf-8", {"Connection": "close"})

    def _same_origin(self) -> None:
        origin = self.headers.get("Origin")
        if origin is None:
            return
        if not self.server.same_origin(origin, self.headers.get("Host") or ""):
            raise _Refused(
                HTTPStatus.FORBIDDEN, f"Origin {origin}: not this server's page (OELEO_MONITOR_URL?)"
            )

    def _body(self) -> Any:
        if "Transfer-Encoding" in self.headers:  # http.server reads no chunked body
            raise _Refused(HTTPStatus.LENGTH_REQUIRED, "Transfer-Encoding: not taken; send a Content-Length")
        content_type = self.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise _Refused(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Content-Type: application/json expected")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            raise _Refused(HTTPStatus.BAD_REQUEST, "Content-Length: not a number of bytes")
        if length > MAX_BODY:
            raise _Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a body of at most {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            return json.loads(raw.decode("utf-8")) if raw else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _Refused(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {exc}") from None
        except RecursionError:
            raise _Refused(
                HTTPStatus.BAD_REQUEST, "the body is not JSON of an action: nested too deep"
            ) from None

    def _post(self) -> None:
        path = urlsplit(self.path).path
        if path not in {"/api/login", "/api/logout"} | {f"/api/{action}" for action in ACTIONS}:
            raise _Refused(HTTPStatus.NOT_FOUND, f"{path}: no such action")
        self._same_origin()
        body = self._body()
        if path == "/api/login":
            return self._login(body)
        how = self._authorised()
        if not how:
            raise _Refused(HTTPStatus.UNAUTHORIZED, "this action needs the token (OELEO_MONITOR_TOKEN)")
        if how == "cookie":
            csrf = self.server.csrf_of(self._session()) or ""
            given = self.headers.get("X-CSRF-Token", "")
            if not given or not hmac.compare_digest(given.encode("utf-8"), csrf.encode("utf-8")):
                raise _Refused(HTTPStatus.FORBIDDEN, "X-CSRF-Token: missing or not this session's")
        if path == "/api/logout":
            self.server.logout(self._session() or "")
            return self._json(HTTPStatus.OK, {"logged_in": False}, {"Set-Cookie": self._cookie("", 0)})
        files = body.get("files") if isinstance(body, dict) else None
        if not isinstance(files, list) or not all(isinstance(name, str) for name in files):
            raise ValueError('the body must be {"files": ["run-001/a.csv", ...]}')
        if len(files) > MAX_FILES:
            raise ValueError(f"at most {MAX_FILES} files per action")
        for name in files:
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    f"{name.encode('utf-8', 'backslashreplace').decode()}: not a name the books hold "
                    "(a byte that is not UTF-8 is written \u201b and two hex digits: m\u201bE9sure.csv)"
                ) from None
        action = path[len("/api/") :]
        reply = self.server.monitor.act(action, files)
        log.info("monitor: %s of %d files (%d unknown)", action, len(reply["done"]), len(reply["unknown"]))
        return self._json(HTTPStatus.OK, reply)

    def _cookie(self, value: str, max_age: Optional[int] = None) -> str:
        cookie = f"{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/"
        if (self.headers.get("Origin") or "").lower().startswith("https://"):
            # The page came through a TLS proxy (OELEO_MONITOR_URL): the browser never sends the
            # session back over plain HTTP.
            cookie += "; Secure"
        return cookie + (f"; Max-Age={max_age}" if max_age is not None else "")

    def _login(self, body: Any) -> None:
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not self.server.token_matches(token):
            time.sleep(0.5)  # a guess costs time; the token's length makes guessing hopeless anyway
            raise _Refused(HTTPStatus.UNAUTHORIZED, "not this server's token")
        session, csrf = self.server.login()
        self._json(HTTPStatus.OK, {"csrf": csrf}, {"Set-Cookie": self._cookie(session, SESSION_SECONDS)})


def make_server(
    host: str,
    port: int,
    monitor: Monitor,
    token: str,
    page: Path = PAGE_FOLDER,
    public: Sequence[str] = (),
) -> MonitorServer:
    """The server listening on ``host:port``; a port in use or an address that is not this
    PC's is one configuration error naming them."""
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        return MonitorServer(host, port, monitor, token, page, public)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: not an address of this computer ({exc.strerror})") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"--port {port}: {shown} is already in use (another oeleo serve? choose one with --port)"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"--host {host}: not an address of this computer") from None
        if exc.errno == errno.EACCES:
            raise ConfigError(f"--port {port}: {shown} needs privileges (use a port above 1023)") from None
        raise ConfigError(f"{shown}: cannot listen there: {exc.strerror or exc}") from None
