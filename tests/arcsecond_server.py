"""A loopback stand-in for the Arcsecond.io API, enough for the Arcsecond connector's tests.

It implements the requests the arcsecond client 3.14.1 makes to upload a folder, and where
each behaviour comes from (files of that client, or of Oort 1.13.1, its predecessor):

- every request must carry ``X-Arcsecond-API-Authorization: Key <key>`` (else 401):
  ``arcsecond/api/endpoint.py`` ``_check_and_set_auth_key``;
- URLs are ``/<path>/`` or ``/<organisation>/<path>/`` (an unknown organisation: 404):
  ``endpoint.py`` ``_build_url``;
- ``GET [org/]datasets/?name=<name>`` lists the datasets of that name, a plain list or DRF
  pages (``results``, ``next``) with ``page_size``: ``endpoint.py`` ``_extract_results``,
  ``cloud/uploader/datafiles/context.py`` ``_validate_input_dataset_uuid_or_name``;
- ``POST [org/]datasets/`` with ``{"name", "telescope"}`` (an organisation's dataset needs a
  telescope: 400): ``cloud/uploader/datafiles/uploader.py`` ``_prepare_upload``,
  ``context.py`` ``_raise_missing_telescope_in_new_dataset``;
- ``POST [org/]datafiles/`` multipart with ``dataset``, ``is_raw``, ``tags`` and ``file``
  (``datafiles/uploader.py`` ``_get_upload_data``, ``cloud/uploader/uploader.py``
  ``_get_upload_files``); a name already in the dataset answers 400 with a ``detail`` saying
  it "already exists in dataset" (``uploader.py`` ``_perform_upload``; Oort's
  ``uploader/engine/uploader.py`` ``_process_upload_error`` reads the same ``detail``). The
  file name is cut at the last ``/`` or ``\\`` as Django's form parser does
  (``MultiPartParser.sanitize_file_name``). A body without Content-Length is refused (411):
  Django reads a request body by its length;
- ``GET [org/]datafiles/?dataset=<uuid>`` and ``DELETE [org/]datafiles/<id>/``: not used by
  the arcsecond client; the fields (``id``, ``name``, ``size``, ``dataset``, ``file``) are
  those of the API's DataFile schema (an OpenAPI client generated from it), assumed here;
- ``GET /files/<id>/<name>``: the bytes, as the S3 URL in a DataFile's ``file`` would give.

On demand (``fail``, ``hang``) it answers 401, 403, 404, 413, 429 with Retry-After, 500, or
nothing at all (a timeout), a given number of times; with ``store`` a POST is done first and
only its answer is lost (a proxy's 502 or a timeout after the server acted).
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

AUTH = "X-Arcsecond-API-Authorization"


@dataclass
class Fault:
    method: str
    endpoint: str  # "datasets", "datafiles", "files"
    status: int = 500
    times: int = 1
    headers: Dict[str, str] = field(default_factory=dict)
    body: Any = None
    hang: float = 0.0  # seconds to wait, then close without answering
    store: bool = False  # the POST is done (a file stored, a dataset made), then its answer is lost


def unquote_header(value: str) -> str:
    """A quoted-string of a multipart header, as Django's ``parse_header_parameters`` reads it."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace("\\\\", "\\").replace('\\"', '"')
    return value


def parse_disposition(line: str) -> Dict[str, str]:
    params: Dict[str, str] = {}
    rest = line.split(";", 1)[1] if ";" in line else ""
    while rest:
        rest = rest.lstrip(" ;")
        key, _, rest = rest.partition("=")
        if rest.startswith('"'):
            end = 1
            while end < len(rest) and rest[end] != '"':
                end += 2 if rest[end] == "\\" else 1
            value, rest = rest[: end + 1], rest[end + 1 :]
        else:
            value, _, rest = rest.partition(";")
        params[key.strip().lower()] = unquote_header(value.strip())
    return params


