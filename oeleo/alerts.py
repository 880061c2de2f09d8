"""Alerts: tell a person, by webhook and mail, when passes go wrong and when they are fine again.

After every pass that is not a dry run, the worker hands what happened (a ``PassOutcome``) to
``Alerts.after_pass``. ``decide`` (a pure function of the outcome, the stored state and the
clock) says which messages are due; they go to the channels (``webhook``, ``mail``), and the
state is written back to the books (``oeleo_alerts``: one row per origin and kind), because a
platform task runs one ``oeleo run`` per pass and every count must outlive the process.

The kinds: ``failed_files`` (a pass had failed files), ``unreachable`` (passes did not finish,
``OELEO_ALERT_AFTER_FAILED_PASSES`` in a row), ``quiet`` (no file copied for
``OELEO_ALERT_QUIET_HOURS``), and ``recovered`` (a kind that alerted is fine again). Promises:
- At most one alert per kind per hour and origin; a recovery follows its alert once, and only
  one that reached someone (a channel that got the alert gets its recovery).
- A message that could not be sent stays owed to that channel and is tried again at the next
  pass (while its cause lasts); sending never raises, never changes the exit status, and
  takes a few seconds at most (``WEBHOOK_TIMEOUT``, ``SMTP_TIMEOUT``).
- No secret in a message or a log line: the webhook URL and every password of the settings
  are masked wherever they would appear, and a failure names the server by its host only.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import smtplib
import socket
import ssl
import unicodedata
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type
from urllib.parse import urlsplit

import peewee
from pydantic import SecretStr

from oeleo.errors import Aborted, BookkeeperError, ConfigError, OeleoError, first_line
from oeleo.names import printable, printable_text

log = logging.getLogger("oeleo")

FAILED_FILES = "failed_files"
UNREACHABLE = "unreachable"
QUIET = "quiet"
RECOVERED = "recovered"
KINDS = (FAILED_FILES, UNREACHABLE, QUIET)  # RECOVERED is said about one of these

WEBHOOK = "webhook"
MAIL = "mail"

RATE_LIMIT = datetime.timedelta(hours=1)  # at most one alert per kind and origin in this time
WEBHOOK_TIMEOUT = 5.0  # seconds: a webhook that does not answer does not hold the copy up
SMTP_TIMEOUT = 10.0
FILES_LISTED = 20  # failed files named in a message; the others are counted
MASK = "********"

# Hosts of Microsoft Teams webhooks: the Workflows (Power Automate) ones post an Adaptive Card
# from "attachments" and ignore "text"; the retired Office 365 connectors took either.
_TEAMS_HOSTS = (
    "logic.azure.com",
    "powerplatform.com",
    "powerautomate.com",
    "flow.microsoft.com",
    "webhook.office.com",
)


# -- what a pass did, what is stored, what is said ----------------------------------------
@dataclass(frozen=True)
class PassOutcome:
    """What the alerts need to know about one pass."""

    copied: int = 0
    failed: Tuple[Tuple[str, str], ...] = ()  # (name, reason) of the failed files
    error: Optional[str] = None  # the pass did not finish: why (a lost store, a failed login)
    reached: bool = True  # the destination was contacted (an idle pass may not contact it)
    stopped: bool = False  # stopped on request: says nothing about failed files

    @classmethod
    def of_summary(cls, summary: Any, reached: bool) -> PassOutcome:
        failed = tuple((printable(name), reason) for name, reason in summary.errors)
        return cls(
            copied=summary.copied,
            failed=failed,
            error=summary.fatal,
            reached=reached,
            stopped=bool(summary.stopped and not summary.fatal),
        )

    @classmethod
    def of_error(cls, exc: BaseException) -> Optional[PassOutcome]:
        """A pass that raised; None when that says nothing about the destination (a stop, the
        books busy or broken: the alerts' state lives there too)."""
        if isinstance(exc, (Aborted, KeyboardInterrupt, BookkeeperError)):
            return None
        if not isinstance(exc, Exception):
            return None
        return cls(error=first_line(exc), reached=False)


@dataclass(frozen=True)
class Context:
    """Where a message comes from and what a person should look at."""

    host: str
    origin: str
    folder: str
    destination: str = ""
    hints: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    after_failed_passes: int = 3
    quiet_hours: float = 0.0  # 0: no quiet alert
    rate_limit: datetime.timedelta = RATE_LIMIT


@dataclass(frozen=True)
class Message:
    """One alert or recovery, as every channel says it."""

    kind: str  # failed_files, unreachable, quiet or recovered
    title: str
    summary: str  # what happened, in one sentence
    lines: Tuple[str, ...] = ()  # the failed files, or other details
    recovers: Optional[str] = None  # a recovery: of which kind
    failed: Tuple[Tuple[str, str], ...] = ()  # the failed files named in the message
    failed_count: int = 0
    host: str = ""
    origin: str = ""
    folder: str = ""
    destination: str = ""
    hints: Tuple[str, ...] = ()
    time: str = ""

    @property
    def text(self) -> str:
        """The whole message as plain text: the mail's body, the chat message."""
        parts = [self.title, "", self.summary]
        parts.extend(self.lines)
        parts.append("")
        parts.append(f"PC: {self.host}")
        parts.append(f"Folder: {self.folder}")
        if self.destination:
            parts.append(f"Destination: {self.destination}")
        if self.hints:
            parts.append("Look at: " + "; ".join(self.hints))
        return "\n".join(parts)

    def document(self) -> Dict[str, Any]:
        """The fields a plain JSON receiver reads (and what is stored until it is sent)."""
        from oeleo import __version__

        return {
            "kind": self.kind,
            "recovers": self.recovers,
            "title": self.title,
            "message": self.summary,
            "host": self.host,
            "origin": self.origin,
            "folder": self.folder,
            "destination": self.destination,
            "failed": [{"name": name, "reason": reason} for name, reason in self.failed],
            "failed_count": self.failed_count,
            "details": list(self.lines),
            "look_at": list(self.hints),
            "time": self.time,
            "oeleo": __version__,
        }

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Message:
        values = json.loads(text)
        for name in ("lines", "hints"):
            values[name] = tuple(values.get(name) or ())
        values["failed"] = tuple(tuple(pair) for pair in values.get("failed") or ())
        return cls(**values)


@dataclass(frozen=True)
class KindState:
    """What is remembered about one kind for one origin (a row of ``oeleo_alerts``)."""

    kind: str
    raised: bool = False  # its alert was decided and the kind is not fine again yet
    streak: int = 0  # unreachable: passes in a row that did not finish
    since: Optional[datetime.datetime] = None  # unreachable: the first of them; quiet: the last arrival
    last_sent: Optional[datetime.datetime] = None  # the last alert of this kind (the rate limit)
    said: str = ""  # failed_files: a digest of the names its last alert listed
    owed: Tuple[str, ...] = ()  # channels that have yet to get ``message``
    reached: Tuple[str, ...] = ()  # channels that got this kind's alert (they get its recovery)
    message: Optional[str] = None  # the message owed (JSON of a Message)

    def owes(self) -> bool:
        return bool(self.owed and self.message)


# -- deciding -------------------------------------------------------------------------------
def decide(
    states: Mapping[str, KindState],
    outcome: PassOutcome,
    policy: Policy,
    context: Context,
    channels: Sequence[str],
    now: datetime.datetime,
) -> Dict[str, KindState]:
    """The state of each kind after this pass; a state that ``owes()`` has a message to send.

    Pure: the clock is ``now``, so the rate limit and the quiet hours are tested without
    waiting an hour."""
    channels = tuple(channels)
    new: Dict[str, KindState] = {}
    for kind in KINDS:
        state = states.get(kind) or KindState(kind)
        if kind == FAILED_FILES:
            new[kind] = _failed_files(state, outcome, policy, context, channels, now)
        elif kind == UNREACHABLE:
            new[kind] = _unreachable(state, outcome, policy, context, channels, now)
        else:
            new[kind] = _quiet(state, outcome, policy, context, channels, now, kind in states)
    return new


def _failed_files(
    state: KindState,
    outcome: PassOutcome,
    policy: Policy,
    context: Context,
    channels: Tuple[str, ...],
    now: datetime.datetime,
) -> KindState:
    if outcome.error is not None or outcome.stopped:
        return state  # the pass did not try every file: it says nothing either way
    if not outcome.failed:
        ok = _message(
            RECOVERED,
            context,
            now,
            title=f"oeleo on {context.host}: files copy again from {context.folder}",
            summary=f"The last pass had no failed files ({_files(outcome.copied)} copied).",
            recovers=FAILED_FILES,
        )
        return _fine(state, ok, channels)
    names = sorted(name for name, _ in outcome.failed)
    digest = hashlib.sha256("\n".join(names).encode("utf-8", "surrogateescape")).hexdigest()
    if state.raised and digest == state.said:
        return state  # the same files fail again: said already
    count = len(outcome.failed)
    shown = outcome.failed[:FILES_LISTED]
    lines = tuple(f"  {name}: {reason}" for name, reason in shown)
    if count > len(shown):
        lines += (f"  and {count - len(shown)} more",)
    alert = _message(
        FAILED_FILES,
        context,
        now,
        title=f"oeleo on {context.host}: {_files(count)} failed in {context.folder}",
        summary=(
            f"The last pass could not copy {_files(count)} "
            f"({'it is' if count == 1 else 'they are'} tried again at the next pass):"
        ),
        lines=lines,
        failed=shown,
        failed_count=count,
    )
    return _raise(state, alert, policy, channels, now, said=digest)


def _unreachable(
    state: KindState,
    outcome: PassOutcome,
    policy: Policy,
    context: Context,
    channels: Tuple[str, ...],
    now: datetime.datetime,
) -> KindState:
    if outcome.error is not None:
        streak = state.streak + 1
        since = state.since or now
        state = dataclasses.replace(state, streak=streak, since=since)
        if streak < policy.after_failed_passes or state.raised:
            return state
        alert = _message(
            UNREACHABLE,
            context,
            now,
            title=f"oeleo on {context.host}: {streak} passes in a row failed for {context.folder}",
            summary=f"The last {streak} passes (since {_when(since)}) did not finish: {outcome.error}",
        )
        return _raise(state, alert, policy, channels, now)
    if outcome.stopped or not outcome.reached:
        return state  # nothing was asked of the destination: not a sign either way
    streak, first = state.streak, state.since
    state = dataclasses.replace(state, streak=0, since=None)
    ok = _message(
        RECOVERED,
        context,
        now,
        title=f"oeleo on {context.host}: passes finish again for {context.folder}",
        summary=f"The last pass finished after {streak} that did not (since {_when(first)}).",
        recovers=UNREACHABLE,
    )
    return _fine(state, ok, channels)


def _quiet(
    state: KindState,
    outcome: PassOutcome,
    policy: Policy,
    context: Context,
    channels: Tuple[str, ...],
    now: datetime.datetime,
    known: bool,
) -> KindState:
    if outcome.copied:
        quiet_since = state.since
        state = dataclasses.replace(state, since=now)
        ok = _message(
            RECOVERED,
            context,
            now,
            title=f"oeleo on {context.host}: files arrive again in {context.folder}",
            summary=(
                f"The last pass copied {_files(outcome.copied)}; "
                f"nothing had arrived since {_when(quiet_since)}."
            ),
            recovers=QUIET,
        )
        return _fine(state, ok, channels)
    if not known or state.since is None:
        return dataclasses.replace(state, since=now)  # the quiet clock starts at the first pass seen
    hours = policy.quiet_hours
    if hours <= 0 or now - state.since < datetime.timedelta(hours=hours) or state.raised:
        return state
    quiet = _hours(now - state.since)
    alert = _message(
        QUIET,
        context,
        now,
        title=f"oeleo on {context.host}: nothing new from {context.folder} for {quiet}",
        summary=(
            f"No file has been copied since {_when(state.since)} "
            f"({quiet}; OELEO_ALERT_QUIET_HOURS={hours:g}): "
            "is the instrument writing, and is the copy running?"
        ),
    )
    return _raise(state, alert, policy, channels, now)


def _raise(
    state: KindState,
    alert: Message,
    policy: Policy,
    channels: Tuple[str, ...],
    now: datetime.datetime,
    said: str = "",
) -> KindState:
    """The kind's condition holds: its alert is owed to every channel unless one went out
    less than ``policy.rate_limit`` ago (a recovery still owed is dropped: it is not true)."""
    if state.raised and state.owed and not state.reached:
        # The alert reached no one yet: the newer one replaces it, still owed, not a second alert.
        return dataclasses.replace(state, message=alert.to_json(), said=said)
    if state.last_sent is not None and now - state.last_sent < policy.rate_limit:
        if state.raised:
            return state
        return dataclasses.replace(state, owed=(), message=None)
    return dataclasses.replace(
        state,
        raised=True,
        last_sent=now,
        said=said,
        owed=channels,
        reached=state.reached if state.raised else (),
        message=alert.to_json(),
    )


def _fine(state: KindState, recovery: Message, channels: Tuple[str, ...]) -> KindState:
    """The kind's condition no longer holds: its recovery is owed to the channels its alert
    reached (an alert that reached no one is forgotten)."""
    if not state.raised:
        return state  # a recovery still owed stays owed
    told = tuple(channel for channel in state.reached if channel in channels)
    if not told:
        return dataclasses.replace(state, raised=False, owed=(), reached=(), message=None, said="")
    return dataclasses.replace(
        state, raised=False, owed=told, reached=(), message=recovery.to_json(), said=""
    )


def _message(kind: str, context: Context, now: datetime.datetime, **values: Any) -> Message:
    return Message(
        kind=kind,
        host=context.host,
        origin=context.origin,
        folder=context.folder,
        destination=context.destination,
        hints=context.hints,
        time=now.isoformat(timespec="seconds"),
        **values,
    )


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def _when(moment: Optional[datetime.datetime]) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment is not None else "the first pass seen"


def _hours(delta: datetime.timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} hours" if hours < 48 else f"{hours / 24:.1f} days"


# -- the state in the books -----------------------------------------------------------------
class AlertTable(peewee.Model):
    """The ``oeleo_alerts`` table: one row per origin and kind."""

    origin = peewee.CharField(max_length=1024)
    kind = peewee.CharField(max_length=32)
    raised = peewee.BooleanField(default=False)
    streak = peewee.IntegerField(default=0)
    since = peewee.DateTimeField(null=True)
    last_sent = peewee.DateTimeField(null=True)
    said = peewee.CharField(max_length=64, default="")
    owed = peewee.CharField(max_length=64, default="")  # channels, comma separated
    reached = peewee.CharField(max_length=64, default="")
    message = peewee.TextField(null=True)
    updated = peewee.DateTimeField(default=datetime.datetime.now)

    class Meta:
        indexes = ((("origin", "kind"), True),)


TABLE = "oeleo_alerts"


def _model(books: Any) -> Type[AlertTable]:
    class Alert(AlertTable):
        class Meta:
            table_name = TABLE  # peewee does not inherit a table's name

    Alert.bind(books.database, bind_refs=False, bind_backrefs=False)
    return Alert


def _split(text: str) -> Tuple[str, ...]:
    return tuple(part for part in (text or "").split(",") if part)


def read_states(books: Any) -> Dict[str, KindState]:
    """The stored state of this origin's kinds (none before the first alert pass)."""
    model = _model(books)

    def run() -> Dict[str, KindState]:
        if TABLE not in books.database.get_tables():
            return {}
        rows = model.select().where(model.origin == books.origin)
        return {
            row.kind: KindState(
                kind=row.kind,
                raised=bool(row.raised),
                streak=row.streak or 0,
                since=row.since,
                last_sent=row.last_sent,
                said=row.said or "",
                owed=_split(row.owed),
                reached=_split(row.reached),
                message=row.message,
            )
            for row in rows
        }

    result: Dict[str, KindState] = books._guard(run)
    return result


def write_states(books: Any, states: Sequence[KindState]) -> None:
    """Create or update the rows (the table is made when first needed)."""
    model = _model(books)

    def run() -> None:
        with books.database.atomic():
            model.create_table(safe=True)
            for state in states:
                row = {
                    "origin": books.origin,
                    "kind": state.kind,
                    "raised": state.raised,
                    "streak": state.streak,
                    "since": state.since,
                    "last_sent": state.last_sent,
                    "said": state.said,
                    "owed": ",".join(state.owed),
                    "reached": ",".join(state.reached),
                    "message": state.message,
                    "updated": datetime.datetime.now(),
                }
                model.insert(row).on_conflict(
                    conflict_target=[model.origin, model.kind], update=row
                ).execute()

    books._guard(run)


# -- sending --------------------------------------------------------------------------------
class SendError(Exception):
    """A channel could not deliver a message (the reason, without any secret)."""


class Channel:
    name = "channel"

    def send(self, message: Message) -> None:
        raise NotImplementedError

    def where(self) -> str:
        return self.name


class Webhook(Channel):
    """POST the message as JSON: ``text`` for Slack and Mattermost, an Adaptive Card for Teams,
    and the plain fields for any other receiver."""

    name = WEBHOOK

    def __init__(self, url: str, timeout: float = WEBHOOK_TIMEOUT) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # The value is not repeated: the URL of a webhook is its password.
            raise ConfigError("OELEO_ALERT_WEBHOOK: expected an http:// or https:// URL")
        self.url = url
        self.host = parts.hostname
        self.timeout = timeout

    def where(self) -> str:
        return f"webhook at {self.host}"  # never the path or the query: they hold the secret

    def payload(self, message: Message) -> Dict[str, Any]:
        return webhook_payload(message, self.host)

    def send(self, message: Message) -> None:
        from oeleo import __version__

        body = json.dumps(self.payload(message)).encode("utf-8")
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": f"oeleo/{__version__}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                answer.read(64 * 1024)
        except urllib.error.HTTPError as exc:
            raise SendError(f"it answered HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise SendError(f"no answer within {self.timeout:g} s") from None
            raise SendError(_reason(reason)) from None
        except (socket.timeout, TimeoutError):
            raise SendError(f"no answer within {self.timeout:g} s") from None
        except (OSError, ValueError) as exc:
            raise SendError(_reason(exc)) from None


def webhook_payload(message: Message, host: str = "") -> Dict[str, Any]:
    """The JSON posted: the plain fields, with ``text`` (Slack, Mattermost, most chat
    receivers) or, for a Teams host, the Adaptive Card that Teams Workflows posts."""
    document = message.document()
    if any(host == known or host.endswith("." + known) for known in _TEAMS_HOSTS):
        body: List[Dict[str, Any]] = [
            {"type": "TextBlock", "text": message.title, "weight": "Bolder", "size": "Medium", "wrap": True},
            {"type": "TextBlock", "text": message.text.split("\n", 2)[-1], "wrap": True},
        ]
        card = {
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "body": body,
        }
        attachment = {
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": None,
            "content": card,
        }
        return {"type": "message", "attachments": [attachment], **document}
    return {"text": message.text, **document}


class Mail(Channel):
    """Mail the message with smtplib: STARTTLS, SSL or neither, a login when a user is set."""

    name = MAIL

    def __init__(
        self,
        to: Sequence[str],
        host: str,
        port: Optional[int] = None,
        security: str = "starttls",
        username: Optional[str] = None,
        password: Optional[str] = None,
        sender: Optional[str] = None,
        timeout: float = SMTP_TIMEOUT,
    ) -> None:
        self.to = list(to)
        self.host = host
        self.security = security
        self.port = port or {"ssl": 465, "starttls": 587}.get(security, 25)
        self.username = username
        self.password = password or ""
        self.sender = sender or f"oeleo@{socket.gethostname() or 'localhost'}"
        self.timeout = timeout

    def where(self) -> str:
        return f"mail through {self.host}:{self.port}"

    def send(self, message: Message) -> None:
        mail = EmailMessage()
        try:
            mail["Subject"] = message.title
            mail["From"] = self.sender
            mail["To"] = ", ".join(self.to)
            mail["Date"] = formatdate(localtime=True)
            mail["Message-ID"] = make_msgid(domain=_domain(self.sender))
            mail["X-Oeleo-Kind"] = message.kind
            mail.set_content(message.text + "\n")
        except (ValueError, UnicodeError) as exc:  # a message made readable never is; say it if it is
            raise SendError(f"the mail cannot be written: {exc}") from None
        try:
            with self._connect() as smtp:
                if self.username:
                    smtp.login(self.username, self.password)
                smtp.send_message(mail)
        except smtplib.SMTPAuthenticationError as exc:
            raise SendError(
                f"the server refused the login of {self.username!r} ({exc.smtp_code}); "
                "check OELEO_SMTP_USERNAME and OELEO_SMTP_PASSWORD"
            ) from None
        except smtplib.SMTPNotSupportedError:
            raise SendError(
                "the server offers no login (AUTH) on this connection; check OELEO_SMTP_SECURITY"
            ) from None
        except smtplib.SMTPRecipientsRefused as exc:
            refused = ", ".join(sorted(exc.recipients))
            raise SendError(f"the server refused the address {refused} (OELEO_ALERT_EMAIL)") from None
        except smtplib.SMTPResponseException as exc:
            text = (
                exc.smtp_error.decode("utf-8", "replace")
                if isinstance(exc.smtp_error, bytes)
                else exc.smtp_error
            )
            raise SendError(f"the server said {exc.smtp_code} {text}".strip()) from None
        except ssl.SSLError as exc:
            raise SendError(
                f"TLS failed ({exc.reason or exc}); check OELEO_SMTP_SECURITY and OELEO_SMTP_PORT"
            ) from None
        except (socket.timeout, TimeoutError):
            raise SendError(f"no answer within {self.timeout:g} s") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise SendError(_reason(exc)) from None

    def _connect(self) -> smtplib.SMTP:
        if self.security == "ssl":
            return smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            if self.security == "starttls":
                smtp.ehlo()
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
        except BaseException:
            smtp.close()
            raise
        return smtp


def _domain(address: str) -> str:
    return address.rpartition("@")[2].strip("> ") or "localhost"


def _reason(exc: Any) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# -- putting it together --------------------------------------------------------------------
class Alerts:
    """The channels, the policy and the secrets to mask: ``after_pass`` does the rest."""

    def __init__(
        self,
        channels: Sequence[Channel],
        policy: Policy = Policy(),
        secrets: Sequence[str] = (),
        hints: Sequence[str] = (),
    ) -> None:
        self.channels = list(channels)
        self.policy = policy
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        self.hints = tuple(hints)

    @classmethod
    def from_settings(cls, settings: Any) -> Optional[Alerts]:
        """The alerts the settings ask for, or None (no webhook and no address). A setting that
        cannot work is a configuration error now, not a warning at every pass."""
        channels: List[Channel] = []
        webhook = _secret(settings.alert_webhook)
        if webhook.strip():
            channels.append(Webhook(webhook.strip()))
        addresses = [a.strip() for a in settings.alert_email.replace(";", ",").split(",") if a.strip()]
        for address in addresses:
            if "@" not in address or any(c.isspace() for c in address):
                raise ConfigError(f"OELEO_ALERT_EMAIL: {address!r} is not a mail address")
        if addresses:
            if not settings.smtp_host:
                raise ConfigError(
                    "OELEO_ALERT_EMAIL is set but OELEO_SMTP_HOST is not: the server that sends the mail"
                )
            if settings.smtp_username and not _secret(settings.smtp_password):
                raise ConfigError("OELEO_SMTP_USERNAME is set but OELEO_SMTP_PASSWORD is not")
            channels.append(
                Mail(
                    addresses,
                    host=settings.smtp_host,
                    port=settings.smtp_port,
                    security=settings.smtp_security,
                    username=settings.smtp_username,
                    password=_secret(settings.smtp_password),
                    sender=settings.smtp_from,
                )
            )
        if not channels:
            return None
        values = [getattr(settings, name) for name in type(settings).model_fields]
        secrets = [_secret(value) for value in values if isinstance(value, SecretStr)]
        return cls(
            channels,
            Policy(settings.alert_after_failed_passes, settings.alert_quiet_hours),
            secrets,
            _hints(settings),
        )

    def after_pass(
        self,
        books: Any,
        outcome: PassOutcome,
        folder: str,
        destination: str = "",
        now: Optional[datetime.datetime] = None,
    ) -> None:
        """Decide, send what is due, remember: never raises (a failure is one warning line).
        ``books`` are open, and held by this pass; ``now`` is the clock (a test sets it)."""
        try:
            self._after_pass(books, outcome, folder, destination, now or datetime.datetime.now())
        except OeleoError as exc:
            log.warning(
                "alerts: the state in the books could not be read or written: %s", self.mask(str(exc))
            )
        except Exception as exc:  # noqa: BLE001 - an alert never breaks the copy
            log.warning("alerts: %s", self.mask(f"{type(exc).__name__}: {exc}"))

    def _after_pass(
        self, books: Any, outcome: PassOutcome, folder: str, destination: str, now: datetime.datetime
    ) -> None:
        context = Context(
            host=socket.gethostname(),
            origin=str(books.origin),
            folder=folder,
            destination=destination,
            hints=self.hints,
        )
        before = read_states(books)
        names = tuple(channel.name for channel in self.channels)
        after = decide(before, outcome, self.policy, context, names, now)
        for kind, state in after.items():
            kept = before[kind].message if kind in before else None
            if state.message is not None and state.message != kept:
                # Masked before it is kept or sent: the books never hold a secret either.
                state = dataclasses.replace(
                    state, message=self._masked(Message.from_json(state.message)).to_json()
                )
            after[kind] = self._send(state) if state.owes() else state
        changed = [state for kind, state in after.items() if before.get(kind) != state]
        if changed:
            write_states(books, changed)

    def _send(self, state: KindState) -> KindState:
        assert state.message is not None
        message = self._masked(Message.from_json(state.message))  # kept by an older oeleo, maybe
        owed, reached = list(state.owed), list(state.reached)
        for channel in self.channels:
            if channel.name not in owed:
                continue
            what = message.recovers + " " + message.kind if message.recovers else message.kind
            try:
                channel.send(message)
            except SendError as exc:
                log.warning(
                    "alert (%s) not sent by %s: %s; tried again at the next pass",
                    what,
                    channel.where(),
                    self.mask(str(exc)),
                )
                continue
            log.info("alert (%s) sent by %s", what, channel.where())
            owed.remove(channel.name)
            if message.kind != RECOVERED and channel.name not in reached:
                reached.append(channel.name)
        return dataclasses.replace(
            state, owed=tuple(owed), reached=tuple(reached), message=state.message if owed else None
        )

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def _masked(self, message: Message) -> Message:
        """The message with every secret masked and every text readable, field by field."""

        def masked(value: Any) -> Any:
            if isinstance(value, str):
                return readable(self.mask(value))
            if isinstance(value, tuple):
                return tuple(masked(item) for item in value)
            return value

        values = {f.name: masked(getattr(message, f.name)) for f in dataclasses.fields(message)}
        return Message(**values)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def readable(text: str) -> str:
    """``text`` as every channel can carry it: a byte of a name that was not UTF-8 (a reason
    quotes the name as the system said it) as ``\\xff``, a control character (a newline in a
    name, which would end a line of the mail or its subject) as ``\\n`` or ``\\x1b``."""
    text = printable_text(text)
    if text.isprintable():
        return text
    return "".join(
        _ESCAPES.get(char, f"\\x{ord(char):02x}") if unicodedata.category(char) == "Cc" else char
        for char in text
    )


def _secret(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value) if value else ""


def _hints(settings: Any) -> Tuple[str, ...]:
    from oeleo.reporters import LOG_FILE_NAME

    hints = [f"oeleo status (in {os.getcwd()})"]
    if settings.log_dir is not None:
        log_dir = os.path.expanduser(str(settings.log_dir))
        hints.append(f"the log {os.path.abspath(os.path.join(log_dir, LOG_FILE_NAME))}")
    hints.append("the monitor page (oeleo serve)")
    return tuple(hints)
