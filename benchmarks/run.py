"""Benchmark harness: ``oeleo run`` against oeleo 0.7.0, rsync, rclone and cp (with and without
making the copy durable: ``rsync -a --fsync``, ``cp -r`` then ``sync -f``).

Run from the repository root::

    python -m benchmarks.run                 # full sizes, 3 repetitions (several minutes)
    python -m benchmarks.run --quick         # a tenth of the sizes, 2 repetitions: under a minute
    python benchmarks/run.py --tools oeleo,rsync-checksum --workloads small --scenarios initial

Workloads (deterministic content from ``--seed``, made in a temporary folder):
  small  5,000 files of 8 KiB in 50 subfolders (``--files N`` changes the count)
  large  4 files of 256 MiB
  mixed  both together
  flat   the small files plus 16 files of 256 MiB (4 GiB), re-run only, for oeleo, oeleo
         0.7.0 and rclone --checksum: shows that a re-run's time does not grow with bytes
Scenarios:
  initial   copy into an empty destination (the destination, and the tool's database,
            are deleted before every repetition, outside the timed region; for ``small``,
            moved aside and deleted after the repetitions, so that no run follows 5,000 deletions)
  rerun     run again with nothing changed (every repetition on the synced destination)
  changed1  1 % of the files (at least one of each kind) rewritten with new content, same
            size, newer mtime, before every repetition (outside the timed region); then run
  startup   ``oeleo --help`` and ``oeleo --version`` (and bare ``python -c pass`` as a floor)
Tools run interleaved (A B C ... A B C ...); each has its own destination (and database).
oeleo runs as users run it: in a folder with a ``.env`` that holds its settings (the
published README's: from, to, extension, database, log folder) and ``OELEO_LOG_DIR`` set, so
each run appends to its ``oeleo.log``; the oeleo 0.7.0 driver starts 0.7's own log file
(``start_logger()``, which reads ``OELEO_LOG_DIR``) as its README's scripts do.
Wall time is measured around the child; CPU time (user+sys) and peak RSS come from
``os.wait4`` of that child, which includes the children it waited for (rsync's forks).
Before every timed run the harness calls ``sync()`` so that one tool's dirty pages are not
written back on the next tool's time; source files are in the page cache (warm reads).
After every run the destination is checked against the source (names and sizes, contents of
small and of changed files), outside the timed region.

Results: a table (rich) and JSON in ``benchmarks/results/<YYYY-MM-DD>.json`` (``--quick``:
``<YYYY-MM-DD>-quick.json``) or ``--out PATH``, with machine facts and every raw sample.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import importlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"
VENV07 = BENCH_DIR / ".venv-oeleo07"
OELEO07_VERSION = "0.7.0"

KiB = 1024
MiB = 1024 * KiB
SMALL_FILES = 5000
SMALL_SIZE = 8 * KiB
SMALL_FOLDERS = 50
LARGE_FILES = 4
LARGE_SIZE = 256 * MiB
CHANGED_FRACTION = 0.01
EXTENSION = ".dat"

WORKLOADS = ("small", "large", "mixed", "flat")
# "flat": the small files plus 4 GiB of large ones, re-run only: a re-run's time must not grow
# with the bytes already copied. Only these tools run it (the others have no books to show).
FLAT_LARGE_FILES = 16
FLAT_SCENARIOS = ("rerun",)
FLAT_TOOLS = ("oeleo", "oeleo-0.7.0", "rclone-checksum")
SCENARIOS = ("initial", "rerun", "changed1")
STARTUP = "startup"
STARTUP_COMMANDS = ("help", "version", "python -c pass")
TOOLS = (
    "oeleo",
    "oeleo-sha256",
    "oeleo-0.7.0",
    "rsync",
    "rsync-checksum",
    "rsync-fsync",
    "rclone",
    "rclone-checksum",
    "cp",
    "cp-sync",
    "oeleo-baseline",
)
TOOL_SCENARIOS: Dict[str, Tuple[str, ...]] = {
    "oeleo": SCENARIOS + (STARTUP,),
    # The same oeleo with OELEO_CHECKSUM=sha256 (md5 is the default, as in 0.7's books): what
    # the books' algorithm costs a first copy. Information, not a peer.
    "oeleo-sha256": ("initial",),
    "oeleo-0.7.0": SCENARIOS,
    "rsync": SCENARIOS,
    "rsync-checksum": SCENARIOS,
    # The durable peers: a copy that books its files must have them on disk before the row
    # says so, and these two pay that price too (rsync fsyncs each file; sync -f is one
    # syncfs of the destination's file system, as oeleo's batches).
    "rsync-fsync": SCENARIOS,
    "rclone": SCENARIOS,
    "rclone-checksum": SCENARIOS,
    "cp": ("initial",),
    "cp-sync": ("initial",),
    # oeleo at another commit (--baseline REV), run as oeleo is, in the same sitting: the
    # ratios of the oeleo row to it say what a change did. Only with --baseline.
    "oeleo-baseline": SCENARIOS,
}
DEBIAN_PACKAGES = {
    "rsync": "rsync",
    "rsync-checksum": "rsync",
    "rsync-fsync": "rsync",
    "rclone": "rclone",
    "rclone-checksum": "rclone",
}
STARTUP_MIN_REPEAT = 5
DEFAULT_REPEAT = 3
QUICK_REPEAT = 2  # --quick must finish within a minute; oeleo 0.7.0 alone takes ~10 s a round

# The script that drives the published oeleo 0.7.0 the way its README shows: start_logger()
# (a log file in OELEO_LOG_DIR), load the .env, a simple_worker, connect_to_db, filter_local,
# run (and close). include_subdirs/external_subdirs make it walk the subfolders and keep the
# same layout on the destination.
OELEO07_DRIVER = '''\
"""Drive oeleo 0.7.0 as its README shows (written by benchmarks/run.py)."""
import sys
from pathlib import Path

import dotenv
from oeleo.utils import start_logger
from oeleo.workers import simple_worker


def main():
    start_logger()
    dotenv.load_dotenv()
    src, dst, db, extension = sys.argv[1:5]
    worker = simple_worker(
        base_directory_from=Path(src),
        base_directory_to=Path(dst),
        db_name=db,
        extension=extension,
        include_subdirs=True,
        external_subdirs=True,
    )
    worker.connect_to_db()
    try:
        worker.filter_local()
        worker.run()
    finally:
        worker.close()


if __name__ == "__main__":
    main()
'''


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ setup
def run_quiet(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def first_line(argv: Sequence[str], env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None) -> str:
    try:
        out = run_quiet(argv, timeout=60, env=env, cwd=cwd).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out[0].strip() if out else "unknown"


def ensure_debian_tools(tools: Sequence[str]) -> Dict[str, str]:
    """Install rsync/rclone with apt-get when missing. Returns {tool: reason} for tools that
    cannot run."""
    missing = sorted(
        {DEBIAN_PACKAGES[t] for t in tools if t in DEBIAN_PACKAGES and not shutil.which(DEBIAN_PACKAGES[t])}
    )
    if missing:
        if os.name == "posix" and os.geteuid() == 0 and shutil.which("apt-get"):
            say(f"installing {' '.join(missing)} with apt-get")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
            if run_quiet(cmd, env=env).returncode != 0:
                run_quiet(["apt-get", "update"], env=env)
                result = run_quiet(cmd, env=env)
                if result.returncode != 0:
                    say(result.stdout[-2000:])
        else:
            say(
                f"NOTE: {' '.join(missing)} missing and this is not root: install them with "
                f"`sudo apt-get install -y {' '.join(missing)}`; their rows are skipped"
            )
    skipped: Dict[str, str] = {}
    for tool in tools:
        program = DEBIAN_PACKAGES.get(tool)
        if program and not shutil.which(program):
            skipped[tool] = f"{program} is not installed (apt-get install -y {program})"
    if "cp" in tools and not shutil.which("cp"):
        skipped["cp"] = "cp not found"
    if "rsync-fsync" in tools and "rsync-fsync" not in skipped and "--fsync" not in help_text("rsync"):
        # --fsync came with rsync 3.2.4; Debian 12's apt has 3.2.7
        skipped["rsync-fsync"] = f"{first_line(['rsync', '--version'])} has no --fsync (rsync >= 3.2.4 has)"
    if "cp-sync" in tools and "--file-system" not in help_text("sync"):
        skipped["cp-sync"] = "sync has no -f/--file-system (GNU coreutils >= 8.24 has)"
    return skipped


def help_text(program: str) -> str:
    if not shutil.which(program):
        return ""
    try:
        return run_quiet([program, "--help"], timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def oeleo07_installed(python: Path) -> bool:
    if not python.exists():
        return False
    probe = run_quiet(
        [str(python), "-c", "import importlib.metadata as m, oeleo.workers; print(m.version('oeleo'))"],
        timeout=120,
    )
    return probe.returncode == 0 and probe.stdout.strip().splitlines()[-1:] == [OELEO07_VERSION]


def ensure_oeleo07() -> Optional[str]:
    """Make (once) benchmarks/.venv-oeleo07 with oeleo 0.7.0 from PyPI. Returns an error or None."""
    python = venv_python(VENV07)
    if oeleo07_installed(python):
        return None
    say(f"installing oeleo {OELEO07_VERSION} into {VENV07.relative_to(REPO)} (once)")
    base = shutil.which("python3") or sys.executable
    if not python.exists():
        result = run_quiet([base, "-m", "venv", str(VENV07)])
        if result.returncode != 0 and base != sys.executable:
            result = run_quiet([sys.executable, "-m", "venv", str(VENV07)])
        if result.returncode != 0:
            return f"python -m venv failed: {result.stdout[-500:]}"
    result = run_quiet(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            f"oeleo=={OELEO07_VERSION}",
        ]
    )
    if result.returncode != 0 or not oeleo07_installed(python):
        return f"pip install oeleo=={OELEO07_VERSION} failed: {result.stdout[-1000:]}"
    return None


def read_proc(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def process_cpu_s(pid: int) -> Optional[float]:
    """User + system CPU seconds a running process has used so far, all its threads
    (``/proc/PID/stat``); None where there is no /proc (or the process is gone)."""
    text = read_proc(f"/proc/{pid}/stat")
    if ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class CpuGroup:
    """A control group holding a process and everything it starts from now on (a server and
    its sessions): their CPU in all, whether or not anyone waited for them. cgroup v2 (its
    ``cpu.stat``) where mounted, else v1's ``cpuacct``; ``cpu_s()`` is None where neither can
    be used (not root, no cgroups)."""

    def __init__(self, name: str, pid: int) -> None:
        self.folder: Optional[Path] = None
        self.v2 = False
        self.procs = "tasks"  # the file that lists (and takes) the group's processes
        mounts = [line.split() for line in read_proc("/proc/mounts").splitlines()]
        v2 = [(Path(m[1]), True) for m in mounts if len(m) >= 4 and m[2] == "cgroup2"]
        v1 = [
            (Path(m[1]), False)
            for m in mounts
            if len(m) >= 4 and m[2] == "cgroup" and "cpuacct" in m[3].split(",")
        ]
        for root, is_v2 in v2 + v1:  # v2 first, where both are mounted
            folder, procs = root / f"{name}-{os.getpid()}", "cgroup.procs" if is_v2 else "tasks"
            try:
                folder.mkdir(exist_ok=True)
                (folder / procs).write_text(str(pid))
            except OSError:
                try:
                    folder.rmdir()  # made, but it could not take the process: not left behind
                except OSError:
                    pass
                continue
            self.folder, self.v2, self.procs = folder, is_v2, procs
            break

    def cpu_s(self) -> Optional[float]:
        if self.folder is None:
            return None
        if self.v2:
            for line in read_proc(str(self.folder / "cpu.stat")).splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
            return None
        text = read_proc(str(self.folder / "cpuacct.usage")).strip()
        return int(text) / 1e9 if text else None

    def close(self) -> None:
        """Hand what is left in the group back to its parent, and remove it."""
        if self.folder is None:
            return
        for pid in read_proc(str(self.folder / self.procs)).split():
            try:
                (self.folder.parent / self.procs).write_text(pid)
            except OSError:
                pass
        try:
            self.folder.rmdir()
        except OSError:
            pass
        self.folder = None


def filesystem_of(path: Path) -> str:
    best, fstype = "", "unknown"
    for line in read_proc("/proc/mounts").splitlines():
        parts = line.split()
        if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
            best, fstype = parts[1], f"{parts[2]} ({parts[0]} on {parts[1]})"
    return fstype


def machine_facts(workdir: Path, oeleo_env: Dict[str, str], cwd: Path) -> Dict[str, Any]:
    meminfo = {}
    for line in read_proc("/proc/meminfo").splitlines():
        key, _, value = line.partition(":")
        meminfo[key] = value.strip()
    cpu_model = ""
    for line in read_proc("/proc/cpuinfo").splitlines():
        if line.lower().startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count()
    commit = git_head()
    dirty = run_quiet(
        ["git", "--no-optional-locks", "-C", str(REPO), "status", "--porcelain", "--", "oeleo"]
    ).stdout.strip()
    facts: Dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "nproc": os.cpu_count(),
        "cpus_usable": affinity,
        "cpu_model": cpu_model,
        "memory_total": meminfo.get("MemTotal", "unknown"),
        "platform": platform.platform(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "workdir": str(workdir),
        "workdir_filesystem": filesystem_of(workdir),
        "oeleo_git_commit": commit or "unknown",
        "oeleo_git_dirty": bool(dirty),
        "oeleo_git_dirty_paths": dirty.splitlines(),
        "tool_versions": {
            "oeleo": first_line([sys.executable, "-m", "oeleo", "--version"], oeleo_env, cwd),
            "oeleo-0.7.0": first_line(
                [
                    str(venv_python(VENV07)),
                    "-c",
                    "import importlib.metadata as m, sys; print('oeleo', m.version('oeleo'), 'on python',"
                    " sys.version.split()[0])",
                ]
            )
            if venv_python(VENV07).exists()
            else "not installed",
            "rsync": first_line(["rsync", "--version"]) if shutil.which("rsync") else "not installed",
            "rclone": first_line(["rclone", "version"]) if shutil.which("rclone") else "not installed",
            "cp": first_line(["cp", "--version"]),
            "sync": first_line(["sync", "--version"]),
        },
    }
    return facts


def git_head() -> str:
    return run_quiet(["git", "-C", str(REPO), "rev-parse", "HEAD"]).stdout.strip() or "unknown"


def snapshot_oeleo(workdir: Path, rev: Optional[str] = None) -> Tuple[Path, str]:
    """Copy the working tree's ``oeleo/`` once (or, with ``rev``, the one of that commit), so
    the whole run measures one version even while people commit, and compile it (an installed
    package has its bytecode). Returns the folder to put on PYTHONPATH and a sha256 of the
    copied sources."""
    root = workdir / ("oeleo-snapshot" if rev is None else "oeleo-baseline")
    if rev is None:
        shutil.copytree(REPO / "oeleo", root / "oeleo", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        root.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", rev, "oeleo"], capture_output=True, check=False
        )
        if archive.returncode != 0:
            raise SystemExit(f"--baseline {rev}: {archive.stderr.decode(errors='replace').strip()}")
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    digest = hashlib.sha256()
    for path in sorted((root / "oeleo").rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    run_quiet([sys.executable, "-m", "compileall", "-q", str(root / "oeleo")])
    return root, digest.hexdigest()


# -------------------------------------------------------------------------------- workloads
class Workload:
    """A source folder with deterministic content, and the 1 % changes applied to it."""

    def __init__(self, name: str, root: Path, n_small: int, n_large: int, large_size: int, seed: int):
        self.name = name
        self.root = root
        self.seed = seed
        self.small: List[Tuple[str, int]] = []
        self.large: List[Tuple[str, int]] = []
        if name in ("small", "mixed", "flat"):
            folders = max(1, min(n_small, round(n_small * SMALL_FOLDERS / SMALL_FILES)))
            for i in range(n_small):
                self.small.append((f"d{i * folders // n_small:03d}/f{i:06d}{EXTENSION}", SMALL_SIZE))
        if name in ("large", "mixed", "flat"):
            for i in range(FLAT_LARGE_FILES if name == "flat" else n_large):
                self.large.append((f"big{i}{EXTENSION}", large_size))
        self._order = {
            kind: random.Random(f"{seed}:{name}:{kind}:order").sample(files, len(files))
            for kind, files in (("small", self.small), ("large", self.large))
        }
        self._cursor = {"small": 0, "large": 0}
        self._changes = 0

    @property
    def files(self) -> List[Tuple[str, int]]:
        return self.small + self.large

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def describe(self) -> str:
        parts = []
        if self.small:
            folders = len({rel.split("/")[0] for rel, _ in self.small})
            parts.append(f"{len(self.small)} files of {self.small[0][1] // KiB} KiB in {folders} subfolders")
        if self.large:
            parts.append(f"{len(self.large)} files of {self.large[0][1] / MiB:g} MiB")
        return " + ".join(parts)

    def create(self) -> float:
        started = time.perf_counter()
        for kind, files in (("small", self.small), ("large", self.large)):
            rng = random.Random(f"{self.seed}:{self.name}:{kind}")
            for rel, size in files:
                write_random(self.root / rel, size, rng)
        return time.perf_counter() - started

    def change(self) -> Tuple[List[str], int]:
        """Rewrite 1 % of the files (at least one of each kind present) with new content of
        the same size and a newer mtime; files are taken in a seeded order so that successive
        changes touch different files where possible."""
        self._changes += 1
        rng = random.Random(f"{self.seed}:{self.name}:change:{self._changes}")
        changed: List[str] = []
        nbytes = 0
        for kind in ("small", "large"):
            order = self._order[kind]
            if not order:
                continue
            k = max(1, round(len(order) * CHANGED_FRACTION))
            for _ in range(k):
                rel, size = order[self._cursor[kind] % len(order)]
                self._cursor[kind] += 1
                path = self.root / rel
                old_mtime = path.stat().st_mtime_ns
                write_random(path, size, rng)
                new_mtime = max(time.time_ns(), old_mtime + 2_000_000_000)
                os.utime(path, ns=(new_mtime, new_mtime))
                changed.append(rel)
                nbytes += size
        return changed, nbytes


def write_random(path: Path, size: int, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        left = size
        while left > 0:
            n = min(left, MiB)
            handle.write(rng.randbytes(n))
            left -= n


def remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def listing(root: Path) -> Dict[str, int]:
    out: Dict[str, int] = {}
    if not root.is_dir():
        return out
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    out[Path(entry.path).relative_to(root).as_posix()] = entry.stat().st_size
    return out


def same_content(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(MiB), fb.read(MiB)
            if ca != cb:
                return False
            if not ca:
                return True


def verify(src: Path, dst: Path, compare: Iterable[str], compare_small: bool) -> Optional[str]:
    """None if dst holds the same files as src (names, sizes; the contents of ``compare`` and,
    with ``compare_small``, of every file up to 1 MiB); else what differs."""
    want, have = listing(src), listing(dst)
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing:
        return f"{len(missing)} files missing on the destination, e.g. {missing[0]}"
    if extra:
        return f"{len(extra)} extra files on the destination, e.g. {extra[0]}"
    wrong = [rel for rel, size in want.items() if have[rel] != size]
    if wrong:
        return f"{len(wrong)} files of the wrong size, e.g. {wrong[0]}"
    names = set(compare)
    if compare_small:
        names.update(rel for rel, size in want.items() if size <= MiB)
    for rel in sorted(names):
        if not same_content(src / rel, dst / rel):
            return f"content differs: {rel}"
    return None


# ------------------------------------------------------------------------------------ tools
class Runner:
    """How each tool is run, where its destination and database are."""

    def __init__(self, workdir: Path, rclone_config: Path, oeleo07_driver: Path, oeleo_path: Path):
        self.workdir = workdir
        self.rclone_config = rclone_config
        self.oeleo07_driver = oeleo07_driver
        self.cwd = workdir / "cwd"  # empty: no .env is read by accident (rsync, cp, start-up)
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("OELEO_", "RCLONE_"))}
        env.pop("PYTHONPATH", None)
        # Installed packages have their bytecode cached; let the children cache the repository's
        # too (a sandbox may set PYTHONDONTWRITEBYTECODE, making every start compile oeleo).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.env = env
        self.oeleo_env = dict(env, PYTHONPATH=str(oeleo_path))
        self.baseline_env = self.oeleo_env  # --baseline REV: oeleo at that commit

    def dest(self, tool: str, workload: str) -> Path:
        return self.workdir / "dst" / workload / tool

    def db(self, tool: str, workload: str) -> Path:
        return self.workdir / "db" / workload / f"{tool}.db"

    def home(self, tool: str, workload: str) -> Path:
        """The folder oeleo (or the 0.7.0 driver) runs in, with its .env."""
        return self.workdir / "run" / workload / tool

    def log_dir(self, tool: str, workload: str) -> Path:
        """OELEO_LOG_DIR of a tool: kept across repetitions, as a user's log folder is (it grows
        and rotates)."""
        return self.workdir / "oeleo-logs" / workload / tool

    def dot_env(self, tool: str, src: Path, workload: str) -> str:
        """The .env a user writes (the published README's, with this workload's folders)."""
        lines = [
            f"OELEO_BASE_DIR_FROM={src}",
            f"OELEO_BASE_DIR_TO={self.dest(tool, workload)}",
            f"OELEO_FILTER_EXTENSION={EXTENSION}",
            f"OELEO_DB_NAME={self.db(tool, workload)}",
            f"OELEO_LOG_DIR={self.log_dir(tool, workload)}",
        ]
        if tool == "oeleo-sha256":
            lines.append("OELEO_CHECKSUM=sha256")
        return "\n".join(lines) + "\n"

    def reset(self, tool: str, workload: str) -> None:
        """An empty destination and no books: what 'initial' starts from.

        The old destination is moved aside (a rename) and deleted by ``empty_trash`` after
        the scenario's repetitions, not here: ext4 (mounted with ``discard`` here) makes file
        creations slower for a while after many deletions (its inode allocator skips
        recently deleted inodes), and that cost landed on whichever tool ran next. Workloads
        with large files (a few inodes, gigabytes of disk) are deleted at once."""
        dest = self.dest(tool, workload)
        if workload != "small":
            remove_tree(dest)
        elif dest.exists():
            trash = self.workdir / "trash"
            trash.mkdir(parents=True, exist_ok=True)
            os.rename(dest, trash / f"{workload}-{tool}-{time.monotonic_ns()}")
        db = self.db(tool, workload)
        for suffix in ("", "-wal", "-shm", "-journal", ".lock"):
            remove_tree(Path(str(db) + suffix))
        db.parent.mkdir(parents=True, exist_ok=True)
        self.dest(tool, workload).parent.mkdir(parents=True, exist_ok=True)

    def empty_trash(self) -> None:
        """Delete the destinations ``reset`` moved aside (untimed), and wait for the disk."""
        remove_tree(self.workdir / "trash")
        os.sync()

    def command(self, tool: str, src: Path, workload: str) -> Tuple[List[str], Dict[str, str], Path]:
        """The command line, environment and working folder of one run of ``tool``."""
        dst, db = self.dest(tool, workload), self.db(tool, workload)
        if tool in ("oeleo", "oeleo-sha256", "oeleo-0.7.0", "oeleo-baseline"):
            # As users run it: settings from the .env in the folder it runs in, OELEO_LOG_DIR
            # set (the README's .env sets it; set in the environment too, where 0.7's
            # start_logger, called before its script loads the .env, looks).
            home = self.home(tool, workload)
            home.mkdir(parents=True, exist_ok=True)
            (home / ".env").write_text(self.dot_env(tool, src, workload))
            self.log_dir(tool, workload).mkdir(parents=True, exist_ok=True)
            log_env = {"OELEO_LOG_DIR": str(self.log_dir(tool, workload))}
            if tool == "oeleo-0.7.0":
                argv = [
                    str(venv_python(VENV07)),
                    str(self.oeleo07_driver),
                    str(src),
                    str(dst),
                    str(db),
                    EXTENSION,
                ]
                return argv, dict(self.env, **log_env), home
            env = self.baseline_env if tool == "oeleo-baseline" else self.oeleo_env
            return [sys.executable, "-m", "oeleo", "run"], dict(env, **log_env), home
        if tool in ("rsync", "rsync-checksum", "rsync-fsync"):
            argv = ["rsync", "-a"] + {
                "rsync": [],
                "rsync-checksum": ["--checksum"],
                "rsync-fsync": ["--fsync"],
            }[tool]
            return argv + [f"{src}/", f"{dst}/"], self.env, self.cwd
        if tool in ("rclone", "rclone-checksum"):
            argv = ["rclone", "copy", "--config", str(self.rclone_config)]
            argv += ["--checksum"] if tool == "rclone-checksum" else []
            return argv + [str(src), str(dst)], self.env, self.cwd
        if tool == "cp":
            return ["cp", "-r", str(src), str(dst)], self.env, self.cwd
        if tool == "cp-sync":  # cp, then one syncfs of the destination's file system
            script = 'cp -r "$1" "$2" && sync -f "$2"'
            return ["sh", "-c", script, "cp-sync", str(src), str(dst)], self.env, self.cwd
        raise ValueError(tool)

    def log_bytes(self, tool: str, workload: str) -> Optional[int]:
        """Bytes in the tool's log folder (oeleo.log and its rotated files), None if it has none."""
        folder = self.log_dir(tool, workload)
        if not folder.is_dir():
            return None
        return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())

    def startup_command(self, what: str) -> Tuple[List[str], Dict[str, str]]:
        if what == "python -c pass":
            return [sys.executable, "-c", "pass"], self.env
        return [sys.executable, "-m", "oeleo", f"--{what}"], self.oeleo_env


