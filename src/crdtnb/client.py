"""A Python client for a crdtnb daemon: a synced pycrdt document of one notebook.

    async with await connect("http://127.0.0.1:8888", "demo/intro.ipynb", token=...) as nb:
        nb.set_source(nb.cell_ids()[0], "print('hi')")
        await nb.wait_for(lambda doc: ...)

Edits made to ``nb.doc`` are sent to the server as they happen.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import nbformat
from pycrdt import Array, Doc, Map, Text, TransactionEvent
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from .notebook import export_notebook, new_cell_map
from .protocol import (
    AwarenessEntry,
    AwarenessMessage,
    AuthMessage,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    encode_awareness,
    encode_sync_step1,
    encode_sync_step2,
    encode_update,
    parse_message,
    read_awareness,
    write_awareness,
)


class SyncClosed(ConnectionError):
    """The server closed the connection (with a code and a reason)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection closed: {code} {reason}")
        self.code = code
        self.reason = reason


def sync_url(base_url: str, path: str, token: str | None = None) -> str:
    """ws(s)://host/prefix/api/sync/<path>?token=… for an http(s) or ws(s) base URL."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    prefix = parts.path.rstrip("/")
    query = urlencode({"token": token}) if token else ""
    return urlunsplit((scheme, parts.netloc, f"{prefix}/api/sync/{quote(path)}", query, ""))


class KernelApi:
    """The daemon's kernel routes over plain HTTP (stdlib, run off the event loop)."""

    def __init__(self, base_url: str, token: str | None, headers: dict[str, str] | None) -> None:
        parts = urlsplit(base_url)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        self.base_url = urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        if token:
            self.headers["Authorization"] = f"token {token}"

    async def call(self, method: str, path: str, action: str, body: Any = None) -> dict[str, Any]:
        url = f"{self.base_url}/api/notebooks/{quote(path)}/{action}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers=self.headers)

        def send() -> dict[str, Any]:
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return dict(json.loads(response.read()))
            except urllib.error.HTTPError as exc:
                raise RuntimeError(f"{method} {action}: HTTP {exc.code} {exc.read().decode(errors='replace')}") from exc

        return await asyncio.to_thread(send)


