"""One shared notebook: its server-held document, its peers, and its ordered
persist-then-relay pipeline.

Every change to the document, whoever made it (a client, the file merger, later
the kernel agent), is captured by one document observer and goes through the
same pipeline: appended to the room's durable log, then relayed to every peer
but the one it came from, encoded once for all of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from collections.abc import Callable
from pycrdt import Doc, TransactionEvent

from .auth import User
from .awareness import RoomAwareness
from .fanout import Fanout, LocalFanout, Peer
from .protocol import (
    ProtocolError,
    encode_awareness,
    encode_sync_step1,
    encode_sync_step2,
    encode_update,
    read_awareness,
    write_awareness,
)
from .store import Store

logger = logging.getLogger("crdtnb.room")


class RejectedUpdate(ProtocolError):
    """An update pycrdt refused to apply."""


class Room:
    def __init__(self, name: str, doc: Doc, store: Store, fanout: Fanout | None = None) -> None:
        self.name = name
        self.doc = doc
        self.store = store
        self.fanout = fanout or LocalFanout()
        self.awareness = RoomAwareness()
        self.peers: set[Peer] = set()
        # Named hooks, called after each batch of changes is durable.
        self.on_change: list[Callable[[], None]] = []
        self._origin: Peer | None = None
        self._outbox: list[tuple[bytes, Peer | None]] = []
        self._wake = asyncio.Event()
        self._enqueued = 0
        self._committed = 0
        self._committed_changed = asyncio.Condition()
        self._subscription = doc.observe(self._capture)
        self._pipeline: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._pipeline = asyncio.create_task(self._run_pipeline(), name=f"room:{self.name}")

    async def close(self) -> None:
        """Wait until every captured change is durable, then stop."""
        await self.flushed()
        self.doc.unobserve(self._subscription)
        if self._pipeline is not None:
            self._pipeline.cancel()
            await asyncio.gather(self._pipeline, return_exceptions=True)
            self._pipeline = None

    # -- peers --------------------------------------------------------------

    def join(self, peer: Peer) -> None:
        """Add a peer and send it our state vector and everyone's presence."""
        self.peers.add(peer)
        peer.send(encode_sync_step1(self.doc.get_state()))
        states = self.awareness.encode_all()
        if states is not None:
            peer.send(encode_awareness(states))

    def leave(self, peer: Peer) -> None:
        self.peers.discard(peer)
        removal = self.awareness.remove_owner(peer)
        if removal is not None:
            self.broadcast(encode_awareness(removal), exclude=peer)

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

    def on_update(self, peer: Peer | None, update: bytes) -> None:
        """Apply a peer's update; the observer persists and relays it."""
        self._origin = peer
        try:
            self.doc.apply_update(update)
        except ValueError as exc:
            raise RejectedUpdate(f"update rejected: {exc}") from exc
        finally:
            self._origin = None

    def on_awareness(self, peer: Peer, payload: bytes, user: User | None = None) -> None:
        """Record and relay presence. A peer may only speak for client ids that are
        not another peer's, and the server stamps who it really is on its state."""
        entries = []
        for entry in read_awareness(payload):
            owner = self.awareness.owner(entry.client_id)
            if owner is not None and owner is not peer:
                continue  # someone else's presence
            if entry.state != "null" and user is not None:
                entry = replace(entry, state=_stamp_identity(entry.state, user))
            elif entry.state != "null":
                _check_json(entry.state)
            entries.append(entry)
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
        self._outbox.append((event.update, self._origin))
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
            await self._persist([update for update, _ in batch])
            async with self._committed_changed:
                self._committed += len(batch)
                self._committed_changed.notify_all()
            for update, origin in batch:
                self.broadcast(encode_update(update), exclude=origin)
            for hook in self.on_change:
                hook()

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