def measure(
    argv: Sequence[str], env: Dict[str, str], cwd: Path, log_path: Path, timeout: float
) -> Dict[str, Any]:
    """Run argv once: wall time around it, CPU and peak RSS of the child from os.wait4; and
    how much the whole machine stalled on I/O and CPU meanwhile (Linux PSI), to spot noise."""
    pressure_before = pressure()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with open(log_path, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )
        killer = threading.Timer(timeout, lambda: os.kill(proc.pid, signal.SIGKILL))
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C, SIGTERM: do not leave the child running
            proc.kill()
            proc.wait()
            raise
        finally:
            killer.cancel()
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    pressure_after = pressure()
    stalls = {
        f"{kind}_pressure_s": (pressure_after[kind] - pressure_before[kind]) / 1e6
        for kind in pressure_before
        if kind in pressure_after
    }
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "maxrss_kib": usage.ru_maxrss,
        "peak_rss_mib": usage.ru_maxrss / 1024.0,
        "returncode": proc.returncode,
        "loadavg_1min_before": load,
        **stalls,
    }


def pressure() -> Dict[str, int]:
    """Microseconds some task waited on io / cpu since boot (/proc/pressure), where available."""
    out: Dict[str, int] = {}
    for kind in ("io", "cpu"):
        for line in read_proc(f"/proc/pressure/{kind}").splitlines():
            if line.startswith("some "):
                out[kind] = int(line.rsplit("total=", 1)[1])
    return out


