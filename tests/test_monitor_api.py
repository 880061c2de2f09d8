"""``oeleo serve`` and ``oeleo status --json`` over books made by real runs: the JSON API,
``/metrics``, the actions and their token, CSRF and Origin checks, the bind address, bad input.

Every server here is a real ``oeleo serve`` process (``helpers.start_oeleo``) on 127.0.0.1,
asked with ``http.client``; the books come from real ``oeleo run`` and ``oeleo schedule``
passes over real folders, with real failures (a destination file that is a folder).
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from helpers import clean_env, db_env, db_rows, make_tree, pg_query, run_oeleo, start_oeleo, wait_for

TOKEN = "t0ken-of-the-monitor-" + "x" * 12
PAGE = Path(__file__).parent.parent / "oeleo" / "monitor_page"
FILES = {
    "run-001/a.csv": "t,v\n0,1\n",
    "run-001/b.csv": "t,v\n1,2\n",
    "run-002/c.csv": "t,v\n2,3\n",
    "d.csv": "t,v\n3,4\n",
    "notes.txt": "not copied: not a csv\n",
}
MANY = {f"many/f-{n:03d}.csv": f"{n}\n" for n in range(130)}
STATUS_KEYS = {
    "oeleo",
    "generated",
    "books",
    "origin",
    "heartbeat",
    "last_pass",
    "passes",
    "counts",
    "failures",
    "daily",
    "origins",
}
PASS_KEYS = {
    "id",
    "started",
    "finished",
    "duration_s",
    "status",
    "files_copied",
    "files_failed",
    "bytes_copied",
    "message",
}
HEARTBEAT_KEYS = {
    "state",
    "scheduler",
    "pid",
    "started",
    "pass_started",
    "pass_finished",
    "next_pass",
    "result",
    "updated",
}


# -- books made by real runs -------------------------------------------------------------------
class Books:
    """A source folder, its destination and the SQLite books that real runs made of them."""

    def __init__(self, root: Path) -> None:
        # A folder name with a quote and a backslash: the origin label of /metrics escapes both.
        self.src = root / 'src "lab"\\1'
        self.dst = root / "dst"
        self.db = root / "books.db"
        self.root = root
        self.saved = root

    def env(self, **extra: str) -> Dict[str, str]:
        return {
            "OELEO_BASE_DIR_FROM": str(self.src),
            "OELEO_BASE_DIR_TO": str(self.dst),
            "OELEO_DB_NAME": str(self.db),
            "OELEO_FILTER_EXTENSION": "csv",
            **extra,
        }

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
        return run_oeleo(*args, cwd=self.root, env=self.env(**extra))


def make_books(root: Path) -> Books:
    """Three passes and a scheduler's two: a first copy, then two files that fail (their
    destinations are a folder and a file where a folder must be), again, and ``oeleo schedule
    --max-runs 2`` (its heartbeat: stopped)."""
    books = Books(root)
    make_tree(books.src, {**FILES, **MANY})
    first = books.run("run")
    assert first.returncode == 0, first.stderr
    (books.src / "run-001" / "a.csv").write_text("t,v\n0,1\n5,6\n")
    (books.dst / "run-001" / "a.csv").unlink()
    (books.dst / "run-001" / "a.csv" / "inside").mkdir(parents=True)  # a folder where the copy goes
    make_tree(books.src, {"run-003/e.csv": "t,v\n4,5\n"})
    (books.dst / "run-003").write_text("a file where the folder run-003 must be\n")
    for _ in range(2):
        failing = books.run("run")
        assert failing.returncode == 1, failing.stderr
    scheduled = books.run("schedule", "--every", "0.1", "--max-runs", "2")
    assert scheduled.returncode == 1, scheduled.stderr  # the two files fail in each pass
    return books


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Books:
    books = make_books(tmp_path_factory.mktemp("monitor"))
    saved = tmp_path_factory.mktemp("monitor-saved")
    for part in (books.src, books.dst, books.db):
        copy = shutil.copytree if part.is_dir() else shutil.copy2
        copy(part, saved / part.name)
    books.saved = saved
    return books


@pytest.fixture
def books(template: Books) -> Iterator[Books]:
    """The books of the real runs for one test: put back as they were after it (the same
    folders, so the same origin)."""
    yield template
    for part in (template.src, template.dst, template.db):
        if part.is_dir():
            shutil.rmtree(part)
            shutil.copytree(template.saved / part.name, part)
        else:
            shutil.copy2(template.saved / part.name, part)


# -- a server ----------------------------------------------------------------------------------
class Served:
    def __init__(self, proc: subprocess.Popen, err: Path, host: str, port: int) -> None:
        self.proc, self.err, self.host, self.port = proc, err, host, port

    def stderr(self) -> str:
        return self.err.read_text()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Optional[Dict[str, str]] = None,
        host: Optional[str] = None,
    ) -> Tuple[int, Dict[str, str], bytes]:
        connection = http.client.HTTPConnection(host or self.host, self.port, timeout=30)
        try:
            data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
            sent = {"Content-Type": "application/json"} if data is not None else {}
            sent.update(headers or {})
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def get_json(self, path: str, **options: Any) -> Any:
        status, _, body = self.request("GET", path, **options)
        assert status == 200, body
        return json.loads(body)

    def post(self, path: str, body: Any, token: Optional[str] = TOKEN, **headers: str) -> Tuple[int, Any]:
        sent = dict(headers)
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        status, _, reply = self.request("POST", path, body, sent)
        return status, json.loads(reply)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.proc.wait(timeout=30)


LISTENING = re.compile(r"at http://(\S+):(\d+)/")


def serve(root: Path, env: Dict[str, str], *args: str, name: str = "serve") -> Served:
    """Start ``oeleo serve --port 0`` (a free port) and wait until it says where it listens."""
    err = root / f"{name}.err"
    proc = start_oeleo(["serve", "--port", "0", *args], cwd=root, err=err, env=clean_env(env))
    wait_for(lambda: LISTENING.search(err.read_text()) or proc.poll() is not None, 30, "oeleo serve")
    found = LISTENING.search(err.read_text())
    assert found and proc.poll() is None, err.read_text()
    host = found.group(1).strip("[]")
    return Served(proc, err, "127.0.0.1" if host == "0.0.0.0" else host, int(found.group(2)))


@pytest.fixture
def server(books: Books) -> Iterator[Served]:
    served = serve(books.root, books.env(OELEO_MONITOR_TOKEN=TOKEN))
    try:
        yield served
    finally:
        served.stop()


def sqlite(db: Path, sql: str) -> List[tuple]:
    connection = sqlite3.connect(str(db))
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


# -- the status document -----------------------------------------------------------------------
def test_status_document_says_what_the_books_of_real_runs_hold(server: Served, books: Books) -> None:
    status = server.get_json("/api/status")
    assert set(status) == STATUS_KEYS
    assert status["books"] == f"database {books.db}"
    origin = f"{socket.gethostname()}:{books.src.as_posix()}"
    assert status["origin"] == origin

    rows = db_rows(books.db)
    codes = [row["code"] for row in rows.values()]
    assert status["counts"] == {
        "should_be_copied": codes.count(0),
        "copy_if_changed": codes.count(1),
        "do_not_copy": codes.count(2),
        "failed": sum(1 for row in rows.values() if row["last_error"]),
        "not_replaced": 0,
        "left": 0,
        "total": len(rows),
    }
    assert status["counts"]["failed"] == 2 and status["counts"]["total"] == 4 + len(MANY) + 1
    failures = {f["file"]: f["error"] for f in status["failures"]}
    assert set(failures) == {"run-001/a.csv", "run-003/e.csv"}
    assert failures == {name: rows[name]["last_error"] for name in failures}
    assert "Is a directory" in failures["run-001/a.csv"]

    runs = sqlite(books.db, "SELECT id, status, files_copied, files_failed, bytes_copied FROM oeleo_runs")
    assert len(status["passes"]) == len(runs) == 5
    assert [p["id"] for p in status["passes"]] == sorted((r[0] for r in runs), reverse=True)
    assert {
        tuple(p[k] for k in ("id", "status", "files_copied", "files_failed", "bytes_copied"))
        for p in status["passes"]
    } == set(runs)
    assert status["last_pass"] == status["passes"][0]
    assert set(status["last_pass"]) == PASS_KEYS
    assert [p["status"] for p in status["passes"]] == ["failed"] * 4 + ["ok"]
    first = status["passes"][-1]
    assert first["files_copied"] == 4 + len(MANY) and first["duration_s"] >= 0
    datetime.datetime.fromisoformat(first["started"])  # ISO 8601

    daily = status["daily"]
    assert len(daily) == 30
    assert daily[-1]["day"] == datetime.date.today().isoformat()
    assert [d["day"] for d in daily] == sorted(d["day"] for d in daily)
    assert sum(d["files"] for d in daily) == sum(r[2] for r in runs)
    assert sum(d["bytes"] for d in daily) == sum(r[4] for r in runs) > 0

    beat = status["heartbeat"]
    assert set(beat) == HEARTBEAT_KEYS
    assert beat["state"] == "stopped" and beat["scheduler"].startswith("simple")
    assert beat["pass_finished"] is not None and "failed" in beat["result"]

    [row] = status["origins"]
    assert row["origin"] == origin and row["host"] == socket.gethostname()
    assert row["folder"] == books.src.as_posix()
    assert row["health"] == "failing"
    assert row["last_pass"] == status["last_pass"] and row["counts"] == status["counts"]
    assert row["heartbeat"] == beat


def test_oeleo_status_json_prints_the_api_document(server: Served, books: Books) -> None:
    api = server.get_json("/api/status")
    printed = books.run("status", "--json")
    assert printed.returncode == 0, printed.stderr
    document = json.loads(printed.stdout)
    for doc in (api, document):
        doc.pop("generated")
    assert document == api


def test_oeleo_status_json_of_missing_books_says_where_it_looked(tmp_path: Path) -> None:
    db = tmp_path / "nothing.db"
    done = run_oeleo("status", "--json", "--db", str(db), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"oeleo: OELEO_DB_NAME={db}: no database file at {db} "
        "(run `oeleo run` first, or name the books with --db)"
    ]
    assert list(tmp_path.iterdir()) == []


# -- files -------------------------------------------------------------------------------------
def test_files_are_listed_by_page_code_and_name(server: Served, books: Books) -> None:
    rows = db_rows(books.db)
    everything = server.get_json("/api/files")
    assert everything["total"] == len(rows) and everything["per_page"] == 100
    assert everything["pages"] == 2 and len(everything["files"]) == 100
    second = server.get_json("/api/files?page=2")
    names = [f["file"] for f in everything["files"] + second["files"]]
    assert names == sorted(rows)

    failed = server.get_json("/api/files?code=failed")
    assert [f["file"] for f in failed["files"]] == ["run-001/a.csv", "run-003/e.csv"]
    a = failed["files"][0]
    assert set(a) == {"file", "code", "size", "checksum", "copied", "external_name", "error"}
    assert a["error"] == rows["run-001/a.csv"]["last_error"]
    assert a["checksum"] == rows["run-001/a.csv"]["checksum"] and a["code"] == 1
    e = failed["files"][1]
    assert e["checksum"] is None and e["copied"] is None and e["code"] == 0

    assert server.get_json("/api/files?code=0")["total"] == 1
    assert server.get_json("/api/files?code=2") == {
        "files": [],
        "page": 1,
        "pages": 1,
        "total": 0,
        "per_page": 100,
    }
    found = server.get_json("/api/files?q=run-00")
    assert [f["file"] for f in found["files"]] == [
        "run-001/a.csv",
        "run-001/b.csv",
        "run-002/c.csv",
        "run-003/e.csv",
    ]
    assert server.get_json("/api/files?q=%25")["total"] == 0  # a % is a character, not a wildcard
    assert server.get_json("/api/files?q=%00")["total"] == 0  # no name holds a NUL (SQLite: the end)
    assert server.get_json("/api/files?q=f-12&code=1")["total"] == 10
    for bad in ("code=9", "page=0", "page=x"):
        status, _, body = server.request("GET", f"/api/files?{bad}")
        assert status == 400 and "error" in json.loads(body), bad

    # a page far past the last one is empty, even one past what SQLite can count to
    for far in (10**6, 2**63, 10**30):
        beyond = server.get_json(f"/api/files?page={far}")
        assert beyond["files"] == [] and beyond["total"] == len(rows) and beyond["page"] == far


# -- /metrics ----------------------------------------------------------------------------------
def parse_metrics(text: str) -> Dict[str, Any]:
    """The Prometheus text format 0.0.4: ``{"types": {name: type}, "samples": [(name, labels,
    value)]}``; label values unescaped (``\\\\``, ``\\"``, ``\\n``)."""
    types: Dict[str, str] = {}
    samples: List[Tuple[str, Dict[str, str], float]] = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        found = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        assert found, f"not a sample line: {line!r}"
        name, raw, value = found.groups()
        labels: Dict[str, str] = {}
        i = 0
        while raw and i < len(raw):
            key = re.match(r'([a-zA-Z_][a-zA-Z0-9_]*)="', raw[i:])
            assert key, f"bad labels in {line!r}"
            i += key.end()
            chars = []
            while raw[i] != '"':
                if raw[i] == "\\":
                    i += 1
                    chars.append({"\\": "\\", '"': '"', "n": "\n"}[raw[i]])
                else:
                    chars.append(raw[i])
                i += 1
            labels[key.group(1)] = "".join(chars)
            i += 1
            if i < len(raw):
                assert raw[i] == ",", f"bad labels in {line!r}"
                i += 1
        samples.append((name, labels, float(value)))
    return {"types": types, "samples": samples}


def test_metrics_are_the_books_numbers_in_the_prometheus_text_format(server: Served, books: Books) -> None:
    status, headers, body = server.request("GET", "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    parsed = parse_metrics(body.decode())
    origin = f"{socket.gethostname()}:{books.src.as_posix()}"
    assert '\\"lab\\"\\\\1' in body.decode()  # the label, escaped

    def value(name: str, **labels: str) -> float:
        found = [v for n, ls, v in parsed["samples"] if n == name and ls == {"origin": origin, **labels}]
        assert len(found) == 1, (name, labels)
        return found[0]

    runs = sqlite(books.db, "SELECT status, files_copied, bytes_copied FROM oeleo_runs")
    rows = db_rows(books.db)
    assert parsed["types"]["oeleo_passes_total"] == "counter"
    assert parsed["types"]["oeleo_files"] == "gauge"
    assert value("oeleo_passes_total", status="ok") == 1
    assert value("oeleo_passes_total", status="failed") == 4
    assert value("oeleo_files_copied_total") == sum(r[1] for r in runs)
    assert value("oeleo_bytes_copied_total") == sum(r[2] for r in runs)
    assert value("oeleo_files_failed") == 2
    for code in (0, 1, 2):
        assert value("oeleo_files", code=str(code)) == sum(1 for r in rows.values() if r["code"] == code)
    assert 0 <= value("oeleo_seconds_since_last_good_pass") < 600
    assert value("oeleo_scheduler_up") == 0  # it stopped after its two passes


# -- actions -----------------------------------------------------------------------------------
def test_actions_with_the_token_change_the_books(server: Served, books: Books) -> None:
    status, reply = server.post("/api/lock", {"files": ["run-001/b.csv", "no/such.csv"]})
    assert status == 200
    assert reply["done"] == ["run-001/b.csv"] and reply["unknown"] == ["no/such.csv"]
    rows = db_rows(books.db)
    assert rows["run-001/b.csv"]["code"] == 2 and "no/such.csv" not in rows

    status, reply = server.post("/api/retry", {"files": ["run-001/b.csv", "run-001/a.csv", "d.csv"]})
    assert status == 200
    assert reply["refused"] == ["run-001/b.csv"] and reply["done"] == ["run-001/a.csv", "d.csv"]
    rows = db_rows(books.db)
    assert rows["run-001/a.csv"]["last_error"] is None and rows["run-001/a.csv"]["code"] == 1
    assert rows["d.csv"]["checksum"] is None and rows["d.csv"]["size"] is None
    assert rows["run-001/b.csv"]["checksum"] is not None  # the locked one is as it was

    status, reply = server.post("/api/unlock", {"files": ["run-001/b.csv"]})
    assert (status, reply["done"]) == (200, ["run-001/b.csv"])
    assert db_rows(books.db)["run-001/b.csv"]["code"] == 1

    # The retried files are copied by the next run: d.csv although it did not change, a.csv
    # now that its destination is free; the books are not held by the server meanwhile.
    shutil.rmtree(books.dst / "run-001" / "a.csv")
    (books.dst / "d.csv").write_text("damaged copy\n")
    again = books.run("run")
    assert again.returncode == 1, again.stderr  # run-003/e.csv still fails
    assert (books.dst / "d.csv").read_text() == FILES["d.csv"]
    assert (books.dst / "run-001" / "a.csv").read_text() == "t,v\n0,1\n5,6\n"
    assert server.get_json("/api/status")["last_pass"]["files_copied"] == 2


def test_actions_are_refused_without_the_token_as_json_and_from_this_page_only(
    server: Served, books: Books
) -> None:
    before = db_rows(books.db)
    body = {"files": ["run-001/b.csv"]}
    assert server.post("/api/lock", body, token=None)[0] == 401
    assert server.post("/api/lock", body, token="not-the-token-" + "y" * 20)[0] == 401
    status, _, reply = server.request(
        "POST",
        "/api/lock",
        b'{"files": ["run-001/b.csv"]}',
        {"Content-Type": "text/plain", "Authorization": f"Bearer {TOKEN}"},
    )
    assert status == 415 and "application/json" in json.loads(reply)["error"]
    status, reply = server.post("/api/lock", body, Origin="http://evil.example")
    assert status == 403 and "Origin" in reply["error"]
    status, _, reply = server.request(
        "POST", "/api/lock", body, {"Authorization": f"Bearer {TOKEN}", "Host": f"evil.example:{server.port}"}
    )
    assert status == 403  # a page of another name pointed at 127.0.0.1 (DNS rebinding)
    assert db_rows(books.db) == before
    same = server.post("/api/lock", body, Origin=f"http://127.0.0.1:{server.port}")
    assert same[0] == 200


def test_an_origin_of_this_host_on_https_is_this_servers_page(server: Served, books: Books) -> None:
    """A TLS proxy that passes the Host on (Caddy, nginx with ``Host $host``): the browser says
    ``https://`` + that host; the scheme is the proxy's, the host is this server's."""
    body = {"files": ["run-001/b.csv"]}
    where = f"localhost:{server.port}"
    status, _, reply = server.request(
        "POST",
        "/api/lock",
        body,
        {"Authorization": f"Bearer {TOKEN}", "Host": where, "Origin": f"https://{where}"},
    )
    assert status == 200, reply
    status, _, _ = server.request(
        "POST",
        "/api/unlock",
        body,
        {"Authorization": f"Bearer {TOKEN}", "Host": where, "Origin": "https://localhost"},
    )
    assert status == 403, "another port is another site"


PUBLIC = "https://lab.example.org/oeleo/, https://lab.example.net:8443"


def test_behind_a_tls_proxy_the_public_url_is_this_servers_page_and_host(books: Books) -> None:
    """OELEO_MONITOR_URL: nginx's default (Host 127.0.0.1:port, the browser's Origin) and a proxy
    that passes the Host on both work; another site or name is still refused."""
    served = serve(books.root, books.env(OELEO_MONITOR_TOKEN=TOKEN, OELEO_MONITOR_URL=PUBLIC))
    try:
        body = {"files": ["run-001/b.csv"]}
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        nginx = {**bearer, "Origin": "https://lab.example.org"}
        assert served.request("POST", "/api/lock", body, nginx)[0] == 200
        status, headers, _ = served.request(
            "POST", "/api/login", {"token": TOKEN}, {"Origin": "https://lab.example.org"}
        )
        assert status == 200 and "oeleo_session=" in headers["set-cookie"]
        assert "; Secure" in headers["set-cookie"]  # over TLS at the proxy: never sent back in clear
        caddy = {**nginx, "Host": "lab.example.org"}
        assert served.request("POST", "/api/unlock", body, caddy)[0] == 200
        assert served.request("GET", "/api/status", headers={"Host": "lab.example.org:443"})[0] == 200
        assert served.request("GET", "/api/status", headers={"Host": "lab.example.org"})[0] == 200
        # nginx's $host drops the port of https://lab.example.org:8443/: the name is the public one
        assert served.request("GET", "/api/status", headers={"Host": "lab.example.net"})[0] == 200
        for refused in (
            {**bearer, "Origin": "https://evil.example"},
            {**bearer, "Origin": "http://lab.example.org"},  # not the scheme people use
            {**bearer, "Origin": "https://lab.example.org:8443"},
            {**bearer, "Host": "evil.example", "Origin": "https://evil.example"},
        ):
            assert served.request("POST", "/api/lock", body, refused)[0] == 403, refused
        assert served.request("GET", "/api/status", headers={"Host": "evil.example"})[0] == 403
        assert (
            served.request("GET", "/api/status", headers={"Host": f"lab.example.org:{served.port}"})[0] == 403
        )
    finally:
        served.stop()


def raw_exchange(server: Served, data: bytes) -> bytes:
    """Send ``data`` on one connection and read until the server closes it."""
    with socket.create_connection((server.host, server.port), timeout=10) as connection:
        connection.sendall(data)
        received = b""
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                return received
            received += chunk


def test_a_body_the_server_does_not_read_is_never_taken_for_the_next_request(
    server: Served, books: Books
) -> None:
    """A chunked body (no Content-Length) or a negative length: refused, and the connection
    closed, so that what follows on it (here a second request) is not answered as one."""
    before = db_rows(books.db)
    inner = f"GET /api/files?smuggled=1 HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
    head = (
        f"POST /api/lock HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\n"
    ).encode()
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)
    negative = head + b"Content-Length: -5\r\n\r\n" + inner
    for request, status in ((chunked, b"411"), (negative, b"400")):
        answer = raw_exchange(server, request)
        assert answer.count(b"HTTP/1.1 ") == 1, answer
        assert answer.startswith(b"HTTP/1.1 " + status), answer
        assert b"connection: close" in answer.lower() and b'"files"' not in answer
    assert db_rows(books.db) == before


def test_an_action_body_that_is_no_list_of_names_is_a_400(server: Served, books: Books) -> None:
    before = db_rows(books.db)
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"files": ["\\udcff.csv"]}', b'{"files": [1]}', b"null"):
        status, _, reply = server.request("POST", "/api/lock", body, {"Authorization": f"Bearer {TOKEN}"})
        error = json.loads(reply)["error"]
        assert status == 400 and "Error" not in error and "codec" not in error, (body[:20], error)
    assert db_rows(books.db) == before


