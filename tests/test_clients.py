"""One client per copying thread over one connection (oeleo/connectors/clients.py)."""

from __future__ import annotations

import threading
from typing import List

import pytest

from oeleo.connectors.clients import PerThreadClients


class Client:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False


class Refused(Exception):
    pass


def pool(closed: List[str]) -> PerThreadClients:
    def close(client: Client) -> None:
        client.closed = True
        closed.append(client.name)

    return PerThreadClients(close, lambda client: client.closed)


def in_thread(job):
    result = {}
    thread = threading.Thread(target=lambda: result.update(value=job()))
    thread.start()
    thread.join()
    return result["value"], thread


def test_each_thread_gets_its_own_client_and_keeps_it():
    clients = pool([])
    first = Client("first")
    clients.start(first)
    assert clients.current() is first
    made = iter(Client(f"c{i}") for i in range(10))

    def job():
        mine = clients.make(lambda: next(made), Refused, lambda exc: None)
        return mine, clients.current()

    (mine, again), _ = in_thread(job)
    assert mine is not first and again is mine


def test_a_new_connection_gives_every_thread_a_new_client_and_closes_the_old_ones():
    closed: List[str] = []
    clients = pool(closed)
    clients.start(Client("first"))
    (_, _), _ = in_thread(lambda: (clients.make(lambda: Client("worker"), Refused, lambda exc: None), None))
    clients.stop()
    assert sorted(closed) == ["first", "worker"]
    assert clients.current() is None and clients.first is None
    clients.start(Client("second"))
    assert clients.current().name == "second"


def test_clients_of_ended_threads_are_closed_when_a_thread_asks():
    closed: List[str] = []
    clients = pool(closed)
    clients.start(Client("first"))
    in_thread(lambda: clients.make(lambda: Client("ended"), Refused, lambda exc: None))
    clients.make(lambda: Client("main-again"), Refused, lambda exc: None)
    assert "ended" in closed


def test_when_the_server_allows_no_more_threads_share_the_first_client():
    clients = pool([])
    first = Client("first")
    clients.start(first)
    told: List[BaseException] = []

    def refuse():
        raise Refused("MaxSessions")

    shared, _ = in_thread(lambda: clients.make(refuse, Refused, told.append))
    assert shared is first and len(told) == 1
    first.closed = True  # the connection died with it: nothing to share, the error goes on
    with pytest.raises(Refused):
        clients.make(refuse, Refused, told.append)


def test_the_shared_first_client_serves_one_operation_at_a_time():
    clients = pool([])
    first = Client("first")
    clients.start(first)
    inside = threading.Event()
    release = threading.Event()
    order: List[str] = []

    def hold():
        with clients.use(first):
            inside.set()
            release.wait(5)
            order.append("holder")

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(5)
    waiter = threading.Thread(target=lambda: (clients.use(first).__enter__(), order.append("waiter")))
    waiter.start()
    waiter.join(0.2)  # a bounded look: it must still be waiting
    assert order == [] and waiter.is_alive()
    release.set()
    holder.join(5)
    waiter.join(5)
    assert order == ["holder", "waiter"]
