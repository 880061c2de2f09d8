"""oeleo task: the Windows Task Scheduler XML, the systemd units and the launchd plist it
makes, checked against the rules that can be checked here (the XML's schema order and
ranges, systemd-analyze, plistlib), and a real install of the systemd units on Linux."""

from __future__ import annotations

import datetime
import plistlib
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path, PureWindowsPath
from typing import Dict, List, Optional

import pytest
from helpers import clean_env, run_oeleo

from oeleo.errors import ConfigError, OeleoError
from oeleo.schedulers.rules import parse_cron
from oeleo.tasks import (
    TASK_NS,
    Task,
    When,
    calendar_intervals,
    install,
    launchd_plist,
    on_calendar,
    plan_task,
    systemd_units,
    task_name,
    windows_task_xml,
)

NS = {"t": TASK_NS}
NOW = datetime.datetime(2026, 12, 1, 11, 7, 42)
WIN_WORKDIR = r"C:\data\local"
WIN_ENV = r"\\server\share\raw\.env"
WIN_PYTHON = r"C:\Program Files\Python39\python.exe"

# Task Scheduler schema: the elements a Task and its Settings may hold (xs:all: any order,
# each once), and the order of a trigger's elements (triggerBaseType's sequence, then the
# kind's own).
TASK_CHILDREN = {"RegistrationInfo", "Triggers", "Settings", "Data", "Principals", "Actions"}
SETTINGS_CHILDREN = {
    "AllowStartOnDemand",
    "RestartOnFailure",
    "MultipleInstancesPolicy",
    "DisallowStartIfOnBatteries",
    "StopIfGoingOnBatteries",
    "AllowHardTerminate",
    "StartWhenAvailable",
    "NetworkProfileName",
    "RunOnlyIfNetworkAvailable",
    "WakeToRun",
    "Enabled",
    "Hidden",
    "DeleteExpiredTaskAfter",
    "IdleSettings",
    "NetworkSettings",
    "ExecutionTimeLimit",
    "Priority",
    "RunOnlyIfIdle",
    "UseUnifiedSchedulingEngine",
    "DisallowStartOnRemoteAppSession",
}
TRIGGER_BASE = ["Enabled", "StartBoundary", "EndBoundary", "Repetition", "ExecutionTimeLimit"]
TRIGGER_ORDER = {
    "TimeTrigger": TRIGGER_BASE + ["RandomDelay"],
    "BootTrigger": TRIGGER_BASE + ["Delay"],
    "CalendarTrigger": TRIGGER_BASE
    + ["RandomDelay", "ScheduleByDay|ScheduleByWeek|ScheduleByMonth|ScheduleByMonthDayOfWeek"],
}
DURATION = re.compile(r"^P(?!$)(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?$")


def local(element: ET.Element) -> str:
    return element.tag.split("}", 1)[1]


def parse_task(data: bytes) -> ET.Element:
    assert data[:2] == b"\xff\xfe", "UTF-16 (little endian, with its mark), as schtasks reads it"
    text = data.decode("utf-16")
    assert text.startswith('<?xml version="1.0" encoding="UTF-16"?>')
    return ET.fromstring(text.split("?>", 1)[1])


def seconds(duration: str) -> int:
    match = DURATION.match(duration)
    assert match, f"not an xs:duration: {duration}"
    days, _, hours, minutes, secs = match.groups()
    return sum(
        int(part[:-1]) * unit
        for part, unit in ((days, 86400), (hours, 3600), (minutes, 60), (secs, 1))
        if part
    )


