"""Destinations named by a URL (oeleo/places.py): what each URL form fills, what is refused, and
the same in the command (``--to``, a ``.env``) and in the Python API; end to end through
``oeleo run --to sftp://...`` against the test sshd (tests/servers.py).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from helpers import db_rows, make_tree, run_oeleo, tree_files

from oeleo import places
from oeleo.errors import ConfigError
from oeleo.places import is_url, parse_destination, resolve_destination
from oeleo.settings import load_settings


def resolved(**settings):
    return resolve_destination(load_settings(**settings))


# -- what each form says ------------------------------------------------------------------
def test_s3_url_names_bucket_and_prefix():
    place = parse_destination("s3://lab-bucket/instr1/raw")
    assert place is not None
    assert place.connector == "s3"
    assert place.values == {"s3_bucket": "lab-bucket", "s3_prefix": "instr1/raw", "base_dir_to": None}


def test_s3_url_without_a_path_is_the_whole_bucket_and_keeps_percent_signs_as_written():
    assert parse_destination("s3://b").values["s3_prefix"] == ""  # type: ignore[union-attr]
    assert parse_destination("s3://b/").values["s3_prefix"] == ""  # type: ignore[union-attr]
    # as the aws CLI: a key may hold "%", so nothing is decoded
    assert parse_destination("s3://b/a%20b/").values["s3_prefix"] == "a%20b"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "url, expected",
    [
        ("sftp://al@data.lab:2222/srv", {"username": "al", "external_port": 2222, "base_dir_to": "/srv"}),
        ("sftp://data.lab/srv/data", {"base_dir_to": "/srv/data"}),
        ("ssh://data.lab/srv/data", {"base_dir_to": "/srv/data"}),
        ("sftp://data.lab", {"base_dir_to": "~"}),
        ("sftp://data.lab/", {"base_dir_to": "/"}),
        ("sftp://data.lab/~", {"base_dir_to": "~"}),
        ("sftp://data.lab/~/", {"base_dir_to": "~"}),
        ("sftp://data.lab/~/instr%201/raw", {"base_dir_to": "~/instr 1/raw"}),
        ("SFTP://Data.Lab/x", {"base_dir_to": "/x"}),
    ],
)  # fmt: skip
def test_sftp_url_names_host_user_port_and_path(url, expected):
    place = parse_destination(url)
    assert place is not None and place.connector == "ssh"
    host = "Data.Lab" if "Data.Lab" in url else "data.lab"  # an alias of ~/.ssh/config keeps its case
    assert place.values == {"external_host": host, **expected}


def test_sftp_url_with_an_ipv6_address_in_brackets():
    place = parse_destination("sftp://u@[::1]:2200/d")
    assert place is not None
    assert place.values == {
        "external_host": "::1",
        "username": "u",
        "external_port": 2200,
        "base_dir_to": "/d",
    }


@pytest.mark.parametrize(
    "url, organisation", [("arcsecond://", None), ("arcsecond://lco", "lco"), ("arcsecond://lco/", "lco")]
)
def test_arcsecond_url_is_the_personal_account_or_an_organisation(url, organisation):
    place = parse_destination(url)
    assert place is not None and place.connector == "arcsecond"
    assert place.values == {"arcsecond_organisation": organisation, "base_dir_to": None}


@pytest.mark.parametrize(
    "url, folder",
    [
        ("file:///srv/data", "/srv/data"),
        ("file://localhost/srv/a%20b", "/srv/a b"),
        ("file:///C:/data", "C:/data"),
    ],
)
def test_file_url_is_a_local_folder(url, folder):
    place = parse_destination(url)
    assert place is not None and place.connector == "local"
    assert place.values == {"base_dir_to": folder}


@pytest.mark.parametrize(
    "text",
    ["C:\\data\\raw", "C:/data", "c:", "C://data", "\\\\server\\share\\x", "data/raw", "/srv/data", "~/x"],
)
@pytest.mark.filterwarnings("ignore:OELEO_BASE_DIR_TO=.* looks like a Windows path")
def test_paths_windows_ones_included_are_not_urls(text):
    assert not is_url(text)
    assert parse_destination(text) is None
    settings = resolved(base_dir_to=text)
    assert settings.connector == "local" and settings.base_dir_to == text


# -- refused, in one line -----------------------------------------------------------------
def test_password_in_the_url_is_refused_and_never_shown():
    with pytest.raises(ConfigError) as caught:
        parse_destination("sftp://alice:s3cr3t-pw@data.lab/srv")
    message = str(caught.value)
    assert "s3cr3t-pw" not in message
    assert "OELEO_PASSWORD" in message and "OELEO_KEY_FILENAME" in message
    assert "\n" not in message


def test_password_in_an_unknown_scheme_is_not_shown_either():
    with pytest.raises(ConfigError) as caught:
        parse_destination("ftp://bob:hunter2@ftp.lab/x")
    assert "hunter2" not in str(caught.value)


def test_unknown_scheme_lists_the_known_ones():
    with pytest.raises(ConfigError) as caught:
        parse_destination("https://lab.example/upload")
    message = str(caught.value)
    assert "https://" in message
    for known in ("s3://", "sftp://", "ssh://", "arcsecond://", "file://"):
        assert known in message


@pytest.mark.parametrize(
    "url, words",
    [
        ("s3://", "no bucket"),
        ("s3://user@b/x", "no user"),
        ("s3://b:9000/x", "no port"),
        ("sftp:///srv/data", "no host"),
        ("sftp://h:22x/d", "port '22x'"),
        ("sftp://h:0/d", "port '0'"),
        ("sftp://::1/d", "brackets"),
        ("sftp://h/~bob/d", "another user's home"),
        ("arcsecond://lco/night1", "datasets are named"),
        ("file://server/share", "on this computer"),
        ("s3://b/x?versionId=1", "no ?query"),
    ],
)
def test_url_oeleo_cannot_use_is_one_line_naming_the_setting(url, words):
    with pytest.raises(ConfigError) as caught:
        parse_destination(url)
    message = str(caught.value)
    assert message.startswith("OELEO_BASE_DIR_TO=") and words in message and "\n" not in message


# -- settings: the URL fills them, an explicit one that differs is refused --------------------
def test_url_fills_the_settings_and_resolving_twice_changes_nothing():
    settings = resolved(base_dir_to="sftp://alice@data.lab:2222/~/raw")
    assert (settings.connector, settings.external_host, settings.username) == ("ssh", "data.lab", "alice")
    assert (settings.external_port, settings.base_dir_to) == (2222, "~/raw")
    # the port counts as given (the ssh connector only uses a port that was set)
    assert "external_port" in settings.model_fields_set
    assert resolve_destination(settings) == settings


def test_url_leaves_user_and_port_it_does_not_name_to_the_settings():
    settings = resolved(base_dir_to="sftp://data.lab/raw", username="bob", external_port=2200)
    assert (settings.username, settings.external_port, settings.base_dir_to) == ("bob", 2200, "/raw")


def test_url_agreeing_with_explicit_settings_is_accepted():
    settings = resolved(base_dir_to="s3://b/instr1", connector="s3", s3_bucket="b", s3_prefix="instr1/")
    assert (settings.connector, settings.s3_bucket, settings.s3_prefix) == ("s3", "b", "instr1")


@pytest.mark.parametrize(
    "url, setting, words",
    [
        ("s3://b/x", {"connector": "ssh"}, "names the s3 connector, but OELEO_CONNECTOR=ssh"),
        ("sftp://h/x", {"connector": "local"}, "names the ssh connector, but OELEO_CONNECTOR=local"),
        ("s3://b/x", {"s3_bucket": "other"}, "says bucket b, but OELEO_S3_BUCKET=other"),
        ("s3://b", {"s3_prefix": "instr1"}, "says the whole bucket (no prefix), but OELEO_S3_PREFIX=instr1"),
        ("sftp://alice@h/x", {"username": "bob"}, "says user alice, but OELEO_USERNAME=bob"),
        ("sftp://h:2222/x", {"external_port": 22}, "says port 2222, but OELEO_EXTERNAL_PORT=22"),
        ("sftp://h/x", {"external_host": "g"}, "says host h, but OELEO_EXTERNAL_HOST=g"),
        ("arcsecond://", {"arcsecond_organisation": "lco"}, "says the personal account, but"),
    ],
)
def test_url_contradicting_an_explicit_setting_names_both(url, setting, words):
    with pytest.raises(ConfigError) as caught:
        resolved(base_dir_to=url, **setting)
    assert words in str(caught.value) and url in str(caught.value)


def test_unknown_scheme_is_left_to_a_connector_of_ones_own():
    settings = resolved(base_dir_to="irods://zone/home/lab", connector="labtools.irods:IrodsConnector")
    assert settings.base_dir_to == "irods://zone/home/lab"
    assert settings.connector == "labtools.irods:IrodsConnector"


def test_a_connector_of_ones_own_gets_the_settings_of_a_known_scheme():
    settings = resolved(base_dir_to="s3://b/p", connector="labtools.s3:LabS3")
    assert (settings.connector, settings.s3_bucket, settings.s3_prefix) == ("labtools.s3:LabS3", "b", "p")


def test_url_in_a_dot_env_works_as_well_as_an_argument(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("OELEO_BASE_DIR_TO=s3://lab-bucket/instr1\n")
    monkeypatch.chdir(tmp_path)
    settings = resolve_destination(load_settings())
    assert (settings.connector, settings.s3_bucket, settings.s3_prefix) == ("s3", "lab-bucket", "instr1")


# -- the command ------------------------------------------------------------------------------
def config_lines(done) -> dict:
    assert done.returncode == 0, done.stderr
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if not line.startswith("#"))


def test_oeleo_config_shows_the_settings_a_url_resolves_to(tmp_path):
    done = run_oeleo("config", "--to", "sftp://alice@data.lab:2222/~/raw", cwd=tmp_path)
    shown = config_lines(done)
    assert shown["OELEO_CONNECTOR"] == "ssh"
    assert (shown["OELEO_EXTERNAL_HOST"], shown["OELEO_EXTERNAL_PORT"]) == ("data.lab", "2222")
    assert (shown["OELEO_USERNAME"], shown["OELEO_BASE_DIR_TO"]) == ("alice", "~/raw")


def test_oeleo_config_resolves_a_url_from_the_dot_env(tmp_path):
    (tmp_path / ".env").write_text("OELEO_BASE_DIR_TO=s3://lab-bucket/instr1\n")
    shown = config_lines(run_oeleo("config", cwd=tmp_path))
    assert (shown["OELEO_CONNECTOR"], shown["OELEO_S3_BUCKET"]) == ("s3", "lab-bucket")
    assert shown["OELEO_S3_PREFIX"] == "instr1"


def test_arcsecond_connector_needs_no_destination(tmp_path):
    shown = config_lines(run_oeleo("config", cwd=tmp_path, env={"OELEO_CONNECTOR": "arcsecond"}))
    assert shown["OELEO_CONNECTOR"] == "arcsecond" and shown["OELEO_BASE_DIR_TO"] == ""
    shown = config_lines(run_oeleo("config", "--to", "arcsecond://lco", cwd=tmp_path))
    assert (shown["OELEO_CONNECTOR"], shown["OELEO_ARCSECOND_ORGANISATION"]) == ("arcsecond", "lco")


@pytest.mark.parametrize("command", ["config", "run"])
def test_password_in_to_is_one_line_exit_2_never_echoed(tmp_path, command):
    make_tree(tmp_path / "src", {"a.res": "x"})
    done = run_oeleo(command, "--from", "src", "--to", "sftp://alice:s3cr3t-pw@127.0.0.1/x", cwd=tmp_path)
    assert done.returncode == 2
    assert "s3cr3t-pw" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "OELEO_PASSWORD" in lines[0] and "Traceback" not in done.stderr
    assert lines[0].startswith("oeleo: OELEO_BASE_DIR_TO=sftp://alice:***@127.0.0.1/x (from --to): "), lines


def test_contradicting_connector_is_one_line_exit_2(tmp_path):
    make_tree(tmp_path / "src", {"a.res": "x"})
    done = run_oeleo("run", "--from", "src", "--connector", "ssh", "--to", "s3://b/x", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "oeleo: OELEO_BASE_DIR_TO=s3://b/x (from --to) names the s3 connector, but OELEO_CONNECTOR=ssh: "
        "leave one of them out"
    ]


def test_a_url_given_with_to_wins_over_the_dot_env_as_every_flag_does(tmp_path):
    (tmp_path / ".env").write_text("OELEO_CONNECTOR=ssh\nOELEO_ARCSECOND_ORGANISATION=lab\n")
    shown = config_lines(run_oeleo("config", "--to", "arcsecond://obs", cwd=tmp_path))
    assert (shown["OELEO_CONNECTOR"], shown["OELEO_ARCSECOND_ORGANISATION"]) == ("arcsecond", "obs")
    # Both in the .env: which one is meant cannot be told, so it is still one line, exit 2.
    (tmp_path / ".env").write_text("OELEO_BASE_DIR_TO=arcsecond://obs\nOELEO_ARCSECOND_ORGANISATION=lab\n")
    done = run_oeleo("config", cwd=tmp_path)
    assert done.returncode == 2 and "leave one of them out" in done.stderr


def test_file_url_copies_to_the_local_folder(tmp_path):
    make_tree(tmp_path / "src", {"a.res": "one", "sub/b.res": "two"})
    dest = tmp_path / "copy of data"
    url = "file://" + str(dest).replace(" ", "%20")
    done = run_oeleo("run", "--from", "src", "--to", url, "--db", "books.db", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert tree_files(dest) == {"a.res": b"one", "sub/b.res": b"two"}
    assert not (tmp_path / "file:").exists()


# -- end to end over SSH ---------------------------------------------------------------------------
@pytest.fixture
def no_personal_ssh(tmp_path_factory, monkeypatch):
    """The developer's ~/.ssh and agent stay out: HOME is an empty folder, no agent."""
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


