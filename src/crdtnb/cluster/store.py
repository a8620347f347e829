"""The cluster's store: one Redis stream per room, plus a verified snapshot.

- ``append``: XADD of each update (with the node that wrote it), in one pipeline; it
  returns once Redis has acknowledged them. How durable that is depends on Redis's
  persistence settings (README: "Cluster").
- ``append_owned`` (kernel outputs, file merges) and the file's meta run in a script that
  first compares the room's lease with this daemon's exact "<node> <token>": a daemon
  that lost the room is refused (``NotOwner``) atomically, inside Redis.
- ``seed`` stores a new room's first state only if it has neither log nor snapshot.
- ``load`` reads the snapshot and the stream after it in one script (atomic against a
  compaction), and remembers where the stream was read to, so the relay (relay.py)
  starts reading the room's new entries from exactly there.
- ``compact`` (the owner's) merges snapshot and stream on a worker thread, checks the
  merge (store.merge_log), then swaps it in and trims the stream in one fenced script.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..ownership import NotOwner
from ..pieces import unpack
from ..store.base import RenameUnsupported, StoreClosedError, StoreUnavailable
from ..store.merge import merge_log
from .keys import ROOMS, RoomKeys
from .leases import Leases

logger = logging.getLogger("crdtnb.cluster")

_APPEND_OWNED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('NOTOWNER') end
for i = 3, #ARGV do redis.call('XADD', KEYS[2], '*', 'u', ARGV[i], 'n', ARGV[2]) end
return #ARGV - 2
"""

_SEED = """
if redis.call('XLEN', KEYS[1]) > 0 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
for i = 4, #ARGV do redis.call('XADD', KEYS[1], '*', 'u', ARGV[i], 'n', ARGV[1]) end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
return 1
"""

_LOAD = """
local snap = redis.call('HMGET', KEYS[1], 'data', 'id')
local start = '-'
if snap[2] then start = '(' .. snap[2] end
return {snap[1], snap[2], redis.call('XRANGE', KEYS[2], start, '+')}
"""

_SET_META = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('NOTOWNER') end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"""

_SWAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('NOTOWNER') end
local previous = redis.call('HGET', KEYS[2], 'id') or ''
if previous ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], 'data', ARGV[3], 'id', ARGV[4])
redis.call('XTRIM', KEYS[3], 'MINID', ARGV[5])
return 1
"""


