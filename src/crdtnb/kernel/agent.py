"""The kernel agent of one room: its execution queue and the lifecycle of each cell run.

It is the only writer of outputs (docs/outputs.md): cells run one at a time in request
order; a cell's outputs are cleared when it starts, its iopub messages are written by the
IopubRouter, and its ``execution_count`` is written together with ``idle``. An error
stops the rest of the queue; an interrupt ends the running cell and drops the queue; a
kernel that dies leaves an error on the running cell and the next run starts a new one.

A running cell may ask for input (``input()``, getpass, pdb): the request is published
as ``state.input_request`` until someone answers it (the first answer wins) or the cell
ends. Completion and help requests go to the kernel beside the queue.
Every task it creates is kept and ended with it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pycrdt import Map

from ..extensions import ExecutionFinished, ExecutionStarted
from ..origins import KERNEL
from ..outputs import OutputLimits, OutputWriter
from ..room import Room
from ..schema import INPUT_REQUEST, KERNEL_STATUS, meta_of, state_of
from ..settings import KernelSettings
from .iopub import IopubRouter
from .process import KernelDied, KernelLauncher, KernelProcess

logger = logging.getLogger("crdtnb.kernel")

# The note a cell gets when the daemon stopped while it ran (its kernel went with it).
CUT_OFF = (
    "KernelLost",
    "The kernel running this cell was lost with its server (stopped, restarted or unreachable). Run it again.",
)
_executions = itertools.count(1)

# What a cell's output shows of an answered password prompt, as JupyterLab shows it.
PASSWORD_ECHO = "········"
HELP_TIMEOUT = 10.0  # seconds a completion or help request waits for the kernel
MAX_MATCHES = 1000  # completions returned at most (completing "" can list thousands)


class InputNotPending(LookupError):
    """An answer to an input request that is not (or no longer) waiting."""


@dataclass(frozen=True)
class InputRequest:
    """A running cell waits for a line of input (``state.input_request``)."""

    id: str  # the kernel's input_request msg_id
    cell_id: str
    prompt: str
    password: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def no_kernel(action: str, cursor_pos: int = 0) -> dict[str, Any]:
    """The answer to a completion or help request when no kernel runs (none is started for it)."""
    if action == "complete":
        return {"status": "no_kernel", "matches": [], "cursor_start": cursor_pos, "cursor_end": cursor_pos, "metadata": {}}
    return {"status": "no_kernel", "found": False, "data": {}, "metadata": {}}


class KernelStatus(str, Enum):
    NONE = "none"
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    DEAD = "dead"
    CULLED = "culled"  # shut down after --cull-idle-kernels seconds without activity


class KernelAgent:
    def __init__(
        self,
        room: Room,
        cwd: Path,
        settings: KernelSettings | None = None,
        launcher: KernelLauncher | None = None,
        on_dead: Callable[[KernelAgent], None] | None = None,
    ) -> None:
        self.room = room
        self.cwd = cwd
        self.settings = settings or KernelSettings()
        self.launcher = launcher
        limits = OutputLimits(self.settings.max_stream_bytes, self.settings.max_output_bytes)
        self.writer = OutputWriter(room.doc, limits, index=room.index, origin=KERNEL)
        self.queue: list[str] = []
        self.running: str | None = None
        self.status = KernelStatus.NONE
        self.kernel_name: str | None = None
        self.last_activity = time.monotonic()
        self._on_dead = on_dead
        self._process: KernelProcess | None = None
        self._router: IopubRouter | None = None
        self._stdin: asyncio.Task[None] | None = None
        self._running_msg: str | None = None  # the execute request of the running cell
        self.input_request: InputRequest | None = None
        self._runner: asyncio.Task[None] | None = None
        self._cleanup: asyncio.Task[None] | None = None

    # -- requests -----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "kernel": self.kernel_name,
            "running": self.running,
            "queue": list(self.queue),
            "input_request": self.input_request.to_json() if self.input_request else None,
        }

    @property
    def idle(self) -> bool:
        return self.running is None and not self.queue and self.status in (KernelStatus.IDLE, KernelStatus.NONE)

    def execute(self, cell_ids: list[str]) -> list[str]:
        """Queue code cells in the given order; return the ones queued."""
        self.last_activity = time.monotonic()
        queued = []
        waiting = set(self.queue)
        with self.room.doc.transaction(origin=KERNEL):
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

    async def complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        """The kernel's complete_reply (``matches``, ``cursor_start``, ``cursor_end``,
        ``metadata``); ``status`` "no_kernel" when none runs, "timeout" when it is too busy."""
        reply = await self._help_request("complete_request", {"code": code, "cursor_pos": cursor_pos})
        if reply is None:
            return no_kernel("complete", cursor_pos)
        matches = list(reply.get("matches") or [])
        metadata = dict(reply.get("metadata") or {})
        if len(matches) > MAX_MATCHES:
            matches = matches[:MAX_MATCHES]
            types = metadata.get("_jupyter_types_experimental")
            if isinstance(types, list):
                metadata["_jupyter_types_experimental"] = types[:MAX_MATCHES]
        return {
            "status": reply.get("status", "error"),
            "matches": matches,
            "cursor_start": reply.get("cursor_start", cursor_pos),
            "cursor_end": reply.get("cursor_end", cursor_pos),
            "metadata": metadata,
        }

    async def inspect(self, code: str, cursor_pos: int, detail_level: int = 0) -> dict[str, Any]:
        """The kernel's inspect_reply (``found``, ``data`` mimebundle, ``metadata``)."""
        content = {"code": code, "cursor_pos": cursor_pos, "detail_level": detail_level}
        reply = await self._help_request("inspect_request", content)
        if reply is None:
            return no_kernel("inspect")
        return {
            "status": reply.get("status", "error"),
            "found": bool(reply.get("found")),
            "data": dict(reply.get("data") or {}),
            "metadata": dict(reply.get("metadata") or {}),
        }

    async def _help_request(self, msg_type: str, content: dict[str, Any]) -> dict[str, Any] | None:
        """A request that runs no user code; None when no kernel runs to answer it."""
        process = self._process
        if process is None or self.status not in (KernelStatus.IDLE, KernelStatus.BUSY):
            return None
        self.last_activity = time.monotonic()
        msg_id = process.request(msg_type, content)
        try:
            return await process.reply(msg_id, timeout=HELP_TIMEOUT)
        except asyncio.TimeoutError:
            return {"status": "timeout"}
        except KernelDied:
            return None

    def answer_input(self, request_id: str, value: str) -> InputRequest:
        """Answer the pending input request ``request_id`` (InputNotPending if it is not
        the one waiting: the first answer wins). The prompt and the answer (not a
        password) are added to the cell's output, as a terminal shows them."""
        pending = self.input_request
        if pending is None or pending.id != request_id or self._process is None or self._router is None:
            raise InputNotPending(f"input request {request_id} is not waiting (answered already, or its cell ended)")
        self.last_activity = time.monotonic()
        shown = PASSWORD_ECHO if pending.password else value
        with self.room.doc.transaction(origin=KERNEL):
            self._clear_input()
            self._router.inject(pending.cell_id, "stdout", f"{pending.prompt}{shown}\n")
        self._process.input_reply(value)
        return pending

    async def interrupt(self) -> None:
        """Drop the queue and interrupt the running cell (it ends with KeyboardInterrupt)."""
        self.last_activity = time.monotonic()
        self._drop_queue()
        if self._process is not None and self.running is not None:
            await self._process.interrupt()

    async def restart(self) -> None:
        """A fresh kernel; queued and running cells go back to idle."""
        self._drop_queue()
        await self._stop_runner("aborted")
        await self._stop_kernel()
        await self._start_kernel()

    async def shutdown(self, lost: bool = False, status: KernelStatus = KernelStatus.NONE) -> None:
        """Stop the kernel. ``lost``: the daemon is stopping, and a cell still running
        gets a note saying so rather than just stopping."""
        running = self.running
        self._drop_queue()
        await self._stop_runner("lost" if lost else "aborted")
        await self._stop_kernel()
        if self._cleanup is not None:
            await asyncio.gather(self._cleanup, return_exceptions=True)
        self._set_status(status)
        if lost and running is not None:
            ename, evalue = CUT_OFF
            with self.room.doc.transaction(origin=KERNEL):
                self.writer.add_error(running, ename, evalue, [f"{ename}: {evalue}"])

    async def abandon(self) -> None:
        """Stop at once without writing anything to the document (this daemon no longer
        owns the room: another one writes its outputs and states now)."""
        self.queue = []
        self.input_request = None  # the new owner clears it from the document
        stdin, self._stdin = self._stdin, None
        if stdin is not None:
            stdin.cancel()
            await asyncio.gather(stdin, return_exceptions=True)
        if self._runner is not None and not self._runner.done():
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        self._runner = None
        self.running = None
        process, router, self._process, self._router = self._process, self._router, None, None
        if router is not None:
            router.discard()
            await router.stop()
        if process is not None:
            await process.stop(dead=False)
        if self._cleanup is not None:
            await asyncio.gather(self._cleanup, return_exceptions=True)

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
            execution = next(_executions)
            started = time.monotonic()
            self.room.hooks.notify("on_execution_started", ExecutionStarted(self.room, cell_id, execution))
            status, count = "error", None
            try:
                if self._process is not None and not await self._process.is_alive():
                    # It died while idle: replace it quietly.
                    await self._stop_kernel(dead=True)
                if self._process is None:
                    await self._start_kernel()
                reply = await self._run_cell(cell_id, source)
                status, count = str(reply.get("status", "error")), reply.get("execution_count")
            except KernelDied as exc:
                status = "lost"
                self._kernel_died(cell_id, str(exc))
                return
            except asyncio.CancelledError:
                status = "aborted"
                raise
            except Exception as exc:
                logger.exception("running %s in %s failed", cell_id, self.room.name)
                self._fail_cell(cell_id, type(exc).__name__, str(exc))
                return
            finally:
                finished = ExecutionFinished(
                    self.room, cell_id, execution, status, time.monotonic() - started, count
                )
                self.room.hooks.notify("on_execution_finished", finished)
                self.last_activity = time.monotonic()
            if status != "ok":
                # An error stops the rest of the queue.
                self._drop_queue()

    def _skip_empty(self, cell_id: str) -> None:
        """An empty cell is not sent to the kernel, as in JupyterLab and nbclient: its
        outputs are cleared and it keeps no execution count."""
        with self.room.doc.transaction(origin=KERNEL):
            self.writer.start_cell(cell_id)
            cell = self.writer.find_cell(cell_id)
            if cell is not None and cell.get("execution_count") is not None:
                cell["execution_count"] = None
            self.writer.set_execution_state(cell_id, "idle")
        self.writer.forget(cell_id)
        self.room.guard.running.discard(cell_id)

    async def _run_cell(self, cell_id: str, source: str) -> dict[str, Any]:
        assert self._process is not None and self._router is not None
        self.running = cell_id
        with self.room.doc.transaction(origin=KERNEL):
            self.writer.start_cell(cell_id)
            self.writer.set_execution_state(cell_id, "running")
        msg_id = self._running_msg = self._process.execute(source)
        idle = self._router.expect(msg_id, cell_id)
        try:
            reply = await self._process.reply(msg_id)
            # Outputs come on iopub; the cell is over when the kernel says idle for it.
            try:
                await asyncio.wait_for(idle.wait(), 10)
            except asyncio.TimeoutError:
                logger.warning("%s: no idle status for %s", self.room.name, cell_id)
            self._router.flush()
            with self.room.doc.transaction(origin=KERNEL):
                self.writer.set_execution_state(cell_id, "idle", reply.get("execution_count"))
            return reply
        finally:
            self.running = self._running_msg = None
            if self.input_request is not None:
                with self.room.doc.transaction(origin=KERNEL):
                    self._clear_input()
            self.writer.forget(cell_id)
            self._router.forget(msg_id)
            self.room.guard.running.discard(cell_id)

    def _drop_queue(self) -> None:
        dropped, self.queue = self.queue, []
        self.room.guard.running.difference_update(dropped)
        if dropped:
            with self.room.doc.transaction(origin=KERNEL):
                for cell_id in dropped:
                    self.writer.set_execution_state(cell_id, "idle")

    async def _stop_runner(self, reason: str) -> None:
        running = self.running
        if self._runner is not None and not self._runner.done():
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        self._runner = None
        if running is not None:
            if self._router is not None:
                self._router.flush()
            self.room.guard.running.discard(running)
            with self.room.doc.transaction(origin=KERNEL):
                self.writer.set_execution_state(running, "idle")

    def _fail_cell(self, cell_id: str, ename: str, evalue: str) -> None:
        if self._router is not None:
            self._router.flush()
        with self.room.doc.transaction(origin=KERNEL):
            self.writer.add_error(cell_id, ename, evalue, [f"{ename}: {evalue}"])
            self.writer.set_execution_state(cell_id, "idle")
        self._drop_queue()

    def _kernel_died(self, cell_id: str, description: str) -> None:
        logger.warning("%s: kernel died while running %s (%s)", self.room.name, cell_id, description)
        self._fail_cell(cell_id, "DeadKernelError", f"The kernel died unexpectedly ({description}).")
        self._set_status(KernelStatus.DEAD)
        self._cleanup = asyncio.create_task(self._cleanup_dead(), name=f"kernel-cleanup:{self.room.name}")

    async def _cleanup_dead(self) -> None:
        await self._stop_kernel(dead=True)
        self._set_status(KernelStatus.DEAD)
        if self._on_dead is not None:
            self._on_dead(self)

    # -- the kernel process ------------------------------------------------------------------

    def _kernel_spec_name(self) -> str:
        metadata = meta_of(self.room.doc).get("metadata")
        spec = metadata.get("kernelspec") if isinstance(metadata, Map) else None
        name = spec.get("name") if isinstance(spec, dict) else None
        return str(name) if name else self.settings.default_kernel

    async def _start_kernel(self) -> None:
        self.kernel_name = self._kernel_spec_name()
        self._set_status(KernelStatus.STARTING)
        process = KernelProcess(self.kernel_name, self.cwd, self.settings, self.launcher)
        try:
            await process.start()
        except Exception:
            self._set_status(KernelStatus.DEAD)
            raise
        self._process = process
        self._router = IopubRouter(
            process, self.writer, self.settings.batch_interval, self._on_kernel_status, self._touch
        )
        self._router.start(self.room.name)
        self._stdin = asyncio.create_task(self._read_stdin(process), name=f"stdin:{self.room.name}")
        self.last_activity = time.monotonic()
        self._set_status(KernelStatus.IDLE)
        logger.info("%s: started kernel %s", self.room.name, self.kernel_name)

    async def _stop_kernel(self, dead: bool = False) -> None:
        process, router, self._process, self._router = self._process, self._router, None, None
        stdin, self._stdin = self._stdin, None
        if stdin is not None:
            stdin.cancel()
            await asyncio.gather(stdin, return_exceptions=True)
        if self.input_request is not None:
            with self.room.doc.transaction(origin=KERNEL):
                self._clear_input()
        if router is not None:
            await router.stop()
        if process is not None:
            await process.stop(dead=dead)

    async def _read_stdin(self, process: KernelProcess) -> None:
        """Publish each input request of the running cell for someone to answer."""
        while True:
            msg = await process.stdin_message()
            if msg["header"]["msg_type"] != "input_request":
                continue
            cell_id = self.running
            if cell_id is None or msg.get("parent_header", {}).get("msg_id") != self._running_msg:
                logger.warning("%s: an input request of no running cell: answered empty", self.room.name)
                process.input_reply("")
                continue
            content = msg["content"]
            request = InputRequest(
                str(msg["header"]["msg_id"]), cell_id, str(content.get("prompt", "")), bool(content.get("password"))
            )
            if self._router is not None:
                self._router.flush()  # what the cell printed before asking comes first
            self.input_request = request
            self._touch()
            with self.room.doc.transaction(origin=KERNEL):
                state_of(self.room.doc)[INPUT_REQUEST] = request.to_json()

    def _clear_input(self) -> None:
        """Forget the pending input request (inside a KERNEL transaction)."""
        self.input_request = None
        state = state_of(self.room.doc)
        if INPUT_REQUEST in state:
            del state[INPUT_REQUEST]

    def _on_kernel_status(self, state: str) -> None:
        if state == "busy":
            self._set_status(KernelStatus.BUSY)
        elif state == "idle" and self._process is not None:
            self._set_status(KernelStatus.IDLE)

    def _touch(self) -> None:
        self.last_activity = time.monotonic()

    def _set_status(self, status: KernelStatus) -> None:
        self.status = status
        state = state_of(self.room.doc)
        if state.get(KERNEL_STATUS) != status.value:
            with self.room.doc.transaction(origin=KERNEL):
                state[KERNEL_STATUS] = status.value
