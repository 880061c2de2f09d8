"""The documentation tells the truth about the settings and the command.

- ``.env.example`` names exactly the ``OELEO_*`` settings of ``oeleo.settings.Settings``, with
  their defaults, so adding a setting without documenting it fails here;
- ``docs/configuration.md`` has a row for every setting, with its default;
- every ``oeleo COMMAND --flag`` written in README.md and docs/ exists in the parser;
- the README's quick start is exactly the two commands CI and new users paste.

``python tests/test_docs.py`` prints the settings tables of docs/configuration.md, generated
from ``Settings.model_fields``, to paste when a setting is added or changed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from oeleo.cli import build_parser
from oeleo.settings import ENV_PREFIX, Settings, known_names

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
ENV_EXAMPLE = REPO / ".env.example"
CONFIGURATION = REPO / "docs" / "configuration.md"

# The variables of the published oeleo 0.7 (its README's .env and its connectors).
PUBLISHED = {
    "OELEO_BASE_DIR_FROM",
    "OELEO_BASE_DIR_TO",
    "OELEO_FILTER_EXTENSION",
    "OELEO_DB_NAME",
    "OELEO_LOG_DIR",
    "OELEO_DB_HOST",
    "OELEO_DB_PORT",
    "OELEO_DB_USER",
    "OELEO_DB_PASSWORD",
    "OELEO_EXTERNAL_HOST",
    "OELEO_USERNAME",
    "OELEO_PASSWORD",
    "OELEO_KEY_FILENAME",
    "OELEO_SHAREPOINT_USERNAME",
    "OELEO_SHAREPOINT_URL",
    "OELEO_SHAREPOINT_SITENAME",
    "OELEO_SHAREPOINT_DOC_LIBRARY",
}

# Section of docs/configuration.md that starts at each field; later fields join the last one.
SECTIONS = {
    "base_dir_from": "What to copy, and how",
    "connector": "Connector and scheduling",
    "db_name": "Bookkeeping and log file",
    "external_host": "SSH (the ssh connector)",
    "sharepoint_username": "SharePoint (the sharepoint connector)",
    "s3_bucket": "S3 and S3-compatible stores (the s3 connector)",
    "arcsecond_api_key": "Arcsecond.io (the arcsecond connector)",
    "compress": "On the way",
}

NOT_SET = "(not set)"
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "bat", "cmd", "powershell", "ps1"}
SEPARATORS = {"&&", "||", ";", "|", "&", ">", "2>", ">>"}


def default_texts() -> Dict[str, str]:
    """``OELEO_NAME -> default`` as ``oeleo config`` prints it (empty when not set)."""
    values = {name: field.default for name, field in Settings.model_fields.items()}
    return Settings.model_construct(**values).masked()


def render_settings_tables() -> str:
    defaults = default_texts()
    lines: List[str] = []
    for name, field in Settings.model_fields.items():
        if name in SECTIONS:
            lines += ["", f"### {SECTIONS[name]}", "", "| Variable | Default | In 0.7 | Meaning |"]
            lines.append("|---|---|---|---|")
        variable = ENV_PREFIX + name.upper()
        default = f"`{defaults[variable]}`" if defaults[variable] else NOT_SET
        since = "yes" if variable in PUBLISHED else "new"
        lines.append(f"| `{variable}` | {default} | {since} | {field.description} |")
    return "\n".join(lines).strip() + "\n"


# -- .env.example ------------------------------------------------------------------------
def env_example_lines() -> Iterator[Tuple[str, str, bool]]:
    """(name, value, commented) for every ``OELEO_*`` assignment in .env.example."""
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^(#\s*)?(OELEO_[A-Z0-9_]+)=(.*)$", line.strip())
        if match:
            yield match.group(2), match.group(3).strip(), bool(match.group(1))


def test_env_example_names_exactly_the_settings():
    names = [name for name, _, _ in env_example_lines()]
    assert len(names) == len(set(names)), "a variable is listed twice in .env.example"
    assert set(names) == set(known_names()), (
        f"missing from .env.example: {sorted(set(known_names()) - set(names))}; "
        f"not settings: {sorted(set(names) - set(known_names()))}"
    )


def test_env_example_gives_each_default_and_sets_only_the_two_folders():
    defaults = default_texts()
    for name, value, commented in env_example_lines():
        if commented:
            assert value == defaults[name], f".env.example: {name}={value}, the default is {defaults[name]!r}"
        else:
            assert name in ("OELEO_BASE_DIR_FROM", "OELEO_BASE_DIR_TO"), f"{name} is set in .env.example"


def test_env_example_lists_the_published_names_first():
    names = [name for name, _, _ in env_example_lines()]
    first = names[: len(PUBLISHED)]
    assert set(first) == PUBLISHED


# -- docs/configuration.md ----------------------------------------------------------------
def configuration_rows() -> Dict[str, List[str]]:
    rows: Dict[str, List[str]] = {}
    for line in CONFIGURATION.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells and re.fullmatch(r"`OELEO_[A-Z0-9_]+`", cells[0]):
            rows[cells[0].strip("`")] = cells
    return rows


def test_configuration_doc_has_a_row_for_every_setting_with_its_default():
    rows = configuration_rows()
    missing = sorted(set(known_names()) - set(rows))
    assert not missing, f"docs/configuration.md has no row for {missing} (python tests/test_docs.py)"
    assert set(rows) <= set(known_names()), f"not settings: {sorted(set(rows) - set(known_names()))}"
    defaults = default_texts()
    for name, cells in rows.items():
        shown = "" if cells[1] == NOT_SET else cells[1].strip("`")
        assert shown == defaults[name], f"docs/configuration.md: {name} default {cells[1]}"
        assert cells[2] == ("yes" if name in PUBLISHED else "new"), f"{name}: wrong 'In 0.7' cell"


def test_configuration_doc_mentions_every_setting():
    text = CONFIGURATION.read_text(encoding="utf-8")
    for name in known_names():
        assert name in text


# -- commands in README.md and docs/ -------------------------------------------------------
def shell_snippets(path: Path) -> Iterator[str]:
    """Lines of shell code blocks and inline code spans of a markdown file."""
    text = path.read_text(encoding="utf-8")
    for match in re.finditer(r"^```([\w-]*)\n(.*?)^```", text, flags=re.S | re.M):
        if match.group(1).lower() in SHELL_LANGUAGES:
            yield from match.group(2).replace("\\\n", " ").replace("^\n", " ").splitlines()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    yield from re.findall(r"`([^`\n]+)`", prose)


def oeleo_invocations(snippet: str) -> Iterator[List[str]]:
    """The words after each ``oeleo`` program name in a line, up to a shell separator."""
    line = re.sub(r"^\s*(\$|>|PS>|C:\\[^>]*>)\s+", "", snippet)
    words = [w.strip("\"'") for w in line.replace("\\", "/").split()]
    for i, word in enumerate(words):
        before = words[i - 1] if i else ""
        # The program, not the word "oeleo" in a sentence: first in the line, a path, after
        # "python -m", after an environment assignment or a separator.
        started = i == 0 or "/" in word or before == "-m" or "=" in before or before in SEPARATORS
        if started and re.search(r"(^|/)oeleo(\.exe)?$", word.lower()):
            rest: List[str] = []
            for after in words[i + 1 :]:
                if after in SEPARATORS:
                    break
                rest.append(after)
            yield rest


def subcommands(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def option_strings(parser: argparse.ArgumentParser) -> set:
    return {opt for action in parser._actions for opt in action.option_strings}


def documented_invocations() -> List[Tuple[str, List[str]]]:
    found = []
    for path in [README, *DOCS]:
        for snippet in shell_snippets(path):
            for words in oeleo_invocations(snippet):
                found.append((f"{path.relative_to(REPO)}: {snippet.strip()}", words))
    return found


def test_the_docs_show_oeleo_commands_at_all():
    commands = {words[0] for _, words in documented_invocations() if words and not words[0].startswith("-")}
    assert {"run", "status", "schedule"} <= commands


@pytest.mark.parametrize("where, words", documented_invocations(), ids=lambda v: str(v)[:60])
def test_every_documented_oeleo_command_and_flag_exists(where, words):
    parser = build_parser()
    commands = subcommands(parser)
    i = 0
    while i < len(words) and words[i].startswith("-"):
        assert words[i].split("=")[0] in option_strings(parser), f"{where}: oeleo has no {words[i]}"
        i += 1
    if i == len(words) or not re.fullmatch(r"[a-z][a-z-]*", words[i]):
        return  # "oeleo --help", "oeleo" alone, or a placeholder such as COMMAND
    command = words[i]
    assert command in commands, f"{where}: oeleo has no command {command!r}"
    known = option_strings(commands[command])
    for word in words[i + 1 :]:
        if word.startswith("--"):
            assert word.split("=")[0] in known, f"{where}: oeleo {command} has no {word}"


def test_readme_commands_table_names_every_command():
    text = README.read_text(encoding="utf-8")
    for command in subcommands(build_parser()):
        assert re.search(rf"^\|\s*`oeleo {command}\b", text, flags=re.M), f"README: no row for {command}"


def test_every_flag_of_every_command_is_in_the_readme_or_the_configuration_doc():
    text = README.read_text(encoding="utf-8") + CONFIGURATION.read_text(encoding="utf-8")
    for command, parser in subcommands(build_parser()).items():
        for option in sorted(option_strings(parser) - {"-h", "--help"}):
            if option.startswith("--"):
                assert re.search(rf"`[^`]*{re.escape(option)}\b[^`]*`", text), (
                    f"oeleo {command} {option} is in neither README.md nor docs/configuration.md"
                )


def exit_status_paragraph() -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"^\*\*Exit status:\*\*\n(.*?)\n\n", text, flags=re.S | re.M)
    assert found, "README.md has no **Exit status:** paragraph"
    return found.group(1)


def test_readme_names_every_exit_status_of_the_command():
    from oeleo.cli import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_SIGNAL

    paragraph = exit_status_paragraph()
    for status in (EXIT_OK, EXIT_FAILED, EXIT_CONFIG, *EXIT_SIGNAL.values()):
        assert re.search(rf"(^|[ ;/]){status}\b", paragraph, flags=re.M), f"README: no exit status {status}"
    scheduling = (REPO / "docs" / "scheduling.md").read_text(encoding="utf-8")
    for status in EXIT_SIGNAL.values():
        assert str(status) in scheduling, f"docs/scheduling.md: no exit status {status}"


# What README.md's exit-status list says of each error of oeleo.errors. The words must be on
# the line of the status that oeleo.cli.EXIT_STATUS gives the error's kind: a new error class,
# or one whose behaviour changes, fails here until the README says so.
README_SAYS = {
    "OeleoError": "some files failed",
    "ConfigError": "a configuration or usage error",
    "DestinationUnreachable": "a destination that cannot be reached at the first connection",
    "BookkeeperError": "the books cannot be opened or written",
    "DatabaseBusyError": "another oeleo process already uses the same database",
    "ConnectorError": "the destination is full or cannot be used",
    "ConnectionLost": "a lost connection could not be re-opened",
    "DiskFullError": "the destination is full",
    "TransferError": "some files failed",
    "FileChangedError": "a file that changed while it was copied is left for the next run",
    "FileIncomplete": "is counted as incomplete, left for the next run",
    "AlreadyThere": "a store that never overwrites already holds another version",
    "VerificationError": "some files failed",
    "FoundWrongInPlace": "is sent again even if it did not change",
    "UnsafePathError": "some files failed",
    "Aborted": "stopped by Ctrl-C",
}


def exit_status_lines() -> Dict[int, str]:
    """``status -> its line`` of the README's list (a line starts with its status)."""
    lines = {}
    for line in exit_status_paragraph().splitlines():
        found = re.match(r"(\d+) ", line)
        if found:
            lines[int(found.group(1))] = line
    return lines


