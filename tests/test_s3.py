"""The S3 connector against moto's S3 server over HTTP (tests/servers.py ``start_s3``), so
boto3's own HTTP, multipart and retry code runs.

moto accepts any Content-MD5 and never fails a request by itself. The test server in front
of it (``servers._S3Front``) checks Content-MD5 as AWS does (``400 BadDigest``), and answers
chosen requests with the errors AWS gives (``faults``: 403 InvalidAccessKeyId, 500 ...). The
checksum-mismatch path uses a botocore event hook (``before-send``) that changes a request's
body after its Content-MD5 was computed.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import servers
from helpers import clean_env, db_rows, make_tree, wait_for, write_random

from oeleo.connectors.base import Failed, temp_relpath
from oeleo.errors import ConfigError, ConnectionLost, FileChangedError, TransferError, VerificationError

MiB = 1024 * 1024
PREFIX = "instr1/"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def connector(server, bucket: str, **options):
    from oeleo.connectors.s3 import S3Connector

    prefix = options.pop("prefix", PREFIX)
    conn = S3Connector(bucket, prefix=prefix, endpoint_url=server.endpoint_url, **options)
    conn.connect()
    return conn


def keys(server, bucket: str) -> List[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def unfinished(server, bucket: str) -> List[str]:
    """Keys of the multipart uploads in progress in ``bucket``."""
    return sorted(u["Key"] for u in server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []))


# ``python -m oeleo`` with every file above the in-memory threshold sent as a multipart upload
# (the default sends files up to 200 MiB in one PutObject), so that tests of multipart uploads
# through the command need no files of hundreds of MiB.
MULTIPART_ONLY = (
    "import runpy, sys\n"
    "from oeleo.connectors.s3 import S3Connector\n"
    "S3Connector.single_put_limit = 0\n"
    "sys.argv[0] = 'oeleo'\n"
    "runpy.run_module('oeleo', run_name='__main__', alter_sys=True)\n"
)


def oeleo(
    cwd: Path,
    *args: str,
    env: Optional[Dict[str, str]] = None,
    drop=(),
    timeout: float = 120,
    multipart: bool = False,
) -> subprocess.CompletedProcess:
    """``python -m oeleo *args`` with the test server's AWS variables, minus ``drop``
    (``multipart``: files of 8 MiB and more go up as multipart uploads)."""
    start = ["-c", MULTIPART_ONLY] if multipart else ["-m", "oeleo"]
    return subprocess.run(
        [sys.executable, *start, *args],
        cwd=str(cwd),
        env=clean_env({"COLUMNS": "200", **(env or {})}, drop=drop),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def s3_env(server, bucket: str, **extra: str) -> Dict[str, str]:
    return {
        "OELEO_CONNECTOR": "s3",
        "OELEO_S3_BUCKET": bucket,
        "OELEO_S3_PREFIX": PREFIX,
        "OELEO_S3_ENDPOINT_URL": server.endpoint_url,
        "OELEO_BASE_DIR_FROM": "src",
        "OELEO_DB_NAME": "books.db",
        **extra,
    }


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


TREE = {
    "a.csv": "time,voltage\n0,3.1\n",
    "run 1/b.res": "RES 1 2 3\n",
    "run 1/spectra/ø+%20 c.csv": "x,y\n",
}


# -- the command, end to end ------------------------------------------------------------------


def test_run_copies_a_tree_and_a_rerun_copies_nothing(s3_server, s3_bucket, tmp_path):
    make_tree(tmp_path / "src", TREE)
    env = s3_env(s3_server, s3_bucket)

    first = oeleo(tmp_path, "run", env=env)
    assert first.returncode == 0, first.stderr
    assert keys(s3_server, s3_bucket) == sorted(PREFIX + name for name in TREE)
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=PREFIX + "a.csv")
    assert head["Metadata"]["oeleo-md5"] == md5(TREE["a.csv"].encode())
    rows = db_rows(tmp_path / "books.db")
    assert rows["a.csv"]["external_name"] == f"s3://{s3_bucket}/{PREFIX}a.csv"
    assert rows["run 1/spectra/ø+%20 c.csv"]["checksum"] == md5(TREE["run 1/spectra/ø+%20 c.csv"].encode())

    puts = s3_server.count("PUT", f"/{s3_bucket}")
    second = oeleo(tmp_path, "run", env=env)
    assert second.returncode == 0, second.stderr
    assert s3_server.count("PUT", f"/{s3_bucket}") == puts  # nothing sent again


def test_check_compares_with_the_metadata_without_downloading(s3_server, s3_bucket, tmp_path):
    make_tree(tmp_path / "src", TREE)
    env = s3_env(s3_server, s3_bucket)
    assert oeleo(tmp_path, "run", env=env).returncode == 0
    (tmp_path / "src" / "a.csv").write_text("time,voltage\n0,9.9\n")  # same size, other bytes
    before_get = s3_server.count("GET", f"/{s3_bucket}/{PREFIX}")
    before_head = s3_server.count("HEAD", f"/{s3_bucket}/{PREFIX}")

    done = oeleo(tmp_path, "check", env=env)

    assert done.returncode == 1, done.stdout + done.stderr  # a.csv differs
    assert "a.csv" in done.stdout
    assert s3_server.count("GET", f"/{s3_bucket}/{PREFIX}") == before_get  # no GetObject
    assert s3_server.count("HEAD", f"/{s3_bucket}/{PREFIX}") > before_head


def test_a_killed_run_leaves_an_upload_that_the_next_run_aborts(s3_server, s3_bucket, tmp_path):
    src = tmp_path / "src"
    digest = write_random(src / "big.fits", 20 * MiB)
    env = s3_env(s3_server, s3_bucket)
    stalled, release = threading.Event(), threading.Event()

    def stall_second_part(environ):
        if "partNumber=2" in environ.get("QUERY_STRING", "") and not release.is_set():
            stalled.set()
            release.wait(30)
        return None

    s3_server.faults.append(stall_second_part)
    proc = subprocess.Popen(
        [sys.executable, "-c", MULTIPART_ONLY, "run"],
        cwd=str(tmp_path),
        env=clean_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: stalled.is_set() or proc.poll() is not None, 60, "the second part")
        assert proc.poll() is None, "the upload ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert unfinished(s3_server, s3_bucket) == [PREFIX + "big.fits"]
    other = connector(s3_server, s3_bucket, single_put_limit=0)
    other.upload_tag = "0ther0"  # another PC's upload of the same prefix: left alone
    theirs = other.open_upload("other.fits", 10 * MiB, 0)
    theirs.send([b"x" * (10 * MiB)])

    done = oeleo(tmp_path, "run", env=env, multipart=True)

    assert done.returncode == 0, done.stderr
    assert unfinished(s3_server, s3_bucket) == [PREFIX + "other.fits"]
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=PREFIX + "big.fits")
    assert head["Metadata"]["oeleo-md5"] == digest
    assert [k for k in keys(s3_server, s3_bucket) if k.endswith(".oeleo-part")] == [
        PREFIX + temp_relpath("other.fits", "0ther0")
    ]
    theirs.abort()
    assert unfinished(s3_server, s3_bucket) == []


# -- bad input: one line, the right exit status ------------------------------------------------


def test_no_credentials_is_a_config_error_naming_the_variables(s3_server, s3_bucket, tmp_path):
    make_tree(tmp_path / "src", TREE)
    done = oeleo(
        tmp_path, "run", env=s3_env(s3_server, s3_bucket), drop=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    )
    assert done.returncode == 2
    line = one_error_line(done)
    assert "AWS_ACCESS_KEY_ID" in line and "OELEO_S3_PROFILE" in line


def test_aws_keys_written_in_the_env_file_are_used_and_the_environment_wins(s3_server, s3_bucket, tmp_path):
    # As users write it: the OELEO_S3_* settings and the AWS keys in one .env.
    make_tree(tmp_path / "src", TREE)
    lines = {
        **s3_env(s3_server, s3_bucket),
        "AWS_ACCESS_KEY_ID": "env-file-key",
        "AWS_SECRET_ACCESS_KEY": "s",
    }
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in lines.items()), encoding="utf-8")
    seen = []
    s3_server.faults.append(lambda environ: seen.append(environ.get("HTTP_AUTHORIZATION", "")))
    dropped = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    done = oeleo(tmp_path, "run", drop=dropped)
    signed = list(seen)  # oeleo's requests (the checks below are this test's own)
    assert done.returncode == 0, done.stderr
    assert signed and all("Credential=env-file-key/" in auth for auth in signed), signed
    assert sorted(keys(s3_server, s3_bucket)) == sorted(PREFIX + name for name in TREE)
    seen.clear()
    (tmp_path / "src" / "new.csv").write_text("n")
    done = oeleo(tmp_path, "run", env={"AWS_ACCESS_KEY_ID": "shell-key", "AWS_SECRET_ACCESS_KEY": "s"})
    assert done.returncode == 0, done.stderr
    assert seen and all("Credential=shell-key/" in auth for auth in seen), seen


def test_an_unknown_profile_is_a_config_error_naming_it(s3_server, s3_bucket, tmp_path):
    make_tree(tmp_path / "src", TREE)
    done = oeleo(tmp_path, "run", env=s3_env(s3_server, s3_bucket, OELEO_S3_PROFILE="nowhere"))
    assert done.returncode == 2
    assert "OELEO_S3_PROFILE='nowhere'" in one_error_line(done)


@pytest.mark.parametrize("code", ["InvalidAccessKeyId", "SignatureDoesNotMatch"])
def test_a_wrong_key_is_a_config_error_and_the_secret_is_not_shown(s3_server, s3_bucket, tmp_path, code):
    make_tree(tmp_path / "src", TREE)
    secret = "wrong-secret-never-shown"

    # moto checks no keys: the server answers for this key id as AWS does.
    def wrong_key(environ):
        return (403, code) if "Credential=wrong-key/" in environ.get("HTTP_AUTHORIZATION", "") else None

    s3_server.faults.append(wrong_key)
    env = s3_env(s3_server, s3_bucket, AWS_ACCESS_KEY_ID="wrong-key", AWS_SECRET_ACCESS_KEY=secret)
    done = oeleo(tmp_path, "run", env=env)
    assert done.returncode == 2
    line = one_error_line(done)
    assert code in line and "AWS_SECRET_ACCESS_KEY" in line
    assert secret not in done.stdout + done.stderr


def test_a_missing_bucket_is_a_config_error_naming_the_setting(s3_server, tmp_path):
    make_tree(tmp_path / "src", TREE)
    done = oeleo(tmp_path, "run", env=s3_env(s3_server, "no-such-bucket-here"))
    assert done.returncode == 2
    assert "OELEO_S3_BUCKET='no-such-bucket-here'" in one_error_line(done)


@pytest.mark.parametrize("how", ["setting", "url"])
def test_a_malformed_bucket_name_is_a_config_error_naming_the_setting(s3_server, tmp_path, how):
    make_tree(tmp_path / "src", TREE)
    env = s3_env(s3_server, "Bad_Bucket!")
    args = ["run"]
    if how == "url":
        del env["OELEO_S3_BUCKET"], env["OELEO_S3_PREFIX"]
        args += ["--to", "s3://Bad_Bucket!/x"]
    done = oeleo(tmp_path, *args, env=env)
    assert done.returncode == 2, done.stderr
    # Named where it was written: the setting, or the URL of --to (since trial 46).
    named = (
        "OELEO_BASE_DIR_TO=s3://Bad_Bucket!/x (from --to)"
        if how == "url"
        else "OELEO_S3_BUCKET='Bad_Bucket!'"
    )
    assert named in one_error_line(done)
    assert "Parameter validation" not in done.stderr
    assert not [line for line in done.stderr.splitlines() if line.startswith("failed ")]  # none tried


def test_a_bucket_name_that_botocore_allows_is_not_refused(s3_server):
    """S3-compatible stores allow names AWS does not (capitals, underscores): the check at
    connect is botocore's own, never stricter."""
    from oeleo.connectors.s3 import S3Connector

    for name in ("Lab_Data.2", "arn:aws:s3:us-east-1:123456789012:accesspoint/lab"):
        conn = S3Connector(name, endpoint_url=s3_server.endpoint_url)
        conn.connect()
        conn.close()
    with pytest.raises(ConfigError, match="OELEO_S3_BUCKET='a/b'"):
        S3Connector("a/b", endpoint_url=s3_server.endpoint_url).connect()


