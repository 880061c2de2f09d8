"""The S3 scenario: oeleo's s3 connector against ``rclone copy`` and the aws CLI, on moto's S3
server (``moto[server]``'s ThreadedMotoServer on 127.0.0.1, started and stopped here).

    python -m benchmarks.run s3                    # everything, medians of 3
    python -m benchmarks.run s3 --tools oeleo,rclone --repeat 5
    python -m benchmarks.run s3 --quick            # 200 small files, 2 x 16 MiB, 256 MiB peak, 1 run

Tools, each into a bucket of its own (a new bucket for every initial copy):

- ``oeleo``: ``python -m oeleo run`` in a folder whose ``.env`` holds the settings
  (``OELEO_BASE_DIR_TO=s3://BUCKET/instr1``, ``OELEO_S3_ENDPOINT_URL``, the database,
  ``OELEO_LOG_DIR``, which is set in the environment too), as users run it;
- ``oeleo-w4``: the same with ``OELEO_WORKERS=4`` in the ``.env`` (information);
- ``rclone``: ``rclone copy --s3-no-head`` to a remote defined by ``RCLONE_CONFIG_S3BENCH_*``
  variables (provider Other, the moto endpoint), rclone's default 4 transfers;
- ``aws``: ``aws s3 cp --recursive --endpoint-url`` from ``awscli`` (PyPI) in its own venv,
  ``benchmarks/.venv-awscli`` (made when missing);
- ``aws-sync``: ``aws s3 sync``, the aws CLI's way to copy only what changed: its re-run is
  the aws CLI's idle re-run (``cp --recursive`` copies everything again every time).

Workloads: ``small`` (1,000 files of 8 KiB in 10 folders), ``large`` (2 files of 128 MiB);
scenarios ``initial`` (a new bucket, a new database) and ``rerun`` (nothing changed, on the
bucket the tool's last initial copy filled). ``peak``: oeleo alone copies one file of 2 GiB
(``--peak-mib``) once, and its peak RSS (``ru_maxrss`` from ``os.wait4``) is reported.
Credentials are throwaway ones given to every tool in its environment; the harness's own
``AWS_*``, ``RCLONE_*``, ``OELEO_*`` and proxy variables are removed. After each run the
bucket is compared with the source outside the timed region (keys and sizes; content too,
except for the peak file: size only). moto's own CPU time during each run is recorded too
(``server_cpu_s``, from ``/proc``): when two tools make the same requests moto does the same
work for both, and what one takes beyond the other is its own (start-up, its CPU beside moto's
on a shared machine). So are the requests moto received during the run (``requests``) and how
long after its launch the tool sent its first (``first_request_s``: its start-up). The table
is printed and the JSON written to ``benchmarks/results/s3-<YYYY-MM-DD>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python benchmarks/s3_bench.py` too
    sys.path.insert(0, str(REPO))

from benchmarks.run import (  # noqa: E402  (the shared harness's measuring and tools)
    ensure_debian_tools,
    first_line,
    measure,
    process_cpu_s,
    run_quiet,
    say,
    sync_disks,
    venv_python,
)
from benchmarks.ssh_bench import make_workload, md5_of  # noqa: E402  (the same workloads as over SSH)

KiB, MiB = 1024, 1024 * 1024
AWS_VENV = REPO / "benchmarks" / ".venv-awscli"
RESULTS = REPO / "benchmarks" / "results"
TOOLS = ("oeleo", "oeleo-w4", "rclone", "aws", "aws-sync")
WORKLOADS = ("small", "large")
SCENARIOS = ("initial", "rerun")
PEAK = "peak"
PREFIX = "instr1"
REGION = "us-east-1"
KEY_ID, SECRET = "oeleo-bench", "oeleo-bench-secret"  # moto takes any; never a real one
PEAK_LIMIT_BYTES = 200 * 1000 * 1000  # the issue's "well under 200 MB" for a 2 GB file
DROPPED = ("OELEO_", "RCLONE_", "AWS_", "BOTO_")
PROXIES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


# -- the server ------------------------------------------------------------------------
# moto, and the boto3 client that fills and checks its buckets, run in a child process that
# answers the harness's requests (a JSON line each way): a child's ru_maxrss starts at its
# parent's RSS when it is spawned, so a harness holding moto's objects, or boto3, would inflate
# every tool's peak memory.
MOTO_SCRIPT = """
import hashlib, json, logging, sys, time
import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
port = int(sys.argv[1])
server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
server.start()
# When each request arrived (time.time(), as the harness's clock): a tool's time to its first
# request is its start-up, and how many it sent is the work it asked of moto.
arrivals = []
wsgi = getattr(server, "_server", None)
if wsgi is not None and hasattr(wsgi, "app"):
    def stamped(environ, start_response, inner=wsgi.app):
        arrivals.append(time.time())
        return inner(environ, start_response)
    wsgi.app = stamped
