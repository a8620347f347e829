"""The kernel agent: runs a room's cells in one Jupyter kernel and writes every
iopub message into the room's document.

It is the only writer of outputs (docs/outputs.md): one ordered reader of the
kernel's iopub channel feeds an ``OutputWriter`` in batches, one transaction
per batch, so every client sees outputs through ordinary sync, whether or not
anyone is connected.
"""

from __future__ import annotations

import asyncio
import logging
import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager
from pycrdt import Map

from .outputs import OutputLimits, OutputWriter
from .room import Room
from .rooms import CUT_OFF, RoomManager
from .sandbox import BwrapSandbox
from .schema import KERNEL_STATUS as STATUS_KEY
from .schema import meta_of, state_of

logger = logging.getLogger("crdtnb.kernel")


class KernelStatus(str, Enum):
    NONE = "none"
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    DEAD = "dead"


@dataclass(frozen=True)
class AgentSettings:
    default_kernel: str = "python3"
    batch_interval: float = 0.03  # seconds stream messages are gathered into one transaction
    startup_timeout: float = 60.0
    liveness_interval: float = 0.5  # how often a running kernel is checked for death
    limits: OutputLimits = field(default_factory=OutputLimits)
    sandbox: BwrapSandbox | None = None  # where kernels run; None: as the daemon's own user, unconfined


class KernelDied(Exception):
    pass


