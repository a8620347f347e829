"""The set of open rooms: loading on first use, eviction when idle, compaction, shutdown."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from pycrdt import Doc

from .fanout import Fanout, LocalFanout
from .files import NotebookFiles
from .filesync import FileSync
from .notebook import load_notebook
from .room import Room
from .store import Store

logger = logging.getLogger("crdtnb.rooms")


@dataclass
class RoomSettings:
    idle_timeout: float = 60.0  # seconds a room with no holder stays loaded
    save_delay: float = 1.0
    save_max_delay: float = 10.0
    busy_save_max_delay: float = 30.0  # while the room's kernel runs code (outputs are in the log)
    poll_interval: float = 1.0  # how often open files are checked for outside changes
    # A room taking 1000 updates/s would otherwise compact every second, and each merge
    # holds the GIL for milliseconds (bench/README.md: p99 at 10 clients x 1000/s 5 -> 2.5 ms).
    compact_min_interval: float = 10.0  # seconds between two compactions of one room


class _OpenRoom:
    def __init__(self, room: Room, file_sync: FileSync) -> None:
        self.room = room
        self.file_sync = file_sync
        self.holders = 0
        self.evict_timer: asyncio.TimerHandle | None = None
        self.compaction: asyncio.Task[None] | None = None
        self.compacted_at = -math.inf


class RoomManager:
    def __init__(
        self,
        files: NotebookFiles,
        store: Store,
        settings: RoomSettings | None = None,
        fanout: Fanout | None = None,
    ) -> None:
        self.files = files
        self.store = store
        self.fanout = fanout or LocalFanout()
        self.settings = settings or RoomSettings()
        self._open: dict[str, _OpenRoom] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closing = False

    @property
    def rooms(self) -> dict[str, Room]:
        return {name: entry.room for name, entry in self._open.items()}

    def file_sync(self, name: str) -> FileSync | None:
        entry = self._open.get(name)
        return entry.file_sync if entry else None

    @asynccontextmanager
    async def hold(self, path: str) -> AsyncIterator[Room]:
        """Keep a room loaded for the duration of the block (a connection, a kernel run)."""
        room = await self.acquire(path)
        try:
            yield room
        finally:
            self.release(room)

    async def acquire(self, path: str) -> Room:
        """The room for a notebook path, loaded if needed; the caller must release() it."""
        if self._closing:
            raise RuntimeError("the server is shutting down")
        name = self.files.normalize(path)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            entry = self._open.get(name)
            if entry is None:
                entry = await self._load(name)
                self._open[name] = entry
            entry.holders += 1
            if entry.evict_timer is not None:
                entry.evict_timer.cancel()
                entry.evict_timer = None
            return entry.room

    def release(self, room: Room) -> None:
        entry = self._open.get(room.name)
        if entry is None or entry.room is not room:
            return
        entry.holders -= 1
        if entry.holders == 0 and not self._closing:
            loop = asyncio.get_running_loop()
            entry.evict_timer = loop.call_later(
                self.settings.idle_timeout, lambda: asyncio.create_task(self._evict(room.name, entry))
            )

    async def _load(self, name: str) -> _OpenRoom:
        doc = Doc()
        updates = await self.store.load(name)
        fresh = not updates
        if fresh:
            nb, _ = await asyncio.to_thread(self.files.read, name)
            load_notebook(doc, nb)
        else:
            # Raises if the file is gone or invalid: a room is only served for a real notebook.
            await asyncio.to_thread(self.files.read, name)
            with doc.transaction():
                for update in updates:
                    doc.apply_update(update)
        room = Room(name, doc, self.store, self.fanout)
        if fresh:
            await self.store.append(name, [doc.get_update()])
        room.start()
        s = self.settings
        file_sync = await FileSync.open(
            room,
            self.files,
            self.store,
            save_delay=s.save_delay,
            save_max_delay=s.save_max_delay,
            busy_save_max_delay=s.busy_save_max_delay,
            poll_interval=s.poll_interval,
        )
        file_sync.start()
        entry = _OpenRoom(room, file_sync)
        room.on_change.append(lambda: self._maybe_compact(entry))
        logger.info("opened room %s (%s)", name, "from file" if fresh else f"{len(updates)} stored updates")
        return entry

    def _maybe_compact(self, entry: _OpenRoom) -> None:
        """Off the hot path: merge a long log into one snapshot (one at a time per room)."""
        busy = entry.compaction is not None and not entry.compaction.done()
        recent = time.monotonic() - entry.compacted_at < self.settings.compact_min_interval
        if not busy and not recent and self.store.needs_compaction(entry.room.name):
            entry.compacted_at = time.monotonic()
            entry.compaction = asyncio.create_task(self._compact(entry.room))

    async def _compact(self, room: Room) -> None:
        try:
            await self.store.compact(room.name)
        except Exception:
            logger.exception("compaction of %s failed", room.name)

    async def _evict(self, name: str, entry: _OpenRoom) -> None:
        async with self._locks.setdefault(name, asyncio.Lock()):
            if self._open.get(name) is not entry or entry.holders > 0:
                return
            await self._close_entry(entry)
            del self._open[name]
            logger.info("evicted idle room %s", name)

    async def _close_entry(self, entry: _OpenRoom) -> None:
        if entry.evict_timer is not None:
            entry.evict_timer.cancel()
        await entry.file_sync.close()
        await entry.room.close()
        if entry.compaction is not None:
            await asyncio.gather(entry.compaction, return_exceptions=True)

    async def close(self) -> None:
        """Save every room to the store and to disk."""
        self._closing = True
        for name, entry in list(self._open.items()):
            try:
                await self._close_entry(entry)
            except Exception:
                logger.exception("closing room %s failed", name)
        self._open.clear()
