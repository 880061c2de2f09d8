"""Time rules of the built-in scheduler (oeleo.schedulers.rules): durations, cron fields and
their day rule, the next time across DST changes (Europe/Oslo via zoneinfo), the night
window, --until, and bad expressions said in one line."""

from __future__ import annotations

from datetime import datetime, time
from typing import List

import pytest

from oeleo.errors import ConfigError
from oeleo.schedulers.rules import (
    Between,
    Cron,
    Every,
    ScheduleError,
    parse_cron,
    parse_duration,
    parse_schedule,
    parse_until,
)

zoneinfo = pytest.importorskip("zoneinfo")
try:
    OSLO = zoneinfo.ZoneInfo("Europe/Oslo")
except zoneinfo.ZoneInfoNotFoundError:  # no tz database on this system
    pytest.skip("no time zone database (install tzdata)", allow_module_level=True)


def at(*fields: int) -> float:
    """An Oslo wall-clock time (its first occurrence) as seconds since the epoch."""
    return datetime(*fields, tzinfo=OSLO).timestamp()


def wall(instant: float) -> str:
    moment = datetime.fromtimestamp(instant, OSLO)
    return f"{moment:%Y-%m-%d %H:%M %z}"


def fires(cron: Cron, start: float, n: int) -> List[str]:
    out, now = [], start
    for _ in range(n):
        now = cron.next_after(now)
        out.append(wall(now))
    return out