@pytest.mark.parametrize("endpoint", ["the server", ""])
def test_a_malformed_region_is_a_config_error_naming_the_setting(s3_server, s3_bucket, tmp_path, endpoint):
    make_tree(tmp_path / "src", TREE)
    env = s3_env(s3_server, s3_bucket, OELEO_S3_REGION="eu north/1")
    if not endpoint:
        env["OELEO_S3_ENDPOINT_URL"] = ""
    done = oeleo(tmp_path, "run", env=env)
    assert done.returncode == 2, done.stderr
    line = one_error_line(done)
    assert "OELEO_S3_REGION='eu north/1'" in line and "OELEO_S3_ENDPOINT_URL" not in line, line


def test_a_malformed_region_from_the_environment_names_where_it_came_from(s3_server, monkeypatch):
    from oeleo.connectors.s3 import S3Connector

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu north/1")
    with pytest.raises(ConfigError) as raised:
        S3Connector("lab-data", endpoint_url=s3_server.endpoint_url).connect()
    message = str(raised.value)
    assert "'eu north/1'" in message and "AWS_DEFAULT_REGION" in message and "OELEO_S3_REGION" in message
    assert "OELEO_S3_ENDPOINT_URL" not in message


@pytest.mark.parametrize(
    "endpoint, says",
    [("ftp://127.0.0.1:9", "http:// or https://"), ("http://127.0.0.1:notaport", "the port is not a number")],
)
def test_an_endpoint_url_of_another_scheme_or_a_bad_port_is_one_line_exit_2(
    tmp_path, s3_server, endpoint, says
):
    make_tree(tmp_path / "src", TREE)
    done = oeleo(tmp_path, "run", env=s3_env(s3_server, "lab", OELEO_S3_ENDPOINT_URL=endpoint))
    assert done.returncode == 2, done.stderr
    line = one_error_line(done)
    assert line.startswith(f"oeleo: OELEO_S3_ENDPOINT_URL={endpoint!r}") and says in line, line


def test_an_endpoint_url_that_is_not_one_is_said_once_without_its_password(s3_server):
    from oeleo.connectors.s3 import S3Connector

    with pytest.raises(ConfigError) as raised:
        S3Connector("lab-data", endpoint_url="ht!tp://user:urlSECRET@127.0.0.1:9").connect()
    message = str(raised.value)
    assert message.startswith("OELEO_S3_ENDPOINT_URL=") and "urlSECRET" not in message, message
    assert message.count("127.0.0.1") == 1, message


@pytest.mark.parametrize("multipart", [False, True])
def test_a_storage_class_the_store_refuses_stops_the_run_naming_the_setting(
    s3_server, s3_bucket, tmp_path, multipart
):
    """moto refuses it as AWS does for a PutObject, and (unlike AWS) only at the completion of
    a multipart upload: either way the first refusal stops the run, nothing is left behind."""
    make_tree(tmp_path / "src", {"sc.txt": "1\n", "b.txt": "2\n"})
    if multipart:
        write_random(tmp_path / "src" / "big.fits", 9 * MiB)
    env = s3_env(s3_server, s3_bucket, OELEO_S3_STORAGE_CLASS="NONSENSE")
    done = oeleo(tmp_path, "run", env=env, multipart=multipart)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    named = [line for line in done.stderr.splitlines() if "OELEO_S3_STORAGE_CLASS='NONSENSE'" in line]
    assert len(named) == 1 and named[0].startswith("oeleo: "), done.stderr
    assert not [line for line in done.stderr.splitlines() if line.startswith("failed ")], done.stderr
    assert keys(s3_server, s3_bucket) == []
    assert unfinished(s3_server, s3_bucket) == []
    rows = db_rows(tmp_path / "books.db")
    assert not [row for row in rows.values() if row.get("last_error")], rows


def test_a_store_that_refuses_the_storage_class_at_the_start_of_a_multipart_upload_gets_no_part(
    s3_server, s3_bucket, tmp_path
):
    """As AWS and MinIO do: CreateMultipartUpload is refused, the run stops before any part."""
    write_random(tmp_path / "src" / "big.fits", 20 * MiB)

    def refuse_start(environ):
        starting = environ["REQUEST_METHOD"] == "POST" and environ.get("QUERY_STRING", "") == "uploads"
        return (400, "InvalidStorageClass") if starting else None

    s3_server.faults.append(refuse_start)
    env = s3_env(s3_server, s3_bucket, OELEO_S3_STORAGE_CLASS="ARCHIVE")
    done = oeleo(tmp_path, "run", env=env, multipart=True)
    assert done.returncode == 2, done.stderr
    assert "OELEO_S3_STORAGE_CLASS='ARCHIVE'" in done.stderr.splitlines()[-1], done.stderr
    assert s3_server.count("PUT", f"/{s3_bucket}", "partNumber") == 0


