"""Kernels in the bubblewrap sandbox, attacked from inside with a real daemon, a
real ipykernel and the real bwrap: what a cell may and may not reach."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from crdtnb.client import NotebookClient, SyncClosed
from crdtnb.sandbox import SandboxUnavailable, choose_sandbox
from crdtnb.users import Role, UserStore

from .conftest import Daemon, eventually, read_sources, write_notebook

RUN_TIMEOUT = 90
PASSWORD = "correct horse battery"
CANARY = "canary-3f9a1c"  # a value the daemon holds that no kernel may see


def _bwrap_problem() -> str | None:
    try:
        choose_sandbox("bwrap", Path(__file__).parent)
    except SandboxUnavailable as exc:
        return str(exc)
    return None


BWRAP_PROBLEM = _bwrap_problem()
needs_bwrap = pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=f"bubblewrap cannot start here: {BWRAP_PROBLEM}")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """The daemon's home directory, holding a secret of its own."""
    directory = tmp_path / "home"
    (directory / ".ssh").mkdir(parents=True)
    (directory / ".ssh" / "id_ed25519").write_text(CANARY)
    return directory


@pytest.fixture
def layout(root: Path) -> Path:
    """ROOT with a team's notebook, another team's notebook next to it, and a user."""
    write_notebook(root / "team" / "work.ipynb", ["print('hello')"])
    write_notebook(root / "other" / "private.ipynb", [f"secret = '{CANARY}'"])
    store = UserStore(root / ".crdtnb")
    store.add("tess", Role.NONE, PASSWORD)  # nothing, but a runner on team/*
    store.set_role("tess", Role.RUNNER, "team/*")
    store.add("rita", Role.RUNNER, PASSWORD)  # a runner everywhere
    return root


@pytest.fixture
def sandboxed(daemon_factory: Any, layout: Path, home: Path) -> Daemon:
    env = {"HOME": str(home), "CRDTNB_CANARY": CANARY}
    return daemon_factory("--kernel-sandbox", "bwrap", "--save-delay", "0.2", env=env)


async def _run(client: NotebookClient, source: str, timeout: float = RUN_TIMEOUT) -> list[dict[str, Any]]:
    """Run ``source`` as a new cell; its outputs once it is idle again."""
    cell = client.add_cell(source)
    await client.execute([cell])
    await client.wait_for(lambda _: client.cell(cell).get("execution_state") == "idle", timeout=timeout)
    return client.outputs(cell)


def _stdout(outputs: list[dict[str, Any]]) -> str:
    return "".join(o["text"] for o in outputs if o["output_type"] == "stream" and o["name"] == "stdout")


PROBE = """
import json, os
found = {}
for path in PATHS:
    try:
        with open(path, 'rb') as f:
            found[path] = 'READ ' + f.read().hex()
    except Exception as e:
        found[path] = type(e).__name__
print(json.dumps(found))
"""


def _probe(paths: list[str]) -> str:
    return f"PATHS = {json.dumps(paths)}\n" + PROBE


@needs_bwrap
@pytest.mark.parametrize("notebook", ["team/work.ipynb", "top.ipynb"])
async def test_a_cell_cannot_read_the_daemons_secrets(sandboxed: Daemon, layout: Path, home: Path, notebook: str) -> None:
    """The finding: a cell read ROOT/.crdtnb/session.key and signed an admin cookie.
    A notebook at the top of ROOT has the state directory inside its own directory."""
    write_notebook(layout / "top.ipynb", [])
    state = layout / ".crdtnb"
    secrets = [state / "session.key", state / "users.sqlite3", state / "crdtnb.sqlite3", home / ".ssh" / "id_ed25519"]
    assert all(path.is_file() and path.stat().st_size > 0 for path in secrets)
    client = await sandboxed.connect(notebook)
    relative = os.path.relpath(state, (layout / notebook).parent)
    paths = [str(p) for p in secrets] + [f"{relative}/session.key"]
    outputs = await _run(client, _probe(paths) + f"print(os.environ.get('CRDTNB_CANARY'), os.path.isdir({str(state)!r}) and os.listdir({str(state)!r}))")
    lines = _stdout(outputs).splitlines()
    found = json.loads(lines[0])
    assert set(found) == set(paths)
    for path, result in found.items():
        assert result in ("FileNotFoundError", "PermissionError"), (path, result)
    # Nor from the daemon's environment; the state directory, where visible, is empty.
    assert lines[1] in ("None False", "None []")
    for secret in secrets:
        assert secret.read_bytes().hex() not in json.dumps(outputs)
    await client.close()