class KernelAgent:
    def __init__(
        self,
        room: Room,
        cwd: Path,
        settings: AgentSettings | None = None,
        on_dead: Callable[[KernelAgent], None] | None = None,
    ) -> None:
        self.room = room
        self.cwd = cwd
        self.settings = settings or AgentSettings()
        self.writer = OutputWriter(room.doc, self.settings.limits, index=room.index)
        self.queue: list[str] = []
        self.running: str | None = None
        self.status = KernelStatus.NONE
        self.kernel_name: str | None = None
        self._on_dead = on_dead
        self._km: AsyncKernelManager | None = None
        self._kc: Any = None
        self._runner: asyncio.Task[None] | None = None
        self._iopub: asyncio.Task[None] | None = None
        self._msg_cells: dict[str, str] = {}
        self._idle: dict[str, asyncio.Event] = {}
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._flush_timer: asyncio.TimerHandle | None = None

    # -- requests -----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "kernel": self.kernel_name,
            "running": self.running,
            "queue": list(self.queue),
        }

    def execute(self, cell_ids: list[str]) -> list[str]:
        """Queue code cells in the given order; return the ones queued."""
        queued = []
        waiting = set(self.queue)
        with self.room.doc.transaction():
            for cell_id in cell_ids:
                cell = self.writer.find_cell(cell_id)
                if cell is None or cell.get("cell_type") != "code" or cell_id in waiting:
                    continue
                self.queue.append(cell_id)
                waiting.add(cell_id)
                queued.append(cell_id)
                self.room.guard.running.add(cell_id)
                self.writer.set_execution_state(cell_id, "running")
        if queued and (self._runner is None or self._runner.done()):
            self._runner = asyncio.create_task(self._run_queue(), name=f"kernel-queue:{self.room.name}")
        return queued

    async def interrupt(self) -> None:
        """Drop the queue and interrupt the running cell (it ends with KeyboardInterrupt)."""
        self._drop_queue()
        if self._km is not None and self.running is not None:
            await self._km.interrupt_kernel()

    async def restart(self) -> None:
        """A fresh kernel; queued and running cells go back to idle."""
        self._drop_queue()
        await self._stop_runner()
        await self._stop_kernel()
        await self._start_kernel()

    async def shutdown(self, lost: bool = False) -> None:
        """Stop the kernel. ``lost``: the daemon is stopping, and a cell still running
        gets a note saying so rather than just stopping."""
        running = self.running
        self._drop_queue()
        await self._stop_runner()
        await self._stop_kernel()
        self._set_status(KernelStatus.NONE)
        if lost and running is not None:
            ename, evalue = CUT_OFF
            with self.room.doc.transaction():
                self.writer.add_error(running, ename, evalue, [f"{ename}: {evalue}"])

    # -- the queue --------------------------------------------------------------------------

    async def _run_queue(self) -> None:
        while self.queue:
            cell_id = self.queue.pop(0)
            cell = self.writer.find_cell(cell_id)
            if cell is None or cell.get("cell_type") != "code":
                self.room.guard.running.discard(cell_id)
                continue
            source = str(cell["source"])
            if not source.strip():
                self._skip_empty(cell_id)
                continue
            try:
                if self._km is not None and not await self._km.is_alive():
                    # It died while idle: replace it quietly.
                    await self._stop_kernel(dead=True)
                if self._km is None:
                    await self._start_kernel()
                reply = await self._run_cell(cell_id, source)
            except KernelDied as exc:
                self._kernel_died(cell_id, str(exc))
                return
            except Exception as exc:
                logger.exception("running %s in %s failed", cell_id, self.room.name)
                self._fail_cell(cell_id, type(exc).__name__, str(exc))
                return
            if reply.get("status") != "ok":
                # An error stops the rest of the queue.
                self._drop_queue()

    def _skip_empty(self, cell_id: str) -> None:
        """An empty cell is not sent to the kernel, as in JupyterLab and nbclient: its
        outputs are cleared and it keeps no execution count."""
        with self.room.doc.transaction():
            self.writer.start_cell(cell_id)
            cell = self.writer.find_cell(cell_id)
            if cell is not None and cell.get("execution_count") is not None:
                cell["execution_count"] = None
            self.writer.set_execution_state(cell_id, "idle")
        self.writer.forget(cell_id)
        self.room.guard.running.discard(cell_id)

    async def _run_cell(self, cell_id: str, source: str) -> dict[str, Any]:
        assert self._kc is not None
        self.running = cell_id
        with self.room.doc.transaction():
            self.writer.start_cell(cell_id)
            self.writer.set_execution_state(cell_id, "running")
        idle = asyncio.Event()
        msg_id = self._kc.execute(source, store_history=True, allow_stdin=False, stop_on_error=True)
        self._msg_cells[msg_id] = cell_id
        self._idle[msg_id] = idle
        try:
            reply = await self._shell_reply(msg_id)
            # Outputs come on iopub; the cell is over when the kernel says idle for it.
            try:
                await asyncio.wait_for(idle.wait(), 10)
            except asyncio.TimeoutError:
                logger.warning("%s: no idle status for %s", self.room.name, cell_id)
            self._flush()
            with self.room.doc.transaction():
                self.writer.set_execution_state(cell_id, "idle", reply.get("execution_count"))
            return reply
        finally:
            self.running = None
            self.writer.forget(cell_id)
            self._idle.pop(msg_id, None)
            self.room.guard.running.discard(cell_id)

    async def _shell_reply(self, msg_id: str) -> dict[str, Any]:
        assert self._kc is not None and self._km is not None
        while True:
            try:
                msg = await self._kc.get_shell_msg(timeout=self.settings.liveness_interval)
            except queue.Empty:
                if not await self._km.is_alive():
                    raise KernelDied(self._exit_description())
                continue
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return dict(msg["content"])

    def _drop_queue(self) -> None:
        dropped, self.queue = self.queue, []
        self.room.guard.running.difference_update(dropped)
        if dropped:
            with self.room.doc.transaction():
                for cell_id in dropped:
                    self.writer.set_execution_state(cell_id, "idle")

    async def _stop_runner(self) -> None:
        running = self.running
        if self._runner is not None and not self._runner.done():
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        self._runner = None
        if running is not None:
            self._flush()
            self.room.guard.running.discard(running)
            with self.room.doc.transaction():
                self.writer.set_execution_state(running, "idle")

    def _fail_cell(self, cell_id: str, ename: str, evalue: str) -> None:
        self._flush()
        with self.room.doc.transaction():
            self.writer.add_error(cell_id, ename, evalue, [f"{ename}: {evalue}"])
            self.writer.set_execution_state(cell_id, "idle")
        self._drop_queue()

    def _kernel_died(self, cell_id: str, description: str) -> None:
        logger.warning("%s: kernel died while running %s (%s)", self.room.name, cell_id, description)
        self._fail_cell(cell_id, "DeadKernelError", f"The kernel died unexpectedly ({description}).")
        self._set_status(KernelStatus.DEAD)
        asyncio.create_task(self._cleanup_dead())

    async def _cleanup_dead(self) -> None:
        await self._stop_kernel(dead=True)
        self._set_status(KernelStatus.DEAD)
        if self._on_dead is not None:
            self._on_dead(self)

    def _exit_description(self) -> str:
        process = getattr(getattr(self._km, "provisioner", None), "process", None)
        code = process.poll() if process is not None else None
        return f"exit code {code}" if code is not None else "the process is gone"

    # -- kernel process -----------------------------------------------------------------------

    def _kernel_spec_name(self) -> str:
        metadata = meta_of(self.room.doc).get("metadata")
        spec = metadata.get("kernelspec") if isinstance(metadata, Map) else None
        name = spec.get("name") if isinstance(spec, dict) else None
        return str(name) if name else self.settings.default_kernel

    async def _start_kernel(self) -> None:
        self.kernel_name = self._kernel_spec_name()
        self._set_status(KernelStatus.STARTING)
        sandbox = self.settings.sandbox
        km = sandbox.kernel_manager(kernel_name=self.kernel_name) if sandbox else AsyncKernelManager(kernel_name=self.kernel_name)
        km.shutdown_wait_time = 3.0
        try:
            await km.start_kernel(cwd=str(self.cwd))
            kc = km.client()
            kc.start_channels()
            await kc.wait_for_ready(timeout=self.settings.startup_timeout)
        except Exception:
            self._set_status(KernelStatus.DEAD)
            if km.has_kernel:
                await km.shutdown_kernel(now=True)
            raise
        self._km, self._kc = km, kc
        self._iopub = asyncio.create_task(self._read_iopub(kc), name=f"iopub:{self.room.name}")
        self._set_status(KernelStatus.IDLE)
        logger.info("%s: started kernel %s", self.room.name, self.kernel_name)

    async def _stop_kernel(self, dead: bool = False) -> None:
        km, kc, self._km, self._kc = self._km, self._kc, None, None
        if self._iopub is not None:
            self._iopub.cancel()
            await asyncio.gather(self._iopub, return_exceptions=True)
            self._iopub = None
        self._flush()
        if kc is not None:
            kc.stop_channels()
        if km is not None:
            try:
                if dead:
                    await km.cleanup_resources()
                else:
                    await km.shutdown_kernel(now=False)
            except Exception:
                logger.exception("%s: stopping the kernel failed", self.room.name)
        self._msg_cells.clear()

    # -- iopub -> document --------------------------------------------------------------------

    async def _read_iopub(self, kc: Any) -> None:
        while True:
            msg = await kc.get_iopub_msg()
            msg_type = msg["header"]["msg_type"]
            parent = msg.get("parent_header", {}).get("msg_id")
            if msg_type == "status":
                self._on_status(parent, msg["content"].get("execution_state"))
                continue
            cell_id = self._msg_cells.get(parent)
            if cell_id is None or msg_type == "execute_input":
                continue
            self._pending.append((cell_id, msg))
            if msg_type == "stream":
                if self._flush_timer is None:
                    loop = asyncio.get_running_loop()
                    self._flush_timer = loop.call_later(self.settings.batch_interval, self._flush)
            else:
                self._flush()

    def _on_status(self, parent: str | None, state: str | None) -> None:
        if state == "busy":
            self._set_status(KernelStatus.BUSY)
        elif state == "idle":
            self._flush()
            if self._km is not None:
                self._set_status(KernelStatus.IDLE)
            event = self._idle.get(parent or "")
            if event is not None:
                event.set()

    def _flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        self.writer.apply_batch(batch)

    def _set_status(self, status: KernelStatus) -> None:
        self.status = status
        state = state_of(self.room.doc)
        if state.get(STATUS_KEY) != status.value:
            state[STATUS_KEY] = status.value


