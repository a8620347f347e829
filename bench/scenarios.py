"""The measurements. Each function starts its server(s) fresh, drives them with the lean
clients of wsclient.py from this process, and returns plain JSON-able dicts."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from pycrdt import Array, Doc, Text
from servers import BENCH, NODE_CLIENT, Server, small_notebook
from wsclient import ProbeWriter, SyncPeer, Typist

MB = 2**20
# Figures summarised over repetitions for each fan-out point (Python clients, Node clients).
FANOUT_FIGURES = ("p50_ms", "p99_ms", "deliveries_per_s", "cpu_ms_per_1000", "client_cpu_util", "server_cpu_util")
NODE_FIGURES = FANOUT_FIGURES + ("window_cpu_ms_per_1000", "run_cpu_s", "connect_cpu_s", "connect_s", "leave_s", "leave_cpu_s")


@dataclass
class Config:
    quick: bool = False
    kinds: tuple[str, ...] = ()
    server_cpus: set[int] | None = None  # where servers are pinned (None: not pinned)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="crdtnb-bench-")))
    log_dir: Path | None = None
    reps: int = 3
    window: float = 3.0  # seconds of writing per fan-out measurement
    drain: float = 3.0  # seconds to wait for late deliveries after the last send
    fanout_points: tuple[tuple[int, tuple[int, ...]], ...] = ()
    node_settle: float = 1.0  # node clients: seconds from the last sync to the first write
    rooms: int = 1000
    large_cells: int = 1000
    flood_lines: int = 10**6
    flood_steps: int = 10**5
    flood_other_clients: int = 10
    flood_other_rate: int = 50
    catchup_ns: tuple[int, ...] = (10, 100, 1000, 10000)
    flood_reps: int = 5  # the kernel's own speed varies a lot from run to run on a small VM

    def server(self, kind: str, name: str, cpus: object = "default") -> Server:
        workdir = Path(tempfile.mkdtemp(prefix=f"{kind}-{name}-", dir=self.workdir))
        return Server(kind, workdir, cpus=self.server_cpus if cpus == "default" else cpus, log_dir=self.log_dir)


def summary(values: list[float]) -> dict:
    """Median of repeated runs, with min and max."""
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def pct(latencies_ns: list[int], q: float) -> float | None:
    if not latencies_ns:
        return None
    return float(np.percentile(np.asarray(latencies_ns, dtype=np.int64), q)) / 1e6  # ms


async def connect_many(url: str, n: int, *, probes: list | None = None, concurrency: int = 50, seed: bytes | None = None) -> list[SyncPeer]:
    """The first client opens the room alone (pycrdt-websocket 0.16.5 fails concurrent first
    joins of one room: two of them race to start it); the others join concurrently."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> SyncPeer:
        async with sem:
            peer = SyncPeer(probes=probes)
            await peer.connect(url, seed=seed if i == 0 else None)
            await peer.wait_synced(120)
            return peer

    if n <= 0:
        return []
    first = await one(0)
    return [first] + list(await asyncio.gather(*(one(i) for i in range(1, n))))


def close_all(peers: list[SyncPeer]) -> None:
    for p in peers:
        p.close()


class ClientCPU:
    """This (client) process's CPU use over a window, to flag client-bound measurements."""

    def __init__(self) -> None:
        self.ps = psutil.Process()
        self.t0 = time.monotonic()
        c = self.ps.cpu_times()
        self.c0 = c.user + c.system

    def utilisation(self) -> float:
        c = self.ps.cpu_times()
        return (c.user + c.system - self.c0) / max(time.monotonic() - self.t0, 1e-9)


async def drive(writer: ProbeWriter, rate: float, duration: float, stop: asyncio.Event | None = None) -> tuple[int, int, int]:
    """Write probes at a fixed rate. Returns (first seq, last seq, count)."""
    loop = asyncio.get_running_loop()
    n = max(1, int(rate * duration))
    first = writer.seq + 1
    t0 = loop.time()
    for i in range(n):
        if stop is not None and stop.is_set():
            break
        delay = t0 + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        writer.write_probe()
    return first, writer.seq, writer.seq - first + 1


