"""Copying several files at a time: a pool of copying threads, fed a few files ahead, whose
results are handed back to the calling thread one by one (the books are written there)."""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Dict, Iterable, Set, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def copy_in_parallel(
    items: Iterable[Item],
    workers: int,
    copy: Callable[[Item], Result],
    done: Callable[[Item, Result], None],
    keep_going: Callable[[], bool],
) -> None:
    """``copy`` each item in ``workers`` threads (at most twice as many queued), calling
    ``done(item, result)`` in this thread as each finishes; no new item once ``keep_going()``
    says no (a stop, a full destination): the ones under way finish."""
    pending: Set[Future] = set()
    of: Dict[Future, Item] = {}
    queue = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="oeleo-copy") as pool:
        while True:
            while len(pending) < workers * 2 and keep_going():
                item = next(queue, None)
                if item is None:
                    break
                future = pool.submit(copy, item)
                of[future] = item
                pending.add(future)
            if not pending:
                return
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                done(of.pop(future), future.result())
