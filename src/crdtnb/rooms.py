"""The set of open rooms: loading on first use, eviction when idle, compaction, shutdown."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pycrdt import Doc, Map

from .fanout import Fanout, LocalFanout
from .files import NotebookFiles, FileStamp
from .filesync import FileSync
from .notebook import MIN_NBFORMAT_MINOR, load_notebook
from .origins import SERVER
from .outputs import OutputWriter
from .room import Room
from .schema import EXECUTION_STATE, FILE_ERROR, KERNEL_STATUS, CellIndex, meta_of, state_of
from .store import Store

logger = logging.getLogger("crdtnb.rooms")

# The note a cell gets when the daemon stopped while it ran (its kernel went with it).
CUT_OFF = (
    "KernelLost",
    "The kernel was lost: the server stopped while this cell was running. Run it again.",
)


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


class _KeyedLocks:
    """One asyncio.Lock per key, forgotten when nobody holds or awaits it (a table of
    every name ever asked for would grow without bound)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


@dataclass
class _Loaded:
    doc: Doc
    index: CellIndex
    nb: dict[str, Any]
    stamp: FileStamp
    fresh: bool
    cut_off: list[str]  # cells that were running when the daemon stopped


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
        self._locks = _KeyedLocks()
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
        # The name as the caller checked it: a symbolic link swapped in since then is refused.
        name = self.files.exact(path)
        async with self._locks.hold(name):
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
        updates = await self.store.load(name)
        # Raises if the file is gone or invalid: a room is only served for a real notebook.
        nb, stamp = await asyncio.to_thread(self.files.read, name)
        loaded = await asyncio.to_thread(_build_document, updates, nb, stamp)
        room = Room(name, loaded.doc, self.store, self.fanout, loaded.index)
        # Outputs the room holds now are legitimate: a peer may move their cells around.
        await asyncio.to_thread(room.guard.learn_outputs)
        if loaded.fresh:
            await self.store.append(name, [loaded.doc.get_update()])
        room.start()
        _settle_after_restart(room, loaded.cut_off)
        s = self.settings
        file_sync = await FileSync.open(
            room,
            self.files,
            self.store,
            loaded.nb,
            loaded.stamp,
            save_delay=s.save_delay,
            save_max_delay=s.save_max_delay,
            busy_save_max_delay=s.busy_save_max_delay,
            poll_interval=s.poll_interval,
        )
        file_sync.start()
        entry = _OpenRoom(room, file_sync)
        room.on_change.append(lambda: self._maybe_compact(entry))
        origin = "from file" if loaded.fresh else f"{len(updates)} stored updates"
        logger.info("opened room %s (%s)", name, origin)
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
        async with self._locks.hold(name):
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


def _build_document(updates: list[bytes], nb: dict[str, Any], stamp: FileStamp) -> _Loaded:
    """The room's document from its log (else from its file), built on a worker thread
    before anyone shares it: the index is subscribed first, so it costs O(n), and every
    cell's export is computed once here rather than on the event loop later."""
    doc: Doc = Doc()
    index = CellIndex(doc)
    fresh = not updates
    if fresh:
        load_notebook(doc, nb)
    else:
        with doc.transaction():
            for update in updates:
                doc.apply_update(update)
    cut_off = []
    for entry in index:
        entry.export()
        if entry.ymap is not None and entry.ymap.get(EXECUTION_STATE) == "running" and entry.cell_id:
            cut_off.append(entry.cell_id)
    return _Loaded(doc, index, nb, stamp, fresh, cut_off)


def _settle_after_restart(room: Room, cut_off: list[str]) -> None:
    """What a previous run of the daemon left half-done: no kernel runs now, cells it
    was running get a note instead of staying "running" forever, and the notebook is
    4.5 (cell ids) from here on."""
    doc = room.doc
    state, meta = state_of(doc), meta_of(doc)
    with doc.transaction(origin=SERVER):
        if state.get(KERNEL_STATUS) not in (None, "none", "dead"):
            state[KERNEL_STATUS] = "none"
        if FILE_ERROR in state:
            del state[FILE_ERROR]  # the file sync finds out afresh
        minor = meta.get("nbformat_minor")
        if not isinstance(minor, (int, float)) or minor < MIN_NBFORMAT_MINOR:
            meta["nbformat_minor"] = MIN_NBFORMAT_MINOR
        if not isinstance(meta.get("metadata"), Map):
            meta["metadata"] = Map()
        if cut_off:
            writer = OutputWriter(doc, index=room.index)
            for cell_id in cut_off:
                writer.add_error(cell_id, CUT_OFF[0], CUT_OFF[1], [f"{CUT_OFF[0]}: {CUT_OFF[1]}"])
                writer.set_execution_state(cell_id, "idle")
    if cut_off:
        logger.warning("%s: %d cell(s) were cut off by a restart", room.name, len(cut_off))