# --------------------------------------------------------------------------- fan-out


async def fanout(cfg: Config, kind: str, clients: int, rates: tuple[int, ...]) -> dict:
    """One room, ``clients`` connections of which one writes probes at each fixed rate."""
    server = cfg.server(kind, f"fanout{clients}")
    server.prepare_rooms(["fanout"])
    server.start()
    out: dict = {"kind": kind, "clients": clients, "client": "python", "rates": {}}
    peers: list[SyncPeer] = []
    writer = ProbeWriter()
    try:
        probes: list = []
        t = time.monotonic()
        peers = await connect_many(server.url("fanout"), clients - 1, probes=probes)
        await writer.peer.connect(server.url("fanout"))
        await writer.peer.wait_synced()
        out["connect_s"] = time.monotonic() - t
        receivers = clients - 1
        # warm-up: not measured
        await drive(writer, rates[0], 0.5 if cfg.quick else 1.0)
        await asyncio.sleep(0.5)
        for rate in rates:
            reps = []
            for _ in range(cfg.reps):
                probes.clear()
                closed_before = sum(p.ws.closed.done() for p in peers)
                client_cpu = ClientCPU()
                cpu0 = server.cpu_seconds()
                t0 = time.monotonic()
                first, last, sent = await drive(writer, rate, cfg.window)
                expected = sent * receivers
                deadline = time.monotonic() + cfg.drain
                while time.monotonic() < deadline:
                    if len(probes) >= expected:
                        break
                    await asyncio.sleep(0.01)
                t1 = time.monotonic()
                cpu1 = server.cpu_seconds()
                lat = [l for s, l, _ in probes if first <= s <= last]
                if len(lat) < expected:
                    # saturated: let the backlog drain before the next repetition
                    seen, quiet_deadline = -1, time.monotonic() + 20
                    while len(probes) != seen and time.monotonic() < quiet_deadline:
                        seen = len(probes)
                        await asyncio.sleep(0.5)
                delivered = len(lat)
                reps.append(
                    {
                        "sent": sent,
                        "expected": expected,
                        "delivered": delivered,
                        "lost": expected - delivered,
                        "p50_ms": pct(lat, 50),
                        "p99_ms": pct(lat, 99),
                        "max_ms": (max(lat) / 1e6) if lat else None,
                        "deliveries_per_s": delivered / (t1 - t0),
                        "cpu_ms_per_1000": (cpu1 - cpu0) / delivered * 1e6 if delivered else None,
                        "server_cpu_util": (cpu1 - cpu0) / (t1 - t0),
                        "client_cpu_util": client_cpu.utilisation(),
                        "disconnected": sum(p.ws.closed.done() for p in peers) - closed_before,
                    }
                )
                await asyncio.sleep(0.3)
            out["rates"][str(rate)] = {
                "reps": reps,
                **{key: summary([r[key] for r in reps]) for key in FANOUT_FIGURES},
                "lost": sum(r["lost"] for r in reps),
                "disconnected": sum(r["disconnected"] for r in reps),
            }
        out["peak_rss_mb"] = server.peak_rss() / MB
        out["rss_end_mb"] = server.rss() / MB
    finally:
        close_all(peers)
        writer.peer.close()
        await asyncio.sleep(0.1)
        server.stop()
    return out


