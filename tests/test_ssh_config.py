"""SSH that works like ``ssh``: host strings, ~/.ssh/config aliases, ProxyJump, the SSH agent
and the default keys, and names that are not UTF-8 — against real OpenSSH servers and a real
``ssh-agent`` on this machine (tests/servers.py).

HOME is an empty folder of each test and no agent is reachable unless a test starts one, so
the developer's own ~/.ssh never takes part.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import paramiko
import pytest
import servers
from helpers import make_tree, run_oeleo, run_once, tree_files, write_random

from oeleo.connectors.base import TEMP_SUFFIX, temp_relpath
from oeleo.connectors.ssh import SSHConnector
from oeleo.connectors.ssh_endpoints import Destination, parse_destination, resolve_endpoints
from oeleo.errors import ConfigError, TransferError
from oeleo.reporters import Reporter
from oeleo.settings import load_settings
from oeleo.workers import worker_from_settings

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def home(tmp_path_factory, monkeypatch) -> Path:
    """An empty home folder (no ~/.ssh) and no SSH agent."""
    folder = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return folder


@pytest.fixture
def start_agent(monkeypatch):
    """Start a real ssh-agent holding the given keys and point SSH_AUTH_SOCK at it; it is
    stopped by PID when the test ends."""
    started: List[servers.SSHAgent] = []

    def start(*keys: str) -> servers.SSHAgent:
        agent = servers.start_ssh_agent(keys)
        started.append(agent)
        monkeypatch.setenv("SSH_AUTH_SOCK", agent.sock)
        return agent

    try:
        yield start
    finally:
        for agent in started:
            servers.stop_ssh_agent(agent)


@pytest.fixture(scope="module")
def dual_stack_server():
    """An sshd listening on 127.0.0.1 and ::1 (the IPv6 loopback is there on this machine;
    where it is not, the test says so and the parsing is tested alone)."""
    if not servers.ipv6_loopback():
        pytest.skip(
            "no IPv6 loopback here: [v6addr]:port is tested by test_host_strings_are_read_as_ssh_reads_them"
        )
    server = servers.start_sshd(listen=(servers.HOST, "::1"))
    try:
        yield server
    finally:
        servers.stop_sshd(server)


def stranger_key(folder: Path, name: str, passphrase: str = "") -> Path:
    """A new ed25519 key that no server knows."""
    path = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(path)], check=True)
    return path


def install_key(home: Path, source: str, name: str) -> Path:
    """Copy a private key to ~/.ssh/<name> (mode 600), as a user's default key."""
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    target = ssh / name
    shutil.copyfile(source, target)
    target.chmod(0o600)
    return target


def one_error_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("oeleo: "), lines[0]
    return lines[0]


def copy_one(conn: SSHConnector, tmp_path: Path, name: str = "a.res", data: bytes = b"cycle 1\n") -> None:
    source = make_tree(tmp_path / "src", {name: data})[name]
    with conn:
        conn.prepare()
        conn.put(source, name)


def env_without_key(server: servers.SSHServer, **extra: str) -> dict:
    return server.env(OELEO_KEY_FILENAME="", **extra)


# -- OELEO_EXTERNAL_HOST: the forms ssh and fabric read ------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("data.lab.org", Destination("data.lab.org")),
        ("data.lab.org:2299", Destination("data.lab.org", port=2299)),
        ("oeleo@data.lab.org", Destination("data.lab.org", user="oeleo")),
        ("oeleo@data.lab.org:2299", Destination("data.lab.org", user="oeleo", port=2299)),
        ("[::1]:2299", Destination("::1", port=2299)),
        ("oeleo@[fe80::1%eth0]:22", Destination("fe80::1%eth0", user="oeleo", port=22)),
        ("[2001:db8::7]", Destination("2001:db8::7")),
        ("2001:db8::7", Destination("2001:db8::7")),
        ("::1", Destination("::1")),
        ("ssh://oeleo@data.lab.org:2299", Destination("data.lab.org", user="oeleo", port=2299)),
        ("me@lab.org@gw", Destination("gw", user="me@lab.org")),  # the last @, as ssh
        ("  data.lab.org  ", Destination("data.lab.org")),
    ],
)
def test_host_strings_are_read_as_ssh_reads_them(text, expected):
    assert parse_destination(text) == expected


@pytest.mark.parametrize(
    "text, says",
    [
        ("data:99999", "'99999' is not a port number (1 to 65535)"),
        ("data:0", "'0' is not a port number"),
        ("data:ssh", "'ssh' is not a port number"),
        ("data:", "'' is not a port number"),
        ("@data", "the user name before '@' is empty"),
        ("[::1]2299", "write an IPv6 address with a port as [address]:port"),
        ("[::1", "write an IPv6 address with a port as [address]:port"),
        ("data lab", "not a host name"),
        ("oeleo@", "not a host name"),
    ],
)
def test_a_malformed_host_string_is_one_config_error_naming_the_setting(text, says):
    with pytest.raises(ConfigError) as caught:
        parse_destination(text)
    message = str(caught.value)
    assert message.startswith(f"OELEO_EXTERNAL_HOST={text}") and says in message
    assert "\n" not in message


