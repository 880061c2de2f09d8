"""The logins of the SharePoint connector: which one the settings ask for, and the tokens.

Each Microsoft Entra login is a token provider (``TokenProvider``): a callable giving the
access token for the site's host, which the connector hands to the client library with
``ClientContext.with_access_token``. MSAL is used directly (not through the library's
``with_client_secret``, ... helpers) so that a refused login is one line that names the
setting, a token is renewed before it expires, a token that SharePoint refused is dropped
(``forget``), and the device-code login keeps its tokens in a file a scheduled task reuses.
NTLM (SharePoint Server on premises) is the library's own ``with_user_credentials``.

``python -m oeleo.connectors.sharepoint_login`` signs a person in once with a device code
and writes the token cache (``OELEO_SHAREPOINT_TOKEN_CACHE``).

MSAL is told the sign-in host (``OELEO_SHAREPOINT_AUTHORITY``: Microsoft's global one, or a
national cloud's) and not to look it up in Microsoft's list of hosts (``instance_discovery=False``):
a run asks only that host, and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional
from urllib.parse import urlsplit

from oeleo.errors import ConfigError

AUTHORITY_HOST = "https://login.microsoftonline.com"
RENEW_BEFORE = 300  # seconds: a token this close to its expiry is renewed first
LOGINS = ("certificate", "secret", "password", "ntlm", "device")
_THUMBPRINT = re.compile(r"^[0-9A-Fa-f]{40}$")
# Entra error codes a person can act on (AADSTS...), in one line each.
_MFA = ("AADSTS50076", "AADSTS50079", "AADSTS50158", "AADSTS50074", "AADSTS53003")
_KNOWN = {
    "AADSTS50126": "the user name or password is wrong",
    "AADSTS50034": "no such user in this tenant",
    "AADSTS7000215": "the client secret is wrong",
    "AADSTS7000222": "the client secret has expired",
    "AADSTS700016": "no app with this client id in this tenant",
    "AADSTS700027": "the certificate is not the app's (check the thumbprint and the key)",
    "AADSTS90002": "no such tenant",
    "AADSTS65001": "the app has no admin consent for SharePoint yet",
    "AADSTS7000218": "the app must allow public client flows for this login",
}

TokenProvider = Callable[[], Dict[str, Any]]


def default_token_cache() -> Path:
    """Where the device-code login keeps its tokens unless OELEO_SHAREPOINT_TOKEN_CACHE says."""
    base = os.environ.get("APPDATA") if os.name == "nt" else None
    root = Path(base) if base else Path.home() / ".config"
    return root / "oeleo" / "sharepoint-token.json"


@dataclass(frozen=True)
class Login:
    """A login as the settings give it (secrets as plain strings here, never printed)."""

    kind: str
    tenant: str = ""
    client_id: str = ""
    username: str = ""
    password: str = ""
    client_secret: str = ""
    cert_path: Optional[Path] = None
    thumbprint: str = ""
    token_cache: Optional[Path] = None
    authority: str = AUTHORITY_HOST

    def __repr__(self) -> str:  # no secret in a traceback or a log line
        return f"Login({self.kind!r}, tenant={self.tenant!r}, client_id={self.client_id!r})"


def choose_login(
    kind: str = "",
    *,
    tenant: Optional[str] = None,
    client_id: Optional[str] = None,
    username: Optional[str] = None,
    password: Optional[str] = None,
    client_secret: Optional[str] = None,
    cert_path: Optional[Path] = None,
    thumbprint: Optional[str] = None,
    token_cache: Optional[Path] = None,
    authority: Optional[str] = None,
) -> Login:
    """The login asked for (``OELEO_SHAREPOINT_AUTH``), or, when empty, the one the settings
    that are set point to: a certificate, else a client secret, else a user name and password
    (with a client id: Entra; without: refused, see the message), else a client id alone (a
    device code). A ``ConfigError`` names what is missing."""
    kind = (kind or "").strip().lower()
    if kind and kind not in LOGINS:
        raise ConfigError(f"OELEO_SHAREPOINT_AUTH={kind!r}: expected one of {', '.join(LOGINS)}, or empty")
    values = {
        "tenant": (tenant or "").strip(),
        "client_id": (client_id or "").strip(),
        "username": (username or "").strip(),
        "password": password or "",
        "client_secret": client_secret or "",
        "thumbprint": (thumbprint or "").replace(":", "").replace(" ", "").strip(),
    }
    if not kind:
        if cert_path:
            kind = "certificate"
        elif values["client_secret"]:
            kind = "secret"
        elif values["username"] and values["password"]:
            if not values["client_id"]:
                raise ConfigError(
                    "OELEO_SHAREPOINT_USERNAME and OELEO_PASSWORD are set, but SharePoint Online "
                    "takes a user login only through an app registration: set OELEO_SHAREPOINT_CLIENT_ID "
                    "and OELEO_SHAREPOINT_TENANT (or OELEO_SHAREPOINT_AUTH=ntlm for SharePoint Server "
                    "on premises); see docs/sharepoint.md"
                )
            kind = "password"
        elif values["client_id"]:
            kind = "device"
        else:
            raise ConfigError(
                "no SharePoint login: set OELEO_SHAREPOINT_CLIENT_ID, OELEO_SHAREPOINT_TENANT and "
                "OELEO_SHAREPOINT_CERT_PATH (the certificate login, docs/sharepoint.md)"
            )
    needs = {
        "certificate": ("tenant", "client_id"),
        "secret": ("tenant", "client_id", "client_secret"),
        "password": ("tenant", "client_id", "username", "password"),
        "ntlm": ("username", "password"),
        "device": ("tenant", "client_id"),
    }[kind]
    names = {
        "tenant": "OELEO_SHAREPOINT_TENANT",
        "client_id": "OELEO_SHAREPOINT_CLIENT_ID",
        "client_secret": "OELEO_SHAREPOINT_CLIENT_SECRET",
        "username": "OELEO_SHAREPOINT_USERNAME (or OELEO_USERNAME)",
        "password": "OELEO_PASSWORD",
    }
    missing = [names[name] for name in needs if not values[name]]
    if kind == "certificate" and not cert_path:
        missing.append("OELEO_SHAREPOINT_CERT_PATH")
    if missing:
        raise ConfigError(f"the SharePoint {kind} login needs {', '.join(missing)} (docs/sharepoint.md)")
    if values["thumbprint"] and not _THUMBPRINT.match(values["thumbprint"]):
        raise ConfigError(
            "OELEO_SHAREPOINT_CERT_THUMBPRINT: expected the certificate's SHA-1 thumbprint, 40 hex digits"
        )
    host = (authority or AUTHORITY_HOST).strip().rstrip("/")
    if not re.match(r"^https://[^/\s]+$", host):
        raise ConfigError(
            f"OELEO_SHAREPOINT_AUTHORITY={authority!r}: expected the https:// address of a sign-in host, "
            f"such as {AUTHORITY_HOST}"
        )
    return Login(kind=kind, cert_path=cert_path, token_cache=token_cache, authority=host, **values)


def scope_of(site_url: str) -> List[str]:
    """The scope of a token for the site's host (``https://contoso.sharepoint.com/.default``)."""
    parts = urlsplit(site_url)
    return [f"{parts.scheme}://{parts.netloc}/.default"]