def check_schema_rules(root: ET.Element) -> None:
    """What Task Scheduler's schema says, as far as it can be checked without Windows."""
    assert local(root) == "Task" and root.get("version") == "1.2"
    children = [local(c) for c in root]
    assert set(children) <= TASK_CHILDREN and len(children) == len(set(children)), children
    assert "Actions" in children, "Actions is required"
    exec_ = root.find("t:Actions/t:Exec", NS)
    assert exec_ is not None and exec_.findtext("t:Command", namespaces=NS)
    settings = root.find("t:Settings", NS)
    names = [local(c) for c in settings]
    assert set(names) <= SETTINGS_CHILDREN and len(names) == len(set(names)), names
    triggers = list(root.find("t:Triggers", NS))
    assert 1 <= len(triggers) <= 48
    for trigger in triggers:
        order = TRIGGER_ORDER[local(trigger)]
        positions = []
        for child in trigger:
            index = next(i for i, names in enumerate(order) if local(child) in names.split("|"))
            positions.append(index)
        assert positions == sorted(positions) and len(set(positions)) == len(positions), local(trigger)
        repetition = trigger.find("t:Repetition", NS)
        if repetition is not None:
            interval = seconds(repetition.findtext("t:Interval", namespaces=NS))
            assert 60 <= interval <= 31 * 86400
            duration = repetition.findtext("t:Duration", namespaces=NS)
            assert duration is None or seconds(duration) >= 60
        start = trigger.findtext("t:StartBoundary", namespaces=NS)
        datetime.datetime.strptime(start, "%Y-%m-%dT%H:%M:%S")
    restart = settings.find("t:RestartOnFailure", NS)
    if restart is not None:
        assert 60 <= seconds(restart.findtext("t:Interval", namespaces=NS)) <= 31 * 86400
        assert 1 <= int(restart.findtext("t:Count", namespaces=NS)) <= 255
    for element in root.iter():
        if local(element) in ("Interval", "Duration", "ExecutionTimeLimit", "Delay"):
            seconds(element.text)


def win_task(when: When) -> Task:
    return Task("oeleo-local", when, WIN_PYTHON, WIN_WORKDIR, WIN_ENV, "LAB\\scientist")


# -- Windows -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "when",
    [When(every=300), When(every=3600), When(watch=True), When(cron=parse_cron("*/10 22-23,0-6 * * *"))],
    ids=["every-5m", "every-1h", "watch", "cron-night"],
)
def test_the_windows_task_keeps_the_schema_rules_and_runs_unattended(when):
    root = parse_task(windows_task_xml(win_task(when), NOW))
    check_schema_rules(root)
    assert root.findtext("t:Principals/t:Principal/t:LogonType", namespaces=NS) == "Password"
    assert root.findtext("t:Principals/t:Principal/t:UserId", namespaces=NS) == "LAB\\scientist"
    assert root.findtext("t:Settings/t:MultipleInstancesPolicy", namespaces=NS) == "IgnoreNew"
    assert root.findtext("t:Settings/t:StartWhenAvailable", namespaces=NS) == "true"
    exec_ = root.find("t:Actions/t:Exec", NS)
    assert exec_.findtext("t:Command", namespaces=NS) == WIN_PYTHON
    assert PureWindowsPath(exec_.findtext("t:WorkingDirectory", namespaces=NS)) == PureWindowsPath(
        "C:/data/local"
    )
    command = "watch" if when.watch else "run"
    assert exec_.findtext("t:Arguments", namespaces=NS) == f"-m oeleo {command} --env-file {WIN_ENV}"


def test_every_5m_repeats_a_time_trigger_without_end():
    root = parse_task(windows_task_xml(win_task(When(every=300)), NOW))
    trigger = root.find("t:Triggers/t:TimeTrigger", NS)
    assert trigger.findtext("t:Repetition/t:Interval", namespaces=NS) == "PT5M"
    assert trigger.find("t:Repetition/t:Duration", NS) is None  # repeated indefinitely
    assert trigger.findtext("t:StartBoundary", namespaces=NS) == "2026-12-01T11:08:00"


def test_watch_starts_at_boot_and_again_after_a_failure_with_no_time_limit():
    root = parse_task(windows_task_xml(win_task(When(watch=True)), NOW))
    assert root.find("t:Triggers/t:BootTrigger", NS) is not None
    assert root.findtext("t:Settings/t:ExecutionTimeLimit", namespaces=NS) == "PT0S"
    assert root.findtext("t:Settings/t:RestartOnFailure/t:Interval", namespaces=NS) == "PT1M"