def test_a_public_url_that_is_not_one_is_one_line(books: Books) -> None:
    for wrong in ("lab.example.org/oeleo", "ftp://lab.example.org/", "https://"):
        done = run_oeleo(
            "serve", cwd=books.root, env=books.env(OELEO_MONITOR_TOKEN=TOKEN, OELEO_MONITOR_URL=wrong)
        )
        line = one_line(done)
        assert line.startswith("oeleo: OELEO_MONITOR_URL") and "https://" in line, line


def test_the_page_logs_in_with_the_token_and_acts_with_its_csrf_token(server: Served, books: Books) -> None:
    assert server.get_json("/api/session") == {
        "logged_in": False,
        "csrf": None,
        "token_required_for_pages": False,
    }
    status, _, _ = server.request("POST", "/api/login", {"token": "wrong" * 5})
    assert status == 401
    status, headers, body = server.request("POST", "/api/login", {"token": TOKEN})
    assert status == 200
    cookie = headers["set-cookie"]
    assert cookie.startswith("oeleo_session=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback: a Secure cookie would never come back
    csrf = json.loads(body)["csrf"]
    session = cookie.split(";")[0]
    assert server.get_json("/api/session", headers={"Cookie": session}) == {
        "logged_in": True,
        "csrf": csrf,
        "token_required_for_pages": False,
    }
    body = {"files": ["d.csv"]}
    before = db_rows(books.db)
    for headers in ({"Cookie": session}, {"Cookie": session, "X-CSRF-Token": "forged"}):
        assert server.post("/api/lock", body, token=None, **headers)[0] == 403
    assert (
        server.post("/api/lock", body, token=None, Cookie="oeleo_session=made-up", **{"X-CSRF-Token": csrf})[
            0
        ]
        == 401
    )
    assert db_rows(books.db) == before
    status, reply = server.post("/api/lock", body, token=None, Cookie=session, **{"X-CSRF-Token": csrf})
    assert (status, reply["done"]) == (200, ["d.csv"])
    assert db_rows(books.db)["d.csv"]["code"] == 2
    status, _ = server.post("/api/logout", {}, token=None, Cookie=session, **{"X-CSRF-Token": csrf})
    assert status == 200
    assert server.get_json("/api/session", headers={"Cookie": session})["logged_in"] is False
    assert server.post("/api/unlock", body, token=None, Cookie=session, **{"X-CSRF-Token": csrf})[0] == 401


def test_secrets_never_reach_the_api_or_the_page(books: Books) -> None:
    secrets = {
        "OELEO_MONITOR_TOKEN": "monitor-secret-" + "m" * 20,
        "OELEO_DB_PASSWORD": "db-secret-d8f7a6",
        "OELEO_PASSWORD": "ssh-secret-93ac1e",
        "OELEO_KEY_PASSPHRASE": "passphrase-secret-77",
        "OELEO_LOG_DIR": str(books.root / "logs"),
    }
    served = serve(books.root, books.env(**secrets))
    try:
        answers = [
            served.request("GET", path)[2]
            for path in ("/", "/api/status", "/api/files", "/metrics", "/api/session")
        ]
        answers.append(served.request("GET", "/api/files?code=failed")[2])
    finally:
        assert served.stop() == 0
    shown = b"".join(answers).decode() + served.stderr() + (books.root / "logs" / "oeleo.log").read_text()
    for name, secret in secrets.items():
        if name != "OELEO_LOG_DIR":
            assert secret not in shown, name


# -- where it listens, who may look ------------------------------------------------------------
def listening_addresses(port: int) -> List[str]:
    """The local addresses with a socket listening on ``port`` (Linux: /proc/net/tcp*)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as handle:
            next(handle)
            for line in handle:
                local, state = line.split()[1], line.split()[3]
                address, hexport = local.split(":")
                if int(hexport, 16) == port and state == "0A":
                    found.append(address)
    return found


def other_addresses() -> List[str]:
    """This machine's IPv4 addresses that are not loopback (none on a machine without a network)."""
    found = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.add(info[4][0])
    except socket.gaierror:
        pass
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))  # UDP: picks the outgoing address, sends nothing
        found.add(probe.getsockname()[0])
    except OSError:
        pass
    finally:
        probe.close()
    return sorted(a for a in found if not a.startswith("127.") and a != "0.0.0.0")