def test_a_storage_class_refused_after_other_files_went_in_books_them_and_stops_the_run(
    s3_server, s3_bucket, tmp_path
):
    # The store takes some files, then refuses one for its storage class: what went in is
    # booked as copied, the run stops with the setting named (exit 2) and is booked failed.
    make_tree(tmp_path / "src", {f"f{i:02d}.csv": f"{i}\n" for i in range(20)})

    def refuse_f10(environ):
        refused = environ["REQUEST_METHOD"] == "PUT" and environ["PATH_INFO"].endswith("/f10.csv")
        return (400, "InvalidStorageClass") if refused else None

    s3_server.faults.append(refuse_f10)
    env = s3_env(s3_server, s3_bucket, OELEO_S3_STORAGE_CLASS="STANDARD")
    done = oeleo(tmp_path, "run", env=env)
    s3_server.faults.clear()

    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1].startswith("oeleo: OELEO_S3_STORAGE_CLASS='STANDARD'"), done.stderr
    stored = {key[len(PREFIX) :] for key in keys(s3_server, s3_bucket)}
    assert "f10.csv" not in stored
    rows = db_rows(tmp_path / "books.db")
    booked = {name for name, row in rows.items() if row["checksum"]}
    assert booked == stored  # every object in place is booked, and only those
    with sqlite3.connect(str(tmp_path / "books.db")) as connection:
        ((status, message),) = connection.execute("SELECT status, message FROM oeleo_runs").fetchall()
    assert status == "failed" and "OELEO_S3_STORAGE_CLASS" in message
    again = oeleo(tmp_path, "run", env=env)  # said once: the next run copies the rest
    assert again.returncode == 0, again.stderr
    assert len(keys(s3_server, s3_bucket)) == 20


def test_a_storage_class_botocore_does_not_know_is_refused_before_any_upload_to_aws():
    from oeleo.connectors.s3 import S3Connector

    with pytest.raises(ConfigError, match="OELEO_S3_STORAGE_CLASS='NONSENSE'.*STANDARD_IA"):
        S3Connector("lab-data", region="eu-north-1", storage_class="NONSENSE").connect()
    for known in ("STANDARD_IA", "GLACIER_IR", "DEEP_ARCHIVE"):
        S3Connector("lab-data", region="eu-north-1", storage_class=known).connect()
    # An S3-compatible store may have classes of its own: its first refusal says so.
    S3Connector("lab-data", endpoint_url="http://127.0.0.1:9", storage_class="NONSENSE").connect()


def test_access_denied_is_a_config_error(s3_server, s3_bucket, tmp_path):
    make_tree(tmp_path / "src", TREE)
    s3_server.faults.append(
        lambda environ: (403, "AccessDenied") if environ["PATH_INFO"].startswith(f"/{s3_bucket}") else None
    )
    done = oeleo(tmp_path, "run", env=s3_env(s3_server, s3_bucket))
    assert done.returncode == 2
    assert "denied" in one_error_line(done)


def test_keys_that_may_not_list_unfinished_uploads_copy_and_say_so(s3_server, s3_bucket, tmp_path):
    """The unfinished uploads are listed while the bucket is checked: a refusal of that
    listing alone is a warning, and the run copies."""
    make_tree(tmp_path / "src", TREE)

    def no_upload_listing(environ):
        listing = environ["REQUEST_METHOD"] == "GET" and "uploads" in environ.get("QUERY_STRING", "")
        return (403, "AccessDenied") if listing else None

    s3_server.faults.append(no_upload_listing)
    done = oeleo(tmp_path, "run", env=s3_env(s3_server, s3_bucket, OELEO_LOG_DIR=str(tmp_path / "logs")))
    assert done.returncode == 0, done.stderr
    assert "cannot look for unfinished uploads" in done.stderr + done.stdout
    assert keys(s3_server, s3_bucket) == sorted(PREFIX + relpath for relpath in TREE)


def test_a_refused_bucket_check_does_not_wait_for_the_listing_of_unfinished_uploads(s3_server, s3_bucket):
    import time

    def slow_upload_listing(environ):
        if environ["REQUEST_METHOD"] == "GET" and "uploads" in environ.get("QUERY_STRING", ""):
            time.sleep(3)
        return None

    def no_listing(environ):
        return (403, "AccessDenied") if "list-type" in environ.get("QUERY_STRING", "") else None

    s3_server.faults.extend([slow_upload_listing, no_listing])
    conn = connector(s3_server, s3_bucket)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="denied"):
        conn.prepare()
    assert time.monotonic() - started < 2
    conn.close()


def test_an_unreachable_endpoint_is_a_config_error_naming_the_setting(s3_bucket, s3_server, tmp_path):
    make_tree(tmp_path / "src", TREE)
    closed = f"http://127.0.0.1:{servers.free_port()}"
    done = oeleo(tmp_path, "run", env=s3_env(s3_server, s3_bucket, OELEO_S3_ENDPOINT_URL=closed))
    assert done.returncode == 2
    line = one_error_line(done)
    assert "OELEO_S3_ENDPOINT_URL" in line and closed in line


def test_an_https_endpoint_for_a_store_that_speaks_http_is_a_config_error_naming_the_setting(
    s3_bucket, s3_server, tmp_path
):
    make_tree(tmp_path / "src", TREE)
    (tmp_path / ".env").write_text("OELEO_LOG_DIR=logs\n")
    endpoint = s3_server.endpoint_url.replace("http://", "https://user:urlSECRET@")
    done = oeleo(tmp_path, "run", env=s3_env(s3_server, s3_bucket, OELEO_S3_ENDPOINT_URL=endpoint))
    assert done.returncode == 2, done.stderr
    line = one_error_line(done)
    assert "TLS with S3" in line and "OELEO_S3_ENDPOINT_URL=https://127.0.0.1:" in line, line
    assert "urlSECRET" not in done.stdout + done.stderr + (tmp_path / "logs" / "oeleo.log").read_text()


@pytest.mark.parametrize("scheme", ["http://", "", "http//"], ids=["url", "no-scheme", "broken-scheme"])
def test_the_password_of_an_unreachable_endpoint_is_never_shown_nor_booked(
    s3_bucket, s3_server, tmp_path, scheme
):
    make_tree(tmp_path / "src", TREE)
    (tmp_path / ".env").write_text("OELEO_LOG_DIR=logs\n")
    port = servers.free_port()
    endpoint = f"{scheme}user:urlSECRET@127.0.0.1:{port}"
    done = oeleo(tmp_path, "run", env=s3_env(s3_server, s3_bucket, OELEO_S3_ENDPOINT_URL=endpoint))
    assert done.returncode == 2
    line = one_error_line(done)
    assert "OELEO_S3_ENDPOINT_URL" in line and f"127.0.0.1:{port}" in line, line
    assert "urlSECRET" not in done.stdout + done.stderr
    assert "urlSECRET" not in (tmp_path / "logs" / "oeleo.log").read_text()
    config = oeleo(tmp_path, "config", env=s3_env(s3_server, s3_bucket, OELEO_S3_ENDPOINT_URL=endpoint))
    assert "urlSECRET" not in config.stdout and f"user:***@127.0.0.1:{port}" in config.stdout
    if scheme != "http://":  # not a URL: refused as the connector is made, before the books open
        assert not (tmp_path / "books.db").exists()
        return
    with sqlite3.connect(str(tmp_path / "books.db")) as db:
        messages = [row[0] for row in db.execute("SELECT message FROM oeleo_runs")]
    assert messages and not [m for m in messages if "urlSECRET" in (m or "")], messages


def test_the_password_of_an_endpoint_lost_later_is_never_shown(s3_server, s3_bucket):
    second = servers.start_s3()
    try:
        conn = connector(second, s3_bucket)
        conn.endpoint_url = second.endpoint_url.replace("http://", "http://user:urlSECRET@")
        conn.close()
        assert conn.check_base()
    finally:
        servers.stop_s3(second)
    with pytest.raises(ConnectionLost) as raised:
        conn.stat("a.csv")
    assert "urlSECRET" not in str(raised.value) and "127.0.0.1" in str(raised.value)
    conn.close()


