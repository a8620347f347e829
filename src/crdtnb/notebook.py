"""Mapping between nbformat v4 notebooks and pycrdt documents.

The document follows jupyter_ydoc's notebook schema (document version "2.0.0") so that
JupyterLab's collaborative model can read and write it unchanged:

- ``cells``: Array of Map, one per cell, with ``id`` (str), ``cell_type``, ``source`` (Text),
  ``metadata`` (Map of plain JSON values); code cells add ``outputs`` (Array of Map),
  ``execution_count`` and ``execution_state``; markdown/raw cells add ``attachments``
  (plain JSON) only when non-empty.
- an output is a Map of nbformat keys as plain JSON, except that a stream output's
  ``text`` is a Text (JupyterLab appends to it in place).
- ``meta``: Map with ``nbformat``, ``nbformat_minor`` and ``metadata`` (Map).
- ``state``: Map for server status, never touched here.

Index units: pycrdt's ``Text`` counts positions in UTF-8 bytes (yrs' default offset kind),
not in Python ``str`` code points, so every text edit converts its indices.
Numbers cross Yjs as doubles: whole floats are cast back to int on export.

This module depends only on pycrdt, nbformat and the standard library.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from difflib import SequenceMatcher
from typing import Any

from nbformat.v4.nbbase import random_cell_id
from pycrdt import Array, Doc, Map, Text

__all__ = [
    "KERNEL_STATUS_KEY",
    "apply_notebook_changes",
    "export_notebook",
    "kernel_busy",
    "load_notebook",
    "merge_disk_changes",
    "new_cell_map",
    "new_output_map",
]

DEFAULT_NBFORMAT = 4
DEFAULT_NBFORMAT_MINOR = 5
# Cell ids exist from nbformat 4.5 on; older notebooks must not carry them (schema forbids).
_FIRST_MINOR_WITH_IDS = 5
_TEXT_CELL_TYPES = ("markdown", "raw")
_MIMEBUNDLE_OUTPUTS = ("execute_result", "display_data")
# Character-level diffing is quadratic in the worst case: a changed block above this many
# character pairs, or any block once a text has spent this budget, is replaced whole.
_CHAR_DIFF_BLOCK_LIMIT = 1_000_000
_CHAR_DIFF_BUDGET = 4_000_000

_MISSING = object()

# crdtnb's entries in the document's "state" map (besides jupyter_ydoc's).
KERNEL_STATUS_KEY = "kernel_status"  # "none" | "starting" | "idle" | "busy" | "dead"

Cell = dict[str, Any]
# An edit of a str: replace s[start:end] with `text`.
Edit = tuple[int, int, str]


# --------------------------------------------------------------------------- root types


def _cells(doc: Doc) -> Array:
    return doc.get("cells", type=Array)


def _meta(doc: Doc) -> Map:
    return doc.get("meta", type=Map)


def kernel_busy(doc: Doc) -> bool:
    """Whether the room's kernel is running code (as its agent last reported)."""
    return doc.get("state", type=Map).get(KERNEL_STATUS_KEY) == "busy"


# --------------------------------------------------------------------------- plain JSON


