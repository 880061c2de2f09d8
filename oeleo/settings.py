"""Settings: one pydantic-settings model read from the environment and a ``.env`` file.

Every field is read from ``OELEO_<FIELD NAME>``; the names of the published oeleo 0.7 keep
their meaning. ``load_settings()`` turns validation errors into a one-line ``ConfigError``
naming the variable, and warns about ``OELEO_`` names that nothing reads (a typo would
otherwise be silently ignored).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from dotenv import dotenv_values
from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from oeleo.errors import ConfigError
from oeleo.names import hide_passwords

log = logging.getLogger("oeleo")

ENV_PREFIX = "OELEO_"
DEFAULT_DB_NAME = "oeleo-file-list.db"

# What a person should read when a value does not parse, by pydantic error type.
_EXPECTED = {
    "float_parsing": "a number",
    "int_parsing": "a whole number",
    "finite_number": "a finite number",
    "bool_parsing": "true or false",
}
# Bounds (Field(ge=..., gt=..., le=..., lt=...)): pydantic's error type, the key of the limit
# in the error's ctx, and the words before the limit.
_BOUNDS = {
    "greater_than_equal": ("ge", "of at least"),
    "greater_than": ("gt", "greater than"),
    "less_than_equal": ("le", "of at most"),
    "less_than": ("lt", "less than"),
}

# Settings that name a path on this computer (a Windows path there is a mistake elsewhere).
_LOCAL_PATHS = (
    "base_dir_from",
    "db_name",
    "log_dir",
    "key_filename",
    "known_hosts",
    "ssh_config",
    "sharepoint_cert_path",
    "sharepoint_token_cache",
)
# C:\data, C:/data, C: - and \\server\share
_WINDOWS_PATH = re.compile(r"^(?:[A-Za-z]:(?:[\\/]|$)|\\\\[^\\/])")


class Settings(BaseSettings):
    """Everything oeleo can be told. The command and the Python API read the same model."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=None,
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )

    # Where load_settings() found the values (the fields given as arguments, the .env file and
    # the names it sets), for messages: see where().
    _sources: Optional[Tuple[Dict[str, str], Optional[Path], frozenset]] = PrivateAttr(default=None)

    def where(self, field: str) -> str:
        """Where a setting's value came from, for a message: ``from an argument`` (``from
        --connector``: the command's flag), ``from the environment``, ``from /path/.env`` or
        ``the default``; empty for settings that load_settings() did not read (made in Python)."""
        if self._sources is None:
            return ""
        arguments, env_file, file_names = self._sources
        return _where(field, arguments, env_file, file_names)

    # Where from, where to (published oeleo names).
    base_dir_from: Optional[Path] = Field(None, description="Folder the instrument writes to.")
    base_dir_to: Optional[str] = Field(
        None, description="Destination: a folder, or a remote path for ssh/s3/sharepoint."
    )
    filter_extension: str = Field(
        "", description="Extensions to copy, comma separated (.csv,.res); empty for all files."
    )
    include: str = Field("", description="Glob patterns a file must match (comma separated).")
    exclude: str = Field("", description="Glob patterns of files to leave out (comma separated).")
    subdirs: bool = Field(True, description="Look into subfolders of the source folder.")
    follow_links: bool = Field(
        False,
        description="Copy what symbolic links in the source point to (default: skip links, with a notice).",
    )
    min_age: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="Seconds since a file's last change before it is copied."
    )
    checksum: str = Field("md5", description="hashlib algorithm used to compare and verify.")
    checker: str = Field(
        "checksum", description="What checks a file before its copy: checksum, fits, or pkg.mod:Class."
    )
    fits_keywords: str = Field(
        "DATE-OBS,OBJECT,FILTER,EXPTIME,INSTRUME,TELESCOP,RA,DEC",
        description="FITS header keywords kept in the books with the fits checker (comma separated).",
    )
    fits_strict: bool = Field(
        True, description="fits checker: a file with a FITS extension that is not FITS is not copied."
    )
    verify: bool = Field(True, description="Check the destination's checksum after each copy.")
    retries: int = Field(3, ge=0, description="Attempts per file after a dropped connection.")
    workers: Optional[int] = Field(
        None,
        ge=1,
        description="Files copied at the same time; empty: 2 for connectors that allow it, else 1.",
    )

    # Plugging.
    connector: str = Field(
        "local", description="External connector: local, ssh, sharepoint, s3, arcsecond, or pkg.mod:Class."
    )
    scheduler: str = Field("simple", description="Scheduler used by `oeleo schedule`.")
    run_interval: float = Field(3600.0, gt=0, description="Seconds between two scheduled runs.")
    max_runs: int = Field(0, ge=0, description="Scheduled runs before stopping; 0 for no limit.")
    schedule: str = Field(
        "",
        description="When `oeleo schedule` runs: every 5m, a cron expression, between 22:00 06:00, "
        "or a rocketry condition; empty: every OELEO_RUN_INTERVAL seconds.",
    )
    watch_poll: str = Field(
        "auto", description="oeleo watch: poll the folder (yes), use the system's events (no), or auto."
    )
    full_pass_every: float = Field(
        600.0, gt=0, description="oeleo watch: seconds between two full passes that catch missed events."
    )

    # Bookkeeping (published oeleo names).
    db_name: str = Field(DEFAULT_DB_NAME, description="SQLite file, or database name on PostgreSQL.")
    db_host: Optional[str] = Field(None, description="PostgreSQL host; SQLite when empty.")
    db_port: int = Field(5432, gt=0, le=65535, description="PostgreSQL port.")
    db_user: Optional[str] = Field(None, description="PostgreSQL user.")
    db_password: Optional[SecretStr] = Field(None, description="PostgreSQL password.")
    log_dir: Optional[Path] = Field(None, description="Folder for the rotating log file.")

    # SSH (published oeleo names, and new ones for the ssh connector).
    external_host: Optional[str] = Field(None, description="SSH server host name.")
    external_port: int = Field(22, gt=0, le=65535, description="SSH server port.")
    username: Optional[str] = Field(None, description="SSH user name.")
    password: Optional[SecretStr] = Field(None, description="SSH password (prefer a key).")
    key_filename: Optional[Path] = Field(None, description="SSH private key file.")
    key_passphrase: Optional[SecretStr] = Field(
        None, description="Passphrase of the SSH private key (OELEO_PASSWORD is tried when not set)."
    )
    known_hosts: Optional[Path] = Field(None, description="known_hosts file for host keys.")
    accept_new_host_keys: bool = Field(
        False, description="Trust an unknown SSH host key on first contact (logs its fingerprint)."
    )
    ssh_config: Optional[Path] = Field(
        None, description="OpenSSH client config file read for host aliases (default ~/.ssh/config)."
    )

    # SharePoint (published oeleo names).
    sharepoint_username: Optional[str] = Field(None, description="SharePoint user name.")
    sharepoint_url: Optional[str] = Field(None, description="SharePoint URL.")
    sharepoint_sitename: Optional[str] = Field(None, description="SharePoint site name.")
    sharepoint_doc_library: Optional[str] = Field(None, description="SharePoint library name.")
    sharepoint_auth: str = Field(
        "",
        description="SharePoint login: certificate, secret, password, ntlm or device; "
        "empty: chosen from what is set (docs/sharepoint.md).",
    )
    sharepoint_tenant: Optional[str] = Field(
        None, description="Microsoft Entra tenant (contoso.onmicrosoft.com or its id), for app logins."
    )
    sharepoint_client_id: Optional[str] = Field(
        None, description="Application (client) id of the app registration."
    )
    sharepoint_client_secret: Optional[SecretStr] = Field(
        None, description="Client secret of the app registration."
    )
    sharepoint_cert_path: Optional[Path] = Field(
        None, description="PEM file with the app's certificate private key (certificate login)."
    )
    sharepoint_cert_thumbprint: Optional[str] = Field(
        None, description="Thumbprint (SHA-1, hex) of the app's certificate (certificate login)."
    )
    sharepoint_chunk_size: int = Field(
        10 * 1024 * 1024,
        ge=1024 * 1024,
        description="Bytes per request of a chunked upload (upload session).",
    )
    sharepoint_token_cache: Optional[Path] = Field(
        None, description="Token cache file of the device-code login (default: in the user's config folder)."
    )
    sharepoint_authority: str = Field(
        "https://login.microsoftonline.com",
        description="Microsoft Entra sign-in host; national clouds: https://login.microsoftonline.us, "
        "https://login.partner.microsoftonline.cn.",
    )

    # S3 and S3-compatible stores (credentials: boto3's own chain, never these settings).
    s3_bucket: Optional[str] = Field(None, description="S3 bucket name.")
    s3_prefix: str = Field("", description="Key prefix in the bucket (a folder name such as instr1/).")
    s3_endpoint_url: Optional[str] = Field(
        None, description="Endpoint of an S3-compatible store (MinIO, Ceph, ...); empty for AWS."
    )
    s3_region: Optional[str] = Field(None, description="S3 region (boto3's default when empty).")
    s3_storage_class: Optional[str] = Field(
        None, description="Storage class of new objects (STANDARD, STANDARD_IA, GLACIER_IR, ...)."
    )
    s3_profile: Optional[str] = Field(None, description="Profile of ~/.aws/config and ~/.aws/credentials.")
    s3_request_checksums: Optional[str] = Field(
        None,
        description="boto3's request_checksum_calculation: when_supported or when_required "
        "(default: when_required with an endpoint URL, else when_supported).",
    )

    # Arcsecond.io.
    arcsecond_api_key: Optional[SecretStr] = Field(
        None, description="Arcsecond API key (default: the one `arcsecond login` stored)."
    )
    arcsecond_organisation: Optional[str] = Field(
        None, description="Arcsecond organisation subdomain; empty for the personal account."
    )
    arcsecond_telescope: Optional[str] = Field(
        None, description="Arcsecond telescope UUID, needed to create datasets in an organisation."
    )
    arcsecond_api_url: str = Field("https://api.arcsecond.io", description="Arcsecond API server.")
    arcsecond_timeout: float = Field(
        60.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds Arcsecond may take to answer before oeleo asks again.",
    )

    # On the way.
    compress: str = Field("", description="gzip: send FITS and XISF files as NAME.gz; empty: as they are.")
    manifest: str = Field(
        "",
        description="sha256 or md5: a MANIFEST.sha256 (.md5) of oeleo's copies in each destination folder.",
    )

    @field_validator("manifest")
    @classmethod
    def _known_manifest(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("", "none", "off", "no", "false"):
            return ""
        if value not in ("sha256", "md5"):
            raise ValueError("sha256, md5, or empty for none")
        return value

    # After a copy (oeleo.hooks, docs/hooks.md).
    hook_command: str = Field(
        "", description="Command run once per copied file (its JSON record on stdin); empty: none."
    )
    hook_pass_command: str = Field(
        "", description="Command run once per pass with the copied files (JSON on stdin); empty: none."
    )
    hook_timeout: float = Field(60.0, gt=0, description="Seconds a hook may run before it counts as failed.")

    # Watching it (oeleo serve, alerts: docs/monitoring.md).
    monitor_token: Optional[SecretStr] = Field(
        None,
        description="Token of the monitor's actions (16 characters or more); empty: one is made and printed.",
    )
    monitor_url: str = Field(
        "", description="Address of the monitor behind a reverse proxy (https://host/path); empty: none."
    )
    alert_webhook: Optional[SecretStr] = Field(
        None, description="Webhook URL for alerts (Teams, Slack, Mattermost, or plain JSON); empty: none."
    )
    alert_email: str = Field("", description="Addresses alerts are mailed to (comma separated); empty: none.")
    alert_after_failed_passes: int = Field(
        3, ge=1, description="Alert when the destination was unreachable for this many passes in a row."
    )
    alert_quiet_hours: float = Field(
        0.0, ge=0, description="Alert when nothing new arrived for this many hours while scheduled; 0: off."
    )
    smtp_host: Optional[str] = Field(None, description="SMTP server of the alert mails.")
    smtp_port: Optional[int] = Field(
        None, ge=1, le=65535, description="SMTP port (default: 465 with ssl, 587 with starttls, else 25)."
    )
    smtp_security: str = Field("starttls", description="starttls, ssl, or none.")
    smtp_username: Optional[str] = Field(None, description="SMTP user name; empty: no login.")
    smtp_password: Optional[SecretStr] = Field(None, description="SMTP password.")
    smtp_from: Optional[str] = Field(None, description="Sender of alert mails (default: oeleo@<this PC>).")

    @field_validator("smtp_security")
    @classmethod
    def _known_smtp_security(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("", "starttls", "tls"):
            return "starttls"
        if value in ("ssl", "smtps"):
            return "ssl"
        if value in ("none", "plain", "off", "no"):
            return "none"
        raise ValueError("starttls, ssl or none")

    @field_validator("sharepoint_auth")
    @classmethod
    def _known_sharepoint_auth(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in ("", "certificate", "secret", "password", "ntlm", "device"):
            raise ValueError("certificate, secret, password, ntlm, device, or empty")
        return value

    @field_validator("sharepoint_authority")
    @classmethod
    def _https_authority(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value:
            return "https://login.microsoftonline.com"
        if not re.match(r"^https://[^/\s]+$", value):
            raise ValueError(
                "an https:// address of a sign-in host, such as https://login.microsoftonline.com"
            )
        return value

    @field_validator("watch_poll")
    @classmethod
    def _known_watch_poll(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("yes", "true", "1", "on", "poll", "polling"):
            return "yes"
        if value in ("no", "false", "0", "off", "native", "events"):
            return "no"
        if value in ("", "auto"):
            return "auto"
        raise ValueError("yes, no or auto")

    @field_validator("compress")
    @classmethod
    def _known_compression(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("", "none", "off", "no", "false"):
            return ""
        if value not in ("gzip", "gz"):
            raise ValueError("gzip, or empty for none")
        return "gzip"

    @field_validator("s3_request_checksums")
    @classmethod
    def _known_checksum_mode(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return None
        value = value.strip().lower()
        if value not in ("when_supported", "when_required"):
            raise ValueError("when_supported or when_required")
        return value

    @field_validator("checksum")
    @classmethod
    def _known_algorithm(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in hashlib.algorithms_available:
            # _describe() adds the value given; saying it here too would print it twice.
            raise ValueError("a hashlib algorithm such as md5 or sha256")
        if value.startswith("shake_"):  # a digest of any length: no hexdigest() of its own
            raise ValueError("an algorithm whose digest has a length of its own, such as md5 or sha256")
        return value

    @model_validator(mode="before")
    @classmethod
    def _empty_means_default(cls, data: Any) -> Any:
        """``OELEO_RETRIES=`` (a line of .env.example uncommented as it stands) means the
        default, for every setting: the same as leaving the line out, whatever its type."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (isinstance(v, str) and not v.strip())}
        return data

    # Parsed views of the comma separated lists.
    @property
    def extensions(self) -> List[str]:
        return normalise_extensions(self.filter_extension)

    @property
    def include_patterns(self) -> List[str]:
        return split_list(self.include)

    @property
    def exclude_patterns(self) -> List[str]:
        return split_list(self.exclude)

    def masked(self) -> Dict[str, str]:
        """The effective settings as ``OELEO_NAME -> text``, secrets masked."""
        out: Dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                text = "********" if value.get_secret_value() else ""
            elif value is None:
                text = ""
            else:
                text = hide_passwords(str(value))  # an endpoint's user:password@
            out[ENV_PREFIX + name.upper()] = text
        return out


def split_list(text: str) -> List[str]:
    return [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]


def normalise_extensions(text: Any) -> List[str]:
    """``".csv, res"`` -> ``[".csv", ".res"]``; ``"*"`` or empty means every file."""
    if text is None:
        return []
    parts = split_list(text) if isinstance(text, str) else [str(p) for p in text]
    out = []
    for part in parts:
        part = part.lstrip("*")
        if not part:
            return []
        out.append(part if part.startswith(".") else "." + part)
    return out


def known_names() -> List[str]:
    return [ENV_PREFIX + name.upper() for name in Settings.model_fields]


def _warn_unknown(names: List[Tuple[str, str]]) -> None:
    """An ``OELEO_`` name that is no setting: a misspelling of one (``OELEO_COMPRES``,
    ``OELEO_S3_STORAGECLASS``) stops the command naming the setting it resembles, since the
    run would go on without it (files not compressed, stored in another class); any other
    name gets a warning (a setting of another version of oeleo)."""
    import difflib

    known = known_names()
    for name, where in names:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.85)
        if close:
            raise ConfigError(
                f"{name} (in {where}) is not an oeleo setting: did you mean {close[0]}? "
                "(a misspelt setting would be left out)"
            )
        warnings.warn(f"{name} (in {where}) is not an oeleo setting; it is ignored", stacklevel=3)


def find_env_file(env_file: Optional[os.PathLike] = None) -> Optional[Path]:
    """The ``.env`` to read: the one given (it must exist), else ``./.env`` if present."""
    if env_file is not None:
        path = Path(env_file)
        if path.is_dir():
            raise ConfigError(f"--env-file {path}: a folder, not a file")
        if not path.exists():  # /dev/null is fine: no settings at all
            raise ConfigError(f"--env-file {path}: no such file")
        return path
    default = Path.cwd() / ".env"
    return default if default.is_file() else None


def _check_env_lines(path: Path) -> None:
    """A line of the ``.env`` that python-dotenv cannot read (a quote left open) is one error
    naming the file and the line: python-dotenv itself would skip it with a warning, and the
    run would go on without that setting (all files copied instead of the ``.res`` ones)."""
    from dotenv.parser import parse_stream

    with open(path, encoding="utf-8") as handle:
        for binding in parse_stream(handle):
            _warn_comment_in_a_path(path, binding)
            if binding.error:
                text = binding.original.string.strip()
                line = text.splitlines()[0] if text else ""
                raise ConfigError(
                    f"{path}, line {binding.original.line}: cannot be read as NAME=value "
                    f"({line[:80]!r}: a quote that is not closed?)"
                )


def _warn_comment_in_a_path(path: Path, binding: Any) -> None:
    """``OELEO_BASE_DIR_FROM=/data/run #1``: python-dotenv reads `` #1`` as a comment, as the
    shells do. When the whole text names a folder or file that exists and the value does
    not, or the ``#`` stands right before a word (``run #1``, a destination URL or prefix
    that does not exist yet), say so (the value needs quotes), before a "does not exist"
    that names half of it, or a copy to half of the name."""
    key, value = binding.key, binding.value
    if not key or value is None or not key.upper().startswith(ENV_PREFIX):
        return
    if key.upper()[len(ENV_PREFIX) :].lower() not in (*_LOCAL_PATHS, "base_dir_to", "s3_prefix"):
        return
    text = binding.original.string.split("=", 1)[-1].strip()
    if text.startswith(("'", '"')) or " #" not in text:
        return
    after = text.split(" #", 1)[1]
    # "run #1": a "#" right before a word is a part of a name; a comment is "# words".
    numbered = bool(after) and not after[0].isspace() and after[0] != "#"
    exists = os.path.exists(os.path.expanduser(text)) and not os.path.exists(os.path.expanduser(value))
    if numbered or exists:
        warnings.warn(
            f"{path}, line {binding.original.line}: {key}={text}: what follows ' #' is read as a "
            f"comment (the value is {value!r}); put the value in quotes to keep it",
            stacklevel=4,
        )


def load_settings(
    env_file: Optional[os.PathLike] = None, *, given_as: Optional[Mapping[str, str]] = None, **overrides: Any
) -> Settings:
    """Read the settings: overrides, then the environment, then the ``.env`` file.

    Raises ``ConfigError`` with one line naming the variable when a value is wrong, and where
    the value came from: an override is ``from an argument``, or, when ``given_as`` names it
    (the command's flags: ``{"connector": "--connector"}``), ``from --connector``.
    """
    path = find_env_file(env_file)
    file_values: Dict[str, Optional[str]] = {}
    if path is not None:
        try:
            _check_env_lines(path)
            file_values = dotenv_values(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
    _warn_unknown([(k, str(path)) for k in file_values])
    _warn_unknown([(k, "the environment") for k in os.environ])
    _pass_on_library_variables(file_values)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    given_as = given_as or {}
    arguments = {field: given_as.get(field, "an argument") for field in overrides}
    sources = (arguments, path, frozenset(key.upper() for key in file_values))
    try:
        settings = Settings(_env_file=path, **overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources)) from None
    settings._sources = sources
    if os.name != "nt":
        _warn_windows_paths(settings)
    return settings


# Variables of the .env that the connectors' libraries read themselves (boto3's credential
# chain: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_CA_BUNDLE, ...).
LIBRARY_PREFIXES = ("AWS_",)


def _pass_on_library_variables(file_values: Dict[str, Optional[str]]) -> None:
    """``AWS_ACCESS_KEY_ID=...`` written in the ``.env`` next to the ``OELEO_S3_*`` settings is
    handed to boto3 as the environment variable it reads (oeleo never reads the keys itself);
    a variable already in the environment wins, as it does for oeleo's own settings."""
    for name, value in file_values.items():
        if value and name.upper().startswith(LIBRARY_PREFIXES) and name not in os.environ:
            os.environ[name] = value


def _warn_windows_paths(settings: Settings) -> None:
    """``OELEO_DB_NAME=C:\\oeleo\\raw.db`` copied from the docs onto Linux would quietly
    become a file of that literal name in the current folder: say so."""
    fields = list(_LOCAL_PATHS)
    if settings.connector.strip().lower() == "local":  # elsewhere the store's own path syntax
        fields.append("base_dir_to")
    for field in fields:
        value = getattr(settings, field)
        if value is not None and _WINDOWS_PATH.match(str(value)):
            warnings.warn(
                f"{ENV_PREFIX}{field.upper()}={value} looks like a Windows path; on this system it "
                "is a name of that spelling, relative to the current folder",
                stacklevel=3,
            )


def _describe(exc: ValidationError, sources: Tuple[Dict[str, str], Optional[Path], frozenset]) -> str:
    """One line for the first error: the variable, what it expects, the value given and where
    that came from (``sources`` as load_settings() keeps them: see _where())."""
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first.get("loc") else "?"
    name = ENV_PREFIX + field.upper()
    expected = _expected(field, first)
    given = first.get("input")
    return f"{name}: expected {expected}, got {given!r} ({_where(field, *sources)})"


def _where(field: str, arguments: Mapping[str, str], env_file: Optional[Path], file_names: Any) -> str:
    """Where the value of ``field`` came from: an argument (``arguments``: the fields given as
    arguments, each with how it was given), the environment, the .env file (``file_names``:
    the names it sets, upper case) or the default."""
    name = ENV_PREFIX + field.upper()
    if field in arguments:
        return f"from {arguments[field]}"  # "an argument", or the command's flag
    if name in {key.upper() for key in os.environ}:
        return "from the environment"
    if env_file is not None and name in file_names:
        return f"from {env_file}"
    return "the default"


def _expected(field: str, error: Any) -> str:
    """What the setting should be, in words, from a pydantic error."""
    kind = error["type"]
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        limit = (error.get("ctx") or {}).get(key)
        info = Settings.model_fields.get(field)
        whole = info is not None and (
            info.annotation is int or int in getattr(info.annotation, "__args__", ())
        )
        number = "a whole number" if whole else "a number"
        if limit == 0 and kind == "greater_than_equal":
            return f"{number} that is not negative"
        if limit == 0 and kind == "greater_than":
            return "a positive whole number" if whole else "a positive number"
        return f"{number} {words} {limit}"
    return _EXPECTED.get(kind) or error["msg"].removeprefix("Value error, ")
