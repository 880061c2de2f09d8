"""The SharePoint logins that need a server of their own, done for real on loopback:

- NTLM (SharePoint Server on premises): the library's ``with_user_credentials`` through
  requests_ntlm against the fake SharePoint in Windows-authentication mode, whose handshake is
  checked by pyspnego's NTLM acceptor against a file of users and passwords
  (tests/sharepoint_server.py);
- the device code with its MSAL token cache: ``python -m oeleo.connectors.sharepoint_login``
  and ``oeleo run`` with real MSAL against a loopback HTTPS fake of the Microsoft identity
  platform (tests/identity_server.py), whose access tokens are the only ones the fake
  SharePoint takes.

Nothing here reaches the internet.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from helpers import db_rows, make_tree, run_oeleo

from oeleo.connectors.sharepoint import SharePointConnector
from oeleo.connectors.sharepoint_login import choose_login
from oeleo.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from sharepoint_server import FakeSharePoint  # noqa: E402

pytest.importorskip("requests_ntlm")

USER = "LAB\\someone"
PASSWORD = "Corr3ct horse, battery"


@pytest.fixture
def windows(tmp_path):
    """The fake SharePoint Server, with one domain user in the acceptor's users file."""
    users = tmp_path / "ntlm-users.txt"
    users.write_text(f"LAB:someone:{PASSWORD}\n", encoding="utf-8")
    fake = FakeSharePoint(ntlm_users=users).start()
    yield fake
    fake.stop()


def ntlm_connector(server: FakeSharePoint, password: str = PASSWORD, **options) -> SharePointConnector:
    login = choose_login("ntlm", username=USER, password=password)
    return SharePointConnector(server.url, folder="instr1", login=login, **options)


def ntlm_env(server: FakeSharePoint, src: Path, tmp_path: Path, password: str = PASSWORD) -> dict:
    return {
        "OELEO_CONNECTOR": "sharepoint",
        "OELEO_BASE_DIR_FROM": str(src),
        "OELEO_BASE_DIR_TO": "instrument 1",
        "OELEO_SHAREPOINT_URL": server.origin,  # SharePoint Server over plain http, as on premises
        "OELEO_SHAREPOINT_SITENAME": "lab",
        "OELEO_SHAREPOINT_AUTH": "ntlm",
        "OELEO_SHAREPOINT_USERNAME": USER,
        "OELEO_PASSWORD": password,
        "OELEO_DB_NAME": str(tmp_path / "books.db"),
        "OELEO_LOG_DIR": str(tmp_path / "logs"),
        "OELEO_SUBDIRS": "true",
    }


# -- NTLM ------------------------------------------------------------------------------------------


def test_the_ntlm_login_does_the_handshake_once_per_connection_and_uploads(windows, tmp_path):
    conn = ntlm_connector(windows)
    conn.connect()
    conn.prepare()
    src = tmp_path / "a.csv"
    src.write_bytes(b"t;v\n1;2\n")

    conn.put(src, "run 1/a.csv")

    assert windows.read("instr1/run 1/a.csv") == b"t;v\n1;2\n"
    assert windows.ntlm_logins == [USER]  # one connection, one handshake
    legs = [h.get("Authorization", "") for m, _, _, h in windows.log if m != "HEAD"]
    # anonymous, negotiate (type 1), authenticate (type 3), then the connection is signed in
    assert legs[0] == ""
    assert legs[1].startswith("NTLM ") and legs[2].startswith("NTLM ")
    assert legs[1] != legs[2]
    assert all(leg == "" for leg in legs[3:]) and len(legs) > 4
    assert windows.ntlm_refused == 0


def test_each_copying_thread_signs_in_on_its_own_connection(windows, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    conn = ntlm_connector(windows)
    conn.connect()
    conn.prepare()
    make_tree(tmp_path / "src", {f"f{i}.csv": b"x" * i for i in range(12)})

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: conn.put(tmp_path / "src" / f"f{i}.csv", f"f{i}.csv"), range(12)))

    assert len(windows.names()) == 12
    assert 1 < len(windows.ntlm_logins) <= 5  # a handshake per connection, not per request
    assert set(windows.ntlm_logins) == {USER}


def test_oeleo_run_with_the_ntlm_login_copies_and_books(windows, tmp_path):
    src = tmp_path / "data"
    make_tree(src, {"a.csv": b"a;b\n", "night 1/frame.fits": os.urandom(3 * 1024 * 1024 + 5)})

    result = run_oeleo("run", cwd=tmp_path, env=ntlm_env(windows, src, tmp_path))

    assert result.returncode == 0, result.stderr
    assert windows.names() == {
        "instrument 1/a.csv": 4,
        "instrument 1/night 1/frame.fits": 3 * 1024 * 1024 + 5,
    }
    assert windows.read("instrument 1/night 1/frame.fits") == (src / "night 1/frame.fits").read_bytes()
    rows = db_rows(tmp_path / "books.db")
    assert set(rows) == {"a.csv", "night 1/frame.fits"}
    assert rows["a.csv"]["external_name"].endswith("/sites/lab/Shared Documents/instrument 1/a.csv")
    assert windows.ntlm_logins and set(windows.ntlm_logins) == {USER}


def test_a_wrong_ntlm_password_is_one_line_exit_2_and_nothing_booked(windows, tmp_path):
    src = tmp_path / "data"
    make_tree(src, {"a.csv": b"a"})
    wrong = "Wr0ng-pa55word"

    result = run_oeleo("run", cwd=tmp_path, env=ntlm_env(windows, src, tmp_path, password=wrong))

    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if "refused" in line]
    assert lines == [
        "oeleo: SharePoint Server refused LAB\\someone: wrong user name or password "
        "(OELEO_SHAREPOINT_USERNAME as DOMAIN\\user, OELEO_PASSWORD)"
    ]
    assert "Traceback" not in result.stderr
    assert windows.ntlm_refused >= 1 and windows.ntlm_logins == []
    assert windows.names() == {}
    books = tmp_path / "books.db"
    assert not books.exists() or not db_rows(books)
    logs = (
        "".join(p.read_text(errors="replace") for p in (tmp_path / "logs").glob("*"))
        if (tmp_path / "logs").is_dir()
        else ""
    )
    for text in (result.stdout, result.stderr, logs):
        assert wrong not in text and PASSWORD not in text


def test_a_signed_in_user_without_permission_is_told_so(windows, tmp_path):
    conn = ntlm_connector(windows)
    conn.connect()
    windows.fail(
        "POST", r"Folders/Add", status=401, times=3, code="-2147024891, System.UnauthorizedAccessException"
    )

    with pytest.raises(ConfigError, match=r"refused LAB\\someone access to .* needs permission"):
        conn.prepare()


def test_the_ntlm_login_without_requests_ntlm_says_which_package_to_install(windows, monkeypatch):
    monkeypatch.setitem(sys.modules, "requests_ntlm", None)  # import requests_ntlm now fails
    conn = ntlm_connector(windows)

    with pytest.raises(ConfigError, match="needs the requests_ntlm package: pip install requests_ntlm"):
        conn.connect()
    assert windows.ntlm_logins == []