def _plain(value: Any) -> Any:
    """Deep copy into plain dict/list/scalars (NotebookNode and tuples are not JSON types
    for pycrdt, and a copy keeps the caller's objects out of the doc's prelim values)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _ints_from_whole_floats(value: Any) -> Any:
    """Yjs stores every number as a double: turn whole floats back into ints, recursively
    (the same rule as jupyter_ydoc's cast_all, so exports match YNotebook.get)."""
    if type(value) is float and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _ints_from_whole_floats(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_ints_from_whole_floats(item) for item in value]
    return value


def _joined(text: Any) -> str:
    """nbformat allows multiline strings as lists of lines; the doc holds one string."""
    if text is None:
        return ""
    if isinstance(text, list):
        return "".join(str(line) for line in text)
    return str(text)


def _is_json_mime(mime: str) -> bool:
    # JSON payloads are data, not split lines: never join them.
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


def _joined_mimebundle(bundle: Any) -> Any:
    if not isinstance(bundle, dict):
        return bundle
    return {
        mime: "".join(value)
        if not _is_json_mime(mime) and isinstance(value, list) and all(isinstance(v, str) for v in value)
        else value
        for mime, value in bundle.items()
    }


# --------------------------------------------------------------------------- canonical forms


def _canonical_output(output: Mapping[str, Any]) -> dict[str, Any]:
    """A plain output dict with multiline strings joined, as nbformat.reads gives them."""
    out = _ints_from_whole_floats(_plain(output))
    output_type = out.get("output_type")
    if output_type == "stream":
        out["text"] = _joined(out.get("text", ""))
    elif output_type in _MIMEBUNDLE_OUTPUTS and "data" in out:
        out["data"] = _joined_mimebundle(out["data"])
    return out


def _canonical_cell(cell: Mapping[str, Any]) -> Cell:
    """A plain cell holding exactly the keys nbformat v4 allows for its type, defaults filled.

    Used both on export (a CRDT merge can leave stray keys, e.g. outputs on a cell turned
    markdown by a concurrent type change) and on the inputs of a diff, so both sides of a
    comparison share one form.  ``id`` is kept when present (stripping is the caller's call).
    """
    raw = _ints_from_whole_floats(_plain(cell))
    cell_type = raw.get("cell_type", "code")
    out: Cell = {}
    if raw.get("id"):
        out["id"] = str(raw["id"])
    out["cell_type"] = cell_type
    out["metadata"] = raw.get("metadata") or {}
    out["source"] = _joined(raw.get("source", ""))
    if cell_type == "code":
        out["outputs"] = [_canonical_output(o) for o in raw.get("outputs") or []]
        out["execution_count"] = raw.get("execution_count")
    else:
        attachments = raw.get("attachments")
        if attachments:
            out["attachments"] = {name: _joined_mimebundle(b) for name, b in attachments.items()}
    return out


def _nb_version(nb: Mapping[str, Any]) -> tuple[int, int]:
    major = _ints_from_whole_floats(nb.get("nbformat", DEFAULT_NBFORMAT))
    minor = _ints_from_whole_floats(nb.get("nbformat_minor", DEFAULT_NBFORMAT_MINOR))
    return int(major), int(minor)


def _has_cell_ids(version: tuple[int, int]) -> bool:
    return version >= (4, _FIRST_MINOR_WITH_IDS)


def _canonical_notebook(nb: Mapping[str, Any]) -> dict[str, Any]:
    major, minor = _nb_version(nb)
    return {
        "cells": [_canonical_cell(c) for c in nb.get("cells") or []],
        "metadata": _ints_from_whole_floats(_plain(nb.get("metadata") or {})),
        "nbformat": major,
        "nbformat_minor": minor,
    }


# --------------------------------------------------------------------------- Y builders


def new_output_map(output: Mapping[str, Any]) -> Map:
    """An nbformat output dict as the Y.Map the schema wants (stream text as Text)."""
    out: dict[str, Any] = _plain(output)
    output_type = out.get("output_type")
    if output_type == "stream":
        # JupyterLab appends stream chunks to this Text: a plain str would break that.
        out["text"] = Text(_joined(out.get("text", "")))
    elif output_type in _MIMEBUNDLE_OUTPUTS and "data" in out:
        out["data"] = _joined_mimebundle(out["data"])
    return Map(out)


def new_cell_map(cell: Mapping[str, Any]) -> Map:
    """An nbformat cell dict as the Y.Map the schema wants.

    A cell without id gets a random nbformat-style id.  A non-nbformat
    ``execution_state`` key is honoured (used when a moved cell is re-created).
    """
    plain: Cell = _plain(cell)
    cell_type = plain.get("cell_type", "code")
    ycell: dict[str, Any] = {
        "id": str(plain.get("id") or random_cell_id()),
        "cell_type": cell_type,
        "source": Text(_joined(plain.get("source", ""))),
        "metadata": Map(plain.get("metadata") or {}),
    }
    if cell_type == "code":
        ycell["outputs"] = Array([new_output_map(o) for o in plain.get("outputs") or []])
        ycell["execution_count"] = plain.get("execution_count")
        ycell["execution_state"] = plain.get("execution_state") or "idle"
    else:
        attachments = plain.get("attachments")
        if attachments:  # the schema leaves empty attachments out
            ycell["attachments"] = {name: _joined_mimebundle(b) for name, b in attachments.items()}
    return Map(ycell)


# --------------------------------------------------------------------------- load


def load_notebook(doc: Doc, nb: Mapping[str, Any]) -> None:
    """Fill an empty doc from an nbformat v4 notebook (dict or NotebookNode), in one transaction.

    Cells without id (nbformat < 4.5) get a random one: the doc always keys cells by id,
    export strips them again for notebooks older than 4.5.  Raises ValueError if the doc
    already has cells or meta (loading twice is how cells get duplicated).
    """
    cells, meta = _cells(doc), _meta(doc)
    if len(cells) or len(meta):
        raise ValueError("load_notebook needs an empty doc")
    major, minor = _nb_version(nb)
    ycells = [new_cell_map(c) for c in _unique_ids(nb.get("cells") or [])]
    with doc.transaction():
        meta["nbformat"] = major
        meta["nbformat_minor"] = minor
        meta["metadata"] = Map(_plain(nb.get("metadata") or {}))
        cells.extend(ycells)


def _unique_ids(cells: Iterable[Mapping[str, Any]]) -> list[Cell]:
    """Cells with an id each, none repeated (a repeated id in the input gets a fresh one)."""
    seen: set[str] = set()
    result: list[Cell] = []
    for cell in cells:
        plain = _plain(cell)
        if not plain.get("id") or plain["id"] in seen:
            plain["id"] = _fresh_id(seen)
        seen.add(plain["id"])
        result.append(plain)
    return result


def _fresh_id(used: set[str], seed: str | None = None) -> str:
    """A cell id not in `used`: random, or derived from `seed` so that repeated exports
    of the same doc give the same id (a file that changes on every save is noise)."""
    counter = 0
    while True:
        if seed is None:
            candidate = random_cell_id()
        else:
            candidate = hashlib.sha1(f"{seed}#{counter}".encode()).hexdigest()[:8]
        if candidate not in used:
            used.add(candidate)
            return candidate
        counter += 1


# --------------------------------------------------------------------------- export


def export_notebook(doc: Doc) -> dict[str, Any]:
    """The doc as a valid nbformat v4 notebook dict.

    execution_state is dropped, whole floats are cast back to int, stream text is a str.
    Cells with a repeated id (a CRDT merge can produce them): an identical repeat is
    dropped, a differing one gets a fresh deterministic id.  The doc is not modified.
    Cell ids are stripped for notebooks older than 4.5, as YNotebook.get does.
    """
    with doc.transaction():  # one consistent snapshot of both roots
        meta = _meta(doc).to_py() or {}
        raw_cells = _cells(doc).to_py() or []
    version = _nb_version(meta)
    cells = _dedupe_cells([_canonical_cell(c) for c in raw_cells if isinstance(c, Mapping)])
    if not _has_cell_ids(version):
        for cell in cells:
            cell.pop("id", None)
    return {
        "cells": cells,
        "metadata": _ints_from_whole_floats(meta.get("metadata") or {}),
        "nbformat": version[0],
        "nbformat_minor": version[1],
    }


def _dedupe_cells(cells: list[Cell]) -> list[Cell]:
    """Drop identical repeats of an id, re-id differing ones and id-less cells."""
    used = {c["id"] for c in cells if c.get("id")}
    first: dict[str, Cell] = {}
    repeats: dict[str, int] = {}
    result: list[Cell] = []
    for cell in cells:
        cell_id = cell.get("id")
        if cell_id and cell_id in first:
            if cell == first[cell_id]:
                continue
            repeats[cell_id] = repeats.get(cell_id, 0) + 1
            cell["id"] = _fresh_id(used, seed=f"{cell_id}/{repeats[cell_id]}")
        elif not cell_id:
            repeats[""] = repeats.get("", 0) + 1
            cell["id"] = _fresh_id(used, seed=f"/missing/{repeats['']}")
        first[cell["id"]] = cell
        result.append(cell)
    return result


def _doc_cells_with_ids(ycells: Array) -> list[Cell]:
    """The doc's cells in canonical form, keeping their ids (first occurrence only)."""
    seen: set[str] = set()
    result: list[Cell] = []
    for raw in ycells.to_py() or []:
        if not isinstance(raw, Mapping):
            continue
        cell = _canonical_cell(raw)
        if cell.get("id") and cell["id"] not in seen:
            seen.add(cell["id"])
            result.append(cell)
    return result


# --------------------------------------------------------------------------- text edits


def _common_prefix_len(a: str, b: str) -> int:
    # Binary search on slices: comparisons run in C, O(n log n) overall.
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix_len(a: str, b: str) -> int:
    return _common_prefix_len(a[::-1], b[::-1])


def _line_starts(lines: list[str]) -> list[int]:
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    return starts


def _char_edits(a: str, b: str, offset: int, budget: list[int]) -> list[Edit]:
    """Character-level edits for one changed block (or one whole replacement if too big).
    `budget` is a one-item list: the character pairs this text may still spend."""
    cost = len(a) * len(b)
    if not a or not b or cost > _CHAR_DIFF_BLOCK_LIMIT or cost > budget[0]:
        return [(offset, offset + len(a), b)]
    budget[0] -= cost
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    return [
        (offset + i1, offset + i2, b[j1:j2])
        for tag, i1, i2, j1, j2 in matcher.get_opcodes()
        if tag != "equal"
    ]


def _text_edits(a: str, b: str) -> list[Edit]:
    """Small edits turning `a` into `b`, in str indices, ascending and non-overlapping.

    Common prefix and suffix are cut first (the usual edit is one contiguous change),
    then the middle is diffed line by line, and changed line blocks char by char.
    autojunk stays on for lines (difflib's default for line diffs; off it is quadratic on
    long repetitive texts) and is off for characters (it would junk every common one).
    """
    if a == b:
        return []
    prefix = _common_prefix_len(a, b)
    suffix = _common_suffix_len(a[prefix:], b[prefix:])
    a_mid, b_mid = a[prefix : len(a) - suffix], b[prefix : len(b) - suffix]
    if not a_mid or not b_mid:
        return [(prefix, prefix + len(a_mid), b_mid)]
    a_lines, b_lines = a_mid.splitlines(True), b_mid.splitlines(True)
    a_starts, b_starts = _line_starts(a_lines), _line_starts(b_lines)
    edits: list[Edit] = []
    budget = [_CHAR_DIFF_BUDGET]
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, a_lines, b_lines).get_opcodes():
        if tag == "equal":
            continue
        a_block = a_mid[a_starts[i1] : a_starts[i2]]
        b_block = b_mid[b_starts[j1] : b_starts[j2]]
        edits.extend(_char_edits(a_block, b_block, prefix + a_starts[i1], budget))
    return edits