def login_env(server) -> dict:
    """Only how to log in: where to is the URL's."""
    return {"OELEO_KEY_FILENAME": server.keys["ed25519"], "OELEO_KNOWN_HOSTS": server.known_hosts}


@pytest.mark.parametrize("scheme", ["sftp", "ssh"])
def test_oeleo_run_to_an_sftp_url_copies_to_the_server(sshd_server, tmp_path, no_personal_ssh, scheme):
    make_tree(tmp_path / "src", {"a.res": "cycle 1\n", "run 1/b.res": "cycle 2\n"})
    folder = sshd_server.new_folder("url")
    url = f"{scheme}://{sshd_server.user}@{sshd_server.host}:{sshd_server.port}{folder}/raw"
    done = run_oeleo(
        "run", "--from", "src", "--to", url, "--db", "books.db", cwd=tmp_path, env=login_env(sshd_server)
    )
    assert done.returncode == 0, done.stderr
    assert tree_files(Path(folder) / "raw") == {"a.res": b"cycle 1\n", "run 1/b.res": b"cycle 2\n"}
    rows = db_rows(tmp_path / "books.db")
    assert rows["a.res"]["external_name"] == f"{folder}/raw/a.res"
    again = run_oeleo(
        "run", "--from", "src", "--to", url, "--db", "books.db", cwd=tmp_path, env=login_env(sshd_server)
    )
    assert again.returncode == 0 and "0 files" in again.stderr, again.stderr


