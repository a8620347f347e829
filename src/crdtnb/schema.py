"""The shared notebook document: its root types, the server's state keys, and one index
of its cells by id that every part of the server uses.

The document follows jupyter_ydoc's notebook schema (docs/schema.md): ``cells`` (Array of
Map), ``meta`` (Map) and ``state`` (Map, for server status).

pycrdt reaches an Array item by walking from the start, so ``cells[i]`` costs O(i) and a
loop over the cells O(n²) (60k cells: 26 s). ``CellIndex`` therefore mirrors the cells
Array in Python, kept current from the Array's own change events: lookups by id and by
position are O(1), and each cell's nbformat export is cached until the cell changes, so
exporting a notebook costs only the cells that changed since the last export.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from pycrdt import Array, ArrayEvent, Doc, Map, MapEvent

from .notebook import CELL_ID, canonical_cell, canonical_meta, dedupe_cells, loads_doc_json
from .slices import SLICE_SECONDS, in_slices

CELLS = "cells"
META = "meta"
STATE = "state"

# crdtnb's entries in the document's "state" map; only the server writes them.
KERNEL_STATUS = "kernel_status"  # "none" | "starting" | "idle" | "busy" | "dead"
FILE_ERROR = "file_error"  # why the .ipynb cannot be written now (absent when it can)
SAVED_AT = "saved_at"  # Unix time of the last successful save
INPUT_REQUEST = "input_request"  # {"id", "cell_id", "prompt", "password"}: a running cell waits for input
MOVED_TO = "moved_to"  # the notebook's new path after a rename: open pages follow it
SERVER_STATE_KEYS = frozenset({KERNEL_STATUS, FILE_ERROR, SAVED_AT, INPUT_REQUEST, MOVED_TO})

# Keys of a code cell that only the kernel agent writes (peers may clear outputs).
EXECUTION_STATE = "execution_state"


Shared = TypeVar("Shared", Map, Array)


def without_event_streams(shared: Shared) -> Shared:
    """``shared`` without the two sets pycrdt makes eagerly, in every Map or Array object,
    for iterating over its events asynchronously (``events()``): 0.9 KB for each of the
    dozen a room keeps (its root types, the index's cells), over a quarter of a small
    room's memory (bench/README.md, many rooms). The daemon observes with callbacks and
    never iterates; ``events()`` on such an object would raise AttributeError."""
    shared.__dict__.pop("_send_streams", None)
    return shared


def cells_of(doc: Doc) -> Array:
    return without_event_streams(doc.get(CELLS, type=Array))


def meta_of(doc: Doc) -> Map:
    return without_event_streams(doc.get(META, type=Map))


def state_of(doc: Doc) -> Map:
    return without_event_streams(doc.get(STATE, type=Map))


def kernel_busy(doc: Doc) -> bool:
    """Whether the room's kernel is running code (as its agent last reported)."""
    return state_of(doc).get(KERNEL_STATUS) == "busy"


@dataclass(eq=False, slots=True)
class CellEntry:
    """One item of the cells Array, as the index knows it."""

    ymap: Map | None  # None: an item that is not a Map (the guard removes those)
    cell_id: str | None
    exported: dict[str, Any] | None = None  # canonical nbformat cell; None: changed since
    text: str | None = None  # `exported` as compact JSON

    def export(self) -> dict[str, Any]:
        if self.exported is None:
            self.export_raw()
        assert self.exported is not None
        return self.exported

    def export_raw(self) -> dict[str, Any]:
        """Read the cell afresh: its raw JSON (returned) and its cached export."""
        raw = loads_doc_json(str(self.ymap)) if self.ymap is not None else {}
        raw = raw if isinstance(raw, dict) else {}
        self.exported = canonical_cell(raw, fresh=True)
        self.text = None
        return raw

    def json_text(self) -> str:
        if self.text is None or self.exported is None:
            self.text = _compact(self.export())
        return self.text


def _read_id(ymap: Map | None) -> str | None:
    if ymap is None:
        return None
    value = ymap.get("id")
    return value if isinstance(value, str) else None


# A listener gets the raw pycrdt events of one transaction touching the cells, and its
# origin; it runs inside the commit (it may read, not write).
CellsListener = Callable[[list[Any], Any], None]


@dataclass
class _Lookup:
    by_id: dict[str, CellEntry] = field(default_factory=dict)  # first occurrence of each id
    positions: dict[int, int] = field(default_factory=dict)  # id(entry) -> index
    clean: bool = True  # every cell a Map with a valid id of its own: exports need no dedupe


class CellIndex:
    """The cells of one document, by position and by id, with cached exports."""

    def __init__(self, doc: Doc) -> None:
        self.doc = doc
        self.cells = cells_of(doc)
        self.meta = meta_of(doc)
        self._entries: list[CellEntry] = []
        self._lookup: _Lookup | None = None
        self._meta_export: dict[str, Any] | None = None
        self.listeners: list[CellsListener] = []
        # Cells whose outputs the server changed (the guard's ledger reads them later).
        self.outputs_changed: set[CellEntry] = set()
        if len(self.cells):
            # Filled before the index existed: one O(n²) walk (build indexes before loading).
            self._entries = [self._entry(self.cells[i]) for i in range(len(self.cells))]
        # pycrdt passes the transaction to callbacks that take two arguments.
        self._subscription: Any = self.cells.observe_deep(cast(Any, self._on_cells))
        self._meta_subscription = self.meta.observe_deep(self._on_meta)

    def close(self) -> None:
        if self._subscription is not None:
            self.cells.unobserve(self._subscription)
            self.meta.unobserve(self._meta_subscription)
            self._subscription = None

    @staticmethod
    def _entry(item: Any) -> CellEntry:
        ymap = without_event_streams(item) if isinstance(item, Map) else None
        return CellEntry(ymap, _read_id(ymap))

    # -- following the document ----------------------------------------------------------

    def _on_cells(self, events: list[Any], txn: Any) -> None:
        structural = [e for e in events if isinstance(e, ArrayEvent) and not cast(Any, e).path]
        for event in structural:
            self._apply_delta(cast(Any, event).delta)
        entries = self._entries
        for event in events:
            path = event.path
            if not path:
                continue
            position = path[0]
            if not isinstance(position, int) or position >= len(entries):
                continue
            entry = entries[position]
            entry.exported = entry.text = None
            keys = event.keys if isinstance(event, MapEvent) else {}  # type: ignore[attr-defined]
            if len(path) == 1 and "id" in keys:
                entry.cell_id = _read_id(entry.ymap)
                self._lookup = None
            if len(path) > 1 and path[1] in ("outputs", "execution_count"):
                self.outputs_changed.add(entry)
            elif len(path) == 1 and ("outputs" in keys or "execution_count" in keys):
                self.outputs_changed.add(entry)
        if self.listeners:
            origin = txn.origin
            for listener in list(self.listeners):
                listener(events, origin)

    def _apply_delta(self, delta: list[dict[str, Any]]) -> None:
        position = 0
        for op in delta:
            if "retain" in op:
                position += op["retain"]
            elif "delete" in op:
                gone = self._entries[position : position + op["delete"]]
                del self._entries[position : position + op["delete"]]
                self.outputs_changed.difference_update(gone)
            elif "insert" in op:
                added = [self._entry(item) for item in op["insert"]]
                self._entries[position:position] = added
                self.outputs_changed.update(e for e in added if e.ymap is not None)
                position += len(added)
        self._lookup = None

    def _on_meta(self, events: list[Any]) -> None:
        self._meta_export = None

    def refresh(self, position: int) -> None:
        """Re-read one entry (after the server replaced its id)."""
        entry = self._entries[position]
        entry.cell_id = _read_id(entry.ymap)
        entry.exported = entry.text = None
        self._lookup = None

    # -- lookups -------------------------------------------------------------------------

    def _lookups(self) -> _Lookup:
        if self._lookup is None:
            lookup = _Lookup()
            by_id, positions = lookup.by_id, lookup.positions
            for position, entry in enumerate(self._entries):
                positions[id(entry)] = position
                cell_id = entry.cell_id
                if cell_id is None or cell_id in by_id or entry.ymap is None or not CELL_ID.match(cell_id):
                    lookup.clean = False
                if cell_id is not None:
                    by_id.setdefault(cell_id, entry)
            self._lookup = lookup
        return self._lookup

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[CellEntry]:
        return iter(list(self._entries))

    def __contains__(self, cell_id: object) -> bool:
        return isinstance(cell_id, str) and cell_id in self._lookups().by_id

    def entry(self, cell_id: str) -> CellEntry | None:
        return self._lookups().by_id.get(cell_id)

    def at(self, position: int) -> CellEntry:
        return self._entries[position]

    def get(self, cell_id: str) -> Map | None:
        """The cell Map with this id (the first, should a CRDT merge have made two)."""
        entry = self._lookups().by_id.get(cell_id)
        return entry.ymap if entry is not None else None

    def position(self, cell_id: str) -> int | None:
        lookup = self._lookups()
        entry = lookup.by_id.get(cell_id)
        return None if entry is None else lookup.positions[id(entry)]

    def position_of(self, entry: CellEntry) -> int | None:
        return self._lookups().positions.get(id(entry))

    def ids(self) -> list[str | None]:
        return [entry.cell_id for entry in self._entries]

    def count(self, cell_id: str) -> int:
        return sum(1 for entry in self._entries if entry.cell_id == cell_id)

    # -- export --------------------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """The document as an nbformat v4 dict (see notebook.export_notebook for the rules).

        Cells come from the cache: treat the result as read-only."""
        cells = [entry.export() for entry in self._entries if entry.ymap is not None]
        if not self._lookups().clean:
            cells = dedupe_cells(cells, copy=True)
        return {"cells": cells, **self._meta()}

    def export_json(self) -> bytes:
        """``export()`` as compact JSON, assembled from per-cell texts."""
        entries = [entry for entry in self._entries if entry.ymap is not None]
        if self._lookups().clean:
            texts = [entry.json_text() for entry in entries]
        else:
            exported = [entry.export() for entry in entries]
            deduped = dedupe_cells(exported, copy=True)
            if len(deduped) == len(exported):
                texts = [
                    entry.json_text() if cell is original else _compact(cell)
                    for entry, cell, original in zip(entries, deduped, exported)
                ]
            else:
                texts = [_compact(cell) for cell in deduped]
        meta = _compact(self._meta())
        return ('{"cells":[' + ",".join(texts) + "]," + meta[1:]).encode("utf-8")

    async def warm(self, slice_seconds: float = SLICE_SECONDS, pause: float = 0.0) -> None:
        """Compute the exports of changed cells in slices of a few milliseconds, yielding
        to the event loop between them (for ``pause`` seconds), so that a following
        export() costs little."""
        pending = [entry for entry in self._entries if entry.exported is None or entry.text is None]
        async for entry in in_slices(pending, slice_seconds, pause):
            entry.json_text()

    def _meta(self) -> dict[str, Any]:
        if self._meta_export is None:
            raw = json.loads(str(self.meta))
            self._meta_export = canonical_meta(raw if isinstance(raw, dict) else {})
        return self._meta_export


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
