"""Open websocket connections, so that access taken away ends them too.

Each connection is authenticated and authorized once, when it opens. When who
may do what changes (a logout, ``crdtnb users …``, a host's own admin action),
``ConnectionRegistry.recheck`` runs the same hooks again for every open
connection and closes those that lost access: 4401 when its credentials no
longer authenticate, 4403 when it may no longer read, or no longer write what
it could. Nothing is checked per message or per tick: only when told.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.requests import HTTPConnection
from starlette.types import Scope

from .auth import Action, Authenticate, Authorize, User, call_hook

logger = logging.getLogger("crdtnb.connections")

UNAUTHENTICATED = 4401
FORBIDDEN = 4403
INTERNAL_ERROR = 1011


class Closable(Protocol):
    def close(self, code: int, reason: str) -> None: ...


@dataclass(eq=False)
class OpenConnection:
    scope: Scope  # the websocket's, to authenticate it again
    user: User
    path: str  # normalised notebook path
    can_write: bool
    peer: Closable | None = None
    ended: tuple[int, str] | None = None

    def attach(self, peer: Closable) -> None:
        """The peer that carries the connection, once it runs."""
        self.peer = peer
        if self.ended is not None:
            peer.close(*self.ended)

    def end(self, code: int, reason: str) -> None:
        """Close after what is already queued; the peer applies nothing it receives from now on."""
        if self.ended is None:
            self.ended = (code, reason)
            if self.peer is not None:
                self.peer.close(code, reason)


@dataclass(eq=False)
class ConnectionRegistry:
    authenticate: Authenticate
    authorize: Authorize
    # Incremented by each recheck; a connection that was authenticated before the
    # latest one started, but registered after it, is checked on registration.
    generation: int = 0
    _open: set[OpenConnection] = field(default_factory=set)
    _checks: set[asyncio.Task[Any]] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self._open)

    def register(self, scope: Scope, user: User, path: str, can_write: bool, seen: int) -> OpenConnection:
        """Registers a connection until ``forget``. ``seen`` is the ``generation`` read
        before the connection was authenticated."""
        connection = OpenConnection(_for_recheck(scope), user, path, can_write)
        self._open.add(connection)
        if seen != self.generation:
            check = asyncio.get_running_loop().create_task(self._recheck_one(connection, {}))
            self._checks.add(check)
            check.add_done_callback(self._checks.discard)
        return connection

    def forget(self, connection: OpenConnection) -> None:
        self._open.discard(connection)

    @contextmanager
    def track(self, scope: Scope, user: User, path: str, can_write: bool, seen: int) -> Iterator[OpenConnection]:
        """Registers a connection for as long as the block runs."""
        connection = self.register(scope, user, path, can_write, seen)
        try:
            yield connection
        finally:
            self.forget(connection)

    async def recheck(self) -> int:
        """Authenticate and authorize every open connection again; close those
        that lost access. Returns how many were closed."""
        self.generation += 1
        allowed: dict[tuple[User, str, Action], bool] = {}  # one verdict per question in a pass
        closed = 0
        for connection in list(self._open):
            if connection.ended is None and await self._recheck_one(connection, allowed):
                closed += 1
        if closed:
            logger.info("access changed: closed %d connection(s)", closed)
        return closed

    async def _recheck_one(self, connection: OpenConnection, allowed: dict[tuple[User, str, Action], bool]) -> bool:
        try:
            verdict = await self._verdict(connection, allowed)
        except Exception:
            # Failing closed: the client may reconnect and be checked afresh.
            logger.exception("could not re-check %s on %s", connection.user.name, connection.path)
            verdict = (INTERNAL_ERROR, "could not re-check access: reconnect")
        if verdict is None:
            return False
        connection.end(*verdict)
        return True

    async def _verdict(self, connection: OpenConnection, allowed: dict[tuple[User, str, Action], bool]) -> tuple[int, str] | None:
        user = await call_hook(self.authenticate, HTTPConnection(connection.scope))
        if user is None or user.name != connection.user.name:
            return UNAUTHENTICATED, "no longer authenticated: sign in again"

        async def may(action: Action) -> bool:
            key = (user, connection.path, action)
            if key not in allowed:
                allowed[key] = bool(await call_hook(self.authorize, user, connection.path, action))
            return allowed[key]

        if not await may(Action.READ):
            return FORBIDDEN, f"{user.name} may no longer read {connection.path}"
        if connection.can_write and not await may(Action.WRITE):
            return FORBIDDEN, f"{user.name} may no longer write {connection.path}"
        return None


# What authenticating a connection again may look at: its request, not what the server
# and the app hung on its scope (a connection may stay open for days).
_REQUEST_KEYS = (
    "type",
    "http_version",
    "scheme",
    "server",
    "client",
    "root_path",
    "path",
    "raw_path",
    "query_string",
    "headers",
    "path_params",
)


def _for_recheck(scope: Scope) -> Scope:
    return {key: scope[key] for key in _REQUEST_KEYS if key in scope}


async def watch_changes(changed: Callable[[], bool], on_change: Callable[[], Awaitable[Any]], interval: float = 0.25) -> None:
    """Every ``interval`` seconds, ask ``changed`` (a cheap look, e.g. SQLite's
    data_version) and run ``on_change`` when it says so. Runs until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            if changed():
                await on_change()
        except Exception:
            logger.exception("watching for access changes")
