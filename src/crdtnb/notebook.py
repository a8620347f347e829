"""Conversion between nbformat v4 notebooks and the pycrdt documents of jupyter_ydoc's
notebook schema (docs/schema.md), both ways, and the canonical forms both sides share.

- ``cells``: Array of Map, one per cell, with ``id`` (str), ``cell_type``, ``source`` (Text),
  ``metadata`` (Map of plain JSON values); code cells add ``outputs`` (Array of Map),
  ``execution_count`` and ``execution_state``; markdown/raw cells add ``attachments``
  (plain JSON) only when non-empty.
- an output is a Map of nbformat keys as plain JSON, except that a stream output's
  ``text`` is a Text (JupyterLab appends to it in place).
- ``meta``: Map with ``nbformat``, ``nbformat_minor`` and ``metadata`` (Map).

Every notebook comes out as nbformat 4.5 or later, with a valid, unique id on every cell
(as JupyterLab saves older notebooks). Numbers cross Yjs as doubles: whole floats are cast
back to int on export. Exports read the document through pycrdt's JSON encoder, which
walks it once; iterating an Array item by item costs O(n²).

This module depends only on pycrdt, nbformat and the standard library.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from pycrdt import Array, Doc, Map, Text

__all__ = [
    "canonical_cell",
    "canonical_meta",
    "canonical_notebook",
    "canonical_output",
    "dedupe_cells",
    "export_notebook",
    "fresh_id",
    "load_notebook",
    "new_cell_map",
    "new_output_map",
    "plain",
]

DEFAULT_NBFORMAT = 4
# Cell ids exist from nbformat 4.5 on: every export is at least 4.5.
MIN_NBFORMAT_MINOR = 5
CELL_TYPES = ("code", "markdown", "raw")
_MIMEBUNDLE_OUTPUTS = ("execute_result", "display_data")
OUTPUT_TYPES = ("stream", "display_data", "execute_result", "error")
# nbformat 4.5's rule for cell ids.
CELL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

Cell = dict[str, Any]

# --------------------------------------------------------------------------- plain JSON


def plain(value: Any) -> Any:
    """Deep copy into plain dict/list/scalars (NotebookNode and tuples are not JSON types
    for pycrdt, and a copy keeps the caller's objects out of the doc's prelim values)."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
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


def canonical_output(output: Mapping[str, Any]) -> dict[str, Any]:
    """A plain output dict with multiline strings joined, as nbformat.reads gives them."""
    out: dict[str, Any] = _ints_from_whole_floats(plain(output))
    output_type = out.get("output_type")
    if output_type == "stream":
        out["text"] = _joined(out.get("text", ""))
    elif output_type in _MIMEBUNDLE_OUTPUTS and "data" in out:
        out["data"] = _joined_mimebundle(out["data"])
    return out


def canonical_cell(cell: Mapping[str, Any]) -> Cell:
    """A plain cell holding exactly the keys nbformat v4 allows for its type, defaults filled.

    Used both on export (a CRDT merge can leave stray keys, e.g. outputs on a cell turned
    markdown by a concurrent type change) and on the inputs of a diff, so both sides of a
    comparison share one form.  ``id`` is kept when present (stripping is the caller's call).
    Values of the wrong type (which the schema guard never lets into a room) are dropped
    rather than exported: an export is always a valid notebook.
    """
    raw = _ints_from_whole_floats(plain(cell))
    cell_type = raw.get("cell_type", "code")
    if cell_type not in CELL_TYPES:
        cell_type = "raw"
    out: Cell = {}
    if isinstance(raw.get("id"), str) and raw["id"]:
        out["id"] = raw["id"]
    out["cell_type"] = cell_type
    metadata = raw.get("metadata")
    out["metadata"] = metadata if isinstance(metadata, dict) else {}
    out["source"] = _joined(raw.get("source", ""))
    if cell_type == "code":
        outputs = raw.get("outputs")
        outputs = outputs if isinstance(outputs, list) else []
        out["outputs"] = [canonical_output(o) for o in outputs if _is_output(o)]
        count = raw.get("execution_count")
        out["execution_count"] = count if type(count) is int and count >= 0 else None
    else:
        attachments = raw.get("attachments")
        if attachments and isinstance(attachments, dict):
            out["attachments"] = {name: _joined_mimebundle(b) for name, b in attachments.items()}
    return out


def _is_output(output: Any) -> bool:
    return isinstance(output, dict) and output.get("output_type") in OUTPUT_TYPES


def _nb_version(nb: Mapping[str, Any]) -> tuple[int, int]:
    """(4, minor) with minor at least 4.5's: older notebooks are upgraded (cells get ids)."""
    minor = _ints_from_whole_floats(nb.get("nbformat_minor", MIN_NBFORMAT_MINOR))
    if type(minor) is not int:
        minor = MIN_NBFORMAT_MINOR
    return DEFAULT_NBFORMAT, max(minor, MIN_NBFORMAT_MINOR)


def canonical_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The notebook-level keys of an export, from the doc's ``meta`` map (or a notebook)."""
    major, minor = _nb_version(meta)
    metadata = _ints_from_whole_floats(plain(meta.get("metadata") or {}))
    return {
        "metadata": metadata if isinstance(metadata, dict) else {},
        "nbformat": major,
        "nbformat_minor": minor,
    }


