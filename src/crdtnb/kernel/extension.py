"""Kernels, as an extension: one agent per room that runs code, the REST routes that
drive them, idle culling, and what a stopped daemon leaves behind.

An agent keeps its room loaded while its kernel lives; a kernel that dies, is shut down
or is culled lets the room go (it is evicted once nobody else holds it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from ..api import RequestError, json_object
from ..auth import Action
from ..extensions import (
    DaemonStarted,
    DaemonStopping,
    Extension,
    RoomDeleting,
    RoomDisowned,
    RoomOwned,
    RoomRenamed,
)
from ..origins import KERNEL
from ..outputs import OutputWriter
from ..ownership import NotOwner
from ..schema import EXECUTION_STATE, INPUT_REQUEST, KERNEL_STATUS, state_of
from ..settings import KernelSettings
from ..slices import in_slices
from .agent import CUT_OFF, InputNotPending, KernelAgent, KernelStatus, no_kernel
from .process import KernelLauncher

if TYPE_CHECKING:
    from ..api import Api
    from ..daemon import Daemon

logger = logging.getLogger("crdtnb.kernel")

MAX_CELLS_PER_REQUEST = 10_000


class Kernels(Extension):
    def __init__(self, settings: KernelSettings | None = None, launcher: KernelLauncher | None = None) -> None:
        self.settings = settings or KernelSettings()
        self.launcher = launcher  # a sandbox; None: kernels run as the daemon's own user
        self.agents: dict[str, KernelAgent] = {}
        self.ended: dict[str, KernelStatus] = {}  # rooms whose kernel died or was culled
        self._daemon: Daemon | None = None
        self._lock = asyncio.Lock()
        # Forwards a request to the room's owner (set by the cluster extension).
        # (None from it: the room has no owner now, this daemon may take it.)
        self.remote: Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any] | None]] | None = None
        self._culler: asyncio.Task[None] | None = None

    # -- hooks ------------------------------------------------------------------------

    def routes(self, api: Api) -> Sequence[BaseRoute]:
        return [
            api.route(f"/api/notebooks/{{path:path}}/{suffix}", self._endpoint(action), methods=[method], action=ACTIONS[action])
            for action, (method, suffix) in ROUTES.items()
        ]

    def _endpoint(self, action: str) -> Callable[[Api, Request, str], Awaitable[Response]]:
        """A REST route only parses, asks ``request`` and answers."""

        async def endpoint(api: Api, request: Request, path: str) -> Response:
            body = await json_object(request) if request.method == "POST" else {}
            result = await self.request(path, action, body)
            if action == "status":
                # What the caller may do with it (the page offers completion and input only then).
                user = await api.user(request)
                result["may_execute"] = user is not None and await api.allowed(user, path, Action.EXECUTE)
            return JSONResponse(result, status_code=202 if action == "execute" else 200)

        endpoint.__name__ = action
        return endpoint

    async def on_daemon_started(self, event: DaemonStarted) -> None:
        self._daemon = event.daemon
        if self.settings.cull_idle > 0:
            self._culler = asyncio.create_task(self._cull_forever(), name="kernel-culler")

    async def on_daemon_stopping(self, event: DaemonStopping) -> None:
        """Shut every kernel down (no orphan processes); a cell still running gets a
        note that the server stopped."""
        if self._culler is not None:
            self._culler.cancel()
            await asyncio.gather(self._culler, return_exceptions=True)
        agents = list(self.agents.values())
        await asyncio.gather(*(agent.shutdown(lost=True) for agent in agents), return_exceptions=True)
        for agent in agents:
            self._forget(agent)

    async def on_room_owned(self, event: RoomOwned) -> None:
        """No kernel of ours runs for a room we only now own: a cell it shows as running
        was cut off when its daemon stopped or was lost. It gets a note and goes idle."""
        room = event.room
        cut_off = [
            entry.cell_id
            async for entry in in_slices(list(room.index))
            if entry.ymap is not None and entry.cell_id and entry.ymap.get(EXECUTION_STATE) == "running"
        ]
        state = state_of(room.doc)
        with room.doc.transaction(origin=KERNEL):
            if state.get(KERNEL_STATUS) not in (None, KernelStatus.NONE.value, KernelStatus.DEAD.value):
                state[KERNEL_STATUS] = KernelStatus.NONE.value
            if INPUT_REQUEST in state:  # asked by a kernel that is gone
                del state[INPUT_REQUEST]
            if cut_off:
                writer = OutputWriter(room.doc, index=room.index)
                ename, evalue = CUT_OFF
                for cell_id in cut_off:
                    writer.add_error(cell_id, ename, evalue, [f"{ename}: {evalue}"])
                    writer.set_execution_state(cell_id, "idle")
        if cut_off:
            logger.warning("%s: %d cell(s) were cut off when their kernel was lost", room.name, len(cut_off))

    async def on_room_disowned(self, event: RoomDisowned) -> None:
        """Another daemon owns the room now: our kernel stops at once, writing nothing."""
        agent = self.agents.get(event.room.name)
        if agent is not None:
            if event.graceful:
                await agent.shutdown(lost=True)  # a running cell gets its note
            else:
                await agent.abandon()
            self._forget(agent)

    async def on_room_renamed(self, event: RoomRenamed) -> None:
        """A running kernel keeps running under the new name (in the directory it
        started in; a restart starts in the new one)."""
        agent = self.agents.pop(event.old, None)
        if agent is not None:
            self.agents[event.new] = agent
            agent.cwd = self.daemon.files.locate(event.new).parent
        ended = self.ended.pop(event.old, None)
        if ended is not None:
            self.ended[event.new] = ended

    async def on_room_deleting(self, event: RoomDeleting) -> None:
        agent = self.agents.get(event.name)
        if agent is not None:
            await agent.shutdown()
            self._forget(agent)
        self.ended.pop(event.name, None)

    # -- agents -----------------------------------------------------------------------

    @property
    def daemon(self) -> Daemon:
        assert self._daemon is not None, "the daemon has not started"
        return self._daemon

    def get(self, name: str) -> KernelAgent | None:
        return self.agents.get(name)

    async def agent(self, name: str) -> KernelAgent:
        """The room's agent, created (holding the room) if needed."""
        # The name as the caller authorized it, and its directory checked to be that
        # name's: a symbolic link swapped in since must not move the kernel elsewhere.
        name = self.daemon.files.exact(name)
        async with self._lock:
            agent = self.agents.get(name)
            if agent is None:
                room = await self.daemon.rooms.acquire(name)
                if not self.daemon.ownership.owns(name):
                    self.daemon.rooms.release(room)
                    raise NotOwner(f"{name} is owned by another server")
                cwd = self.daemon.files.locate(name).parent
                agent = KernelAgent(room, cwd, self.settings, self.launcher, on_dead=self._on_dead)
                self.agents[name] = agent
                self.ended.pop(name, None)
            return agent

    def status(self, name: str) -> dict[str, Any]:
        agent = self.agents.get(name)
        info = agent.info() if agent is not None else {
            "status": self.ended.get(name, KernelStatus.NONE).value,
            "kernel": None,
            "running": None,
            "queue": [],
            "input_request": None,
        }
        info["cull_idle"] = self.settings.cull_idle or None
        return info

    def _on_dead(self, agent: KernelAgent) -> None:
        self.ended[agent.room.name] = KernelStatus.DEAD
        self._forget(agent)

    def _forget(self, agent: KernelAgent) -> None:
        if self.agents.get(agent.room.name) is agent:
            del self.agents[agent.room.name]
            self.daemon.rooms.release(agent.room)

    async def _cull_forever(self) -> None:
        every = max(0.5, min(self.settings.cull_idle / 4, 30.0))
        while True:
            await asyncio.sleep(every)
            await self.cull()

    async def cull(self) -> list[str]:
        """Shut down kernels idle for longer than ``cull_idle``; returns their rooms."""
        now = time.monotonic()
        culled = []
        for name, agent in list(self.agents.items()):
            if agent.idle and now - agent.last_activity >= self.settings.cull_idle:
                logger.info("%s: kernel idle for %.0f s: shut down", name, now - agent.last_activity)
                await agent.shutdown(status=KernelStatus.CULLED)
                self.ended[name] = KernelStatus.CULLED
                self._forget(agent)
                culled.append(name)
        return culled

    # -- requests -------------------------------------------------------------------------

    async def request(self, name: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """Every request to a room's kernel goes through here, whichever way it came:
        run by this daemon when it owns the room (or can claim it), else forwarded to the
        owner (in a cluster). ``action`` is one of ``ACTIONS``, ``body`` its JSON
        arguments; the answer is JSON too. The caller has checked that the user may do
        ``ACTIONS[action]`` on ``name`` (a canonical name). Refusals raise RequestError."""
        if self.remote is not None and not self.daemon.ownership.owns(name):
            answer = await self.remote(name, action, body)
            if answer is not None:
                return answer
            # Nobody owns the room: this daemon opens it and takes it.
        return await self.handle(name, action, body)

    async def handle(self, name: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """Run a kernel request on the owner."""
        handler = {
            "execute": self._execute,
            "interrupt": self._interrupt,
            "restart": self._restart,
            "shutdown": self._shutdown,
            "status": self._status,
            "complete": self._complete,
            "inspect": self._inspect,
            "input": self._input,
        }.get(action)
        if handler is None:
            raise RequestError(400, f"unknown kernel request {action!r}")
        return await handler(name, body)

    async def _execute(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        cell_ids = body.get("cell_ids")
        if not isinstance(cell_ids, list) or not all(isinstance(c, str) for c in cell_ids):
            raise RequestError(400, 'expected a JSON body {"cell_ids": ["<cell id>", ...]}')
        if len(cell_ids) > MAX_CELLS_PER_REQUEST:
            raise RequestError(413, f"at most {MAX_CELLS_PER_REQUEST} cells per request")
        queued = (await self.agent(name)).execute(cell_ids)
        return {"queued": queued, **self.status(name)}

    async def _interrupt(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        agent = self.agents.get(name)
        if agent is not None:
            await agent.interrupt()
        return self.status(name)

    async def _restart(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        await (await self.agent(name)).restart()
        return self.status(name)

    async def _shutdown(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        agent = self.agents.get(name)
        if agent is not None:
            await agent.shutdown()
            self._forget(agent)
        return self.status(name)

    async def _status(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.status(name)

    async def _complete(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        code, cursor_pos = _code_and_cursor(body, "complete")
        agent = self.agents.get(name)  # no kernel is started for a completion
        if agent is None:
            return no_kernel("complete", cursor_pos)
        return await agent.complete(code, cursor_pos)

    async def _inspect(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        code, cursor_pos = _code_and_cursor(body, "inspect")
        detail_level = body.get("detail_level", 0)
        if detail_level not in (0, 1) or isinstance(detail_level, bool):
            raise RequestError(400, "detail_level must be 0 or 1")
        agent = self.agents.get(name)
        if agent is None:
            return no_kernel("inspect")
        return await agent.inspect(code, cursor_pos, detail_level)

    async def _input(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        request_id, value = body.get("id"), body.get("value")
        if not isinstance(request_id, str) or not isinstance(value, str):
            raise RequestError(400, 'expected a JSON body {"id": "<input request id>", "value": "<text>"}')
        agent = self.agents.get(name)
        try:
            if agent is None:
                raise InputNotPending(f"input request {request_id} is not waiting (no kernel runs)")
            answered = agent.answer_input(request_id, value)
        except InputNotPending as exc:
            raise RequestError(409, str(exc)) from None
        return {"answered": answered.id, "cell_id": answered.cell_id}


# The permission each kernel action needs, and its REST route.
ACTIONS: dict[str, Action] = {
    "execute": Action.EXECUTE,
    "interrupt": Action.EXECUTE,
    "restart": Action.EXECUTE,
    "shutdown": Action.EXECUTE,
    "status": Action.READ,
    "complete": Action.EXECUTE,  # runs code: a completer may evaluate attributes
    "inspect": Action.EXECUTE,
    "input": Action.EXECUTE,
}
ROUTES: dict[str, tuple[str, str]] = {
    "execute": ("POST", "execute"),
    "interrupt": ("POST", "interrupt"),
    "restart": ("POST", "restart"),
    "shutdown": ("POST", "shutdown"),
    "status": ("GET", "kernel"),
    "complete": ("POST", "complete"),
    "inspect": ("POST", "inspect"),
    "input": ("POST", "input"),
}


def _code_and_cursor(body: dict[str, Any], action: str) -> tuple[str, int]:
    code, cursor_pos = body.get("code"), body.get("cursor_pos")
    if not isinstance(code, str) or not isinstance(cursor_pos, int) or isinstance(cursor_pos, bool):
        raise RequestError(400, f'expected a JSON body {{"code": "<text>", "cursor_pos": <int>}} for {action}')
    if not 0 <= cursor_pos <= len(code):
        raise RequestError(400, "cursor_pos must be within the code (in characters)")
    return code, cursor_pos
