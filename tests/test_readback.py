"""A stored file's digest without the store's help (oeleo/connectors/readback.py): read back
in chunks from real files, and the output of the real ``md5sum`` and friends of this machine."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

import pytest
from helpers import make_tree

from oeleo.connectors import readback
from oeleo.errors import ConnectionLost, TransferError

needs_coreutils = pytest.mark.skipif(shutil.which("md5sum") is None, reason="no md5sum on this machine")


def run(command: List[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True)


# -- reading back ------------------------------------------------------------------------------


class Counting:
    """A stored file open for reading that notes the size of every read."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("rb")
        self.reads: List[int] = []

    def read(self, size: int) -> bytes:
        chunk = self.file.read(size)
        self.reads.append(len(chunk))
        return chunk


def test_a_stored_file_is_hashed_in_chunks_through_what_opens_it_and_closed(tmp_path):
    data = os.urandom(5 * 1024 * 1024 + 17)
    path = tmp_path / "cube.fits"
    path.write_bytes(data)
    opened: List[Counting] = []

    @contextmanager
    def opening() -> Iterator[Counting]:
        stored = Counting(path)
        opened.append(stored)
        with stored.file:
            yield stored

    assert readback.hash_read_back(opening, "md5") == hashlib.md5(data).hexdigest()
    assert readback.hash_read_back(opening, "sha256") == hashlib.sha256(data).hexdigest()
    for stored in opened:
        assert stored.file.closed
        assert max(stored.reads) == readback.READ_CHUNK and stored.reads[-1] == 0  # to the end
        assert sum(stored.reads) == len(data)


def test_crc32_is_a_read_back_algorithm_too(tmp_path):
    path = tmp_path / "a.res"
    path.write_bytes(b"cycle 1\n" * 1000)

    digest = readback.hash_read_back(lambda: path.open("rb"), "crc32")

    assert int(digest, 16) == zlib.crc32(path.read_bytes())
    assert readback.hash_bytes(path.read_bytes(), "crc32") == digest


def test_an_empty_file_has_the_digest_of_nothing(tmp_path):
    path = tmp_path / "empty.res"
    path.write_bytes(b"")

    assert readback.hash_read_back(lambda: path.open("rb"), "md5") == hashlib.md5(b"").hexdigest()


def test_files_that_cannot_be_read_back_are_left_out_but_a_dropped_connection_goes_on(tmp_path):
    make_tree(tmp_path, {"a.res": b"a", "b.res": b"b"})

    def read_back(name: str) -> str:
        if name == "refused.res":
            raise TransferError("the name cannot be written over SFTP")
        return readback.hash_read_back(lambda: (tmp_path / name).open("rb"), "md5")

    digests = readback.read_back_each(["a.res", "gone.res", "refused.res", "b.res"], read_back)
    assert digests == {"a.res": hashlib.md5(b"a").hexdigest(), "b.res": hashlib.md5(b"b").hexdigest()}

    def lost(name: str) -> str:
        raise ConnectionLost("connection to lab@store lost")

    with pytest.raises(ConnectionLost):
        readback.read_back_each(["a.res"], lost)


# -- md5sum and friends ------------------------------------------------------------------------


@needs_coreutils
def test_the_probe_finds_the_tools_this_machine_has(tmp_path):
    done = subprocess.run(["sh", "-c", readback.probe_command()], capture_output=True)

    found = readback.hashes_in_probe(done.stdout)
    expected = {algorithm for algorithm, tool in readback.HASH_COMMANDS.items() if shutil.which(tool)}
    assert found == expected and "md5" in found


def test_a_login_that_runs_no_commands_has_no_tools():
    assert readback.hashes_in_probe(b"") == frozenset()
    assert readback.hashes_in_probe(b"This service allows sftp connections only.\n") == frozenset()


@needs_coreutils
def test_md5sum_output_gives_each_awkward_name_its_digest(tmp_path):
    names = [
        "plain.res",
        "with space.csv",
        "it's $HOME `x`.res",
        "back\\slash.res",
        "new\nline.res",
        "cr\rreturn.res",
        "-dash.res",
        "ø" * 40 + ".res",
    ]
    make_tree(tmp_path, {name: name.encode() for name in names})
    raw = os.fsencode(tmp_path) + b"/m\xe9sure.res"
    Path(os.fsdecode(raw)).write_bytes(b"not utf-8")
    names.append("m\udce9sure.res")

    text = run(["md5sum", "--", *names], tmp_path)
    binary = run(["md5sum", "-b", "--", *names], tmp_path)

    expected = {name: hashlib.md5(Path(tmp_path, name).read_bytes()).hexdigest() for name in names}
    assert readback.parse_sums(text.stdout) == expected
    assert readback.parse_sums(binary.stdout) == expected  # "digest *name"


@needs_coreutils
def test_a_file_without_a_digest_says_why(tmp_path):
    (tmp_path / "folder").mkdir()

    missing = run(["md5sum", "gone.res"], tmp_path)
    folder = run(["md5sum", "folder"], tmp_path)

    error = readback.sum_error(missing.stderr, "[::1]:/srv/gone.res")
    assert isinstance(error, FileNotFoundError) and error.filename == "[::1]:/srv/gone.res"
    assert isinstance(readback.sum_error(folder.stderr, "data:/srv/folder"), IsADirectoryError)
    # What coreutils prints for a file it may not read (this test may run as root, who reads all).
    denied = readback.sum_error(b"md5sum: locked.res: Permission denied\n", "data:/srv/locked.res")
    assert isinstance(denied, PermissionError) and denied.filename == "data:/srv/locked.res"
    assert readback.sum_error(b"", "data:/srv/a.res") is None
    assert readback.sum_error(b"md5sum: something else\n", "data:/srv/a.res") is None


def test_unescape_turns_md5sums_escapes_back():
    assert readback.unescape("a\\nb\\rc\\\\d") == "a\nb\rc\\d"
    assert readback.unescape("trailing\\") == "trailing\\"
