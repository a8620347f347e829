"""The cell index (in process, real pycrdt documents): lookups by id and by position follow
the inserts, deletes and moves another document's updates make; cached exports are
dropped by a change inside their cell and always equal ``export_notebook``; duplicate
ids are re-id'd the same way every time."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import nbformat
import pytest
from pycrdt import Array, Doc, Map, Text

from crdtnb.notebook import export_notebook, load_notebook, new_cell_map
from crdtnb.schema import CellIndex, cells_of, kernel_busy, meta_of, state_of

SOURCES = ("a = 1", "b = 2", "# c", "d = 4")


def _notebook() -> dict[str, Any]:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(SOURCES[0], id="cell-a"),
        nbformat.v4.new_code_cell(SOURCES[1], id="cell-b", execution_count=2, outputs=[nbformat.v4.new_output("stream", text="2\n")]),
        nbformat.v4.new_markdown_cell(SOURCES[2], id="cell-c"),
        nbformat.v4.new_code_cell(SOURCES[3], id="cell-d"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return json.loads(json.dumps(nb))


class Replica:
    """Another client's document: its edits reach the indexed document as updates."""

    def __init__(self, source: Doc) -> None:
        self.doc = Doc()
        self.doc.apply_update(source.get_update())
        self.target = source

    @property
    def cells(self) -> Array:
        return cells_of(self.doc)

    def cell(self, position: int) -> Map:
        cell = self.cells[position]
        assert isinstance(cell, Map)
        return cell

    def edit(self, change: Callable[[Replica], None]) -> None:
        """Make a change here, then apply its update to the indexed document."""
        before = self.doc.get_state()
        with self.doc.transaction():
            change(self)
        self.target.apply_update(self.doc.get_update(before))

    def put(self, position: int, key: str, value: Any) -> None:
        self.cell(position)[key] = value

    def move(self, source: int, target: int) -> None:
        """Move a cell as JupyterLab does: delete it and insert a copy with its id."""
        copy = json.loads(str(self.cell(source)))
        del self.cells[source]
        self.cells.insert(target, new_cell_map(copy))


@pytest.fixture
def doc() -> Doc:
    return Doc()


@pytest.fixture
def index(doc: Doc) -> Iterator[CellIndex]:
    """An index made before the document is filled (the way rooms make it)."""
    index = CellIndex(doc)
    load_notebook(doc, _notebook())
    yield index
    index.close()


def _positions(index: CellIndex) -> dict[str, int | None]:
    return {cell_id: index.position(cell_id) for cell_id in ("cell-a", "cell-b", "cell-c", "cell-d", "cell-new")}


def _source_of(index: CellIndex, cell_id: str) -> str:
    cell = index.get(cell_id)
    assert cell is not None
    return str(cell["source"])


# -- lookups follow the document ------------------------------------------------------------------


def test_cells_are_found_by_id_and_position(index: CellIndex) -> None:
    assert len(index) == 4
    assert index.ids() == ["cell-a", "cell-b", "cell-c", "cell-d"]
    assert _positions(index) == {"cell-a": 0, "cell-b": 1, "cell-c": 2, "cell-d": 3, "cell-new": None}
    assert [_source_of(index, cell_id) for cell_id in index.ids() if cell_id] == list(SOURCES)
    assert index.at(2).cell_id == "cell-c" and index.entry("cell-c") is index.at(2)
    assert "cell-b" in index and "cell-new" not in index and 3 not in index
    assert index.get("cell-new") is None and index.entry("cell-new") is None


def test_an_insert_by_another_doc_shifts_the_cells_after_it(doc: Doc, index: CellIndex) -> None:
    Replica(doc).edit(lambda r: r.cells.insert(1, new_cell_map({"id": "cell-new", "cell_type": "code", "source": "new"})))
    assert index.ids() == ["cell-a", "cell-new", "cell-b", "cell-c", "cell-d"]
    assert _positions(index) == {"cell-a": 0, "cell-new": 1, "cell-b": 2, "cell-c": 3, "cell-d": 4}
    assert _source_of(index, "cell-new") == "new"


def test_a_delete_by_another_doc_forgets_the_cell(doc: Doc, index: CellIndex) -> None:
    def delete_b_and_c(replica: Replica) -> None:
        del replica.cells[1:3]

    Replica(doc).edit(delete_b_and_c)
    assert index.ids() == ["cell-a", "cell-d"]
    assert _positions(index) == {"cell-a": 0, "cell-b": None, "cell-c": None, "cell-d": 1, "cell-new": None}
    assert index.get("cell-b") is None


def test_a_move_by_another_doc_is_followed(doc: Doc, index: CellIndex) -> None:
    Replica(doc).edit(lambda r: r.move(0, 3))  # cell-a to the end
    assert index.ids() == ["cell-b", "cell-c", "cell-d", "cell-a"]
    assert _positions(index)["cell-a"] == 3 and _positions(index)["cell-b"] == 0
    assert _source_of(index, "cell-a") == "a = 1"
    assert index.count("cell-a") == 1


