"""A reference floor, not a product: the least a Python relay under uvicorn can do per delivery.

A bare ASGI app (no Starlette, no CRDT, no log, no per-peer queue or task): every ``0,2`` update
a client sends is written to every other connection of its room with an awaited ``send``;
a step1 is answered with an empty step2. Whatever a uvicorn-based server spends per delivery
above this is its own; below this, no Python server on uvicorn can go. bench/run.py runs it in
the fan-out only.

Usage: python bench/serve_uvicorn_floor.py --port P
"""

from __future__ import annotations

import asyncio
import os
from collections import deque

from uvicorn_main import serve  # bench/ is on sys.path when run as a script

EMPTY_STEP2 = b"\x00\x01\x02\x00\x00"
# FLOOR_WRITER_TASKS=1: deliver through a queue and a writer task per connection, as crdtnb's
# transport does, to measure what that design costs per delivery.
WRITER_TASKS = os.environ.get("FLOOR_WRITER_TASKS") == "1"


class QueuedPeer:
    def __init__(self, send) -> None:
        self.send = send
        self.queue: deque = deque()
        self.ready = asyncio.Event()
        self.task = asyncio.create_task(self.run())

    def put(self, message) -> None:
        self.queue.append(message)
        self.ready.set()

    async def run(self) -> None:
        while True:
            await self.ready.wait()
            self.ready.clear()
            while self.queue:
                await self.send(self.queue.popleft())


def build_app():
    rooms: dict[str, set] = {}

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        peers = rooms.setdefault(scope["path"], set())
        me = QueuedPeer(send) if WRITER_TASKS else send
        peers.add(me)
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes")
                if not data or len(data) < 2 or data[0] != 0:
                    continue
                if data[1] == 0:
                    await send({"type": "websocket.send", "bytes": EMPTY_STEP2})
                elif data[1] == 2:
                    out = {"type": "websocket.send", "bytes": data}
                    for peer in list(peers):
                        if peer is me:
                            continue
                        if WRITER_TASKS:
                            peer.put(out)
                            continue
                        try:
                            await peer(out)
                        except Exception:
                            peers.discard(peer)
        finally:
            peers.discard(me)
            if WRITER_TASKS:
                me.task.cancel()

    return app


def main() -> None:
    serve(build_app())


if __name__ == "__main__":
    main()
