"""Fan-out: how a room's outgoing messages reach its peers.

The room encodes each message once and hands it here. The default delivers to
the peers connected to this process; a multi-daemon deployment (Redis) plugs
in a fan-out that also publishes to the other daemons.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable


class Peer(Protocol):
    """A connected client as a room sees it, whatever the transport."""

    def send(self, message: bytes) -> None:
        """Queue a message without blocking (a slow peer drops itself)."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection after what is queued (with a websocket close code)."""


@runtime_checkable
class ClosablePeer(Peer, Protocol):
    """A peer whose connection the server can end (a websocket)."""

    def close(self, code: int, reason: str) -> None:
        """Close after what is already queued; apply nothing received from now on."""


class Fanout(Protocol):
    def publish(self, room: str, message: bytes, peers: Iterable[Peer], exclude: Peer | None) -> None: ...


class LocalFanout:
    """Deliver to this process's peers only."""

    def publish(self, room: str, message: bytes, peers: Iterable[Peer], exclude: Peer | None) -> None:
        for peer in peers:
            if peer is not exclude:
                peer.send(message)
