"""One client per copying thread over one connection: an SFTP channel each on one SSH
connection (a session each on one HTTP pool, for the stores to come). A thread gets its own
client the first time it asks and keeps it; after a reconnect every thread gets a new one.
When the server allows no more clients, the threads take turns on the connection's first
client, one operation at a time."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Dict, Generic, Iterator, Optional, Type, TypeVar

Client = TypeVar("Client")


class PerThreadClients(Generic[Client]):
    """The clients of one connection, by copying thread. ``is_closed`` tells a client that
    died with its connection; ``close`` closes one (and must not raise)."""

    def __init__(self, close: Callable[[Client], None], is_closed: Callable[[Client], bool]) -> None:
        self._close = close
        self._is_closed = is_closed
        self._local = threading.local()  # this thread's (client, generation)
        self._clients: Dict[threading.Thread, Client] = {}
        self.first: Optional[Client] = None  # the connection's own; shared when no more are allowed
        self._first_lock = threading.RLock()
        self.generation = 0  # which connection: a client of an earlier one is not used again

    def start(self, first: Client) -> None:
        """A new connection, whose first client (this thread's) is ``first``."""
        self.generation += 1
        self.first = first
        self._clients[threading.current_thread()] = first
        self._local.value = (first, self.generation)

    def stop(self) -> None:
        """The connection is gone or closed: close every client."""
        clients, self._clients = self._clients, {}
        for client in clients.values():
            self._close(client)
        self.first = None
        self.generation += 1
        self._local.value = None

    def current(self) -> Optional[Client]:
        """This thread's client, if it has one on this connection that is still open."""
        value = getattr(self._local, "value", None)
        if value is None:
            return None
        client, generation = value
        if generation != self.generation or self._is_closed(client):
            return None
        return client

    def make(
        self,
        open_client: Callable[[], Client],
        refused: Type[BaseException],
        on_refused: Callable[[BaseException], None],
    ) -> Client:
        """A new client for this thread (under the connection's lock). Clients of threads
        that ended are closed first. When ``open_client`` raises ``refused`` (the server allows
        no more) and the first client is alive, ``on_refused`` is told and the thread shares
        the first client; otherwise the error goes on."""
        for thread in [t for t in self._clients if not t.is_alive()]:
            self._close(self._clients.pop(thread))  # a thread of an earlier pass
        stale = self._clients.pop(threading.current_thread(), None)
        if stale is not None and stale is not self.first:
            self._close(stale)
        try:
            client = open_client()
        except refused as exc:
            if self.first is None or self._is_closed(self.first):
                raise
            on_refused(exc)
            client = self.first
        else:
            self._clients[threading.current_thread()] = client
        self._local.value = (client, self.generation)
        return client

    @contextmanager
    def use(self, client: Client) -> Iterator[Client]:
        """Hold ``client`` for one operation: the first client serves one at a time (it is
        the main thread's, and the one threads share when the server allows no more)."""
        if client is self.first:
            with self._first_lock:
                yield client
        else:
            yield client
