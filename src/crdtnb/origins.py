"""Who made a change: the typed origin of every transaction on a room's document.

- ``PeerOrigin``: a connected client (its update is checked against the schema, stored,
  and relayed to every other peer);
- ``ServerOrigin``: the daemon itself (kernel outputs, file merges, schema repairs):
  stored and relayed to every peer;
- ``RemoteOrigin``: another daemon of the cluster, whose change is already stored:
  relayed to this daemon's peers, neither stored again nor published again.

A transaction without an origin counts as the server's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, eq=False)
class PeerOrigin:
    """A client connection; compared by identity (one per connection)."""

    peer: Any
    user: Any = None


@dataclass(frozen=True, eq=False)
class ServerOrigin:
    """The daemon; ``what`` says which part of it (for logs and hooks)."""

    what: str


@dataclass(frozen=True, eq=False)
class RemoteOrigin:
    """Another daemon of the cluster."""

    node: str


Origin = PeerOrigin | ServerOrigin | RemoteOrigin

KERNEL = ServerOrigin("kernel")
FILE = ServerOrigin("file")
REPAIR = ServerOrigin("schema repair")
SERVER = ServerOrigin("server")
SERVER_ORIGINS = (KERNEL, FILE, REPAIR, SERVER)
# Changes only the room's owner makes: in a cluster, stored only while it holds the lease.
# (Repairs are not among them: they answer a peer's update, wherever it arrived.)
OWNER_WORK = (KERNEL, FILE)