def test_host_colon_port_in_oeleo_external_host_reaches_the_server(sshd_server, source_tree, tmp_path):
    folder = sshd_server.new_folder()
    env = sshd_server.env(OELEO_EXTERNAL_HOST=f"127.0.0.1:{sshd_server.port}")
    env.pop("OELEO_EXTERNAL_PORT")

    done = run_oeleo("run", "--from", str(source_tree), "--to", folder, cwd=tmp_path, env=env)

    assert done.returncode == 0, done.stderr
    assert tree_files(folder) == {"a.res": b"cycle 1\n"}


def test_user_at_host_colon_port_gives_the_user_and_the_port(sshd_server, source_tree, tmp_path):
    folder = sshd_server.new_folder()
    env = sshd_server.env(OELEO_EXTERNAL_HOST=f"{sshd_server.user}@127.0.0.1:{sshd_server.port}")
    env.pop("OELEO_EXTERNAL_PORT")
    env.pop("OELEO_USERNAME")

    done = run_oeleo("run", "--from", str(source_tree), "--to", folder, cwd=tmp_path, env=env)

    assert done.returncode == 0, done.stderr
    assert tree_files(folder) == {"a.res": b"cycle 1\n"}


def test_the_host_argument_takes_user_at_host_colon_port_too(sshd_server, tmp_path):
    folder = sshd_server.new_folder()
    conn = SSHConnector(
        host=f"{sshd_server.user}@127.0.0.1:{sshd_server.port}",
        directory=folder,
        username="",
        key_filename=sshd_server.keys["ed25519"],
        known_hosts=sshd_server.known_hosts,
    )

    copy_one(conn, tmp_path)

    assert (conn.username, conn.port, conn.where) == (
        sshd_server.user,
        sshd_server.port,
        f"{sshd_server.user}@127.0.0.1:{sshd_server.port}",
    )
    assert tree_files(folder) == {"a.res": b"cycle 1\n"}


@pytest.mark.ssh
def test_bracketed_ipv6_address_and_port_reach_the_server(dual_stack_server, tmp_path):
    folder = dual_stack_server.new_folder()
    conn = SSHConnector(
        host=f"[::1]:{dual_stack_server.port}",
        directory=folder,
        username=dual_stack_server.user,
        key_filename=dual_stack_server.keys["ed25519"],
        known_hosts=dual_stack_server.known_hosts,
    )

    copy_one(conn, tmp_path)

    assert tree_files(folder) == {"a.res": b"cycle 1\n"}
    assert conn.where == f"{dual_stack_server.user}@[::1]:{dual_stack_server.port}"
    assert conn.host_key_name == f"[::1]:{dual_stack_server.port}"


def test_bare_ipv6_address_with_oeleo_external_port_is_bracketed_in_messages(dual_stack_server, tmp_path):
    folder = dual_stack_server.new_folder()
    settings = load_settings(
        connector="ssh", base_dir_to=folder, external_host="::1", external_port=dual_stack_server.port,
        username=dual_stack_server.user, key_filename=dual_stack_server.keys["ed25519"],
        known_hosts=dual_stack_server.known_hosts,
    )  # fmt: skip
    conn = SSHConnector.from_settings(settings)

    copy_one(conn, tmp_path)

    assert tree_files(folder) == {"a.res": b"cycle 1\n"}
    assert str(conn) == f"{dual_stack_server.user}@[::1]:{dual_stack_server.port}:{folder}"


def test_a_port_in_the_host_and_another_in_oeleo_external_port_is_one_line_naming_both(
    sshd_server, source_tree, tmp_path
):
    env = sshd_server.env(OELEO_EXTERNAL_HOST=f"127.0.0.1:{sshd_server.port}", OELEO_EXTERNAL_PORT="2222")

    done = run_oeleo(
        "run", "--from", str(source_tree), "--to", sshd_server.new_folder(), cwd=tmp_path, env=env
    )

    assert done.returncode == 2
    line = one_error_line(done)
    assert f"OELEO_EXTERNAL_HOST=127.0.0.1:{sshd_server.port} gives port {sshd_server.port}" in line
    assert "OELEO_EXTERNAL_PORT=2222" in line


def test_the_same_port_in_the_host_and_in_oeleo_external_port_is_fine(sshd_server, source_tree, tmp_path):
    folder = sshd_server.new_folder()
    env = sshd_server.env(OELEO_EXTERNAL_HOST=f"127.0.0.1:{sshd_server.port}")  # and OELEO_EXTERNAL_PORT

    done = run_oeleo("run", "--from", str(source_tree), "--to", folder, cwd=tmp_path, env=env)

    assert done.returncode == 0, done.stderr


def test_a_user_in_the_host_and_another_in_oeleo_username_is_one_config_error():
    with pytest.raises(ConfigError) as caught:
        resolve_endpoints("alice@data:2299", username="bob")
    assert str(caught.value) == (
        "OELEO_EXTERNAL_HOST=alice@data:2299 gives the user alice but OELEO_USERNAME=bob: "
        "give the user in one of them only"
    )


def test_oeleo_external_port_out_of_range_is_one_line_naming_the_setting(source_tree, tmp_path):
    env = {
        "OELEO_CONNECTOR": "ssh",
        "OELEO_EXTERNAL_HOST": "127.0.0.1",
        "OELEO_EXTERNAL_PORT": "99999",
        "OELEO_USERNAME": "oeleo",
    }

    done = run_oeleo("run", "--from", str(source_tree), "--to", "/d", cwd=tmp_path, env=env)

    assert done.returncode == 2
    line = one_error_line(done)
    assert line.startswith("oeleo: OELEO_EXTERNAL_PORT: ") and "65535" in line and "99999" in line


