"""Time rules of the built-in scheduler: ``every 5m``, a cron expression, a night window.

A rule answers two questions with instants (seconds since the epoch, so that a clock change
never makes a time go backwards): when the first pass starts, and when the next one starts
after a pass ended at ``ended``. Wall-clock times (cron fields, window edges) are read in
local time (``tz``, or the system's zone when it is None):

- a wall time that does not exist (the hour skipped when clocks go forward) fires once, at the
  same distance after the change (02:30 becomes 03:30): a day is never skipped silently;
- a wall time that happens twice (the hour repeated when clocks go back) fires once, the
  first time: a nightly job never runs twice;
- a next time is always later than the time asked about, so a schedule never loops.

The cron dialect is Vixie cron's: five fields (minute hour day-of-month month day-of-week),
``*``, lists, ranges, steps (``*/10``, ``1-30/2``, ``5/15`` = ``5-max/15``), month and day
names (``jan``, ``mon-fri``), day-of-week 0-7 (0 and 7 are Sunday), the ``@hourly``,
``@daily``/``@midnight``, ``@weekly``, ``@monthly``, ``@yearly``/``@annually`` macros, and the
day rule: when both day fields are restricted (neither starts with ``*``), a day matches
if either does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import FrozenSet, List, Optional, Sequence

from oeleo.errors import ConfigError
from oeleo.units import from_iso

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February: in a leap year
# Every day-of-month/month pair comes round within 8 years (29 February skips 1900, 2100).
_SEARCH_DAYS = 8 * 366 + 7


class ScheduleError(ConfigError):
    """A schedule that cannot be read; the message says what is wrong, without its source."""


# -- local time -------------------------------------------------------------------------
def wall_clock(instant: float, tz: Optional[tzinfo] = None) -> datetime:
    """The local wall-clock time (naive) of ``instant``."""
    if tz is None:
        return datetime.fromtimestamp(instant)
    return datetime.fromtimestamp(instant, tz).replace(tzinfo=None)


def instant_of(wall: datetime, tz: Optional[tzinfo] = None) -> float:
    """The instant of a local wall-clock time; a repeated time is its first occurrence and a
    skipped one maps past the change (PEP 495's fold=0)."""
    wall = wall.replace(fold=0)
    if tz is None:
        return wall.timestamp()  # naive: the system's local zone
    return wall.replace(tzinfo=tz).timestamp()


def _next_wall(wall: datetime, after: float, tz: Optional[tzinfo]) -> Optional[float]:
    """The instant of ``wall`` if it is later than ``after``."""
    instant = instant_of(wall, tz)
    return instant if instant > after else None


# -- rules ------------------------------------------------------------------------------
class Rule:
    """When passes start. Subclasses fill in ``first`` and ``next_after``."""

    tz: Optional[tzinfo] = None

    def first(self, now: float) -> float:
        """When the first pass starts, for a scheduler started at ``now``."""
        raise NotImplementedError

    def next_after(self, ended: float) -> float:
        """When the next pass starts, the last one having ended at ``ended``."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    @property
    def interval(self) -> Optional[float]:
        """The longest normal wait between two passes, if the rule has one (for telling a
        live scheduler from a stale heartbeat); None for cron."""
        return None


@dataclass
class Every(Rule):
    """A pass at once, then one ``seconds`` after each pass ends."""

    seconds: float

    def first(self, now: float) -> float:
        return now

    def next_after(self, ended: float) -> float:
        return ended + self.seconds

    def describe(self) -> str:
        return f"every {format_duration(self.seconds)}"

    @property
    def interval(self) -> Optional[float]:
        return self.seconds


@dataclass
class Between(Rule):
    """Inside the daily window from ``start`` to ``end`` (across midnight when ``end`` is
    earlier), a pass every ``seconds``; outside it, wait for the window to open."""

    start: time
    end: time
    seconds: float
    tz: Optional[tzinfo] = None

    def inside(self, wall: datetime) -> bool:
        now = wall.time()
        if self.start < self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end

    def _opening_after(self, instant: float) -> float:
        """The first time the window opens later than ``instant``."""
        day = wall_clock(instant, self.tz).date() - timedelta(days=1)
        for offset in range(4):
            opening = _next_wall(datetime.combine(day + timedelta(days=offset), self.start), instant, self.tz)
            if opening is not None:
                return opening
        raise AssertionError("a daily window opens within two days")  # pragma: no cover

    def first(self, now: float) -> float:
        return now if self.inside(wall_clock(now, self.tz)) else self._opening_after(now)

    def next_after(self, ended: float) -> float:
        due = ended + self.seconds
        return due if self.inside(wall_clock(due, self.tz)) else self._opening_after(due)

    def describe(self) -> str:
        return (
            f"between {self.start:%H:%M} and {self.end:%H:%M}, every {format_duration(self.seconds)} "
            "inside the window"
        )

    @property
    def interval(self) -> Optional[float]:
        return None  # the wait outside the window is long by design


@dataclass
class Cron(Rule):
    """A cron expression: the minutes it names. A pass that runs past the next of them is
    followed by one pass at the first named minute after it ended (missed ones are not
    made up one by one)."""

    expression: str
    minutes: FrozenSet[int]
    hours: FrozenSet[int]
    days: FrozenSet[int]
    months: FrozenSet[int]
    weekdays: FrozenSet[int]  # 0 Monday ... 6 Sunday, as date.weekday()
    day_star: bool
    weekday_star: bool
    tz: Optional[tzinfo] = None

    def day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        by_day = day.day in self.days
        by_weekday = day.weekday() in self.weekdays
        if self.day_star or self.weekday_star:  # Vixie cron: one of them is '*': both must hold
            return by_day and by_weekday
        return by_day or by_weekday

    def first(self, now: float) -> float:
        return self.next_after(now)

    def next_after(self, ended: float) -> float:
        start = wall_clock(ended, self.tz).replace(second=0, microsecond=0)
        hours, minutes = sorted(self.hours), sorted(self.minutes)
        for offset in range(_SEARCH_DAYS):
            day = start.date() + timedelta(days=offset)
            if not self.day_matches(day):
                continue
            for hour in hours:
                for minute in minutes:
                    found = _next_wall(datetime(day.year, day.month, day.day, hour, minute), ended, self.tz)
                    if found is not None:
                        return found
        raise ScheduleError(f"{self.expression!r} names no time in the next 8 years")

    def describe(self) -> str:
        return f"cron {self.expression!r}"


# -- reading rules ----------------------------------------------------------------------
def parse_duration(text: str) -> float:
    """``600`` (seconds), ``90s``, ``5m``, ``1.5h``: seconds, more than 0."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*", text.lower())
    if not match:
        raise ScheduleError("not a duration: expected a number of seconds, or 30s, 5m, 2h")
    seconds = float(match.group(1)) * UNITS.get(match.group(2) or "s", 1.0)
    if seconds <= 0:
        raise ScheduleError("the duration must be more than 0")
    return seconds


