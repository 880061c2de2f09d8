"""The watch scenario: how soon ``oeleo watch`` books a new file, and what it costs while idle.

Standalone (the shared harness is benchmarks/run.py). For the native observer (inotify here)
and the polling one (``--poll``, what network shares get), it measures:

- **latency**: ``--files`` files (default 100) written one after another into an empty
  watched folder, each once the one before is booked: the time from a file's last write
  (its modification time) to its row's ``processed_date``; the median and the maximum. The
  file becomes stable ``MIN_STABLE`` (1 s) after its last write, with ``OELEO_MIN_AGE`` 0;
  the target is a row within ``OELEO_MIN_AGE + 2`` s of the last write.
- **idle CPU**: the watcher's user + system CPU time (``/proc/PID/stat``) over ``--idle``
  seconds (default 60; polling: longer when needed, so that one poll of every file falls
  inside) on a tree of ``--tree`` files (default 100,000, in folders of 1,000), all already
  copied and booked, after its first full pass; the target is under 1 % of a core.
- **latency on the large tree**: ``--tree-files`` files (default 3) written into the large
  tree the same way, since a poll of a large tree is spaced out to keep it under 1 % of a core.

The table is printed and the JSON written to ``benchmarks/results/watch-<YYYY-MM-DD>.json``.

    python benchmarks/watch_bench.py
    python benchmarks/watch_bench.py --quick     # 10 files, a 5,000-file tree, 10 s idle
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python benchmarks/watch_bench.py` too
    sys.path.insert(0, str(REPO))

from benchmarks.run import process_cpu_s  # noqa: E402  (the shared harness's)

RESULTS = REPO / "benchmarks" / "results"
OBSERVERS = {"native": "--no-poll", "polling": "--poll"}
STABLE = 1.0  # oeleo.schedulers.watch.MIN_STABLE, with OELEO_MIN_AGE 0
LATENCY_TARGET = 2.0  # seconds after OELEO_MIN_AGE (0 here)
IDLE_TARGET = 0.01  # of one core


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def clean_env() -> Dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("OELEO_")}


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"watch_bench: timed out waiting for {what}")
        time.sleep(0.005)


def booked_at(db: Path, name: str) -> Optional[float]:
    """When ``name``'s row was booked (its processed_date), or None if it has none yet."""
    try:
        connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            row = connection.execute(
                "SELECT processed_date FROM filelist WHERE local_name = ?", (name,)
            ).fetchone()
        finally:
            connection.close()
    except sqlite3.OperationalError:
        return None
    if not row or not row[0]:
        return None
    return datetime.datetime.fromisoformat(str(row[0])).timestamp()


def passes_done(db: Path) -> int:
    try:
        connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return connection.execute("SELECT COUNT(*) FROM oeleo_runs WHERE status != 'running'").fetchone()[
                0
            ]
        finally:
            connection.close()
    except sqlite3.OperationalError:
        return 0


def cpu_seconds(pid: int) -> float:
    used = process_cpu_s(pid)
    if used is None:
        raise RuntimeError(f"no CPU time for process {pid} (/proc/{pid}/stat)")
    return used


class Watcher:
    def __init__(self, src: Path, dst: Path, db: Path, flag: str, log: Path) -> None:
        self.src = src
        self.db = db
        self.log = log
        self._err = open(log, "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "oeleo",
                "watch",
                flag,
                "--from",
                str(src),
                "--to",
                str(dst),
                "--db",
                str(db),
            ],
            cwd=str(src.parent),
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._err,
        )

    def wait_first_pass(self, timeout: float) -> None:
        before = passes_done(self.db)
        wait_until(
            lambda: passes_done(self.db) > before or self.proc.poll() is not None, timeout, "the first pass"
        )
        if self.proc.poll() is not None:
            raise SystemExit(f"watch_bench: oeleo watch ended: {self.log.read_text()[-2000:]}")

    def poll_interval(self) -> Optional[float]:
        """Seconds between two polls of every file (the first line says)."""
        found = re.search(r"changes to every file: every (\d+) s", self.log.read_text(errors="replace"))
        return float(found.group(1)) if found else None

    def folder_interval(self) -> Optional[float]:
        """Seconds between two looks at every folder, for new files."""
        found = re.search(r"new files: every (\d+) s", self.log.read_text(errors="replace"))
        return float(found.group(1)) if found else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()


def latencies(watcher: Watcher, folder: Path, prefix: str, count: int, timeout: float) -> List[float]:
    """Write ``count`` files one after another; each one's seconds from last write to booked."""
    found = []
    for i in range(count):
        name = f"{prefix}{i:04}.dat"
        path = folder / name
        with open(path, "wb") as handle:
            handle.write(os.urandom(4096))
        written = os.stat(path).st_mtime_ns / 1e9
        rel = path.relative_to(watcher.src).as_posix()
        wait_until(lambda rel=rel: booked_at(watcher.db, rel) is not None, timeout, f"{rel} booked")
        found.append(booked_at(watcher.db, rel) - written)  # type: ignore[operator]
    return found


def start(src: Path, dst: Path, db: Path, kind: str, log: Path) -> Watcher:
    return Watcher(src, dst, db, OBSERVERS[kind], log)