else:
    arrivals = None
s3 = boto3.session.Session(
    aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3], region_name=sys.argv[4]
).client(
    # The harness reads the copies back and compares their md5 itself: it does not check the
    # checksums a tool stored (botocore 1.42, on Python 3.9, refuses the aws CLI's multipart ones).
    "s3", endpoint_url=f"http://127.0.0.1:{port}", config=Config(response_checksum_validation="when_required")
)


def objects(bucket):
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            found[item["Key"]] = item["Size"]
    return found


def md5(bucket, key):
    digest = hashlib.md5()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    for block in iter(lambda: body.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def uploads(bucket):
    return [[u["Key"], u["UploadId"]] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def drop(bucket):
    for key in objects(bucket):
        s3.delete_object(Bucket=bucket, Key=key)
    for key, upload_id in uploads(bucket):
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    s3.delete_bucket(Bucket=bucket)


print("ready", flush=True)
for line in sys.stdin:  # until the harness closes our stdin
    ask = json.loads(line)
    op, bucket = ask["op"], ask["bucket"]
    try:
        if op == "requests":  # those that arrived after ask["since"]: how many, first, last
            if arrivals is None:
                answer = None
            else:
                seen = [t for t in list(arrivals) if t >= ask["since"]]
                answer = {"count": len(seen), "first": min(seen, default=None)}
                answer["last"] = max(seen, default=None)
        elif op == "create":
            answer = s3.create_bucket(Bucket=bucket) and None
        elif op == "objects":
            answer = objects(bucket)
        elif op == "md5":
            answer = {key: md5(bucket, key) for key in ask["keys"]}
        elif op == "uploads":
            answer = uploads(bucket)
        else:
            answer = drop(bucket)
        print(json.dumps({"ok": answer}), flush=True)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
server.stop()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Moto:
    """moto's S3 server (ThreadedMotoServer) on 127.0.0.1, in a child process that also fills
    and checks the buckets; one bucket per destination, dropped when done (moto keeps every
    byte in memory)."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = work / "moto.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", MOTO_SCRIPT, str(self.port), KEY_ID, SECRET, REGION],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={
                    k: v
                    for k, v in os.environ.items()
                    if not k.upper().startswith(DROPPED) and k.lower() not in PROXIES
                },
            )
        if self._line() != "ready":
            self.stop()
            raise RuntimeError(f"moto's server did not start: {self.log.read_text(errors='replace')[-800:]}")
        self._buckets = 0

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def _ask(self, op: str, bucket: str, **more: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "bucket": bucket, **more}) + "\n")
        self.proc.stdin.flush()
        line = self._line()
        if not line:
            raise RuntimeError(f"moto's server ended: {self.log.read_text(errors='replace')[-800:]}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"moto {op} {bucket}: {answer['error']}")
        return answer["ok"]

    def new_bucket(self, tool: str) -> str:
        self._buckets += 1
        name = f"bench-{tool}-{self._buckets}".replace(".", "-")
        self._ask("create", name)
        return name

    def objects(self, bucket: str) -> Dict[str, int]:
        return dict(self._ask("objects", bucket))

    def md5s(self, bucket: str, keys: List[str]) -> Dict[str, str]:
        return dict(self._ask("md5", bucket, keys=keys))

    def uploads(self, bucket: str) -> List[Tuple[str, str]]:
        """The incomplete multipart uploads: (key, upload id)."""
        return [(key, upload_id) for key, upload_id in self._ask("uploads", bucket)]

    def requests_since(self, since: float) -> Optional[Dict[str, Any]]:
        """The requests moto received since ``since`` (time.time()): count, first, last;
        None where its server could not be watched."""
        answer = self._ask("requests", "", since=since)
        return dict(answer) if answer is not None else None

    def drop_bucket(self, bucket: str) -> None:
        self._ask("drop", bucket)

    def stop(self) -> None:
        """Close its stdin (it stops its server and exits); killed by PID if it does not."""
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- workloads -------------------------------------------------------------------------
# make_workload and md5_of: the SSH scenario's, so both remote scenarios copy the same files.


# -- tools -----------------------------------------------------------------------------
def awscli_version(python: Path) -> Optional[str]:
    if not python.exists():
        return None
    probe = run_quiet([str(python), "-c", "import awscli; print(awscli.__version__)"], timeout=120)
    return probe.stdout.strip().splitlines()[-1] if probe.returncode == 0 and probe.stdout.strip() else None


def ensure_awscli() -> Optional[str]:
    """Make (once) benchmarks/.venv-awscli with awscli from PyPI. Returns an error or None."""
    python = venv_python(AWS_VENV)
    if awscli_version(python):
        return None
    say(f"installing awscli into {AWS_VENV.relative_to(REPO)} (once)")
    base = shutil.which("python3") or sys.executable
    if not python.exists():
        made = run_quiet([base, "-m", "venv", str(AWS_VENV)])
        if made.returncode != 0:
            return f"python -m venv failed: {made.stdout[-500:]}"
    done = run_quiet([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "awscli"])
    if done.returncode != 0 or not awscli_version(python):
        return f"pip install awscli failed: {done.stdout[-1000:]}"
    return None


def oeleo_has_s3() -> Optional[str]:
    """None when this tree's oeleo has the s3 connector, else why not."""
    probe = run_quiet(
        [sys.executable, "-c", "from oeleo.connectors import get_connector_class; get_connector_class('s3')"],
        cwd=str(REPO),
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=120,
    )
    if probe.returncode == 0:
        return None
    lines = probe.stdout.strip().splitlines()
    return f"oeleo has no s3 connector here ({lines[-1] if lines else 'import failed'})"


class Bench:
    def __init__(self, moto: Moto, work: Path) -> None:
        self.moto = moto
        self.work = work
        self.empty_config = work / "rclone.conf"
        self.empty_config.write_text("")
        (work / "aws-config").write_text("")
        self.cwd = work / "cwd"
        self.cwd.mkdir()

    def base_env(self) -> Dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.upper().startswith(DROPPED)
            and k.lower() not in PROXIES
            and k != "PYTHONDONTWRITEBYTECODE"
        }
        env.update(
            {
                "AWS_ACCESS_KEY_ID": KEY_ID,
                "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_DEFAULT_REGION": REGION,
                "AWS_CONFIG_FILE": str(self.work / "aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(self.work / "aws-config"),
                "AWS_EC2_METADATA_DISABLED": "true",
                "NO_PROXY": "127.0.0.1,localhost",
            }
        )
        return env

    def home(self, tool: str, workload: str) -> Path:
        folder = self.work / "run" / workload / tool
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def dot_env(self, tool: str, workload: str, source: Path, bucket: str) -> str:
        home = self.home(tool, workload)
        lines = [
            f"OELEO_BASE_DIR_FROM={source}",
            f"OELEO_BASE_DIR_TO=s3://{bucket}/{PREFIX}",
            f"OELEO_S3_ENDPOINT_URL={self.moto.endpoint}",
            f"OELEO_S3_REGION={REGION}",
            "OELEO_FILTER_EXTENSION=.dat",
            f"OELEO_DB_NAME={home / 'books.db'}",
            f"OELEO_LOG_DIR={home / 'logs'}",
        ]
        if tool == "oeleo-w4":
            lines.append("OELEO_WORKERS=4")
        return "\n".join(lines) + "\n"

    def reset(self, tool: str, workload: str) -> None:
        """A new initial copy: no books (the log folder stays, as a user's does)."""
        books = self.home(tool, workload) / "books.db"
        for path in (books, books.with_name(books.name + ".lock")):
            if path.exists():
                path.unlink()

    def command(
        self, tool: str, workload: str, source: Path, bucket: str
    ) -> Tuple[List[str], Dict[str, str], Path, Optional[str]]:
        """argv, environment, working folder and (for oeleo) the .env of one run."""
        env = self.base_env()
        if tool in ("oeleo", "oeleo-w4"):
            home = self.home(tool, workload)
            text = self.dot_env(tool, workload, source, bucket)
            (home / ".env").write_text(text)
            env["OELEO_LOG_DIR"] = str(home / "logs")
            env["PYTHONPATH"] = str(REPO)
            return [sys.executable, "-m", "oeleo", "run"], env, home, text
        if tool == "rclone":
            prefix = "RCLONE_CONFIG_S3BENCH_"
            env.update(
                {
                    prefix + "TYPE": "s3",
                    prefix + "PROVIDER": "Other",
                    prefix + "ENV_AUTH": "false",
                    prefix + "ACCESS_KEY_ID": KEY_ID,
                    prefix + "SECRET_ACCESS_KEY": SECRET,
                    prefix + "REGION": REGION,
                    prefix + "ENDPOINT": self.moto.endpoint,
                }
            )
            argv = ["rclone", "copy", "--config", str(self.empty_config), "--s3-no-head"]
            return argv + [str(source), f"s3bench:{bucket}/{PREFIX}"], env, self.cwd, None
        if tool in ("aws", "aws-sync"):
            aws = str(AWS_VENV / "bin" / "aws")
            verb = ["cp", "--recursive"] if tool == "aws" else ["sync"]
            target = f"s3://{bucket}/{PREFIX}/"
            return (
                [aws, "s3", *verb, str(source), target, "--endpoint-url", self.moto.endpoint],
                env,
                self.cwd,
                None,
            )
        raise ValueError(tool)

    def check(self, bucket: str, source: Path, expected: Dict[str, int], content: bool) -> Optional[str]:
        """None when the bucket holds every source file under the prefix, else why not."""
        stored = self.moto.objects(bucket)
        wanted = {f"{PREFIX}/{relpath}": size for relpath, size in expected.items()}
        missing = sorted(set(wanted) - set(stored))
        if missing:
            return f"{len(missing)} objects missing, such as {missing[0]} (bucket holds {sorted(stored)[:3]})"
        for key, size in wanted.items():
            if stored[key] != size:
                return f"{key} has {stored[key]} bytes, not {size}"
        if content:
            stored_md5 = self.moto.md5s(bucket, sorted(wanted))
            for relpath in expected:
                if stored_md5[f"{PREFIX}/{relpath}"] != md5_of(source / relpath):
                    return f"{PREFIX}/{relpath} differs from the source"
        left = self.moto.uploads(bucket)
        return f"{len(left)} incomplete multipart uploads left" if left else None

    def run(
        self,
        tool: str,
        workload: str,
        scenario: str,
        source: Path,
        expected: Dict[str, int],
        bucket: str,
        timeout: float,
        content: bool = True,
    ) -> Dict[str, Any]:
        argv, env, cwd, dot_env = self.command(tool, workload, source, bucket)
        log = self.work / f"{tool}-{workload}-{scenario}-{bucket}.log"
        sync_disks()  # the previous run's dirty pages are not written on this run's time
        # A child's peak RSS is at least the harness's own at the spawn: recorded as the floor.
        floor_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        # moto's CPU during the run (its process, every thread): the same work for every tool
        # that sends the same requests, so what a tool's time adds beyond it is the tool's own.
        server_before = process_cpu_s(self.moto.proc.pid)
        launched = time.time()
        measured = measure(argv, env, cwd, log, timeout)
        server_after = process_cpu_s(self.moto.proc.pid)
        server_cpu = None if server_before is None or server_after is None else server_after - server_before
        # Asked before check() reads the bucket back: only the tool's own requests.
        requests = self.moto.requests_since(launched)
        problem = None
        if measured["returncode"] != 0:
            tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
            problem = f"exit status {measured['returncode']} (log {log}): {tail}"
        else:
            problem = self.check(bucket, source, expected, content)
        sample = {
            "tool": tool,
            "workload": workload,
            "scenario": scenario,
            "bucket": bucket,
            "ok": problem is None,
            "problem": problem,
            "argv": argv,
            "load": os.getloadavg()[0],
            "harness_rss_mib": round(floor_mib, 1),
            "server_cpu_s": None if server_cpu is None else round(server_cpu, 3),
            "requests": requests["count"] if requests else None,
            "first_request_s": _after(requests, "first", launched),
            "last_request_s": _after(requests, "last", launched),
            **measured,
        }
        if dot_env is not None:
            sample["dot_env"] = dot_env
        return sample


# -- the sitting -----------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run s3", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--repeat", type=int, default=3, metavar="K", help="runs per tool and scenario (3)")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma separated, of: {', '.join(TOOLS)}")
    parser.add_argument("--workloads", default=",".join(WORKLOADS + (PEAK,)), help="small,large,peak")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="initial,rerun")
    parser.add_argument("--small-files", type=int, default=1000)
    parser.add_argument("--large-files", type=int, default=2)
    parser.add_argument("--large-mib", type=int, default=128)
    parser.add_argument("--peak-mib", type=int, default=2048, help="size of the peak-memory file (2048)")
    parser.add_argument(
        "--quick", action="store_true", help="200 small files, 2 x 16 MiB, 256 MiB peak, 1 run"
    )
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="make the temporary folder in this folder")
    parser.add_argument("--seed", type=int, default=20240611)
    args = parser.parse_args(argv)
    if args.quick:
        args.small_files, args.large_mib, args.peak_mib, args.repeat = 200, 16, 256, 1
    tools = _names(parser, args.tools, TOOLS, "tools")
    workloads = _names(parser, args.workloads, WORKLOADS + (PEAK,), "workloads")
    scenarios = _names(parser, args.scenarios, SCENARIOS, "scenarios")

    skipped: Dict[str, str] = {}
    if "rclone" in tools:
        skipped.update(ensure_debian_tools(["rclone"]))
    if {"aws", "aws-sync"} & set(tools):
        problem = ensure_awscli()
        if problem:
            skipped.update({t: problem for t in ("aws", "aws-sync") if t in tools})
    if {"oeleo", "oeleo-w4"} & set(tools):
        problem = oeleo_has_s3()
        if problem:
            skipped.update({t: problem for t in ("oeleo", "oeleo-w4") if t in tools})
    for tool, why in skipped.items():
        say(f"skipping {tool}: {why}")
    tools = [t for t in tools if t not in skipped]

    started = time.time()
    machine = machine_facts()  # oeleo's commit as the sitting starts
    work = Path(tempfile.mkdtemp(prefix="oeleo-s3-bench-", dir=args.workdir))
    moto = Moto(work)
    samples: List[Dict[str, Any]] = []
    sizes: Dict[str, Dict[str, int]] = {}
    try:
        bench = Bench(moto, work)
        for name in workloads:
            root = work / "src" / name
            if name == "small":
                files = make_workload(root, args.small_files, 8 * KiB, 10, args.seed)
            elif name == "large":
                files = make_workload(root, args.large_files, args.large_mib * MiB, 1, args.seed + 1)
            else:
                files = make_workload(root, 1, args.peak_mib * MiB, 1, args.seed + 2)
            sizes[name] = {"files": len(files), "bytes": sum(files.values())}
            if name == PEAK:
                samples.extend(run_peak(bench, root, files, tools, args.timeout))
            else:
                samples.extend(run_workload(bench, name, root, files, tools, scenarios, args))
            shutil.rmtree(root, ignore_errors=True)
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)

    rows = summarise(samples)
    targets = evaluate(rows)
    print_table(rows, targets)
    payload = {
        "machine": machine,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "workloads": sizes,
        "skipped_tools": skipped,
        "elapsed_s": round(time.time() - started, 1),
        "summary": rows,
        "targets": targets,
        "samples": samples,
    }
    out = args.out or RESULTS / f"s3-{datetime.date.today().isoformat()}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    say(f"wrote {out}")
    return 0 if all(s["ok"] for s in samples) else 1


