"""Objects in an S3 bucket (AWS, or an S3-compatible store: MinIO, Ceph, ...), through boto3 (its botocore).

An object appears under its real key only whole and verified. A file below
``multipart_threshold`` is held in memory while the engine reads and hashes it, and sent by
``commit`` in one PutObject carrying its ``Content-MD5``, so S3 itself refuses a body that
differs; a change of the source found before that sends nothing. A larger file goes up as a
multipart upload while it is read, a few parts in flight at a time (bounded memory), each
part with its ``Content-MD5``; ``commit`` completes it, after the engine confirmed the source
unchanged and the digests match; ``abort`` aborts it. Client calls in a small pool, not
boto3's transfer manager: s3transfer completes a multipart upload as soon as its last part
is sent, and here the completion must wait for the engine's verdict.

The books' checksum goes into the object's metadata (``x-amz-meta-oeleo-md5``; a multipart
object gets it by a copy onto itself after the completion, as metadata can only be given when
an upload starts), so ``check`` compares without downloading. The ETag is trusted as an MD5
only for a single-part object without SSE-KMS/SSE-C. A multipart upload in progress has a
small marker object next to its key (oeleo's temporary name with this origin's tag, holding
the upload id): after a killed run, the next one aborts the uploads its markers name, and
leaves other PCs' uploads alone. botocore is imported here only; credentials come from boto3's
own chain (environment, profiles, instance roles), never from oeleo's settings.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import logging
import os
import posixpath
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    Type,
    TypeVar,
    Union,
)
from urllib.parse import urlsplit, urlunsplit

# botocore, which boto3 is built on (boto3's own layer adds 30 ms and nothing used here), is
# imported when first used: an idle pass, which never contacts the store, does not pay its
# 0.1 s. Whether it is there is said at once (the message the command shows).
if importlib.util.find_spec("botocore") is None:
    raise ImportError('the s3 connector needs boto3: pip install "oeleo[s3]"')

if TYPE_CHECKING:
    from botocore import exceptions as boto_errors
    from botocore import session as boto_session
    from botocore.config import Config
else:

    class _Later:
        """A botocore module, imported at its first attribute."""

        def __init__(self, name: str) -> None:
            self._name = name

        def __getattr__(self, attribute: str) -> Any:
            return getattr(importlib.import_module(self._name), attribute)

    boto_errors = _Later("botocore.exceptions")
    boto_session = _Later("botocore.session")

    def Config(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 - botocore's name
        from botocore.config import Config as config

        return config(*args, **kwargs)


from oeleo.batches import OBJECT_STORE_BATCHES
from oeleo.checkers import new_hash
from oeleo.connectors.base import (
    TEMP_SUFFIX,
    Connector,
    Features,
    FileEntry,
    Upload,
    kept_by_filters,
    safe_relpath,
    temp_relpath,
)
from oeleo.connectors.s3_uploads import (
    PLAIN_ETAG,
    MiB,
    S3FileUpload,
    S3MultipartUpload,
    S3Upload,
    UploadGone,
    sse_hides_md5,
)
from oeleo.errors import (
    ConfigError,
    ConnectionLost,
    DestinationUnreachable,
    OeleoError,
    TransferError,
    VerificationError,
)
from oeleo.names import hide_passwords, printable

if TYPE_CHECKING:
    from oeleo.settings import Settings

log = logging.getLogger("oeleo")
T = TypeVar("T")

MULTIPART_THRESHOLD = 8 * MiB  # smaller files: held in memory, one PutObject at the commit
# Files up to this size: one PutObject at the commit, streamed from the file again (rclone's
# upload_cutoff); larger ones: a multipart upload while they are read.
SINGLE_PUT_LIMIT = 200 * MiB
SINGLE_PUT_MAX = 5 * 1024 * MiB  # S3's largest PutObject
PARTS_IN_FLIGHT = 4  # parts being sent or waiting to be sent, for all uploads of a connector
COPY_LIMIT = 5 * 1024 * MiB  # the largest object one CopyObject can copy (to add its metadata)
CHECKSUM_THREADS = 8  # HEAD requests at once for ``checksums`` and a few ``stats``
STATS_BY_LISTING = 50  # ``stats`` of this many objects or more: one listing of the prefix
META = "oeleo-"  # x-amz-meta-oeleo-<algorithm>: the checksum; oeleo-mtime-ns: the source's mtime
MTIME_META = "oeleo-mtime-ns"

# Errors that say the store refused the bytes because their checksum differs from the one sent.
_DIGEST_ERRORS = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "XAmzContentChecksumMismatch"}
_KEY_ERRORS = {
    "InvalidAccessKeyId": "S3 does not know the access key (InvalidAccessKeyId)",
    "SignatureDoesNotMatch": "S3 refused the secret key (SignatureDoesNotMatch)",
    "InvalidToken": "S3 refused the session token (InvalidToken)",
    "ExpiredToken": "the session token has expired (ExpiredToken)",
}


def _network_errors() -> Tuple[Type[BaseException], ...]:
    return (
        boto_errors.EndpointConnectionError,
        boto_errors.ConnectTimeoutError,
        boto_errors.ReadTimeoutError,
        boto_errors.ConnectionClosedError,
        boto_errors.HTTPClientError,
    )


_NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (in the environment "
    "or the .env), or name a profile "
    "of ~/.aws/credentials with OELEO_S3_PROFILE (or AWS_PROFILE)"
)


# The ``user:password@`` of a URL in a text (the scheme left, the host right after it).
_URL_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#\"'<>]*@")


def _masked(text: str) -> str:
    """``text`` with the ``user:password@`` of every URL in it removed (and any other
    ``user:password@``, as one written without its scheme, shown as ``user:***@``)."""
    return hide_passwords(_URL_USERINFO.sub(r"\1", text))


def _userinfo(url: Optional[str]) -> str:
    """The ``user:password`` of a URL as written (even one that does not parse), or ``""``."""
    found = re.match(r"[^:/]*://([^\s/?#]*)@", url or "")
    return found.group(1) if found else ""


# The characters botocore allows in a bucket name (its own check, at connect(), says more): so a
# name no request could use is refused when the connector is made, without importing botocore.
_BUCKET_CHARACTERS = re.compile(r"^[A-Za-z0-9._-]{1,255}$")


def bucket_name_allowed(bucket: str) -> bool:
    """Whether a request could name this bucket (an access point's ARN is checked later)."""
    return bool(_BUCKET_CHARACTERS.match(bucket)) or bucket.startswith("arn:")


def prefix_allowed(prefix: str) -> bool:
    """Whether a key prefix (without its slashes at both ends) is a "folder" path: no part
    that is empty (``a//b``), ``.`` or ``..``."""
    return not any(part in ("", ".", "..") for part in prefix.split("/")) if prefix else True


def _without_userinfo(url: Optional[str]) -> str:
    """An endpoint URL for messages: a ``user:password@`` in it is never shown."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL"
        return _masked(url)
    if "@" in parts.netloc:
        url = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return _masked(url)  # one that does not parse ("ht!tp://user:pw@host")


def _one_line(exc: BaseException) -> str:
    """What botocore says, in one line (``Parameter validation failed:`` has its report on
    the next)."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


class S3Connector(Connector):
    """Objects under ``prefix`` in an S3 bucket: ``S3Connector("lab-data", prefix="instr1/")``;
    ``endpoint_url`` for an S3-compatible store (``http://minio.lab:9000``).

    ``request_checksums``: botocore's ``request_checksum_calculation`` (``when_supported``
    adds CRC32 to every upload request; ``when_required`` only where S3 requires one). The
    default is ``when_required`` with an endpoint URL (several S3-compatible stores reject
    the aws-chunked bodies that come with it, see docs/s3.md), else ``when_supported``.
    Either way every upload request carries its Content-MD5. ``algorithm`` is the books'
    checksum, stored in the metadata next to the md5.
    """

    name = "s3"
    # hashes: md5 of what S3 received (each request's Content-MD5 checked by S3), and the
    # books' algorithm, both kept in the metadata. Nothing visible before the commit.
    features = Features(hashes=frozenset({"md5"}), staged_uploads=True, max_uploads=16, confirms_commit=True)

    multipart_threshold = MULTIPART_THRESHOLD
    single_put_limit = SINGLE_PUT_LIMIT
    connect_timeout = 10.0
    read_timeout = 120.0
    max_attempts = 4  # botocore's own retries of a request (throttling, 5xx, dropped connections)

    def __init__(
        self,
        bucket: Optional[str],
        prefix: str = "",
        endpoint_url: Optional[str] = None,
        region: Optional[str] = None,
        storage_class: Optional[str] = None,
        profile: Optional[str] = None,
        request_checksums: Optional[str] = None,
        algorithm: str = "md5",
        multipart_threshold: Optional[int] = None,
        single_put_limit: Optional[int] = None,
    ) -> None:
        if not bucket or not str(bucket).strip():
            raise ConfigError("OELEO_S3_BUCKET is not set: the bucket to copy to")
        self.bucket = str(bucket).strip()
        self.prefix = self.normalise_prefix(prefix)
        self.endpoint_url = (endpoint_url or "").strip() or None  # a blank left in a .env
        self.region = region or None
        self.storage_class = storage_class or None
        self.profile = profile or None
        if request_checksums is None:
            request_checksums = "when_required" if self.endpoint_url else "when_supported"
        if request_checksums not in ("when_supported", "when_required"):
            raise ConfigError(
                f"OELEO_S3_REQUEST_CHECKSUMS={request_checksums!r}: expected when_supported or when_required"
            )
        self.request_checksums = request_checksums
        self.crc_parts = request_checksums == "when_supported"  # CRC32 per part, named at the start
        self.algorithm = algorithm
        self.upload_algorithms = tuple(dict.fromkeys(["md5", algorithm]))
        self.features = replace(type(self).features, hashes=frozenset(self.upload_algorithms))
        if multipart_threshold is not None:
            self.multipart_threshold = max(int(multipart_threshold), 5 * MiB)
        if single_put_limit is not None:
            self.single_put_limit = min(int(single_put_limit), SINGLE_PUT_MAX)
        self.directory = f"s3://{self.bucket}/{self.prefix}"
        # Said when the connector is made, before any request: also by a run with nothing to
        # copy, which asks the store nothing (a typo in a scheduled task's .env is not silent).
        self._check_endpoint_url(strict=True)
        if not bucket_name_allowed(self.bucket):
            raise ConfigError(self._bad_bucket_name())
        self._client: Any = None
        self._lock = threading.Lock()
        self._reached = False  # a request has worked: a network error later is a dropped connection
        self._parts: Optional[ThreadPoolExecutor] = None
        self._in_flight = threading.BoundedSemaphore(PARTS_IN_FLIGHT)
        self._active: Dict[str, str] = {}  # upload id -> key, of this connector's uploads in progress
        self._unaborted: Dict[str, str] = {}  # upload id -> key, of uploads whose abort failed
        self._markers_left: Set[str] = set()  # markers whose delete failed

    @staticmethod
    def normalise_prefix(prefix: Optional[str]) -> str:
        """``instr1`` and ``/instr1/`` are the "folder" ``instr1/``; empty is the bucket's top."""
        text = (prefix or "").strip().strip("/")
        if not text:
            return ""
        if not prefix_allowed(text):
            raise ConfigError(
                f"OELEO_S3_PREFIX={prefix!r}: expected a key prefix such as instr1/ (no part that is "
                "empty (//), . or ..)"
            )
        return text + "/"

    @classmethod
    def from_settings(cls, settings: Settings, role: str = "external") -> S3Connector:
        if role != "external":
            raise ConfigError("the s3 connector is a destination; the source is always a local folder")
        return cls(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            storage_class=settings.s3_storage_class,
            profile=settings.s3_profile,
            request_checksums=settings.s3_request_checksums,
            algorithm=settings.checksum,
        )

    def __repr__(self) -> str:
        where = f" at {_without_userinfo(self.endpoint_url)}" if self.endpoint_url else ""
        return f"S3Connector({self.directory}{where})"

    def __str__(self) -> str:
        return self.directory

    # -- names ----------------------------------------------------------------------------
    def key(self, relpath: str) -> str:
        """The object key of a relative name: the prefix, then the POSIX path. The errors do
        not repeat the name: each is shown and booked after it (``failed NAME: reason``)."""
        relpath = safe_relpath(relpath)
        key = self.prefix + relpath
        try:
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError:  # surrogate escapes: the local name is not UTF-8
            raise TransferError(
                "the name is not valid UTF-8, and S3 keys must be UTF-8: rename the file to copy it."
            ) from None
        if size > 1024:
            raise TransferError(
                f"the key would be {size} bytes, and S3 allows 1024: shorten the name "
                "(or OELEO_S3_PREFIX) to copy it."
            )
        return key

    def external_name(self, relpath: str) -> str:
        return f"s3://{self.bucket}/{self.key(relpath)}"

    # -- life cycle -----------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The boto3 client (thread-safe: one for every copying thread)."""
        if self._client is None:
            self.connect()
        return self._client

    def connect(self, **kwargs: Any) -> None:
        """Make the boto3 client (no request yet); does nothing when it is there."""
        with self._lock:
            if self._client is not None:
                return
            self._check_endpoint_url()
            config = Config(
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                retries={"mode": "standard", "max_attempts": self.max_attempts},
                # Parts, the commits of the batches in flight, and check's HEADs at once.
                max_pool_connections=PARTS_IN_FLIGHT
                + self.features.max_uploads * OBJECT_STORE_BATCHES
                + CHECKSUM_THREADS,
                request_checksum_calculation=self.request_checksums,
                response_checksum_validation=self.request_checksums,
                # S3-compatible stores are usually reached by path (http://host/bucket/key).
                s3={"addressing_style": "path"} if self.endpoint_url else None,
            )
            self._check_bucket_name()
            try:
                session = boto_session.Session(profile=self.profile)
                session.register_component(
                    "data_loader", _s3_loader(session.get_config_variable("data_path"))
                )
                client = session.create_client(
                    "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config
                )
                unsigned = config.merge(Config(s3={**(config.s3 or {}), "payload_signing_enabled": False}))
                for operation in ("PutObject", "UploadPart"):
                    client.meta.events.register(
                        f"before-sign.s3.{operation}", _upload_request(unsigned, self.multipart_threshold)
                    )
                self._check_storage_class(client)
                self._client = client
            except boto_errors.ProfileNotFound:
                raise ConfigError(
                    f"OELEO_S3_PROFILE={self.profile!r}: no such profile in ~/.aws/config "
                    "or ~/.aws/credentials"
                ) from None
            except boto_errors.InvalidRegionError as exc:  # a ValueError too: before the endpoint's
                raise ConfigError(self._bad_region(exc)) from None
            except ValueError as exc:  # an endpoint URL that is not one ("Invalid endpoint: URL")
                endpoint = _without_userinfo(self.endpoint_url)
                if str(exc).startswith("Invalid endpoint"):
                    raise ConfigError(
                        f"OELEO_S3_ENDPOINT_URL={endpoint!r}: not a URL such as https://s3.lab.example.org:9000"
                    ) from None
                raise ConfigError(f"OELEO_S3_ENDPOINT_URL={endpoint!r}: {self._masked(exc)}") from None
            except boto_errors.BotoCoreError as exc:
                raise ConfigError(f"cannot set up the S3 client: {self._masked(exc)}") from None

    def _bad_region(self, exc: Exception) -> str:
        """The line for a region botocore refuses: OELEO_S3_REGION's, or the one boto3 found."""
        region = getattr(exc, "kwargs", {}).get("region_name", self.region)
        if self.region:
            where = f"OELEO_S3_REGION={self.region!r}"
        else:  # boto3's own: the environment or the profile
            where = (
                f"the region {region!r} (from AWS_REGION, AWS_DEFAULT_REGION or the profile's config; "
                "OELEO_S3_REGION overrides it)"
            )
        return f"{where}: not a region name such as eu-north-1 or us-east-1"

    def _masked(self, exc: Union[BaseException, str]) -> str:
        """What an error says, in one line, without the password of any URL in it (botocore
        and urllib3 show the endpoint URL as given, ``user:password@`` included)."""
        text = _masked(_one_line(exc) if isinstance(exc, BaseException) else exc)
        userinfo = _userinfo(self.endpoint_url)
        return text.replace(userinfo + "@", "") if userinfo else text

    def _check_endpoint_url(self, strict: bool = False) -> None:
        """An endpoint URL botocore takes but cannot use (``ftp://``, a port that is not a
        number) is said as the setting to fix before any request: botocore would say it at
        the first request, as one file's failure. ``strict``: also one that is not a URL at
        all (botocore's "Invalid endpoint", said the same way by ``connect``)."""
        if not self.endpoint_url:
            return
        endpoint = _without_userinfo(self.endpoint_url)
        setting = f"OELEO_S3_ENDPOINT_URL={endpoint!r}"
        try:
            parts = urlsplit(self.endpoint_url)
        except ValueError as exc:  # "Invalid IPv6 URL": a bracket left open
            raise ConfigError(f"{setting}: not a URL ({exc})") from None
        if not parts.scheme or not parts.netloc:
            if strict:
                raise ConfigError(f"{setting}: not a URL such as https://s3.lab.example.org:9000")
            return  # botocore's own "Invalid endpoint" is said as the setting in connect()
        if parts.scheme.lower() not in ("http", "https"):
            raise ConfigError(f"{setting}: an S3 endpoint is http:// or https://")
        host = parts.netloc.rpartition("@")[2]
        if host.count(":") > 1 and not host.startswith("["):
            raise ConfigError(f"{setting}: an IPv6 address goes in brackets, as in http://[::1]:9000")
        try:
            _ = parts.port
        except ValueError:
            raise ConfigError(f"{setting}: the port is not a number from 1 to 65535") from None
        if not parts.hostname or any(c.isspace() or c in '<>\\^`{|}"' for c in host):
            raise ConfigError(f"{setting}: {host!r} is not a host name")
        if parts.query or parts.fragment:
            raise ConfigError(
                f"{setting}: an endpoint URL has no query (?...) or fragment (#...); "
                "it is the server alone, as in https://s3.lab.example.org:9000"
            )

    def _check_storage_class(self, client: Any) -> None:
        """For AWS (no endpoint URL), a storage class its model does not list is refused before
        any upload (a 200 MiB PutObject would be sent whole before S3 refuses it). An
        S3-compatible store may have classes of its own: its first refusal stops the run."""
        if not self.storage_class or self.endpoint_url:
            return
        try:
            shape = client.meta.service_model.operation_model("PutObject").input_shape
            known = list(shape.members["StorageClass"].enum)
        except Exception:  # noqa: BLE001 - a model without the list: S3 says it then
            return
        if known and self.storage_class not in known:
            raise ConfigError(f"{self._bad_storage_class()}; AWS's are {', '.join(known)}")

    def _bad_storage_class(self) -> str:
        return f"OELEO_S3_STORAGE_CLASS={self.storage_class!r}: not a storage class of this store"

    def _check_bucket_name(self) -> None:
        """A bucket name botocore would refuse in every request, said once as the setting to
        fix. botocore's own check, no stricter: S3-compatible stores allow names AWS does not
        (capitals, underscores), and an access point's ARN is a bucket name too."""
        try:
            from botocore.handlers import validate_bucket_name
        except ImportError:  # moved in another botocore: each request says it then
            return
        try:
            validate_bucket_name(params={"Bucket": self.bucket})
        except boto_errors.ParamValidationError:
            raise ConfigError(self._bad_bucket_name()) from None

    def _bad_bucket_name(self) -> str:
        return (
            f"OELEO_S3_BUCKET={self.bucket!r}: not a bucket name; S3's are 3 to 63 lower-case letters, "
            "digits, dots and hyphens (as in s3://lab-data/instr1; some S3-compatible stores also allow "
            "capitals and '_')"
        )

    def reconnect(self, **kwargs: Any) -> None:
        """After a dropped connection: boto3's pool opens new connections by itself; the
        prefix is listed (one key at most) to tell a store that is back from one that is
        still away (``ConnectionLost``: the engine then stops the run rather than try every
        file left against it)."""
        self.connect()
        with self.errors("reconnecting to", None):
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        self._abort_the_unaborted()

    def close(self) -> None:
        if self._client is not None:
            self._abort_the_unaborted()
            if self._unaborted:
                log.warning(
                    "%d multipart upload(s) under %s could not be aborted (their parts are kept "
                    "and billed; ids: %s): the next run with a file to copy aborts those that a "
                    "marker still names; else `aws s3api abort-multipart-upload`, or a lifecycle "
                    "rule AbortIncompleteMultipartUpload",
                    len(self._unaborted),
                    self.directory,
                    ", ".join(sorted(self._unaborted)),
                )
            if self._markers_left:
                log.warning(
                    "%d marker object(s) of finished uploads could not be removed (the store was "
                    "away): %s; delete them, or the next run that follows one stopped early does",
                    len(self._markers_left),
                    ", ".join(printable(marker) for marker in sorted(self._markers_left)),
                )
        with self._lock:
            parts, self._parts = self._parts, None
            client, self._client = self._client, None
        if parts is not None:
            parts.shutdown(wait=True)
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing must not raise
                pass

    def prepare(self) -> None:
        """Check the bucket can be listed, and abort the multipart uploads a killed run of
        this origin left under the prefix. The unfinished uploads are listed while the bucket
        is checked (one round trip before the first copy, not two); what that listing found
        is used only once the bucket proved reachable, so a setting to fix is said as such.
        The listing's thread is a daemon: a Ctrl+C while a black-holed endpoint is being
        tried does not wait for its timeouts."""
        listed: Future = Future()

        def list_uploads() -> None:
            try:
                listed.set_result(self._unfinished_uploads())
            except BaseException as exc:  # noqa: BLE001 - raised again in the calling thread
                listed.set_exception(exc)

        threading.Thread(target=list_uploads, name="oeleo-s3-uploads", daemon=True).start()
        self.check_base()
        self._abort_leftover_uploads(listed.result())

    def check_base(self) -> bool:
        """The bucket is there and can be listed (``ConfigError`` otherwise); a prefix
        always exists in S3, even before its first object."""
        with self.errors("listing", None, setup=True):
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        return True

    # -- errors -----------------------------------------------------------------------------
    @contextmanager
    def errors(self, what: str, relpath: Optional[str], setup: bool = False) -> Iterator[None]:
        """botocore's errors as oeleo's, in one line that names the setting to fix. ``setup``:
        a request that precedes any copy (a failure there is a setting, not one file)."""
        try:
            yield
        except boto_errors.ClientError as exc:
            raise self._client_error(exc, what, relpath, setup) from None
        except (boto_errors.NoCredentialsError, boto_errors.PartialCredentialsError):
            raise ConfigError(_NO_CREDENTIALS) from None
        except boto_errors.SSLError as exc:
            where = _without_userinfo(self.endpoint_url) or "AWS S3"
            if self._reached:
                raise ConnectionLost(f"lost the connection to {where}: {self._masked(exc)}") from None
            hint = (
                f"check OELEO_S3_ENDPOINT_URL={where} (http:// or https://, as the store serves) "
                "and the CA bundle (AWS_CA_BUNDLE)"
                if self.endpoint_url
                else "check the CA bundle (AWS_CA_BUNDLE)"
            )
            raise ConfigError(f"TLS with S3 at {where} failed ({self._masked(exc)}); {hint}") from None
        except _network_errors() as exc:
            where = _without_userinfo(self.endpoint_url) or "AWS S3"
            if self._reached:
                # Without the URL botocore quotes: a request of its own (a listing's query),
                # where the line names the store already.
                said = re.sub(r':\s*"[^"]*"', "", self._masked(exc))
                raise ConnectionLost(f"lost the connection to {where}: {said}") from None
            hint = (
                "check OELEO_S3_ENDPOINT_URL"
                if self.endpoint_url
                else "check the network and OELEO_S3_REGION"
            )
            raise DestinationUnreachable(
                f"cannot reach S3 at {where} ({self._masked(exc)}); {hint}"
            ) from None
        except boto_errors.ParamValidationError as exc:
            if "Invalid bucket name" in str(exc):
                raise ConfigError(self._bad_bucket_name()) from None
            raise TransferError(f"{self._what(what, relpath)}: {self._masked(exc)}") from None
        except boto_errors.BotoCoreError as exc:
            raise TransferError(f"{self._what(what, relpath)}: {self._masked(exc)}") from None
        else:
            self._reached = True

    def _what(self, what: str, relpath: Optional[str]) -> str:
        return f"{what} {printable(relpath)}" if relpath else f"{what} s3://{self.bucket}/{self.prefix}"

    def _client_error(
        self, exc: boto_errors.ClientError, what: str, relpath: Optional[str], setup: bool
    ) -> OeleoError:
        self._reached = True  # S3 answered
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = self._masked(str(error.get("Message", "")) or code)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        doing = self._what(what, relpath)
        if code in _KEY_ERRORS:
            return ConfigError(
                f"{_KEY_ERRORS[code]}: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the "
                "profile's credentials (OELEO_S3_PROFILE)"
            )
        if code == "InvalidStorageClass":  # every upload would be refused the same way
            return ConfigError(f"{self._bad_storage_class()} (InvalidStorageClass)")
        if code == "NoSuchBucket" or (setup and status == 404):
            if not self.endpoint_url:
                return ConfigError(f"OELEO_S3_BUCKET={self.bucket!r}: no such bucket")
            endpoint = _without_userinfo(self.endpoint_url)
            path = urlsplit(self.endpoint_url).path
            if path.strip("/"):
                return ConfigError(
                    f"OELEO_S3_BUCKET={self.bucket!r}: no such bucket at {endpoint}; OELEO_S3_ENDPOINT_URL "
                    f"has a path ({path}): the endpoint is the server alone (as in "
                    "https://s3.lab.example.org:9000) and the bucket goes in OELEO_S3_BUCKET"
                )
            if code != "NoSuchBucket":  # a 404 without S3's error: a web server, not a store
                return ConfigError(
                    f"OELEO_S3_ENDPOINT_URL={endpoint!r}: answered {status} without an S3 error "
                    f"({code}): is it an S3 server? (the bucket: OELEO_S3_BUCKET={self.bucket!r})"
                )
            return ConfigError(f"OELEO_S3_BUCKET={self.bucket!r}: no such bucket at {endpoint}")
        if code in ("AccessDenied", "AllAccessDisabled", "403") or status == 403:
            return ConfigError(
                f"S3 denied access {doing} ({code}): check the bucket policy and the permissions "
                "of these credentials"
            )
        if code in _DIGEST_ERRORS:
            return VerificationError(
                f"{doing}: S3 refused the bytes, their checksum differs from the one sent ({code})"
            )
        if code == "NoSuchUpload":
            return UploadGone(f"{doing}: the multipart upload is gone (aborted elsewhere?)")
        if status >= 500:
            return TransferError(f"{doing}: S3 answered {status} {code} after {self.max_attempts} attempts")
        return TransferError(f"{doing}: {code}: {message}")

    # -- read side ------------------------------------------------------------------------
    def _objects(self) -> Iterator[Dict[str, Any]]:
        """Every object under the prefix, a page of up to 1,000 at a time."""
        paginator = self.client.get_paginator("list_objects_v2")
        with self.errors("listing", None, setup=True):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                yield from page.get("Contents", [])

    def list_files(
        self,
        extensions: Sequence[str] = (),
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        recursive: bool = True,
    ) -> Iterator[FileEntry]:
        """The objects under the prefix, in relative-path order; "folders" (keys ending in
        ``/``) and hidden names (oeleo's markers among them) skipped, as a folder's listing
        skips them. The mtime is when the object was written: listing returns no metadata."""
        found = []
        for item in self._objects():
            relpath = item["Key"][len(self.prefix) :]
            if not relpath or relpath.endswith("/"):
                continue
            parts = relpath.split("/")
            if any(part.startswith(".") or not part for part in parts):
                continue
            if not recursive and len(parts) > 1:
                continue
            if not kept_by_filters(relpath, extensions, include, exclude):
                continue
            found.append(FileEntry(relpath, int(item["Size"]), _ns(item["LastModified"])))
        found.sort()
        return iter(found)

    def list_temporaries(self) -> Iterator[str]:
        """The markers of multipart uploads in progress or left by a killed run."""
        for item in self._objects():
            relpath = item["Key"][len(self.prefix) :]
            name = posixpath.basename(relpath)
            if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                yield relpath

    def head(self, relpath: str, **options: Any) -> Optional[Dict[str, Any]]:
        """The object's HEAD response, or ``None`` when it is not there."""
        key = self.key(relpath)
        with self.errors("reading the metadata of", relpath):
            try:
                return dict(self.client.head_object(Bucket=self.bucket, Key=key, **options))
            except boto_errors.ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return None
                raise

    def stat(self, relpath: str) -> Optional[FileEntry]:
        response = self.head(relpath)
        if response is None:
            return None
        metadata = response.get("Metadata", {})
        try:
            mtime_ns = int(metadata[MTIME_META])
        except (KeyError, ValueError):
            mtime_ns = _ns(response["LastModified"])
        return FileEntry(safe_relpath(relpath), int(response["ContentLength"]), mtime_ns)

    def stats(self, relpaths: Sequence[str]) -> Dict[str, Optional[FileEntry]]:
        """Sizes of many objects: from one listing of the prefix (a request per 1,000 objects)
        when many are asked, else their HEADs in parallel. From the listing, the mtime is
        when the object was written (listing returns no metadata): ``check`` uses the size."""
        if len(relpaths) < STATS_BY_LISTING:
            return self._head_each(relpaths, self.stat)
        listed = {item["Key"]: item for item in self._objects()}
        found: Dict[str, Optional[FileEntry]] = {}
        for relpath in relpaths:
            try:
                item = listed.get(self.key(relpath))
            except (OeleoError, OSError):
                continue  # a name S3 cannot hold: stat() says why
            found[relpath] = (
                None if item is None else FileEntry(relpath, int(item["Size"]), _ns(item["LastModified"]))
            )
        return found

    def checksum(self, relpath: str, algorithm: str = "md5") -> str:
        """The checksum oeleo stored in the object's metadata; else S3's own (the ETag of a
        single-part object without SSE-KMS/SSE-C for md5; a full-object SHA-256/SHA-1);
        else the object read back and hashed."""
        response = self.head(relpath)
        if response is None:
            raise FileNotFoundError(2, "not in the bucket", self.external_name(relpath))
        metadata = response.get("Metadata", {})
        etag = PLAIN_ETAG.match(response.get("ETag", ""))
        plain_md5 = etag.group(1) if etag and not sse_hides_md5(response) else None
        # The metadata says what oeleo sent; the plain ETag of the same answer, what the store
        # holds: an object rewritten since (metadata copied along, or a store that ignored the
        # Content-MD5) has its metadata believed only while the two agree.
        booked_md5 = metadata.get(META + "md5", "").lower()
        digest = metadata.get(META + algorithm)
        if digest and not (plain_md5 and booked_md5 and booked_md5 != plain_md5):
            return digest
        if algorithm == "md5":
            if plain_md5:
                return plain_md5
        elif algorithm in ("sha256", "sha1"):
            with_checksums = self.head(relpath, ChecksumMode="ENABLED") or {}
            value = with_checksums.get(f"Checksum{algorithm.upper()}")
            if (
                value
                and with_checksums.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT"
                and "-" not in value
            ):
                return base64.b64decode(value).hex()
        return self._read_back(relpath, algorithm)

    def _read_back(self, relpath: str, algorithm: str) -> str:
        digest = new_hash(algorithm)
        with self.errors("reading back", relpath):
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(relpath))["Body"]
            try:
                for chunk in body.iter_chunks(MiB):
                    digest.update(chunk)
            finally:
                body.close()
        return digest.hexdigest()

    def checksums(self, relpaths: Sequence[str], algorithm: str = "md5") -> Dict[str, str]:
        """The checksums of many objects, their HEAD requests in parallel (listing returns
        no metadata); an object that cannot be asked about is left out."""
        found = self._head_each(relpaths, lambda relpath: self.checksum(relpath, algorithm))
        return {relpath: digest for relpath, digest in found.items() if digest}

    def _head_each(self, relpaths: Sequence[str], ask: Callable[[str], T]) -> Dict[str, T]:
        """``ask(relpath)`` for each name, ``CHECKSUM_THREADS`` at a time (a HEAD request
        each); a name whose request failed is left out."""
        failed = object()

        def one(relpath: str) -> Any:
            try:
                return ask(relpath)
            except (OeleoError, OSError):
                return failed

        if not relpaths:
            return {}
        with ThreadPoolExecutor(
            min(CHECKSUM_THREADS, len(relpaths)), thread_name_prefix="oeleo-head"
        ) as pool:
            answers = dict(zip(relpaths, pool.map(one, relpaths)))
        return {relpath: answer for relpath, answer in answers.items() if answer is not failed}

    # -- write side -----------------------------------------------------------------------
    def open_upload(self, relpath: str, size: int, mtime_ns: int) -> Upload:
        if size < self.multipart_threshold:
            return S3Upload(self, relpath, size, mtime_ns)
        if size <= self.single_put_limit:
            return S3FileUpload(self, relpath, size, mtime_ns)
        return S3MultipartUpload(self, relpath, size, mtime_ns)

    def object_options(self, mtime_ns: int, hashes: Dict[str, str]) -> Dict[str, Any]:
        """The metadata and storage class of a new object."""
        metadata = {MTIME_META: str(mtime_ns)}
        metadata.update({META + name: digest for name, digest in hashes.items()})
        options: Dict[str, Any] = {"Metadata": metadata}
        if self.storage_class:
            options["StorageClass"] = self.storage_class
        return options

    def send_part(self, upload: S3MultipartUpload, number: int, data: bytes) -> Future:
        """Queue a part for the pool; blocks while PARTS_IN_FLIGHT parts are on their way
        (what bounds the memory of large uploads)."""
        self._in_flight.acquire()
        try:
            with self._lock:
                if self._parts is None:
                    self._parts = ThreadPoolExecutor(PARTS_IN_FLIGHT, thread_name_prefix="oeleo-s3-part")
                future = self._parts.submit(upload.upload_part, number, data)
        except BaseException:
            self._in_flight.release()
            raise
        future.add_done_callback(lambda _: self._in_flight.release())  # also when cancelled
        return future

    def started(self, upload: S3MultipartUpload) -> None:
        """A multipart upload began: its marker says it is this origin's."""
        assert upload.upload_id is not None
        self._active[upload.upload_id] = upload.key
        self._abort_the_unaborted()  # the store answers: an earlier attempt's upload goes first
        try:
            with self.errors("marking the upload of", upload.relpath):
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self.key(upload.staging),
                    Body=f"{upload.upload_id}\n{upload.key}".encode(),
                )
        except BaseException:
            self.abort_upload(upload.key, upload.upload_id)
            raise

    def forget_marker(self, upload: S3MultipartUpload) -> None:
        self.forget_marker_key(self.key(upload.staging))

    def forget_marker_key(self, marker: str) -> None:
        """Delete a marker; one that cannot be (the store away) is tried again with the
        aborts that failed (after the reconnect, before the next upload, at close)."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=marker)
        except Exception as exc:  # noqa: BLE001 - tried again later
            log.debug("cannot remove the marker %s now: %s", printable(marker), self._masked(exc))
            self._markers_left.add(marker)
        else:
            self._markers_left.discard(marker)

    def abort_upload(self, key: str, upload_id: str) -> bool:
        """Abort a multipart upload (its parts are deleted); must not raise. False when the
        abort failed (the store away): it is tried again after a reconnect, before the next
        upload starts, and when the connector closes, so that no upload is left behind."""
        self._active.pop(upload_id, None)
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except boto_errors.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                return self._not_aborted(key, upload_id, exc)
        except Exception as exc:  # noqa: BLE001 - cleanup must not hide the first error
            return self._not_aborted(key, upload_id, exc)
        self._unaborted.pop(upload_id, None)
        return True

    def _not_aborted(self, key: str, upload_id: str, exc: BaseException) -> bool:
        if upload_id not in self._unaborted:
            log.warning(
                "cannot abort the upload of %s now (%s): tried again later", printable(key), self._masked(exc)
            )
        self._unaborted[upload_id] = key
        return False

    def _abort_the_unaborted(self) -> None:
        """Abort again the uploads whose abort failed, and remove the markers that name them,
        and the markers whose delete failed (nothing to do, nothing asked: the usual case)."""
        if not (self._unaborted or self._markers_left):
            return
        for upload_id, key in list(self._unaborted.items()):
            if self.abort_upload(key, upload_id):
                marker = self.prefix + temp_relpath(key[len(self.prefix) :], self.upload_tag)
                if self._marker(marker) == (upload_id, key):
                    self.forget_marker_key(marker)
        for marker in list(self._markers_left):
            self.forget_marker_key(marker)

    def add_checksums(self, upload: S3MultipartUpload, hashes: Dict[str, str]) -> None:
        """Give a completed multipart object its checksums: metadata can only be given when
        an upload starts, so the object is copied onto itself (by S3) with them."""
        self._active.pop(upload.upload_id or "", None)
        if upload.size > COPY_LIMIT:
            log.info(
                "%s: over 5 GiB, so its checksum is not in its metadata; `check` reads it back",
                printable(upload.relpath),
            )
            return
        options = self.object_options(upload.mtime_ns, hashes)
        try:
            with self.errors("adding the checksum to", upload.relpath):
                self.client.copy_object(
                    Bucket=self.bucket,
                    Key=upload.key,
                    CopySource={"Bucket": self.bucket, "Key": upload.key},
                    MetadataDirective="REPLACE",
                    **options,
                )
        except OeleoError as exc:  # the copy is whole and verified; `check` reads it back
            log.warning(
                "%s is copied, but its checksum could not be put in its metadata (%s): `oeleo check` "
                "reads the object back for it",
                printable(upload.relpath),
                exc,
            )

    def remove(self, relpath: str) -> None:
        """Delete an object; a marker's multipart upload is aborted first."""
        key = self.key(relpath)
        name = posixpath.basename(relpath)
        if name.startswith(".") and name.endswith(TEMP_SUFFIX):
            marked = self._marker(key)
            if marked is not None and not self.abort_upload(marked[1], marked[0]):
                return  # the marker stays, naming the upload, until its abort is tried again
        with self.errors("removing", relpath):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def _marker(self, key: str) -> Optional[Tuple[str, str]]:
        """(upload id, key) that a marker names, or ``None`` when there is no such marker."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                text = body.read(4096).decode("utf-8", "replace")
            finally:
                body.close()
        except boto_errors.ClientError:
            return None
        upload_id, _, marked = text.partition("\n")
        return (upload_id, marked) if upload_id and marked else None

    def _unfinished_uploads(self) -> Union[List[Tuple[str, str]], OeleoError]:
        """(key, upload id) of every multipart upload in progress under the prefix (all
        pages), or why they cannot be listed."""
        try:
            paginator = self.client.get_paginator("list_multipart_uploads")
            with self.errors("listing the multipart uploads under", None, setup=True):
                return [
                    (upload["Key"], upload["UploadId"])
                    for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix)
                    for upload in page.get("Uploads", [])
                ]
        except OeleoError as exc:
            return exc

    def _abort_leftover_uploads(self, uploads: Union[List[Tuple[str, str]], OeleoError]) -> None:
        """Abort the unfinished multipart uploads under the prefix (``uploads``) that this
        origin started and a killed run left; other origins' are counted and left alone."""
        aborted = others = 0
        if isinstance(uploads, OeleoError):  # a store without the request, or keys without the right
            log.warning("cannot look for unfinished uploads: %s", uploads)
            return
        for key, upload_id in uploads:
            if upload_id in self._active:
                continue
            relpath = key[len(self.prefix) :]
            marker = self.prefix + temp_relpath(relpath, self.upload_tag)
            if self._marker(marker) != (upload_id, key):
                others += 1
                continue
            if not self.abort_upload(key, upload_id):
                continue  # its marker stays: tried again
            try:
                self.client.delete_object(Bucket=self.bucket, Key=marker)
            except Exception as exc:  # noqa: BLE001 - the worker removes markers too
                log.debug("cannot remove the marker %s: %s", printable(marker), self._masked(exc))
            aborted += 1
        if aborted:
            log.info("aborted %d unfinished multipart upload(s) that an earlier run left", aborted)
        if others:
            log.info(
                "left %d unfinished multipart upload(s) under %s alone: not marked as this origin's",
                others,
                self.directory,
            )


