"""Log compaction, as an extension: a room's log that has grown past the store's
threshold is merged into one verified snapshot, off the relay's path, at most once per
``compact_min_interval`` per room (a room taking 1000 updates a second would otherwise
merge every second, and each merge holds the GIL for milliseconds)."""

from __future__ import annotations

import asyncio
import logging
import math
import time

from .extensions import ChangesDurable, DaemonStarted, Extension, RoomRenamed, RoomUnloading
from .ownership import LocalOwnership, Ownership
from .store import Store

logger = logging.getLogger("crdtnb.compaction")


class Compaction(Extension):
    def __init__(self, min_interval: float = 10.0) -> None:
        self.min_interval = min_interval
        self.store: Store | None = None
        self.ownership: Ownership = LocalOwnership()
        self.compactions = 0  # done, for metrics
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._last: dict[str, float] = {}

    async def on_daemon_started(self, event: DaemonStarted) -> None:
        self.store = event.daemon.store
        self.ownership = event.daemon.ownership

    def on_changes_durable(self, event: ChangesDurable) -> None:
        name = event.room.name
        if self.store is None or not self.ownership.owns(name):
            return  # only the room's owner compacts its log
        running = self._tasks.get(name)
        if running is not None and not running.done():
            return
        if time.monotonic() - self._last.get(name, -math.inf) < self.min_interval:
            return
        if self.store.needs_compaction(name):
            self._last[name] = time.monotonic()
            self._tasks[name] = asyncio.create_task(self._compact(name), name=f"compact:{name}")

    async def _compact(self, name: str) -> None:
        assert self.store is not None
        try:
            await self.store.compact(name)
            self.compactions += 1
        except Exception:
            logger.exception("compaction of %s failed", name)

    async def on_room_unloading(self, event: RoomUnloading) -> None:
        name = event.room.name
        task = self._tasks.pop(name, None)
        self._last.pop(name, None)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def on_room_renamed(self, event: RoomRenamed) -> None:
        if event.old in self._tasks:
            self._tasks[event.new] = self._tasks.pop(event.old)
        if event.old in self._last:
            self._last[event.new] = self._last.pop(event.old)
