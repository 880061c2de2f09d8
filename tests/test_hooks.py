"""Post-transfer hooks (oeleo.hooks): run once per copied file and once per pass, after the
copies are booked; a hook that fails, times out, raises or is killed with the run is booked for
that file and run again next pass, and never repeats the copy or stops the run."""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import shlex
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List

import pytest
from helpers import run_oeleo

from oeleo.checkers import FitsChecker
from oeleo.connectors.local import LocalConnector
from oeleo.hooks import OUTPUT_LIMIT, Arrival, HookFailed, Hooks, not_done_names, run_command
from oeleo.models import SimpleDbHandler, make_origin
from oeleo.worker import Worker

REPO = Path(__file__).resolve().parents[1]

# A hook program: appends what it was told (environment and stdin) as one JSON line to LOG,
# then exits with the status written in the file STATUS (0 when there is none).
RECORDER = """
import json, os, sys
log, status = sys.argv[1], sys.argv[2]
told = {k: v for k, v in os.environ.items() if k.startswith("OELEO_HOOK_")}
told["stdin"] = json.loads(sys.stdin.read())
with open(log, "a") as f:
    f.write(json.dumps(told) + "\\n")
code = int(open(status).read()) if os.path.exists(status) else 0
if code:
    print("archive said no", file=sys.stderr)
sys.exit(code)
"""


def fits_frame(obj: str) -> bytes:
    cards = [
        "SIMPLE  =                    T",
        "BITPIX  =                    8",
        "NAXIS   =                    1",
    ]
    cards += [
        "NAXIS1  =                 2880",
        f"OBJECT  = '{obj:<8}'",
        "EXPTIME =                 30.0",
        "END",
    ]
    text = "".join(c.ljust(80) for c in cards)
    return (text + " " * (-len(text) % 2880)).encode("ascii") + bytes(range(256)) * 11 + bytes(64)


@pytest.fixture
def place(tmp_path: Path) -> Dict[str, Path]:
    source, dest = tmp_path / "from", tmp_path / "to"
    (source / "night1").mkdir(parents=True)
    (source / "night1" / "m31.fits").write_bytes(fits_frame("M31"))
    (source / "night1" / "m42.fits").write_bytes(fits_frame("M42"))
    (source / "notes.txt").write_text("clear sky\n")
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    return {
        "root": tmp_path,
        "source": source,
        "dest": dest,
        "db": tmp_path / "books.db",
        "log": tmp_path / "hook.log",
        "pass_log": tmp_path / "pass.log",
        "status": tmp_path / "status",
        "script": script,
    }


def command(*args: Any) -> str:
    return " ".join(shlex.quote(str(a)) for a in (sys.executable, *args))


def settings_env(place: Dict[str, Path], **extra: str) -> Dict[str, str]:
    env = {
        "OELEO_BASE_DIR_FROM": str(place["source"]),
        "OELEO_BASE_DIR_TO": str(place["dest"]),
        "OELEO_DB_NAME": str(place["db"]),
        "OELEO_CHECKER": "fits",
        "OELEO_HOOK_COMMAND": command(place["script"], place["log"], place["status"]),
    }
    env.update(extra)
    return env


