"""One shared notebook: its server-held document, its peers, and its ordered
persist-then-relay pipeline.

Every change to the document, whoever made it (a client, the file merger, the
kernel agent), is captured by one document observer and goes through the same
pipeline: appended to the room's durable log, then relayed to every peer but the
one it came from, encoded once for all of them. A peer's update is first checked
by the schema guard (guard.py); a repair it needs is relayed merged with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from typing import Any, cast

from pycrdt import Doc, Subscription, TransactionEvent, merge_updates

from .auth import User
from .awareness import PresenceLimits, RoomAwareness
from .extensions import Change, ChangesDurable, Hooks, PeerJoined, PeerLeft
from .fanout import ClosablePeer, Fanout, LocalFanout, Peer
from .guard import SchemaGuard
from .origins import SERVER, SERVER_ORIGINS, Origin, PeerOrigin, RemoteOrigin
from .protocol import (
    ProtocolError,
    encode_awareness,
    encode_sync_step1,
    encode_sync_step2,
    encode_update,
    read_awareness,
    write_awareness,
)
from .schema import CellIndex
from .store import Store

logger = logging.getLogger("crdtnb.room")


class RejectedUpdate(ProtocolError):
    """An update pycrdt refused to apply."""


class Room:
    def __init__(
        self,
        name: str,
        doc: Doc,
        store: Store,
        fanout: Fanout | None = None,
        index: CellIndex | None = None,
        presence: PresenceLimits | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.name = name
        self.doc = doc
        self.store = store
        self.fanout = fanout or LocalFanout()
        # Build the index before filling the doc where you can: then it costs O(n).
        self.index = index or CellIndex(doc)
        self.guard = SchemaGuard(doc, self.index, is_peer=lambda origin: isinstance(origin, PeerOrigin))
        self.awareness = RoomAwareness(presence)
        self.peers: set[Peer] = set()
        self.hooks = hooks or Hooks()
        self._origins: dict[int, Origin] = {hash(origin): origin for origin in SERVER_ORIGINS}
        self._peer_origins: dict[Peer, PeerOrigin] = {}
        # Captured transactions waiting to be stored: (update, origin, when captured).
        self._outbox: list[tuple[bytes, Origin, float]] = []
        self._wake = asyncio.Event()
        self._enqueued = 0
        self._committed = 0
        self._committed_changed = asyncio.Condition()
        self._subscription: Subscription | None = doc.observe(self._capture)
        self._pipeline: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._pipeline = asyncio.create_task(self._run_pipeline(), name=f"room:{self.name}")

    async def close(self) -> None:
        """Wait until every captured change is durable, then stop."""
        await self.flushed()
        if self._subscription is not None:
            self.doc.unobserve(self._subscription)
            self._subscription = None
            self.guard.close()
            self.index.close()
        if self._pipeline is not None:
            self._pipeline.cancel()
            await asyncio.gather(self._pipeline, return_exceptions=True)
            self._pipeline = None

    # -- peers --------------------------------------------------------------

    def origin_of(self, peer: Peer, user: User | None = None) -> PeerOrigin:
        origin = self._peer_origins.get(peer)
        if origin is None:
            origin = self._peer_origins[peer] = PeerOrigin(peer, user)
            self._origins[hash(origin)] = origin
        return origin

    def join(self, peer: Peer, user: User | None = None, can_write: bool = True) -> None:
        """Add a peer and send it our state vector and everyone's presence."""
        self.origin_of(peer, user)
        self.peers.add(peer)
        peer.send(encode_sync_step1(self.doc.get_state()))
        states = self.awareness.encode_all()
        if states is not None:
            peer.send(encode_awareness(states))
        self.hooks.notify("on_peer_joined", PeerJoined(self, peer, user, can_write))

    def leave(self, peer: Peer) -> None:
        self.peers.discard(peer)
        origin = self._peer_origins.pop(peer, None)
        if origin is not None:
            self._origins.pop(hash(origin), None)
        removal = self.awareness.remove_owner(peer)
        if removal is not None:
            self.broadcast(encode_awareness(removal), exclude=peer)
        self.hooks.notify("on_peer_left", PeerLeft(self, peer, origin.user if origin else None))

    def disconnect(self, code: int, reason: str) -> None:
        """Ask every peer that can be closed to close (the notebook moved or is gone);
        each closes after what it was already sent."""
        for peer in list(self.peers):
            if isinstance(peer, ClosablePeer):
                peer.close(code, reason)

    def broadcast(self, message: bytes, exclude: Peer | None = None) -> None:
        self.fanout.publish(self.name, message, list(self.peers), exclude)

    # -- messages (one small handler per kind) ------------------------------

    async def on_sync_step1(self, peer: Peer, state_vector: bytes) -> None:
        """Answer with what the peer lacks, once everything in it is durable."""
        try:
            update = self.doc.get_update(state_vector)
        except ValueError as exc:
            raise ProtocolError(f"invalid state vector: {exc}") from exc
        await self.flushed()
        peer.send(encode_sync_step2(update))

    def on_update(self, peer: Peer, update: bytes) -> None:
        """Apply a peer's update, repair what it broke of the schema; the observer
        persists and relays both (as one update when there was a repair)."""
        self.guard.learn_outputs()
        mark = len(self._outbox)
        try:
            with self.doc.transaction(origin=self.origin_of(peer)):
                self.doc.apply_update(update)
        except ValueError as exc:
            raise RejectedUpdate(f"update rejected: {exc}") from exc
        if self.guard.repair() and len(self._outbox) - mark > 1:
            # Everyone, the sender included, gets the update with its repair in one
            # frame: no client ever holds the broken state.
            captured = self._outbox[mark:]
            merged = merge_updates(*[update for update, _, _ in captured])
            self._outbox[mark:] = [(merged, SERVER, captured[0][2])]
            self._enqueued -= len(captured) - 1

    def apply_remote(self, update: bytes, origin: RemoteOrigin) -> None:
        """Apply an update another daemon has stored already: relayed, not stored."""
        self._origins.setdefault(hash(origin), origin)
        with self.doc.transaction(origin=origin):
            self.doc.apply_update(update)

    def on_awareness(self, peer: Peer, payload: bytes, user: User | None = None) -> None:
        """Record and relay presence. A peer may only speak for client ids that are
        not another peer's, and the server stamps who it really is on its state."""
        entries = []
        for entry in read_awareness(payload):
            owner = self.awareness.owner(entry.client_id)
            if owner is not None and owner is not peer:
                continue  # someone else's presence
            entries.append(entry)
        self.awareness.check(entries, owner=peer)
        for i, entry in enumerate(entries):
            if entry.state != "null" and user is not None:
                entries[i] = replace(entry, state=_stamp_identity(entry.state, user))
            elif entry.state != "null":
                _check_json(entry.state)
        accepted = self.awareness.apply(entries, owner=peer)
        if accepted:
            # Sent back to the sender too, as y-websocket's server does: its periodic
            # presence renewal is what keeps a lone browser's 30 s silence timer quiet.
            self.broadcast(encode_awareness(write_awareness(accepted)))

    def on_query_awareness(self, peer: Peer) -> None:
        states = self.awareness.encode_all()
        if states is not None:
            peer.send(encode_awareness(states))

    # -- the persist-then-relay pipeline ---------------------------------------

    def _capture(self, event: TransactionEvent) -> None:
        # pycrdt's TransactionEvent carries its transaction, whose origin is a hash.
        origin = self._origins.get(cast(Any, event).transaction.origin(), SERVER)
        self._outbox.append((event.update, origin, time.monotonic()))
        self._enqueued += 1
        self._wake.set()

    async def flushed(self) -> None:
        """Return once every change captured so far is in the store."""
        target = self._enqueued
        async with self._committed_changed:
            await self._committed_changed.wait_for(lambda: self._committed >= target)

    async def _run_pipeline(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._outbox = self._outbox, []
            if not batch:
                continue
            local = [update for update, origin, _ in batch if not isinstance(origin, RemoteOrigin)]
            if local:
                await self._persist(local)
            durable = time.monotonic()
            async with self._committed_changed:
                self._committed += len(batch)
                self._committed_changed.notify_all()
            for update, origin, _ in batch:
                sender = origin.peer if isinstance(origin, PeerOrigin) else None
                self.broadcast(encode_update(update), exclude=sender)
            if self.hooks.wants("on_changes_durable"):
                changes = tuple(Change(update, origin, received, durable) for update, origin, received in batch)
                self.hooks.notify("on_changes_durable", ChangesDurable(self, changes))

    async def _persist(self, updates: list[bytes]) -> None:
        """Append to the log; on a storage fault keep retrying rather than relay
        something that is not durable."""
        delay = 0.05
        while True:
            try:
                await self.store.append(self.name, updates)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("room %s: storing %d updates failed; retrying", self.name, len(updates))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            return


def _check_json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ProtocolError("awareness state is not JSON") from exc


def _stamp_identity(text: str, user: User) -> str:
    """Set ``user.account`` (and ``user.name`` for named accounts) from the
    authenticated identity, whatever the client claimed."""
    state = _check_json(text)
    if not isinstance(state, dict):
        return text
    claimed = state.get("user")
    shown = dict(claimed) if isinstance(claimed, dict) else {}
    shown["account"] = user.name
    if user.display_name:
        shown["name"] = user.display_name
    state["user"] = shown
    return json.dumps(state, separators=(",", ":"), ensure_ascii=False)
