"""What other daemons do, brought to this one's rooms.

- ``StreamReader``: one task, one blocking XREAD over the logs of every room this daemon
  has open (and the request streams of the rooms it owns), each read from where this
  daemon last saw it. Entries this daemon wrote itself are skipped; the others are
  applied as remote changes: relayed to local peers, not stored again. Nothing is lost
  when this daemon falls behind: it reads on from its last id.
- ``Presence``: presence updates cross daemons over pub/sub (they need no durability),
  tagged with the sending node so a daemon never applies its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from ..protocol import MessageType
from .keys import RoomKeys

logger = logging.getLogger("crdtnb.cluster")

BLOCK_MS = 200  # longest wait of one XREAD: a newly opened room is read from within this
BATCH = 500  # entries per stream per read

OnEntry = Callable[[str, bytes, str], None]  # room, update, node
OnRequest = Callable[[str, str, dict[bytes, bytes]], None]  # room, entry id, fields


class StreamReader:
    def __init__(self, redis: Redis, node: str, on_update: OnEntry, on_request: OnRequest) -> None:
        self.redis = redis
        self.node = node.encode()
        self.on_update = on_update
        self.on_request = on_request
        self._logs: dict[str, str] = {}  # log key -> last id read
        self._requests: dict[str, str] = {}  # request stream key -> last id read
        self._rooms: dict[str, str] = {}  # key -> room name
        self._changed = asyncio.Event()
        self.lag_errors = 0

    def follow(self, room: str, position: str) -> None:
        """Read the room's log from after ``position`` (where it was loaded up to)."""
        keys = RoomKeys(room)
        self._logs[keys.log] = position
        self._rooms[keys.log] = room
        self._changed.set()

    def unfollow(self, room: str) -> None:
        keys = RoomKeys(room)
        for table in (self._logs, self._requests):
            table.pop(keys.log, None)
            table.pop(keys.requests, None)
        self._rooms.pop(keys.log, None)
        self._rooms.pop(keys.requests, None)

    def serve_requests(self, room: str, serve: bool) -> None:
        """Read the room's kernel requests (while this daemon owns it), new ones only."""
        keys = RoomKeys(room)
        if serve:
            self._requests.setdefault(keys.requests, "$")
            self._rooms[keys.requests] = room
            self._changed.set()
        else:
            self._requests.pop(keys.requests, None)

    async def run(self) -> None:
        while True:
            streams = {**self._logs, **self._requests}
            if not streams:
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                replies: Any = await self.redis.xread(cast(Any, streams), count=BATCH, block=BLOCK_MS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.lag_errors += 1
                logger.warning("reading the cluster's streams failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            for key, entries in replies or ():
                key = key.decode() if isinstance(key, bytes) else key
                room = self._rooms.get(key)
                if room is None:
                    continue
                if key in self._logs:
                    self._read_log(key, room, entries)
                elif key in self._requests:
                    for entry_id, fields in entries:
                        entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                        self._requests[key] = entry
                        self.on_request(room, entry, fields)

    def _read_log(self, key: str, room: str, entries: list[Any]) -> None:
        for entry_id, fields in entries:
            self._logs[key] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            writer = fields.get(b"n")
            if writer == self.node:
                continue
            try:
                self.on_update(room, bytes(fields[b"u"]), (writer or b"?").decode())
            except Exception:
                logger.exception("applying a remote update to %s failed", room)


class Presence:
    """Presence across daemons, over one pub/sub channel per open room."""

    def __init__(self, redis: Redis, node: str, on_remote: Callable[[str, bytes, str], None]) -> None:
        self.redis = redis
        self.node = node
        self.on_remote = on_remote
        self._pubsub: PubSub = redis.pubsub(ignore_subscribe_messages=True)
        self._channels: dict[str, str] = {}  # channel -> room
        self._sends: set[asyncio.Task[Any]] = set()

    async def follow(self, room: str) -> None:
        channel = RoomKeys(room).presence
        self._channels[channel] = room
        try:
            await self._pubsub.subscribe(channel)
        except Exception as exc:  # Redis is away: presence stays local until it is back
            logger.warning("subscribing to the presence of %s failed (%s)", room, exc)

    async def unfollow(self, room: str) -> None:
        channel = RoomKeys(room).presence
        if self._channels.pop(channel, None) is not None:
            try:
                await self._pubsub.unsubscribe(channel)
            except Exception as exc:
                logger.debug("unsubscribing from the presence of %s failed (%s)", room, exc)

    def publish(self, room: str, message: bytes) -> None:
        """Send a presence message to the other daemons (fire and forget, in order)."""
        task = asyncio.ensure_future(
            self.redis.publish(RoomKeys(room).presence, self.node.encode() + b"\n" + message)
        )
        self._sends.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[Any]) -> None:
        self._sends.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("publishing presence failed: %s", task.exception())

    async def run(self) -> None:
        while True:
            if not self._channels:
                await asyncio.sleep(0.2)
                continue
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("presence subscription failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            room = self._channels.get(channel)
            node, _, payload = bytes(message["data"]).partition(b"\n")
            if room is None or node.decode() == self.node or not payload:
                continue
            try:
                self.on_remote(room, payload, node.decode())
            except Exception:
                logger.exception("applying remote presence to %s failed", room)

    async def close(self) -> None:
        for task in list(self._sends):
            task.cancel()
        await asyncio.gather(*self._sends, return_exceptions=True)
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]


def is_awareness(message: bytes) -> bool:
    return bool(message) and message[0] == MessageType.AWARENESS