def windows_runs(root: ET.Element, day: datetime.date) -> List[datetime.datetime]:
    """The start times that the task's calendar triggers give on ``day`` (by the schema's
    meaning of StartBoundary, Repetition and the schedules used here)."""
    runs = []
    for trigger in root.find("t:Triggers", NS):
        start = datetime.datetime.strptime(
            trigger.findtext("t:StartBoundary", namespaces=NS), "%Y-%m-%dT%H:%M:%S"
        )
        first = datetime.datetime.combine(day, start.time())
        week = trigger.find("t:ScheduleByWeek/t:DaysOfWeek", NS)
        month = trigger.find("t:ScheduleByMonth", NS)
        if week is not None and first.strftime("%A") not in {local(d) for d in week}:
            continue
        if month is not None:
            days = {int(d.text) for d in month.find("t:DaysOfMonth", NS)}
            months = {local(m) for m in month.find("t:Months", NS)}
            if first.day not in days or first.strftime("%B") not in months:
                continue
        repetition = trigger.find("t:Repetition", NS)
        if repetition is None:
            runs.append(first)
            continue
        step = seconds(repetition.findtext("t:Interval", namespaces=NS))
        length = seconds(repetition.findtext("t:Duration", namespaces=NS))
        runs.extend(first + datetime.timedelta(seconds=k) for k in range(0, length + 1, step))
    return sorted(runs)


def cron_runs(expression: str, day: datetime.date) -> List[datetime.datetime]:
    cron = parse_cron(expression)
    if not cron.day_matches(day):
        return []
    return sorted(
        datetime.datetime.combine(day, datetime.time(h, m)) for h in cron.hours for m in cron.minutes
    )


@pytest.mark.parametrize(
    "expression",
    [
        "*/10 22-23,0-6 * * *",
        "*/10 22-23,0-6 * * 1-5",  # a night window on weekdays: Friday night stops at midnight
        "*/20 21-23,0-2 1,15 * *",
        "*/15 * * * *",
        "0 22 * * 1-5",
        "30 6,18 1,15 * *",
        "0 6 1 * 1",
        "5,35 8-17 * * *",
    ],
)
def test_windows_triggers_start_at_the_times_cron_names(expression):
    root = parse_task(windows_task_xml(win_task(When(cron=parse_cron(expression))), NOW))
    check_schema_rules(root)
    for offset in range(0, 40):  # weekdays, weekends, the 1st and the 15th of two months
        day = datetime.date(2026, 12, 1) + datetime.timedelta(days=offset)
        runs = windows_runs(root, day)
        # A repetition that runs past midnight belongs to the day it started on.
        starts = [r for r in runs if r.date() == day] + [
            r for r in windows_runs(root, day - datetime.timedelta(days=1)) if r.date() == day
        ]
        assert sorted(set(starts)) == cron_runs(expression, day), (expression, day)


