"""Revoked access ends at once, on open websockets too: a real daemon, real
websocket clients, and `crdtnb users …` run in another process while it serves."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from crdtnb.client import NotebookClient, SyncClosed, connect
from crdtnb.users import Role, UserStore

from .conftest import Daemon, free_port
from .test_accounts import PASSWORD, crdtnb_users

NEW_PASSWORD = "a different horse battery"


@pytest.fixture
def tokens(root: Path) -> dict[str, str]:
    store = UserStore(root / ".crdtnb")
    for name, role in (("ed", Role.EDITOR), ("vera", Role.VIEWER), ("rita", Role.RUNNER)):
        store.add(name, role, PASSWORD)
    return {name: store.new_token(name) for name in ("ed", "vera", "rita")}


@pytest.fixture
def served(daemon_factory: Any, tokens: dict[str, str]) -> Daemon:
    return daemon_factory()


def login(daemon: Daemon, name: str, password: str = PASSWORD) -> dict[str, str]:
    """Signs in; returns the session cookie and the CSRF token."""
    response = httpx.post(f"{daemon.url}/login", data={"name": name, "password": password})
    assert response.status_code == 303, response.text
    cookie = response.cookies["crdtnb_session"]
    csrf = httpx.get(f"{daemon.url}/api/session", cookies={"crdtnb_session": cookie}).json()["csrf"]
    return {"cookie": cookie, "csrf": csrf}


async def with_cookie(daemon: Daemon, session: dict[str, str], path: str = "nb.ipynb") -> NotebookClient:
    return await connect(daemon.url, path, headers={"Cookie": f"crdtnb_session={session['cookie']}", "Origin": daemon.url})


async def with_token(daemon: Daemon, token: str, path: str = "nb.ipynb") -> NotebookClient:
    return await connect(daemon.url, path, token=token)


def cookie_works(daemon: Daemon, session: dict[str, str]) -> bool:
    status = httpx.get(f"{daemon.url}/api/notebooks/nb.ipynb", cookies={"crdtnb_session": session["cookie"]}).status_code
    assert status in (200, 401)
    return status == 200


def token_works(daemon: Daemon, token: str) -> bool:
    status = httpx.get(f"{daemon.url}/api/notebooks/nb.ipynb", headers={"Authorization": f"token {token}"}).status_code
    assert status in (200, 401)
    return status == 200


async def closed_with(client: NotebookClient) -> SyncClosed:
    closed = await client.wait_closed(timeout=10)
    await client.close()
    return closed


async def still_open(client: NotebookClient) -> None:
    """The connection still syncs: an edit of its own comes back acknowledged."""
    client.insert_text(client.cell_ids()[0], 0, "x")
    await client.roundtrip()
    assert client.closed is None


async def test_logout_ends_that_session_and_its_websockets(served: Daemon, tokens: dict[str, str]) -> None:
    session, other = login(served, "ed"), login(served, "ed")
    mine, elsewhere, scripted = await with_cookie(served, session), await with_cookie(served, other), await with_token(served, tokens["ed"])
    out = httpx.post(
        f"{served.url}/logout", cookies={"crdtnb_session": session["cookie"]}, headers={"x-csrf-token": session["csrf"]}
    )
    assert out.status_code == 303
    closed = await closed_with(mine)
    assert closed.code == 4401
    assert not cookie_works(served, session)
    assert httpx.get(f"{served.url}/api/session", cookies={"crdtnb_session": session["cookie"]}).status_code == 401
    # The user's other session and their API token are not that session.
    await still_open(elsewhere)
    await still_open(scripted)
    assert cookie_works(served, other)
    for client in (elsewhere, scripted):
        await client.close()


async def test_passwd_ends_every_session_of_the_user(served: Daemon, tokens: dict[str, str], root: Path) -> None:
    first, second = login(served, "ed"), login(served, "ed")
    clients = [await with_cookie(served, first), await with_cookie(served, second)]
    scripted = await with_token(served, tokens["ed"])
    bystander = await with_cookie(served, login(served, "rita"))
    changed = crdtnb_users(root, "passwd", "ed", "--password-stdin", password=NEW_PASSWORD)
    assert changed.returncode == 0, changed.stderr
    for client in clients:
        assert (await closed_with(client)).code == 4401
    assert not cookie_works(served, first) and not cookie_works(served, second)
    await still_open(scripted)  # API tokens are not sessions: revoke-tokens ends them
    await still_open(bystander)
    assert cookie_works(served, login(served, "ed", NEW_PASSWORD))
    for client in (scripted, bystander):
        await client.close()


async def test_revoke_tokens_ends_tokens_and_sessions(served: Daemon, tokens: dict[str, str], root: Path) -> None:
    session = login(served, "ed")
    by_cookie, by_token = await with_cookie(served, session), await with_token(served, tokens["ed"])
    bystander = await with_token(served, tokens["rita"])
    assert crdtnb_users(root, "revoke-tokens", "ed").returncode == 0
    assert (await closed_with(by_cookie)).code == 4401
    assert (await closed_with(by_token)).code == 4401
    assert not cookie_works(served, session) and not token_works(served, tokens["ed"])
    await still_open(bystander)
    await bystander.close()


async def test_remove_ends_everything_of_the_user(served: Daemon, tokens: dict[str, str], root: Path) -> None:
    session = login(served, "vera")
    by_cookie, by_token = await with_cookie(served, session), await with_token(served, tokens["vera"])
    assert crdtnb_users(root, "remove", "vera").returncode == 0
    assert (await closed_with(by_cookie)).code == 4401
    assert (await closed_with(by_token)).code == 4401
    assert not cookie_works(served, session) and not token_works(served, tokens["vera"])


async def test_editor_downgraded_to_viewer_loses_write_at_once(served: Daemon, tokens: dict[str, str], root: Path) -> None:
    editor = await with_token(served, tokens["ed"])
    by_cookie = await with_cookie(served, login(served, "ed"))
    viewer = await with_token(served, tokens["vera"])
    assert crdtnb_users(root, "role", "ed", "viewer").returncode == 0
    for client in (editor, by_cookie):
        closed = await closed_with(client)
        assert closed.code == 4403 and "write" in closed.reason
    await viewer.roundtrip()
    assert viewer.closed is None  # it lost nothing
    # Back in, ed may read but not write.
    again = await with_token(served, tokens["ed"])
    again.insert_text(again.cell_ids()[0], 0, "ed was demoted ")
    await again.wait_for(lambda _: again.permission_denied is not None)
    assert not served.notebook("nb.ipynb")["cells"][0]["source"].startswith("ed was demoted")
    # A downgrade on a path pattern counts the same.
    rita = await with_token(served, tokens["rita"])
    elsewhere = await with_token(served, tokens["rita"], "examples/intro.ipynb")
    assert crdtnb_users(root, "role", "rita", "viewer", "--path", "nb.ipynb").returncode == 0
    assert (await closed_with(rita)).code == 4403
    await still_open(elsewhere)
    for client in (viewer, again, elsewhere):
        await client.close()


async def test_global_role_removal_ends_reading(served: Daemon, tokens: dict[str, str], root: Path) -> None:
    viewer = await with_token(served, tokens["vera"])
    by_cookie = await with_cookie(served, login(served, "vera"))
    assert crdtnb_users(root, "role", "vera", "none").returncode == 0
    for client in (viewer, by_cookie):
        closed = await closed_with(client)
        assert closed.code == 4403 and "read" in closed.reason
    with pytest.raises(SyncClosed) as refused:
        await with_token(served, tokens["vera"])
    assert refused.value.code == 4403
    assert httpx.get(f"{served.url}/api/notebooks/nb.ipynb", headers={"Authorization": f"token {tokens['vera']}"}).status_code == 403


EMBEDDING_HOST = """
import sys