class KernelAgents:
    """One agent per room with a kernel; an agent keeps its room loaded."""

    def __init__(self, rooms: RoomManager, settings: AgentSettings | None = None) -> None:
        self.rooms = rooms
        self.settings = settings or AgentSettings()
        self._agents: dict[str, KernelAgent] = {}
        self._died: set[str] = set()  # rooms whose kernel died and was not replaced yet
        self._lock = asyncio.Lock()

    def get(self, path: str) -> KernelAgent | None:
        return self._agents.get(self.rooms.files.canonical(path))

    async def agent(self, path: str) -> KernelAgent:
        """The room's agent, created (holding the room) if needed."""
        # The name as the caller authorized it, and its directory checked to be that
        # name's: a symbolic link swapped in since must not move the kernel elsewhere.
        name = self.rooms.files.exact(path)
        async with self._lock:
            agent = self._agents.get(name)
            if agent is None:
                room = await self.rooms.acquire(name)
                cwd = self.rooms.files.locate(name).parent
                agent = KernelAgent(room, cwd, self.settings, on_dead=self._on_dead)
                self._agents[name] = agent
                self._died.discard(name)
            return agent

    def status(self, path: str) -> dict[str, Any]:
        agent = self.get(path)
        if agent is None:
            dead = self.rooms.files.canonical(path) in self._died
            status = KernelStatus.DEAD if dead else KernelStatus.NONE
            return {"status": status.value, "kernel": None, "running": None, "queue": []}
        return agent.info()

    async def execute(self, path: str, cell_ids: list[str]) -> list[str]:
        return (await self.agent(path)).execute(cell_ids)

    async def interrupt(self, path: str) -> None:
        agent = self.get(path)
        if agent is not None:
            await agent.interrupt()

    async def restart(self, path: str) -> None:
        await (await self.agent(path)).restart()

    async def shutdown(self, path: str) -> None:
        agent = self.get(path)
        if agent is not None:
            await agent.shutdown()
            self._forget(agent)

    def _on_dead(self, agent: KernelAgent) -> None:
        self._died.add(agent.room.name)
        self._forget(agent)

    def _forget(self, agent: KernelAgent) -> None:
        if self._agents.get(agent.room.name) is agent:
            del self._agents[agent.room.name]
            self.rooms.release(agent.room)

    async def close(self) -> None:
        """Shut every kernel down (daemon shutdown): no orphan processes."""
        agents = list(self._agents.values())
        await asyncio.gather(*(agent.shutdown(lost=True) for agent in agents), return_exceptions=True)
        for agent in agents:
            self._forget(agent)
