"""Applying the difference between two nbformat notebooks to a live document, and the
three-way merge of a file edited outside the daemon into its room.

Cells are matched by id; sources change by minimal text edits rebased onto what the
document holds now, so concurrent edits in the room survive an outside edit and vice versa.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from difflib import SequenceMatcher
from typing import Any

from pycrdt import Array, Doc, Map, Text

from .notebook import canonical_cell, canonical_notebook, fresh_id, new_cell_map, new_output_map, plain
from .pieces import diff_in_pieces, pack, unpack
from .schema import CellIndex, meta_of
from .textdiff import apply_text_edits, rebase_edits, text_edits

__all__ = ["apply_notebook_changes", "merge_disk_changes", "merge_disk_changes_in_pieces"]

_MISSING = object()

Cell = dict[str, Any]


def _raw(ycell: Map) -> dict[str, Any]:
    raw = json.loads(str(ycell))
    return raw if isinstance(raw, dict) else {}


def _doc_cells_with_ids(index: CellIndex) -> list[Cell]:
    """The doc's cells in canonical form, keeping their ids (first occurrence only)."""
    seen: set[str] = set()
    result: list[Cell] = []
    for entry in index:
        cell = entry.export()
        if cell.get("id") and cell["id"] not in seen:
            seen.add(cell["id"])
            result.append(dict(cell))
    return result


# --------------------------------------------------------------------------- cell updates


def _edit_text(ycell: Map, key: str, old: str, new: str) -> None:
    """Change ycell[key] (a Text) from old to new with minimal edits, keeping concurrent
    edits already in the Text.  A missing or non-Text value is replaced whole."""
    ytext = ycell.get(key)
    if not isinstance(ytext, Text):
        ycell[key] = Text(new)
        return
    current = str(ytext)
    edits = rebase_edits(text_edits(old, new), old, current)
    apply_text_edits(ytext, current, edits)


