"""The SSH scenario: oeleo's ssh connector against rsync, rclone and the published oeleo 0.7.0.

Standalone (the shared harness is benchmarks/run.py). It starts a throwaway OpenSSH server
on 127.0.0.1 (tests/servers.py: the one the tests use), makes the workloads and times, with
the median of ``--repeat`` runs, an initial copy into an empty destination of:

- ``oeleo``: ``python -m oeleo run --connector ssh`` (key login, settings from OELEO_*, the
  default workers, ``OELEO_LOG_DIR`` set as users set it);
- ``oeleo-w4``: the same with ``OELEO_WORKERS=4`` (four SFTP channels on one connection);
- ``oeleo-sftp``: ``oeleo`` against a second server whose login runs no commands
  (``ForceCommand internal-sftp``, the dedicated login docs/ssh.md recommends): every file over
  SFTP, verified by reading it back (information: issue 9's targets judge ``oeleo``);
- ``rsync``: ``rsync -a -e "ssh -p PORT -i KEY ..."``;
- ``rclone``: ``rclone copy --checksum`` to an sftp remote defined by RCLONE_CONFIG_SSHBENCH_*
  variables, with MD5SUM_COMMAND/SHA1SUM_COMMAND so it hashes on the server;
- ``oeleo-0.7.0``: the published ``ssh_worker`` as its README runs it
  (``benchmarks/.venv-oeleo07``, made with ``pip install oeleo==0.7.0`` when missing).

Workloads: ``small`` (1,000 files of 8 KiB in 10 folders) and ``large`` (2 files of
128 MiB). Every run gets a fresh destination folder (and database); each result is checked
against the source outside the timed region, and the destinations are deleted after the
workload's repetitions (ext4 creates files slower for a while after many deletions). Wall
time and the CPU time of the tool's process and its children on this machine (``os.wait4``),
and apart from it the server's: the CPU of sshd, its sessions of the run and what they ran
(sftp-server, the shell, cat, md5sum, rsync), from a cgroup the harness puts sshd in
(``benchmarks.run.CpuGroup``; none without cgroups or root), read once the last session ended.
The table is printed and the JSON written to
``benchmarks/results/ssh-<YYYY-MM-DD>.json``.

    python benchmarks/ssh_bench.py                     # everything, medians of 3
    python benchmarks/ssh_bench.py --tools oeleo,rsync --repeat 5
    python benchmarks/ssh_bench.py --quick             # 200 small files, 2 x 16 MiB, 1 run
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
if str(REPO) not in sys.path:  # run as `python benchmarks/ssh_bench.py` too
    sys.path.insert(0, str(REPO))

import servers  # noqa: E402  (tests/servers.py: the throwaway sshd)

from benchmarks.delay_proxy import behind_delay  # noqa: E402  (--rtt-ms: a link with latency)
from benchmarks.run import CpuGroup  # noqa: E402  (the shared harness's)

KiB, MiB = 1024, 1024 * 1024
VENV07 = REPO / "benchmarks" / ".venv-oeleo07"
RESULTS = REPO / "benchmarks" / "results"
TOOLS = ("oeleo", "oeleo-w4", "oeleo-sftp", "rsync", "rclone", "oeleo-0.7.0")
# (workload, peer, limit, wording): oeleo's median over the peer's, issue 9's targets.
TARGETS = (
    ("small", "rsync", 2.0, "within {limit:g}x of {peer}"),
    ("large", "rsync", 1.2, "within {limit:g}x of {peer}"),
    ("large", "rclone", 1.0, "faster than {peer}"),
)

DRIVER_07 = """
import sys
from oeleo.workers import ssh_worker

# As the published README's ssh example: check, filter, run.
worker = ssh_worker(
    db_name=sys.argv[3],
    base_directory_from=sys.argv[1],
    base_directory_to=sys.argv[2],
    extension=".dat",
    include_subdirs=True,
    external_subdirs=True,
)
worker.connect_to_db()
try:
    worker.filter_local()
    worker.run()
finally:
    worker.close()