def format_duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def parse_clock(text: str) -> time:
    """``22:00``, ``6:30``, ``06:30:15``: a wall-clock time of day."""
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*", text)
    hour, minute, second = (int(g or 0) for g in match.groups()) if match else (99, 0, 0)
    if hour > 23 or minute > 59 or second > 59:
        raise ScheduleError(f"{text!r} is not a time of day: expected HH:MM, such as 22:00")
    return time(hour, minute, second)


def parse_between(start: str, end: str, seconds: float, tz: Optional[tzinfo] = None) -> Between:
    opens, closes = parse_clock(start), parse_clock(end)
    if opens == closes:
        raise ScheduleError("the window opens and closes at the same time")
    return Between(opens, closes, seconds, tz)


def _field_values(text: str, low: int, high: int, names: Sequence[str], what: str) -> FrozenSet[int]:
    def number(token: str) -> int:
        token = token.lower()
        if names and token in names:
            return names.index(token) + (1 if what == "month" else 0)
        if not token.isdigit():
            raise ScheduleError(f"{what} {token!r} is not a number" + (" or a name" if names else ""))
        value = int(token)
        if not low <= value <= high:
            raise ScheduleError(f"{what} {value} is out of range {low}-{high}")
        return value

    values: List[int] = []
    for part in text.split(","):
        if not part:
            raise ScheduleError(f"{what} field {text!r} has an empty list item")
        span, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(f"{what} step {step_text!r} must be a whole number above 0")
            step = int(step_text)
        if span == "*":
            first, last = low, high
        elif "-" in span:
            a, _, b = span.partition("-")
            first, last = number(a), number(b)
            if first > last:
                raise ScheduleError(f"{what} range {span!r} runs backwards")
        else:
            first = number(span)
            last = high if step_text else first  # 5/15: from 5 to the end, every 15
        values.extend(range(first, last + 1, step))
    return frozenset(values)


