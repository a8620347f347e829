"""Extending crdtnb: named, typed hooks around the daemon, its rooms, peers, changes,
files and kernels.

An extension is any object with some of the hook methods of ``Extension`` (subclass it
for the defaults and the types). Register extensions with
``NotebookSync(..., extensions=[...])`` or ``create_app(..., extensions=[...])``. The
daemon's own capabilities are extensions too, registered before the host's: saving to
and merging from the .ipynb (filesync.py), log compaction (compaction.py) and kernels
(kernel.py). Metrics (metrics.py) is one the host may add.

**Call order.** Hooks run in registration order, except those that take things down
(``on_daemon_stopping``, ``on_room_disowned``, ``on_room_unloading``,
``on_room_unloaded``), which run in reverse order, as nested context managers unwind: the extension set up first is torn
down last.

**Two kinds of hooks.**

- *Lifecycle* hooks are awaited, one extension after the other, before the daemon goes
  on: ``on_daemon_started``, ``on_daemon_stopping``, ``on_room_loading``,
  ``on_room_loaded``, ``on_room_owned``, ``on_room_disowned``, ``on_room_unloading``,
  ``on_room_unloaded``, ``on_room_renamed`` (a notebook was moved: its room, log and
  kernel keep going under the new name) and ``on_room_deleting`` (a notebook is being
  deleted: drop its state unsaved). A room is *owned* by exactly one daemon (always this
  one, unless in a cluster): the owner alone runs its kernel, saves its file and compacts
  its log. An exception in
  ``on_room_loading`` refuses the room (a room is never served half-loaded); in the
  others it is logged and the next extension runs.
- *Notifications* report what happened: ``on_peer_joined``, ``on_peer_left``,
  ``on_changes_durable``, ``on_file_saved``, ``on_file_merged``, ``on_file_failed``,
  ``on_execution_started``, ``on_execution_finished``. A plain function runs inline, on
  the relay's path: keep it quick. A coroutine function runs on its extension's own
  queue, in order, and is never awaited by the relay: a slow webhook delays only
  itself (beyond ``NOTIFY_QUEUE_LIMIT`` waiting events the oldest are dropped, with a
  warning). An exception is logged and changes nothing else.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pycrdt import Doc

from .auth import User
from .origins import Origin, PeerOrigin

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from .api import Api
    from .daemon import Daemon
    from .room import Room
    from .schema import CellIndex

logger = logging.getLogger("crdtnb.extensions")

NOTIFY_QUEUE_LIMIT = 10_000

# -- events -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DaemonStarted:
    daemon: Daemon


@dataclass(frozen=True)
class DaemonStopping:
    daemon: Daemon


@dataclass(frozen=True)
class RoomLoading:
    """A room's document is being built, before anyone sees it. ``doc`` holds what the
    store had (``from_store``); an extension may fill an empty doc (the file extension
    loads the .ipynb) and may refuse the room by raising."""

    name: str
    doc: Doc
    index: CellIndex
    from_store: bool


@dataclass(frozen=True)
class RoomLoaded:
    room: Room


@dataclass(frozen=True)
class RoomOwned:
    """This daemon now owns the room: it alone runs its kernel, saves its file and
    compacts its log (always, on a single daemon; in a cluster, while it holds the lease)."""

    room: Room


@dataclass(frozen=True)
class RoomDisowned:
    """This daemon no longer owns the room: stop the owner's work. If its lease lapsed
    or was taken (``graceful`` false) stop at once, writing nothing (another daemon does
    it now); if it is handing the room over (``graceful``), it still holds the lease
    while this hook runs: finish cleanly (save, note the cells cut off)."""

    room: Room
    reason: str
    graceful: bool = False


@dataclass(frozen=True)
class RoomUnloading:
    """The room is about to close: everything it captured is durable; save what you keep."""

    room: Room


@dataclass(frozen=True)
class RoomUnloaded:
    name: str


@dataclass(frozen=True)
class RoomRenamed:
    """The notebook ``old`` is now ``new``: its file, its log and, when it is open, its
    room (``room``, whose ``name`` is already ``new``; None when it was not open). Key
    what you keep by the new name."""

    old: str
    new: str
    room: Room | None


@dataclass(frozen=True)
class RoomDeleting:
    """The notebook ``name`` is being deleted: its room (``room``, None when it is not
    open) is unloaded next and its log forgotten. Drop what you keep without saving it."""

    name: str
    room: Room | None


@dataclass(frozen=True)
class PeerJoined:
    room: Room
    peer: Any
    user: User | None
    can_write: bool


@dataclass(frozen=True)
class PeerLeft:
    room: Room
    peer: Any
    user: User | None


@dataclass(frozen=True)
class Change:
    """One transaction of a room's document, once it is durable."""

    update: bytes
    origin: Origin
    received: float  # time.monotonic() when the transaction was captured
    durable: float  # time.monotonic() when the store confirmed it

    @property
    def nbytes(self) -> int:
        return len(self.update)

    @property
    def latency(self) -> float:
        """Seconds from receipt to durable."""
        return self.durable - self.received

    @property
    def user(self) -> User | None:
        return self.origin.user if isinstance(self.origin, PeerOrigin) else None


