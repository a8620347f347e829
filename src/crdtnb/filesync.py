"""Keeps one room and its .ipynb file in step.

Saves are debounced (``save_delay`` after the last change, at most
``save_max_delay`` under constant change, ``busy_save_max_delay`` while the
room's kernel runs code) and atomic. A file changed behind our back is merged
three-way into the room (see ``merge.merge_disk_changes``), with the *base*
being the document as it last matched the file; the base and the file's hash
live in the store, so a change made while the daemon was down is merged on the
next load too.

Nothing written outside is ever overwritten unseen: a save first merges a file
that changed since it was read, and the write itself refuses to replace a file
that changed in the meantime (then the save merges and tries again).

Two kinds of trouble, both shown to clients as ``state.file_error``:
- the file on disk is not a valid notebook (someone is writing it, or broke it):
  saving pauses until it reads as valid again (checked every poll);
- the document cannot be written (the disk is full, a directory is gone): the
  save is retried on the next change, and at the latest after ``retry_delay``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from pycrdt import Doc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from . import ipynb
from .auth import Action
from .background import in_background, let_go_of_notebook, let_go_of_pieces
from .extensions import (
    ChangesDurable,
    DaemonStarted,
    DaemonStopping,
    Extension,
    FileFailed,
    FileMerged,
    FileSaved,
    RoomDeleting,
    RoomDisowned,
    RoomLoading,
    RoomOwned,
    RoomRenamed,
    RoomUnloaded,
    RoomUnloading,
)
from .files import FileChanged, FileStamp, InvalidNotebook, NotebookFiles, NotebookNotFound, PathError, release
from .merge import merge_disk_changes_in_pieces
from .notebook import canonical_notebook, notebook_pieces
from .origins import FILE
from .pieces import ROW_BYTES, diff_in_pieces, diff_plan, from_rows, to_rows, unpack
from .room import Room
from .rooms import served
from .schema import FILE_ERROR, SAVED_AT, kernel_busy, state_of
from .settings import FileSettings
from .store import Store

if TYPE_CHECKING:
    from .api import Api

logger = logging.getLogger("crdtnb.files")

BASE_KEY = "file_base"  # the base: one update, or (a big one) where its parts are
SHA_KEY = "file_sha256"
# BASE_KEY's value when the base is in parts, followed by {"slot", "counts"} in JSON: the
# parts are under BASE_KEY/<slot>/<n>, written into the slot not in use, then switched to.
_BASE_PARTS = b"crdtnb-base-parts\x00"
WRITE_ATTEMPTS = 3  # outside edits racing one save: merge and write again


class FileSync:
    def __init__(
        self,
        room: Room,
        files: NotebookFiles,
        store: Store,
        *,
        base: list[bytes] | None,
        stamp: FileStamp,
        settings: FileSettings | None = None,
    ) -> None:
        self.room = room
        self.files = files
        self.store = store
        # The document as it last matched the file, in pieces (pieces.py): None while only
        # the store holds it (read when a merge needs it).
        self.base = base
        self.stamp = stamp
        settings = settings or FileSettings()
        self.save_delay = settings.save_delay
        self.save_max_delay = settings.save_max_delay
        # A running cell may stream output for hours: rewriting the whole growing
        # notebook every few seconds would cost more than it gives, since every
        # output is already durable in the room's log the moment it arrives.
        self.busy_save_max_delay = settings.busy_save_max_delay
        self.poll_interval = settings.poll_interval
        self.retry_delay = settings.retry_delay
        self.disk_error: str | None = None  # the file on disk cannot be read as a notebook
        self.save_error: str | None = None  # the document could not be written
        self.saved_at: float | None = None
        self._real = files.resolve(room.name)  # resolved once: later symlink swaps are not followed
        self._dirty_since: float | None = None
        self._last_change = 0.0
        self._own_state: bytes | None = None  # the doc's state right after our own state writes
        # No task runs while nothing is due: the extension's one poller looks at every
        # open file (FileSync.poll); a saver task lives only while the room is dirty.
        self._running = False
        self._saver: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._first_check: asyncio.Task[None] | None = None
        self._base_unstored = False  # the base is new and not in the store yet

    @classmethod
    async def open(
        cls,
        room: Room,
        files: NotebookFiles,
        store: Store,
        stamp: FileStamp,
        settings: FileSettings | None = None,
    ) -> FileSync:
        """Attach to a room whose document came from the store or from the file (whose
        version on disk is ``stamp``). Merges the file if it changed since the stored base,
        and saves soon whatever the room holds that the file lacks (edits of a previous run
        that were logged but not saved, an upgrade to nbformat 4.5, a file not in
        nbformat's layout).

        That last comparison reads the whole file and the whole document: it runs after
        the room is served (it can only ask for a save). An unchanged file is not parsed
        before then, nor is the stored base read until a merge needs it."""
        sha = await store.get_meta(room.name, SHA_KEY)
        sync = cls(room, files, store, base=None, stamp=stamp, settings=settings)
        if sha is None:
            # The document was just loaded from this very file. Its base is stored once
            # the room is served (a big one takes a while to write): see _check_unsaved.
            sync.base = await _encode_base(room)
            sync._base_unstored = True
        elif sha.decode() != stamp.sha256:
            logger.info("%s changed on disk while closed: merging", room.name)
            nb, stamp = await in_background(files.read, room.name)
            await sync._merge(nb, stamp)
        sync._first_check = asyncio.create_task(sync._check_unsaved(), name=f"filesync-check:{room.name}")
        sync._first_check.add_done_callback(sync._first_check_done)
        sync._note_saved(stamp.mtime_ns / 1e9)
        return sync

    def _first_check_done(self, task: asyncio.Task[None]) -> None:
        if self._first_check is task:
            self._first_check = None  # a finished task still holds its coroutine

    async def _check_unsaved(self) -> None:
        """Store the base if it is new, then ask for a save if the room holds something
        the file lacks."""
        try:
            await served(self.room)
            async with self._lock:
                if self._base_unstored:  # a save or merge since has stored a newer one
                    await self._remember_base()
            if not await in_background(_file_matches, self.files, self.room.name, self.room.index.export()):
                self._own_state = None  # not only our own note of the last save
                self.changed()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the file went or broke meanwhile: the poll sees to it
            logger.info("comparing %s with its file: %s", self.room.name, exc)

    def start(self) -> None:
        self._running = True
        self._ensure_saver()

    async def stop(self) -> None:
        """Stop polling and saving (nothing more is written). A save under way is let
        finish first: its write runs on a thread that no cancel would stop."""
        self._running = False
        async with self._lock:
            tasks = [task for task in (self._saver, self._checker, self._first_check) if task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """Stop, saving unsaved changes first."""
        await self.stop()
        if self._base_unstored:  # closed before it was served
            await self._remember_base()
        await self.room.flushed()
        if self._dirty_since is not None:
            await self.save()

    @asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """No read or write of the file while the block runs (it is being moved)."""
        async with self._lock:
            yield

    def moved(self) -> None:
        """The room's file is now the one of its (new) name."""
        self._real = self.files.resolve(self.room.name)

    @property
    def dirty(self) -> bool:
        return self._dirty_since is not None

    @property
    def error(self) -> str | None:
        return self.disk_error or self.save_error

    def changed(self) -> None:
        if self._own_state is not None and self.room.doc.get_state() == self._own_state:
            return  # only our own note of the save: nothing new to write
        self._own_state = None
        now = time.monotonic()
        self._last_change = now
        if self._dirty_since is None:
            self._dirty_since = now
            self._ensure_saver()
        # Later changes only push the deadline back: the sleeping saver finds that
        # out when it wakes, so a busy room costs no wake-up per change.

    def poll(self) -> None:
        """The poller's look at the file (a stat): a change made outside is merged by
        a task of its own, started only then."""
        if not self._running or self._checker is not None:
            return
        try:
            st = os.stat(self._real)
        except OSError:
            return  # gone: the next save writes it again
        if not self.stamp.same_stat(st):
            self._checker = asyncio.create_task(self._check(), name=f"filecheck:{self.room.name}")

    async def _check(self) -> None:
        try:
            await self.check_disk()
            self._ensure_saver()  # a file that was broken may be fine again
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("file sync of %s failed", self.room.name)
        finally:
            self._checker = None

    def _ensure_saver(self) -> None:
        if self._running and self._saver is None and self._save_due() is not None:
            self._saver = asyncio.create_task(self._save_when_due(), name=f"filesave:{self.room.name}")

    def _save_due(self) -> float | None:
        if self._dirty_since is None or self.disk_error is not None:
            return None  # a broken file on disk is re-read at the next poll
        max_delay = self.busy_save_max_delay if kernel_busy(self.room.doc) else self.save_max_delay
        return min(self._last_change + self.save_delay, self._dirty_since + max_delay)

    async def _save_when_due(self) -> None:
        """Sleep until the save is due (changes push it back), save, until clean; a
        file broken on disk ends it too (the poller's check starts it again)."""
        try:
            while (due := self._save_due()) is not None:
                delay = due - time.monotonic()
                if delay > 0:
                    # At most a poll apart: the due time moves when the kernel stops.
                    await asyncio.sleep(min(delay, self.poll_interval))
                    continue
                try:
                    await self.save()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("saving %s failed", self.room.name)
                    await asyncio.sleep(self.retry_delay)
        finally:
            self._saver = None

    async def save(self) -> float | None:
        """Write the document to its file now; return the time of the last successful
        save (None if the file cannot be written: see ``error``)."""
        async with self._lock:
            if self.disk_error is not None:
                return None  # never overwrite a file someone else is writing or broke
            self._dirty_since = None
            for _ in range(WRITE_ATTEMPTS):
                await self._merge_outside_edit()
                if self.disk_error is not None:
                    return None
                nb, base = await self._snapshot()
                try:
                    stamp = await in_background(self.files.write, self.room.name, nb, self.stamp)
                except FileChanged:
                    continue  # written outside while we wrote: merge that and write again
                except (InvalidNotebook, PathError, OSError) as exc:
                    self._fail_save(f"{self.room.name} could not be saved: {exc}")
                    return None
                written = stamp.sha256 != self.stamp.sha256 or stamp.mtime_ns != self.stamp.mtime_ns
                self.base, self.stamp = base, stamp
                await self._remember_base()
                self.save_error = None
                self._note_saved(time.time() if written else self.saved_at)
                logger.debug("saved %s", self.room.name)
                assert self.saved_at is not None
                self.room.hooks.notify("on_file_saved", FileSaved(self.room, self.room.name, self.saved_at, written))
                return self.saved_at
            self._fail_save(f"{self.room.name} keeps changing on disk; saving again soon")
            return None

    def _fail_save(self, error: str) -> None:
        logger.error("%s", error)
        self.save_error = error
        self._show_error()
        self.room.hooks.notify("on_file_failed", FileFailed(self.room, self.room.name, error))
        # Retried on the next change, and in any case after retry_delay (a disk that
        # was full may have room again): never in a loop.
        now = time.monotonic()
        self._dirty_since = now - self.save_max_delay + self.retry_delay
        self._last_change = now - self.save_delay + self.retry_delay

    async def _merge_outside_edit(self) -> None:
        """Merge the file into the room if it changed since we last read or wrote it."""
        try:
            st = os.stat(self._real)
        except (FileNotFoundError, NotADirectoryError):
            return  # deleted: the next save writes it again
        if self.stamp.same_stat(st):
            return
        try:
            nb, stamp = await in_background(self.files.read, self.room.name)
        except NotebookNotFound:
            return
        except InvalidNotebook as exc:
            # Never overwrite a file someone is in the middle of writing or broke:
            # saving pauses until it is valid again.
            self.disk_error = str(exc)
            self.stamp = FileStamp.of(st)
            self._show_error()
            logger.error("%s", exc)
            self.room.hooks.notify("on_file_failed", FileFailed(self.room, self.room.name, self.disk_error))
            return
        if self.disk_error is not None:
            self.disk_error = None
            self._show_error()
        if stamp.sha256 == self.stamp.sha256:
            self.stamp = stamp
            return
        logger.info("%s changed on disk: merging into the open room", self.room.name)
        await self._merge(nb, stamp)

    async def check_disk(self) -> None:
        """Merge the file into the room if someone else changed it (the poll)."""
        async with self._lock:
            await self._merge_outside_edit()

    async def _merge(self, nb: dict[str, Any], stamp: FileStamp) -> None:
        was_dirty = self.dirty
        base = self.base if self.base is not None else await self._stored_base()
        with self.room.doc.transaction(origin=FILE):
            self.base = merge_disk_changes_in_pieces(self.room.doc, base, nb)
        self.stamp = stamp
        await self._remember_base()
        await self.room.flushed()
        if not was_dirty and await in_background(_same_notebook, self.room.index.export(), nb):
            # The room now equals the file: nothing to write back.
            self._dirty_since = None
        self.room.hooks.notify("on_file_merged", FileMerged(self.room, self.room.name))

    async def _snapshot(self) -> tuple[dict[str, Any], list[bytes]]:
        """The export to write and the base that goes with it: the document at one moment.
        A big document is encoded a piece at a time, the loop free in between; if it
        changed meanwhile, again (a busy room's third try is done in one go)."""
        room = self.room
        for _ in range(2):
            mark = room.changes
            nb = room.index.export()
            pieces: list[bytes] = []
            for vector in diff_plan(room.doc):
                if pieces:
                    await asyncio.sleep(0)
                pieces.append(room.doc.get_update(vector) if vector else room.doc.get_update())
            if room.changes == mark:
                return nb, pieces
        return room.index.export(), diff_in_pieces(room.doc)

    async def _stored_base(self) -> list[bytes]:
        name = self.room.name
        value = await self.store.get_meta(name, BASE_KEY)
        if value is None:
            return await _encode_base(self.room)
        if not value.startswith(_BASE_PARTS):
            return unpack(value)
        where = json.loads(value[len(_BASE_PARTS) :])
        parts = [await self.store.get_meta(name, _part_key(where["slot"], n)) for n in range(where["counts"][where["slot"]])]
        if any(part is None for part in parts):
            raise RuntimeError(f"the file base of {name} misses parts")
        return from_rows([part for part in parts if part is not None])

    async def _remember_base(self) -> None:
        """Store the base, then the file's hash (in that order: a hash stored with an older
        base would have a later merge undo what the file has)."""
        assert self.base is not None
        self._base_unstored = False
        name, base = self.room.name, self.base
        if len(base) == 1 and len(base[0]) <= ROW_BYTES:
            await self.store.set_meta(name, BASE_KEY, base[0])
        else:
            # A big base in rows of at most ROW_BYTES (one blob would be copied whole, by
            # calls that hold the GIL), each its own write (others' appends go between):
            # written where the current base is not, then switched to.
            current = await self.store.get_meta(name, BASE_KEY)
            where = json.loads(current[len(_BASE_PARTS) :]) if current and current.startswith(_BASE_PARTS) else None
            slot = 1 - where["slot"] if where else 0
            counts = where["counts"] if where else [0, 0]
            written = 0
            for row in to_rows(base):
                await self.store.set_meta(name, _part_key(slot, written), row)
                written += 1
            for number in range(written, counts[slot]):
                await self.store.set_meta(name, _part_key(slot, number), b"")
            counts[slot] = written
            await self.store.set_meta(name, BASE_KEY, _BASE_PARTS + json.dumps({"slot": slot, "counts": counts}).encode())
        await self.store.set_meta(name, SHA_KEY, self.stamp.sha256.encode())
        if self.base is base:
            # Kept in the store, not in every open room: a merge reads it back.
            self.base = None
            await let_go_of_pieces(base)

    def _note_saved(self, when: float | None) -> None:
        self.saved_at = when
        state = state_of(self.room.doc)
        with self.room.doc.transaction(origin=FILE):
            if when is not None and state.get(SAVED_AT) != when:
                state[SAVED_AT] = when
            if self.error is None and FILE_ERROR in state:
                del state[FILE_ERROR]
        self._own_state = self.room.doc.get_state()

    def _show_error(self) -> None:
        state = state_of(self.room.doc)
        with self.room.doc.transaction(origin=FILE):
            error = self.error
            if error is None:
                if FILE_ERROR in state:
                    del state[FILE_ERROR]
            elif state.get(FILE_ERROR) != error:
                state[FILE_ERROR] = error
        self._own_state = self.room.doc.get_state()


def _load_in_pieces(doc: Doc, nb: dict[str, Any]) -> None:
    """The notebook into the room's empty document, one transaction per slice of cells
    (short pycrdt calls: see notebook.notebook_pieces)."""
    for piece in notebook_pieces(nb):
        doc.apply_update(piece)


def _part_key(slot: int, number: int) -> str:
    return f"{BASE_KEY}/{slot}/{number}"


async def _encode_base(room: Room) -> list[bytes]:
    """The room's document as a file base, in pieces (pieces.py). On a worker thread while
    nobody else can touch the document (the room is being opened), else on the loop."""
    if room.peers:
        return diff_in_pieces(room.doc)
    return await in_background(diff_in_pieces, room.doc)


def _same_notebook(exported: dict[str, Any], nb: dict[str, Any]) -> bool:
    """Whether the export equals the notebook, compared a cell at a time (one comparison
    of two big notebooks would hold the GIL for its whole length)."""
    theirs = canonical_notebook(nb)
    try:
        if {k: v for k, v in exported.items() if k != "cells"} != {k: v for k, v in theirs.items() if k != "cells"}:
            return False
        mine, other = exported["cells"], theirs["cells"]
        return len(mine) == len(other) and all(a == b for a, b in zip(mine, other))
    finally:
        let_go_of_notebook(theirs)


def _file_matches(files: NotebookFiles, name: str, exported: dict[str, Any]) -> bool:
    """Whether the file holds the export (on a worker thread: what it reads dies there)."""
    nb, _ = files.read(name)
    try:
        return _same_notebook(exported, nb)
    finally:
        let_go_of_notebook(nb)


def _read_into(files: NotebookFiles, name: str, doc: Doc | None, known_sha: str | None) -> FileStamp:
    """Check the file of a room being opened and, given the room's empty ``doc``, load
    it there; a file whose hash is ``known_sha`` (it was valid when stored) is not parsed
    again. On a worker thread: the bytes and the notebook, tens of megabytes for a big
    one, are freed there, a piece at a time, not on the loop."""
    data, stamp = files.read_bytes(name)
    try:
        if doc is None and known_sha == stamp.sha256:
            return stamp
        nb = files.parse(name, data)
    finally:
        release(data)
    try:
        if doc is not None:
            _load_in_pieces(doc, nb)
    finally:
        let_go_of_notebook(nb)
    return stamp


class FileSyncExtension(Extension):
    """The .ipynb behind every room: an empty room is loaded from it (a room is only
    served for a real, valid notebook), then kept in step by a FileSync; ``POST
    /api/notebooks/{path}/save`` saves now."""

    def __init__(self, settings: FileSettings | None = None) -> None:
        self.settings = settings or FileSettings()
        self.syncs: dict[str, FileSync] = {}
        # The version of each file on_room_loading read, for on_room_owned.
        self._loaded: dict[str, FileStamp] = {}
        self._files: NotebookFiles | None = None
        self._store: Store | None = None
        self._poller: asyncio.Task[None] | None = None
        self._preparing: asyncio.Task[None] | None = None

    def routes(self, api: Api) -> Sequence[BaseRoute]:
        return [api.route("/api/notebooks/{path:path}/save", self.save_now, methods=["POST"], action=Action.WRITE)]

    async def on_daemon_started(self, event: DaemonStarted) -> None:
        self._files = event.daemon.files
        self._store = event.daemon.store
        self._poller = asyncio.create_task(self._poll(), name="filesync-poller")
        # nbformat's schema compiled at start, not while the first notebook opens.
        self._preparing = asyncio.create_task(in_background(ipynb.prepare), name="filesync-schema")

    async def on_daemon_stopping(self, event: DaemonStopping) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
        if self._preparing is not None:
            await asyncio.gather(self._preparing, return_exceptions=True)  # a thread: let it end

    async def _poll(self) -> None:
        """One task looks at every open file each ``poll_interval``: a thousand idle
        rooms cost one wake-up and a thousand stats, not a thousand timers."""
        while True:
            await asyncio.sleep(self.settings.poll_interval)
            for sync in list(self.syncs.values()):
                try:
                    sync.poll()
                except Exception:
                    logger.exception("polling %s failed", sync.room.name)

    async def on_room_loading(self, event: RoomLoading) -> None:
        """A room is only served for a valid notebook: a missing or invalid file refuses
        it (raises). The file this room last read or wrote (its hash is in the store) was
        valid then: its bytes are only hashed, not parsed again."""
        assert self._files is not None and self._store is not None, "the daemon has not started"
        if event.from_store:
            known = await self._store.get_meta(event.name, SHA_KEY)
            stamp = await in_background(_read_into, self._files, event.name, None, known.decode() if known else None)
        else:
            stamp = await in_background(_read_into, self._files, event.name, event.doc, None)
        self._loaded[event.name] = stamp

    async def on_room_owned(self, event: RoomOwned) -> None:
        """The owner keeps the file: merged if it changed since the stored base."""
        assert self._files is not None and self._store is not None
        room = event.room
        loaded = self._loaded.pop(room.name, None)
        if room.name in self.syncs:
            return
        if loaded is not None and loaded.same_stat(await asyncio.to_thread(os.stat, self._files.locate(room.name))):
            stamp = loaded
        else:
            stamp = await in_background(self._files.read_stamp, room.name)
        sync = await FileSync.open(room, self._files, self._store, stamp, self.settings)
        sync.start()
        self.syncs[room.name] = sync

    async def on_room_disowned(self, event: RoomDisowned) -> None:
        """Another daemon keeps the file now: stop (saving first if this is a handover;
        writing nothing if the lease was lost)."""
        sync = self.syncs.pop(event.room.name, None)
        if sync is not None:
            await (sync.close() if event.graceful else sync.stop())

    def on_changes_durable(self, event: ChangesDurable) -> None:
        sync = self.syncs.get(event.room.name)
        if sync is not None:
            sync.changed()

    async def on_room_unloaded(self, event: RoomUnloaded) -> None:
        self._loaded.pop(event.name, None)

    async def on_room_unloading(self, event: RoomUnloading) -> None:
        sync = self.syncs.pop(event.room.name, None)
        if sync is not None:
            await sync.close()

    @asynccontextmanager
    async def paused(self, name: str) -> AsyncIterator[None]:
        """The open room's file is neither read nor written while the block runs."""
        sync = self.syncs.get(name)
        if sync is None:
            yield
            return
        async with sync.paused():
            yield

    async def on_room_renamed(self, event: RoomRenamed) -> None:
        sync = self.syncs.pop(event.old, None)
        if sync is not None:
            sync.moved()
            self.syncs[event.new] = sync

    async def on_room_deleting(self, event: RoomDeleting) -> None:
        sync = self.syncs.pop(event.name, None)
        if sync is not None:
            await sync.stop()

    async def save_now(self, api: Api, request: Request, path: str) -> Response:
        """Write the notebook to its file now (Ctrl+S)."""
        async with api.daemon.rooms.hold(path) as room:
            await room.flushed()
            sync = self.syncs[room.name]
            saved_at = await sync.save()
            if saved_at is None:
                return JSONResponse({"error": sync.error or "the notebook could not be saved"}, status_code=409)
            return JSONResponse({"saved_at": saved_at})
