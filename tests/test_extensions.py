"""The public extension interface: a third-party extension registered through
NotebookSync sees every hook, with its payload, in the defined order; a failing
extension harms nothing; a slow async hook never holds the relay back.
Real uvicorn (in this process, to read what the extension saw), real clients, real kernel."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx
import nbformat

from crdtnb import Extension, NotebookSync, Settings
from crdtnb.extensions import (
    ChangesDurable,
    DaemonStarted,
    DaemonStopping,
    ExecutionFinished,
    ExecutionStarted,
    FileFailed,
    FileMerged,
    FileSaved,
    PeerJoined,
    PeerLeft,
    RoomLoaded,
    RoomLoading,
    RoomUnloaded,
    RoomUnloading,
)
from crdtnb.origins import PeerOrigin
from crdtnb.settings import FileSettings, RoomSettings

from .conftest import TOKEN, connect, eventually, serving, write_notebook

HOOKS = [
    "on_daemon_started",
    "on_room_loading",
    "on_room_loaded",
    "on_peer_joined",
    "on_changes_durable",
    "on_file_saved",
    "on_execution_started",
    "on_execution_finished",
    "on_file_failed",
    "on_file_merged",
    "on_peer_left",
    "on_daemon_stopping",
    "on_room_unloading",
    "on_room_unloaded",
]


class Recorder(Extension):
    """Records every hook, with what matters of its payload."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def _record(self, name: str, event: Any) -> None:
        self.events.append((name, event))

    async def on_daemon_started(self, event: DaemonStarted) -> None:
        self._record("on_daemon_started", event)

    async def on_daemon_stopping(self, event: DaemonStopping) -> None:
        self._record("on_daemon_stopping", event)

    async def on_room_loading(self, event: RoomLoading) -> None:
        self._record("on_room_loading", event)

    async def on_room_loaded(self, event: RoomLoaded) -> None:
        self._record("on_room_loaded", event)

    async def on_room_unloading(self, event: RoomUnloading) -> None:
        self._record("on_room_unloading", event)

    async def on_room_unloaded(self, event: RoomUnloaded) -> None:
        self._record("on_room_unloaded", event)

    def on_peer_joined(self, event: PeerJoined) -> None:
        self._record("on_peer_joined", event)

    def on_peer_left(self, event: PeerLeft) -> None:
        self._record("on_peer_left", event)

    def on_changes_durable(self, event: ChangesDurable) -> None:
        self._record("on_changes_durable", event)

    def on_file_saved(self, event: FileSaved) -> None:
        self._record("on_file_saved", event)

    def on_file_merged(self, event: FileMerged) -> None:
        self._record("on_file_merged", event)

    def on_file_failed(self, event: FileFailed) -> None:
        self._record("on_file_failed", event)

    def on_execution_started(self, event: ExecutionStarted) -> None:
        self._record("on_execution_started", event)

    def on_execution_finished(self, event: ExecutionFinished) -> None:
        self._record("on_execution_finished", event)

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def first(self, name: str) -> int:
        return self.names().index(name)


class Broken(Extension):
    """Fails in every hook it has."""

    def __init__(self) -> None:
        self.calls = 0

    def _fail(self, *_: Any) -> None:
        self.calls += 1
        raise RuntimeError("an extension bug")

    on_peer_joined = on_peer_left = on_changes_durable = on_file_saved = _fail

    async def on_room_loaded(self, event: RoomLoaded) -> None:
        self._fail()

    async def on_room_unloading(self, event: RoomUnloading) -> None:
        self._fail()


class Slow(Extension):
    """An async hook far slower than the changes coming in (a webhook on a bad day)."""

    def __init__(self) -> None:
        self.handled = 0

    async def on_changes_durable(self, event: ChangesDurable) -> None:
        await asyncio.sleep(0.5)
        self.handled += 1


def _settings(root: Path) -> Settings:
    return Settings(
        root=root,
        files=FileSettings(save_delay=60, poll_interval=0.2),
        rooms=RoomSettings(idle_timeout=0.5),
    )


