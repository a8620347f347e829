"""Accounts, roles and hostile clients against a real daemon: each test checks
that nothing leaked and nothing changed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

from crdtnb.client import NotebookClient, connect, sync_url
from crdtnb.users import Role, UserStore

from .conftest import Daemon, read_sources

PASSWORD = "correct horse battery"
USERS = {"vera": "viewer", "ed": "editor", "rita": "runner", "ada": "admin"}


def crdtnb_users(root: Path, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crdtnb", "users", *args, "--root", str(root)],
        input=None if password is None else password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def accounts(root: Path) -> dict[str, str]:
    """Users in the daemon's state directory; returns an API token per user.
    The first is made with the real CLI (the rest directly, to save process starts)."""
    first, *rest = USERS.items()
    added = crdtnb_users(root, "add", first[0], "--role", first[1], "--password-stdin", password=PASSWORD)
    assert added.returncode == 0, added.stderr
    store = UserStore(root / ".crdtnb")
    for name, role in rest:
        store.add(name, Role.parse(role), PASSWORD)
    tokens = {first[0]: crdtnb_users(root, "token", first[0]).stdout.strip().splitlines()[-1]}
    tokens.update({name: store.new_token(name) for name, _ in rest})
    return tokens


@pytest.fixture
def served(daemon_factory: Any, accounts: dict[str, str]) -> Daemon:
    return daemon_factory("--allow-origin", "http://allowed.example")


async def as_user(daemon: Daemon, token: str, path: str = "nb.ipynb") -> NotebookClient:
    return await connect(daemon.url, path, token=token)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


async def _closed_before_any_byte(url: str, **kwargs: Any) -> websockets.frames.Close:
    async with ws_connect(url, proxy=None, **kwargs) as ws:
        with pytest.raises(websockets.ConnectionClosed) as info:
            frame = await asyncio.wait_for(ws.recv(), 5)
            pytest.fail(f"a document byte leaked: {frame!r}")
    assert info.value.rcvd is not None
    return info.value.rcvd


async def test_viewer_updates_are_refused_and_change_nothing(served: Daemon, accounts: dict[str, str], root: Path) -> None:
    before_file = (root / "nb.ipynb").read_bytes()
    before = served.notebook("nb.ipynb")
    editor = await as_user(served, accounts["ed"])
    viewer = await as_user(served, accounts["vera"])
    cell = viewer.cell_ids()[0]
    viewer.insert_text(cell, 0, "viewer was here ")
    viewer.add_cell("viewer's cell")
    await viewer.wait_for(lambda _: viewer.permission_denied is not None)
    assert "read-only" in (viewer.permission_denied or "")
    await editor.roundtrip()
    assert "viewer" not in editor.source(cell) and len(editor.cell_ids()) == 2
    assert served.notebook("nb.ipynb") == before
    # The viewer still receives others' edits.
    editor.insert_text(cell, 0, "editor ")
    await viewer.wait_for(lambda _: editor.source(cell).startswith("editor ") and "editor " in viewer.source(cell))
    await editor.close()
    await viewer.close()
    served.stop()
    assert "viewer" not in "".join(read_sources(root / "nb.ipynb"))
    assert (root / "nb.ipynb").read_bytes() != before_file  # the editor's edit was saved, nothing else


async def test_awareness_names_cannot_be_spoofed(served: Daemon, accounts: dict[str, str]) -> None:
    mallory = await as_user(served, accounts["vera"])
    watcher = await as_user(served, accounts["ed"])
    mallory.set_awareness({"user": {"name": "ada", "color": "#000", "account": "ada"}})
    await watcher.wait_for(lambda _: mallory.doc.client_id in watcher.awareness)
    shown = watcher.awareness[mallory.doc.client_id]["user"]
    assert shown["name"] == "vera" and shown["account"] == "vera"
    # Nor can one connection overwrite or remove another's presence.
    watcher.set_awareness({"user": {"name": "ed"}})
    await mallory.wait_for(lambda _: watcher.doc.client_id in mallory.awareness)
    from crdtnb.protocol import AwarenessEntry, encode_awareness, write_awareness

    forged = AwarenessEntry(watcher.doc.client_id, 99, '{"user":{"name":"hijacked"}}')
    await mallory.send_raw(encode_awareness(write_awareness([forged])))
    await mallory.roundtrip()
    third = await as_user(served, accounts["rita"])
    await third.wait_for(lambda _: watcher.doc.client_id in third.awareness)
    assert third.awareness[watcher.doc.client_id]["user"]["name"] == "ed"
    for client in (mallory, watcher, third):
        await client.close()


async def test_execute_needs_the_runner_role(served: Daemon, accounts: dict[str, str], root: Path) -> None:
    client = await as_user(served, accounts["ed"])
    cell = client.cell_ids()[1]
    for name in ("vera", "ed"):
        for action in ("execute", "interrupt", "restart", "shutdown"):
            response = httpx.post(
                f"{served.url}/api/notebooks/nb.ipynb/{action}", json={"cell_ids": [cell]}, headers=_auth(accounts[name])
            )
            assert response.status_code == 403, (name, action)
    assert (await client.kernel())["status"] == "none"  # no kernel was started
    assert client.outputs(cell) == []
    ran = httpx.post(f"{served.url}/api/notebooks/nb.ipynb/execute", json={"cell_ids": [cell]}, headers=_auth(accounts["rita"]))
    assert ran.status_code == 202
    await client.wait_for(lambda _: client.outputs(cell) != [], timeout=90)
    await client.close()


async def test_roles_per_path_pattern(served: Daemon, accounts: dict[str, str], root: Path) -> None:
    assert crdtnb_users(root, "role", "ed", "viewer", "--path", "examples/demo/*").returncode == 0
    locked = await as_user(served, accounts["ed"], "examples/demo/unicode.ipynb")
    locked.insert_text(locked.cell_ids()[0], 0, "nope ")
    await locked.wait_for(lambda _: locked.permission_denied is not None)
    await locked.close()
    free = await as_user(served, accounts["ed"], "examples/intro.ipynb")
    free.insert_text(free.cell_ids()[0], 0, "yes ")
    await free.roundtrip()
    assert free.permission_denied is None
    assert served.notebook("examples/intro.ipynb")["cells"][0]["source"].startswith("yes ")
    assert not served.notebook("examples/demo/unicode.ipynb")["cells"][0]["source"].startswith("nope")
    await free.close()


async def test_no_wrong_or_revoked_credentials_get_nothing(served: Daemon, accounts: dict[str, str], root: Path) -> None:
    for token in (None, "wrong", "crdtnb_forged-token-that-was-never-issued", accounts["rita"] + "x"):
        closed = await _closed_before_any_byte(sync_url(served.url, "nb.ipynb", token))
        assert closed.code == 4401
        headers = {} if token is None else _auth(token)
        assert httpx.get(f"{served.url}/api/notebooks/nb.ipynb", headers=headers).status_code == 401
        assert httpx.get(f"{served.url}/api/notebooks/nb.ipynb/kernel", headers=headers).status_code == 401
    assert httpx.get(f"{served.url}/api/notebooks/nb.ipynb", headers=_auth(accounts["rita"])).status_code == 200
    revoked = crdtnb_users(root, "revoke-tokens", "rita")
    assert revoked.returncode == 0 and "revoked 1" in revoked.stdout
    assert httpx.get(f"{served.url}/api/notebooks/nb.ipynb", headers=_auth(accounts["rita"])).status_code == 401
    closed = await _closed_before_any_byte(sync_url(served.url, "nb.ipynb", accounts["rita"]))
    assert closed.code == 4401
    # A removed user's token dies with them.
    assert crdtnb_users(root, "remove", "vera").returncode == 0
    assert httpx.get(f"{served.url}/api/notebooks", headers=_auth(accounts["vera"])).status_code == 401


async def test_foreign_origin_is_refused(served: Daemon, accounts: dict[str, str]) -> None:
    url = sync_url(served.url, "nb.ipynb", accounts["ada"])
    closed = await _closed_before_any_byte(url, origin="http://evil.example")
    assert closed.code == 4403 and "origin" in closed.reason
    # The served origin and the configured one are fine.
    for origin in (served.url, "http://allowed.example"):
        async with ws_connect(url, proxy=None, origin=origin) as ws:
            assert (await asyncio.wait_for(ws.recv(), 5))[:2] == b"\x00\x00"  # sync step 1


def _login(daemon: Daemon, name: str, password: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(
        f"{daemon.url}/login", data={"name": name, "password": password, "next": "/"}, follow_redirects=False, **kwargs
    )


async def test_login_cookie_session_and_csrf(served: Daemon, root: Path) -> None:
    page = httpx.get(f"{served.url}/login")
    assert page.status_code == 200 and "password" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    response = _login(served, "rita", PASSWORD)
    assert response.status_code == 303
    cookie_header = response.headers["set-cookie"].lower()
    assert "httponly" in cookie_header and "samesite=strict" in cookie_header
    cookies = {"crdtnb_session": response.cookies["crdtnb_session"]}
    session = httpx.get(f"{served.url}/api/session", cookies=cookies).json()
    assert session["user"] == "rita" and session["role"] == "runner" and session["csrf"]
    # Cookie-authenticated writes need the CSRF token and a same-site origin.
    url = f"{served.url}/api/notebooks/created.ipynb"
    assert httpx.post(url, cookies=cookies).status_code == 403
    assert httpx.post(url, cookies=cookies, headers={"x-csrf-token": "guess"}).status_code == 403
    evil = {"x-csrf-token": session["csrf"], "origin": "http://evil.example"}
    assert httpx.post(url, cookies=cookies, headers=evil).status_code == 403
    assert not (root / "created.ipynb").exists()
    assert httpx.post(url, cookies=cookies, headers={"x-csrf-token": session["csrf"]}).status_code == 201
    # The websocket accepts the cookie from the page's own origin.
    client = await connect(served.url, "nb.ipynb", headers={"Cookie": f"crdtnb_session={cookies['crdtnb_session']}", "Origin": served.url})
    assert len(client.cell_ids()) == 2
    await client.close()
    # A tampered cookie is nobody.
    forged = {"crdtnb_session": cookies["crdtnb_session"][:-3] + "AAA"}
    assert httpx.get(f"{served.url}/api/session", cookies=forged).status_code == 401
    out = httpx.post(f"{served.url}/logout", cookies=cookies, headers={"x-csrf-token": session["csrf"]})
    assert out.status_code == 303 and "crdtnb_session=" in out.headers["set-cookie"]


async def test_login_brute_force_hits_the_limit(served: Daemon) -> None:
    codes = [_login(served, "ada", f"guess-{i}").status_code for i in range(5)]
    assert codes == [401] * 5
    blocked = _login(served, "ada", PASSWORD)  # even the right password, for now
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    assert "crdtnb_session" not in blocked.cookies
    # Other users are not locked out by someone hammering ada... from another address they would be fine too.
    assert _login(served, "ed", PASSWORD).status_code in (303, 429)


def test_users_file_holds_no_plaintext_secrets(accounts: dict[str, str], root: Path) -> None:
    data = b"".join(p.read_bytes() for p in (root / ".crdtnb").glob("users.sqlite3*"))
    assert data
    assert PASSWORD.encode() not in data
    for token in accounts.values():
        assert token.encode() not in data
        assert token.split("_", 1)[1].encode() not in data
    assert b"$argon2id$" in data
    listing = crdtnb_users(root, "list").stdout
    assert "rita\trunner" in listing and PASSWORD not in listing


async def test_admin_token_from_serve_is_an_admin(served: Daemon) -> None:
    client = await connect(served.url, "nb.ipynb", token=served.token)
    assert (await client.kernel())["status"] == "none"
    assert httpx.get(f"{served.url}/api/session", headers=_auth(served.token)).json()["role"] == "admin"
    await client.close()


@pytest.mark.parametrize("route", ["execute", "interrupt", "restart", "shutdown", "kernel"])
async def test_kernel_routes_refuse_paths_outside_the_root(served: Daemon, route: str, root: Path) -> None:
    method = httpx.get if route == "kernel" else httpx.post
    for path in ("..%2Foutside.ipynb", "%2Fetc%2Fx.ipynb", "notes.txt"):
        kwargs: dict[str, Any] = {"headers": _auth(served.token)}
        if route == "execute":
            kwargs["json"] = {"cell_ids": ["x"]}
        response = method(f"{served.url}/api/notebooks/{path}/{route}", **kwargs)
        assert response.status_code in (400, 404), (path, response.status_code)