def test_a_port_argument_out_of_range_is_a_config_error(tmp_path):
    with pytest.raises(
        ConfigError, match=r"OELEO_EXTERNAL_PORT: '70000' is not a port number \(1 to 65535\)"
    ):
        SSHConnector(host="127.0.0.1", directory="/d", username="u", port=70000, password="x")


# -- ~/.ssh/config and OELEO_SSH_CONFIG -----------------------------------------------------


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def run_to_data_server(sshd_server, config: Path, source_tree: Path, tmp_path: Path) -> None:
    """``oeleo run`` to the host ``data-server`` of ``config``: it arrives on ``sshd_server``."""
    folder = sshd_server.new_folder()
    env = {
        "OELEO_CONNECTOR": "ssh",
        "OELEO_EXTERNAL_HOST": "data-server",
        "OELEO_SSH_CONFIG": str(config),
        "OELEO_KNOWN_HOSTS": sshd_server.known_hosts,
    }

    done = run_oeleo("run", "--from", str(source_tree), "--to", folder, cwd=tmp_path, env=env)

    assert done.returncode == 0, done.stderr
    assert tree_files(folder) == {"a.res": b"cycle 1\n"}


def test_an_alias_of_the_ssh_config_gives_hostname_port_user_and_key(sshd_server, source_tree, tmp_path):
    config = write_config(
        tmp_path / "ssh_config",
        "Host data-server\n"
        "    HostName 127.0.0.1\n"
        f"    Port {sshd_server.port}\n"
        f"    User {sshd_server.user}\n"
        f"    IdentityFile {sshd_server.keys['rsa']}\n",
    )
    run_to_data_server(sshd_server, config, source_tree, tmp_path)


def test_the_users_own_ssh_config_is_read_when_oeleo_ssh_config_is_not_set(sshd_server, home, tmp_path):
    (home / ".ssh").mkdir()
    write_config(
        home / ".ssh" / "config",
        "Host lab-*\n"  # a pattern, as people write them
        "    HostName 127.0.0.1\n"
        f"    Port {sshd_server.port}\n"
        f"    User {sshd_server.user}\n"
        f"    IdentityFile ~/keys/lab\n",
    )
    (home / "keys").mkdir()
    shutil.copyfile(sshd_server.keys["ed25519"], home / "keys" / "lab")
    folder = sshd_server.new_folder()
    conn = SSHConnector(host="lab-data", directory=folder, username="", known_hosts=sshd_server.known_hosts)

    copy_one(conn, tmp_path)

    assert conn.ssh_config_file == home / ".ssh" / "config"
    assert tree_files(folder) == {"a.res": b"cycle 1\n"}


def test_a_match_exec_block_applies_though_paramiko_is_imported_without_invoke(
    sshd_server, source_tree, tmp_path
):
    # The port is set only in blocks whose commands must run: `true` applies, `false` not.
    config = write_config(
        tmp_path / "ssh_config",
        "Host data-server\n"
        "    HostName 127.0.0.1\n"
        f"    User {sshd_server.user}\n"
        f"    IdentityFile {sshd_server.keys['ed25519']}\n"
        'Match originalhost data-server exec "false"\n'
        "    Port 1\n"
        'Match originalhost data-server exec "true"\n'
        f"    Port {sshd_server.port}\n",
    )
    run_to_data_server(sshd_server, config, source_tree, tmp_path)


