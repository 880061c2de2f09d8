"""Where an SSH connection goes: ``OELEO_EXTERNAL_HOST`` read as ``ssh`` reads a destination
(``[user@]host[:port]``, ``[v6addr]:port``, ``ssh://``), completed by the user's OpenSSH client
config (``Host`` aliases: ``HostName``, ``Port``, ``User``, ``IdentityFile``, ``ProxyJump``).
Plain values and pure functions: no connection is opened here."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import paramiko

from oeleo.connectors.paramiko_import import import_invoke
from oeleo.errors import ConfigError

log = logging.getLogger("oeleo")


def _bracket(host: str) -> str:
    """``[::1]`` for an IPv6 address, so that a port can follow; other hosts unchanged."""
    return f"[{host}]" if ":" in host else host


def parse_port(text: Union[str, int], setting: str) -> int:
    """A TCP port, 1 to 65535; anything else is a ``ConfigError`` naming ``setting``."""
    value = str(text).strip()
    if value.isdigit() and 1 <= int(value) <= 65535:
        return int(value)
    raise ConfigError(f"{setting}: {value!r} is not a port number (1 to 65535)")


@dataclass(frozen=True)
class Destination:
    """What ``OELEO_EXTERNAL_HOST`` (or one hop of a ``ProxyJump``) names."""

    host: str
    user: Optional[str] = None
    port: Optional[int] = None


def parse_destination(text: str, setting: str = "OELEO_EXTERNAL_HOST") -> Destination:
    """``host``, ``host:port``, ``user@host``, ``user@host:port``, ``[v6addr]:port`` or a bare
    IPv6 address, with or without ``ssh://`` in front, as ``ssh`` and fabric read them.

    A malformed one is a ``ConfigError`` that names ``setting``.
    """
    rest = text.strip()
    if rest.lower().startswith("ssh://"):
        rest = rest[len("ssh://") :].rstrip("/")
    user: Optional[str] = None
    if "@" in rest:
        user, _, rest = rest.rpartition("@")  # ssh takes the last @: a user name may hold one
        if not user:
            raise ConfigError(f"{setting}={text}: the user name before '@' is empty")
    port: Optional[str] = None
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ConfigError(f"{setting}={text}: write an IPv6 address with a port as [address]:port")
        port = after[1:] if after else None
    elif rest.count(":") == 1:
        host, _, port = rest.partition(":")
    else:  # a plain name, or an IPv6 address (several colons) without a port
        host = rest
    if not host or any(c.isspace() or c in "/@[]" for c in host):
        raise ConfigError(f"{setting}={text}: not a host name, [user@]host[:port]")
    return Destination(host, user, parse_port(port, f"{setting}={text}") if port is not None else None)


@dataclass(frozen=True)
class Endpoint:
    """One SSH server oeleo logs in to: the destination, or a jump host on the way to it."""

    host: str  # the name or address connected to (HostName of an alias)
    port: int
    username: str
    identity_files: Tuple[Path, ...] = ()  # IdentityFile of the SSH config; none: DEFAULT_KEYS
    identities_only: bool = False  # IdentitiesOnly yes: the agent's keys are not offered
    jump: bool = False
    check: str = "OELEO_EXTERNAL_HOST and OELEO_EXTERNAL_PORT"  # what to look at when unreachable
    named_by: str = "OELEO_EXTERNAL_HOST"  # where the host name was written

    @property
    def address(self) -> str:
        """``host:port`` (``[v6addr]:port``)."""
        return f"{_bracket(self.host)}:{self.port}"

    @property
    def where(self) -> str:
        """``user@host:port``, for messages; a jump host says so."""
        return ("jump host " if self.jump else "") + f"{self.username}@{self.address}"

    @property
    def known_name(self) -> str:
        """How known_hosts names this server: ``host`` on port 22, else ``[host]:port``."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


# The way out when the user's own ~/.ssh/config is one paramiko cannot read.
_NONE_HINT = " (OELEO_SSH_CONFIG=none reads no SSH config)"


def load_ssh_config(
    path: Union[str, os.PathLike, None],
) -> Tuple[Optional[paramiko.SSHConfig], Optional[Path]]:
    """The OpenSSH client config to read, and its path: ``path`` (it must exist; ``none``
    reads none, as ``ssh -F none``), else ``~/.ssh/config`` when there is one."""
    if path is not None and str(path).strip().lower() == "none":
        return None, None
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"OELEO_SSH_CONFIG={path}: no such file")
    else:
        file = Path.home() / ".ssh" / "config"
        if not file.is_file():
            return None, None
    try:
        return paramiko.SSHConfig.from_path(str(file)), file
    except (OSError, UnicodeDecodeError, paramiko.ConfigParseError) as exc:
        raise ConfigError(
            f"cannot read the SSH config {file}: {exc}{_NONE_HINT if path is None else ''}"
        ) from None


