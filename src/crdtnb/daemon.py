"""The running core that extensions see: the settings, the notebook files, the store,
the rooms and the hooks. ``NotebookSync`` builds one and starts it in its lifespan."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import TracebackType
from typing import TypeVar

from .extensions import DaemonStarted, DaemonStopping, Hooks
from .fanout import Fanout
from .files import NotebookFiles
from .ownership import LocalOwnership, Ownership
from .rooms import RoomManager
from .settings import Settings
from .stats import TrafficStats
from .store import SQLiteStore, Store

logger = logging.getLogger("crdtnb.daemon")

E = TypeVar("E")


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        fanout: Fanout | None = None,
        ownership: Ownership | None = None,
        extensions: Iterable[object] = (),
    ) -> None:
        self.settings = settings
        self.files = NotebookFiles(settings.root)
        self.state_dir = settings.state_path
        self.store = store or SQLiteStore(
            self.state_dir / "crdtnb.sqlite3", compact_threshold_rows=settings.rooms.compact_after
        )
        self.hooks = Hooks(extensions)
        self.ownership: Ownership = ownership or LocalOwnership()
        self.rooms = RoomManager(self.files, self.store, settings.rooms, fanout, self.hooks, self.ownership)
        self.stats = TrafficStats()  # the websocket traffic, for metrics
        self.started = False

    @property
    def extensions(self) -> list[object]:
        return self.hooks.extensions

    def extension(self, kind: type[E]) -> E | None:
        """The first registered extension of a type (e.g. to reach the kernels)."""
        return next((e for e in self.hooks.extensions if isinstance(e, kind)), None)

    async def start(self) -> None:
        await self.store.start()
        self.started = True
        await self.hooks.run("on_daemon_started", DaemonStarted(self))

    async def stop(self) -> None:
        """Extensions stop first (kernels, with their rooms still open), then every
        room is unloaded (each extension saving what it keeps), then the store closes."""
        self.started = False
        await self.hooks.run("on_daemon_stopping", DaemonStopping(self))
        await self.rooms.close()
        await self.hooks.close()
        await self.store.close()
        logger.info("all rooms saved; store closed")

    async def __aenter__(self) -> Daemon:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