def parse_multipart(body: bytes, content_type: str) -> Tuple[Dict[str, str], Optional[Tuple[str, bytes]]]:
    """The text fields and the (file name, bytes) of a multipart/form-data body."""
    boundary = content_type.split("boundary=", 1)[1].strip().strip('"').encode()
    fields: Dict[str, str] = {}
    upload = None
    parts = body.split(b"--" + boundary)
    assert parts[-1].strip() in (b"--", b"--\r\n".strip()), "the body does not end with the closing boundary"
    for part in parts[1:-1]:
        assert part.startswith(b"\r\n") and part.endswith(b"\r\n"), "a part is not framed by CRLF"
        head, _, content = part[2:-2].partition(b"\r\n\r\n")
        headers = dict(
            (line.split(":", 1)[0].strip().lower(), line.split(":", 1)[1].strip())
            for line in head.decode("utf-8").split("\r\n")
        )
        params = parse_disposition(headers["content-disposition"])
        if "filename" in params:
            name = params["filename"].rsplit("/", 1)[-1].rsplit("\\", 1)[-1]  # Django sanitize_file_name
            upload = (name, content)
        else:
            fields[params["name"]] = content.decode("utf-8")
    return fields, upload


class FakeArcsecond:
    """The server: ``start()`` it, point ``OELEO_ARCSECOND_API_URL`` at ``url``, read what it
    stores (``datasets``, ``datafiles``, ``stored(...)``) and what it was asked (``log``)."""

    def __init__(self, key: str = "test-arcsecond-key-0123456789", organisations=("lab",)) -> None:
        self.key = key
        self.organisations = set(organisations)
        self.datasets: List[Dict[str, Any]] = []
        self.datafiles: List[Dict[str, Any]] = []
        self.log: List[Tuple[str, str]] = []  # (method, path with query)
        self.faults: List[Fault] = []
        self.page_size = 0  # 0: plain lists; else DRF pages of this many items
        self.lock = threading.Lock()
        self._release = threading.Event()
        self._next_id = 1
        self.server: Optional[ThreadingHTTPServer] = None
        self.url = ""

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> FakeArcsecond:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="fake-arcsecond", daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # -- set up and read ------------------------------------------------------------------
    def fail(self, method: str, endpoint: str, status: int, times: int = 1, **kwargs: Any) -> Fault:
        fault = Fault(method, endpoint, status, times, **kwargs)
        with self.lock:
            self.faults.append(fault)
        return fault

    def hang(self, method: str, endpoint: str, seconds: float, times: int = 1, store: bool = False) -> Fault:
        return self.fail(method, endpoint, 0, times, hang=seconds, store=store)

    def add_dataset(self, name: str, organisation: str = "", telescope: Optional[str] = None) -> str:
        with self.lock:
            dataset = {"uuid": str(uuid.uuid4()), "name": name, "telescope": telescope, "org": organisation}
            self.datasets.append(dataset)
            return dataset["uuid"]

    def dataset_names(self, organisation: str = "") -> List[str]:
        return sorted(d["name"] for d in self.datasets if d["org"] == organisation)

    def stored(self, organisation: str = "") -> Dict[str, Dict[str, bytes]]:
        """dataset name -> {file name: bytes}."""
        names = {d["uuid"]: d["name"] for d in self.datasets if d["org"] == organisation}
        out: Dict[str, Dict[str, bytes]] = {}
        for datafile in self.datafiles:
            if datafile["dataset"] in names:
                out.setdefault(names[datafile["dataset"]], {})[datafile["name"]] = datafile["content"]
        return out

    def count(self, method: str, endpoint: str) -> int:
        return sum(1 for m, path in self.log if m == method and f"/{endpoint}/" in path.split("?")[0])

    def _fault(self, method: str, endpoint: str) -> Optional[Fault]:
        with self.lock:
            for fault in self.faults:
                if fault.method == method and fault.endpoint == endpoint and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None


