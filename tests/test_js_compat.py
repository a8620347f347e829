"""JupyterLab compatibility: the real JS stack (yjs, y-websocket, @jupyter/ydoc) against the daemon.

``tests/js/compat.mjs`` syncs JupyterLab's notebook model (``YNotebook`` from @jupyter/ydoc) through
y-websocket's ``WebsocketProvider``, edits the first cell and adds a markdown cell through the model,
and waits until a second provider with a fresh ``Y.Doc`` sees both edits. This test runs it against
``crdtnb serve`` over a copy of ``examples/`` and checks what it saw against the files on disk, then
checks the edits reached the server (REST) and the saved ``.ipynb``.

Needs ``node`` and ``npm ci`` (or ``npm install``) in tests/js; skipped otherwise.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest

from .conftest import Daemon

HERE = Path(__file__).resolve().parent
JS_DIR = HERE / "js"
EXAMPLES = HERE.parent / "examples"
NODE = shutil.which("node")
JS_PACKAGES = ("yjs", "y-websocket", "ws", "@jupyter/ydoc")

_missing = [name for name in JS_PACKAGES if not (JS_DIR / "node_modules" / name / "package.json").is_file()]
pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed (needs Node >= 18 on PATH)"),
    pytest.mark.skipif(
        bool(_missing),
        reason=f"tests/js/node_modules lacks {', '.join(_missing)}: run `npm ci` in tests/js",
    ),
]

SAVE_WAIT = 10.0  # the daemon saves ~1 s after the last change


@pytest.fixture
def served(tmp_path: Path, daemon_factory: Any) -> Daemon:
    """The daemon over a fresh copy of examples/."""
    root = tmp_path / "examples"
    shutil.copytree(EXAMPLES, root)
    return daemon_factory(root=root)


def _source(cell: dict[str, Any]) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _normalized(nb: dict[str, Any]) -> Any:
    """The notebook as nbformat reads it: multiline strings rejoined (lists and strings are both valid)."""
    return nbformat.reads(json.dumps(nb), as_version=nbformat.NO_CONVERT)


def _run_compat(srv: Daemon, nb_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    sync_url = srv.url.replace("http://", "ws://") + "/api/sync"
    cmd = [NODE or "node", str(JS_DIR / "compat.mjs"), sync_url, nb_path, srv.token]
    try:
        proc = subprocess.run(
            cmd, cwd=JS_DIR, capture_output=True, text=True, encoding="utf-8", timeout=60, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"compat.mjs did not exit within 60 s\nstdout: {exc.stdout}\nstderr: {exc.stderr}\ndaemon log:\n{srv.log()}")
    if proc.returncode != 0:
        pytest.fail(
            f"compat.mjs exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}\ndaemon log:\n{srv.log()}"
        )
    events = {}
    for line in proc.stdout.splitlines():
        if line.strip():
            event = json.loads(line)
            events[event["event"]] = event
    assert set(events) == {"synced", "propagated"}, proc.stdout
    return events["synced"], events["propagated"]


@pytest.mark.parametrize("nb_path", ["intro.ipynb", "demo/unicode.ipynb"])
def test_jupyterlab_model_round_trip(served: Daemon, nb_path: str) -> None:
    file = served.root / nb_path
    original = _read(file)
    orig_cells = original["cells"]
    orig_ids = [c["id"] for c in orig_cells]

    synced, propagated = _run_compat(served, nb_path)

    # 1. JupyterLab's model sees exactly the notebook on disk.
    assert synced["cell_count"] == len(orig_cells)
    assert [c["id"] for c in synced["cells"]] == orig_ids
    assert [c["cell_type"] for c in synced["cells"]] == [c["cell_type"] for c in orig_cells]
    assert [c["source"] for c in synced["cells"]] == [_source(c) for c in orig_cells]
    assert (synced["nbformat"], synced["nbformat_minor"]) == (original["nbformat"], original["nbformat_minor"])

    # 2. The model's edits, as the second (plain Y.Doc) provider saw them.
    # The script inserted at the end of the first line, counting UTF-16 units as Yjs does;
    # the same place counted in code points must give the same text.
    first = _source(orig_cells[0])
    cut = first.find("\n") if "\n" in first else len(first)
    expected_first = first[:cut] + propagated["inserted"] + first[cut:]
    assert propagated["first_cell_source"] == expected_first
    new_cell = propagated["new_cell"]
    assert new_cell["cell_type"] == "markdown"
    assert new_cell["id"] not in orig_ids
    assert [c["id"] for c in propagated["cells"]] == orig_ids + [new_cell["id"]]

    orig_cells = _normalized(original)["cells"]

    def check(nb: dict[str, Any], where: str) -> None:
        nbformat.validate(nbformat.from_dict(nb))
        cells = _normalized(nb)["cells"]
        assert [c["id"] for c in cells] == orig_ids + [new_cell["id"]], where
        assert _source(cells[0]) == expected_first, where
        for before, after in zip(orig_cells[1:], cells[1:-1]):
            assert after["cell_type"] == before["cell_type"], where
            assert _source(after) == _source(before), where
            if before["cell_type"] == "code":
                assert after.get("outputs") == before["outputs"], f"{where}: outputs of {before['id']} changed"
                assert after.get("execution_count") == before["execution_count"], where
        assert cells[-1]["cell_type"] == "markdown", where
        assert _source(cells[-1]) == new_cell["source"], where

    # 3. The server's document has both edits.
    resp = httpx.get(f"{served.url}/api/notebooks/{nb_path}", params={"token": served.token}, timeout=10)
    assert resp.status_code == 200, resp.text
    check(resp.json(), "GET /api/notebooks")

    # 4. ...and so does the file, once the daemon has saved it.
    deadline = time.monotonic() + SAVE_WAIT
    while True:
        try:
            on_disk = _read(file)
            if len(on_disk["cells"]) == len(orig_cells) + 1 and _source(on_disk["cells"][0]) == expected_first:
                break
        except (OSError, ValueError):
            pass  # caught mid-write (the daemon should write atomically, but don't fail on that here)
        if time.monotonic() > deadline:
            pytest.fail(f"{nb_path} on disk lacks the edits {SAVE_WAIT} s after they were made:\n{served.log()}")
        time.sleep(0.2)
    check(on_disk, f"{nb_path} on disk")


async def test_jupyterlab_model_reads_the_notebook_after_schema_attacks(served: Daemon) -> None:
    """The attacks that once made JupyterLab's model show 0 cells or throw (a cell that is
    a Text, a cell type "evil", outputs that are a string, meta.nbformat "evil") are
    repaired before any client, JupyterLab's model included, sees them."""
    from pycrdt import Map, Text

    nb_path = "intro.ipynb"
    attacker = await served.connect(nb_path)
    count = len(attacker.cells)
    with attacker.doc.transaction():
        attacker.cells.insert(0, Text("not a cell"))
        first, second = attacker.cells[1], attacker.cells[2]
        first["cell_type"] = "evil"
        second["outputs"] = "a string"
        attacker.doc.get("meta", type=Map)["nbformat"] = "evil"
    await attacker.roundtrip()
    await attacker.close()
    synced, propagated = _run_compat(served, nb_path)
    assert synced["cell_count"] == count
    assert all(c["cell_type"] in ("code", "markdown", "raw") for c in synced["cells"])
    assert synced["nbformat"] == 4
    assert len(propagated["cells"]) == count + 1
