"""The composition root: what a host mounts (``NotebookSync``) and the complete app
(``create_app``).

``NotebookSync`` assembles the daemon (daemon.py) from one ``Settings`` tree, the
auth hooks, the HTTP API (api.py), the sync endpoint (sync_endpoint.py) and the
extensions: the daemon's own (the .ipynb files, log compaction, kernels, file operations) first, then
the host's. Starlette does not run the lifespan of a mounted app, so every endpoint
refuses to work (with an error naming the fix) until the host runs ``sync.lifespan``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Router, WebSocketRoute
from starlette.types import Receive, Scope, Send

from .accounts import AccountAuth
from .api import Api
from .auth import Authenticate, Authorize, allow_all
from .bodies import capped
from .cluster import Cluster
from .cluster.limits import RedisLoginLimiter
from .compaction import Compaction
from .connections import ConnectionRegistry, watch_changes
from .contents import Contents
from .daemon import Daemon
from .fanout import Fanout
from .filesync import FileSyncExtension
from .kernel import Kernels
from .login import login_routes
from .pages import page_routes
from .sandbox import choose_sandbox
from .sessions import LoginLimiter, LoginLimits, SessionSigner, load_secret
from .settings import Settings
from .store import Store
from .sync_endpoint import SyncEndpoint
from .users import UserStore

logger = logging.getLogger("crdtnb.app")


class NotebookSync:
    """The crdtnb service: mount it (or its ``routes``) and run its ``lifespan``.

    ``settings`` is the whole tree (settings.py); ``root``, ``token`` and ``state_dir``
    are shortcuts for its fields. Without ``authenticate``, the daemon's own accounts
    are used (with ``token`` as an admin credential)."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        settings: Settings | None = None,
        token: str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        store: Store | None = None,
        fanout: Fanout | None = None,
        authenticate: Authenticate | None = None,
        authorize: Authorize | None = None,
        extensions: Iterable[object] = (),
    ) -> None:
        settings = settings or Settings()
        if root is not None:
            settings = replace(settings, root=Path(root))
        if state_dir is not None:
            settings = replace(settings, state_dir=Path(state_dir))
        if token is not None:
            settings = replace(settings, access=replace(settings.access, token=token))
        self.settings = settings
        # Raises when a sandbox was asked for and cannot work on this machine.
        launcher, self.isolation = choose_sandbox(
            settings.kernels.sandbox, settings.root.resolve(), hidden=[settings.state_path]
        )
        self.kernels_isolated = launcher is not None
        self.files_extension = FileSyncExtension(settings.files)
        self.kernels = Kernels(settings.kernels, launcher)
        self.contents = Contents()
        builtin: list[object] = [
            self.files_extension,
            Compaction(settings.rooms.compact_min_interval),
            self.kernels,
            self.contents,
        ]
        self.cluster: Cluster | None = None
        ownership = None
        if settings.cluster.redis:
            # Several daemons, one Redis: the rooms' logs, leases and presence live there.
            self.cluster = Cluster(settings.cluster, compact_rows=settings.rooms.compact_after)
            store, fanout, ownership = self.cluster.store, self.cluster.fanout, self.cluster.leases
            builtin.append(self.cluster)
        self.daemon = Daemon(
            settings, store=store, fanout=fanout, ownership=ownership, extensions=[*builtin, *extensions]
        )
        self.accounts: AccountAuth | None = None
        # A cluster counts failed logins in Redis: the limit holds across daemons.
        self.login_limiter: LoginLimits = (
            RedisLoginLimiter(self.cluster.redis) if self.cluster is not None else LoginLimiter()
        )
        if authenticate is None:
            state = settings.state_path
            self.accounts = AccountAuth(
                UserStore(state),
                SessionSigner(load_secret(state)),
                settings.access.token,
                kernels_isolated=self.kernels_isolated,
            )
            authenticate = self.accounts.authenticate
            authorize = authorize or self.accounts.authorize
        self.api = Api(
            self.daemon, authenticate, authorize or allow_all, settings.access.allowed_origins, self.accounts, self.cluster
        )
        self.connections = ConnectionRegistry(self.api.authenticate, self.api.authorize)
        self.sync = SyncEndpoint(self.api, settings.transport, self.connections)
        self._routes = self._build_routes()
        self._router = Router(routes=self._routes)
        self._log_isolation()

    # -- parts ------------------------------------------------------------------------

    @property
    def files(self) -> Any:
        return self.daemon.files

    @property
    def rooms(self) -> Any:
        return self.daemon.rooms

    @property
    def store(self) -> Store:
        return self.daemon.store

    @property
    def state_dir(self) -> Any:
        return self.daemon.state_dir

    @property
    def started(self) -> bool:
        return self.daemon.started

    @property
    def routes(self) -> list[BaseRoute]:
        return list(self._routes)

    def _build_routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = []
        if self.accounts is not None:
            routes += login_routes(
                self.accounts.users, self.accounts.signer, self.login_limiter, self.api.origin_allowed
            )
        routes.append(WebSocketRoute("/api/sync/{path:path}", self.sync))
        # Extensions' routes come before the catch-all notebook routes.
        for extension in self.daemon.extensions:
            routes += getattr(extension, "routes", lambda api: ())(self.api)
        routes += self.api.routes()
        routes += page_routes()
        return capped(routes)

    # -- running ----------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        await self.daemon.start()
        watcher: asyncio.Task[None] | None = None
        if self.accounts is not None:
            # `crdtnb users …` changes access from another process: notice it within 0.25 s.
            changes = self.accounts.users.watch()
            watcher = asyncio.create_task(watch_changes(changes.changed, self.recheck_connections))
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
                changes.close()
            await self.daemon.stop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Lets a host ``Mount("/collab", app=sync)``."""
        await self._router(scope, receive, send)

    async def recheck_connections(self) -> int:
        """Authenticate and authorize every open websocket again, and close those
        that lost access (4401: no longer authenticated; 4403: may no longer read,
        or no longer write). The daemon's own accounts do this on every change;
        a host with its own hooks calls it after changing who may do what.
        Returns how many connections were closed."""
        return await self.connections.recheck()

    def _log_isolation(self) -> None:
        if self.kernels_isolated:
            logger.info("%s: a kernel sees only its notebook's directory of %s", self.isolation, self.files.root)
            return
        refused = " Runner roles limited with --path are refused." if self.accounts is not None else ""
        logger.warning(
            "kernels are NOT isolated (%s): anyone allowed to run code acts as this daemon's OS user "
            "(uid %d): they can read its secrets (the session key, accounts and update log in %s) and "
            "every file that user can, and rewrite any notebook.%s",
            self.isolation,
            os.getuid(),
            self.state_dir,
            refused,
        )


def create_app(
    root: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Starlette:
    """A complete Starlette app serving crdtnb at the root of the URL space
    (``options`` as for NotebookSync)."""
    sync = NotebookSync(root, **options)
    app = Starlette(routes=sync.routes, lifespan=sync.lifespan)
    app.state.sync = sync
    return app


__all__ = ["NotebookSync", "create_app"]
