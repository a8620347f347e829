"""When and how a room's file is written: debounced, bounded under constant change,
rarer while the room's kernel runs code; outside edits merged, never overwritten; failed
saves shown and retried (real store, real files; some tests against a real daemon)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nbformat
import pytest
from pycrdt import Array, Map, Text

from crdtnb.room import Room
from crdtnb.rooms import RoomManager
from crdtnb.schema import KERNEL_STATUS as KERNEL_STATUS_KEY
from crdtnb.settings import FileSettings

from .conftest import eventually, in_process, read_sources, write_notebook

SETTINGS = FileSettings(save_delay=0.2, save_max_delay=0.6, busy_save_max_delay=30.0, poll_interval=0.2)


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[RoomManager]:
    write_notebook(tmp_path / "root" / "nb.ipynb", ["start"])
    async with in_process(tmp_path / "root", files=SETTINGS) as daemon:
        yield daemon.rooms


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


# --------------------------------------------------------------------------- outside edits


def _rewrite_outside(path: Path, edit: Callable[[nbformat.NotebookNode], None]) -> None:
    """What an editor or `git checkout` does: read, change, write a temp file, rename."""
    nb = nbformat.read(str(path), as_version=4)
    edit(nb)
    tmp = path.with_name(f".{path.name}.outside")
    nbformat.write(nb, str(tmp))
    os.replace(tmp, path)


async def test_outside_edits_made_while_a_client_types_are_never_overwritten(daemon_factory, root: Path) -> None:
    """A client types without pause while an outside tool rewrites another cell ten times,
    0.3-0.9 s apart. A save follows every keystroke and the file is polled only every 5 s:
    a save must merge the file before it writes, never replace it unseen."""
    path = root / "race.ipynb"
    write_notebook(path, ["typed: ", "outside:"])
    daemon = daemon_factory("--save-delay", "0.02", "--poll-interval", "5")
    client = await daemon.connect("race.ipynb")
    typed, edited = client.cell_ids()
    stop = asyncio.Event()

    async def type_on() -> None:
        while not stop.is_set():
            client.insert_text(typed, len(client.source(typed)), "x")
            await asyncio.sleep(0.06)

    typing = asyncio.create_task(type_on())
    rng = random.Random(7)
    try:
        for k in range(10):
            await asyncio.sleep(rng.uniform(0.3, 0.9))

            def add_marker(nb: nbformat.NotebookNode, k: int = k) -> None:
                cell = next(c for c in nb.cells if c.get("id") == edited)
                cell.source += f" [edit {k}]"

            await asyncio.to_thread(_rewrite_outside, path, add_marker)
    finally:
        stop.set()
        await typing
    markers = [f"[edit {k}]" for k in range(10)]
    await client.wait_for(lambda _: all(m in client.source(edited) for m in markers), timeout=15)
    await client.roundtrip()
    await client.close()
    assert daemon.stop() == 0
    on_disk = read_sources(path)
    assert all(m in on_disk[1] for m in markers), on_disk[1]
    assert on_disk[0].startswith("typed: x")


# --------------------------------------------------------------------------- failed saves


async def test_a_failed_save_is_shown_retried_and_recovers_without_spinning(manager: RoomManager) -> None:
    path = manager.files.root / "nb.ipynb"
    async with manager.hold("nb.ipynb") as room:
        cells = room.doc.get("cells", type=Array)
        state = room.doc.get("state", type=Map)
        with room.doc.transaction():
            cells[0]["cell_type"] = "code"
            cells[0]["outputs"] = Array([Map({"output_type": "display_data", "data": {"text/plain": 5}, "metadata": {}})])
        _source(room).insert(0, "broken ")
        deadline = time.monotonic() + 5
        while "file_error" not in state:
            assert time.monotonic() < deadline, "the failed save was not shown"
            await asyncio.sleep(0.05)
        assert read_sources(path) == ["start"]
        # While the document cannot be saved, the file sync sleeps rather than retrying
        # in a loop (the bug: ~43,000 saves a second on the event loop).
        cpu = time.process_time()
        await asyncio.sleep(1.5)
        assert time.process_time() - cpu < 0.5
        # The document becomes valid again (outputs cleared, as a client may) and is saved.
        cells[0]["outputs"].clear()
        _source(room).insert(0, "fixed ")
        deadline = time.monotonic() + 5
        while read_sources(path) != ["fixed broken start"]:
            assert time.monotonic() < deadline, "saving did not recover"
            await asyncio.sleep(0.05)
        while "file_error" in state:
            assert time.monotonic() < deadline, "the error was not cleared"
            await asyncio.sleep(0.05)
        assert state["saved_at"] > time.time() - 10


async def test_unsaved_edits_reach_the_file_after_a_kill_and_restart(daemon_factory, root: Path) -> None:
    """Edits that were logged but never saved (the daemon was killed first) are saved
    when the room opens again, with nobody editing."""
    daemon = daemon_factory("--save-delay", "60")
    client = await daemon.connect("nb.ipynb")
    client.insert_text(client.cell_ids()[0], 0, "# logged, not saved\n")
    await client.roundtrip()
    daemon.kill()
    assert "logged" not in read_sources(root / "nb.ipynb")[0]
    daemon.restart()
    assert daemon.get("/api/notebooks/nb.ipynb").status_code == 200  # opens the room
    await eventually(lambda: read_sources(root / "nb.ipynb")[0].startswith("# logged, not saved\n"), timeout=15)


async def test_saving_now_and_the_time_of_the_last_save(daemon_factory, root: Path) -> None:
    daemon = daemon_factory("--save-delay", "60")
    client = await daemon.connect("nb.ipynb")
    client.insert_text(client.cell_ids()[0], 0, "# saved on request\n")
    await client.roundtrip()
    before = time.time()
    response = daemon.post("/api/notebooks/nb.ipynb/save")
    assert response.status_code == 200, response.text
    saved_at = response.json()["saved_at"]
    assert saved_at >= before - 1
    assert read_sources(root / "nb.ipynb")[0].startswith("# saved on request\n")
    await client.wait_for(lambda _: client.state.get("saved_at") == saved_at)
    # Nothing changed since: a second save writes nothing and keeps the time.
    assert daemon.post("/api/notebooks/nb.ipynb/save").json()["saved_at"] == saved_at
    await client.close()