"""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- workloads -------------------------------------------------------------------------
def make_workload(root: Path, files: int, size: int, folders: int, seed: int) -> Dict[str, int]:
    rng = random.Random(seed)
    made = {}
    for i in range(files):
        relpath = f"run-{i % folders:02d}/file_{i:05d}.dat" if folders > 1 else f"file_{i:05d}.dat"
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            left = size
            while left:
                piece = min(left, MiB)
                handle.write(rng.randbytes(piece))
                left -= piece
        made[relpath] = size
    return made


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def check_copy(source: Path, dest: Path, expected: Dict[str, int]) -> Optional[str]:
    """None when ``dest`` holds every source file with the same content, else why not."""
    for relpath, size in expected.items():
        copy = dest / relpath
        if not copy.is_file():
            return f"{relpath} missing"
        if copy.stat().st_size != size:
            return f"{relpath} has {copy.stat().st_size} bytes, not {size}"
        if md5_of(copy) != md5_of(source / relpath):
            return f"{relpath} differs"
    return None


# -- tools -----------------------------------------------------------------------------
def ensure_oeleo07() -> Optional[str]:
    python = VENV07 / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m, oeleo.workers; print(m.version('oeleo'))"]
    if python.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip() == "0.7.0":
        return None
    say("installing oeleo 0.7.0 into benchmarks/.venv-oeleo07")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV07)], check=True)
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "oeleo==0.7.0"], capture_output=True, text=True
    )
    if done.returncode != 0:
        return f"pip install oeleo==0.7.0 failed: {done.stderr[-300:]}"
    return None


class Bench:
    def __init__(
        self,
        server: servers.SSHServer,
        work: Path,
        sftp_only: Optional[servers.SSHServer] = None,
        groups: Optional[Dict[int, CpuGroup]] = None,
    ) -> None:
        self.server = server
        self.sftp_only = sftp_only  # the server of oeleo-sftp: a login that runs no commands
        self.work = work
        self.ssh = (
            f"ssh -p {server.port} -i {server.keys['ed25519']} -o UserKnownHostsFile={server.known_hosts} "
            "-o BatchMode=yes -o StrictHostKeyChecking=yes"
        )
        self.empty_config = work / "rclone.conf"
        self.empty_config.write_text("")
        self.cwd = work / "cwd"
        self.cwd.mkdir()
        self.trash: List[str] = []  # destinations to delete after a workload's repetitions
        self.groups = groups or {}  # sshd's pid -> the cgroup of it and its sessions

    def base_env(self) -> Dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith(("OELEO_", "RCLONE_"))}

    def server_for(self, tool: str) -> servers.SSHServer:
        if tool == "oeleo-sftp":
            assert self.sftp_only is not None
            return self.sftp_only
        return self.server

    def command(self, tool: str, source: Path, dest: str, db: Path) -> Tuple[List[str], Dict[str, str]]:
        s = self.server_for(tool)
        env = self.base_env()
        if tool in ("oeleo", "oeleo-w4", "oeleo-sftp"):
            # As users run it: the default workers (two SFTP channels for large files, small
            # files one at a time) and a log folder, kept across repetitions as a user's is.
            logs = self.work / f"{tool}-logs"
            logs.mkdir(exist_ok=True)
            env.update(s.env(OELEO_LOG_DIR=str(logs)))
            if tool == "oeleo-w4":
                env["OELEO_WORKERS"] = "4"
            env["PYTHONPATH"] = str(REPO)
            argv = [sys.executable, "-m", "oeleo", "run", "--connector", "ssh"]
            return argv + ["--from", str(source), "--to", dest, "--db", str(db)], env
        if tool == "rsync":
            return ["rsync", "-a", "-e", self.ssh, f"{source}/", f"{s.user}@{s.host}:{dest}/"], env
        if tool == "rclone":
            prefix = "RCLONE_CONFIG_SSHBENCH_"
            env.update(
                {
                    prefix + "TYPE": "sftp",
                    prefix + "HOST": s.host,
                    prefix + "PORT": str(s.port),
                    prefix + "USER": s.user,
                    prefix + "KEY_FILE": s.keys["ed25519"],
                    prefix + "KNOWN_HOSTS_FILE": s.known_hosts,
                    prefix + "MD5SUM_COMMAND": "md5sum",
                    prefix + "SHA1SUM_COMMAND": "sha1sum",
                }
            )
            argv = ["rclone", "copy", "--config", str(self.empty_config), "--checksum"]
            return argv + [str(source), f"sshbench:{dest}"], env
        if tool == "oeleo-0.7.0":
            driver = self.work / "driver07.py"
            driver.write_text(DRIVER_07)
            env.update(
                {
                    # Fabric reads the port from the host string; 0.7 has no port setting.
                    "OELEO_EXTERNAL_HOST": f"{s.host}:{s.port}",
                    "OELEO_USERNAME": s.user,
                    "OELEO_KEY_FILENAME": s.keys["ed25519"],
                    "OELEO_PASSWORD": "unused",  # 0.7's SSHConnector requires the variable
                }
            )
            return [str(VENV07 / "bin" / "python"), str(driver), str(source), dest, str(db)], env
        raise ValueError(tool)

    def run(self, tool: str, source: Path, expected: Dict[str, int], timeout: float) -> Dict[str, Any]:
        dest = self.server_for(tool).new_folder(tool)
        db = self.work / f"{tool}-{Path(dest).name}.db"
        argv, env = self.command(tool, source, dest, db)
        log = self.work / f"{tool}-{Path(dest).name}.log"
        os.sync()  # the previous run's dirty pages are not written on this run's time
        sshd = self.server_for(tool).pid
        group = self.groups.get(sshd)
        server_before = group.cpu_s() if group else None
        started = time.perf_counter()
        with open(log, "w") as out:
            proc = subprocess.Popen(argv, cwd=self.cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
            status, cpu = wait_with_cpu(proc, timeout)
        wall = time.perf_counter() - started
        server_cpu = server_cpu_s(sshd, group, server_before)
        problem = None if status == 0 else f"exit status {status} (log: {log})"
        problem = problem or check_copy(source, Path(dest), expected)
        self.trash.append(dest)
        return {
            "tool": tool,
            "wall": wall,
            "cpu": cpu,
            "server_cpu": server_cpu,
            "ok": problem is None,
            "problem": problem,
            "command": argv,
        }

    def empty_trash(self) -> None:
        """Delete the destinations of the runs so far (untimed), and wait for the disk: after
        a workload's repetitions, not after each run, since ext4 creates files slower for a
        while after many deletions, and that cost landed on whichever tool ran next."""
        for dest in self.trash:
            shutil.rmtree(dest, ignore_errors=True)
        self.trash = []
        os.sync()


def wait_with_cpu(proc: subprocess.Popen, timeout: float) -> Tuple[int, Optional[float]]:
    """The exit status of ``proc`` (-1 when killed at ``timeout``) and the CPU seconds (user +
    system) it and the children it waited for used, from ``os.wait4``: on this machine only;
    the server's sshd and sftp-server are not counted."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            return -1, None
        time.sleep(0.002)


