"""Merging a room's log into one snapshot, verified before it replaces anything."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from pycrdt import Decoder, Doc, get_update, merge_updates

from ..pieces import PIECE_BYTES, decode_state_vector, pack, unpack
from .base import CompactionError

__all__ = ["decode_state_vector", "merge_log", "merge_pieces"]


def _unintegrated(update: bytes, state: bytes, clocks: dict[int, int]) -> bytes | None:
    """The part of `update` a doc with `state` holds only as pending, or None.

    Yrs keeps updates whose dependencies are missing aside as "pending" and leaves them out of
    Doc.get_update(); a snapshot built from get_update() alone would silently drop them.
    """
    rest = get_update(update, state)  # v1: structs section, then delete set
    reader = Decoder(rest)
    if reader.read_var_uint():  # structs the doc could not integrate
        return rest
    for _ in range(reader.read_var_uint()):
        client = reader.read_var_uint()
        for _ in range(reader.read_var_uint()):
            clock, length = reader.read_var_uint(), reader.read_var_uint()
            if clock + length > clocks.get(client, 0):  # deletes items the doc has not seen yet
                return rest
    return None


@contextlib.contextmanager
def _merge_step(what: str) -> Iterator[None]:
    """Any failure while merging becomes a CompactionError, and the log stays as it is."""
    try:
        yield
    # BaseException: pyo3 turns Rust panics into PanicException, which derives from it
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit, CompactionError)):
            raise
        raise CompactionError(f"{what}: {exc!r}") from exc


def merge_log(updates: Sequence[bytes], piece_bytes: int | None = None) -> bytes:
    """``merge_pieces`` as one blob (pieces.pack)."""
    return pack(merge_pieces(updates, piece_bytes))


def merge_pieces(updates: Sequence[bytes], piece_bytes: int | None = None) -> list[bytes]:
    """A snapshot that rebuilds the same document as applying `updates` in order: one
    update, or several for a big document, each of about
    `piece_bytes` (PIECE_BYTES; a snapshot of a 50 MB notebook applied in one call would hold the GIL
    for 70 ms when the room next loads). `updates` may hold such blobs.

    Deleted content is garbage-collected, so the snapshot is smaller than the log. The
    pieces come from a second document that gets the final delete set first and then the
    log, a part at a time: what each part adds, less what is deleted by the end. Pending
    parts of the log (their dependencies missing) are merged back in. The result is checked
    by rebuilding from it: a merge that does not reproduce the state vector raises instead
    of replacing the history (pycrdt-store 0.1.5 replaced it with an empty document).
    """
    updates = [piece for blob in updates for piece in unpack(blob)]
    final: Doc[Any] = Doc()
    for index, update in enumerate(updates):
        with _merge_step(f"update {index} of the log cannot be applied"):
            final.apply_update(update)
    with _merge_step("cannot merge the log"):
        state = final.get_state()
        clocks = decode_state_vector(state)
        pieces = _in_pieces(updates, final.get_update(state), piece_bytes or PIECE_BYTES)
        pending = [rest for u in updates if (rest := _unintegrated(u, state, clocks)) is not None]
        if pending:
            pieces[-1] = merge_updates(pieces[-1], *pending)
        check: Doc[Any] = Doc()
        for piece in pieces:
            check.apply_update(piece)
        rebuilt = decode_state_vector(check.get_state())
    if rebuilt != clocks:
        raise CompactionError("the merged snapshot does not rebuild the logged state")
    return pieces


def _in_pieces(updates: list[bytes], deletions: bytes, piece_bytes: int) -> list[bytes]:
    """The document of `updates` as updates that each add what about `piece_bytes` of the
    log adds (`deletions`: the final delete set, so that deleted content is left out)."""
    doc: Doc[Any] = Doc()
    doc.apply_update(deletions)  # kept aside until the items it deletes arrive
    since = doc.get_state()
    pieces: list[bytes] = []
    group: list[bytes] = []
    size = 0
    for update in updates:
        group.append(update)
        size += len(update)
        if len(group) >= APPLY_GROUP:
            _apply_group(doc, group)
            group = []
        if size >= piece_bytes:
            _apply_group(doc, group)
            pieces.append(doc.get_update(since))
            since = doc.get_state()
            group, size = [], 0
    _apply_group(doc, group)
    if size or not pieces:
        pieces.append(doc.get_update(since))
    return pieces


# Small updates are applied this many at a time: each call also retries the pending
# delete set, so one call per update costs more in all; but merging many in one call
# grows faster than linearly and holds the GIL throughout (6000 one-key updates: one
# call of 165 ms; groups of 64: 8 ms in all, no call over 0.2 ms).
APPLY_GROUP = 64


def _apply_group(doc: Doc[Any], group: list[bytes]) -> None:
    if len(group) > 1:
        doc.apply_update(merge_updates(*group))
    elif group:
        doc.apply_update(group[0])
