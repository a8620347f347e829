"""Reference floors, not products: the least a Python relay can do per delivery on a given
websocket server, each written against that server's own API (no ASGI).

Issue 14 asks for "the floor of each server option for `crdtnb serve`, measured side by side".
`serve_uvicorn_floor.py` is the floor of uvicorn's ASGI websockets (the path crdtnb takes until
a connection is admitted); this file adds the servers crdtnb could run on instead:

- ``websockets``: the websockets library's own asyncio server; a relayed update goes to the
  room's other connections with ``websockets.broadcast`` (its fan-out API, no await per peer);
- ``picows``: picows, a Cython websocket server driven by callbacks: a frame arrives in
  ``on_ws_frame`` and is written to each peer's transport at once.

Every ``0,2`` update a client sends is written to every other connection of its room (the URL
path); a step1 is answered with an empty step2; permessage-deflate is off. bench/run.py runs
them in the fan-out only, when asked (``--kinds websockets-floor,picows-floor``).

Usage: python bench/serve_floor.py {websockets,picows} --port P
"""

from __future__ import annotations

import argparse
import asyncio
from http import HTTPStatus
from typing import Any

EMPTY_STEP2 = b"\x00\x01\x02\x00\x00"


async def serve_websockets(port: int) -> None:
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    rooms: dict[str, set[ServerConnection]] = {}

    async def relay(ws: ServerConnection) -> None:
        peers = rooms.setdefault(ws.request.path if ws.request else "/", set())
        peers.add(ws)
        try:
            async for data in ws:
                if not isinstance(data, bytes) or len(data) < 2 or data[0] != 0:
                    continue
                if data[1] == 0:
                    await ws.send(EMPTY_STEP2)
                elif data[1] == 2:
                    broadcast([peer for peer in peers if peer is not ws], data)
        finally:
            peers.discard(ws)

    def health(connection: ServerConnection, request: Any) -> Any:
        if "upgrade" not in request.headers:  # the harness's readiness probe: a plain GET
            return connection.respond(HTTPStatus.OK, "ok\n")
        return None

    async with serve(
        relay, "127.0.0.1", port, compression=None, max_size=64 * 2**20, ping_interval=None, process_request=health
    ):
        await asyncio.get_running_loop().create_future()


async def serve_picows(port: int) -> None:
    from picows import (
        WSFrame,
        WSListener,
        WSMsgType,
        WSTransport,
        WSUpgradeRequest,
        WSUpgradeResponse,
        WSUpgradeResponseWithListener,
        ws_create_server,
    )

    rooms: dict[str, set[WSTransport]] = {}

    class Relay(WSListener):  # type: ignore[misc]
        def __init__(self, room: str) -> None:
            self.peers = rooms.setdefault(room, set())
            self.transport: WSTransport | None = None

        def on_ws_connected(self, transport: WSTransport) -> None:
            self.transport = transport
            self.peers.add(transport)

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            self.peers.discard(transport)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
                return
            if frame.msg_type != WSMsgType.BINARY:
                return
            data = frame.get_payload_as_bytes()
            if len(data) < 2 or data[0] != 0:
                return
            if data[1] == 0:
                transport.send(WSMsgType.BINARY, EMPTY_STEP2)
            elif data[1] == 2:
                for peer in self.peers:
                    if peer is not transport:
                        peer.send(WSMsgType.BINARY, data)

    def listener(request: WSUpgradeRequest) -> Any:
        if "upgrade" not in {str(name).lower() for name in request.headers}:  # the readiness probe
            return WSUpgradeResponseWithListener(WSUpgradeResponse.create_ok_response(b"ok\n"), None)
        path = request.path
        return Relay(path.decode() if isinstance(path, bytes) else str(path))

    server = await ws_create_server(listener, "127.0.0.1", port, max_frame_size=64 * 2**20)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("server", choices=("websockets", "picows"))
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()  # as uvicorn (and so crdtnb serve) runs
    except ImportError:
        pass
    asyncio.run({"websockets": serve_websockets, "picows": serve_picows}[args.server](args.port))


if __name__ == "__main__":
    main()
