"""Keeps one room and its .ipynb file in step.

Saves are debounced (``save_delay`` after the last change, at most
``save_max_delay`` under constant change, ``busy_save_max_delay`` while the
room's kernel runs code) and atomic. A file changed behind our
back is merged three-way into the room (see ``notebook.merge_disk_changes``),
with the *base* being the document as it last matched the file; the base and
the file's hash live in the store, so a change made while the daemon was down
is merged on the next load too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from pycrdt import Map

from .files import FileStamp, InvalidNotebook, NotebookFiles, NotebookNotFound
from .notebook import export_notebook, kernel_busy, merge_disk_changes
from .room import Room
from .store import Store

logger = logging.getLogger("crdtnb.files")

BASE_KEY = "file_base"
SHA_KEY = "file_sha256"


class FileSync:
    def __init__(
        self,
        room: Room,
        files: NotebookFiles,
        store: Store,
        *,
        base: bytes,
        stamp: FileStamp,
        save_delay: float = 1.0,
        save_max_delay: float = 10.0,
        busy_save_max_delay: float = 30.0,
        poll_interval: float = 1.0,
    ) -> None:
        self.room = room
        self.files = files
        self.store = store
        self.base = base
        self.stamp = stamp
        self.save_delay = save_delay
        self.save_max_delay = save_max_delay
        # A running cell may stream output for hours: rewriting the whole growing
        # notebook every few seconds would cost more than it gives, since every
        # output is already durable in the room's log the moment it arrives.
        self.busy_save_max_delay = busy_save_max_delay
        self.poll_interval = poll_interval
        self.error: str | None = None
        self._real = files.resolve(room.name)  # resolved once: later symlink swaps are not followed
        self._dirty_since: float | None = None
        self._last_change = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        room.on_change.append(self.changed)

    @classmethod
    async def open(cls, room: Room, files: NotebookFiles, store: Store, **options: float) -> FileSync:
        """Attach to a room whose document came from the store or from the file.

        Merges the file if it changed since the stored base."""
        base = await store.get_meta(room.name, BASE_KEY)
        sha = await store.get_meta(room.name, SHA_KEY)
        nb, stamp = await asyncio.to_thread(files.read, room.name)
        if base is None or sha is None:
            # The document was just loaded from this very file.
            base = room.doc.get_update()
            sync = cls(room, files, store, base=base, stamp=stamp, **options)
            await sync._remember_base()
        else:
            sync = cls(room, files, store, base=base, stamp=stamp, **options)
            if sha.decode() != stamp.sha256:
                logger.info("%s changed on disk while closed: merging", room.name)
                await sync._merge(nb, stamp)
        return sync

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"filesync:{self.room.name}")

    async def close(self) -> None:
        """Stop, saving unsaved changes first."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.room.flushed()
        if self._dirty_since is not None:
            await self.save()

    @property
    def dirty(self) -> bool:
        return self._dirty_since is not None

    def changed(self) -> None:
        now = time.monotonic()
        self._last_change = now
        if self._dirty_since is None:
            self._dirty_since = now
            self._wake.set()  # a save is now due, perhaps before the next poll
        # Later changes only push the deadline back: the sleeping task finds that
        # out when it wakes, so a busy room costs no wake-up per change.

    def _save_due(self) -> float | None:
        if self._dirty_since is None:
            return None
        max_delay = self.busy_save_max_delay if kernel_busy(self.room.doc) else self.save_max_delay
        return min(self._last_change + self.save_delay, self._dirty_since + max_delay)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_poll = time.monotonic() + self.poll_interval
        while True:
            due = self._save_due()
            wake_at = next_poll if due is None else min(due, next_poll)
            self._wake.clear()
            # A timer rather than wait_for: thousands of open rooms each wake every second.
            timer = loop.call_later(max(0.0, wake_at - time.monotonic()), self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()
            now = time.monotonic()
            try:
                if now >= next_poll:
                    next_poll = now + self.poll_interval
                    await self.check_disk()
                due = self._save_due()
                if due is not None and time.monotonic() >= due:
                    await self.save()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("file sync of %s failed", self.room.name)

    async def save(self) -> None:
        """Write the document to its file now (unless the file is broken on disk)."""
        async with self._lock:
            if self.error is not None:
                return
            self._dirty_since = None
            nb = export_notebook(self.room.doc)
            base = self.room.doc.get_update()
            try:
                stamp = await asyncio.to_thread(self.files.write, self.room.name, nb)
            except InvalidNotebook as exc:
                self._set_error(str(exc))
                return
            self.base, self.stamp = base, stamp
            await self._remember_base()
            logger.debug("saved %s", self.room.name)

    async def check_disk(self) -> None:
        """Merge the file into the room if someone else changed it."""
        async with self._lock:
            # A plain stat on the loop: microseconds, and thousands of open rooms poll.
            try:
                st = os.stat(self._real)
            except FileNotFoundError:
                return
            current = FileStamp(st.st_mtime_ns, st.st_size, "")
            if (current.mtime_ns, current.size) == (self.stamp.mtime_ns, self.stamp.size):
                return
            try:
                nb, stamp = await asyncio.to_thread(self.files.read, self.room.name)
            except NotebookNotFound:
                return
            except InvalidNotebook as exc:
                # Never overwrite a file someone is in the middle of writing or broke:
                # saving pauses until it is valid again.
                self._set_error(str(exc))
                self.stamp = FileStamp(current.mtime_ns, current.size, "")
                return
            self._set_error(None)
            if stamp.sha256 == self.stamp.sha256:
                self.stamp = stamp
                return
            logger.info("%s changed on disk: merging into the open room", self.room.name)
            await self._merge(nb, stamp)

    async def _merge(self, nb: dict, stamp: FileStamp) -> None:
        was_dirty = self.dirty
        self.base = merge_disk_changes(self.room.doc, self.base, nb)
        self.stamp = stamp
        await self._remember_base()
        await self.room.flushed()
        if not was_dirty and export_notebook(self.room.doc) == nb:
            # The room now equals the file: nothing to write back.
            self._dirty_since = None

    async def _remember_base(self) -> None:
        await self.store.set_meta(self.room.name, BASE_KEY, self.base)
        await self.store.set_meta(self.room.name, SHA_KEY, self.stamp.sha256.encode())

    def _set_error(self, error: str | None) -> None:
        if error != self.error:
            if error:
                logger.error("%s", error)
            self.error = error
            state = self.room.doc.get("state", type=Map)
            if error is None:
                if "file_error" in state:
                    del state["file_error"]
            else:
                state["file_error"] = error

