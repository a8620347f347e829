"""Who owns a room: the one daemon that runs its kernel, saves its file, compacts its log
and writes anything else a peer did not ask for.

On a single daemon it always owns the rooms it has open (``LocalOwnership``). In a cluster
(cluster/), ownership is a lease in Redis with a fencing token: a daemon that lost it
cannot write as the owner any more, and is told (``on_room_disowned``)."""

from __future__ import annotations

import socket
from typing import Protocol


class NotOwner(RuntimeError):
    """This daemon does not (or no longer) own the room."""


class Ownership(Protocol):
    node: str  # this daemon's id

    async def claim(self, room: str) -> bool:
        """Try to become the room's owner; whether this daemon owns it now."""
        ...

    def owns(self, room: str) -> bool:
        """Whether this daemon owns the room now (cheap, no I/O)."""
        ...

    async def release(self, room: str) -> None:
        """Give the room up (unloading it, or shutting down)."""
        ...


class LocalOwnership:
    """A single daemon owns every room it has open."""

    def __init__(self, node: str | None = None) -> None:
        self.node = node or socket.gethostname()
        self._owned: set[str] = set()

    async def claim(self, room: str) -> bool:
        self._owned.add(room)
        return True

    def owns(self, room: str) -> bool:
        return room in self._owned

    async def release(self, room: str) -> None:
        self._owned.discard(room)