@contextmanager
def unavailable_as_store_errors() -> Iterator[None]:
    """Redis that cannot be reached is the store being unavailable."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise StoreUnavailable(f"Redis cannot be reached: {exc}") from exc


def _next_id(entry_id: str) -> str:
    """The smallest stream id after ``entry_id`` (XTRIM MINID keeps ids >= it)."""
    ms, seq = entry_id.split("-")
    return f"{ms}-{int(seq) + 1}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisStore:
    """crdtnb.store.Store over Redis streams (see the module's docstring)."""

    def __init__(
        self,
        redis: Redis,
        node: str,
        leases: Leases,
        compact_threshold_rows: int = 1000,
        compact_threshold_bytes: int = 16 * 2**20,
    ) -> None:
        self.redis = redis
        self.node = node
        self.leases = leases
        self.compact_threshold_rows = compact_threshold_rows
        self.compact_threshold_bytes = compact_threshold_bytes
        # Per room: the stream id the room was loaded or appended up to (the relay's start).
        self.positions: dict[str, str] = {}
        self._sizes: dict[str, tuple[int, int]] = {}  # entries and bytes since the snapshot
        self._known: set[str] = set()  # rooms registered in ROOMS
        self._started = False
        self.on_close: Callable[[], Awaitable[None]] | None = None  # the cluster's shutdown
        # Appends of every room wait here and go to Redis together, one pipeline per
        # round trip (a group commit): redis-py costs far more per call than per command.
        self._pending: list[tuple[str, Sequence[bytes], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._append_owned = redis.register_script(_APPEND_OWNED)
        self._seed = redis.register_script(_SEED)
        self._load = redis.register_script(_LOAD)
        self._set_meta = redis.register_script(_SET_META)
        self._swap = redis.register_script(_SWAP)

    async def start(self) -> None:
        with unavailable_as_store_errors():
            await self.redis.ping()
        self._started = True
        self._flusher = asyncio.create_task(self._flush_forever(), name="cluster:appends")

    async def close(self) -> None:
        self._started = False
        if self._flusher is not None:
            while self._pending:
                await asyncio.sleep(0.01)
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        if self.on_close is not None:
            await self.on_close()

    def _check(self) -> None:
        if not self._started:
            raise StoreClosedError("the Redis store is not started")

    def _grew(self, room: str, updates: Sequence[bytes]) -> None:
        rows, size = self._sizes.get(room, (0, 0))
        self._sizes[room] = (rows + len(updates), size + sum(map(len, updates)))

    async def append(self, room: str, updates: Sequence[bytes]) -> None:
        self._check()
        if not updates:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((room, updates, future))
        self._wake.set()
        await future
        self._grew(room, updates)

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._flush(batch)

    async def _flush(self, batch: list[tuple[str, Sequence[bytes], asyncio.Future[None]]]) -> None:
        try:
            with unavailable_as_store_errors():
                async with self.redis.pipeline(transaction=False) as pipe:
                    for room, updates, _ in batch:
                        keys = RoomKeys(room)
                        for update in updates:
                            pipe.xadd(keys.log, {"u": bytes(update), "n": self.node})
                        if room not in self._known:
                            pipe.hset(ROOMS, keys.tag, room)
                    await pipe.execute()
        except BaseException as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else StoreUnavailable(str(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        for room, _, future in batch:
            self._known.add(room)
            if not future.done():
                future.set_result(None)

    async def append_owned(self, room: str, updates: Sequence[bytes]) -> None:
        self._check()
        if not updates:
            return
        holder = self._lease_on(room)
        keys = RoomKeys(room)
        try:
            with unavailable_as_store_errors():
                await self._append_owned(keys=[keys.owner, keys.log], args=[holder, self.node, *map(bytes, updates)])
        except ResponseError as exc:
            if "NOTOWNER" in str(exc):
                raise NotOwner(f"{self.node}'s lease on {room} is no longer valid") from exc
            raise
        self._grew(room, updates)

    async def seed(self, room: str, updates: Sequence[bytes]) -> bool:
        self._check()
        keys = RoomKeys(room)
        with unavailable_as_store_errors():
            seeded = await self._seed(keys=[keys.log, keys.snapshot, ROOMS], args=[self.node, keys.tag, room, *map(bytes, updates)])
        if seeded:
            self._known.add(room)
            self._grew(room, updates)
        return bool(seeded)

    async def load(self, room: str) -> list[bytes]:
        self._check()
        keys = RoomKeys(room)
        with unavailable_as_store_errors():
            snapshot, snapshot_id, entries = await self._load(keys=[keys.snapshot, keys.log])
        updates: list[bytes] = [] if snapshot is None else unpack(bytes(snapshot))  # see pieces.py
        position = _text(snapshot_id) if snapshot_id is not None else "0-0"
        size = 0
        for entry_id, fields in entries:
            values = dict(zip(fields[::2], fields[1::2]))
            update = bytes(values[b"u"])
            updates.append(update)
            size += len(update)
            position = _text(entry_id)
        self.positions[room] = position
        self._sizes[room] = (len(entries), size)
        return updates

    def needs_compaction(self, room: str) -> bool:
        rows, size = self._sizes.get(room, (0, 0))
        return rows >= self.compact_threshold_rows or size >= self.compact_threshold_bytes

    async def compact(self, room: str) -> None:
        """Merge the room's snapshot and stream into a new snapshot (the owner's work)."""
        self._check()
        holder = self._lease_on(room)
        keys = RoomKeys(room)
        snapshot, snapshot_id, entries = await self._load(keys=[keys.snapshot, keys.log])
        if not entries:
            return
        updates = ([] if snapshot is None else [bytes(snapshot)]) + [
            bytes(dict(zip(fields[::2], fields[1::2]))[b"u"]) for _, fields in entries
        ]
        merged = await asyncio.to_thread(merge_log, updates)
        last = _text(entries[-1][0])
        previous = "" if snapshot_id is None else _text(snapshot_id)
        try:
            swapped = await self._swap(
                keys=[keys.owner, keys.snapshot, keys.log], args=[holder, previous, merged, last, _next_id(last)]
            )
        except ResponseError as exc:
            if "NOTOWNER" in str(exc):
                raise NotOwner(f"{self.node}'s lease on {room} is no longer valid") from exc
            raise
        if swapped:
            rows, size = self._sizes.get(room, (0, 0))
            merged_size = sum(map(len, updates[1 if snapshot is not None else 0 :]))
            self._sizes[room] = (max(0, rows - len(entries)), max(0, size - merged_size))

    async def log_size(self, room: str) -> tuple[int, int]:
        return self._sizes.get(room, (0, 0))

    async def memory(self, room: str) -> int:
        """Bytes Redis uses for the room's snapshot and stream (MEMORY USAGE)."""
        keys = RoomKeys(room)
        used = 0
        for key in (keys.snapshot, keys.log):
            value = await self.redis.memory_usage(key)
            used += int(value or 0)
        return used

    async def get_meta(self, room: str, key: str) -> bytes | None:
        self._check()
        with unavailable_as_store_errors():
            value = await self.redis.hget(RoomKeys(room).meta, key)
        return None if value is None else value.encode() if isinstance(value, str) else bytes(value)

    def _lease_on(self, room: str) -> str:
        """This node's lease on ``room``, which the scripts compare inside Redis (NotOwner
        when it holds none)."""
        holder = self.leases.holder(room)
        if holder is None:
            raise NotOwner(f"{self.node} holds no lease on {room}")
        return holder

    async def set_meta(self, room: str, key: str, value: bytes) -> None:
        self._check()
        holder = self._lease_on(room)
        keys = RoomKeys(room)
        try:
            with unavailable_as_store_errors():
                await self._set_meta(keys=[keys.owner, keys.meta], args=[holder, key, bytes(value)])
        except ResponseError as exc:
            if "NOTOWNER" in str(exc):
                raise NotOwner(f"{self.node}'s lease on {room} is no longer valid") from exc
            raise

    async def delete_room(self, room: str) -> None:
        keys = RoomKeys(room)
        await self.redis.delete(keys.log, keys.snapshot, keys.meta)
        await self.redis.hdel(ROOMS, keys.tag)
        self._sizes.pop(room, None)
        self._known.discard(room)

    async def rename_room(self, old: str, new: str) -> None:
        # A room's keys share one slot, chosen by its name: a rename would move them
        # across slots, and every node's open room, lease and channels with them.
        raise RenameUnsupported("renaming a notebook is not supported in a cluster (yet)")

    async def rooms(self) -> list[str]:
        names: dict[Any, Any] = await self.redis.hgetall(ROOMS)
        return sorted(_text(name) for name in names.values())