def test_many_edits_in_a_row_keep_the_index_equal_to_the_document(doc: Doc, index: CellIndex) -> None:
    replica = Replica(doc)
    replica.edit(lambda r: r.move(3, 0))
    replica.edit(lambda r: r.cells.append(new_cell_map({"id": "cell-new", "cell_type": "raw", "source": "raw"})))
    replica.edit(lambda r: r.cells.pop(2))
    replica.edit(lambda r: r.move(1, 3))
    in_doc = [cell["id"] for cell in json.loads(str(cells_of(doc)))]
    assert index.ids() == in_doc
    assert all(index.position(cell_id) == position for position, cell_id in enumerate(in_doc))


def test_an_id_changed_by_another_doc_is_followed(doc: Doc, index: CellIndex) -> None:
    Replica(doc).edit(lambda r: r.put(1, "id", "renamed"))
    assert index.ids() == ["cell-a", "renamed", "cell-c", "cell-d"]
    assert index.position("renamed") == 1 and "cell-b" not in index


def test_an_index_made_after_the_document_was_filled_sees_the_same() -> None:
    doc = Doc()
    load_notebook(doc, _notebook())
    late = CellIndex(doc)
    assert late.ids() == ["cell-a", "cell-b", "cell-c", "cell-d"]
    assert late.export() == export_notebook(doc)
    late.close()


def test_an_item_that_is_not_a_map_has_no_id_and_no_export(doc: Doc, index: CellIndex) -> None:
    Replica(doc).edit(lambda r: r.cells.insert(0, "not a cell"))
    assert index.ids() == [None, "cell-a", "cell-b", "cell-c", "cell-d"]
    assert index.at(0).ymap is None
    assert index.position("cell-a") == 1
    assert [cell["id"] for cell in index.export()["cells"]] == ["cell-a", "cell-b", "cell-c", "cell-d"]
    assert index.export() == export_notebook(doc)


# -- cached exports -----------------------------------------------------------------------------------