def _names(parser: argparse.ArgumentParser, text: str, known: Tuple[str, ...], what: str) -> List[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"unknown {what} {unknown}; known: {', '.join(known)}")
    return names


def run_workload(
    bench: Bench,
    workload: str,
    source: Path,
    files: Dict[str, int],
    tools: List[str],
    scenarios: List[str],
    args: argparse.Namespace,
) -> List[Dict[str, Any]]:
    """Initial copies (a new bucket each), then re-runs on each tool's last one; tools
    interleaved, so that a slow minute of the machine falls on all of them."""
    samples: List[Dict[str, Any]] = []
    synced: Dict[str, str] = {}  # tool -> the bucket its last initial copy filled

    def initial(tool: str, repetition: int, timed: bool) -> None:
        if tool in synced:
            bench.moto.drop_bucket(synced.pop(tool))
        bench.reset(tool, workload)
        bucket = bench.moto.new_bucket(tool)
        sample = bench.run(tool, workload, "initial", source, files, bucket, args.timeout)
        synced[tool] = bucket
        if timed:
            sample["repetition"] = repetition
            samples.append(sample)
            _said(sample, repetition)
        elif not sample["ok"]:
            say(f"{workload:5} {tool:9} untimed first copy FAILED: {sample['problem']}")

    try:
        if "initial" in scenarios:
            for repetition in range(args.repeat):
                for tool in tools:
                    initial(tool, repetition, timed=True)
        if "rerun" in scenarios:
            for tool in tools:
                if tool not in synced:
                    initial(tool, 0, timed=False)
            for repetition in range(args.repeat):
                for tool in tools:
                    sample = bench.run(
                        tool, workload, "rerun", source, files, synced[tool], args.timeout, False
                    )
                    sample["repetition"] = repetition
                    samples.append(sample)
                    _said(sample, repetition)
    finally:
        for bucket in synced.values():
            bench.moto.drop_bucket(bucket)
    return samples


