"""Each error says by its class what the engine does with it, and the command exits as one
table (``oeleo.cli.EXIT_STATUS``) says for that kind of error."""

from __future__ import annotations

import errno
import logging
import signal
import threading
import warnings
from typing import Dict, List, Type

import pytest

import oeleo.errors as errors
from oeleo import cli, retries
from oeleo.errors import Behaviour, OeleoError, behaviour_of
from oeleo.workers import RunSummary


def error_classes() -> List[Type[OeleoError]]:
    return [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, OeleoError)]


# What users and connector authors rely on (README.md, docs/connectors.md).
DECIDED: Dict[str, Behaviour] = {
    "OeleoError": Behaviour.FAIL_FILE,
    "ConfigError": Behaviour.CONFIG,
    "DestinationUnreachable": Behaviour.CONFIG,  # and a scheduler goes on (oeleo.schedulers.base)
    "BookkeeperError": Behaviour.BOOKS,
    "DatabaseBusyError": Behaviour.BOOKS,
    "ConnectorError": Behaviour.STOP_RUN,
    "ConnectionLost": Behaviour.RETRY,
    "DiskFullError": Behaviour.STOP_RUN,
    "TransferError": Behaviour.FAIL_FILE,
    "FileChangedError": Behaviour.LEAVE_FILE,
    "FileIncomplete": Behaviour.INCOMPLETE,
    "VerificationError": Behaviour.FAIL_FILE,
    "FoundWrongInPlace": Behaviour.FAIL_FILE,  # and its row says to copy it again (code 0)
    "AlreadyThere": Behaviour.NOT_REPLACED,
    "UnsafePathError": Behaviour.FAIL_FILE,
    "Aborted": Behaviour.INTERRUPT,
}


def test_every_error_class_says_what_the_engine_does_with_it():
    assert {c.__name__: c.behaviour for c in error_classes()} == DECIDED


def test_a_full_destination_stops_the_run_and_is_not_a_file_failure():
    assert not issubclass(errors.DiskFullError, errors.TransferError)
    assert errors.DiskFullError.behaviour is Behaviour.STOP_RUN


@pytest.mark.parametrize(
    "name, status",
    [
        ("ConfigError", 2),
        ("BookkeeperError", 2),
        ("DatabaseBusyError", 2),
        ("ConnectionLost", 1),  # could not be re-opened at all: a failed run
        ("DiskFullError", 1),  # the files booked so far stay booked
        ("ConnectorError", 1),
        ("TransferError", 1),
        ("VerificationError", 1),
        ("FileChangedError", 1),  # left for the next run inside a run; ending a command fails it
        ("OeleoError", 1),
        ("Aborted", 130),
    ],
)
def test_an_error_that_ends_the_command_is_one_line_and_its_exit_status(
    monkeypatch, capsys, name: str, status: int
):
    error = getattr(errors, name)

    def fails(args):
        raise error(f"{name} happened")

    monkeypatch.setitem(cli.COMMANDS, "config", fails)
    logger = logging.getLogger("oeleo")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    monkeypatch.setattr(logger, "level", logger.level)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    assert cli.main(["config"]) == status == cli.exit_status(error("x"))
    assert capsys.readouterr().err == f"oeleo: {name} happened\n"


def test_the_exit_status_table_has_a_status_for_every_behaviour():
    assert set(cli.EXIT_STATUS) == set(Behaviour)
    assert cli.EXIT_STATUS[Behaviour.CONFIG] == cli.EXIT_CONFIG == 2
    assert cli.EXIT_STATUS[Behaviour.FAIL_FILE] == cli.EXIT_FAILED == 1
    assert cli.EXIT_STATUS[Behaviour.INTERRUPT] == cli.EXIT_SIGNAL[signal.SIGINT]


def test_a_run_summary_exits_as_the_errors_that_ended_it_do():
    # RunSummary is what `oeleo run` exits with when the engine handled the error itself.
    assert RunSummary(books_error="disk full").exit_status == cli.EXIT_STATUS[Behaviour.BOOKS]
    assert RunSummary(fatal="no space left").exit_status == cli.EXIT_STATUS[Behaviour.STOP_RUN]
    assert RunSummary(failed=1).exit_status == cli.EXIT_STATUS[Behaviour.FAIL_FILE]
    assert RunSummary(changing=1).exit_status == cli.EXIT_STATUS[Behaviour.LEAVE_FILE]


def test_other_exceptions_are_classified_too():
    assert behaviour_of(OSError(errno.ENOSPC, "No space left on device")) is Behaviour.STOP_RUN
    assert behaviour_of(PermissionError(errno.EACCES, "Permission denied")) is Behaviour.FAIL_FILE
    assert behaviour_of(KeyboardInterrupt()) is Behaviour.INTERRUPT
    assert behaviour_of(ValueError("odd")) is Behaviour.FAIL_FILE
    assert behaviour_of(errors.ConnectionLost("gone")) is Behaviour.RETRY


# -- retries after a dropped connection (oeleo.retries.with_retries) -----------------------


def _retry(copy, reconnect, unreachable, times=2):
    return retries.with_retries(copy, "a.csv", times, threading.Event(), reconnect, lambda: True, unreachable)


@pytest.fixture
def no_backoff(monkeypatch):
    monkeypatch.setattr(retries, "BACKOFF_SECONDS", 0.0)


def test_a_connection_that_cannot_be_reopened_stops_the_run_and_says_so_to_the_other_copies(no_backoff):
    attempts: List[int] = []
    unreachable = threading.Event()

    def copy():
        attempts.append(1)
        raise errors.ConnectionLost("connection to lab lost")

    def reconnect():
        raise errors.ConnectionLost("cannot reconnect to lab: refused")

    kind, reason = _retry(copy, reconnect, unreachable)

    assert (kind, reason) == ("fatal", "cannot reconnect to lab: refused (gave up after 2 reconnects)")
    assert len(attempts) == 3 and unreachable.is_set()
    # A copy under way in another thread stops at its first dropped connection, no retry.
    reconnects: List[int] = []
    kind, reason = _retry(copy, lambda: reconnects.append(1), unreachable)
    assert kind == "fatal" and "could not be re-opened" in reason
    assert len(attempts) == 4 and not reconnects


def test_a_connection_that_reopens_but_drops_again_fails_this_file_alone(no_backoff):
    unreachable = threading.Event()

    def copy():
        raise errors.ConnectionLost("connection to lab lost")

    kind, reason = _retry(copy, lambda: None, unreachable)

    assert (kind, reason) == ("error", "connection to lab lost (gave up after 3 attempts)")
    assert not unreachable.is_set()


def test_a_reconnect_refused_for_a_setting_stops_the_pass_at_once(no_backoff):
    def copy():
        raise errors.ConnectionLost("connection to lab lost")

    def reconnect():
        raise errors.ConfigError("the host key of lab changed")

    with pytest.raises(errors.ConfigError):
        _retry(copy, reconnect, threading.Event())
