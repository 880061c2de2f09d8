"""One connection's life cycle (oeleo/connectors/session.py), over real TCP connections to a
listener on 127.0.0.1: no SSH, no store, just what every connector that holds a connection shares."""

from __future__ import annotations

import errno
import select
import socket
import threading
from pathlib import Path
from typing import Any, List, Optional

import pytest
from helpers import wait_for

from oeleo.connectors.session import Session, close_quietly, describe
from oeleo.errors import Behaviour, ConfigError, ConnectionLost, behaviour_of

WHERE = "lab@store:7"


class Listener:
    """A TCP server on 127.0.0.1 that accepts connections and can drop them (the store's side)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.accepted: List[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                peer, _ = self.sock.accept()
            except OSError:  # stopped
                return
            self.accepted.append(peer)

    def drop_all(self) -> None:
        for peer in self.accepted:
            close_quietly(peer)

    def stop(self) -> None:
        """Nothing listens any more (a shutdown also wakes the accepting thread)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        close_quietly(self.sock)
        self.thread.join(5)
        self.drop_all()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.stop()


def is_alive(sock: socket.socket) -> bool:
    """Whether the other side still holds the connection (a closed one reads as EOF)."""
    if sock.fileno() == -1:
        return False
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return True  # nothing to read, not even the end
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except OSError:
        return False


class Store:
    """A connector's side: a session to ``address``, counting the connections it opens."""

    def __init__(self, address: Any, **options: Any) -> None:
        self.address = address
        self.opened: List[socket.socket] = []
        self.close_raises: Optional[OSError] = None
        self.session: Session[socket.socket] = Session(WHERE, self.open, self.close, is_alive, **options)

    def open(self) -> socket.socket:
        try:
            sock = socket.create_connection(self.address, timeout=5)
        except OSError as exc:
            raise self.session.failure(
                f"{WHERE} refused the connection ({exc.strerror}) "
                "(check OELEO_EXTERNAL_HOST and OELEO_EXTERNAL_PORT)"
            ) from None
        self.opened.append(sock)
        return sock

    def close(self, sock: socket.socket) -> None:
        sock.close()
        if self.close_raises is not None:
            raise self.close_raises


def free_port() -> Any:
    probe = socket.create_server(("127.0.0.1", 0))
    address = probe.getsockname()
    probe.close()  # nothing listens there now
    return address


def dropped(listener: Listener, store: Store) -> None:
    """The store's side closes every connection the client opened."""
    wait_for(lambda: len(listener.accepted) == len(store.opened), 5, "the listener to accept")
    listener.drop_all()
    wait_for(lambda: not store.session.alive(), 5, "the client to see the connection closed")


# -- opening, sharing, reconnecting --------------------------------------------------------


def test_the_first_use_opens_the_connection_and_every_later_use_shares_it(listener):
    store = Store(listener.address)

    first = store.session.current()
    assert store.session.current() is first and store.session.connect() is first
    assert store.opened == [first] and store.session.ever_connected
    wait_for(lambda: len(listener.accepted) == 1, 5, "the listener to accept")