@pytest.mark.parametrize(
    "when,named",
    [
        (When(every=30), "--every 30s"),
        (When(every=90), "--every 90s"),
        (When(cron=parse_cron("7,13,29 * * * *")), "--cron"),
    ],
)
def test_what_task_scheduler_cannot_do_is_refused_naming_the_flag(when, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        windows_task_xml(win_task(when), NOW)


@pytest.mark.parametrize(
    "folder,name",
    [
        (WIN_WORKDIR, "oeleo-local"),
        (r"\\server\share\raw", "oeleo-raw"),
        ("/home/me/XRD data", "oeleo-xrd-data"),
    ],
)
def test_the_task_is_named_after_the_folder(folder, name):
    assert task_name(folder) == name


def test_the_windows_plan_registers_the_xml_and_asks_for_the_password():
    env = {"LOCALAPPDATA": r"C:\Users\scientist\AppData\Local", "USERDOMAIN": "LAB", "USERNAME": "scientist"}
    plan = plan_task(When(every=300), "windows", WIN_WORKDIR, WIN_ENV, WIN_PYTHON, env=env, now=NOW)
    xml_path = PureWindowsPath(plan.files[0].path)
    assert xml_path == PureWindowsPath(r"C:\Users\scientist\AppData\Local\oeleo\tasks\oeleo-local.xml")
    create = plan.install[0]
    assert create[:2] == ["schtasks", "/Create"]
    assert (
        create[create.index("/XML") + 1] == str(xml_path) and create[create.index("/TN") + 1] == "oeleo-local"
    )
    assert create[create.index("/RU") + 1] == "LAB\\scientist" and create[create.index("/RP") + 1] == "*"
    assert plan.remove == [["schtasks", "/Delete", "/F", "/TN", "oeleo-local"]]


# -- launchd -------------------------------------------------------------------------------
LAUNCHD_KEYS = {
    "Label",
    "ProgramArguments",
    "WorkingDirectory",
    "StandardOutPath",
    "StandardErrorPath",
    "ProcessType",
    "RunAtLoad",
    "StartInterval",
    "StartCalendarInterval",
    "KeepAlive",
    "ThrottleInterval",
}


def mac_task(when: When) -> Task:
    return Task("oeleo-raw", when, "/usr/local/bin/python3", "/Users/me/raw", "/Users/me/raw/.env")


def test_the_launchd_agent_runs_every_interval():
    agent = plistlib.loads(launchd_plist(mac_task(When(every=300)), "/Users/me/Library/Logs/oeleo/raw.log"))
    assert set(agent) <= LAUNCHD_KEYS
    assert agent["Label"] == "org.oeleo.oeleo-raw"
    assert agent["ProgramArguments"] == [
        "/usr/local/bin/python3",
        "-m",
        "oeleo",
        "run",
        "--env-file",
        "/Users/me/raw/.env",
    ]
    assert agent["WorkingDirectory"] == "/Users/me/raw"
    assert agent["StartInterval"] == 300 and agent["RunAtLoad"] is True
    assert "KeepAlive" not in agent


def test_the_launchd_watcher_is_kept_alive_when_it_fails():
    agent = plistlib.loads(launchd_plist(mac_task(When(watch=True)), "/tmp/log"))
    assert agent["ProgramArguments"][3] == "watch"
    assert agent["KeepAlive"] == {"SuccessfulExit": False} and agent["RunAtLoad"] is True
    assert "StartInterval" not in agent


@pytest.mark.parametrize(
    "expression,expected",
    [
        ("0 9 * * 1", [{"Hour": 9, "Minute": 0, "Weekday": 1}]),
        ("0 0 * * 0", [{"Hour": 0, "Minute": 0, "Weekday": 0}]),
        ("30 6 1 * *", [{"Day": 1, "Hour": 6, "Minute": 30}]),
        ("0 6 1 * 1", [{"Day": 1, "Hour": 6, "Minute": 0}, {"Hour": 6, "Minute": 0, "Weekday": 1}]),
        ("*/30 * * * *", [{"Minute": 0}, {"Minute": 30}]),
    ],
)
def test_cron_becomes_launchd_calendar_entries(expression, expected):
    entries = calendar_intervals(parse_cron(expression))
    assert sorted(entries, key=sorted_items) == sorted(expected, key=sorted_items)


def sorted_items(entry: Dict[str, int]) -> List:
    return sorted(entry.items())


def test_a_night_window_cron_is_54_launchd_entries():
    entries = calendar_intervals(parse_cron("*/10 22-23,0-6 * * *"))
    assert len(entries) == 54 and all(set(e) == {"Hour", "Minute"} for e in entries)
    agent = plistlib.loads(launchd_plist(mac_task(When(cron=parse_cron("*/10 22-23,0-6 * * *"))), "/tmp/log"))
    assert len(agent["StartCalendarInterval"]) == 54


# -- systemd -------------------------------------------------------------------------------
def analyze_calendar(spec: str, count: int) -> Optional[List[datetime.datetime]]:
    if shutil.which("systemd-analyze") is None:
        return None
    done = subprocess.run(
        ["systemd-analyze", "calendar", f"--iterations={count}", "--base-time=2026-12-01 11:07:42 UTC", spec],
        capture_output=True,
        text=True,
        env=clean_env({"TZ": "UTC"}),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = re.findall(
        r"(?:Next elapse|Iter(?:\.|ation) #\d+): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", done.stdout
    )
    return [datetime.datetime.strptime(t, "%Y-%m-%d %H:%M:%S") for t in found]


@pytest.mark.parametrize(
    "expression",
    ["*/10 22-23,0-6 * * *", "0 22 * * 1-5", "30 6 1,15 * *", "0 6 1 * 1", "15 3 * 2 *", "*/20 8 */2 * *"],
)
def test_on_calendar_elapses_when_the_cron_expression_says(expression):
    cron = parse_cron(expression, tz=datetime.timezone.utc)  # systemd-analyze runs with TZ=UTC
    expected: List[datetime.datetime] = []
    now = datetime.datetime(2026, 12, 1, 11, 7, 42, tzinfo=datetime.timezone.utc).timestamp()
    for _ in range(30):
        now = cron.next_after(now)
        expected.append(datetime.datetime.fromtimestamp(now, datetime.timezone.utc).replace(tzinfo=None))
    got: List[datetime.datetime] = []
    for spec in on_calendar(cron):
        times = analyze_calendar(spec, 30)
        if times is None:
            pytest.skip("systemd-analyze is not installed")
        got.extend(times)
    assert sorted(set(got))[:30] == expected


def unit_sections(text: str) -> Dict[str, Dict[str, List[str]]]:
    sections: Dict[str, Dict[str, List[str]]] = {}
    current = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_the_timer_runs_the_service_every_interval_and_the_watcher_restarts_on_failure():
    units = systemd_units(
        Task("oeleo-raw", When(every=300), "/usr/bin/python3", "/srv/raw data", "/srv/raw data/.env")
    )
    service = unit_sections(units["oeleo-raw.service"])
    assert service["Service"]["Type"] == ["oneshot"]
    assert service["Service"]["WorkingDirectory"] == ["/srv/raw data"]
    assert service["Service"]["ExecStart"] == [
        '/usr/bin/python3 -m oeleo run --env-file "/srv/raw data/.env"'
    ]
    timer = unit_sections(units["oeleo-raw.timer"])
    assert timer["Timer"]["OnUnitActiveSec"] == ["300s"] and timer["Install"]["WantedBy"] == ["timers.target"]
    watch = systemd_units(Task("oeleo-raw", When(watch=True), "/usr/bin/python3", "/srv/raw", None))
    assert list(watch) == ["oeleo-raw.service"]
    service = unit_sections(watch["oeleo-raw.service"])["Service"]
    assert service["Restart"] == ["on-failure"] and service["ExecStart"] == [
        "/usr/bin/python3 -m oeleo watch"
    ]
    assert service["RestartPreventExitStatus"] == ["2"]


@pytest.mark.parametrize(
    "when", [When(every=300), When(cron=parse_cron("*/10 22-23,0-6 * * 1-5")), When(watch=True)], ids=str
)
def test_systemd_analyze_verifies_the_units(tmp_path, when):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (the units are parsed by the test above)")
    workdir = tmp_path / "raw data"
    workdir.mkdir()
    python = shutil.which("python3") or "/usr/bin/python3"
    units = systemd_units(Task("oeleo-raw", when, python, str(workdir), str(workdir / ".env")))
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    done = subprocess.run(
        ["systemd-analyze", "--user", "verify", *(str(tmp_path / n) for n in units)],
        capture_output=True,
        text=True,
        env=clean_env({"XDG_RUNTIME_DIR": str(runtime)}, drop=["DBUS_SESSION_BUS_ADDRESS"]),
        check=False,
    )
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


# -- the command, on this computer ---------------------------------------------------------
@pytest.fixture
def instrument(tmp_path: Path) -> Dict[str, object]:
    folder = tmp_path / "xrd"
    (folder / "src").mkdir(parents=True)
    (folder / ".env").write_text("OELEO_BASE_DIR_FROM=src\nOELEO_BASE_DIR_TO=dst\n")
    runtime = tmp_path / "run"  # a runtime folder without a user bus: no systemctl is called
    runtime.mkdir()
    env = {
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_RUNTIME_DIR": str(runtime),
        "DBUS_SESSION_BUS_ADDRESS": "",
    }
    return {"cwd": folder, "env": env, "units": tmp_path / "config" / "systemd" / "user"}


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="the systemd part runs on Linux")
def test_task_install_writes_the_units_and_says_how_to_start_them_without_a_user_bus(instrument):
    cwd, env, units = instrument["cwd"], instrument["env"], instrument["units"]
    done = run_oeleo("task", "install", "--every", "5m", cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    service, timer = units / "oeleo-xrd.service", units / "oeleo-xrd.timer"
    assert service.is_file() and timer.is_file()
    assert f"--env-file {cwd / '.env'}" in service.read_text()
    assert unit_sections(timer.read_text())["Timer"]["OnUnitActiveSec"] == ["300s"]
    assert "not started: there is no systemd user session here" in done.stderr
    assert "systemctl --user enable oeleo-xrd.timer" in done.stderr
    assert "loginctl enable-linger" in done.stderr

    status = run_oeleo("task", "status", cwd=cwd, env=env)
    assert status.returncode == 1
    assert f"{service}: there" in status.stdout and "systemctl --user status" in status.stdout

    removed = run_oeleo("task", "remove", cwd=cwd, env=env)
    assert removed.returncode == 0, removed.stderr
    assert not service.exists() and not timer.exists()


def test_task_install_print_shows_the_files_and_writes_nothing(instrument):
    cwd, env, units = instrument["cwd"], instrument["env"], instrument["units"]
    done = run_oeleo("task", "install", "--watch", "--print", cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    assert "Restart=on-failure" in done.stdout and "systemctl --user restart oeleo-xrd.service" in done.stdout
    assert not units.exists()
    windows = run_oeleo(
        "task", "install", "--every", "10m", "--print", "--platform", "windows", cwd=cwd, env=env
    )
    assert windows.returncode == 0, windows.stderr
    assert "<Interval>PT10M</Interval>" in windows.stdout and "schtasks /Create" in windows.stdout
    mac = run_oeleo(
        "task", "install", "--cron", "0 22 * * *", "--print", "--platform", "macos", cwd=cwd, env=env
    )
    assert mac.returncode == 0 and "<key>StartCalendarInterval</key>" in mac.stdout
    assert not units.exists()


@pytest.mark.parametrize(
    "args,named",
    [
        (["install"], "--every DURATION, --cron EXPR or --watch"),
        (["install", "--every", "10x"], "--every '10x'"),
        (["install", "--cron", "61 * * * *"], "--cron '61 * * * *'"),
        (["install", "--every", "5m", "--platform", "windows"], "--platform windows"),
        (["install", "--every", "5m", "--name", "a b"], "--name 'a b'"),
        (["remove", "--every", "5m"], "--every"),
    ],
)
def test_bad_task_input_is_one_line_and_status_2(instrument, args, named):
    done = run_oeleo("task", *args, cwd=instrument["cwd"], env=instrument["env"])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], done.stderr


def test_a_task_without_its_folders_in_the_env_file_is_refused(tmp_path, instrument):
    done = run_oeleo("task", "install", "--every", "5m", cwd=tmp_path, env=instrument["env"])
    assert done.returncode == 2 and "OELEO_BASE_DIR_FROM" in done.stderr
    assert not instrument["units"].exists()


def test_with_a_user_bus_install_writes_the_units_then_enables_the_timer(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path), "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus"}
    plan = plan_task(When(every=300), "linux", "/srv/xrd", "/srv/xrd/.env", "/usr/bin/python3", env=env)
    ran: List[List[str]] = []

    def runner(command, **kwargs):
        assert all(Path(f.path).is_file() for f in plan.files), "the units are written first"
        ran.append(command)
        return subprocess.CompletedProcess(command, 0)

    lines: List[str] = []
    assert install(plan, lines.append, runner=runner, env=env) is True
    assert ran == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "oeleo-xrd.timer"],
        ["systemctl", "--user", "restart", "oeleo-xrd.timer"],
    ]

    def failing(command, **kwargs):
        return subprocess.CompletedProcess(command, 1)

    with pytest.raises(OeleoError, match="systemctl --user daemon-reload failed"):
        install(plan, lines.append, runner=failing, env=env)