class NotebookClient:
    def __init__(
        self,
        websocket: ClientConnection,
        path: str,
        doc: Doc | None = None,
        api: KernelApi | None = None,
    ) -> None:
        self.websocket = websocket
        self.path = path
        self.api = api
        # Passing the doc of an earlier connection resumes it: only the difference is exchanged.
        self.doc = doc if doc is not None else Doc()
        self.awareness: dict[int, Any] = {}
        self.permission_denied: str | None = None
        self._awareness_clock = 0
        self._remote = False
        self._outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._changed = asyncio.Event()
        self._synced = asyncio.Event()
        self._step2_count = 0
        self._closed: SyncClosed | None = None
        self.doc.observe(self._on_local_change)
        self._tasks = [
            asyncio.create_task(self._read_loop()),
            asyncio.create_task(self._write_loop()),
        ]
        self._send(encode_sync_step1(self.doc.get_state()))

    # -- document access ------------------------------------------------------------

    @property
    def cells(self) -> Array:
        return self.doc.get("cells", type=Array)

    @property
    def state(self) -> Map:
        return self.doc.get("state", type=Map)

    def cell_ids(self) -> list[str]:
        return [str(cell["id"]) for cell in self.cells]

    def cell(self, cell_id: str) -> Map:
        for cell in self.cells:
            if cell["id"] == cell_id:
                return cell
        raise KeyError(cell_id)

    def source(self, cell_id: str) -> str:
        return str(self.cell(cell_id)["source"])

    def notebook(self) -> dict[str, Any]:
        return export_notebook(self.doc)

    # -- edits -------------------------------------------------------------------

    def add_cell(self, source: str = "", cell_type: str = "code", index: int | None = None) -> str:
        maker = {
            "code": nbformat.v4.new_code_cell,
            "markdown": nbformat.v4.new_markdown_cell,
            "raw": nbformat.v4.new_raw_cell,
        }[cell_type]
        cell = json.loads(json.dumps(maker(source)))
        ymap = new_cell_map(cell)
        cells = self.cells
        if index is None:
            cells.append(ymap)
        else:
            cells.insert(index, ymap)
        return str(cell["id"])

    def delete_cell(self, cell_id: str) -> None:
        ids = self.cell_ids()
        del self.cells[ids.index(cell_id)]

    def insert_text(self, cell_id: str, index: int, text: str) -> None:
        """Insert ``text`` at character ``index`` of a cell's source."""
        source: Text = self.cell(cell_id)["source"]
        # pycrdt's Text counts UTF-8 bytes; callers count characters.
        offset = len(str(source)[:index].encode("utf-8")) if index else 0
        source.insert(offset, text)

    def set_source(self, cell_id: str, text: str) -> None:
        source: Text = self.cell(cell_id)["source"]
        with self.doc.transaction():
            source.clear()
            source.insert(0, text)

    def set_awareness(self, state: dict[str, Any] | None) -> None:
        """Publish this client's presence (``None`` = leaving)."""
        self._awareness_clock += 1
        text = "null" if state is None else json.dumps(state, separators=(",", ":"), ensure_ascii=False)
        entry = AwarenessEntry(self.doc.client_id, self._awareness_clock, text)
        self._send(encode_awareness(write_awareness([entry])))

    # -- kernel ------------------------------------------------------------------------

    async def execute(self, cell_ids: list[str] | None = None) -> dict[str, Any]:
        """Queue cells (default: every code cell, in order) to run on the server.

        On return the local document already shows them queued."""
        if cell_ids is None:
            cell_ids = [str(c["id"]) for c in self.cells if c.get("cell_type") == "code"]
        return await self._kernel_call("POST", "execute", {"cell_ids": cell_ids})

    async def interrupt(self) -> dict[str, Any]:
        return await self._kernel_call("POST", "interrupt")

    async def restart(self) -> dict[str, Any]:
        return await self._kernel_call("POST", "restart")

    async def shutdown_kernel(self) -> dict[str, Any]:
        return await self._kernel_call("POST", "shutdown")

    async def kernel(self) -> dict[str, Any]:
        return await self._kernel_call("GET", "kernel")

    async def _kernel_call(self, method: str, action: str, body: Any = None) -> dict[str, Any]:
        if self.api is None:
            raise RuntimeError("this client was created without an HTTP base URL")
        # Our pending edits reach the server first, so it runs what we see.
        await self.roundtrip()
        result = await self.api.call(method, self.path, action, body)
        await self.roundtrip()
        return result

    def outputs(self, cell_id: str) -> list[dict[str, Any]]:
        """A cell's outputs as nbformat dicts (stream text joined)."""
        outputs = self.cell(cell_id).get("outputs")
        return [] if outputs is None else [json.loads(json.dumps(o.to_py())) for o in outputs]

    # -- waiting -------------------------------------------------------------------

    async def wait_synced(self, timeout: float = 10.0) -> None:
        await self._wait(self._synced.wait(), timeout)

    async def wait_for(self, predicate: Callable[[Doc], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate(doc)`` holds after some change (or already holds)."""

        async def check() -> None:
            while not predicate(self.doc):
                self._changed.clear()
                await self._changed.wait()

        await self._wait(check(), timeout)

    async def roundtrip(self, timeout: float = 10.0) -> None:
        """Wait until the server has stored and acknowledged every edit sent so far.

        The server answers a step1 only once everything before it is durable."""
        target = self._step2_count + 1
        self._send(encode_sync_step1(self.doc.get_state()))

        async def acked() -> None:
            while self._step2_count < target:
                self._changed.clear()
                await self._changed.wait()

        await self._wait(acked(), timeout)

    async def _wait(self, awaitable: Any, timeout: float) -> None:
        task = asyncio.ensure_future(awaitable)
        reader = self._tasks[0]
        done, _ = await asyncio.wait({task, reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
            return
        task.cancel()
        if self._closed is not None:
            raise self._closed
        raise asyncio.TimeoutError(f"condition not met within {timeout} s")

    @property
    def closed(self) -> SyncClosed | None:
        return self._closed

    async def wait_closed(self, timeout: float = 10.0) -> SyncClosed:
        await asyncio.wait_for(asyncio.shield(self._tasks[0]), timeout)
        assert self._closed is not None
        return self._closed

    # -- plumbing --------------------------------------------------------------------

    def _send(self, message: bytes) -> None:
        self._outgoing.put_nowait(message)

    def _on_local_change(self, event: TransactionEvent) -> None:
        if not self._remote:
            self._send(encode_update(event.update))
        self._changed.set()

    def _apply_remote(self, update: bytes) -> None:
        self._remote = True
        try:
            self.doc.apply_update(update)
        finally:
            self._remote = False

    async def _read_loop(self) -> None:
        try:
            async for frame in self.websocket:
                if isinstance(frame, str):
                    continue
                self._handle(frame)
        except ConnectionClosed:
            pass
        finally:
            self._closed = SyncClosed(self.websocket.close_code, self.websocket.close_reason or "")
            self._changed.set()
            self._outgoing.put_nowait(None)

    def _handle(self, frame: bytes) -> None:
        message = parse_message(frame)
        if isinstance(message, SyncStep1):
            self._send(encode_sync_step2(self.doc.get_update(message.state_vector)))
        elif isinstance(message, SyncStep2):
            self._apply_remote(message.update)
            self._step2_count += 1
            self._synced.set()
        elif isinstance(message, SyncUpdate):
            self._apply_remote(message.update)
        elif isinstance(message, AwarenessMessage):
            for entry in read_awareness(message.payload):
                if entry.state == "null":
                    self.awareness.pop(entry.client_id, None)
                else:
                    self.awareness[entry.client_id] = json.loads(entry.state)
        elif isinstance(message, AuthMessage):
            self.permission_denied = message.reason
        self._changed.set()

    async def _write_loop(self) -> None:
        while True:
            message = await self._outgoing.get()
            if message is None:
                return
            try:
                await self.websocket.send(message)
            except ConnectionClosed:
                return

    async def send_raw(self, frame: bytes | str) -> None:
        """Send a frame as is (for tests of hostile input)."""
        await self.websocket.send(frame)

    async def close(self) -> None:
        if self._closed is None:
            await self.websocket.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> NotebookClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def connect(
    base_url: str,
    path: str,
    *,
    token: str | None = None,
    timeout: float = 10.0,
    wait_synced: bool = True,
    headers: dict[str, str] | None = None,
    doc: Doc | None = None,
    max_size: int | None = 64 * 2**20,
) -> NotebookClient:
    """Connect to ``path`` on the daemon at ``base_url`` and (by default) wait until synced."""
    websocket = await ws_connect(
        sync_url(base_url, path, token),
        additional_headers=headers,
        open_timeout=timeout,
        max_size=max_size,
        proxy=None,
    )
    client = NotebookClient(websocket, path, doc, KernelApi(base_url, token, headers))
    if wait_synced:
        try:
            await client.wait_synced(timeout)
        except BaseException:
            await client.close()
            raise
    return client
