"""Cluster mode measured (bench/run.py --only cluster): one crdtnb daemon against two
sharing one Redis, and failover time.

- ``rooms``: 1000 rooms x 3 clients, every client writing probes at a fixed rate per
  client (1/s in the issue's figure, then higher until a configuration saturates); clients
  spread over the nodes. Reported per rate: updates delivered per second, p50/p99 from
  send to receipt on another client, server CPU (every node plus Redis).
- ``big_room``: one room with 500 clients, one writer, split over two nodes vs one node.
- ``failover``: three nodes, a room open on all of them; the owner is killed (SIGKILL)
  and the time until another node holds the room's lease is measured, ten times.

Nodes are pinned to separate CPUs where the machine has them; Redis and the clients run
wherever the OS puts them. On a 2-core machine the two-node figures share their cores
with Redis and the clients: bench/README.md says what that means for the ratios.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
from servers import Server, write_notebook
from wsclient import ProbeWriter, SyncPeer

MB = 2**20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Redis:
    """A redis-server of the bench's own (AOF with appendfsync everysec: the usual setting)."""

    def __init__(self, workdir: Path, appendfsync: str = "everysec") -> None:
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Redis:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appendonly", "yes", "--appendfsync", self.appendfsync, "--protected-mode", "no"],
            stdout=open(self.dir / "redis.log", "wb"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


class Node(Server):
    """``crdtnb serve --redis``: a Server (servers.py) with the cluster flags."""

    def __init__(self, workdir: Path, root: Path, redis: Redis, node_id: str, cpus: set[int] | None, log_dir: Path) -> None:
        super().__init__("crdtnb", workdir, cpus=cpus, log_dir=log_dir)
        self.root = root
        self.redis = redis
        self.node_id = node_id

    def command(self) -> tuple[list[str], dict[str, str]]:
        cmd, env = super().command()
        return cmd + ["--redis", self.redis.url, "--node-id", self.node_id, "--kernel-sandbox", "none"], env

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.base}/api/health", timeout=5) as r:
            return json.loads(r.read())


def _pct(values: list[int], q: float) -> float | None:
    return float(sorted(values)[min(len(values) - 1, int(len(values) * q / 100))]) / 1e6 if values else None


def _cpus(n: int) -> list[set[int] | None]:
    cpus = sorted(os.sched_getaffinity(0) | set(range(os.cpu_count() or 1)))
    if len(cpus) < 2:
        return [None] * n
    return [{cpus[i % len(cpus)]} for i in range(n)]


class _Cluster:
    def __init__(self, nodes: int, rooms: list[str], base: Path, log_dir: Path) -> None:
        self.work = Path(tempfile.mkdtemp(prefix=f"cluster{nodes}-", dir=base))
        self.root = self.work / "root"
        for name in rooms:
            write_notebook(self.root, name)
        self.redis = Redis(self.work).start()
        token = "bench-cluster-token"
        self.nodes: list[Node] = []
        for i, cpus in enumerate(_cpus(nodes)):
            node = Node(self.work / f"node{i}", self.root, self.redis, f"node{i}", cpus, log_dir)
            node.token = token
            node.state_dir = self.work / "state"
            self.nodes.append(node.start())

    def cpu_seconds(self) -> float:
        return sum(n.cpu_seconds() for n in self.nodes if n.proc and n.proc.poll() is None) + self.redis.cpu_seconds()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.redis.stop()
        shutil.rmtree(self.work, ignore_errors=True)


async def _writers(nodes: list[Node], rooms: list[str], per_room: int, probes: list) -> tuple[list[ProbeWriter], list[SyncPeer]]:
    """Every client of every room writes probes; client k of a room is on node k % len(nodes)."""
    writers: list[ProbeWriter] = []
    sem = asyncio.Semaphore(50)

    async def one(room: str, k: int) -> ProbeWriter:
        async with sem:
            writer = ProbeWriter(key=f"p{k}")
            writer.peer.probes = probes
            await writer.peer.connect(nodes[k % len(nodes)].url(room))
            await writer.peer.wait_synced(120)
            return writer

    writers = await asyncio.gather(*(one(room, k) for room in rooms for k in range(per_room)))
    return list(writers), []