def test_an_idle_rerun_after_a_clean_run_does_not_contact_the_store(s3_bucket, s3_server, tmp_path):
    """Nothing new after a run that ended well: no request at all (an idle pass every few
    minutes costs the store nothing). Something new: the store is asked, and an unreachable
    one is the same clear error as on a first run, which always connects."""
    make_tree(tmp_path / "src", TREE)
    env = s3_env(s3_server, s3_bucket)
    assert oeleo(tmp_path, "run", env=env).returncode == 0
    closed = f"http://127.0.0.1:{servers.free_port()}"
    idle = oeleo(tmp_path, "run", env=s3_env(s3_server, s3_bucket, OELEO_S3_ENDPOINT_URL=closed))
    assert idle.returncode == 0, idle.stderr
    assert f"{len(TREE)} unchanged" in idle.stderr  # the endpoint is a closed port: never asked
    make_tree(tmp_path / "src", {"new.csv": "1,2\n"})
    busy = oeleo(tmp_path, "run", env=s3_env(s3_server, s3_bucket, OELEO_S3_ENDPOINT_URL=closed))
    assert busy.returncode == 2
    assert "OELEO_S3_ENDPOINT_URL" in one_error_line(busy)
    assert "new.csv" not in db_rows(tmp_path / "books.db")
    with sqlite3.connect(str(tmp_path / "books.db")) as db:
        status, message = db.execute("SELECT status, message FROM oeleo_runs ORDER BY id DESC").fetchone()
    assert status == "failed" and message.startswith("destination not reached:"), (status, message)
    # After a failed pass, even an idle one asks the store again (and says it is not there).
    (tmp_path / "src" / "new.csv").rename(tmp_path / "new.csv")
    after_failure = oeleo(tmp_path, "run", env=s3_env(s3_server, s3_bucket, OELEO_S3_ENDPOINT_URL=closed))
    assert after_failure.returncode == 2
    (tmp_path / "new.csv").rename(tmp_path / "src" / "new.csv")
    again = oeleo(tmp_path, "run", env=env)  # the store is back: the new file goes up
    assert again.returncode == 0, again.stderr
    assert PREFIX + "new.csv" in keys(s3_server, s3_bucket)


def test_an_idle_rerun_does_not_even_import_botocore(s3_bucket, s3_server, tmp_path):
    """botocore costs 0.1 s to import: an idle pass (nothing to copy) does not pay it."""
    make_tree(tmp_path / "src", TREE)
    env = s3_env(s3_server, s3_bucket)
    assert oeleo(tmp_path, "run", env=env).returncode == 0
    code = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print('botocore imported:', 'botocore' in sys.modules, file=sys.stderr))\n"
        "sys.argv = ['oeleo', 'run']\n"
        "runpy.run_module('oeleo', run_name='__main__', alter_sys=True)\n"
    )
    idle = subprocess.run(
        [sys.executable, "-c", code],
        cwd=str(tmp_path),
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert idle.returncode == 0, idle.stderr
    assert "botocore imported: False" in idle.stderr
    make_tree(tmp_path / "src", {"new.csv": "1\n"})
    busy = subprocess.run(
        [sys.executable, "-c", code], cwd=str(tmp_path), env=clean_env(env), capture_output=True, text=True
    )
    assert busy.returncode == 0, busy.stderr
    assert "botocore imported: True" in busy.stderr
    assert PREFIX + "new.csv" in keys(s3_server, s3_bucket)


@pytest.mark.parametrize(
    "setting, value, named",
    [("OELEO_S3_ENDPOINT_URL", "htp://127.0.0.1:9", "http:// or https://"),
     ("OELEO_S3_ENDPOINT_URL", "127.0.0.1:9000", "not a URL"),
     ("OELEO_S3_ENDPOINT_URL", "http://[::1:9000", "not a URL (Invalid IPv6 URL)"),
     ("OELEO_S3_ENDPOINT_URL", "http://::1:9000", "an IPv6 address goes in brackets"),
     ("OELEO_S3_ENDPOINT_URL", "http://bad host:9000", "is not a host name"),
     ("OELEO_S3_ENDPOINT_URL", "http://127.0.0.1:9000/?x=1", "no query (?...) or fragment"),
     ("OELEO_S3_BUCKET", "Bad_Bucket!", "not a bucket name")],
)  # fmt: skip
def test_a_setting_no_request_could_use_stops_an_idle_rerun_too(
    s3_bucket, s3_server, tmp_path, setting, value, named
):
    make_tree(tmp_path / "src", TREE)
    env = s3_env(s3_server, s3_bucket)
    assert oeleo(tmp_path, "run", env=env).returncode == 0

    done = oeleo(tmp_path, "run", env={**env, setting: value})  # nothing to copy

    assert done.returncode == 2, done.stderr
    line = one_error_line(done)
    assert line.startswith(f"oeleo: {setting}=") and named in line, line


def test_an_endpoint_url_with_a_path_or_not_an_s3_server_is_said_as_such(s3_bucket, s3_server, tmp_path):
    import http.server

    make_tree(tmp_path / "src", TREE)
    with_path = oeleo(
        tmp_path, "run", env=s3_env(s3_server, s3_bucket, OELEO_S3_ENDPOINT_URL=s3_server.endpoint_url + "/x")
    )
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{web.server_address[1]}"
        not_s3 = oeleo(tmp_path, "run", env=s3_env(s3_server, s3_bucket, OELEO_S3_ENDPOINT_URL=endpoint))
    finally:
        web.shutdown()
        web.server_close()

    assert with_path.returncode == 2 and not_s3.returncode == 2
    line = one_error_line(with_path)
    assert "OELEO_S3_ENDPOINT_URL has a path (/x)" in line and "goes in OELEO_S3_BUCKET" in line, line
    line = one_error_line(not_s3)
    assert line.startswith(f"oeleo: OELEO_S3_ENDPOINT_URL='{endpoint}': answered 404"), line
    assert "is it an S3 server?" in line, line


def test_a_first_run_with_nothing_to_copy_still_checks_the_store(s3_bucket, s3_server, tmp_path):
    (tmp_path / "src").mkdir()
    closed = f"http://127.0.0.1:{servers.free_port()}"
    done = oeleo(tmp_path, "run", env=s3_env(s3_server, s3_bucket, OELEO_S3_ENDPOINT_URL=closed))
    assert done.returncode == 2
    assert "OELEO_S3_ENDPOINT_URL" in one_error_line(done)


def test_an_endpoint_lost_after_it_worked_is_a_dropped_connection(s3_server, s3_bucket):
    second = servers.start_s3()  # the same moto state, another port: stopped half way
    try:
        conn = connector(second, s3_bucket)
        assert conn.check_base()
    finally:
        servers.stop_s3(second)
    with pytest.raises(ConnectionLost):
        conn.stat("a.csv")
    conn.close()


def test_a_store_that_goes_away_for_good_stops_the_run_after_the_first_file(s3_bucket, tmp_path, caplog):
    # The store is stopped as the copies begin: the first file's retries find it still away
    # (the reconnect lists the prefix), and the run stops instead of trying the 5 files left.
    from oeleo.checkers import ChecksumChecker
    from oeleo.connectors.local import LocalConnector
    from oeleo.models import SimpleDbHandler
    from oeleo.reporters import Reporter
    from oeleo.workers import Worker

    second = servers.start_s3()
    second.new_bucket(s3_bucket)
    for i in range(6):
        write_random(tmp_path / "src" / f"cube_{i}.fits", 9 * MiB)  # multipart: parts sent at once

    class StopTheStore(Reporter):
        def run_started(self, files: int, nbytes: int) -> None:
            super().run_started(files, nbytes)
            servers.stop_s3(second)

    conn = connector(second, s3_bucket, single_put_limit=0)
    worker = Worker(
        checker=ChecksumChecker(),
        bookkeeper=SimpleDbHandler(tmp_path / "books.db"),
        local_connector=LocalConnector(tmp_path / "src"),
        external_connector=conn,
        reporter=StopTheStore(),
        retries=1,
    )
    caplog.set_level(logging.WARNING, logger="oeleo")
    worker.connect_to_db()
    try:
        summary = worker.run()
    finally:
        worker.close()

    assert summary.copied == 0 and 1 <= summary.failed <= 2, summary.errors  # the files in flight
    assert summary.fatal and "gave up after 1 reconnect)" in summary.fatal, summary.fatal
    assert caplog.text.count("reconnecting in") <= 2, caplog.text
    assert summary.copied + summary.failed + summary.left == 6, summary.describe()
    assert "list-type" not in summary.fatal, summary.fatal  # not the URL of botocore's own request


def test_a_server_error_in_the_middle_of_a_multipart_upload_fails_the_file_and_leaves_no_parts(
    s3_server, s3_bucket, tmp_path
):
    src = tmp_path / "src"
    write_random(src / "big.fits", 20 * MiB)
    (src / "small.csv").write_text("a,b\n")
    part_two = []

    def fail_part_two(environ):
        if "partNumber=2" in environ.get("QUERY_STRING", ""):
            part_two.append(1)
            return 500, "InternalError"
        return None

    s3_server.faults.append(fail_part_two)
    done = oeleo(tmp_path, "run", env=s3_env(s3_server, s3_bucket), multipart=True)

    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if "big.fits" in line], done.stderr
    assert len(part_two) > 1  # botocore tried again before giving up
    assert unfinished(s3_server, s3_bucket) == []
    assert keys(s3_server, s3_bucket) == [PREFIX + "small.csv"]  # no object, no marker
    assert db_rows(tmp_path / "books.db")["big.fits"]["last_error"]