@dataclass(frozen=True)
class ChangesDurable:
    """A batch of changes is in the store (or, for a remote origin, was stored by
    another daemon); the room relays them next."""

    room: Room
    changes: tuple[Change, ...]

    @property
    def nbytes(self) -> int:
        return sum(change.nbytes for change in self.changes)


@dataclass(frozen=True)
class FileSaved:
    room: Room
    path: str
    saved_at: float
    wrote: bool  # False: the file already held exactly this


@dataclass(frozen=True)
class FileMerged:
    """An edit made to the .ipynb outside the daemon was merged into the room."""

    room: Room
    path: str


@dataclass(frozen=True)
class FileFailed:
    room: Room
    path: str
    error: str


@dataclass(frozen=True)
class ExecutionStarted:
    room: Room
    cell_id: str
    execution: int  # a number per started execution, to pair with ExecutionFinished


@dataclass(frozen=True)
class ExecutionFinished:
    room: Room
    cell_id: str
    execution: int
    status: str  # "ok", "error", "aborted" (interrupt, restart, shutdown) or "lost" (kernel died)
    duration: float  # seconds
    execution_count: int | None = None


# -- the interface -------------------------------------------------------------------------


class Extension:
    """The hooks an extension may implement; every one is optional (sync or async)."""

    def routes(self, api: Api) -> Sequence[BaseRoute]:
        """HTTP routes this extension adds; wrap handlers with ``api.endpoint`` for auth."""
        return ()

    async def on_daemon_started(self, event: DaemonStarted) -> None: ...
    async def on_daemon_stopping(self, event: DaemonStopping) -> None: ...
    async def on_room_loading(self, event: RoomLoading) -> None: ...
    async def on_room_loaded(self, event: RoomLoaded) -> None: ...
    async def on_room_owned(self, event: RoomOwned) -> None: ...
    async def on_room_disowned(self, event: RoomDisowned) -> None: ...
    async def on_room_unloading(self, event: RoomUnloading) -> None: ...
    async def on_room_unloaded(self, event: RoomUnloaded) -> None: ...
    async def on_room_renamed(self, event: RoomRenamed) -> None: ...
    async def on_room_deleting(self, event: RoomDeleting) -> None: ...
    def on_peer_joined(self, event: PeerJoined) -> None: ...
    def on_peer_left(self, event: PeerLeft) -> None: ...
    def on_changes_durable(self, event: ChangesDurable) -> None: ...
    def on_file_saved(self, event: FileSaved) -> None: ...
    def on_file_merged(self, event: FileMerged) -> None: ...
    def on_file_failed(self, event: FileFailed) -> None: ...
    def on_execution_started(self, event: ExecutionStarted) -> None: ...
    def on_execution_finished(self, event: ExecutionFinished) -> None: ...


LIFECYCLE = (
    "on_daemon_started",
    "on_daemon_stopping",
    "on_room_loading",
    "on_room_loaded",
    "on_room_owned",
    "on_room_disowned",
    "on_room_unloading",
    "on_room_unloaded",
    "on_room_renamed",
    "on_room_deleting",
)
NOTIFICATIONS = (
    "on_peer_joined",
    "on_peer_left",
    "on_changes_durable",
    "on_file_saved",
    "on_file_merged",
    "on_file_failed",
    "on_execution_started",
    "on_execution_finished",
)
TEARDOWN = frozenset({"on_daemon_stopping", "on_room_disowned", "on_room_unloading", "on_room_unloaded"})
_BASE_HOOKS = {name: getattr(Extension, name) for name in (*LIFECYCLE, *NOTIFICATIONS)}