def describe_failure(result: Dict[str, Any], login: Login) -> str:
    """One line for a token request that Entra refused (never the secret, never the token)."""
    text = f"{result.get('error', '')} {result.get('error_description', '')}"
    codes = re.findall(r"AADSTS\d+", text)
    code = codes[0] if codes else str(result.get("error", "refused"))
    if code in _MFA:
        return (
            f"the SharePoint password login of {login.username} needs multi-factor authentication "
            f"({code}), which a scheduled task cannot give: use the certificate login (docs/sharepoint.md)"
        )
    reason = _KNOWN.get(code) or str(result.get("error_description", "") or code).splitlines()[0][:200]
    return f"Microsoft Entra refused the SharePoint {login.kind} login ({code}): {reason}"


class MsalToken:
    """Access tokens from MSAL for one login, renewed ``RENEW_BEFORE`` seconds before they
    expire; thread-safe (one request for many copying threads)."""

    def __init__(self, login: Login, site_url: str) -> None:
        self.login = login
        self.scopes = scope_of(site_url)
        self._app: Any = None
        self._cache: Any = None
        self._lock = threading.Lock()
        self._token: Optional[Dict[str, Any]] = None
        self._expires = 0.0
        self._refused = False  # SharePoint refused the last token: the next one is not the cached one

    def __call__(self) -> Dict[str, Any]:
        with self._lock:
            now = time.time()
            if self._token is None or now > self._expires - RENEW_BEFORE:
                result = self._acquire()
                if "access_token" not in result:
                    raise ConfigError(describe_failure(result, self.login))
                lifetime = int(result.get("expires_in", 3600) or 3600)
                self._token = {
                    "access_token": result["access_token"],
                    "token_type": result.get("token_type", "Bearer") or "Bearer",
                    # The library renews when this has passed: ours comes first.
                    "expires_in": max(lifetime - RENEW_BEFORE, 1),
                }
                self._expires = now + lifetime
            return dict(self._token)

    def forget(self) -> None:
        """SharePoint refused the token (revoked, expired early): the next call gets a new one."""
        with self._lock:
            self._token = None
            self._refused = True
            if self._app is not None and self.login.kind in ("certificate", "secret"):
                try:
                    self._app.remove_tokens_for_client()
                except Exception:  # noqa: BLE001 - an older MSAL: a new app instead
                    self._app = None

    # -- MSAL --------------------------------------------------------------------------------
    def _authority(self) -> str:
        return f"{self.login.authority}/{self.login.tenant}"

    def _acquire(self) -> Dict[str, Any]:
        login = self.login
        with self._entra_errors():
            if login.kind in ("certificate", "secret"):
                if self._app is None:
                    self._app = self._new_app()
                return self._app.acquire_token_for_client(self.scopes)
            if self._app is None:
                self._cache = self._load_cache() if login.kind == "device" else None
                self._app = self._new_app()
            if login.kind == "password":
                accounts = self._app.get_accounts(username=login.username)
                result = (
                    self._app.acquire_token_silent(
                        self.scopes, account=accounts[0], force_refresh=self._refused
                    )
                    if accounts
                    else None
                )
                self._refused = False
                return result or self._app.acquire_token_by_username_password(
                    login.username, login.password, scopes=self.scopes
                )
            return self._silent_from_cache()

    def _new_app(self) -> Any:
        """MSAL's application for this login; it reads the tenant's endpoints from the sign-in
        host at once (an unknown tenant fails here)."""
        import msal

        login = self.login
        if login.kind in ("certificate", "secret"):
            return msal.ConfidentialClientApplication(
                login.client_id,
                authority=self._authority(),
                client_credential=self._credential(),
                instance_discovery=False,
            )
        return msal.PublicClientApplication(
            login.client_id, authority=self._authority(), token_cache=self._cache, instance_discovery=False
        )

    @contextlib.contextmanager
    def _entra_errors(self) -> Iterator[None]:
        """MSAL's exceptions as one line that says what to check."""
        login = self.login
        try:
            yield
        except ValueError:  # MSAL: the sign-in host answered 4xx for the tenant's endpoints
            raise ConfigError(
                f"OELEO_SHAREPOINT_TENANT={login.tenant!r}: {login.authority} knows no such tenant (the "
                "tenant's name, such as contoso.onmicrosoft.com, or its id; OELEO_SHAREPOINT_AUTHORITY "
                "is the sign-in host of its cloud)"
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"cannot reach Microsoft Entra at {login.authority} (OELEO_SHAREPOINT_AUTHORITY) for a "
                f"token: {exc}"
            ) from None

    def _credential(self) -> Any:
        if self.login.kind == "secret":
            return self.login.client_secret
        return certificate_credential(self.login.cert_path, self.login.thumbprint)

    # -- the device-code login's cache -------------------------------------------------------
    def cache_path(self) -> Path:
        return Path(self.login.token_cache or default_token_cache()).expanduser()

    def _load_cache(self) -> Any:
        import msal

        cache = msal.SerializableTokenCache()
        path = self.cache_path()
        if path.is_file():
            try:
                cache.deserialize(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"OELEO_SHAREPOINT_TOKEN_CACHE={path}: cannot be read ({exc})") from None
        return cache

    def _save_cache(self) -> None:
        if self._cache is None or not self._cache.has_state_changed:
            return
        path = self.cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        # Only this user may read it: it holds a refresh token.
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(self._cache.serialize())
        os.replace(temporary, path)

    def _silent_from_cache(self) -> Dict[str, Any]:
        accounts = self._app.get_accounts()
        if not accounts:
            raise ConfigError(
                f"nobody has signed in for the SharePoint device login yet ({self.cache_path()} holds no "
                "account): run `python -m oeleo.connectors.sharepoint_login` once at this PC, as the user "
                "the scheduled task runs as"
            )
        # After SharePoint refused the cached token, the refresh token gets a new one.
        result = self._app.acquire_token_silent(self.scopes, account=accounts[0], force_refresh=self._refused)
        self._refused = False
        self._save_cache()  # a refreshed token replaced the old one
        if not result:
            raise ConfigError(
                f"the SharePoint sign-in in {self.cache_path()} has expired: run "
                "`python -m oeleo.connectors.sharepoint_login` again"
            )
        return result

    def sign_in(self, show: Callable[[str], None]) -> str:
        """The device-code sign-in, for a person at the PC: ``show`` is given the code and the
        address to enter it at; returns the account's name once signed in. The cache then holds
        this sign-in alone (signing in again, perhaps as someone else, replaces the last one)."""
        import msal

        with self._entra_errors():
            self._cache = msal.SerializableTokenCache()
            self._app = self._new_app()
            flow = self._app.initiate_device_flow(scopes=self.scopes)
            if "user_code" not in flow:
                raise ConfigError(describe_failure(flow, self.login))
            show(flow["message"])
            result = self._app.acquire_token_by_device_flow(flow)
        if "access_token" not in result:
            raise ConfigError(describe_failure(result, self.login))
        self._save_cache()
        claims = result.get("id_token_claims") or {}
        return str(claims.get("preferred_username") or "the account")


