"""The monitor page (``oeleo serve``) in a real headless browser: Debian's Chromium driven by
Playwright, against books made by real ``oeleo run`` passes.

What a person sees is asserted (the failed file's name and reason, the counts per code, one bar
per day and one point per pass, the origins), then the actions: Retry, Lock and Unlock with the
token change the books, and without it they are refused and change nothing. Every page also
checks that the browser asked nothing of any host but the server, and that nothing went to the
console as an error (a Content-Security-Policy violation would).

Playwright's own browser download cannot work here: the system's ``/usr/bin/chromium`` is
launched through ``executable_path`` (tests/run.sh installs it). The screenshots of
docs/monitoring.md are taken here; ``MONITOR_SCREENSHOTS=docs/images`` writes them there.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import sqlite3
import struct
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List, Optional
from urllib.parse import urlsplit

import pytest
from helpers import clean_env, db_count, db_rows, make_tree, run_oeleo, start_oeleo, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # required as root; the page is our own
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # a container's small /dev/shm must not crash a tab
]
TOKEN = "monitor-page-test-token-0123456789"
VIEWPORT = {"width": 1280, "height": 900}
TIMEOUT_MS = 15_000

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="playwright is not installed (it is in the test extra: pip install -e '.[test]')",
)
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(
        f"{CHROMIUM} is missing: apt-get install chromium (bash tests/run.sh installs it)",
        allow_module_level=True,
    )

expect = sync_api.expect
expect.set_options(timeout=TIMEOUT_MS)

REFUSED_LOG = re.compile(r"Failed to load resource: the server responded with a status of 401 ")
CONNECTION_REFUSED = re.compile(r"Failed to load resource: net::ERR_CONNECTION_REFUSED")
REPO = Path(__file__).resolve().parent.parent
SHOTS = os.environ.get("MONITOR_SCREENSHOTS")  # e.g. docs/images: also write the screenshots there


# -- books made by real runs ------------------------------------------------------------------
def run(work: Path, src: str = "src", dst: str = "dst") -> int:
    done = run_oeleo("run", "--from", src, "--to", dst, "--db", "books.db", cwd=work)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode


def failing_books(work: Path) -> None:
    """Three passes: ``run-001/b.csv`` fails in each (a folder of that name blocks its place in
    the destination), new files arrive before the second and the third (120 scans)."""
    make_tree(
        work / "src",
        {
            "run-001/a.csv": "time,voltage\n0,3.1\n1,3.2\n",
            "run-001/b.csv": "time,voltage\n0,4.1\n",
            "notes.txt": "cell 7, second cycle\n",
        },
    )
    (work / "dst" / "run-001" / "b.csv").mkdir(parents=True)
    assert run(work) == 1
    make_tree(work / "src", {"run-002/cycle-1.res": b"RES" * 20_000, "run-002/cycle-2.res": b"RES" * 40_000})
    assert run(work) == 1
    make_tree(work / "src", {f"run-003/scan-{i:03d}.csv": f"scan,{i}\n" * (i + 1) for i in range(120)})
    assert run(work) == 1


@pytest.fixture
def lab() -> Iterator[Path]:
    """A short folder (``/tmp/lab-XXXX``) for the books and the trees: the screenshots show it."""
    with tempfile.TemporaryDirectory(prefix="lab-") as folder:
        yield Path(folder)


def heartbeat(db: Path) -> Dict[str, object]:
    connection = sqlite3.connect(str(db))
    try:
        connection.row_factory = sqlite3.Row
        rows = connection.execute("SELECT * FROM oeleo_scheduler").fetchall()
    except sqlite3.OperationalError:  # no scheduler has made its table yet
        return {}
    finally:
        connection.close()
    return dict(rows[0]) if rows else {}


def counts_in(db: Path) -> Dict[str, int]:
    rows = db_rows(db).values()
    return {
        "should_be_copied": sum(r["code"] == 0 for r in rows),
        "copy_if_changed": sum(r["code"] == 1 for r in rows),
        "do_not_copy": sum(r["code"] == 2 for r in rows),
        "failed": sum(r["last_error"] is not None for r in rows),
        "total": len(rows),
    }


# -- oeleo serve -----------------------------------------------------------------------------
class Served:
    def __init__(self, work: Path, proc, port: int) -> None:
        self.work = work
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.db = work / "books.db"


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def serve() -> Iterator:
    """``serve(work, *args)``: start ``oeleo serve`` on a port the system picks (``--port 0``),
    wait until it says where and accepts connections; stopped at the end of the test."""
    started: List[Served] = []

    def start(work: Path, *args: str, env: Optional[Dict[str, str]] = None) -> Served:
        err = work / f"serve-{len(started)}.err"
        env = clean_env({"OELEO_MONITOR_TOKEN": TOKEN, **(env or {})})
        proc = start_oeleo(["serve", "--db", "books.db", "--port", "0", *args], cwd=work, err=err, env=env)
        found: Dict[str, int] = {}

        def said_where() -> bool:
            match = re.search(r"at http://127\.0\.0\.1:(\d+)/", err.read_text(errors="replace"))
            if match:
                found["port"] = int(match.group(1))
            return bool(match) or proc.poll() is not None

        try:
            wait_for(said_where, 30, "oeleo serve to say where it listens")
            assert proc.poll() is None, err.read_text(errors="replace")
            wait_for(lambda: _accepts(found["port"]), 10, "the monitor's port to accept connections")
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        served = Served(work, proc, found["port"])
        started.append(served)
        return served

    yield start
    for served in started:
        served.proc.terminate()
        served.proc.wait(timeout=30)


# -- the browser -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator:
    # launch() gives the browser a fresh, temporary user-data dir of its own, removed at close.
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Visit:
    """A page in a fresh browser context (no cookie, no sessionStorage), with every request it
    made and every console error it printed."""

    def __init__(self, browser, served: Served, width: int = VIEWPORT["width"]) -> None:
        self.served = served
        self.context = browser.new_context(viewport={"width": width, "height": VIEWPORT["height"]})
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.requests: List[str] = []
        self.errors: List[str] = []
        self.expected = [REFUSED_LOG]  # console errors the test expects
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _console(self, message) -> None:
        # A refused action is a 401 the page shows; Chromium also logs it. Anything else counts.
        if message.type == "error" and not any(known.match(message.text) for known in self.expected):
            self.errors.append(message.text)

    def open(self, path: str = "/", loaded: bool = True):
        self.page.goto(self.served.url + path)
        if loaded:  # app.js marks the body once the first data has been drawn
            self.page.wait_for_selector("body[data-loaded=yes]")
        return self.page

    def hosts(self) -> List[str]:
        return sorted({urlsplit(url).netloc for url in self.requests})


@pytest.fixture
def visit(browser) -> Iterator:
    visits: List[Visit] = []

    def make(served: Served, width: int = VIEWPORT["width"]) -> Visit:
        visits.append(Visit(browser, served, width))
        return visits[-1]

    yield make
    for one in visits:
        one.context.close()
        assert one.hosts() in ([], [f"127.0.0.1:{one.served.port}"]), one.requests
        assert not one.errors, one.errors


def screenshot(page, name: str, tmp_path: Path) -> Path:
    """The visible 1280x900 of the page as ``name``; also under $MONITOR_SCREENSHOTS."""
    path = tmp_path / name
    page.screenshot(path=str(path))
    with open(path, "rb") as png:
        head = png.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (VIEWPORT["width"], VIEWPORT["height"])
    if SHOTS:
        target = (REPO / SHOTS) if not os.path.isabs(SHOTS) else Path(SHOTS)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / name)
    return path


def rows_of(page, testid: str):
    return page.get_by_test_id(testid)


def count_text(page, key: str) -> int:
    return int(page.get_by_test_id(f"count-{key}").inner_text())


# -- what a person sees ----------------------------------------------------------------------
def test_the_page_shows_the_failed_file_with_its_reason_the_counts_and_the_plots(lab, tmp_path, serve, visit):
    work = lab
    failing_books(work)
    # a scheduler that has made its first pass (a fourth one) and waits an hour for the next
    err = tmp_path / "schedule.err"
    args = ["schedule", "--every", "1h", "--from", "src", "--to", "dst", "--db", "books.db"]
    scheduler = start_oeleo(args, cwd=work, err=err, env=clean_env())
    try:
        wait_for(
            lambda: heartbeat(work / "books.db").get("next_pass") is not None or scheduler.poll() is not None,
            30,
            "the scheduler's first pass",
        )
        assert scheduler.poll() is None, err.read_text()
        served = serve(work, "--from", "src")
        one = visit(served)
        page = one.open()
        shows_the_failure_counts_plots_and_heartbeat(page, served, tmp_path)
    finally:
        scheduler.send_signal(signal.SIGTERM)
        scheduler.wait(timeout=30)
    assert one.hosts() == [f"127.0.0.1:{served.port}"]
    assert any(url.endswith("/api/status") for url in one.requests)


def shows_the_failure_counts_plots_and_heartbeat(page, served: Served, tmp_path: Path) -> None:
    failure = page.locator('[data-testid=failure-row][data-file="run-001/b.csv"]')
    expect(failure).to_have_count(1)
    reason = db_rows(served.db)["run-001/b.csv"]["last_error"]
    assert reason and "directory" in reason.lower()
    expect(failure.get_by_test_id("failure-reason")).to_have_text(reason)
    expect(rows_of(page, "failure-row")).to_have_count(1)

    books = counts_in(served.db)
    assert books["total"] == 125 and books["failed"] == 1
    for key, n in books.items():
        assert count_text(page, key) == n, key

    passes = db_count(served.db, "oeleo_runs")
    assert passes == 4
    expect(rows_of(page, "pass-row")).to_have_count(passes)
    expect(page.locator("#daily-plot svg rect[data-testid=daily-bar]")).to_have_count(30)
    expect(page.locator("#duration-plot svg circle[data-testid=duration-point]")).to_have_count(passes)
    # today's bar holds what the passes copied, the 29 days before hold nothing
    bars = page.locator("[data-testid=daily-bar]")
    copied = sum(r["size"] for r in db_rows(served.db).values() if r["last_error"] is None)
    assert int(bars.nth(29).get_attribute("data-bytes")) == copied
    assert all(int(bars.nth(i).get_attribute("data-bytes")) == 0 for i in range(29))
    grid = [
        float(y)
        for y in page.locator("#daily-plot svg line").evaluate_all("ls => ls.map(l => l.getAttribute('y1'))")
    ]
    plot_height = max(grid) - min(grid)  # from the axis to the top line
    assert plot_height / 2 < float(bars.nth(29).get_attribute("height")) <= plot_height
    # the last pass, the scheduler's: nothing new to copy, b.csv failed again
    expect(page.get_by_test_id("lp-status")).to_have_text("failed")
    expect(page.get_by_test_id("lp-copied")).to_have_text("0 files, 0 B")
    expect(page.get_by_test_id("lp-failed")).to_have_text("1 file")
    expect(rows_of(page, "pass-row").nth(1)).to_contain_text("120")  # the pass before copied the scans
    expect(page.get_by_test_id("heartbeat-state")).to_have_text("alive")
    expect(page.get_by_test_id("hb-scheduler")).to_contain_text("every 1h")
    expect(page.get_by_test_id("hb-next")).to_contain_text("(in 60 min)")
    expect(page.get_by_test_id("origins")).to_be_hidden()  # one origin: no table of origins
    folder = str(served.work / "src")
    expect(page.get_by_test_id("origin")).to_have_text(re.compile(re.escape(folder) + "$"))
    screenshot(page, "monitor-failure.png", tmp_path)


def test_the_page_refreshes_by_itself_when_a_pass_has_run(lab, tmp_path, serve, visit):
    work = lab
    failing_books(work)
    served = serve(work, "--from", "src")
    one = visit(served)
    one.page.clock.install()  # the page's timers run when the test says
    page = one.open()
    expect(rows_of(page, "pass-row")).to_have_count(3)
    (work / "dst" / "run-001" / "b.csv").rmdir()  # the cause is gone: b.csv is copied
    assert run(work) == 0
    page.clock.run_for(15_000)  # the page asks again every 15 s
    expect(rows_of(page, "pass-row")).to_have_count(4)
    expect(rows_of(page, "failure-row")).to_have_count(0)
    expect(page.get_by_test_id("failures-none")).to_be_visible()
    expect(page.get_by_test_id("lp-status")).to_have_text("ok")


def test_when_the_server_stops_the_page_says_so_and_keeps_what_it_showed(lab, serve, visit):
    failing_books(lab)
    served = serve(lab, "--from", "src")
    one = visit(served)
    one.expected.append(CONNECTION_REFUSED)
    one.page.clock.install()
    page = one.open()
    expect(page.get_by_test_id("banner")).to_be_hidden()
    served.proc.terminate()
    served.proc.wait(timeout=30)
    page.clock.run_for(15_000)
    expect(page.get_by_test_id("banner")).to_contain_text(
        "Cannot read the monitor: oeleo serve does not answer"
    )
    expect(rows_of(page, "failure-row")).to_have_count(1)  # the last data stays on the page
    expect(page.locator("[data-testid=daily-bar]")).to_have_count(30)


def test_search_by_name_lists_the_matching_files_a_page_at_a_time(lab, tmp_path, serve, visit):
    work = lab
    failing_books(work)
    served = serve(work, "--from", "src")
    page = visit(served).open()
    expect(page.get_by_test_id("files-table")).to_be_hidden()  # nothing listed before a search

    page.get_by_label("Name contains").fill("cycle-")
    page.get_by_test_id("search-button").click()
    expect(rows_of(page, "file-row")).to_have_count(2)
    names = sorted(rows_of(page, "file-row").evaluate_all("rows => rows.map(r => r.dataset.file)"))
    assert names == ["run-002/cycle-1.res", "run-002/cycle-2.res"]
    expect(page.get_by_test_id("search-summary")).to_contain_text("2 files")

    page.get_by_label("Name contains").fill("scan-")
    page.get_by_test_id("search-button").click()
    expect(page.get_by_test_id("page-info")).to_have_text("page 1 of 2")
    expect(rows_of(page, "file-row")).to_have_count(100)
    page.get_by_test_id("page-next").click()
    expect(page.get_by_test_id("page-info")).to_have_text("page 2 of 2")
    expect(rows_of(page, "file-row")).to_have_count(20)
    expect(page.get_by_test_id("page-next")).to_be_disabled()

    page.get_by_label("Name contains").fill("")
    page.get_by_label("Which").select_option("failed")
    expect(rows_of(page, "file-row")).to_have_count(1)
    expect(page.locator('[data-testid=file-row][data-file="run-001/b.csv"]')).to_contain_text("directory")

    # a count is a button that lists its files
    page.get_by_label("Which").select_option("")
    page.get_by_test_id("count-button-0").click()
    expect(page.get_by_label("Which")).to_have_value("0")
    expect(rows_of(page, "file-row")).to_have_count(1)  # b.csv: failed, so still to copy
    expect(rows_of(page, "file-row").first).to_have_attribute("data-file", "run-001/b.csv")

    page.get_by_label("Name contains").fill("no-such-file")
    page.get_by_label("Which").select_option("")
    expect(page.get_by_test_id("search-summary")).to_have_text('No file whose name contains "no-such-file".')
    expect(rows_of(page, "file-row")).to_have_count(0)


def test_one_row_per_origin_when_several_pcs_share_the_books(lab, tmp_path, serve, visit):
    work = lab
    failing_books(work)
    make_tree(work / "xrd", {"scan-1.xy": "2theta,counts\n10,5\n", "scan-2.xy": "2theta,counts\n10,6\n"})
    assert run(work, src="xrd", dst="dst-xrd") == 0
    served = serve(work, "--from", "src")
    page = visit(served).open()

    origins = rows_of(page, "origin-row")
    expect(page.get_by_test_id("origins")).to_be_visible()
    expect(origins).to_have_count(2)
    host = socket.gethostname()
    by_folder = {
        row.locator("td").nth(2).inner_text(): row for row in origins.all()
    }  # columns: health, host, folder, ...
    assert sorted(by_folder) == sorted([str(work / "src"), str(work / "xrd")])
    expect(by_folder[str(work / "src")].get_by_test_id("origin-health")).to_have_text("failing")
    expect(by_folder[str(work / "xrd")].get_by_test_id("origin-health")).to_have_text("ok")
    for row in by_folder.values():
        expect(row.locator("td").nth(1)).to_contain_text(host)
    expect(by_folder[str(work / "src")]).to_contain_text("this view")
    expect(by_folder[str(work / "xrd")].locator("td").nth(7)).to_have_text("2")
    screenshot(page, "monitor-origins.png", tmp_path)


# -- the actions -----------------------------------------------------------------------------
def log_in(page, token: str = TOKEN) -> None:
    page.get_by_label("Token for actions").fill(token)
    page.get_by_test_id("login-button").click()


def test_retry_lock_and_unlock_with_the_token_change_the_books(lab, tmp_path, serve, visit):
    work = lab
    failing_books(work)
    served = serve(work, "--from", "src")
    page = visit(served).open()
    log_in(page)
    expect(page.get_by_test_id("login-state")).to_have_text("logged in: actions allowed")
    assert TOKEN not in page.content()  # the field is emptied; the token is in sessionStorage only
    assert page.evaluate("() => document.cookie") == ""  # the session cookie is HttpOnly
    assert page.evaluate("() => localStorage.length") == 0
    assert page.evaluate("() => Object.values(sessionStorage)") == [TOKEN]

    before = db_rows(served.db)["run-001/b.csv"]
    assert before["last_error"]
    page.locator('[data-testid=failure-row][data-file="run-001/b.csv"] [data-action=retry]').click()
    expect(page.get_by_test_id("message")).to_contain_text("run-001/b.csv: will be copied at the next pass")
    expect(rows_of(page, "failure-row")).to_have_count(0)
    after = db_rows(served.db)["run-001/b.csv"]
    assert after["last_error"] is None and after["code"] in (0, 1)
    (work / "dst" / "run-001" / "b.csv").rmdir()
    assert run(work) == 0  # the retried file is copied by the next pass
    assert (work / "dst" / "run-001" / "b.csv").read_text() == "time,voltage\n0,4.1\n"

    page.get_by_label("Name contains").fill("run-001/a.csv")
    page.get_by_test_id("search-button").click()
    row = page.locator('[data-testid=file-row][data-file="run-001/a.csv"]')
    row.locator("[data-action=lock]").click()
    expect(page.get_by_test_id("message")).to_contain_text("run-001/a.csv: locked")
    expect(row.locator("[data-action=unlock]")).to_be_visible()
    assert db_rows(served.db)["run-001/a.csv"]["code"] == 2
    expect(page.get_by_test_id("count-do_not_copy")).to_have_text("1")

    row.locator("[data-action=unlock]").click()
    expect(page.get_by_test_id("message")).to_contain_text("run-001/a.csv: unlocked")
    expect(row.locator("[data-action=lock]")).to_be_visible()
    assert db_rows(served.db)["run-001/a.csv"]["code"] == 1

    # A reload keeps the session (the cookie); Log out ends it, and the actions are refused again.
    page.reload()
    page.wait_for_selector("body[data-loaded=yes]")
    expect(page.get_by_test_id("login-state")).to_have_text("logged in: actions allowed")
    page.get_by_test_id("logout-button").click()
    expect(page.get_by_test_id("login-state")).to_have_text("not logged in")
    assert page.evaluate("() => sessionStorage.length") == 0
    page.get_by_label("Name contains").fill("run-001/a.csv")
    page.get_by_test_id("search-button").click()
    row.locator("[data-action=lock]").click()
    expect(page.get_by_test_id("message")).to_contain_text("Lock refused (401)")
    assert db_rows(served.db)["run-001/a.csv"]["code"] == 1


HOSTILE = [
    b"<img src=x onerror=alert(1)>.csv",
    b'x" onmouseover="alert(2).csv',
    b"it's a\\b.csv",
    b"${HOME} a&b;c.csv",
    b"\xff\xfe.csv",  # not UTF-8: the books' form is \u201bFF\u201bFE.csv
    b"new\nline.csv",
    "\u00f8+%20 c.csv".encode(),
    b"L" * 200 + b".csv",
]


def test_hostile_file_names_are_shown_as_they_are_run_no_script_and_act_on_their_own_row(
    lab, tmp_path, serve, visit
):
    """Names with HTML, quotes, bytes that are not UTF-8, a newline, 200 characters: each one
    failing (a folder of its name in the destination), shown and found as it is, and locked
    from its own row; no dialog opens, nothing but text is made of a name."""
    src, dst = os.fsencode(lab / "src"), os.fsencode(lab / "dst")
    os.makedirs(src)
    for name in HOSTILE:
        with open(src + b"/" + name, "wb") as out:
            out.write(b"t,v\n")
        os.makedirs(dst + b"/" + name + b"/in-the-way")
    assert run(lab) == 1
    books = db_rows(lab / "books.db")
    assert len(books) == len(HOSTILE) and all(row["last_error"] for row in books.values())
    served = serve(lab, "--from", "src")
    one = visit(served)
    dialogs: List[str] = []
    one.page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page = one.open()
    log_in(page)
    expect(page.get_by_test_id("login-state")).to_have_text("logged in: actions allowed")
    expect(rows_of(page, "failure-row")).to_have_count(len(HOSTILE))
    shown = rows_of(page, "failure-file").all_inner_texts()
    as_read = {name.replace("\n", "\\n") for name in books}  # a newline is shown as \n, not a space
    assert set(shown) == as_read, shown
    assert page.locator("main img, main [onerror], main [onmouseover]").count() == 0
    for name in sorted(books):
        part = name.split("\n")[-1][-12:]  # the end of it: a person types no newline
        page.get_by_label("Name contains").fill(part)
        page.get_by_test_id("search-button").click()
        expect(page.get_by_test_id("search-summary")).to_contain_text(part)
        rows = page.locator("[data-testid=file-row]")
        expect(rows.first).to_be_visible()
        found = rows.evaluate_all("(rows, name) => rows.map(r => r.dataset.file === name)", name)
        assert found.count(True) == 1, (name, found)
        row = rows.nth(found.index(True))
        expect(row.locator("td.file")).to_have_text(name.replace("\n", "\\n"))
        row.locator("[data-action=lock]").click()
        expect(row.locator("[data-action=unlock]")).to_be_visible()
    assert all(row["code"] == 2 for row in db_rows(lab / "books.db").values())
    assert dialogs == []


def test_after_a_restart_of_the_server_the_page_logs_in_again_with_the_kept_token(lab, serve, visit):
    failing_books(lab)
    first = serve(lab, "--from", "src")
    one = visit(first)
    one.expected.append(CONNECTION_REFUSED)  # a refresh may fall between the two servers
    page = one.open()
    log_in(page)
    expect(page.get_by_test_id("login-state")).to_have_text("logged in: actions allowed")
    first.proc.terminate()
    first.proc.wait(timeout=30)
    second = serve(lab, "--from", "src", "--port", str(first.port))  # its sessions are new
    assert second.port == first.port
    page.locator('[data-testid=failure-row][data-file="run-001/b.csv"] [data-action=lock]').click()
    expect(page.get_by_test_id("message")).to_contain_text("run-001/b.csv: locked")
    assert db_rows(second.db)["run-001/b.csv"]["code"] == 2


def test_without_the_token_the_actions_are_refused_and_the_books_do_not_change(lab, tmp_path, serve, visit):
    work = lab
    failing_books(work)
    served = serve(work, "--from", "src")
    page = visit(served).open()
    expect(page.get_by_test_id("login-state")).to_have_text("not logged in")
    before = db_rows(served.db)

    page.locator('[data-testid=failure-row][data-file="run-001/b.csv"] [data-action=retry]').click()
    message = page.get_by_test_id("message")
    expect(message).to_contain_text("Retry refused (401)")
    expect(message).to_have_class(re.compile(r"\berror\b"))
    page.locator('[data-testid=failure-row][data-file="run-001/b.csv"] [data-action=lock]').click()
    expect(message).to_contain_text("Lock refused (401)")
    assert db_rows(served.db) == before
    expect(rows_of(page, "failure-row")).to_have_count(1)

    log_in(page, "a-wrong-token-0123456789")
    expect(message).to_contain_text("Log in refused (401)")
    expect(page.get_by_test_id("login-state")).to_have_text("not logged in")
    assert page.evaluate("() => sessionStorage.length") == 0  # a refused token is not kept
    page.locator('[data-testid=failure-row][data-file="run-001/b.csv"] [data-action=retry]').click()
    expect(message).to_contain_text("Retry refused (401)")
    assert db_rows(served.db) == before


def test_the_login_page_logs_in_and_opens_the_monitor(lab, tmp_path, serve, visit):
    work = lab
    failing_books(work)
    served = serve(work, "--from", "src")
    one = visit(served)
    page = one.open("/login.html", loaded=False)
    expect(page.get_by_label("Token")).to_be_focused()
    screenshot(page, "monitor-login.png", tmp_path)

    page.get_by_label("Token").fill("a-wrong-token-0123456789")
    page.get_by_test_id("page-login-button").click()
    expect(page.get_by_test_id("page-login-message")).to_contain_text("Log in refused (401)")

    page.get_by_label("Token").fill(TOKEN)
    page.get_by_test_id("page-login-button").click()
    page.wait_for_url(served.url + "/")
    page.wait_for_selector("body[data-loaded=yes]")
    expect(page.get_by_test_id("login-state")).to_have_text("logged in: actions allowed")


def test_a_narrow_window_has_no_page_wide_scroll(lab, tmp_path, serve, visit):
    work = lab
    failing_books(work)
    served = serve(work, "--from", "src")
    page = visit(served, width=390).open()
    expect(rows_of(page, "failure-row")).to_have_count(1)
    # wide tables scroll inside their box; the page itself is as wide as the window
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    expect(page.get_by_role("button", name="Retry run-001/b.csv")).to_be_visible()


# -- behind a reverse proxy ------------------------------------------------------------------
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


def path_proxy(prefix: str, pass_host: bool = False) -> ThreadingHTTPServer:
    """What docs/monitoring.md's nginx block does: ``PREFIX/...`` goes to the monitor's ``/...``
    (at ``server.upstream``, its port) with the monitor's own address as Host, and the browser's
    Origin kept; ``pass_host``: the browser's Host kept too, as Caddy does."""

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            pass

        def forward(self) -> None:
            if not self.path.startswith(prefix + "/"):
                self.send_error(404)
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            drop = HOP_BY_HOP | {"content-length"} | (set() if pass_host else {"host"})
            headers = {k: v for k, v in self.headers.items() if k.lower() not in drop}
            connection = http.client.HTTPConnection("127.0.0.1", server.upstream, timeout=30)  # type: ignore[attr-defined]
            try:
                connection.request(self.command, self.path[len(prefix) :], body=body, headers=headers)
                reply = connection.getresponse()
                data = reply.read()
                self.send_response(reply.status)
                for name, value in reply.getheaders():
                    if name.lower() not in HOP_BY_HOP | {"content-length"}:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            finally:
                connection.close()

        do_GET = do_POST = forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("pass_host", [False, True], ids=["nginx", "caddy"])