Handler = Callable[[Any], Any]


def _implemented(extension: object, name: str) -> Handler | None:
    """The extension's own hook, or None if it has none (or kept the no-op default)."""
    method = getattr(extension, name, None)
    if method is None or getattr(method, "__func__", None) is _BASE_HOOKS[name]:
        return None
    return method  # type: ignore[no-any-return]


class _Queue:
    """One extension's async notifications, delivered in order by one task."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.events: deque[tuple[Handler, Any]] = deque()
        self.dropped = 0
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def put(self, handler: Handler, event: Any) -> None:
        if len(self.events) >= NOTIFY_QUEUE_LIMIT:
            self.events.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning("%s is too slow: %d notifications dropped so far", self.label, self.dropped)
        self.events.append((handler, event))
        self.wake.set()
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run(), name=f"notify:{self.label}")

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.events:
                handler, event = self.events.popleft()
                try:
                    await handler(event)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("%s failed on %s", self.label, type(event).__name__)

    async def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.events and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None


@dataclass
class _Handlers:
    sync: list[tuple[str, Handler]] = field(default_factory=list)
    queued: list[tuple[_Queue, Handler]] = field(default_factory=list)


class Hooks:
    """Calls the registered extensions' hooks in their defined order."""

    def __init__(self, extensions: Iterable[object] = ()) -> None:
        self.extensions: list[object] = []
        self._lifecycle: dict[str, list[tuple[str, Handler]]] = {name: [] for name in LIFECYCLE}
        self._notify: dict[str, _Handlers] = {name: _Handlers() for name in NOTIFICATIONS}
        self._queues: dict[int, _Queue] = {}
        for extension in extensions:
            self.add(extension)

    def add(self, extension: object) -> None:
        label = _label(extension)
        self.extensions.append(extension)
        for name in LIFECYCLE:
            handler = _implemented(extension, name)
            if handler is not None:
                self._lifecycle[name].append((label, handler))
        for name in NOTIFICATIONS:
            handler = _implemented(extension, name)
            if handler is None:
                continue
            if inspect.iscoroutinefunction(handler):
                queue = self._queues.setdefault(id(extension), _Queue(label))
                self._notify[name].queued.append((queue, handler))
            else:
                self._notify[name].sync.append((label, handler))

    def wants(self, name: str) -> bool:
        """Whether any extension listens to a notification (so its event is worth building)."""
        handlers = self._notify[name]
        return bool(handlers.sync or handlers.queued)

    async def run(self, name: str, event: Any) -> None:
        """Await a lifecycle hook of every extension, in order (reverse for teardown).
        ``on_room_loading`` lets exceptions through; the others log and go on."""
        handlers = self._lifecycle[name]
        if name in TEARDOWN:
            handlers = list(reversed(handlers))
        for label, handler in handlers:
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                if name == "on_room_loading":
                    raise
                logger.exception("%s failed in %s", label, name)

    def notify(self, name: str, event: Any) -> None:
        """Report an event: sync hooks now, async ones on their extension's queue."""
        handlers = self._notify[name]
        for label, handler in handlers.sync:
            try:
                handler(event)
            except Exception:
                logger.exception("%s failed in %s", label, name)
        for queue, handler in handlers.queued:
            queue.put(handler, event)

    async def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (for up to ``timeout``), then stop the queues."""
        for queue in self._queues.values():
            await queue.drain(timeout)
            await queue.close()


def _label(extension: object) -> str:
    return type(extension).__qualname__


__all__ = [
    "Change",
    "ChangesDurable",
    "DaemonStarted",
    "DaemonStopping",
    "ExecutionFinished",
    "ExecutionStarted",
    "Extension",
    "FileFailed",
    "FileMerged",
    "FileSaved",
    "Hooks",
    "PeerJoined",
    "PeerLeft",
    "RoomDeleting",
    "RoomDisowned",
    "RoomLoaded",
    "RoomLoading",
    "RoomOwned",
    "RoomRenamed",
    "RoomUnloaded",
    "RoomUnloading",
]