def test_sftp_url_with_tilde_is_under_the_login_home(sshd_server, tmp_path, no_personal_ssh):
    if not sshd_server.password:
        pytest.skip("not root: the login's home is this user's own, not a throwaway folder")
    make_tree(tmp_path / "src", {"a.res": b"x"})
    name = f"url-home-{tmp_path.name}"
    url = f"sftp://{sshd_server.user}@{sshd_server.host}:{sshd_server.port}/~/{name}"
    done = run_oeleo(
        "run", "--from", "src", "--to", url, "--db", "b.db", cwd=tmp_path, env=login_env(sshd_server)
    )
    assert done.returncode == 0, done.stderr
    assert (Path(sshd_server.tmpdir) / "home" / name / "a.res").read_bytes() == b"x"


def test_sftp_url_in_a_dot_env_and_in_ssh_worker(sshd_server, tmp_path, no_personal_ssh, monkeypatch):
    from oeleo.workers import ssh_worker

    make_tree(tmp_path / "src", {"a.res": "from the api"})
    folder = sshd_server.new_folder("api")
    url = f"sftp://{sshd_server.user}@{sshd_server.host}:{sshd_server.port}{folder}"
    (tmp_path / ".env").write_text(
        "".join(f"{k}={v}\n" for k, v in login_env(sshd_server).items()) + f"OELEO_BASE_DIR_TO={url}\n"
    )
    monkeypatch.chdir(tmp_path)
    worker = ssh_worker(base_directory_from=tmp_path / "src", db_name=str(tmp_path / "api.db"))
    try:
        worker.connect_to_db()
        summary = worker.run()
    finally:
        worker.close()
    assert summary.exit_status == 0
    assert tree_files(folder) == {"a.res": b"from the api"}


