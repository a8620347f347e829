"""The embeddable application: routes, lifespan and the auth hooks.

``NotebookSync`` is the lower-level object a host mounts; ``create_app`` wraps it
in a complete Starlette app. Starlette does not run the lifespan of a mounted
app, so every endpoint refuses to work (with an error naming the fix) until the
host runs ``sync.lifespan``.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, Router, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from .accounts import AccountAuth
from .auth import Action, Authenticate, Authorize, User, allow_all, call_hook
from .bodies import capped
from .connections import ConnectionRegistry, watch_changes
from .fanout import Fanout
from .files import InvalidNotebook, NotebookFiles, NotebookNotFound, PathError
from .kernel import AgentSettings, KernelAgents
from .login import login_routes
from .pages import page_routes
from .rooms import RoomManager, RoomSettings
from .sandbox import SandboxMode, choose_sandbox
from .sessions import CSRF_HEADER, LoginLimiter, SessionSigner, load_secret
from .store import SQLiteStore, Store
from .transport import CloseCode, TransportLimits, run_peer
from .users import UserStore

logger = logging.getLogger("crdtnb.app")

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
MAX_CELLS_PER_REQUEST = 10_000
NOT_STARTED = (
    "crdtnb is not started: run its lifespan in the host app "
    "(Starlette(..., lifespan=sync.lifespan)); Starlette does not run lifespans of mounted apps"
)


Handler = Callable[["NotebookSync", Request, str], Awaitable[Response]]


def _api(action: Action) -> Callable[[Handler], Callable[["NotebookSync", Request], Awaitable[Response]]]:
    """An API endpoint: authenticate, authorize ``action`` on the notebook the URL
    names (in its canonical spelling: the one every action then uses; the server
    itself when there is none), and turn errors into statuses."""

    def wrap(handler: Handler) -> Callable[[NotebookSync, Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def endpoint(self: NotebookSync, request: Request) -> Response:
            raw = request.path_params.get("path")
            path = ""
            if raw is not None:
                try:
                    path = self.files.canonical(raw)
                except PathError as exc:
                    # Authenticate first: a stranger learns nothing about paths.
                    checked = await self._check_http(request, "", Action.READ, authorize=False)
                    return checked if isinstance(checked, Response) else _error(400, str(exc))
            checked = await self._check_http(request, path, action)
            if isinstance(checked, Response):
                return checked
            try:
                return await handler(self, request, path)
            except HTTPException:
                raise  # e.g. the body limit's 413: Starlette answers it
            except Exception as exc:
                return _file_error(exc)

        return endpoint

    return wrap


class NotebookSync:
    """The crdtnb service: mount ``sync.routes`` (or ``sync`` itself) and run ``sync.lifespan``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        state_dir: str | os.PathLike[str] | None = None,
        store: Store | None = None,
        authenticate: Authenticate | None = None,
        authorize: Authorize | None = None,
        token: str | None = None,
        settings: RoomSettings | None = None,
        limits: TransportLimits | None = None,
        compact_after_updates: int = 1000,
        fanout: Fanout | None = None,
        kernel_settings: AgentSettings | None = None,
        allowed_origins: Iterable[str] = (),
        kernel_sandbox: SandboxMode | str = SandboxMode.AUTO,
    ) -> None:
        self.files = NotebookFiles(root)
        self.state_dir = Path(state_dir) if state_dir else self.files.root / ".crdtnb"
        # Raises SandboxUnavailable when "bwrap" was asked for and cannot work.
        sandbox, sandbox_note = choose_sandbox(kernel_sandbox, self.files.root, hidden=[self.state_dir])
        self.kernels_isolated = sandbox is not None
        self.store = store or SQLiteStore(
            self.state_dir / "crdtnb.sqlite3", compact_threshold_rows=compact_after_updates
        )
        self.allowed_origins = {o.rstrip("/") for o in allowed_origins}
        self.accounts: AccountAuth | None = None
        if authenticate is None:
            # The daemon's own accounts, with the token (if any) as an admin credential.
            signer = SessionSigner(load_secret(self.state_dir))
            self.accounts = AccountAuth(UserStore(self.state_dir), signer, token, kernels_isolated=self.kernels_isolated)
            self.login_limiter = LoginLimiter()
            authenticate = self.accounts.authenticate
            authorize = authorize or self.accounts.authorize
        self.authenticate = authenticate
        self.authorize = authorize or allow_all
        self.rooms = RoomManager(self.files, self.store, settings, fanout)
        self.kernels = KernelAgents(self.rooms, replace(kernel_settings or AgentSettings(), sandbox=sandbox))
        self._log_isolation(sandbox_note)
        self.limits = limits or TransportLimits()
        self.connections = ConnectionRegistry(self.authenticate, self.authorize)
        self.started = False
        self._connections = 0
        self._router = Router(routes=self.routes)

    @property
    def routes(self) -> list[BaseRoute]:
        login: list[BaseRoute] = []
        if self.accounts is not None:
            login = login_routes(self.accounts.users, self.accounts.signer, self.login_limiter, self.origin_allowed)
        return capped(login + [
            Route("/api/session", self.session, methods=["GET"]),
            WebSocketRoute("/api/sync/{path:path}", _RawASGI(self.sync_endpoint)),
            Route("/api/health", self.health, methods=["GET"]),
            Route("/api/notebooks", self.list_notebooks, methods=["GET"]),
            # Action routes come before the catch-all notebook routes.
            Route("/api/notebooks/{path:path}/save", self.save_notebook, methods=["POST"]),
            Route("/api/notebooks/{path:path}/execute", self.execute, methods=["POST"]),
            Route("/api/notebooks/{path:path}/interrupt", self.interrupt, methods=["POST"]),
            Route("/api/notebooks/{path:path}/restart", self.restart, methods=["POST"]),
            Route("/api/notebooks/{path:path}/shutdown", self.shutdown, methods=["POST"]),
            Route("/api/notebooks/{path:path}/kernel", self.kernel_status, methods=["GET"]),
            Route("/api/notebooks/{path:path}", self.get_notebook, methods=["GET"]),
            Route("/api/notebooks/{path:path}", self.create_notebook, methods=["POST"]),
            *page_routes(),
        ])

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        await self.store.start()
        self.started = True
        watcher: asyncio.Task[None] | None = None
        if self.accounts is not None:
            # `crdtnb users …` changes access from another process: notice it within 0.25 s.
            changes = self.accounts.users.watch()
            watcher = asyncio.create_task(watch_changes(changes.changed, self.recheck_connections))
        try:
            yield
        finally:
            self.started = False
            if watcher is not None:
                watcher.cancel()
                changes.close()
            await self.kernels.close()
            await self.rooms.close()
            await self.store.close()
            logger.info("all rooms saved; store closed")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Lets a host ``Mount("/collab", app=sync)``."""
        await self._router(scope, receive, send)

    def _log_isolation(self, note: str) -> None:
        if self.kernels_isolated:
            logger.info("%s: a kernel sees only its notebook's directory of %s", note, self.files.root)
            return
        refused = " Runner roles limited with --path are refused." if self.accounts is not None else ""
        logger.warning(
            "kernels are NOT isolated (%s): anyone allowed to run code acts as this daemon's OS user "
            "(uid %d): they can read its secrets (the session key, accounts and update log in %s) and "
            "every file that user can, and rewrite any notebook.%s",
            note,
            os.getuid(),
            self.state_dir,
            refused,
        )

    # -- auth ------------------------------------------------------------------

    async def _user(self, conn: HTTPConnection) -> User | None:
        return await call_hook(self.authenticate, conn)

    async def _allowed(self, user: User, path: str, action: Action) -> bool:
        return bool(await call_hook(self.authorize, user, path, action))

    def origin_allowed(self, conn: HTTPConnection) -> bool:
        """Browsers send Origin: it must be this server's own, or one allowed explicitly.
        Clients that send none (scripts) are judged by their credentials alone."""
        origin = conn.headers.get("origin")
        if origin is None:
            return True
        origin = origin.rstrip("/")
        scheme = {"ws": "http", "wss": "https"}.get(conn.url.scheme, conn.url.scheme)
        own = f"{scheme}://{conn.headers.get('host', '')}"
        return hmac.compare_digest(origin, own) or origin in self.allowed_origins

    async def _check_http(self, request: Request, path: str, action: Action, authorize: bool = True) -> User | Response:
        if not self.started:
            return _error(503, NOT_STARTED)
        user = await self._user(request)
        if user is None:
            return _error(401, "authentication required: sign in, or pass a token as ?token= or 'Authorization: token …'")
        if request.method not in SAFE_METHODS and user.csrf is not None:
            # Cookie-authenticated: the browser sends the cookie on its own, so prove intent.
            if not self.origin_allowed(request):
                return _error(403, "cross-site request refused")
            if not hmac.compare_digest(request.headers.get(CSRF_HEADER, ""), user.csrf):
                return _error(403, "missing or wrong X-CSRF-Token header")
        if authorize and not await self._allowed(user, path, action):
            return _error(403, f"{user.name} may not {action.value} {path or 'this server'}")
        return user

    # -- websocket -----------------------------------------------------------------

    async def sync_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()
        path = websocket.path_params["path"]
        if not self.started:
            await websocket.close(CloseCode.INTERNAL_ERROR, "crdtnb is not started (host must run sync.lifespan)")
            return
        if not self.origin_allowed(websocket):
            # Cross-site websocket hijacking: a foreign page riding on a user's cookie.
            await websocket.close(CloseCode.FORBIDDEN, "origin not allowed")
            return
        seen = self.connections.generation  # before authenticating: see ConnectionRegistry.track
        user = await self._user(websocket)
        if user is None:
            await websocket.close(CloseCode.UNAUTHENTICATED, "authentication required")
            return
        try:
            name = self.files.canonical(path)
        except PathError as exc:
            await websocket.close(CloseCode.BAD_PATH, str(exc))
            return
        if not await self._allowed(user, name, Action.READ):
            await websocket.close(CloseCode.FORBIDDEN, f"{user.name} may not read {name}")
            return
        can_write = await self._allowed(user, name, Action.WRITE)
        try:
            room = await self.rooms.acquire(name)
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
        except Exception:
            logger.exception("opening %s failed", name)
            await websocket.close(CloseCode.INTERNAL_ERROR, "the notebook could not be opened")
            return
        self._connections += 1
        client = websocket.client
        label = f"{name} {user.name}@{client.host}:{client.port}" if client else f"{name} {user.name}"
        try:
            with self.connections.track(scope, user, name, can_write, seen) as tracked:
                await run_peer(
                    websocket, send, room, user=user, can_write=can_write, limits=self.limits, label=label, on_open=tracked.attach
                )
        finally:
            self._connections -= 1
            self.rooms.release(room)

    async def recheck_connections(self) -> int:
        """Authenticate and authorize every open websocket again, and close those
        that lost access (4401: no longer authenticated; 4403: may no longer read,
        or no longer write). The daemon's own accounts do this on every change;
        a host with its own hooks calls it after changing who may do what.
        Returns how many connections were closed."""
        return await self.connections.recheck()

    # -- REST ----------------------------------------------------------------------

    async def session(self, request: Request) -> Response:
        """Who the caller is, what they may do here, and the CSRF token the page must send."""
        if not self.started:
            return _error(503, NOT_STARTED)
        user = await self._user(request)
        if user is None:
            return _error(401, "not signed in")
        role = self.accounts.role(user, "") if self.accounts else None
        return JSONResponse(
            {
                "user": user.name,
                "display_name": user.display_name or None,
                "role": role.label if role else None,
                "csrf": user.csrf,
                "login": self.accounts is not None,
            }
        )

    async def health(self, request: Request) -> Response:
        if not self.started:
            return _error(503, NOT_STARTED)
        return JSONResponse({"status": "ok", "rooms": len(self.rooms.rooms), "connections": self._connections})

    @_api(Action.READ)
    async def list_notebooks(self, request: Request, path: str) -> Response:
        entries = await asyncio.to_thread(self.files.list)
        return JSONResponse(
            {
                "notebooks": [
                    {"path": e.path, "name": e.name, "size": e.size, "last_modified": e.last_modified}
                    for e in entries
                ]
            }
        )

    @_api(Action.READ)
    async def get_notebook(self, request: Request, path: str) -> Response:
        async with self.rooms.hold(path) as room:
            # Cell exports are cached; the ones that changed are computed in slices.
            await room.index.warm()
            return Response(room.index.export_json(), media_type="application/json")

    @_api(Action.WRITE)
    async def create_notebook(self, request: Request, path: str) -> Response:
        nb = await asyncio.to_thread(self.files.create, path)
        return JSONResponse({"path": path, "notebook": nb}, status_code=201)

    @_api(Action.WRITE)
    async def save_notebook(self, request: Request, path: str) -> Response:
        """Write the notebook to its file now (Ctrl+S)."""
        async with self.rooms.hold(path) as room:
            file_sync = self.rooms.file_sync(room.name)
            assert file_sync is not None
            await room.flushed()
            saved_at = await file_sync.save()
            if saved_at is None:
                return _error(409, file_sync.error or "the notebook could not be saved")
            return JSONResponse({"saved_at": saved_at})

    # -- kernels -------------------------------------------------------------------

    @_api(Action.EXECUTE)
    async def execute(self, request: Request, path: str) -> Response:
        try:
            body = await request.json()
            cell_ids = body["cell_ids"]
            if not isinstance(cell_ids, list) or not all(isinstance(c, str) for c in cell_ids):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _error(400, 'expected a JSON body {"cell_ids": ["<cell id>", ...]}')
        if len(cell_ids) > MAX_CELLS_PER_REQUEST:
            return _error(413, f"at most {MAX_CELLS_PER_REQUEST} cells per request")
        queued = await self.kernels.execute(path, cell_ids)
        return JSONResponse({"queued": queued, **self.kernels.status(path)}, status_code=202)

    @_api(Action.EXECUTE)
    async def interrupt(self, request: Request, path: str) -> Response:
        await self.kernels.interrupt(path)
        return JSONResponse(self.kernels.status(path))

    @_api(Action.EXECUTE)
    async def restart(self, request: Request, path: str) -> Response:
        await self.kernels.restart(path)
        return JSONResponse(self.kernels.status(path))

    @_api(Action.EXECUTE)
    async def shutdown(self, request: Request, path: str) -> Response:
        await self.kernels.shutdown(path)
        return JSONResponse(self.kernels.status(path))

    @_api(Action.READ)
    async def kernel_status(self, request: Request, path: str) -> Response:
        return JSONResponse(self.kernels.status(path))


class _RawASGI:
    """Routes to a bound method as a plain ASGI app (Starlette would otherwise
    call a method endpoint with a WebSocket, hiding the connection's ``send``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _file_error(exc: Exception) -> Response:
    if isinstance(exc, PathError):
        return _error(400, str(exc))
    if isinstance(exc, NotebookNotFound):
        return _error(404, str(exc))
    if isinstance(exc, FileExistsError):
        return _error(409, str(exc))
    if isinstance(exc, InvalidNotebook):
        return _error(422, str(exc))
    # Anything else is our fault: logged in full, answered without internals.
    logger.exception("request failed")
    return _error(500, "internal error (logged by the server)")


def create_app(
    root: str | os.PathLike[str],
    **options: Any,
) -> Starlette:
    """A complete Starlette app serving crdtnb at the root of the URL space."""
    sync = NotebookSync(root, **options)
    app = Starlette(routes=sync.routes, lifespan=sync.lifespan)
    app.state.sync = sync
    return app


__all__ = ["NotebookSync", "create_app"]
