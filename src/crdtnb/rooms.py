"""The set of open rooms: loading on first use (through the extensions' loading hooks),
eviction when idle, shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from pycrdt import Doc

from .awareness import PresenceLimits
from .background import in_background, let_go_of_pieces
from .extensions import Hooks, RoomDisowned, RoomLoaded, RoomLoading, RoomOwned, RoomUnloaded, RoomUnloading
from .fanout import Fanout, LocalFanout
from .files import NotebookFiles
from .ownership import LocalOwnership, Ownership
from .room import Room, RoomBroken
from .schema import CellIndex
from .settings import RoomSettings
from .store import Store

logger = logging.getLogger("crdtnb.rooms")


class _OpenRoom:
    def __init__(self, room: Room) -> None:
        self.room = room
        self.holders = 0
        self.evict_timer: asyncio.TimerHandle | None = None
        # Work left from the load, done once the room is served (see _settle).
        self.settling: asyncio.Task[None] | None = asyncio.create_task(_settle(room), name=f"settle:{room.name}")
        self.settling.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        if self.settling is task:
            self.settling = None  # a finished task still holds its coroutine and result

    async def stop_settling(self) -> None:
        task, self.settling = self.settling, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


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


class RoomManager:
    def __init__(
        self,
        files: NotebookFiles,
        store: Store,
        settings: RoomSettings | None = None,
        fanout: Fanout | None = None,
        hooks: Hooks | None = None,
        ownership: Ownership | None = None,
    ) -> None:
        self.files = files
        self.store = store
        self.fanout = fanout or LocalFanout()
        self.settings = settings or RoomSettings()
        self.hooks = hooks or Hooks()
        self.ownership: Ownership = ownership or LocalOwnership()
        self._broken_tasks: set[asyncio.Task[None]] = set()
        self.presence = PresenceLimits(self.settings.max_presence_clients, self.settings.max_presence_state_bytes)
        self._open: dict[str, _OpenRoom] = {}
        self._locks = _KeyedLocks()
        self._closing = False

    @property
    def rooms(self) -> dict[str, Room]:
        return {name: entry.room for name, entry in self._open.items()}

    def get(self, name: str) -> Room | None:
        """The room of a canonical name, if it is open."""
        entry = self._open.get(name)
        return entry.room if entry is not None else None

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
                entry = _OpenRoom(await self._load(name))
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

    @asynccontextmanager
    async def exclusive(self, *names: str) -> AsyncIterator[None]:
        """Hold ``names`` (canonical): no room of theirs loads or is evicted meanwhile.
        For a rename or a delete, which then use ``rename`` and ``unload``."""
        async with AsyncExitStack() as stack:
            for name in sorted(set(names)):  # one order for everyone: no deadlock
                await stack.enter_async_context(self._locks.hold(name))
            yield

    def rename(self, old: str, new: str) -> Room | None:
        """The open room of ``old`` (if any) is now the room of ``new``: its holders,
        document and peers stay. Call inside ``exclusive(old, new)``."""
        entry = self._open.pop(old, None)
        if entry is None:
            return None
        entry.room.name = new
        self._open[new] = entry
        return entry.room

    async def unload(self, name: str) -> None:
        """Unload the room of ``name`` now, whoever holds it (a deleted notebook).
        Call inside ``exclusive(name)``."""
        entry = self._open.pop(name, None)
        if entry is not None:
            await self._close_entry(entry)
            logger.info("unloaded room %s", name)

    async def _load(self, name: str) -> Room:
        while True:
            updates = await self.store.load(name)
            stored = len(updates)
            doc, index = await in_background(_build_document, updates)  # which empties updates
            # Extensions fill an empty document (the .ipynb) or refuse the room by raising.
            # What they write is seeded as they wrote it: a big notebook is written in
            # pieces, and one update of it all would take one long pycrdt call to encode.
            filled: list[bytes] = []
            subscription = doc.observe(lambda event, filled=filled: filled.append(event.update))
            try:
                try:
                    await self.hooks.run("on_room_loading", RoomLoading(name, doc, index, from_store=bool(stored)))
                finally:
                    doc.unobserve(subscription)
                # Only the first daemon to store a new room's state seeds it: two seeds
                # would be two copies of every cell.
                seeded = stored or await self.store.seed(name, filled or [doc.get_update()])
                await let_go_of_pieces(filled)
                if seeded:
                    break
            except BaseException:
                index.close()
                raise
            index.close()
            logger.info("room %s was seeded by another daemon meanwhile: loading it again", name)
        room = Room(
            name, doc, self.store, self.fanout, index, self.presence, self.hooks, self.settings.store_timeout
        )
        room.on_broken = self._room_broke
        # Cell exports are computed once, off the loop; the outputs the room holds now are
        # legitimate (a peer may move their cells around); the schema is checked whole.
        await in_background(room.guard.check_document)
        room.start()
        await self.hooks.run("on_room_loaded", RoomLoaded(room))
        logger.info("opened room %s (%s)", name, f"{stored} stored updates" if stored else "new")
        if await self.ownership.claim(name):
            await self.hooks.run("on_room_owned", RoomOwned(room))
        return room

    async def gained(self, name: str) -> None:
        """This daemon became the owner of an open room (a cluster's lease)."""
        entry = self._open.get(name)
        if entry is not None and entry.room.broken is None:
            await self.hooks.run("on_room_owned", RoomOwned(entry.room))

    async def lost(self, name: str, reason: str) -> None:
        """This daemon lost an open room's lease: the owner's work stops, writing nothing."""
        entry = self._open.get(name)
        if entry is not None:
            await self.hooks.run("on_room_disowned", RoomDisowned(entry.room, reason))

    async def hand_over(self, name: str) -> bool:
        """Give an open room's ownership up cleanly (draining a daemon in a cluster): the
        owner's work finishes (a save, notes on cut-off cells), then the lease goes."""
        entry = self._open.get(name)
        if entry is None or not self.ownership.owns(name):
            return False
        room = entry.room
        await self.hooks.run("on_room_disowned", RoomDisowned(room, "handed over", graceful=True))
        try:
            await room.flushed()
        except RoomBroken:
            pass
        await self.ownership.release(name)
        return True

    def _room_broke(self, room: Room, reason: str) -> None:
        task = asyncio.create_task(self._drop_broken(room, reason), name=f"drop:{room.name}")
        self._broken_tasks.add(task)
        task.add_done_callback(self._broken_tasks.discard)

    async def _drop_broken(self, room: Room, reason: str) -> None:
        """A room whose changes cannot be made durable is unloaded without saving (its
        clients keep their edits and resync when they come back)."""
        async with self._locks.hold(room.name):
            entry = self._open.get(room.name)
            if entry is None or entry.room is not room:
                return
            del self._open[room.name]
            if entry.evict_timer is not None:
                entry.evict_timer.cancel()
            await entry.stop_settling()
            if self.ownership.owns(room.name):
                await self.hooks.run("on_room_disowned", RoomDisowned(room, reason))
                await self.ownership.release(room.name)
            await room.close()
            await self.hooks.run("on_room_unloaded", RoomUnloaded(room.name))

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
        await entry.stop_settling()
        room = entry.room
        try:
            await room.flushed()
            await self.hooks.run("on_room_unloading", RoomUnloading(room))
            await room.flushed()  # what the extensions wrote while unloading
        except RoomBroken:
            pass  # nothing more can be stored: it is unloaded as it is
        await room.close()
        if self.ownership.owns(room.name):
            await self.ownership.release(room.name)
        await self.hooks.run("on_room_unloaded", RoomUnloaded(room.name))

    async def close(self) -> None:
        """Unload every room (each extension saves what it keeps)."""
        self._closing = True
        if self._broken_tasks:
            await asyncio.gather(*self._broken_tasks, return_exceptions=True)
        for name, entry in list(self._open.items()):
            try:
                await self._close_entry(entry)
            except Exception:
                logger.exception("closing room %s failed", name)
        self._open.clear()


# Work left from loading a room waits until its first peer is served, or this long.
SETTLE_AFTER = 1.0
# Cells' exports are made ahead for rooms this big: a smaller room's take less than a
# millisecond when asked for, and would cost every idle room memory.
WARM_CELLS = 64
# That work can wait: a millisecond of it at a time, then the loop is left idle as long.
SETTLE_SLICE = 0.001
SETTLE_PAUSE = 0.001


async def served(room: Room) -> None:
    """Return once the room's first peer has been sent the document (at most SETTLE_AFTER
    seconds): what a load leaves for later must not delay that first answer."""
    await room.first_served(SETTLE_AFTER)


async def _settle(room: Room) -> None:
    """What a load leaves for later, a few milliseconds at a time: the fingerprints of the
    outputs the room loaded with (the guard asks for them when a peer moves a cell with
    outputs) and each cell's JSON for exports."""
    try:
        await served(room)
        await room.guard.ledger.catch_up(SETTLE_SLICE, SETTLE_PAUSE)
        if len(room.index) >= WARM_CELLS:
            await room.index.warm(SETTLE_SLICE, SETTLE_PAUSE)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("settling room %s failed", room.name)


def _build_document(updates: list[bytes]) -> tuple[Doc, CellIndex]:
    """A room's document from its log, built on a worker thread before anyone shares it:
    the index is subscribed first, so it costs O(n). One transaction per update: pycrdt
    holds the GIL for each call, and a transaction's commit does its own work on all it
    changed, so one transaction for a big log would stop the event loop as long. Each
    update is dropped from ``updates`` once applied: freed here, not on the loop."""
    doc: Doc = Doc()
    index = CellIndex(doc)
    updates.reverse()
    while updates:
        doc.apply_update(updates.pop())
    return doc, index