def _handler(fake: FakeArcsecond) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the tests read fake.log
            pass

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        # -- answers ----------------------------------------------------------------------
        def _send(self, status: int, body: Any = None, headers: Optional[Dict[str, str]] = None) -> None:
            data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            kind = "application/octet-stream" if isinstance(body, bytes) else "application/json"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            length = self.headers.get("Content-Length")
            if length is None:
                return b""
            return self.rfile.read(int(length))

        def _page(self, items: List[Dict[str, Any]], query: Dict[str, List[str]], path: str) -> Any:
            if not fake.page_size:
                return items
            page = int(query.get("page", ["1"])[0])
            start = (page - 1) * fake.page_size
            chunk = items[start : start + fake.page_size]
            following = None
            if start + fake.page_size < len(items):
                rest = {k: v[0] for k, v in query.items() if k != "page"}
                following = f"{fake.url}{path}?{urlencode({**rest, 'page': page + 1})}"
            return {"count": len(items), "next": following, "previous": None, "results": chunk}

        def _serve(self, method: str) -> None:
            split = urlsplit(self.path)
            fake.log.append((method, self.path))
            parts = [unquote(p) for p in split.path.strip("/").split("/") if p]
            query = parse_qs(split.query)
            if parts and parts[0] == "files":  # the stand-in for S3: no key needed
                return self._file(parts)
            if self.headers.get(AUTH) != f"Key {fake.key}":
                self._body()
                return self._send(401, {"detail": "Invalid API key."})
            org = ""
            if parts and parts[0] not in ("datasets", "datafiles"):
                org = parts.pop(0)
                if org not in fake.organisations:
                    self._body()
                    return self._send(404, {"detail": "Not found."})
            endpoint = parts[0] if parts else ""
            fault = fake._fault(method, endpoint)
            if fault is not None:
                body = self._body()
                if fault.store and method == "POST" and endpoint == "datafiles":
                    self._upload(org, body, answer=False)
                elif fault.store and method == "POST" and endpoint == "datasets":
                    data = json.loads(body or b"{}")
                    fake.add_dataset(data["name"], org, data.get("telescope"))
                if fault.hang:
                    fake._release.wait(fault.hang)
                    self.close_connection = True
                    return None
                return self._refuse(fault)
            if endpoint == "datasets" and method == "GET":
                found = [d for d in fake.datasets if d["org"] == org]
                if "name" in query:
                    found = [d for d in found if d["name"] == query["name"][0]]
                public = [{k: v for k, v in d.items() if k != "org"} for d in found]
                return self._send(200, self._page(public, query, split.path))
            if endpoint == "datasets" and method == "POST":
                data = json.loads(self._body() or b"{}")
                if org and not data.get("telescope"):
                    return self._send(400, {"detail": "For new Datasets, we need a valid Telescope."})
                uuid_ = fake.add_dataset(data["name"], org, data.get("telescope"))
                made = {"uuid": uuid_, "name": data["name"], "telescope": data.get("telescope")}
                return self._send(201, made)
            if endpoint == "datafiles" and method == "GET":
                wanted = query.get("dataset", [""])[0]
                items = [self._public(f) for f in fake.datafiles if (f["dataset"], f["org"]) == (wanted, org)]
                return self._send(200, self._page(items, query, split.path))
            if endpoint == "datafiles" and method == "POST":
                return self._upload(org, self._body())
            if endpoint == "datafiles" and method == "DELETE" and len(parts) == 2:
                with fake.lock:
                    fake.datafiles = [f for f in fake.datafiles if str(f["id"]) != parts[1]]
                return self._send(204)
            return self._send(404, {"detail": "Not found."})

        def _refuse(self, fault: Fault) -> None:
            self._send(fault.status, fault.body or {"detail": f"fault {fault.status}"}, fault.headers)

        def _public(self, datafile: Dict[str, Any]) -> Dict[str, Any]:
            hidden = ("content", "org", "fields")
            return {k: v for k, v in datafile.items() if k not in hidden}

        def _upload(self, org: str, body: bytes, answer: bool = True) -> None:
            if self.headers.get("Content-Length") is None:
                return self._send(411, {"detail": "Length Required."})
            fields, upload = parse_multipart(body, self.headers["Content-Type"])
            datasets = {d["uuid"] for d in fake.datasets if d["org"] == org}
            if fields.get("dataset") not in datasets:
                return self._send(404, {"detail": "Not found."})
            assert upload is not None, "no file part"
            name, content = upload
            with fake.lock:
                if any(f["dataset"] == fields["dataset"] and f["name"] == name for f in fake.datafiles):
                    detail = f"DataFile {name} already exists in dataset {fields['dataset']}."
                    return self._send(400, {"detail": [detail]}) if answer else None
                ident = fake._next_id
                fake._next_id += 1
                datafile = {
                    "id": ident,
                    "name": name,
                    "size": len(content),
                    "dataset": fields["dataset"],
                    "file": f"{fake.url}/files/{ident}/{quote(name)}",
                    "tags": fields.get("tags", "").split(","),
                    "is_raw": fields.get("is_raw"),
                    "content": content,
                    "org": org,
                    "fields": fields,
                }
                fake.datafiles.append(datafile)
            if answer:
                self._send(201, self._public(datafile))
            return None

        def _file(self, parts: List[str]) -> None:
            fault = fake._fault("GET", "files")
            if fault is not None:
                return self._refuse(fault)
            for datafile in fake.datafiles:
                if len(parts) >= 2 and str(datafile["id"]) == parts[1]:
                    return self._send(200, datafile["content"])
            return self._send(404, {"detail": "Not found."})

    return Handler
