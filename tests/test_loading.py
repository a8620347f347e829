"""Opening rooms fast and in short steps (issue 14): a notebook is built from its file in
pieces written directly in Yjs's format, stored and compacted in pieces, sent to a new
client in pieces; the load-time schema check reads each cell once. All of it must build
exactly the documents the slower paths built (in process: real pycrdt documents, a real
SQLite store, real files)."""

from __future__ import annotations

import asyncio
import copy
import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import nbformat
import pytest
from hypothesis import given, settings
from pycrdt import Array, Doc, Map, Text

from crdtnb.filesync import BASE_KEY, FileSyncExtension
from crdtnb.notebook import export_notebook, load_notebook, new_cell_map, notebook_pieces
from crdtnb.pieces import decode_state_vector, diff_in_pieces, from_rows, pack, to_rows, unpack
from crdtnb.protocol import SyncStep2, SyncUpdate, parse_message
from crdtnb.room import Room
from crdtnb.rooms import _build_document
from crdtnb.store import SQLiteStore
from crdtnb.store.merge import merge_log, merge_pieces

from .conftest import in_process
from .test_ipynb import notebooks

deterministic = settings(derandomize=True, database=None, deadline=None, max_examples=120)


def cells_of(doc: Doc) -> Array:
    return doc.get("cells", type=Array)


def by_pycrdt(nb: dict[str, Any]) -> Doc:
    """The document as pycrdt's own types build it (new_cell_map, one item at a time)."""
    doc: Doc = Doc()
    with doc.transaction():
        meta = doc.get("meta", type=Map)
        meta["nbformat"], meta["nbformat_minor"] = nb["nbformat"], max(5, nb["nbformat_minor"])
        meta["metadata"] = Map(nb.get("metadata") or {})
        for cell in nb["cells"]:
            cells_of(doc).append(new_cell_map(cell))
    return doc


def shape(value: Any) -> Any:
    """The document as JSON, with the kind of each shared type in it."""
    if isinstance(value, Map):
        return {"Map": {key: shape(value[key]) for key in value.keys()}}
    if isinstance(value, Array):
        return {"Array": [shape(item) for item in value]}
    if isinstance(value, Text):
        return {"Text": str(value)}
    return json.loads(json.dumps(value))  # NaN and numbers as JSON has them


def doc_shape(doc: Doc) -> Any:
    return {"meta": shape(doc.get("meta", type=Map)), "cells": shape(cells_of(doc))}


def applied(pieces: list[bytes], order: list[int] | None = None) -> Doc:
    doc: Doc = Doc()
    for number in order if order is not None else range(len(pieces)):
        doc.apply_update(pieces[number])
    return doc


