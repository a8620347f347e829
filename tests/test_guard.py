"""What a peer may write into a notebook: attacks on the schema and on the outputs are
repaired at once, for every client, REST and the file; what JupyterLab does (clear outputs,
move a cell, undo a delete) still works. Real daemon, real clients."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import nbformat
import pytest
from pycrdt import Array, Doc, Map, Text

from crdtnb.client import NotebookClient
from crdtnb.notebook import new_output_map
from crdtnb.protocol import encode_update

from .conftest import Daemon, eventually, read_sources, write_notebook

STREAM = {"output_type": "stream", "name": "stdout", "text": "real output\n"}


@pytest.fixture
def with_outputs(root: Path) -> Path:
    """A notebook whose first cell has an output and an execution count, as on disk."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("print('real output')", execution_count=3, outputs=[nbformat.v4.new_output(**STREAM)]),
        nbformat.v4.new_markdown_cell("# title"),
        nbformat.v4.new_code_cell("x = 1"),
    ]
    path = root / "out.ipynb"
    nbformat.write(nb, str(path))
    return path


def _cells(client: NotebookClient) -> Array:
    return client.cells


def _cell(client: NotebookClient, index: int) -> Map:
    cell = client.cells[index]
    assert isinstance(cell, Map)
    return cell


async def _converged(daemon: Daemon, attacker: NotebookClient, path: str) -> tuple[dict[str, Any], NotebookClient]:
    """Once the attack is stored: what REST, a fresh client and the attacker see."""
    await attacker.roundtrip()
    response = daemon.get(f"/api/notebooks/{path}")
    assert response.status_code == 200, response.text
    nb = response.json()
    nbformat.validate(nbformat.from_dict(copy.deepcopy(nb)))
    other = await daemon.connect(path)
    assert other.notebook() == nb
    # The attacker's own document was repaired too: the repair came back to it.
    await attacker.wait_for(lambda _: attacker.notebook() == nb, timeout=5)
    return nb, other


async def test_outputs_replaced_by_a_string_are_repaired(daemon: Daemon, with_outputs: Path) -> None:
    attacker = await daemon.connect("out.ipynb")
    _cell(attacker, 0)["outputs"] = "not a list"
    nb, other = await _converged(daemon, attacker, "out.ipynb")
    assert nb["cells"][0]["outputs"] == []  # gone rather than forged
    assert isinstance(_cell(other, 0)["outputs"], Array)
    await other.close()
    await attacker.close()


async def test_an_unknown_cell_type_is_put_back(daemon: Daemon, with_outputs: Path) -> None:
    attacker = await daemon.connect("out.ipynb")
    _cell(attacker, 1)["cell_type"] = "evil"
    nb, other = await _converged(daemon, attacker, "out.ipynb")
    assert [c["cell_type"] for c in nb["cells"]] == ["code", "markdown", "code"]
    await other.close()
    # A valid change of type still goes through.
    _cell(attacker, 1)["cell_type"] = "raw"
    nb, other = await _converged(daemon, attacker, "out.ipynb")
    assert nb["cells"][1]["cell_type"] == "raw"
    await other.close()
    await attacker.close()


async def test_a_cell_that_is_not_a_map_is_removed(daemon: Daemon, with_outputs: Path) -> None:
    attacker = await daemon.connect("out.ipynb")
    _cells(attacker).insert(1, Text("I am not a cell"))
    _cells(attacker).append("neither am I")
    nb, other = await _converged(daemon, attacker, "out.ipynb")
    assert len(nb["cells"]) == 3
    assert all(isinstance(cell, Map) for cell in other.cells)
    await other.close()
    await attacker.close()


