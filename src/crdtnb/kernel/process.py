"""One Jupyter kernel process and its channels (jupyter_client), started where the
settings say: plainly, or inside a sandbox.

Its shell channel is read by one task (``ShellReplies``) that hands each reply to the
request that caused it, matched by the parent's msg_id: an execute request and a
completion asked for meanwhile never take each other's replies. Completion and help
requests go to a kernel subshell when the kernel has them (ipykernel 7), so they are
answered while a cell runs; otherwise the kernel answers them after the running cell.
"""

from __future__ import annotations

import asyncio
import logging
import queue
from pathlib import Path
from typing import Any, Protocol

from jupyter_client.manager import AsyncKernelManager

from ..settings import KernelSettings

logger = logging.getLogger("crdtnb.kernel")

SUBSHELL_TIMEOUT = 5.0  # seconds to wait for a subshell when the kernel says it has them


class KernelDied(Exception):
    """The kernel process is gone (its exit code, when known, is in the message)."""


class KernelLauncher(Protocol):
    """Makes the kernel manager of a sandbox (see sandbox.py)."""

    def kernel_manager(self, **kwargs: Any) -> AsyncKernelManager: ...


class ShellReplies:
    """Reads the shell channel and resolves, per request msg_id, the future its sender
    awaits. While anyone waits, the kernel's liveness is checked every
    ``liveness_interval`` seconds of silence: when it is gone, every waiter (and any
    later one) gets KernelDied."""

    def __init__(self, process: KernelProcess, liveness_interval: float) -> None:
        self.process = process
        self.liveness_interval = liveness_interval
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._died: KernelDied | None = None
        self._reader: asyncio.Task[None] | None = None

    def start(self, label: str) -> None:
        self._reader = asyncio.create_task(self._read(), name=f"shell:{label}")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        self._fail(KernelDied("the kernel was stopped"))

    def expect(self, msg_id: str) -> asyncio.Future[dict[str, Any]]:
        """The future of the reply to ``msg_id``: register it right after sending (the
        reader only runs when the caller awaits, so no reply can slip by)."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self._died is not None:
            future.set_exception(self._died)
        else:
            self._waiting[msg_id] = future
        return future

    def forget(self, msg_id: str) -> None:
        """The sender gave up (a timeout): its reply, if it comes, is dropped."""
        future = self._waiting.pop(msg_id, None)
        if future is not None and not future.done():
            future.cancel()

    async def _read(self) -> None:
        client = self.process.client
        while True:
            try:
                msg = await client.get_shell_msg(timeout=self.liveness_interval)
            except queue.Empty:
                if self._waiting and not await self.process.is_alive():
                    self._fail(KernelDied(self.process.exit_description()))
                    return
                continue
            parent = msg.get("parent_header", {}).get("msg_id")
            future = self._waiting.pop(parent, None) if parent else None
            if future is not None and not future.done():
                future.set_result(msg)

    def _fail(self, error: KernelDied) -> None:
        self._died = error
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved here: a waiter that gave up logs nothing


class KernelProcess:
    def __init__(self, kernel_name: str, cwd: Path, settings: KernelSettings, launcher: KernelLauncher | None = None) -> None:
        self.kernel_name = kernel_name
        self.cwd = cwd
        self.settings = settings
        self.launcher = launcher
        self.subshell_id: str | None = None  # where completions go, when the kernel has subshells
        self._km: AsyncKernelManager | None = None
        self._kc: Any = None
        self._replies: ShellReplies | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}  # request msg_id -> its reply

    @property
    def client(self) -> Any:
        assert self._kc is not None, "the kernel is not running"
        return self._kc

    async def start(self) -> None:
        """Start the kernel and wait until it answers (raises if it cannot)."""
        if self.launcher is not None:
            km = self.launcher.kernel_manager(kernel_name=self.kernel_name)
        else:
            km = AsyncKernelManager(kernel_name=self.kernel_name)
        km.shutdown_wait_time = 3.0
        try:
            await km.start_kernel(cwd=str(self.cwd))
            kc = km.client()
            kc.start_channels()  # shell, iopub, stdin, control
            await kc.wait_for_ready(timeout=self.settings.startup_timeout)
            self.subshell_id = await asyncio.wait_for(_prepare(kc), self.settings.startup_timeout)
        except Exception:
            if km.has_kernel:
                await km.shutdown_kernel(now=True)
            raise
        self._km, self._kc = km, kc
        self._replies = ShellReplies(self, self.settings.liveness_interval)
        self._replies.start(self.kernel_name)

    async def stop(self, dead: bool = False) -> None:
        """Shut the kernel down (``dead``: it is gone already, only clean up)."""
        replies, self._replies = self._replies, None
        if replies is not None:
            await replies.stop()
        km, kc, self._km, self._kc = self._km, self._kc, None, None
        if kc is not None:
            kc.stop_channels()
        if km is not None:
            try:
                if dead:
                    await km.cleanup_resources()
                else:
                    await km.shutdown_kernel(now=False)
            except Exception:
                logger.exception("stopping kernel %s failed", self.kernel_name)

    async def interrupt(self) -> None:
        if self._km is not None:
            await self._km.interrupt_kernel()

    async def is_alive(self) -> bool:
        return self._km is not None and bool(await self._km.is_alive())

    # -- requests ---------------------------------------------------------------------

    def execute(self, code: str) -> str:
        """Send an execute request (its ``input()`` calls come on the stdin channel);
        return its message id."""
        msg_id = str(self.client.execute(code, store_history=True, allow_stdin=True, stop_on_error=True))
        self._expect(msg_id)
        return msg_id

    def request(self, msg_type: str, content: dict[str, Any]) -> str:
        """Send a request that runs no user code (complete, inspect), on the subshell
        when there is one; return its message id."""
        msg = self.client.session.msg(msg_type, content)
        if self.subshell_id is not None:
            msg["header"]["subshell_id"] = self.subshell_id
        self.client.shell_channel.send(msg)
        msg_id = str(msg["header"]["msg_id"])
        self._expect(msg_id)
        return msg_id

    def _expect(self, msg_id: str) -> None:
        assert self._replies is not None, "the kernel is not running"
        self._pending[msg_id] = self._replies.expect(msg_id)

    async def reply(self, msg_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The content of the shell reply to a request sent by ``execute`` or ``request``
        (KernelDied if the kernel dies first; TimeoutError after ``timeout``)."""
        future = self._pending.pop(msg_id)
        try:
            msg = await asyncio.wait_for(future, timeout)
        finally:
            if future.cancelled() and self._replies is not None:
                self._replies.forget(msg_id)  # given up (timeout, interrupt): a late reply is dropped
        return dict(msg["content"])

    # -- stdin ----------------------------------------------------------------------------

    async def stdin_message(self) -> dict[str, Any]:
        """The next message the kernel sends on stdin (an ``input_request``)."""
        return dict(await self.client.get_stdin_msg())

    def input_reply(self, value: str) -> None:
        self.client.input(value)

    # -- channels -------------------------------------------------------------------------

    async def iopub_message(self) -> dict[str, Any]:
        return dict(await self.client.get_iopub_msg())

    def exit_description(self) -> str:
        process = getattr(getattr(self._km, "provisioner", None), "process", None)
        code = process.poll() if process is not None else None
        return f"exit code {code}" if code is not None else "the process is gone"


