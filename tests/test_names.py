"""Any name the instrument writes is copied and booked: names that are not UTF-8, backslashes
on POSIX, quotes, and the name forms the books keep for them (oeleo/names.py)."""

from __future__ import annotations

import os
import sqlite3

import pytest
from helpers import db_rows, run_oeleo

from oeleo.names import QUOTE, from_books, hide_passwords, printable, to_books

posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX file names are bytes")

LATIN1 = b"m\xe9sure.csv"  # written in Latin-1 by old Windows software, found on a Linux share


@pytest.mark.parametrize(
    "name",
    [
        "a.csv",
        "äö.txt",
        "m\udce9sure.csv",
        "run-1/\udcff\udcfe.res",
        f"odd{QUOTE}E9.csv",
        f"{QUOTE}{QUOTE}",
        f"x{QUOTE}\udce9",
        "\ud800half.csv",
    ],
)
def test_every_name_has_a_books_form_that_gives_it_back(name):
    text = to_books(name)
    text.encode("utf-8")  # storable in SQLite and PostgreSQL
    assert from_books(text) == name


def test_names_that_need_no_escape_are_kept_as_they_are():
    for name in ("a.csv", "run 1/äö [draft].csv", "back\\slash.csv"):
        assert to_books(name) == name


def test_distinct_names_never_share_a_books_form():
    names = ["m\udce9.csv", f"m{QUOTE}E9.csv", f"m{QUOTE}{QUOTE}E9.csv", "m\\xe9.csv", "mé.csv"]
    assert len({to_books(n) for n in names}) == len(names)


def test_printable_shows_bytes_that_are_not_utf8_as_escapes():
    assert printable("m\udce9sure.csv") == "m\\xe9sure.csv"
    assert printable("mésure.csv") == "mésure.csv"


@posix_only
def test_printable_never_shows_two_names_alike():
    # A backslash typed in a name, beside the byte or the control character it would spell.
    names = [
        "bad\\xe9byte.csv",
        "bad\udce9byte.csv",
        "a\\nb.csv",
        "a\nb.csv",
        "x\\u202e.csv",
        "x\u202e.csv",
        "two\\\\xe9.csv",
        "two\\\udce9.csv",
        "back\\slash.csv",
    ]
    shown = [printable(name) for name in names]
    assert len(set(shown)) == len(names), shown
    assert printable("bad\\xe9byte.csv") == "bad\\\\xe9byte.csv"  # doubled, as repr does
    assert printable("back\\slash.csv") == "back\\slash.csv"  # nothing to confuse it with: as it is
    assert all(name.isprintable() for name in shown)


@posix_only
def test_a_name_with_a_backslash_and_one_with_the_byte_it_spells_are_told_apart_in_the_log(tmp_path):
    src, dst, db = tmp_path / "src", tmp_path / "dst", tmp_path / "books.db"
    _plant(src, [b"bad\\xe9.csv", b"bad\xe9.csv"])
    logs = tmp_path / "logs"
    args = ("run", "--from", str(src), "--to", str(dst), "--db", str(db))

    done = run_oeleo(*args, cwd=tmp_path, env={"OELEO_LOG_DIR": str(logs)})

    assert done.returncode == 0, done.stderr
    log = (logs / "oeleo.log").read_text(encoding="utf-8")
    assert "copied bad\\\\xe9.csv" in log and "copied bad\\xe9.csv" in log, log
    copied = [line for line in done.stderr.splitlines() if line.startswith("copied bad")]
    assert len(set(copied)) == 2, done.stderr


def test_printable_shows_bidi_controls_and_line_separators_as_escapes_and_keeps_joiners():
    # U+202E would show "report\u202etxt.exe" as "reportexe.txt"; U+2028 breaks a line.
    assert printable("report\u202etxt.exe") == "report\\u202etxt.exe"
    assert printable("a\u2028b\u2029c\u2066d\u200fe") == "a\\u2028b\\u2029c\\u2066d\\u200fe"
    family = "\U0001f468\u200d\U0001f469.jpg"  # an emoji sequence: as it is
    assert printable(family) == family
    assert printable("tab\there\x7f") == "tab\\there\\x7f"


@pytest.mark.parametrize(
    "text, shown",
    [
        ("http://lab:pw5ecret@minio:9000/x", "http://lab:***@minio:9000/x"),
        ("alice:pw5ecret@minio.lab:9000", "alice:***@minio.lab:9000"),  # no scheme
        ("http//bob:pw5ecret@127.0.0.1:5999", "http//bob:***@127.0.0.1:5999"),  # a broken one
        ("x='alice:pw5ecret@host': not a URL", "x='alice:***@host': not a URL"),
        ('connect to "https://u:pw5ecret@h/b?x"', 'connect to "https://u:***@h/b?x"'),
        ("sftp://alice@host/data", "sftp://alice@host/data"),  # no password: as it is
        ("mail a@b.org", "mail a@b.org"),
        ("http://host:9000/x", "http://host:9000/x"),
    ],
)
def test_hide_passwords_masks_every_user_password_at_with_or_without_a_scheme(text, shown):
    assert hide_passwords(text) == shown


def _plant(src, raw_names):
    os.makedirs(src, exist_ok=True)
    for raw in raw_names:
        with open(os.path.join(os.fsencode(str(src)), raw), "wb") as handle:
            handle.write(b"data of " + raw)