async def rooms_throughput(base: Path, log_dir: Path, nodes: int, rooms: int, per_room: int, rates: tuple[float, ...], window: float) -> dict:
    names = [f"r{i:04d}" for i in range(rooms)]
    cluster = _Cluster(nodes, names, base, log_dir)
    out: dict = {"nodes": nodes, "rooms": rooms, "clients_per_room": per_room, "rates": {}}
    probes: list = []
    writers: list[ProbeWriter] = []
    try:
        t = time.monotonic()
        writers, _ = await _writers(cluster.nodes, names, per_room, probes)
        out["connect_s"] = time.monotonic() - t
        for rate in rates:
            probes.clear()
            cpu0, t0 = cluster.cpu_seconds(), time.monotonic()
            interval = 1.0 / rate
            sent = 0
            first_seq = {id(w): w.seq + 1 for w in writers}
            # Spread the writes evenly over each interval.
            step = interval / len(writers)
            end = t0 + window
            next_at = t0
            i = 0
            while time.monotonic() < end:
                writers[i % len(writers)].write_probe()
                sent += 1
                i += 1
                next_at += step
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif i % 200 == 0:
                    await asyncio.sleep(0)
            expected = sent * (per_room - 1)
            deadline = time.monotonic() + 5
            while len(probes) < expected and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            t1, cpu1 = time.monotonic(), cluster.cpu_seconds()
            del first_seq
            lat = [latency for _, latency, _ in probes]
            out["rates"][str(rate)] = {
                "offered_updates_per_s": sent / window,
                "delivered": len(lat),
                "expected": expected,
                "delivered_per_s": len(lat) / (t1 - t0),
                "p50_ms": _pct(lat, 50),
                "p99_ms": _pct(lat, 99),
                "cpu_s": cpu1 - cpu0,
                "cpu_util": (cpu1 - cpu0) / (t1 - t0),
            }
            await asyncio.sleep(1)
    finally:
        for w in writers:
            w.peer.close()
        await asyncio.sleep(0.2)
        cluster.stop()
    return out


async def big_room(base: Path, log_dir: Path, nodes: int, clients: int, rate: float, window: float) -> dict:
    cluster = _Cluster(nodes, ["big"], base, log_dir)
    probes: list = []
    peers: list[SyncPeer] = []
    writer = ProbeWriter()
    try:
        sem = asyncio.Semaphore(50)

        async def one(k: int) -> SyncPeer:
            async with sem:
                peer = SyncPeer(probes=probes)
                await peer.connect(cluster.nodes[k % nodes].url("big"))
                await peer.wait_synced(120)
                return peer

        peers = list(await asyncio.gather(*(one(k) for k in range(clients - 1))))
        await writer.peer.connect(cluster.nodes[0].url("big"))
        await writer.peer.wait_synced()
        await asyncio.sleep(1)
        probes.clear()
        cpu0, t0 = cluster.cpu_seconds(), time.monotonic()
        sent = 0
        while time.monotonic() < t0 + window:
            writer.write_probe()
            sent += 1
            await asyncio.sleep(1 / rate)
        expected = sent * (clients - 1)
        deadline = time.monotonic() + 5
        while len(probes) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        cpu1 = cluster.cpu_seconds()
        lat = [latency for _, latency, _ in probes]
        return {
            "nodes": nodes,
            "clients": clients,
            "rate": rate,
            "expected": expected,
            "delivered": len(lat),
            "p50_ms": _pct(lat, 50),
            "p99_ms": _pct(lat, 99),
            "cpu_ms_per_1000": (cpu1 - cpu0) / max(1, len(lat)) * 1e6,
        }
    finally:
        for peer in peers:
            peer.close()
        writer.peer.close()
        await asyncio.sleep(0.2)
        cluster.stop()


async def failover(base: Path, log_dir: Path, kills: int) -> dict:
    """Kill the owner of a room open on every node; time until another node owns it."""
    cluster = _Cluster(3, ["fail"], base, log_dir)
    times: list[float] = []
    peers: list[SyncPeer] = []
    try:
        for _ in range(kills):
            for node in cluster.nodes:
                if node.proc is None or node.proc.poll() is not None:
                    node.port = _free_port()
                    node.start()
            for peer in peers:
                peer.close()
            peers = []
            for node in cluster.nodes:
                peer = SyncPeer()
                await peer.connect(node.url("fail"))
                await peer.wait_synced()
                peers.append(peer)
            owner = None
            deadline = time.monotonic() + 15
            while owner is None and time.monotonic() < deadline:
                owner = next((n for n in cluster.nodes if "fail.ipynb" in n.health()["cluster"]["owned"]), None)
                await asyncio.sleep(0.05)
            assert owner is not None, "nobody owns the room"
            assert owner.proc is not None
            others = [n for n in cluster.nodes if n is not owner]
            owner.proc.send_signal(signal.SIGKILL)
            owner.proc.wait(10)
            t0 = time.monotonic()
            new_owner = None
            while new_owner is None and time.monotonic() < t0 + 30:
                for node in others:
                    try:
                        if "fail.ipynb" in node.health()["cluster"]["owned"]:
                            new_owner = node
                    except OSError:
                        pass
                await asyncio.sleep(0.05)
            if new_owner is not None:
                times.append(time.monotonic() - t0)
        return {
            "kills": kills,
            "taken_over": len(times),
            "median_s": statistics.median(times) if times else None,
            "max_s": max(times) if times else None,
            "times_s": [round(t, 2) for t in times],
        }
    finally:
        for peer in peers:
            peer.close()
        cluster.stop()
