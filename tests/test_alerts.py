"""Alerts (oeleo.alerts): real ``oeleo run`` and ``oeleo schedule`` passes, a real SMTP server
on 127.0.0.1 (aiosmtpd, with and without a login) and a webhook receiver on 127.0.0.1 that
answers, answers 500, or does not answer. The decisions (rate limit, quiet hours, recovery)
are also tested directly with a clock that the test sets."""

from __future__ import annotations

import datetime
import email
import email.policy
import json
import os
import signal
import socket
import sqlite3
import ssl
import threading
import time
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from helpers import clean_env, db_env, db_rows, make_tree, pg_query, run_oeleo, start_oeleo, wait_for
from identity_server import make_certificates
from servers import free_port

from oeleo.alerts import (
    FAILED_FILES,
    MAIL,
    QUIET,
    RECOVERED,
    UNREACHABLE,
    WEBHOOK,
    Alerts,
    Channel,
    Context,
    KindState,
    Message,
    PassOutcome,
    Policy,
    SendError,
    decide,
    webhook_payload,
)

pytest.importorskip("paramiko")  # the unreachable SSH destination
# The login over plain loopback (auth_require_tls=False): aiosmtpd warns about it, rightly.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

HOST = "127.0.0.1"
HOOK_SECRET = "T0001/B0002/hook-secret-path-4f1c"
SMTP_USER = "oeleo-alerts"
SMTP_PASSWORD = "smtp-secret-pw-8d2e"
SECRETS = {
    "OELEO_SMTP_PASSWORD": SMTP_PASSWORD,
    "OELEO_DB_PASSWORD": "db-secret-pw-19ab",
    "OELEO_PASSWORD": "ssh-secret-pw-77c0",
    "OELEO_MONITOR_TOKEN": "monitor-secret-token-5e6f7a8b",
}


