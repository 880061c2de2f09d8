"""What the fits checker costs: ``oeleo run`` with ``OELEO_CHECKER=checksum`` and with
``OELEO_CHECKER=fits`` on the same FITS files, in the same sitting.

Standalone (the shared harness is benchmarks/run.py). Workloads, written in a temporary folder
from hand-made headers (no astropy), content deterministic (``--seed``):

- **fits**: ``--files`` files (default 200) of a primary image of ``--mib`` MiB (default 1)
  and two extensions (an image and a binary table with a heap), in folders of 50;
- **fits.gz**: the same files gzipped (level 6; the pixels repeat enough to compress by half):
  the checker decompresses each through to its trailer as the copy reads it.

The checker validates the chunks the copy reads (``FitsChecker.stream_check``): each file is
read once, with or without it; what the checker adds is parsing the headers as they go by,
and for a ``.fits.gz`` decompressing the stream.

Scenarios, each with a fresh destination and books: **initial** (every file copied) and
**rerun** (nothing changed: the checker is not called, as an unchanged file is not read).
``--repeat`` runs of each (default 3), the median shown; also the header reader alone
(``oeleo.fits.inspect`` over every file, in this process), per file.

    python benchmarks/fits_bench.py
    python benchmarks/fits_bench.py --quick     # 40 files, 1 repetition
"""

from __future__ import annotations

import argparse
import datetime
import gzip
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
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
CHECKERS = ("checksum", "fits")
SCENARIOS = ("initial", "rerun")
BLOCK = 2880
PER_FOLDER = 50


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def card(keyword: str, value: Any) -> str:
    if isinstance(value, bool):
        text = f"{'T' if value else 'F':>20}"
    elif isinstance(value, str):
        text = f"'{value:<8}'"
    else:
        text = f"{value!s:>20}"
    return f"{keyword:<8}= {text}".ljust(80)


def hdu(cards: List[Any], data: bytes) -> bytes:
    text = "".join(card(k, v) for k, v in cards) + "END".ljust(80)
    text += " " * (-len(text) % BLOCK)
    return text.encode("ascii") + data + b"\0" * (-len(data) % BLOCK)


def frame(rng: random.Random, mib: float, number: int) -> bytes:
    """A FITS file: a 16-bit primary image of about ``mib`` MiB, an image and a table extension."""
    side = int((mib * 1024 * 1024 / 2) ** 0.5)
    # Each row half random, half one value: compresses about by half, as sky frames do.
    pixels = b"".join(rng.randbytes(side) + bytes([i % 256]) * side for i in range(side))
    primary = [("SIMPLE", True), ("BITPIX", 16), ("NAXIS", 2), ("NAXIS1", side), ("NAXIS2", side)]
    primary += [("EXTEND", True), ("OBJECT", f"field {number}"), ("EXPTIME", 30.0), ("FILTER", "R")]
    primary += [("DATE-OBS", "2026-12-01T01:02:03"), ("TELESCOP", "bench"), ("RA", 10.68), ("DEC", 41.27)]
    image = [("XTENSION", "IMAGE"), ("BITPIX", -32), ("NAXIS", 2), ("NAXIS1", 64), ("NAXIS2", 64)]
    image += [("PCOUNT", 0), ("GCOUNT", 1)]
    table = [("XTENSION", "BINTABLE"), ("BITPIX", 8), ("NAXIS", 2), ("NAXIS1", 16), ("NAXIS2", 100)]
    table += [("PCOUNT", 1000), ("GCOUNT", 1), ("TFIELDS", 1), ("TFORM1", "16B")]
    return hdu(primary, pixels) + hdu(image, rng.randbytes(64 * 64 * 4)) + hdu(table, rng.randbytes(2600))