def tail(path: Path, n: int = 1500) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-n:].decode("utf-8", "replace")


def sync_disks() -> None:
    if hasattr(os, "sync"):
        os.sync()


# ------------------------------------------------------------------------------ the bench
class Bench:
    def __init__(self, args: argparse.Namespace, runner: Runner, tools: List[str]):
        self.args = args
        self.runner = runner
        self.tools = tools
        self.samples: List[Dict[str, Any]] = []
        self.synced: Set[Tuple[str, str]] = set()
        self.failures = 0

    def record(self, sample: Dict[str, Any]) -> None:
        self.samples.append(sample)
        ok = sample["ok"]
        if not ok:
            self.failures += 1
        label = f"{sample['workload']}/{sample['scenario']} #{sample['rep']}"
        extra = "" if ok else f"  FAILED: {sample.get('error')}"
        say(
            f"  {label:24} {sample['tool']:16} {sample['wall_s']:8.3f} s wall {sample['cpu_s']:8.3f} s cpu "
            f"{sample['peak_rss_mib']:7.1f} MiB{extra}"
        )

    def run_tool(
        self, tool: str, wl: Workload, scenario: str, rep: int, changed: Sequence[str], changed_bytes: int
    ) -> Dict[str, Any]:
        argv, env, cwd = self.runner.command(tool, wl.root, wl.name)
        log_path = self.runner.logs / f"{wl.name}-{scenario}-{rep}-{tool}.log"
        log_before = self.runner.log_bytes(tool, wl.name)
        t0 = time.perf_counter()
        sync_disks()
        synced_in = time.perf_counter() - t0
        sample = measure(argv, env, cwd, log_path, self.args.timeout)
        sample["sync_before_s"] = synced_in
        if log_before is not None:  # what the run wrote to its log folder (after rotation: less)
            sample["log_bytes_before"] = log_before
            sample["log_bytes_after"] = self.runner.log_bytes(tool, wl.name)
            sample["dot_env"] = (cwd / ".env").read_text()
        sample.update(
            tool=tool,
            workload=wl.name,
            scenario=scenario,
            rep=rep,
            argv=argv,
            changed_files=len(changed),
            changed_bytes=changed_bytes,
        )
        error = None
        if sample["returncode"] != 0:
            error = f"exit status {sample['returncode']}: {tail(log_path, 600)}"
        elif not self.args.no_verify:
            t0 = time.perf_counter()
            error = verify(
                wl.root, self.runner.dest(tool, wl.name), changed, compare_small=scenario == "initial"
            )
            sample["verify_s"] = time.perf_counter() - t0
            if error:
                error = f"destination differs from source: {error}; log: {tail(log_path, 600)}"
        sample["ok"] = error is None
        sample["verified"] = error is None and not self.args.no_verify
        if error:
            sample["error"] = error
            self.synced.discard((tool, wl.name))
        else:
            self.synced.add((tool, wl.name))
        return sample

    def prime(self, tool: str, wl: Workload) -> None:
        """Bring a tool's destination in sync (untimed) when 'initial' was not run for it."""
        if (tool, wl.name) in self.synced:
            return
        self.runner.reset(tool, wl.name)
        argv, env, cwd = self.runner.command(tool, wl.root, wl.name)
        measure(argv, env, cwd, self.runner.logs / f"{wl.name}-prime-{tool}.log", self.args.timeout)
        self.synced.add((tool, wl.name))

    def run_workload(self, wl: Workload, scenarios: List[str]) -> None:
        for scenario in SCENARIOS:
            if scenario not in scenarios:
                continue
            if wl.name == "flat" and scenario not in FLAT_SCENARIOS:
                continue
            tools = [t for t in self.tools if scenario in TOOL_SCENARIOS[t]]
            if wl.name == "flat":
                tools = [t for t in tools if t in FLAT_TOOLS]
            if not tools:
                continue
            if scenario != "initial":
                for tool in tools:
                    self.prime(tool, wl)
            say(f"{wl.name}/{scenario}: {', '.join(tools)} x {self.args.repeat}")
            for rep in range(1, self.args.repeat + 1):
                changed: List[str] = []
                changed_bytes = 0
                if scenario == "changed1":
                    changed, changed_bytes = wl.change()
                # Each repetition starts with the next tool: the first run after the harness's
                # own work (making, changing, checking files) is slower here (2.5 s against
                # 1.6 s for the same oeleo, large/initial), and no tool should always pay it.
                turn = (rep - 1) % len(tools)
                for tool in tools[turn:] + tools[:turn]:
                    if scenario == "initial":
                        self.runner.reset(tool, wl.name)
                    self.record(self.run_tool(tool, wl, scenario, rep, changed, changed_bytes))
            self.runner.empty_trash()

    def run_startup(self) -> None:
        repeat = max(self.args.repeat, STARTUP_MIN_REPEAT)
        say(f"startup: oeleo --help, oeleo --version, python -c pass x {repeat}")
        for what in STARTUP_COMMANDS:  # warm-up, untimed (bytecode, file cache)
            argv, env = self.runner.startup_command(what)
            measure(argv, env, self.runner.cwd, self.runner.logs / "startup-warmup.log", 60)
        for rep in range(1, repeat + 1):
            for what in STARTUP_COMMANDS:
                argv, env = self.runner.startup_command(what)
                log_path = self.runner.logs / f"startup-{what.replace(' ', '_')}-{rep}.log"
                sample = measure(argv, env, self.runner.cwd, log_path, 60)
                tool = "python" if what == "python -c pass" else "oeleo"
                scenario = what if tool == "oeleo" else "python -c pass"
                sample.update(tool=tool, workload=STARTUP, scenario=scenario, rep=rep, argv=argv)
                sample["ok"] = sample["returncode"] == 0
                if not sample["ok"]:
                    sample["error"] = f"exit status {sample['returncode']}: {tail(log_path, 600)}"
                self.record(sample)


