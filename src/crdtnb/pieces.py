"""A document's state as several Yjs updates of bounded size, instead of one.

pycrdt holds the GIL for the whole of each call, and every room shares one event loop:
one ``apply_update`` of a 50 MB update, or one ``get_update`` of a 50 MB document, stops
every other room for that long (70-120 ms), wherever it runs. Big documents are
therefore built, stored, sent and compacted as several updates, each applied or encoded
by its own short call:

- ``diff_in_pieces(doc, state)``: what a peer with ``state`` lacks, one piece per client
  with a sizeable share of the document (the clients with a little each share one).
  pycrdt can only encode a client's items from a clock on, so a piece is as big as what
  one client wrote; a notebook loaded from a file is written by one client per slice of
  cells (notebook.notebook_pieces), so its pieces stay small.
- ``pack``/``unpack``: several updates in one blob (a compacted snapshot, a file base),
  told apart from a plain update by a prefix no update can start with.
- ``UpdateWriter``: the update of what one client writes into an empty document, written
  directly in Yjs's format (docs/protocol.md points to it) rather than item by item
  through pycrdt's Python layer, which costs several times more (a notebook loaded from
  a file, notebook.notebook_pieces).

Depends only on pycrdt.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

from pycrdt import Decoder, Doc

__all__ = [
    "PIECE_BYTES",
    "ROW_BYTES",
    "UpdateWriter",
    "decode_state_vector",
    "diff_in_pieces",
    "diff_plan",
    "from_rows",
    "pack",
    "to_rows",
    "unpack",
]

# What one piece should hold, about (a pycrdt call on it takes a few milliseconds).
PIECE_BYTES = 1 << 20

# A client with fewer clocks than this (characters typed, entries set) shares a piece
# with the other small ones; one with more gets a piece of its own.
SMALL_CLIENT_CLOCKS = 4096

# What one stored row holds at most: a piece is stored as rows of this size. A store
# commits a big write on its own (an append of another room waits for it), and a
# megabyte took SQLite 4-13 ms to write while the loop ran beside it.
ROW_BYTES = 64 << 10

# A v1 update starts with its number of clients as a varint: these say 2**32 - 1,
# which no real update has (each client takes bytes of its own).
_PACKED = b"\xff\xff\xff\xff\x0fcrdtnb-pieces\x00"
_MORE = b"\xff\xff\xff\xff\x0fcrdtnb-more\x00"  # a row that goes on the row before it


def decode_state_vector(state: bytes) -> dict[int, int]:
    """client id -> next expected clock. Compare these, not bytes: the encoding's order is free."""
    reader = Decoder(state)
    return {reader.read_var_uint(): reader.read_var_uint() for _ in range(reader.read_var_uint())}


def _var_uint(value: int) -> bytes:
    out = bytearray()
    _write_var_uint(out, value)
    return bytes(out)


def _write_var_uint(out: bytearray, value: int) -> None:
    if value < 0x80:
        out.append(value)
        return
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)


def _write_string(out: bytearray, text: str) -> None:
    data = text.encode("utf-8")
    _write_var_uint(out, len(data))
    out += data


def diff_plan(doc: Doc, state: bytes | None = None) -> list[bytes | None]:
    """The state vectors to encode ``doc`` against, one pycrdt call each, for the pieces
    of ``diff_in_pieces`` (ValueError if ``state`` is not a state vector)."""
    ours = decode_state_vector(doc.get_state())
    try:
        theirs = decode_state_vector(state) if state else {}
    except Exception as exc:
        raise ValueError(f"not a state vector: {exc}") from exc
    lacking = {client: theirs.get(client, 0) for client, clock in ours.items() if clock > theirs.get(client, 0)}
    big = sorted(client for client, since in lacking.items() if ours[client] - since >= SMALL_CLIENT_CLOCKS)
    small = [client for client in lacking if client not in big]
    groups = [[client] for client in big] + ([small] if small else [])
    if len(groups) <= 1:
        return [state]
    # Everyone else "has everything": a piece holds its group's items only. Each client's
    # entry is encoded once (a file's document has a client per slice of cells, and as
    # many pieces: encoding every vector whole took milliseconds on the loop).
    has_all = {client: _var_uint(client) + _var_uint(clock) for client, clock in ours.items()}
    has_since = {client: _var_uint(client) + _var_uint(since) for client, since in lacking.items()}
    count = _var_uint(len(ours))
    plan: list[bytes | None] = []
    for group in groups:
        members = set(group)
        plan.append(count + b"".join(has_since[c] if c in members else entry for c, entry in has_all.items()))
    return plan


