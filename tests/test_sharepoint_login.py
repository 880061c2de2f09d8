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

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import clean_env, db_rows, make_tree, run_oeleo, wait_for

from oeleo.connectors.sharepoint import SharePointConnector
from oeleo.connectors.sharepoint_login import Login, MsalToken, choose_login
from oeleo.errors import ConfigError, ConnectionLost

sys.path.insert(0, str(Path(__file__).parent))
from identity_server import IdentityServer  # noqa: E402
from sharepoint_server import FakeSharePoint  # noqa: E402

USER = "LAB\\someone"
PASSWORD = "Corr3ct horse, battery"


@pytest.fixture
def windows(tmp_path):
    """The fake SharePoint Server, with one domain user in the acceptor's users file."""
    pytest.importorskip("requests_ntlm")
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


def test_the_ntlm_login_keeps_the_connectors_timeout_not_the_librarys_ten_seconds(windows, tmp_path):
    conn = ntlm_connector(windows)
    conn.timeout = (5.0, 0.5)  # the library's NTLM provider would put (10 s) on every request
    conn.connect()
    conn.prepare()
    (tmp_path / "a.csv").write_bytes(b"a")
    windows.fail("POST", r"/Files/add\(", status=0, delay=2.0)  # a server slower than the read timeout

    with pytest.raises(ConnectionLost, match="lost the connection"):
        conn.put(tmp_path / "a.csv", "a.csv")


def test_the_ntlm_login_without_requests_ntlm_says_which_package_to_install(windows, monkeypatch):
    monkeypatch.setitem(sys.modules, "requests_ntlm", None)  # import requests_ntlm now fails
    conn = ntlm_connector(windows)

    with pytest.raises(ConfigError, match="needs the requests_ntlm package: pip install requests_ntlm"):
        conn.connect()
    assert windows.ntlm_logins == []


# -- the device code and its token cache ----------------------------------------------------------


@pytest.fixture
def cloud(tmp_path, monkeypatch):
    """SharePoint Online that takes only the access tokens the identity platform issued."""
    sharepoint = FakeSharePoint(token="never-issued").start()
    sharepoint.tokens = set()
    identity = IdentityServer(tmp_path / "tls", on_token=sharepoint.tokens.add).start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(identity.ca_path))  # MSAL trusts the test CA
    yield sharepoint, identity
    identity.stop()
    sharepoint.stop()


def device_env(sharepoint: FakeSharePoint, identity: IdentityServer, tmp_path: Path, **extra: str) -> dict:
    env = {
        "OELEO_CONNECTOR": "sharepoint",
        "OELEO_BASE_DIR_FROM": str(tmp_path / "data"),
        "OELEO_BASE_DIR_TO": "instrument 1",
        "OELEO_SHAREPOINT_URL": sharepoint.origin,
        "OELEO_SHAREPOINT_SITENAME": "lab",
        "OELEO_SHAREPOINT_AUTH": "device",
        "OELEO_SHAREPOINT_TENANT": identity.tenant,
        "OELEO_SHAREPOINT_CLIENT_ID": identity.client_id,
        "OELEO_SHAREPOINT_TOKEN_CACHE": str(cache_of(tmp_path)),
        "OELEO_SHAREPOINT_AUTHORITY": identity.authority_host,
        "OELEO_DB_NAME": str(tmp_path / "books.db"),
        "OELEO_LOG_DIR": str(tmp_path / "logs"),
        "REQUESTS_CA_BUNDLE": str(identity.ca_path),
    }
    env.update(extra)
    return env


def cache_of(tmp_path: Path) -> Path:
    return tmp_path / "config" / "oeleo" / "sharepoint-token.json"


def device_login(identity: IdentityServer, tmp_path: Path) -> Login:
    return choose_login(
        "device",
        tenant=identity.tenant,
        client_id=identity.client_id,
        token_cache=cache_of(tmp_path),
        authority=identity.authority_host,
    )


def sign_in(sharepoint: FakeSharePoint, identity: IdentityServer, tmp_path: Path) -> str:
    """The sign-in of ``python -m oeleo.connectors.sharepoint_login``, in this process, the
    person entering the code at once."""

    def enter_the_code(message: str) -> None:
        identity.approve(re.search(r"enter the code (\S+)", message).group(1))

    return MsalToken(device_login(identity, tmp_path), sharepoint.url).sign_in(enter_the_code)