# -- uploads ------------------------------------------------------------------------------


def test_a_large_file_is_visible_only_once_committed(s3_server, s3_bucket, tmp_path):
    conn = connector(s3_server, s3_bucket, single_put_limit=0)
    digest = write_random(tmp_path / "big.fits", 3 * 8 * MiB + 5)

    staged = conn.stage(tmp_path / "big.fits", "night/big.fits")

    assert staged.verified and staged.checksum == digest
    assert unfinished(s3_server, s3_bucket) == [PREFIX + "night/big.fits"]
    assert conn.stat("night/big.fits") is None
    assert [e.relpath for e in conn.list_files()] == []
    conn.commit(staged)
    assert unfinished(s3_server, s3_bucket) == []
    assert keys(s3_server, s3_bucket) == [PREFIX + "night/big.fits"]  # the marker is gone
    assert conn.checksum("night/big.fits", "md5") == digest
    assert s3_server.count("PUT", f"/{s3_bucket}/{PREFIX}night/big.fits", "partNumber=4") == 1


def test_a_medium_file_is_sent_at_the_commit_in_one_put_with_its_md5_and_metadata(
    s3_server, s3_bucket, tmp_path
):
    conn = connector(s3_server, s3_bucket)
    digest = write_random(tmp_path / "big.fits", 3 * 8 * MiB + 5)
    sent = []
    conn.client.meta.events.register(
        "before-send.s3.PutObject", lambda request, **kwargs: sent.append(request.headers.get("Content-MD5"))
    )
    key = f"/{s3_bucket}/{PREFIX}night/big.fits"

    staged = conn.stage(tmp_path / "big.fits", "night/big.fits")

    assert staged.verified and staged.checksum == digest
    assert s3_server.count("PUT", key) == 0 and sent == []  # nothing sent before the commit
    assert keys(s3_server, s3_bucket) == [] and unfinished(s3_server, s3_bucket) == []
    conn.commit(staged)
    content_md5 = base64.b64encode(bytes.fromhex(digest)).decode()
    assert [h.decode() if isinstance(h, bytes) else h for h in sent] == [content_md5]
    assert s3_server.count("PUT", key) == 1  # no copy onto itself for the metadata
    assert s3_server.count("POST", key) == 0  # no multipart upload
    assert keys(s3_server, s3_bucket) == [PREFIX + "night/big.fits"]
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=PREFIX + "night/big.fits")
    assert head["Metadata"]["oeleo-md5"] == digest and head["ContentLength"] == 3 * 8 * MiB + 5
    assert conn.checksum("night/big.fits", "md5") == digest


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["new-mtime", "same-mtime"])
def test_a_medium_file_changed_between_its_read_and_its_commit_keeps_the_previous_copy(
    s3_server, s3_bucket, tmp_path, keep_mtime
):
    """Changed with a new mtime: seen before anything is sent. Changed with the same size and
    mtime (a tool restoring it): the PutObject carries the md5 of the engine's read, and the
    store refuses the other bytes (BadDigest)."""
    conn = connector(s3_server, s3_bucket)
    src = tmp_path / "big.fits"
    first = write_random(src, 9 * MiB)
    conn.put(src, "big.fits")
    write_random(src, 9 * MiB)
    staged = conn.stage(src, "big.fits")
    before = src.stat()
    write_random(src, 9 * MiB)
    if keep_mtime:
        os.utime(src, ns=(before.st_atime_ns, before.st_mtime_ns))
    else:
        os.utime(src, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    puts = s3_server.count("PUT", f"/{s3_bucket}/{PREFIX}big.fits")

    with pytest.raises(VerificationError if keep_mtime else FileChangedError):
        conn.commit(staged)
    conn.discard(staged)

    assert s3_server.count("PUT", f"/{s3_bucket}/{PREFIX}big.fits") == puts + (1 if keep_mtime else 0)
    assert keys(s3_server, s3_bucket) == [PREFIX + "big.fits"] and unfinished(s3_server, s3_bucket) == []
    assert conn.checksum("big.fits", "md5") == first


def test_a_medium_file_is_sent_again_from_its_start_after_a_server_error(s3_server, s3_bucket, tmp_path):
    conn = connector(s3_server, s3_bucket)
    digest = write_random(tmp_path / "big.fits", 9 * MiB)
    failed = []

    def fail_the_first_put(environ):
        if environ["REQUEST_METHOD"] == "PUT" and environ["PATH_INFO"].endswith("/big.fits") and not failed:
            failed.append(1)
            return 500, "InternalError"
        return None

    s3_server.faults.append(fail_the_first_put)
    conn.put(tmp_path / "big.fits", "big.fits")

    assert failed and s3_server.count("PUT", f"/{s3_bucket}/{PREFIX}big.fits") == 2
    body = s3_server.client().get_object(Bucket=s3_bucket, Key=PREFIX + "big.fits")["Body"].read()
    assert md5(body) == digest and conn.checksum("big.fits") == digest


def test_an_abort_that_fails_is_tried_again_and_leaves_no_upload_behind(
    s3_server, s3_bucket, tmp_path, caplog
):
    """The store is away when a multipart upload is aborted (a network cut; here, every
    AbortMultipartUpload answered 500 until the store is back): its marker stays, and the
    abort is tried again before the next upload starts, so none is left behind (the retry's
    marker overwrote the first one, and nothing named that upload any more)."""
    conn = connector(s3_server, s3_bucket, single_put_limit=0)
    write_random(tmp_path / "big.fits", 2 * 8 * MiB + 7)
    away = [True]

    def abort_fails(environ):
        aborting = environ["REQUEST_METHOD"] == "DELETE" and "uploadId=" in environ.get("QUERY_STRING", "")
        return (500, "InternalError") if aborting and away[0] else None

    s3_server.faults.append(abort_fails)
    caplog.set_level(logging.WARNING, logger="oeleo")
    first = conn.stage(tmp_path / "big.fits", "big.fits")
    conn.discard(first)
    assert unfinished(s3_server, s3_bucket) == [PREFIX + "big.fits"]
    assert "cannot abort the upload of" in caplog.text and "tried again later" in caplog.text

    away[0] = False
    again = conn.stage(tmp_path / "big.fits", "big.fits")  # a new upload: the first is aborted first
    conn.commit(again)

    assert unfinished(s3_server, s3_bucket) == []
    assert keys(s3_server, s3_bucket) == [PREFIX + "big.fits"]  # no marker left


def test_an_abort_that_fails_until_the_end_is_tried_when_the_connector_closes(s3_server, s3_bucket, tmp_path):
    conn = connector(s3_server, s3_bucket, single_put_limit=0)
    write_random(tmp_path / "big.fits", 2 * 8 * MiB + 7)
    away = [True]
    s3_server.faults.append(
        lambda environ: (
            (500, "InternalError")
            if away[0]
            and environ["REQUEST_METHOD"] == "DELETE"
            and "uploadId=" in environ.get("QUERY_STRING", "")
            else None
        )
    )
    conn.discard(conn.stage(tmp_path / "big.fits", "big.fits"))
    assert unfinished(s3_server, s3_bucket) == [PREFIX + "big.fits"]

    away[0] = False
    conn.close()

    assert unfinished(s3_server, s3_bucket) == []
    assert keys(s3_server, s3_bucket) == []  # the marker is gone too


def test_a_marker_that_cannot_be_removed_after_the_completion_is_removed_later(
    s3_server, s3_bucket, tmp_path
):
    """The upload completes, then the store is away when its marker is deleted: the marker
    is deleted at the next chance (here, when the connector closes), not left for good."""
    conn = connector(s3_server, s3_bucket, single_put_limit=0)
    digest = write_random(tmp_path / "big.fits", 2 * 8 * MiB + 7)
    away = [True]

    def marker_delete_fails(environ):
        deleting = environ["REQUEST_METHOD"] == "DELETE" and environ["PATH_INFO"].endswith(".oeleo-part")
        return (500, "InternalError") if deleting and away[0] else None

    s3_server.faults.append(marker_delete_fails)
    conn.commit(conn.stage(tmp_path / "big.fits", "big.fits"))
    assert len(keys(s3_server, s3_bucket)) == 2  # the object, and its marker

    away[0] = False
    conn.close()

    assert keys(s3_server, s3_bucket) == [PREFIX + "big.fits"] and unfinished(s3_server, s3_bucket) == []
    assert (
        md5(s3_server.client().get_object(Bucket=s3_bucket, Key=PREFIX + "big.fits")["Body"].read()) == digest
    )


def completion_of(name: str):
    return lambda environ: (
        environ["REQUEST_METHOD"] == "POST"
        and environ["PATH_INFO"].endswith("/" + name)
        and "uploadId=" in environ.get("QUERY_STRING", "")
    )


def test_a_completion_whose_answer_was_lost_is_found_done_by_the_objects_etag(s3_server, s3_bucket, tmp_path):
    """The CompleteMultipartUpload arrives, its answer does not; asked again, the store says
    NoSuchUpload (as S3 may once an upload is completed): the object is there, made of exactly
    the parts sent, and the copy is committed, not failed."""
    conn = connector(s3_server, s3_bucket, single_put_limit=0)
    digest = write_random(tmp_path / "big.fits", 2 * 8 * MiB + 7)
    staged = conn.stage(tmp_path / "big.fits", "big.fits")
    completing = completion_of("big.fits")
    cut: List[int] = []

    def cut_the_first(environ):
        if completing(environ) and not cut:
            cut.append(1)
            return True
        return False

    s3_server.cut_answers.append(cut_the_first)
    s3_server.faults.append(lambda environ: (404, "NoSuchUpload") if completing(environ) and cut else None)
    conn.commit(staged)

    assert cut and s3_server.count("POST", f"/{s3_bucket}/{PREFIX}big.fits", "uploadId=") >= 2
    assert unfinished(s3_server, s3_bucket) == []
    assert keys(s3_server, s3_bucket) == [PREFIX + "big.fits"]  # the marker is gone
    assert conn.checksum("big.fits", "md5") == digest


def test_a_completion_refused_as_no_such_upload_for_other_parts_fails(s3_server, s3_bucket, tmp_path):
    """NoSuchUpload, and the object under the key is not these parts (the upload was aborted
    elsewhere): the file fails, and the previous copy is kept."""
    conn = connector(s3_server, s3_bucket, single_put_limit=0)
    previous = write_random(tmp_path / "big.fits", 9 * MiB)
    conn.commit(conn.stage(tmp_path / "big.fits", "big.fits"))
    write_random(tmp_path / "big.fits", 2 * 8 * MiB + 7)
    staged = conn.stage(tmp_path / "big.fits", "big.fits")
    completing = completion_of("big.fits")
    s3_server.faults.append(lambda environ: (404, "NoSuchUpload") if completing(environ) else None)

    with pytest.raises(TransferError, match="the multipart upload is gone"):
        conn.commit(staged)
    conn.discard(staged)

    assert conn.checksum("big.fits", "md5") == previous


def test_a_medium_file_whose_put_answers_were_lost_is_committed_by_the_commit_retries(
    s3_server, s3_bucket, tmp_path
):
    """Every attempt botocore makes of the PutObject loses its answer, until the connector has
    reconnected (a connection that drops and comes back): the engine's commit retries send it
    again from the file, and the copy is committed."""
    conn = connector(s3_server, s3_bucket)
    conn.commit_retries = 2
    digest = write_random(tmp_path / "big.fits", 9 * MiB)
    assert [e.relpath for e in conn.list_files()] == []  # S3 answered: a drop now is a lost connection
    staged = conn.stage(tmp_path / "big.fits", "big.fits")
    key = f"/{s3_bucket}/{PREFIX}big.fits"
    cut: List[int] = []
    reconnected: List[int] = []

    def cut_until_reconnected(environ):
        if cut and environ["REQUEST_METHOD"] == "GET" and "list-type=2" in environ.get("QUERY_STRING", ""):
            reconnected.append(1)
        if environ["REQUEST_METHOD"] == "PUT" and environ["PATH_INFO"] == key and not reconnected:
            cut.append(1)
            return True
        return False

    s3_server.cut_answers.append(cut_until_reconnected)
    [result] = conn.commit_many([staged])

    assert not isinstance(result, Failed), result
    assert reconnected and len(cut) >= 2 and s3_server.count("PUT", key) == len(cut) + 1
    body = s3_server.client().get_object(Bucket=s3_bucket, Key=PREFIX + "big.fits")["Body"].read()
    assert md5(body) == digest and conn.checksum("big.fits") == digest


def test_a_medium_file_removed_before_its_commit_fails_and_keeps_the_previous_copy(
    s3_server, s3_bucket, tmp_path
):
    conn = connector(s3_server, s3_bucket)
    src = tmp_path / "big.fits"
    first = write_random(src, 9 * MiB)
    conn.put(src, "big.fits")
    write_random(src, 9 * MiB)
    staged = conn.stage(src, "big.fits")
    src.unlink()

    with pytest.raises(FileChangedError, match="cannot be read again"):
        conn.commit(staged)
    conn.discard(staged)

    assert conn.checksum("big.fits", "md5") == first


def test_a_medium_file_whose_store_ignores_the_md5_is_not_reported_copied(s3_server, s3_bucket, tmp_path):
    s3_server.check_md5 = False  # a store that ignores Content-MD5, as moto
    conn = connector(s3_server, s3_bucket)
    src = tmp_path / "big.fits"
    write_random(src, 9 * MiB)
    corrupt_body(conn, "PutObject")

    with pytest.raises(VerificationError, match="ignored the Content-MD5"):
        conn.put(src, "big.fits")


@pytest.mark.parametrize("size", [1024, 9 * MiB], ids=["small", "medium"])
def test_a_copy_a_store_kept_wrong_is_booked_to_copy_and_sent_again_unchanged(
    s3_server, s3_bucket, tmp_path, size
):
    """A store that ignores Content-MD5 keeps a body changed on its way (here: by a hook,
    after the MD5 was computed) under the real name. The file fails, its row says to copy it
    (code 0), and the next run sends it again although the source did not change since the
    copy before; ``check`` meanwhile sees the object differ (its metadata says otherwise)."""
    from oeleo.checkers import ChecksumChecker
    from oeleo.connectors.local import LocalConnector
    from oeleo.models import SimpleDbHandler
    from oeleo.workers import Worker

    s3_server.check_md5 = False
    digest = write_random(tmp_path / "src" / "cube.fits", size)

    def run(force=False, corrupt=False):
        conn = connector(s3_server, s3_bucket)
        if corrupt:
            corrupt_body(conn, "PutObject")
        worker = Worker(
            checker=ChecksumChecker(),
            bookkeeper=SimpleDbHandler(tmp_path / "books.db"),
            local_connector=LocalConnector(tmp_path / "src"),
            external_connector=conn,
            force=force,
        )
        worker.connect_to_db()
        try:
            return worker.run(), worker.check()
        finally:
            worker.close()

    assert run()[0].copied == 1
    summary, report = run(force=True, corrupt=True)

    assert summary.copied == 0 and summary.failed == 1, summary.describe()
    assert "ignored the Content-MD5; sent again on the next run" in summary.errors[0][1]
    row = db_rows(tmp_path / "books.db")["cube.fits"]
    assert row["code"] == 0 and "ignored the Content-MD5" in row["last_error"], row
    assert report.different == ["cube.fits"], report
    summary, report = run()  # the source is as it was: sent again all the same
    assert summary.copied == 1, summary.describe()
    assert db_rows(tmp_path / "books.db")["cube.fits"]["code"] == 1
    body = s3_server.client().get_object(Bucket=s3_bucket, Key=PREFIX + "cube.fits")["Body"].read()
    assert md5(body) == digest
    assert not report.different and not report.missing, report


def test_check_does_not_believe_metadata_that_the_objects_etag_contradicts(s3_server, s3_bucket, tmp_path):
    make_tree(tmp_path / "src", TREE)
    env = s3_env(s3_server, s3_bucket)
    assert oeleo(tmp_path, "run", env=env).returncode == 0
    client = s3_server.client()
    head = client.head_object(Bucket=s3_bucket, Key=PREFIX + "a.csv")
    # Rewritten by another tool with the same size, the metadata copied along.
    client.put_object(
        Bucket=s3_bucket, Key=PREFIX + "a.csv", Body=b"x" * head["ContentLength"], Metadata=head["Metadata"]
    )

    done = oeleo(tmp_path, "check", env=env)

    assert done.returncode == 1, done.stdout + done.stderr
    assert "different a.csv" in done.stdout, done.stdout


def test_a_medium_file_sent_compressed_goes_as_a_multipart_upload(s3_server, s3_bucket, tmp_path):
    """gzip on the way: the bytes sent cannot be read again from the file."""
    import gzip

    conn = connector(s3_server, s3_bucket)
    src = tmp_path / "big.fits"
    src.write_bytes(os.urandom(9 * MiB))

    result = conn.put(src, "big.fits", compress="gzip")

    assert result.relpath == "big.fits.gz"
    assert s3_server.count("POST", f"/{s3_bucket}/{PREFIX}big.fits.gz", "uploads") == 1
    body = s3_server.client().get_object(Bucket=s3_bucket, Key=PREFIX + "big.fits.gz")["Body"].read()
    assert gzip.decompress(body) == src.read_bytes()
    assert unfinished(s3_server, s3_bucket) == [] and keys(s3_server, s3_bucket) == [PREFIX + "big.fits.gz"]


@pytest.mark.parametrize("single_put_limit", [0, None], ids=["multipart", "one-put"])
def test_a_large_file_changed_during_its_upload_is_aborted_and_the_previous_copy_kept(
    s3_server, s3_bucket, tmp_path, single_put_limit
):
    conn = connector(s3_server, s3_bucket, single_put_limit=single_put_limit)
    src = tmp_path / "big.fits"
    first = write_random(src, 20 * MiB)
    conn.put(src, "big.fits")
    write_random(src, 20 * MiB)

    def append_once(nbytes, done=[]):  # noqa: B006 - once per test
        if not done:
            done.append(nbytes)
            with open(src, "ab") as handle:
                handle.write(b"more")

    with pytest.raises(FileChangedError):
        conn.put(src, "big.fits", progress=append_once)

    assert unfinished(s3_server, s3_bucket) == []
    assert keys(s3_server, s3_bucket) == [PREFIX + "big.fits"]
    assert conn.checksum("big.fits", "md5") == first


def corrupt_body(conn, operation: str) -> None:
    """Change the body of ``operation`` requests after botocore computed their Content-MD5."""

    def corrupt(request, **kwargs):
        body = request.body
        if isinstance(body, bytes) and body:
            request.body = b"X" + body[1:]
        elif hasattr(body, "read"):
            data = body.read()
            request.body = b"X" + data[1:]

    conn.client.meta.events.register(f"before-send.s3.{operation}", corrupt)


def test_a_small_body_that_differs_from_its_md5_is_refused_and_the_previous_copy_kept(
    s3_server, s3_bucket, tmp_path
):
    conn = connector(s3_server, s3_bucket)
    src = tmp_path / "a.csv"
    src.write_bytes(b"version 1")
    conn.put(src, "a.csv")
    src.write_bytes(b"version 2, longer")
    corrupt_body(conn, "PutObject")

    with pytest.raises(VerificationError, match="BadDigest"):
        conn.put(src, "a.csv")

    assert conn.checksum("a.csv", "md5") == md5(b"version 1")


@pytest.mark.parametrize("store_checks_md5", [True, False])
def test_a_part_that_arrives_damaged_fails_the_upload_before_it_is_completed(
    s3_server, s3_bucket, tmp_path, store_checks_md5
):
    s3_server.check_md5 = store_checks_md5  # False: a store that ignores Content-MD5, as moto
    conn = connector(s3_server, s3_bucket, single_put_limit=0)
    src = tmp_path / "big.fits"
    first = write_random(src, 10 * MiB)
    conn.put(src, "big.fits")
    write_random(src, 20 * MiB)
    corrupt_body(conn, "UploadPart")

    with pytest.raises(VerificationError):
        conn.put(src, "big.fits")

    assert unfinished(s3_server, s3_bucket) == []
    assert conn.checksum("big.fits", "md5") == first


def test_with_request_checksums_each_part_carries_its_crc32_and_its_md5(s3_server, s3_bucket, tmp_path):
    conn = connector(s3_server, s3_bucket, request_checksums="when_supported", single_put_limit=0)
    sent = []
    conn.client.meta.events.register(
        "before-send.s3.UploadPart",
        lambda request, **kwargs: sent.append(
            (request.headers.get("x-amz-checksum-crc32"), request.headers.get("Content-MD5"))
        ),
    )
    digest = write_random(tmp_path / "big.fits", 17 * MiB)
    (tmp_path / "a.csv").write_bytes(b"a")

    conn.put(tmp_path / "big.fits", "big.fits")
    conn.put(tmp_path / "a.csv", "a.csv")

    assert len(sent) == 3 and all(crc and content_md5 for crc, content_md5 in sent)
    assert conn.checksum("big.fits") == digest
    assert conn.checksum("a.csv") == md5(b"a")


@pytest.mark.parametrize(
    "endpoint, chosen, expected",
    [("http://minio.lab:9000", None, "when_required"), (None, None, "when_supported"),
     ("http://minio.lab:9000", "when_supported", "when_supported")],
)  # fmt: skip
def test_request_checksums_default_to_when_required_with_an_endpoint(endpoint, chosen, expected):
    from oeleo.connectors.s3 import S3Connector
    from oeleo.settings import Settings

    settings = Settings(
        _env_file=None,
        s3_bucket="lab",
        s3_endpoint_url=endpoint,
        s3_request_checksums=chosen,
        checksum="sha256",
    )
    conn = S3Connector.from_settings(settings)

    assert conn.request_checksums == expected
    assert conn.features.hashes == {"md5", "sha256"}


def test_the_books_algorithm_is_kept_in_the_metadata_too(s3_server, s3_bucket, tmp_path):
    conn = connector(s3_server, s3_bucket, algorithm="sha256")
    (tmp_path / "a.csv").write_bytes(b"abc")

    result = conn.put(tmp_path / "a.csv", "a.csv", algorithm="sha256")

    assert result.verified
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=PREFIX + "a.csv")
    assert head["Metadata"]["oeleo-sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert int(head["Metadata"]["oeleo-mtime-ns"]) == (tmp_path / "a.csv").stat().st_mtime_ns
    assert conn.stat("a.csv").mtime_ns == (tmp_path / "a.csv").stat().st_mtime_ns


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak memory from /proc")
@pytest.mark.parametrize("mib", [None, 190], ids=["multipart", "one-put"])
def test_a_2_gb_class_file_stays_in_bounded_memory(s3_server, s3_bucket, tmp_path, mib):
    """A file several times larger than the bound goes up without holding it in memory: a
    multipart upload (320 MiB by default), and one PutObject streamed from the file (190 MiB,
    below the 200 MiB limit: the bound is 200 MB, so holding it would fail).

    The peak is the process's VmHWM, not ru_maxrss: that one also counts the image of this
    test process (moto's objects) that the child had between fork and exec."""
    size = (mib or int(os.environ.get("OELEO_TEST_S3_BIG_MIB", "320"))) * MiB
    digest = write_random(tmp_path / "big.fits", size)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from oeleo.connectors.s3 import S3Connector\n"
        "conn = S3Connector(sys.argv[1], prefix='mem', endpoint_url=sys.argv[2])\n"
        "result = conn.put(Path(sys.argv[3]), 'big.fits')\n"
        "peak = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')]\n"
        "print(result.checksum, peak[0])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, s3_bucket, s3_server.endpoint_url, str(tmp_path / "big.fits")],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    checksum, peak_kib = done.stdout.split()
    assert checksum == digest
    assert int(peak_kib) * 1024 < 200 * 1000 * 1000, f"{int(peak_kib) // 1024} MiB for {size // MiB} MiB"
    key = f"/{s3_bucket}/mem/big.fits"
    assert s3_server.count("POST", key, "uploads") == (0 if mib else 1)
    assert (
        s3_server.client().head_object(Bucket=s3_bucket, Key="mem/big.fits")["Metadata"]["oeleo-md5"]
        == digest
    )


# -- listing and names ---------------------------------------------------------------------


def test_more_than_1000_objects_are_listed(s3_server, s3_bucket):
    client = s3_server.client()
    names = [f"run/{index:05d}.csv" for index in range(1100)]
    for name in names:
        client.put_object(Bucket=s3_bucket, Key=PREFIX + name, Body=b"1")
    client.put_object(Bucket=s3_bucket, Key="elsewhere/x.csv", Body=b"1")
    conn = connector(s3_server, s3_bucket)

    listed = [entry.relpath for entry in conn.list_files()]

    assert listed == names
    assert s3_server.count("GET", f"/{s3_bucket}", "list-type=2") >= 2


def test_folder_keys_and_hidden_names_are_not_files(s3_server, s3_bucket):
    client = s3_server.client()
    for key in ("run/", "run/a.csv", "run/.hidden.csv", ".cache/b.csv", "c.csv"):
        client.put_object(Bucket=s3_bucket, Key=PREFIX + key, Body=b"" if key.endswith("/") else b"1")
    conn = connector(s3_server, s3_bucket)

    assert [e.relpath for e in conn.list_files()] == ["c.csv", "run/a.csv"]
    assert [e.relpath for e in conn.list_files(recursive=False)] == ["c.csv"]
    assert [e.relpath for e in conn.list_files(extensions=[".csv"], exclude=["run"])] == ["c.csv"]


@pytest.mark.parametrize(
    "relpath",
    ["with space/a b.csv", "målinger/prøve ü.csv", "a+b/c+d.csv", "100%/50%25.csv", "日本/データ.fits"],
)
def test_names_round_trip_to_their_keys(s3_server, s3_bucket, tmp_path, relpath):
    conn = connector(s3_server, s3_bucket)
    (tmp_path / "f").write_bytes(b"payload")

    result = conn.put(tmp_path / "f", relpath)

    assert keys(s3_server, s3_bucket) == [PREFIX + relpath]
    assert result.external_name == f"s3://{s3_bucket}/{PREFIX}{relpath}"
    assert [e.relpath for e in conn.list_files()] == [relpath]
    assert conn.stat(relpath).size == 7
    assert conn.checksum(relpath) == md5(b"payload")


@pytest.mark.skipif(sys.platform == "win32", reason="a name that is not UTF-8 needs POSIX bytes names")
def test_a_name_that_is_not_utf8_fails_in_one_sentence_naming_it_once(s3_server, s3_bucket, tmp_path):
    (tmp_path / "src").mkdir()
    with open(os.path.join(os.fsencode(tmp_path / "src"), b"\xff\xfe.dat"), "wb") as f:
        f.write(b"x")
    (tmp_path / "src" / "ok.csv").write_text("1\n")

    done = oeleo(tmp_path, "run", env=s3_env(s3_server, s3_bucket))

    assert done.returncode == 1, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if "UTF-8" in line]
    assert line.count("\\xff\\xfe.dat") == 1, line
    assert line.rstrip().endswith(".") and "rename" in line, line
    assert keys(s3_server, s3_bucket) == [PREFIX + "ok.csv"]
    rows = db_rows(tmp_path / "books.db")
    (row,) = [row for name, row in rows.items() if name != "ok.csv"]
    assert "S3 keys must be UTF-8" in row["last_error"]


