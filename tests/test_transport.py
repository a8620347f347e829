"""The websocket transport: inline writes, the backlog when a socket pushes back,
and the helper that runs a coroutine eagerly."""

from __future__ import annotations

import asyncio
import re
import socket

import pytest
from pycrdt import Array, Doc

from crdtnb.protocol import SyncStep2, SyncUpdate, parse_message
from crdtnb.transport import start_eagerly

from .conftest import Daemon

# -- start_eagerly ---------------------------------------------------------------


async def test_a_coroutine_that_does_not_suspend_finishes_inside_the_call() -> None:
    done: list[int] = []

    async def write() -> None:
        done.append(1)

    assert start_eagerly(write()) is None
    assert done == [1]


async def test_an_error_raised_before_suspending_reaches_the_caller() -> None:
    async def fail() -> None:
        raise ConnectionResetError("gone")

    with pytest.raises(ConnectionResetError, match="gone"):
        start_eagerly(fail())


async def test_a_coroutine_that_suspends_is_carried_on_by_a_task() -> None:
    gate = asyncio.Event()
    steps: list[str] = []

    async def write() -> None:
        steps.append("before")
        await gate.wait()
        steps.append("after")
        await asyncio.sleep(0)  # a bare yield, too
        steps.append("end")

    task = start_eagerly(write())
    assert task is not None and steps == ["before"]
    await asyncio.sleep(0.01)
    assert not task.done()
    gate.set()
    await asyncio.wait_for(task, 1)
    assert steps == ["before", "after", "end"]


@pytest.mark.parametrize("steps_before_cancel", [0, 1])
async def test_cancelling_the_task_cancels_the_suspended_coroutine(steps_before_cancel: int) -> None:
    cleaned: list[str] = []

    async def write() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaned.append("cancelled")
            raise

    task = start_eagerly(write())
    assert task is not None
    for _ in range(steps_before_cancel):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["cancelled"]


# -- a client that reads slowly, then catches up -----------------------------------


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(min(n - len(data), 1 << 20))
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk
    return bytes(data)


def _read_frame(sock: socket.socket) -> tuple[int, bytes]:
    first, second = _read_exactly(sock, 2)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(_read_exactly(sock, 2), "big")
    elif length == 127:
        length = int.from_bytes(_read_exactly(sock, 8), "big")
    return first & 0x0F, _read_exactly(sock, length)


async def test_a_client_that_falls_behind_then_reads_gets_everything_in_order(daemon: Daemon) -> None:
    writer = await daemon.connect("nb.ipynb")
    reader = await daemon.connect("nb.ipynb")
    slow = daemon.open_raw_websocket("nb.ipynb")
    cell = writer.cell_ids()[0]
    source = reader.cell(cell)["source"]
    chunk = "y" * 100_000
    count = 100  # 10 MB: far more than the socket buffers hold, well under the queue limit
    expected = len(source)
    for i in range(count):
        writer.insert_text(cell, len(str(writer.cell(cell)["source"])), f"[{i}]{chunk}")
        expected += len(f"[{i}]") + len(chunk)
    await reader.wait_for(lambda _: len(source) >= expected, timeout=60)
    assert daemon.health()["connections"] == 3  # the slow one was kept, not dropped

    def catch_up() -> tuple[Doc, list[int]]:
        doc = Doc()
        seen: list[int] = []
        slow.settimeout(30)
        while len(set(seen)) < count:
            opcode, payload = _read_frame(slow)
            if opcode != 0x2:
                continue
            message = parse_message(payload)
            if isinstance(message, (SyncStep2, SyncUpdate)):
                doc.apply_update(message.update)
                seen += [int(n) for n in re.findall(rb"\[(\d+)\]", message.update)]
        return doc, seen

    doc, seen = await asyncio.to_thread(catch_up)
    first_seen = list(dict.fromkeys(seen))
    assert first_seen == list(range(count))  # every update, in the order it was made
    assert str(writer.cell(cell)["source"]) == str(_cell_source(doc, cell))
    slow.close()
    await writer.close()
    await reader.close()


def _cell_source(doc: Doc, cell_id: str) -> object:
    for cell in doc.get("cells", type=Array):
        if cell["id"] == cell_id:
            return cell["source"]
    raise AssertionError(f"cell {cell_id} not in the slow client's document")
