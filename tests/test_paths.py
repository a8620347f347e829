"""Paths over REST and the websocket, against a real daemon: every spelling of a file is
one notebook and one room, authorization applies to that one name, and odd names get a
clear 4xx (never a 500 or a 1006, never the server's own paths)."""

from __future__ import annotations

import http.client
import json
import unicodedata
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect

from crdtnb.client import sync_url
from crdtnb.users import Role, UserStore

from .conftest import Daemon, eventually, read_sources, write_notebook

NFC = unicodedata.normalize("NFC", "café.ipynb")
NFD = unicodedata.normalize("NFD", "café.ipynb")


async def _close_code(daemon: Daemon, path: str) -> tuple[int | None, str]:
    async with ws_connect(sync_url(daemon.url, path, daemon.token), proxy=None) as websocket:
        try:
            while True:
                await websocket.recv()
        except Exception:
            pass
        return websocket.close_code, websocket.close_reason or ""


async def test_a_symlink_and_its_target_are_one_room(daemon: Daemon, root: Path) -> None:
    (root / "alias.ipynb").symlink_to("nb.ipynb")
    via_alias = await daemon.connect("alias.ipynb")
    via_target = await daemon.connect("nb.ipynb")
    assert daemon.health()["rooms"] == 1
    cell = via_alias.cell_ids()[0]
    via_alias.insert_text(cell, 0, "# from the alias\n")
    via_target.insert_text(cell, 0, "# from the target\n")
    for client in (via_alias, via_target):
        await client.wait_for(lambda _, c=client: "alias" in c.source(cell) and "target" in c.source(cell))
    await via_alias.close()
    await via_target.close()
    await eventually(lambda: "alias" in read_sources(root / "nb.ipynb")[0] and "target" in read_sources(root / "nb.ipynb")[0])
    assert (root / "alias.ipynb").is_symlink()  # the link is left as it was


async def test_unicode_spellings_are_one_notebook(daemon: Daemon, root: Path) -> None:
    created = daemon.post(f"/api/notebooks/{NFD}")
    assert created.status_code == 201, created.text
    assert created.json()["path"] == NFC
    assert daemon.post(f"/api/notebooks/{NFC}").status_code == 409
    nfd = await daemon.connect(NFD)
    nfc = await daemon.connect(NFC)
    assert daemon.health()["rooms"] == 1
    await nfd.close()
    await nfc.close()
    listed = [e["path"] for e in daemon.get("/api/notebooks").json()["notebooks"]]
    assert listed.count(NFC) == 1 and NFD not in listed


@pytest.mark.parametrize(
    "path,status",
    [
        ("a" * 300 + ".ipynb", 400),
        ("nb.ipynb/x.ipynb", 404),
        (".hidden/x.ipynb", 400),
        ("missing/x.ipynb", 404),
    ],
)
def test_odd_names_get_a_clear_client_error(daemon: Daemon, root: Path, path: str, status: int) -> None:
    response = daemon.get(f"/api/notebooks/{path}")
    assert response.status_code == status, response.text
    assert str(root) not in response.text and "Traceback" not in response.text


@pytest.mark.parametrize("path", ["a" * 300 + ".ipynb", "nb.ipynb/x.ipynb", ".hidden/x.ipynb"])
def test_odd_names_cannot_be_created(daemon: Daemon, root: Path, path: str) -> None:
    response = daemon.post(f"/api/notebooks/{path}")
    assert response.status_code == 400, response.text
    assert str(root) not in response.text
    assert not (root / ".hidden").exists()
    assert path not in [e["path"] for e in daemon.get("/api/notebooks").json()["notebooks"]]


@pytest.mark.parametrize(
    "path,code",
    [("a" * 300 + ".ipynb", 4400), ("nb.ipynb/x.ipynb", 4404), (".hidden/x.ipynb", 4400), ("demo/../nb.ipynb", 4400)],
)
async def test_odd_names_close_the_websocket_with_a_reason(daemon: Daemon, path: str, code: int) -> None:
    close_code, reason = await _close_code(daemon, path)
    assert close_code == code, reason
    assert reason


