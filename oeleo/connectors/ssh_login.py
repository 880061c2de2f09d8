"""Logging in to an SSH server as ``ssh`` does: the server's host key checked against
``known_hosts`` (an unknown one refused unless the user says to trust it), then the key file
or password the user set, else the SSH agent's keys and the default key files; when nothing
is accepted, one line that says what was tried."""

from __future__ import annotations

import base64
import hashlib
import logging
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import paramiko

from oeleo.connectors.ssh_endpoints import Endpoint
from oeleo.errors import ConfigError

log = logging.getLogger("oeleo")


def read_known_hosts(path: Path) -> Tuple[paramiko.HostKeys, List[Tuple[paramiko.PKey, int]]]:
    """The keys of a known_hosts file, read as ssh reads it: comments, blank lines and lines it
    cannot parse are skipped (said once at debug level); ``@cert-authority`` lines are skipped
    (host certificates are not used here); ``@revoked`` keys are returned apart, with their
    line numbers. A missing file has no keys; one that cannot be read is a ``ConfigError``."""
    keys = paramiko.HostKeys()
    revoked: List[Tuple[paramiko.PKey, int]] = []
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return keys, revoked
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the known hosts file {path}: {exc}") from None
    for number, text in enumerate(lines, 1):
        line = " ".join(text.split())  # fields are separated by runs of blanks, as ssh reads them
        if not line or line.startswith("#"):
            continue
        marker = ""
        if line.startswith("@"):
            marker, _, line = line.partition(" ")
            if marker != "@revoked":  # @cert-authority (certificates are not used), or unknown
                log.debug("%s line %d: %s, skipped", path, number, marker)
                continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, number)
        except Exception as exc:  # noqa: BLE001 - a line ssh cannot read either: skipped, as ssh does
            level = logging.WARNING if marker == "@revoked" else logging.DEBUG
            log.log(level, "%s line %d cannot be read (%s), skipped", path, number, exc)
            continue
        if entry is None:
            continue
        if marker == "@revoked":
            revoked.append((entry.key, number))
            continue
        for name in entry.hostnames:
            keys.add(name, entry.key.get_name(), entry.key)
    return keys, revoked


# The private keys tried when no key, no password and no IdentityFile is set, in this order
# (after the SSH agent's keys), in the user's ~/.ssh folder.
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
# What a login attempt is called in messages (and how _authenticate tells them apart).
AGENT = "the agent's key"
PASSWORD = "the password (OELEO_PASSWORD)"
HUNG_UP = "then the server closed the connection (it allows few attempts: MaxAuthTries)"
ADD_TO_AGENT = "add it to the SSH agent, or set OELEO_KEY_FILENAME and OELEO_KEY_PASSPHRASE"