def parse_cron(expression: str, tz: Optional[tzinfo] = None) -> Cron:
    """A five-field cron expression (or a macro such as ``@daily``)."""
    text = " ".join(expression.split())
    fields = MACROS.get(text.lower(), text).split()
    if text.lower() == "@reboot":
        raise ScheduleError("'@reboot' is not a schedule: start oeleo from the system's startup instead")
    if len(fields) != 5:
        raise ScheduleError(
            f"has {len(fields)} fields; a cron expression has 5: minute hour day-of-month month day-of-week"
        )
    minute, hour, day, month, weekday = fields
    weekdays_cron = _field_values(weekday, 0, 7, DAY_NAMES, "weekday")
    cron = Cron(
        expression=text,
        minutes=_field_values(minute, 0, 59, (), "minute"),
        hours=_field_values(hour, 0, 23, (), "hour"),
        days=_field_values(day, 1, 31, (), "day of month"),
        months=_field_values(month, 1, 12, MONTH_NAMES, "month"),
        weekdays=frozenset((d - 1) % 7 for d in weekdays_cron),  # cron 0/7 Sunday -> 6
        day_star=day.startswith("*"),
        weekday_star=weekday.startswith("*"),
        tz=tz,
    )
    if cron.weekday_star and not any(d <= DAYS_IN_MONTH[m - 1] for m in cron.months for d in cron.days):
        raise ScheduleError("names no day that exists (such as 30 February)")
    return cron


def looks_like_cron(text: str) -> bool:
    """A macro, or a first field made of cron's characters (the parser says what else is wrong)."""
    words = text.split()
    return bool(words) and (words[0].startswith("@") or bool(re.fullmatch(r"[0-9*,/\-]+", words[0])))


def parse_schedule(text: str, interval: float, tz: Optional[tzinfo] = None) -> Rule:
    """``OELEO_SCHEDULE``: ``every 5m``, ``between 22:00 06:00`` (a pass every ``interval``
    seconds inside it), or a cron expression; empty: every ``interval`` seconds."""
    words = text.split()
    if not words:
        return Every(interval)
    head = words[0].lower()
    if head == "every":
        if len(words) != 2:
            raise ScheduleError("expected 'every' and one duration, such as 'every 5m'")
        return Every(parse_duration(words[1]))
    if head == "between":
        times = [w for w in words[1:] if w.lower() != "and"]
        if len(times) != 2:
            raise ScheduleError("expected 'between HH:MM HH:MM', such as 'between 22:00 06:00'")
        return parse_between(times[0], times[1], interval, tz)
    if looks_like_cron(text):
        return parse_cron(text, tz)
    raise ScheduleError(
        "not a schedule: expected 'every 5m', 'between 22:00 06:00' or a cron expression "
        "such as '*/10 22-23,0-6 * * *' (a rocketry condition needs OELEO_SCHEDULER=rocketry)"
    )


def parse_until(text: str, now: float, tz: Optional[tzinfo] = None) -> float:
    """``--until``: ``06:00`` (the next 06:00 from ``now``) or an ISO date and time
    (``2026-12-24T18:00``, ``2026-12-24 18:00``): the instant after which no pass starts."""
    if re.fullmatch(r"\s*\d{1,2}:\d{2}(:\d{2})?\s*", text):
        clock = parse_clock(text)
        today = wall_clock(now, tz).date()
        for offset in range(3):
            found = _next_wall(datetime.combine(today + timedelta(days=offset), clock), now, tz)
            if found is not None:
                return found
    try:
        moment = from_iso(text)  # a UTC time with a Z too, on every Python
    except ValueError:
        raise ScheduleError(
            "not a time: expected HH:MM, or an ISO date and time such as 2026-12-24T18:00"
        ) from None
    if moment.tzinfo is not None:
        return moment.timestamp()
    return instant_of(moment, tz)


def describe_instant(instant: float, tz: Optional[tzinfo] = None) -> str:
    return f"{wall_clock(instant, tz):%Y-%m-%d %H:%M:%S}"