def test_many_threads_reconnecting_at_once_open_one_new_connection(listener):
    store = Store(listener.address)
    old = store.session.connect()
    dropped(listener, store)
    start = threading.Barrier(8)
    got: List[socket.socket] = []

    def reconnect() -> None:
        start.wait()
        got.append(store.session.reconnect())

    threads = [threading.Thread(target=reconnect) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(store.opened) == 2 and store.opened[0] is old
    assert len(got) == 8 and all(sock is store.opened[1] for sock in got)
    assert old.fileno() == -1  # the dead one was closed
    wait_for(lambda: len(listener.accepted) == 2, 5, "the listener to accept the new connection")


def test_a_connection_that_dropped_is_connection_lost_until_the_worker_reconnects(listener, caplog):
    store = Store(listener.address)
    store.session.connect()
    dropped(listener, store)

    with pytest.raises(ConnectionLost, match=f"connection to {WHERE} lost"):
        store.session.current()
    assert len(store.opened) == 1  # a caller does not reconnect by itself: the worker's retry does
    caplog.set_level("INFO", logger="oeleo")
    new = store.session.reconnect()
    assert store.session.current() is new and is_alive(new)
    assert f"reconnected to {WHERE}" in caplog.text


def test_a_first_connection_that_fails_is_a_setting_to_fix():
    store = Store(free_port())

    with pytest.raises(ConfigError, match="refused the connection") as failed:
        store.session.connect()
    assert str(failed.value).endswith("(check OELEO_EXTERNAL_HOST and OELEO_EXTERNAL_PORT)")  # a setting
    assert behaviour_of(failed.value) is Behaviour.CONFIG
    assert not store.session.ever_connected and store.session.connection is None


def test_once_it_has_worked_a_failure_to_reconnect_is_a_dropped_connection_retried(listener):
    store = Store(listener.address)
    store.session.connect()
    dropped(listener, store)
    listener.stop()  # nothing listens any more either

    with pytest.raises(ConnectionLost, match=f"cannot reconnect to {WHERE}: .*refused") as failed:
        store.session.reconnect()
    assert behaviour_of(failed.value) is Behaviour.RETRY
    assert "OELEO_" not in str(failed.value)  # it worked with these settings: an outage, not a mistake
    assert store.session.connection is None  # the next use tries to open one again
    with pytest.raises(ConnectionLost):
        store.session.current()


def test_close_is_quiet_and_the_next_use_opens_a_new_connection(listener):
    store = Store(listener.address)
    first = store.session.connect()
    store.close_raises = OSError(errno.EBADF, "already gone")

    store.session.close()
    store.session.close()  # nothing open: nothing to do

    assert first.fileno() == -1 and store.session.connection is None
    second = store.session.current()
    assert second is not first and store.opened == [first, second]


# -- errors in the middle of an operation ----------------------------------------------------


def test_a_store_that_stops_answering_is_dropped_and_connection_lost(listener):
    store = Store(listener.address, io_timeout=0.2)
    sock = store.session.connect()
    sock.settimeout(0.2)  # the listener never sends anything

    with pytest.raises(ConnectionLost, match=rf"{WHERE} did not answer for 0.2 s while reading run-1/a\.csv"):
        with store.session.guard("reading", "run-1/a.csv"):
            sock.recv(10)

    assert sock.fileno() == -1 and not store.session.alive()  # dropped: the reconnect opens a new one
    assert store.session.reconnect() is not sock


def test_a_transport_error_of_a_dead_connection_is_connection_lost(listener):
    store = Store(listener.address)
    sock = store.session.connect()
    dropped(listener, store)

    with pytest.raises(ConnectionLost, match=f"connection to {WHERE} lost while writing a.csv") as lost:
        with store.session.guard("writing", "a.csv"):
            for _ in range(100):  # the first send may still be taken; then the peer resets it
                sock.sendall(b"x" * 65536)
    assert behaviour_of(lost.value) is Behaviour.RETRY


def test_the_transports_own_errors_are_connection_lost(listener):
    class TransportClosed(Exception):
        pass

    store = Store(listener.address, lost=(TransportClosed,))
    store.session.connect()

    with pytest.raises(ConnectionLost, match=r"lost while listing /srv/data \(TransportClosed\)"):
        with store.session.guard("listing", "/srv/data"):
            raise TransportClosed()
    with pytest.raises(ConnectionLost, match=r"lost while listing /srv/data \(EOFError\)"):
        with store.session.guard("listing", "/srv/data"):
            raise EOFError()


def test_an_os_error_on_a_live_connection_is_the_stores_answer_naming_the_file(listener, tmp_path):
    def naming(exc: OSError, what: str, name: str) -> OSError:
        return FileNotFoundError(exc.errno, f"{what} failed on {WHERE}", name)

    store = Store(listener.address, os_error=naming)
    store.session.connect()

    with pytest.raises(FileNotFoundError) as refused:
        with store.session.guard("reading", "run-1/a.csv"):
            Path(tmp_path, "not-there").open("rb")
    assert refused.value.filename == "run-1/a.csv" and refused.value.strerror == f"reading failed on {WHERE}"
    assert store.session.alive()


def test_an_os_error_while_the_connection_died_is_connection_lost(listener, tmp_path):
    store = Store(listener.address)
    store.session.connect()
    dropped(listener, store)

    with pytest.raises(ConnectionLost, match="lost while reading run-1/a.csv"):
        with store.session.guard("reading", "run-1/a.csv"):
            Path(tmp_path, "not-there").open("rb")


def test_the_caller_says_whether_its_own_channel_is_alive(listener, tmp_path):
    store = Store(listener.address)
    store.session.connect()  # the connection is fine, the channel the caller used is not

    with pytest.raises(ConnectionLost):
        with store.session.guard("reading", "a.csv", alive=lambda: False):
            Path(tmp_path, "not-there").open("rb")


def test_other_errors_pass_untouched(listener):
    store = Store(listener.address)
    store.session.connect()

    with pytest.raises(ValueError, match="a bug"):
        with store.session.guard("reading", "a.csv"):
            raise ValueError("a bug")


def test_names_that_are_not_utf8_are_printable_in_the_message(listener):
    store = Store(listener.address)
    store.session.connect()

    with pytest.raises(ConnectionLost) as lost:
        with store.session.guard("writing", "m\udce9sure.csv"):
            raise EOFError()
    str(lost.value).encode("utf-8")  # no lone surrogate reaches a message


def test_describe_and_close_quietly():
    assert describe(EOFError()) == "EOFError" and describe(OSError("gone")) == "gone"

    class Broken:
        closed = False

        def close(self) -> None:
            self.closed = True
            raise OSError("already closed")

    broken = Broken()
    close_quietly(broken)
    assert broken.closed
