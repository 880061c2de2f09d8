"""The SharePoint connector's own cost: ``oeleo run`` against the loopback fake of SharePoint's
REST API (tests/sharepoint_server.py, in a process of its own), as users run it.

    python benchmarks/sharepoint_bench.py                  # 1,000 x 8 KiB, 2 x 128 MiB, 2 GiB peak
    python benchmarks/sharepoint_bench.py --quick          # 200 x 8 KiB, 2 x 16 MiB, 256 MiB peak
    python benchmarks/sharepoint_bench.py --peak-mib 0     # without the peak-memory file

SharePoint itself cannot run here, so only the client is measured: the CPU time and peak RSS
of the ``oeleo run`` process (``os.wait4``, the fake's own work not counted) and the HTTP
requests it sent, per file and by kind (the fake counts them). Workloads: ``small`` (1,000
files of 8 KiB in 10 folders), ``large`` (2 files of 128 MiB, upload sessions of
``OELEO_SHAREPOINT_CHUNK_SIZE``, default 10 MiB), each copied once and then run again with
nothing changed (``rerun``); ``peak``: one file of ``--peak-mib`` MiB, for the peak RSS. The
target for small files: one upload request per file plus a bounded number of folder and
form-digest requests per run. The table is printed and the JSON written to
``benchmarks/results/sharepoint-<YYYY-MM-DD>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python benchmarks/sharepoint_bench.py` too
    sys.path.insert(0, str(REPO))

from benchmarks.run import measure, write_random  # noqa: E402  (the shared harness's measuring)

MiB = 1024 * 1024
TESTS = REPO / "tests"
TOKEN = "test-token"  # FakeSharePoint's default


class Fake:
    """The fake SharePoint in a child process; its request counts over HTTP."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(TESTS / "sharepoint_server.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        self.origin = self.url.rsplit("/sites/", 1)[0]

    def stats(self) -> Dict[str, Any]:
        with urllib.request.urlopen(self.origin + "/__fake/stats", timeout=30) as reply:
            return json.loads(reply.read())

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def oeleo_env(fake: Fake, src: Path, work: Path, folder: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("OELEO_")}
    env.update(
        {
            "OELEO_CONNECTOR": "sharepoint_server:LoopbackSharePoint",
            "OELEO_BASE_DIR_FROM": str(src),
            "OELEO_BASE_DIR_TO": folder,
            "OELEO_SHAREPOINT_URL": fake.origin,
            "OELEO_SHAREPOINT_SITENAME": "lab",
            "OELEO_DB_NAME": str(work / f"{folder}.db"),
            "OELEO_LOG_DIR": str(work / "logs"),
            "OELEO_SUBDIRS": "true",
            "FAKE_SHAREPOINT_TOKEN": TOKEN,
            "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO), env.get("PYTHONPATH", "")]),
        }
    )
    return env


def make_small(root: Path, count: int, rng: random.Random) -> None:
    for index in range(count):
        path = root / f"run{index % 10}" / f"cell{index:05d}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(8 * 1024))


def run_one(fake: Fake, name: str, src: Path, work: Path, files: int, scenario: str) -> Dict[str, Any]:
    before = fake.stats()
    result = measure(
        [sys.executable, "-m", "oeleo", "run"],
        oeleo_env(fake, src, work, name),
        work,
        work / f"{name}-{scenario}.log",
        timeout=3600,
    )
    after = fake.stats()
    kinds = {k: after["by_kind"].get(k, 0) - before["by_kind"].get(k, 0) for k in after["by_kind"]}
    requests = after["requests"] - before["requests"]
    return {
        "workload": name,
        "scenario": scenario,
        "files": files,
        "returncode": result["returncode"],
        "wall_s": round(result["wall_s"], 2),
        "cpu_s": round(result["cpu_s"], 2),
        "peak_rss_mib": round(result["peak_rss_mib"], 1),
        "requests": requests,
        "requests_per_file": round(requests / files, 2) if files else None,
        "by_kind": {k: v for k, v in sorted(kinds.items()) if v},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 small files, 2 x 16 MiB, 256 MiB peak")
    parser.add_argument("--peak-mib", type=int, default=None, help="size of the peak-memory file (0: none)")
    parser.add_argument("--out", type=Path, default=None, help="where the JSON goes")
    args = parser.parse_args()
    small, large_mib, peak_mib = (200, 16, 256) if args.quick else (1000, 128, 2048)
    if args.peak_mib is not None:
        peak_mib = args.peak_mib
    rng = random.Random(11)
    rows: List[Dict[str, Any]] = []
    fake = Fake()
    try:
        with tempfile.TemporaryDirectory(prefix="oeleo-sp-bench-") as tmp:
            work = Path(tmp)
            (work / "logs").mkdir()
            src_small, src_large, src_peak = work / "small", work / "large", work / "peak"
            make_small(src_small, small, rng)
            for index in range(2):
                src_large.mkdir(exist_ok=True)
                write_random(src_large / f"frame{index}.fits", large_mib * MiB, rng)
            for name, src, files in (("small", src_small, small), ("large", src_large, 2)):
                for scenario in ("initial", "rerun"):
                    rows.append(run_one(fake, name, src, work, files, scenario))
                    print(json.dumps(rows[-1]), flush=True)
            if peak_mib:
                src_peak.mkdir()
                write_random(src_peak / "peak.bin", peak_mib * MiB, rng)
                rows.append(run_one(fake, "peak", src_peak, work, 1, f"{peak_mib} MiB"))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        fake.stop()
    print()
    print("| workload | scenario | files | exit | wall s | CPU s | peak RSS MiB | requests | per file |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    columns = ("workload", "scenario", "files", "returncode", "wall_s", "cpu_s", "peak_rss_mib", "requests")
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + f" | {row['requests_per_file']} |")
    out = args.out or REPO / "benchmarks" / "results" / f"sharepoint-{datetime.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten to {out}")
    return 0 if all(row["returncode"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
