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


async def test_clients_on_three_daemons_converge(redis_server: RedisServer, daemon_factory: Any, root: Path) -> None:
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


async def test_a_cell_runs_on_the_owner_whichever_daemon_is_asked(redis_server: RedisServer, daemon_factory: Any, root: Path) -> None:
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


async def _owner_within(daemons: list[Daemon], path: str, seconds: float, but: Daemon | None = None) -> Daemon:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        owner = await asyncio.to_thread(_owner, [d for d in daemons if d is not but], path)
        if owner is not None:
            return owner
        assert asyncio.get_running_loop().time() < deadline, f"nobody owns {path} after {seconds} s"
        await asyncio.sleep(0.1)


def _stream(client: NotebookClient, cell: str) -> str:
    return "".join(o.get("text", "") for o in client.outputs(cell) if o["output_type"] == "stream")


@pytest.mark.parametrize("how", ["kill", "term"])
async def test_the_owner_dies_while_a_cell_runs(redis_server: RedisServer, daemon_factory: Any, root: Path, how: str) -> None:
    write_notebook(root / "fail.ipynb", ["import time\nfor i in range(600):\n    print('tick', i, flush=True)\n    time.sleep(0.1)", "print('after')"])
    daemons = _cluster(daemon_factory, redis_server, 3)
    first = await daemons[0].connect("fail.ipynb")  # node0 opens the room first: it owns it
    owner = await _owner_within(daemons, "fail.ipynb", 10)
    assert owner is daemons[0]
    watchers = [await d.connect("fail.ipynb") for d in daemons[1:]]
    loop, after = first.cell_ids()
    await watchers[0].execute([loop])  # asked of another daemon, run on the owner
    for client in watchers:
        await client.wait_for(lambda _, c=client: "tick 5" in _stream(c, loop), timeout=90)
    seen = _stream(watchers[0], loop)
    started = asyncio.get_running_loop().time()
    if how == "kill":
        owner.kill()  # kill -9: its lease lapses
    else:
        assert owner.stop() == 0  # SIGTERM: the lease is handed over at once
    new_owner = await _owner_within(daemons, "fail.ipynb", 10, but=owner)
    took = asyncio.get_running_loop().time() - started
    assert took < 8, f"failover took {took:.1f} s"
    for client in watchers:
        # The cut-off cell says so (never stuck "running"), and nothing it printed is lost.
        await client.wait_for(lambda _, c=client: c.cell(loop).get("execution_state") == "idle", timeout=15)
        outputs = client.outputs(loop)
        assert outputs[-1]["output_type"] == "error" and outputs[-1]["ename"] == "KernelLost"
        assert _stream(client, loop).startswith(seen)
    # The next run starts a fresh kernel on the new owner.
    await watchers[1].execute([after])
    for client in watchers:
        await client.wait_for(lambda _, c=client: c.outputs(after) and c.cell(after).get("execution_state") == "idle", timeout=90)
        assert _stream(client, after) == "after\n" and int(client.cell(after)["execution_count"]) == 1
    assert new_owner is not owner
    await asyncio.gather(*(c.close() for c in watchers))


async def test_a_daemon_that_does_not_own_the_room_dies(redis_server: RedisServer, daemon_factory: Any, root: Path) -> None:
    write_notebook(root / "calm.ipynb", ["x"])
    daemons = _cluster(daemon_factory, redis_server, 3)
    owner_client = await daemons[0].connect("calm.ipynb")
    victim_client = await daemons[1].connect("calm.ipynb")
    third = await daemons[2].connect("calm.ipynb")
    cell = owner_client.cell_ids()[0]
    victim_client.set_awareness({"user": {"name": "soon gone"}})
    await third.wait_for(lambda _: victim_client.doc.client_id in third.awareness, timeout=10)
    victim_client.insert_text(cell, 0, "durable ")
    await victim_client.roundtrip()
    daemons[1].kill()
    # What it stored stays; its clients' presence goes within seconds (not 30).
    await third.wait_for(lambda _: victim_client.doc.client_id not in third.awareness, timeout=20)
    assert third.source(cell).startswith("durable ")
    assert _owner(daemons, "calm.ipynb") is daemons[0]
    owner_client.insert_text(cell, 0, "still ")
    await third.wait_for(lambda _: third.source(cell).startswith("still durable "), timeout=10)
    await asyncio.gather(owner_client.close(), third.close())