def big_notebook(cells: int = 60, lines: int = 400) -> dict[str, Any]:
    """Code cells with ASCII sources (pycrdt edits text at UTF-8 offsets: an edit inside a
    multi-byte character makes a document its own updates do not rebuild) and outputs with
    every width of character."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    for i in range(cells):
        cell = nbformat.v4.new_code_cell("x = 1\n" * 5, id=f"c{i}", execution_count=i + 1)
        cell.outputs = [
            nbformat.v4.new_output("stream", name="stdout", text=f"{i}: " + "out ü € 😀\n" * lines),
            nbformat.v4.new_output("execute_result", data={"text/plain": f"{i}", "text/html": "<b>x</b>" * 50}, execution_count=i + 1),
        ]
        nb.cells.append(cell)
    nb.cells.insert(1, nbformat.v4.new_markdown_cell("# title\n", id="md"))
    result: dict[str, Any] = json.loads(json.dumps(nb))
    return result


# --------------------------------------------------------------------------- building from a file


@deterministic
@given(notebooks)
def test_pieces_build_the_document_pycrdt_builds(nb: dict[str, Any]) -> None:
    ints_safe = json.loads(json.dumps(nb), parse_int=lambda s: max(min(int(s), 2**53), -(2**53)))
    pieces = notebook_pieces(ints_safe, piece_bytes=40)  # tiny pieces: many clients
    assert doc_shape(applied(pieces)) == doc_shape(by_pycrdt(ints_safe))


def test_pieces_line_up_in_order_whatever_order_they_arrive_in() -> None:
    nb = big_notebook()
    pieces = notebook_pieces(nb, piece_bytes=20_000)
    assert len(pieces) > 5
    expected = doc_shape(applied(pieces))
    order = list(range(len(pieces)))
    random.Random(4).shuffle(order)
    assert doc_shape(applied(pieces, order)) == expected
    assert [cell["id"] for cell in export_notebook(applied(pieces))["cells"]] == [cell["id"] for cell in nb["cells"]]


def test_every_piece_is_small_and_written_by_a_client_of_its_own() -> None:
    nb = big_notebook()
    pieces = notebook_pieces(nb, piece_bytes=20_000)
    assert max(map(len, pieces)) < 3 * 20_000
    doc = applied(pieces)
    clients = decode_state_vector(doc.get_state())
    assert len(clients) == len(pieces)
    assert sorted(clients) == [min(clients) + n for n in range(len(pieces))]  # ascending
    assert max(clients) < 2**32


def test_load_notebook_is_still_one_transaction_of_the_same_document() -> None:
    nb = big_notebook(cells=5)
    doc: Doc = Doc()
    transactions: list[Any] = []
    doc.observe(transactions.append)
    load_notebook(doc, nb)
    assert len(transactions) == 1
    assert export_notebook(doc) == export_notebook(by_pycrdt(nb))


def test_numbers_beyond_doubles_keep_their_value() -> None:
    nb = json.loads(json.dumps(nbformat.v4.new_notebook()))
    nb["metadata"] = {"big": 2**60 + 1, "small": -(2**53) - 3, "whole": 3.0, "half": 0.5, "huge": 2**70}
    meta = applied(notebook_pieces(nb)).get("meta", type=Map)
    metadata = json.loads(str(meta["metadata"]))
    assert metadata["big"] == 2**60 + 1 and metadata["small"] == -(2**53) - 3
    assert metadata["whole"] == 3 and metadata["half"] == 0.5 and metadata["huge"] == float(2**70)


def test_strings_take_their_utf16_length_in_clocks_as_yjs_counts_them() -> None:
    """Items are numbered in UTF-16 units: a wrong length breaks every later edit inside
    the string (splitting an item happens at a clock)."""
    text = "a😀b€c\u2028d"
    nb = json.loads(json.dumps(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(text, id="m")])))
    mine, theirs = applied(notebook_pieces(nb)), by_pycrdt(nb)
    assert sum(decode_state_vector(mine.get_state()).values()) == sum(decode_state_vector(theirs.get_state()).values())
    for doc in (mine, theirs):
        replica: Doc = Doc()
        replica.apply_update(doc.get_update())
        source = cells_of(replica)[0]["source"]
        source.insert(5, "-")  # pycrdt's indices are UTF-8 bytes: inside the string, on a boundary
        del source[1:5]
        doc.apply_update(replica.get_update(doc.get_state()))
    assert str(cells_of(mine)[0]["source"]) == str(cells_of(theirs)[0]["source"]) == "a-b€c\u2028d"


# --------------------------------------------------------------------------- pieces and snapshots


def test_diff_in_pieces_equals_one_diff() -> None:
    nb = big_notebook()
    doc = applied(notebook_pieces(nb, piece_bytes=20_000))
    with doc.transaction():
        text = cells_of(doc)[3]["source"]
        text.insert(len(text), "edited")
        del cells_of(doc)[5]
    peer = applied(notebook_pieces(big_notebook(cells=2), piece_bytes=20_000))  # knows other clients
    for state in (None, b"\x00", peer.get_state()):
        pieces = diff_in_pieces(doc, state)
        assert len(pieces) > 1
        whole: Doc = Doc()
        whole.apply_update(doc.get_update(state) if state else doc.get_update())
        split: Doc = Doc()
        for piece in reversed(pieces):
            split.apply_update(piece)
        assert doc_shape(split) == doc_shape(whole)


def test_pack_and_unpack() -> None:
    update = Doc().get_update()
    assert unpack(pack([update])) == [update] and pack([update]) == update
    assert unpack(update) == [update]
    pieces = [b"\x01" * 300, b"", b"\x02\x03"]
    assert unpack(pack(pieces)) == pieces
    with pytest.raises(ValueError):
        unpack(pack(pieces)[:-1])


def test_compaction_stores_a_big_document_in_small_pieces() -> None:
    """A 50-cell notebook, edited (text typed and deleted, cells deleted): the snapshot is
    several pieces of about the piece size, the deleted text is gone from all of them, and
    they rebuild the very document."""
    log = list(notebook_pieces(big_notebook(), piece_bytes=20_000))
    doc = applied(log)
    doc.observe(lambda event: log.append(event.update))
    rng = random.Random(7)
    for _ in range(400):
        source = cells_of(doc)[rng.randrange(10)]["source"]
        if rng.random() < 0.4 and len(source) > 20:
            del source[0:15]
        else:
            source.insert(0, "deleted later " if rng.random() < 0.5 else "kept ")
    with doc.transaction():
        for _ in range(5):
            del cells_of(doc)[20]
    snapshot = merge_log(log, piece_bytes=20_000)
    pieces = unpack(snapshot)
    assert len(pieces) > 3
    assert max(map(len, pieces)) < 4 * 20_000
    assert len(snapshot) < sum(map(len, log))
    assert len(snapshot) <= len(doc.get_update()) * 1.1  # deleted content is left out
    rebuilt = applied(pieces)
    assert decode_state_vector(rebuilt.get_state()) == decode_state_vector(doc.get_state())
    assert doc_shape(rebuilt) == doc_shape(doc)
    again = unpack(merge_log([snapshot, *log[-3:]], piece_bytes=20_000))  # a packed snapshot in the log
    assert doc_shape(applied(again)) == doc_shape(doc)


# --------------------------------------------------------------------------- the load-time check


def cell_map(cell_id: str, source: str, outputs: list[Any] | None = None, count: Any = None) -> Map:
    return Map(
        {
            "id": cell_id,
            "cell_type": "code",
            "source": Text(source),
            "metadata": Map({}),
            "outputs": Array(outputs or []),
            "execution_count": count,
            "execution_state": "idle",
        }
    )


def loaded_room(build: Any) -> Room:
    source: Doc = Doc()
    with source.transaction():
        build(cells_of(source))
    doc, index = _build_document([source.get_update()])
    return Room("r.ipynb", doc, None, index=index)  # type: ignore[arg-type]


def test_a_log_with_garbage_and_triplicates_loads_repaired() -> None:
    """Repairs made at load delete cells from the Array while the index still numbers them
    as before the repair: each deletion must shift the ones after it (before, the third
    copy and the second non-Map made the repair delete the wrong cells, or fail)."""

    def build(cells: Array) -> None:
        cells.append(cell_map("a", "one"))
        cells.append("not a map")
        cells.append(cell_map("b", "two"))
        for _ in range(3):
            cells.append(cell_map("x", "dup"))
        cells.append(cell_map("c", "three"))
        cells.append(42)
        cells.append(cell_map("d", "four"))

    room = loaded_room(build)
    assert room.guard.check_document()
    assert [(cell["id"], str(cell["source"])) for cell in cells_of(room.doc)] == [
        ("a", "one"),
        ("b", "two"),
        ("x", "dup"),
        ("c", "three"),
        ("d", "four"),
    ]


def test_loaded_outputs_stay_only_if_they_are_outputs_and_counts_are_counts() -> None:
    stream = {"output_type": "stream", "name": "stdout", "text": "hi\n"}

    def build(cells: Array) -> None:
        cells.append(cell_map("good", "", [Map(stream)], 3))
        cells.append(cell_map("notdict", "", [Map(stream), "junk"], 4))
        cells.append(cell_map("unknown", "", [Map({"output_type": "hologram"})], 5))
        cells.append(cell_map("negative", "", [Map(stream)], -1))
        cells.append(cell_map("float", "", [Map(stream)], 2.0))
        cells.append(cell_map("half", "", [Map(stream)], 2.5))

    room = loaded_room(build)
    room.guard.check_document()
    kept = {cell["id"]: (len(cell["outputs"]), cell["execution_count"]) for cell in cells_of(room.doc)}
    assert kept == {"good": (1, 3), "notdict": (0, None), "unknown": (0, None), "negative": (0, None), "float": (1, 2), "half": (0, None)}
    # The ledger learns what the room loaded with once it is served (or when first asked).
    assert len(room.guard.ledger._later) == len(kept)
    asyncio.run(room.guard.ledger.catch_up())
    assert not room.guard.ledger._later
    forged = {**stream, "text": "forged\n"}
    assert room.guard.ledger.knows([stream], 3) and not room.guard.ledger.knows([forged], 3)
    assert not room.guard.ledger.knows([stream], 7)


# --------------------------------------------------------------------------- rooms end to end


@pytest.fixture
def big_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "big.ipynb").write_text(nbformat.writes(nbformat.from_dict(big_notebook())))
    return root


async def test_a_big_notebook_is_seeded_served_and_reloaded_in_pieces(big_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("crdtnb.notebook.PIECE_BYTES", 20_000)
    monkeypatch.setattr("crdtnb.store.merge.PIECE_BYTES", 20_000)
    expected = nbformat.reads((big_root / "big.ipynb").read_text(), as_version=4)
    store = SQLiteStore(big_root.parent / "state.sqlite3")
    async with in_process(big_root, store) as daemon:
        async with daemon.rooms.hold("big.ipynb") as room:
            rows = await store.load("big.ipynb")
            assert len(rows) > 5  # seeded in pieces, atomically, as the room's snapshot:
            rows_since, bytes_since = await store.log_size("big.ipynb")  # only the note of the file's save time
            assert rows_since <= 2 and bytes_since < 1000 and not store.needs_compaction("big.ipynb")
            sent: list[bytes] = []

            class Peer:
                def send(self, message: bytes) -> None:
                    sent.append(message)

                def close(self, code: int = 1000, reason: str = "") -> None:
                    pass

            await room.on_sync_step1(Peer(), b"\x00")  # type: ignore[arg-type]
            assert len(sent) > 5 and [m[1] for m in sent[:-1]] == [2] * (len(sent) - 1) and sent[-1][1] == 1
            client: Doc = Doc()
            for message in sent:
                client.apply_update(_body(message))
            assert export_notebook(client) == export_notebook(room.doc)
            exported = room.index.export()
            assert [c["id"] for c in exported["cells"]] == [c["id"] for c in expected["cells"]]
            await store.compact("big.ipynb")
            for _ in range(100):  # the file's base is stored once the room is served
                if await store.get_meta("big.ipynb", BASE_KEY) is not None:
                    break
                await asyncio.sleep(0.05)
            assert await store.get_meta("big.ipynb", BASE_KEY) is not None
    reopened = SQLiteStore(big_root.parent / "state.sqlite3")
    async with in_process(big_root, reopened) as daemon:
        async with daemon.rooms.hold("big.ipynb") as room:
            assert len(await reopened.load("big.ipynb")) > 5  # the snapshot's pieces
            assert room.index.export() == exported


def _body(message: bytes) -> bytes:
    """The update a y-websocket sync message carries (step 2 or update)."""
    parsed = parse_message(message)
    assert isinstance(parsed, (SyncStep2, SyncUpdate))
    return parsed.update


async def test_what_the_file_lacks_is_saved_once_the_room_is_open(tmp_path: Path) -> None:
    """The comparison of room and file runs after the room is served: an nbformat 4.4 file
    (no cell ids) is saved as 4.5 soon after; a file equal to the room is left alone."""
    root = tmp_path / "root"
    root.mkdir()
    nb = big_notebook(cells=3)
    old = copy.deepcopy(nb)
    old["nbformat_minor"] = 4
    for cell in old["cells"]:
        del cell["id"]
    (root / "old.ipynb").write_text(json.dumps(old))
    tidy = nbformat.writes(nbformat.from_dict(copy.deepcopy(nb))) + "\n"
    (root / "tidy.ipynb").write_text(tidy)
    async with in_process(root, files=_quick_saves()) as daemon:
        async with daemon.rooms.hold("old.ipynb"), daemon.rooms.hold("tidy.ipynb"):
            files = daemon.extension(FileSyncExtension)
            assert files is not None
            for _ in range(200):
                if json.loads((root / "old.ipynb").read_text())["nbformat_minor"] == 5:
                    break
                await asyncio.sleep(0.05)
            saved = json.loads((root / "old.ipynb").read_text())
            assert saved["nbformat_minor"] == 5 and all(cell["id"] for cell in saved["cells"])
            assert not files.syncs["tidy.ipynb"].dirty
    assert (root / "tidy.ipynb").read_text() == tidy


def _quick_saves() -> Any:
    from crdtnb.settings import FileSettings

    return FileSettings(save_delay=0.05, save_max_delay=0.2)


async def test_a_file_broken_while_the_room_was_closed_refuses_it(tmp_path: Path) -> None:
    """From the log, a file whose hash is the stored one is not parsed again; one that
    changed is, and a broken one refuses the room."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "nb.ipynb").write_text(nbformat.writes(nbformat.from_dict(big_notebook(cells=2))) + "\n")
    async with in_process(root) as daemon:
        async with daemon.rooms.hold("nb.ipynb"):
            pass
    (root / "nb.ipynb").write_text("{broken")
    async with in_process(root) as daemon:
        from crdtnb.files import InvalidNotebook

        with pytest.raises(InvalidNotebook):
            async with daemon.rooms.hold("nb.ipynb"):
                pass


