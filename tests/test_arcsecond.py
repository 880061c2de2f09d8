"""The Arcsecond connector against a loopback stand-in of the Arcsecond.io API.

The stand-in (tests/arcsecond_server.py) implements the requests the arcsecond client 3.14.1
makes, and says for each where that behaviour comes from: the auth header
(``arcsecond/api/endpoint.py``), datasets by name and their creation
(``cloud/uploader/datafiles/context.py`` and ``uploader.py``), the multipart upload and its
"already exists in dataset" answer (``cloud/uploader/uploader.py`` ``_perform_upload``). The
listing of a dataset's files and the read-back of their bytes are assumed from the API's
DataFile schema (``id``, ``name``, ``size``, ``file``): the arcsecond client never lists them.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
from arcsecond_server import FakeArcsecond, parse_multipart
from helpers import clean_env, db_rows, make_tree, run_oeleo, run_once, write_random

from oeleo.checkers import ChecksumChecker
from oeleo.connectors.arcsecond import ArcsecondConnector, stored_key
from oeleo.connectors.arcsecond_api import MultipartBody
from oeleo.connectors.local import LocalConnector
from oeleo.errors import ConfigError, TransferError
from oeleo.models import SimpleDbHandler
from oeleo.workers import Worker


@pytest.fixture
def fake():
    server = FakeArcsecond().start()
    yield server
    server.stop()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def night(tmp_path: Path) -> Path:
    """A source folder ``night1`` with files at the top and in ``run1``."""
    make_tree(
        tmp_path / "data" / "night1",
        {"a.fits": os.urandom(3000), "b.fits": b"SIMPLE = T", "run1/c.fits": os.urandom(5000)},
    )
    return tmp_path / "data" / "night1"


def settings(fake: FakeArcsecond, source: Path, **extra: str) -> Dict[str, str]:
    env = {
        "OELEO_CONNECTOR": "arcsecond",
        "OELEO_BASE_DIR_FROM": str(source),
        "OELEO_DB_NAME": str(source.parent / "books.db"),
        "OELEO_ARCSECOND_API_KEY": fake.key,
        "OELEO_ARCSECOND_API_URL": fake.url,
        "HOME": str(source.parent),  # no developer's ~/.config/arcsecond in a test
    }
    env.update(extra)
    return env


def connector(fake: FakeArcsecond, root: str = "night1", **options) -> ArcsecondConnector:
    options.setdefault("backoff", 0.01)
    conn = ArcsecondConnector(api_key=fake.key, api_url=fake.url, root_name=root, **options)
    conn.connect()
    return conn


def worker(conn: ArcsecondConnector, source: Path) -> Worker:
    return Worker(
        checker=ChecksumChecker(),
        bookkeeper=SimpleDbHandler(source.parent / "books.db"),
        local_connector=LocalConnector(source),
        external_connector=conn,
        subdirs=True,
    )


# -- through the oeleo command --------------------------------------------------------------


def test_two_folders_become_two_datasets_and_a_rerun_copies_nothing(fake, tmp_path):
    source = night(tmp_path)

    first = run_oeleo("run", cwd=tmp_path, env=settings(fake, source))

    assert first.returncode == 0, first.stderr
    assert fake.dataset_names() == ["night1", "night1/run1"]
    stored = fake.stored()
    assert stored["night1"] == {"a.fits": (source / "a.fits").read_bytes(), "b.fits": b"SIMPLE = T"}
    assert stored["night1/run1"] == {"c.fits": (source / "run1/c.fits").read_bytes()}
    fields = fake.datafiles[0]["fields"]
    assert fields["is_raw"] == "True"
    assert fields["tags"].split(",")[0] == f"oeleo|origin|{socket.gethostname()}"
    posts = fake.count("POST", "datafiles")
    assert posts == 3

    again = run_oeleo("run", cwd=tmp_path, env=settings(fake, source))

    assert again.returncode == 0, again.stderr
    assert "copied 0 files" in again.stderr and "3 unchanged" in again.stderr
    assert fake.count("POST", "datafiles") == posts
    assert fake.count("POST", "datasets") == 2


def test_copies_a_run_made_but_never_booked_are_found_the_same_and_booked_as_copied(fake, tmp_path):
    # A run killed after its uploads and before its books (here: the books deleted): the
    # next run finds each file there, compares it, and books the identical ones as copied.
    source = night(tmp_path)
    assert run_oeleo("run", cwd=tmp_path, env=settings(fake, source)).returncode == 0
    (source.parent / "books.db").unlink()
    (source / "b.fits").write_bytes(b"SIMPLE = F")  # and this one differs from its copy there
    posts = fake.count("POST", "datafiles")

    again = run_oeleo("run", cwd=tmp_path, env=settings(fake, source))

    assert again.returncode == 0, again.stderr
    assert "2 unchanged" in again.stderr and "1 already there, not replaced" in again.stderr, again.stderr
    assert fake.count("POST", "datafiles") == posts  # nothing sent again
    rows = db_rows(source.parent / "books.db")
    assert rows["a.fits"]["checksum"] == md5((source / "a.fits").read_bytes())
    assert rows["run1/c.fits"]["checksum"] == md5((source / "run1/c.fits").read_bytes())
    assert not rows["b.fits"]["checksum"] and "not replaced" in rows["b.fits"]["last_error"]


def test_compressed_copies_a_run_never_booked_are_found_the_same_too(fake, tmp_path):
    # The same with OELEO_COMPRESS=gzip: the store holds NAME.gz; the file is compressed again
    # (the gzip form is deterministic) and compared, not counted "already there, not replaced".
    source = night(tmp_path)
    env = settings(fake, source, OELEO_COMPRESS="gzip")
    assert run_oeleo("run", cwd=tmp_path, env=env).returncode == 0
    assert sorted(fake.stored()["night1"]) == ["a.fits.gz", "b.fits.gz"]
    (source.parent / "books.db").unlink()
    (source / "b.fits").write_bytes(b"SIMPLE = F")  # and this one differs from its copy there
    posts = fake.count("POST", "datafiles")

    again = run_oeleo("run", cwd=tmp_path, env=env)

    assert again.returncode == 0, again.stderr
    assert "2 unchanged" in again.stderr and "1 already there, not replaced" in again.stderr, again.stderr
    assert fake.count("POST", "datafiles") == posts  # nothing sent again
    rows = db_rows(source.parent / "books.db")
    assert rows["a.fits"]["checksum"] == md5((source / "a.fits").read_bytes())
    assert rows["a.fits"]["external_name"].endswith("a.fits.gz"), rows["a.fits"]
    assert rows["run1/c.fits"]["external_name"].endswith("c.fits.gz"), rows["run1/c.fits"]
    assert not rows["b.fits"]["checksum"] and "not replaced" in rows["b.fits"]["last_error"]


def test_force_over_copies_arcsecond_holds_finds_them_the_same_and_books_no_error(fake, tmp_path):
    source = night(tmp_path)
    assert run_oeleo("run", cwd=tmp_path, env=settings(fake, source)).returncode == 0
    posts = fake.count("POST", "datafiles")

    again = run_oeleo("run", "--force", cwd=tmp_path, env=settings(fake, source))

    assert again.returncode == 0, again.stderr
    assert "3 unchanged" in again.stderr and "not replaced" not in again.stderr, again.stderr
    assert fake.count("POST", "datafiles") == posts
    assert not [row for row in db_rows(source.parent / "books.db").values() if row["last_error"]]


def test_a_changed_file_is_already_there_not_replaced_and_exits_0(fake, tmp_path):
    source = night(tmp_path)
    assert run_oeleo("run", cwd=tmp_path, env=settings(fake, source)).returncode == 0
    before = fake.stored()["night1"]["a.fits"]
    (source / "a.fits").write_bytes(b"rewritten by the instrument")

    second = run_oeleo("run", cwd=tmp_path, env=settings(fake, source))

    assert second.returncode == 0, second.stderr
    assert "1 already there, not replaced" in second.stderr
    assert fake.stored()["night1"]["a.fits"] == before
    assert fake.count("POST", "datafiles") == 3  # it was not even sent
    row = db_rows(source.parent / "books.db")["a.fits"]
    assert row["checksum"] == md5(before) and "not replaced" in row["last_error"]
    third = run_oeleo("run", cwd=tmp_path, env=settings(fake, source))  # no loop
    assert third.returncode == 0 and "already there" not in third.stderr.split("\n")[-2], third.stderr
    assert fake.count("POST", "datafiles") == 3
    # check says what is different, and that a run will not change it (no "the next run copies").
    checked = run_oeleo("check", "--update-db", cwd=tmp_path, env=settings(fake, source))
    out = checked.stdout + checked.stderr
    assert "different a.fits" in " ".join(out.split()), out
    assert "arcsecond does not overwrite files: its copies of 1 different file stay as they are" in out, out
    assert "missing or different" not in out, out
    # The way out that check and status give: remove the copy there, check --update-db, run.
    status = run_oeleo("status", cwd=tmp_path, env=settings(fake, source)).stdout
    assert "remove its copy there, run `oeleo check --update-db`, then the next run sends it" in " ".join(
        status.split()
    ), status
    with fake.lock:
        fake.datafiles = [f for f in fake.datafiles if f["name"] != "a.fits"]
    assert run_oeleo("check", "--update-db", cwd=tmp_path, env=settings(fake, source)).returncode == 0
    fourth = run_oeleo("run", cwd=tmp_path, env=settings(fake, source))
    assert fourth.returncode == 0 and "copied 1 file" in fourth.stderr, fourth.stderr
    assert fake.stored()["night1"]["a.fits"] == b"rewritten by the instrument"


def test_status_and_the_monitor_tell_a_file_not_replaced_from_a_failed_one(fake, tmp_path):
    import json

    source = night(tmp_path)
    assert run_oeleo("run", cwd=tmp_path, env=settings(fake, source)).returncode == 0
    (source / "a.fits").write_bytes(b"rewritten by the instrument")
    fake.fail("POST", "datafiles", 413)
    (source / "new.fits").write_bytes(b"too large for the server")
    assert run_oeleo("run", cwd=tmp_path, env=settings(fake, source)).returncode == 1

    shown = run_oeleo("status", cwd=tmp_path, env=settings(fake, source))
    document = json.loads(run_oeleo("status", "--json", cwd=tmp_path, env=settings(fake, source)).stdout)

    assert shown.returncode == 0, shown.stderr
    errors, _, kept = shown.stdout.partition("already there in another version, not replaced")
    assert "1 file with errors:" in errors and "new.fits" in errors and "a.fits" not in errors, shown.stdout
    assert kept and "a.fits (code 1)" in kept and "new.fits" not in kept, shown.stdout
    assert [f["file"] for f in document["failures"]] == ["new.fits"], document["failures"]
    assert document["counts"]["failed"] == 1, document["counts"]
    assert document["counts"]["not_replaced"] == 1, document["counts"]  # counted apart (trial 47)


def test_the_key_is_never_printed_logged_or_in_an_error(fake, tmp_path):
    source = night(tmp_path)
    logs = tmp_path / "logs"
    env = settings(fake, source, OELEO_LOG_DIR=str(logs))
    fake.fail("POST", "datafiles", 400, body={"detail": f"the key {fake.key} may not upload b.fits"})
    outputs = [
        run_oeleo("run", "--debug", cwd=tmp_path, env=env),
        run_oeleo("config", cwd=tmp_path, env=env),
        run_oeleo("check", "--debug", cwd=tmp_path, env=env),
    ]
    fake.key = "another-key-the-server-wants"  # now ours is refused
    refused = run_oeleo("run", "--debug", cwd=tmp_path, env=env)
    outputs.append(refused)

    assert outputs[0].returncode == 1 and "********" in outputs[0].stderr  # the server's echo, masked
    assert refused.returncode == 2
    written = "".join(p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file())
    assert written, "no log file was written"
    key = settings(fake, source)["OELEO_ARCSECOND_API_KEY"]
    for text in [written, *(o.stdout + o.stderr for o in outputs)]:
        assert key not in text
        assert key[:12] not in text


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_exits_2_in_one_line_naming_the_setting(fake, tmp_path, status):
    source = night(tmp_path)
    fake.fail("GET", "datasets", status, times=99)

    done = run_oeleo("run", cwd=tmp_path, env=settings(fake, source))

    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "OELEO_ARCSECOND_API_KEY" in lines[0] and f"HTTP {status}" in lines[0], lines
    assert "Traceback" not in done.stderr
    assert fake.datafiles == []


@pytest.mark.parametrize("status", [401, 403])
def test_a_key_refused_by_the_uploads_stops_the_run_with_exit_2(fake, tmp_path, status):
    # The datasets could be looked up (GET), but the uploads are refused: a setting to fix,
    # not a hundred failed files.
    source = night(tmp_path)
    make_tree(source, {f"more/f{i}.fits": bytes([i]) * 10 for i in range(20)})
    fake.fail("POST", "datafiles", status, times=99)

    done = run_oeleo("run", cwd=tmp_path, env=settings(fake, source))

    assert done.returncode == 2, done.stderr
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert "OELEO_ARCSECOND_API_KEY" in last and f"HTTP {status}" in last, done.stderr
    assert "Traceback" not in done.stderr and fake.key not in done.stderr + done.stdout
    assert fake.count("POST", "datafiles") == 1 and fake.datafiles == []
    # The summary before that line accounts for every file: none copied, all 23 left.
    summary = [line for line in done.stderr.splitlines() if line.startswith("copied ")][-1]
    assert summary.startswith("copied 0 files") and summary.endswith("; 23 files left for the next run"), (
        summary
    )


def test_a_run_stopped_by_a_refused_upload_is_recorded_failed(fake, tmp_path):
    source = night(tmp_path)
    fake.fail("POST", "datafiles", 403, times=99)

    done = run_oeleo("run", cwd=tmp_path, env=settings(fake, source))

    assert done.returncode == 2, done.stderr
    with sqlite3.connect(str(source.parent / "books.db")) as books:
        runs = books.execute("SELECT status, message FROM oeleo_runs").fetchall()
    assert len(runs) == 1 and runs[0][0] == "failed" and "OELEO_ARCSECOND_API_KEY" in runs[0][1], runs


def test_a_key_refused_in_the_middle_of_a_batch_books_what_was_copied_then_stops(fake, tmp_path, monkeypatch):
    source = night(tmp_path)
    conn = connector(fake)
    key = fake.key
    post_json = conn.api.post_json

    def revoked_after_the_first_upload(url, json=None, body=None, **options):
        reply = post_json(url, json=json, body=body, **options)
        if body is not None:
            fake.key = "the-key-was-revoked-meanwhile"
        return reply

    monkeypatch.setattr(conn.api, "post_json", revoked_after_the_first_upload)
    staged = [conn.stage(source / name, name) for name in ("a.fits", "b.fits", "run1/c.fits")]

    results = conn.commit_many(staged)

    assert results[0].verified, results[0]  # in Arcsecond: given back to be booked
    assert all("OELEO_ARCSECOND_API_KEY" in result.reason for result in results[1:]), results
    assert fake.count("POST", "datafiles") == 2  # not one request per file left
    with pytest.raises(ConfigError, match="OELEO_ARCSECOND_API_KEY"):
        conn.stage(source / "b.fits", "b.fits")  # the next file stops the pass
    monkeypatch.undo()
    fake.key = key  # the key is accepted again: the next pass uploads
    conn.connect()
    assert conn.put(source / "b.fits", "b.fits").verified


def test_oeleo_config_says_where_the_key_comes_from_without_showing_it(fake, tmp_path):
    source = night(tmp_path)
    env = settings(fake, source)
    del env["OELEO_ARCSECOND_API_KEY"]
    shown = run_oeleo("config", cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "OELEO_ARCSECOND_API_KEY is not set, and" in shown.stdout and "holds no key" in shown.stdout
    stored = tmp_path / "data" / ".config" / "arcsecond" / "config.ini"  # HOME is data/ here
    stored.parent.mkdir(parents=True)
    stored.write_text(f"[cloud]\naccess_key = {fake.key}\n")
    shown = run_oeleo("config", cwd=tmp_path, env=env)
    assert f"keeps in {stored} is used" in shown.stdout, shown.stdout
    assert fake.key not in shown.stdout + shown.stderr


def test_no_key_anywhere_exits_2_saying_where_one_comes_from(fake, tmp_path):
    source = night(tmp_path)
    env = settings(fake, source)
    del env["OELEO_ARCSECOND_API_KEY"]

    done = run_oeleo("run", cwd=tmp_path, env=env)

    assert done.returncode == 2
    assert "OELEO_ARCSECOND_API_KEY" in done.stderr and "arcsecond login" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_key_arcsecond_login_stored_is_used_access_key_first(fake, tmp_path):
    source = night(tmp_path)
    env = settings(fake, source)
    del env["OELEO_ARCSECOND_API_KEY"]
    config = tmp_path / "data" / ".config" / "arcsecond" / "config.ini"  # under HOME
    config.parent.mkdir(parents=True)
    config.write_text(f"[cloud]\nusername = someone\nupload_key = upload-key-1\naccess_key = {fake.key}\n")

    done = run_oeleo("run", cwd=tmp_path, env=env)

    assert done.returncode == 0, done.stderr
    assert len(fake.datafiles) == 3
    config.write_text("[cloud]\nusername = someone\nupload_key = upload-key-1\n")
    assert stored_key(config) == "upload-key-1"
    config.write_text("[other]\naccess_key = x\n")
    assert stored_key(config) is None


def test_an_organisation_without_a_telescope_exits_2_naming_the_setting(fake, tmp_path):
    source = night(tmp_path)

    done = run_oeleo("run", cwd=tmp_path, env=settings(fake, source, OELEO_ARCSECOND_ORGANISATION="lab"))

    assert done.returncode == 2
    assert "OELEO_ARCSECOND_TELESCOPE" in done.stderr and "Traceback" not in done.stderr
    assert fake.datasets == [] and fake.datafiles == []


def test_a_missing_telescope_is_found_before_the_first_upload_and_only_when_a_dataset_is_new(fake, tmp_path):
    source = night(tmp_path)
    fake.add_dataset("night1", "lab")
    conn = connector(fake, organisation="lab")
    asked = len(fake.log)

    conn.prepare_for(["a.fits", "b.fits"])  # its dataset is there: no telescope needed

    assert fake.count("GET", "datasets") == 1  # night1, looked up by connect(): asked once
    with pytest.raises(ConfigError, match="OELEO_ARCSECOND_TELESCOPE") as stopped:
        conn.prepare_for(["a.fits", "run1/c.fits"])
    assert "'night1/run1'" in str(stopped.value) and "\n" not in str(stopped.value)
    assert fake.count("GET", "datasets") == 2 and len(fake.log) == asked + 1
    assert fake.count("POST", "datasets") == 0 and fake.datafiles == []
    conn.put(source / "a.fits", "a.fits")  # the lookups of prepare_for serve the copies
    assert fake.count("GET", "datasets") == 2
    with_telescope = connector(fake, organisation="lab", telescope="t-1")
    asked = len(fake.log)
    with_telescope.prepare_for(["run1/c.fits"])  # it can create what is missing: nothing asked
    assert len(fake.log) == asked


def test_an_organisation_without_a_telescope_copies_into_the_datasets_it_has(fake, tmp_path):
    source = night(tmp_path)
    fake.add_dataset("night1", "lab")
    fake.add_dataset("night1/run1", "lab")

    done = run_oeleo("run", cwd=tmp_path, env=settings(fake, source, OELEO_ARCSECOND_ORGANISATION="lab"))

    assert done.returncode == 0, done.stderr
    assert fake.count("POST", "datasets") == 0 and len(fake.stored("lab")["night1"]) == 2


def test_a_missing_telescope_stops_the_run_before_it_starts_and_the_run_is_recorded_failed(fake, tmp_path):
    source = night(tmp_path)

    done = run_oeleo("run", cwd=tmp_path, env=settings(fake, source, OELEO_ARCSECOND_ORGANISATION="lab"))

    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "OELEO_ARCSECOND_TELESCOPE" in lines[0], lines
    with sqlite3.connect(str(source.parent / "books.db")) as books:
        runs = books.execute("SELECT status, message FROM oeleo_runs").fetchall()
    assert len(runs) == 1 and runs[0][0] == "failed" and "OELEO_ARCSECOND_TELESCOPE" in runs[0][1], runs


def test_an_organisation_with_a_telescope_gets_its_datasets_under_its_prefix(fake, tmp_path):
    source = night(tmp_path)
    telescope = "3c7a9d2e-0000-4000-8000-000000000001"
    env = settings(fake, source, OELEO_ARCSECOND_ORGANISATION="lab", OELEO_ARCSECOND_TELESCOPE=telescope)

    done = run_oeleo("run", cwd=tmp_path, env=env)

    assert done.returncode == 0, done.stderr
    assert fake.dataset_names("lab") == ["night1", "night1/run1"] and fake.dataset_names() == []
    assert {d["telescope"] for d in fake.datasets} == {telescope}
    assert all(path.startswith(("/lab/", "/files/")) for _, path in fake.log)
    assert set(fake.stored("lab")["night1"]) == {"a.fits", "b.fits"}


def test_an_unknown_organisation_exits_2_naming_the_setting(fake, tmp_path):
    source = night(tmp_path)

    done = run_oeleo("run", cwd=tmp_path, env=settings(fake, source, OELEO_ARCSECOND_ORGANISATION="nolab"))

    assert done.returncode == 2
    assert "'nolab'" in done.stderr and "OELEO_ARCSECOND_ORGANISATION" in done.stderr


@pytest.mark.parametrize("bad", ["../lab", "lab/../obs2", "lab?page=2", "lab x", "-lab", "l%2F.."])
def test_an_organisation_that_is_not_a_subdomain_exits_2_naming_it_before_any_request(fake, tmp_path, bad):
    source = night(tmp_path)

    done = run_oeleo("run", cwd=tmp_path, env=settings(fake, source, OELEO_ARCSECOND_ORGANISATION=bad))

    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"OELEO_ARCSECOND_ORGANISATION={bad!r}" in lines[0], done.stderr
    assert fake.log == []  # no URL was built from it


@pytest.mark.parametrize("lost", ["a 500 after it was made", "no answer after it was made"])
def test_a_dataset_made_whose_answer_was_lost_is_looked_up_not_made_twice(fake, tmp_path, lost):
    source = night(tmp_path)
    if lost.startswith("a 500"):
        fake.fail("POST", "datasets", 500, store=True)
    else:
        fake.hang("POST", "datasets", 10, store=True)
    env = settings(fake, source, OELEO_ARCSECOND_TIMEOUT="0.5")

    first = run_oeleo("run", cwd=tmp_path, env=env)
    again = run_oeleo("run", cwd=tmp_path, env=env)

    assert first.returncode == 0, first.stderr
    assert again.returncode == 0, again.stderr
    assert fake.dataset_names() == ["night1", "night1/run1"]  # each once
    assert fake.count("POST", "datasets") == 2  # the lost one was not sent again
    assert set(fake.stored()["night1"]) == {"a.fits", "b.fits"}
    assert "3 unchanged" in again.stderr


def test_a_dataset_post_that_failed_before_making_it_is_sent_again_then_reported(fake, tmp_path):
    source = night(tmp_path)
    conn = connector(fake, retries=2)
    fake.fail("POST", "datasets", 500, times=1)

    conn.put(source / "a.fits", "a.fits")

    assert fake.dataset_names() == ["night1"] and fake.count("POST", "datasets") == 2
    fake.fail("POST", "datasets", 500, times=10)
    with pytest.raises(TransferError, match="cannot create dataset 'night1/run1'.*HTTP 500"):
        conn.put(source / "run1" / "c.fits", "run1/c.fits")
    assert fake.count("POST", "datasets") == 2 + 3  # the first try and 2 more, each after a look
    assert fake.dataset_names() == ["night1"]


def test_a_dataset_name_matching_two_datasets_exits_2_in_one_line(fake, tmp_path):
    source = night(tmp_path)
    fake.add_dataset("night1/run1")
    fake.add_dataset("night1/run1")

    done = run_oeleo("run", cwd=tmp_path, env=settings(fake, source))

    assert done.returncode == 2
    assert "2 Arcsecond datasets are named 'night1/run1'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_file_too_large_for_arcsecond_fails_alone_and_the_run_goes_on(fake, tmp_path):
    source = night(tmp_path)
    fake.fail("POST", "datafiles", 413)

    done = run_oeleo("run", cwd=tmp_path, env=settings(fake, source))

    assert done.returncode == 1
    assert "too large for Arcsecond (HTTP 413)" in done.stderr
    # In the store's own words, the name said once (not "cannot commit (a.fits: too large ...)").
    [line] = [line for line in done.stderr.splitlines() if line.startswith("failed ")]
    assert re.fullmatch(r"failed [^:]+: too large for Arcsecond \(HTTP 413\)", line), line
    assert sum(len(files) for files in fake.stored().values()) == 2
    again = run_oeleo("run", cwd=tmp_path, env=settings(fake, source))  # tried again next run
    assert again.returncode == 0 and sum(len(f) for f in fake.stored().values()) == 3


# -- the connector: failures the API answers with --------------------------------------------


def test_a_429_waits_as_retry_after_says_then_sends_again(fake, tmp_path):
    source = night(tmp_path)
    fake.fail("POST", "datafiles", 429, headers={"Retry-After": "1"})
    conn = connector(fake)

    started = time.monotonic()
    conn.put(source / "a.fits", "a.fits")

    assert time.monotonic() - started >= 1.0
    assert fake.count("POST", "datafiles") == 2
    assert fake.stored()["night1"] == {"a.fits": (source / "a.fits").read_bytes()}


def test_a_429_asking_for_a_long_wait_fails_the_file_at_once(fake, tmp_path):
    source = night(tmp_path)
    fake.fail("POST", "datafiles", 429, headers={"Retry-After": "3600"})
    conn = connector(fake)

    with pytest.raises(TransferError, match="HTTP 429"):
        conn.put(source / "a.fits", "a.fits")

    assert fake.count("POST", "datafiles") == 1 and fake.datafiles == []


def test_a_500_is_retried_with_backoff_and_after_too_many_the_file_fails(fake, tmp_path):
    source = night(tmp_path)
    conn = connector(fake, retries=3)
    fake.fail("POST", "datafiles", 500, times=2)

    conn.put(source / "a.fits", "a.fits")

    assert fake.count("POST", "datafiles") == 3
    fake.fail("POST", "datafiles", 500, times=10)
    with pytest.raises(TransferError, match="HTTP 500"):
        conn.put(source / "b.fits", "b.fits")
    assert fake.count("POST", "datafiles") == 3 + 4  # the first try and 3 retries
    assert set(fake.stored()["night1"]) == {"a.fits"}


@pytest.mark.parametrize("stored_before_the_answer_was_lost", [False, True])
def test_a_request_that_times_out_is_sent_again_and_the_file_is_there_once(
    fake, tmp_path, stored_before_the_answer_was_lost
):
    source = night(tmp_path)
    conn = connector(fake, timeout=0.5)
    fake.hang("POST", "datafiles", 10, store=stored_before_the_answer_was_lost)

    result = conn.put(source / "a.fits", "a.fits")

    assert result.verified
    assert fake.count("POST", "datafiles") == 2
    assert fake.stored()["night1"] == {"a.fits": (source / "a.fits").read_bytes()}


def test_a_server_that_never_answers_is_a_lost_connection_then_a_failed_file(fake, tmp_path):
    source = night(tmp_path)
    conn = connector(fake, timeout=0.3, retries=1)
    fake.hang("POST", "datafiles", 10, times=2)
    run = worker(conn, source)

    summary = run_once(run)

    assert summary.failed == 1 and summary.copied == 2, summary.describe()
    assert fake.count("POST", "datafiles") == 4


def test_the_timeout_is_a_setting(fake, tmp_path):
    source = night(tmp_path)
    fake.hang("POST", "datafiles", 10, store=True)
    started = time.monotonic()
    done = run_oeleo("run", cwd=tmp_path, env=settings(fake, source, OELEO_ARCSECOND_TIMEOUT="0.5"))
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 8  # 0.5 s, not 60 s, before the request is sent again
    assert "timed out" in done.stderr and fake.count("POST", "datafiles") == 4
    assert sum(len(files) for files in fake.stored().values()) == 3  # each file there once


def test_already_exists_in_dataset_with_the_same_bytes_is_a_verified_copy(fake, tmp_path):
    source = night(tmp_path)
    ours = connector(fake)  # has listed night1 (empty): it does not know what comes next
    connector(fake).put(source / "a.fits", "a.fits")  # another PC, or a run killed before booking

    result = ours.put(source / "a.fits", "a.fits")

    assert result.verified and len(fake.datafiles) == 1
    assert fake.count("POST", "datafiles") == 2


def test_already_exists_with_other_bytes_is_already_there_at_once(fake, tmp_path, monkeypatch):
    source = night(tmp_path)
    ours = connector(fake)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.fits").write_bytes(b"another PC's a.fits")
    books = source.parent / "books.db"
    open_upload = ours.open_upload

    def another_pc_first(relpath, size, mtime_ns):  # after our look at the dataset, before our POST
        if relpath == "a.fits":
            connector(fake).put(tmp_path / "other" / "a.fits", "a.fits")
        return open_upload(relpath, size, mtime_ns)

    monkeypatch.setattr(ours, "open_upload", another_pc_first)
    first = run_once(worker(ours, source))
    monkeypatch.undo()

    # Another PC's a.fits got there first: already there, not replaced, and not a failure.
    assert (first.copied, first.failed, first.not_replaced) == (2, 0, 1), first.describe()
    assert first.exit_status == 0
    assert "not replaced" in db_rows(books)["a.fits"]["last_error"]
    second = run_once(worker(ours, source))  # not tried again until it changes: no loop
    assert (second.copied, second.failed, second.not_replaced, second.unchanged) == (0, 0, 0, 3), (
        second.describe()
    )
    assert fake.stored()["night1"]["a.fits"] == b"another PC's a.fits"


def test_already_exists_with_other_bytes_books_that_reason(fake, tmp_path, monkeypatch):
    source = night(tmp_path)
    ours = connector(fake)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.fits").write_bytes(b"another PC's a.fits")
    open_upload = ours.open_upload

    def another_pc_first(relpath, size, mtime_ns):
        if relpath == "a.fits":
            connector(fake).put(tmp_path / "other" / "a.fits", "a.fits")
        return open_upload(relpath, size, mtime_ns)

    monkeypatch.setattr(ours, "open_upload", another_pc_first)
    summary = run_once(worker(ours, source))

    assert (summary.copied, summary.failed, summary.not_replaced) == (2, 0, 1), summary.describe()
    reason = db_rows(source.parent / "books.db")["a.fits"]["last_error"]
    assert reason.startswith("already there, not replaced") and "cannot commit" not in reason, reason
    assert "Arcsecond holds other content under this name" in reason, reason


def test_a_new_file_rewritten_while_it_is_sent_sends_nothing_and_goes_next_run(fake, tmp_path, monkeypatch):
    # Arcsecond's form of the contract's "source changes during the upload": a new file, since
    # a file Arcsecond holds is never replaced.
    source = night(tmp_path)
    conn = connector(fake)
    big = source / "run1" / "c.fits"
    write_random(big, 3 * 1024 * 1024)
    final = os.urandom(3 * 1024 * 1024 + 1)
    open_upload = conn.open_upload

    def rewriting(relpath, size, mtime_ns):
        upload = open_upload(relpath, size, mtime_ns)
        send = upload.send

        def sending(chunks):
            def rewritten_after_the_first():
                for index, chunk in enumerate(chunks):
                    yield chunk
                    if index == 0 and relpath == "run1/c.fits":
                        big.write_bytes(final)

            send(rewritten_after_the_first())

        upload.send = sending
        return upload

    monkeypatch.setattr(conn, "open_upload", rewriting)
    first = run_once(worker(conn, source))
    monkeypatch.undo()

    assert (first.copied, first.changing, first.failed) == (2, 1, 0), first.describe()
    assert "c.fits" not in fake.stored().get("night1/run1", {})
    books = source.parent / "books.db"
    assert not db_rows(books).get("run1/c.fits", {}).get("checksum")
    second = run_once(worker(conn, source))
    assert second.copied == 1
    assert fake.stored()["night1/run1"]["c.fits"] == final
    assert db_rows(books)["run1/c.fits"]["checksum"] == md5(final)


def test_a_copy_whose_size_the_api_reports_wrong_is_removed_again(fake, tmp_path, monkeypatch):
    source = night(tmp_path)
    conn = connector(fake)
    post_json = conn.api.post_json

    def wrong_size(url, json=None, body=None, **options):
        reply = post_json(url, json=json, body=body, **options)
        if body is not None:
            reply["size"] += 1
        return reply

    monkeypatch.setattr(conn.api, "post_json", wrong_size)

    with pytest.raises(TransferError, match="Arcsecond holds"):
        conn.put(source / "a.fits", "a.fits")

    assert fake.datafiles == [] and fake.count("DELETE", "datafiles") == 1


# -- the connector: names, listing, the body --------------------------------------------------


def test_datasets_are_named_from_the_source_folders_parent(fake, tmp_path):
    conn = connector(fake, root="night1")

    assert conn.locate("a.fits") == ("night1", "a.fits")
    assert conn.locate("run1/b.fits") == ("night1/run1", "b.fits")
    assert conn.locate("run1/x/c.fits") == ("night1/run1/x", "c.fits")


def test_the_listing_reads_every_page_and_plain_lists_alike(fake, tmp_path):
    files = {f"f{i}.fits": bytes([i]) * (i + 1) for i in range(5)}
    files.update({"run1/g.fits": b"g", "run1/deeper/h.csv": b"hh"})
    source = tmp_path / "data" / "night1"
    make_tree(source, files)
    fake.add_dataset("night10")  # not ours, though its name starts the same
    conn = connector(fake)
    for relpath in files:
        conn.put(source / relpath, relpath)
    expected = {relpath: len(data) for relpath, data in files.items()}

    for page_size in (0, 2):
        fake.page_size = page_size
        conn.connect()
        assert {e.relpath: e.size for e in conn.list_files()} == expected
        assert [e.relpath for e in conn.list_files(extensions=[".csv"])] == ["run1/deeper/h.csv"]
        assert [e.relpath for e in conn.list_files(recursive=False)] == [f"f{i}.fits" for i in range(5)]
        assert conn.stat("run1/g.fits").size == 1 and conn.stat("run1/nope.fits") is None


def put_named_after_themselves(fake: FakeArcsecond, source: Path, names: List[str]) -> ArcsecondConnector:
    """Each name made a file holding its own bytes, and put through a new connector."""
    conn = connector(fake)
    for name in names:
        path = source / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode("utf-8", "surrogateescape"))
        conn.put(path, name)
    return conn


def test_quotes_and_non_utf8_names_round_trip(fake, tmp_path):
    source = tmp_path / "data" / "night1"
    names = ['say "cheese".fits', "m\udce9sure.csv", "spaces and ü.fits"]
    conn = put_named_after_themselves(fake, source, names)

    conn.connect()
    assert sorted(e.relpath for e in conn.list_files()) == sorted(names)
    assert set(fake.stored()["night1"]) == {'say "cheese".fits', "m\u201bE9sure.csv", "spaces and ü.fits"}


def test_a_name_holding_the_books_quote_is_sent_as_it_is(fake, tmp_path):
    # U+201B is the books' escape character (oeleo.names): a name that is valid UTF-8 is still
    # sent exactly as it is, and only a name that is not UTF-8 gets the books' form.
    quote = "\u201b"
    source = tmp_path / "data" / "night1"
    names = [f"it{quote}s.fits", f"{quote}FF.dat", f"{quote}{quote}twice.fits", f"run{quote}1/c.fits"]
    names.append("run1/\udcff.dat")  # b"\xff.dat": not UTF-8
    conn = put_named_after_themselves(fake, source, names)

    stored = fake.stored()
    assert set(stored["night1"]) == {f"it{quote}s.fits", f"{quote}FF.dat", f"{quote}{quote}twice.fits"}
    assert set(stored[f"night1/run{quote}1"]) == {"c.fits"}
    assert set(stored["night1/run1"]) == {f"{quote}FF.dat"}
    conn.connect()
    listed = {e.relpath for e in conn.list_files()}
    assert listed >= {f"it{quote}s.fits", f"{quote}{quote}twice.fits", f"run{quote}1/c.fits"}
    assert "run1/\udcff.dat" in listed
    for name in names:
        assert conn.stat(name) is not None, name


def test_a_name_arcsecond_would_cut_is_refused_for_that_file_alone(fake, tmp_path):
    source = tmp_path / "data" / "night1"
    make_tree(source, {"back\\slash.fits": b"x"})
    conn = connector(fake)

    with pytest.raises(TransferError, match="backslash"):
        conn.put(source / "back\\slash.fits", "back\\slash.fits")

    assert fake.count("POST", "datafiles") == 0


def test_the_multipart_body_has_its_length_and_reads_the_file_again_for_a_retry(tmp_path):
    data = os.urandom(100_000)
    path = tmp_path / "x.bin"
    path.write_bytes(data)

    def read():
        handle = open(path, "rb")
        return iter(lambda: handle.read(7000), b"")

    body = MultipartBody({"dataset": "d-1", "is_raw": "True"}, "file", 'a "b".fits', len(data), read)

    for _ in range(2):
        raw = b"".join(body)
        assert len(raw) == len(body)
        fields, upload = parse_multipart(raw, body.content_type)
        assert fields == {"dataset": "d-1", "is_raw": "True"}
        assert upload == ('a "b".fits', data)


def peak_rss_mib(args, env, cwd) -> float:
    """Run ``python -m oeleo *args`` and return its peak resident memory (MiB, Linux)."""
    errors = Path(cwd) / "stderr.txt"
    with open(errors, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "oeleo", *args],
            cwd=str(cwd),
            env=clean_env(env),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, errors.read_text()
    return usage.ru_maxrss / 1024


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_a_large_file_is_streamed_not_held_in_memory(fake, tmp_path):
    source = tmp_path / "data" / "night1"
    size = 256 * 1024 * 1024
    digest = write_random(source / "big.fits", size)
    env = settings(fake, source)
    baseline = peak_rss_mib(["config"], env, tmp_path)

    peak = peak_rss_mib(["run"], env, tmp_path)

    assert md5(fake.stored()["night1"]["big.fits"]) == digest
    print(f"peak RSS: {peak:.0f} MiB for a {size >> 20} MiB file (oeleo config: {baseline:.0f} MiB)")
    assert peak - baseline < 64, (peak, baseline)


def test_settings_build_the_connector_from_the_source_folder_name(fake, tmp_path):
    from oeleo.settings import Settings

    built = ArcsecondConnector.from_settings(
        Settings(
            base_dir_from=str(tmp_path / "night7"),
            arcsecond_api_key=fake.key,
            arcsecond_api_url=fake.url,
            arcsecond_organisation="lab",
            arcsecond_telescope="t-1",
        )
    )

    assert isinstance(built, ArcsecondConnector)
    assert (built.root_name, built.organisation, built.telescope) == ("night7", "lab", "t-1")
    assert fake.key not in repr(built) and fake.key not in str(built)
    with pytest.raises(ConfigError, match="OELEO_ARCSECOND_API_URL"):
        ArcsecondConnector(api_key="k", api_url="api.arcsecond.io", root_name="x")
    with pytest.raises(ConfigError, match="OELEO_ARCSECOND_API_KEY") as refused:
        ArcsecondConnector(api_key="a key\nwith a line break", root_name="x")
    assert "line break" in str(refused.value) and "a key\nwith" not in str(refused.value)


def test_a_server_that_is_not_there_at_first_is_a_setting_to_fix(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conn = ArcsecondConnector(api_key="k", api_url=f"http://127.0.0.1:{port}", root_name="x", retries=0)

    with pytest.raises(ConfigError, match="OELEO_ARCSECOND_API_URL"):
        conn.connect()


def test_a_read_back_the_storage_refuses_is_one_plain_line_not_a_class_name(fake, tmp_path):
    source = night(tmp_path)
    assert run_oeleo("run", cwd=tmp_path, env=settings(fake, source)).returncode == 0
    conn = connector(fake)
    fake.fail("GET", "files", 500, times=10)
    with pytest.raises(TransferError, match=r"^a\.fits: cannot read it back from Arcsecond \(HTTP 500"):
        conn.checksum("a.fits")


def test_a_stop_sends_no_more_of_the_batch_and_leaves_the_rest_for_the_next_run(fake, tmp_path):
    # A batch holds up to 256 files (64 MiB): after SIGTERM they were all still uploaded, each a
    # POST, under "stopping cleanly" (trial 47). Now the commits after the stop are not sent.
    source = tmp_path / "data" / "night1"
    make_tree(source, {f"f{i:02}.fits": os.urandom(2000) for i in range(30)})
    conn = connector(fake)
    copier = worker(conn, source)
    commit, done = conn.commit, []

    def commit_then_stop_at_the_third(staged):
        result = commit(staged)
        done.append(staged.relpath)
        if len(done) == 3:
            copier.stop()
        return result

    conn.commit = commit_then_stop_at_the_third
    copier.connect_to_db()
    try:
        summary = copier.run()
    finally:
        copier.close()

    assert summary.stopped and summary.copied == 3 and summary.failed == 0, summary.describe()
    assert summary.left == 27, summary.describe()
    assert len(fake.stored()["night1"]) == 3
    booked = {name for name, row in db_rows(source.parent / "books.db").items() if row["checksum"]}
    assert booked == set(done) == set(fake.stored()["night1"])

    again = worker(connector(fake), source)
    again.connect_to_db()
    try:
        rest = again.run()
    finally:
        again.close()
    assert rest.copied == 27 and len(fake.stored()["night1"]) == 30, rest.describe()