def run_peak(
    bench: Bench, source: Path, files: Dict[str, int], tools: List[str], timeout: float
) -> List[Dict]:
    """oeleo alone, once: its peak RSS while it copies one large file."""
    if "oeleo" not in tools:
        return []
    bench.reset("oeleo", PEAK)
    bucket = bench.moto.new_bucket("oeleo")
    try:
        sample = bench.run("oeleo", PEAK, "initial", source, files, bucket, timeout, content=False)
    finally:
        bench.moto.drop_bucket(bucket)
    sample["repetition"] = 0
    _said(sample, 0)
    return [sample]


def _said(sample: Dict[str, Any], repetition: int) -> None:
    state = "ok" if sample["ok"] else f"FAILED: {sample['problem']}"
    say(
        f"{sample['workload']:5} {sample['scenario']:7} {sample['tool']:9} run {repetition + 1}: "
        f"{sample['wall_s']:8.2f} s, {sample['peak_rss_mib']:6.1f} MiB  {state}"
    )


def machine_facts() -> Dict[str, Any]:
    versions = "import boto3, moto; print(moto.__version__, boto3.__version__)"
    moto_version, _, boto3_version = first_line([sys.executable, "-c", versions]).partition(" ")
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "moto": moto_version,
        "boto3": boto3_version,
        "rclone": first_line(["rclone", "--version"]) if shutil.which("rclone") else "",
        "awscli": awscli_version(venv_python(AWS_VENV)) or "",
        "oeleo_commit": first_line(["git", "-C", str(REPO), "rev-parse", "HEAD"]),
    }


