"""Settings: every OELEO_ variable (published and new) is read, from the environment or a
.env file; wrong values give one line that names the variable; secrets stay secret."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest
from pydantic import SecretStr

from oeleo.errors import ConfigError
from oeleo.settings import Settings, known_names, load_settings


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No OELEO_ variable from the outside, and a current folder without a .env."""
    for name in list(os.environ):
        if name.upper().startswith("OELEO_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def write_env(path: Path, values: Dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
    return path


def oeleo_config(cwd: Path, *args: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("OELEO_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "oeleo", "config", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
    )


# variable -> (text given, attribute, value expected)
PUBLISHED = {
    "OELEO_BASE_DIR_FROM": ("/data/local", "base_dir_from", Path("/data/local")),
    "OELEO_BASE_DIR_TO": ("/data/pub", "base_dir_to", "/data/pub"),
    "OELEO_FILTER_EXTENSION": (".csv", "filter_extension", ".csv"),
    "OELEO_DB_NAME": ("local2pub.db", "db_name", "local2pub.db"),
    "OELEO_LOG_DIR": ("/oeleo/logs", "log_dir", Path("/oeleo/logs")),
    "OELEO_DB_HOST": ("db.example.org", "db_host", "db.example.org"),
    "OELEO_DB_PORT": ("6543", "db_port", 6543),
    "OELEO_DB_USER": ("booker", "db_user", "booker"),
    "OELEO_EXTERNAL_HOST": ("ssh.example.org", "external_host", "ssh.example.org"),
    "OELEO_USERNAME": ("scientist", "username", "scientist"),
    "OELEO_KEY_FILENAME": ("/home/me/.ssh/id_ed25519", "key_filename", Path("/home/me/.ssh/id_ed25519")),
    "OELEO_SHAREPOINT_USERNAME": ("me@example.org", "sharepoint_username", "me@example.org"),
    "OELEO_SHAREPOINT_URL": (
        "https://example.sharepoint.com",
        "sharepoint_url",
        "https://example.sharepoint.com",
    ),
    "OELEO_SHAREPOINT_SITENAME": ("lab", "sharepoint_sitename", "lab"),
    "OELEO_SHAREPOINT_DOC_LIBRARY": ("Raw data", "sharepoint_doc_library", "Raw data"),
}

OURS = {
    "OELEO_MIN_AGE": ("12.5", "min_age", 12.5),
    "OELEO_CHECKSUM": ("SHA256", "checksum", "sha256"),
    "OELEO_INCLUDE": ("run-*/*.csv", "include_patterns", ["run-*/*.csv"]),
    "OELEO_EXCLUDE": ("*.tmp, *.lock", "exclude_patterns", ["*.tmp", "*.lock"]),
    "OELEO_SUBDIRS": ("false", "subdirs", False),
    "OELEO_VERIFY": ("false", "verify", False),
    "OELEO_RETRIES": ("7", "retries", 7),
    "OELEO_WORKERS": ("4", "workers", 4),
    "OELEO_CONNECTOR": ("mypkg.store:Store", "connector", "mypkg.store:Store"),
    "OELEO_SCHEDULER": ("simple", "scheduler", "simple"),
    "OELEO_RUN_INTERVAL": ("300", "run_interval", 300.0),
    "OELEO_MAX_RUNS": ("12", "max_runs", 12),
    "OELEO_EXTERNAL_PORT": ("2222", "external_port", 2222),
    "OELEO_KNOWN_HOSTS": ("/etc/ssh/known", "known_hosts", Path("/etc/ssh/known")),
    "OELEO_ACCEPT_NEW_HOST_KEYS": ("true", "accept_new_host_keys", True),
}

SECRETS = {
    "OELEO_PASSWORD": "password",
    "OELEO_DB_PASSWORD": "db_password",
}


@pytest.mark.parametrize("variable", sorted({**PUBLISHED, **OURS}))
def test_every_variable_is_read_from_the_environment(clean_env, variable):
    given, attribute, expected = {**PUBLISHED, **OURS}[variable]
    clean_env.setenv(variable, given)
    assert getattr(load_settings(), attribute) == expected


@pytest.mark.parametrize("variable", sorted({**PUBLISHED, **OURS}))
def test_every_variable_is_read_from_the_dot_env_in_the_current_folder(clean_env, tmp_path, variable):
    given, attribute, expected = {**PUBLISHED, **OURS}[variable]
    write_env(tmp_path / ".env", {variable: given})
    assert getattr(load_settings(), attribute) == expected


@pytest.mark.parametrize("variable", sorted(SECRETS))
def test_secrets_are_secret_strings_read_from_the_environment(clean_env, variable):
    clean_env.setenv(variable, "hunter2-secret")
    settings = load_settings()
    value = getattr(settings, SECRETS[variable])
    assert isinstance(value, SecretStr)
    assert value.get_secret_value() == "hunter2-secret"
    assert "hunter2-secret" not in repr(settings)
    assert "hunter2-secret" not in str(settings)


def test_masked_hides_every_secret_and_shows_the_rest(clean_env):
    clean_env.setenv("OELEO_PASSWORD", "hunter2-secret")
    clean_env.setenv("OELEO_DB_PASSWORD", "db-secret")
    clean_env.setenv("OELEO_USERNAME", "scientist")
    masked = load_settings().masked()
    assert masked["OELEO_PASSWORD"] == "********"
    assert masked["OELEO_DB_PASSWORD"] == "********"
    assert masked["OELEO_USERNAME"] == "scientist"
    assert not any("secret" in text for text in masked.values())


def test_masked_hides_the_password_of_a_url_and_keeps_the_rest_of_it(clean_env):
    clean_env.setenv("OELEO_S3_ENDPOINT_URL", "http://lab:urlSECRET@minio.lab:9000")
    clean_env.setenv("OELEO_ARCSECOND_API_URL", "https://api.example.org/v2")
    masked = load_settings().masked()
    assert masked["OELEO_S3_ENDPOINT_URL"] == "http://lab:***@minio.lab:9000"
    assert masked["OELEO_ARCSECOND_API_URL"] == "https://api.example.org/v2"
    assert not any("urlSECRET" in text for text in masked.values())


def test_masked_names_every_setting_with_its_variable(clean_env):
    masked = load_settings().masked()
    for variable in {**PUBLISHED, **OURS, **SECRETS}:
        if variable not in ("OELEO_INCLUDE", "OELEO_EXCLUDE"):
            assert variable in masked
    assert {"OELEO_INCLUDE", "OELEO_EXCLUDE"} <= set(masked)


def test_env_file_given_explicitly_is_read(clean_env, tmp_path):
    elsewhere = tmp_path / "conf"
    elsewhere.mkdir()
    env_file = write_env(elsewhere / "instrument.env", {"OELEO_DB_NAME": "from-file.db"})
    assert load_settings(env_file).db_name == "from-file.db"


def test_explicit_env_file_replaces_the_one_in_the_current_folder(clean_env, tmp_path):
    write_env(tmp_path / ".env", {"OELEO_DB_NAME": "cwd.db", "OELEO_MIN_AGE": "5"})
    other = write_env(tmp_path / "other.env", {"OELEO_DB_NAME": "other.db"})
    settings = load_settings(other)
    assert settings.db_name == "other.db"
    assert settings.min_age == 0.0


def test_environment_wins_over_dot_env(clean_env, tmp_path):
    write_env(tmp_path / ".env", {"OELEO_DB_NAME": "from-file.db", "OELEO_FILTER_EXTENSION": ".res"})
    clean_env.setenv("OELEO_DB_NAME", "from-env.db")
    settings = load_settings()
    assert settings.db_name == "from-env.db"
    assert settings.filter_extension == ".res"


def test_arguments_win_over_environment_and_dot_env(clean_env, tmp_path):
    write_env(tmp_path / ".env", {"OELEO_DB_NAME": "from-file.db"})
    clean_env.setenv("OELEO_DB_NAME", "from-env.db")
    assert load_settings(db_name="from-argument.db").db_name == "from-argument.db"


def test_missing_env_file_is_a_config_error_naming_it(clean_env, tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "nope.env")
    assert "nope.env" in str(info.value)


@pytest.mark.parametrize("where", ["environment", "dot_env"])
def test_min_age_that_is_not_a_number_names_the_variable(clean_env, tmp_path, where):
    if where == "environment":
        clean_env.setenv("OELEO_MIN_AGE", "ten")
    else:
        write_env(tmp_path / ".env", {"OELEO_MIN_AGE": "ten"})
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    assert "OELEO_MIN_AGE" in message
    assert "a number" in message
    assert "ten" in message


def test_negative_min_age_is_refused(clean_env):
    clean_env.setenv("OELEO_MIN_AGE", "-3")
    with pytest.raises(ConfigError, match="OELEO_MIN_AGE"):
        load_settings()


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_a_min_age_that_is_not_finite_is_refused(clean_env, value):
    clean_env.setenv("OELEO_MIN_AGE", value)
    with pytest.raises(ConfigError, match="OELEO_MIN_AGE: expected a "):
        load_settings()


@pytest.mark.parametrize("value", ["shake_128", "SHAKE_256"])
def test_a_checksum_without_a_length_of_its_own_is_refused(clean_env, value):
    """shake_128 and shake_256 are hashlib's, but their hexdigest() needs a length: every
    file would fail with a TypeError."""
    clean_env.setenv("OELEO_CHECKSUM", value)
    with pytest.raises(
        ConfigError, match=f"OELEO_CHECKSUM: expected an algorithm whose digest has a length .*{value}"
    ):
        load_settings()


def test_whole_number_setting_says_a_whole_number_is_expected(clean_env):
    clean_env.setenv("OELEO_DB_PORT", "five")
    with pytest.raises(ConfigError, match="OELEO_DB_PORT: expected a whole number"):
        load_settings()


def test_unknown_checksum_algorithm_names_oeleo_checksum(clean_env):
    clean_env.setenv("OELEO_CHECKSUM", "md55")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("OELEO_CHECKSUM")
    assert "md55" in message
    assert message.count("md55") == 1, message
    assert "\n" not in message


def test_unknown_oeleo_name_in_dot_env_like_a_setting_stops_naming_both(clean_env, tmp_path):
    # A misspelling would be left out, and the run go on without it: stopped, naming both.
    write_env(tmp_path / ".env", {"OELEO_BASE_DIR_FORM": "/data", "OELEO_DB_NAME": "x.db"})
    with pytest.raises(ConfigError, match="OELEO_BASE_DIR_FORM .*did you mean OELEO_BASE_DIR_FROM"):
        load_settings()


def test_known_names_in_dot_env_do_not_warn(clean_env, tmp_path, recwarn):
    write_env(tmp_path / ".env", {"OELEO_DB_NAME": "x.db", "OTHER_TOOL_SETTING": "1"})
    load_settings()
    assert not [w for w in recwarn if "OELEO" in str(w.message) or "OTHER" in str(w.message)]


def test_empty_values_in_dot_env_mean_not_set(clean_env, tmp_path):
    write_env(tmp_path / ".env", {"OELEO_BASE_DIR_FROM": "", "OELEO_DB_HOST": "", "OELEO_LOG_DIR": ""})
    settings = load_settings()
    assert settings.base_dir_from is None
    assert settings.db_host is None
    assert settings.log_dir is None


def test_filter_extension_accepts_names_with_or_without_dot(clean_env):
    clean_env.setenv("OELEO_FILTER_EXTENSION", "csv, .res,*.fits.gz")
    assert load_settings().extensions == [".csv", ".res", ".fits.gz"]


def test_defaults_keep_the_published_database_name(clean_env):
    settings = Settings()
    assert settings.db_name == "oeleo-file-list.db"
    assert settings.checksum == "md5"
    assert settings.connector == "local"


def test_oeleo_config_reads_dot_env_from_the_current_folder(tmp_path):
    write_env(tmp_path / ".env", {"OELEO_DB_NAME": "cwd.db", "OELEO_MIN_AGE": "30"})
    done = oeleo_config(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "OELEO_DB_NAME=cwd.db" in done.stdout.splitlines()
    assert "OELEO_MIN_AGE=30.0" in done.stdout.splitlines()
    assert str(tmp_path / ".env") in done.stdout


def test_oeleo_config_reads_env_file_option_and_environment_wins(tmp_path):
    env_file = write_env(tmp_path / "pc7.env", {"OELEO_DB_NAME": "file.db", "OELEO_USERNAME": "fromfile"})
    done = oeleo_config(tmp_path, "--env-file", str(env_file), env={"OELEO_USERNAME": "fromenv"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "OELEO_DB_NAME=file.db" in lines
    assert "OELEO_USERNAME=fromenv" in lines


@pytest.mark.parametrize(
    ("variable", "given", "expected"),
    [
        ("OELEO_WORKERS", "0", "a whole number of at least 1"),
        ("OELEO_RETRIES", "-1", "a whole number that is not negative"),
        ("OELEO_MIN_AGE", "-3", "a number that is not negative"),
        ("OELEO_RUN_INTERVAL", "0", "a positive number"),
        ("OELEO_DB_PORT", "0", "a positive whole number"),
    ],
)
def test_a_value_out_of_bounds_is_told_the_bound(clean_env, variable, given, expected):
    clean_env.setenv(variable, given)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == f"{variable}: expected {expected}, got {given!r} (from the environment)"


def test_a_bad_value_says_which_env_file_it_came_from(clean_env, tmp_path):
    env_file = write_env(tmp_path / "pc7.env", {"OELEO_WORKERS": "none"})
    with pytest.raises(ConfigError) as info:
        load_settings(env_file)
    assert str(info.value).endswith(f"got 'none' (from {env_file})")
    with pytest.raises(ConfigError, match=r"\(from an argument\)$"):
        load_settings(min_age="old")


WINDOWS_VALUES = {
    "OELEO_BASE_DIR_TO": "D:\\backup\\raw",
    "OELEO_DB_NAME": "C:\\oeleo\\raw.db",
    "OELEO_BASE_DIR_FROM": "C:/data/raw",
    "OELEO_LOG_DIR": "C:\\oeleo\\logs",
    "OELEO_KEY_FILENAME": "C:\\Users\\me\\.ssh\\id_ed25519",
    "OELEO_KNOWN_HOSTS": "\\\\server\\share\\known_hosts",
}


@pytest.mark.skipif(os.name == "nt", reason="these are paths on Windows")
@pytest.mark.parametrize("variable", sorted(WINDOWS_VALUES))
def test_a_windows_path_on_linux_or_macos_is_warned_about(clean_env, variable):
    value = WINDOWS_VALUES[variable]
    clean_env.setenv(variable, value)
    with pytest.warns(UserWarning) as caught:
        load_settings()
    texts = [str(w.message) for w in caught if variable in str(w.message)]
    assert texts == [
        f"{variable}={value} looks like a Windows path; on this system it is a name of "
        "that spelling, relative to the current folder"
    ]


def test_posix_paths_and_a_remote_destination_are_not_warned_about(clean_env, recwarn):
    clean_env.setenv("OELEO_DB_NAME", "/srv/oeleo/raw.db")
    clean_env.setenv("OELEO_BASE_DIR_FROM", "data\\raw")  # a backslash in a POSIX name is a name
    load_settings(connector="ssh", base_dir_to="C:/Users/lab/raw")  # the server's own syntax
    assert not [w for w in recwarn if "Windows" in str(w.message)]


def test_an_empty_workers_setting_means_not_set(monkeypatch):
    from oeleo.settings import load_settings

    monkeypatch.setenv("OELEO_WORKERS", "")
    assert load_settings().workers is None
    monkeypatch.setenv("OELEO_WORKERS", "3")
    assert load_settings().workers == 3


def test_an_empty_value_means_the_default_for_every_setting(clean_env, tmp_path):
    # .env.example with every line uncommented as it stands (`OELEO_RETRIES=`): the defaults,
    # not "OELEO_SUBDIRS: expected true or false, got ''".
    env_file = tmp_path / "empty.env"
    env_file.write_text("".join(f"{name}=\n" for name in known_names()), encoding="utf-8")
    loaded = load_settings(env_file=env_file)
    defaults = load_settings(env_file=os.devnull)
    assert [n for n in Settings.model_fields if getattr(loaded, n) != getattr(defaults, n)] == []


def test_an_empty_variable_in_the_environment_hides_the_env_files_line(clean_env, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("OELEO_RETRIES=7\nOELEO_MIN_AGE=5\n", encoding="utf-8")
    clean_env.setenv("OELEO_RETRIES", "  ")
    loaded = load_settings(env_file=env_file)
    assert (loaded.retries, loaded.min_age) == (Settings.model_fields["retries"].default, 5.0)


def test_a_hash_in_a_folder_name_read_as_a_comment_is_warned_about(clean_env, tmp_path, recwarn):
    (tmp_path / "run #1").mkdir()
    env_file = tmp_path / ".env"
    env_file.write_text("OELEO_BASE_DIR_FROM=run #1\nOELEO_RETRIES=3  # three tries\n", encoding="utf-8")
    loaded = load_settings(env_file=env_file)
    assert (str(loaded.base_dir_from), loaded.retries) == ("run", 3)  # python-dotenv's reading
    said = [str(w.message) for w in recwarn]
    assert len(said) == 1, said  # not for the comment after a number
    assert "line 1: OELEO_BASE_DIR_FROM=run #1: what follows ' #' is read as a comment" in said[0]
    assert "put the value in quotes" in said[0]
    env_file.write_text('OELEO_BASE_DIR_FROM="run #1"\n', encoding="utf-8")
    recwarn.clear()
    assert str(load_settings(env_file=env_file).base_dir_from) == "run #1"
    assert not recwarn.list


@pytest.mark.parametrize(
    "line, warned",
    [
        ("OELEO_BASE_DIR_TO=s3://lab-data/run #1", True),  # a place that does not exist yet
        ("OELEO_S3_PREFIX=night #2", True),
        ("OELEO_BASE_DIR_TO=s3://lab-data/run  # the night's frames", False),  # a comment
        ("OELEO_BASE_DIR_TO=dst #", False),
        ("OELEO_BASE_DIR_TO='s3://lab-data/run #1'", False),  # quoted: kept whole
    ],
)
def test_a_hash_before_a_word_in_a_destination_is_warned_about(clean_env, tmp_path, recwarn, line, warned):
    env_file = tmp_path / ".env"
    env_file.write_text(line + "\n", encoding="utf-8")
    load_settings(env_file=env_file)
    said = [str(w.message) for w in recwarn if "is read as a comment" in str(w.message)]
    assert len(said) == int(warned), said


@pytest.mark.parametrize(
    "name, meant",
    [("OELEO_COMPRES", "OELEO_COMPRESS"), ("OELEO_S3_STORAGECLASS", "OELEO_S3_STORAGE_CLASS"),
     ("OELEO_BASE_DIR_T0", "OELEO_BASE_DIR_TO"), ("OELEO_DB_PASWORD", "OELEO_DB_PASSWORD")],
)  # fmt: skip
def test_a_misspelt_setting_stops_naming_the_one_it_resembles(clean_env, tmp_path, name, meant):
    env_file = tmp_path / ".env"
    env_file.write_text(f"{name}=x\n", encoding="utf-8")
    with pytest.raises(
        ConfigError, match=f"^{name} \\(in {re.escape(str(env_file))}\\) .* did you mean {meant}\\?"
    ):
        load_settings(env_file=env_file)


def test_a_name_like_no_setting_is_only_a_warning(clean_env, tmp_path, recwarn):
    env_file = tmp_path / ".env"
    env_file.write_text("OELEO_NIGHTLY=yes\nOELEO_VERSION=2\n", encoding="utf-8")
    load_settings(env_file=env_file)
    said = sorted(str(w.message) for w in recwarn if "is not an oeleo setting" in str(w.message))
    assert [line.split(" ")[0] for line in said] == ["OELEO_NIGHTLY", "OELEO_VERSION"], said
