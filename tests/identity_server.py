"""A loopback stand-in for the Microsoft identity platform (Entra ID), enough for MSAL's
device-code login and its silent renewals, served over HTTPS (MSAL takes only https
authorities) with a certificate authority made here (``ca_path``: point ``REQUESTS_CA_BUNDLE``
at it).

The endpoints MSAL 1.x calls for ``authority=https://127.0.0.1:PORT/<tenant>`` with
``instance_discovery=False`` (found by logging them: ``IdentityServer.log``):

- ``GET /<tenant>/v2.0/.well-known/openid-configuration``: the tenant's endpoints (an unknown
  tenant: 400 ``invalid_tenant``, AADSTS90002, as Entra answers);
- ``POST /<tenant>/oauth2/v2.0/devicecode`` (``client_id``, ``scope``): a user code, a device
  code, the address to enter it, ``interval`` 1 s (an unknown client: 400 AADSTS700016);
- ``POST /<tenant>/oauth2/v2.0/token`` with ``grant_type=urn:ietf:params:oauth:grant-type:
  device_code``: ``authorization_pending`` until ``approve(user_code)`` (the person entered the
  code and signed in), then the tokens; with ``grant_type=refresh_token``: new tokens for a
  refresh token it issued and has not revoked (else 400 ``invalid_grant``, AADSTS700082).

Tokens: a random access token (handed to ``on_token``, so the fake SharePoint takes exactly
the tokens issued here), a refresh token, an unsigned id token with the user's
``preferred_username``, and ``client_info`` (uid, utid) from which MSAL names the account.
``GET /common/discovery/instance`` is answered too, but counted: MSAL must not need it.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import secrets
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple
from urllib.parse import parse_qs, urlsplit

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
RESERVED = {"openid", "profile", "offline_access"}


def make_certificates(folder: Path) -> Tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, server.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "oeleo test identity CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "server.pem", folder / "server-key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


def _b64(value: Dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


class IdentityServer:
    """Tenant ``tenant`` with the public client app ``client_id`` and one user."""

    def __init__(
        self,
        folder: Path,
        tenant: str = "contoso.onmicrosoft.com",
        client_id: str = "11111111-2222-3333-4444-555555555555",
        user: str = "someone@contoso.com",
        on_token: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.ca_path, self._cert, self._key = make_certificates(folder)
        self.tenant = tenant
        self.tenant_id = "9188040d-6c67-4c5b-b112-36a304b66dad"
        self.client_id = client_id
        self.user = user
        self.uid = "00000000-0000-0000-66f3-3332eca7ea81"
        self.on_token = on_token or (lambda token: None)
        self.lifetime = 3600  # seconds: the expires_in of the access tokens issued
        self.flows: Dict[str, Dict[str, Any]] = {}  # device code -> {user_code, approved, polls}
        self.refresh_tokens: Set[str] = set()
        self.access_tokens: List[str] = []
        self.log: List[Tuple[str, str, Dict[str, str]]] = []  # method, path, form (no secrets)
        self.lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None

    # -- control ----------------------------------------------------------------------------
    def start(self) -> IdentityServer:
        identity = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                identity.handle(self, "GET")

            def do_POST(self) -> None:
                identity.handle(self, "POST")

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self._cert), str(self._key))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def authority_host(self) -> str:
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def approve(self, user_code: str) -> None:
        """The person opened the page, entered the code and signed in."""
        with self.lock:
            for flow in self.flows.values():
                if flow["user_code"] == user_code:
                    flow["approved"] = True
                    return
        raise KeyError(user_code)

    def revoke_refresh_tokens(self) -> None:
        """The sign-in ended (an administrator revoked it, or it expired)."""
        with self.lock:
            self.refresh_tokens.clear()

    def requests(self, what: str = "") -> List[str]:
        """``METHOD path`` (plus ``grant_type`` for token requests) of each request so far."""
        found = []
        for method, path, form in self.log:
            line = f"{method} {path}" + (f" {form['grant_type']}" if "grant_type" in form else "")
            if what in line:
                found.append(line)
        return found

    # -- HTTP ---------------------------------------------------------------------------------
    def handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length", 0) or 0)
        body = handler.rfile.read(length).decode() if length else ""
        path = urlsplit(handler.path).path
        form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        with self.lock:
            shown = {k: v for k, v in form.items() if k not in ("refresh_token", "device_code")}
            self.log.append((method, path, shown))
        status, answer = self.answer(method, path, form)
        content = json.dumps(answer).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(content)))
        handler.send_header("Cache-Control", "no-store")
        handler.end_headers()
        handler.wfile.write(content)

    @staticmethod
    def error(code: str, aadsts: str, text: str) -> Tuple[int, Dict[str, Any]]:
        return 400, {
            "error": code,
            "error_description": f"{aadsts}: {text}\r\nTrace ID: 0",
            "error_codes": [],
        }

    def answer(self, method: str, path: str, form: Dict[str, str]) -> Tuple[int, Dict[str, Any]]:
        if path == "/common/discovery/instance":
            return 200, {"tenant_discovery_endpoint": "", "metadata": []}
        parts = path.strip("/").split("/")
        if not parts or parts[0] not in (self.tenant, self.tenant_id):
            return self.error(
                "invalid_tenant", "AADSTS90002", f"Tenant '{parts[0] if parts else ''}' not found."
            )
        base = f"{self.authority_host}/{self.tenant_id}"
        rest = "/".join(parts[1:])
        if method == "GET" and rest == "v2.0/.well-known/openid-configuration":
            return 200, {
                "issuer": f"{self.authority_host}/{self.tenant_id}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "tenant_region_scope": "EU",
            }
        if method != "POST":
            return 404, {"error": "not_found"}
        if form.get("client_id") != self.client_id:
            return self.error(
                "unauthorized_client",
                "AADSTS700016",
                f"Application with identifier '{form.get('client_id')}' was not found in the directory.",
            )
        if rest == "oauth2/v2.0/devicecode":
            user_code = "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(9))
            device_code = secrets.token_urlsafe(24)
            with self.lock:
                self.flows[device_code] = {
                    "user_code": user_code,
                    "approved": False,
                    "polls": 0,
                    "scope": form.get("scope", ""),
                }
            page = f"{self.authority_host}/devicelogin"
            return 200, {
                "user_code": user_code,
                "device_code": device_code,
                "verification_uri": page,
                "expires_in": 900,
                "interval": 1,
                "message": f"To sign in, use a web browser to open the page {page} and enter the code "
                f"{user_code} to authenticate.",
            }
        if rest != "oauth2/v2.0/token":
            return 404, {"error": "not_found"}
        grant = form.get("grant_type")
        if grant == DEVICE_GRANT:
            with self.lock:
                flow = self.flows.get(form.get("device_code", ""))
                if flow is None:
                    return self.error("expired_token", "AADSTS70019", "Verification code expired.")
                flow["polls"] += 1
                if not flow["approved"]:
                    return self.error(
                        "authorization_pending",
                        "AADSTS70016",
                        "OAuth 2.0 device flow error. Authorization is pending.",
                    )
                del self.flows[form["device_code"]]
            return 200, self.tokens(form.get("scope", flow["scope"]))
        if grant == "refresh_token":
            with self.lock:
                known = form.get("refresh_token") in self.refresh_tokens
                if known:
                    self.refresh_tokens.discard(form["refresh_token"])  # rotated: each is used once
            if not known:
                return self.error(
                    "invalid_grant",
                    "AADSTS700082",
                    "The refresh token has expired due to inactivity.",
                )
            return 200, self.tokens(form.get("scope", ""))
        return self.error("unsupported_grant_type", "AADSTS70003", f"grant_type {grant!r}")

    def tokens(self, scope: str) -> Dict[str, Any]:
        access, refresh = "at-" + secrets.token_hex(16), "rt-" + secrets.token_hex(16)
        now = int(time.time())
        claims = {
            "aud": self.client_id,
            "iss": f"{self.authority_host}/{self.tenant_id}/v2.0",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "name": "Some One",
            "oid": self.uid,
            "preferred_username": self.user,
            "sub": "a-subject",
            "tid": self.tenant_id,
            "ver": "2.0",
        }
        with self.lock:
            self.refresh_tokens.add(refresh)
            self.access_tokens.append(access)
        self.on_token(access)
        return {
            "token_type": "Bearer",
            "scope": " ".join(s for s in scope.split() if s not in RESERVED),
            "expires_in": self.lifetime,
            "ext_expires_in": self.lifetime,
            "access_token": access,
            "refresh_token": refresh,
            "id_token": f"{_b64({'typ': 'JWT', 'alg': 'none'})}.{_b64(claims)}.",
            "client_info": _b64({"uid": self.uid, "utid": self.tenant_id}),
        }
