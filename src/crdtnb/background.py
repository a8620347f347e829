"""Threads for the heavy work of opening and saving notebooks (parsing, hashing, building
and checking documents, serializing), which yield the CPU to the event loop.

Work on a thread competes with the event loop twice: for the GIL (bounded by keeping
every call short, see pieces.py and ipynb.py) and, where the daemon has a single core,
for the CPU itself: a thread hashing a 50 MB file, which runs without the GIL, kept the
loop waiting for the CPU for 30-45 ms at a time. These threads run at a lower scheduling
priority (Linux: a nice value per thread), so that the loop, relaying every other room,
gets the CPU as soon as it wants it; with a core to spare the priority changes nothing.
The store's reading and checkpointing threads do the same (its writer, which every
relayed change waits for, does not).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["NICE", "in_background", "let_go", "let_go_of_notebook", "let_go_of_pieces", "yield_the_cpu"]

T = TypeVar("T")

NICE = 10  # added to the threads' nice value (0-19: the higher, the more they yield)
THREADS = 2  # two rooms can open at once

_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def yield_the_cpu() -> None:
    """Lower the calling thread's scheduling priority by NICE (Linux; elsewhere nothing)."""
    if sys.platform.startswith("linux"):  # elsewhere a thread id is not a process id
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + NICE)
        except OSError:
            pass  # a sandbox may forbid it: then the work just runs at the usual priority


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(THREADS, thread_name_prefix="crdtnb-background", initializer=yield_the_cpu)
        return _pool


async def in_background(fn: Callable[..., T], *args: Any) -> T:
    """``await asyncio.to_thread(fn, *args)``, on a thread that yields the CPU to the loop."""
    return await asyncio.get_running_loop().run_in_executor(_executor(), functools.partial(fn, *args))


def let_go(items: list[Any]) -> None:
    """Empty a list of big things (a notebook's cells, a document's pieces) one item at a
    time. Freeing them all at once is one call that holds the GIL all along (10 ms for a
    50 MB notebook, 5-8 ms for 50 one-megabyte pieces, returned to the system one by
    one), wherever the last reference goes: call this on a worker thread, not the loop."""
    while items:
        items.pop()


# Below this many bytes a list is freed where it is: a thread hand-off would cost more.
LET_GO_BYTES = 1 << 20


async def let_go_of_pieces(pieces: list[bytes]) -> None:
    """``let_go`` of a document's pieces: on a worker thread if they are big."""
    if sum(map(len, pieces)) >= LET_GO_BYTES:
        await in_background(let_go, pieces)
    else:
        pieces.clear()


def let_go_of_notebook(nb: Any) -> None:
    """``let_go`` of a notebook's cells."""
    cells = nb.get("cells") if isinstance(nb, dict) else None
    if isinstance(cells, list):
        let_go(cells)