# Run silently in a new IPython kernel: breakpoint() stops in pdb, asking for input on
# stdin as in a terminal. ipykernel points it at debugpy for JupyterLab's visual debugger,
# which crdtnb does not drive: there breakpoint() would silently do nothing.
PYTHON_SETUP = "import sys as _s\n_s.breakpointhook = _s.__breakpointhook__\ndel _s"


async def _prepare(kc: Any) -> str | None:
    """Set the new kernel up; return its subshell for completions (None if it has none).
    Runs before the channel readers start: the replies read here are ours, and what
    these requests publish on iopub (busy, idle) is drained so that nobody sees it."""
    info = await kc.kernel_info(reply=True, timeout=SUBSHELL_TIMEOUT)
    content = info["content"]
    subshell = None
    if "kernel subshells" in content.get("supported_features", []):
        subshell = await _open_subshell(kc)
    last = info["parent_header"]["msg_id"]
    if content.get("implementation") == "ipython" and content.get("language_info", {}).get("name") == "python":
        last = kc.execute(PYTHON_SETUP, silent=True, store_history=False, allow_stdin=False)
        while (await kc.get_shell_msg()).get("parent_header", {}).get("msg_id") != last:
            pass
    while True:  # iopub, up to the idle status of the last request
        msg = await kc.get_iopub_msg()
        if (
            msg["msg_type"] == "status"
            and msg["content"].get("execution_state") == "idle"
            and msg.get("parent_header", {}).get("msg_id") == last
        ):
            return subshell


async def _open_subshell(kc: Any) -> str | None:
    """A subshell of the kernel (kernel subshells, JEP 91), or None if it cannot make one."""
    try:
        msg = kc.session.msg("create_subshell_request", {})
        kc.control_channel.send(msg)
        while True:
            reply = await kc.control_channel.get_msg(timeout=SUBSHELL_TIMEOUT)
            if reply.get("parent_header", {}).get("msg_id") == msg["header"]["msg_id"]:
                break
        subshell = reply["content"].get("subshell_id")
        return str(subshell) if reply["content"].get("status") == "ok" and subshell else None
    except Exception as exc:  # no subshell: completions wait for the running cell
        logger.info("kernel subshell unavailable (%s): completions are answered between cells", exc)
        return None