def certificate_credential(cert_path: Optional[Path], thumbprint: str) -> Dict[str, str]:
    """MSAL's client credential from a PEM file holding the private key (and, if it also holds
    the certificate, the thumbprint is read from it when the setting is empty)."""
    path = Path(cert_path or "").expanduser()
    try:
        pem = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not a PEM text file"
        raise ConfigError(f"OELEO_SHAREPOINT_CERT_PATH={path}: cannot be read ({reason})") from None
    if "PRIVATE KEY-----" not in pem:
        raise ConfigError(f"OELEO_SHAREPOINT_CERT_PATH={path}: no PEM private key in it")
    if not thumbprint:
        thumbprint = _thumbprint_in(pem) or ""
    if not thumbprint:
        raise ConfigError(
            f"OELEO_SHAREPOINT_CERT_THUMBPRINT is not set and {path} holds no certificate to read it from"
        )
    return {"private_key": pem, "thumbprint": thumbprint}


def _thumbprint_in(pem: str) -> Optional[str]:
    match = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", pem, re.S)
    if not match:
        return None
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    certificate = x509.load_pem_x509_certificate(match.group(0).encode("ascii"))
    return certificate.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - Entra names certificates so


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m oeleo.connectors.sharepoint_login``: sign in once with a device code."""
    from oeleo.connectors.sharepoint import site_url_of
    from oeleo.settings import load_settings

    try:
        settings = load_settings()
        login = choose_login(
            "device",
            tenant=settings.sharepoint_tenant,
            client_id=settings.sharepoint_client_id,
            token_cache=settings.sharepoint_token_cache,
            authority=settings.sharepoint_authority,
        )
        provider = MsalToken(login, site_url_of(settings.sharepoint_url, settings.sharepoint_sitename))
        who = provider.sign_in(lambda text: print(text, file=sys.stderr, flush=True))
    except ConfigError as exc:
        print(f"oeleo: {exc}", file=sys.stderr)
        return 2
    print(f"signed in as {who}; the token cache is {provider.cache_path()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


__all__ = ["Login", "MsalToken", "TokenProvider", "choose_login", "describe_failure", "json"]
