"""The ssh connector over a link with latency: a real OpenSSH server on 127.0.0.1 behind
``benchmarks/delay_proxy.py`` (a TCP proxy that delays every byte; this kernel has no netem).
Where small files go over SFTP (a login that runs no commands), each one waits for its
answers, and the connector says so (``Features.waits_per_file``): with ``OELEO_WORKERS`` not
set, small files are copied several at a time. On loopback, and where small files go through
tar, they stay one at a time."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Iterator, Set

import pytest
import servers
from helpers import make_tree, run_once, tree_files
from test_ssh import ssh_worker_for

from oeleo.connectors.ssh import SSHConnector

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.delay_proxy import behind_delay  # noqa: E402

pytestmark = [pytest.mark.ssh, pytest.mark.usefixtures("no_personal_ssh_setup")]


@pytest.fixture
def copying_threads(monkeypatch) -> Set[int]:
    """The threads that copied a file (``stage``)."""
    seen: Set[int] = set()
    real = SSHConnector.stage

    def stage(self, *args, **kwargs):
        seen.add(threading.get_ident())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SSHConnector, "stage", stage)
    return seen


def _behind_20_ms(server: servers.SSHServer, tmp_path: Path) -> Iterator[servers.SSHServer]:
    slow, proxy = behind_delay(server, 20, tmp_path)
    try:
        yield slow
    finally:
        proxy.kill()
        proxy.wait()


@pytest.fixture
def slow_sftp_only(sftp_only_server, tmp_path) -> Iterator[servers.SSHServer]:
    """The sftp-only server, 20 ms of round trip away."""
    yield from _behind_20_ms(sftp_only_server, tmp_path)


@pytest.fixture
def slow_shell(sshd_server, tmp_path) -> Iterator[servers.SSHServer]:
    """The server whose login runs commands, 20 ms of round trip away."""
    yield from _behind_20_ms(sshd_server, tmp_path)


def files(n: int):
    return {f"night-{i % 2}/frame_{i:03d}.csv": os.urandom(500 + i) for i in range(n)}


def copy(server: servers.SSHServer, tmp_path: Path, wanted, **settings):
    source = tmp_path / "src"
    make_tree(source, wanted)
    dest = server.new_folder("lat")
    worker = ssh_worker_for(server, source, dest, tmp_path / "books.db", **settings)
    summary = run_once(worker)
    assert summary.copied == len(wanted) and summary.failed == 0
    assert tree_files(dest) == wanted
    return worker


def test_small_files_over_a_slow_sftp_link_go_several_at_a_time(slow_sftp_only, tmp_path, copying_threads):
    worker = copy(slow_sftp_only, tmp_path, files(24))
    features = worker.external_connector.features
    assert features.waits_per_file and features.max_uploads >= 4
    assert len(copying_threads) >= 2


def test_small_files_over_sftp_on_loopback_go_one_at_a_time(sftp_only_server, tmp_path, copying_threads):
    worker = copy(sftp_only_server, tmp_path, files(24))
    assert not worker.external_connector.features.waits_per_file
    assert len(copying_threads) == 1


def test_small_files_through_tar_over_a_slow_link_go_one_at_a_time(slow_shell, tmp_path, copying_threads):
    worker = copy(slow_shell, tmp_path, files(24))
    assert not worker.external_connector.features.waits_per_file  # a batch: no answer per file
    assert len(copying_threads) == 1


def test_workers_set_by_the_user_are_kept_over_a_slow_link(slow_sftp_only, tmp_path, copying_threads):
    copy(slow_sftp_only, tmp_path, files(12), workers=1)
    assert len(copying_threads) == 1