def make_tree(root: Path, files: int, per_folder: int = 1000) -> None:
    for i in range(files):
        folder = root / f"run-{i // per_folder:03}"
        if i % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:06}.csv").write_bytes(b"t,v\n")


def summary(values: List[float]) -> Dict[str, float]:
    return {
        "median_s": round(statistics.median(values), 3),
        "max_s": round(max(values), 3),
        "n": len(values),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100, help="files written one after another (latency)")
    parser.add_argument("--tree", type=int, default=100_000, help="files in the large tree (idle CPU)")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle watching measured")
    parser.add_argument("--tree-files", type=int, default=3, help="files written into the large tree")
    parser.add_argument("--observers", default="native,polling", help="native, polling or both")
    parser.add_argument(
        "--no-cover-poll",
        action="store_true",
        help="polling: measure --idle seconds even when one poll of every file is further apart",
    )
    parser.add_argument("--quick", action="store_true", help="10 files, a 5,000-file tree, 10 s idle")
    parser.add_argument("--out", type=Path, help="the JSON file (default benchmarks/results/watch-DATE.json)")
    args = parser.parse_args()
    if args.quick:
        args.files, args.tree, args.idle, args.tree_files = 10, 5000, 10.0, 1
    kinds = [k.strip() for k in args.observers.split(",") if k.strip()]
    work = Path(tempfile.mkdtemp(prefix="oeleo-watch-bench-"))
    results: Dict[str, Any] = {
        "scenario": "watch",
        "date": datetime.date.today().isoformat(),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "oeleo_commit": subprocess.run(
                ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip(),
        },
        "settings": {
            "files": args.files,
            "tree": args.tree,
            "idle_s": args.idle,
            "min_age": 0,
            "stable_s": STABLE,
        },
        "targets": {"latency_after_min_age_s": LATENCY_TARGET, "idle_cpu_share": IDLE_TARGET},
        "rows": [],
    }
    try:
        big = work / "big"
        say(f"making a tree of {args.tree:,} files")
        make_tree(big / "src", args.tree)
        say("copying and booking it once (oeleo run)")
        subprocess.run(
            [sys.executable, "-m", "oeleo", "run", "--from", "src", "--to", "dst", "--db", "books.db"],
            cwd=str(big),
            env=clean_env(),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for kind in kinds:
            row: Dict[str, Any] = {"observer": kind}
            small = work / f"small-{kind}"
            (small / "src").mkdir(parents=True)
            watcher = start(small / "src", small / "dst", small / "books.db", kind, small / "err.txt")
            try:
                watcher.wait_first_pass(60)
                say(f"{kind}: {args.files} files one after another")
                row["latency"] = summary(latencies(watcher, small / "src", "new-", args.files, 60))
            finally:
                watcher.stop()
            watcher = start(big / "src", big / "dst", big / "books.db", kind, work / f"big-{kind}.txt")
            try:
                watcher.wait_first_pass(600)
                time.sleep(1.0)  # the first pass's last lines; then only the observer works
                idle = args.idle
                interval = watcher.poll_interval()
                if interval and not args.no_cover_poll:
                    idle = max(idle, 1.1 * interval + 5)  # at least one poll of every file inside
                say(f"{kind}: idle for {idle:g} s on {args.tree:,} files")
                before, started = cpu_seconds(watcher.proc.pid), time.monotonic()
                time.sleep(idle)  # measuring what the watcher does meanwhile, on purpose
                used, spent = cpu_seconds(watcher.proc.pid) - before, time.monotonic() - started
                row["idle"] = {
                    "cpu_s": round(used, 3),
                    "seconds": round(spent, 1),
                    "cpu_share": round(used / spent, 4),
                }
                row["poll_interval_s"] = watcher.poll_interval()
                row["folder_interval_s"] = watcher.folder_interval()
                if args.tree_files:
                    say(f"{kind}: {args.tree_files} files into the large tree")
                    folder = big / "src" / "run-000"
                    timeout = 60 + 2 * (row["folder_interval_s"] or 0)
                    row["latency_large_tree"] = summary(
                        latencies(watcher, folder, f"new-{kind}-", args.tree_files, timeout)
                    )
            finally:
                watcher.stop()
            row["meets_latency"] = row["latency"]["max_s"] <= LATENCY_TARGET
            row["meets_idle"] = row["idle"]["cpu_share"] < IDLE_TARGET
            results["rows"].append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    head = ("observer", "latency median", "max", "idle CPU", "poll every", "large-tree lat.")
    print(f"{head[0]:9} {head[1]:>15} {head[2]:>7} {head[3]:>9} {head[4]:>11} {head[5]:>16}")
    for row in results["rows"]:
        large = row.get("latency_large_tree")
        poll = f"{row['poll_interval_s']:.0f} s" if row["poll_interval_s"] else "-"
        print(
            f"{row['observer']:9} {row['latency']['median_s']:>13.2f} s {row['latency']['max_s']:>5.2f} s "
            f"{row['idle']['cpu_share'] * 100:>7.2f} % {poll:>11} "
            f"{(str(large['median_s']) + ' s') if large else '-':>16}"
        )
    out = args.out or RESULTS / f"watch-{results['date']}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
