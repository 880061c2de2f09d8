"""Running oeleo unattended: the platform's own scheduler starts it.

``oeleo task install --every 5m | --cron EXPR | --watch`` sets up a Windows Task Scheduler
task, a systemd user service (and timer) on Linux, or a launchd agent on macOS, that runs
``oeleo run`` (or, with ``--watch``, a long-running ``oeleo watch``) in the folder it was
installed from, with that folder's ``.env``. ``plan_task`` makes everything as values (the
files and the commands), so that ``--print`` shows them and tests read them without
installing anything; ``install``, ``remove`` and ``status`` carry a plan out.
"""

from __future__ import annotations

import datetime
import getpass
import os
import plistlib
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from oeleo.errors import ConfigError, OeleoError
from oeleo.schedulers.rules import Cron, ScheduleError, format_duration, parse_cron, parse_duration

PLATFORMS = ("windows", "linux", "macos")
TASK_NS = "http://schemas.microsoft.com/windows/2004/02/mit/task"
WINDOWS_MAX_TRIGGERS = 48  # Task Scheduler refuses a task with more
LAUNCHD_MAX_INTERVALS = 500  # a calendar that needs more entries is better said with --every
DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTH_NAMES = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def current_platform(platform: str = sys.platform) -> str:
    if platform == "win32":
        return "windows"
    if platform == "darwin":
        return "macos"
    return "linux"


# -- what and when ----------------------------------------------------------------------
@dataclass(frozen=True)
class When:
    """When the task runs: every so many seconds, by a cron expression, or (``watch``) once,
    at start-up, as a long-running watcher that is started again if it fails."""

    every: Optional[float] = None
    cron: Optional[Cron] = None
    watch: bool = False

    @classmethod
    def parse(cls, every: Optional[str] = None, cron: Optional[str] = None, watch: bool = False) -> When:
        given = [flag for flag, value in (("--every", every), ("--cron", cron), ("--watch", watch)) if value]
        if len(given) != 1:
            raise ConfigError("oeleo task install: give one of --every DURATION, --cron EXPR or --watch")
        try:
            if every:
                return cls(every=parse_duration(every))
            if cron:
                return cls(cron=parse_cron(cron))
        except ScheduleError as exc:
            raise ConfigError(f"{given[0]} {every or cron!r}: {exc}") from None
        return cls(watch=True)

    def describe(self) -> str:
        if self.watch:
            return "oeleo watch, started at boot and again if it fails"
        if self.cron is not None:
            return f"oeleo run at cron {self.cron.expression!r}"
        return f"oeleo run every {format_duration(self.every or 0)}"


@dataclass(frozen=True)
class Task:
    """One task: its name, when it runs, and how (interpreter, working folder, .env)."""

    name: str
    when: When
    python: str
    workdir: str
    env_file: Optional[str] = None
    user: str = ""  # Windows: DOMAIN\\user the task runs as

    @property
    def arguments(self) -> List[str]:
        """What follows the interpreter: ``-m oeleo run --env-file FILE``."""
        args = ["-m", "oeleo", "watch" if self.when.watch else "run"]
        if self.env_file:
            args += ["--env-file", self.env_file]
        return args


def task_name(workdir: str, given: Optional[str] = None) -> str:
    """``--name``, or ``oeleo-`` and the working folder's name (one task per instrument folder)."""
    if given is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", given):
            raise ConfigError(
                f"--name {given!r}: expected letters, digits, '.', '_' or '-' (at most 64, no spaces)"
            )
        return given
    folder = PureWindowsPath(workdir).name if "\\" in workdir else PurePosixPath(workdir).name
    slug = re.sub(r"[^a-z0-9]+", "-", folder.lower()).strip("-")[:48]
    return f"oeleo-{slug}" if slug else "oeleo"


@dataclass(frozen=True)
class TaskFile:
    path: str
    data: bytes


