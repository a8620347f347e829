"""Sync through a real daemon: convergence, catch-up, durability, rooms, presence."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nbformat
from pycrdt import Doc

from crdtnb.client import connect

from .conftest import Daemon, eventually, read_sources, write_notebook


async def test_two_clients_converge_under_concurrent_edits_of_one_cell(daemon: Daemon) -> None:
    a = await daemon.connect("nb.ipynb")
    b = await daemon.connect("nb.ipynb")
    cell = a.cell_ids()[0]
    assert b.cell_ids()[0] == cell
    for i in range(30):
        a.insert_text(cell, 0, f"A{i};")
        b.insert_text(cell, len(b.source(cell)), f"B{i};")
        if i % 7 == 0:
            await asyncio.sleep(0)
    await a.wait_for(lambda _: all(f"B{i};" in a.source(cell) for i in range(30)))
    await b.wait_for(lambda _: all(f"A{i};" in b.source(cell) for i in range(30)))
    assert a.source(cell) == b.source(cell)
    await a.roundtrip()
    await b.roundtrip()
    server_source = daemon.notebook("nb.ipynb")["cells"][0]["source"]
    assert server_source == a.source(cell)
    await a.close()
    await b.close()


async def test_updates_are_not_echoed_to_their_sender(daemon: Daemon) -> None:
    a = await daemon.connect("nb.ipynb")
    b = await daemon.connect("nb.ipynb")
    received: list[bytes] = []
    a.doc.observe(lambda event: received.append(event.update) if a._remote else None)
    a.insert_text(a.cell_ids()[0], 0, "x")
    await b.wait_for(lambda _: b.source(b.cell_ids()[0]).startswith("x"))
    await a.roundtrip()
    assert received == []
    await a.close()
    await b.close()


async def test_disconnected_client_catches_up_and_pushes_its_offline_edits(daemon: Daemon) -> None:
    a = await daemon.connect("nb.ipynb")
    b = await daemon.connect("nb.ipynb")
    cell = a.cell_ids()[0]
    await a.close()
    offline_doc = a.doc
    for i in range(20):
        b.insert_text(cell, 0, f"online{i} ")
    offline_doc.get("cells", type=type(a.cells))[0]["source"].insert(0, "offline-edit ")
    await b.roundtrip()
    again = await connect(daemon.url, "nb.ipynb", token=daemon.token, doc=offline_doc)
    source = again.source(cell)
    assert all(f"online{i} " in source for i in range(20))
    await b.wait_for(lambda _: "offline-edit " in b.source(cell))
    await again.close()
    await b.close()


async def test_graceful_restart_keeps_every_edit_in_store_and_file(daemon: Daemon, root: Path) -> None:
    a = await daemon.connect("nb.ipynb")
    new_id = a.add_cell("written before restart ✓", "markdown")
    a.insert_text(a.cell_ids()[0], 0, "# édit\n")
    await a.roundtrip()
    await a.close()
    assert daemon.stop() == 0
    # SIGTERM saved the file.
    assert read_sources(root / "nb.ipynb")[0].startswith("# édit\n")
    assert "written before restart ✓" in read_sources(root / "nb.ipynb")
    daemon.restart()
    b = await daemon.connect("nb.ipynb")
    assert new_id in b.cell_ids()
    assert b.source(b.cell_ids()[0]).startswith("# édit\n")
    await b.close()


async def test_kill_9_loses_no_relayed_update(daemon: Daemon) -> None:
    writer = await daemon.connect("nb.ipynb", )
    watcher = await daemon.connect("nb.ipynb")
    cell = writer.cell_ids()[1]
    for i in range(50):
        writer.insert_text(cell, 0, f"{i},")
    # Everything the watcher has seen must survive.
    await watcher.wait_for(lambda _: "49," in watcher.source(cell))
    seen = watcher.source(cell)
    daemon.kill()
    daemon.restart()
    fresh = await daemon.connect("nb.ipynb")
    assert fresh.source(cell) == seen
    await fresh.close()
    await writer.close()
    await watcher.close()


async def test_out_of_band_file_change_is_merged_without_losing_unsaved_edits(
    daemon_factory, root: Path
) -> None:
    path = root / "merge.ipynb"
    write_notebook(path, ["cell one", "cell two", "cell three"])
    daemon = daemon_factory("--save-delay", "60", "--poll-interval", "0.2")
    client = await daemon.connect("merge.ipynb")
    one, two, three = client.cell_ids()
    client.insert_text(one, len("cell one"), " + browser edit")  # unsaved: save delay is 60 s
    await client.roundtrip()

    # Another editor (or git checkout) rewrites the file behind the daemon's back.
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[1].source = "cell two + disk edit"
    nb.cells.pop(2)
    nb.cells.append(nbformat.v4.new_markdown_cell("added on disk"))
    nbformat.write(nb, str(path))

    def merged(_: Doc) -> bool:
        sources = [client.source(cid) for cid in client.cell_ids()]
        return sources == ["cell one + browser edit", "cell two + disk edit", "added on disk"]

    await client.wait_for(merged, timeout=10)
    ids = client.cell_ids()
    assert len(ids) == len(set(ids)) == 3
    assert three not in ids
    # The next save writes both sides' edits.
    await client.close()
    assert daemon.stop() == 0
    assert read_sources(path) == ["cell one + browser edit", "cell two + disk edit", "added on disk"]


async def test_file_changed_while_daemon_down_is_merged_on_next_open(daemon: Daemon, root: Path) -> None:
    client = await daemon.connect("nb.ipynb")
    client.insert_text(client.cell_ids()[0], 0, "# kept\n")
    await client.roundtrip()
    await client.close()
    daemon.stop()
    nb = nbformat.read(str(root / "nb.ipynb"), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("added while down"))
    nbformat.write(nb, str(root / "nb.ipynb"))
    daemon.restart()
    client = await daemon.connect("nb.ipynb")
    sources = [client.source(cid) for cid in client.cell_ids()]
    assert sources == ["# kept\na = 1", "print('héllo')", "added while down"]
    await client.close()


async def test_invalid_notebook_is_refused_with_a_reason_and_left_untouched(daemon: Daemon, root: Path) -> None:
    bad = root / "broken.ipynb"
    bad.write_text('{"cells": "not a list"')
    before = bad.read_bytes()
    client = await daemon.connect("broken.ipynb", wait_synced=False)
    closed = await client.wait_closed()
    assert closed.code == 4422
    assert "not a valid notebook" in closed.reason
    assert daemon.get("/api/notebooks/broken.ipynb").status_code == 422
    assert bad.read_bytes() == before
    assert "broken.ipynb is not a valid notebook" in daemon.log()


async def test_idle_room_is_evicted_saved_and_reopens(daemon_factory, root: Path) -> None:
    daemon = daemon_factory("--idle-timeout", "0.3", "--save-delay", "30")
    client = await daemon.connect("nb.ipynb")
    client.insert_text(client.cell_ids()[0], 0, "# before eviction\n")
    await client.roundtrip()
    await client.close()
    await eventually(lambda: daemon.health()["rooms"] == 0)
    # Eviction saved the file even though the save delay had not passed.
    assert read_sources(root / "nb.ipynb")[0].startswith("# before eviction\n")
    for round_ in range(2):
        again = await daemon.connect("nb.ipynb")
        earlier = "".join(f"#{r}\n" for r in reversed(range(round_)))
        assert again.source(again.cell_ids()[0]).startswith(earlier + "# before eviction\n")
        again.insert_text(again.cell_ids()[0], 0, f"#{round_}\n")
        await again.roundtrip()
        await again.close()
        await eventually(lambda: daemon.health()["rooms"] == 0)
    client = await daemon.connect("nb.ipynb")
    assert client.source(client.cell_ids()[0]).startswith("#1\n#0\n# before eviction\n")
    await client.close()


async def test_fifty_clients_join_a_new_room_at_once(daemon: Daemon, root: Path) -> None:
    write_notebook(root / "crowd.ipynb", [f"cell {i}" for i in range(20)])
    clients = await asyncio.gather(*(daemon.connect("crowd.ipynb") for _ in range(50)))
    try:
        for client in clients:
            assert [client.source(cid) for cid in client.cell_ids()] == [f"cell {i}" for i in range(20)]
        # Loaded once: every client sees the same cell ids.
        assert len({tuple(c.cell_ids()) for c in clients}) == 1
        clients[0].add_cell("hello crowd")
        await asyncio.gather(*(c.wait_for(lambda d, c=c: len(c.cell_ids()) == 21) for c in clients))
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_awareness_is_relayed_with_non_ascii_names_and_removed_on_close(daemon: Daemon) -> None:
    a = await daemon.connect("nb.ipynb")
    b = await daemon.connect("nb.ipynb")
    a.set_awareness({"user": {"name": "Zoë 日本語 🚀", "color": "#ff0000"}, "cursor": None})
    # The server tags the state with the authenticated account (the shared token's "owner").
    seen = {"user": {"name": "Zoë 日本語 🚀", "color": "#ff0000", "account": "owner"}, "cursor": None}
    await b.wait_for(lambda _: b.awareness.get(a.doc.client_id) == seen)
    late = await daemon.connect("nb.ipynb")
    await late.wait_for(lambda _: late.awareness.get(a.doc.client_id) == seen)
    await a.close()
    await b.wait_for(lambda _: a.doc.client_id not in b.awareness)
    await late.wait_for(lambda _: a.doc.client_id not in late.awareness)
    await b.close()
    await late.close()


async def test_presence_comes_back_to_a_lone_client(daemon: Daemon) -> None:
    """y-websocket clients reconnect after 30 s without a message: the presence
    renewal they send every 15 s must come back to them even when alone."""
    alone = await daemon.connect("nb.ipynb")
    alone.set_awareness({"user": {"name": "solo"}})
    await alone.wait_for(lambda _: alone.awareness.get(alone.doc.client_id, {}).get("user", {}).get("name") == "solo")
    await alone.close()
