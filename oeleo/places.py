"""Destinations named by a URL: ``s3://bucket/prefix``, ``sftp://user@host:port/path``,
``arcsecond://organisation``, ``file:///path``.

A URL in ``OELEO_BASE_DIR_TO`` (``--to``) picks the connector and fills its settings, as rclone
and the aws CLI name places; anything else (``data/raw``, ``/srv/data``, ``C:\\data``,
``\\\\server\\share``) is a path in the store ``OELEO_CONNECTOR`` names. What a URL says about the
place (bucket and prefix, path, organisation) it says whole; what it leaves out of the login
(user, port) comes from the settings. A URL never carries a secret: a password in it is refused.
``resolve_destination`` returns settings whose ``base_dir_to`` is no longer a URL, so resolving
twice changes nothing.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Collection, Dict, Optional, Set, Tuple
from urllib.parse import unquote

from oeleo.errors import ConfigError

if TYPE_CHECKING:
    from oeleo.settings import Settings

SETTING = "OELEO_BASE_DIR_TO"

# scheme -> the connector it names (ssh:// is what OpenSSH's scp and ssh accept for the same)
SCHEMES: Dict[str, str] = {
    "s3": "s3",
    "sftp": "ssh",
    "ssh": "ssh",
    "arcsecond": "arcsecond",
    "file": "local",
}

# A scheme of two letters or more, then "://": "C:\data" and "C://data" are Windows paths.
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]+)://(?P<rest>.*)$", re.DOTALL)


@dataclass(frozen=True)
class Place:
    """What a destination URL says: the connector, the settings it fills (by field name), and
    the URL as it may be shown (without a password; a URL holding one is refused anyway)."""

    url: str
    scheme: str
    connector: str
    values: Dict[str, Any] = field(default_factory=dict)


def is_url(text: str) -> bool:
    """Whether ``text`` is written as a URL (``scheme://...``), not as a path."""
    return _URL.match(text.strip()) is not None


def parse_destination(text: str) -> Optional[Place]:
    """The place a destination URL names; None for a plain path (Windows paths included).

    Raises ``ConfigError`` (one line, never the password) for a URL oeleo cannot use.
    """
    text = text.strip()
    match = _URL.match(text)
    if match is None:
        return None
    scheme = match.group("scheme").lower()
    rest = match.group("rest")
    netloc, slash, path = rest.partition("/")
    path = slash + path
    if "?" in path or "#" in path or "?" in netloc or "#" in netloc:
        raise ConfigError(f"{SETTING}={_shown(text)}: a destination URL has no ?query or #fragment")
    user, password, hostport = _split_netloc(netloc)
    if password is not None:
        raise ConfigError(
            f"{SETTING}={_shown(text)}: a password inside the URL is refused (it would show in process "
            "lists and logs); leave it out and set OELEO_PASSWORD, or log in with a key "
            "(OELEO_KEY_FILENAME)"
        )
    if scheme not in SCHEMES:
        known = ", ".join(f"{name}://" for name in SCHEMES)
        raise ConfigError(
            f"{SETTING}={_shown(text)}: unknown kind of destination {scheme}://; expected {known}, "
            "or a folder path"
        )
    shown = _shown(text)
    parse = {"s3": _s3, "sftp": _sftp, "ssh": _sftp, "arcsecond": _arcsecond, "file": _file}[scheme]
    values = parse(shown, user, hostport, path)
    return Place(url=shown, scheme=scheme, connector=SCHEMES[scheme], values=values)


def resolve_destination(settings: Settings, given: Collection[str] = ()) -> Settings:
    """``settings`` with a destination URL turned into the connector and its settings.

    A URL that contradicts a setting given explicitly (``OELEO_CONNECTOR=ssh`` with
    ``OELEO_BASE_DIR_TO=s3://...``, ``OELEO_S3_BUCKET=a`` with ``s3://b``) is a ``ConfigError``
    naming both. ``given``: the settings given as flags of the command (``--to``); a URL
    given so wins over the environment and the ``.env``, as every flag does, and contradicts
    only another flag (``--connector ssh --to s3://...``).
    A scheme oeleo does not know is left alone for a connector of one's own
    (``OELEO_CONNECTOR=pkg.mod:Class``) to read.
    """
    try:
        return _resolve(settings, given)
    except ConfigError as exc:
        if "base_dir_to" not in given:
            raise
        # "OELEO_BASE_DIR_TO=sftp://al:***@lab/x (from --to): a password ...": where it came from.
        named = f"{SETTING}={_shown((settings.base_dir_to or '').strip())}"
        message = str(exc)
        if not message.startswith(named):
            raise
        raise ConfigError(f"{named} (from --to){message[len(named) :]}") from None


def _resolve(settings: Settings, given: Collection[str]) -> Settings:
    match = _URL.match((settings.base_dir_to or "").strip())
    if match is None:
        _check_plain(settings, "base_dir_to" in given)
        return settings
    text = match.group(0)
    chosen = settings.connector.strip()
    explicit = "connector" in settings.model_fields_set
    own = explicit and chosen.lower() not in _builtin_connectors()
    if own and match.group("scheme").lower() not in SCHEMES:
        return settings  # the connector's own kind of URL
    place = parse_destination(text)
    assert place is not None
    flag = "base_dir_to" in given

    def contradicts(name: str) -> bool:  # a value set, that the URL may not quietly replace
        return name in settings.model_fields_set and (not flag or name in given)

    if contradicts("connector") and not own and chosen.lower() != place.connector:
        raise ConfigError(
            f"{SETTING}={place.url} names the {place.connector} connector, but "
            f"OELEO_CONNECTOR={chosen}: leave one of them out"
        )
    update: Dict[str, Any] = {} if own else {"connector": place.connector}
    for name, value in place.values.items():
        if name == "base_dir_to":
            continue
        if contradicts(name) and not _same(getattr(settings, name), value):
            raise ConfigError(
                f"{SETTING}={place.url} says {_describe(name, value)}, but "
                f"OELEO_{name.upper()}={getattr(settings, name)}: leave one of them out"
            )
        update[name] = value
    update["base_dir_to"] = place.values.get("base_dir_to")
    return settings.model_copy(update=update)


# Connectors whose place is not a folder: what names it instead.
_PLACE_OF = {
    "s3": "its place is OELEO_S3_BUCKET and OELEO_S3_PREFIX, or --to s3://BUCKET/PREFIX",
    "arcsecond": (
        "its place is the personal account or OELEO_ARCSECOND_ORGANISATION, or --to arcsecond:// "
        "or arcsecond://ORGANISATION (datasets are named after the source's folders)"
    ),
}
# "s3:bucket/x", "arcsecond:lab": a URL without its "//" (one letter is a Windows drive: C:data).
_NO_SLASHES = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]+):/?(?P<rest>(?!/).*)$", re.DOTALL)


