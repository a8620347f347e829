"""The REST API of a real daemon."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import nbformat

from .conftest import Daemon, eventually


def test_health_needs_no_token_and_reports_rooms(daemon: Daemon) -> None:
    response = httpx.get(f"{daemon.url}/api/health")
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body.pop("node"), str)  # which daemon answered (several behind one proxy)
    assert body == {"status": "ok", "rooms": 0, "connections": 0}


def test_list_notebooks_under_the_root_skips_state_and_hidden_dirs(daemon: Daemon, root: Path) -> None:
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".ipynb_checkpoints" / "nb-checkpoint.ipynb").write_text("{}")
    listed = daemon.get("/api/notebooks").json()["notebooks"]
    paths = {entry["path"] for entry in listed}
    assert "nb.ipynb" in paths
    assert "examples/demo/unicode.ipynb" in paths
    assert not any(".crdtnb" in p or "checkpoint" in p for p in paths)
    entry = next(e for e in listed if e["path"] == "nb.ipynb")
    assert entry["size"] == (root / "nb.ipynb").stat().st_size


def test_get_notebook_returns_the_servers_current_document(daemon: Daemon, root: Path) -> None:
    served = daemon.get("/api/notebooks/examples/intro.ipynb").json()
    on_disk = nbformat.read(str(root / "examples" / "intro.ipynb"), as_version=4)
    nbformat.validate(nbformat.from_dict(served))
    assert [c["source"] for c in served["cells"]] == [c["source"] for c in on_disk.cells]
    assert [c.get("outputs") for c in served["cells"]] == [c.get("outputs") for c in on_disk.cells]
    assert served["metadata"] == on_disk.metadata


async def test_create_notebook_then_sync_it(daemon: Daemon, root: Path) -> None:
    created = daemon.post("/api/notebooks/new/fresh.ipynb")
    assert created.status_code == 201
    assert (root / "new" / "fresh.ipynb").is_file()
    assert daemon.post("/api/notebooks/new/fresh.ipynb").status_code == 409
    client = await daemon.connect("new/fresh.ipynb")
    assert len(client.cell_ids()) == 1
    await client.close()
    assert daemon.get("/api/notebooks/nope.ipynb").status_code == 404
    assert daemon.post("/api/notebooks/not-a-notebook.txt").status_code == 400


async def test_a_notebook_older_than_4_5_gets_cell_ids_over_rest_and_on_disk(daemon: Daemon, root: Path) -> None:
    """Most notebooks in the wild are older than 4.5: REST users need ids to run cells, and
    the file is saved as 4.5 (as JupyterLab saves it)."""
    old = nbformat.v4.new_notebook()
    old.nbformat_minor = 4
    old.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_markdown_cell("# hi")]
    for cell in old.cells:
        del cell["id"]
    (root / "old.ipynb").write_text(json.dumps(old))
    nb = daemon.notebook("old.ipynb")
    assert nb["nbformat_minor"] == 5
    ids = [cell["id"] for cell in nb["cells"]]
    assert all(ids) and len(set(ids)) == 2
    response = daemon.post("/api/notebooks/old.ipynb/execute", json={"cell_ids": [ids[0]]})
    assert response.status_code == 202 and response.json()["queued"] == [ids[0]]

    def saved_as_4_5() -> bool:
        on_disk = json.loads((root / "old.ipynb").read_text())
        return on_disk["nbformat_minor"] == 5 and [c.get("id") for c in on_disk["cells"]] == ids

    await eventually(saved_as_4_5, timeout=15)