async def test_a_database_from_before_snapshot_parts_is_migrated_and_loads(tmp_path: Path) -> None:
    """Schema 1 kept a snapshot as one blob in rooms.snapshot: it still loads, and the
    next compaction writes parts."""

    doc = applied(notebook_pieces(big_notebook(cells=4)))
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE rooms (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
                            snapshot BLOB, snapshot_seq INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE updates (seq INTEGER PRIMARY KEY AUTOINCREMENT, room_id INTEGER NOT NULL, data BLOB NOT NULL);
        CREATE INDEX updates_by_room ON updates (room_id);
        CREATE TABLE meta (room_id INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                           PRIMARY KEY (room_id, key)) WITHOUT ROWID;
        PRAGMA user_version = 1;
        """
    )
    conn.execute("INSERT INTO rooms (name, snapshot, snapshot_seq) VALUES ('r.ipynb', ?, 7)", (doc.get_update(),))
    conn.commit()
    conn.close()
    replica: Doc = Doc()
    replica.apply_update(doc.get_update())
    edits: list[bytes] = []
    replica.observe(lambda event: edits.append(event.update))
    text = cells_of(replica)[0]["source"]
    text.insert(len(text), "more")
    async with SQLiteStore(path, compact_threshold_rows=1) as store:
        assert doc_shape(applied(await store.load("r.ipynb"))) == doc_shape(doc)
        await store.append("r.ipynb", edits)
        await store.compact("r.ipynb")
        assert doc_shape(applied(await store.load("r.ipynb"))) == doc_shape(replica)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT snapshot FROM rooms").fetchall() == [(None,)]
    assert conn.execute("SELECT count(*) FROM snapshot_parts").fetchone()[0] >= 1
    conn.close()


async def test_a_big_file_base_is_stored_in_parts_and_merges(big_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The document as the file last had it is kept for three-way merges: a big one in
    parts, each save writing the slot not in use and then switching to it. An edit made
    to the file while the daemon is down merges into the room on the next open."""
    from crdtnb.filesync import _BASE_PARTS

    monkeypatch.setattr("crdtnb.notebook.PIECE_BYTES", 20_000)
    monkeypatch.setattr("crdtnb.pieces.ROW_BYTES", 6_000)  # a piece is stored as several rows
    store = SQLiteStore(big_root.parent / "state.sqlite3")
    slots = []
    async with in_process(big_root, store, files=_quick_saves()) as daemon:
        async with daemon.rooms.hold("big.ipynb") as room:
            room.mark_served()  # as if a client had been served: the base is stored now
            files = daemon.extension(FileSyncExtension)
            assert files is not None
            sync = files.syncs["big.ipynb"]
            for word in ("first", "second", "third"):
                text = cells_of(room.doc)[0]["source"]
                text.insert(len(text), f"# {word}\n")
                await room.flushed()
                sync.changed()
                assert await sync.save() is not None
                where = await store.get_meta("big.ipynb", BASE_KEY)
                assert where is not None and where.startswith(_BASE_PARTS)
                slots.append(json.loads(where[len(_BASE_PARTS) :])["slot"])
    assert slots[0] != slots[1] != slots[2]
    conn = sqlite3.connect(big_root.parent / "state.sqlite3")
    assert conn.execute("SELECT max(length(value)) FROM meta").fetchone()[0] <= 6_000 + 32
    conn.close()
    on_disk = json.loads((big_root / "big.ipynb").read_text())
    assert "".join(on_disk["cells"][0]["source"]).endswith("# third\n")
    on_disk["cells"][5]["source"] = "changed while the daemon was down\n"
    (big_root / "big.ipynb").write_text(json.dumps(on_disk))
    async with in_process(big_root, SQLiteStore(big_root.parent / "state.sqlite3")) as daemon:
        async with daemon.rooms.hold("big.ipynb") as room:
            exported = room.index.export()
            assert exported["cells"][5]["source"] == "changed while the daemon was down\n"
            assert exported["cells"][0]["source"].endswith("# first\n# second\n# third\n")


async def test_a_snapshot_is_stored_in_rows_of_bounded_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's writer commits a big write alone, so another room's append waits for
    one row at most: a piece of a snapshot is written as rows of at most ROW_BYTES, and
    read back whole."""
    monkeypatch.setattr("crdtnb.pieces.ROW_BYTES", 6_000)
    pieces = diff_in_pieces(applied(notebook_pieces(big_notebook(cells=8), piece_bytes=20_000)))
    assert len(pieces) > 1 and max(map(len, pieces)) > 3 * 6_000
    path = tmp_path / "db.sqlite3"
    async with SQLiteStore(path) as store:
        assert await store.seed("r.ipynb", pieces)
        assert await store.load("r.ipynb") == pieces
    conn = sqlite3.connect(path)
    rows, longest = conn.execute("SELECT count(*), max(length(data)) FROM snapshot_parts").fetchone()
    conn.close()
    assert rows > 3 * len(pieces) and longest <= 6_000 + 32
    async with SQLiteStore(path) as store:
        assert await store.load("r.ipynb") == pieces


def test_rows_give_back_the_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("crdtnb.pieces.ROW_BYTES", 4)
    pieces = [b"\x01" * 10, b"", b"\x02" * 25, b"\x03"]
    rows = list(to_rows(pieces))
    assert len(rows) == 3 + 1 + 7 + 1 and max(map(len, rows)) <= 4 + 32
    assert from_rows(rows) == pieces and from_rows(pieces) == pieces


async def test_parts_of_a_snapshot_never_switched_to_are_dropped(tmp_path: Path) -> None:
    """A snapshot's parts are written a transaction each, then switched to: parts left by
    a daemon that stopped in between are not the room's, and go at the next start."""

    doc = applied(notebook_pieces(big_notebook(cells=4)))
    path = tmp_path / "db.sqlite3"
    async with SQLiteStore(path) as store:
        assert await store.seed("r.ipynb", diff_in_pieces(doc))
        await store._write_parts(1, [b"never switched to", b"never"])  # as if stopped here
        assert doc_shape(applied(await store.load("r.ipynb"))) == doc_shape(doc)
    async with SQLiteStore(path) as store:
        assert doc_shape(applied(await store.load("r.ipynb"))) == doc_shape(doc)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM snapshot_parts WHERE data LIKE 'never%'").fetchone()[0] == 0
    conn.close()


@pytest.mark.parametrize("piece_bytes", [1000, 10_000, 1 << 20])
def test_a_long_log_of_small_edits_merges_into_the_same_document(piece_bytes: int) -> None:
    """A busy room's log (thousands of one-key edits and a text typed a character at a
    time) is merged a few dozen updates per call; whatever the piece size, the pieces
    rebuild the very document and leave the overwritten values out."""
    doc: Doc = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    entries, text = doc.get("bench", type=Map), doc.get("typed", type=Text)
    for i in range(3000):
        with doc.transaction():
            entries[f"w{i % 3}"] = f"value {i}"
            text += "ab"[i % 2]
    pieces = merge_pieces(updates, piece_bytes)
    rebuilt: Doc = Doc()
    for piece in reversed(pieces):  # in any order
        rebuilt.apply_update(piece)
    assert decode_state_vector(rebuilt.get_state()) == decode_state_vector(doc.get_state())
    assert rebuilt.get("bench", type=Map).to_py() == {"w0": "value 2997", "w1": "value 2998", "w2": "value 2999"}
    assert str(rebuilt.get("typed", type=Text)) == "ab" * 1500
    if piece_bytes == 1 << 20:
        assert len(pieces) == 1 and len(pieces[0]) < sum(map(len, updates)) / 2  # overwritten values are gone
    else:
        assert len(pieces) > 1
