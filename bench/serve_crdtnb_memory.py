"""crdtnb with its durable log switched off: the same app, an in-memory Store.

Only for measuring what the SQLite log costs (bench/run.py's "crdtnb-mem" server):
nothing survives the process. Usage: python bench/serve_crdtnb_memory.py ROOT --port P --token T
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import uvicorn

from crdtnb import RoomSettings, Settings, create_app


class MemoryStore:
    """crdtnb.store.Store kept in a dict: appends cost a list.extend and one loop turn."""

    def __init__(self) -> None:
        self._logs: dict[str, list[bytes]] = {}
        self._meta: dict[tuple[str, str], bytes] = {}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def append(self, room: str, updates: Sequence[bytes]) -> None:
        self._logs.setdefault(room, []).extend(bytes(u) for u in updates)

    async def append_owned(self, room: str, updates: Sequence[bytes]) -> None:
        await self.append(room, updates)

    async def seed(self, room: str, updates: Sequence[bytes]) -> bool:
        if self._logs.get(room):
            return False
        self._logs[room] = [bytes(u) for u in updates]
        return True

    async def load(self, room: str) -> list[bytes]:
        return list(self._logs.get(room, []))

    async def compact(self, room: str) -> None:
        pass

    def needs_compaction(self, room: str) -> bool:
        return False

    async def log_size(self, room: str) -> tuple[int, int]:
        log = self._logs.get(room, [])
        return len(log), sum(map(len, log))

    async def get_meta(self, room: str, key: str) -> bytes | None:
        return self._meta.get((room, key))

    async def set_meta(self, room: str, key: str, value: bytes) -> None:
        self._meta[(room, key)] = bytes(value)

    async def delete_room(self, room: str) -> None:
        self._logs.pop(room, None)
        for key in [k for k in self._meta if k[0] == room]:
            del self._meta[key]

    async def rename_room(self, old: str, new: str) -> None:
        if old == new:
            return
        await self.delete_room(new)
        if old in self._logs:
            self._logs[new] = self._logs.pop(old)
        for key in [k for k in self._meta if k[0] == old]:
            self._meta[(new, key[1])] = self._meta.pop(key)

    async def rooms(self) -> list[str]:
        return sorted(self._logs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--state-dir", default=None)
    parser.add_argument("--idle-timeout", type=float, default=3600)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    app = create_app(
        args.root,
        token=args.token,
        state_dir=args.state_dir,
        store=MemoryStore(),
        settings=Settings(rooms=RoomSettings(idle_timeout=args.idle_timeout)),
    )
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        ws_max_size=16 * 2**20,
        ws_per_message_deflate=False,  # as `crdtnb serve`: the two differ only in the store
        lifespan="on",
    )


if __name__ == "__main__":
    main()
