"""Cluster mode, as an extension: several daemons serve the same ROOT through one Redis.

Any daemon serves any client of any room. Each daemon stores its clients' updates in the
room's Redis stream before relaying them to its own peers, and reads the others' from the
stream (relay.py): durable before relay, cluster-wide. One daemon owns each room (a lease,
leases.py): it alone runs the room's kernel, saves its file and compacts its stream, and
kernel requests made on other daemons reach it through a request stream. When the owner
dies its lease lapses and another daemon with the room open takes it within a few
seconds; a cell that was running gets a KernelLost note (kernel/extension.py). A daemon
stopping releases its leases at once and says so, so others take over without waiting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from ..api import RequestError, status_of
from ..auth import Action
from ..extensions import (
    DaemonStarted,
    DaemonStopping,
    Extension,
    RoomDisowned,
    RoomLoaded,
    RoomOwned,
)
from ..fanout import Peer
from ..origins import RemoteOrigin
from ..settings import ClusterSettings
from .keys import EVENTS, NODE_PREFIX, RoomKeys, node_key, reply_key
from .leases import Leases
from .relay import Presence, StreamReader, is_awareness
from .store import RedisStore

if TYPE_CHECKING:
    from ..api import Api
    from ..daemon import Daemon

logger = logging.getLogger("crdtnb.cluster")

HEARTBEAT_EVERY = 1.0  # seconds between two heartbeats of this daemon
HEARTBEAT_TTL = 5  # seconds a daemon counts as alive after its last heartbeat
CLAIM_EVERY = 1.0  # seconds between two attempts to take the open rooms nobody owns
HOLD_OFF = 1.0  # seconds a daemon that handed a room over leaves it to the others
REQUEST_TIMEOUT = 30.0  # seconds a kernel request waits for the owner's answer


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class RemoteNode:
    """Another daemon, as the owner of the presence of its clients in a room."""

    node: str


class ClusterFanout:
    """Delivers to this daemon's peers, and sends presence to the other daemons (updates
    travel through the rooms' streams instead)."""

    def __init__(self, presence: Presence) -> None:
        self.presence = presence

    def publish(self, room: str, message: bytes, peers: Iterable[Peer], exclude: Peer | None) -> None:
        for peer in peers:
            if peer is not exclude:
                peer.send(message)
        if is_awareness(message):
            self.presence.publish(room, message)