def test_checksums_of_many_objects_are_asked_with_head_requests(s3_server, s3_bucket, tmp_path):
    conn = connector(s3_server, s3_bucket)
    names = [f"f{index}.csv" for index in range(20)]
    for name in names:
        (tmp_path / name).write_text(name)
        conn.put(tmp_path / name, name)
    gets = s3_server.count("GET", f"/{s3_bucket}/{PREFIX}")

    found = conn.checksums([*names, "missing.csv"])

    assert found == {name: md5(name.encode()) for name in names}
    assert s3_server.count("GET", f"/{s3_bucket}/{PREFIX}") == gets


@pytest.mark.parametrize("files", [5, 60])  # HEADs in parallel; one listing of the prefix
def test_check_asks_the_sizes_of_many_objects_in_one_listing(s3_server, s3_bucket, tmp_path, files):
    make_tree(tmp_path / "src", {f"d/f{index:03}.csv": f"{index}\n" for index in range(files)})
    env = s3_env(s3_server, s3_bucket)
    assert oeleo(tmp_path, "run", env=env).returncode == 0
    (tmp_path / "src" / "d" / "f001.csv").write_text("9\n")  # same size, other bytes
    heads = s3_server.count("HEAD", f"/{s3_bucket}/{PREFIX}")

    done = oeleo(tmp_path, "check", env=env)

    assert done.returncode == 1 and "different d/f001.csv" in " ".join(done.stdout.split()), done.stdout
    assert f"same: {files - 1}" in done.stdout, done.stdout
    asked = s3_server.count("HEAD", f"/{s3_bucket}/{PREFIX}") - heads
    assert asked == (files * 2 if files < 50 else files), asked  # a size, then the metadata