def bearer_tokens(sharepoint: FakeSharePoint) -> set:
    return {h.get("Authorization") for m, _, _, h in sharepoint.log if m != "HEAD"}


def test_the_sign_in_shows_the_code_and_writes_the_cache_for_this_user_only(cloud, tmp_path):
    sharepoint, identity = cloud
    err = tmp_path / "sign-in.err"
    with open(err, "wb") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "oeleo.connectors.sharepoint_login"],
            cwd=str(tmp_path),
            env=clean_env(device_env(sharepoint, identity, tmp_path)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stream,
        )
    try:
        wait_for(lambda: "enter the code" in err.read_text(), 30, "the code on the screen")
        shown = re.search(r"open the page (\S+) and enter the code (\S+) ", err.read_text())
        assert shown is not None, err.read_text()
        wait_for(
            lambda: identity.requests("grant-type:device_code"), 10, "MSAL asking whether it was entered"
        )
        identity.approve(shown.group(2))  # the person signs in at the page
        assert process.wait(timeout=30) == 0, err.read_text()
    finally:
        if process.poll() is None:
            process.kill()

    text = err.read_text()
    assert shown.group(1) == identity.authority_host + "/devicelogin"
    assert f"signed in as someone@contoso.com; the token cache is {cache_of(tmp_path)}" in text
    polls = identity.requests("grant-type:device_code")
    assert len(polls) >= 2  # "authorization_pending" first, then the tokens
    cache = cache_of(tmp_path)
    assert os.name == "nt" or cache.stat().st_mode & 0o777 == 0o600
    stored = json.loads(cache.read_text())
    assert [a["username"] for a in stored["Account"].values()] == ["someone@contoso.com"]
    refresh = [t["secret"] for t in stored["RefreshToken"].values()]
    assert len(refresh) == 1 and refresh[0] in identity.refresh_tokens
    assert [t["secret"] for t in stored["AccessToken"].values()] == identity.access_tokens
    assert refresh[0] not in text and identity.access_tokens[0] not in text  # no token on the screen
    assert not identity.requests("/common/discovery")  # only the configured sign-in host is asked


def test_signing_in_again_as_someone_else_replaces_the_last_sign_in(cloud, tmp_path):
    sharepoint, identity = cloud
    assert sign_in(sharepoint, identity, tmp_path) == "someone@contoso.com"
    identity.user, identity.uid = "other@contoso.com", "00000000-0000-0000-1111-222222222222"

    assert sign_in(sharepoint, identity, tmp_path) == "other@contoso.com"

    stored = json.loads(cache_of(tmp_path).read_text())
    assert [a["username"] for a in stored["Account"].values()] == ["other@contoso.com"]
    assert [t["secret"] for t in stored["AccessToken"].values()] == [identity.access_tokens[1]]


def test_oeleo_run_with_the_device_login_uses_the_cached_token_without_asking_entra(cloud, tmp_path):
    sharepoint, identity = cloud
    sign_in(sharepoint, identity, tmp_path)
    make_tree(tmp_path / "data", {"a.csv": b"a;b\n", "night/frame.fits": b"F" * 5000})
    asked = len(identity.requests("/token"))

    result = run_oeleo("run", cwd=tmp_path, env=device_env(sharepoint, identity, tmp_path))

    assert result.returncode == 0, result.stderr
    assert sharepoint.names() == {"instrument 1/a.csv": 4, "instrument 1/night/frame.fits": 5000}
    assert set(db_rows(tmp_path / "books.db")) == {"a.csv", "night/frame.fits"}
    assert len(identity.requests("/token")) == asked  # the cached access token, silently
    assert bearer_tokens(sharepoint) == {f"Bearer {identity.access_tokens[0]}"}
    assert not identity.requests("/common/discovery")


