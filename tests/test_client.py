"""The Python client reconnects by itself: a real daemon stopped (SIGTERM, kill -9)
and started again on the same port, edits on both sides during the outage."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from crdtnb.client import Backoff, ConnectionStatus, NotebookClient, SyncClosed, connect, sync_url
from crdtnb.users import Role, UserStore

from .conftest import Daemon, read_sources

OUTAGE_TIMEOUT = 60  # seconds for a client to come back after the daemon does
FAST = Backoff(initial=0.1, maximum=1.0)


def _sources(client: NotebookClient) -> list[str]:
    return [client.source(cell) for cell in client.cell_ids()]


def _add_cell_on_disk(path: Path, source: str) -> None:
    nb = nbformat.read(str(path), as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell(source))
    nbformat.write(nb, str(path))


@pytest.mark.parametrize("how", ["SIGTERM", "kill -9"])
async def test_edits_on_both_sides_of_an_outage_converge(daemon: Daemon, root: Path, how: str) -> None:
    statuses: list[ConnectionStatus] = []
    a = await daemon.connect("nb.ipynb", backoff=FAST, on_status=statuses.append)
    a.set_awareness({"user": {"name": "Zoë"}})
    first = a.cell_ids()[0]
    a.insert_text(first, 0, "# before\n")
    await a.roundtrip()
    assert a.connected

    if how == "SIGTERM":
        assert daemon.stop() == 0
    else:
        daemon.kill()
    await a.wait_for(lambda _: a.status is not ConnectionStatus.CONNECTED, timeout=10)
    assert a.closed is None  # not for good: it is retrying
    assert a.last_close is not None and a.last_close.code in (1001, 1006, 1012)
    assert a.awareness == {}  # others' presence is unknown while away

    # Both sides change while the daemon is down: the client in its document, the
    # server's side on disk; and a roundtrip asked for now completes once back.
    a.insert_text(first, 0, "offline A\n")
    offline_cell = a.add_cell("added while offline")
    pending = asyncio.create_task(a.roundtrip(timeout=OUTAGE_TIMEOUT))
    _add_cell_on_disk(root / "nb.ipynb", "added on disk while down")

    daemon.restart(same_port=True)
    b = await daemon.connect("nb.ipynb", reconnect=False)
    b.insert_text(b.cell_ids()[1], 0, "online B ")
    await b.roundtrip()

    await pending
    await a.wait_for(lambda _: "online B " in _sources(a)[1] and "added on disk while down" in _sources(a), timeout=OUTAGE_TIMEOUT)
    await b.wait_for(lambda _: offline_cell in b.cell_ids() and b.source(first).startswith("offline A\n# before\n"))
    await a.roundtrip()
    await b.roundtrip()
    assert _sources(a) == _sources(b)
    assert [c["source"] for c in daemon.notebook("nb.ipynb")["cells"]] == _sources(a)
    # Its presence was announced again.
    await b.wait_for(lambda _: b.awareness.get(a.doc.client_id, {}).get("user", {}).get("name") == "Zoë")
    assert statuses[:1] == [ConnectionStatus.CONNECTED]
    assert ConnectionStatus.DISCONNECTED in statuses and statuses[-1] == ConnectionStatus.CONNECTED
    assert a.closed is None

    # The offline edits are durable: they survive a kill -9 right away.
    await b.close()
    daemon.kill()
    daemon.restart(same_port=True)
    fresh = await daemon.connect("nb.ipynb", reconnect=False)
    assert _sources(fresh) == _sources(a)
    await fresh.close()
    await a.close()


async def test_a_refusal_on_reconnect_is_final(daemon: Daemon, root: Path) -> None:
    """Terminal close codes are not retried: the client closes and its waiters fail."""
    store = UserStore(root / ".crdtnb")
    store.add("carl", Role.EDITOR, "correct horse battery")
    token = store.new_token("carl")
    statuses: list[ConnectionStatus] = []
    client = await daemon.connect("nb.ipynb", token=token, backoff=FAST, on_status=statuses.append)
    waiter = asyncio.create_task(client.wait_for(lambda _: False, timeout=OUTAGE_TIMEOUT))
    daemon.stop()
    store.revoke_tokens("carl")  # while the daemon is down
    daemon.restart(same_port=True)
    closed = await client.wait_closed(timeout=OUTAGE_TIMEOUT)
    assert closed.code == 4401
    assert client.closed is closed
    with pytest.raises(SyncClosed):
        await waiter
    with pytest.raises(SyncClosed):
        await client.roundtrip()
    assert statuses[-1] == ConnectionStatus.CLOSED
    assert daemon.health()["connections"] == 0
    await client.close()


async def test_close_stops_the_retries(daemon: Daemon) -> None:
    client = await daemon.connect("nb.ipynb", backoff=FAST)
    daemon.stop()
    await client.wait_for(lambda _: client.status is ConnectionStatus.DISCONNECTED or client.status is ConnectionStatus.CONNECTING)
    await client.close()
    assert client.status is ConnectionStatus.CLOSED
    assert client.closed is not None
    closed = await client.wait_closed(timeout=1)
    assert closed is client.closed
    daemon.restart(same_port=True)
    other = await daemon.connect("nb.ipynb", reconnect=False)
    await other.roundtrip()
    assert daemon.health()["connections"] == 1
    await other.close()


async def test_without_reconnect_a_drop_is_final(daemon: Daemon) -> None:
    client = await daemon.connect("nb.ipynb", reconnect=False)
    daemon.kill()
    closed = await client.wait_closed(timeout=10)
    assert closed.code == 1006
    with pytest.raises(SyncClosed):
        await client.wait_for(lambda _: False)


async def test_a_client_dropped_as_too_slow_comes_back_and_resyncs(daemon_factory: Any) -> None:
    """1013: the server dropped a client that stopped reading; it reconnects and resyncs."""
    daemon = daemon_factory("--max-send-queue-bytes", "2000000")

    async def dial() -> ClientConnection:
        # A small receive buffer, so that the kernel does not absorb megabytes on the
        # victim's behalf while it is not reading.
        sock = socket.create_connection(("127.0.0.1", daemon.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32_768)
        return await ws_connect(sync_url(daemon.url, "nb.ipynb", daemon.token), sock=sock, proxy=None, max_size=None)

    victim = NotebookClient(await dial(), "nb.ipynb", dial=dial, backoff=FAST)
    await victim.wait_synced()
    cell = victim.cell_ids()[0]

    async def flood() -> None:
        writer = await connect(daemon.url, "nb.ipynb", token=daemon.token, reconnect=False)
        for i in range(300):
            # Random text: the websocket compresses, and a repeated letter would shrink to nothing.
            writer.insert_text(cell, 0, f"[{i}]" + base64.b64encode(os.urandom(75_000)).decode())
            if i % 10 == 9:
                await writer.roundtrip(timeout=60)
                if "send queue overflow" in daemon.log():
                    break
        await writer.roundtrip(timeout=60)
        await writer.close()

    failures: list[BaseException] = []

    def run_flood() -> None:
        try:
            asyncio.run(flood())
        except BaseException as exc:
            failures.append(exc)

    flooder = threading.Thread(target=run_flood)
    flooder.start()
    # This event loop is blocked on purpose: the victim reads nothing until the
    # server gives up on it, and then at once (before the server drops the socket).
    deadline = time.monotonic() + 60
    while "send queue overflow" not in daemon.log() and flooder.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "send queue overflow" in daemon.log(), failures
    await asyncio.to_thread(flooder.join, 120)
    assert not flooder.is_alive() and failures == []

    await victim.wait_for(lambda _: victim.last_close is not None and victim.connected, timeout=OUTAGE_TIMEOUT)
    assert victim.last_close is not None and victim.last_close.code == 1013
    assert victim.closed is None
    await victim.roundtrip()
    server = daemon.notebook("nb.ipynb")["cells"][0]["source"]
    assert len(server) > 2_000_000
    assert victim.source(cell) == server
    await victim.close()


async def test_reconnecting_does_not_duplicate_cells(daemon: Daemon, root: Path) -> None:
    """A resync exchanges differences: no cell appears twice after several outages."""
    a = await daemon.connect("nb.ipynb", backoff=FAST)
    for round_ in range(3):
        daemon.kill()
        await a.wait_for(lambda _: not a.connected)
        a.add_cell(f"offline {round_}")
        daemon.restart(same_port=True)
        await a.roundtrip(timeout=OUTAGE_TIMEOUT)
    ids = a.cell_ids()
    assert len(ids) == len(set(ids)) == 5
    await a.close()
    assert daemon.stop() == 0
    assert read_sources(root / "nb.ipynb") == ["a = 1", "print('héllo')", "offline 0", "offline 1", "offline 2"]
