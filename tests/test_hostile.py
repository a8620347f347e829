"""Broken and hostile input: the offending connection is closed with a code and a
reason; the room, the other clients and the files carry on untouched."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest
import websockets
from pycrdt import Doc, Text
from websockets.asyncio.client import connect as ws_connect

from crdtnb.client import NotebookClient, sync_url
from crdtnb.protocol import encode_update

from .conftest import Daemon, write_notebook


def _valid_update() -> bytes:
    doc = Doc()
    doc["t"] = Text("some text that makes an update of a few dozen bytes")
    return doc.get_update()


BAD_FRAMES = {
    "empty frame": (b"", 1007, "empty frame"),
    "unknown message type": (b"\x09\x00", 1007, "unknown message type 9"),
    "unknown sync type": (b"\x00\x07\x00", 1007, "unknown sync message type 7"),
    "truncated length": (b"\x00\x02\xff", 1007, "truncated number"),
    "length beyond the frame": (b"\x00\x02\x10abc", 1007, "exceeds"),
    "trailing bytes": (encode_update(b"\x00\x00") + b"junk", 1007, "trailing bytes"),
    "huge state vector count": (b"\x00\x00\x05\xff\xff\xff\xff\x0f", 1007, "state vector claims"),
    "update rejected by pycrdt": (encode_update(_valid_update()[:-9]), 1007, "update rejected"),
    "update with a huge struct count": (encode_update(b"\xff\xff\xff\x7f\x00"), 1007, "struct groups"),
    "server-only auth message": (b"\x02\x00\x02no", 1007, "may not send auth"),
    "garbage awareness": (b"\x01\x03\x01\x01\x01", 1007, "awareness"),
    "awareness state that is not JSON": (b"\x01\x07\x01\x01\x01\x03{x}", 1007, "not JSON"),
}


async def _assert_room_unharmed(daemon: Daemon, good: NotebookClient, before: dict) -> None:
    # The other client still edits and syncs, and the document holds nothing from the bad frame.
    peer = await daemon.connect("nb.ipynb")
    cell = good.cell_ids()[0]
    good.insert_text(cell, 0, "still fine ")
    await peer.wait_for(lambda _: peer.source(cell).startswith("still fine "))
    await peer.close()
    after = daemon.notebook("nb.ipynb")
    assert after["cells"][0]["source"] == "still fine " + before["cells"][0]["source"]
    assert after["cells"][1:] == before["cells"][1:]


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
async def test_malformed_frame_closes_only_that_connection(daemon: Daemon, case: str) -> None:
    frame, code, reason = BAD_FRAMES[case]
    good = await daemon.connect("nb.ipynb")
    before = daemon.notebook("nb.ipynb")
    bad = await daemon.connect("nb.ipynb")
    await bad.send_raw(frame)
    closed = await bad.wait_closed()
    assert closed.code == code
    assert reason in closed.reason
    await _assert_room_unharmed(daemon, good, before)
    assert "closing" in daemon.log()
    await good.close()


async def test_text_frame_is_refused(daemon: Daemon) -> None:
    good = await daemon.connect("nb.ipynb")
    before = daemon.notebook("nb.ipynb")
    bad = await daemon.connect("nb.ipynb")
    await bad.send_raw("hello")
    closed = await bad.wait_closed()
    assert closed.code == 1003
    assert "text frames" in closed.reason
    await _assert_room_unharmed(daemon, good, before)
    await good.close()


async def test_frame_above_the_limit_is_refused(daemon_factory) -> None:
    daemon = daemon_factory("--max-frame-bytes", "65536")
    good = await daemon.connect("nb.ipynb")
    before = daemon.notebook("nb.ipynb")
    bad = await daemon.connect("nb.ipynb")
    await bad.send_raw(encode_update(b"\x00" * 70_000))
    closed = await bad.wait_closed()
    assert closed.code == 1009
    await _assert_room_unharmed(daemon, good, before)
    await good.close()


async def test_rejected_update_is_not_persisted_across_restart(daemon: Daemon) -> None:
    before = daemon.notebook("nb.ipynb")
    bad = await daemon.connect("nb.ipynb")
    cell = bad.cell_ids()[0]
    # A real edit, but truncated: pycrdt must refuse all of it.
    captured: list[bytes] = []
    bad._remote = True  # keep the client from sending it itself
    bad.doc.observe(lambda event: captured.append(event.update))
    bad.insert_text(cell, 0, "must not survive")
    await bad.send_raw(encode_update(captured[0][:-3]))
    closed = await bad.wait_closed()
    assert closed.code == 1007
    daemon.stop()
    daemon.restart()
    assert daemon.notebook("nb.ipynb") == before


@pytest.mark.parametrize(
    "path, code",
    [
        ("..%2Foutside.ipynb", 4400),
        ("sub/..%2F..%2Foutside.ipynb", 4400),
        ("%2Fetc%2Foutside.ipynb", 4400),
        ("escape.ipynb", 4400),  # a symlink to a file outside the root
        ("linkdir/inner.ipynb", 4400),  # a directory symlink leading outside
        ("notes.txt", 4400),
        (".crdtnb/x.ipynb", 4400),
        ("missing.ipynb", 4404),
    ],
)
async def test_paths_outside_the_root_are_refused(daemon: Daemon, root: Path, path: str, code: int) -> None:
    outside = root.parent / "outside"
    write_notebook(outside / "inner.ipynb", ["secret"])
    write_notebook(root.parent / "outside.ipynb", ["secret"])
    if not (root / "escape.ipynb").exists():
        os.symlink(root.parent / "outside.ipynb", root / "escape.ipynb")
        os.symlink(outside, root / "linkdir")
    (root / "notes.txt").write_text("not a notebook")
    url = sync_url(daemon.url, "", daemon.token).replace("/api/sync/?", f"/api/sync/{path}?")
    async with ws_connect(url, proxy=None) as ws:
        with pytest.raises(websockets.ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == code
    assert info.value.rcvd.reason
    response = httpx.get(f"{daemon.url}/api/notebooks/{path}", params={"token": daemon.token})
    assert response.status_code in (400, 404)
    assert "secret" not in response.text
    created = httpx.post(f"{daemon.url}/api/notebooks/{path}", params={"token": daemon.token})
    if code == 4404:  # a legitimate new path: created inside the root
        assert created.status_code == 201 and (root / path).is_file()
    else:
        assert created.status_code == 400
    assert (root.parent / "outside.ipynb").read_text().count("secret") == 1
    assert not (root.parent / "x.ipynb").exists()


async def test_client_that_stops_reading_is_disconnected_others_unaffected(daemon_factory) -> None:
    daemon = daemon_factory("--max-send-queue-bytes", "8000000")
    writer = await daemon.connect("nb.ipynb")
    reader = await daemon.connect("nb.ipynb")
    stalled = daemon.open_raw_websocket("nb.ipynb")  # and it never reads
    cell = writer.cell_ids()[0]
    chunk = "x" * 100_000
    source = reader.cell(cell)["source"]
    expected = len(source)  # UTF-8 bytes, cheap to read on a big text
    for i in range(300):
        writer.insert_text(cell, 0, f"[{i}]{chunk}")
        expected += len(f"[{i}]") + len(chunk)
        if i % 10 == 9:
            # A healthy client keeps up; the stalled one only falls behind.
            await reader.wait_for(lambda _, n=expected: len(source) >= n, timeout=60)
    assert reader.closed is None
    # The stalled client was dropped (2 connections left), the others went on.
    deadline = asyncio.get_running_loop().time() + 30
    while daemon.health()["connections"] != 2:
        assert asyncio.get_running_loop().time() < deadline, daemon.health()
        await asyncio.sleep(0.1)
    assert "send queue overflow" in daemon.log()
    stalled.close()
    await writer.close()
    await reader.close()


async def test_unauthenticated_connections_get_nothing(daemon: Daemon) -> None:
    for token in (None, "wrong-token"):
        url = sync_url(daemon.url, "nb.ipynb", token)
        async with ws_connect(url, proxy=None) as ws:
            with pytest.raises(websockets.ConnectionClosed) as info:
                frame = await asyncio.wait_for(ws.recv(), 5)
                pytest.fail(f"got a frame {frame!r}")
        assert info.value.rcvd is not None and info.value.rcvd.code == 4401
        params = {} if token is None else {"token": token}
        assert httpx.get(f"{daemon.url}/api/notebooks/nb.ipynb", params=params).status_code == 401
        assert httpx.get(f"{daemon.url}/api/notebooks", params=params).status_code == 401
        assert httpx.post(f"{daemon.url}/api/notebooks/new.ipynb", params=params).status_code == 401
    # The header form works.
    ok = httpx.get(f"{daemon.url}/api/notebooks", headers={"Authorization": f"token {daemon.token}"})
    assert ok.status_code == 200
