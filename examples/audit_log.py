"""An audit log of who changed which notebook, as a crdtnb extension.

Every change made durable by a connected user becomes one JSON line in a file
(``{"time", "notebook", "user", "changes", "bytes"}``, one line per user and batch);
saves, outside edits and cell runs are logged too. The hook is a coroutine, so it runs
on the extension's own queue: a slow disk never delays the relay.

    from crdtnb import NotebookSync
    from audit_log import AuditLog

    sync = NotebookSync("notebooks", extensions=[AuditLog("audit.jsonl")])

or with the daemon's own server, from a small script:

    uvicorn examples.audit_app:app
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from crdtnb import Extension
from crdtnb.extensions import ChangesDurable, ExecutionFinished, FileMerged, FileSaved


class AuditLog(Extension):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    async def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps({"time": time.time(), **record}, ensure_ascii=False) + "\n"
        await asyncio.to_thread(self._append, line)

    def _append(self, line: str) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)

    async def on_changes_durable(self, event: ChangesDurable) -> None:
        by_user: dict[str, list[int]] = {}
        for change in event.changes:
            if change.user is not None:
                tally = by_user.setdefault(change.user.name, [0, 0])
                tally[0] += 1
                tally[1] += change.nbytes
        for user, (changes, nbytes) in by_user.items():
            await self._write({"notebook": event.room.name, "user": user, "changes": changes, "bytes": nbytes})

    async def on_file_saved(self, event: FileSaved) -> None:
        if event.wrote:
            await self._write({"notebook": event.path, "event": "saved"})

    async def on_file_merged(self, event: FileMerged) -> None:
        await self._write({"notebook": event.path, "event": "edited outside crdtnb"})

    async def on_execution_finished(self, event: ExecutionFinished) -> None:
        await self._write(
            {"notebook": event.room.name, "event": "ran", "cell": event.cell_id, "status": event.status}
        )
