"""OELEO_MANIFEST: a MANIFEST.sha256 (MANIFEST.md5) per destination folder that ``sha256sum -c``
(``md5sum -c``) accepts, listing every file oeleo copied there, on a local folder, over SSH and
on S3; a folder where it cannot be written is one line and exit 1, the copies stay booked."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import db_rows, make_tree, run_oeleo

from oeleo.manifest import manifest_line

FRAME = b"SIMPLE  =                    T" + bytes(2880 * 3 - 30)
TREE = {
    "a.csv": "time,voltage\n0,3.1\n",
    "run 1/b.res": "RES 1 2 3\n",
    "run 1/m31.fits": FRAME,
}


def check_sum(tool: str, folder, manifest: str) -> subprocess.CompletedProcess:
    assert shutil.which(tool), f"{tool} (GNU coreutils) is needed"
    return subprocess.run(
        [tool, "--strict", "-c", manifest], cwd=str(folder), capture_output=True, text=True, check=False
    )


def manifest_names(path) -> list:
    return sorted(line.split("  ", 1)[1] for line in path.read_text().splitlines())


def write_env(tmp_path, dest, **extra: str) -> None:
    lines = [f"OELEO_BASE_DIR_FROM={tmp_path / 'src'}", f"OELEO_BASE_DIR_TO={dest}"]
    lines += [f"{name}={value}" for name, value in extra.items()]
    (tmp_path / ".env").write_text("\n".join(lines) + "\n")


def test_the_line_format_is_sha256sums_with_escapes():
    assert manifest_line("ab", "x y.csv") == b"ab  x y.csv\n"
    assert manifest_line("ab", "back\\slash\nnl") == b"\\ab  back\\\\slash\\nnl\n"


@pytest.mark.parametrize("algorithm, tool", [("sha256", "sha256sum"), ("md5", "md5sum")])
def test_local_manifests_verify_with_the_coreutils_and_list_every_pass(tmp_path, algorithm, tool):
    make_tree(tmp_path / "src", {**TREE, f"run 1/MANIFEST.{algorithm}": "not oeleo's\n"})
    dest = tmp_path / "copy"
    write_env(tmp_path, dest, OELEO_MANIFEST=algorithm, OELEO_COMPRESS="gzip")
    done = run_oeleo("run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "copied 3 files" in done.stderr, done.stderr  # the source's MANIFEST is not a file
    name = f"MANIFEST.{algorithm}"
    assert manifest_names(dest / name) == ["a.csv"]
    assert manifest_names(dest / "run 1" / name) == ["b.res", "m31.fits.gz"]
    assert gzip.decompress((dest / "run 1" / "m31.fits.gz").read_bytes()) == FRAME
    for folder in (dest, dest / "run 1"):
        checked = check_sum(tool, folder, name)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"run 1/{name}" not in db_rows(tmp_path / "oeleo-file-list.db")
    # The gzip copy's line is the hash of the stored bytes, not of the source.
    stored = hashlib.new(algorithm, (dest / "run 1" / "m31.fits.gz").read_bytes()).hexdigest()
    assert f"{stored}  m31.fits.gz" in (dest / "run 1" / name).read_text()

    before = (dest / name).stat().st_mtime_ns
    (tmp_path / "src" / "run 1" / "c.res").write_text("RES 4\n")
    again = run_oeleo("run", cwd=tmp_path)
    assert again.returncode == 0 and "copied 1 file" in again.stderr, again.stderr
    assert manifest_names(dest / "run 1" / name) == ["b.res", "c.res", "m31.fits.gz"]
    assert (dest / name).stat().st_mtime_ns == before  # no copy there: not rewritten
    checked = check_sum(tool, dest / "run 1", name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not [p for p in dest.rglob("*") if p.name.endswith(".oeleo-part")]


def test_a_stale_manifest_is_written_again_and_lists_only_what_the_store_holds(tmp_path):
    make_tree(tmp_path / "src", TREE)
    dest = tmp_path / "copy"
    write_env(tmp_path, dest, OELEO_MANIFEST="sha256", OELEO_CHECKSUM="sha256")
    assert run_oeleo("run", cwd=tmp_path).returncode == 0
    manifest = dest / "run 1" / "MANIFEST.sha256"
    # As an earlier pass that copied here and failed to write the manifest leaves it: older
    # than the copies' rows, and without their lines.
    manifest.write_text(manifest.read_text().splitlines()[0] + "\n")
    os.utime(manifest, ns=(10**18, 10**18))
    again = run_oeleo("run", cwd=tmp_path)
    assert again.returncode == 0 and "copied 0 files" in again.stderr, again.stderr
    assert manifest_names(manifest) == ["b.res", "m31.fits"]
    expected = hashlib.sha256((dest / "run 1" / "b.res").read_bytes()).hexdigest()
    assert f"{expected}  b.res" in manifest.read_text()  # the books' sha256: the bytes stored

    (dest / "run 1" / "b.res").unlink()  # gone from the store: no line for it
    (tmp_path / "src" / "run 1" / "c.res").write_text("RES 4\n")
    third = run_oeleo("run", cwd=tmp_path)
    assert third.returncode == 0 and "copied 1 file" in third.stderr, third.stderr
    assert manifest_names(manifest) == ["c.res", "m31.fits"]
    checked = check_sum("sha256sum", dest / "run 1", "MANIFEST.sha256")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_folder_where_the_manifest_cannot_be_written_is_one_line_exit_1(tmp_path):
    make_tree(tmp_path / "src", TREE)
    dest = tmp_path / "copy"
    (dest / "run 1" / "MANIFEST.sha256").mkdir(parents=True)  # a folder where the file must go
    write_env(tmp_path, dest, OELEO_MANIFEST="sha256", OELEO_CHECKSUM="sha256")
    done = run_oeleo("run", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if "not written" in line]
    assert len(lines) == 1 and "run 1/MANIFEST.sha256" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    rows = db_rows(tmp_path / "oeleo-file-list.db")
    assert {name for name, row in rows.items() if row["checksum"]} == set(TREE)  # still booked
    checked = check_sum("sha256sum", dest, "MANIFEST.sha256")  # the other folder has its manifest
    assert checked.returncode == 0, checked.stdout + checked.stderr
    again = run_oeleo("run", cwd=tmp_path)
    assert again.returncode == 1 and "copied 0 files" in again.stderr, again.stderr


def test_over_ssh_the_manifest_verifies_in_the_servers_folder(sshd_server, tmp_path):
    make_tree(tmp_path / "src", TREE)
    folder = sshd_server.new_folder()
    env = sshd_server.env(
        OELEO_BASE_DIR_FROM=str(tmp_path / "src"), OELEO_BASE_DIR_TO=folder, OELEO_MANIFEST="sha256"
    )
    done = run_oeleo("run", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert manifest_names(Path(folder) / "run 1" / "MANIFEST.sha256") == ["b.res", "m31.fits"]
    for where in (folder, os.path.join(folder, "run 1")):
        checked = check_sum("sha256sum", where, "MANIFEST.sha256")
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_on_s3_one_manifest_object_per_prefix_with_the_objects_hashes(s3_server, s3_bucket, tmp_path):
    make_tree(tmp_path / "src", TREE)
    env = {
        "OELEO_CONNECTOR": "s3",
        "OELEO_S3_BUCKET": s3_bucket,
        "OELEO_S3_PREFIX": "instr1/",
        "OELEO_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "OELEO_BASE_DIR_FROM": "src",
        "OELEO_MANIFEST": "sha256",
        "OELEO_COMPRESS": "gzip",
    }
    done = run_oeleo("run", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    client = s3_server.client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert keys == [
        "instr1/MANIFEST.sha256",
        "instr1/a.csv",
        "instr1/run 1/MANIFEST.sha256",
        "instr1/run 1/b.res",
        "instr1/run 1/m31.fits.gz",
    ]
    for prefix in ("instr1/", "instr1/run 1/"):
        text = client.get_object(Bucket=s3_bucket, Key=prefix + "MANIFEST.sha256")["Body"].read().decode()
        lines = text.splitlines()
        assert lines, prefix
        for line in lines:
            digest, name = line.split("  ", 1)
            body = client.get_object(Bucket=s3_bucket, Key=prefix + name)["Body"].read()
            assert hashlib.sha256(body).hexdigest() == digest, name
    rows = db_rows(tmp_path / "oeleo-file-list.db")
    assert not any("MANIFEST" in name for name in rows)


def test_names_with_a_backslash_a_newline_or_bytes_not_utf8_verify(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    names = [b"back\\slash.csv", b"new\nline.csv", b"caf\xe9.csv"]
    for name in names:
        with open(os.path.join(os.fsencode(src), name), "wb") as out:
            out.write(name * 3)
    dest = tmp_path / "copy"
    write_env(tmp_path, dest, OELEO_MANIFEST="sha256")
    done = run_oeleo("run", cwd=tmp_path)
    assert done.returncode == 0 and "copied 3 files" in done.stderr, done.stderr
    checked = subprocess.run(
        ["sha256sum", "--strict", "-c", "MANIFEST.sha256"], cwd=str(dest), capture_output=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count(b": OK") == 3, checked.stdout