async def node_clients_run(cfg: Config, server: Server, clients: int, rate: int, window: float) -> dict:
    """One run of bench/node/fanout_client.mjs: ``clients`` real Yjs providers connect, one
    writes at ``rate`` for ``window`` seconds, the others record what reaches them. The
    server's CPU is read when the process starts and at each phase it reports, so a run has
    both its whole cost (connects included, as a page full of editors costs) and the writing
    window's. The client process inherits this process's CPU pinning."""
    connect_timeout = max(120.0, clients * 0.5)  # a loaded 2-core machine, Python servers and N² presence messages
    args = {**server.node_target("fanout"), "clients": clients, "rate": rate, "window": window, "drain": cfg.drain,
            "settle": cfg.node_settle, "connectTimeout": connect_timeout, "quietTimeout": 30}
    marks: dict[str, float] = {"start": server.cpu_seconds()}
    proc = await asyncio.create_subprocess_exec(
        shutil.which("node") or "node", str(NODE_CLIENT), json.dumps(args),
        cwd=str(NODE_CLIENT.parent), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    result: dict | None = None
    error: str | None = None
    budget = connect_timeout + 30 + cfg.node_settle + window + cfg.drain + 60

    async def read() -> None:
        nonlocal result, error
        assert proc.stdout is not None
        async for line in proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            event = message.get("event")
            if event in ("synced", "writing", "drained"):
                marks[event] = server.cpu_seconds()
            elif event == "result":
                result = message
            elif event == "error":
                error = message.get("error", "?")

    stderr_tail: deque[str] = deque(maxlen=20)

    async def read_stderr() -> None:  # read as it comes: a full pipe would stop the clients
        assert proc.stderr is not None
        async for line in proc.stderr:
            stderr_tail.append(line.decode(errors="replace").rstrip())

    try:
        await asyncio.wait_for(asyncio.gather(read(), read_stderr(), proc.wait()), budget)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"the node clients did not finish in {budget:.0f} s") from None
    if proc.returncode != 0 or result is None or error:
        stderr = "\n".join(stderr_tail)  # ends with e.g. "412 of 500 providers synced"
        raise RuntimeError(f"node clients failed ({proc.returncode}): {(error or '').strip()[-400:]} {stderr[-400:]}".strip())
    # The clients' departure (each one's presence removal relayed to those still there) is not
    # the next run's: pycrdt-websocket takes 40-55 s of CPU after 500 providers leave.
    cpu_left = server.cpu_seconds()
    quiet_s = await server.wait_quiet(timeout=180)
    leave_cpu = server.cpu_seconds() - cpu_left
    delivered = result["delivered"]
    run_cpu = marks["drained"] - marks["start"]
    window_cpu = marks["drained"] - marks["writing"]
    return {
        **{k: result[k] for k in ("sent", "expected", "delivered", "lost", "p50_ms", "p99_ms", "max_ms", "deliveries_per_s",
                                  "disconnected", "client_cpu_util", "connect_s", "extensions")},
        "cpu_ms_per_1000": run_cpu / delivered * 1e6 if delivered else None,
        "window_cpu_ms_per_1000": window_cpu / delivered * 1e6 if delivered else None,
        "run_cpu_s": run_cpu,
        "connect_cpu_s": marks["synced"] - marks["start"],
        "server_cpu_util": window_cpu / result["window_s"],
        "leave_s": quiet_s,
        "leave_cpu_s": leave_cpu,
    }


async def fanout_node(cfg: Config, kind: str, clients: int, rates: tuple[int, ...]) -> dict:
    """The fan-out matrix with real Yjs clients: one server start per client count, one fresh
    node client process (N providers) per rate and repetition."""
    server = cfg.server(kind, f"fanoutnode{clients}")
    server.prepare_rooms(["fanout"])
    server.start()
    out: dict = {"kind": kind, "clients": clients, "client": "node", "rates": {}}
    try:
        # warm-up: not measured (the node servers' JIT, the Python servers' first room)
        await node_clients_run(cfg, server, clients, rates[0], 0.5)
        for rate in rates:
            reps = [await node_clients_run(cfg, server, clients, rate, cfg.window) for _ in range(cfg.reps)]
            out["rates"][str(rate)] = {
                "reps": reps,
                **{key: summary([r[key] for r in reps]) for key in NODE_FIGURES},
                "lost": sum(r["lost"] for r in reps),
                "disconnected": sum(r["disconnected"] for r in reps),
            }
        out["peak_rss_mb"] = server.peak_rss() / MB
        out["rss_end_mb"] = server.rss() / MB
        out["extensions"] = reps[-1]["extensions"]  # what the server accepted of ws's offer
    finally:
        server.stop()
    return out


# --------------------------------------------------------------------------- many rooms


def notebook_update(nb: dict) -> bytes:
    """The Yjs update of a notebook in jupyter_ydoc's schema, as crdtnb would build it from the
    file: the peers' rooms get exactly this, so every server holds the same documents."""
    from crdtnb.notebook import load_notebook

    doc = Doc()
    load_notebook(doc, nb)
    return doc.get_update()


