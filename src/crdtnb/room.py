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
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, cast

from pycrdt import Doc, Subscription, TransactionEvent, merge_updates

from .auth import User
from .awareness import PresenceLimits, RoomAwareness
from .extensions import Change, ChangesDurable, Hooks, PeerJoined, PeerLeft
from .fanout import ClosablePeer, Fanout, LocalFanout, Peer
from .guard import SchemaGuard
from .origins import OWNER_WORK, SERVER, SERVER_ORIGINS, Origin, PeerOrigin, RemoteOrigin
from .ownership import NotOwner
from .pieces import diff_plan
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

# The server's own origins by the hash pycrdt reports a transaction's origin as.
_SERVER_ORIGINS: dict[int, Origin] = {hash(origin): origin for origin in SERVER_ORIGINS}


class RejectedUpdate(ProtocolError):
    """An update pycrdt refused to apply."""


class RoomBroken(RuntimeError):
    """The room's changes cannot be made durable (the store is unreachable, or the owner's
    work was refused because this daemon lost the room): nothing more is relayed."""


# Updates merged into one relayed message at most: merging grows faster than linearly
# and runs on the loop (64 one-key updates: 0.15 ms; a thousand: 6 ms).
MERGED_RUN = 64


def _relayed(batch: list[tuple[bytes, Origin, float, bool]]) -> Iterator[tuple[bytes, Peer | None]]:
    """A committed batch as few messages as it can be: each run of consecutive updates
    from one sender merged into one update, with the peer it is not sent back to (None:
    everyone). Under load a batch holds many updates, and every peer then gets one frame
    for all of them: the cost per delivery falls as the load rises."""
    run: list[bytes] = []
    run_sender: Peer | None = None
    for update, origin, _, to_sender in batch:
        sender = origin.peer if isinstance(origin, PeerOrigin) and not to_sender else None
        if run and (sender is not run_sender or len(run) == MERGED_RUN):
            yield _merged(run), run_sender
            run = []
        run.append(update)
        run_sender = sender
    if run:
        yield _merged(run), run_sender


