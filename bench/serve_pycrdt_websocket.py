"""The pycrdt-websocket peer: its WebsocketServer behind its ASGIServer, under uvicorn,
as Jupyter's collaboration stack runs it (no store: a pure relay with server-held docs).

Rooms are never auto-cleaned (pycrdt-websocket 0.16.5 stops syncing new rooms after the
first auto-clean, as seen in our own runs), and exceptions go to pycrdt-websocket's own
``exception_logger``, as Jupyter's collaboration server configures it: without it, one send to a
client that just left (uvicorn's ClientDisconnected) ends the room's task group and with it the
whole WebsocketServer (seen in this harness's reconnect test). Usage: python bench/serve_pycrdt_websocket.py --port P
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from pycrdt.websocket import ASGIServer, WebsocketServer, exception_logger
from uvicorn_main import serve  # bench/ is on sys.path when run as a script


def build_app():
    websocket_server = WebsocketServer(auto_clean_rooms=False, exception_handler=exception_logger)
    asgi = ASGIServer(websocket_server)

    @asynccontextmanager
    async def running():
        async with websocket_server:
            yield

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            async with running():
                message = await receive()
                assert message["type"] == "lifespan.startup"
                await send({"type": "lifespan.startup.complete"})
                message = await receive()
                await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] == "http":  # a readiness probe answers 200
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await asgi(scope, receive, send)

    return app


def main() -> None:
    serve(build_app())


if __name__ == "__main__":
    main()