def canonical_notebook(nb: Mapping[str, Any]) -> dict[str, Any]:
    return {"cells": [canonical_cell(c) for c in nb.get("cells") or []], **canonical_meta(nb)}


# --------------------------------------------------------------------------- Y builders


def new_output_map(output: Mapping[str, Any]) -> Map:
    """An nbformat output dict as the Y.Map the schema wants (stream text as Text)."""
    out: dict[str, Any] = plain(output)
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
    data: Cell = plain(cell)
    cell_type = data.get("cell_type", "code")
    ycell: dict[str, Any] = {
        "id": str(data.get("id") or random_cell_id()),
        "cell_type": cell_type,
        "source": Text(_joined(data.get("source", ""))),
        "metadata": Map(data.get("metadata") or {}),
    }
    if cell_type == "code":
        ycell["outputs"] = Array([new_output_map(o) for o in data.get("outputs") or []])
        ycell["execution_count"] = data.get("execution_count")
        ycell["execution_state"] = data.get("execution_state") or "idle"
    else:
        attachments = data.get("attachments")
        if attachments:  # the schema leaves empty attachments out
            ycell["attachments"] = {name: _joined_mimebundle(b) for name, b in attachments.items()}
    return Map(ycell)


# --------------------------------------------------------------------------- load


def load_notebook(doc: Doc, nb: Mapping[str, Any]) -> None:
    """Fill an empty doc from an nbformat v4 notebook (dict or NotebookNode), in one transaction.

    Cells without id (nbformat < 4.5) get a random one, and the notebook becomes 4.5:
    the doc always keys cells by id.  Raises ValueError if the doc already has cells or
    meta (loading twice is how cells get duplicated).
    """
    cells, meta = doc.get("cells", type=Array), doc.get("meta", type=Map)
    if len(cells) or len(meta):
        raise ValueError("load_notebook needs an empty doc")
    major, minor = _nb_version(nb)
    ycells = [new_cell_map(c) for c in _unique_ids(nb.get("cells") or [])]
    with doc.transaction():
        meta["nbformat"] = major
        meta["nbformat_minor"] = minor
        meta["metadata"] = Map(plain(nb.get("metadata") or {}))
        insert_cells(cells, 0, ycells)


def insert_cells(cells: Array, index: int, ycells: list[Map]) -> None:
    """Insert cells at ``index``, in order. Each is inserted at the same index, last
    first: pycrdt walks from the start to reach an index, so appending n cells one by
    one costs O(n²), this O(n·index)."""
    with cells.doc.transaction():
        for ycell in reversed(ycells):
            cells.insert(index, ycell)


def _unique_ids(cells: Iterable[Mapping[str, Any]]) -> list[Cell]:
    """Cells with a valid id each, none repeated (a missing, invalid or repeated id gets a
    fresh one)."""
    seen: set[str] = set()
    result: list[Cell] = []
    for cell in cells:
        cell = plain(cell)
        if not isinstance(cell.get("id"), str) or not CELL_ID.match(cell["id"]) or cell["id"] in seen:
            cell["id"] = fresh_id(seen)
        seen.add(cell["id"])
        result.append(cell)
    return result


def random_cell_id() -> str:
    """A new cell id, as nbformat makes them (8 hex digits of a UUID4)."""
    return uuid.uuid4().hex[:8]


def fresh_id(used: set[str], seed: str | None = None) -> str:
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
    """The doc as a valid nbformat v4.5+ notebook dict.

    execution_state is dropped, whole floats are cast back to int, stream text is a str.
    Cells with a repeated id (a CRDT merge can produce them): an identical repeat is
    dropped, a differing one gets a fresh deterministic id.  The doc is not modified.
    (A room exports through its schema.CellIndex, which caches each cell's export.)
    """
    with doc.transaction():  # one consistent snapshot of both roots
        meta = json.loads(str(doc.get("meta", type=Map)))
        raw_cells = json.loads(str(doc.get("cells", type=Array)))
    cells = dedupe_cells([canonical_cell(c) for c in raw_cells if isinstance(c, dict)])
    return {"cells": cells, **canonical_meta(meta if isinstance(meta, dict) else {})}


def dedupe_cells(cells: list[Cell], copy: bool = False) -> list[Cell]:
    """Drop identical repeats of an id, re-id differing ones, id-less cells and cells
    whose id nbformat would refuse. ``copy``: leave the given dicts untouched."""
    used = {c["id"] for c in cells if c.get("id")}
    first: dict[str, Cell] = {}
    repeats: dict[str, int] = {}
    result: list[Cell] = []
    for cell in cells:
        cell_id = cell.get("id")
        seed = None
        if cell_id and cell_id in first:
            if cell == first[cell_id]:
                continue
            repeats[cell_id] = repeats.get(cell_id, 0) + 1
            seed = f"{cell_id}/{repeats[cell_id]}"
        elif not cell_id or not CELL_ID.match(cell_id):
            repeats[""] = repeats.get("", 0) + 1
            seed = f"/missing/{repeats['']}"
        if seed is not None:
            if copy:
                cell = dict(cell)
            cell["id"] = fresh_id(used, seed=seed)
        first[cell["id"]] = cell
        result.append(cell)
    return result
