"""The HTTP API: who is calling (authenticate), what they may do (authorize), the routes
of notebooks, and how errors become statuses.

Every endpoint goes through ``Api.route``: the notebook path of its URL is put in its
canonical spelling first (the one every action then uses), the caller is authenticated
and authorized for the route's action on that path, unsafe cookie-authenticated requests
must prove intent (Origin and X-CSRF-Token), and exceptions map to statuses in one place
(``status_of``). An unexpected error is a 500 that says nothing about the server.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from jupyter_client.kernelspec import NoSuchKernel
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .auth import Action, Authenticate, Authorize, User, call_hook
from .files import InvalidNotebook, NotebookNotFound, PathError
from .sessions import CSRF_HEADER

if TYPE_CHECKING:
    from .accounts import AccountAuth
    from .cluster import Cluster
    from .daemon import Daemon

logger = logging.getLogger("crdtnb.api")

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
NOT_STARTED = (
    "crdtnb is not started: run its lifespan in the host app "
    "(Starlette(..., lifespan=sync.lifespan)); Starlette does not run lifespans of mounted apps"
)

Handler = Callable[["Api", Request, str], Awaitable[Response]]


class RequestError(Exception):
    """A request the server refuses with a status and a message for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def json_object(request: Request) -> dict[str, Any]:
    """The request's body as a JSON object ({} when it has none; 400 otherwise)."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise RequestError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    return body


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def status_of(exc: Exception) -> tuple[int, str]:
    """The status and message a failed request answers with."""
    if isinstance(exc, RequestError):
        return exc.status, exc.message
    if isinstance(exc, PathError):
        return 400, str(exc)
    if isinstance(exc, NotebookNotFound):
        return 404, str(exc)
    if isinstance(exc, FileExistsError):
        return 409, str(exc)
    if isinstance(exc, InvalidNotebook):
        return 422, str(exc)
    if isinstance(exc, NoSuchKernel):
        return 422, f"no kernel named {exc.name!r} is installed"
    # Anything else is our fault: logged in full, answered without internals.
    logger.error("request failed", exc_info=exc)
    return 500, "internal error (logged by the server)"


class Api:
    """Authentication, authorization and the notebook routes of one daemon."""

    def __init__(
        self,
        daemon: Daemon,
        authenticate: Authenticate,
        authorize: Authorize,
        allowed_origins: tuple[str, ...] = (),
        accounts: AccountAuth | None = None,
        cluster: Cluster | None = None,
    ) -> None:
        self.daemon = daemon
        self.cluster = cluster
        self.authenticate = authenticate
        self.authorize = authorize
        self.accounts = accounts
        self.allowed_origins = {origin.rstrip("/") for origin in allowed_origins}

    # -- who and what ------------------------------------------------------------------

    async def user(self, conn: HTTPConnection) -> User | None:
        return await call_hook(self.authenticate, conn)  # type: ignore[no-any-return]

    async def allowed(self, user: User, path: str, action: Action) -> bool:
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

    async def check(self, request: Request, path: str, action: Action | None) -> User:
        """The authenticated caller, allowed to do ``action`` on ``path`` (none: only
        authenticated); raises RequestError otherwise."""
        if not self.daemon.started:
            raise RequestError(503, NOT_STARTED)
        user = await self.user(request)
        if user is None:
            raise RequestError(401, "authentication required: sign in, or pass a token as ?token= or 'Authorization: token …'")
        if request.method not in SAFE_METHODS and user.csrf is not None:
            # Cookie-authenticated: the browser sends the cookie on its own, so prove intent.
            if not self.origin_allowed(request):
                raise RequestError(403, "cross-site request refused")
            if not hmac.compare_digest(request.headers.get(CSRF_HEADER, ""), user.csrf):
                raise RequestError(403, "missing or wrong X-CSRF-Token header")
        if action is not None and not await self.allowed(user, path, action):
            raise RequestError(403, f"{user.name} may not {action.value} {path or 'this server'}")
        return user

    # -- routes ------------------------------------------------------------------------

    def route(
        self,
        pattern: str,
        handler: Handler,
        *,
        methods: list[str],
        action: Action,
        folder: bool = False,
        max_body_size: int | None = None,
    ) -> Route:
        """A route whose handler runs only for a caller allowed to do ``action`` on the
        notebook the URL names (``{path}``; the server itself when there is none).
        The handler gets the canonical path. With ``folder``, ``{path}`` names a folder
        ("" the root), authorized as its name with a trailing "/" ("demo/"; the root as "")."""

        async def endpoint(request: Request) -> Response:
            try:
                raw = request.path_params.get("path")
                path = ""
                if raw is not None:
                    try:
                        path = self.daemon.files.normalize_folder(raw) if folder else self.daemon.files.canonical(raw)
                    except PathError:
                        # Authenticate first: a stranger learns nothing about paths.
                        await self.check(request, "", None)
                        raise
                await self.check(request, f"{path}/" if folder and path else path, action)
                return await handler(self, request, path)
            except HTTPException:
                raise  # e.g. the body limit's 413: Starlette answers it
            except Exception as exc:
                status, message = status_of(exc)
                return error(status, message)

        endpoint.__name__ = getattr(handler, "__name__", "endpoint")
        return Route(pattern, endpoint, methods=methods, max_body_size=max_body_size)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/session", self.session, methods=["GET"]),
            Route("/api/health", self.health, methods=["GET"]),
            self.route("/api/notebooks", list_notebooks, methods=["GET"], action=Action.READ),
            self.route("/api/notebooks/{path:path}", get_notebook, methods=["GET"], action=Action.READ),
            self.route("/api/notebooks/{path:path}", create_notebook, methods=["POST"], action=Action.WRITE),
        ]

    async def session(self, request: Request) -> Response:
        """Who the caller is, what they may do here, and the CSRF token the page must send."""
        if not self.daemon.started:
            return error(503, NOT_STARTED)
        user = await self.user(request)
        if user is None:
            return error(401, "not signed in")
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
        if not self.daemon.started:
            return error(503, NOT_STARTED)
        rooms = self.daemon.rooms.rooms
        body: dict[str, Any] = {
            "status": "ok",
            "node": self.daemon.ownership.node,
            "rooms": len(rooms),
            "connections": sum(len(room.peers) for room in rooms.values()),
        }
        if self.cluster is not None:
            body["cluster"] = await self.cluster.info()
            if body["cluster"]["redis"] != "ok":
                body["status"] = "degraded: Redis cannot be reached"
                return JSONResponse(body, status_code=503)
        return JSONResponse(body)


# -- the notebook routes -------------------------------------------------------------------


async def list_notebooks(api: Api, request: Request, path: str) -> Response:
    entries = await asyncio.to_thread(api.daemon.files.list)
    notebooks: list[dict[str, Any]] = [
        {"path": e.path, "name": e.name, "size": e.size, "last_modified": e.last_modified} for e in entries
    ]
    return JSONResponse({"notebooks": notebooks})


async def get_notebook(api: Api, request: Request, path: str) -> Response:
    """The server's current document as nbformat JSON, outputs included."""
    async with api.daemon.rooms.hold(path) as room:
        # Cell exports are cached; the ones that changed are computed in slices.
        await room.index.warm()
        return Response(room.index.export_json(), media_type="application/json")


async def create_notebook(api: Api, request: Request, path: str) -> Response:
    nb = await asyncio.to_thread(api.daemon.files.create, path)
    return JSONResponse({"path": path, "notebook": nb}, status_code=201)
