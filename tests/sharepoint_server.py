"""A loopback stand-in for SharePoint Online's REST API, enough for the SharePoint connector.

It answers the requests that Office365-REST-Python-Client 3.3.0 sends for the connector's
operations (found by logging them: ``FakeSharePoint.log``), in verbose OData JSON
(``application/json;odata=verbose``: the library parses a reply only when its Content-Type
starts with ``application/json``):

- ``POST /_api/contextInfo``: the form digest (``FormDigestValue``); every other POST must
  carry it in ``X-RequestDigest`` (a stale one: 403 ``-2130575251``, the library fetches a
  new one and retries once);
- ``getFolderByServerRelativePath(DecodedUrl='…')`` and ``getFileByServerRelativePath(…)``
  (also the ``…Url('…')`` and ``Get…ById('…')`` forms), with ``$select``; a missing one:
  404 ``-2147024894, System.IO.FileNotFoundException``;
- ``…/Files/add(overwrite=true,url='…')`` with the bytes as the body (an empty body makes or
  truncates the file to 0 bytes, as SharePoint Online does);
- ``…/startUpload(uploadID='…')``, ``continueUpload(uploadID='…',fileOffset=N)``,
  ``finishUpload(…,fileOffset=N)`` (the offsets of a session are enforced), ``CancelUpload``
  (body ``{"uploadId"}``);
- ``…/MoveTo(newurl='…',flags=1)`` (1: overwrite);
- ``Web/RootFolder/Folders/Add('…')`` and ``…/Folders/Add('…')`` on a folder (a folder that
  is there is returned as it is);
- ``…/Files?$select=…&$top=N`` and ``…/Folders?$top=N`` with ``__next`` links (server-driven
  paging, ``$skiptoken``);
- ``…/$value``: the bytes; ``X-HTTP-Method: DELETE``: removes a file.

Every request must carry ``Authorization: Bearer <a token in tokens>`` (else 401). With
``ntlm_users`` (a file of ``DOMAIN:USER:PASSWORD`` lines) it is SharePoint Server with Windows
authentication instead: a connection is anonymous until it has done a real NTLM handshake,
verified by pyspnego's acceptor (401 ``WWW-Authenticate: NTLM``; the client's negotiate
message, answered 401 with the server's challenge; the client's authenticate message,
checked against the user's password), and then stays authenticated for its requests, as IIS
keeps it (so replies are HTTP/1.1 with a Content-Length, and the connection is kept). On demand
(``fail``) it answers any status (429 or 503 with ``Retry-After``, 500 in the middle of an
upload session, 403, 404) a number of times; ``rewrite_office`` makes it add bytes to the
Office files it stores, as SharePoint does when it writes the library's properties into them.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

JSON = "application/json;odata=verbose;charset=utf-8"
NOT_FOUND = "-2147024894, System.IO.FileNotFoundException"
STALE_DIGEST = "-2130575251, Microsoft.SharePoint.SPException"
OFFICE = (".docx", ".xlsx", ".pptx")


@dataclass
class Fault:
    """Answer ``status`` to ``times`` requests whose method and decoded path match (after
    ``delay`` seconds: a slow server; status 0 then answers the request as usual)."""

    method: str
    pattern: str
    status: int = 500
    times: int = 1
    headers: Dict[str, str] = field(default_factory=dict)
    code: str = "-1, Microsoft.SharePoint.Client.ClientServiceException"
    message: str = "injected failure"
    delay: float = 0.0


@dataclass
class StoredFile:
    data: bytes
    mtime: float
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))


class Reply(Exception):
    def __init__(
        self, status: int, code: str = "", message: str = "", headers: Optional[Dict[str, str]] = None
    ):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def split_segments(path: str) -> List[str]:
    """``a/b('x/y')/c`` -> ``a``, ``b('x/y')``, ``c``: slashes inside quotes or brackets kept."""
    segments, current, depth, quoted = [], "", 0, False
    for char in path:
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        if char == "/" and depth == 0 and not quoted:
            segments.append(current)
            current = ""
        else:
            current += char
    segments.append(current)
    return [s for s in segments if s]


def parse_call(segment: str) -> Tuple[str, List[Any], Dict[str, Any]]:
    """``name(a='x',b=1)`` -> ("name", [], {"a": "x", "b": 1}); ``name('x')`` -> ("name", ["x"], {})."""
    if "(" not in segment:
        return segment, [], {}
    name, rest = segment.split("(", 1)
    inner = rest[:-1] if rest.endswith(")") else rest
    args: List[Any] = []
    kwargs: Dict[str, Any] = {}
    i = 0
    while i < len(inner):
        key = None
        match = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", inner[i:])
        if match:
            key = match.group(1)
            i += match.end()
        if i < len(inner) and inner[i] == "'":
            j = i + 1
            text = ""
            while j < len(inner):
                if inner[j] == "'":
                    if j + 1 < len(inner) and inner[j + 1] == "'":
                        text += "'"
                        j += 2
                        continue
                    break
                text += inner[j]
                j += 1
            value: Any = text
            i = j + 1
        else:
            j = inner.find(",", i)
            j = len(inner) if j < 0 else j
            raw = inner[i:j].strip()
            value = {"true": True, "false": False}.get(
                raw.lower(), int(raw) if raw.lstrip("-").isdigit() else raw
            )
            i = j
        if key is None:
            args.append(value)
        else:
            kwargs[key.lower()] = value
        while i < len(inner) and inner[i] in ", ":
            i += 1
    return name, args, kwargs


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (its timeout) before a slow answer is no error of the fake's."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class FakeSharePoint:
    """The site ``/sites/<site>`` with the library ``Shared Documents``, on 127.0.0.1."""

    def __init__(
        self,
        site: str = "lab",
        library: str = "Shared Documents",
        token: str = "test-token",
        ntlm_users: Optional[Path] = None,
    ) -> None:
        self.ntlm_users = ntlm_users
        self.ntlm_logins: List[str] = []  # the users of the handshakes that passed, in order
        self.ntlm_refused = 0  # authenticate messages that did not verify
        self.site_path = f"/sites/{site}"
        self.library_url = f"{self.site_path}/{library}"
        self.tokens = {token}
        self.token = token
        self.digest = "0xDIGEST1,01 Jan 2026 00:00:00 -0000"
        self.files: Dict[str, StoredFile] = {}
        self.folders: Dict[str, str] = {
            self.site_path: str(uuid.uuid4()),
            self.library_url: str(uuid.uuid4()),
        }
        self.sessions: Dict[str, Tuple[str, bytearray]] = {}  # upload id -> (file url, bytes so far)
        self.faults: List[Fault] = []
        self.log: List[Tuple[str, str, Dict[str, List[str]], Dict[str, str]]] = []
        self.rewrite_office = True
        self.lock = threading.RLock()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._user_file: Optional[str] = None
        self._port = 0  # kept after stop(): a slow answer may still be on its way

    # -- control ----------------------------------------------------------------------------
    def start(self) -> FakeSharePoint:
        fake = self
        if self.ntlm_users is not None:
            # pyspnego's NTLM acceptor reads its users from the file this variable names.
            self._user_file = os.environ.get("NTLM_USER_FILE")
            os.environ["NTLM_USER_FILE"] = str(self.ntlm_users)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.handle(self, "GET")

            def do_POST(self) -> None:
                fake.handle(self, "POST")

            def do_HEAD(self) -> None:  # the connector's first probe: SharePoint's 401 to anonymous
                with fake.lock:
                    fake.log.append(("HEAD", unquote(urlsplit(self.path).path), {}, dict(self.headers)))
                self.send_response(401)
                if fake.ntlm_users is not None:
                    self.send_header("WWW-Authenticate", "Negotiate")
                    self.send_header("WWW-Authenticate", "NTLM")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._port = self._server.server_address[1]
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.ntlm_users is not None:
            if self._user_file is None:
                os.environ.pop("NTLM_USER_FILE", None)
            else:
                os.environ["NTLM_USER_FILE"] = self._user_file

    @property
    def origin(self) -> str:
        assert self._port, "the fake is not started"
        return f"http://127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        """The site's URL."""
        return self.origin + self.site_path

    def fail(self, method: str, pattern: str, status: int = 500, times: int = 1, **options: Any) -> Fault:
        fault = Fault(method, pattern, status, times, **options)
        with self.lock:
            self.faults.append(fault)
        return fault

    def token_provider(self) -> Dict[str, Any]:
        return {"access_token": self.token, "token_type": "Bearer", "expires_in": 3600}

    def read(self, relpath: str) -> bytes:
        """The bytes of a file under the library's top folder."""
        return self.files[f"{self.library_url}/{relpath}"].data

    def names(self) -> Dict[str, int]:
        """Every file under the library, relative name -> size."""
        prefix = self.library_url + "/"
        return {url[len(prefix) :]: len(f.data) for url, f in self.files.items() if url.startswith(prefix)}

    def requests_matching(self, pattern: str) -> List[str]:
        return [f"{m} {p}" for m, p, _, _ in self.log if re.search(pattern, f"{m} {p}")]

    # -- the HTTP side ------------------------------------------------------------------------
    def handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length", 0) or 0)
        body = handler.rfile.read(length) if length else b""
        parts = urlsplit(handler.path)
        path = unquote(parts.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        if path == "/__fake/stats":  # the benchmark's view of a fake in another process
            with self.lock:
                kinds: Dict[str, int] = {}
                for logged_method, logged_path, _, _ in self.log:
                    kind = logged_method + " " + re.sub(r"\(.*?\)", "", logged_path.rsplit("/", 1)[-1])
                    kinds[kind] = kinds.get(kind, 0) + 1
                stats = {"requests": len(self.log), "by_kind": kinds, "files": len(self.files)}
            content = json.dumps(stats).encode()
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(content)))
            handler.end_headers()
            handler.wfile.write(content)
            return
        override = handler.headers.get("X-HTTP-Method", "")
        with self.lock:
            self.log.append((method, path, query, dict(handler.headers)))
        try:
            if self.ntlm_users is not None:
                self.windows_authentication(handler)
            status, content, ctype = self.dispatch(handler, method, override, path, query, body)
            headers: Dict[str, str] = {}
        except Reply as reply:
            status, ctype, headers = reply.status, JSON, reply.headers
            error = {"error": {"code": reply.code, "message": {"lang": "en-US", "value": reply.message}}}
            content = json.dumps(error).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(content)))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(content)

    def windows_authentication(self, handler: Any) -> None:
        """NTLM on this connection: returns once it is authenticated, else raises the 401 that
        carries the next leg of the handshake (a new handshake after a refused one)."""
        if getattr(handler, "ntlm_user", None):
            return
        scheme, _, value = handler.headers.get("Authorization", "").partition(" ")
        refuse = Reply(
            401,
            "-2147024891, System.UnauthorizedAccessException",
            "Access denied.",
            {"WWW-Authenticate": "NTLM"},
        )
        if scheme.lower() not in ("ntlm", "negotiate") or not value:
            handler.ntlm_context = None
            raise refuse
        import spnego
        from spnego.exceptions import SpnegoError

        token = base64.b64decode(value)
        context = getattr(handler, "ntlm_context", None)
        if context is None or token[8:12] == b"\x01\x00\x00\x00":  # a negotiate message: a new handshake
            context = handler.ntlm_context = spnego.server(
                protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm
            )
            challenge = base64.b64encode(context.step(token) or b"").decode()
            raise Reply(401, refuse.code, "Access denied.", {"WWW-Authenticate": f"{scheme} {challenge}"})
        handler.ntlm_context = None
        try:
            context.step(token)  # checks the response against the password in NTLM_USER_FILE
        except SpnegoError:
            with self.lock:
                self.ntlm_refused += 1
            raise refuse from None
        if not context.complete:
            raise refuse
        handler.ntlm_user = context.client_principal
        with self.lock:
            self.ntlm_logins.append(str(handler.ntlm_user))

    def dispatch(
        self, handler: Any, method: str, override: str, path: str, query: Dict[str, List[str]], body: bytes
    ) -> Tuple[int, bytes, str]:
        with self.lock:
            matched = None
            for fault in self.faults:
                if fault.times > 0 and fault.method == method and re.search(fault.pattern, path):
                    fault.times -= 1
                    matched = fault
                    break
        if matched is not None:
            time.sleep(matched.delay)  # outside the lock: other connections go on meanwhile
            if matched.status:
                raise Reply(matched.status, matched.code, matched.message, matched.headers)
        if not path.startswith(self.site_path + "/_api/"):
            raise Reply(404, NOT_FOUND, "the site is not found")  # a wrong site: SharePoint's 404
        auth = handler.headers.get("Authorization", "")
        if self.ntlm_users is None and (
            not auth.startswith("Bearer ") or auth[len("Bearer ") :] not in self.tokens
        ):
            raise Reply(401, "-2147024891, System.UnauthorizedAccessException", "Invalid JWT token.")
        api = path[len(self.site_path + "/_api/") :]
        if api.lower() == "contextinfo":
            info = {"__metadata": {"type": "SP.ContextWebInformation"}, "FormDigestValue": self.digest,
                    "FormDigestTimeoutSeconds": 1800, "LibraryVersion": "16.0.0.0",
                    "SiteFullUrl": self.url, "WebFullUrl": self.url}  # fmt: skip
            return self.json({"GetContextWebInformation": info})
        if method == "POST" and handler.headers.get("X-RequestDigest") != self.digest:
            raise Reply(403, STALE_DIGEST, "The security validation for this page is invalid.")
        with self.lock:
            return self.resolve(split_segments(api), method, override, query, body)

    @staticmethod
    def json(value: Any, status: int = 200) -> Tuple[int, bytes, str]:
        return status, json.dumps({"d": value}).encode(), JSON

    # -- resources ----------------------------------------------------------------------------
    def resolve(
        self, segments: List[str], method: str, override: str, query: Dict[str, List[str]], body: bytes
    ) -> Tuple[int, bytes, str]:
        current: Tuple[str, Any] = ("none", None)  # ("web"|"folder"|"file"|"files"|"folders", url)
        for index, segment in enumerate(segments):
            name, args, kwargs = parse_call(segment)
            lowered = name.lower()
            last = index == len(segments) - 1
            kind, value = current
            if lowered == "web":
                current = ("web", self.site_path)
            elif lowered == "rootfolder" and kind == "web":
                current = ("folder", self.site_path)
            elif lowered in ("getfolderbyserverrelativepath", "getfolderbyserverrelativeurl"):
                current = ("folder", self.folder_url(kwargs.get("decodedurl", args[0] if args else "")))
            elif lowered == "getfolderbyid":
                current = ("folder", self.by_id(self.folders, args[0]))
            elif lowered in ("getfilebyserverrelativepath", "getfilebyserverrelativeurl"):
                current = ("file", self.file_url(kwargs.get("decodedurl", args[0] if args else "")))
            elif lowered == "getfilebyid":
                current = ("file", self.by_id({u: f.uid for u, f in self.files.items()}, args[0]))
            elif lowered == "folders" and kind == "folder" and args:  # Folders('name'): a child
                current = ("folder", f"{value}/{args[0]}".replace("//", "/"))
            elif lowered == "files" and kind == "folder" and args:
                current = ("file", f"{value}/{args[0]}")
            elif lowered == "folders" and kind == "folder":
                current = ("folders", value)
            elif lowered == "files" and kind == "folder":
                current = ("files", value)
            elif lowered == "add" and kind == "folders":
                return self.add_folder(value, args[0])
            elif lowered == "add" and kind == "files":
                return self.add_file(value, kwargs["url"], body, kwargs.get("overwrite", False))
            elif kind == "file" and last:
                return self.file_call(value, lowered, kwargs, method, override, body)
            else:
                raise Reply(400, "-1, Microsoft.SharePoint.Client.InvalidClientQueryException",
                            f"the fake does not know {segment!r} after {kind}")  # fmt: skip
        kind, value = current
        if kind == "folder":
            self.must_be_folder(value)
            return self.json(self.folder_entity(value, query))
        if kind == "file":
            self.must_be_file(value)
            if override.upper() == "DELETE":
                del self.files[value]
                return 200, b"", JSON
            return self.json(self.file_entity(value, query))
        if kind in ("files", "folders"):
            return self.collection(kind, value, query)
        raise Reply(400, "-1, Microsoft.SharePoint.Client.InvalidClientQueryException", "nothing to answer")

    def folder_url(self, url: str) -> str:
        return url.rstrip("/") or "/"

    def file_url(self, url: str) -> str:
        return url

    @staticmethod
    def by_id(table: Dict[str, str], uid: str) -> str:
        for url, known in table.items():
            if known == uid:
                return url
        raise Reply(404, NOT_FOUND, "File Not Found.")

    def must_be_folder(self, url: str) -> None:
        if url not in self.folders:
            raise Reply(404, NOT_FOUND, "File Not Found.")

    def must_be_file(self, url: str) -> None:
        if url not in self.files:
            raise Reply(404, NOT_FOUND, "File Not Found.")

    @staticmethod
    def iso(when: float) -> str:
        return datetime.fromtimestamp(int(when), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def selected(self, entity: Dict[str, Any], query: Dict[str, List[str]]) -> Dict[str, Any]:
        select = query.get("$select")
        if not select:
            return entity
        names = {n.strip() for n in select[0].split(",")} | {"__metadata"}
        return {k: v for k, v in entity.items() if k in names}

    def file_entity(self, url: str, query: Optional[Dict[str, List[str]]] = None) -> Dict[str, Any]:
        stored = self.files[url]
        uri = f"{self.url}/_api/Web/GetFileById('{stored.uid}')"
        entity = {
            "__metadata": {"id": uri, "uri": uri, "type": "SP.File"},
            "Name": url.rsplit("/", 1)[1],
            "ServerRelativeUrl": url,
            "ServerRelativePath": {"__metadata": {"type": "SP.ResourcePath"}, "DecodedUrl": url},
            "Length": str(len(stored.data)),
            "TimeLastModified": self.iso(stored.mtime),
            "UniqueId": stored.uid,
            "Exists": True,
        }
        return self.selected(entity, query or {})

    def folder_entity(self, url: str, query: Optional[Dict[str, List[str]]] = None) -> Dict[str, Any]:
        uid = self.folders[url]
        uri = f"{self.url}/_api/Web/GetFolderById('{uid}')"
        entity = {
            "__metadata": {"id": uri, "uri": uri, "type": "SP.Folder"},
            "Name": url.rsplit("/", 1)[1],
            "ServerRelativeUrl": url,
            "ServerRelativePath": {"__metadata": {"type": "SP.ResourcePath"}, "DecodedUrl": url},
            "UniqueId": uid,
            "Exists": True,
            "ItemCount": sum(1 for u in self.files if u.rsplit("/", 1)[0] == url),
        }
        return self.selected(entity, query or {})

    def collection(self, kind: str, folder: str, query: Dict[str, List[str]]) -> Tuple[int, bytes, str]:
        self.must_be_folder(folder)
        if kind == "files":
            urls = sorted(u for u in self.files if u.rsplit("/", 1)[0] == folder)
            items = [self.file_entity(u, query) for u in urls]
        else:
            urls = sorted(u for u in self.folders if u != folder and u.rsplit("/", 1)[0] == folder)
            items = [self.folder_entity(u, query) for u in urls]
        top = int(query.get("$top", ["5000"])[0])
        # $skiptoken: the fake's own __next links; $skip: what the library sends when a full
        # page came without one.
        skip = int(query.get("$skiptoken", query.get("$skip", ["0"]))[0] or 0)
        page = items[skip : skip + top]
        value: Dict[str, Any] = {"results": page}
        if skip + top < len(items):
            kept = {k: v[0] for k, v in query.items() if k not in ("$skiptoken", "$skip")}
            kept["$skiptoken"] = str(skip + top)
            uid = self.folders[folder]
            listing = "Files" if kind == "files" else "Folders"
            value["__next"] = f"{self.url}/_api/Web/GetFolderById('{uid}')/{listing}?" + "&".join(
                f"{quote(k, safe='$')}={quote(v, safe=',')}" for k, v in kept.items()
            )
        return self.json(value)

    # -- writes ---------------------------------------------------------------------------------
    def add_folder(self, parent: str, name: str) -> Tuple[int, bytes, str]:
        self.must_be_folder(parent)
        url = name if name.startswith("/") else f"{parent}/{name}".replace("//", "/")
        if url not in self.folders:
            if url in self.files:
                raise Reply(
                    400, "-2130575257, Microsoft.SharePoint.SPException", "a file of that name exists"
                )
            self.folders[url] = str(uuid.uuid4())
        return self.json(self.folder_entity(url))

    def stored_bytes(self, url: str, data: bytes) -> bytes:
        """What SharePoint keeps of an upload: an Office file gets the library's properties."""
        if self.rewrite_office and data and url.lower().endswith(OFFICE):
            return data + b"<!-- properties SharePoint wrote into the file -->"
        return data

    def add_file(self, folder: str, name: str, body: bytes, overwrite: bool) -> Tuple[int, bytes, str]:
        self.must_be_folder(folder)
        url = f"{folder}/{name}"
        if url in self.files and not overwrite:
            raise Reply(
                400, "-2130575257, Microsoft.SharePoint.SPException", "A file with that name already exists."
            )
        if url in self.folders:
            raise Reply(400, "-2130575257, Microsoft.SharePoint.SPException", "a folder of that name exists")
        data = self.stored_bytes(url, body)
        previous = self.files.get(url)
        self.files[url] = StoredFile(data, time.time(), previous.uid if previous else str(uuid.uuid4()))
        return self.json(self.file_entity(url))

    def file_call(
        self, url: str, name: str, kwargs: Dict[str, Any], method: str, override: str, body: bytes
    ) -> Tuple[int, bytes, str]:
        if name == "$value":
            self.must_be_file(url)
            return 200, self.files[url].data, "application/octet-stream"
        self.must_be_file(url)
        if name == "startupload":
            upload_id = kwargs["uploadid"]
            self.sessions[upload_id] = (url, bytearray(body))
            return self.json({"StartUpload": str(len(body))})
        if name in ("continueupload", "finishupload"):
            upload_id = kwargs["uploadid"]
            if upload_id not in self.sessions or self.sessions[upload_id][0] != url:
                raise Reply(400, "-2147024809, System.ArgumentException", "no such upload session")
            held = self.sessions[upload_id][1]
            if int(kwargs["fileoffset"]) != len(held):
                raise Reply(400, "-2147024809, System.ArgumentException",
                            f"fileOffset {kwargs['fileoffset']} is not {len(held)}")  # fmt: skip
            held += body
            if name == "continueupload":
                return self.json({"ContinueUpload": str(len(held))})
            del self.sessions[upload_id]
            self.files[url] = StoredFile(
                self.stored_bytes(url, bytes(held)), time.time(), self.files[url].uid
            )
            return self.json(self.file_entity(url))
        if name == "cancelupload":
            upload_id = json.loads(body or b"{}").get("uploadId", "")
            self.sessions.pop(upload_id, None)
            return self.json({"CancelUpload": None})
        if name == "moveto":
            target, flags = kwargs["newurl"], int(kwargs.get("flags", 0))
            if target in self.files and not flags & 1:
                raise Reply(400, "-2130575257, Microsoft.SharePoint.SPException", "the target exists")
            if target.rsplit("/", 1)[0] not in self.folders:
                raise Reply(404, NOT_FOUND, "File Not Found.")
            moved = self.files.pop(url)
            self.files[target] = moved
            return self.json({"MoveTo": None})
        raise Reply(
            400, "-1, Microsoft.SharePoint.Client.InvalidClientQueryException", f"unknown call {name}"
        )


TOKEN_VARIABLE = "FAKE_SHAREPOINT_TOKEN"


def loopback_connector_class() -> Any:
    """``OELEO_CONNECTOR=sharepoint_server:LoopbackSharePoint`` (with ``tests`` on PYTHONPATH):
    the real connector built from the real settings, but logged in with the token that
    ``FAKE_SHAREPOINT_TOKEN`` holds instead of a Microsoft login (read here, in the tests'
    module only: oeleo itself has no such hook)."""
    import os

    from oeleo.connectors.sharepoint import SharePointConnector

    class LoopbackSharePoint(SharePointConnector):
        @classmethod
        def from_settings(cls, settings: Any, role: str = "external", token: Any = None) -> Any:
            value = os.environ[TOKEN_VARIABLE]
            return super().from_settings(
                settings,
                role,
                token=lambda: {"access_token": value, "token_type": "Bearer", "expires_in": 3600},
            )

    return LoopbackSharePoint


def __getattr__(name: str) -> Any:
    if name == "LoopbackSharePoint":
        return loopback_connector_class()
    raise AttributeError(name)


def main() -> None:
    """``python tests/sharepoint_server.py``: serve until standard input closes (the benchmark
    runs the fake in a process of its own); the site's URL is the first line written."""
    import sys

    fake = FakeSharePoint().start()
    print(fake.url, flush=True)
    sys.stdin.read()
    fake.stop()


if __name__ == "__main__":
    main()