def test_the_export_equals_export_notebook(doc: Doc, index: CellIndex) -> None:
    exported = index.export()
    assert exported == export_notebook(doc)
    nbformat.validate(nbformat.from_dict(json.loads(json.dumps(exported))))
    assert exported["cells"][1]["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "2\n"}]


def test_a_change_inside_a_cell_drops_only_that_cells_cached_export(doc: Doc, index: CellIndex) -> None:
    before = index.export()
    Replica(doc).edit(lambda r: r.cell(2)["source"].insert(len(SOURCES[2]), " edited"))
    after = index.export()
    assert after["cells"][2]["source"] == "# c edited"
    assert after == export_notebook(doc)
    assert after["cells"][0] is before["cells"][0]  # unchanged cells come from the cache
    assert after["cells"][2] is not before["cells"][2]


def test_a_move_and_an_edit_in_one_transaction_are_both_followed(doc: Doc, index: CellIndex) -> None:
    index.export()

    def move_and_edit(replica: Replica) -> None:
        replica.move(3, 0)
        replica.cell(2)["source"].insert(0, "# moved past\n")  # cell-b, now third

    Replica(doc).edit(move_and_edit)
    assert index.ids() == ["cell-d", "cell-a", "cell-b", "cell-c"]
    assert index.export()["cells"][2]["source"] == "# moved past\nb = 2"
    assert index.export() == export_notebook(doc)


def test_a_change_made_on_the_indexed_doc_itself_is_followed(doc: Doc, index: CellIndex) -> None:
    index.export()
    cell = index.get("cell-d")
    assert cell is not None
    cell["execution_count"] = 9  # as the kernel agent writes, on the server's own doc
    assert index.export()["cells"][3]["execution_count"] == 9
    assert index.export() == export_notebook(doc)


def test_a_change_deep_inside_a_cell_drops_its_cached_export(doc: Doc, index: CellIndex) -> None:
    index.export()

    def tag(replica: Replica) -> None:
        replica.cell(1)["metadata"]["tags"] = ["slow"]

    Replica(doc).edit(tag)
    assert index.export()["cells"][1]["metadata"] == {"tags": ["slow"]}
    Replica(doc).edit(lambda r: r.cell(1)["outputs"].clear())
    assert index.export()["cells"][1]["outputs"] == []
    assert index.export() == export_notebook(doc)


def test_a_change_of_the_notebook_metadata_drops_its_cached_export(doc: Doc, index: CellIndex) -> None:
    index.export()

    def rename(replica: Replica) -> None:
        meta_of(replica.doc)["metadata"]["title"] = "Renamed"

    Replica(doc).edit(rename)
    assert index.export()["metadata"]["title"] == "Renamed"
    assert index.export() == export_notebook(doc)


def test_export_json_parses_to_export(doc: Doc, index: CellIndex) -> None:
    assert json.loads(index.export_json()) == index.export()
    Replica(doc).edit(lambda r: r.cell(0)["source"].insert(0, "é 🚀 "))
    text = index.export_json()
    assert json.loads(text) == index.export() == export_notebook(doc)
    assert "é 🚀".encode() in text  # UTF-8, not escaped


async def test_warm_fills_the_cache_with_what_export_would_compute(doc: Doc, index: CellIndex) -> None:
    Replica(doc).edit(lambda r: r.cell(3)["source"].insert(0, "# warmed\n"))
    await index.warm()
    assert all(entry.exported is not None and entry.text is not None for entry in index)
    assert json.loads(index.export_json()) == export_notebook(doc)


# -- duplicate ids -----------------------------------------------------------------------------------------


def _duplicate_b(doc: Doc, source: str) -> None:
    """Another doc adds a second cell with cell-b's id (as two concurrent moves leave)."""
    Replica(doc).edit(lambda r: r.cells.append(new_cell_map({"id": "cell-b", "cell_type": "code", "source": source})))


def test_a_differing_duplicate_gets_a_fresh_id_the_same_way_every_time(doc: Doc, index: CellIndex) -> None:
    _duplicate_b(doc, "a different b")
    exported = index.export()
    ids = [cell["id"] for cell in exported["cells"]]
    assert ids[:4] == ["cell-a", "cell-b", "cell-c", "cell-d"]
    assert ids[4] not in ids[:4] and len(set(ids)) == 5
    assert exported["cells"][4]["source"] == "a different b"
    assert index.count("cell-b") == 2 and index.position("cell-b") == 1  # lookups find the first
    # The same id from every export path and from another index of the same document.
    assert exported == export_notebook(doc) == json.loads(index.export_json()) == index.export()
    other = CellIndex(doc)
    assert other.export() == exported
    other.close()


def test_an_identical_duplicate_is_dropped_from_the_export(doc: Doc, index: CellIndex) -> None:
    _duplicate_b(doc, SOURCES[1])
    Replica(doc).edit(lambda r: r.put(4, "outputs", Array([Map({"output_type": "stream", "name": "stdout", "text": Text("2\n")})])))
    Replica(doc).edit(lambda r: r.put(4, "execution_count", 2))
    assert [cell["id"] for cell in index.export()["cells"]] == ["cell-a", "cell-b", "cell-c", "cell-d"]
    assert index.export() == export_notebook(doc) == json.loads(index.export_json())


def test_an_invalid_id_is_replaced_in_the_export(doc: Doc, index: CellIndex) -> None:
    Replica(doc).edit(lambda r: r.put(0, "id", "not a valid id!"))
    exported = index.export()
    first_id = exported["cells"][0]["id"]
    assert first_id != "not a valid id!" and nbformat.validate(nbformat.from_dict(json.loads(json.dumps(exported)))) is None
    assert exported == export_notebook(doc) == json.loads(index.export_json())
    assert index.export()["cells"][0]["id"] == first_id


# -- listeners and the state map --------------------------------------------------------------------------


def test_listeners_hear_each_change_of_the_cells_with_its_origin(doc: Doc, index: CellIndex) -> None:
    heard: list[tuple[int, Any]] = []
    index.listeners.append(lambda events, origin: heard.append((len(events), origin)))
    with doc.transaction(origin="kernel"):
        cell = index.get("cell-a")
        assert cell is not None
        cell["source"].insert(0, "# ")
    state_of(doc)["kernel_status"] = "busy"  # not the cells: not heard
    assert len(heard) == 1 and heard[0][0] >= 1
    assert heard[0][1] == "kernel"


def test_kernel_busy_reads_the_state_map(doc: Doc, index: CellIndex) -> None:
    assert not kernel_busy(doc)
    state_of(doc)["kernel_status"] = "busy"
    assert kernel_busy(doc)
    state_of(doc)["kernel_status"] = "idle"
    assert not kernel_busy(doc)


def test_kept_shared_objects_carry_no_event_streams_and_still_observe_and_edit() -> None:
    """Memory per open room: the index's cells and the root types drop pycrdt's eager
    per-object event-stream sets; callbacks, reads and writes work as before."""
    doc = Doc()
    load_notebook(doc, {"cells": [{"cell_type": "code", "id": "a", "source": "1", "metadata": {}, "outputs": [], "execution_count": None}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    index = CellIndex(doc)
    kept = [index.cells, index.meta, state_of(doc), index.get("a")]
    assert all("_send_streams" not in vars(shared) for shared in kept)
    seen: list[Any] = []
    index.cells.observe_deep(lambda events: seen.append(len(events)))
    cell = index.get("a")
    assert cell is not None
    with doc.transaction():
        cell["execution_count"] = 3
    assert seen and index.export()["cells"][0]["execution_count"] == 3
    with pytest.raises(AttributeError):
        index.cells.events()  # never used by the daemon: fails loudly, never shares state
