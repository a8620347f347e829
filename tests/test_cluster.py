"""Cluster mode with a real redis-server and several real daemons on one ROOT: clients on
different daemons edit one notebook together; one daemon owns each room and runs its
kernel; failover loses nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from crdtnb.client import NotebookClient

from .conftest import Daemon, RedisServer, eventually, read_sources, write_notebook

pytestmark = pytest.mark.timeout(300)


def _cluster(daemon_factory: Any, redis: RedisServer, count: int, *args: str) -> list[Daemon]:
    return [
        daemon_factory("--redis", redis.url, "--node-id", f"node{i}", "--save-delay", "0.3", *args) for i in range(count)
    ]


def _owner(daemons: list[Daemon], path: str) -> Daemon | None:
    for daemon in daemons:
        if daemon.process is None:
            continue
        try:
            cluster = daemon.health()["cluster"]
        except Exception:
            continue
        if path in cluster["owned"]:
            return daemon
    return None


async def test_clients_on_three_daemons_converge(daemon_factory: Any, redis_server: RedisServer, root: Path) -> None:
    write_notebook(root / "shared.ipynb", ["start"])
    daemons = _cluster(daemon_factory, redis_server, 3)
    clients: list[NotebookClient] = [await d.connect("shared.ipynb") for d in daemons for _ in range(2)]
    cell = clients[0].cell_ids()[0]
    assert all(c.cell_ids() == [cell] for c in clients)  # one seed, no duplicated cells
    for i, client in enumerate(clients):
        client.insert_text(cell, 0, f"[{i}]")
    expected = {f"[{i}]" for i in range(len(clients))}
    for client in clients:
        await client.wait_for(lambda _, c=client: all(tag in c.source(cell) for tag in expected), timeout=15)
    sources = {client.source(cell) for client in clients}
    assert len(sources) == 1, sources
    # Presence crosses daemons too.
    clients[0].set_awareness({"user": {"name": "Zoë"}})
    await clients[-1].wait_for(lambda _: clients[0].doc.client_id in clients[-1].awareness, timeout=10)
    # A late joiner on any daemon catches up.
    late = await daemons[1].connect("shared.ipynb")
    assert late.source(cell) == clients[0].source(cell)
    # One owner, which saves the file.
    owners = [d for d in daemons if "shared.ipynb" in d.health()["cluster"]["owned"]]
    assert len(owners) == 1
    await eventually(lambda: read_sources(root / "shared.ipynb")[0] == late.source(cell), timeout=15)
    health = daemons[0].health()
    assert health["node"] == "node0" and health["cluster"]["members"] == ["node0", "node1", "node2"]
    await asyncio.gather(*(c.close() for c in [*clients, late]))


async def test_a_cell_runs_on_the_owner_whichever_daemon_is_asked(daemon_factory: Any, redis_server: RedisServer, root: Path) -> None:
    write_notebook(root / "run.ipynb", ["import os; print('pid', os.getpid())"])
    daemons = _cluster(daemon_factory, redis_server, 2)
    first = await daemons[0].connect("run.ipynb")
    second = await daemons[1].connect("run.ipynb")
    cell = first.cell_ids()[0]
    owner = _owner(daemons, "run.ipynb")
    assert owner is not None
    other = daemons[1] if owner is daemons[0] else daemons[0]
    asker = second if other is daemons[1] else first
    result = await asker.execute([cell])  # asked of the daemon that does not own the room
    assert result["queued"] == [cell]
    for client in (first, second):
        await client.wait_for(lambda _, c=client: c.cell(cell).get("execution_state") == "idle" and c.outputs(cell), timeout=90)
    status = httpx.get(f"{other.url}/api/notebooks/run.ipynb/kernel", params={"token": other.token}, timeout=30).json()
    assert status["status"] == "idle" and status["kernel"] == "python3"
    await first.close()
    await second.close()