def _merged(updates: list[bytes]) -> bytes:
    return updates[0] if len(updates) == 1 else merge_updates(*updates)


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
        store_timeout: float = 10.0,
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
        # Origins by the hash pycrdt hands back: this room's peers and remote daemons
        # (the server's own are looked up in _SERVER_ORIGINS, shared by every room).
        self._origins: dict[int, Origin] = {}
        self._peer_origins: dict[Peer, PeerOrigin] = {}
        # Captured transactions waiting to be stored: (update, origin, when captured,
        # relayed to its sender too).
        self._outbox: list[tuple[bytes, Origin, float, bool]] = []
        # The pipeline's, while it waits for a change (a future per wait: an idle room
        # holds no Event and its deque).
        self._wake: asyncio.Future[None] | None = None
        self._enqueued = 0
        self._committed = 0
        # Callers of flushed() waiting for a count of committed changes, oldest first.
        self._flush_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._subscription: Subscription | None = doc.observe(self._capture)
        self._pipeline: asyncio.Task[None] | None = None
        # How long the pipeline retries a failing store before it gives up on the room.
        self.store_timeout = store_timeout
        self.broken: str | None = None
        # Called once when the room breaks (RoomManager closes its peers and drops it).
        self.on_broken: Callable[[Room, str], None] | None = None
        # Whether a peer has been sent the document: work left from loading waits for it.
        self.served = False
        self._served_waiters: list[asyncio.Future[None]] = []

    def start(self) -> None:
        self._pipeline = asyncio.create_task(self._run_pipeline(), name=f"room:{self.name}")

    @property
    def changes(self) -> int:
        """Grows with every change of the document: the same number twice means nothing
        changed in between."""
        return self._enqueued

    async def close(self) -> None:
        """Wait until every captured change is durable (unless the room broke), then stop."""
        if self.broken is None:
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
        """Answer with what the peer lacks, once everything in it is durable. A big answer
        is encoded in pieces (pieces.py), the loop free between them: all but the last
        are sent as updates, the last as the step2."""
        try:
            plan = diff_plan(self.doc, state_vector)
        except ValueError as exc:
            raise ProtocolError(f"invalid state vector: {exc}") from exc
        pieces = []
        for number, vector in enumerate(plan):
            if number:
                await asyncio.sleep(0)
            try:
                pieces.append(self.doc.get_update(vector) if vector else self.doc.get_update())
            except ValueError as exc:
                raise ProtocolError(f"invalid state vector: {exc}") from exc
        await self.flushed()
        # Each piece is a megabyte to copy, and to free: other rooms go between, and each
        # is dropped once sent (50 of them freed at once held the loop for 5-8 ms).
        pieces.reverse()
        while len(pieces) > 1:
            peer.send(encode_update(pieces.pop()))
            await asyncio.sleep(0)
        peer.send(encode_sync_step2(pieces.pop()))
        self.mark_served()

    def mark_served(self) -> None:
        self.served = True
        waiters, self._served_waiters = self._served_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def first_served(self, timeout: float) -> None:
        """Return once a peer has been sent the document, or after ``timeout`` seconds."""
        if self.served:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._served_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            if waiter in self._served_waiters:
                self._served_waiters.remove(waiter)

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
            # frame: no client ever holds the broken state. It stays the sender's change
            # for the hooks (an audit log must see who needed a repair).
            captured = self._outbox[mark:]
            merged = merge_updates(*[update for update, _, _, _ in captured])
            self._outbox[mark:] = [(merged, self.origin_of(peer), captured[0][2], True)]
            self._enqueued -= len(captured) - 1

    def apply_remote(self, update: bytes, origin: RemoteOrigin) -> None:
        """Apply an update another daemon has stored already: relayed, not stored."""
        self._origins.setdefault(hash(origin), origin)
        with self.doc.transaction(origin=origin):
            self.doc.apply_update(update)

    def apply_remote_awareness(self, payload: bytes, node: object) -> None:
        """Presence from another daemon's clients (checked and stamped there): kept for
        late joiners and delivered to this daemon's peers, not published again."""
        accepted = self.awareness.apply(read_awareness(payload), owner=node)
        if accepted:
            self.deliver(encode_awareness(write_awareness(accepted)))

    def forget_remote(self, node: object) -> None:
        """Another daemon is gone: its clients' presence goes with it."""
        removal = self.awareness.remove_owner(node)
        if removal is not None:
            self.deliver(encode_awareness(removal))

    def deliver(self, message: bytes) -> None:
        """Send to this daemon's peers only."""
        for peer in list(self.peers):
            peer.send(message)

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
        key = cast(Any, event).transaction.origin()
        origin = self._origins.get(key) or _SERVER_ORIGINS.get(key, SERVER)
        self._outbox.append((event.update, origin, time.monotonic(), False))
        self._enqueued += 1
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def flushed(self) -> None:
        """Return once every change captured so far is in the store (RoomBroken if it
        never will be)."""
        target = self._enqueued
        if self._committed < target and self.broken is None:
            waiter = asyncio.get_running_loop().create_future()
            self._flush_waiters.append((target, waiter))
            await waiter
        if self.broken is not None and self._committed < target:
            raise RoomBroken(self.broken)

    async def _run_pipeline(self) -> None:
        while True:
            if not self._outbox:
                self._wake = asyncio.get_running_loop().create_future()
                await self._wake
            batch, self._outbox = self._outbox, []
            if not batch:
                continue
            try:
                await self._persist(batch)
            except RoomBroken as exc:
                self._break(str(exc))
                return
            durable = time.monotonic()
            self._committed += len(batch)
            if self._flush_waiters:
                self._wake_waiters()
            for update, sender in _relayed(batch):
                self.broadcast(encode_update(update), exclude=sender)
            if self.hooks.wants("on_changes_durable"):
                changes = tuple(Change(update, origin, received, durable) for update, origin, received, _ in batch)
                self.hooks.notify("on_changes_durable", ChangesDurable(self, changes))

    async def _persist(self, batch: list[tuple[bytes, Origin, float, bool]]) -> None:
        """Append a batch to the log, in order: peers' and repairs with ``append``, the
        owner's work with ``append_owned``; remote changes are stored already. A failing
        store is retried for ``store_timeout`` seconds, then the room breaks rather than
        relay something that is not durable."""
        run: list[bytes] = []
        owned = False
        for update, origin, _, _ in batch:
            if isinstance(origin, RemoteOrigin):
                continue
            work = origin in OWNER_WORK
            if run and work != owned:
                await self._append(run, owned)
                run = []
            owned = work
            run.append(update)
        if run:
            await self._append(run, owned)

    async def _append(self, updates: list[bytes], owned: bool) -> None:
        deadline = time.monotonic() + self.store_timeout
        delay = 0.05
        while True:
            try:
                if owned:
                    await self.store.append_owned(self.name, updates)
                else:
                    await self.store.append(self.name, updates)
                return
            except asyncio.CancelledError:
                raise
            except NotOwner as exc:
                raise RoomBroken(f"this server no longer owns the notebook ({exc})") from exc
            except Exception as exc:
                if time.monotonic() >= deadline:
                    raise RoomBroken(f"the store is unreachable ({type(exc).__name__})") from exc
                logger.warning("room %s: storing %d updates failed (%s); retrying", self.name, len(updates), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _break(self, reason: str) -> None:
        """Nothing more is relayed: the room's clients are told to reconnect (they keep
        their edits and resync with a room rebuilt from the store)."""
        logger.error("room %s broke: %s", self.name, reason)
        self.broken = reason
        self._wake_waiters()
        for peer in list(self.peers):
            peer.close(1013, f"{reason}: reconnect later")
        if self.on_broken is not None:
            self.on_broken(self, reason)

    def _wake_waiters(self) -> None:
        """Release the flushed() callers whose changes are committed (all, once broken)."""
        waiting = []
        for target, waiter in self._flush_waiters:
            if self._committed >= target or self.broken is not None:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                waiting.append((target, waiter))
        self._flush_waiters = waiting


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