def _check_plain(settings: Settings, flag: bool) -> None:
    """A destination that is not a URL: a known scheme without its ``//`` is refused (it would
    be a folder of that odd name, or be ignored); a folder given to a connector that has none
    (s3, arcsecond) is refused when it is a flag of this command and a warning when it comes
    from the environment or the ``.env`` (a line left from .env.example)."""
    text = (settings.base_dir_to or "").strip()
    if not text:
        return
    typo = _NO_SLASHES.match(text)
    if typo is not None and typo.group("scheme").lower() in SCHEMES:
        scheme = typo.group("scheme").lower()
        slashes = ":///" if scheme == "file" else "://"  # file:/srv is file:///srv (no host)
        meant = f"{scheme}{slashes}{typo.group('rest')}"
        raise ConfigError(f"{SETTING}={text}: a destination URL is written {meant}")
    chosen = settings.connector.strip().lower()
    instead = _PLACE_OF.get(chosen)
    if instead is None:
        return
    message = f"{SETTING}={text}: the {chosen} connector copies to no folder; {instead}"
    if flag:
        raise ConfigError(message)
    if message not in _WARNED:  # the command and the worker's factory both resolve the settings
        _WARNED.add(message)
        warnings.warn(f"{message}; the folder is not used", stacklevel=3)


_WARNED: Set[str] = set()


# -- the schemes ----------------------------------------------------------------------------
def _s3(url: str, user: Optional[str], hostport: str, path: str) -> Dict[str, Any]:
    """``s3://bucket/some/prefix``: as the aws CLI, the key prefix as written (no %-decoding:
    a key may hold ``%``)."""
    if user is not None or ":" in hostport:
        raise ConfigError(f"{SETTING}={url}: an s3 URL is s3://bucket/prefix (no user, no port)")
    if not hostport:
        raise ConfigError(f"{SETTING}={url}: no bucket; expected s3://bucket/prefix")
    from oeleo.connectors.s3 import bucket_name_allowed, prefix_allowed  # botocore is not imported

    # Said as the URL to fix (the connector would name OELEO_S3_BUCKET, not written anywhere).
    if not bucket_name_allowed(hostport):
        raise ConfigError(
            f"{SETTING}={url}: {hostport!r} is not a bucket name; S3's are 3 to 63 lower-case letters, "
            "digits, dots and hyphens"
        )
    prefix = path.strip().strip("/")
    if not prefix_allowed(prefix):
        raise ConfigError(
            f"{SETTING}={url}: the key prefix {prefix!r} has a part that is empty (//), . or ..; "
            "expected s3://bucket/instr1/"
        )
    return {"s3_bucket": hostport, "s3_prefix": path.strip("/"), "base_dir_to": None}


