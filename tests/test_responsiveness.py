"""No request may stall every room: big notebooks are exported from per-cell caches (the
changed cells computed in slices between other work), and cells are found by id through an
index, not by walking the document. Real daemon; another room's round trips are watched
while the big requests run. (The bounds are generous: they catch the seconds-long stalls
of a quadratic walk, not milliseconds; bench/ measures the milliseconds.)"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import nbformat

from crdtnb.client import NotebookClient

from .conftest import Daemon


def _big_notebook(path: Path, cells: int) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"x = {i}  # some code to make a cell") for i in range(cells)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


async def _worst_round_trip(client: NotebookClient, busy: asyncio.Future[object]) -> float:
    """The slowest round trip of another room's client while `busy` runs."""
    cell = client.cell_ids()[0]
    worst = 0.0
    while not busy.done():
        start = time.monotonic()
        client.insert_text(cell, 0, "x")
        await client.roundtrip(timeout=60)
        worst = max(worst, time.monotonic() - start)
        await asyncio.sleep(0.02)
    return worst


async def test_getting_a_big_notebook_does_not_stall_other_rooms(daemon: Daemon, root: Path) -> None:
    _big_notebook(root / "many.ipynb", 20_000)
    # Open the room first (loading is not what this test is about).
    warm = await daemon.connect("many.ipynb", timeout=60)
    await warm.close()
    watcher = await daemon.connect("nb.ipynb")
    url = f"{daemon.url}/api/notebooks/many.ipynb"
    busy = asyncio.ensure_future(asyncio.to_thread(httpx.get, url, params={"token": daemon.token}, timeout=60))
    worst = await _worst_round_trip(watcher, busy)
    await watcher.close()
    response = busy.result()
    assert response.status_code == 200
    assert len(response.json()["cells"]) == 20_000
    assert worst < 1.5, f"another room waited {worst:.2f} s"


async def test_executing_unknown_cells_does_not_stall_other_rooms(daemon: Daemon, root: Path) -> None:
    _big_notebook(root / "two-thousand.ipynb", 2000)
    warm = await daemon.connect("two-thousand.ipynb", timeout=60)
    await warm.close()
    watcher = await daemon.connect("nb.ipynb")
    url = f"{daemon.url}/api/notebooks/two-thousand.ipynb/execute"
    ids = [f"unknown-{i}" for i in range(10_000)]
    busy = asyncio.ensure_future(
        asyncio.to_thread(httpx.post, url, params={"token": daemon.token}, json={"cell_ids": ids}, timeout=60)
    )
    worst = await _worst_round_trip(watcher, busy)
    await watcher.close()
    response = busy.result()
    assert response.status_code == 202 and response.json()["queued"] == []
    assert worst < 1.5, f"another room waited {worst:.2f} s"