@dataclass
class TaskPlan:
    """Everything ``install`` writes and runs, and how ``remove`` and ``status`` undo and show it."""

    platform: str
    task: Task
    files: List[TaskFile]
    install: List[List[str]]
    remove: List[List[str]]
    status: List[List[str]]
    notes: List[str] = field(default_factory=list)
    # Run before ``install``, their failure ignored: unloading a version installed before.
    unload: List[List[str]] = field(default_factory=list)


# -- Windows Task Scheduler ----------------------------------------------------------------
def _iso_duration(seconds: float) -> str:
    """``PT5M``, ``PT1H30M``, ``P1D``: an xs:duration of whole seconds."""
    total = int(round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = "P" + (f"{days}D" if days else "")
    clock = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "") + (f"{secs}S" if secs else "")
    return text + ("T" + clock if clock else ("" if days else "T0S"))


def _sub(parent: ET.Element, tag: str, text: Optional[str] = None) -> ET.Element:
    element = ET.SubElement(parent, tag)
    if text is not None:
        element.text = text
    return element


def _trigger(parent: ET.Element, kind: str, start: datetime.datetime) -> ET.Element:
    """A trigger with the base elements in the schema's order: Enabled, StartBoundary (the
    rest: EndBoundary, Repetition, ExecutionTimeLimit, then the kind's own, come after)."""
    trigger = _sub(parent, kind)
    _sub(trigger, "Enabled", "true")
    _sub(trigger, "StartBoundary", start.strftime("%Y-%m-%dT%H:%M:%S"))
    return trigger


def _repetition(trigger: ET.Element, every_minutes: int, duration: Optional[str] = None) -> None:
    repetition = _sub(trigger, "Repetition")
    _sub(repetition, "Interval", _iso_duration(every_minutes * 60))
    if duration is not None:
        _sub(repetition, "Duration", duration)
    _sub(repetition, "StopAtDurationEnd", "false")


def _windows_schedules(cron: Cron) -> List[Tuple[str, List[Tuple[str, List[str]]]]]:
    """The calendar schedules (ScheduleByDay/Week/Month/MonthDayOfWeek and their lists) that
    give the days of ``cron``, cron's rule included: with both day fields restricted, a day
    that matches either runs."""
    all_days = len(cron.days) == 31
    all_weekdays = len(cron.weekdays) == 7
    all_months = len(cron.months) == 12
    months = [MONTH_NAMES[m - 1] for m in sorted(cron.months)]
    weekdays = [DAY_NAMES[d] for d in sorted(cron.weekdays)]
    by_month = ("ScheduleByMonth", [("DaysOfMonth", [str(d) for d in sorted(cron.days)]), ("Months", months)])
    by_weekday: Tuple[str, List[Tuple[str, List[str]]]]
    if all_months:
        by_weekday = ("ScheduleByWeek", [("WeeksInterval", []), ("DaysOfWeek", weekdays)])
    else:
        weeks = ["1", "2", "3", "4", "Last"]
        by_weekday = (
            "ScheduleByMonthDayOfWeek",
            [("Weeks", weeks), ("DaysOfWeek", weekdays), ("Months", months)],
        )
    if all_days and all_weekdays:
        return [("ScheduleByDay", [("DaysInterval", [])])] if all_months else [by_month]
    if cron.day_star or cron.weekday_star:
        if not all_days and not all_weekdays:
            raise ConfigError(
                f"--cron {cron.expression!r}: Task Scheduler cannot run on days that match both a "
                "day-of-month step and a weekday list; name the days in one field"
            )
        return [by_weekday] if all_days else [by_month]
    return [by_month, by_weekday]


def _add_schedule(trigger: ET.Element, schedule: Tuple[str, List[Tuple[str, List[str]]]]) -> None:
    kind, lists = schedule
    element = _sub(trigger, kind)
    for name, values in lists:
        if name in ("DaysInterval", "WeeksInterval"):
            _sub(element, name, "1")
            continue
        holder = _sub(element, name)
        for value in values:
            child = "Day" if name == "DaysOfMonth" else ("Week" if name == "Weeks" else value)
            node = _sub(holder, child)
            if name in ("DaysOfMonth", "Weeks"):
                node.text = value