@needs_bwrap
async def test_a_cell_cannot_reach_a_sibling_directory_but_writes_next_to_its_notebook(sandboxed: Daemon, layout: Path) -> None:
    private = layout / "other" / "private.ipynb"
    before = private.read_bytes()
    client = await sandboxed.connect("team/work.ipynb")
    outputs = await _run(
        client,
        "import os\n"
        "for action in (lambda: os.listdir('../other'), lambda: open('../other/private.ipynb', 'w').write('{}'),\n"
        f"               lambda: open({str(private)!r}).read(), lambda: os.listdir({str(layout)!r})):\n"
        "    try:\n"
        "        print('DID', action())\n"
        "    except Exception as e:\n"
        "        print(type(e).__name__)\n"
        "open('result.txt', 'w').write('written by the kernel')\n"
        "print(os.getcwd())",
    )
    lines = _stdout(outputs).splitlines()
    # ROOT holds nothing but the way to the notebook's own directory.
    assert lines == ["FileNotFoundError", "FileNotFoundError", "FileNotFoundError", "DID ['team']", str(layout / "team")]
    assert private.read_bytes() == before
    assert (layout / "team" / "result.txt").read_text() == "written by the kernel"
    await client.close()


@needs_bwrap
async def test_a_kernel_cannot_read_another_kernels_connection_file(sandboxed: Daemon, layout: Path) -> None:
    """Another kernel's connection file holds the key that signs its messages."""
    where = "from ipykernel.connect import get_connection_file\nprint(get_connection_file())"
    one = await sandboxed.connect("team/work.ipynb")
    two = await sandboxed.connect("other/private.ipynb")
    theirs = _stdout(await _run(two, where)).strip()
    mine = _stdout(await _run(one, where)).strip()
    assert theirs != mine and Path(theirs).is_file()
    found = json.loads(_stdout(await _run(one, _probe([theirs, mine]))))
    assert found[theirs] in ("FileNotFoundError", "PermissionError")
    assert found[mine].startswith("READ")
    for client in (one, two):
        await client.close()


@needs_bwrap
async def test_normal_notebooks_keep_working(sandboxed: Daemon, layout: Path) -> None:
    """Imports from the venv, matplotlib, files next to the notebook, and the network on 127.0.0.1."""
    client = await sandboxed.connect("team/work.ipynb")
    source = (
        "import sys, urllib.request, json\n"
        f"print(json.load(urllib.request.urlopen('{sandboxed.url}/api/health'))['status'])\n"
        "import pycrdt, nbformat\n"
        "print(sys.prefix)\n"
    )
    plotting = importlib.util.find_spec("matplotlib") is not None
    if plotting:
        source += (
            "import matplotlib.pyplot as plt\n"
            "plt.plot([1, 2, 3]); plt.savefig('plot.png'); plt.show()\n"
        )
    outputs = await _run(client, source, timeout=180)
    assert not [o for o in outputs if o["output_type"] == "error"], outputs
    assert _stdout(outputs).splitlines() == ["ok", sys.prefix]
    if plotting:
        assert (layout / "team" / "plot.png").read_bytes().startswith(b"\x89PNG")
        assert any("image/png" in o.get("data", {}) for o in outputs)
    await client.close()


@needs_bwrap
async def test_a_sandboxed_kernel_is_interrupted_restarted_and_shut_down(sandboxed: Daemon) -> None:
    client = await sandboxed.connect("team/work.ipynb")
    await _run(client, "counter = 41")
    cell = client.add_cell("import time\nprint('sleeping', flush=True)\ntime.sleep(120)")
    await client.execute([cell])
    await client.wait_for(lambda _: "sleeping" in _stdout(client.outputs(cell)), timeout=RUN_TIMEOUT)
    await client.interrupt()
    await client.wait_for(lambda _: client.cell(cell).get("execution_state") == "idle", timeout=30)
    errors = [o for o in client.outputs(cell) if o["output_type"] == "error"]
    assert [e["ename"] for e in errors] == ["KeyboardInterrupt"]
    # Still the same kernel after the interrupt.
    assert _stdout(await _run(client, "print(counter + 1)")) == "42\n"

    await client.restart()
    outputs = await _run(client, "from ipykernel.connect import get_connection_file\nprint('counter' in dir(), get_connection_file())")
    fresh, connection_file = _stdout(outputs).split()
    assert fresh == "False"
    assert Path(connection_file).is_file()  # the kernel's private directory, bound at the same path
    assert sandboxed.process is not None
    pids = _descendants(sandboxed.process.pid)
    assert pids
    await client.shutdown_kernel()
    await eventually(lambda: not any(_alive(pid) for pid in pids), timeout=30)
    assert not Path(connection_file).parent.exists()
    await client.close()