class Cluster(Extension):
    def __init__(self, settings: ClusterSettings, compact_rows: int = 1000) -> None:
        if not settings.redis:
            raise ValueError("cluster mode needs a Redis URL")
        self.settings = settings
        self.node = settings.node_id or default_node_id()
        if " " in self.node:
            raise ValueError("a node id has no spaces")
        self.redis: Redis = Redis.from_url(settings.redis)
        # Blocking reads (XREAD, BLPOP) get connections of their own pool.
        self.blocking: Redis = Redis.from_url(settings.redis)
        self.leases = Leases(self.redis, self.node, settings.lease_ttl, settings.lease_renew)
        self.store = RedisStore(self.redis, self.node, self.leases, compact_threshold_rows=compact_rows)
        self.presence = Presence(self.redis, self.node, self._remote_presence)
        self.reader = StreamReader(self.blocking, self.node, self._remote_update, self._request)
        self.fanout = ClusterFanout(self.presence)
        self.started_at = time.time()
        self._daemon: Daemon | None = None
        self._remote_nodes: dict[str, RemoteNode] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._requests: set[asyncio.Task[Any]] = set()
        self._claim_now = asyncio.Event()
        self._members: set[str] = set()
        self._hold_off: dict[str, float] = {}
        self.store.on_close = self._shutdown

    def routes(self, api: Api) -> Sequence[BaseRoute]:
        return [
            api.route("/api/cluster/handover/{path:path}", self._handover, methods=["POST"], action=Action.ADMIN),
        ]

    async def _handover(self, api: Api, request: Request, path: str) -> Response:
        """Hand a room this daemon owns over to another (draining it before maintenance)."""
        if not await self.daemon.rooms.hand_over(path):
            raise RequestError(409, f"{self.node} does not own {path}")
        self._hold_off[path] = time.monotonic() + HOLD_OFF
        return JSONResponse({"node": self.node, "released": path})

    # -- the daemon's lifecycle ---------------------------------------------------------

    @property
    def daemon(self) -> Daemon:
        assert self._daemon is not None, "the daemon has not started"
        return self._daemon

    async def on_daemon_started(self, event: DaemonStarted) -> None:
        self._daemon = event.daemon
        self.leases.on_lost = self._lost
        from ..kernel import Kernels

        kernels = event.daemon.extension(Kernels)
        if kernels is not None:
            kernels.remote = self.call_owner
        await self._heartbeat()
        for name, work in (
            ("leases", self.leases.run()),
            ("reader", self.reader.run()),
            ("presence", self.presence.run()),
            ("heartbeat", self._heartbeats()),
            ("claims", self._claims()),
            ("events", self._events()),
        ):
            self._tasks.append(asyncio.create_task(work, name=f"cluster:{name}"))
        logger.info("node %s joined the cluster at %s", self.node, self.settings.redis)

    async def on_daemon_stopping(self, event: DaemonStopping) -> None:
        # Take no room any more: the rooms unload next, releasing their leases.
        for task in self._tasks:
            if task.get_name() == "cluster:claims":
                task.cancel()

    async def _shutdown(self) -> None:
        """Called when the store closes, after every room is unloaded."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._requests, return_exceptions=True)
        await self.presence.close()
        try:
            await self.redis.delete(node_key(self.node))
        except Exception:
            pass
        await self.redis.aclose()
        await self.blocking.aclose()

    async def on_room_loaded(self, event: RoomLoaded) -> None:
        name = event.room.name
        self.reader.follow(name, self.store.positions.get(name, "0-0"))
        await self.presence.follow(name)

    async def on_room_owned(self, event: RoomOwned) -> None:
        self.reader.serve_requests(event.room.name, True)

    async def on_room_disowned(self, event: RoomDisowned) -> None:
        self.reader.serve_requests(event.room.name, False)

    async def on_room_unloaded(self, event: Any) -> None:
        name = event.name
        self.reader.unfollow(name)
        await self.presence.unfollow(name)

    # -- what other daemons did ----------------------------------------------------------

    def _remote_update(self, name: str, update: bytes, node: str) -> None:
        room = self.daemon.rooms.get(name)
        if room is not None and room.broken is None:
            room.apply_remote(update, RemoteOrigin(node))

    def _remote_presence(self, name: str, payload: bytes, node: str) -> None:
        room = self.daemon.rooms.get(name)
        if room is None:
            return
        from ..protocol import AwarenessMessage, parse_message

        message = parse_message(payload)
        if isinstance(message, AwarenessMessage):
            room.apply_remote_awareness(message.payload, self._remote_node(node))

    def _remote_node(self, node: str) -> RemoteNode:
        remote = self._remote_nodes.get(node)
        if remote is None:
            remote = self._remote_nodes[node] = RemoteNode(node)
        return remote

    # -- ownership -------------------------------------------------------------------------

    async def _claims(self) -> None:
        """Take the open rooms nobody owns (their owner died, or stopped)."""
        while True:
            try:
                await asyncio.wait_for(self._claim_now.wait(), CLAIM_EVERY)
            except asyncio.TimeoutError:
                pass
            self._claim_now.clear()
            now = time.monotonic()
            for name in list(self.daemon.rooms.rooms):
                if self.leases.owns(name) or self._hold_off.get(name, 0.0) > now:
                    continue
                try:
                    if await self.leases.claim(name):
                        await self.daemon.rooms.gained(name)
                except Exception as exc:
                    logger.warning("claiming %s failed (%s)", name, exc)

    async def _lost(self, name: str, reason: str) -> None:
        await self.daemon.rooms.lost(name, reason)

    async def _events(self) -> None:
        """A released lease is taken over at once, not when it would have lapsed."""
        pubsub = self.blocking.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(EVENTS)
        try:
            while True:
                try:
                    message = await pubsub.get_message(timeout=1.0)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    logger.warning("cluster events failed (%s)", exc)
                    await asyncio.sleep(0.5)
                    continue
                if message and message.get("type") == "message":
                    kind, _, rest = bytes(message["data"]).decode().partition(" ")
                    node, _, room = rest.partition(" ")
                    if kind == "released" and node != self.node and room in self.daemon.rooms.rooms:
                        # Another daemon gave it up: ours to take, now.
                        self._hold_off.pop(room, None)
                        self._claim_now.set()
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    # -- membership -------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        owned = [name for name in self.daemon.rooms.rooms if self.leases.owns(name)]
        info = {
            "node": self.node,
            "started": self.started_at,
            "rooms": len(self.daemon.rooms.rooms),
            "owned": owned,
            "seen": time.time(),
        }
        await self.redis.set(node_key(self.node), json.dumps(info), ex=HEARTBEAT_TTL)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            try:
                await self._heartbeat()
                members = set(await self.members())
            except Exception as exc:
                logger.warning("heartbeat failed (%s)", exc)
                continue
            for gone in self._members - members:
                self._node_gone(gone)
            self._members = members

    def _node_gone(self, node: str) -> None:
        """A daemon stopped beating: its clients' presence goes (they reconnect elsewhere)."""
        remote = self._remote_nodes.pop(node, None)
        if remote is None:
            return
        logger.info("node %s left the cluster", node)
        for room in self.daemon.rooms.rooms.values():
            room.forget_remote(remote)

    async def members(self) -> list[str]:
        names = []
        async for key in self.redis.scan_iter(match=f"{NODE_PREFIX}*", count=100):
            text = key.decode() if isinstance(key, bytes) else key
            names.append(text[len(NODE_PREFIX) :])
        return sorted(names)

    async def info(self) -> dict[str, Any]:
        """For /api/health: this node, the members, the rooms this node owns."""
        try:
            members = await self.members()
            reachable = True
        except Exception:
            members, reachable = [], False
        return {
            "node": self.node,
            "redis": "ok" if reachable else "unreachable",
            "members": members,
            "owned": sorted(name for name in self.daemon.rooms.rooms if self.leases.owns(name)),
        }

    # -- kernel requests ---------------------------------------------------------------------

    async def call_owner(self, name: str, action: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Run a kernel request on the room's owner; None when nobody owns the room."""
        keys = RoomKeys(name)
        owner = await self.redis.get(keys.owner)
        if owner is None:
            return None
        holder = owner.decode() if isinstance(owner, bytes) else str(owner)
        if holder.split(" ")[0] == self.node:
            return None  # ours after all (just claimed): run it here
        request = uuid.uuid4().hex
        reply = reply_key(keys, request)
        await self.redis.xadd(
            keys.requests, {"a": action, "b": json.dumps(body), "r": reply, "n": self.node}, maxlen=10_000, approximate=True
        )
        answer = await self.blocking.blpop([reply], timeout=REQUEST_TIMEOUT)
        if answer is None:
            raise RequestError(503, f"the server that owns {name} did not answer; try again")
        result: dict[str, Any] = json.loads(answer[1])
        if "error" in result:
            raise RequestError(int(result.get("status", 500)), str(result["error"]))
        return result

    def _request(self, name: str, entry: str, fields: dict[bytes, bytes]) -> None:
        task = asyncio.create_task(self._serve(name, entry, fields), name=f"cluster:request:{name}")
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def _serve(self, name: str, entry: str, fields: dict[bytes, bytes]) -> None:
        from ..kernel import Kernels

        keys = RoomKeys(name)
        reply = bytes(fields.get(b"r", b"")).decode()
        try:
            kernels = self.daemon.extension(Kernels)
            if kernels is None:
                raise RequestError(404, "this cluster runs no kernels")
            result = await kernels.handle(name, bytes(fields[b"a"]).decode(), json.loads(fields[b"b"]))
        except Exception as exc:
            status, message = status_of(exc)
            result = {"error": message, "status": status}
        try:
            if reply:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.lpush(reply, json.dumps(result))
                    pipe.expire(reply, 60)
                    pipe.xdel(keys.requests, entry)
                    await pipe.execute()
        except Exception as exc:
            logger.warning("answering a kernel request for %s failed (%s)", name, exc)