# ------------------------------------------------------------------------------ reporting
def median(values: List[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def summarise(samples: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    groups: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {}
    for s in samples:
        groups.setdefault((s["workload"], s["scenario"], s["tool"]), []).append(s)
    rows = []
    for (workload, scenario, tool), group in groups.items():
        ok = [s for s in group if s["ok"]]
        use = ok or group
        rows.append(
            {
                "tool": tool,
                "workload": workload,
                "scenario": scenario,
                "n": len(group),
                "ok": len(ok),
                "wall_s": median([s["wall_s"] for s in use]),
                "wall_min_s": min(s["wall_s"] for s in use),
                "wall_max_s": max(s["wall_s"] for s in use),
                "cpu_s": median([s["cpu_s"] for s in use]),
                # user and system CPU apart: on this VM a run's system time can be 3-6x the
                # others' (page-cache and discard work), which decides a median of 3.
                "user_s": median([s["user_s"] for s in use if "user_s" in s]),
                "sys_s": median([s["sys_s"] for s in use if "sys_s" in s]),
                "peak_rss_mib": median([s["peak_rss_mib"] for s in use]),
                "changed_bytes": median([s.get("changed_bytes", 0) for s in use]),
                "io_pressure_s": median([s["io_pressure_s"] for s in use if "io_pressure_s" in s]),
                "cpu_pressure_s": median([s["cpu_pressure_s"] for s in use if "cpu_pressure_s" in s]),
            }
        )
    oeleo = {(r["workload"], r["scenario"]): r["wall_s"] for r in rows if r["tool"] == "oeleo"}
    oeleo_rep = {
        (s["workload"], s["scenario"], s["rep"]): s["wall_s"]
        for s in samples
        if s["tool"] == "oeleo" and s["ok"]
    }
    for r in rows:
        mine = oeleo.get((r["workload"], r["scenario"]))
        r["ratio_oeleo_to_tool"] = mine / r["wall_s"] if mine is not None and r["wall_s"] else None
        # The same ratio per repetition (oeleo and the tool ran back to back), then the median:
        # less sensitive to the machine changing speed between repetitions.
        paired = [
            oeleo_rep[(s["workload"], s["scenario"], s["rep"])] / s["wall_s"]
            for s in groups[(r["workload"], r["scenario"], r["tool"])]
            if s["ok"] and s["wall_s"] and (s["workload"], s["scenario"], s["rep"]) in oeleo_rep
        ]
        r["ratio_paired_median"] = median(paired)

    def key(r: Dict[str, Any]) -> Tuple[int, int, int, str]:
        workloads = list(WORKLOADS) + [STARTUP]
        scenarios = list(SCENARIOS) + list(STARTUP_COMMANDS)
        tools = list(TOOLS) + ["python"]
        return (
            workloads.index(r["workload"]) if r["workload"] in workloads else 99,
            scenarios.index(r["scenario"]) if r["scenario"] in scenarios else 99,
            tools.index(r["tool"]) if r["tool"] in tools else 99,
            r["tool"],
        )

    return sorted(rows, key=key)


def evaluate_targets(rows: List[Dict[str, Any]], n_small: int) -> List[Dict[str, Any]]:
    """The issue's targets, from the medians of this run."""
    wall = {(r["workload"], r["scenario"], r["tool"]): r["wall_s"] for r in rows if r["ok"]}
    rss = {(r["workload"], r["scenario"], r["tool"]): r["peak_rss_mib"] for r in rows if r["ok"]}
    out: List[Dict[str, Any]] = []

    def ratio_target(
        name: str, workload: str, scenario: str, peer: str, limit: float, strict: bool = False
    ) -> None:
        mine, theirs = wall.get((workload, scenario, "oeleo")), wall.get((workload, scenario, peer))
        if mine is None or theirs is None:
            return
        ratio = mine / theirs
        ok = ratio < limit if strict else ratio <= limit
        out.append(
            {
                "target": name,
                "measured": f"oeleo {mine:.3f} s / {peer} {theirs:.3f} s = {ratio:.3f}",
                "limit": f"{'<' if strict else '<='} {limit:g}",
                "value": ratio,
                "met": ok,
            }
        )

    # Issue 9: ratios in one run, oeleo run as users run it (a .env, OELEO_LOG_DIR set).
    ratio_target("small/initial: >= 25x faster than oeleo 0.7.0", "small", "initial", "oeleo-0.7.0", 1 / 25)
    ratio_target("small/initial: <= 0.5x rsync -a --fsync", "small", "initial", "rsync-fsync", 0.5)
    ratio_target("small/initial: <= 2x rsync -a --checksum", "small", "initial", "rsync-checksum", 2.0)
    ratio_target("large/initial: <= 1.2x cp -r + sync -f", "large", "initial", "cp-sync", 1.2)
    for workload in WORKLOADS:
        ratio_target(
            f"{workload}/rerun: faster than rclone --checksum",
            workload,
            "rerun",
            "rclone-checksum",
            1.0,
            strict=True,
        )
        ratio_target(
            f"{workload}/rerun: >= 5x faster than oeleo 0.7.0", workload, "rerun", "oeleo-0.7.0", 1 / 5
        )
    small_rerun = wall.get(("small", "rerun", "oeleo"))
    for workload, what in (("mixed", "1 GiB"), ("flat", "4 GiB")):
        rerun = wall.get((workload, "rerun", "oeleo"))
        if small_rerun is None or rerun is None:
            continue
        limit = small_rerun * 1.2 + 0.05
        out.append(
            {
                "target": f"rerun flat in bytes: {workload} (small + {what} of large files) as fast as small",
                "measured": f"{workload} {rerun:.3f} s vs small {small_rerun:.3f} s",
                "limit": f"<= 1.2 x small + 0.05 s = {limit:.3f} s",
                "value": rerun - small_rerun,
                "met": rerun <= limit,
            }
        )
    for workload in WORKLOADS:
        changed, rerun = wall.get((workload, "changed1", "oeleo")), wall.get((workload, "rerun", "oeleo"))
        cbytes = next(
            (
                r["changed_bytes"]
                for r in rows
                if r["tool"] == "oeleo" and r["workload"] == workload and r["scenario"] == "changed1"
            ),
            None,
        )
        if changed is not None and rerun is not None:
            out.append(
                {
                    "target": f"{workload}/changed1: time grows with the changed bytes (information)",
                    "measured": f"changed1 {changed:.3f} s - rerun {rerun:.3f} s = {changed - rerun:+.3f} s "
                    f"for {cbytes / MiB if cbytes else 0:.1f} MiB changed",
                    "limit": "-",
                    "value": changed - rerun,
                    "met": None,
                }
            )
    for what in ("help", "version"):
        t = wall.get((STARTUP, what, "oeleo"))
        if t is not None:
            out.append(
                {
                    "target": f"start-up: oeleo --{what} < 0.3 s",
                    "measured": f"{t:.3f} s",
                    "limit": "< 0.3 s",
                    "value": t,
                    "met": t < 0.3,
                }
            )
    peaks = [v for (w, _s, tool), v in rss.items() if tool == "oeleo" and w == "small"]
    if peaks:
        peak = max(peaks)
        judged = n_small >= 100_000
        out.append(
            {
                "target": "peak memory < 150 MB with the small workload at 100,000 files",
                "measured": f"{peak:.1f} MiB at {n_small} files",
                "limit": "< 150 MB" if judged else "< 150 MB (judged only with --files 100000)",
                "value": peak,
                "met": (peak * MiB / 1e6 < 150) if judged else None,
            }
        )
    return out


def fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_tables(rows: List[Dict[str, Any]], targets: List[Dict[str, Any]]) -> None:
    headers = [
        "tool",
        "workload",
        "scenario",
        "wall s",
        "min s",
        "user s",
        "sys s",
        "peak RSS MiB",
        "oeleo/tool",
        "paired",
        "ok/n",
        "I/O stall s",
    ]
    lines = []
    for r in rows:
        lines.append(
            [
                r["tool"],
                r["workload"],
                r["scenario"],
                fmt(r["wall_s"], ".3f"),
                fmt(r["wall_min_s"], ".3f"),
                fmt(r["user_s"], ".3f"),
                fmt(r["sys_s"], ".3f"),
                fmt(r["peak_rss_mib"], ".1f"),
                "-"
                if r["tool"] == "oeleo" or r["ratio_oeleo_to_tool"] is None
                else f"{r['ratio_oeleo_to_tool']:.3f}",
                "-"
                if r["tool"] == "oeleo" or r["ratio_paired_median"] is None
                else f"{r['ratio_paired_median']:.3f}",
                f"{r['ok']}/{r['n']}",
                fmt(r["io_pressure_s"], ".2f"),
            ]
        )
    target_lines = [
        [t["target"], t["measured"], t["limit"], {True: "met", False: "NOT met", None: "-"}[t["met"]]]
        for t in targets
    ]
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text without rich
        for title, head, body in (
            ("medians", headers, lines),
            ("targets", ["target", "measured", "limit", ""], target_lines),
        ):
            print(f"\n{title}")
            widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
            for line in [head] + body:
                print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))
        return
    console = Console(width=max(120, shutil.get_terminal_size((120, 20)).columns))
    table = Table(
        title="oeleo benchmarks: medians (oeleo/tool < 1 means oeleo is faster)", box=box.SIMPLE_HEAVY
    )
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i < 3 else "right")
    previous = None
    for r, line in zip(rows, lines):
        if previous is not None and (r["workload"], r["scenario"]) != previous:
            table.add_section()
        previous = (r["workload"], r["scenario"])
        style = "bold" if r["tool"] == "oeleo" else None
        table.add_row(*line, style=style)
    console.print(table)
    if target_lines:
        table = Table(title="the issue's targets", box=box.SIMPLE_HEAVY)
        for h in ("target", "measured", "limit", ""):
            table.add_column(h)
        for line in target_lines:
            colour = {"met": "green", "NOT met": "red"}.get(line[3])
            table.add_row(*line[:3], f"[{colour}]{line[3]}[/{colour}]" if colour else line[3])
        console.print(table)