def _fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:...`` as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _show(path: Path) -> str:
    """A key file for messages: ``~/.ssh/id_rsa`` when it is in the home folder."""
    try:
        return str(Path("~") / path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class SSHLogin:
    """Host keys and logging in, for ``SSHConnector`` (which sets these attributes)."""

    endpoint: Endpoint
    known_hosts: Optional[Path]
    accept_new_host_keys: bool
    key_filename: Optional[Path]
    ssh_config_file: Optional[Path]
    _password: Optional[str]
    _passphrase: Optional[str]
    _key: Optional[paramiko.PKey]
    _key_skipped: bool = False  # OELEO_KEY_FILENAME locked, OELEO_PASSWORD used alone
    _file_keys: Dict[Path, Tuple[Optional[paramiko.PKey], str]]

    def _fail_connect(self, message: str) -> Exception:
        raise NotImplementedError

    def _say_once(self, key: str, message: str, *args: Any, level: int = logging.INFO) -> None:
        raise NotImplementedError

    def _automatic(self, endpoint: Endpoint) -> bool:
        raise NotImplementedError

    # -- host keys --------------------------------------------------------------------
    @property
    def host_key_name(self) -> str:
        """How known_hosts names this server: ``host`` on port 22, else ``[host]:port``."""
        return self.endpoint.known_name

    def _known_hosts_file(self) -> Path:
        """Where keys are trusted and stored: OELEO_KNOWN_HOSTS, else ~/.ssh/known_hosts."""
        return self.known_hosts or Path.home() / ".ssh" / "known_hosts"

    def _known_hosts_files(self) -> List[Path]:
        files = [self._known_hosts_file()]
        if self.known_hosts is None:
            files.append(Path("/etc/ssh/ssh_known_hosts"))
        return files

    def _known_keys(self, endpoint: Endpoint) -> Dict[str, paramiko.PKey]:
        """A server's trusted keys, by key type, from the known_hosts files."""
        return self._trusted(endpoint)[0]

    def _trusted(
        self, endpoint: Endpoint
    ) -> Tuple[Dict[str, paramiko.PKey], List[Tuple[paramiko.PKey, str]]]:
        """A server's trusted keys by key type, and every key marked ``@revoked`` with where
        (file and line): each known_hosts file read once."""
        found: Dict[str, paramiko.PKey] = {}
        revoked: List[Tuple[paramiko.PKey, str]] = []
        for path in self._known_hosts_files():
            keys, marked = read_known_hosts(path)
            entry = keys.lookup(endpoint.known_name)
            if entry:
                for keytype in entry.keys():
                    found.setdefault(keytype, entry[keytype])
            revoked.extend((key, f"{path} line {line}") for key, line in marked)
        return found, revoked

    def _prefer_known_key_types(self, transport: paramiko.Transport, endpoint: Endpoint) -> None:
        # Ask for the type of key we already know, or a server with several host keys
        # would show another one and look unknown.
        known = self._known_keys(endpoint)
        if not known:
            return
        options = transport.get_security_options()
        wanted = []
        for keytype in known:
            if keytype == "ssh-rsa":
                wanted += ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
            else:
                wanted.append(keytype)
        available = list(options.key_types)
        first = [k for k in wanted if k in available]
        options.key_types = first + [k for k in available if k not in first]

    @staticmethod
    def _prefer_fast_ciphers(transport: paramiko.Transport) -> None:
        options = transport.get_security_options()
        available = list(options.ciphers)
        first = [c for c in ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com") if c in available]
        options.ciphers = first + [c for c in available if c not in first]

    def _check_host_key(self, transport: paramiko.Transport, endpoint: Endpoint) -> None:
        """The same check for the destination and for each jump host, as ``ssh -J`` does."""
        key = transport.get_remote_server_key()
        keytype, fingerprint = key.get_name(), _fingerprint(key)
        known, marked = self._trusted(endpoint)
        name = endpoint.known_name
        shown = ("jump host " if endpoint.jump else "") + name
        revoked = next((where for bad, where in marked if bad == key), None)
        if revoked is not None:
            raise ConfigError(
                f"the SSH host key of {shown} ({keytype} {fingerprint}) is marked @revoked in "
                f"{revoked}: oeleo does not connect to it, as ssh does not"
            )
        if keytype in known:
            if known[keytype] == key:
                return
            raise ConfigError(
                f"the SSH host key of {shown} has CHANGED ({keytype} {fingerprint}) "
                f"and does not match the one in {self._known_hosts_file()}: someone may be "
                "intercepting the connection; if the server's key really changed, remove its "
                "old line from that file (ssh-keygen -R) and trust the new one"
            )
        store = self._known_hosts_file()
        if not self.accept_new_host_keys:
            port = f"-p {endpoint.port} " if endpoint.port != 22 else ""
            # A file named by OELEO_KNOWN_HOSTS that is not there: maybe a typo in its path.
            missing = (
                f" (OELEO_KNOWN_HOSTS={store}: no such file)"
                if self.known_hosts is not None and not store.exists()
                else ""
            )
            raise ConfigError(
                f"unknown SSH host key for {shown} ({keytype} {fingerprint}){missing}: if that "
                f"is the server's key, trust it by adding it to {store} "
                f"(ssh-keyscan {port}{endpoint.host} >> {store}) or by running once with "
                "OELEO_ACCEPT_NEW_HOST_KEYS=true"
            )
        line = f"{name} {keytype} {key.get_base64()}\n"
        try:
            store.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(store, "a", encoding="utf-8") as handle:
                handle.write(line)
        except OSError as exc:
            raise ConfigError(f"cannot store the host key of {shown} in {store}: {exc}") from None
        log.warning(
            "trusting the new SSH host key of %s: %s %s (stored in %s)",
            shown,
            keytype,
            fingerprint,
            store,
        )

    # -- logging in -------------------------------------------------------------------
    def _load_key(self) -> Optional[paramiko.PKey]:
        """The key of OELEO_KEY_FILENAME; None when it is locked by a passphrase that neither
        OELEO_KEY_PASSPHRASE nor OELEO_PASSWORD gives, and OELEO_PASSWORD is set: the
        password is then tried alone, as ``ssh`` (and oeleo 0.7) go on to the password."""
        if self._key is not None or self._key_skipped:
            return self._key
        path = self.key_filename
        assert path is not None
        what = f"OELEO_KEY_FILENAME={path}"
        if not path.is_file():
            raise ConfigError(f"{what}: no such file")
        try:
            key, encrypted = self._try_key(path, None)
        except PermissionError:
            raise ConfigError(f"{what}: permission denied") from None
        if key is None and not encrypted:
            hint = (
                " (that is the public key: give the private key file, without .pub)"
                if path.suffix == ".pub"
                else ""
            )
            raise ConfigError(f"{what}: not a private key oeleo can read (RSA, ed25519 or ECDSA){hint}")
        if key is None:
            # oeleo 0.7 (through Fabric) unlocked a key with the password: still done.
            secret = self._passphrase or self._password
            if secret is None:
                raise ConfigError(f"{what}: the key is protected by a passphrase: set OELEO_KEY_PASSPHRASE")
            key, _ = self._try_key(path, secret)
            if key is None and self._password is not None and not self._passphrase:
                log.warning(
                    "%s: the key is protected by a passphrase that OELEO_PASSWORD does not unlock "
                    "(set OELEO_KEY_PASSPHRASE to use it); logging in with the password alone",
                    what,
                )
                self._key_skipped = True
                return None
            if key is None:
                raise ConfigError(
                    f"{what}: wrong passphrase (OELEO_KEY_PASSPHRASE)"
                    if self._passphrase
                    else f"{what}: the key is protected by a passphrase: set OELEO_KEY_PASSPHRASE"
                )
        self._key = key
        return key

    @staticmethod
    def _try_key(path: Path, secret: Optional[str]) -> Tuple[Optional[paramiko.PKey], bool]:
        """(key, encrypted): the key when it loads, and whether it asked for a passphrase.
        ``PermissionError`` when the file cannot be read."""
        encrypted = False
        for cls in (paramiko.Ed25519Key, paramiko.RSAKey, paramiko.ECDSAKey):
            try:
                return cls.from_private_key_file(str(path), password=secret), encrypted
            except paramiko.PasswordRequiredException:
                encrypted = True
            except PermissionError:
                raise
            except (paramiko.SSHException, ValueError, TypeError, IndexError):
                continue
        return None, encrypted

    def _open_agent(self) -> Optional[paramiko.Agent]:
        """The SSH agent (``SSH_AUTH_SOCK``; on Windows Pageant or the OpenSSH agent), or None."""
        try:
            return paramiko.Agent()
        except (paramiko.SSHException, OSError) as exc:
            self._say_once("agent", "cannot use the SSH agent: %s", exc, level=logging.WARNING)
            return None

    def _file_key(self, path: Path) -> Tuple[Optional[paramiko.PKey], str]:
        """A key file tried without being named: (key, "") or (None, why it is skipped)."""
        if path in self._file_keys:
            return self._file_keys[path]
        shown = _show(path)
        try:
            key, encrypted = self._try_key(path, None)
            if key is None and encrypted and self._passphrase:
                key, _ = self._try_key(path, self._passphrase)
        except OSError as exc:
            key, encrypted = None, False
            reason = "permission denied" if isinstance(exc, PermissionError) else exc.strerror or str(exc)
            note = f"{shown}: {reason} (skipped)"
        else:
            if key is not None:
                note = ""
            elif not encrypted:
                note = f"{shown} is not a private key oeleo can read (skipped)"
            elif self._passphrase:
                note = f"{shown}: wrong passphrase (OELEO_KEY_PASSPHRASE)"
            else:
                note = f"{shown} is protected by a passphrase (skipped: {ADD_TO_AGENT})"
        if note:
            log.debug("not offering %s", note)
        self._file_keys[path] = (key, note)
        return key, note

    def _offers(
        self, endpoint: Endpoint, key: Optional[paramiko.PKey], agent: Optional[paramiko.Agent]
    ) -> Tuple[List[Tuple[str, Optional[paramiko.PKey]]], List[str]]:
        """What to log in to ``endpoint`` with, in order, as (what, key; None for the
        password), and notes on keys skipped; ``ConfigError`` when there is nothing to try.

        A key or a password that is set is all that is used (the key first). Without
        either, as ``ssh``: the agent's keys (unless IdentitiesOnly), then the IdentityFile
        of the SSH config, or else ~/.ssh/id_ed25519, id_ecdsa and id_rsa. Jump hosts get
        keys only (OELEO_PASSWORD is the destination's): without OELEO_KEY_FILENAME, the
        agent's and the key files.
        """
        offers: List[Tuple[str, Optional[paramiko.PKey]]] = []
        if not self._automatic(endpoint):
            if key is not None:
                offers.append((f"the key {self.key_filename}", key))
            if self._password is not None and not endpoint.jump:
                offers.append((PASSWORD, None))
            return offers, []
        if agent is not None and not endpoint.identities_only:
            try:
                offers += [(AGENT, agent_key) for agent_key in agent.get_keys()]
            except (paramiko.SSHException, OSError) as exc:
                self._say_once("agent", "cannot use the SSH agent: %s", exc, level=logging.WARNING)
        notes = []
        files = endpoint.identity_files or tuple(Path.home() / ".ssh" / name for name in DEFAULT_KEYS)
        for path in files:
            if not path.is_file():
                if endpoint.identity_files:  # named in the config: say so; a default may be absent
                    notes.append(f"{_show(path)} (IdentityFile in {self.ssh_config_file}): no such file")
                continue
            file_key, note = self._file_key(path)
            if file_key is not None:
                offers.append((_show(path), file_key))
            else:
                notes.append(note)
        if offers:
            return offers, notes
        # A jump host is never sent the password (it is the destination's).
        what = "OELEO_KEY_FILENAME (a private key file)" + ("" if endpoint.jump else " or OELEO_PASSWORD")
        if notes:
            raise ConfigError(f"cannot log in to {endpoint.where}: {'; '.join(notes)}; set {what}")
        defaults = f"~/.ssh/{', '.join(DEFAULT_KEYS[:-1])} or {DEFAULT_KEYS[-1]}"
        raise ConfigError(
            f"set {what} to log in to {endpoint.where} (no SSH agent holds a key, and there is no {defaults})"
        )

    def _authenticate(
        self,
        transport: paramiko.Transport,
        endpoint: Endpoint,
        offers: List[Tuple[str, Optional[paramiko.PKey]]],
        notes: Sequence[str] = (),
    ) -> None:
        tried: List[str] = []
        refused: List[str] = []
        agent_refused = 0
        no_keys = False  # the server refuses key logins: the other keys are not offered
        for what, key in offers:
            if not transport.is_active():
                refused.append(HUNG_UP)
                break
            if key is None:
                attempt = partial(transport.auth_password, endpoint.username, self._password or "")
                kind = "passwords"
            elif no_keys:
                continue
            else:
                attempt = partial(transport.auth_publickey, endpoint.username, key)
                kind = "keys"
            before = len(refused)
            if self._log_in(transport, endpoint, attempt, kind, what, tried, refused):
                return
            if what == AGENT and tried and tried[-1] == AGENT:
                tried.pop()  # counted, and said once
                agent_refused += 1
            no_keys = no_keys or (kind == "keys" and len(refused) > before)
        if agent_refused:
            tried.insert(0, "the agent's key" if agent_refused == 1 else f"the agent's {agent_refused} keys")
        verb = "were" if len(tried) > 1 or agent_refused > 1 else "was"
        reasons = ([f"{_and(tried)} {verb} not accepted"] if tried else []) + refused + list(notes)
        raise ConfigError(f"cannot log in to {endpoint.where}: {'; '.join(reasons)}")

    def _log_in(
        self,
        transport: paramiko.Transport,
        endpoint: Endpoint,
        attempt: Callable[[], List[str]],
        kind: str,
        what: str,
        tried: List[str],
        refused: List[str],
    ) -> bool:
        """One way of logging in (``kind``: "keys" or "passwords"); True once in. A refusal
        is noted: ``what`` in ``tried`` when the server said no, the reason in ``refused``
        when it cannot work at all."""
        try:
            remaining = attempt()
        except paramiko.BadAuthenticationType as exc:
            refused.append(f"the server does not accept {kind} (it accepts: {', '.join(exc.allowed_types)})")
            return False
        except paramiko.AuthenticationException:
            tried.append(what)
            return False
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not transport.is_active() and (tried or refused):  # refused too often: it hung up
                tried.append(what)
                refused.append(HUNG_UP)
                return False
            raise self._fail_connect(f"{endpoint.where}: connection lost while logging in ({exc})") from None
        if not remaining:
            return True
        refused.append(f"the server also wants {', '.join(remaining)}, which oeleo cannot do")
        return False