@pytest.mark.parametrize("first", ["oeleo", "invoke"])
def test_paramiko_comes_without_invoke_unless_it_was_imported_before(first):
    # invoke is 40 % of importing paramiko, and paramiko needs it only for Match exec.
    script = (
        "import sys\n"
        + ("import invoke\n" if first == "invoke" else "")
        + "import oeleo.connectors.ssh, paramiko.config\n"
        + "print('invoke' in sys.modules, paramiko.config.invoke is sys.modules.get('invoke', 0))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)

    assert done.stdout.split() == (["False", "False"] if first == "oeleo" else ["True", "True"])


def test_a_match_exec_without_invoke_installed_is_one_config_error_naming_the_file(tmp_path):
    config = write_config(tmp_path / "ssh_config", 'Match exec "true"\n    Port 2222\n')
    script = (
        "import sys\n"
        "sys.modules['invoke'] = None  # as if it were not installed\n"
        "from oeleo.connectors.ssh_endpoints import resolve_endpoints, load_ssh_config\n"
        "from oeleo.errors import ConfigError\n"
        f"config, path = load_ssh_config({str(config)!r})\n"
        "try:\n"
        "    resolve_endpoints('lab', config=config, config_file=path)\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)

    assert done.stdout.startswith(f"cannot use the SSH config {config} for lab: "), done.stdout
    assert "invoke" in done.stdout
    assert done.stdout.count("\n") == 1


def test_oeleo_ssh_config_none_reads_no_config_at_all(sshd_server, home, source_tree, tmp_path):
    (home / ".ssh").mkdir()
    write_config(home / ".ssh" / "config", "Host 127.0.0.1\n    HostName no-such-host.invalid\n")
    folder = sshd_server.new_folder()

    read = run_oeleo("run", "--from", str(source_tree), "--to", folder, cwd=tmp_path, env=sshd_server.env())
    ignored = run_oeleo(
        "run",
        "--from",
        str(source_tree),
        "--to",
        folder,
        cwd=tmp_path,
        env=sshd_server.env(OELEO_SSH_CONFIG="none"),
    )

    assert read.returncode == 2
    hint = f"(HostName of Host 127.0.0.1 in {home / '.ssh' / 'config'})"
    assert f"cannot find the SSH server 'no-such-host.invalid' {hint}" in one_error_line(read)
    assert ignored.returncode == 0, ignored.stderr
    assert tree_files(folder) == {"a.res": b"cycle 1\n"}


def test_explicit_settings_win_over_the_ssh_config(sshd_server, source_tree, tmp_path):
    config = write_config(
        tmp_path / "ssh_config",
        "Host data-server\n    HostName 127.0.0.1\n    Port 1\n    User nobody-here\n"
        f"    IdentityFile {tmp_path / 'no-such-key'}\n",
    )
    folder = sshd_server.new_folder()
    # The alias comes from the config; port, user and key from the settings.
    env = sshd_server.env(OELEO_EXTERNAL_HOST="data-server", OELEO_SSH_CONFIG=str(config))

    done = run_oeleo("run", "--from", str(source_tree), "--to", folder, cwd=tmp_path, env=env)

    assert done.returncode == 0, done.stderr
    assert tree_files(folder) == {"a.res": b"cycle 1\n"}


def test_a_port_in_the_host_string_wins_over_the_ssh_config():
    config = paramiko.SSHConfig.from_text("Host data\n    HostName 10.0.0.7\n    Port 2200\n    User lab\n")

    target, jumps = resolve_endpoints("data:2299", config=config, config_file=Path("cfg"))

    assert (target.host, target.port, target.username, jumps) == ("10.0.0.7", 2299, "lab", ())


def test_oeleo_ssh_config_that_does_not_exist_is_one_line(source_tree, tmp_path):
    env = {
        "OELEO_CONNECTOR": "ssh",
        "OELEO_EXTERNAL_HOST": "data-server",
        "OELEO_SSH_CONFIG": str(tmp_path / "nothing"),
    }

    done = run_oeleo("run", "--from", str(source_tree), "--to", "/d", cwd=tmp_path, env=env)

    assert done.returncode == 2
    assert one_error_line(done) == f"oeleo: OELEO_SSH_CONFIG={tmp_path / 'nothing'}: no such file"


def test_a_missing_identity_file_of_the_config_is_named_when_nothing_logs_in(sshd_server, tmp_path):
    config = write_config(tmp_path / "ssh_config", f"Host *\n    IdentityFile {tmp_path / 'gone'}\n")

    with pytest.raises(ConfigError) as caught:
        SSHConnector(
            host=f"127.0.0.1:{sshd_server.port}", directory="/d", username=sshd_server.user,
            ssh_config=config, known_hosts=sshd_server.known_hosts,
        ).connect()  # fmt: skip

    assert f"{tmp_path / 'gone'} (IdentityFile in {config}): no such file" in str(caught.value)


# -- the SSH agent and the default keys ------------------------------------------------------


def connector_without_key(server: servers.SSHServer, folder: str, **options) -> SSHConnector:
    values = dict(
        host=server.host,
        port=server.port,
        username=server.user,
        directory=folder,
        known_hosts=server.known_hosts,
    )
    values.update(options)
    return SSHConnector(**values)


def test_a_key_held_only_by_the_ssh_agent_logs_in_unless_a_key_is_named(sshd_server, start_agent, tmp_path):
    held = tmp_path / "agent-only-key"
    shutil.copyfile(sshd_server.keys["ed25519"], held)
    held.chmod(0o600)
    start_agent(str(held))
    held.unlink()  # only the agent has it now
    folder = sshd_server.new_folder()

    copy_one(connector_without_key(sshd_server, folder), tmp_path)

    assert tree_files(folder) == {"a.res": b"cycle 1\n"}
    # A key that is named is all that is offered, as before: the agent is not asked.
    other = stranger_key(tmp_path, "stranger")
    with pytest.raises(ConfigError) as caught:
        connector_without_key(sshd_server, folder, key_filename=other).connect()
    assert str(caught.value) == (
        f"cannot log in to {sshd_server.user}@127.0.0.1:{sshd_server.port}: the key {other} was not accepted"
    )


def test_the_command_logs_in_with_the_agent_when_no_key_or_password_is_set(
    sshd_server, start_agent, source_tree, tmp_path
):
    start_agent(sshd_server.keys["rsa"])
    folder = sshd_server.new_folder()

    done = run_oeleo(
        "run", "--from", str(source_tree), "--to", folder, cwd=tmp_path, env=env_without_key(sshd_server)
    )

    assert done.returncode == 0, done.stderr
    assert tree_files(folder) == {"a.res": b"cycle 1\n"}


def test_default_keys_in_the_home_folder_are_tried_and_encrypted_ones_skipped(
    sshd_server, home, tmp_path, caplog
):
    install_key(home, sshd_server.keys["ed25519_passphrase"], "id_ed25519")  # encrypted: skipped
    install_key(home, sshd_server.keys["rsa"], "id_rsa")
    folder = sshd_server.new_folder()
    caplog.set_level(logging.DEBUG, logger="oeleo")

    copy_one(connector_without_key(sshd_server, folder), tmp_path)

    assert tree_files(folder) == {"a.res": b"cycle 1\n"}
    assert "~/.ssh/id_ed25519 is protected by a passphrase (skipped" in caplog.text


def test_an_encrypted_default_key_is_unlocked_with_oeleo_key_passphrase(sshd_server, home, tmp_path):
    install_key(home, sshd_server.keys["ed25519_passphrase"], "id_ed25519")
    folder = sshd_server.new_folder()

    copy_one(connector_without_key(sshd_server, folder, passphrase=sshd_server.passphrase), tmp_path)

    assert tree_files(folder) == {"a.res": b"cycle 1\n"}


def test_when_no_key_is_accepted_the_one_line_lists_what_was_tried(
    sshd_server, start_agent, home, source_tree, tmp_path
):
    keys = tmp_path / "keys"
    keys.mkdir()
    start_agent(str(stranger_key(keys, "agent-1")), str(stranger_key(keys, "agent-2")))
    install_key(home, str(stranger_key(keys, "default")), "id_ed25519")
    install_key(home, sshd_server.keys["rsa_passphrase"], "id_rsa")  # the right key, but locked
    where = f"{sshd_server.user}@127.0.0.1:{sshd_server.port}"

    done = run_oeleo(
        "run", "--from", str(source_tree), "--to", sshd_server.new_folder(), cwd=tmp_path,
        env=env_without_key(sshd_server),
    )  # fmt: skip

    assert done.returncode == 2
    assert one_error_line(done) == (
        f"oeleo: cannot log in to {where}: the agent's 2 keys and ~/.ssh/id_ed25519 were not accepted; "
        "~/.ssh/id_rsa is protected by a passphrase (skipped: add it to the SSH agent, "
        "or set OELEO_KEY_FILENAME and OELEO_KEY_PASSPHRASE)"
    )


def test_with_no_agent_no_default_key_and_no_password_the_line_says_what_to_set(
    sshd_server, source_tree, tmp_path
):
    done = run_oeleo(
        "run", "--from", str(source_tree), "--to", sshd_server.new_folder(), cwd=tmp_path,
        env=env_without_key(sshd_server),
    )  # fmt: skip

    assert done.returncode == 2
    assert one_error_line(done) == (
        "oeleo: set OELEO_KEY_FILENAME (a private key file) or OELEO_PASSWORD to log in to "
        f"{sshd_server.user}@127.0.0.1:{sshd_server.port} (no SSH agent holds a key, and there "
        "is no ~/.ssh/id_ed25519, id_ecdsa or id_rsa)"
    )


def test_a_server_that_hangs_up_after_too_many_keys_is_said_in_the_line(start_sshd, start_agent, tmp_path):
    server = start_sshd(config=["MaxAuthTries 2"])
    start_agent(*(str(stranger_key(tmp_path, f"stranger-{i}")) for i in range(3)))

    with pytest.raises(ConfigError) as caught:
        connector_without_key(server, "/d").connect()

    assert str(caught.value) == (
        f"cannot log in to {server.user}@127.0.0.1:{server.port}: the agent's 2 keys were not accepted; "
        "then the server closed the connection (it allows few attempts: MaxAuthTries)"
    )


# -- ProxyJump --------------------------------------------------------------------------------


def jump_config(
    path: Path, jump: servers.SSHServer, target: servers.SSHServer, target_host: str = "127.0.0.1"
) -> Path:
    return write_config(
        path,
        "Host instrument-gw\n"
        "    HostName 127.0.0.1\n"
        f"    Port {jump.port}\n"
        f"    User {jump.user}\n"
        f"    IdentityFile {jump.keys['ed25519']}\n"
        "\n"
        "Host data-server\n"
        f"    HostName {target_host}\n"
        f"    Port {target.port}\n"
        f"    User {target.user}\n"
        f"    IdentityFile {target.keys['ed25519']}\n"
        "    ProxyJump instrument-gw\n",
    )


def both_known(path: Path, *servers_: servers.SSHServer) -> Path:
    path.write_text("".join(Path(s.known_hosts).read_text() for s in servers_))
    return path


def test_proxyjump_reaches_the_server_through_the_jump_host(sshd_server, start_sshd, tmp_path):
    jump = start_sshd()
    config = jump_config(tmp_path / "ssh_config", jump, sshd_server)
    known = both_known(tmp_path / "known_hosts", jump, sshd_server)
    folder = sshd_server.new_folder()
    conn = SSHConnector(
        host="data-server", directory=folder, username="", ssh_config=config, known_hosts=known
    )

    with conn:
        conn.prepare()
        conn.put(make_tree(tmp_path / "src", {"a.res": b"via the gateway"})["a.res"], "a.res")
        # The destination's SSH runs inside a channel of the jump host's connection ...
        assert isinstance(conn._transport.sock, paramiko.Channel)
        (gateway,) = conn._jump_transports
        # ... and the jump host serves that connection.
        assert jump.session_pids(gateway.sock.getsockname()[1])
    assert tree_files(folder) == {"a.res": b"via the gateway"}
    assert not gateway.is_active() and conn._jump_transports == []  # closed with the connector


def test_proxyjump_user_at_host_colon_port_with_the_explicit_key(sshd_server, start_sshd, tmp_path):
    jump = start_sshd()
    jump.authorize(sshd_server.keys["ed25519"])  # one key for both, as people set it up
    config = write_config(
        tmp_path / "ssh_config",
        f"Host data-server\n    HostName 127.0.0.1\n    ProxyJump {jump.user}@127.0.0.1:{jump.port}\n",
    )
    known = both_known(tmp_path / "known_hosts", jump, sshd_server)
    folder = sshd_server.new_folder()
    conn = SSHConnector(
        host=f"data-server:{sshd_server.port}", directory=folder, username=sshd_server.user,
        key_filename=sshd_server.keys["ed25519"], ssh_config=config, known_hosts=known,
    )  # fmt: skip

    copy_one(conn, tmp_path)

    assert tree_files(folder) == {"a.res": b"cycle 1\n"}
    assert [hop.address for hop in conn.jumps] == [f"127.0.0.1:{jump.port}"]


def test_a_proxyjump_chain_of_two_jump_hosts(sshd_server, start_sshd, tmp_path):
    first, second = start_sshd(), start_sshd()
    config = write_config(
        tmp_path / "ssh_config",
        "".join(
            f"Host {name}\n    HostName 127.0.0.1\n    Port {gw.port}\n    User {gw.user}\n"
            f"    IdentityFile {gw.keys['ed25519']}\n"
            for name, gw in (("gw-1", first), ("gw-2", second))
        )
        + f"Host data-server\n    HostName 127.0.0.1\n    Port {sshd_server.port}\n"
        f"    IdentityFile {sshd_server.keys['ed25519']}\n    ProxyJump gw-1,gw-2\n",
    )
    known = both_known(tmp_path / "known_hosts", first, second, sshd_server)
    folder = sshd_server.new_folder()
    conn = SSHConnector(
        host="data-server", directory=folder, username=sshd_server.user, ssh_config=config, known_hosts=known
    )

    with conn:
        conn.put(make_tree(tmp_path / "src", {"a.res": b"two hops"})["a.res"], "a.res")
        gw_1, gw_2 = conn._jump_transports
        assert first.session_pids(gw_1.sock.getsockname()[1])  # the first hop is a TCP connection
        assert isinstance(gw_2.sock, paramiko.Channel) and isinstance(conn._transport.sock, paramiko.Channel)

    assert tree_files(folder) == {"a.res": b"two hops"}


def test_with_a_password_the_jump_host_gets_the_default_key_and_never_the_password(
    sshd_server, start_sshd, home, tmp_path
):
    if sshd_server.password is None:
        pytest.fail("password login is tested as root only: sshd must read a shadow file (unshare --mount)")
    jump = start_sshd()
    install_key(home, jump.keys["ed25519"], "id_ed25519")
    config = write_config(
        tmp_path / "ssh_config",
        f"Host data-server\n    HostName 127.0.0.1\n    ProxyJump 127.0.0.1:{jump.port}\n",
    )
    known = both_known(tmp_path / "known_hosts", jump, sshd_server)
    folder = sshd_server.new_folder()
    conn = SSHConnector(
        host=f"data-server:{sshd_server.port}", directory=folder, username=sshd_server.user,
        password=sshd_server.password, ssh_config=config, known_hosts=known,
    )  # fmt: skip

    copy_one(conn, tmp_path)

    assert tree_files(folder) == {"a.res": b"cycle 1\n"}
    jump_log = Path(jump.tmpdir, "sshd.log").read_text()
    assert "Accepted publickey" in jump_log and "password" not in jump_log.lower()
    assert "Accepted password" in Path(sshd_server.tmpdir, "sshd.log").read_text()


def test_a_server_only_the_jump_host_can_resolve_is_reached(sshd_server, start_sshd, tmp_path):
    if os.geteuid() != 0:
        pytest.fail("needs root: the jump host gets its own /etc/hosts (unshare --mount)")
    hosts = tmp_path / "hosts"
    hosts.write_text(Path("/etc/hosts").read_text() + "\n127.0.0.1 data-behind-gw.invalid\n")
    jump = start_sshd(binds={"/etc/hosts": str(hosts)})
    config = jump_config(tmp_path / "ssh_config", jump, sshd_server, target_host="data-behind-gw.invalid")
    known = tmp_path / "known_hosts"
    kind, blob = sshd_server.host_key_line.split()[1:]
    known.write_text(
        Path(jump.known_hosts).read_text() + f"[data-behind-gw.invalid]:{sshd_server.port} {kind} {blob}\n"
    )
    folder = sshd_server.new_folder()

    copy_one(
        SSHConnector(host="data-server", directory=folder, username="", ssh_config=config, known_hosts=known),
        tmp_path,
    )

    assert tree_files(folder) == {"a.res": b"cycle 1\n"}
    direct = write_config(
        tmp_path / "direct", config.read_text().replace("    ProxyJump instrument-gw\n", "")
    )
    with pytest.raises(ConfigError, match="cannot find the SSH server 'data-behind-gw.invalid'"):
        SSHConnector(
            host="data-server", directory=folder, username="", ssh_config=direct, known_hosts=known
        ).connect()


def test_an_unknown_jump_host_key_is_refused_unless_new_keys_are_accepted(sshd_server, start_sshd, tmp_path):
    jump = start_sshd()
    config = jump_config(tmp_path / "ssh_config", jump, sshd_server)
    known = both_known(tmp_path / "known_hosts", sshd_server)  # the destination's key only
    folder = sshd_server.new_folder()

    with pytest.raises(ConfigError) as caught:
        SSHConnector(
            host="data-server", directory=folder, username="", ssh_config=config, known_hosts=known
        ).connect()
    assert str(caught.value).startswith(f"unknown SSH host key for jump host [127.0.0.1]:{jump.port} (")
    assert jump.host_key_sha256 in str(caught.value)

    trusting = SSHConnector(
        host="data-server", directory=folder, username="", ssh_config=config, known_hosts=known,
        accept_new_host_keys=True,
    )  # fmt: skip
    copy_one(trusting, tmp_path)
    assert jump.host_key_line in known.read_text()


def test_an_unreachable_jump_host_is_one_line_naming_it(sshd_server, source_tree, tmp_path):
    config = write_config(
        tmp_path / "ssh_config",
        f"Host data-server\n    HostName 127.0.0.1\n    Port {sshd_server.port}\n"
        "    ProxyJump gw@127.0.0.1:1\n",
    )
    env = sshd_server.env(OELEO_EXTERNAL_HOST="data-server", OELEO_SSH_CONFIG=str(config))
    env.pop("OELEO_EXTERNAL_PORT")

    done = run_oeleo("run", "--from", str(source_tree), "--to", "/d", cwd=tmp_path, env=env)

    assert done.returncode == 2
    assert one_error_line(done) == (
        "oeleo: jump host 127.0.0.1:1 refused the connection: no SSH server listens there "
        f"(check ProxyJump of Host data-server in {config})"
    )


def test_a_jump_host_that_forbids_forwarding_is_one_config_error(sshd_server, start_sshd, tmp_path):
    jump = start_sshd(config=["AllowTcpForwarding no"])
    config = jump_config(tmp_path / "ssh_config", jump, sshd_server)
    known = both_known(tmp_path / "known_hosts", jump, sshd_server)

    with pytest.raises(ConfigError) as caught:
        SSHConnector(
            host="data-server", directory="/d", username="", ssh_config=config, known_hosts=known
        ).connect()

    assert str(caught.value) == (
        f"jump host 127.0.0.1:{jump.port} does not forward connections to 127.0.0.1:{sshd_server.port} "
        "(Administratively prohibited): its sshd_config must allow it (AllowTcpForwarding yes)"
    )


class KillJumpSessionAfter(Reporter):
    """Kills the jump host's side of the connection once ``limit`` bytes went out."""

    def __init__(self, jump: servers.SSHServer, limit: int) -> None:
        super().__init__()
        self.jump, self.limit, self.sent = jump, limit, 0
        self.connector: Optional[SSHConnector] = None
        self.killed: List[int] = []
        self.ports: List[int] = []  # the jump connection's client port, each time one was killed

    def advance(self, nbytes: int) -> None:
        self.sent += nbytes
        if not self.killed and self.sent >= self.limit:
            assert self.connector is not None
            port = self.connector._jump_transports[0].sock.getsockname()[1]
            self.killed = self.jump.session_pids(port)
            assert self.killed
            self.ports.append(port)
            for pid in self.killed:
                os.kill(pid, signal.SIGKILL)


def test_a_dropped_jump_connection_is_reopened_and_the_file_completes(
    sshd_server, start_sshd, tmp_path, caplog
):
    jump = start_sshd()
    config = jump_config(tmp_path / "ssh_config", jump, sshd_server)
    known = both_known(tmp_path / "known_hosts", jump, sshd_server)
    source = tmp_path / "src"
    digest = write_random(source / "big.fits", 24 * MiB)
    folder = sshd_server.new_folder()
    reporter = KillJumpSessionAfter(jump, 8 * MiB)
    settings = load_settings(
        connector="ssh", base_dir_from=source, base_dir_to=folder, db_name=str(tmp_path / "books.db"),
        external_host="data-server", ssh_config=config, known_hosts=known,
    )  # fmt: skip
    worker = worker_from_settings(settings, reporter=reporter)
    reporter.connector = worker.external_connector
    caplog.set_level(logging.INFO, logger="oeleo")

    summary = run_once(worker)

    assert reporter.killed
    assert (summary.copied, summary.failed) == (1, 0), summary.errors
    assert hashlib.md5((Path(folder) / "big.fits").read_bytes()).hexdigest() == digest
    assert "reconnected to" in caplog.text


# -- names ------------------------------------------------------------------------------------


def connector(server: servers.SSHServer, folder: str) -> SSHConnector:
    return SSHConnector(
        host=server.host, port=server.port, username=server.user, directory=folder,
        key_filename=server.keys["ed25519"], known_hosts=server.known_hosts,
    )  # fmt: skip


def make_bytes_file(folder: Path, name: bytes, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(os.path.join(os.fsencode(folder), name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return folder / os.fsdecode(name)


def test_a_name_that_is_not_utf8_is_written_under_the_same_bytes_on_the_server(sshd_server, tmp_path):
    small = make_bytes_file(tmp_path / "src", b"m\xe9sure.csv", b"1;2;3\n")
    big_data = os.urandom(300 * 1024)  # verified by md5sum on the server, not read back
    big = make_bytes_file(tmp_path / "src", b"gro\xdf.fits", big_data)
    folder = sshd_server.new_folder()

    with connector(sshd_server, folder) as conn:
        for path in (small, big):
            conn.put(path, path.name)
        listed = {entry.relpath: entry.size for entry in conn.list_files()}
        digests = conn.checksums([small.name, big.name])

    assert sorted(os.listdir(os.fsencode(folder))) == [b"gro\xdf.fits", b"m\xe9sure.csv"]
    assert listed == {"m\udce9sure.csv": 6, "gro\udcdf.fits": len(big_data)}
    assert digests == {
        small.name: hashlib.md5(b"1;2;3\n").hexdigest(),
        big.name: hashlib.md5(big_data).hexdigest(),
    }


def test_a_run_copies_a_name_that_is_not_utf8(sshd_server, tmp_path):
    source = tmp_path / "src"
    make_bytes_file(source, b"m\xe9sure.csv", b"1;2;3\n")
    make_tree(source, {"plain.csv": b"x"})
    folder = sshd_server.new_folder()
    settings = load_settings(
        connector="ssh", base_dir_from=source, base_dir_to=folder, db_name=str(tmp_path / "books.db"),
        external_host=f"{sshd_server.user}@127.0.0.1:{sshd_server.port}",
        key_filename=sshd_server.keys["ed25519"], known_hosts=sshd_server.known_hosts,
    )  # fmt: skip

    summary = run_once(worker_from_settings(settings))

    assert (summary.copied, summary.failed) == (2, 0), summary.errors
    assert sorted(os.listdir(os.fsencode(folder))) == [b"m\xe9sure.csv", b"plain.csv"]


def test_a_name_no_bytes_stand_for_fails_alone_with_one_line(sshd_server, tmp_path):
    source = make_tree(tmp_path / "src", {"a.res": b"x"})["a.res"]
    folder = sshd_server.new_folder()

    with connector(sshd_server, folder) as conn:
        with pytest.raises(TransferError) as caught:  # a lone UTF-16 half, as a Windows name can hold
            conn.put(source, "bad\ud800name.res")
        conn.put(source, "a.res")  # the connection is still good

    assert "\n" not in str(caught.value) and "cannot be written over SFTP" in str(caught.value)
    assert tree_files(folder) == {"a.res": b"x"}


@pytest.mark.skipif(os.name == "nt", reason="on Windows a backslash separates folders")
def test_a_backslash_in_a_posix_name_is_one_file_named_with_it(sshd_server, tmp_path):
    big = os.urandom(300 * 1024)  # hashed by md5sum, which escapes the name in its answer
    source = make_tree(tmp_path / "src", {"back\\slash.csv": b"small", "run\\1\\big.fits": big})
    folder = sshd_server.new_folder()

    with connector(sshd_server, folder) as conn:
        for relpath, path in source.items():
            conn.put(path, relpath)
        digests = conn.checksums(list(source))
        listed = sorted(entry.relpath for entry in conn.list_files())

    assert sorted(os.listdir(folder)) == ["back\\slash.csv", "run\\1\\big.fits"]
    assert listed == ["back\\slash.csv", "run\\1\\big.fits"]
    assert digests == {
        "back\\slash.csv": hashlib.md5(b"small").hexdigest(),
        "run\\1\\big.fits": hashlib.md5(big).hexdigest(),
    }


# -- list_temporaries -----------------------------------------------------------------------


def test_list_temporaries_finds_oeleo_part_files_in_subfolders(sshd_server):
    folder = sshd_server.new_folder()
    make_tree(
        folder,
        {
            "a.csv": b"kept",
            "run-1/.x.csv.oeleo-part": b"half",
            "run-1/deeper/" + temp_relpath("y.csv", "1f3a9c"): b"half",
            "run-1/.hidden-not-ours": b"",
            "run-2/z.oeleo-part": b"not hidden: not oeleo's",
            ".snapshot/.old.csv.oeleo-part": b"in a hidden folder: not looked into",
        },
    )
    make_bytes_file(Path(folder) / "run-3", b".m\xe9sure.csv" + TEMP_SUFFIX.encode(), b"half")
    make_tree(os.path.join(folder, "locked"), {".l.csv.oeleo-part": b""})
    sshd_server.give(folder)
    os.chmod(os.path.join(folder, "locked"), 0)  # the login cannot list it: skipped

    try:
        with connector(sshd_server, folder) as conn:
            found = sorted(conn.list_temporaries())
            for relpath in found:
                if "\udce9" in relpath:
                    conn.remove(relpath)  # the name round-trips
    finally:
        os.chmod(os.path.join(folder, "locked"), 0o755)

    expected = [
        "run-1/.x.csv.oeleo-part",
        "run-1/deeper/.y.csv.1f3a9c.oeleo-part",
        "run-3/.m\udce9sure.csv.oeleo-part",
    ]
    assert found == expected
    assert os.listdir(os.path.join(os.fsencode(folder), b"run-3")) == []


@pytest.fixture
def source_tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "instrument", {"a.res": "cycle 1\n"})["a.res"].parent