@posix_only
def test_a_name_that_is_not_utf8_is_copied_and_booked_with_the_others(tmp_path):
    src, dst, db = tmp_path / "src", tmp_path / "dst", tmp_path / "books.db"
    names = [f"f{i:03d}.csv".encode() for i in range(300)] + [LATIN1]
    _plant(src, names)
    args = ("run", "--from", str(src), "--to", str(dst), "--db", str(db))

    first = run_oeleo(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "copied 301 files" in first.stderr
    assert "m\\xe9sure.csv" in first.stderr  # shown readably
    assert sorted(os.listdir(os.fsencode(str(dst)))) == sorted(names)
    assert (dst.joinpath(os.fsdecode(LATIN1))).read_bytes() == b"data of " + LATIN1

    rows = db_rows(db)
    assert len(rows) == 301
    booked = rows[f"m{QUOTE}E9sure.csv"]
    assert booked["code"] == 1 and booked["checksum"] and booked["last_error"] is None
    with sqlite3.connect(str(db)) as connection:
        assert connection.execute("SELECT status FROM oeleo_runs").fetchall() == [("ok",)]

    again = run_oeleo(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "copied 0 files" in again.stderr and "301 unchanged" in again.stderr

    status = run_oeleo("status", "--files", "--from", str(src), "--db", str(db), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "m\\xe9sure.csv" in status.stdout  # shown as the bytes it has, not the books' form


@posix_only
def test_a_backslash_is_part_of_a_posix_name_not_a_separator(tmp_path):
    src, dst, db = tmp_path / "src", tmp_path / "dst", tmp_path / "books.db"
    _plant(src, [b"back\\slash.csv", b"plain.csv"])
    args = ("run", "--from", str(src), "--to", str(dst), "--db", str(db))

    first = run_oeleo(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "copied 2 files" in first.stderr and "vanished" not in first.stderr
    assert sorted(os.listdir(dst)) == ["back\\slash.csv", "plain.csv"]
    assert not (dst / "back").exists()
    assert set(db_rows(db)) == {"back\\slash.csv", "plain.csv"}

    again = run_oeleo(*args, cwd=tmp_path)
    assert "copied 0 files" in again.stderr and "2 unchanged" in again.stderr

    locked = run_oeleo("lock", str(src / "back\\slash.csv"), "--db", str(db), cwd=tmp_path)
    assert locked.returncode == 0, locked.stderr
    assert db_rows(db)["back\\slash.csv"]["code"] == 2
    assert set(db_rows(db)) == {"back\\slash.csv", "plain.csv"}  # not back/slash.csv


@pytest.mark.skipif(os.name == "nt", reason="a folder name that is not UTF-8 is a POSIX thing")
def test_a_source_folder_whose_name_is_not_utf8_is_copied_and_booked(tmp_path):
    """The origin (host and folder) is kept as names are (‛FF): it used to stop the run with
    'unexpected error: UnicodeEncodeError'."""
    folder = os.fsdecode(os.fsencode(str(tmp_path)) + b"/night\xff")
    os.makedirs(folder)
    with open(os.path.join(folder, "a.csv"), "w") as f:
        f.write("1,2\n")
    first = run_oeleo("run", "--from", folder, "--to", str(tmp_path / "dst"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "dst" / "a.csv").read_text() == "1,2\n"
    with sqlite3.connect(str(tmp_path / "oeleo-file-list.db")) as db:
        (origin,) = db.execute("SELECT origin FROM filelist").fetchone()
    assert origin.endswith("/night" + QUOTE + "FF")
    again = run_oeleo("run", "--from", folder, "--to", str(tmp_path / "dst"), cwd=tmp_path)
    assert again.returncode == 0 and "1 unchanged" in again.stderr, again.stderr


@pytest.mark.skipif(os.name == "nt", reason="Windows allows no newline in a file name")
def test_a_newline_in_a_name_never_makes_a_line_of_its_own_on_the_console_or_in_the_log(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a\ncopied fake.csv").write_text("1\n")
    (tmp_path / "src" / "b\x1b[31m.csv").write_text("2\n")
    env = {"OELEO_LOG_DIR": str(tmp_path / "logs")}
    done = run_oeleo("run", "--from", "src", "--to", "dst", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "dst" / "a\ncopied fake.csv").read_text() == "1\n"  # the file keeps its name
    log = (tmp_path / "logs" / "oeleo.log").read_text()
    for text in (done.stderr, log):
        assert "copied a\\ncopied fake.csv" in text
        assert "copied b\\x1b[31m.csv" in text and "\x1b" not in text
        assert not any(line.startswith("copied fake.csv") for line in text.splitlines())


@pytest.mark.skipif(os.name == "nt", reason="a newline in a file name: POSIX")
def test_a_name_copied_from_oeleos_output_locks_that_file(tmp_path):
    # oeleo prints a newline in a name as \n: that text, given to oeleo lock, is that file,
    # not a new row booked by name (trial 48).
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "new\nline.csv").write_text("a\n")
    assert run_oeleo("run", "--from", "src", "--to", "dst", cwd=tmp_path).returncode == 0

    (tmp_path / "src" / "sub").mkdir()
    (tmp_path / "src" / "sub" / "x\ty.csv").write_text("b\n")
    assert run_oeleo("run", "--from", "src", "--to", "dst", cwd=tmp_path).returncode == 0

    # With --from or not (the books know the folder), by its name or its path from here.
    for given in (["new\\nline.csv", "--from", "src"], ["new\\nline.csv"], ["src/sub/x\\ty.csv"]):
        done = run_oeleo("lock", *given, cwd=tmp_path)
        assert done.returncode == 0, (given, done.stderr)
        assert "no such file" not in done.stderr, (given, done.stderr)
    rows = db_rows(tmp_path / "oeleo-file-list.db")
    assert set(rows) == {"new\nline.csv", "sub/x\ty.csv"}, rows  # no row booked by a printed name
    assert rows["new\nline.csv"]["code"] == 2 and rows["sub/x\ty.csv"]["code"] == 2, rows