# -- end to end to S3 (moto's server, tests/servers.py) ---------------------------------------------
def stored(s3_server, bucket: str) -> dict:
    """Every object of the bucket: key -> bytes."""
    client = s3_server.client()
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def test_oeleo_run_to_an_s3_url_copies_under_the_prefix(s3_server, s3_bucket, tmp_path):
    make_tree(tmp_path / "src", {"a.res": "cycle 1\n", "run 1/b.res": "cycle 2\n"})
    env = {"OELEO_S3_ENDPOINT_URL": s3_server.endpoint_url}
    url = f"s3://{s3_bucket}/lab/instr1"
    done = run_oeleo("run", "--from", "src", "--to", url, "--db", "books.db", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert stored(s3_server, s3_bucket) == {
        "lab/instr1/a.res": b"cycle 1\n",
        "lab/instr1/run 1/b.res": b"cycle 2\n",
    }
    assert set(db_rows(tmp_path / "books.db")) == {"a.res", "run 1/b.res"}
    again = run_oeleo("run", "--from", "src", "--to", url, "--db", "books.db", cwd=tmp_path, env=env)
    assert again.returncode == 0 and "0 files" in again.stderr, again.stderr


def test_s3_url_in_a_dot_env_as_users_write_it(s3_server, s3_bucket, tmp_path):
    make_tree(tmp_path / "src", {"a.fits": b"SIMPLE  =                    T"})
    (tmp_path / ".env").write_text(
        f"OELEO_BASE_DIR_FROM=src\nOELEO_BASE_DIR_TO=s3://{s3_bucket}/night1\n"
        f"OELEO_S3_ENDPOINT_URL={s3_server.endpoint_url}\nOELEO_DB_NAME=books.db\n"
    )
    done = run_oeleo("run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert stored(s3_server, s3_bucket) == {"night1/a.fits": b"SIMPLE  =                    T"}


def test_s3_worker_copies_with_the_bucket_and_prefix_given(s3_server, s3_bucket, tmp_path):
    from oeleo.workers import s3_worker

    make_tree(tmp_path / "src", {"a.res": "one", "sub/b.res": "two", "c.txt": "not this"})
    worker = s3_worker(
        base_directory_from=tmp_path / "src",
        bucket=s3_bucket,
        prefix="instr2",
        db_name=str(tmp_path / "api.db"),
        extension=".res",
        endpoint_url=s3_server.endpoint_url,
    )
    try:
        worker.connect_to_db()
        summary = worker.run()
    finally:
        worker.close()
    assert summary.exit_status == 0
    assert stored(s3_server, s3_bucket) == {"instr2/a.res": b"one", "instr2/sub/b.res": b"two"}


def test_s3_worker_refuses_a_dot_env_url_naming_another_bucket(tmp_path, monkeypatch):
    from oeleo.workers import s3_worker

    (tmp_path / "src").mkdir()
    (tmp_path / ".env").write_text("OELEO_BASE_DIR_TO=s3://bucket-a/x\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="says bucket bucket-a, but OELEO_S3_BUCKET=bucket-b"):
        s3_worker(base_directory_from=tmp_path / "src", bucket="bucket-b")


# -- end to end to Arcsecond (the loopback fake of tests/arcsecond_server.py) ----------------------
@pytest.fixture
def arcsecond(tmp_path_factory, monkeypatch):
    from arcsecond_server import FakeArcsecond

    # no key that `arcsecond login` stored on this machine
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    fake = FakeArcsecond(organisations=("lab",)).start()
    try:
        yield fake
    finally:
        fake.stop()


def arcsecond_env(fake, **more) -> dict:
    return {"OELEO_ARCSECOND_API_KEY": fake.key, "OELEO_ARCSECOND_API_URL": fake.url, **more}


def test_oeleo_run_to_an_arcsecond_organisation_url(arcsecond, tmp_path):
    make_tree(tmp_path / "night1", {"m31.fits": b"frame 1"})
    env = arcsecond_env(arcsecond, OELEO_ARCSECOND_TELESCOPE="tel-uuid")
    done = run_oeleo(
        "run", "--from", "night1", "--to", "arcsecond://lab", "--db", "b.db", cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr
    assert arcsecond.stored("lab") == {"night1": {"m31.fits": b"frame 1"}}
    assert arcsecond.stored("") == {}


def test_oeleo_connector_arcsecond_needs_no_to_and_uses_the_personal_account(arcsecond, tmp_path):
    make_tree(tmp_path / "night2", {"m42.fits": b"frame 2"})
    env = arcsecond_env(arcsecond, OELEO_CONNECTOR="arcsecond")
    done = run_oeleo("run", "--from", "night2", "--db", "b.db", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert arcsecond.stored("") == {"night2": {"m42.fits": b"frame 2"}}


@pytest.mark.parametrize(
    "typed, meant",
    [("arcsecond:lab", "arcsecond://lab"), ("s3:bucket/x", "s3://bucket/x"), ("sftp:/host/d", "sftp://host/d"),
     ("FILE:/srv", "file:///srv")],
)  # fmt: skip
@pytest.mark.parametrize("connector", ["local", "arcsecond", "s3"])
def test_a_url_missing_its_slashes_is_refused_saying_how_it_is_written(typed, meant, connector):
    refused = f"^OELEO_BASE_DIR_TO={typed}: a destination URL is written {meant}$"
    with pytest.raises(ConfigError, match=refused):
        resolve_destination(load_settings(base_dir_to=typed, connector=connector))


@pytest.mark.filterwarnings("ignore:OELEO_BASE_DIR_TO=.* looks like a Windows path")
@pytest.mark.parametrize("path", ["C:data", "c:/data", "lab-server:raw", "./s3:x"])
def test_paths_that_are_not_urls_without_slashes_stay_paths(path):
    assert resolve_destination(load_settings(base_dir_to=path)).base_dir_to == path


@pytest.mark.parametrize("connector", ["s3", "arcsecond"])
def test_a_folder_for_a_connector_without_folders_is_refused_as_a_flag_and_a_warning_from_the_env(connector):
    settings = load_settings(base_dir_to="demo-copy", connector=connector)
    refused = f"OELEO_BASE_DIR_TO=demo-copy \\(from --to\\): the {connector} connector copies to no folder"
    with pytest.raises(ConfigError, match=refused):
        resolve_destination(settings, given={"base_dir_to"})
    places._WARNED.clear()  # said once a process: the command and the factory both resolve
    with pytest.warns(UserWarning, match="the folder is not used"):
        assert resolve_destination(settings).base_dir_to == "demo-copy"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_destination(settings)  # not twice


def test_oeleo_run_to_arcsecond_without_slashes_exits_2_and_sends_nothing(arcsecond, tmp_path):
    make_tree(tmp_path / "night1", {"m31.fits": b"frame 1"})
    env = arcsecond_env(arcsecond, OELEO_CONNECTOR="arcsecond")

    done = run_oeleo("run", "--from", "night1", "--to", "arcsecond:lab", cwd=tmp_path, env=env)

    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == "oeleo: OELEO_BASE_DIR_TO=arcsecond:lab (from --to): a destination URL is written arcsecond://lab"
    )
    assert arcsecond.log == [] and not (tmp_path / "oeleo-file-list.db").exists()


@pytest.mark.parametrize(
    "url, said",
    [("s3://Bad_Bucket!/x", "'Bad_Bucket!' is not a bucket name"),
     ("s3://lab/a//b", "the key prefix 'a//b' has a part that is empty (//), . or .."),
     ("s3://lab/../b", "the key prefix '../b' has a part")],
)  # fmt: skip
def test_an_s3_url_the_connector_would_refuse_names_the_flag(tmp_path, url, said):
    make_tree(tmp_path / "src", {"a.csv": b"1"})

    done = run_oeleo("run", "--from", "src", "--to", url, cwd=tmp_path)

    assert done.returncode == 2
    line = done.stderr.strip()
    assert line.startswith(f"oeleo: OELEO_BASE_DIR_TO={url} (from --to): {said}"), line
    assert "OELEO_S3_" not in line and not (tmp_path / "oeleo-file-list.db").exists()


def test_arcsecond_worker_uploads_to_the_organisation_given(arcsecond, tmp_path, monkeypatch):
    from oeleo.workers import arcsecond_worker

    make_tree(tmp_path / "night3", {"a.fits": b"A", "notes.txt": b"no"})
    for name, value in arcsecond_env(arcsecond).items():
        monkeypatch.setenv(name, value)
    worker = arcsecond_worker(
        base_directory_from=tmp_path / "night3",
        organisation="lab",
        telescope="tel-uuid",
        db_name=str(tmp_path / "api.db"),
        extension=".fits",
    )
    try:
        worker.connect_to_db()
        summary = worker.run()
    finally:
        worker.close()
    assert summary.exit_status == 0
    assert arcsecond.stored("lab") == {"night3": {"a.fits": b"A"}}


def test_a_published_factory_given_another_connectors_url_names_the_factory_that_fits(tmp_path, monkeypatch):
    from oeleo.workers import simple_worker

    for name in [n for n in os.environ if n.startswith("OELEO_")]:
        monkeypatch.delenv(name)
    (tmp_path / "src").mkdir()
    (tmp_path / ".env").write_text("OELEO_BASE_DIR_FROM=src\nOELEO_BASE_DIR_TO=s3://lab/instr1\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as raised:
        simple_worker()
    assert str(raised.value) == (
        "simple_worker() copies with the local connector, but OELEO_BASE_DIR_TO=s3://lab/instr1 "
        "names the s3 connector: use oeleo.workers.s3_worker()"
    )
