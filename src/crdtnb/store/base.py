"""What the room layer needs from storage: one log of Yjs updates per room."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


class StoreError(Exception):
    """A storage operation failed."""


class StoreClosedError(StoreError):
    """The store is not started, or has been closed."""


class StoreUnavailable(StoreError):
    """The store cannot be reached now (a cluster's Redis is down or cut off)."""


class RenameUnsupported(StoreError):
    """This store cannot give a room another name."""


class CompactionError(StoreError):
    """A log could not be merged safely; the log was left untouched."""


@runtime_checkable
class Store(Protocol):
    """What the room layer needs from storage; one log of Yjs updates per room."""

    async def start(self) -> None:
        """Open the storage; must be awaited before any other call."""
        ...

    async def close(self) -> None:
        """Commit every append already requested, then release the storage."""
        ...

    async def append(self, room: str, updates: Sequence[bytes]) -> None:
        """Return once `updates` are durably committed, after everything appended before."""
        ...

    async def append_owned(self, room: str, updates: Sequence[bytes]) -> None:
        """Append changes only the room's owner may make (kernel outputs, file merges):
        like ``append``, but a store shared by a cluster refuses them (ownership.NotOwner)
        from a daemon that no longer owns the room."""
        ...

    async def seed(self, room: str, updates: Sequence[bytes]) -> bool:
        """Store a new room's first state (one or more updates, all or none), only if its
        log is still empty (False: someone else seeded it first, reload it)."""
        ...

    async def load(self, room: str) -> list[bytes]:
        """The room's snapshot (if any) followed by its updates, in append order."""
        ...

    async def compact(self, room: str) -> None:
        """Replace the room's log by one snapshot; updates appended meanwhile are kept."""
        ...

    def needs_compaction(self, room: str) -> bool:
        """Cheap, non-blocking: has the room's log grown past the compaction thresholds?"""
        ...

    async def log_size(self, room: str) -> tuple[int, int]:
        """(rows, bytes) of updates stored since the room's last snapshot."""
        ...

    async def get_meta(self, room: str, key: str) -> bytes | None:
        """A small per-room blob, e.g. the file's base state and hash."""
        ...

    async def set_meta(self, room: str, key: str, value: bytes) -> None:
        """Durably store a small per-room blob."""
        ...

    async def delete_room(self, room: str) -> None:
        """Forget the room: its snapshot, updates and meta."""
        ...

    async def rename_room(self, old: str, new: str) -> None:
        """Give the room ``old`` the name ``new``: its snapshot, updates and meta, in one
        step ordered after every call made before it. Whatever ``new`` had is dropped.
        Appends for the room made after this call must use ``new``. A store that cannot
        rename raises RenameUnsupported and changes nothing."""
        ...

    async def rooms(self) -> list[str]:
        """Names of the rooms that have anything stored, sorted."""
        ...
