"""The websocket connection under `crdtnb serve` (server.DirectConnection): what it
must still do once taken off ASGI."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import time
from typing import Any

from pycrdt import Array, Doc

from crdtnb.client import NotebookClient
from crdtnb.protocol import encode_update

from .conftest import Daemon, eventually


def _masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client frame (masked, as RFC 6455 requires of clients)."""
    mask = os.urandom(4)
    size = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 65536:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _edit(client: NotebookClient, text: str) -> bytes:
    """An update that puts ``text`` at the start of the first cell of the client's
    notebook, made on a copy of its document (the client itself does not send it)."""
    copy = Doc()
    copy.apply_update(client.doc.get_update())
    state = copy.get_state()
    cell = copy.get("cells", type=Array)[0]
    cell["source"].insert(0, text)
    return encode_update(copy.get_update(state))


def _source(client: NotebookClient) -> str:
    return str(client.cell(client.cell_ids()[0])["source"])


def _connections(daemon: Daemon) -> int:
    return int(daemon.health()["connections"])


async def test_a_message_in_fragments_is_applied_whole(daemon: Daemon) -> None:
    watcher = await daemon.connect("nb.ipynb")
    raw = daemon.open_raw_websocket("nb.ipynb")
    message = _edit(watcher, "in three pieces")
    third = len(message) // 3
    raw.sendall(
        _masked(0x2, message[:third], fin=False)
        + _masked(0x0, message[third : 2 * third], fin=False)
        + _masked(0x0, message[2 * third :])
    )
    await watcher.wait_for(lambda _: _source(watcher).startswith("in three pieces"), timeout=10)
    raw.close()
    await watcher.close()


async def test_a_client_that_never_answers_pings_is_dropped(daemon_factory: Any) -> None:
    daemon = daemon_factory("--ping-interval", "0.5")
    # A well-behaved client (websockets answers pings) stays...
    steady = await daemon.connect("nb.ipynb")
    # ...a plain socket that never reads, so never answers, does not.
    mute = daemon.open_raw_websocket("nb.ipynb")
    await eventually(lambda: _connections(daemon) == 2)
    await eventually(lambda: _connections(daemon) == 1, timeout=10)
    await asyncio.sleep(1.5)  # several more ping rounds
    assert _connections(daemon) == 1 and steady.closed is None
    await steady.roundtrip(timeout=10)
    mute.close()
    await steady.close()


async def test_shutdown_is_not_held_up_by_a_client_that_stopped_reading(daemon_factory: Any) -> None:
    daemon = daemon_factory("--max-send-queue-bytes", "64000000")
    writer = await daemon.connect("nb.ipynb")
    stalled = daemon.open_raw_websocket("nb.ipynb")
    cell = writer.cell_ids()[0]
    for i in range(40):  # megabytes the stalled client never takes
        writer.insert_text(cell, 0, f"[{i}]" + os.urandom(50_000).hex())
    await writer.roundtrip(timeout=60)
    await writer.close()
    assert daemon.process is not None
    started = time.monotonic()
    daemon.process.terminate()
    try:
        code = await asyncio.to_thread(daemon.process.wait, 30)
    except subprocess.TimeoutExpired:
        daemon.process.kill()
        raise AssertionError("the daemon did not stop") from None
    finally:
        stalled.close()
    assert code == 0, daemon.log()
    assert time.monotonic() - started < 25


async def test_messages_sent_right_behind_the_handshake_are_applied(daemon: Daemon) -> None:
    """A client may send its first update as soon as it reads the 101, while the
    server is still admitting it (checking access, opening the room): that update
    waits for the connection to join the room, then is applied."""
    watcher = await daemon.connect("nb.ipynb")
    message = _edit(watcher, "sent at once")
    sock = socket.create_connection(("127.0.0.1", daemon.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /api/sync/nb.ipynb?token={daemon.token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {key}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.sendall(_masked(0x2, message))
    await watcher.wait_for(lambda _: _source(watcher).startswith("sent at once"), timeout=10)
    sock.close()
    await watcher.close()