import uvicorn
from contextlib import asynccontextmanager
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from crdtnb import Action, NotebookSync, User

KEYS = {"alice-key": User("alice"), "bob-key": User("bob")}
WRITERS = {"alice", "bob"}

sync = NotebookSync(
    sys.argv[2],
    authenticate=lambda conn: KEYS.get(conn.headers.get("x-api-key", "")),
    authorize=lambda user, path, action: action == Action.READ or user.name in WRITERS,
)


async def revoke(request):
    # The host's own admin action, then the re-check crdtnb offers hosts.
    KEYS.pop(request.query_params.get("key", ""), None)
    WRITERS.discard(request.query_params.get("writer", ""))
    await sync.recheck_connections()
    return JSONResponse({"ok": True})


@asynccontextmanager
async def lifespan(app):
    async with sync.lifespan(app):
        yield


app = Starlette(routes=[Route("/revoke", revoke, methods=["POST"]), Mount("/collab", app=sync)], lifespan=lifespan)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]))
"""


async def test_embedding_hosts_recheck_open_connections(root: Path, tmp_path: Path) -> None:
    script = tmp_path / "host.py"
    script.write_text(EMBEDDING_HOST)
    port = free_port()
    log = tmp_path / "host.log"
    process = subprocess.Popen([sys.executable, str(script), str(port), str(root)], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"{url}/collab/api/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)

        async def join(key: str) -> NotebookClient:
            return await connect(f"{url}/collab", "nb.ipynb", headers={"x-api-key": key})

        alice, bob = await join("alice-key"), await join("bob-key")
        assert httpx.post(f"{url}/revoke", params={"key": "alice-key"}).status_code == 200
        assert (await closed_with(alice)).code == 4401
        await still_open(bob)
        assert httpx.post(f"{url}/revoke", params={"writer": "bob"}).status_code == 200
        assert (await closed_with(bob)).code == 4403
    finally:
        process.terminate()
        process.wait(20)