# -- the table -------------------------------------------------------------------------
def summarise(samples: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = []
    order = {name: i for i, name in enumerate(WORKLOADS + (PEAK,))}
    keys = sorted(
        {(s["workload"], s["scenario"], s["tool"]) for s in samples},
        key=lambda k: (order[k[0]], SCENARIOS.index(k[1]), TOOLS.index(k[2])),
    )
    for workload, scenario, tool in keys:
        runs = [s for s in samples if (s["workload"], s["scenario"], s["tool"]) == (workload, scenario, tool)]
        good = [s for s in runs if s["ok"]]
        walls = [s["wall_s"] for s in good]
        rows.append(
            {
                "workload": workload,
                "scenario": scenario,
                "tool": tool,
                "median_s": statistics.median(walls) if walls else None,
                "min_s": min(walls) if walls else None,
                "max_s": max(walls) if walls else None,
                "cpu_s": statistics.median(s["cpu_s"] for s in good) if good else None,
                "peak_rss_mib": statistics.median(s["peak_rss_mib"] for s in good) if good else None,
                "server_cpu_s": _median_of(good, "server_cpu_s"),
                "requests": _median_of(good, "requests"),
                "first_request_s": _median_of(good, "first_request_s"),
                "ok_runs": len(good),
                "runs": len(runs),
            }
        )
    for row in rows:
        ours = _find(rows, row["workload"], row["scenario"], "oeleo")
        if ours and row["median_s"]:
            row["oeleo_over_tool"] = ours["median_s"] / row["median_s"]
    return rows


def _after(requests: Optional[Dict[str, Any]], key: str, launched: float) -> Optional[float]:
    """Seconds from the tool's launch to its first (or last) request; None without one."""
    if not requests or requests.get(key) is None:
        return None
    return round(requests[key] - launched, 3)


def _median_of(samples: List[Dict[str, Any]], key: str) -> Optional[float]:
    """The median of a key the samples may lack (results written before it was measured)."""
    values = [s[key] for s in samples if s.get(key) is not None]
    return statistics.median(values) if values else None


def _find(rows: List[Dict[str, Any]], workload: str, scenario: str, tool: str) -> Optional[Dict[str, Any]]:
    return next(
        (
            r
            for r in rows
            if (r["workload"], r["scenario"], r["tool"]) == (workload, scenario, tool) and r["median_s"]
        ),
        None,
    )


def evaluate(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The issue's targets, from the medians: small initial no slower than rclone, large
    initial within 1.2x rclone, the idle re-run faster than rclone and the aws CLI, and a 2 GB
    file copied in under 200 MB of RSS."""
    out: List[Dict[str, Any]] = []

    def ratio(workload: str, scenario: str, peer: str, limit: float, strict: bool, words: str) -> None:
        ours, theirs = _find(rows, workload, scenario, "oeleo"), _find(rows, workload, scenario, peer)
        if ours is None or theirs is None:
            return
        measured = ours["median_s"] / theirs["median_s"]
        met = measured < limit if strict else measured <= limit
        out.append({"target": f"{workload}/{scenario}: {words}", "measured": round(measured, 3), "met": met})

    ratio("small", "initial", "rclone", 1.0, False, "oeleo no slower than rclone (<= 1x)")
    ratio("large", "initial", "rclone", 1.2, False, "oeleo within 1.2x rclone")
    for workload in WORKLOADS:
        for peer, name in (("rclone", "rclone"), ("aws-sync", "aws s3 sync"), ("aws", "aws s3 cp")):
            ratio(workload, "rerun", peer, 1.0, True, f"oeleo faster than {name} (< 1x)")
    peak = _find(rows, PEAK, "initial", "oeleo")
    if peak is not None:
        rss_bytes = peak["peak_rss_mib"] * MiB
        out.append(
            {
                "target": f"{PEAK}: oeleo's peak RSS under 200 MB for one large file (MiB)",
                "measured": round(peak["peak_rss_mib"], 1),
                "met": rss_bytes < PEAK_LIMIT_BYTES,
            }
        )
    return out


def print_table(rows: List[Dict[str, Any]], targets: List[Dict[str, Any]]) -> None:
    def num(value: Optional[float], spec: str) -> str:
        return format(value, spec) if value is not None else "-"

    print(
        f"{'workload':8} {'scenario':8} {'tool':9} {'median s':>9} {'min s':>8} {'max s':>8} "
        f"{'cpu s':>7} {'moto cpu s':>10} {'requests':>8} {'1st req s':>9} {'RSS MiB':>8} "
        f"{'oeleo/tool':>10} {'runs':>5}"
    )
    for r in rows:
        print(
            f"{r['workload']:8} {r['scenario']:8} {r['tool']:9} {num(r['median_s'], '.2f'):>9} "
            f"{num(r['min_s'], '.2f'):>8} {num(r['max_s'], '.2f'):>8} {num(r['cpu_s'], '.2f'):>7} "
            f"{num(r.get('server_cpu_s'), '.2f'):>10} {num(r.get('requests'), '.0f'):>8} "
            f"{num(r.get('first_request_s'), '.3f'):>9} "
            f"{num(r['peak_rss_mib'], '.1f'):>8} {num(r.get('oeleo_over_tool'), '.2f'):>10} "
            f"{r['ok_runs']}/{r['runs']:<3}"
        )
    for t in targets:
        print(f"target {t['target']}: {t['measured']} -> {'met' if t['met'] else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