async def test_broken_cell_fields_are_repaired(daemon: Daemon, with_outputs: Path) -> None:
    attacker = await daemon.connect("out.ipynb")
    with attacker.doc.transaction():
        _cell(attacker, 2)["source"] = 42
        _cell(attacker, 2)["metadata"] = "nope"
        _cell(attacker, 2)["id"] = "not a valid id!"
    nb, other = await _converged(daemon, attacker, "out.ipynb")
    cell = _cell(other, 2)
    assert isinstance(cell["source"], Text) and isinstance(cell["metadata"], Map)
    assert nb["cells"][2]["id"] == _cell(other, 2)["id"] != "not a valid id!"
    await other.close()
    await attacker.close()


async def test_notebook_format_keys_are_put_back(daemon: Daemon, with_outputs: Path) -> None:
    attacker = await daemon.connect("out.ipynb")
    meta = attacker.doc.get("meta", type=Map)
    with attacker.doc.transaction():
        meta["nbformat"] = "evil"
        meta["nbformat_minor"] = -1
        meta["metadata"] = 7
    nb, other = await _converged(daemon, attacker, "out.ipynb")
    assert (nb["nbformat"], nb["nbformat_minor"]) == (4, 5)
    assert isinstance(other.doc.get("meta", type=Map)["metadata"], Map)
    await other.close()
    await attacker.close()


async def test_forged_outputs_counts_and_states_are_undone(daemon: Daemon, with_outputs: Path) -> None:
    attacker = await daemon.connect("out.ipynb")
    first, last = _cell(attacker, 0), _cell(attacker, 2)
    with attacker.doc.transaction():
        last["outputs"].append(new_output_map({"output_type": "stream", "name": "stdout", "text": "forged\n"}))
        last["execution_count"] = 99
        last["execution_state"] = "running"
        first["execution_count"] = 42
        first["outputs"][0]["text"] += " tampered"
    nb, other = await _converged(daemon, attacker, "out.ipynb")
    assert nb["cells"][2]["outputs"] == [] and nb["cells"][2]["execution_count"] is None
    assert _cell(other, 2)["execution_state"] == "idle"
    assert nb["cells"][0]["execution_count"] == 3
    assert "tampered" not in str(nb["cells"][0]["outputs"])
    await other.close()
    await attacker.close()


async def test_a_new_cell_cannot_bring_outputs_of_its_own(daemon: Daemon, with_outputs: Path) -> None:
    attacker = await daemon.connect("out.ipynb")
    forged = {
        "id": "forged1",
        "cell_type": "code",
        "source": "1 + 1",
        "metadata": {},
        "execution_count": 7,
        "outputs": [{"output_type": "execute_result", "execution_count": 7, "data": {"text/plain": "2"}, "metadata": {}}],
    }
    from crdtnb.notebook import new_cell_map

    _cells(attacker).append(new_cell_map(forged))
    nb, other = await _converged(daemon, attacker, "out.ipynb")
    added = nb["cells"][3]
    assert added["source"] == "1 + 1"  # the cell is welcome ...
    assert added["outputs"] == [] and added["execution_count"] is None  # ... its results are not
    await other.close()
    await attacker.close()


async def test_server_state_keys_cannot_be_forged(daemon: Daemon, with_outputs: Path) -> None:
    attacker = await daemon.connect("out.ipynb")
    state = attacker.doc.get("state", type=Map)
    before = dict(state.to_py() or {})
    with attacker.doc.transaction():
        state["kernel_status"] = "busy"  # would delay saves
        state["file_error"] = "forged error"
        state["saved_at"] = 0
    await attacker.roundtrip()
    other = await daemon.connect("out.ipynb")
    seen = other.doc.get("state", type=Map).to_py() or {}
    assert seen.get("kernel_status") == before.get("kernel_status")
    assert "file_error" not in seen
    assert seen.get("saved_at") == before.get("saved_at")
    await attacker.wait_for(lambda _: "file_error" not in state, timeout=5)
    await other.close()
    await attacker.close()


async def test_clearing_outputs_is_allowed(daemon: Daemon, with_outputs: Path, root: Path) -> None:
    client = await daemon.connect("out.ipynb")
    cell = _cell(client, 0)
    with client.doc.transaction():
        cell["outputs"].clear()
        cell["execution_count"] = None
    nb, other = await _converged(daemon, client, "out.ipynb")
    assert nb["cells"][0]["outputs"] == [] and nb["cells"][0]["execution_count"] is None
    await other.close()
    await client.close()