def _unchanged_segments(base: str, current: str) -> list[tuple[int, int, int]]:
    """Stretches of `base` that `current` still holds untouched: (base_start, base_end,
    current_start), ascending, covering base's start and end (possibly empty)."""
    segments: list[tuple[int, int, int]] = []
    base_pos = cur_pos = 0
    for start, end, text in _text_edits(base, current):
        segments.append((base_pos, start, cur_pos))
        cur_pos += start - base_pos + len(text)
        base_pos = end
    segments.append((base_pos, len(base), cur_pos))
    return segments


def _rebase_edits(edits: list[Edit], base: str, current: str) -> list[Edit]:
    """Move edits made against `base` onto `current`, which descends from `base`.

    Like a CRDT merge: deleting characters `current` already removed is a no-op, and an
    insertion into a region `current` rewrote lands right after that rewrite.
    """
    if base == current:
        return edits
    segments = _unchanged_segments(base, current)
    seg_starts = [seg[0] for seg in segments]
    rebased: list[Edit] = []
    for start, end, text in edits:
        point = _map_point(segments, seg_starts, start)
        deletions = _map_range(segments, start, end)
        if deletions and deletions[0][0] == point:
            first_start, first_end = deletions.pop(0)
            rebased.append((first_start, first_end, text))
        elif text:
            rebased.append((point, point, text))
        rebased.extend((s, e, "") for s, e in deletions)
    return rebased


