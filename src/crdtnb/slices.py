"""Long loops on the event loop, cut into slices of a few milliseconds.

Every room shares one event loop: a loop over the whole of a big document (a thousand
cells, each a few pycrdt calls) holds up every other room for as long. Such loops let
the event loop run between slices instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

__all__ = ["SLICE_SECONDS", "in_slices"]

T = TypeVar("T")

SLICE_SECONDS = 0.002


async def in_slices(items: Iterable[T], seconds: float = SLICE_SECONDS, pause: float = 0.0) -> AsyncIterator[T]:
    """Yield ``items``, letting the event loop run other work every ``seconds``. Work
    that can wait (warming caches after a room opens) passes a ``pause``: the loop then
    stays idle that long between slices, so that what other rooms send is taken up at
    once, and the store's writer thread gets the CPU when it needs it."""
    deadline = time.perf_counter() + seconds
    for item in items:
        yield item
        if time.perf_counter() > deadline:
            await asyncio.sleep(pause)
            deadline = time.perf_counter() + seconds
