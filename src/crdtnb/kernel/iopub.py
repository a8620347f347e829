"""The kernel's iopub channel, routed into the document: messages are matched to the
cell whose request caused them, gathered in batches (stream messages for
``batch_interval``; anything else flushes at once) and written by the OutputWriter in
one transaction per batch, in arrival order (docs/outputs.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..outputs import OutputWriter
from .process import KernelProcess


class IopubRouter:
    def __init__(
        self,
        process: KernelProcess,
        writer: OutputWriter,
        batch_interval: float,
        on_status: Callable[[str], None],
        on_message: Callable[[], None],
    ) -> None:
        self.process = process
        self.writer = writer
        self.batch_interval = batch_interval
        self.on_status = on_status  # the kernel's execution_state: "busy" or "idle"
        self.on_message = on_message  # any message: the kernel is active
        self._cells: dict[str, str] = {}  # request msg_id -> cell id
        self._idle: dict[str, asyncio.Event] = {}
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task[None] | None = None

    def start(self, label: str) -> None:
        self._reader = asyncio.create_task(self._read(), name=f"iopub:{label}")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        self.flush()
        self._cells.clear()
        self._idle.clear()

    def expect(self, msg_id: str, cell_id: str) -> asyncio.Event:
        """Route the outputs of request ``msg_id`` to ``cell_id``; the event is set
        when the kernel reports idle for it (its last output has arrived)."""
        self._cells[msg_id] = cell_id
        idle = self._idle[msg_id] = asyncio.Event()
        return idle

    def forget(self, msg_id: str) -> None:
        self._idle.pop(msg_id, None)

    async def _read(self) -> None:
        while True:
            msg = await self.process.iopub_message()
            self.on_message()
            msg_type = msg["header"]["msg_type"]
            parent = msg.get("parent_header", {}).get("msg_id")
            if msg_type == "status":
                self._status(parent, msg["content"].get("execution_state"))
                continue
            cell_id = self._cells.get(parent)
            if cell_id is None or msg_type == "execute_input":
                continue
            self._pending.append((cell_id, msg))
            if msg_type == "stream":
                if self._flush_timer is None:
                    loop = asyncio.get_running_loop()
                    self._flush_timer = loop.call_later(self.batch_interval, self.flush)
            else:
                self.flush()

    def inject(self, cell_id: str, name: str, text: str) -> None:
        """Write stream text of our own into a cell's output, after what the kernel sent
        before it (the echo of an answered input request)."""
        self._pending.append((cell_id, {"header": {"msg_type": "stream"}, "content": {"name": name, "text": text}}))
        self.flush()

    def _status(self, parent: str | None, state: str | None) -> None:
        if state == "idle":
            self.flush()
            event = self._idle.get(parent or "")
            if event is not None:
                event.set()
        if state in ("busy", "idle"):
            self.on_status(state)

    def discard(self) -> None:
        """Forget what is gathered, unwritten (the daemon lost the room)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self._pending.clear()

    def flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        self.writer.apply_batch(batch)