def test_it_listens_on_127_0_0_1_only_by_default(server: Served) -> None:
    assert listening_addresses(server.port) == ["0100007F"]  # 127.0.0.1, little-endian hex
    for address in other_addresses():
        with pytest.raises(OSError):
            socket.create_connection((address, server.port), timeout=5).close()
    assert server.get_json("/api/status")["counts"]["failed"] == 2  # no token needed on loopback


def test_another_address_makes_a_token_says_it_once_and_then_every_page_needs_it(books: Books) -> None:
    logs = books.root / "logs-any"
    served = serve(books.root, books.env(OELEO_LOG_DIR=str(logs)), "--host", "0.0.0.0")
    try:
        said = served.stderr()
        tokens = re.findall(r"the token of this server is (\S+) ", said)
        assert len(tokens) == 1 and len(tokens[0]) >= 16
        token = tokens[0]
        assert listening_addresses(served.port) == ["00000000"]
        for path in ("/api/status", "/api/files", "/metrics"):
            status, _, body = served.request("GET", path)
            assert status == 401 and "token" in json.loads(body)["error"], path
        status, _, page = served.request("GET", "/")
        assert (status, page) == (200, (PAGE / "login.html").read_bytes())
        assert served.get_json("/api/session")["token_required_for_pages"] is True
        bearer = {"Authorization": f"Bearer {token}"}
        assert served.get_json("/api/status", headers=bearer)["counts"]["failed"] == 2
        status, headers, body = served.request("POST", "/api/login", {"token": token})
        session = headers["set-cookie"].split(";")[0]
        assert served.get_json("/api/files?code=failed", headers={"Cookie": session})["total"] == 2
        status, _, page = served.request("GET", "/", headers={"Cookie": session})
        assert (status, page) == (200, (PAGE / "index.html").read_bytes())
        status, _, page = served.request("GET", "/", headers=bearer)
        assert (status, page) == (200, (PAGE / "index.html").read_bytes())
    finally:
        assert served.stop() == 0
    assert said.count(token) == 1
    assert token not in (logs / "oeleo.log").read_text()


