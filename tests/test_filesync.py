"""When a room's file is written: debounced, bounded under constant change, and
rarer while the room's kernel runs code (in process: real store, real files)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pycrdt import Array, Map, Text

from crdtnb.files import NotebookFiles
from crdtnb.schema import KERNEL_STATUS as KERNEL_STATUS_KEY
from crdtnb.room import Room
from crdtnb.rooms import RoomManager, RoomSettings
from crdtnb.store import SQLiteStore

from .conftest import read_sources, write_notebook

SETTINGS = RoomSettings(save_delay=0.2, save_max_delay=0.6, busy_save_max_delay=30.0, poll_interval=0.2)


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[RoomManager]:
    write_notebook(tmp_path / "root" / "nb.ipynb", ["start"])
    async with SQLiteStore(tmp_path / "state.sqlite3") as store:
        rooms = RoomManager(NotebookFiles(tmp_path / "root"), store, SETTINGS)
        yield rooms
        await rooms.close()


def _source(room: Room) -> Text:
    cell = room.doc.get("cells", type=Array)[0]
    assert isinstance(cell, Map)
    source = cell["source"]
    assert isinstance(source, Text)
    return source


def _set_kernel_status(room: Room, status: str) -> None:
    room.doc.get("state", type=Map)[KERNEL_STATUS_KEY] = status


async def _type_for(room: Room, seconds: float, every: float = 0.05) -> None:
    """Change the document without pause (what a streaming cell does)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _source(room).insert(len(_source(room)), ".")
        await asyncio.sleep(every)


async def test_constant_change_is_saved_at_least_every_save_max_delay(manager: RoomManager) -> None:
    path = manager.files.root / "nb.ipynb"
    async with manager.hold("nb.ipynb") as room:
        await _type_for(room, 1.5)
        on_disk = read_sources(path)[0]
        # Saved while the changes went on, not only after they stopped.
        assert on_disk.startswith("start.") and len(on_disk) > len("start.")


async def test_while_the_kernel_is_busy_the_file_waits_then_is_saved_when_it_is_idle(manager: RoomManager) -> None:
    path = manager.files.root / "nb.ipynb"
    async with manager.hold("nb.ipynb") as room:
        _set_kernel_status(room, "busy")
        await _type_for(room, 1.5)  # 2.5 x save_max_delay
        assert read_sources(path) == ["start"]  # no rewrite mid-run ...
        _set_kernel_status(room, "idle")
        deadline = time.monotonic() + 5
        while read_sources(path)[0] != str(_source(room)):
            assert time.monotonic() < deadline, "not saved after the kernel went idle"
            await asyncio.sleep(0.05)
        # ... and once idle, the usual debounce applies again.
        assert read_sources(path)[0].startswith("start....")
