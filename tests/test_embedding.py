"""crdtnb embedded in a host Starlette app (examples/embed_app.py) under a real uvicorn."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from crdtnb.client import connect

from .conftest import EXAMPLES, free_port, write_notebook


def _uvicorn(
    app: str, app_dir: Path, env_root: Path, log: Path, ws: str = "auto"
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**__import__("os").environ, "CRDTNB_EXAMPLE_ROOT": str(env_root)}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, "--app-dir", str(app_dir), "--port", str(port), "--host", "127.0.0.1", "--ws", ws],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            httpx.get(url + "/", timeout=1)
            return process, url
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(log.read_text())


# Each of uvicorn's websocket implementations: crdtnb writes through the ASGI send
# itself, and each of them completes (or suspends) a send differently.
@pytest.fixture(params=["websockets-sansio", "websockets", "wsproto"])
def host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if request.param == "wsproto":
        pytest.importorskip("wsproto", reason="uvicorn's wsproto implementation needs wsproto")
    root = tmp_path / "notebooks"
    shutil.copytree(EXAMPLES, root, ignore=shutil.ignore_patterns("*.py", ".crdtnb"))
    process, url = _uvicorn("embed_app:app", EXAMPLES, root, tmp_path / "host.log", ws=request.param)
    yield url, root
    process.terminate()
    process.wait(20)


async def test_host_app_mounts_crdtnb_under_collab_with_its_own_users(host: tuple[str, Path]) -> None:
    url, root = host
    assert httpx.get(url + "/").json()["app"] == "host"
    assert httpx.get(url + "/collab/api/health").json()["status"] == "ok"
    # The host's users: no key, no access.
    assert httpx.get(url + "/collab/api/notebooks").status_code == 401
    listed = httpx.get(url + "/collab/api/notebooks", headers={"x-api-key": "bob-key"}).json()
    assert "intro.ipynb" in {entry["path"] for entry in listed["notebooks"]}
    # Bob may read but not create.
    assert httpx.post(url + "/collab/api/notebooks/new.ipynb", headers={"x-api-key": "bob-key"}).status_code == 403
    assert httpx.post(url + "/collab/api/notebooks/new.ipynb", headers={"x-api-key": "alice-key"}).status_code == 201

    alice = await connect(url + "/collab", "intro.ipynb", headers={"x-api-key": "alice-key"})
    bob = await connect(url + "/collab", "intro.ipynb", headers={"x-api-key": "bob-key"})
    cell = alice.cell_ids()[0]
    alice.insert_text(cell, 0, "alice was here ")
    await bob.wait_for(lambda _: bob.source(cell).startswith("alice was here "))
    # Bob's edit is refused: he is told so, and nobody else sees it.
    bob.insert_text(cell, 0, "bob tries ")
    await bob.wait_for(lambda _: bob.permission_denied is not None)
    assert "read-only" in (bob.permission_denied or "")
    await alice.roundtrip()
    assert not alice.source(cell).startswith("bob tries")
    served = httpx.get(url + "/collab/api/notebooks/intro.ipynb", headers={"x-api-key": "alice-key"}).json()
    assert served["cells"][0]["source"].startswith("alice was here ")
    await alice.close()
    await bob.close()


def test_mounting_without_the_lifespan_fails_loudly(tmp_path: Path) -> None:
    write_notebook(tmp_path / "nb" / "a.ipynb", ["x"])
    (tmp_path / "forgot_lifespan.py").write_text(
        "from starlette.applications import Starlette\n"
        "from starlette.routing import Mount\n"
        "from crdtnb import NotebookSync\n"
        "from crdtnb.auth import anonymous\n"
        f"sync = NotebookSync({str(tmp_path / 'nb')!r}, authenticate=anonymous)\n"
        "app = Starlette(routes=[Mount('/collab', app=sync)])\n"
    )
    process, url = _uvicorn("forgot_lifespan:app", tmp_path, tmp_path, tmp_path / "forgot.log")
    try:
        response = httpx.get(url + "/collab/api/notebooks/a.ipynb")
        assert response.status_code == 503
        assert "lifespan=sync.lifespan" in response.json()["error"]
    finally:
        process.terminate()
        process.wait(20)