def told(log: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def last_errors(db: Path) -> Dict[str, Any]:
    with sqlite3.connect(db) as con:
        return dict(con.execute("SELECT local_name, last_error FROM filelist"))


def test_the_command_runs_once_per_copied_file_with_its_names_checksum_and_header_keywords(place):
    env = settings_env(place, OELEO_HOOK_PASS_COMMAND=command(place["script"], place["pass_log"], "none"))
    done = run_oeleo("run", cwd=place["root"], env=env)
    assert done.returncode == 0, done.stderr
    calls = {c["stdin"]["local_name"]: c for c in told(place["log"])}
    assert sorted(calls) == ["night1/m31.fits", "night1/m42.fits", "notes.txt"]
    m31 = calls["night1/m31.fits"]
    local = place["source"] / "night1" / "m31.fits"
    assert m31["OELEO_HOOK_LOCAL_PATH"] == str(local)
    assert m31["OELEO_HOOK_EXTERNAL_NAME"] == str(place["dest"] / "night1" / "m31.fits")
    with sqlite3.connect(place["db"]) as con:
        booked = con.execute("SELECT checksum FROM filelist WHERE local_name='night1/m31.fits'").fetchone()[0]
    assert m31["OELEO_HOOK_CHECKSUM"] == booked
    document = m31["stdin"]
    assert document["local_path"] == str(local) and document["checksum"] == booked
    assert document["metadata"]["OBJECT"] == "M31" and document["metadata"]["EXPTIME"] == 30.0
    assert document["size"] == local.stat().st_size
    # The pass command: once, with the three files.
    (pass_call,) = told(place["pass_log"])
    assert sorted(f["local_name"] for f in pass_call["stdin"]["files"]) == sorted(calls)
    assert set(last_errors(place["db"]).values()) == {None}
    # Nothing copied: no hook.
    again = run_oeleo("run", cwd=place["root"], env=env)
    assert again.returncode == 0, again.stderr
    assert len(told(place["log"])) == 3 and len(told(place["pass_log"])) == 1


def test_a_failing_hook_is_booked_for_its_file_and_runs_again_next_pass_without_a_second_copy(place):
    env = settings_env(place)
    place["status"].write_text("3")
    done = run_oeleo("run", cwd=place["root"], env=env)
    assert done.returncode == 0, done.stderr  # the copies succeeded; the hook is said and booked
    assert "a hook did not succeed" in done.stderr + done.stdout
    copy = place["dest"] / "night1" / "m31.fits"
    assert copy.read_bytes() == fits_frame("M31")
    first_copy = copy.stat().st_mtime_ns, copy.stat().st_ino
    errors = last_errors(place["db"])
    assert not_done_names(errors["night1/m31.fits"]) == ["command"]
    assert "exited with status 3: archive said no" in errors["night1/m31.fits"]
    status = run_oeleo("status", cwd=place["root"], env=env)
    assert 'night1/m31.fits (code 1): hooks not done ["command"]' in status.stdout, status.stdout
    place["status"].write_text("0")
    again = run_oeleo("run", cwd=place["root"], env=env)
    assert again.returncode == 0, again.stderr
    assert len(told(place["log"])) == 6  # each file's hook once more
    assert (copy.stat().st_mtime_ns, copy.stat().st_ino) == first_copy  # not copied again
    assert set(last_errors(place["db"]).values()) == {None}
    third = run_oeleo("run", cwd=place["root"], env=env)
    assert third.returncode == 0 and len(told(place["log"])) == 6


def test_a_hook_that_runs_too_long_is_killed_and_booked_and_the_run_goes_on(place):
    slow = place["root"] / "slow.py"
    slow.write_text(
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "time.sleep(60)\n"
    )
    env = settings_env(place, OELEO_HOOK_COMMAND=command(slow), OELEO_HOOK_TIMEOUT="0.5")
    done = run_oeleo("run", cwd=place["root"], env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (place["dest"] / "night1").iterdir()) == ["m31.fits", "m42.fits"]
    errors = last_errors(place["db"])
    assert all("timed out after 0.5 s (OELEO_HOOK_TIMEOUT)" in errors[name] for name in errors)


def test_a_hook_that_prints_megabytes_is_kept_to_its_last_64_kib():
    program = "import sys; sys.stdout.write('x' * 20_000_000 + 'END'); sys.stderr.write('e' * 5_000_000)"
    out, err = run_command([sys.executable, "-c", program], b"", {}, 30, "test")
    assert len(out) == OUTPUT_LIMIT and out.endswith(b"xEND") and len(err) == OUTPUT_LIMIT
    failing = "import sys; sys.stderr.write('y' * 5_000_000 + ' the last words'); sys.exit(1)"
    with pytest.raises(HookFailed) as failed:
        run_command([sys.executable, "-c", failing], b"", {}, 30, "OELEO_HOOK_COMMAND")
    assert str(failed.value).endswith("the last words") and len(str(failed.value)) < 600


@pytest.mark.parametrize("setting", ["OELEO_HOOK_COMMAND", "OELEO_HOOK_PASS_COMMAND"])
def test_a_hook_command_that_does_not_exist_is_one_line_naming_the_setting_and_nothing_is_copied(
    place, setting
):
    env = settings_env(place, **{setting: "/no/such/archiver --post"})
    done = run_oeleo("run", cwd=place["root"], env=env)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and setting in lines[0] and "/no/such/archiver" in lines[0], done.stderr
    assert "Traceback" not in done.stderr and not place["dest"].exists()
    quote = settings_env(place, **{setting: "archiver 'unclosed"})
    done = run_oeleo("run", cwd=place["root"], env=quote)
    assert done.returncode == 2 and setting in done.stderr and "Traceback" not in done.stderr


def make_worker(place: Dict[str, Path], hooks: Any) -> Worker:
    return Worker(
        checker=FitsChecker(),
        bookkeeper=SimpleDbHandler(str(place["db"])),
        local_connector=LocalConnector(directory=place["source"]),
        external_connector=LocalConnector(directory=place["dest"]),
        subdirs=True,
        hooks=hooks,
    )


def run_worker(place: Dict[str, Path], hooks: Any) -> Any:
    worker = make_worker(place, hooks)
    try:
        return worker.run()
    finally:
        worker.close()


def test_python_hooks_per_file_and_per_pass_and_one_that_raises_does_not_stop_the_others(place):
    seen: List[Arrival] = []
    passes: List[List[str]] = []

    def broken(arrival: Arrival) -> None:
        raise RuntimeError(f"no archive for {arrival.local_name}")

    def per_pass(arrivals: List[Arrival]) -> None:
        passes.append(sorted(a.local_name for a in arrivals))

    per_pass.per_pass = True  # type: ignore[attr-defined]
    summary = run_worker(place, [seen.append, broken, per_pass])
    assert summary.copied == 3 and summary.failed == 0
    assert sorted(a.local_name for a in seen) == ["night1/m31.fits", "night1/m42.fits", "notes.txt"]
    assert {a.metadata.get("OBJECT") for a in seen} == {"M31", "M42", None}
    assert passes == [["night1/m31.fits", "night1/m42.fits", "notes.txt"]]
    errors = last_errors(place["db"])
    booked_as = f"{__name__}:{broken.__qualname__}"
    assert all(not_done_names(errors[name]) == [booked_as] for name in errors)
    assert "RuntimeError: no archive for notes.txt" in errors["notes.txt"]
    # Next pass: only the hook that failed runs again, with what the books kept of each file.
    fixed: List[Arrival] = []
    summary = run_worker(place, [seen.append, _named(broken.__qualname__, fixed), per_pass])
    assert summary.copied == 0 and len(seen) == 3 and len(passes) == 1
    assert sorted(a.local_name for a in fixed) == ["night1/m31.fits", "night1/m42.fits", "notes.txt"]
    assert [a.metadata.get("OBJECT") for a in fixed if a.local_name == "night1/m31.fits"] == ["M31"]
    assert set(last_errors(place["db"]).values()) == {None}
    run_worker(place, [seen.append, _named(broken.__qualname__, fixed), per_pass])
    assert len(seen) == 3 and len(fixed) == 3 and len(passes) == 1


def _named(qualname: str, into: List[Arrival]) -> Any:
    def hook(arrival: Arrival) -> None:
        into.append(arrival)

    hook.__qualname__ = qualname
    return hook


def test_a_run_killed_in_its_hooks_runs_them_next_pass(place):
    # The hook kills oeleo itself (SIGKILL: nothing can clean up) the first time it runs.
    killer = place["root"] / "killer.py"
    killer.write_text(
        "import os, signal, sys\n"
        f"if not os.path.exists({str(place['status'])!r}):\n"
        f"    open({str(place['status'])!r}, 'w').write('0')\n"
        "    os.kill(os.getppid(), signal.SIGKILL)\n"
        "import json\n"
        "told = json.loads(sys.stdin.read())  # fails in a hook whose oeleo was killed while feeding it\n"
        f"open({str(place['log'])!r}, 'a').write(json.dumps(told) + '\\n')\n"
    )
    env = settings_env(place, OELEO_HOOK_COMMAND=command(killer))
    done = run_oeleo("run", cwd=place["root"], env=env)
    assert done.returncode == -9
    assert (place["dest"] / "notes.txt").exists()
    assert all(not_done_names(e) == ["*"] for e in last_errors(place["db"]).values())
    again = run_oeleo("run", cwd=place["root"], env=env)
    assert again.returncode == 0, again.stderr
    names = sorted(json.loads(line)["local_name"] for line in place["log"].read_text().splitlines())
    assert {"night1/m31.fits", "night1/m42.fits", "notes.txt"} <= set(names)
    assert set(last_errors(place["db"]).values()) == {None}


def test_hooks_registered_under_the_entry_point_group_run(place, monkeypatch):
    site = place["root"] / "site"
    (site / "archive_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "archive_plugin-1.0.dist-info" / "METADATA").write_text("Name: archive-plugin\nVersion: 1.0\n")
    (site / "archive_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[oeleo.hooks]\narchive = archive_plugin:on_arrival\n"
    )
    (site / "archive_plugin.py").write_text(
        "import os\nSEEN = []\ndef on_arrival(arrival):\n    SEEN.append(arrival.local_name)\n"
    )
    monkeypatch.syspath_prepend(str(site))
    summary = run_worker(place, None)
    import archive_plugin  # type: ignore[import-not-found]

    assert summary.copied == 3
    assert sorted(archive_plugin.SEEN) == ["night1/m31.fits", "night1/m42.fits", "notes.txt"]
    monkeypatch.delitem(sys.modules, "archive_plugin")


def test_no_hooks_no_marks_and_a_dry_run_runs_none(place):
    summary = run_worker(place, Hooks(entry_points=False))
    assert summary.copied == 3 and set(last_errors(place["db"]).values()) == {None}
    (place["source"] / "new.txt").write_text("later\n")
    seen: List[Arrival] = []
    worker = make_worker(place, [seen.append])
    worker.dry_run = True
    try:
        assert worker.run().would_copy == ["new.txt"]
    finally:
        worker.close()
    assert seen == [] and os.path.exists(place["source"] / "new.txt")


# -- the examples ------------------------------------------------------------------------
EXAMPLES = REPO / "examples"


def load_example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Archive(http.server.ThreadingHTTPServer):
    """A loopback archive API: records each POST; answers 503 to the names in ``refuse``."""

    def __init__(self) -> None:
        self.records: List[Dict[str, Any]] = []
        self.tokens: List[str] = []
        self.refuse: set = set()
        super().__init__(("127.0.0.1", 0), ArchiveHandler)


class ArchiveHandler(http.server.BaseHTTPRequestHandler):
    server: Archive

    def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
        record = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.tokens.append(self.headers.get("Authorization", ""))
        if record["filename"] in self.server.refuse:
            self.send_response(503)
        else:
            self.server.records.append(record)
            self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def archive():
    server = Archive()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_example_hook_http_posts_an_archive_record_per_frame_and_again_after_a_refusal(place, archive):
    url = f"http://127.0.0.1:{archive.server_address[1]}/api/frames/"
    archive.refuse = {"m42.fits"}
    env = settings_env(
        place, OELEO_HOOK_COMMAND=command(EXAMPLES / "hook_http.py", url), ARCHIVE_TOKEN="s3cret-token"
    )
    done = run_oeleo("run", cwd=place["root"], env=env)
    assert done.returncode == 0, done.stderr
    assert sorted(r["filename"] for r in archive.records) == ["m31.fits", "notes.txt"]
    m31 = next(r for r in archive.records if r["filename"] == "m31.fits")
    assert m31["object"] == "M31" and m31["header"]["EXPTIME"] == 30.0
    assert m31["path"] == str(place["dest"] / "night1" / "m31.fits") and m31["size"] == 5760
    assert set(archive.tokens) == {"Token s3cret-token"}
    assert "s3cret-token" not in done.stderr + done.stdout
    assert "answered 503" in last_errors(place["db"])["night1/m42.fits"]
    archive.refuse = set()
    again = run_oeleo("run", cwd=place["root"], env=env)
    assert again.returncode == 0, again.stderr
    assert sorted(r["filename"] for r in archive.records) == ["m31.fits", "m42.fits", "notes.txt"]
    assert set(last_errors(place["db"]).values()) == {None}


def test_example_hook_postgres_inserts_a_metadata_row_per_frame(place, postgres_db):
    import psycopg2

    dsn = " ".join(f"{key}={value}" for key, value in postgres_db.items())
    script = [str(EXAMPLES / "hook_postgres.py"), str(place["source"]), str(place["dest"]), dsn]
    done = subprocess.run(
        [sys.executable, *script, str(place["db"])], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    (place["source"] / "night1" / "m42.fits").write_bytes(fits_frame("M42b"))  # changed: copied again
    again = subprocess.run(
        [sys.executable, *script, str(place["db"])], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    with psycopg2.connect(dsn) as con, con.cursor() as cursor:
        cursor.execute("SELECT path, object, exptime, header->>'OBJECT', checksum FROM frames ORDER BY id")
        rows = cursor.fetchall()
    con.close()
    dest = place["dest"] / "night1"
    got = [(r[0], r[1], r[2], r[3]) for r in rows]
    assert sorted(got[:2]) == [
        (str(dest / "m31.fits"), "M31", 30.0, "M31"),
        (str(dest / "m42.fits"), "M42", 30.0, "M42"),
    ]
    assert got[2:] == [(str(dest / "m42.fits"), "M42b", 30.0, "M42b")]  # once: m31 was not inserted twice
    with sqlite3.connect(place["db"]) as books:
        booked = dict(books.execute("SELECT local_name, checksum FROM filelist"))
    assert rows[-1][4] == booked["night1/m42.fits"]


def test_example_hook_dask_submits_each_arrived_file_to_a_local_cluster(place):
    distributed = pytest.importorskip("distributed")
    example = load_example("hook_dask")
    with distributed.LocalCluster(processes=False, dashboard_address=None, n_workers=2) as cluster:
        with distributed.Client(cluster) as client:
            results = example.run(str(place["source"]), str(place["dest"]), client, str(place["db"]))
            again = example.run(str(place["source"]), str(place["dest"]), client, str(place["db"]))
    with sqlite3.connect(place["db"]) as books:
        booked = dict(books.execute("SELECT local_name, checksum FROM filelist"))
    assert sorted(results) == ["night1/m31.fits", "night1/m42.fits", "notes.txt"]
    assert {name: r["md5"] for name, r in results.items()} == booked
    assert results["night1/m31.fits"]["size"] == 5760 and again == {}


@pytest.mark.parametrize("value", ["soon", "0", "-5"])
def test_a_hook_timeout_that_is_not_a_positive_number_is_one_line_naming_it(place, value):
    done = run_oeleo("run", cwd=place["root"], env=settings_env(place, OELEO_HOOK_TIMEOUT=value))
    assert done.returncode == 2 and "OELEO_HOOK_TIMEOUT" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not place["dest"].exists()


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="names that are not UTF-8: Linux folders")
def test_a_name_that_is_not_utf8_reaches_the_hook_and_its_retry_as_the_same_bytes(place):
    raw = os.path.join(os.fsencode(place["source"]), b"caf\xe9 frame.txt")
    with open(raw, "wb") as f:
        f.write(b"frame\n")
    place["status"].write_text("1")
    assert run_oeleo("run", cwd=place["root"], env=settings_env(place)).returncode == 0
    place["status"].write_text("0")
    assert run_oeleo("run", cwd=place["root"], env=settings_env(place)).returncode == 0
    paths = [os.fsencode(c["OELEO_HOOK_LOCAL_PATH"]) for c in told(place["log"])]
    assert paths.count(raw) == 2  # the failing run and the retry from the books
    assert set(last_errors(place["db"]).values()) == {None}


def test_a_failing_pass_command_runs_again_next_pass_with_its_files_and_the_file_hooks_do_not(place):
    pass_status = place["root"] / "pass_status"
    pass_status.write_text("4")
    env = settings_env(
        place, OELEO_HOOK_PASS_COMMAND=command(place["script"], place["pass_log"], pass_status)
    )
    assert run_oeleo("run", cwd=place["root"], env=env).returncode == 0
    errors = last_errors(place["db"])
    assert all(not_done_names(errors[name]) == ["pass-command"] for name in errors), errors
    pass_status.write_text("0")
    (place["source"] / "late.txt").write_text("arrived later\n")
    assert run_oeleo("run", cwd=place["root"], env=env).returncode == 0
    first, second = told(place["pass_log"])
    assert sorted(f["local_name"] for f in second["stdin"]["files"]) == [
        "late.txt",
        "night1/m31.fits",
        "night1/m42.fits",
        "notes.txt",
    ]
    assert second["OELEO_HOOK_FILES"] == "4"
    assert sorted(c["stdin"]["local_name"] for c in told(place["log"])) == [
        "late.txt",
        "night1/m31.fits",
        "night1/m42.fits",
        "notes.txt",
    ]  # the per-file command ran once per file: it never failed
    assert set(last_errors(place["db"]).values()) == {None}


def test_a_failed_hook_is_booked_and_cleared_in_postgresql_books_too(place, postgres_db):
    from oeleo.models import PostgresDbHandler

    def books() -> PostgresDbHandler:
        db = postgres_db
        return PostgresDbHandler(db["dbname"], db["host"], db["port"], db["user"], db["password"])

    def run_with(hook: Any) -> Any:
        worker = make_worker(place, [hook])
        worker.bookkeeper = books()
        worker.bookkeeper.origin = make_origin(place["source"])
        try:
            return worker.run()
        finally:
            worker.close()

    def failing(arrival: Arrival) -> None:
        if arrival.local_name == "notes.txt":
            raise OSError("archive share not mounted")

    failing.hook_name = "archive"  # type: ignore[attr-defined]
    assert run_with(failing).copied == 3
    reader = books()
    reader.origin = make_origin(place["source"])
    reader.initialize_db(exclusive=False)
    try:
        errors = {row.local_name: row.last_error for row in reader.rows(errors_only=True)}
    finally:
        reader.close()
    assert list(errors) == ["notes.txt"] and not_done_names(errors["notes.txt"]) == ["archive"]
    retried: List[Arrival] = []
    again = _named("unused", retried)
    again.hook_name = "archive"  # type: ignore[attr-defined]
    assert run_with(retried.append).copied == 0  # a hook of another name: not run, the mark stays
    assert retried == []
    assert run_with(again).copied == 0
    assert [a.local_name for a in retried] == ["notes.txt"]
    reader = books()
    reader.origin = make_origin(place["source"])
    reader.initialize_db(exclusive=False)
    try:
        assert list(reader.rows(errors_only=True)) == []
    finally:
        reader.close()