async def test_an_extension_sees_every_hook_in_order(root: Path) -> None:
    write_notebook(root / "hooks.ipynb", ["print('ran')", "x = 1"])
    recorder, broken, slow = Recorder(), Broken(), Slow()
    sync = NotebookSync(settings=_settings(root), token=TOKEN, extensions=[broken, recorder, slow])
    from starlette.applications import Starlette

    app = Starlette(routes=sync.routes, lifespan=sync.lifespan)
    async with serving(app) as url:
        client = await connect(url, "hooks.ipynb", token=TOKEN)
        first, second = client.cell_ids()
        for _ in range(20):  # far more than the slow hook can handle meanwhile
            client.insert_text(second, 0, "#")
            await client.roundtrip()
        assert slow.handled < 20  # the relay did not wait for it
        async with httpx.AsyncClient(base_url=url, params={"token": TOKEN}, timeout=10) as http:
            saved = await http.post("/api/notebooks/hooks.ipynb/save")
        assert saved.status_code == 200
        await client.execute([first])
        await client.wait_for(lambda _: client.cell(first).get("execution_state") == "idle" and client.outputs(first), timeout=90)
        path = root / "hooks.ipynb"
        path.write_text("{ not a notebook")  # someone breaks the file ...
        await eventually(lambda: "on_file_failed" in recorder.names())
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell("edited outside")]
        nbformat.write(nb, str(path))  # ... and mends it
        await eventually(lambda: "on_file_merged" in recorder.names())
        await client.close()
        await eventually(lambda: "on_peer_left" in recorder.names())
        async with httpx.AsyncClient(base_url=url, params={"token": TOKEN}, timeout=30) as http:
            assert (await http.post("/api/notebooks/hooks.ipynb/shutdown")).status_code == 200
        await eventually(lambda: "on_room_unloaded" in recorder.names(), timeout=15)
    names = recorder.names()
    assert set(names) == set(HOOKS), set(HOOKS) - set(names)
    # Each hook first fires in this order (changes keep coming meanwhile).
    firsts = sorted(HOOKS, key=recorder.first)
    assert firsts[:4] == ["on_daemon_started", "on_room_loading", "on_room_loaded", "on_peer_joined"]
    assert firsts.index("on_peer_left") < firsts.index("on_room_unloading") < firsts.index("on_room_unloaded")
    assert names[-1] == "on_daemon_stopping"
    assert recorder.first("on_execution_started") < recorder.first("on_execution_finished")

    # Payloads.
    payload: dict[str, Any] = {}
    for name, event in recorder.events:
        payload.setdefault(name, event)  # the first of each
    joined = payload["on_peer_joined"]
    assert joined.user.name == "owner" and joined.can_write
    changes = [c for n, e in recorder.events if n == "on_changes_durable" for c in e.changes]
    peer_changes = [c for c in changes if isinstance(c.origin, PeerOrigin)]
    assert peer_changes and all(c.user is not None and c.user.name == "owner" for c in peer_changes)
    assert all(c.nbytes > 0 and 0 <= c.latency < 30 for c in changes)
    assert payload["on_file_saved"].path == "hooks.ipynb" and payload["on_file_saved"].wrote
    finished = payload["on_execution_finished"]
    assert finished.cell_id == first and finished.status == "ok" and finished.execution_count == 1
    assert "not a valid notebook" in payload["on_file_failed"].error
    # The broken extension failed in every call and changed nothing for the others.
    assert broken.calls > 0


async def test_the_audit_log_example_records_who_changed_what(root: Path, tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    try:
        from audit_log import AuditLog
    finally:
        sys.path.pop(0)
    from crdtnb.users import Role, UserStore

    log = tmp_path / "audit.jsonl"
    users = UserStore(root / ".crdtnb")
    users.add("zoe", Role.EDITOR, "correct horse battery")
    token = users.new_token("zoe")
    sync = NotebookSync(settings=_settings(root), token=TOKEN, extensions=[AuditLog(log)])
    from starlette.applications import Starlette

    async with serving(Starlette(routes=sync.routes, lifespan=sync.lifespan)) as url:
        client = await connect(url, "nb.ipynb", token=token)
        client.insert_text(client.cell_ids()[0], 0, "# zoë was here\n")
        await client.roundtrip()
        await client.close()
        await eventually(lambda: log.exists() and "zoe" in log.read_text())
    records = [json.loads(line) for line in log.read_text().splitlines()]
    mine = [r for r in records if r.get("user") == "zoe"]
    assert mine and mine[0]["notebook"] == "nb.ipynb" and mine[0]["bytes"] > 0
    assert os.path.getsize(log) > 0