def _sftp(url: str, user: Optional[str], hostport: str, path: str) -> Dict[str, Any]:
    """``sftp://[user@]host[:port][/path]`` as in the OpenSSH sftp URI draft: ``/path`` is
    absolute, ``/~/path`` is under the login's home, no path at all is the home folder."""
    host, port = _split_hostport(url, hostport)
    if not host:
        raise ConfigError(f"{SETTING}={url}: no host; expected sftp://[user@]host[:port]/path")
    folder = unquote(path)
    if folder in ("", "/~", "/~/"):
        folder = "~"
    elif folder.startswith("/~/"):
        folder = "~/" + folder[3:]
    elif folder.startswith("/~"):
        raise ConfigError(
            f"{SETTING}={url}: another user's home (/~user/) is not supported; give the absolute path"
        )
    values: Dict[str, Any] = {"external_host": host, "base_dir_to": folder}
    if user:
        values["username"] = unquote(user)
    if port is not None:
        values["external_port"] = port
    return values


def _arcsecond(url: str, user: Optional[str], hostport: str, path: str) -> Dict[str, Any]:
    """``arcsecond://`` the personal account, ``arcsecond://<organisation>`` an organisation;
    the datasets come from the folders, so the URL names nothing more."""
    if user is not None or ":" in hostport or path.strip("/"):
        raise ConfigError(
            f"{SETTING}={url}: expected arcsecond:// (the personal account) or "
            "arcsecond://ORGANISATION (datasets are named after the source's folders)"
        )
    return {"arcsecond_organisation": hostport or None, "base_dir_to": None}


def _file(url: str, user: Optional[str], hostport: str, path: str) -> Dict[str, Any]:
    """``file:///path`` (RFC 8089): a folder on this computer; ``file:///C:/data`` on Windows."""
    if user is not None or hostport.lower() not in ("", "localhost"):
        raise ConfigError(f"{SETTING}={url}: a file URL names a folder on this computer: file:///path")
    folder = unquote(path)
    if re.match(r"^/[A-Za-z]:(/|$)", folder):
        folder = folder[1:]
    if not folder.strip("/") and folder != "/":
        raise ConfigError(f"{SETTING}={url}: no folder; expected file:///path")
    return {"base_dir_to": folder}


# -- small parts ----------------------------------------------------------------------------
def _split_netloc(netloc: str) -> Tuple[Optional[str], Optional[str], str]:
    """``user:password@host:port`` -> (user, password, ``host:port``); None where not given."""
    if "@" not in netloc:
        return None, None, netloc
    userinfo, _, hostport = netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    return user, (password if colon else None), hostport


def _split_hostport(url: str, hostport: str) -> Tuple[str, Optional[int]]:
    """``host``, ``host:2222``, ``[::1]:2222`` -> (host, port or None); the host as written
    (an alias of ~/.ssh/config keeps its case)."""
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ConfigError(f"{SETTING}={url}: an IPv6 address is written [address]:port")
        port_text = after[1:] if after else None
    elif hostport.count(":") > 1:
        raise ConfigError(f"{SETTING}={url}: an IPv6 address is written in brackets: [address]:port")
    else:
        host, colon, port_text = hostport.partition(":")
        port_text = port_text if colon else None
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ConfigError(f"{SETTING}={url}: the port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def _shown(text: str) -> str:
    """The URL as it may be printed: a password in it replaced by ``***``."""
    match = _URL.match(text)
    if match is None:
        return text
    netloc, slash, path = match.group("rest").partition("/")
    user, password, hostport = _split_netloc(netloc)
    if password is None:
        return text
    return f"{match.group('scheme')}://{user}:***@{hostport}{slash}{path}"


def _same(current: Any, value: Any) -> bool:
    if isinstance(current, str) and isinstance(value, str):
        return current.strip("/") == value.strip("/")
    return bool(current == value or (not current and not value))


def _describe(name: str, value: Any) -> str:
    words = {
        "s3_bucket": "bucket",
        "s3_prefix": "prefix",
        "external_host": "host",
        "username": "user",
        "external_port": "port",
        "arcsecond_organisation": "organisation",
    }
    if name == "arcsecond_organisation" and not value:
        return "the personal account"
    if name == "s3_prefix" and not value:
        return "the whole bucket (no prefix)"
    return f"{words.get(name, name)} {value}"


def _builtin_connectors() -> set:
    from oeleo.connectors import BUILTIN

    return set(BUILTIN) | set(SCHEMES.values()) | {"sharepoint"}