@needs_bwrap
async def test_sandboxed_kernels_die_with_the_daemon(sandboxed: Daemon) -> None:
    client = await sandboxed.connect("team/work.ipynb")
    await _run(client, "print('up')")
    assert sandboxed.process is not None
    pids = _descendants(sandboxed.process.pid)
    assert len(pids) >= 2  # bwrap and the kernel at least
    await client.close()
    sandboxed.kill()  # kill -9: the daemon cleans nothing up
    await eventually(lambda: not any(_alive(pid) for pid in pids), timeout=30)


@needs_bwrap
async def test_a_runner_on_some_paths_runs_code_only_there(sandboxed: Daemon, layout: Path) -> None:
    token = UserStore(layout / ".crdtnb").new_token("tess")
    client = await sandboxed.connect("team/work.ipynb", token=token)
    ran = await _run(client, "print('allowed')")
    assert _stdout(ran) == "allowed\n"
    cells = [cell["id"] for cell in sandboxed.notebook("other/private.ipynb")["cells"]]
    response = httpx.post(
        f"{sandboxed.url}/api/notebooks/other/private.ipynb/execute",
        json={"cell_ids": cells},
        headers={"Authorization": f"token {token}"},
    )
    assert response.status_code == 403
    await client.close()


@needs_bwrap
async def test_symlinks_made_by_a_kernel_do_not_lead_the_daemon_out_of_its_directory(sandboxed: Daemon, layout: Path) -> None:
    """The kernel may write symlinks next to its notebook; the daemon, which sees all
    of ROOT, must not follow them on the link's name: else a runner on team/* runs
    code in other/ or edits other/'s notebooks under a team/ name."""
    token = UserStore(layout / ".crdtnb").new_token("tess")
    headers = {"Authorization": f"token {token}"}
    client = await sandboxed.connect("team/work.ipynb", token=token)
    outputs = await _run(
        client,
        "import os\n"
        "os.symlink('../other', 'link')\n"
        "os.symlink('../other/private.ipynb', 'steal.ipynb')\n"
        "os.symlink('../.crdtnb/session.key', 'key.ipynb')\n"
        "print(sorted(os.listdir('.')))",
    )
    assert "'link'" in _stdout(outputs)
    private = layout / "other" / "private.ipynb"
    before = private.read_bytes()
    # A link is judged by where it leads: other/private.ipynb, where tess may do nothing;
    # a link into the state directory names no notebook at all.
    for path, status, code in (("team/link/private.ipynb", 403, 4403), ("team/steal.ipynb", 403, 4403), ("team/key.ipynb", 400, 4400)):
        assert httpx.get(f"{sandboxed.url}/api/notebooks/{path}", headers=headers).status_code == status, path
        for action in ("execute", "restart"):
            response = httpx.post(f"{sandboxed.url}/api/notebooks/{path}/{action}", json={"cell_ids": []}, headers=headers)
            assert response.status_code == status, (path, action, response.text)
        with pytest.raises(SyncClosed) as refused:
            await sandboxed.connect(path, token=token, reconnect=False)
        assert refused.value.code == code, path
    assert sorted(p.name for p in (layout / "other").iterdir()) == ["private.ipynb"]
    assert private.read_bytes() == before
    assert sandboxed.get("/api/notebooks/other/private.ipynb/kernel").json()["status"] == "none"
    await client.close()


SWAPPER = """
import os, threading, time
def swap(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        os.rename('sub', 'sub.real'); os.symlink('../other', 'sub')
        time.sleep(0.0005)
        os.unlink('sub'); os.rename('sub.real', 'sub')
        time.sleep(0.0005)
swapper = threading.Thread(target=swap, args=(SECONDS,))
swapper.start()
"""


