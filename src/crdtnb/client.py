"""A Python client for a crdtnb daemon: a synced pycrdt document of one notebook.

    async with await connect("http://127.0.0.1:8888", "demo/intro.ipynb", token=...) as nb:
        nb.set_source(nb.cell_ids()[0], "print('hi')")
        await nb.wait_for(lambda doc: ...)

Edits made to ``nb.doc`` are sent to the server as they happen. When the
connection drops, the client reconnects by itself (with backoff and jitter, as
y-websocket's provider does), keeping its document: the resync then exchanges
what either side missed, edits made while disconnected included.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Any, cast
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import nbformat
from pycrdt import Array, Doc, Map, Text, TransactionEvent
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .notebook import export_notebook, new_cell_map
from .protocol import (
    AuthMessage,
    AwarenessEntry,
    AwarenessMessage,
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
from .schema import INPUT_REQUEST, MOVED_TO, cells_of, state_of

logger = logging.getLogger("crdtnb.client")

# Close codes another attempt would only meet again (see README.md, "Websocket close
# codes"): a bad path or notebook, no or wrong credentials, a frame the server refused.
TERMINAL_CLOSE_CODES = frozenset({4400, 4401, 4403, 4404, 4422, 1003, 1007, 1008, 1009})
# The notebook was renamed: the client reconnects to its new path (state.moved_to).
MOVED_CLOSE_CODE = 4410
# Statuses of a refused handshake that are as final.
TERMINAL_HTTP_STATUSES = frozenset({400, 401, 403, 404})


def _acknowledged(link: Any, target: int) -> bool:
    return bool(link.step2_received >= target or link.lost)


class SyncClosed(ConnectionError):
    """The connection is closed for good (with the server's code and reason)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection closed: {code} {reason}")
        self.code = code
        self.reason = reason


class ConnectionStatus(str, Enum):
    CONNECTING = "connecting"  # a socket is being opened, or the resync is under way
    CONNECTED = "connected"  # synced both ways on a live socket
    DISCONNECTED = "disconnected"  # the socket is gone: waiting to try again
    CLOSED = "closed"  # for good: close() was called, or the server refused us


@dataclass(frozen=True)
class Backoff:
    """Delays between reconnection attempts: doubling from ``initial`` up to
    ``maximum`` seconds, each drawn from the upper half of its step so that
    clients dropped together do not all come back at the same instant."""

    initial: float = 0.25
    maximum: float = 4.0

    def delay(self, failures: int) -> float:
        ceiling = min(self.maximum, self.initial * 2 ** min(failures, 32))
        return random.uniform(ceiling / 2, ceiling)


Dial = Callable[[], Awaitable[ClientConnection]]


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


class _Link:
    """One socket of the client's life: its send queue and how far its handshake got."""

    def __init__(self, websocket: ClientConnection) -> None:
        self.websocket = websocket
        self.outgoing: asyncio.Queue[bytes] = asyncio.Queue()
        self.step1_sent = 0
        self.step2_received = 0
        self.answered_server = False  # our step2 is queued: later edits go as updates
        self.lost = False

    @property
    def synced(self) -> bool:
        return self.step2_received > 0 and self.answered_server and not self.lost

    def send(self, message: bytes) -> None:
        if not self.lost:
            self.outgoing.put_nowait(message)


class NotebookClient:
    def __init__(
        self,
        websocket: ClientConnection,
        path: str,
        doc: Doc | None = None,
        api: KernelApi | None = None,
        *,
        dial: Dial | None = None,
        backoff: Backoff | None = None,
        on_status: Callable[[ConnectionStatus], None] | None = None,
    ) -> None:
        """``dial`` opens a new socket to the same notebook: with it the client
        reconnects whenever the connection drops for a reason that may pass."""
        self.path = path
        self.api = api
        # Passing the doc of an earlier connection resumes it: only the difference is exchanged.
        self.doc = doc if doc is not None else Doc()
        self.awareness: dict[int, Any] = {}
        self.permission_denied: str | None = None
        self.status = ConnectionStatus.CONNECTING
        self.last_close: SyncClosed | None = None  # the latest close, retried or not
        self._dial = dial
        self._backoff = backoff or Backoff()
        self._on_status = on_status
        self._awareness_clock = 0
        self._presence: str | None = None  # our presence as JSON, announced again on reconnect
        self._remote = False
        self._changed = asyncio.Event()
        self._synced = asyncio.Event()
        self._closed: SyncClosed | None = None
        self._closing = False
        self._link = self._open(websocket)
        self.doc.observe(self._on_local_change)
        self._supervisor = asyncio.create_task(self._run(), name=f"crdtnb-client:{path}")

    @property
    def websocket(self) -> ClientConnection:
        """The current socket (a new one after each reconnection)."""
        return self._link.websocket

    @property
    def connected(self) -> bool:
        return self.status is ConnectionStatus.CONNECTED

    # -- document access ------------------------------------------------------------

    @property
    def cells(self) -> Array:
        return cells_of(self.doc)

    @property
    def state(self) -> Map:
        return state_of(self.doc)

    def cell_ids(self) -> list[str]:
        return [str(cell["id"]) for cell in self.cells]

    def cell(self, cell_id: str) -> Map:
        for cell in self.cells:
            if isinstance(cell, Map) and cell.get("id") == cell_id:
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
        cell = json.loads(json.dumps(cast(Any, maker)(source)))
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
        self._presence = None if state is None else json.dumps(state, separators=(",", ":"), ensure_ascii=False)
        self._announce(self._link, self._presence or "null")

    def _announce(self, link: _Link, text: str) -> None:
        self._awareness_clock += 1
        entry = AwarenessEntry(self.doc.client_id, self._awareness_clock, text)
        link.send(encode_awareness(write_awareness([entry])))

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

    async def complete(self, code: str, cursor_pos: int | None = None) -> dict[str, Any]:
        """The kernel's completions at ``cursor_pos`` (default: the end of ``code``):
        ``matches``, ``cursor_start``, ``cursor_end``; ``status`` "no_kernel" when none runs."""
        body = {"code": code, "cursor_pos": len(code) if cursor_pos is None else cursor_pos}
        return await self._kernel_call("POST", "complete", body)

    async def inspect(self, code: str, cursor_pos: int | None = None, detail_level: int = 0) -> dict[str, Any]:
        """The kernel's help on the name at ``cursor_pos``: ``found`` and ``data`` (a mimebundle)."""
        body = {"code": code, "cursor_pos": len(code) if cursor_pos is None else cursor_pos, "detail_level": detail_level}
        return await self._kernel_call("POST", "inspect", body)

    def input_requests(self) -> list[dict[str, Any]]:
        """The input requests waiting for an answer (a running cell called ``input()``,
        getpass or pdb): ``[{"id", "cell_id", "prompt", "password"}]``, or []."""
        request = self.state.get(INPUT_REQUEST)
        return [dict(request)] if isinstance(request, dict) else []

    async def answer_input(self, request_id: str, value: str) -> dict[str, Any]:
        """Answer an input request (the first answer wins: a later one raises)."""
        return await self._kernel_call("POST", "input", {"id": request_id, "value": value})

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
        """Wait until ``predicate(doc)`` holds after some change (or already holds),
        across reconnections; SyncClosed if the connection is closed for good."""
        await self._wait(self._until(lambda: predicate(self.doc)), timeout)

    async def roundtrip(self, timeout: float = 10.0) -> None:
        """Wait until the server has stored and acknowledged every edit made so far.

        The server answers a step1 only once everything before it is durable. While
        disconnected this waits for the reconnection (whose resync carries the edits)."""

        async def acked() -> None:
            while True:
                await self._until(lambda: self._link.synced)
                link = self._link
                link.step1_sent += 1
                target = link.step1_sent
                link.send(encode_sync_step1(self.doc.get_state()))
                await self._until(partial(_acknowledged, link, target))
                if link.step2_received >= target:
                    return

        await self._wait(acked(), timeout)

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self._changed.clear()
            await self._changed.wait()

    async def _wait(self, awaitable: Any, timeout: float) -> None:
        task = asyncio.ensure_future(awaitable)
        done, _ = await asyncio.wait({task, self._supervisor}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
            return
        task.cancel()
        if self._closed is not None:
            raise self._closed
        raise asyncio.TimeoutError(f"condition not met within {timeout} s")

    @property
    def closed(self) -> SyncClosed | None:
        """Set once the connection is closed for good (not while reconnecting)."""
        return self._closed

    async def wait_closed(self, timeout: float = 10.0) -> SyncClosed:
        """Wait until the connection is closed for good (a drop that is retried is not)."""
        done, _ = await asyncio.wait({self._supervisor}, timeout=timeout)
        if not done:
            raise asyncio.TimeoutError(f"still open after {timeout} s")
        assert self._closed is not None
        return self._closed

    # -- the connection's life ----------------------------------------------------------

    def _open(self, websocket: ClientConnection) -> _Link:
        """A new socket: ask for the server's state and say who we are again."""
        link = _Link(websocket)
        link.step1_sent = 1
        link.send(encode_sync_step1(self.doc.get_state()))
        if self._presence is not None:
            self._announce(link, self._presence)
        return link

    async def _run(self) -> None:
        """Serve the socket; when it drops, dial again until the server takes us back
        or refuses us for good."""
        failures = 0
        link = self._link
        try:
            while True:
                await self._serve(link)
                close = SyncClosed(link.websocket.close_code, link.websocket.close_reason or "")
                self.last_close = close
                if link.step2_received > 0:
                    failures = 0  # it worked for a while: start again from the shortest delay
                moved = self._moved_to(close)
                if self._closing or self._dial is None or (close.code in TERMINAL_CLOSE_CODES and moved is None):
                    self._closed = close
                    return
                if moved is not None:
                    # The notebook was renamed: follow it (the dial uses self.path).
                    logger.info("%s moved to %s: following", self.path, moved)
                    self.path = moved
                self._forget_presence()
                self._set_status(ConnectionStatus.DISCONNECTED)
                websocket = None
                while websocket is None:
                    if moved is None or failures > 0:
                        await asyncio.sleep(self._backoff.delay(failures))
                    failures += 1
                    self._set_status(ConnectionStatus.CONNECTING)
                    try:
                        websocket = await self._dial()
                    except InvalidStatus as exc:
                        status = exc.response.status_code
                        if status in TERMINAL_HTTP_STATUSES:
                            self._closed = SyncClosed(None, f"the server refused the connection: HTTP {status}")
                            return
                        self._set_status(ConnectionStatus.DISCONNECTED)
                    except (OSError, asyncio.TimeoutError, InvalidHandshake) as exc:
                        logger.debug("%s: reconnecting failed: %s", self.path, exc)
                        self._set_status(ConnectionStatus.DISCONNECTED)
                link = self._link = self._open(websocket)
        finally:
            if self._closed is None:
                self._closed = SyncClosed(self._link.websocket.close_code, "closed by the client")
            self._set_status(ConnectionStatus.CLOSED)

    def _moved_to(self, close: SyncClosed) -> str | None:
        """The new path of a notebook renamed while we were connected (close code 4410;
        the server set ``state.moved_to`` first), or None."""
        if close.code != MOVED_CLOSE_CODE:
            return None
        moved = self.state.get(MOVED_TO)
        if not isinstance(moved, str) and close.reason.startswith("moved to "):
            moved = close.reason.removeprefix("moved to ")
        return moved if isinstance(moved, str) and moved and moved != self.path else None

    async def _serve(self, link: _Link) -> None:
        writer = asyncio.create_task(self._write_loop(link))
        try:
            async for frame in link.websocket:
                if isinstance(frame, str):
                    continue
                self._handle(link, frame)
        except ConnectionClosed:
            pass
        finally:
            link.lost = True
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            self._changed.set()

    async def _write_loop(self, link: _Link) -> None:
        while True:
            message = await link.outgoing.get()
            try:
                await link.websocket.send(message)
            except ConnectionClosed:
                return

    def _set_status(self, status: ConnectionStatus) -> None:
        if status is self.status:
            return
        self.status = status
        self._changed.set()
        if self._on_status is not None:
            try:
                self._on_status(status)
            except Exception:
                logger.exception("on_status callback failed")

    def _forget_presence(self) -> None:
        # Others' presence is unknown until the server tells it again.
        self.awareness.clear()

    # -- plumbing --------------------------------------------------------------------

    def _on_local_change(self, event: TransactionEvent) -> None:
        # Before the server's step1 is answered, the step2 will carry this edit.
        if not self._remote and self._link.answered_server:
            self._link.send(encode_update(event.update))
        self._changed.set()

    def _apply_remote(self, update: bytes) -> None:
        self._remote = True
        try:
            self.doc.apply_update(update)
        finally:
            self._remote = False

    def _handle(self, link: _Link, frame: bytes) -> None:
        message = parse_message(frame)
        if isinstance(message, SyncStep1):
            link.send(encode_sync_step2(self.doc.get_update(message.state_vector)))
            link.answered_server = True
        elif isinstance(message, SyncStep2):
            self._apply_remote(message.update)
            link.step2_received += 1
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
        if link.synced:
            self._set_status(ConnectionStatus.CONNECTED)
        self._changed.set()

    async def send_raw(self, frame: bytes | str) -> None:
        """Send a frame as is (for tests of hostile input)."""
        await self.websocket.send(frame)

    async def close(self) -> None:
        """Close the connection and stop reconnecting."""
        self._closing = True
        if not self._link.lost:
            try:
                await self.websocket.close()
            except Exception:  # the socket is broken already: nothing left to close
                pass
        self._supervisor.cancel()
        await asyncio.gather(self._supervisor, return_exceptions=True)

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
    reconnect: bool = True,
    backoff: Backoff | None = None,
    on_status: Callable[[ConnectionStatus], None] | None = None,
) -> NotebookClient:
    """Connect to ``path`` on the daemon at ``base_url`` and (by default) wait until synced.

    The first connection must succeed (its error is raised); after that, with
    ``reconnect``, a dropped connection is reopened with ``backoff`` until the
    server takes the client back or refuses it for good (``closed`` is then set)."""
    following: list[NotebookClient] = []  # the client, once made: a rename changes its path

    async def dial() -> ClientConnection:
        url = sync_url(base_url, following[0].path if following else path, token)
        return await ws_connect(url, additional_headers=headers, open_timeout=timeout, max_size=max_size, proxy=None)

    websocket = await dial()
    client = NotebookClient(
        websocket,
        path,
        doc,
        KernelApi(base_url, token, headers),
        dial=dial if reconnect else None,
        backoff=backoff,
        on_status=on_status,
    )
    following.append(client)
    if wait_synced:
        try:
            await client.wait_synced(timeout)
        except BaseException:
            await client.close()
            raise
    return client
