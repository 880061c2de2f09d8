"""Command lines for many files at once stay under the server's limit and quote every name."""

from __future__ import annotations

import shlex

from oeleo.connectors.remote import command_lines


def test_arguments_are_quoted_and_split_into_lines_under_the_limit():
    names = [f"run 1/cell {i:03d}'s.res" for i in range(200)] + ["m\udce9sure.csv"]
    lines = list(command_lines("md5sum", names, 1000))

    assert len(lines) > 1
    assert [name for _, batch in lines for name in batch] == names
    for command, batch in lines:
        assert len(command.encode("utf-8", "surrogateescape")) <= 1000
        assert shlex.split(command) == ["md5sum", *batch]


def test_an_argument_longer_than_the_limit_gets_a_line_of_its_own_and_nothing_is_lost():
    lines = list(command_lines("sync", ["a", "b" * 50, "c"], 20))

    assert [batch for _, batch in lines] == [["a"], ["b" * 50], ["c"]]


def test_no_arguments_no_command():
    assert list(command_lines("sync", [], 100)) == []