def test_a_prefix_is_a_folder_of_the_bucket(s3_server, s3_bucket, tmp_path):
    conn = connector(s3_server, s3_bucket, prefix="/lab/instr 2")
    (tmp_path / "a.csv").write_bytes(b"a")
    conn.put(tmp_path / "a.csv", "a.csv")
    assert keys(s3_server, s3_bucket) == ["lab/instr 2/a.csv"]
    with pytest.raises(ConfigError, match="OELEO_S3_PREFIX"):
        connector(s3_server, s3_bucket, prefix="lab/../x")


def test_importing_the_connectors_does_not_import_boto3():
    code = "import sys, oeleo.connectors; print('boto3' in sys.modules, 'botocore' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_content_md5_of_a_part_is_the_md5_of_its_bytes(s3_server, s3_bucket, tmp_path):
    conn = connector(s3_server, s3_bucket, single_put_limit=0)
    seen = []

    def record(request, **kwargs):
        seen.append(request.headers.get("Content-MD5"))

    conn.client.meta.events.register("before-send.s3.UploadPart", record)
    data = os.urandom(9 * MiB)
    (tmp_path / "big").write_bytes(data)
    conn.put(tmp_path / "big", "big")
    expected = [base64.b64encode(hashlib.md5(data[: 8 * MiB]).digest()).decode()]
    expected.append(base64.b64encode(hashlib.md5(data[8 * MiB :]).digest()).decode())
    assert sorted(h.decode() if isinstance(h, bytes) else h for h in seen) == sorted(expected)