def make_workload(root: Path, name: str, files: int, mib: float, seed: int) -> Dict[str, Any]:
    rng = random.Random(seed)
    total = 0
    for i in range(files):
        data = frame(rng, mib, i)
        path = root / f"night{i // PER_FOLDER:03d}" / f"frame{i:05d}.fits"
        if name == "fits.gz":
            data = gzip.compress(data, compresslevel=6, mtime=0)
            path = path.with_name(path.name + ".gz")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        total += len(data)
    return {"files": files, "bytes": total}


def oeleo_run(source: Path, dest: Path, db: Path, checker: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("OELEO_")}
    env.update(
        OELEO_BASE_DIR_FROM=str(source),
        OELEO_BASE_DIR_TO=str(dest),
        OELEO_DB_NAME=str(db),
        OELEO_CHECKER=checker,
    )
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "oeleo", "run"], cwd=str(db.parent), env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"oeleo run failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


def header_reader(source: Path) -> float:
    """Seconds per file of ``oeleo.fits.inspect`` alone (the files in the page cache)."""
    sys.path.insert(0, str(REPO))
    from oeleo import fits

    paths = sorted(p for p in source.rglob("*") if p.is_file())
    started = time.perf_counter()
    for path in paths:
        fits.inspect(path)
    return (time.perf_counter() - started) / max(1, len(paths))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--mib", type=float, default=1.0, help="MiB of each primary image")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workloads", default="fits,fits.gz")
    parser.add_argument("--quick", action="store_true", help="40 files, 1 repetition")
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.files, args.repeat = 40, 1
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()}
    results: Dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine,
        "options": {"files": args.files, "mib": args.mib, "repeat": args.repeat, "seed": args.seed},
        "workloads": {},
    }
    with tempfile.TemporaryDirectory(prefix="oeleo-fits-bench-") as tmp:
        work = Path(tmp)
        for name in workloads:
            source = work / name / "source"
            say(f"writing the {name} workload ({args.files} files)")
            facts = make_workload(source, name, args.files, args.mib, args.seed)
            facts["reader_s_per_file"] = header_reader(source)
            samples = {checker: {scenario: [] for scenario in SCENARIOS} for checker in CHECKERS}
            oeleo_run(source, work / name / "warm-up", work / name / "warm-up.db", "fits")
            for rep in range(args.repeat):
                for checker in CHECKERS:  # in turn, so that both see the same machine
                    run = work / name / f"{checker}-{rep}"
                    run.mkdir()
                    dest, db = run / "dest", run / "books.db"
                    times: Dict[str, List[float]] = samples[checker]
                    times["initial"].append(oeleo_run(source, dest, db, checker))
                    times["rerun"].append(oeleo_run(source, dest, db, checker))
                    shutil.rmtree(run)
                    initial, rerun = times["initial"][-1], times["rerun"][-1]
                    say(f"  {name} {checker} #{rep + 1}: initial {initial:.2f} s, rerun {rerun:.2f} s")
            facts["samples"] = samples
            results["workloads"][name] = facts
    print(table(results))
    out = args.out or RESULTS / f"fits-{datetime.date.today():%Y-%m-%d}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    say(f"wrote {out}")
    return 0


def table(results: Dict[str, Any]) -> str:
    """The medians as a Markdown table, and the header reader's cost per file."""
    lines = [
        "| workload | files | MiB | scenario | checksum s | fits s | fits / checksum |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for name, facts in results["workloads"].items():
        mib = facts["bytes"] / 2**20
        for scenario in SCENARIOS:
            plain = statistics.median(facts["samples"]["checksum"][scenario])
            fits = statistics.median(facts["samples"]["fits"][scenario])
            row = f"| {name} | {facts['files']} | {mib:.0f} | {scenario} | {plain:.2f} | {fits:.2f}"
            lines.append(f"{row} | {fits / plain:.2f} |")
    lines.append("")
    for name, facts in results["workloads"].items():
        lines.append(f"header reader alone, {name}: {facts['reader_s_per_file'] * 1e3:.2f} ms per file")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
