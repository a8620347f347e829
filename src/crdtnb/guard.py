"""The schema guard: what a peer may write into a notebook document.

A peer's update is applied, then checked; what it broke is repaired at once, in one
server transaction that the room stores and relays *together with* the update (merged
into one), so no client, the file, REST or JupyterLab's model ever sees a broken
notebook. The rules (docs/schema.md):

- every cell is a Map with a valid, unique ``id``, a known ``cell_type``, a Text
  ``source`` and a Map ``metadata``; code cells have an Array of outputs;
- ``meta`` keeps ``nbformat`` 4, ``nbformat_minor`` >= 5 and a Map ``metadata``;
- only the kernel agent writes outputs, ``execution_count``, ``execution_state`` and
  the server's keys of ``state``. Peers may clear outputs and execution counts (delete
  outputs, set the count to null), and may move, cut/paste within the notebook or undo
  the deletion of a cell with its outputs: a cell that arrives with outputs keeps them
  only if each output is one this room already had (the ``OutputLedger``);
- of two cells with one id (two clients moved the same cell at once), the later copy
  goes if it holds the same content, or gets a fresh id if it differs.

Checks read the change events of the peer's transaction (inside the commit, where they
are valid), so their cost is that of the change, not of the notebook.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from pycrdt import Array, ArrayEvent, Doc, Map, MapEvent, Text

from .notebook import CELL_ID, CELL_TYPES, MIN_NBFORMAT_MINOR, OUTPUT_TYPES, canonical_output, fresh_id
from .origins import REPAIR
from .schema import EXECUTION_STATE, SERVER_STATE_KEYS, CellEntry, CellIndex, meta_of, state_of
from .slices import SLICE_SECONDS, in_slices

logger = logging.getLogger("crdtnb.guard")
T = TypeVar("T")

EXECUTION_STATES = ("idle", "running")
_SCALARS = (str, int, float, bool, type(None))


def _drain(items: list[T]) -> Iterator[T]:
    """The items of a list, taken from its end one at a time (others may be added meanwhile)."""
    while items:
        yield items.pop()


def _fingerprint(output: dict[str, Any]) -> bytes:
    text = json.dumps(canonical_output(output), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class OutputLedger:
    """Fingerprints of the outputs (and execution counts) this room held legitimately:
    loaded from the file or the log, or written by the kernel agent."""

    def __init__(self) -> None:
        self._outputs: set[bytes] = set()
        self._counts: set[int] = set()
        # Exported cells (read-only snapshots) whose outputs are not fingerprinted yet.
        self._later: list[dict[str, Any]] = []

    def record(self, cell: dict[str, Any]) -> None:
        for output in cell.get("outputs") or ():
            self._outputs.add(_fingerprint(output))
        count = cell.get("execution_count")
        if type(count) is int:
            self._counts.add(count)

    def record_later(self, cells: list[dict[str, Any]]) -> None:
        """Cells a room loaded with: fingerprinting their outputs takes as long as
        encoding them, so it is done after the room opens (``catch_up``), or at the
        latest when first needed."""
        self._later.extend(cells)

    async def catch_up(self, slice_seconds: float = SLICE_SECONDS, pause: float = 0.0) -> None:
        """Fingerprint what ``record_later`` left, yielding to the event loop every
        few milliseconds (for ``pause`` seconds)."""
        async for cell in in_slices(_drain(self._later), slice_seconds, pause):
            self.record(cell)

    def _caught_up(self) -> None:
        while self._later:
            self.record(self._later.pop())

    def knows(self, outputs: list[Any], count: Any) -> bool:
        self._caught_up()
        if any(not isinstance(o, dict) or _fingerprint(o) not in self._outputs for o in outputs):
            return False
        return count is None or (type(count) is int and count in self._counts)

    def __len__(self) -> int:
        self._caught_up()
        return len(self._outputs)


@dataclass(eq=False)
class _CellFindings:
    entry: CellEntry
    inserted: bool = False
    loading: bool = False  # checked at load: a cell "running" may run on another daemon
    old: dict[str, Any] = field(default_factory=dict)  # changed keys -> old scalar (or a type)
    new_outputs: set[int] = field(default_factory=set)  # positions of outputs the peer added
    tampered_outputs: set[int] = field(default_factory=set)  # outputs the peer changed inside


class SchemaGuard:
    """Checks the transactions of peers on one document and repairs what they broke."""

    def __init__(self, doc: Doc, index: CellIndex, is_peer: Callable[[Any], bool]) -> None:
        self.doc = doc
        self.index = index
        self.is_peer = is_peer
        self.ledger = OutputLedger()
        # Cells the kernel agent has queued or runs: "running" is true for them.
        self.running: set[str] = set()
        self._cells: dict[int, _CellFindings] = {}
        self._structure = False
        self._meta: dict[str, Any] = {}
        self._state: dict[str, tuple[bool, Any]] = {}
        self.repairs = 0  # how many peer transactions needed a repair (for metrics)
        self._deleted: list[int] = []  # positions (the index's) deleted by this repair
        # At load: whether each cell's raw outputs and count may stay (see _kept_at_load).
        self._loaded: dict[int, bool] = {}
        index.listeners.append(self._on_cells)
        # The wrappers that subscribed must be the ones that unsubscribe.
        self._meta_map, self._state_map = meta_of(doc), state_of(doc)
        # pycrdt passes the transaction to callbacks that take two arguments.
        self._meta_subscription = self._meta_map.observe(cast(Any, self._on_meta))
        self._state_subscription = self._state_map.observe(cast(Any, self._on_state))

    def close(self) -> None:
        if self._on_cells in self.index.listeners:
            self.index.listeners.remove(self._on_cells)
            self._meta_map.unobserve(self._meta_subscription)
            self._state_map.unobserve(self._state_subscription)

    @property
    def pending(self) -> bool:
        return bool(self._cells or self._meta or self._state or self._structure)

    # -- the ledger -----------------------------------------------------------------------

    def learn_outputs(self, loading: bool = False) -> None:
        """Record the outputs the server changed since last time, once they are final
        (a running cell's outputs still grow: they are recorded when it ends; at load
        nothing runs, whatever the cells say)."""
        changed = self.index.outputs_changed
        if not changed:
            return
        for entry in list(changed):
            ymap = entry.ymap
            if ymap is None:
                changed.discard(entry)
                continue
            if not loading and (entry.cell_id in self.running or ymap.get(EXECUTION_STATE) == "running"):
                continue
            self.ledger.record(entry.export())
            changed.discard(entry)

    def check_document(self) -> bool:
        """At load, before the room is shared: learn the outputs it holds, then check
        every cell and the meta (a log written before these rules, or by another tool,
        may hold anything). Returns whether something had to be repaired.

        Each cell is read once: its export is cached (the first export, the ledger and
        the file's comparison need it) and its raw outputs are checked here, since every
        valid output a room loads with is one the ledger knows. The ledger fingerprints
        them later (``OutputLedger.record_later``)."""
        exports = []
        for entry in self.index:
            raw = entry.export_raw()
            exports.append(entry.export())
            self._loaded[id(entry)] = _kept_at_load(raw)
        self.ledger.record_later(exports)
        self.index.outputs_changed.clear()
        for entry in self.index:
            found = self._findings(entry)
            found.inserted = found.loading = True
        self._structure = True
        self._meta = {"nbformat": None, "nbformat_minor": None, "metadata": None}
        try:
            return self.repair()
        finally:
            self._loaded.clear()

    # -- reading a peer's transaction (inside its commit: read only) ---------------------

    def _findings(self, entry: CellEntry) -> _CellFindings:
        found = self._cells.get(id(entry))
        if found is None:
            found = self._cells[id(entry)] = _CellFindings(entry)
        return found

    def _on_cells(self, events: list[Any], origin: Any) -> None:
        if not self.is_peer(origin):
            return
        index = self.index
        for event in events:
            path = event.path
            if not path:
                if isinstance(event, ArrayEvent):
                    self._structure = True
                    position = 0
                    for op in _delta(event):
                        if "retain" in op:
                            position += op["retain"]
                        elif "insert" in op:
                            for _ in op["insert"]:
                                self._findings(index.at(position)).inserted = True
                                position += 1
                continue
            position = path[0]
            if not isinstance(position, int) or position >= len(index):
                continue
            if len(path) >= 2 and path[1] != "outputs":
                continue  # typing in a source, editing metadata: nothing to check
            found = self._findings(index.at(position))
            if len(path) == 1 and isinstance(event, MapEvent):
                for key, change in _keys(event).items():
                    found.old.setdefault(key, change.get("oldValue"))
            else:
                if len(path) == 2 and isinstance(event, ArrayEvent):
                    spot = 0
                    for op in _delta(event):
                        if "retain" in op:
                            spot += op["retain"]
                        elif "insert" in op:
                            for _ in op["insert"]:
                                found.new_outputs.add(spot)
                                spot += 1
                elif len(path) >= 3 and isinstance(path[2], int):
                    found.tampered_outputs.add(path[2])

    def _on_meta(self, event: Any, txn: Any) -> None:
        if self.is_peer(txn.origin) and isinstance(event, MapEvent):
            for key, change in _keys(event).items():
                self._meta.setdefault(key, change.get("oldValue"))

    def _on_state(self, event: Any, txn: Any) -> None:
        if self.is_peer(txn.origin) and isinstance(event, MapEvent):
            for key, change in _keys(event).items():
                if key in SERVER_STATE_KEYS:
                    self._state.setdefault(key, (change.get("action") == "add", change.get("oldValue")))

    # -- repairing --------------------------------------------------------------------------

    def repair(self) -> bool:
        """Fix what the peer's transaction broke, in one server transaction. Returns
        whether anything had to change."""
        if not self.pending:
            return False
        cells, self._cells = list(self._cells.values()), {}
        meta, self._meta = self._meta, {}
        state, self._state = self._state, {}
        structure, self._structure = self._structure, False
        before = self.doc.get_state()
        self._deleted = []
        with self.doc.transaction(origin=REPAIR):
            for found in cells:
                self._repair_cell(found)
            if structure:
                self._resolve_duplicates(cells)
            self._repair_meta(meta)
            self._repair_state(state)
        changed = self.doc.get_state() != before
        if changed:
            self.repairs += 1
        return changed

    def _repair_cell(self, found: _CellFindings) -> None:
        entry = found.entry
        position = self.index.position_of(entry)
        if position is None:
            return  # deleted meanwhile
        if entry.ymap is None:
            logger.warning("a peer inserted a cell that is not a Map: removed")
            self._delete(position)
            return
        ymap = _CellView(entry.ymap)
        old = found.old
        inserted = found.inserted
        # Identity and type.
        cell_id = ymap.get("id")
        if "id" in old and not inserted:
            previous = old["id"]
            ymap["id"] = previous if isinstance(previous, str) and CELL_ID.match(previous) else self._new_id()
            self.index.refresh(position)
        elif not isinstance(cell_id, str) or not CELL_ID.match(cell_id):
            ymap["id"] = self._new_id()
            self.index.refresh(position)
        cell_type = ymap.get("cell_type")
        if cell_type not in CELL_TYPES:
            previous = old.get("cell_type")
            cell_type = previous if previous in CELL_TYPES and not inserted else "raw"
            ymap["cell_type"] = cell_type
        retyped = inserted or "cell_type" in old
        # Content keys a peer may write, but only with the right types.
        source = ymap.get("source")
        if not isinstance(source, Text):
            ymap["source"] = Text(source if isinstance(source, str) else "")
        metadata = ymap.get("metadata")
        if not isinstance(metadata, Map):
            ymap["metadata"] = Map(metadata if _is_json_object(metadata) else {})
        if "attachments" in ymap and not _is_json_object(ymap.get("attachments")):
            del ymap["attachments"]
        if cell_type == "code":
            self._repair_code_cell(ymap, found, retyped)
        elif retyped:
            for key in ("outputs", "execution_count", EXECUTION_STATE):
                if key in ymap:
                    del ymap[key]

    def _repair_code_cell(self, ymap: _CellView, found: _CellFindings, retyped: bool) -> None:
        old = found.old
        outputs = ymap.get("outputs")
        count = ymap.get("execution_count")
        if found.inserted or ("outputs" in old and not isinstance(outputs, Array)):
            # A cell arriving whole (moved, pasted, undone) keeps only outputs we know.
            if found.loading:
                known = isinstance(outputs, Array) and self._loaded.get(id(found.entry), False)
            else:
                plain = _plain_outputs(outputs)
                known = plain is not None and self.ledger.knows(plain, _count(count))
            if not known:
                if not isinstance(outputs, Array) or len(outputs):
                    ymap["outputs"] = Array()
                ymap["execution_count"] = None
        elif "outputs" in old:
            # The Array itself was replaced: only by an empty one (a clear).
            if not isinstance(outputs, Array) or len(outputs):
                ymap["outputs"] = Array()
        elif not isinstance(outputs, Array):
            ymap["outputs"] = Array()
        else:
            doomed = found.new_outputs | found.tampered_outputs
            for spot in sorted(doomed, reverse=True):
                if spot < len(outputs):
                    del outputs[spot]
        if "execution_count" in old and not found.inserted:
            value = count
            if value is not None:  # peers may only clear it
                previous = old["execution_count"]
                ymap["execution_count"] = previous if previous is None or type(previous) in (int, float) else None
        elif "execution_count" not in ymap or not _is_count(ymap.get("execution_count")):
            ymap["execution_count"] = None
        state = ymap.get(EXECUTION_STATE)
        running = ymap.get("id") in self.running
        if EXECUTION_STATE in old and not found.inserted:
            previous = old[EXECUTION_STATE]
            ymap[EXECUTION_STATE] = previous if previous in EXECUTION_STATES else "idle"
        elif found.loading:
            # Only the owner knows whether a "running" cell still runs (kernel/extension.py).
            if state not in EXECUTION_STATES:
                ymap[EXECUTION_STATE] = "idle"
        elif retyped or state not in EXECUTION_STATES or (state == "running" and not running):
            if state != "idle" and not running:
                ymap[EXECUTION_STATE] = "idle"

    def _delete(self, position: int) -> None:
        """Delete the cell at ``position`` as the index knows it: the index only follows
        the Array when the repair commits, so earlier deletions of this repair shift it."""
        bisect.insort(self._deleted, position)
        del self.index.cells[position - bisect.bisect_left(self._deleted, position)]

    def _new_id(self) -> str:
        return fresh_id({i for i in self.index.ids() if i is not None})

    def _resolve_duplicates(self, cells: list[_CellFindings]) -> None:
        """A cell the peer inserted whose id another cell has: the same content goes,
        different content gets a new id."""
        by_id: dict[str, list[CellEntry]] = {}  # once, not per cell: a load checks them all
        for entry in self.index:
            if entry.cell_id is not None:
                by_id.setdefault(entry.cell_id, []).append(entry)
        for found in cells:
            if not found.inserted:
                continue
            entry = found.entry
            position = self.index.position_of(entry)
            if position is None or entry.cell_id is None or len(by_id.get(entry.cell_id, ())) < 2:
                continue
            same = by_id[entry.cell_id]
            others = [e for e in same if e is not entry]
            mine = _content(entry.export())
            same.remove(entry)
            if any(_content(other.export()) == mine for other in others):
                logger.info("removed a duplicate of cell %s (two concurrent moves)", entry.cell_id)
                self._delete(position)
            else:
                assert entry.ymap is not None
                entry.ymap["id"] = self._new_id()
                self.index.refresh(position)

    def _repair_meta(self, old: dict[str, Any]) -> None:
        if not old:
            return
        meta = meta_of(self.doc)
        if "nbformat" in old and _count(meta.get("nbformat")) != 4:
            meta["nbformat"] = 4
        if "nbformat_minor" in old:
            minor = _count(meta.get("nbformat_minor"))
            if not _is_count(minor) or minor is None or minor < MIN_NBFORMAT_MINOR:
                previous = _count(old["nbformat_minor"])
                ok = _is_count(previous) and previous is not None and previous >= MIN_NBFORMAT_MINOR
                meta["nbformat_minor"] = previous if ok else MIN_NBFORMAT_MINOR
        if "metadata" in old:
            metadata = meta.get("metadata")
            if not isinstance(metadata, Map):
                meta["metadata"] = Map(metadata if _is_json_object(metadata) else {})

    def _repair_state(self, old: dict[str, tuple[bool, Any]]) -> None:
        state = state_of(self.doc)
        for key, (added, previous) in old.items():
            # Plain JSON goes back as it was (input_request is an object); shared types cannot.
            if added or not isinstance(previous, (*_SCALARS, dict, list)):
                if key in state:
                    del state[key]
            elif state.get(key) != previous:
                state[key] = previous


def _kept_at_load(raw: dict[str, Any]) -> bool:
    """Whether a cell the room loads with keeps its outputs and count: what
    ``OutputLedger.knows`` says of them once the ledger has recorded the loaded cells
    (every output that is an output, and a count that is a count, is known)."""
    outputs = raw.get("outputs")
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and o.get("output_type") in OUTPUT_TYPES for o in outputs):
        return False
    count = _count(raw.get("execution_count"))
    return count is None or (type(count) is int and count >= 0)


class _CellView:
    """A cell's Map during a repair: its keys read once, each value at most once (every
    pycrdt call costs microseconds of its own, and a load checks every cell)."""

    __slots__ = ("ymap", "_keys", "_values")

    def __init__(self, ymap: Map) -> None:
        self.ymap = ymap
        self._keys = set(ymap.keys())
        self._values: dict[str, Any] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def get(self, key: str) -> Any:
        if key not in self._keys:
            return None
        if key not in self._values:
            self._values[key] = self.ymap[key]
        return self._values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.ymap[key] = value
        self._keys.add(key)
        self._values.pop(key, None)  # a shared type is read back integrated

    def __delitem__(self, key: str) -> None:
        del self.ymap[key]
        self._keys.discard(key)
        self._values.pop(key, None)


def _plain_outputs(outputs: Any) -> list[Any] | None:
    if not isinstance(outputs, Array):
        return None
    plain = json.loads(str(outputs))
    if not isinstance(plain, list) or not all(
        isinstance(o, dict) and o.get("output_type") in OUTPUT_TYPES for o in plain
    ):
        return None
    return plain


def _delta(event: Any) -> list[dict[str, Any]]:
    return cast(list[dict[str, Any]], event.delta)


def _keys(event: Any) -> dict[str, dict[str, Any]]:
    return cast(dict[str, dict[str, Any]], event.keys)


def _count(value: Any) -> Any:
    if type(value) is float and value.is_integer():
        return int(value)
    return value


def _is_count(value: Any) -> bool:
    value = _count(value)
    return value is None or (type(value) is int and value >= 0)


def _is_json_object(value: Any) -> bool:
    return isinstance(value, dict)


def _content(cell: dict[str, Any]) -> tuple[Any, Any]:
    return cell.get("cell_type"), cell.get("source")