def _cron_runs(cron: Cron) -> List[Tuple[int, int, Optional[str]]]:
    """A day's runs as (hour, minute, repetition): a stretch of hours with every N minutes
    (N dividing 60) becomes one start with ``Repetition``; other times one start each."""
    minutes = sorted(cron.minutes)
    step = minutes[1] - minutes[0] if len(minutes) > 1 else 60
    regular = (
        60 % step == 0
        and minutes[0] < step
        and minutes == list(range(minutes[0], 60, step))
        and len(minutes) > 1
    )
    if not regular:
        return [(hour, minute, None) for hour in sorted(cron.hours) for minute in minutes]
    runs: List[Tuple[int, int, Optional[str]]] = []
    hours = set(cron.hours)
    # A stretch of hours may run on across midnight only where every day runs: with days or
    # weekdays named (22-6 on 1-5), Friday's 22:00 must not run on into Saturday, nor
    # Monday's 0:00 be left out: the stretch is cut at midnight, each part a start of its own.
    every_day = cron.day_star and cron.weekday_star and len(cron.months) == 12
    wraps = every_day and 0 in hours and 23 in hours
    starts = [h for h in sorted(hours) if (h - 1) % 24 not in hours or (h == 0 and not wraps)]
    starts = starts or [0]  # every hour of every day
    for start in starts:
        length = 1
        while length < 24 and (start + length) % 24 in hours and (start + length < 24 or wraps):
            length += 1
        # Started at start:m0, repeated every step minutes, the last run at (start+length-1):(60-step+m0).
        duration = f"PT{length * 60 - step}M30S"
        runs.append((start, minutes[0], f"{step}|{duration}"))
    return runs


def windows_task_xml(task: Task, now: Optional[datetime.datetime] = None) -> bytes:
    """The task in Task Scheduler's XML (schema 1.2, UTF-16 as ``schtasks /XML`` reads it):
    run whether the user is logged on or not (a stored password), no second instance while
    one runs, started when a start was missed (the PC was off)."""
    now = (now or datetime.datetime.now()).replace(microsecond=0)
    root = ET.Element("Task", {"version": "1.2", "xmlns": TASK_NS})
    info = _sub(root, "RegistrationInfo")
    _sub(info, "Description", f"oeleo: {task.when.describe()}, in {task.workdir}")
    _sub(info, "URI", "\\" + task.name)
    triggers = _sub(root, "Triggers")
    when = task.when
    if when.watch:
        _trigger(triggers, "BootTrigger", now)
    elif when.every is not None:
        minutes = when.every / 60
        if minutes < 1 or minutes != int(minutes):
            raise ConfigError(
                f"--every {format_duration(when.every)}: Task Scheduler repeats a task in whole minutes, "
                "at least 1m; for more often use --watch"
            )
        start = now.replace(second=0) + datetime.timedelta(minutes=1)
        _repetition(_trigger(triggers, "TimeTrigger", start), int(minutes))
    else:
        assert when.cron is not None
        schedules = _windows_schedules(when.cron)
        runs = _cron_runs(when.cron)
        if len(runs) * len(schedules) > WINDOWS_MAX_TRIGGERS:
            raise ConfigError(
                f"--cron {when.cron.expression!r}: Task Scheduler would need "
                f"{len(runs) * len(schedules)} triggers (at most {WINDOWS_MAX_TRIGGERS}); "
                "use fewer times, a step such as */10, or --every"
            )
        for schedule in schedules:
            for hour, minute, repeat in runs:
                start = now.replace(hour=hour, minute=minute, second=0)
                trigger = _trigger(triggers, "CalendarTrigger", start)
                if repeat is not None:
                    step, duration = repeat.split("|")
                    _repetition(trigger, int(step), duration)
                _add_schedule(trigger, schedule)
    principals = _sub(root, "Principals")
    principal = ET.SubElement(principals, "Principal", {"id": "Author"})
    _sub(principal, "UserId", task.user or "%USERDOMAIN%\\%USERNAME%")
    _sub(principal, "LogonType", "Password")  # whether the user is logged on or not; shares reachable
    _sub(principal, "RunLevel", "LeastPrivilege")
    settings = _sub(root, "Settings")
    _sub(settings, "MultipleInstancesPolicy", "IgnoreNew")
    _sub(settings, "DisallowStartIfOnBatteries", "false")
    _sub(settings, "StopIfGoingOnBatteries", "false")
    _sub(settings, "AllowHardTerminate", "true")
    _sub(settings, "StartWhenAvailable", "true")
    _sub(settings, "RunOnlyIfNetworkAvailable", "false")
    _sub(settings, "AllowStartOnDemand", "true")
    _sub(settings, "Enabled", "true")
    _sub(settings, "Hidden", "false")
    _sub(settings, "ExecutionTimeLimit", "PT0S" if when.watch else "P3D")
    if when.watch:
        restart = _sub(settings, "RestartOnFailure")
        _sub(restart, "Interval", "PT1M")
        _sub(restart, "Count", "255")
    actions = ET.SubElement(root, "Actions", {"Context": "Author"})
    action = _sub(actions, "Exec")
    _sub(action, "Command", task.python)
    _sub(action, "Arguments", subprocess.list2cmdline(task.arguments))
    _sub(action, "WorkingDirectory", task.workdir)
    ET.indent(root)
    text = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-16"?>\n' + text + "\n").encode("utf-16")