async def test_fifty_owner_changes_duplicate_no_cell_and_no_output(redis_server: RedisServer, daemon_factory: Any, root: Path) -> None:
    write_notebook(root / "flip.ipynb", ["print('x')", "y = 1"])
    daemons = _cluster(daemon_factory, redis_server, 2)
    clients = [await d.connect("flip.ipynb") for d in daemons]
    printing, other = clients[0].cell_ids()
    last_run = None
    for turn in range(50):
        owner = await _owner_within(daemons, "flip.ipynb", 10)
        clients[turn % 2].insert_text(other, 0, "#")
        if turn % 10 == 0:
            # A run whose output says which turn it was, so a stale "idle" cannot pass for it.
            clients[turn % 2].set_source(printing, f"print('x{turn}')")
            await clients[turn % 2].execute([printing])
            expected = [{"output_type": "stream", "name": "stdout", "text": f"x{turn}\n"}]
            for client in clients:
                await client.wait_for(
                    lambda _, c=client, e=expected: c.outputs(printing) == e and c.cell(printing).get("execution_state") == "idle",
                    timeout=60,
                )
            last_run = expected
        response = httpx.post(f"{owner.url}/api/cluster/handover/flip.ipynb", params={"token": owner.token}, timeout=30)
        assert response.status_code == 200, response.text
        new_owner = await _owner_within(daemons, "flip.ipynb", 10, but=owner)
        assert new_owner is not owner
    for client in clients:
        await client.roundtrip()
    await clients[1].wait_for(lambda _: clients[1].source(other) == clients[0].source(other), timeout=10)
    for client in clients:
        assert client.cell_ids() == [printing, other]  # no cell duplicated
        assert client.outputs(printing) == last_run  # nor any output
        assert client.source(other) == "#" * 50 + "y = 1"
    await eventually(lambda: read_sources(root / "flip.ipynb") == ["print('x40')", "#" * 50 + "y = 1"], timeout=15)
    await asyncio.gather(*(c.close() for c in clients))


async def test_redis_restarted_under_load_loses_nothing_acknowledged(redis_server: RedisServer, daemon_factory: Any, root: Path) -> None:
    write_notebook(root / "load.ipynb", ["", ""])
    daemons = _cluster(daemon_factory, redis_server, 2)
    clients = [await d.connect("load.ipynb") for d in daemons]
    cells = clients[0].cell_ids()
    acknowledged = ["", ""]
    stop = asyncio.Event()

    async def type_on(i: int) -> None:
        client, cell = clients[i], cells[i]
        n = 0
        while not stop.is_set():
            client.insert_text(cell, len(client.source(cell)), f"{n},")
            n += 1
            try:
                await client.roundtrip(timeout=2)
                acknowledged[i] = client.source(cell)  # stored in Redis: must survive
            except (asyncio.TimeoutError, ConnectionError):
                pass  # Redis is away: not acknowledged (yet)
            await asyncio.sleep(0.02)

    typing = [asyncio.create_task(type_on(i)) for i in range(2)]
    await asyncio.sleep(2)
    before = list(acknowledged)
    redis_server.kill()  # kill -9: with appendfsync always, what was acknowledged is on disk
    await asyncio.sleep(2)
    redis_server.restart()
    await asyncio.sleep(3)
    stop.set()
    await asyncio.gather(*typing)
    assert all(before) and all(len(a) > len(b) for a, b in zip(acknowledged, before)), "typing did not resume"
    check = [await d.connect("load.ipynb", timeout=30) for d in daemons]
    for client in check:
        for cell, acked in zip(cells, acknowledged):
            await client.wait_for(lambda _, c=client, i=cell, a=acked: c.source(i).startswith(a), timeout=30)
    await asyncio.gather(*(c.close() for c in [*clients, *check]))


async def test_a_daemon_cut_off_from_redis_says_so_and_is_fenced(redis_server: RedisServer, daemon_factory: Any, root: Path) -> None:
    from .conftest import TcpProxy

    write_notebook(root / "cut.ipynb", ["text"])
    proxy = TcpProxy(redis_server.port)
    cut_url = f"redis://127.0.0.1:{proxy.port}/0"
    near = daemon_factory("--redis", redis_server.url, "--node-id", "near", "--store-timeout", "2")
    far = daemon_factory("--redis", cut_url, "--node-id", "far", "--store-timeout", "2")
    far_client = await far.connect("cut.ipynb")  # far opens the room first: it owns it
    assert await asyncio.to_thread(_owner, [near, far], "cut.ipynb") is far
    near_client = await near.connect("cut.ipynb")
    cell = near_client.cell_ids()[0]
    closes: list[Any] = []
    far_client.on_status = lambda status: closes.append(far_client.last_close)
    proxy.sever()
    far_client.insert_text(cell, 0, "not durable ")
    # far cannot store it: its clients are told so (1013, they will reconnect) ...
    await far_client.wait_for(lambda _: far_client.last_close is not None, timeout=20)
    assert far_client.last_close is not None and far_client.last_close.code == 1013
    assert "unreachable" in far_client.last_close.reason
    # ... and near, which still reaches Redis, takes the room when far's lease lapses.
    assert await _owner_within([near], "cut.ipynb", 10) is near
    near_client.insert_text(cell, 0, "durable ")
    await near_client.roundtrip()
    assert "not durable" not in near_client.source(cell)
    proxy.mend()
    # far's client comes back and resyncs: its edit reaches everyone now.
    await near_client.wait_for(lambda _: "not durable" in near_client.source(cell), timeout=30)
    assert far.health()["cluster"]["owned"] == []
    await asyncio.gather(near_client.close(), far_client.close())
    proxy.close()