def test_readme_exit_status_list_says_what_the_command_table_does_for_every_error():
    import oeleo.errors as errors
    from oeleo.cli import EXIT_SIGNAL, EXIT_STATUS

    classes = {
        name: c
        for name, c in vars(errors).items()
        if isinstance(c, type) and issubclass(c, errors.OeleoError)
    }
    assert set(README_SAYS) == set(classes), "README_SAYS: name what the README says of each error"
    lines = exit_status_lines()
    for name, cls in classes.items():
        status = EXIT_STATUS[cls.behaviour]
        assert status in lines, f"README: no line for exit status {status} ({name})"
        assert README_SAYS[name] in lines[status], f"README, exit status {status}: {README_SAYS[name]!r}"
    known = {0, *EXIT_STATUS.values(), *EXIT_SIGNAL.values()}
    assert set(lines) <= known, f"README: exit statuses the command never gives: {set(lines) - known}"


def test_readme_says_check_update_db_exits_0_for_the_differences_it_booked():
    # tests/test_cli.py holds the behaviour: `check` exits 1 on differences, 0 after --update-db.
    paragraph = " ".join(exit_status_paragraph().split())
    assert "`oeleo check` found differences, unless `--update-db` booked them" in paragraph


# -- quick start ---------------------------------------------------------------------------
QUICK_START = [
    "python3 -m venv .venv && .venv/bin/pip install . && "
    ".venv/bin/oeleo run --from examples/data/instrument --to demo-copy",
    "bash tests/run.sh",
]


