"""``WS /api/sync/{path}``: admitting a websocket into a room.

The connection is accepted, then checked in order: the daemon runs, the Origin is this
server's (or allowed), the caller is authenticated, the path names a notebook, the caller
may read it; then its room is opened and the socket is served as one of its peers
(transport.run_peer) until either side closes. Each refusal is a close code with a
reason; the registry of open connections lets access changes close them later.
"""

from __future__ import annotations

import logging
from typing import cast

from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from .api import Api
from .auth import Action
from .connections import ConnectionRegistry, OpenConnection
from .files import InvalidNotebook, NotebookNotFound, PathError
from .settings import TransportLimits
from .store import StoreUnavailable
from .transport import CloseCode, DetachedPeer, run_peer

logger = logging.getLogger("crdtnb.sync")


class SyncEndpoint:
    """A plain ASGI app (Starlette would hide the connection's ``send`` from a method
    endpoint; the transport writes through it directly)."""

    def __init__(self, api: Api, limits: TransportLimits, connections: ConnectionRegistry) -> None:
        self.api = api
        self.limits = limits
        self.connections = connections

    def _ended(self, peer: DetachedPeer) -> None:
        self.connections.forget(cast(OpenConnection, peer.registration))
        self.api.daemon.rooms.release(peer.room)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()
        api, daemon = self.api, self.api.daemon
        if not daemon.started:
            await websocket.close(CloseCode.INTERNAL_ERROR, "crdtnb is not started (host must run sync.lifespan)")
            return
        if not api.origin_allowed(websocket):
            # Cross-site websocket hijacking: a foreign page riding on a user's cookie.
            await websocket.close(CloseCode.FORBIDDEN, "origin not allowed")
            return
        seen = self.connections.generation  # before authenticating: see ConnectionRegistry.track
        user = await api.user(websocket)
        if user is None:
            await websocket.close(CloseCode.UNAUTHENTICATED, "authentication required")
            return
        try:
            name = daemon.files.canonical(websocket.path_params["path"])
        except PathError as exc:
            await websocket.close(CloseCode.BAD_PATH, str(exc))
            return
        if not await api.allowed(user, name, Action.READ):
            await websocket.close(CloseCode.FORBIDDEN, f"{user.name} may not read {name}")
            return
        can_write = await api.allowed(user, name, Action.WRITE)
        try:
            room = await daemon.rooms.acquire(name)
        except NotebookNotFound as exc:
            await websocket.close(CloseCode.NOT_FOUND, str(exc))
            return
        except InvalidNotebook as exc:
            logger.error("%s", exc)
            await websocket.close(CloseCode.INVALID_NOTEBOOK, str(exc)[:120])
            return
        except PathError as exc:
            await websocket.close(CloseCode.BAD_PATH, str(exc))
            return
        except StoreUnavailable:
            await websocket.close(CloseCode.TRY_AGAIN_LATER, "the store is unreachable: edits cannot be made durable")
            return
        except Exception:
            logger.exception("opening %s failed", name)
            await websocket.close(CloseCode.INTERNAL_ERROR, "the notebook could not be opened")
            return
        client = websocket.client
        label = f"{name} {user.name}@{client.host}:{client.port}" if client else f"{name} {user.name}"
        direct = scope.get("extensions", {}).get("crdtnb.direct_frames")
        if direct is not None:
            # The server lets the connection leave ASGI: it costs no task from here on.
            tracked = self.connections.register(scope, user, name, can_write, seen)
            peer = DetachedPeer(
                direct, room, user=user, can_write=can_write, limits=self.limits, label=label, stats=daemon.stats, on_end=self._ended
            )
            peer.registration = tracked
            tracked.attach(peer)
            peer.start()
            return
        try:
            with self.connections.track(scope, user, name, can_write, seen) as tracked:
                await run_peer(
                    websocket,
                    send,
                    room,
                    user=user,
                    can_write=can_write,
                    limits=self.limits,
                    label=label,
                    on_open=tracked.attach,
                    stats=daemon.stats,
                )
        finally:
            daemon.rooms.release(room)