async def test_moving_a_cell_keeps_its_outputs(daemon: Daemon, with_outputs: Path) -> None:
    """JupyterLab moves a cell by deleting it and inserting a copy with the same id."""
    client = await daemon.connect("out.ipynb")
    from crdtnb.notebook import new_cell_map

    original = client.notebook()["cells"][0]
    with client.doc.transaction():
        del client.cells[0]
        client.cells.insert(2, new_cell_map(original))
    nb, other = await _converged(daemon, client, "out.ipynb")
    moved = nb["cells"][2]
    assert moved["id"] == original["id"]
    assert moved["outputs"] == original["outputs"] and moved["execution_count"] == 3
    await other.close()
    await client.close()


async def test_undoing_a_delete_brings_the_outputs_back(daemon: Daemon, with_outputs: Path) -> None:
    from pycrdt import UndoManager

    client = await daemon.connect("out.ipynb")
    undo = UndoManager(scopes=[client.cells], capture_timeout_millis=0)
    original = client.notebook()["cells"][0]
    del client.cells[0]
    await client.roundtrip()
    assert len(daemon.notebook("out.ipynb")["cells"]) == 2
    undo.undo()
    nb, other = await _converged(daemon, client, "out.ipynb")
    assert nb["cells"][0] == original
    await other.close()
    await client.close()


async def test_concurrent_moves_of_one_cell_leave_one_cell(daemon: Daemon, with_outputs: Path, root: Path) -> None:
    """Two clients move the same cell at once: each deletes it and inserts a copy.
    The second copy to arrive goes; later outside edits of the cell are not lost."""
    from crdtnb.notebook import new_cell_map

    client = await daemon.connect("out.ipynb")
    state = client.doc.get_update()
    original = client.notebook()["cells"][2]
    updates = []
    for target in (0, 1):  # two offline copies of the document, each moving cell 2
        doc: Doc = Doc()
        doc.apply_update(state)
        cells = doc.get("cells", type=Array)
        before = doc.get_state()
        with doc.transaction():
            del cells[2]
            cells.insert(target, new_cell_map(original))
        updates.append(doc.get_update(before))
    for update in updates:
        await client.send_raw(encode_update(update))
    await client.roundtrip()
    nb = daemon.notebook("out.ipynb")
    ids = [c["id"] for c in nb["cells"]]
    assert len(ids) == 3 and len(set(ids)) == 3 and ids.count(original["id"]) == 1
    other = await daemon.connect("out.ipynb")
    assert [str(c["id"]) for c in other.cells] == ids  # the document, not only the export
    # An outside edit of that cell reaches the room.
    await eventually(lambda: read_sources(root / "out.ipynb")[ids.index(original["id"])] == "x = 1")
    raw = nbformat.read(str(root / "out.ipynb"), as_version=4)
    position = ids.index(original["id"])
    raw.cells[position].source = "x = 2  # edited outside"
    nbformat.write(raw, str(root / "out.ipynb"))
    await other.wait_for(lambda _: other.source(original["id"]) == "x = 2  # edited outside", timeout=15)
    assert [c["id"] for c in daemon.notebook("out.ipynb")["cells"]] == ids
    await other.close()
    await client.close()


async def test_typing_is_not_slowed_by_checks(daemon: Daemon, root: Path) -> None:
    """Plain edits of sources pass untouched (no repair, nothing merged into them)."""
    write_notebook(root / "plain.ipynb", ["a"])
    client = await daemon.connect("plain.ipynb")
    cell = client.cell_ids()[0]
    for i in range(50):
        client.insert_text(cell, 1 + i, "b")
    other = await daemon.connect("plain.ipynb")
    await other.wait_for(lambda _: other.source(cell) == "a" + "b" * 50)
    await asyncio.gather(other.close(), client.close())
