"""The benchmark harness runs (``--quick --repeat 1``) and writes a row for every tool.

The timings themselves are not judged here: the harness is not part of the suite's timing.
It needs rsync and rclone (the harness installs them with apt-get as root) and PyPI for
oeleo 0.7.0 (installed once into benchmarks/.venv-oeleo07).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

REPO = Path(__file__).resolve().parent.parent

EXPECTED = {
    "oeleo": {"initial", "rerun", "changed1"},
    "oeleo-sha256": {"initial"},
    "oeleo-0.7.0": {"initial", "rerun", "changed1"},
    "rsync": {"initial", "rerun", "changed1"},
    "rsync-checksum": {"initial", "rerun", "changed1"},
    "rsync-fsync": {"initial", "rerun", "changed1"},
    "rclone": {"initial", "rerun", "changed1"},
    "rclone-checksum": {"initial", "rerun", "changed1"},
    "cp": {"initial"},
    "cp-sync": {"initial"},
}
WORKLOADS = {"small", "large", "mixed"}


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OELEO_")}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--repeat", "1", "--out", str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert out.is_file(), f"no JSON written; harness output:\n{proc.stdout[-4000:]}"
    results = json.loads(out.read_text())
    skipped = results.get("skipped_tools", {})
    if skipped and os.geteuid() != 0:
        pytest.skip(f"tools missing and not root to install them: {skipped}")
    assert not skipped, f"tools skipped: {skipped}"
    assert proc.returncode == 0, proc.stdout[-4000:]
    return results


def test_every_tool_has_a_row_for_every_scenario_it_supports(quick_results: dict) -> None:
    rows = quick_results["summary"]
    have = {(r["tool"], r["workload"], r["scenario"]) for r in rows}
    for tool, scenarios in EXPECTED.items():
        for workload in WORKLOADS:
            for scenario in scenarios:
                assert (tool, workload, scenario) in have, f"no row for {tool} {workload}/{scenario}"
    assert ("oeleo", "startup", "help") in have
    assert ("oeleo", "startup", "version") in have
    assert not any(r["tool"] in ("cp", "cp-sync") and r["scenario"] != "initial" for r in rows)
    # The re-run over the small files plus 16 large ones: only the tools that keep books or hash.
    flat = {(r["tool"], r["scenario"]) for r in rows if r["workload"] == "flat"}
    assert flat == {("oeleo", "rerun"), ("oeleo-0.7.0", "rerun"), ("rclone-checksum", "rerun")}
    assert any(t["target"].startswith("rerun flat in bytes: flat") for t in quick_results["targets"])


def test_times_are_positive_and_every_run_succeeded(quick_results: dict) -> None:
    for row in quick_results["summary"]:
        assert row["ok"] == row["n"] >= 1, row
        assert row["wall_s"] > 0 and row["cpu_s"] > 0 and row["peak_rss_mib"] > 0, row
        if row["tool"] not in ("oeleo", "python"):
            assert row["ratio_oeleo_to_tool"] > 0, row
    for sample in quick_results["samples"]:
        assert sample["ok"], sample
        assert sample["wall_s"] > 0, sample
        if sample["workload"] != "startup":
            assert sample["verified"], sample


def test_json_has_machine_facts_and_raw_samples(quick_results: dict) -> None:
    machine = quick_results["machine"]
    for key in ("nproc", "memory_total", "python", "tool_versions", "oeleo_git_commit"):
        assert machine.get(key), key
    assert {"oeleo", "oeleo-0.7.0", "rsync", "rclone", "cp"} <= set(machine["tool_versions"])
    assert quick_results["options"]["quick"] is True
    assert quick_results["options"]["small_files"] == 500
    changed = [s for s in quick_results["samples"] if s["scenario"] == "changed1"]
    assert changed and all(s["changed_files"] >= 1 and s["changed_bytes"] > 0 for s in changed)
    assert quick_results["targets"], "the issue's targets are evaluated"
    names = {t["target"] for t in quick_results["targets"]}
    assert "small/initial: <= 0.5x rsync -a --fsync" in names
    assert "large/initial: <= 1.2x cp -r + sync -f" in names


def test_oeleo_runs_as_users_run_it_with_a_dot_env_and_a_log_file(quick_results: dict) -> None:
    for sample in quick_results["samples"]:
        if sample["tool"] in ("oeleo", "oeleo-sha256", "oeleo-0.7.0") and sample["workload"] != "startup":
            assert "OELEO_LOG_DIR=" in sample["dot_env"], sample
            assert sample["log_bytes_after"] > 0, sample
        if sample["tool"] in ("oeleo", "oeleo-sha256") and sample["workload"] != "startup":
            assert sample["argv"][-2:] == ["oeleo", "run"], sample  # every setting from the .env
    initial = [s for s in quick_results["samples"] if s["tool"] == "oeleo" and s["scenario"] == "initial"]
    small = [s for s in initial if s["workload"] == "small"]
    # a line per copied file reached oeleo.log (the first run of a fresh log folder)
    assert small and small[0]["log_bytes_after"] - small[0]["log_bytes_before"] > 500 * len(
        "copied d000/f000000.dat"
    )


@pytest.mark.ssh  # the harness starts its own sshd
def test_the_ssh_scenario_runs_against_a_loopback_server_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "ssh.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OELEO_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "ssh",
            "--quick",
            "--tools",
            "oeleo,rsync",
            "--out",
            str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())["summary"]
    seen = {(r["workload"], r["tool"]) for r in rows if r["ok_runs"] == r["runs"] and r["median_s"] > 0}
    assert seen == {("small", "oeleo"), ("small", "rsync"), ("large", "oeleo"), ("large", "rsync")}
    # The server's side, apart (sshd in a cgroup, which takes root): its sessions received and
    # wrote every file.
    if os.geteuid() == 0:
        assert all(r["median_server_cpu_s"] > 0 for r in rows), rows

    # --report prints the file again, with the targets recomputed from its summary.
    again = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--report", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    assert "small: oeleo within 2x of rsync" in again.stdout
    assert "large: oeleo within 1.2x of rsync" in again.stdout
    bad = tmp_path / "not-results.json"
    bad.write_text("[]")
    refused = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--report", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert str(bad) in refused.stderr


@pytest.mark.s3  # the harness starts its own moto server
def test_the_s3_scenario_runs_oeleo_rclone_and_the_aws_cli_against_moto_and_writes_json(
    tmp_path: Path,
) -> None:
    out = tmp_path / "s3.json"
    tools = ("oeleo", "rclone", "aws", "aws-sync")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OELEO_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "s3",
            "--quick",
            "--tools",
            ",".join(tools),
            "--out",
            str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.is_file(), proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())
    skipped = results["skipped_tools"]
    if skipped and os.geteuid() != 0:
        pytest.skip(f"tools missing and not root to install them: {skipped}")
    assert not skipped, skipped
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = results["summary"]
    seen = {(r["workload"], r["scenario"], r["tool"]) for r in rows if r["ok_runs"] == r["runs"] == 1}
    expected = {(w, s, t) for w in ("small", "large") for s in ("initial", "rerun") for t in tools}
    assert seen == expected | {("peak", "initial", "oeleo")}
    assert all(r["median_s"] > 0 and r["peak_rss_mib"] > 0 for r in rows)
    names = {t["target"] for t in results["targets"]}
    assert {
        "small/initial: oeleo no slower than rclone (<= 1x)",
        "large/initial: oeleo within 1.2x rclone",
        "small/rerun: oeleo faster than rclone (< 1x)",
        "small/rerun: oeleo faster than aws s3 sync (< 1x)",
        "peak: oeleo's peak RSS under 200 MB for one large file (MiB)",
    } <= names
    assert results["workloads"]["small"] == {"files": 200, "bytes": 200 * 8192}
    for sample in results["samples"]:
        assert sample["ok"], sample
        if sample["scenario"] == "initial":  # moto's CPU during the run: it stored every file
            assert sample["server_cpu_s"] > 0, sample
            assert sample["requests"] >= results["workloads"][sample["workload"]]["files"], sample
            assert 0 < sample["first_request_s"] < sample["wall_s"], sample
        if sample["tool"] == "oeleo" and sample["scenario"] == "rerun":  # an idle pass asks nothing
            assert sample["requests"] == 0 and sample["first_request_s"] is None, sample
        if sample["tool"] == "oeleo":  # as users run it: every setting in the .env, a log folder
            assert sample["argv"][-2:] == ["oeleo", "run"], sample
            assert "OELEO_BASE_DIR_TO=s3://" in sample["dot_env"] and "OELEO_LOG_DIR=" in sample["dot_env"]
        if sample["tool"] == "rclone":
            assert "--s3-no-head" in sample["argv"]