async def test_a_lapsed_lease_cannot_write_even_before_its_holder_notices(redis_server: RedisServer) -> None:
    """Fencing inside Redis: the token is compared by the script that writes."""
    from redis.asyncio import Redis

    from crdtnb.cluster import Leases, RedisStore
    from crdtnb.cluster.keys import RoomKeys
    from crdtnb.ownership import NotOwner

    a_redis, b_redis = Redis.from_url(redis_server.url), Redis.from_url(redis_server.url)
    a_leases, b_leases = Leases(a_redis, "a"), Leases(b_redis, "b")
    a_store, b_store = RedisStore(a_redis, "a", a_leases), RedisStore(b_redis, "b", b_leases)
    await a_store.start()
    await b_store.start()
    assert await a_store.seed("r.ipynb", [b"\x00\x00"])
    assert await a_leases.claim("r.ipynb") and not await b_leases.claim("r.ipynb")
    await a_store.append_owned("r.ipynb", [b"\x00\x00"])
    await a_redis.pexpire(RoomKeys("r.ipynb").owner, 1)  # a's lease lapses in Redis ...
    await asyncio.sleep(0.05)
    assert await b_leases.claim("r.ipynb")  # ... b takes the room ...
    a_leases.held["r.ipynb"].valid_until = float("inf")  # ... and a has not noticed
    with pytest.raises(NotOwner):
        await a_store.append_owned("r.ipynb", [b"\x00\x00"])
    with pytest.raises(NotOwner):
        await a_store.set_meta("r.ipynb", "file_base", b"x")
    await b_store.append_owned("r.ipynb", [b"\x00\x00"])
    assert not await b_store.seed("r.ipynb", [b"\x00\x00"])  # a room is seeded once
    await a_redis.aclose()
    await b_redis.aclose()


async def test_the_owner_compacts_the_stream_and_a_new_node_loads_snapshot_and_tail(
    redis_server: RedisServer, daemon_factory: Any, root: Path
) -> None:
    import json
    import subprocess
    import sys

    write_notebook(root / "long.ipynb", ["start"])
    daemons = _cluster(daemon_factory, redis_server, 1, "--compact-after", "50", "--compact-min-interval", "0")
    client = await daemons[0].connect("long.ipynb")
    cell = client.cell_ids()[0]
    for i in range(300):
        client.insert_text(cell, len(client.source(cell)), ".")
        if i % 20 == 0:
            await client.roundtrip()
    await client.roundtrip()

    def status() -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "crdtnb", "cluster", "status", "--redis", redis_server.url, "--json"],
            capture_output=True, text=True, timeout=60, check=True,
        )
        return json.loads(out.stdout)

    await eventually(lambda: status()["rooms"][0]["log_entries"] < 100, timeout=20)
    room = status()["rooms"][0]
    assert room["room"] == "long.ipynb" and room["owner"] == "node0" and room["snapshot_bytes"] > 0
    assert room["redis_bytes"] < 200_000  # bounded: a snapshot and a short tail
    assert [n["node"] for n in status()["nodes"]] == ["node0"]
    late = daemon_factory("--redis", redis_server.url, "--node-id", "late")
    fresh = await late.connect("long.ipynb")
    assert fresh.source(cell) == "start" + "." * 300
    await asyncio.gather(client.close(), fresh.close())


async def test_accounts_hold_across_nodes(redis_server: RedisServer, daemon_factory: Any, root: Path) -> None:
    """One user database and session key (the shared state directory); failed logins
    counted in Redis; a revoked token refused, and its websockets closed, on every node."""
    import subprocess
    import sys

    from crdtnb.client import connect
    from crdtnb.users import Role, UserStore

    users = UserStore(root / ".crdtnb")
    users.add("ana", Role.EDITOR, "correct horse battery")
    token = users.new_token("ana")
    daemons = _cluster(daemon_factory, redis_server, 2)
    clients = [await connect(d.url, "nb.ipynb", token=token) for d in daemons]
    # Five failed logins spread over both nodes lock the name on both.
    for i in range(5):
        response = httpx.post(f"{daemons[i % 2].url}/login", json={"name": "ana", "password": "wrong"}, timeout=30)
        assert response.status_code == 401
    for daemon in daemons:
        assert httpx.post(f"{daemon.url}/login", json={"name": "ana", "password": "correct horse battery"}, timeout=30).status_code == 429
    subprocess.run([sys.executable, "-m", "crdtnb", "users", "revoke-tokens", "ana", "--root", str(root)], check=True, timeout=60)
    for client in clients:
        await client.wait_for(lambda _, c=client: c.closed is not None, timeout=5)
        assert client.closed is not None and client.closed.code == 4401
    for daemon in daemons:
        assert httpx.get(f"{daemon.url}/api/notebooks", headers={"Authorization": f"token {token}"}, timeout=10).status_code == 401