# -- the receivers ------------------------------------------------------------------------
class Receiver:
    """A webhook receiver on 127.0.0.1 that keeps every POST; ``mode``: "ok" answers 200,
    "fail" answers 500, "hang" answers only when the test ends."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests: List[Dict[str, Any]] = []  # every POST, answered or not
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                mode = receiver.mode
                receiver.requests.append(
                    {"path": self.path, "mode": mode, "body": body.decode("utf-8"), "json": json.loads(body)}
                )
                if mode == "hang":
                    receiver.release.wait(30)
                    return
                self.send_response(500 if mode == "fail" else 200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server.server_address[1]}/services/{HOOK_SECRET}"

    def delivered(self) -> List[Dict[str, Any]]:
        """The documents of the POSTs that were answered 200."""
        return [r["json"] for r in self.requests if r["mode"] == "ok"]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    """The handler of the aiosmtpd server: keeps each mail it accepts, and the logins."""

    def __init__(self) -> None:
        self.mails: List[EmailMessage] = []
        self.envelopes: List[Any] = []
        self.logins: List[tuple] = []
        self.password = SMTP_PASSWORD

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.envelopes.append(envelope)
        mail = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.mails.append(mail)  # type: ignore[arg-type]
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        login, password = data.login.decode(), data.password.decode()
        self.logins.append((login, password))
        # handled=False: the server answers 235 or 535 itself
        return AuthResult(success=login == SMTP_USER and password == self.password, handled=False)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def _smtp(auth: bool) -> Iterator[Any]:
    box = Mailbox()
    options: Dict[str, Any] = {}
    if auth:
        options = {"authenticator": box.authenticate, "auth_require_tls": False, "auth_required": True}
    controller = Controller(box, hostname=HOST, port=free_port(), **options)
    controller.start()
    box.port = controller.port  # type: ignore[attr-defined]
    yield box
    controller.stop()


@pytest.fixture
def tls_mailbox(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mailbox]:
    """An SMTP server with a login over TLS: STARTTLS on a plain port, or TLS from the first
    byte (``ssl``), as ``request.param`` says; ``box.ca`` is the CA file that trusts it."""
    ca, cert, key = make_certificates(tmp_path)  # the same CA-signed 127.0.0.1 as the identity fake's
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    box = Mailbox()
    options: Dict[str, Any] = {"authenticator": box.authenticate, "auth_required": True}
    if request.param == "starttls":
        options.update(tls_context=context, require_starttls=True)
    else:
        options.update(ssl_context=context, auth_require_tls=False)  # the whole session is TLS
    controller = Controller(box, hostname=HOST, port=free_port(), **options)
    controller.start()
    box.port = controller.port  # type: ignore[attr-defined]
    box.ca = ca  # type: ignore[attr-defined]
    yield box
    controller.stop()


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    yield from _smtp(auth=False)


@pytest.fixture
def auth_mailbox() -> Iterator[Mailbox]:
    yield from _smtp(auth=True)


# -- real runs --------------------------------------------------------------------------------
def setup(tmp_path: Path, **env: str) -> Dict[str, str]:
    """A source with three files, a destination where ``b.csv`` is blocked by a folder of that
    name (so that it fails every pass), and the settings for them."""
    make_tree(tmp_path / "src", {"a.csv": "t,v\n1,2\n", "b.csv": "t,v\n3,4\n", "run-1/c.csv": "t,v\n5,6\n"})
    make_tree(tmp_path / "dst", {"b.csv/keep.txt": "a folder in the way"})
    values = {
        "OELEO_BASE_DIR_FROM": str(tmp_path / "src"),
        "OELEO_BASE_DIR_TO": str(tmp_path / "dst"),
        "OELEO_DB_NAME": str(tmp_path / "books.db"),
        "OELEO_LOG_DIR": str(tmp_path / "logs"),
        **SECRETS,
    }
    values.update(env)
    return values


def hooked(receiver: Receiver, **env: str) -> Dict[str, str]:
    return {"OELEO_ALERT_WEBHOOK": receiver.url, **env}


def mailed(box: Mailbox, **env: str) -> Dict[str, str]:
    return {
        "OELEO_ALERT_EMAIL": "lab@example.org, night-shift@example.org",
        "OELEO_SMTP_HOST": HOST,
        "OELEO_SMTP_PORT": str(box.port),  # type: ignore[attr-defined]
        "OELEO_SMTP_SECURITY": "none",
        "OELEO_SMTP_FROM": "oeleo@instrument-7.example.org",
        **env,
    }


def oeleo(tmp_path: Path, env: Dict[str, str], *args: str) -> Any:
    return run_oeleo(*(args or ("run",)), cwd=tmp_path, env=env)


def alert_rows(db: Path) -> Dict[str, dict]:
    connection = sqlite3.connect(str(db))
    try:
        connection.row_factory = sqlite3.Row
        return {row["kind"]: dict(row) for row in connection.execute("SELECT * FROM oeleo_alerts")}
    finally:
        connection.close()


def move_back(db: Path, column: str, kind: str, hours: float) -> None:
    """Move a stored time back, as if that much time had passed."""
    connection = sqlite3.connect(str(db))
    try:
        (value,) = connection.execute(f"SELECT {column} FROM oeleo_alerts WHERE kind = ?", (kind,)).fetchone()
        moved = datetime.datetime.fromisoformat(value) - datetime.timedelta(hours=hours)
        connection.execute(f"UPDATE oeleo_alerts SET {column} = ? WHERE kind = ?", (str(moved), kind))
        connection.commit()
    finally:
        connection.close()


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for name, secret in [*SECRETS.items(), ("OELEO_ALERT_WEBHOOK", HOOK_SECRET)]:
            assert secret not in text, f"{name}'s value in {text[:200]!r}"


def warnings_in(stderr: str) -> List[str]:
    """The lines that say an alert could not be sent (or its state kept)."""
    return [line for line in stderr.splitlines() if "not sent" in line or line.startswith("alerts:")]


def test_failed_files_alert_by_webhook_and_mail_says_which_pc_folder_and_files_and_recovers_once(
    tmp_path: Path, receiver: Receiver, mailbox: Mailbox
) -> None:
    env = setup(tmp_path, **hooked(receiver), **mailed(mailbox))

    first = oeleo(tmp_path, env)
    assert first.returncode == 1, first.stderr
    [alert] = receiver.delivered()
    assert alert["kind"] == FAILED_FILES
    assert alert["host"] == socket.gethostname()
    assert alert["folder"] == str(tmp_path / "src")
    assert alert["origin"].endswith(str(tmp_path / "src"))
    assert alert["destination"] == str(tmp_path / "dst")
    assert [f["name"] for f in alert["failed"]] == ["b.csv"] and alert["failed_count"] == 1
    assert alert["failed"][0]["reason"]  # why it failed, as the books say it
    assert alert["failed"][0]["reason"] in alert["text"]
    assert "oeleo status" in alert["text"] and "oeleo serve" in alert["text"]
    assert str(tmp_path / "logs" / "oeleo.log") in alert["text"]
    assert alert["oeleo"]
    [mail] = mailbox.mails
    assert mail["Subject"] == f"oeleo on {socket.gethostname()}: 1 file failed in {tmp_path / 'src'}"
    assert mail["To"] == "lab@example.org, night-shift@example.org"
    assert mail["From"] == "oeleo@instrument-7.example.org"
    assert mailbox.envelopes[0].rcpt_tos == ["lab@example.org", "night-shift@example.org"]
    body = mail.get_content()
    assert "b.csv: " + alert["failed"][0]["reason"] in body and f"PC: {socket.gethostname()}" in body

    again = oeleo(tmp_path, env)  # the same file fails again: nothing new to say
    assert again.returncode == 1
    assert len(receiver.delivered()) == 1 and len(mailbox.mails) == 1

    (tmp_path / "dst" / "b.csv" / "keep.txt").unlink()
    (tmp_path / "dst" / "b.csv").rmdir()
    fixed = oeleo(tmp_path, env)
    assert fixed.returncode == 0, fixed.stderr
    recovery = receiver.delivered()[-1]
    assert (recovery["kind"], recovery["recovers"]) == (RECOVERED, FAILED_FILES)
    assert "no failed files" in recovery["text"]
    assert len(mailbox.mails) == 2 and "files copy again" in mailbox.mails[1]["Subject"]

    idle = oeleo(tmp_path, env)
    assert idle.returncode == 0
    assert len(receiver.delivered()) == 2 and len(mailbox.mails) == 2, "a recovery is sent once"

    rows = alert_rows(tmp_path / "books.db")
    assert not rows[FAILED_FILES]["raised"] and rows[FAILED_FILES]["owed"] == ""
    texts = [r["body"] for r in receiver.requests] + [m.as_string() for m in mailbox.mails]
    texts += [first.stderr, again.stderr, fixed.stderr, json.dumps(rows, default=str)]
    texts.append((tmp_path / "logs" / "oeleo.log").read_text())
    assert_no_secret(*texts)


def test_more_than_twenty_failed_files_are_named_twenty_and_counted(
    tmp_path: Path, receiver: Receiver
) -> None:
    env = setup(tmp_path, **hooked(receiver))
    names = [f"batch/f{i:02d}.csv" for i in range(25)]
    make_tree(tmp_path / "src", {name: "x" for name in names})
    make_tree(tmp_path / "dst", {f"{name}/in-the-way": "" for name in names})

    assert oeleo(tmp_path, env).returncode == 1
    [alert] = receiver.delivered()
    assert alert["failed_count"] == 26 and len(alert["failed"]) == 20
    assert "and 6 more" in alert["text"]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_hostile_file_names_arrive_readable_by_webhook_and_mail(
    tmp_path: Path, receiver: Receiver, mailbox: Mailbox
) -> None:
    """Names an instrument can write: not UTF-8, a newline, HTML, quotes, non-ASCII, all failing."""
    env = setup(tmp_path, **hooked(receiver), **mailed(mailbox))
    names = [b"\xff\xfe.csv", b"new\nline.csv", b'<b x="1">it\'s\\.csv', "m\u00e5ling \u65e5.csv".encode()]
    source, blocked = os.fsencode(tmp_path / "src"), os.fsencode(tmp_path / "dst")
    for name in names:
        with open(source + b"/" + name, "wb") as out:
            out.write(b"t,v\n")
        os.makedirs(blocked + b"/" + name + b"/in-the-way")

    run = oeleo(tmp_path, env)
    assert run.returncode == 1, run.stderr
    assert warnings_in(run.stderr) == [], run.stderr
    [request] = [r for r in receiver.requests if r["mode"] == "ok"]
    alert = json.loads(request["body"])
    for text in _strings(alert):
        text.encode("utf-8")  # no lone surrogate: every JSON parser reads it
    shown = sorted(f["name"] for f in alert["failed"])
    assert shown == sorted(
        ["\\xff\\xfe.csv", "new\\nline.csv", '<b x="1">it\'s\\.csv', "m\u00e5ling \u65e5.csv", "b.csv"]
    )
    assert all("\n" not in line for line in alert["details"])
    [mail] = mailbox.mails
    assert not mail.defects and mail["Subject"] == alert["title"]
    body = mail.get_content()
    assert "  \\xff\\xfe.csv: cannot commit" in body and "  new\\nline.csv: cannot commit" in body
    assert "m\u00e5ling \u65e5.csv" in body and '<b x="1">it\'s\\.csv' in body


def test_a_new_failure_within_the_hour_waits_until_the_last_alert_is_an_hour_old(
    tmp_path: Path, receiver: Receiver
) -> None:
    env = setup(tmp_path, **hooked(receiver))
    assert oeleo(tmp_path, env).returncode == 1
    assert len(receiver.delivered()) == 1

    make_tree(tmp_path / "src", {"d.csv": "t,v\n7,8\n"})
    make_tree(tmp_path / "dst", {"d.csv/in-the-way": ""})
    assert oeleo(tmp_path, env).returncode == 1
    assert len(receiver.delivered()) == 1, "one alert of a kind per hour"

    move_back(tmp_path / "books.db", "last_sent", FAILED_FILES, hours=1.01)
    assert oeleo(tmp_path, env).returncode == 1
    assert len(receiver.delivered()) == 2
    assert [f["name"] for f in receiver.delivered()[1]["failed"]] == ["b.csv", "d.csv"]


def test_a_webhook_that_answers_500_is_one_warning_and_the_alert_goes_at_the_next_pass(
    tmp_path: Path, receiver: Receiver
) -> None:
    env = setup(tmp_path, **hooked(receiver))
    receiver.mode = "fail"
    first = oeleo(tmp_path, env)
    assert first.returncode == 1, "the failed file's status, as without alerts"
    [line] = warnings_in(first.stderr)
    assert f"not sent by webhook at {HOST}: it answered HTTP 500" in line
    assert "tried again at the next pass" in line
    assert "Traceback" not in first.stderr
    rows = db_rows(tmp_path / "books.db")
    assert rows["a.csv"]["code"] == 1 and rows["run-1/c.csv"]["code"] == 1, "the copies are booked"
    assert len(receiver.requests) == 1 and not receiver.delivered()
    assert alert_rows(tmp_path / "books.db")[FAILED_FILES]["owed"] == WEBHOOK

    receiver.mode = "ok"
    second = oeleo(tmp_path, env)
    assert second.returncode == 1 and not warnings_in(second.stderr)
    [alert] = receiver.delivered()
    assert alert["kind"] == FAILED_FILES and alert["failed"][0]["name"] == "b.csv"
    assert oeleo(tmp_path, env).returncode == 1
    assert len(receiver.requests) == 2, "delivered once, not again"
    assert_no_secret(first.stderr, second.stderr)


def test_a_webhook_that_does_not_answer_holds_the_pass_five_seconds_at_most(
    tmp_path: Path, receiver: Receiver
) -> None:
    env = setup(tmp_path, **hooked(receiver))
    receiver.mode = "hang"
    started = time.monotonic()
    first = oeleo(tmp_path, env)
    took = time.monotonic() - started
    assert first.returncode == 1
    assert 5 <= took < 15, took
    [line] = warnings_in(first.stderr)
    assert f"not sent by webhook at {HOST}: no answer within 5 s" in line
    assert db_rows(tmp_path / "books.db")["a.csv"]["code"] == 1

    receiver.mode = "ok"
    assert oeleo(tmp_path, env).returncode == 1
    assert [a["kind"] for a in receiver.delivered()] == [FAILED_FILES]


def test_a_rejected_smtp_password_is_one_warning_the_copies_booked_and_the_mail_goes_once_it_is_fixed(
    tmp_path: Path, auth_mailbox: Mailbox
) -> None:
    env = setup(tmp_path, **mailed(auth_mailbox, OELEO_SMTP_USERNAME=SMTP_USER))
    env["OELEO_SMTP_PASSWORD"] = "not-the-password-31x"
    first = oeleo(tmp_path, env)
    assert first.returncode == 1, "the failed file's status, as without alerts"
    [line] = warnings_in(first.stderr)
    assert f"not sent by mail through {HOST}:{auth_mailbox.port}" in line  # type: ignore[attr-defined]
    assert f"the server refused the login of '{SMTP_USER}' (535)" in line
    assert "OELEO_SMTP_PASSWORD" in line and "not-the-password-31x" not in first.stderr
    assert auth_mailbox.logins and not auth_mailbox.mails  # smtplib tries AUTH PLAIN, then LOGIN
    assert set(auth_mailbox.logins) == {(SMTP_USER, "not-the-password-31x")}
    rows = db_rows(tmp_path / "books.db")
    assert rows["a.csv"]["code"] == 1 and rows["run-1/c.csv"]["code"] == 1

    env["OELEO_SMTP_PASSWORD"] = SMTP_PASSWORD
    second = oeleo(tmp_path, env)
    assert second.returncode == 1 and not warnings_in(second.stderr)
    [mail] = auth_mailbox.mails
    assert "1 file failed" in mail["Subject"] and auth_mailbox.logins[-1] == (SMTP_USER, SMTP_PASSWORD)
    assert_no_secret(mail.as_string(), second.stderr)


@pytest.mark.parametrize("tls_mailbox", ["starttls", "ssl"], indirect=True)
def test_mail_over_starttls_or_ssl_with_a_login_arrives_and_an_untrusted_server_is_one_warning(
    tmp_path: Path, tls_mailbox: Mailbox, request: pytest.FixtureRequest
) -> None:
    security = request.node.callspec.params["tls_mailbox"]
    env = setup(tmp_path, **mailed(tls_mailbox, OELEO_SMTP_SECURITY=security, OELEO_SMTP_USERNAME=SMTP_USER))
    untrusted = oeleo(tmp_path, env)  # this system's CA list does not know the test CA
    assert untrusted.returncode == 1
    [line] = warnings_in(untrusted.stderr)
    assert "TLS failed (CERTIFICATE_VERIFY_FAILED)" in line and "OELEO_SMTP_SECURITY" in line
    assert not tls_mailbox.mails and not tls_mailbox.logins, "no password sent to a server not trusted"

    env["SSL_CERT_FILE"] = str(tls_mailbox.ca)  # type: ignore[attr-defined]
    trusted = oeleo(tmp_path, env)
    assert trusted.returncode == 1 and not warnings_in(trusted.stderr), trusted.stderr
    [mail] = tls_mailbox.mails
    assert "1 file failed" in mail["Subject"]
    assert tls_mailbox.logins == [(SMTP_USER, SMTP_PASSWORD)]


def test_an_unreachable_destination_alerts_after_three_runs_and_recovers_when_a_pass_reaches_it(
    tmp_path: Path, receiver: Receiver, mailbox: Mailbox
) -> None:
    env = setup(tmp_path, **hooked(receiver), **mailed(mailbox))
    closed = free_port()  # nothing listens there
    ssh = dict(
        env,
        OELEO_CONNECTOR="ssh",
        OELEO_EXTERNAL_HOST=HOST,
        OELEO_EXTERNAL_PORT=str(closed),
        OELEO_USERNAME="nobody",
        OELEO_BASE_DIR_TO="/data",
    )
    for run in (1, 2):
        done = oeleo(tmp_path, ssh)
        assert done.returncode == 2 and "refused the connection" in done.stderr
        assert not receiver.requests, f"run {run}: not yet {run} of 3"
    third = oeleo(tmp_path, ssh)
    assert third.returncode == 2, "the run's own status, as without alerts"
    [alert] = receiver.delivered()
    assert alert["kind"] == UNREACHABLE
    assert "3 passes in a row failed" in alert["title"]
    assert f"{HOST}:{closed} refused the connection" in alert["message"]
    assert mailbox.mails[0]["Subject"] == alert["title"]
    assert oeleo(tmp_path, ssh).returncode == 2
    assert len(receiver.delivered()) == 1, "said once while it lasts"
    assert alert_rows(tmp_path / "books.db")[UNREACHABLE]["streak"] == 4

    env["OELEO_BASE_DIR_TO"] = str(tmp_path / "elsewhere")  # a destination that works
    assert oeleo(tmp_path, env).returncode == 0
    recovery = receiver.delivered()[-1]
    assert (recovery["kind"], recovery["recovers"]) == (RECOVERED, UNREACHABLE)
    assert "after 4 that did not" in recovery["message"]
    assert len(mailbox.mails) == 2
    assert alert_rows(tmp_path / "books.db")[UNREACHABLE]["streak"] == 0
    assert_no_secret(*[r["body"] for r in receiver.requests], *[m.as_string() for m in mailbox.mails])


def test_pcs_sharing_postgresql_books_each_alert_for_their_own_folder(
    tmp_path: Path, receiver: Receiver, postgres_db: Dict[str, Any]
) -> None:
    books = db_env(postgres_db)
    one = setup(tmp_path / "one", **hooked(receiver), **books)
    two = setup(tmp_path / "two", **hooked(receiver), **books)
    assert oeleo(tmp_path, one).returncode == 1
    assert oeleo(tmp_path, two).returncode == 1
    assert oeleo(tmp_path, one).returncode == 1  # its alert went out already
    assert sorted(a["folder"] for a in receiver.delivered()) == [
        str(tmp_path / n / "src") for n in ("one", "two")
    ]

    rows = pg_query(postgres_db, "SELECT origin, kind, raised, owed FROM oeleo_alerts ORDER BY origin, kind")
    assert [(r["origin"].rsplit("/", 2)[-2], r["kind"], r["raised"]) for r in rows] == [
        (name, kind, kind == FAILED_FILES)
        for name in ("one", "two")
        for kind in (FAILED_FILES, QUIET, UNREACHABLE)
    ]
    assert all(r["owed"] == "" for r in rows)
    assert_no_secret(*[r["body"] for r in receiver.requests])
    assert all(postgres_db["password"] not in r["body"] for r in receiver.requests)


def test_a_scheduler_whose_source_folder_went_away_alerts_and_recovers(
    tmp_path: Path, receiver: Receiver
) -> None:
    env = setup(tmp_path, **hooked(receiver), OELEO_ALERT_AFTER_FAILED_PASSES="2")
    (tmp_path / "dst" / "b.csv" / "keep.txt").unlink()
    (tmp_path / "dst" / "b.csv").rmdir()
    src, gone = tmp_path / "src", tmp_path / "src-gone"
    proc = start_oeleo(
        ["schedule", "--every", "0.3s", "--max-runs", "100"], tmp_path, tmp_path / "err.txt", clean_env(env)
    )
    try:
        copied = [tmp_path / "dst" / name for name in ("a.csv", "b.csv", "run-1/c.csv")]
        wait_for(lambda: all(path.exists() for path in copied), 30, "the first pass's copies")
        src.rename(gone)  # as a network share drops
        wait_for(lambda: receiver.delivered(), 30, "the alert")
        (gone / "late.csv").write_text("t,v\n9,9\n")
        gone.rename(src)
        wait_for(lambda: len(receiver.delivered()) == 2, 30, "the recovery")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    alert, recovery = receiver.delivered()
    assert alert["kind"] == UNREACHABLE and "does not exist" in alert["message"]
    assert (recovery["kind"], recovery["recovers"]) == (RECOVERED, UNREACHABLE)
    assert (tmp_path / "dst" / "late.csv").exists()


def test_quiet_hours_alert_once_when_nothing_arrived_and_recover_when_files_arrive(
    tmp_path: Path, receiver: Receiver
) -> None:
    env = setup(tmp_path, **hooked(receiver), OELEO_ALERT_QUIET_HOURS="6")
    (tmp_path / "dst" / "b.csv" / "keep.txt").unlink()
    (tmp_path / "dst" / "b.csv").rmdir()
    assert oeleo(tmp_path, env).returncode == 0  # copies: the quiet clock starts
    assert oeleo(tmp_path, env).returncode == 0
    assert not receiver.requests, "not six hours yet"

    move_back(tmp_path / "books.db", "since", QUIET, hours=6.5)
    assert oeleo(tmp_path, env).returncode == 0
    [alert] = receiver.delivered()
    assert alert["kind"] == QUIET and "6.5 hours" in alert["title"]
    assert "OELEO_ALERT_QUIET_HOURS=6" in alert["message"]
    assert oeleo(tmp_path, env).returncode == 0
    assert len(receiver.delivered()) == 1

    (tmp_path / "src" / "new.csv").write_text("t,v\n1,1\n")
    assert oeleo(tmp_path, env).returncode == 0
    recovery = receiver.delivered()[-1]
    assert (recovery["kind"], recovery["recovers"]) == (RECOVERED, QUIET)
    assert "copied 1 file" in recovery["message"]


def test_a_scheduler_with_nothing_new_sends_the_quiet_alert_and_its_recovery(
    tmp_path: Path, receiver: Receiver
) -> None:
    env = setup(tmp_path, **hooked(receiver), OELEO_ALERT_QUIET_HOURS="2")
    (tmp_path / "dst" / "b.csv" / "keep.txt").unlink()
    (tmp_path / "dst" / "b.csv").rmdir()
    assert oeleo(tmp_path, env).returncode == 0
    move_back(tmp_path / "books.db", "since", QUIET, hours=3)
    proc = start_oeleo(
        ["schedule", "--every", "0.3s", "--max-runs", "100"], tmp_path, tmp_path / "err.txt", clean_env(env)
    )
    try:
        wait_for(lambda: receiver.delivered(), 30, "the quiet alert")
        (tmp_path / "src" / "late.csv").write_text("t,v\n2,2\n")
        wait_for(lambda: len(receiver.delivered()) == 2, 30, "the recovery")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert [a["kind"] for a in receiver.delivered()] == [QUIET, RECOVERED]
    assert receiver.delivered()[1]["recovers"] == QUIET


def test_a_dry_run_never_alerts(tmp_path: Path, receiver: Receiver) -> None:
    env = setup(tmp_path, **hooked(receiver))
    assert oeleo(tmp_path, env).returncode == 1
    assert oeleo(tmp_path, env, "run", "--dry-run").returncode == 0
    move_back(tmp_path / "books.db", "last_sent", FAILED_FILES, hours=2)
    make_tree(tmp_path / "src", {"d.csv": "x"})
    make_tree(tmp_path / "dst", {"d.csv/in-the-way": ""})
    assert oeleo(tmp_path, env, "run", "--dry-run").returncode == 0
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    "settings, says",
    [
        (
            {"OELEO_ALERT_WEBHOOK": "ftp://example.org/x"},
            "OELEO_ALERT_WEBHOOK: expected an http:// or https:// URL",
        ),
        (
            {"OELEO_ALERT_EMAIL": "lab@example.org"},
            "OELEO_ALERT_EMAIL is set but OELEO_SMTP_HOST is not: the server that sends the mail",
        ),
        (
            {"OELEO_ALERT_EMAIL": "lab at example", "OELEO_SMTP_HOST": HOST},
            "OELEO_ALERT_EMAIL: 'lab at example' is not a mail address",
        ),
        (
            {"OELEO_ALERT_EMAIL": "lab@example.org", "OELEO_SMTP_HOST": HOST, "OELEO_SMTP_USERNAME": "u"},
            "OELEO_SMTP_USERNAME is set but OELEO_SMTP_PASSWORD is not",
        ),
    ],
)
def test_alert_settings_that_cannot_work_are_one_line_and_status_2(
    tmp_path: Path, settings: Dict[str, str], says: str
) -> None:
    env = setup(tmp_path, **settings)
    if "OELEO_SMTP_USERNAME" in settings:
        del env["OELEO_SMTP_PASSWORD"]
    done = oeleo(tmp_path, env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"oeleo: {says}"]
    assert not (tmp_path / "dst" / "a.csv").exists()


# -- the decisions, with the clock set by the test ---------------------------------------------
T0 = datetime.datetime(2026, 12, 1, 22, 0, 0)
CONTEXT = Context(host="instrument-7", origin="instrument-7:/data", folder="/data", hints=("oeleo status",))
CHANNELS = (WEBHOOK, MAIL)
FAILED = PassOutcome(failed=(("a.csv", "permission denied"),))
FINE = PassOutcome(copied=1)
DOWN = PassOutcome(error="127.0.0.1:1 refused the connection", reached=False)
IDLE = PassOutcome(reached=False)


def step(
    states: Dict[str, KindState], outcome: PassOutcome, minutes: float, **policy: Any
) -> Dict[str, KindState]:
    now = T0 + datetime.timedelta(minutes=minutes)
    return decide(states, outcome, Policy(**policy), CONTEXT, CHANNELS, now)


def sent(states: Dict[str, KindState], kind: str) -> Optional[Message]:
    """The message owed for ``kind``, taken as delivered to every channel it was owed to."""
    state = states[kind]
    if not state.owes():
        return None
    assert state.message is not None
    message = Message.from_json(state.message)
    reached = state.reached + (state.owed if message.kind != RECOVERED else ())
    states[kind] = KindState(**{**state.__dict__, "owed": (), "reached": reached, "message": None})
    return message


def test_one_alert_of_a_kind_per_hour_and_its_recovery_is_not_held_back() -> None:
    states = step({}, FAILED, 0)
    assert sent(states, FAILED_FILES).kind == FAILED_FILES  # type: ignore[union-attr]
    states = step(states, FINE, 5)
    recovery = sent(states, FAILED_FILES)
    assert recovery is not None and recovery.recovers == FAILED_FILES, "five minutes later: not rate-limited"
    states = step(states, FAILED, 10)
    assert sent(states, FAILED_FILES) is None, "a second alert within the hour"
    states = step(states, FINE, 15)
    assert sent(states, FAILED_FILES) is None, "no recovery of an alert that was not sent"
    states = step(states, FAILED, 59)
    assert sent(states, FAILED_FILES) is None
    states = step(states, FAILED, 61)
    assert sent(states, FAILED_FILES) is not None, "an hour after the last alert"


def test_an_unreachable_alert_needs_n_failed_passes_in_a_row_and_an_idle_pass_is_no_sign() -> None:
    states = step({}, DOWN, 0, after_failed_passes=3)
    states = step(states, DOWN, 5, after_failed_passes=3)
    states = step(states, IDLE, 7, after_failed_passes=3)  # did not contact the destination
    assert states[UNREACHABLE].streak == 2 and sent(states, UNREACHABLE) is None
    states = step(states, DOWN, 10, after_failed_passes=3)
    alert = sent(states, UNREACHABLE)
    assert alert is not None and "(since 2026-12-01 22:00)" in alert.summary
    states = step(states, IDLE, 12, after_failed_passes=3)
    assert states[UNREACHABLE].raised, "an idle pass does not say the destination is back"
    states = step(states, FINE, 15, after_failed_passes=3)
    recovery = sent(states, UNREACHABLE)
    assert recovery is not None and "after 3 that did not" in recovery.summary
    assert states[UNREACHABLE].streak == 0


def test_the_quiet_clock_starts_at_the_first_pass_and_restarts_with_each_arrival() -> None:
    hours = 60.0
    states = step({}, IDLE, 0, quiet_hours=6)
    states = step(states, IDLE, 6 * hours - 1, quiet_hours=6)
    assert sent(states, QUIET) is None
    states = step(states, IDLE, 6 * hours, quiet_hours=6)
    assert sent(states, QUIET) is not None
    states = step(states, IDLE, 9 * hours, quiet_hours=6)
    assert sent(states, QUIET) is None, "once per quiet spell"
    states = step(states, FINE, 10 * hours, quiet_hours=6)
    assert sent(states, QUIET).recovers == QUIET  # type: ignore[union-attr]
    states = step(states, IDLE, 15 * hours, quiet_hours=6)
    assert sent(states, QUIET) is None, "five hours since the last arrival"
    states = step(states, PassOutcome(), 2 * hours, quiet_hours=0)
    assert sent(states, QUIET) is None, "0: no quiet alert"


def test_an_alert_not_delivered_stays_owed_and_its_recovery_goes_only_where_the_alert_went() -> None:
    states = step({}, FAILED, 0)
    state = states[FAILED_FILES]
    states[FAILED_FILES] = KindState(**{**state.__dict__, "owed": (MAIL,), "reached": (WEBHOOK,)})
    states = step(states, FAILED, 5)
    assert states[FAILED_FILES].owed == (MAIL,), "the mail is still owed, the webhook got it"
    states = step(states, FINE, 10)
    assert states[FAILED_FILES].owed == (WEBHOOK,)
    assert Message.from_json(states[FAILED_FILES].message or "").kind == RECOVERED

    states = step({}, FAILED, 0)
    states = step(states, FINE, 5)  # the alert reached no one: nothing to recover from
    assert not states[FAILED_FILES].owes() and not states[FAILED_FILES].raised


def test_a_stopped_pass_says_nothing_about_failed_files() -> None:
    states = step({}, FAILED, 0)
    sent(states, FAILED_FILES)
    states = step(states, PassOutcome(stopped=True), 5)
    assert states[FAILED_FILES].raised and sent(states, FAILED_FILES) is None


class Broken(Channel):
    name = WEBHOOK

    def send(self, message: Message) -> None:
        raise SendError(f"the server said 550 unknown user {SECRETS['OELEO_SMTP_PASSWORD']}")


def test_a_secret_in_a_reason_or_a_server_answer_is_masked(caplog: pytest.LogCaptureFixture) -> None:
    alerts = Alerts([Broken()], secrets=list(SECRETS.values()))
    message = Message(kind=FAILED_FILES, title="t", summary=f"login {SECRETS['OELEO_PASSWORD']} refused")
    assert SECRETS["OELEO_PASSWORD"] not in alerts._masked(message).text
    state = KindState(FAILED_FILES, raised=True, owed=(WEBHOOK,), message=message.to_json())
    with caplog.at_level("WARNING", logger="oeleo"):
        after = alerts._send(state)
    assert after.owed == (WEBHOOK,)
    assert "********" in caplog.text and SECRETS["OELEO_SMTP_PASSWORD"] not in caplog.text


class Recording(Channel):
    name = MAIL

    def __init__(self) -> None:
        self.messages: List[Message] = []

    def send(self, message: Message) -> None:
        self.messages.append(message)


def test_a_secret_in_a_reason_is_masked_in_what_is_sent_and_in_what_the_books_keep(tmp_path: Path) -> None:
    from oeleo.models import SimpleDbHandler

    books = SimpleDbHandler(tmp_path / "books.db", origin="pc:/data")
    books.initialize_db()
    mail = Recording()
    alerts = Alerts([Broken(), mail], secrets=list(SECRETS.values()))
    reason = f"login as admin:{SECRETS['OELEO_DB_PASSWORD']} refused"
    try:
        alerts.after_pass(books, PassOutcome(failed=(("a.csv", reason),)), "/data", now=T0)
    finally:
        books.close()
    [message] = mail.messages
    assert "login as admin:******** refused" in message.text
    row = alert_rows(tmp_path / "books.db")[FAILED_FILES]
    assert row["owed"] == WEBHOOK and row["reached"] == MAIL, "the webhook still owes it"
    assert "admin:********" in row["message"] and SECRETS["OELEO_DB_PASSWORD"] not in row["message"]


def test_teams_hosts_get_an_adaptive_card_and_others_get_text() -> None:
    message = Message(kind=QUIET, title="oeleo on pc: nothing new", summary="No file since 20:00.", host="pc")
    teams = webhook_payload(message, "prod-42.westeurope.logic.azure.com")
    [attachment] = teams["attachments"]
    assert teams["type"] == "message"
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["body"][0]["text"] == message.title
    assert "No file since 20:00." in card["body"][1]["text"]
    assert teams["kind"] == QUIET and "text" not in teams
    slack = webhook_payload(message, "hooks.slack.com")
    assert slack["text"].startswith(message.title) and "attachments" not in slack
    assert slack["host"] == "pc" and slack["kind"] == QUIET
