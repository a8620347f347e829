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

This module depends only on pycrdt, nbformat, the standard library and pieces.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from pycrdt import Array, Doc, Map, Text

from .pieces import PIECE_BYTES, UpdateWriter

__all__ = [
    "canonical_cell",
    "canonical_meta",
    "canonical_notebook",
    "canonical_output",
    "dedupe_cells",
    "export_notebook",
    "fresh_id",
    "load_notebook",
    "loads_doc_json",
    "notebook_pieces",
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


def _whole_as_int(literal: str) -> float | int:
    number = float(literal)
    return int(number) if number.is_integer() else number


def loads_doc_json(text: str) -> Any:
    """JSON read from the document (pycrdt's ``str()`` of a shared type), whole numbers
    as ints: what ``_ints_from_whole_floats(json.loads(text))`` gives, in one pass."""
    return json.loads(text, parse_float=_whole_as_int)


def _json_copy(value: Any) -> Any:
    """``_ints_from_whole_floats(plain(value))`` in one walk."""
    if isinstance(value, Mapping):
        return {str(key): _json_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_copy(item) for item in value]
    if type(value) is float and value.is_integer():
        return int(value)
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
    return _canonical_output(_json_copy(output))


def _canonical_output(out: dict[str, Any]) -> dict[str, Any]:
    """canonical_output of an output that is a copy already (changed in place)."""
    output_type = out.get("output_type")
    if output_type == "stream":
        out["text"] = _joined(out.get("text", ""))
    elif output_type in _MIMEBUNDLE_OUTPUTS and "data" in out:
        out["data"] = _joined_mimebundle(out["data"])
    return out


def canonical_cell(cell: Mapping[str, Any], fresh: bool = False) -> Cell:
    """A plain cell holding exactly the keys nbformat v4 allows for its type, defaults filled.

    Used both on export (a CRDT merge can leave stray keys, e.g. outputs on a cell turned
    markdown by a concurrent type change) and on the inputs of a diff, so both sides of a
    comparison share one form.  ``id`` is kept when present (stripping is the caller's call).
    Values of the wrong type (which the schema guard never lets into a room) are dropped
    rather than exported: an export is always a valid notebook.
    ``fresh``: ``cell`` is a plain copy already, whole numbers as ints (loads_doc_json),
    which nobody else holds: it is not copied again.
    """
    raw: dict[str, Any] = dict(cell) if fresh else _json_copy(cell)
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
        out["outputs"] = [_canonical_output(o) for o in outputs if _is_output(o)]
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
    metadata = _json_copy(meta.get("metadata") or {})
    return {
        "metadata": metadata if isinstance(metadata, dict) else {},
        "nbformat": major,
        "nbformat_minor": minor,
    }


def canonical_notebook(nb: Mapping[str, Any]) -> dict[str, Any]:
    return {"cells": [canonical_cell(c) for c in nb.get("cells") or []], **canonical_meta(nb)}


# --------------------------------------------------------------------------- Y builders


def new_output_map(output: Mapping[str, Any]) -> Map:
    """An nbformat output dict as the Y.Map the schema wants (stream text as Text).
    (pycrdt copies every value it is given: only the keys changed here are copied first.)"""
    out: dict[str, Any] = dict(output)
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
    ``cell`` is only read: pycrdt copies what it is given.
    """
    data = cell
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


# Cells are loaded in slices of about PIECE_BYTES of content, each written by its own client.


def load_notebook(doc: Doc, nb: Mapping[str, Any]) -> None:
    """Fill an empty doc from an nbformat v4 notebook (dict or NotebookNode), in one transaction.

    Cells without id (nbformat < 4.5) get a random one, and the notebook becomes 4.5:
    the doc always keys cells by id.  Raises ValueError if the doc already has cells or
    meta (loading twice is how cells get duplicated).  The content is that of
    ``notebook_pieces``.
    """
    _check_empty(doc)
    with doc.transaction():
        for piece in notebook_pieces(nb):
            doc.apply_update(piece)


def _check_empty(doc: Doc) -> None:
    cells, meta = doc.get("cells", type=Array), doc.get("meta", type=Map)
    if len(cells) or len(meta):
        raise ValueError("load_notebook needs an empty doc")


def notebook_pieces(nb: Mapping[str, Any], piece_bytes: int | None = None) -> list[bytes]:
    """An nbformat v4 notebook as the updates that build its document (see load_notebook)
    in an empty doc, each holding the cells of about ``piece_bytes`` (PIECE_BYTES) of content.

    Each slice of cells is written by a client of its own at the start of an empty cells
    Array; the clients' ids ascend from slice to slice, and Yjs orders items inserted at
    one place concurrently by client id: applied in any order, the slices line up in
    order. Each piece is applied by one short pycrdt call (a big notebook never stops the
    event loop for long), and a document loaded this way can be encoded client by client
    in small pieces too (pieces.diff_in_pieces). The updates are written directly
    (pieces.UpdateWriter): the same items as new_cell_map's, a few times faster.
    """
    piece_bytes = piece_bytes or PIECE_BYTES
    major, minor = _nb_version(nb)
    cells = _unique_ids(nb.get("cells") or [])
    slices: list[list[Cell]] = [[]]
    size = 0
    for cell in cells:
        if size >= piece_bytes:
            slices.append([])
            size = 0
        slices[-1].append(cell)
        size += _weight(cell)
    # Ids below 2**32, as Yjs makes them (a JavaScript peer reads them as numbers).
    first_client = secrets.randbelow(2**32 - len(slices) - 1) + 1
    pieces = []
    for number, part in enumerate(slices):
        writer = UpdateWriter(first_client + number)
        if number == 0:
            writer.set("meta", "nbformat", major)
            writer.set("meta", "nbformat_minor", minor)
            metadata = writer.set_type("meta", "metadata", UpdateWriter.MAP)
            for key, value in (nb.get("metadata") or {}).items():
                writer.set(metadata, key, value)
        previous = None
        for cell in part:
            previous = _write_cell(writer, previous, cell)
        pieces.append(writer.update())
    return pieces


def _write_cell(writer: UpdateWriter, previous: int | None, cell: Mapping[str, Any]) -> int:
    """The items of ``new_cell_map(cell)`` appended to the cells Array."""
    ycell = writer.append_type("cells", previous, UpdateWriter.MAP)
    cell_type = cell.get("cell_type", "code")
    writer.set(ycell, "id", str(cell.get("id") or random_cell_id()))
    writer.set(ycell, "cell_type", cell_type)
    writer.insert_text(writer.set_type(ycell, "source", UpdateWriter.TEXT), _joined(cell.get("source", "")))
    metadata = writer.set_type(ycell, "metadata", UpdateWriter.MAP)
    for key, value in (cell.get("metadata") or {}).items():
        writer.set(metadata, key, value)
    if cell_type == "code":
        outputs = writer.set_type(ycell, "outputs", UpdateWriter.ARRAY)
        last = None
        for output in cell.get("outputs") or []:
            last = _write_output(writer, outputs, last, output)
        writer.set(ycell, "execution_count", cell.get("execution_count"))
        writer.set(ycell, "execution_state", cell.get("execution_state") or "idle")
    else:
        attachments = cell.get("attachments")
        if attachments:  # the schema leaves empty attachments out
            writer.set(ycell, "attachments", {name: _joined_mimebundle(b) for name, b in attachments.items()})
    return ycell


def _write_output(writer: UpdateWriter, outputs: int, previous: int | None, output: Mapping[str, Any]) -> int:
    """The items of ``new_output_map(output)`` appended to a cell's outputs."""
    youtput = writer.append_type(outputs, previous, UpdateWriter.MAP)
    output_type = output.get("output_type")
    stream = output_type == "stream"
    for key, value in output.items():
        if stream and key == "text":
            writer.insert_text(writer.set_type(youtput, "text", UpdateWriter.TEXT), _joined(value))
        elif key == "data" and output_type in _MIMEBUNDLE_OUTPUTS:
            writer.set(youtput, key, _joined_mimebundle(value))
        else:
            writer.set(youtput, key, value)
    if stream and "text" not in output:
        writer.set_type(youtput, "text", UpdateWriter.TEXT)
    return youtput


def _weight(cell: Mapping[str, Any]) -> int:
    """About how many bytes a cell takes in a document (strings count, the rest a little)."""
    weight = 100 + _text_weight(cell.get("source"))
    for output in cell.get("outputs") or ():
        if isinstance(output, Mapping):
            weight += 100 + sum(_text_weight(value) for value in output.values())
            data = output.get("data")
            if isinstance(data, Mapping):
                weight += sum(_text_weight(value) for value in data.values())
    attachments = cell.get("attachments")
    if isinstance(attachments, Mapping):
        for bundle in attachments.values():
            if isinstance(bundle, Mapping):
                weight += sum(_text_weight(value) for value in bundle.values())
    return weight


def _text_weight(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(len(item) if isinstance(item, str) else 8 for item in value)
    return 8


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
        cell = dict(cell)  # the id may change; the rest is only read
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