def test_readme_quick_start_is_exactly_the_two_commands():
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Quick start\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert section, "README.md has no '## Quick start' section"
    blocks = re.findall(r"^```(?:bash|sh)\n(.*?)^```", section.group(1), flags=re.S | re.M)
    lines = [line.strip() for block in blocks for line in block.splitlines() if line.strip()]
    assert lines == QUICK_START
    assert (REPO / "examples" / "data" / "instrument").is_dir()
    assert (REPO / "tests" / "run.sh").is_file()


def test_links_between_the_docs_resolve():
    for path in [README, *DOCS]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (path.parent / target).exists(), f"{path.relative_to(REPO)} links to missing {target}"


if __name__ == "__main__":
    print(render_settings_tables(), end="")


def test_the_getting_started_script_runs_as_written_and_logs_where_the_env_file_says(tmp_path):
    # The 0.7-style script of docs/getting-started.md, pasted as a user pastes it, next to a
    # .env that sets OELEO_LOG_DIR: its log file is in that folder.
    text = (REPO / "docs" / "getting-started.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (script,) = [block for block in blocks if "start_logger()" in block and "Worker(" in block]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.csv").write_text("1,2\n")
    (tmp_path / ".env").write_text(
        "OELEO_BASE_DIR_FROM=src\nOELEO_BASE_DIR_TO=dst\nOELEO_DB_NAME=books.db\n"
        "OELEO_FILTER_EXTENSION=.csv\nOELEO_LOG_DIR=logs\n"
    )
    (tmp_path / "script.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OELEO_")}
    done = subprocess.run(
        [sys.executable, "script.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "dst" / "a.csv").read_text() == "1,2\n"
    assert "copied a.csv" in (tmp_path / "logs" / "oeleo.log").read_text(encoding="utf-8")
    assert not (tmp_path / "oeleo.log").exists()
