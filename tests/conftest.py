"""Shared pytest fixtures: real servers started by tests/servers.py.

Kept small and importable without the oeleo package. A missing PostgreSQL is an
error (with a hint to run `bash tests/run.sh`), never a skip.

A test that uses a server fixture is marked ``ssh``, ``postgres`` or ``s3`` here, so that
``bash tests/run.sh -m "not ssh and not postgres and not s3 and not bench"`` runs the fast
part alone.
"""

from __future__ import annotations

import os
import sys
import uuid

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # works with or without tests/__init__.py
    sys.path.insert(0, _HERE)

import servers  # noqa: E402

# The marker of the tests that use a server fixture (directly or through another fixture).
SERVER_MARKERS = {
    "sshd_server": "ssh",
    "sftp_only_server": "ssh",
    "start_sshd": "ssh",
    "postgres_server": "postgres",
    "postgres_db": "postgres",
    "s3_server": "s3",
    "s3_bucket": "s3",
}


def pytest_collection_modifyitems(items):
    for item in items:
        for name in sorted(SERVER_MARKERS.keys() & set(getattr(item, "fixturenames", ()))):
            item.add_marker(SERVER_MARKERS[name])


@pytest.fixture(autouse=True)
def no_oeleo_settings_leak():
    """Every test starts and ends with the OELEO_* variables the session started with: a
    test that sets one in this process (``register_password`` does) cannot change the next."""
    before = {k: v for k, v in os.environ.items() if k.upper().startswith("OELEO_")}
    yield
    for name in [k for k in os.environ if k.upper().startswith("OELEO_")]:
        if name not in before:
            del os.environ[name]
    os.environ.update(before)


@pytest.fixture(scope="session")
def postgres_server():
    """A private PostgreSQL server on 127.0.0.1 (password auth) for the whole session."""
    server = servers.start_postgres()
    try:
        yield server
    finally:
        servers.stop_postgres(server)


@pytest.fixture
def postgres_db(postgres_server):
    """A fresh, empty database for one test; dropped afterwards."""
    name = f"oeleo_t_{uuid.uuid4().hex[:16]}"
    servers.create_database(postgres_server, name)
    try:
        yield {
            "host": postgres_server.host,
            "port": postgres_server.port,
            "user": postgres_server.user,
            "password": postgres_server.password,
            "dbname": name,
        }
    finally:
        servers.drop_database(postgres_server, name)


@pytest.fixture
def no_personal_ssh_setup(tmp_path_factory, monkeypatch):
    """The developer's own ~/.ssh (config, keys, known hosts) and SSH agent stay out of the
    SSH tests that use this: HOME is an empty folder and no agent is reachable."""
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


@pytest.fixture(scope="session")
def sshd_server():
    """A real OpenSSH server on 127.0.0.1 whose test user has a shell (md5sum runs there)."""
    server = servers.start_sshd()
    try:
        yield server
    finally:
        servers.stop_sshd(server)


@pytest.fixture(scope="session")
def sftp_only_server():
    """A real OpenSSH server whose user runs no commands (``ForceCommand internal-sftp``)."""
    server = servers.start_sshd(shell=False)
    try:
        yield server
    finally:
        servers.stop_sshd(server)


@pytest.fixture
def start_sshd():
    """Start more throwaway OpenSSH servers in a test (``servers.start_sshd`` options, such
    as ``binds``); each is stopped by PID when the test ends."""
    started = []

    def start(**options):
        server = servers.start_sshd(**options)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            servers.stop_sshd(server)


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server over HTTP on 127.0.0.1 for the whole session. This process (and the
    ``oeleo`` commands it starts) gets fake AWS keys and none of the developer's AWS settings
    or CA bundles (``servers.S3_ENV``)."""
    saved = {name: os.environ.get(name) for name in (*servers.S3_ENV, *servers.S3_ENV_DROP)}
    for name in servers.S3_ENV_DROP:
        os.environ.pop(name, None)
    os.environ.update(servers.S3_ENV)
    server = servers.start_s3()
    try:
        yield server
    finally:
        servers.stop_s3(server)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def s3_bucket(s3_server):
    """A new, empty bucket on the S3 server for one test; its faults are cleared afterwards."""
    name = f"oeleo-{uuid.uuid4().hex[:16]}"
    s3_server.new_bucket(name)
    try:
        yield name
    finally:
        s3_server.faults.clear()
        s3_server.cut_answers.clear()
        s3_server.check_md5 = True