def _windows_plan(task: Task, env: Mapping[str, str], now: Optional[datetime.datetime]) -> TaskPlan:
    base = PureWindowsPath(env.get("LOCALAPPDATA") or "%LOCALAPPDATA%")
    xml_path = str(base / "oeleo" / "tasks" / f"{task.name}.xml")
    user = task.user or "%USERDOMAIN%\\%USERNAME%"
    install = [["schtasks", "/Create", "/F", "/TN", task.name, "/XML", xml_path, "/RU", user, "/RP", "*"]]
    notes = [
        "schtasks asks for your Windows password: the task runs whether you are logged on or not, "
        "and reaches network shares as you"
    ]
    if task.when.watch:
        install.append(["schtasks", "/Run", "/TN", task.name])
    return TaskPlan(
        platform="windows",
        task=task,
        files=[TaskFile(xml_path, windows_task_xml(task, now))],
        install=install,
        remove=[["schtasks", "/Delete", "/F", "/TN", task.name]],
        status=[["schtasks", "/Query", "/TN", task.name, "/V", "/FO", "LIST"]],
        notes=notes,
    )


# -- systemd (Linux) -----------------------------------------------------------------------
def _systemd_quote(word: str) -> str:
    """One word of ExecStart: quoted when it needs to be; ``%`` doubled (systemd's specifiers)."""
    word = word.replace("%", "%%")
    if word and not re.search(r'[\s"\'\\;$]', word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _calendar_field(values: Iterable[int], full: int, width: int = 2) -> str:
    values = sorted(values)
    return "*" if len(values) == full else ",".join(f"{v:0{width}d}" for v in values)


def on_calendar(cron: Cron) -> List[str]:
    """systemd ``OnCalendar=`` values for ``cron`` (two when cron's rule says a day matching
    either the day of month or the weekday runs: systemd's own fields must all match)."""
    clock = f"{_calendar_field(cron.hours, 24)}:{_calendar_field(cron.minutes, 60)}:00"
    months = _calendar_field(cron.months, 12)
    days = _calendar_field(cron.days, 31)
    weekdays = ",".join(DAY_NAMES[d][:3] for d in sorted(cron.weekdays))
    by_day = f"*-{months}-{days} {clock}"
    by_weekday = f"{weekdays} *-{months}-* {clock}"
    if len(cron.weekdays) == 7:
        return [by_day]
    if cron.day_star or cron.weekday_star:
        return [f"{weekdays} *-{months}-{days} {clock}"]
    return [by_day, by_weekday]


def systemd_units(task: Task) -> Dict[str, str]:
    """The service (and, unless ``--watch``, its timer), by file name."""
    command = " ".join(_systemd_quote(word) for word in [task.python, *task.arguments])
    workdir = task.workdir.replace("%", "%%")
    unit = f"[Unit]\nDescription=oeleo: {task.when.describe()}, in {workdir}\n"
    if task.when.watch:
        service = (
            unit + "After=network-online.target\nWants=network-online.target\n\n"
            "[Service]\nType=simple\n"
            f"WorkingDirectory={workdir}\nExecStart={command}\n"
            "Restart=on-failure\nRestartSec=30\n"
            # 2 is a configuration error: starting again would only fail again.
            "RestartPreventExitStatus=2\n"
            "SuccessExitStatus=129 130 143\n\n"
            "[Install]\nWantedBy=default.target\n"
        )
        return {f"{task.name}.service": service}
    service = (
        unit + "\n[Service]\nType=oneshot\n"
        f"WorkingDirectory={workdir}\nExecStart={command}\n"
        "SuccessExitStatus=129 130 143\n"
    )
    timer = f"[Unit]\nDescription=oeleo: {task.when.describe()} (timer of {task.name}.service)\n\n[Timer]\n"
    if task.when.every is not None:
        seconds = max(1, int(round(task.when.every)))
        timer += f"OnActiveSec=10s\nOnUnitActiveSec={seconds}s\n"
    else:
        assert task.when.cron is not None
        timer += "".join(f"OnCalendar={spec}\n" for spec in on_calendar(task.when.cron))
        timer += "Persistent=true\n"  # a run missed while the PC was off runs at the next start
    timer += "AccuracySec=1s\n\n[Install]\nWantedBy=timers.target\n"
    return {f"{task.name}.service": service, f"{task.name}.timer": timer}


def _systemd_plan(task: Task, env: Mapping[str, str]) -> TaskPlan:
    config = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    folder = Path(config) / "systemd" / "user"
    units = systemd_units(task)
    files = [TaskFile(str(folder / name), text.encode()) for name, text in units.items()]
    main = f"{task.name}.service" if task.when.watch else f"{task.name}.timer"
    user = env.get("USER") or getpass.getuser()
    return TaskPlan(
        platform="linux",
        task=task,
        files=files,
        install=[
            ["systemctl", "--user", "daemon-reload"],
            ["systemctl", "--user", "enable", main],
            ["systemctl", "--user", "restart", main],  # a task installed again runs as it is now
        ],
        remove=[["systemctl", "--user", "disable", "--now", main]],
        status=[["systemctl", "--user", "status", "--no-pager", *units]],
        notes=[
            f"to run while you are logged out (and after a reboot, before you log in): "
            f"loginctl enable-linger {user}",
            f"its output: journalctl --user -u {task.name}.service",
        ],
    )


# -- launchd (macOS) -----------------------------------------------------------------------
def calendar_intervals(cron: Cron) -> List[Dict[str, int]]:
    """launchd ``StartCalendarInterval`` entries: a key per restricted field (a missing key
    is launchd's wildcard), one entry per combination; Weekday 0 is Sunday."""
    fields: List[Tuple[str, List[int], int]] = [
        ("Month", sorted(cron.months), 12),
        ("Hour", sorted(cron.hours), 24),
        ("Minute", sorted(cron.minutes), 60),
    ]
    by_day = ("Day", sorted(cron.days), 31)
    by_weekday = ("Weekday", sorted((d + 1) % 7 for d in cron.weekdays), 7)
    if len(cron.weekdays) == 7:
        groups = [fields + [by_day]]
    elif cron.day_star or cron.weekday_star:
        groups = [fields + [by_day, by_weekday]]
    else:
        groups = [fields + [by_day], fields + [by_weekday]]
    entries: List[Dict[str, int]] = []
    for group in groups:
        combos: List[Dict[str, int]] = [{}]
        for key, values, full in group:
            if len(values) == full:
                continue
            combos = [dict(c, **{key: v}) for c in combos for v in values]
            if len(combos) > LAUNCHD_MAX_INTERVALS:
                break
        entries.extend(combos)
    if len(entries) > LAUNCHD_MAX_INTERVALS:
        raise ConfigError(
            f"--cron {cron.expression!r}: launchd would need more than {LAUNCHD_MAX_INTERVALS} "
            "calendar entries; use fewer times, or --every"
        )
    return entries


def launchd_plist(task: Task, log_file: str) -> bytes:
    agent: Dict[str, object] = {
        "Label": _launchd_label(task),
        "ProgramArguments": [task.python, *task.arguments],
        "WorkingDirectory": task.workdir,
        "StandardOutPath": log_file,
        "StandardErrorPath": log_file,
        "ProcessType": "Background",
    }
    when = task.when
    if when.watch:
        agent["RunAtLoad"] = True
        agent["KeepAlive"] = {"SuccessfulExit": False}  # started again when it fails, not when stopped
        agent["ThrottleInterval"] = 30
    elif when.every is not None:
        agent["RunAtLoad"] = True
        agent["StartInterval"] = max(1, int(round(when.every)))
    else:
        assert when.cron is not None
        agent["StartCalendarInterval"] = calendar_intervals(when.cron)
    return plistlib.dumps(agent)


def _launchd_label(task: Task) -> str:
    return f"org.oeleo.{task.name}"


def _launchd_plan(task: Task, env: Mapping[str, str]) -> TaskPlan:
    home = Path(env.get("HOME") or Path.home())
    plist = home / "Library" / "LaunchAgents" / f"{_launchd_label(task)}.plist"
    log_file = str(home / "Library" / "Logs" / "oeleo" / f"{task.name}.log")
    uid = os.getuid() if hasattr(os, "getuid") else 501
    target = f"gui/{uid}"
    return TaskPlan(
        platform="macos",
        task=task,
        files=[TaskFile(str(plist), launchd_plist(task, log_file))],
        install=[["launchctl", "bootstrap", target, str(plist)]],
        unload=[["launchctl", "bootout", f"{target}/{_launchd_label(task)}"]],
        remove=[["launchctl", "bootout", f"{target}/{_launchd_label(task)}"]],
        status=[["launchctl", "print", f"{target}/{_launchd_label(task)}"]],
        notes=[
            f"its output: {log_file}",
            "a launchd agent runs while you are logged in",
        ],
    )


# -- putting it together -------------------------------------------------------------------
def plan_task(
    when: When,
    platform: str,
    workdir: str,
    env_file: Optional[str],
    python: str,
    name: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    now: Optional[datetime.datetime] = None,
) -> TaskPlan:
    """What installing the task on ``platform`` writes and runs."""
    if platform not in PLATFORMS:
        raise ConfigError(f"--platform {platform!r}: expected one of {', '.join(PLATFORMS)}")
    env = os.environ if env is None else env
    user = ""
    if platform == "windows" and env.get("USERNAME"):
        user = f"{env['USERDOMAIN']}\\{env['USERNAME']}" if env.get("USERDOMAIN") else env["USERNAME"]
    task = Task(task_name(workdir, name), when, python, workdir, env_file, user)
    if platform == "windows":
        return _windows_plan(task, env, now)
    if platform == "macos":
        return _launchd_plan(task, env)
    return _systemd_plan(task, env)


def existing_plan(
    platform: str, workdir: str, name: Optional[str], env: Optional[Mapping[str, str]] = None
) -> TaskPlan:
    """The plan of a task as installed, for ``remove`` and ``status``: its names and files
    (what it runs does not matter there)."""
    return _with_installed_files(plan_task(When(every=300), platform, workdir, None, "python", name, env))


def _with_installed_files(plan: TaskPlan) -> TaskPlan:
    """A systemd plan's remove and status commands name the units that are there."""
    if plan.platform != "linux":
        return plan
    folder = Path(plan.files[0].path).parent
    service, timer = folder / f"{plan.task.name}.service", folder / f"{plan.task.name}.timer"
    main = timer.name if timer.exists() or not service.exists() else service.name
    present = [p.name for p in (service, timer) if p.exists()] or [service.name, timer.name]
    plan.files = [TaskFile(str(folder / n), b"") for n in present]
    plan.remove = [["systemctl", "--user", "disable", "--now", main]]
    plan.status = [["systemctl", "--user", "status", "--no-pager", *present]]
    return plan


def shown(command: Sequence[str], platform: str) -> str:
    """A command as a person would type it on ``platform``."""
    return subprocess.list2cmdline(list(command)) if platform == "windows" else shlex.join(command)


def user_bus(env: Mapping[str, str]) -> bool:
    """Whether ``systemctl --user`` can reach a user manager here (a login session's bus)."""
    if env.get("DBUS_SESSION_BUS_ADDRESS"):
        return True
    runtime = env.get("XDG_RUNTIME_DIR") or (f"/run/user/{os.getuid()}" if hasattr(os, "getuid") else "")
    return bool(runtime) and os.path.exists(os.path.join(runtime, "bus"))


Say = Callable[[str], None]
Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def _run(commands: List[List[str]], platform: str, say: Say, runner: Runner) -> None:
    for command in commands:
        say(f"running: {shown(command, platform)}")
        try:
            done = runner(command, check=False, text=True)
        except FileNotFoundError:
            raise OeleoError(f"{command[0]}: not found on this computer") from None
        if done.returncode != 0:
            raise OeleoError(f"{shown(command, platform)} failed (exit status {done.returncode})")


def can_run_here(platform: str, env: Mapping[str, str]) -> Optional[str]:
    """None if the plan's commands can run on this computer, else why not (said to the user)."""
    if platform != current_platform():
        return f"this computer is not {platform}"
    if platform == "linux" and not user_bus(env):
        return "there is no systemd user session here (no user bus in XDG_RUNTIME_DIR)"
    return None


def install(
    plan: TaskPlan, say: Say, runner: Runner = subprocess.run, env: Optional[Mapping[str, str]] = None
) -> bool:
    """Write the plan's files and run its commands; False when the commands could not be run
    here (the files are written and ``say`` tells the commands to run)."""
    env = os.environ if env is None else env
    for item in plan.files:
        path = Path(item.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(item.data)
        except OSError as exc:
            raise ConfigError(f"{item.path}: cannot write it ({exc.strerror or exc})") from None
        say(f"wrote {item.path}")
    why = can_run_here(plan.platform, env)
    if why is not None:
        say(f"not started: {why}; to start it, run:")
        for command in plan.install:
            say(f"  {shown(command, plan.platform)}")
        return False
    for command in plan.unload:
        runner(command, check=False, text=True, capture_output=True)
    _run(plan.install, plan.platform, say, runner)
    return True


def remove(
    plan: TaskPlan, say: Say, runner: Runner = subprocess.run, env: Optional[Mapping[str, str]] = None
) -> None:
    """Stop and unregister the task, then delete its files."""
    env = os.environ if env is None else env
    why = can_run_here(plan.platform, env)
    if why is None:
        _run(plan.remove, plan.platform, say, runner)
    else:
        say(f"not unregistered: {why}; run: " + "; ".join(shown(c, plan.platform) for c in plan.remove))
    for item in plan.files:
        path = Path(item.path)
        if path.exists():
            path.unlink()
            say(f"removed {item.path}")
    if plan.platform == "linux" and why is None:
        _run([["systemctl", "--user", "daemon-reload"]], plan.platform, say, runner)


def describe_plan(plan: TaskPlan) -> List[str]:
    """``--print``: the files (in full) and the commands, as lines."""
    lines = [f"# {plan.task.name}: {plan.task.when.describe()} ({plan.platform})"]
    for item in plan.files:
        encoding = "utf-16" if item.data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8"
        lines.append(f"# file {item.path}")
        lines.extend(item.data.decode(encoding).rstrip("\n").splitlines())
    lines.append("# then run")
    lines.extend(shown(command, plan.platform) for command in plan.install)
    lines.extend(f"# {note}" for note in plan.notes)
    return lines