@pytest.mark.parametrize(
    "text, seconds",
    [("600", 600), ("90s", 90), ("5m", 300), ("1.5h", 5400), (" 2H ", 7200), ("0.2", 0.2)],
)
def test_durations_are_seconds_unless_a_unit_says_otherwise(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5 minutes", "5d", "-3", "0", "m"])
def test_a_bad_duration_is_refused_saying_what_is_expected(text: str) -> None:
    with pytest.raises(ScheduleError, match="duration|must be more than 0"):
        parse_duration(text)


def test_cron_fields_lists_ranges_steps_and_names() -> None:
    cron = parse_cron("*/15 22-23,0-6 * jan-mar,DEC mon-fri", OSLO)
    assert cron.minutes == {0, 15, 30, 45}
    assert cron.hours == {22, 23, 0, 1, 2, 3, 4, 5, 6}
    assert cron.months == {1, 2, 3, 12}
    assert cron.weekdays == {0, 1, 2, 3, 4}  # Monday to Friday
    assert parse_cron("5/20 * * * *").minutes == {5, 25, 45}
    assert parse_cron("0 0 * * 0").weekdays == parse_cron("0 0 * * 7").weekdays == {6}  # Sunday
    assert parse_cron("1-10/3 * * * *").minutes == {1, 4, 7, 10}


def test_cron_next_times_in_order_within_a_night_window() -> None:
    cron = parse_cron("*/10 22-23,0-6 * * *", OSLO)
    got = fires(cron, at(2026, 12, 1, 6, 45), 3)
    assert got == ["2026-12-01 06:50 +0100", "2026-12-01 22:00 +0100", "2026-12-01 22:10 +0100"]


def test_cron_day_rule_is_or_when_both_day_fields_are_restricted() -> None:
    # The 13th OR any Friday (Vixie cron): December 2026 has Fridays on the 4th, 11th, 18th.
    either = parse_cron("0 12 13 * fri", OSLO)
    got = fires(either, at(2026, 12, 1), 4)
    assert [g[:10] for g in got] == ["2026-12-04", "2026-12-11", "2026-12-13", "2026-12-18"]
    # A day field starting with '*' (even */2) makes it AND: odd days that are Fridays.
    both = parse_cron("0 12 */2 * fri", OSLO)
    assert [g[:10] for g in fires(both, at(2026, 12, 1), 2)] == ["2026-12-11", "2026-12-25"]


def test_cron_on_29_february_waits_for_the_next_leap_year() -> None:
    cron = parse_cron("0 0 29 2 *", OSLO)
    assert fires(cron, at(2026, 3, 1), 2) == ["2028-02-29 00:00 +0100", "2032-02-29 00:00 +0100"]


def test_cron_when_clocks_go_forward_the_skipped_time_fires_once_later_and_no_day_is_lost() -> None:
    # Oslo, 29 March 2026: 02:00 becomes 03:00. A 02:30 job runs at 03:30 that day.
    daily = parse_cron("30 2 * * *", OSLO)
    assert fires(daily, at(2026, 3, 27, 12, 0), 4) == [
        "2026-03-28 02:30 +0100",
        "2026-03-29 03:30 +0200",
        "2026-03-30 02:30 +0200",
        "2026-03-31 02:30 +0200",
    ]
    hourly = parse_cron("0 * * * *", OSLO)
    got = fires(hourly, at(2026, 3, 29, 0, 30), 3)
    assert got == ["2026-03-29 01:00 +0100", "2026-03-29 03:00 +0200", "2026-03-29 04:00 +0200"]


def test_cron_when_clocks_go_back_the_repeated_hour_fires_once_and_time_never_goes_backwards() -> None:
    # Oslo, 25 October 2026: 03:00 becomes 02:00; 02:xx happens twice.
    daily = parse_cron("30 2 * * *", OSLO)
    assert fires(daily, at(2026, 10, 24, 12, 0), 3) == [
        "2026-10-25 02:30 +0200",
        "2026-10-26 02:30 +0100",
        "2026-10-27 02:30 +0100",
    ]
    every_20 = parse_cron("*/20 * * * *", OSLO)
    now, seen = at(2026, 10, 25, 1, 50), []
    for _ in range(12):
        nxt = every_20.next_after(now)
        assert nxt > now  # never loops, never goes back
        seen.append(nxt)
        now = nxt
    assert seen == sorted(set(seen))
    assert [wall(t) for t in seen[2:4]] == ["2026-10-25 02:40 +0200", "2026-10-25 03:00 +0100"]
    assert seen[3] - seen[2] == 80 * 60  # the repeated 02:xx is not fired a second time


def test_every_rule_first_pass_at_once_then_after_each_end() -> None:
    rule = parse_schedule("every 5m", 3600)
    assert isinstance(rule, Every) and rule.first(1000.0) == 1000.0
    assert rule.next_after(1000.0) == 1300.0
    assert parse_schedule("", 42).next_after(0) == 42  # empty: OELEO_RUN_INTERVAL


def test_night_window_across_midnight_runs_inside_and_sleeps_outside() -> None:
    rule = parse_schedule("between 22:00 06:00", 600, tz=OSLO)
    assert isinstance(rule, Between) and (rule.start, rule.end) == (time(22), time(6))
    assert wall(rule.first(at(2026, 12, 1, 23, 0))) == "2026-12-01 23:00 +0100"  # inside: at once
    assert wall(rule.first(at(2026, 12, 1, 12, 0))) == "2026-12-01 22:00 +0100"  # outside: waits
    assert wall(rule.next_after(at(2026, 12, 1, 23, 55))) == "2026-12-02 00:05 +0100"
    assert wall(rule.next_after(at(2026, 12, 2, 5, 55))) == "2026-12-02 22:00 +0100"  # 06:05 is out
    day = parse_schedule("between 08:00 and 17:00", 3600, tz=OSLO)
    assert wall(day.next_after(at(2026, 12, 1, 16, 30))) == "2026-12-02 08:00 +0100"


def test_night_window_opening_on_the_night_clocks_go_forward() -> None:
    rule = parse_schedule("between 02:30 04:00", 600, tz=OSLO)  # 02:30 does not exist on 29 March
    assert wall(rule.first(at(2026, 3, 29, 1, 0))) == "2026-03-29 03:30 +0200"


def test_until_a_time_of_day_is_the_next_one_and_an_iso_date_is_that_moment() -> None:
    now = at(2026, 12, 1, 23, 0)
    assert wall(parse_until("06:00", now, OSLO)) == "2026-12-02 06:00 +0100"
    assert wall(parse_until("23:30", now, OSLO)) == "2026-12-01 23:30 +0100"
    assert wall(parse_until("2026-12-24T18:00", now, OSLO)) == "2026-12-24 18:00 +0100"
    assert wall(parse_until("2026-12-24 18:00", now, OSLO)) == "2026-12-24 18:00 +0100"
    # UTC with a Z, on every Python (3.9 and 3.10's fromisoformat refuse the Z itself)
    assert wall(parse_until("2026-12-24T17:00Z", now, OSLO)) == "2026-12-24 18:00 +0100"
    assert wall(parse_until("2026-12-24T17:00+00:00", now, OSLO)) == "2026-12-24 18:00 +0100"
    with pytest.raises(ScheduleError, match="not a time"):
        parse_until("tomorrow", now, OSLO)


@pytest.mark.parametrize(
    "text, says",
    [
        ("*/10 22-23 * *", "has 4 fields"),
        ("61 * * * *", "minute 61 is out of range 0-59"),
        ("* 24 * * *", "hour 24 is out of range"),
        ("* * * foo *", "month 'foo' is not a number or a name"),
        ("*/0 * * * *", "step '0' must be a whole number above 0"),
        ("* 6-2 * * *", "range '6-2' runs backwards"),
        ("0 0 30 2 *", "names no day that exists"),
        ("1,,2 * * * *", "empty list item"),
        ("@reboot", "not a schedule"),
        ("daily between 22:00 and 06:00", "not a schedule"),
        ("every", "expected 'every' and one duration"),
        ("between 22:00", "expected 'between HH:MM HH:MM'"),
        ("between 25:00 06:00", "not a time of day"),
        ("between 06:00 06:00", "opens and closes at the same time"),
    ],
)
def test_a_bad_schedule_is_one_configuration_error_saying_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_schedule(text, 60)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


def test_macros() -> None:
    assert parse_cron("@daily").hours == {0} and parse_cron("@hourly").hours == set(range(24))
    assert parse_cron("@weekly").weekdays == {6}


def test_the_systems_own_zone_is_used_when_none_is_given(tmp_path) -> None:
    """tz=None (what ``oeleo schedule`` uses) reads the system's zone: TZ=Europe/Oslo gives the
    same clock-change answers as the zoneinfo zone above."""
    import os
    import subprocess
    import sys

    code = (
        "from datetime import datetime\n"
        "from oeleo.schedulers.rules import parse_cron\n"
        "t = datetime(2026, 3, 28, 12, 0).timestamp()\n"
        "for _ in range(2):\n"
        "    t = parse_cron('30 2 * * *').next_after(t)\n"
        "    print(datetime.fromtimestamp(t).astimezone().strftime('%Y-%m-%d %H:%M %z'))\n"
    )
    env = dict(os.environ, TZ="Europe/Oslo")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["2026-03-29 03:30 +0200", "2026-03-30 02:30 +0200"]
