"""The names of a SharePoint library: the site's address from the settings, the names
SharePoint refuses (Microsoft's restrictions for SharePoint Online and OneDrive), the path
length it allows, its times, and the Office files it may rewrite as it stores them."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime, timezone
from typing import Any, Optional
from urllib.parse import urlsplit

from oeleo.errors import ConfigError
from oeleo.units import from_iso

MAX_PATH = 400  # characters of the decoded server-relative path SharePoint Online accepts
OFFICE_SUFFIXES = (
    ".docx", ".docm", ".dotx", ".dotm", ".xlsx", ".xlsm", ".xltx", ".xltm", ".xlsb",
    ".pptx", ".pptm", ".potx", ".potm", ".ppsx", ".ppsm",
)  # fmt: skip
_FORBIDDEN_CHARACTERS = set('"*:<>?/\\|')
_RESERVED_NAMES = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9]|\.lock|desktop\.ini)$", re.I)


def site_url_of(url: Optional[str], sitename: Optional[str] = None) -> str:
    """The site's URL from ``OELEO_SHAREPOINT_URL`` and ``OELEO_SHAREPOINT_SITENAME``:
    ``https://contoso.sharepoint.com`` and ``lab`` give ``.../sites/lab``; a site name with a
    slash (``teams/lab``) is used as it is; without a site name the URL is the site's."""
    text = (url or "").strip().rstrip("/")
    if not text:
        raise ConfigError(
            "OELEO_SHAREPOINT_URL is not set: the SharePoint address, https://contoso.sharepoint.com"
        )
    parts = urlsplit(text)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"OELEO_SHAREPOINT_URL={text!r}: expected https://<tenant>.sharepoint.com")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigError(
            f"OELEO_SHAREPOINT_URL={text!r}: expected the site's address alone, without ? # or @"
        )
    name = (sitename or "").strip().strip("/")
    if not name:
        return text
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise ConfigError(f"OELEO_SHAREPOINT_SITENAME={sitename!r}: expected a site name such as lab")
    return f"{text}/{name}" if "/" in name else f"{text}/sites/{name}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def name_problem(relpath: str) -> Optional[str]:
    """Why SharePoint would refuse this relative name, or ``None`` (Microsoft's list of
    restrictions for SharePoint Online and OneDrive: characters, reserved names, spaces and
    dots at the ends, ``_vti_``)."""
    for part in relpath.split("/"):
        bad = sorted(set(part) & _FORBIDDEN_CHARACTERS)
        if bad:
            return f"SharePoint does not allow {' '.join(bad)} in a name"
        if part != part.strip(" "):
            return "SharePoint does not allow a name that begins or ends with a space"
        if part.endswith("."):
            return "SharePoint does not allow a name that ends with a dot"
        if "_vti_" in part.lower():
            return "SharePoint does not allow _vti_ in a name"
        if _RESERVED_NAMES.match(part) or part.startswith("~$"):
            return f"SharePoint reserves the name {part}"
        if any(ord(c) < 32 for c in part):
            return "SharePoint does not allow control characters in a name"
    return None


def parse_time(text: Any) -> int:
    """SharePoint's ``TimeLastModified`` (``2024-05-01T10:00:00Z``, UTC) in nanoseconds."""
    if isinstance(text, datetime):
        when = text
    else:
        value = str(text or "").strip()
        if not value:
            return 0
        try:
            when = from_iso(value)  # its Z and seven digits of a second, on Python 3.9 too
        except ValueError:
            return 0
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000