def _s3_loader(data_path: Optional[str]) -> Any:
    """botocore's loader of its models (``AWS_DATA_PATH`` included, as its own
    ``create_loader`` reads it), told that the service asked for exists: botocore's own lists
    the folders of all its 400 services to check that first, for the client and again for
    the paginators (about 15 ms of CPU before the first request, a tenth of making the
    client)."""
    from botocore.loaders import Loader

    class S3Loader(Loader):
        def list_available_services(self, type_name: str) -> List[str]:
            return ["s3"]

    paths = None
    if data_path is not None:
        paths = [os.path.expanduser(os.path.expandvars(path)) for path in data_path.split(os.pathsep)]
    return S3Loader(extra_search_paths=paths)


def _upload_request(unsigned: Config, in_memory: int) -> Any:
    """A ``before-sign`` handler for PutObject and UploadPart.

    - The body is not hashed again with SHA-256 for the signature when the request carries
      its ``Content-MD5``, which the signature covers: S3 refuses a body with another MD5, and
      a body with the same MD5 cannot be made up. botocore does the same by itself over HTTPS;
      over plain HTTP (a lab's MinIO, moto) it would read and hash every body once more, the
      whole file before its first byte is sent.
    - No ``Expect: 100-continue`` for a body held in memory (below ``in_memory`` bytes):
      botocore adds it to every PutObject, and waiting for the store's ``100 Continue`` costs a
      round trip per small file (the AWS SDK for Go sends it only from 2 MB). A body streamed
      from its file keeps it.
    """

    def handler(request: Any, **kwargs: Any) -> None:
        headers = request.headers
        if "Content-MD5" in headers:
            request.context["client_config"] = unsigned
        if "Expect" in headers and _in_memory_size(request.body) < in_memory:
            del headers["Expect"]

    return handler


def _in_memory_size(body: Any) -> float:
    """The size of a body held in memory (bytes, or the BytesIO botocore wraps them in);
    infinite for one read from a file."""
    if isinstance(body, (bytes, bytearray)):
        return len(body)
    if isinstance(body, io.BytesIO):  # its length without copying its buffer (getbuffer would)
        return len(body.getvalue()) - body.tell()
    return float("inf")


def _ns(when: datetime) -> int:
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


__all__ = ["S3Connector", "S3Upload", "S3FileUpload", "S3MultipartUpload"]