@needs_bwrap
async def test_a_link_swapped_in_while_the_daemon_saves_does_not_redirect_the_save(daemon_factory: Any, layout: Path, home: Path) -> None:
    """The kernel flips team/sub between a directory and a link to ../other while the
    daemon keeps saving team/sub/x.ipynb: no save may land in other/."""
    daemon = daemon_factory("--kernel-sandbox", "bwrap", "--save-delay", "0.02", env={"HOME": str(home)})
    write_notebook(layout / "team" / "sub" / "x.ipynb", ["start"])
    attacked = await daemon.connect("team/sub/x.ipynb")
    attacker = await daemon.connect("team/work.ipynb")
    seconds = 8
    await _run(attacker, f"SECONDS = {seconds}\n" + SWAPPER)
    cell = attacked.cell_ids()[0]
    deadline = time.monotonic() + seconds
    edits = 0
    while time.monotonic() < deadline:
        attacked.insert_text(cell, 0, f"{edits};")
        edits += 1
        await asyncio.sleep(0.03)  # past the save delay: every edit is a save
    assert _stdout(await _run(attacker, "swapper.join(); print(os.path.islink('sub'))")) == "False\n"
    assert sorted(p.name for p in (layout / "other").iterdir()) == ["private.ipynb"]
    # The saves that found a directory went where they belong.
    await attacked.roundtrip()
    await attacked.close()
    assert daemon.stop() == 0
    assert read_sources(layout / "team" / "sub" / "x.ipynb")[0].startswith(f"{edits - 1};")
    await attacker.close()


async def test_without_the_sandbox_path_limited_runners_are_refused(daemon_factory: Any, layout: Path) -> None:
    daemon = daemon_factory("--kernel-sandbox", "none")
    assert "kernels are NOT isolated (--kernel-sandbox none)" in daemon.log()
    assert "can read its secrets" in daemon.log()
    store = UserStore(layout / ".crdtnb")
    tess, rita = store.new_token("tess"), store.new_token("rita")
    client = await daemon.connect("team/work.ipynb", token=tess)
    cell = client.cell_ids()[0]
    for action in ("execute", "interrupt", "restart", "shutdown"):
        response = httpx.post(
            f"{daemon.url}/api/notebooks/team/work.ipynb/{action}",
            json={"cell_ids": [cell]},
            headers={"Authorization": f"token {tess}"},
        )
        assert response.status_code == 403, (action, response.text)
    assert (await client.kernel())["status"] == "none"
    # She can still edit there (her role on team/* includes editing) ...
    client.insert_text(cell, 0, "# tess\n")
    await client.roundtrip()
    assert client.permission_denied is None
    await client.close()
    # ... and a global runner runs code as before (unconfined).
    runner = await daemon.connect("team/work.ipynb", token=rita)
    outputs = await _run(runner, "import os\nprint(os.path.isfile('../.crdtnb/session.key'))")
    assert _stdout(outputs) == "True\n"
    await runner.close()


def test_setting_a_path_limited_runner_role_warns(layout: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crdtnb", "users", "role", "rita", "runner", "--path", "team/*", "--root", str(layout)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "warning" in result.stderr and "sandboxed" in result.stderr
    quiet = subprocess.run(
        [sys.executable, "-m", "crdtnb", "users", "role", "rita", "editor", "--path", "other/*", "--root", str(layout)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_bwrap_mode_without_bwrap_fails_clearly(layout: Path, tmp_path: Path) -> None:
    empty = tmp_path / "no-bwrap-here"
    empty.mkdir()
    daemon = Daemon(layout, "--kernel-sandbox", "bwrap", env={"PATH": str(empty)})
    with pytest.raises(RuntimeError, match="daemon exited early"):
        daemon.start()
    assert daemon.process is not None and daemon.process.wait(10) == 2
    assert "--kernel-sandbox bwrap: bubblewrap (bwrap) is not on PATH" in daemon.log()
    daemon.process = None


async def test_auto_mode_without_bwrap_serves_unconfined_with_a_warning(daemon_factory: Any, layout: Path, tmp_path: Path) -> None:
    empty = tmp_path / "no-bwrap-here"
    empty.mkdir()
    daemon = daemon_factory("--kernel-sandbox", "auto", env={"PATH": str(empty)})
    assert "kernels are NOT isolated (--kernel-sandbox auto: bubblewrap (bwrap) is not on PATH" in daemon.log()
    assert daemon.health()["status"] == "ok"


# -- processes as the host sees them --------------------------------------------------


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False