def _apply_dict_changes(ymap: Map, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Set/delete only the top-level keys that changed old -> new (others' edits stay)."""
    for key in old:
        if key not in new and key in ymap:
            del ymap[key]
    for key, value in new.items():
        if old.get(key, _MISSING) != value:
            ymap[key] = plain(value)


def _set_map_value(ycell: Map, key: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Granular update of a Map-valued key (metadata); create the Map if missing."""
    ymap = ycell.get(key)
    if isinstance(ymap, Map):
        _apply_dict_changes(ymap, old, new)
    else:
        ycell[key] = Map(plain(new))


def _replace_outputs(ycell: Map, outputs: list[dict[str, Any]]) -> None:
    youtputs = ycell.get("outputs")
    if isinstance(youtputs, Array):
        # Keep the Array itself: frontends observe it.
        youtputs.clear()
        youtputs.extend([new_output_map(o) for o in outputs])
    else:
        ycell["outputs"] = Array([new_output_map(o) for o in outputs])


def _delete_keys(ycell: Map, keys: Iterable[str]) -> None:
    for key in keys:
        if key in ycell:
            del ycell[key]


def _update_code_fields(ycell: Map, old: Cell, new: Cell, type_changed: bool) -> None:
    if type_changed or old.get("outputs") != new["outputs"]:
        _replace_outputs(ycell, new["outputs"])
    if type_changed or old.get("execution_count") != new["execution_count"]:
        ycell["execution_count"] = new["execution_count"]
    if type_changed:
        # Only on a type change: the doc may have changed the type itself meanwhile.
        ycell["execution_state"] = "idle"
        _delete_keys(ycell, ["attachments"])


def _update_text_cell_fields(ycell: Map, old: Cell, new: Cell, type_changed: bool) -> None:
    if type_changed:
        _delete_keys(ycell, ["outputs", "execution_count", "execution_state"])
    attachments = new.get("attachments")
    if type_changed or old.get("attachments") != attachments:
        if attachments:
            ycell["attachments"] = plain(attachments)
        else:
            _delete_keys(ycell, ["attachments"])


def _update_cell(ycell: Map, old: Cell, new: Cell) -> None:
    """Apply the changes old -> new of one cell to its Map, key by key."""
    if old == new:
        return
    if old.get("source") != new["source"]:
        _edit_text(ycell, "source", old.get("source", ""), new["source"])
    if old.get("metadata") != new["metadata"]:
        _set_map_value(ycell, "metadata", old.get("metadata") or {}, new["metadata"])
    type_changed = old.get("cell_type") != new["cell_type"]
    if type_changed:
        ycell["cell_type"] = new["cell_type"]
    if new["cell_type"] == "code":
        _update_code_fields(ycell, old, new, type_changed)
    else:
        _update_text_cell_fields(ycell, old, new, type_changed)


# --------------------------------------------------------------------------- cell matching


def _cell_key(cell: Cell) -> tuple[str, str]:
    return (str(cell.get("cell_type")), str(cell.get("source")))


def _borrow_ids(cells: list[Cell], reference: list[Cell]) -> None:
    """Give id-less cells (nbformat < 4.5) the id of the reference cell they line up with.

    Cells are aligned on (type, source); inside a changed block they pair up by position
    (an edited cell keeps its identity).  Cells left over get fresh random ids: new cells.
    """
    if all(cell.get("id") for cell in cells):
        return
    used = {cell["id"] for cell in cells if cell.get("id")}
    ref = [r for r in reference if r.get("id") and r["id"] not in used]
    matcher = SequenceMatcher(
        None, [_cell_key(c) for c in cells], [_cell_key(r) for r in ref], autojunk=False
    )
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag not in ("equal", "replace"):
            continue
        for i, j in zip(range(i1, i2), range(j1, j2)):
            if not cells[i].get("id") and ref[j]["id"] not in used:
                cells[i]["id"] = ref[j]["id"]
                used.add(ref[j]["id"])
    for cell in cells:
        if not cell.get("id"):
            cell["id"] = fresh_id(used)


def _by_id(cells: list[Cell]) -> dict[str, Cell]:
    result: dict[str, Cell] = {}
    for cell in cells:
        result.setdefault(cell["id"], cell)
    return result


def _longest_increasing(values: list[int]) -> set[int]:
    """Indices (into values) of one longest strictly increasing subsequence, O(n log n)."""
    tails: list[int] = []  # value at the end of the best run of each length
    tail_index: list[int] = []
    parent: list[int] = [-1] * len(values)
    for i, value in enumerate(values):
        k = bisect_left(tails, value)
        if k == len(tails):
            tails.append(value)
            tail_index.append(i)
        else:
            tails[k] = value
            tail_index[k] = i
        parent[i] = tail_index[k - 1] if k else -1
    kept: set[int] = set()
    i = tail_index[-1] if tail_index else -1
    while i != -1:
        kept.add(i)
        i = parent[i]
    return kept


def _moved_ids(old_cells: list[Cell], new_cells: list[Cell], present: set[str]) -> set[str]:
    """Cells (in old, new and doc) whose order changed old -> new: the fewest cells to move,
    i.e. all but a longest common subsequence (an LIS, since ids are unique)."""
    old_pos = {cell["id"]: i for i, cell in enumerate(old_cells)}
    common = [c["id"] for c in new_cells if c["id"] in old_pos and c["id"] in present]
    kept = _longest_increasing([old_pos[cell_id] for cell_id in common])
    return {cell_id for i, cell_id in enumerate(common) if i not in kept}


# --------------------------------------------------------------------------- apply changes


class _CellList:
    """The doc's cells with a Python mirror of their ids, kept in step with our own edits
    (the index only learns of them when the transaction commits). Cells are found through
    the index: pycrdt reaches an Array item by walking from the start."""

    def __init__(self, index: CellIndex) -> None:
        self.index = index
        self.ycells = index.cells
        self.ids: list[str | None] = index.ids()

    def first(self, cell_id: str) -> Map | None:
        """A cell that was in the doc when the transaction began."""
        return self.index.get(cell_id)

    def delete(self, cell_ids: set[str]) -> None:
        # From the end, so the indices still to visit stay valid.
        for position in range(len(self.ids) - 1, -1, -1):
            if self.ids[position] in cell_ids:
                del self.ycells[position]
                del self.ids[position]

    def insert_after(self, anchor: str | None, cell: Mapping[str, Any]) -> None:
        position = self.ids.index(anchor) + 1 if anchor is not None else 0
        self.ycells.insert(position, new_cell_map(cell))
        self.ids.insert(position, cell["id"])


def _apply_meta_changes(doc: Doc, old: dict[str, Any], new: dict[str, Any]) -> None:
    meta = meta_of(doc)
    for key in ("nbformat", "nbformat_minor"):
        if old[key] != new[key] or key not in meta:
            meta[key] = new[key]
    if old["metadata"] != new["metadata"] or "metadata" not in meta:
        _set_map_value(meta, "metadata", old["metadata"], new["metadata"])


def _apply_cell_changes(index: CellIndex, old_cells: list[Cell], new_cells: list[Cell]) -> None:
    cells = _CellList(index)
    if not all(c.get("id") for c in old_cells + new_cells):
        _borrow_ids(old_cells, _doc_cells_with_ids(index))
        _borrow_ids(new_cells, old_cells)
    old_by_id, new_by_id = _by_id(old_cells), _by_id(new_cells)

    # 1. Field changes of cells the doc still has.  A cell new to `old` but already in
    #    the doc (added there too) is diffed against the doc's own content.
    for cell_id, new_cell in new_by_id.items():
        ycell = cells.first(cell_id)
        if ycell is not None:
            base = old_by_id.get(cell_id) or canonical_cell(_raw(ycell))
            _update_cell(ycell, base, new_cell)

    # 2. Moved cells leave with their current content (pycrdt cannot move an item).
    present = {i for i in cells.ids if i is not None}
    moved = _moved_ids(old_cells, new_cells, present)
    carried = {cell_id: _snapshot(cells.first(cell_id)) for cell_id in moved}
    cells.delete(moved)

    # 3. Place added and moved cells right after their preceding neighbour in `new`.
    _place_cells(cells, new_by_id, old_by_id, carried)

    # 4. Cells the change deleted go last (every copy: a CRDT may hold duplicates), so
    #    that inserted cells sit between the same neighbours as in the file: a cell added
    #    concurrently in the live doc then merges on a predictable side of them.
    cells.delete(set(old_by_id) - set(new_by_id))


def _snapshot(ycell: Map | None) -> dict[str, Any]:
    """A cell's full current content (execution_state included) for re-creation."""
    assert ycell is not None
    raw = _raw(ycell)
    cell = canonical_cell(raw)
    if raw.get("execution_state") and cell["cell_type"] == "code":
        cell["execution_state"] = raw["execution_state"]
    return cell


def _place_cells(
    cells: _CellList,
    new_by_id: dict[str, Cell],
    old_by_id: dict[str, Cell],
    carried: dict[str, dict[str, Any]],
) -> None:
    anchor: str | None = None
    present = set(cells.ids)
    for cell_id, new_cell in new_by_id.items():
        if cell_id in present:
            anchor = cell_id  # stays where the doc has it
            continue
        if cell_id in carried:
            content = carried[cell_id]
        elif cell_id not in old_by_id:
            content = new_cell
        else:
            continue  # the doc deleted it meanwhile: do not resurrect
        cells.insert_after(anchor, content)
        present.add(cell_id)
        anchor = cell_id


def apply_notebook_changes(
    doc: Doc, old: Mapping[str, Any], new: Mapping[str, Any], index: CellIndex | None = None
) -> None:
    """Apply the difference old -> new (two nbformat notebooks) to `doc`, in one transaction.

    `doc`'s content is assumed to descend from `old`; what the doc changed since is kept:
    - cells are matched by id (id-less notebooks, nbformat < 4.5, by position and content);
    - a changed source becomes minimal text edits on its Text, rebased onto the Text's
      current content;
    - added cells go after their preceding neighbour in `new`, never when the doc already
      has that id; deleted cells go (every copy);
    - cell_type, metadata (key by key), outputs, execution_count, attachments are replaced
      where they changed;
    - moved cells are deleted and re-created from their current content in the doc;
    - notebook metadata changes are applied key by key.
    """
    old_nb, new_nb = canonical_notebook(old), canonical_notebook(new)
    own_index = index is None
    if index is None:
        index = CellIndex(doc)
    try:
        with doc.transaction():
            _apply_meta_changes(doc, old_nb, new_nb)
            _apply_cell_changes(index, old_nb["cells"], new_nb["cells"])
    finally:
        if own_index:
            index.close()


# --------------------------------------------------------------------------- disk merge


def merge_disk_changes(doc: Doc, base: bytes, disk: Mapping[str, Any]) -> bytes:
    """``merge_disk_changes_in_pieces`` with the bases as one blob each (pieces.pack)."""
    return pack(merge_disk_changes_in_pieces(doc, unpack(base), disk))


def merge_disk_changes_in_pieces(doc: Doc, base: Sequence[bytes], disk: Mapping[str, Any]) -> list[bytes]:
    """Three-way merge of an .ipynb changed on disk into a live doc with unsaved edits.

    `base` is the document as it was when it last matched the file on disk, as updates
    (one, or the pieces of pieces.diff_in_pieces).  The disk edits are replayed on a fork
    of `base`; as the fork shares the live doc's history, the CRDT merges them with the
    live unsaved edits.  Returns the fork's state in pieces: the new base (the doc as the
    disk now has it).
    """
    fork: Doc = Doc()
    index = CellIndex(fork)  # before the content arrives: then it costs O(n)
    try:
        for piece in base:
            fork.apply_update(piece)
        state = fork.get_state()
        apply_notebook_changes(fork, index.export(), disk, index)
    finally:
        index.close()
    doc.apply_update(fork.get_update(state))
    return diff_in_pieces(fork)