def test_upload_requests_sign_their_md5_instead_of_hashing_the_body_again(s3_server, s3_bucket, tmp_path):
    """Over plain HTTP botocore would hash every body with SHA-256 for the signature; a
    request carrying its Content-MD5 is signed with that header instead. A small body held in
    memory is sent without waiting for ``100 Continue``; one streamed from its file waits."""
    conn = connector(s3_server, s3_bucket)
    seen: Dict[str, Dict[str, str]] = {}

    def record(request, **kwargs):
        headers = {k.lower(): (v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items()}
        seen[request.url.rsplit("/", 1)[1]] = headers

    conn.client.meta.events.register("before-send.s3.PutObject", record)
    (tmp_path / "a.csv").write_bytes(b"a,b\n")
    write_random(tmp_path / "big.fits", 9 * MiB)

    conn.put(tmp_path / "a.csv", "a.csv")
    conn.put(tmp_path / "big.fits", "big.fits")
    conn.client.put_object(Bucket=s3_bucket, Key="plain", Body=b"no md5")

    for name in ("a.csv", "big.fits"):
        assert seen[name]["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
        assert "content-md5" in seen[name]["authorization"].split("SignedHeaders=")[1].split(",")[0]
    assert "expect" not in seen["a.csv"]
    assert seen["big.fits"]["expect"] == "100-continue"
    assert seen["plain"]["x-amz-content-sha256"] == hashlib.sha256(b"no md5").hexdigest()
    assert conn.checksum("a.csv") == md5(b"a,b\n")


def test_the_models_are_looked_for_where_botocore_would_look(tmp_path):
    """The connector's loader skips botocore's listing of all its services, not the places
    it reads models from (AWS_DATA_PATH first, then ~/.aws/models and botocore's own)."""
    from botocore.loaders import create_loader

    from oeleo.connectors.s3 import _s3_loader

    data_path = os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")])
    loader = _s3_loader(data_path)
    assert loader.search_paths == create_loader(data_path).search_paths
    assert _s3_loader(None).search_paths == create_loader(None).search_paths
    assert "PutObject" in loader.load_service_model("s3", "service-2")["operations"]