async def settle_rss(server: Server, seconds: float = 1.5) -> int:
    await asyncio.sleep(seconds)
    return server.rss()


async def many_rooms(cfg: Config, kind: str, rooms: int, per_room: int = 3) -> dict:
    server = cfg.server(kind, "rooms")
    names = [f"r{i:04d}" for i in range(rooms)]
    server.prepare_rooms(names + ["warm"])
    seed = None if server.is_crdtnb else notebook_update(small_notebook())
    server.start()
    peers: list[SyncPeer] = []
    try:
        peers += await connect_many(server.url("warm"), 1, seed=seed)
        rss0 = await settle_rss(server)
        t = time.monotonic()
        sem = asyncio.Semaphore(50)

        async def first(name: str) -> SyncPeer:
            async with sem:
                peer = SyncPeer()
                await peer.connect(server.url(name), seed=seed)
                await peer.wait_synced(120)
                return peer

        peers += await asyncio.gather(*(first(n) for n in names))
        open_s = time.monotonic() - t
        rss1 = await settle_rss(server)
        t = time.monotonic()
        for _ in range(per_room - 1):
            peers += await asyncio.gather(*(first_conn(server.url(n), sem) for n in names))
        join_s = time.monotonic() - t
        rss3 = await settle_rss(server)
        # idle cost of holding the rooms open
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        await asyncio.sleep(1 if cfg.quick else 3)
        idle_cpu = (server.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        per_conn = (rss3 - rss1) / ((per_room - 1) * rooms)
        per_room_1 = (rss1 - rss0) / rooms
        return {
            "kind": kind,
            "rooms": rooms,
            "clients_per_room": per_room,
            "connections": len(peers),
            "rss_baseline_mb": rss0 / MB,
            "rss_rooms_1_client_mb": rss1 / MB,
            "rss_rooms_all_clients_mb": rss3 / MB,
            "kb_per_room_with_1_conn": per_room_1 / 1024,
            "kb_per_room": (per_room_1 - per_conn) / 1024,
            "kb_per_connection": per_conn / 1024,
            "open_rooms_per_s": rooms / open_s,
            "joins_per_s": (per_room - 1) * rooms / join_s,
            "idle_cpu_util": idle_cpu,
            "peak_rss_mb": server.peak_rss() / MB,
            "disconnected": sum(p.ws.closed.done() for p in peers),
        }
    finally:
        close_all(peers)
        await asyncio.sleep(0.2)
        server.stop(60)


async def first_conn(url: str, sem: asyncio.Semaphore) -> SyncPeer:
    async with sem:
        peer = SyncPeer()
        await peer.connect(url)
        await peer.wait_synced(120)
        return peer


# --------------------------------------------------------------------------- large notebook


def large_notebook(cells: int, target_bytes: int) -> dict:
    """``cells`` code cells with source and outputs adding up to about ``target_bytes`` of JSON."""
    per_cell = max(200, target_bytes // max(cells, 1))
    src_len = min(400, per_cell // 8)
    out_len = per_cell - src_len - 300
    nb_cells = []
    for i in range(cells):
        source = (f"# cell {i}\nimport math\nvalues = [math.sin(x / {i + 1}) for x in range(100)]\n" * 10)[:src_len]
        line = f"{i:06d} " + "lorem ipsum dolor sit amet consectetur " * 2 + "\n"
        text = (line * (out_len // len(line) + 1))[: max(out_len // 2, 0)]
        nb_cells.append(
            {
                "id": f"c{i:05d}",
                "cell_type": "code",
                "metadata": {"tags": []},
                "execution_count": i + 1,
                "source": source,
                "outputs": [
                    {"output_type": "stream", "name": "stdout", "text": text},
                    {
                        "output_type": "execute_result",
                        "execution_count": i + 1,
                        "metadata": {},
                        "data": {"text/plain": text[: len(text) // 2], "text/html": f"<pre>{text[: len(text) // 2]}</pre>"},
                    },
                ],
            }
        )
    nb = small_notebook("large")
    nb["cells"] = nb_cells
    return nb


async def time_new_client(url: str, apply: bool = True) -> dict:
    t0 = time.monotonic_ns()
    peer = SyncPeer()
    await peer.connect(url)
    await peer.wait_synced(300)
    synced_ms = (peer.t_synced - t0) / 1e6
    out = {"synced_ms": synced_ms, "step2_bytes": peer.step2_bytes}
    peer.close()
    return out


async def time_new_client_applied(url: str) -> dict:
    """Until the step2 is applied into a pycrdt Doc (the client's own cost included)."""
    t0 = time.monotonic_ns()
    doc = Doc()
    peer = SyncPeer(doc=doc, apply=True)
    await peer.connect(url)
    await peer.wait_synced(300)
    t1 = time.monotonic_ns()
    cells = len(doc.get("cells", type=Array))
    peer.close()
    return {"applied_ms": (t1 - t0) / 1e6, "cells": cells}


async def open_large(cfg: Config, kind: str, cells: int, target_bytes: int) -> dict:
    nb = large_notebook(cells, target_bytes)
    file_bytes = len(json.dumps(nb))
    out: dict = {"kind": kind, "cells": cells, "ipynb_bytes": file_bytes}
    server = cfg.server(kind, "large")
    server.prepare_rooms(["large"], nb)
    if server.is_crdtnb:
        # cold: nobody has it open; the daemon reads the .ipynb (first time) or its log (later)
        cold_file, cold_store = [], []
        for rep in range(cfg.reps):
            s = cfg.server(kind, f"largecold{rep}")
            s.prepare_rooms(["large"], nb)
            with s:
                cold_file.append((await time_new_client(s.url("large")))["synced_ms"])
            with s:  # same state dir: the room now loads from the store
                cold_store.append((await time_new_client(s.url("large")))["synced_ms"])
        out["cold_from_file_ms"] = summary(cold_file)
        out["cold_from_store_ms"] = summary(cold_store)
    server.start()
    seeder = None
    try:
        if not server.is_crdtnb:
            t = time.monotonic()
            seeder = SyncPeer()
            await seeder.connect(server.url("large"), seed=notebook_update(nb))
            await seeder.wait_synced(300)
            out["seed_s"] = time.monotonic() - t
        else:
            seeder = SyncPeer()  # keeps the room loaded, as the seeder does on the peers
            await seeder.connect(server.url("large"))
            await seeder.wait_synced(300)
        warm = [await time_new_client(server.url("large")) for _ in range(cfg.reps)]
        applied = [await time_new_client_applied(server.url("large")) for _ in range(cfg.reps)]
        out["warm_synced_ms"] = summary([w["synced_ms"] for w in warm])
        out["warm_applied_ms"] = summary([a["applied_ms"] for a in applied])
        out["step2_bytes"] = warm[0]["step2_bytes"]
        out["cells_seen"] = applied[0]["cells"]
        out["peak_rss_mb"] = server.peak_rss() / MB
    finally:
        if seeder is not None:
            seeder.close()
        server.stop(60)
    return out


# --------------------------------------------------------------------------- reconnect catch-up


async def catchup(cfg: Config, kind: str, ns: tuple[int, ...]) -> dict:
    """A client that missed N typed characters (N updates) reconnects with its state vector."""
    server = cfg.server(kind, "catchup")
    server.prepare_rooms(["catchup"])
    server.start()
    typist = Typist()
    out: dict = {"kind": kind, "n": {}}
    try:
        await typist.peer.connect(server.url("catchup"))
        await typist.peer.wait_synced()
        doc = Doc()
        late = SyncPeer(doc=doc, apply=True)
        await late.connect(server.url("catchup"))
        await late.wait_synced()
        for n in ns:
            reps = []
            for _ in range(cfg.reps):
                late.close()
                await asyncio.sleep(0.2)  # the server notices the disconnect
                t = time.monotonic()
                typist.type_chars(n)
                await typist.peer.roundtrip(300)
                ingest_s = time.monotonic() - t
                t0 = time.monotonic_ns()
                late = SyncPeer(doc=doc, apply=True)
                await late.connect(server.url("catchup"))
                await late.wait_synced(300)
                t1 = time.monotonic_ns()
                ok = str(doc.get("typing", type=Text)) == str(typist.text)
                reps.append(
                    {
                        "catchup_ms": (t1 - t0) / 1e6,
                        "step2_bytes": late.step2_bytes,
                        "bytes_received": late.ws.bytes_received,
                        "ingest_updates_per_s": n / ingest_s,
                        "consistent": ok,
                    }
                )
            full = typist.doc.get_update()
            out["n"][str(n)] = {
                "reps": reps,
                "catchup_ms": summary([r["catchup_ms"] for r in reps]),
                "step2_bytes": summary([r["step2_bytes"] for r in reps]),
                "bytes_received": summary([r["bytes_received"] for r in reps]),
                "ingest_updates_per_s": summary([r["ingest_updates_per_s"] for r in reps]),
                "consistent": all(r["consistent"] for r in reps),
                "full_doc_bytes": len(full),
            }
        late.close()
    finally:
        typist.peer.close()
        await asyncio.sleep(0.1)
        server.stop(60)
    return out


# --------------------------------------------------------------------------- output flood


def flood_cells(lines: int, steps: int) -> dict[str, str]:
    return {
        "warm": "import sys\n1 + 1",
        "lines": f"for i in range({lines}):\n    print(i)",
        "progress": (
            f"N = {steps}\n"
            "for i in range(N):\n"
            "    done = (i + 1) * 40 // N\n"
            "    print(f'\\r{i + 1}/{N} [' + '#' * done + ' ' * (40 - done) + ']', end='')\n"
            "print()"
        ),
    }


def flood_notebook(cells: dict[str, str]) -> dict:
    nb = small_notebook("flood")
    nb["cells"] = [
        {"id": cid, "cell_type": "code", "metadata": {}, "execution_count": None, "source": src, "outputs": []}
        for cid, src in cells.items()
    ]
    return nb


def _cell(doc: Doc, cell_id: str):
    for cell in doc.get("cells", type=Array):
        if cell["id"] == cell_id:
            return cell
    return None


async def _run_cell(server: Server, doc: Doc, cell_id: str, timeout: float) -> float:
    """POST execute, then wait (in a watching client's doc) until the cell is idle again with a
    new execution count. Returns the wall time in seconds."""
    before = _cell(doc, cell_id)["execution_count"]
    t0 = time.monotonic()
    await asyncio.to_thread(server.http, "POST", "/api/notebooks/flood.ipynb/execute", {"cell_ids": [cell_id]})
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        cell = _cell(doc, cell_id)
        if cell["execution_state"] == "idle" and cell["execution_count"] not in (None, before):
            return time.monotonic() - t0
        await asyncio.sleep(0.01)
    raise TimeoutError(f"cell {cell_id} did not finish in {timeout} s")


def _move_children(pid: int, cpus: set[int]) -> None:
    """Pin every thread of every descendant of ``pid`` (the kernels) to ``cpus``."""
    for child in psutil.Process(pid).children(recursive=True):
        for thread in child.threads():
            os.sched_setaffinity(thread.id, cpus)


async def flood(cfg: Config) -> dict:
    """crdtnb runs the flood cells while another room fans out; nbclient runs the same cells."""
    cells = flood_cells(cfg.flood_lines, cfg.flood_steps)
    nb = flood_notebook(cells)
    # The daemon gets the server CPU like every server; its kernel is workload, like the
    # clients, and moves to their CPU once started (it would otherwise inherit the daemon's).
    server = cfg.server("crdtnb", "flood")
    server.prepare_rooms(["flood"], nb)
    server.prepare_rooms(["other"])
    server.start()
    out: dict = {"cells": cells, "crdtnb": {}, "nbclient": {}}
    peers: list[SyncPeer] = []
    writer = ProbeWriter()
    stop = asyncio.Event()
    try:
        doc = Doc()
        watcher = SyncPeer(doc=doc, apply=True)
        await watcher.connect(server.url("flood"))
        await watcher.wait_synced()
        peers.append(watcher)
        probes: list = []
        peers += await connect_many(server.url("other"), cfg.flood_other_clients - 1, probes=probes)
        await writer.peer.connect(server.url("other"))
        await writer.peer.wait_synced()
        await _run_cell(server, doc, "warm", 120)  # kernel start-up is not part of the timing
        if cfg.server_cpus:
            _move_children(server.proc.pid, os.sched_getaffinity(0))
        background = asyncio.create_task(drive(writer, cfg.flood_other_rate, 3600, stop))
        await asyncio.sleep(1.0)
        t = time.monotonic_ns()
        await asyncio.sleep(2.0 if cfg.quick else 3.0)
        quiet = [l for _, l, at in probes if at >= t]
        out["other_room_quiet_p99_ms"] = pct(quiet, 99)
        out["other_room_quiet_p50_ms"] = pct(quiet, 50)
        nbclient: dict = {}
        for cid in ("lines", "progress"):
            reps = []
            nb_walls: list[float] = []
            for _ in range(cfg.flood_reps):
                bytes0 = watcher.ws.bytes_received
                t_start = time.monotonic_ns()
                wall = await _run_cell(server, doc, cid, 600)
                t_end = time.monotonic_ns()
                during = [l for _, l, at in probes if t_start <= at <= t_end]
                reps.append(
                    {
                        "wall_s": wall,
                        "other_p99_ms": pct(during, 99),
                        "other_p50_ms": pct(during, 50),
                        "other_max_ms": max(during) / 1e6 if during else None,
                        "other_samples": len(during),
                        "watcher_bytes": watcher.ws.bytes_received - bytes0,
                    }
                )
                await asyncio.sleep(0.5)
                # nbclient's turn, interleaved so that both see the same machine
                nb = await asyncio.to_thread(run_nbclient, {"warm": cells["warm"], cid: cells[cid]}, 1)
                nb_walls += nb[cid]["reps"]
                nbclient[cid] = nb[cid]
                nbclient["peak_rss_mb"] = max(nbclient.get("peak_rss_mb", 0), nb["peak_rss_mb"])
            nbclient[cid]["reps"] = nb_walls
            nbclient[cid]["wall_s"] = summary(nb_walls)
            probe = await time_new_client(server.url("flood"))
            ipynb = await asyncio.to_thread(server.http_raw, "/api/notebooks/flood.ipynb")
            out["crdtnb"][cid] = {
                "reps": reps,
                "wall_s": summary([r["wall_s"] for r in reps]),
                "other_p99_ms": summary([r["other_p99_ms"] for r in reps]),
                "other_p50_ms": summary([r["other_p50_ms"] for r in reps]),
                "watcher_bytes": summary([r["watcher_bytes"] for r in reps]),
                "doc_bytes": probe["step2_bytes"],
                "exported_json_bytes": len(ipynb),
                "output_chars": sum(len(str(o.get("text", ""))) for o in json.loads(ipynb)["cells"][list(cells).index(cid)]["outputs"]),
                "daemon_peak_rss_mb": server.peak_rss() / MB,
            }
        out["nbclient"] = nbclient
        stop.set()
        await background
        out["crdtnb"]["daemon_peak_rss_mb"] = server.peak_rss() / MB
    finally:
        stop.set()
        close_all(peers)
        writer.peer.close()
        await asyncio.sleep(0.1)
        server.stop(60)
    return out


def run_nbclient(cells: dict[str, str], reps: int) -> dict:
    all_cpus = set(range(os.cpu_count() or 1))
    proc = subprocess.run(
        [sys.executable, str(BENCH / "nbclient_flood.py"), json.dumps(cells), str(reps)],
        capture_output=True,
        text=True,
        timeout=1800,
        # not pinned, like crdtnb's daemon and kernel (this process is pinned to the client CPU)
        preexec_fn=lambda: os.sched_setaffinity(0, all_cpus),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"nbclient run failed: {proc.stderr[-2000:]}")
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        cid: {
            "reps": walls,
            "wall_s": summary(walls),
            "output_chars": raw["output_chars"][cid],
            "notebook_json_bytes": raw["notebook_bytes"],
        }
        for cid, walls in raw["walls"].items()
    } | {"peak_rss_mb": raw["peak_rss_mb"]}