def diff_in_pieces(doc: Doc, state: bytes | None = None) -> list[bytes]:
    """What a peer whose state vector is ``state`` (None: nothing) lacks, as updates that
    together equal ``doc.get_update(state)``. Each piece holds the items of one client
    (or of every small client) and the whole delete set; applied in any order they give
    the same document. The biggest clients come first, in the order of their ids (the
    slices of a loaded file), the small ones (later edits) last."""
    return [doc.get_update(vector) if vector else doc.get_update() for vector in diff_plan(doc, state)]


def pack(pieces: Sequence[bytes]) -> bytes:
    """Several updates as one blob (one update stays as it is)."""
    if len(pieces) == 1:
        return bytes(pieces[0])
    return _PACKED + b"".join(_var_uint(len(piece)) + bytes(piece) for piece in pieces)


def to_rows(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """``pieces`` as rows of at most ROW_BYTES (and a marker) for a store to write one
    at a time; ``from_rows`` gives the pieces back. Made one at a time, as they are
    written: copying 50 MB into rows at once held the loop for 30-40 ms."""
    for piece in pieces:
        view = memoryview(piece)
        yield bytes(view[:ROW_BYTES])
        for start in range(ROW_BYTES, len(view), ROW_BYTES):
            yield _MORE + view[start : start + ROW_BYTES]


def from_rows(rows: Sequence[bytes]) -> list[bytes]:
    """The pieces ``to_rows`` stored (rows stored otherwise: each is a piece)."""
    grouped: list[list[bytes | memoryview]] = []
    for row in rows:
        if row.startswith(_MORE) and grouped:
            grouped[-1].append(memoryview(row)[len(_MORE) :])
        else:
            grouped.append([row])
    return [bytes(group[0]) if len(group) == 1 else b"".join(group) for group in grouped]


def unpack(blob: bytes) -> list[bytes]:
    """The updates of a blob made by ``pack`` (a plain update: itself)."""
    if not blob.startswith(_PACKED):
        return [blob]
    # pycrdt's Decoder reads length-prefixed messages; over a memoryview, nothing is copied
    # but the pieces themselves.
    reader = Decoder(cast(bytes, memoryview(blob)[len(_PACKED) :]))
    pieces = []
    while reader.length > 0:
        piece = reader.read_message()
        if piece is None or reader.length < 0:
            raise ValueError("a packed update is cut short")
        pieces.append(bytes(piece))
    return pieces


# --------------------------------------------------------------------------- writing updates

_DOUBLE = struct.Struct(">d").pack
_INT64 = struct.Struct(">q").pack
_SAFE_INTEGER = 2**53  # beyond it pycrdt keeps an int as a 64-bit integer, not a double

# lib0's tags for the values of ContentAny
_ANY_OBJECT, _ANY_ARRAY, _ANY_STRING, _ANY_FALSE, _ANY_TRUE = 118, 117, 119, 121, 120
_ANY_BIGINT, _ANY_DOUBLE, _ANY_NULL = 122, 123, 126
# Item content kinds (the low five bits of an item's info byte) and type kinds
_CONTENT_STRING, _CONTENT_TYPE, _CONTENT_ANY = 4, 7, 8
_HAS_ORIGIN, _HAS_PARENT_SUB = 0x80, 0x20


def _write_any(out: bytearray, value: Any) -> None:
    """A JSON value as lib0 writes it (numbers as pycrdt stores them: doubles, and 64-bit
    integers beyond 2**53)."""
    if isinstance(value, str):
        out.append(_ANY_STRING)
        _write_string(out, value)
    elif value is None:
        out.append(_ANY_NULL)
    elif value is True:
        out.append(_ANY_TRUE)
    elif value is False:
        out.append(_ANY_FALSE)
    elif isinstance(value, int) and not -_SAFE_INTEGER <= value <= _SAFE_INTEGER and -(2**63) <= value < 2**63:
        out.append(_ANY_BIGINT)
        out += _INT64(value)
    elif isinstance(value, (int, float)):
        out.append(_ANY_DOUBLE)
        out += _DOUBLE(float(value))
    elif isinstance(value, dict):
        out.append(_ANY_OBJECT)
        _write_var_uint(out, len(value))
        for key, item in value.items():
            _write_string(out, key if isinstance(key, str) else str(key))
            _write_any(out, item)
    elif isinstance(value, (list, tuple)):
        out.append(_ANY_ARRAY)
        _write_var_uint(out, len(value))
        for item in value:
            _write_any(out, item)
    else:
        raise TypeError(f"{type(value).__name__} is not a JSON value")


def _utf16_length(text: str) -> int:
    # Yjs counts a string's clocks in UTF-16 code units.
    return len(text) if text.isascii() else len(text.encode("utf-16-le", "surrogatepass")) // 2


Parent = str | int  # a root type's name, or the clock of this writer's item holding the type


class UpdateWriter:
    """The update (Yjs v1) of what one client writes, in order, into an empty document:
    shared types (Array 0, Map 1, Text 2), JSON values and strings; no deletions. The
    same items pycrdt would make; applied by one short pycrdt call."""

    ARRAY, MAP, TEXT = 0, 1, 2

    def __init__(self, client: int) -> None:
        self.client = client
        self.clock = 0  # the next item's clock
        self.items = 0
        self._out = bytearray()
        self._client = _var_uint(client)  # in every reference to an item of ours

    def _item(self, content: int, parent: Parent, key: str | None = None, after: int | None = None) -> None:
        out = self._out
        if after is not None:  # an Array item after another: its left origin says where
            out.append(content | _HAS_ORIGIN)
            out += self._client
            _write_var_uint(out, after)
        else:
            out.append(content | (_HAS_PARENT_SUB if key is not None else 0))
            if isinstance(parent, str):
                out.append(1)
                _write_string(out, parent)
            else:
                out.append(0)
                out += self._client
                _write_var_uint(out, parent)
            if key is not None:
                _write_string(out, key)
        self.items += 1

    def set(self, parent: Parent, key: str, value: Any) -> None:
        """``parent[key] = value`` for a Map and a JSON value."""
        self._item(_CONTENT_ANY, parent, key)
        self._out.append(1)
        _write_any(self._out, value)
        self.clock += 1

    def set_type(self, parent: Parent, key: str, kind: int) -> int:
        """``parent[key] = <an empty shared type>`` for a Map: the new type's clock."""
        self._item(_CONTENT_TYPE, parent, key)
        self._out.append(kind)
        self.clock += 1
        return self.clock - 1

    def append_type(self, parent: Parent, after: int | None, kind: int) -> int:
        """An empty shared type appended to the Array ``parent``, whose last item so far
        (this writer's) is ``after`` (None: the first): the new type's clock."""
        self._item(_CONTENT_TYPE, parent, after=after)
        self._out.append(kind)
        self.clock += 1
        return self.clock - 1

    def insert_text(self, parent: int, text: str) -> None:
        """The content of a new, empty Text."""
        if text:
            self._item(_CONTENT_STRING, parent)
            _write_string(self._out, text)
            self.clock += _utf16_length(text)

    def update(self) -> bytes:
        head = bytearray()
        for number in (1, self.items, self.client, 0):  # one client, its items from clock 0
            _write_var_uint(head, number)
        return bytes(head + self._out) + b"\x00"  # no deletions
