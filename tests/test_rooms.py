"""The room manager: compaction trigger, and what loading leaves behind (in process: real SQLite store, real files)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pycrdt import Array, Map, Text

from crdtnb.files import NotebookNotFound
from crdtnb.room import Room
from crdtnb.rooms import RoomManager
from crdtnb.settings import RoomSettings
from crdtnb.store import SQLiteStore

from .conftest import in_process, write_notebook

THRESHOLD = 10  # log rows before a room is due for compaction


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    """A store the daemon starts and closes."""
    write_notebook(tmp_path / "root" / "nb.ipynb", ["start"])
    return SQLiteStore(tmp_path / "state.sqlite3", compact_threshold_rows=THRESHOLD)


async def _edit(room: Room, times: int) -> None:
    cell = room.doc.get("cells", type=Array)[0]
    assert isinstance(cell, Map)
    source = cell["source"]
    assert isinstance(source, Text)
    for _ in range(times):
        source.insert(len(source), ".")
        await room.flushed()


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def test_a_long_log_is_compacted(tmp_path: Path, store: SQLiteStore) -> None:
    async with in_process(tmp_path / "root", store, rooms=RoomSettings(compact_min_interval=0)) as daemon:
        async with daemon.rooms.hold("nb.ipynb") as room:
            await _edit(room, 3 * THRESHOLD)
            await _until(lambda: not store.needs_compaction("nb.ipynb"))
            assert len(await store.load("nb.ipynb")) <= THRESHOLD  # a snapshot and fewer than THRESHOLD rows
    # The compacted log still holds the whole document.
    async with in_process(tmp_path / "root", SQLiteStore(tmp_path / "state.sqlite3")) as daemon:
        async with daemon.rooms.hold("nb.ipynb") as room:
            assert str(room.doc.get("cells", type=Array)[0]["source"]) == "start" + "." * 3 * THRESHOLD


async def test_a_busy_room_is_compacted_at_most_once_per_interval(tmp_path: Path, store: SQLiteStore) -> None:
    interval = 2.0
    async with in_process(tmp_path / "root", store, rooms=RoomSettings(compact_min_interval=interval)) as daemon:
        await _busy_room(daemon.rooms, store, interval)


async def _busy_room(rooms: RoomManager, store: SQLiteStore, interval: float) -> None:
    async with rooms.hold("nb.ipynb") as room:
        await _edit(room, THRESHOLD + 1)  # the first compaction runs at once
        await _until(lambda: not store.needs_compaction("nb.ipynb"))
        started = time.monotonic()
        await _edit(room, 3 * THRESHOLD)  # due again, but within the interval
        await asyncio.sleep(0.2)
        assert time.monotonic() - started < interval, "too slow a machine for this test's timing"
        assert store.needs_compaction("nb.ipynb")
        assert len(await store.load("nb.ipynb")) >= 3 * THRESHOLD
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
        await _edit(room, 1)  # the next change after the interval compacts
        await _until(lambda: not store.needs_compaction("nb.ipynb"))


async def test_names_asked_for_leave_no_trace(tmp_path: Path) -> None:
    """Every name a client asks for takes a lock while its room loads: the table of
    those locks must not keep every name ever asked for (20k names: +60 MB)."""
    write_notebook(tmp_path / "root" / "nb.ipynb", ["x"])
    async with in_process(tmp_path / "root") as daemon:
        rooms = daemon.rooms
        for i in range(2000):
            with pytest.raises(NotebookNotFound):
                await rooms.acquire(f"missing-{i}.ipynb")
        async with rooms.hold("nb.ipynb"):
            pass
        assert len(rooms._locks) == 0