def _map_point(segments: list[tuple[int, int, int]], seg_starts: list[int], pos: int) -> int:
    """Where base position `pos` is in current (after the current's own edits at `pos`)."""
    index = bisect_left(seg_starts, pos + 1) - 1  # last segment starting at or before pos
    base_start, base_end, cur_start = segments[index]
    if pos <= base_end:
        return cur_start + pos - base_start
    # pos fell inside a stretch current rewrote: continue right after the rewrite.
    return segments[index + 1][2]


def _map_range(segments: list[tuple[int, int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """The parts of base[start:end] current still holds, in current positions."""
    ranges: list[tuple[int, int]] = []
    for base_start, base_end, cur_start in segments:
        lo, hi = max(start, base_start), min(end, base_end)
        if lo < hi:
            ranges.append((cur_start + lo - base_start, cur_start + hi - base_start))
    return ranges


def _apply_text_edits(ytext: Text, current: str, edits: list[Edit]) -> None:
    """Apply str-indexed edits to a pycrdt Text, whose indices are UTF-8 bytes.

    Edits go from the end so the positions of the earlier ones stay valid; `current`
    is never mutated, and the prefix before an edit is the same in it and in the Text.
    """
    ascii_only = current.isascii()
    # sorted() is stable, then reversed: two insertions at one point keep their order.
    for start, end, text in reversed(sorted(edits, key=lambda e: e[0])):
        if ascii_only:
            byte_start, byte_len = start, end - start
        else:
            byte_start = len(current[:start].encode("utf-8"))
            byte_len = len(current[start:end].encode("utf-8"))
        if byte_len:
            del ytext[byte_start : byte_start + byte_len]
        if text:
            ytext.insert(byte_start, text)


def _edit_text(ycell: Map, key: str, old: str, new: str) -> None:
    """Change ycell[key] (a Text) from old to new with minimal edits, keeping concurrent
    edits already in the Text.  A missing or non-Text value is replaced whole."""
    ytext = ycell.get(key)
    if not isinstance(ytext, Text):
        ycell[key] = Text(new)
        return
    current = str(ytext)
    edits = _rebase_edits(_text_edits(old, new), old, current)
    _apply_text_edits(ytext, current, edits)


# --------------------------------------------------------------------------- cell updates


def _apply_dict_changes(ymap: Map, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Set/delete only the top-level keys that changed old -> new (others' edits stay)."""
    for key in old:
        if key not in new and key in ymap:
            del ymap[key]
    for key, value in new.items():
        if old.get(key, _MISSING) != value:
            ymap[key] = _plain(value)


def _set_map_value(ycell: Map, key: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Granular update of a Map-valued key (metadata); create the Map if missing."""
    ymap = ycell.get(key)
    if isinstance(ymap, Map):
        _apply_dict_changes(ymap, old, new)
    else:
        ycell[key] = Map(_plain(new))


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
            ycell["attachments"] = _plain(attachments)
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
            cell["id"] = _fresh_id(used)


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
    """The doc's cells Array plus a Python mirror of their ids, kept in step, so that
    positions are found without a round trip into the doc for every cell."""

    def __init__(self, ycells: Array) -> None:
        self.ycells = ycells
        self.ids: list[Any] = [
            ycell.get("id") if isinstance(ycell, Map) else None for ycell in ycells
        ]

    def first(self, cell_id: str) -> Map | None:
        try:
            return self.ycells[self.ids.index(cell_id)]
        except ValueError:
            return None

    def delete(self, cell_ids: set[str]) -> None:
        # From the end, so the indices still to visit stay valid.
        for index in range(len(self.ids) - 1, -1, -1):
            if self.ids[index] in cell_ids:
                del self.ycells[index]
                del self.ids[index]

    def insert_after(self, anchor: str | None, cell: Mapping[str, Any]) -> None:
        index = self.ids.index(anchor) + 1 if anchor is not None else 0
        self.ycells.insert(index, new_cell_map(cell))
        self.ids.insert(index, cell["id"])


def _apply_meta_changes(doc: Doc, old: dict[str, Any], new: dict[str, Any]) -> None:
    meta = _meta(doc)
    for key in ("nbformat", "nbformat_minor"):
        if old[key] != new[key] or key not in meta:
            meta[key] = new[key]
    if old["metadata"] != new["metadata"] or "metadata" not in meta:
        _set_map_value(meta, "metadata", old["metadata"], new["metadata"])


def _apply_cell_changes(doc: Doc, old_cells: list[Cell], new_cells: list[Cell]) -> None:
    cells = _CellList(_cells(doc))
    if not all(c.get("id") for c in old_cells + new_cells):
        _borrow_ids(old_cells, _doc_cells_with_ids(cells.ycells))
        _borrow_ids(new_cells, old_cells)
    old_by_id, new_by_id = _by_id(old_cells), _by_id(new_cells)

    # 1. Field changes of cells the doc still has.  A cell new to `old` but already in
    #    the doc (added there too) is diffed against the doc's own content.
    for cell_id, new_cell in new_by_id.items():
        ycell = cells.first(cell_id)
        if ycell is not None:
            base = old_by_id.get(cell_id) or _canonical_cell(ycell.to_py() or {})
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
    raw = ycell.to_py() or {}
    cell = _canonical_cell(raw)
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


def apply_notebook_changes(doc: Doc, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
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
    old_nb, new_nb = _canonical_notebook(old), _canonical_notebook(new)
    with doc.transaction():
        _apply_meta_changes(doc, old_nb, new_nb)
        _apply_cell_changes(doc, old_nb["cells"], new_nb["cells"])


# --------------------------------------------------------------------------- disk merge


def merge_disk_changes(doc: Doc, base: bytes, disk: Mapping[str, Any]) -> bytes:
    """Three-way merge of an .ipynb changed on disk into a live doc with unsaved edits.

    `base` is a full update (doc.get_update()) of the document as it was when it last
    matched the file on disk.  The disk edits are replayed on a fork of `base`; as the fork
    shares the live doc's history, the CRDT merges them with the live unsaved edits.
    Returns the fork's full update: the new base (the doc as the disk now has it).
    """
    fork = Doc()
    fork.apply_update(base)
    state = fork.get_state()
    apply_notebook_changes(fork, export_notebook(fork), disk)
    doc.apply_update(fork.get_update(state))
    return fork.get_update()