def print_markdown(rows: List[Dict[str, Any]], targets: List[Dict[str, Any]]) -> None:
    print("| tool | workload | scenario | wall s | CPU s | peak RSS MiB | oeleo/tool |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        ratio = r["ratio_oeleo_to_tool"]
        ratio_text = "-" if r["tool"] == "oeleo" or ratio is None else f"{ratio:.2f}"
        name = f"**{r['tool']}**" if r["tool"] == "oeleo" else r["tool"]
        print(
            f"| {name} | {r['workload']} | {r['scenario']} | {fmt(r['wall_s'], '.3f')} | "
            f"{fmt(r['cpu_s'], '.3f')} | {fmt(r['peak_rss_mib'], '.1f')} | {ratio_text} |"
        )
    if targets:
        print()
        print("| target | measured | limit | |")
        print("| --- | --- | --- | --- |")
        for t in targets:
            met = {True: "met", False: "**not met**", None: "-"}[t["met"]]
            print(f"| {t['target']} | {t['measured']} | {t['limit']} | {met} |")


def report(path: Path, markdown: bool) -> int:
    """Print the tables of a results file again (summary and targets recomputed from its samples)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--report {path}: cannot read it: {exc}") from None
    samples = data.get("samples") if isinstance(data, dict) else None
    if not isinstance(samples, list):
        raise SystemExit(f"--report {path}: not a results file of this harness (no samples)")
    if "harness" not in data and samples:
        # A file of the SSH or S3 scenario: its own module prints it, from its stored summary.
        scenario = "s3" if "bucket" in samples[0] else "ssh"
        module = importlib.import_module(f"benchmarks.{scenario}_bench")
        summary = data.get("summary", [])
        targets = module.evaluate(summary) if scenario == "ssh" else data.get("targets", [])
        module.print_table(summary, targets)
        return 0
    rows = summarise(samples)
    targets = evaluate_targets(rows, data.get("options", {}).get("small_files", SMALL_FILES))
    if markdown:
        print_markdown(rows, targets)
    else:
        print_tables(rows, targets)
    return 0


def write_json(path: Path, payload: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ main
def parse_list(text: Optional[str], known: Sequence[str], what: str) -> List[str]:
    if not text:
        return list(known)
    items = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in items if x not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return [x for x in known if x in items]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark `oeleo run` against oeleo 0.7.0, rsync, rclone and cp. "
        "`python -m benchmarks.run ssh --help`: the SSH scenario (loopback OpenSSH server); "
        "`python -m benchmarks.run s3 --help`: the S3 scenario (moto's S3 server).",
    )
    p.add_argument("--quick", action="store_true", help="a tenth of the sizes (under a minute)")
    p.add_argument(
        "--files", type=int, metavar="N", help=f"files in the small workload (default {SMALL_FILES})"
    )
    p.add_argument(
        "--repeat",
        type=int,
        metavar="K",
        help=f"repetitions per tool and scenario ({DEFAULT_REPEAT}; {QUICK_REPEAT} with --quick)",
    )
    p.add_argument("--tools", metavar="LIST", help=f"comma separated, of: {', '.join(TOOLS)}")
    p.add_argument(
        "--scenarios", metavar="LIST", help=f"comma separated, of: {', '.join(SCENARIOS + (STARTUP,))}"
    )
    p.add_argument("--workloads", metavar="LIST", help=f"comma separated, of: {', '.join(WORKLOADS)}")
    p.add_argument(
        "--out", type=Path, metavar="PATH", help="JSON file (default benchmarks/results/<date>.json)"
    )
    p.add_argument("--seed", type=int, default=20240611, help="seed of the workloads' content")
    p.add_argument(
        "--baseline",
        metavar="REV",
        help="also run oeleo at this git commit (row oeleo-baseline), in the same sitting",
    )
    p.add_argument("--workdir", type=Path, help="make the temporary folder inside this folder")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (workloads, copies, logs)")
    p.add_argument("--no-verify", action="store_true", help="do not compare destinations with sources")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before a tool's run is killed")
    p.add_argument(
        "--report", type=Path, metavar="JSON", help="print the tables of a results file; run nothing"
    )
    p.add_argument("--markdown", action="store_true", help="with --report: print Markdown tables")
    return p


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ssh"]:
        # The SSH scenario (a loopback OpenSSH server): `python -m benchmarks.run ssh [--quick ...]`.
        from benchmarks import ssh_bench

        return ssh_bench.main(argv[1:])
    if argv[:1] == ["s3"]:
        # The S3 scenario (moto's S3 server on 127.0.0.1): `python -m benchmarks.run s3 [--quick ...]`.
        from benchmarks import s3_bench

        return s3_bench.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.report:
        return report(args.report, args.markdown)
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C: kill the child, write the JSON
    if args.repeat is None:
        args.repeat = QUICK_REPEAT if args.quick else DEFAULT_REPEAT
    if args.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    tools = parse_list(args.tools, TOOLS, "tools")
    if args.baseline is None:
        tools = [t for t in tools if t != "oeleo-baseline"]
    elif "oeleo-baseline" not in tools:
        tools.append("oeleo-baseline")
    scenarios = parse_list(args.scenarios, SCENARIOS + (STARTUP,), "scenarios")
    workloads = parse_list(args.workloads, WORKLOADS, "workloads")
    scale = 10 if args.quick else 1
    n_small = args.files if args.files is not None else SMALL_FILES // scale
    if n_small < 1:
        raise SystemExit("--files must be at least 1")
    large_size = LARGE_SIZE // scale
    started = time.perf_counter()

    skipped = ensure_debian_tools(tools)
    if "oeleo-0.7.0" in tools:
        error = ensure_oeleo07()
        if error:
            skipped["oeleo-0.7.0"] = error
    for tool, reason in skipped.items():
        say(f"skipping {tool}: {reason}")
    tools = [t for t in tools if t not in skipped]

    base = Path(tempfile.mkdtemp(prefix="oeleo-bench-", dir=str(args.workdir) if args.workdir else None))
    payload: Dict[str, Any] = {}
    try:
        rclone_config = base / "rclone.conf"
        rclone_config.write_text("")
        driver = base / "oeleo07_driver.py"
        driver.write_text(OELEO07_DRIVER)
        commit_at_snapshot = git_head()
        oeleo_path, oeleo_sha256 = snapshot_oeleo(base)
        runner = Runner(base, rclone_config, driver, oeleo_path)
        if args.baseline is not None:
            baseline_path, _ = snapshot_oeleo(base, args.baseline)
            runner.baseline_env = dict(runner.env, PYTHONPATH=str(baseline_path))
        bench = Bench(args, runner, tools)
        facts = machine_facts(base, runner.oeleo_env, runner.cwd)
        facts["oeleo_git_commit"] = commit_at_snapshot
        facts["oeleo_baseline_commit"] = args.baseline
        facts["oeleo_snapshot_sha256"] = oeleo_sha256
        imported = first_line(
            [sys.executable, "-c", "import oeleo; print(oeleo.__file__)"], runner.oeleo_env, runner.cwd
        )
        facts["oeleo_imported_from"] = imported
        if not imported.startswith(str(oeleo_path)):
            say(f"WARNING: the oeleo children import {imported}, not the snapshot in {oeleo_path}")
        say(
            f"oeleo {facts['tool_versions']['oeleo']} at {facts['oeleo_git_commit'][:12]}"
            f"{' (dirty)' if facts['oeleo_git_dirty'] else ''}; {facts['nproc']} cpus, "
            f"{facts['memory_total']}; "
            f"workdir {base}"
        )
        workload_info: Dict[str, Any] = {}
        interrupted = False
        try:
            if STARTUP in scenarios and "oeleo" in tools:
                bench.run_startup()
            run_scenarios = [s for s in scenarios if s != STARTUP]
            for name in workloads if run_scenarios else []:
                wl = Workload(name, base / "src" / name, n_small, LARGE_FILES, large_size, args.seed)
                seconds = wl.create()
                workload_info[name] = {
                    "description": wl.describe(),
                    "files": len(wl.files),
                    "bytes": wl.total_bytes,
                    "generated_in_s": round(seconds, 3),
                }
                size = wl.total_bytes / MiB
                say(f"workload {name}: {wl.describe()} ({size:.1f} MiB, made in {seconds:.1f} s)")
                bench.run_workload(wl, run_scenarios)
                remove_tree(base / "dst" / name)  # room for the next workload
                remove_tree(wl.root)
        except KeyboardInterrupt:
            interrupted = True
            say("interrupted: writing what was measured so far")
        rows = summarise(bench.samples)
        targets = evaluate_targets(rows, n_small)
        payload = {
            "harness": "benchmarks/run.py",
            "command": [sys.executable, "-m", "benchmarks.run"]
            + list(argv if argv is not None else sys.argv[1:]),
            "options": {
                "quick": args.quick,
                "repeat": args.repeat,
                "small_files": n_small,
                "large_files": LARGE_FILES,
                "large_size": large_size,
                "seed": args.seed,
                "tools": tools,
                "scenarios": scenarios,
                "workloads": workloads,
                "verify": not args.no_verify,
            },
            "interrupted": interrupted,
            "skipped_tools": skipped,
            "machine": facts,
            "workloads": workload_info,
            "notes": [
                "wall: time.perf_counter around the child; cpu: ru_utime+ru_stime and peak RSS: ru_maxrss "
                "from os.wait4 of the child (includes the children it waited for)",
                "sync() before every timed run; source files are in the page cache",
                "initial: destination (and database) deleted before every repetition, untimed "
                "(small: moved aside, deleted after the repetitions)",
                "changed1: a fresh 1 % change (at least one file of each kind) before every repetition, "
                "untimed",
                "ratio_oeleo_to_tool: oeleo's median wall time / the tool's; below 1 oeleo is faster",
                "oeleo, oeleo-sha256 and oeleo-0.7.0 run as users run them: in a folder with a .env "
                "(from, to, extension, database, log folder) and OELEO_LOG_DIR set; the log folder is "
                "kept across repetitions (log_bytes_before/after in each sample)",
                "rsync-fsync: rsync -a --fsync; cp-sync: cp -r, then sync -f on the destination",
            ],
            "summary": rows,
            "targets": targets,
            "samples": bench.samples,
            "elapsed_s": round(time.perf_counter() - started, 1),
        }
        # oeleo is measured from a copy of the working tree taken at the start; say if HEAD moved.
        facts["oeleo_git_commit_end"] = git_head()
        today = _dt.date.today().isoformat()
        suffix = ("-quick" if args.quick else "") + ("-interrupted" if interrupted else "")
        out = args.out or RESULTS_DIR / f"{today}{suffix}.json"
        write_json(out, payload)
        print_tables(rows, targets)
        failed = f", {bench.failures} failed runs" if bench.failures else ""
        say(f"results: {out} ({payload['elapsed_s']} s{failed})")
        if args.keep:
            say(f"kept {base}")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return 1 if bench.failures or interrupted else 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # `python benchmarks/run.py`: make the repository importable
        sys.path.insert(0, str(REPO))
    sys.exit(main())