@pytest.fixture
def bob(root: Path) -> str:
    """A global runner who may only read notebooks under demo/."""
    store = UserStore(root / ".crdtnb")
    store.add("bob", Role.RUNNER, "correct horse battery")
    store.set_role("bob", Role.VIEWER, "demo/*")
    write_notebook(root / "demo" / "x.ipynb", ["print('ran')"])
    (root / "public").mkdir()
    (root / "public" / "x.ipynb").symlink_to(root / "demo" / "x.ipynb")
    return store.new_token("bob")


@pytest.mark.parametrize(
    "spelling",
    ["demo/x.ipynb", "./demo/x.ipynb", "demo//x.ipynb", "demo/./x.ipynb", "public/x.ipynb", "public/../demo/x.ipynb"],
)
@pytest.mark.parametrize("action", ["execute", "restart", "shutdown", "interrupt"])
def test_a_path_role_holds_whatever_the_spelling(daemon: Daemon, bob: str, spelling: str, action: str) -> None:
    cell = daemon.notebook("demo/x.ipynb")["cells"][0]["id"]
    status, body = _raw_post(daemon, f"/api/notebooks/{spelling}/{action}", {"cell_ids": [cell]}, bob)
    assert status in (400, 403), body
    assert daemon.get("/api/notebooks/demo/x.ipynb/kernel").json()["status"] == "none"


def _raw_post(daemon: Daemon, route: str, body: Any, token: str) -> tuple[int, str]:
    """A POST with the path exactly as given (httpx would remove dot segments)."""
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        connection.request(
            "POST",
            route,
            body=json.dumps(body),
            headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        )
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


@pytest.mark.parametrize("spelling", ["demo/new.ipynb", "./demo/new.ipynb", "public/../demo/new.ipynb"])
def test_creating_under_a_read_only_path_is_refused(daemon: Daemon, bob: str, root: Path, spelling: str) -> None:
    status, body = _raw_post(daemon, f"/api/notebooks/{spelling}", {}, bob)
    assert status in (400, 403), body
    assert not (root / "demo" / "new.ipynb").exists()


async def test_a_symlink_does_not_lend_its_own_path_role(daemon: Daemon, bob: str) -> None:
    """bob may edit public/* (global runner) but the file behind public/x.ipynb is
    demo/x.ipynb, which he may only read: his connection is read-only."""
    from crdtnb.client import connect

    client = await connect(daemon.url, "public/x.ipynb", token=bob)
    cell = client.cell_ids()[0]
    client.insert_text(cell, 0, "# bob was here\n")
    await client.wait_for(lambda _: client.permission_denied is not None)
    await client.close()
    assert "bob" not in daemon.notebook("demo/x.ipynb")["cells"][0]["source"]


def test_an_unexpected_error_is_a_500_without_internals(tmp_path: Path) -> None:
    """A host's authorize hook fails: the client learns nothing of it (real uvicorn)."""
    from .test_embedding import _uvicorn

    app_dir = tmp_path / "host"
    app_dir.mkdir()
    (app_dir / "failing_app.py").write_text(
        "import os\n"
        "from crdtnb import NotebookSync, User\n"
        "from starlette.applications import Starlette\n"
        "def authorize(user, path, action):\n"
        "    raise RuntimeError('secret detail at /very/private/place')\n"
        "sync = NotebookSync(os.environ['CRDTNB_EXAMPLE_ROOT'], authenticate=lambda c: User('u'), authorize=authorize)\n"
        "app = Starlette(routes=sync.routes, lifespan=sync.lifespan)\n"
    )
    root = tmp_path / "root"
    write_notebook(root / "nb.ipynb", ["x = 1"])
    process, url = _uvicorn("failing_app:app", app_dir, root, tmp_path / "host.log")
    try:
        for route in ("/api/notebooks/nb.ipynb", "/api/notebooks"):
            response = httpx.get(url + route, timeout=10)
            assert response.status_code == 500, response.text
            assert "secret" not in response.text and "private" not in response.text
            assert "RuntimeError" not in response.text
    finally:
        process.terminate()
        process.wait(20)
