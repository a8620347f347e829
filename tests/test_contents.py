"""File operations over REST against a real daemon, real files, real clients and a real
kernel: rename (with an open room, open connections and a running kernel), delete,
duplicate, download, upload, folders; roles, odd names, sizes and conflicts."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

from crdtnb.client import SyncClosed, sync_url
from crdtnb.users import Role, UserStore

from .conftest import Daemon, eventually, read_sources, write_notebook

RUN_TIMEOUT = 90


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


def _call(daemon: Daemon, method: str, route: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{daemon.url}{route}", headers=_auth(token or daemon.token), timeout=30, **kwargs)


def _stream_text(outputs: list[dict[str, Any]]) -> str:
    return "".join(o["text"] for o in outputs if o["output_type"] == "stream")


def _notebook_bytes(sources: list[str]) -> bytes:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    return nbformat.writes(nb).encode()


@pytest.fixture
def fast(daemon_factory: Any) -> Daemon:
    return daemon_factory("--save-delay", "0.2", "--poll-interval", "0.2")


# -- rename ---------------------------------------------------------------------------------


async def test_rename_moves_file_room_log_and_running_kernel(fast: Daemon, root: Path) -> None:
    code = "import time\nfor i in range(10):\n    print('tick', i, flush=True)\n    time.sleep(0.4)"
    write_notebook(root / "old.ipynb", [code, "print('i is', i)"])
    client = await fast.connect("old.ipynb")
    looping, later = client.cell_ids()
    async with ws_connect(sync_url(fast.url, "old.ipynb", fast.token), proxy=None) as raw:
        await client.execute([looping])
        await client.wait_for(lambda _: "tick 1" in _stream_text(client.outputs(looping)), timeout=RUN_TIMEOUT)

        response = _call(fast, "POST", "/api/notebooks/old.ipynb/rename", json={"to": "moved/new.ipynb"})
        assert response.status_code == 200, response.text
        assert response.json() == {"path": "moved/new.ipynb", "from": "old.ipynb"}

        # An open socket is told, then closed with 4410 and the new path.
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(raw.recv(), 10)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4410, "moved to moved/new.ipynb")

    assert not (root / "old.ipynb").exists() and (root / "moved" / "new.ipynb").exists()
    # The Python client follows the notebook to its new path and sees the cell go on.
    await client.wait_for(lambda _: client.path == "moved/new.ipynb" and client.connected, timeout=30)
    assert client.state.get("moved_to") == "moved/new.ipynb"
    await client.wait_for(lambda _: client.cell(looping).get("execution_state") == "idle", timeout=RUN_TIMEOUT)
    assert _stream_text(client.outputs(looping)) == "".join(f"tick {i}\n" for i in range(10))
    # The same kernel runs on under the new name: the loop's variable is still there.
    status = await client.kernel()
    assert status["status"] == "idle" and status["kernel"] == "python3"
    await client.execute([later])
    await client.wait_for(lambda _: client.cell(later).get("execution_state") == "idle", timeout=RUN_TIMEOUT)
    assert _stream_text(client.outputs(later)) == "i is 9\n"
    assert client.cell(later).get("execution_count") == 2
    assert _call(fast, "GET", "/api/notebooks/old.ipynb/kernel").json()["status"] == "none"

    # Edits go on being saved, to the new file; nothing comes back at the old path.
    client.insert_text(looping, 0, "# after the move\n")
    await client.roundtrip()
    await eventually(lambda: read_sources(root / "moved" / "new.ipynb")[0].startswith("# after the move"), timeout=15)
    assert not (root / "old.ipynb").exists()
    assert _call(fast, "GET", "/api/notebooks/old.ipynb").status_code == 404
    await client.close()

    # The log moved too: after a restart the room comes back from it whole.
    fast.stop()
    fast.restart()
    again = await fast.connect("moved/new.ipynb")
    assert again.source(looping).startswith("# after the move")
    assert _stream_text(again.outputs(later)) == "i is 9\n"
    await again.close()


async def test_the_old_path_is_gone_after_a_rename(fast: Daemon, root: Path) -> None:
    write_notebook(root / "a.ipynb", ["1"])
    assert _call(fast, "POST", "/api/notebooks/a.ipynb/rename", json={"to": "b.ipynb"}).status_code == 200
    with pytest.raises(SyncClosed) as refused:
        await fast.connect("a.ipynb", reconnect=False)
    assert refused.value.code == 4404
    client = await fast.connect("b.ipynb")
    assert client.source(client.cell_ids()[0]) == "1"
    await client.close()


async def test_rename_refuses_conflicts_and_odd_names(fast: Daemon, root: Path) -> None:
    write_notebook(root / "a.ipynb", ["1"])
    write_notebook(root / "b.ipynb", ["2"])
    before = {p: p.read_bytes() for p in root.rglob("*.ipynb")}
    cases = [
        ("a.ipynb", {"to": "b.ipynb"}, 409),  # never replaces a file
        ("missing.ipynb", {"to": "c.ipynb"}, 404),
        ("a.ipynb", {"to": "a.ipynb"}, 400),
        ("a.ipynb", {"to": "../outside.ipynb"}, 400),
        ("a.ipynb", {"to": "/etc/x.ipynb"}, 400),
        ("a.ipynb", {"to": ".hidden.ipynb"}, 400),
        ("a.ipynb", {"to": ".git/x.ipynb"}, 400),
        ("a.ipynb", {"to": "notes.txt"}, 400),
        ("a.ipynb", {"to": "a\u0000.ipynb"}, 400),
        ("a.ipynb", {"to": "x" * 300 + ".ipynb"}, 400),
        ("a.ipynb", {"to": 3}, 400),
        ("a.ipynb", {}, 400),
        ("..%2Fa.ipynb", {"to": "c.ipynb"}, 400),
    ]
    for source, body, status in cases:
        response = _call(fast, "POST", f"/api/notebooks/{source}/rename", json=body)
        assert response.status_code == status, (source, body, response.text)
        assert "error" in response.json()
    assert {p: p.read_bytes() for p in root.rglob("*.ipynb")} == before
    # A destination through a symbolic link out of the root is refused too.
    outside = root.parent / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    assert _call(fast, "POST", "/api/notebooks/a.ipynb/rename", json={"to": "link/x.ipynb"}).status_code == 400
    assert list(outside.iterdir()) == []


# -- roles ------------------------------------------------------------------------------------


@pytest.fixture
def roles(root: Path) -> dict[str, str]:
    """vera views everything; ed edits mine/* and only views the rest; nobody sees private/*."""
    store = UserStore(root / ".crdtnb")
    store.add("vera", Role.VIEWER, "correct horse battery")
    store.add("ed", Role.VIEWER, "correct horse battery")
    store.set_role("ed", Role.EDITOR, "mine/*")
    for name in ("vera", "ed"):
        store.set_role(name, Role.NONE, "private/*")
    return {name: store.new_token(name) for name in ("vera", "ed")}


async def test_file_operations_are_authorized_on_every_path(daemon_factory: Any, root: Path, roles: dict[str, str]) -> None:
    for path in ("mine/a.ipynb", "theirs/b.ipynb", "private/c.ipynb"):
        write_notebook(root / path, ["1"])
    daemon = daemon_factory()
    ed, vera = roles["ed"], roles["vera"]
    upload = _notebook_bytes(["2"])
    refused = [
        (vera, "POST", "/api/notebooks/mine/a.ipynb/rename", {"json": {"to": "mine/z.ipynb"}}),
        (ed, "POST", "/api/notebooks/mine/a.ipynb/rename", {"json": {"to": "theirs/z.ipynb"}}),  # destination
        (ed, "POST", "/api/notebooks/theirs/b.ipynb/rename", {"json": {"to": "mine/z.ipynb"}}),  # source
        (ed, "POST", "/api/notebooks/mine/a.ipynb/duplicate", {"json": {"to": "theirs/z.ipynb"}}),
        (ed, "POST", "/api/notebooks/theirs/b.ipynb/duplicate", {"json": {"to": "mine/z.ipynb"}}),
        (vera, "DELETE", "/api/notebooks/mine/a.ipynb", {}),
        (ed, "DELETE", "/api/notebooks/theirs/b.ipynb", {}),
        (ed, "PUT", "/api/notebooks/theirs/new.ipynb", {"content": upload}),
        (ed, "POST", "/api/folders/theirs/sub", {}),
        (ed, "POST", "/api/folders/top", {}),
        (ed, "GET", "/api/notebooks/private/c.ipynb/download", {}),
        (ed, "GET", "/api/contents/private", {}),
    ]
    for token, method, route, kwargs in refused:
        response = _call(daemon, method, route, token, **kwargs)
        assert response.status_code == 403, (method, route, response.text)
    for path in ("mine/a.ipynb", "theirs/b.ipynb", "private/c.ipynb"):
        assert (root / path).exists()
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.ipynb") if "examples" not in p.parts) == [
        "mine/a.ipynb", "nb.ipynb", "private/c.ipynb", "theirs/b.ipynb"
    ]
    # Without credentials: 401 before anything else.
    assert httpx.delete(f"{daemon.url}/api/notebooks/mine/a.ipynb").status_code == 401
    assert httpx.get(f"{daemon.url}/api/contents").status_code == 401

    # What each may do, they can.
    assert _call(daemon, "GET", "/api/notebooks/theirs/b.ipynb/download", vera).status_code == 200
    assert _call(daemon, "POST", "/api/notebooks/mine/a.ipynb/duplicate", ed, json={}).json()["path"] == "mine/a-Copy1.ipynb"
    assert _call(daemon, "POST", "/api/notebooks/mine/a.ipynb/rename", ed, json={"to": "mine/sub/z.ipynb"}).status_code == 200
    assert _call(daemon, "PUT", "/api/notebooks/mine/up.ipynb", ed, content=upload).status_code == 201
    assert _call(daemon, "POST", "/api/folders/mine/new", ed).status_code == 201
    assert _call(daemon, "DELETE", "/api/notebooks/mine/a-Copy1.ipynb", ed).status_code == 200
    # The listing shows only what the caller may open.
    top = _call(daemon, "GET", "/api/contents", vera).json()
    assert [f["name"] for f in top["folders"]] == ["examples", "mine", "theirs"]
    assert [n["name"] for n in top["notebooks"]] == ["nb.ipynb"]
    mine = _call(daemon, "GET", "/api/contents/mine", ed).json()
    assert [f["path"] for f in mine["folders"]] == ["mine/new", "mine/sub"]
    assert [n["path"] for n in mine["notebooks"]] == ["mine/up.ipynb"]


# -- delete ------------------------------------------------------------------------------------


async def test_delete_of_an_open_room_closes_it_and_forgets_everything(fast: Daemon, root: Path) -> None:
    write_notebook(root / "gone.ipynb", ["import time\nprint('running', flush=True)\ntime.sleep(60)"])
    client = await fast.connect("gone.ipynb")
    cell = client.cell_ids()[0]
    await client.execute([cell])
    await client.wait_for(lambda _: "running" in _stream_text(client.outputs(cell)), timeout=RUN_TIMEOUT)
    client.insert_text(cell, 0, "# unsaved edit\n")
    await client.roundtrip()

    response = _call(fast, "DELETE", "/api/notebooks/gone.ipynb")
    assert response.status_code == 200 and response.json() == {"deleted": "gone.ipynb"}
    closed = await client.wait_closed(timeout=10)
    assert closed.code == 4404 and "deleted" in closed.reason
    assert not (root / "gone.ipynb").exists()
    await asyncio.sleep(1)  # past the save delay: nothing writes the file back
    assert not (root / "gone.ipynb").exists()
    assert fast.health()["rooms"] == 0
    assert _call(fast, "GET", "/api/notebooks/gone.ipynb/kernel").json()["status"] == "none"
    assert _call(fast, "DELETE", "/api/notebooks/gone.ipynb").status_code == 404

    # A new notebook of that name starts fresh: the old log is gone.
    assert _call(fast, "POST", "/api/notebooks/gone.ipynb").status_code == 201
    fresh = await fast.connect("gone.ipynb")
    assert [fresh.source(c) for c in fresh.cell_ids()] == [""]
    await fresh.close()
    await client.close()


async def test_an_open_python_client_of_a_deleted_notebook_stops(fast: Daemon, root: Path) -> None:
    client = await fast.connect("nb.ipynb")
    assert _call(fast, "DELETE", "/api/notebooks/nb.ipynb").status_code == 200
    with pytest.raises(SyncClosed):
        await client.roundtrip(timeout=10)
        await client.wait_for(lambda _: False, timeout=10)
    assert client.closed is not None and client.closed.code == 4404
    await client.close()


# -- duplicate and download --------------------------------------------------------------------


async def test_duplicate_copies_the_current_document_with_outputs(fast: Daemon, root: Path) -> None:
    write_notebook(root / "dir" / "orig.ipynb", ["print('output to copy')"])
    client = await fast.connect("dir/orig.ipynb")
    cell = client.cell_ids()[0]
    await client.execute([cell])
    await client.wait_for(lambda _: client.cell(cell).get("execution_state") == "idle", timeout=RUN_TIMEOUT)
    client.insert_text(cell, 0, "# not saved yet\n")
    await client.roundtrip()

    first = _call(fast, "POST", "/api/notebooks/dir/orig.ipynb/duplicate")
    assert first.status_code == 201 and first.json()["path"] == "dir/orig-Copy1.ipynb"
    copy = nbformat.read(str(root / "dir" / "orig-Copy1.ipynb"), as_version=4)
    assert copy.cells[0].source.startswith("# not saved yet")
    assert copy.cells[0].outputs[0]["text"] == "output to copy\n"
    second = _call(fast, "POST", "/api/notebooks/dir/orig-Copy1.ipynb/duplicate", json={})
    assert second.json()["path"] == "dir/orig-Copy2.ipynb"
    named = _call(fast, "POST", "/api/notebooks/dir/orig.ipynb/duplicate", json={"to": "other/named.ipynb"})
    assert named.status_code == 201 and (root / "other" / "named.ipynb").exists()
    assert _call(fast, "POST", "/api/notebooks/dir/orig.ipynb/duplicate", json={"to": "other/named.ipynb"}).status_code == 409
    assert _call(fast, "POST", "/api/notebooks/dir/orig.ipynb/duplicate", json={"to": "../x.ipynb"}).status_code == 400
    await client.close()


async def test_download_is_the_current_document_as_an_attachment(fast: Daemon, root: Path) -> None:
    write_notebook(root / "café data.ipynb", ["x = 1"])
    client = await fast.connect("café data.ipynb")
    client.insert_text(client.cell_ids()[0], 0, "# just typed\n")
    await client.roundtrip()
    response = _call(fast, "GET", "/api/notebooks/caf%C3%A9%20data.ipynb/download")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ipynb+json")
    assert response.headers["content-disposition"] == "attachment; filename=\"caf_ data.ipynb\"; filename*=UTF-8''caf%C3%A9%20data.ipynb"
    nb = nbformat.reads(response.text, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].source == "# just typed\nx = 1"
    assert _call(fast, "GET", "/api/notebooks/missing.ipynb/download").status_code == 404
    await client.close()


# -- upload -------------------------------------------------------------------------------------


async def test_upload_creates_refuses_to_replace_and_merges_with_overwrite(fast: Daemon, root: Path) -> None:
    created = _call(fast, "PUT", "/api/notebooks/up/new.ipynb", content=_notebook_bytes(["print('uploaded')"]))
    assert created.status_code == 201 and created.json() == {"path": "up/new.ipynb", "created": True}
    assert read_sources(root / "up" / "new.ipynb") == ["print('uploaded')"]
    again = _call(fast, "PUT", "/api/notebooks/up/new.ipynb", content=_notebook_bytes(["other"]))
    assert again.status_code == 409
    assert read_sources(root / "up" / "new.ipynb") == ["print('uploaded')"]

    # With ?overwrite=1, an open room takes the upload in as an edit made outside.
    client = await fast.connect("up/new.ipynb")
    replaced = _call(fast, "PUT", "/api/notebooks/up/new.ipynb", params={"overwrite": "1"}, content=_notebook_bytes(["print('replaced')", "2"]))
    assert replaced.status_code == 200 and replaced.json()["created"] is False
    await client.wait_for(lambda _: [client.source(c) for c in client.cell_ids()] == ["print('replaced')", "2"], timeout=15)
    await client.close()


async def test_bad_uploads_are_refused_and_change_nothing(fast: Daemon, root: Path) -> None:
    before = (root / "nb.ipynb").read_bytes()
    bad = [
        b"{not json",
        b"[]",
        json.dumps({"cells": "no", "nbformat": 4, "nbformat_minor": 5, "metadata": {}}).encode(),
        b"\xff\xfe",
    ]
    for body in bad:
        response = _call(fast, "PUT", "/api/notebooks/bad.ipynb", content=body)
        assert response.status_code == 422, (body, response.text)
        response = _call(fast, "PUT", "/api/notebooks/nb.ipynb", params={"overwrite": "1"}, content=body)
        assert response.status_code == 422
    assert not (root / "bad.ipynb").exists()
    assert (root / "nb.ipynb").read_bytes() == before
    for path in ("..%2Fevil.ipynb", ".hidden.ipynb", "x.txt"):
        assert _call(fast, "PUT", f"/api/notebooks/{path}", content=_notebook_bytes(["1"])).status_code == 400
    assert not (root.parent / "evil.ipynb").exists()


async def test_upload_size_limit(fast: Daemon, root: Path) -> None:
    # Bigger than the API's 1 MiB: an upload route takes up to 100 MiB.
    big = _notebook_bytes(["x = '" + "a" * (3 * 2**20) + "'"])
    assert _call(fast, "PUT", "/api/notebooks/big.ipynb", content=big).status_code == 201
    # Declared over 100 MiB: refused before the body is read.
    with socket.create_connection(("127.0.0.1", fast.port), timeout=10) as sock:
        sock.sendall(
            f"PUT /api/notebooks/huge.ipynb?token={fast.token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {100 * 2**20 + 1}\r\n\r\n".encode()
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 413")
    assert not (root / "huge.ipynb").exists()


# -- folders --------------------------------------------------------------------------------------


async def test_folders_are_listed_and_created(fast: Daemon, root: Path) -> None:
    write_notebook(root / "team" / "one.ipynb", ["1"])
    (root / "team" / "notes.txt").write_text("not a notebook")
    (root / "team" / ".secret").mkdir()
    (root / "team" / "__pycache__").mkdir()
    (root / "team" / "linked").symlink_to(root / "examples")
    top = _call(fast, "GET", "/api/contents").json()
    assert top["path"] == ""
    assert [f["name"] for f in top["folders"]] == ["examples", "team"]
    assert [n["path"] for n in top["notebooks"]] == ["nb.ipynb"]
    team = _call(fast, "GET", "/api/contents/team").json()
    assert team["folders"] == [] and [n["path"] for n in team["notebooks"]] == ["team/one.ipynb"]
    assert team["notebooks"][0]["size"] == (root / "team" / "one.ipynb").stat().st_size

    assert _call(fast, "POST", "/api/folders/team/new/deeper").status_code == 201
    assert (root / "team" / "new" / "deeper").is_dir()
    assert _call(fast, "POST", "/api/folders/team/new/deeper").status_code == 409
    assert [f["path"] for f in _call(fast, "GET", "/api/contents/team/").json()["folders"]] == ["team/new"]
    for route, status in [
        ("/api/contents/missing", 404),
        ("/api/contents/team/linked", 404),  # a linked folder is not served
        ("/api/contents/team/one.ipynb", 400),
        ("/api/contents/..%2F", 400),
        ("/api/contents/team/.secret", 400),
    ]:
        assert _call(fast, "GET", route).status_code == status, route
    for route in ("/api/folders/.git", "/api/folders/..%2Fout", "/api/folders/x.ipynb", "/api/folders/a%00b"):
        assert _call(fast, "POST", route).status_code == 400, route
    assert not (root.parent / "out").exists()


async def test_an_upload_never_shows_what_a_gone_file_of_that_name_held(daemon_factory: Any, root: Path) -> None:
    daemon = daemon_factory("--save-delay", "60", "--save-max-delay", "60")
    write_notebook(root / "reused.ipynb", ["old"])
    client = await daemon.connect("reused.ipynb")
    client.insert_text(client.cell_ids()[0], 0, "unsaved secret ")  # in the log, not in the file
    await client.roundtrip()
    await client.close()
    daemon.kill()
    (root / "reused.ipynb").unlink()  # removed while the daemon was down: its log stays
    daemon.restart()

    uploaded = _call(daemon, "PUT", "/api/notebooks/reused.ipynb", content=_notebook_bytes(["new content"]))
    assert uploaded.status_code == 201
    fresh = await daemon.connect("reused.ipynb")
    assert [fresh.source(c) for c in fresh.cell_ids()] == ["new content"]
    assert "secret" not in json.dumps(daemon.notebook("reused.ipynb"))
    await fresh.close()
