"""docs/connectors.md describes the connector contract as the code has it: every method a
connector may implement is in one of its tables, and every method in the tables exists."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Set

from oeleo.connectors.base import Connector, Features, FolderConnector, Upload

DOC = (Path(__file__).resolve().parent.parent / "docs" / "connectors.md").read_text(encoding="utf-8")
# The engine's own methods: not for a connector to implement (the doc says so in prose).
ENGINE = {"stage", "commit", "commit_many", "put", "discard", "base_filter_sub_method", "reconnect"}


def table_names(heading: str) -> Set[str]:
    """The names in backticks that start the rows of the table under ``heading``."""
    section = DOC.split(heading, 1)[1]
    section = section.split("\n#", 1)[0]
    names = set()
    for line in section.splitlines():
        found = re.match(r"\| `([a-z_]+)\(", line) or re.match(r"\| `([a-z_]+)` \|", line)
        if found:
            names.add(found.group(1))
        both = re.match(r"\| `([a-z_]+)\(\)` / `([a-z_]+)\(\)`", line)  # `connect()` / `close()`
        if both:
            names.update(both.groups())
    return names


def public_methods(cls: type) -> Set[str]:
    return {
        name
        for name, value in vars(cls).items()
        if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, classmethod))
    }


def test_every_connector_method_is_in_the_docs_tables_and_every_row_exists():
    documented = (
        table_names("### Methods every connector implements")
        | table_names("### Methods of the write side")
        | table_names("### Optional methods, with do-nothing defaults")
    )
    methods = (public_methods(Connector) | public_methods(FolderConnector)) - ENGINE
    assert documented == methods


def test_the_abstract_methods_are_the_ones_the_docs_say_every_connector_implements():
    assert table_names("### Methods every connector implements") == set(Connector.__abstractmethods__)
    assert set(FolderConnector.__abstractmethods__) - set(Connector.__abstractmethods__) == {
        "write_stream",
        "rename",
        "remove",
    }


def test_the_upload_table_names_every_upload_method():
    assert table_names("### The upload object") == public_methods(Upload)


def test_the_features_table_names_every_field():
    assert table_names("### What the store can do: `features`") == set(Features.__dataclass_fields__)
