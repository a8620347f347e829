"""Merging a room's log into one snapshot, verified before it replaces anything."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from pycrdt import Decoder, Doc, get_update, merge_updates

from .base import CompactionError


def decode_state_vector(state: bytes) -> dict[int, int]:
    """client id -> next expected clock. Compare these, not bytes: the encoding's order is free."""
    reader = Decoder(state)
    return {reader.read_var_uint(): reader.read_var_uint() for _ in range(reader.read_var_uint())}


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


def merge_log(updates: Sequence[bytes]) -> bytes:
    """One update that rebuilds the same document as applying `updates` in order.

    Builds the state in a fresh Doc (deleted content is garbage-collected, so the snapshot is
    smaller than the log) and merges back any pending parts. The result is checked by rebuilding
    from it: a merge that does not reproduce the state vector raises instead of replacing the
    history (pycrdt-store 0.1.5 replaced it with an empty document).
    """
    doc: Doc[Any] = Doc()
    for index, update in enumerate(updates):
        with _merge_step(f"update {index} of the log cannot be applied"):
            doc.apply_update(update)
    with _merge_step("cannot merge the log"):
        state = doc.get_state()
        clocks = decode_state_vector(state)
        snapshot = doc.get_update()
        pending = [rest for u in updates if (rest := _unintegrated(u, state, clocks)) is not None]
        if pending:
            snapshot = merge_updates(snapshot, *pending)
        check: Doc[Any] = Doc()
        check.apply_update(snapshot)
        rebuilt = decode_state_vector(check.get_state())
    if rebuilt != clocks:
        raise CompactionError("the merged snapshot does not rebuild the logged state")
    return snapshot