def test_the_page_and_its_files_are_served_with_their_types_and_nothing_else(server: Served) -> None:
    status, headers, body = server.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert b"<script>" not in body and b"http://" not in body and b"https://" not in body
    assert body == (PAGE / "index.html").read_bytes()
    for name in sorted(p.name for p in PAGE.iterdir() if p.suffix in (".js", ".css")):
        status, headers, body = server.request("GET", f"/static/{name}")
        assert status == 200 and body == (PAGE / name).read_bytes()
        kind = {".js": "text/javascript", ".css": "text/css"}[Path(name).suffix]
        assert headers["content-type"].startswith(kind)
    for path in (
        "/static/../cli.py",
        "/static/..%2fcli.py",
        "/static/%2e%2e/serve.py",
        "/static/",
        "/static/no-such.js",
        "/static//etc/passwd",
        "/nothing-here",
    ):
        status, _, _ = server.request("GET", path)
        assert status == 404, path


def test_other_methods_and_broken_requests_are_answered_as_json_with_the_same_headers(server: Served) -> None:
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        status, headers, body = server.request(method, "/api/lock", {"files": ["run-001/b.csv"]})
        assert status == 405, method
        assert headers["allow"] == "GET, HEAD, POST" and "405" not in json.loads(body)["error"]
        assert headers["content-security-policy"].startswith("default-src 'self'")
    status, headers, body = server.request("BREW", "/api/status")
    assert status == 501 and json.loads(body)["error"] and "x-frame-options" in headers
    many = b"".join(b"X-Header-%d: x\r\n" % n for n in range(120))
    answer = raw_exchange(server, b"GET /api/status HTTP/1.1\r\n" + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ") and b"nosniff" in answer and b"<html" not in answer.lower()


def test_without_the_page_a_placeholder_is_served(tmp_path: Path, template: Books) -> None:
    from oeleo.monitor import Monitor
    from oeleo.serve import make_server
    from oeleo.settings import load_settings

    settings = load_settings(None, db_name=str(template.db), base_dir_from=str(template.src))
    served = make_server("127.0.0.1", 0, Monitor(settings), TOKEN, page=tmp_path / "no-page")
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
        connection.request("GET", "/")
        response = connection.getresponse()
        body = response.read()
        connection.close()
    finally:
        served.shutdown()
        served.server_close()
    assert response.status == 200 and b"/api/status" in body


# -- beside a run and a scheduler --------------------------------------------------------------
def test_a_run_beside_the_server_works_and_is_seen_at_once(server: Served, books: Books) -> None:
    server.get_json("/api/status")  # the server has opened the books at least once
    (books.src / "new.csv").write_text("t,v\n7,8\n")
    done = books.run("run")
    assert done.returncode == 1, done.stderr  # the two failing files, not the server
    assert "already using" not in done.stderr
    assert (books.dst / "new.csv").read_text() == "t,v\n7,8\n"
    assert server.get_json("/api/status")["last_pass"]["files_copied"] == 1
    assert not os.path.exists(str(books.db) + "-journal")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")
def test_the_server_holds_no_file_of_the_books_between_requests(server: Served, books: Books) -> None:
    for path in ("/api/status", "/api/files", "/metrics"):
        server.request("GET", path)
    assert server.post("/api/lock", {"files": ["d.csv"]})[0] == 200
    fds = Path(f"/proc/{server.proc.pid}/fd")
    held = [os.readlink(fd) for fd in fds.iterdir() if os.path.islink(fd)]
    assert held and not [target for target in held if target.startswith(str(books.db))], held  # .lock too


def test_a_scheduler_is_alive_while_it_waits_and_stale_once_killed(tmp_path: Path) -> None:
    books = Books(tmp_path)
    make_tree(books.src, FILES)
    env = books.env(OELEO_MONITOR_TOKEN=TOKEN)
    err = tmp_path / "schedule.err"
    scheduler = start_oeleo(
        ["schedule", "--every", "600", "--max-runs", "2"], cwd=tmp_path, err=err, env=clean_env(env)
    )
    served: Optional[Served] = None
    try:
        wait_for(
            lambda: "next run at" in err.read_text() or scheduler.poll() is not None, 60, "the first pass"
        )
        assert scheduler.poll() is None, err.read_text()
        served = serve(tmp_path, env)
        beat = served.get_json("/api/status")["heartbeat"]
        assert beat["state"] == "alive" and beat["pid"] == scheduler.pid and beat["next_pass"] is not None
        assert "oeleo_scheduler_up{" in served.request("GET", "/metrics")[2].decode()
        up = parse_metrics(served.request("GET", "/metrics")[2].decode())
        assert [v for n, _, v in up["samples"] if n == "oeleo_scheduler_up"] == [1.0]
        scheduler.kill()
        scheduler.wait(timeout=30)
        status = served.get_json("/api/status")
        assert status["heartbeat"]["state"] == "stale"
        assert status["origins"][0]["health"] == "stale"
    finally:
        if scheduler.poll() is None:
            scheduler.kill()
            scheduler.wait(timeout=30)
        if served is not None:
            served.stop()


def test_books_that_go_away_are_a_503_said_once_and_served_again_when_back(
    server: Served, books: Books
) -> None:
    moved = books.root / "moved.db"
    books.db.rename(moved)
    try:
        answers = [server.request("GET", "/api/status") for _ in range(3)]
    finally:
        moved.rename(books.db)
    for status, _, body in answers:
        assert status == 503 and str(books.db) in json.loads(body)["error"]
    assert server.stderr().count(f"no database file at {books.db}") == 1
    assert server.get_json("/api/status")["counts"]["failed"] == 2


# -- stopping, logging ---------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_it_stops_cleanly_on_a_signal_and_logs_requests_at_debug_only(books: Books, signum: int) -> None:
    served = serve(books.root, books.env(OELEO_MONITOR_TOKEN=TOKEN))
    for path in ("/api/status", "/metrics", "/api/files"):
        served.request("GET", path)
    assert served.stop(signum) == 0
    lines = served.stderr().splitlines()
    assert not any("/api/status" in line for line in lines), lines
    assert lines[-1] == "oeleo: the monitor stopped"
    assert not any("Traceback" in line for line in lines)


def test_sigint_stops_it_when_it_was_started_with_sigint_ignored(books: Books) -> None:
    """``oeleo serve &`` in a script, nohup, a service manager: the process starts with SIGINT
    ignored, and Python then raises no KeyboardInterrupt. Ctrl-C (kill -INT) must still stop it."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # what the child inherits, as from `&`
    try:
        served = serve(books.root, books.env(OELEO_MONITOR_TOKEN=TOKEN))
    finally:
        signal.signal(signal.SIGINT, old)
    try:
        served.request("GET", "/api/status")
        assert served.stop(signal.SIGINT) == 0
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()
    assert served.stderr().splitlines()[-1] == "oeleo: the monitor stopped"


def test_debug_logs_each_request(books: Books) -> None:
    served = serve(books.root, books.env(OELEO_MONITOR_TOKEN=TOKEN), "--debug")
    served.request("GET", "/api/status")
    assert served.stop() == 0
    assert "GET /api/status" in served.stderr()


# -- bad input: one line, exit 2, nothing created ------------------------------------------------
def one_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    return lines[0]


def test_a_port_in_use_is_named(books: Books) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        done = run_oeleo(
            "serve", "--port", str(port), cwd=books.root, env=books.env(OELEO_MONITOR_TOKEN=TOKEN)
        )
    finally:
        taken.close()
    line = one_line(done)
    assert f"127.0.0.1:{port} is already in use" in line and line.startswith(f"oeleo: --port {port}")


def test_a_short_token_is_refused(books: Books) -> None:
    done = run_oeleo("serve", cwd=books.root, env=books.env(OELEO_MONITOR_TOKEN="short"))
    line = one_line(done)
    assert "OELEO_MONITOR_TOKEN" in line and "16 characters" in line and "short" not in line


def test_books_that_are_not_there_are_named_and_not_created(tmp_path: Path) -> None:
    db = tmp_path / "books" / "none.db"
    (tmp_path / "books").mkdir()
    env = {"OELEO_DB_NAME": str(db), "OELEO_LOG_DIR": str(tmp_path / "logs")}
    done = run_oeleo("serve", cwd=tmp_path, env=env)
    assert str(db) in one_line(done)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["books"]


def test_a_bad_port_or_host_is_one_line(books: Books) -> None:
    env = books.env(OELEO_MONITOR_TOKEN=TOKEN)
    for wrong in ("70000", "-1"):
        line = one_line(run_oeleo("serve", "--port", wrong, cwd=books.root, env=env))
        assert f"--port {wrong}" in line and "0 for any free port" in line, line
    assert "--host 192.0.2.1" in one_line(
        run_oeleo("serve", "--host", "192.0.2.1", "--port", "0", cwd=books.root, env=env)
    )


# -- PostgreSQL books shared by many PCs ---------------------------------------------------------
def test_shared_postgres_books_have_a_row_per_origin(postgres_db: Dict[str, Any], tmp_path: Path) -> None:
    pg = {**db_env(postgres_db), "OELEO_FILTER_EXTENSION": "csv"}
    good, bad = tmp_path / "instrument-1", tmp_path / "instrument-2"
    make_tree(good, {"a.csv": "1\n", "b.csv": "2\n"})
    make_tree(bad, {"x.csv": "3\n", "y/z.csv": "4\n"})
    (tmp_path / "dst-2").mkdir()
    (tmp_path / "dst-2" / "y").write_text("a file where a folder must be\n")
    first = run_oeleo("run", "--from", str(good), "--to", str(tmp_path / "dst-1"), cwd=tmp_path, env=pg)
    assert first.returncode == 0, first.stderr
    scheduled = run_oeleo(
        "schedule",
        "--from",
        str(bad),
        "--to",
        str(tmp_path / "dst-2"),
        "--every",
        "0.1",
        "--max-runs",
        "2",
        cwd=tmp_path,
        env=pg,
    )
    assert scheduled.returncode == 1, scheduled.stderr

    served = serve(tmp_path, {**pg, "OELEO_MONITOR_TOKEN": TOKEN}, "--from", str(good))
    try:
        status = served.get_json("/api/status")
        metrics = served.request("GET", "/metrics")[2].decode()
        origin_2 = f"{socket.gethostname()}:{bad.as_posix()}"
        lock = served.post("/api/lock", {"files": ["b.csv", "x.csv"]})
        other = serve(tmp_path, {**pg, "OELEO_MONITOR_TOKEN": TOKEN}, "--origin", origin_2, name="other")
        try:
            status_2 = other.get_json("/api/status")
        finally:
            other.stop()
        # No folder given, two of this PC in the books: every origin, none chosen; no action.
        anyone = serve(tmp_path, {**pg, "OELEO_MONITOR_TOKEN": TOKEN}, name="anyone")
        try:
            status_none = anyone.get_json("/api/status")
            refused = anyone.post("/api/lock", {"files": ["a.csv"]})
        finally:
            anyone.stop()
    finally:
        served.stop()
    host = socket.gethostname()
    assert (
        status["books"]
        == f"PostgreSQL database {postgres_db['dbname']} on {postgres_db['host']}:{postgres_db['port']}"
    )
    assert status["origin"] == f"{host}:{good.as_posix()}" and status["failures"] == []
    by_origin = {row["origin"]: row for row in status["origins"]}
    assert set(by_origin) == {f"{host}:{good.as_posix()}", origin_2}
    one, two = by_origin[f"{host}:{good.as_posix()}"], by_origin[origin_2]
    assert (one["health"], one["last_pass"]["files_copied"], one["heartbeat"]) == ("ok", 2, None)
    assert (two["health"], two["counts"]["failed"], two["last_pass"]["status"]) == ("failing", 1, "failed")
    assert two["heartbeat"]["state"] == "stopped" and two["folder"] == bad.as_posix()
    assert lock[1]["done"] == ["b.csv"] and lock[1]["unknown"] == ["x.csv"]  # x.csv is the other origin's

    parsed = parse_metrics(metrics)
    assert {ls["origin"] for n, ls, _ in parsed["samples"] if n == "oeleo_files_failed"} == set(by_origin)
    assert postgres_db["password"] not in json.dumps(status) + metrics + served.stderr()

    assert status_2["origin"] == origin_2
    assert [f["file"] for f in status_2["failures"]] == ["y/z.csv"]
    assert status_2["counts"]["do_not_copy"] == 0 and status["counts"]["do_not_copy"] == 0  # before the lock

    assert (status_none["origin"], status_none["passes"], status_none["heartbeat"]) == (None, [], None)
    assert [(o["origin"], o["health"]) for o in status_none["origins"]] == [
        (o["origin"], o["health"]) for o in status["origins"]
    ]
    assert by_origin[f"{host}:{good.as_posix()}"]["counts"]["do_not_copy"] == 0
    assert status_none["origins"][0]["counts"]["do_not_copy"] == 1  # b.csv, locked in between
    assert refused[0] == 400 and "--from" in refused[1]["error"]


def test_a_postgres_database_without_books_is_refused_and_left_empty(
    postgres_db: Dict[str, Any], tmp_path: Path
) -> None:
    env = db_env(postgres_db)
    line = one_line(run_oeleo("serve", "--port", "0", cwd=tmp_path, env=env))
    assert postgres_db["dbname"] in line and "no books in it yet" in line
    assert postgres_db["password"] not in line
    tables = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    assert pg_query(postgres_db, tables) == []
