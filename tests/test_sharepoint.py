"""The SharePoint connector through the real Office365-REST-Python-Client (3.3.0) against the
loopback fake of SharePoint's REST API (tests/sharepoint_server.py, whose docstring lists the
endpoints the library calls). Tokens come from ``ctx.with_access_token`` (the connector's
``token`` argument), so no test reaches Microsoft's login hosts; the logins' own logic (which
one the settings choose, Entra's refusals in one line, renewal before expiry, the device
code's token cache) is tested without the network, MSAL's answers given as MSAL gives them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
import time
from pathlib import Path

import pytest
from helpers import db_rows, make_tree, run_oeleo, run_once, write_random

from oeleo.checkers import ChecksumChecker
from oeleo.connectors.local import LocalConnector
from oeleo.connectors.sharepoint import USER_AGENT, SharePointConnector, name_problem, site_url_of
from oeleo.connectors.sharepoint_login import MsalToken, choose_login, describe_failure
from oeleo.errors import ConfigError, TransferError, VerificationError
from oeleo.models import SimpleDbHandler
from oeleo.workers import Worker

sys.path.insert(0, str(Path(__file__).parent))
from sharepoint_server import TOKEN_VARIABLE, FakeSharePoint  # noqa: E402

MiB = 1024 * 1024
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def server():
    fake = FakeSharePoint().start()
    yield fake
    fake.stop()


def connector(server: FakeSharePoint, folder: str = "instr1", **options) -> SharePointConnector:
    options.setdefault("chunk_size", MiB)
    conn = SharePointConnector(server.url, folder=folder, token=server.token_provider, **options)
    conn.connect()
    conn.prepare()
    return conn


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def worker_for(store, src: Path, db: Path) -> Worker:
    return Worker(
        checker=ChecksumChecker(),
        bookkeeper=SimpleDbHandler(db),
        local_connector=LocalConnector(src),
        external_connector=store,
        subdirs=True,
    )


# -- uploads ----------------------------------------------------------------------------------


def test_a_small_file_is_one_files_add_request_onto_its_real_name(server, tmp_path):
    conn = connector(server)
    src = write(tmp_path / "a.csv", b"t;v\n1;2\n")
    server.log.clear()

    result = conn.put(src, "a.csv")

    sent = [f"{m} {p}" for m, p, _, _ in server.log]
    assert sent == [
        "POST /sites/lab/_api/Web/getFolderByServerRelativePath("
        "DecodedUrl='/sites/lab/Shared Documents/instr1')"
        "/Files/add(overwrite=true,url='a.csv')"
    ]
    assert server.read("instr1/a.csv") == b"t;v\n1;2\n"
    # SharePoint gives no hash: the copy is checked by size, never called checksum-verified.
    assert (result.verified, result.checksum) == (False, md5(b"t;v\n1;2\n"))


def test_a_large_file_goes_up_in_chunks_under_a_temporary_name_and_is_moved_onto_its_own(server, tmp_path):
    conn = connector(server)
    digest = write_random(tmp_path / "big.fits", 3 * MiB + 17)
    progress: list = []
    server.log.clear()

    conn.put(tmp_path / "big.fits", "night/big.fits", progress=progress.append)

    sent = [p.split("/_api/Web/", 1)[1] for m, p, _, _ in server.log]
    temp = "/sites/lab/Shared Documents/instr1/night/.big.fits.oeleo-part"
    assert (
        sent[0] == "getFolderByServerRelativePath(DecodedUrl='/sites/lab/Shared Documents/instr1')"
        "/Folders/Add('night')"
    )
    assert sent[1].endswith("/Files/add(overwrite=true,url='.big.fits.oeleo-part')")
    assert sent[2].startswith(f"getFileByServerRelativePath(DecodedUrl='{temp}')/startUpload(uploadID=")
    assert [s.rsplit("fileOffset=", 1)[1] for s in sent[3:6]] == [f"{MiB})", f"{2 * MiB})", f"{3 * MiB})"]
    assert "continueUpload" in sent[3] and "continueUpload" in sent[4] and "finishUpload" in sent[5]
    assert sent[6] == (
        f"getFileByServerRelativePath(DecodedUrl='{temp}')/MoveTo(newurl='/sites/lab/Shared Documents/"
        "instr1/night/big.fits',flags=1)"
    )
    assert len(sent) == 7
    # The real name never got Files/add (an empty one would have truncated it).
    assert not [s for s in sent if "url='big.fits'" in s]
    assert md5(server.read("instr1/night/big.fits")) == digest
    assert server.names() == {"instr1/night/big.fits": 3 * MiB + 17}
    assert len(progress) >= 3  # the progress bar moves per chunk read and sent
    assert server.sessions == {}


def test_a_session_failing_half_way_cancels_it_removes_the_temporary_and_keeps_the_old_copy(server, tmp_path):
    conn = connector(server)
    src = write(tmp_path / "big.res", b"version 1")
    conn.put(src, "big.res")
    write_random(src, 4 * MiB)
    server.fail("POST", r"continueUpload\(.*fileOffset=2097152", status=500)

    with pytest.raises(TransferError, match="SharePoint answered 500"):
        conn.put(src, "big.res")

    assert server.read("instr1/big.res") == b"version 1"
    assert server.names() == {"instr1/big.res": 9}  # no temporary file left
    assert server.sessions == {}
    assert server.requests_matching(r"CancelUpload")
    assert server.requests_matching(r"\.big\.res\.oeleo-part'\)$")  # the DELETE of the temporary


def test_folders_are_created_once_per_folder_per_pass(server, tmp_path):
    conn = connector(server)
    files = {f"run{r}/cell{c}.csv": b"x" * c for r in range(2) for c in range(1, 11)}
    make_tree(tmp_path / "src", files)
    server.log.clear()

    for relpath in files:
        conn.put(tmp_path / "src" / relpath, relpath)

    assert len(server.requests_matching(r"/Folders/Add\(")) == 2
    assert len(server.requests_matching(r"/Files/add\(")) == 20
    assert len(server.log) == 22  # one request per file, one per new folder
    conn.connect()  # a new pass asks again
    conn.put(tmp_path / "src" / "run0/cell1.csv", "run0/cell1.csv")
    assert len(server.requests_matching(r"/Folders/Add\(")) == 3


def test_quotes_hashes_percent_signs_and_non_ascii_names_go_up_as_they_are(server, tmp_path):
    conn = connector(server, folder="a'b #1")
    names = ["it's.csv", "#1 run%.csv", "50% + x&y=z;.csv", "ü ø/日本.csv"]
    for name in names:
        conn.put(write(tmp_path / "x", name.encode()), name)
    write_random(tmp_path / "big", MiB + 3)
    conn.put(tmp_path / "big", "it's big #%.bin")  # the upload session and MoveTo too

    assert sorted(e.relpath for e in conn.list_files()) == sorted([*names, "it's big #%.bin"])
    assert all(server.read(f"a'b #1/{name}") == name.encode() for name in names)
    assert conn.checksum("it's.csv") == md5(b"it's.csv")


def test_threads_copying_into_one_new_folder_create_it_once(server, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    conn = connector(server)
    make_tree(tmp_path / "src", {f"f{i}.csv": b"z" * i for i in range(16)})
    server.log.clear()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: conn.put(tmp_path / "src" / f"f{i}.csv", f"new/f{i}.csv"), range(16)))

    assert len(server.requests_matching(r"/Folders/Add\(")) == 1
    assert len(server.names()) == 16


def test_listing_is_recursive_and_follows_the_pages(server, tmp_path):
    conn = connector(server, page_size=3)
    files = {f"d{d}/f{i}.csv": b"y" * (i + 1) for d in range(3) for i in range(7)}
    files["top.csv"] = b"top"
    make_tree(tmp_path / "src", files)
    for relpath in files:
        conn.put(tmp_path / "src" / relpath, relpath)
    server.log.clear()

    listed = {e.relpath: e.size for e in conn.list_files()}

    assert listed == {relpath: len(data) for relpath, data in files.items()}
    assert [e.relpath for e in conn.list_files(recursive=False)] == ["top.csv"]
    assert [e.relpath for e in conn.list_files(include=["d1/*"])] == [f"d1/f{i}.csv" for i in range(7)]
    assert server.requests_matching(r"/Files$")  # pages of $top=3 with __next links
    assert any("$skiptoken" in q for _, _, q, _ in server.log)
    assert all(q.get("$top") == ["3"] for _, p, q, _ in server.log if p.endswith(("/Files", "/Folders")))


def test_a_temporary_name_is_not_listed_and_a_killed_runs_leftover_is_found(server, tmp_path):
    conn = connector(server)
    conn.upload_tag = "1f3a9c"
    write(tmp_path / "a.csv", b"a")
    conn.put(tmp_path / "a.csv", "a.csv")
    server.files[f"{server.library_url}/instr1/.b.fits.1f3a9c.oeleo-part"] = server.files[
        f"{server.library_url}/instr1/a.csv"
    ]

    assert [e.relpath for e in conn.list_files()] == ["a.csv"]
    assert list(conn.list_temporaries()) == [".b.fits.1f3a9c.oeleo-part"]


def test_a_size_that_differs_after_the_upload_is_an_error(server, tmp_path, monkeypatch):
    conn = connector(server)
    src = write(tmp_path / "a.csv", b"12345")
    monkeypatch.setattr(server, "stored_bytes", lambda url, data: data[:-1])

    with pytest.raises(VerificationError, match="SharePoint holds 4 bytes, 5 were sent"):
        conn.put(src, "a.csv")


def test_an_office_file_rewritten_by_sharepoint_is_warned_once_and_not_copied_again(server, tmp_path, caplog):
    conn = connector(server)
    src, db = tmp_path / "src", tmp_path / "books.db"
    make_tree(src, {"report.docx": b"PK\x03\x04 word", "data.csv": b"1"})
    caplog.set_level(logging.WARNING, logger="oeleo")

    first = run_once(worker_for(conn, src, db))
    second = run_once(worker_for(conn, src, db))

    assert (first.copied, first.failed, second.copied) == (2, 0, 0), first.describe()
    warnings = [r.getMessage() for r in caplog.records if "rewrote this Office file" in r.getMessage()]
    assert len(warnings) == 1 and "report.docx" in warnings[0]
    assert server.read("instr1/report.docx").startswith(b"PK\x03\x04 word")
    assert db_rows(db)["report.docx"]["checksum"] == md5(b"PK\x03\x04 word")


def test_a_read_back_upload_is_verified_by_its_hash(server, tmp_path):
    conn = connector(server, read_back=True)
    src = write(tmp_path / "a.csv", b"checked")

    result = conn.put(src, "a.csv")

    assert result.verified is True
    assert server.requests_matching(r"oeleo-part'\)/\$value$")  # downloaded before its commit
    assert server.read("instr1/a.csv") == b"checked"


def test_the_stored_file_can_be_downloaded_and_hashed(server, tmp_path):
    conn = connector(server)
    conn.put(write(tmp_path / "a.csv", b"abc"), "a.csv")

    assert conn.checksum("a.csv", "sha256") == hashlib.sha256(b"abc").hexdigest()
    assert conn.stat("a.csv").size == 3 and conn.stat("b.csv") is None
    with pytest.raises(FileNotFoundError):
        conn.checksum("b.csv")
    conn.remove("a.csv")
    conn.remove("a.csv")  # a missing file is not an error
    assert server.names() == {}


# -- requests: headers, throttling, tokens, digests ------------------------------------------------


def test_every_request_carries_the_user_agent_and_the_token(server, tmp_path):
    conn = connector(server)
    conn.put(write(tmp_path / "a.csv", b"a"), "a.csv")
    list(conn.list_files())

    assert server.log[0][0] == "HEAD"  # the probe of connect(), without a token
    assert {h.get("User-Agent") for _, _, _, h in server.log} == {USER_AGENT}
    assert USER_AGENT.startswith("ISV|oeleo|")
    assert {h.get("Authorization") for m, _, _, h in server.log if m != "HEAD"} == {"Bearer test-token"}


@pytest.mark.parametrize("status", [429, 503])
def test_a_throttled_request_waits_what_retry_after_says_then_succeeds(server, tmp_path, status):
    conn = connector(server)
    server.fail("POST", r"/Files/add\(", status=status, times=2, headers={"Retry-After": "1"})
    src = write(tmp_path / "a.csv", b"a")
    started = time.monotonic()

    conn.put(src, "a.csv")

    assert time.monotonic() - started >= 1.9  # two waits of the server's 1 s
    assert server.read("instr1/a.csv") == b"a"


def test_throttling_is_retried_a_bounded_number_of_times_and_a_long_retry_after_is_capped(server, tmp_path):
    conn = connector(server, retries=2, max_wait=0.2)
    server.fail("POST", r"/Files/add\(", status=429, times=10, headers={"Retry-After": "3600"})
    started = time.monotonic()

    with pytest.raises(TransferError, match=r"throttling \(429\) after 3 attempts"):
        conn.put(write(tmp_path / "a.csv", b"a"), "a.csv")

    assert time.monotonic() - started < 5
    assert len(server.requests_matching(r"/Files/add\(")) == 3


def test_a_token_that_sharepoint_refuses_is_renewed_once(server, tmp_path):
    issued = []

    class Rotating:
        def __init__(self) -> None:
            self.current = "test-token"

        def __call__(self):
            issued.append(self.current)
            return {"access_token": self.current, "token_type": "Bearer", "expires_in": 3600}

        def forget(self) -> None:
            self.current = "renewed-token"

    conn = SharePointConnector(server.url, folder="x", token=Rotating())
    conn.connect()
    server.tokens = {"renewed-token"}  # the first token was revoked (or expired early)
    conn.put(write(tmp_path / "a.csv", b"a"), "a.csv")

    assert issued[-1] == "renewed-token"
    assert server.read("x/a.csv") == b"a"


def test_a_stale_form_digest_is_fetched_again(server, tmp_path):
    conn = connector(server)
    server.digest = "0xDIGEST2,later"

    conn.put(write(tmp_path / "a.csv", b"a"), "a.csv")

    assert server.read("instr1/a.csv") == b"a"
    assert len(server.requests_matching(r"contextInfo")) == 2


def test_msal_tokens_are_renewed_before_they_expire(monkeypatch):
    login = choose_login("secret", tenant="contoso.onmicrosoft.com", client_id="app", client_secret="s3cret")
    provider = MsalToken(login, "https://contoso.sharepoint.com/sites/lab")
    answers = [
        {"access_token": "one", "token_type": "Bearer", "expires_in": 301},
        {"access_token": "two", "token_type": "Bearer", "expires_in": 3600},
    ]
    monkeypatch.setattr(provider, "_acquire", lambda: answers.pop(0))

    assert provider()["access_token"] == "one"
    time.sleep(1.1)  # now within 300 s of its expiry
    assert provider()["access_token"] == "two"
    assert provider()["access_token"] == "two"  # cached while valid
    assert provider.scopes == ["https://contoso.sharepoint.com/.default"]


# -- bad input: one line each ----------------------------------------------------------------------


def test_a_wrong_site_is_a_configuration_error(server):
    conn = SharePointConnector(server.origin + "/sites/nope", token=server.token_provider)

    with pytest.raises(
        ConfigError, match=r"no SharePoint site at http://127\.0\.0\.1:\d+/sites/nope \(404\)"
    ):
        conn.connect()


def test_a_missing_library_names_the_setting(server):
    conn = SharePointConnector(server.url, "Documents", token=server.token_provider)

    with pytest.raises(
        ConfigError, match="OELEO_SHAREPOINT_DOC_LIBRARY='Documents': no such library .*Shared"
    ):
        conn.connect()


def test_rejected_credentials_are_a_configuration_error_without_the_token(server):
    conn = SharePointConnector(
        server.url,
        token=lambda: {"access_token": "wrong-token-value", "token_type": "Bearer", "expires_in": 60},
    )

    with pytest.raises(ConfigError, match="refused the login") as caught:
        conn.connect()

    assert "wrong-token-value" not in str(caught.value)


def test_no_permission_on_the_library_is_a_configuration_error(server):
    server.fail(
        "POST", r"Folders/Add", status=403, times=5, code="-2147024891, System.UnauthorizedAccessException"
    )
    conn = SharePointConnector(server.url, folder="new", token=server.token_provider)
    conn.connect()

    with pytest.raises(ConfigError, match="needs write permission on the library 'Shared Documents'"):
        conn.prepare()


def test_an_unreachable_server_is_a_configuration_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conn = SharePointConnector(f"http://127.0.0.1:{port}/sites/x", token=lambda: {"access_token": "t"})

    with pytest.raises(ConfigError, match="cannot reach SharePoint at http://127.0.0.1"):
        conn.connect()


@pytest.mark.parametrize(
    "name, reason",
    [
        ("a*b.csv", r"does not allow \*"),
        ('say "hi".csv', 'does not allow "'),
        ("ab:c.csv", "does not allow :"),
        ("what?.csv", r"does not allow \?"),
        ("x|y<z>.csv", "does not allow < > |"),
        (" lead.csv", "begins or ends with a space"),
        ("dir /x.csv", "begins or ends with a space"),
        ("ends.", "ends with a dot"),
        ("my_vti_file.csv", "_vti_"),
        ("CON", "reserves the name CON"),
        ("~$draft.docx", "reserves"),
    ],
)
def test_a_name_sharepoint_forbids_is_refused_for_that_file_with_the_reason(server, tmp_path, name, reason):
    conn = connector(server)
    src = write(tmp_path / "x", b"x")

    with pytest.raises(TransferError, match=reason):
        conn.put(src, name)

    assert server.names() == {}


def test_a_path_over_400_characters_is_refused(server, tmp_path):
    conn = connector(server)
    relpath = "/".join(["f" * 60] * 6) + "/x.csv"

    with pytest.raises(TransferError, match="would be 4.. characters; it allows 400"):
        conn.put(write(tmp_path / "x", b"x"), relpath)


def test_a_large_file_whose_temporary_name_would_be_too_long_uses_a_short_one(server, tmp_path):
    conn = connector(server)
    relpath = "d" * 300 + "/" + "n" * 45 + ".fits"
    assert len(conn.server_url(relpath)) <= 400 < len(conn.server_url(relpath)) + 19
    write_random(tmp_path / "big", MiB + 1)

    conn.put(tmp_path / "big", relpath)

    assert server.names() == {f"instr1/{relpath}": MiB + 1}


def test_the_site_url_comes_from_the_url_and_the_site_name():
    assert site_url_of("https://contoso.sharepoint.com", "lab") == "https://contoso.sharepoint.com/sites/lab"
    assert (
        site_url_of("https://contoso.sharepoint.com/", "teams/lab")
        == "https://contoso.sharepoint.com/teams/lab"
    )
    assert (
        site_url_of("https://contoso.sharepoint.com/sites/lab", "")
        == "https://contoso.sharepoint.com/sites/lab"
    )
    for bad, setting in [("", "OELEO_SHAREPOINT_URL is not set"), ("contoso", "expected https://")]:
        with pytest.raises(ConfigError, match=setting):
            site_url_of(bad)
    with pytest.raises(ConfigError, match="OELEO_SHAREPOINT_SITENAME"):
        site_url_of("https://contoso.sharepoint.com", "../x")


def test_a_token_is_never_sent_over_plain_http_to_another_host():
    with pytest.raises(ConfigError, match="never sent over plain http"):
        SharePointConnector("http://contoso.sharepoint.com/sites/lab", token=lambda: {})


@pytest.mark.parametrize(
    "settings, kind",
    [
        ({"cert_path": Path("k.pem"), "tenant": "t", "client_id": "c"}, "certificate"),
        ({"client_secret": "s", "tenant": "t", "client_id": "c"}, "secret"),
        ({"username": "u@x", "password": "p", "tenant": "t", "client_id": "c"}, "password"),
        ({"client_id": "c", "tenant": "t"}, "device"),
    ],
)
def test_the_login_is_chosen_from_what_is_set(settings, kind):
    assert choose_login("", **settings).kind == kind


def test_a_login_missing_a_setting_names_it_and_hides_secrets():
    with pytest.raises(
        ConfigError, match="certificate login needs OELEO_SHAREPOINT_TENANT, OELEO_SHAREPOINT_CERT_PATH"
    ):
        choose_login("certificate", client_id="c")
    with pytest.raises(ConfigError, match="through an app registration: set OELEO_SHAREPOINT_CLIENT_ID"):
        choose_login("", username="u@x", password="p")
    with pytest.raises(ConfigError, match="no SharePoint login"):
        choose_login("")
    with pytest.raises(ConfigError, match="40 hex digits"):
        choose_login("certificate", tenant="t", client_id="c", cert_path=Path("k"), thumbprint="xyz")
    login = choose_login("password", tenant="t", client_id="c", username="u@x", password="hunter2")
    assert "hunter2" not in repr(login)


def test_entras_refusals_are_one_line_and_mfa_points_to_the_certificate_login():
    login = choose_login("password", tenant="t", client_id="c", username="u@x", password="p")
    mfa = {
        "error": "invalid_grant",
        "error_description": "AADSTS50076: Due to a configuration change made by your administrator, "
        "you must use multi-factor authentication.\r\nTrace ID: 1",
    }
    assert "needs multi-factor authentication (AADSTS50076)" in describe_failure(mfa, login)
    assert "use the certificate login" in describe_failure(mfa, login)
    wrong = {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}
    secret = choose_login("secret", tenant="t", client_id="c", client_secret="s")
    assert describe_failure(wrong, secret) == (
        "Microsoft Entra refused the SharePoint secret login (AADSTS7000215): the client secret is wrong"
    )


def test_a_refused_token_request_is_a_configuration_error(monkeypatch):
    login = choose_login("secret", tenant="t", client_id="c", client_secret="s3cret")
    provider = MsalToken(login, "https://contoso.sharepoint.com/sites/lab")
    monkeypatch.setattr(
        provider, "_acquire", lambda: {"error": "invalid_client", "error_description": "AADSTS7000222"}
    )

    with pytest.raises(ConfigError, match="client secret has expired") as caught:
        provider()
    assert "s3cret" not in str(caught.value)


def test_the_device_login_without_a_signed_in_account_says_how_to_sign_in(tmp_path):
    pytest.importorskip("msal")
    login = choose_login("device", tenant="t", client_id="c", token_cache=tmp_path / "cache.json")
    provider = MsalToken(login, "https://contoso.sharepoint.com/sites/lab")

    class NoAccounts:
        def get_accounts(self):
            return []

    provider._app = NoAccounts()
    with pytest.raises(ConfigError, match="python -m oeleo.connectors.sharepoint_login"):
        provider._silent_from_cache()


def test_the_device_logins_token_cache_is_written_for_this_user_only_and_read_back(tmp_path):
    msal = pytest.importorskip("msal")
    path = tmp_path / "oeleo" / "token.json"
    login = choose_login("device", tenant="t", client_id="c", token_cache=path)
    provider = MsalToken(login, "https://contoso.sharepoint.com/sites/lab")
    cache = msal.SerializableTokenCache()
    cache.add(
        {
            "client_id": "c",
            "scope": ["https://contoso.sharepoint.com/.default"],
            "token_endpoint": "https://login.microsoftonline.com/t/oauth2/v2.0/token",
            "response": {
                "access_token": "at",
                "refresh_token": "rt",
                "expires_in": 3600,
                "token_type": "Bearer",
            },
        }
    )
    provider._cache = cache

    provider._save_cache()

    assert path.stat().st_mode & 0o777 == 0o600 or os.name == "nt"
    again = MsalToken(login, "https://contoso.sharepoint.com/sites/lab")._load_cache()
    assert list(again.search(msal.TokenCache.CredentialType.REFRESH_TOKEN))[0]["secret"] == "rt"
    path.write_text("not json")
    with pytest.raises(ConfigError, match="OELEO_SHAREPOINT_TOKEN_CACHE=.*cannot be read"):
        MsalToken(login, "https://contoso.sharepoint.com/sites/lab")._load_cache()


def test_a_certificate_file_without_a_private_key_is_refused(tmp_path):
    from oeleo.connectors.sharepoint_login import certificate_credential

    with pytest.raises(ConfigError, match="OELEO_SHAREPOINT_CERT_PATH=.*cannot be read"):
        certificate_credential(tmp_path / "missing.pem", "A" * 40)
    (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="no PEM private key"):
        certificate_credential(tmp_path / "cert.pem", "A" * 40)


def test_name_problem_allows_what_sharepoint_online_takes():
    for fine in ["a.csv", "målinger 2024/prøve ü.csv", "#1 run%.csv", ".hidden", "a b/c d.csv"]:
        assert name_problem(fine) is None, fine


# -- through the oeleo command ---------------------------------------------------------------------


def oeleo_env(server: FakeSharePoint, src: Path, tmp_path: Path, **extra: str) -> dict:
    env = {
        "OELEO_CONNECTOR": "sharepoint_server:LoopbackSharePoint",
        "OELEO_BASE_DIR_FROM": str(src),
        "OELEO_BASE_DIR_TO": "instrument 1",
        "OELEO_SHAREPOINT_URL": server.origin,
        "OELEO_SHAREPOINT_SITENAME": "lab",
        "OELEO_SHAREPOINT_DOC_LIBRARY": "Shared Documents",
        "OELEO_SHAREPOINT_CHUNK_SIZE": str(MiB),
        "OELEO_DB_NAME": str(tmp_path / "books.db"),
        "OELEO_SUBDIRS": "true",
        TOKEN_VARIABLE: server.token,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    env.update(extra)
    return env


def test_oeleo_run_copies_to_the_library_and_a_rerun_copies_nothing(server, tmp_path):
    src = tmp_path / "data"
    make_tree(src, {"a.csv": b"a;b\n", "night 1/frame.fits": os.urandom(MiB + 5), "night 1/log.txt": b"ok"})
    env = oeleo_env(server, src, tmp_path)

    first = run_oeleo("run", cwd=tmp_path, env=env)
    adds = len(server.requests_matching(r"/Files/add\("))
    second = run_oeleo("run", cwd=tmp_path, env=env)

    assert first.returncode == 0, first.stderr
    assert server.names() == {
        "instrument 1/a.csv": 4,
        "instrument 1/night 1/frame.fits": MiB + 5,
        "instrument 1/night 1/log.txt": 2,
    }
    assert server.read("instrument 1/night 1/frame.fits") == (src / "night 1/frame.fits").read_bytes()
    assert second.returncode == 0, second.stderr
    assert len(server.requests_matching(r"/Files/add\(")) == adds  # nothing sent again
    rows = db_rows(tmp_path / "books.db")
    assert rows["a.csv"]["external_name"].endswith("/sites/lab/Shared Documents/instrument 1/a.csv")


def test_oeleo_check_compares_by_size_and_deep_downloads(server, tmp_path):
    src = tmp_path / "data"
    make_tree(src, {"a.csv": b"a;b\n", "b.csv": b"bb"})
    env = oeleo_env(server, src, tmp_path)
    assert run_oeleo("run", cwd=tmp_path, env=env).returncode == 0
    server.files[f"{server.library_url}/instrument 1/b.csv"].data = b"BB"  # same size, other bytes
    server.log.clear()

    by_size = run_oeleo("check", cwd=tmp_path, env=env)
    downloads = len(server.requests_matching(r"/\$value$"))
    deep = run_oeleo("check", "--deep", cwd=tmp_path, env=env)

    assert by_size.returncode == 0, by_size.stdout + by_size.stderr
    assert "same: 2" in by_size.stdout and downloads == 0
    assert deep.returncode == 1
    assert "different: 1" in deep.stdout and "different b.csv" in deep.stdout
    assert len(server.requests_matching(r"/\$value$")) == 2


def test_oeleo_run_with_bad_sharepoint_settings_says_what_to_fix_in_one_line(server, tmp_path):
    src = tmp_path / "data"
    make_tree(src, {"a.csv": b"a"})
    cases = [
        (
            {"OELEO_SHAREPOINT_DOC_LIBRARY": "Dokumente"},
            "OELEO_SHAREPOINT_DOC_LIBRARY='Dokumente': no such library",
        ),
        ({"OELEO_SHAREPOINT_SITENAME": "other"}, "no SharePoint site at"),
        ({TOKEN_VARIABLE: "expired"}, "SharePoint refused the login"),
    ]
    for extra, message in cases:
        result = run_oeleo("run", cwd=tmp_path, env=oeleo_env(server, src, tmp_path, **extra))
        assert result.returncode == 2, (extra, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
        assert "expired" not in result.stderr.replace("expired (", "")  # the token is never shown


def test_oeleo_run_with_the_real_connector_name_refuses_missing_login_settings(tmp_path):
    src = tmp_path / "data"
    make_tree(src, {"a.csv": b"a"})
    env = {
        "OELEO_CONNECTOR": "sharepoint",
        "OELEO_BASE_DIR_FROM": str(src),
        "OELEO_SHAREPOINT_URL": "https://contoso.sharepoint.com",
        "OELEO_SHAREPOINT_SITENAME": "lab",
        "OELEO_SHAREPOINT_USERNAME": "someone@contoso.com",
        "OELEO_PASSWORD": "hunter2",
        "OELEO_DB_NAME": str(tmp_path / "books.db"),
    }

    result = run_oeleo("run", cwd=tmp_path, env=env)

    assert result.returncode == 2
    assert "set OELEO_SHAREPOINT_CLIENT_ID" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


def test_oeleo_run_refuses_a_forbidden_name_and_copies_the_rest(server, tmp_path):
    src = tmp_path / "data"
    make_tree(src, {"ok.csv": b"1", "bad:name.csv": b"2"})

    result = run_oeleo("run", cwd=tmp_path, env=oeleo_env(server, src, tmp_path))

    assert result.returncode == 1
    assert "bad:name.csv" in result.stderr + result.stdout
    assert "SharePoint does not allow :" in result.stderr + result.stdout
    assert server.names() == {"instrument 1/ok.csv": 1}
    assert db_rows(tmp_path / "books.db")["ok.csv"]["checksum"] == md5(b"1")


def test_sharepoints_times_are_read_in_utc_to_nanoseconds():
    from oeleo.connectors.sharepoint_names import parse_time

    assert parse_time("2024-05-01T10:00:00Z") == 1714557600 * 10**9
    assert parse_time("2024-05-01T10:00:00.1234567Z") == 1714557600 * 10**9 + 123456000
    assert parse_time("") == parse_time("not a time") == 0
