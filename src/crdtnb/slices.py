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


async def in_slices(items: Iterable[T], seconds: float = SLICE_SECONDS) -> AsyncIterator[T]:
    """Yield ``items``, letting the event loop run other work every ``seconds``."""
    deadline = time.perf_counter() + seconds
    for item in items:
        yield item
        if time.perf_counter() > deadline:
            await asyncio.sleep(0)
            deadline = time.perf_counter() + seconds