def _lookup(config: Optional[paramiko.SSHConfig], file: Optional[Path], host: str) -> Dict[str, Any]:
    if config is None:
        return {}
    try:
        try:
            return dict(config.lookup(host))
        except ImportError as exc:  # a Match exec: paramiko runs its command with invoke
            import_invoke(exc)
            return dict(config.lookup(host))
    except Exception as exc:  # noqa: BLE001 - Match exec without invoke, CanonicalizeHostname, ...
        raise ConfigError(
            f"cannot use the SSH config {file} for {host}: {exc or type(exc).__name__}{_NONE_HINT}"
        ) from None


def resolve_endpoints(
    host: str,
    username: Optional[str] = None,
    port: Optional[int] = None,
    config: Optional[paramiko.SSHConfig] = None,
    config_file: Optional[Path] = None,
) -> Tuple[Endpoint, Tuple[Endpoint, ...]]:
    """The server to log in to and the jump hosts on the way, from ``OELEO_EXTERNAL_HOST``
    (``host``), ``OELEO_USERNAME`` and ``OELEO_EXTERNAL_PORT`` when the user set them (else
    None) and the SSH config.

    What ``host`` says wins over the config file; ``username`` and ``port`` win over the
    config file too, but may not contradict ``host`` (a ``ConfigError`` naming both).
    """
    dest = parse_destination(host)
    if dest.port is not None and port is not None and port != dest.port:
        raise ConfigError(
            f"OELEO_EXTERNAL_HOST={host} gives port {dest.port} but OELEO_EXTERNAL_PORT={port}: "
            "give the port in one of them only"
        )
    if dest.user is not None and username and username != dest.user:
        raise ConfigError(
            f"OELEO_EXTERNAL_HOST={host} gives the user {dest.user} but OELEO_USERNAME={username}: "
            "give the user in one of them only"
        )
    options = _lookup(config, config_file, dest.host)
    section = f"Host {dest.host} in {config_file}"
    user = dest.user or username or options.get("user")
    if not user:
        raise ConfigError(
            f"OELEO_USERNAME is not set: the user to log in as on {dest.host} "
            "(or write user@ in OELEO_EXTERNAL_HOST)"
        )
    check = "OELEO_EXTERNAL_HOST and OELEO_EXTERNAL_PORT"
    if options.get("hostname", dest.host) != dest.host or (
        port is None and dest.port is None and "port" in options
    ):
        check += f", and {section}"
    target = _endpoint(Destination(dest.host, user, dest.port or port), options, section, check=check)
    command = str(options.get("proxycommand") or "none")
    if command.lower() != "none":
        log.warning("%s sets a ProxyCommand, which oeleo does not run: use ProxyJump", section)
    jumps = []
    chain = str(options.get("proxyjump") or "none").strip()
    for spec in chain.split(",") if chain.lower() != "none" else ():
        hop = parse_destination(spec, f"ProxyJump of {section}")
        hop_options = _lookup(config, config_file, hop.host)
        if not hop.user:
            hop = Destination(hop.host, hop_options.get("user") or user, hop.port)
        hop_section = f"Host {hop.host} in {config_file}"
        jumps.append(
            _endpoint(
                hop,
                hop_options,
                hop_section,
                jump=True,
                check=f"ProxyJump of {section}",
                named_by=f"ProxyJump of {section}",
            )
        )
    return target, tuple(jumps)


def _endpoint(dest: Destination, options: Dict[str, Any], section: str, **more: Any) -> Endpoint:
    """``dest`` completed by its SSH config ``options``: what ``dest`` says wins."""
    port = dest.port
    if port is None:
        port = parse_port(options["port"], f"Port of {section}") if "port" in options else 22
    if options.get("hostname", dest.host) != dest.host:
        more["named_by"] = f"HostName of {section}"
    return Endpoint(
        host=options.get("hostname") or dest.host,
        port=port,
        username=dest.user or options.get("user") or "",
        identity_files=tuple(Path(os.path.expanduser(f)) for f in options.get("identityfile") or ()),
        identities_only=str(options.get("identitiesonly", "no")).lower() == "yes",
        **more,
    )
