"""One Jupyter kernel process and its channels (jupyter_client), started where the
settings say: plainly, or inside a sandbox."""

from __future__ import annotations

import logging
import queue
from pathlib import Path
from typing import Any, Protocol

from jupyter_client.manager import AsyncKernelManager

from ..settings import KernelSettings

logger = logging.getLogger("crdtnb.kernel")


class KernelDied(Exception):
    """The kernel process is gone (its exit code, when known, is in the message)."""


class KernelLauncher(Protocol):
    """Makes the kernel manager of a sandbox (see sandbox.py)."""

    def kernel_manager(self, **kwargs: Any) -> AsyncKernelManager: ...


class KernelProcess:
    def __init__(self, kernel_name: str, cwd: Path, settings: KernelSettings, launcher: KernelLauncher | None = None) -> None:
        self.kernel_name = kernel_name
        self.cwd = cwd
        self.settings = settings
        self.launcher = launcher
        self._km: AsyncKernelManager | None = None
        self._kc: Any = None

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
            kc.start_channels()
            await kc.wait_for_ready(timeout=self.settings.startup_timeout)
        except Exception:
            if km.has_kernel:
                await km.shutdown_kernel(now=True)
            raise
        self._km, self._kc = km, kc

    async def stop(self, dead: bool = False) -> None:
        """Shut the kernel down (``dead``: it is gone already, only clean up)."""
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

    def execute(self, code: str) -> str:
        """Send an execute request; return its message id."""
        return str(self.client.execute(code, store_history=True, allow_stdin=False, stop_on_error=True))

    async def reply(self, msg_id: str) -> dict[str, Any]:
        """The shell reply to a request, checking every ``liveness_interval`` that the
        kernel still lives (KernelDied if not)."""
        while True:
            try:
                msg = await self.client.get_shell_msg(timeout=self.settings.liveness_interval)
            except queue.Empty:
                if not await self.is_alive():
                    raise KernelDied(self.exit_description()) from None
                continue
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return dict(msg["content"])

    async def iopub_message(self) -> dict[str, Any]:
        return dict(await self.client.get_iopub_msg())

    def exit_description(self) -> str:
        process = getattr(getattr(self._km, "provisioner", None), "process", None)
        code = process.poll() if process is not None else None
        return f"exit code {code}" if code is not None else "the process is gone"