def test_the_page_works_behind_a_reverse_proxy_under_a_path(lab, serve, visit, pass_host):
    """The browser's Origin is the proxy's address, not the monitor's: OELEO_MONITOR_URL says it."""
    failing_books(lab)
    proxy = path_proxy("/oeleo", pass_host)
    public = f"http://127.0.0.1:{proxy.server_address[1]}/oeleo/"
    try:
        served = serve(lab, "--from", "src", env={"OELEO_MONITOR_URL": public})
        proxy.upstream = served.port  # type: ignore[attr-defined]
        behind = Served(lab, served.proc, proxy.server_address[1])
        one = visit(behind)
        page = one.open("/oeleo/")
        expect(rows_of(page, "failure-row")).to_have_count(1)
        expect(page.locator("[data-testid=daily-bar]")).to_have_count(30)
        log_in(page)
        expect(page.get_by_test_id("login-state")).to_have_text("logged in: actions allowed")
        page.locator('[data-testid=failure-row][data-file="run-001/b.csv"] [data-action=lock]').click()
        expect(page.get_by_test_id("message")).to_contain_text("run-001/b.csv: locked")
        assert db_rows(served.db)["run-001/b.csv"]["code"] == 2
        assert all(urlsplit(url).path.startswith("/oeleo/") for url in one.requests), one.requests
    finally:
        proxy.shutdown()
        proxy.server_close()