def test_an_expired_access_token_is_renewed_with_the_refresh_token_and_the_cache_updated(cloud, tmp_path):
    sharepoint, identity = cloud
    sign_in(sharepoint, identity, tmp_path)
    cache = cache_of(tmp_path)
    stored = json.loads(cache.read_text())
    for entry in stored["AccessToken"].values():  # a day later: the access token has expired
        entry["expires_on"] = entry["extended_expires_on"] = str(int(time.time()) - 60)
    cache.write_text(json.dumps(stored))
    first = identity.access_tokens[0]
    sharepoint.tokens.discard(first)  # and SharePoint no longer takes it
    (old_refresh,) = identity.refresh_tokens
    make_tree(tmp_path / "data", {"a.csv": b"1"})

    result = run_oeleo("run", cwd=tmp_path, env=device_env(sharepoint, identity, tmp_path))

    assert result.returncode == 0, result.stderr
    assert sharepoint.read("instrument 1/a.csv") == b"1"
    assert identity.requests("refresh_token") == [
        f"POST /{identity.tenant_id}/oauth2/v2.0/token refresh_token"
    ]
    assert bearer_tokens(sharepoint) == {f"Bearer {identity.access_tokens[1]}"}
    renewed = json.loads(cache.read_text())
    assert [t["secret"] for t in renewed["RefreshToken"].values()] == list(identity.refresh_tokens)
    assert old_refresh not in cache.read_text() and first not in cache.read_text()
    assert os.name == "nt" or cache.stat().st_mode & 0o777 == 0o600


def test_a_token_sharepoint_stops_taking_is_replaced_through_the_refresh_token(cloud, tmp_path):
    sharepoint, identity = cloud
    sign_in(sharepoint, identity, tmp_path)
    conn = SharePointConnector(sharepoint.url, folder="x", login=device_login(identity, tmp_path))
    conn.connect()
    sharepoint.tokens.clear()  # revoked before it expired
    (tmp_path / "a.csv").write_bytes(b"a")

    conn.put(tmp_path / "a.csv", "a.csv")

    assert sharepoint.read("x/a.csv") == b"a"
    assert len(identity.requests("refresh_token")) == 1
    assert len(identity.access_tokens) == 2


def test_a_cache_nobody_signed_in_to_says_so_in_one_line(cloud, tmp_path):
    sharepoint, identity = cloud
    make_tree(tmp_path / "data", {"a.csv": b"1"})

    result = run_oeleo("run", cwd=tmp_path, env=device_env(sharepoint, identity, tmp_path))

    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "signed in" in line]
    assert len(lines) == 1 and lines[0].startswith(
        "oeleo: nobody has signed in for the SharePoint device login yet"
    )
    assert "python -m oeleo.connectors.sharepoint_login" in lines[0] and "Traceback" not in result.stderr
    assert sharepoint.names() == {}
    assert not identity.requests("/token") and not identity.requests("/common/discovery")


def test_an_ended_sign_in_says_to_sign_in_again(cloud, tmp_path):
    sharepoint, identity = cloud
    sign_in(sharepoint, identity, tmp_path)
    cache = cache_of(tmp_path)
    stored = json.loads(cache.read_text())
    for entry in stored["AccessToken"].values():
        entry["expires_on"] = entry["extended_expires_on"] = str(int(time.time()) - 60)
    cache.write_text(json.dumps(stored))
    identity.revoke_refresh_tokens()  # the sign-in ended (a policy, or an administrator)
    make_tree(tmp_path / "data", {"a.csv": b"1"})

    result = run_oeleo("run", cwd=tmp_path, env=device_env(sharepoint, identity, tmp_path))

    assert result.returncode == 2
    assert "has expired: run `python -m oeleo.connectors.sharepoint_login` again" in result.stderr
    assert "Traceback" not in result.stderr and sharepoint.names() == {}


@pytest.mark.parametrize(
    "setting, value, message",
    [
        (
            "OELEO_SHAREPOINT_TENANT",
            "nosuch.onmicrosoft.com",
            "OELEO_SHAREPOINT_TENANT='nosuch.onmicrosoft.com': https://127.0.0.1:\\d+ knows no such tenant",
        ),
        (
            "OELEO_SHAREPOINT_CLIENT_ID",
            "00000000-0000-0000-0000-000000000000",
            r"refused the SharePoint device login \(AADSTS700016\): no app with this client id",
        ),
        ("OELEO_SHAREPOINT_AUTHORITY", "http://login.example", "OELEO_SHAREPOINT_AUTHORITY"),
    ],
)
def test_the_sign_in_with_a_wrong_setting_names_it_in_one_line(cloud, tmp_path, setting, value, message):
    sharepoint, identity = cloud
    env = clean_env(device_env(sharepoint, identity, tmp_path, **{setting: value}))

    result = subprocess.run(
        [sys.executable, "-m", "oeleo.connectors.sharepoint_login"],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2, result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not cache_of(tmp_path).exists()