def server_cpu_s(
    sshd: int, group: Optional[CpuGroup], before: Optional[float], timeout: float = 30.0
) -> Optional[float]:
    """The CPU seconds the server spent on a run: sshd and its sessions, with the sftp-server,
    shell, cat, md5sum or rsync they ran (all in sshd's cgroup), read once the listening sshd
    has no session left; None without cgroups, or when a session outlives ``timeout``."""
    if group is None or before is None:
        return None
    deadline = time.monotonic() + timeout
    while servers.children_of(sshd):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)  # polling for the condition: the session's exit
    after = group.cpu_s()
    return None if after is None else round(after - before, 3)


# -- main ------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--workloads", default="small,large")
    parser.add_argument("--small-files", type=int, default=1000)
    parser.add_argument("--large-files", type=int, default=2)
    parser.add_argument("--large-mib", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="200 small files, 2 x 16 MiB, 1 run")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument(
        "--rtt-ms",
        type=float,
        default=0.0,
        help="put a proxy that adds this round trip (ms) between every tool and the server",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.small_files, args.large_mib, args.repeat = 200, 16, 1
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown:
        parser.error(f"unknown tools {unknown}; known: {', '.join(TOOLS)}")
    skipped: Dict[str, str] = {}
    for tool, program in (("rsync", "rsync"), ("rclone", "rclone")):
        if tool in tools and shutil.which(program) is None:
            skipped[tool] = f"{program} not found (apt-get install {program})"
    if "oeleo-0.7.0" in tools:
        problem = ensure_oeleo07()
        if problem:
            skipped["oeleo-0.7.0"] = problem
    tools = [t for t in tools if t not in skipped]

    work = Path(tempfile.mkdtemp(prefix="oeleo-ssh-bench-"))
    server = servers.start_sshd()
    sftp_only = servers.start_sshd(shell=False) if "oeleo-sftp" in tools else None
    # Each sshd in a cgroup of its own before any login: its sessions' CPU is counted there.
    groups = {s.pid: CpuGroup("oeleo-bench-sshd", s.pid) for s in (server, sftp_only) if s is not None}
    samples: List[Dict[str, Any]] = []
    proxies: List[Any] = []
    try:
        if args.rtt_ms > 0:  # every tool connects through a proxy that delays each byte
            real = (server, sftp_only)
            server, proxy = behind_delay(real[0], args.rtt_ms, work)
            proxies.append(proxy)
            if real[1] is not None:
                sftp_only, proxy = behind_delay(real[1], args.rtt_ms, work)
                proxies.append(proxy)
        workloads: Dict[str, Tuple[Path, Dict[str, int]]] = {}
        for name in args.workloads.split(","):
            root = work / name
            if name == "small":
                files = make_workload(root, args.small_files, 8 * KiB, 10, args.seed)
            elif name == "large":
                files = make_workload(root, args.large_files, args.large_mib * MiB, 1, args.seed + 1)
            else:
                parser.error(f"unknown workload {name}")
            workloads[name] = (root, files)
        bench = Bench(server, work, sftp_only, groups)
        for name, (root, files) in workloads.items():
            for repetition in range(args.repeat):
                for tool in tools:  # interleaved: a slow minute of the machine falls on all
                    sample = bench.run(tool, root, files, args.timeout)
                    sample.update(workload=name, repetition=repetition, load=os.getloadavg()[0])
                    samples.append(sample)
                    state = "ok" if sample["ok"] else f"FAILED: {sample['problem']}"
                    cpu = f"{sample['cpu']:6.2f}" if sample["cpu"] is not None else "     -"
                    wall = f"{sample['wall']:8.2f}"
                    say(f"{name:5} {tool:12} run {repetition + 1}: {wall} s  cpu {cpu} s  {state}")
                    if name != "small":  # a few large files: deleted at once, not gigabytes kept
                        bench.empty_trash()
            bench.empty_trash()
    finally:
        for proxy in proxies:
            proxy.kill()
            proxy.wait()
        servers.stop_sshd(server)
        if sftp_only is not None:
            servers.stop_sshd(sftp_only)
        for group in groups.values():
            group.close()
        shutil.rmtree(work, ignore_errors=True)

    rows = summarise(samples)
    targets = evaluate(rows)
    print_table(rows, targets)
    payload = {
        "machine": {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "nproc": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "tools": {t: first_line([t, "--version"]) for t in ("rsync", "rclone") if shutil.which(t)},
            "ssh": first_line(["ssh", "-V"]),
            "sshd": first_line(["/usr/sbin/sshd", "-V"]),
            "paramiko": first_line([sys.executable, "-c", "import paramiko; print(paramiko.__version__)"]),
            "oeleo_commit": first_line(["git", "-C", str(REPO), "rev-parse", "HEAD"]),
        },
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "skipped_tools": skipped,
        "summary": rows,
        "targets": targets,
        "samples": samples,
    }
    suffix = ("-quick" if args.quick else "") + (f"-rtt{args.rtt_ms:g}ms" if args.rtt_ms else "")
    out = args.out or RESULTS / f"ssh-{datetime.date.today().isoformat()}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    say(f"wrote {out}")
    return 0 if all(s["ok"] for s in samples) else 1


def first_line(argv: List[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except OSError:
        return ""
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else ""


def summarise(samples: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    rows = []
    keys = sorted({(s["workload"], s["tool"]) for s in samples}, key=lambda k: (k[0], TOOLS.index(k[1])))
    for workload, tool in keys:
        walls = [s["wall"] for s in samples if (s["workload"], s["tool"]) == (workload, tool) and s["ok"]]
        cpus, server_cpus = (
            [
                s[key]
                for s in samples
                if (s["workload"], s["tool"]) == (workload, tool) and s["ok"] and s.get(key) is not None
            ]
            for key in ("cpu", "server_cpu")
        )
        runs = [s for s in samples if (s["workload"], s["tool"]) == (workload, tool)]
        rows.append(
            {
                "workload": workload,
                "tool": tool,
                "median_s": statistics.median(walls) if walls else None,
                "min_s": min(walls) if walls else None,
                "max_s": max(walls) if walls else None,
                "median_cpu_s": statistics.median(cpus) if cpus else None,
                "median_server_cpu_s": statistics.median(server_cpus) if server_cpus else None,
                "ok_runs": len(walls),
                "runs": len(runs),
            }
        )
    for row in rows:
        oeleo = next((r for r in rows if r["workload"] == row["workload"] and r["tool"] == "oeleo"), None)
        if oeleo and oeleo["median_s"] and row["median_s"]:
            row["oeleo_over_tool"] = oeleo["median_s"] / row["median_s"]
    return rows


def evaluate(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Issue 9's SSH targets: small at most 2x rsync; large at most 1.2x rsync and faster
    than rclone."""
    out = []
    find: Callable[[str, str], Optional[Dict[str, Any]]] = lambda w, t: next(  # noqa: E731
        (r for r in rows if r["workload"] == w and r["tool"] == t and r["median_s"]), None
    )
    for workload, peer, limit, wording in TARGETS:
        for tool in ("oeleo", "oeleo-w4"):
            ours, theirs = find(workload, tool), find(workload, peer)
            if ours is None or theirs is None:
                continue
            ratio = ours["median_s"] / theirs["median_s"]
            out.append(
                {
                    "target": f"{workload}: {tool} {wording.format(limit=limit, peer=peer)}",
                    "measured": round(ratio, 2),
                    "met": ratio <= limit if limit != 1.0 else ratio < 1.0,
                }
            )
    return out


def print_table(rows: List[Dict[str, Any]], targets: List[Dict[str, Any]]) -> None:
    print(
        f"{'workload':8} {'tool':12} {'median s':>9} {'min s':>8} {'max s':>8} {'cpu s':>7} "
        f"{'server cpu s':>12} {'oeleo/tool':>10} {'runs':>5}"
    )
    for r in rows:
        ratio = f"{r['oeleo_over_tool']:.2f}" if r.get("oeleo_over_tool") else "-"
        med = f"{r['median_s']:.2f}" if r["median_s"] is not None else "failed"
        lo = f"{r['min_s']:.2f}" if r["min_s"] is not None else "-"
        hi = f"{r['max_s']:.2f}" if r["max_s"] is not None else "-"
        runs = f"{r['ok_runs']}/{r['runs']}"
        cpu = f"{r['median_cpu_s']:.2f}" if r.get("median_cpu_s") is not None else "-"
        served = f"{r['median_server_cpu_s']:.2f}" if r.get("median_server_cpu_s") is not None else "-"
        print(
            f"{r['workload']:8} {r['tool']:12} {med:>9} {lo:>8} {hi:>8} {cpu:>7} {served:>12} "
            f"{ratio:>10} {runs:>5}"
        )
    for t in targets:
        print(f"target {t['target']}: {t['measured']}x -> {'met' if t['met'] else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
