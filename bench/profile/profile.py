"""Profile a server under one of the benchmark's loads with py-spy (the profiles in bench/README.md).

    python bench/profile/profile.py fanout [--kind crdtnb] [--clients 500] [--rate 10] [--seconds 8]
    python bench/profile/profile.py flood  [--seconds 12] [--gil]     # crdtnb running the 10^6-line cell
    python bench/profile/profile.py rooms  [--rooms 1000] [--seconds 5]  # idle, every room open
    add --loopmon to run crdtnb under bench/profile/serve_loopmon.py (loop stalls in its log)

Writes OUT.raw (py-spy collapsed stacks, default /tmp/crdtnb-profile-<scenario>.raw) and prints
the top functions. Servers on CPU 0, clients on CPU 1 (the flood's daemon is not pinned).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import scenarios as sc  # noqa: E402
import servers  # noqa: E402
from wsclient import ProbeWriter, SyncPeer  # noqa: E402


class _NoSpy:
    def wait(self) -> None:
        pass


def py_spy(pid: int, seconds: float, out: str, gil: bool) -> subprocess.Popen | _NoSpy:
    if seconds <= 0:  # --seconds 0: no profiler (e.g. only the loop monitor's log)
        return _NoSpy()
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    cmd = [exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", os.environ.get("SPY_RATE", "200"), "-f", "raw", "-o", out, "--nonblocking"]
    if gil:
        cmd.append("--gil")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def fanout(args, cfg: sc.Config) -> None:
    server = cfg.server(args.kind, "profile")
    server.prepare_rooms(["fanout"])
    server.start()
    try:
        probes: list = []
        peers = await sc.connect_many(server.url("fanout"), args.clients - 1, probes=probes)
        writer = ProbeWriter()
        await writer.peer.connect(server.url("fanout"))
        await writer.peer.wait_synced()
        await sc.drive(writer, args.rate, 1.0)
        spy = py_spy(server.proc.pid, args.seconds, args.out, args.gil)
        probes.clear()
        await sc.drive(writer, args.rate, args.seconds)
        await asyncio.sleep(1)
        lat = [l for _, l, _ in probes]
        print(f"{args.kind} {args.clients} clients x {args.rate}/s: p50 {sc.pct(lat, 50):.2f} ms, p99 {sc.pct(lat, 99):.2f} ms (under py-spy)")
        spy.wait()
        sc.close_all(peers)
        writer.peer.close()
    finally:
        server.stop()


async def flood(args, cfg: sc.Config) -> None:
    cells = sc.flood_cells(10**6, 10**5)
    server = cfg.server("crdtnb", "profile", cpus=None)
    server.prepare_rooms(["flood"], sc.flood_notebook(cells))
    server.prepare_rooms(["other"])
    server_t0 = time.monotonic_ns()
    server.start()
    try:
        doc = sc.Doc()
        watcher = SyncPeer(doc=doc, apply=True)
        await watcher.connect(server.url("flood"))
        await watcher.wait_synced()
        probes: list = []
        peers = await sc.connect_many(server.url("other"), 9, probes=probes)
        writer = ProbeWriter()
        await writer.peer.connect(server.url("other"))
        await writer.peer.wait_synced()
        await sc._run_cell(server, doc, "warm", 120)
        stop = asyncio.Event()
        background = asyncio.create_task(sc.drive(writer, 50, 3600, stop))
        await asyncio.sleep(1)
        spy = py_spy(server.proc.pid, args.seconds, args.out, args.gil)
        t0 = time.monotonic_ns()
        wall = await sc._run_cell(server, doc, "lines", 600)
        if args.seconds <= 0:
            print(f"cell ran from {(t0 - server_t0) / 1e9:.2f} s to {(time.monotonic_ns() - server_t0) / 1e9:.2f} s after the server started")
        during = [l for _, l, at in probes if at >= t0]
        print(f"10^6 lines: {wall:.2f} s; other room p50 {sc.pct(during, 50):.2f} ms, p99 {sc.pct(during, 99):.2f} ms (under py-spy)")
        stop.set()
        await background
        spy.wait()
        sc.close_all(peers + [watcher])
        writer.peer.close()
    finally:
        server.stop()


async def rooms(args, cfg: sc.Config) -> None:
    server = cfg.server("crdtnb", "profile")
    names = [f"r{i:04d}" for i in range(args.rooms)]
    server.prepare_rooms(names)
    server.start()
    try:
        sem = asyncio.Semaphore(50)
        peers = await asyncio.gather(*(sc.first_conn(server.url(n), sem) for n in names))
        await asyncio.sleep(2)
        c0, t0 = server.cpu_seconds(), time.monotonic()
        py_spy(server.proc.pid, args.seconds, args.out, args.gil).wait()
        print(f"{args.rooms} rooms open, no traffic: server CPU {100 * (server.cpu_seconds() - c0) / (time.monotonic() - t0):.0f}% of a core")
        sc.close_all(peers)
    finally:
        server.stop(60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=("fanout", "flood", "rooms"))
    parser.add_argument("--kind", default="crdtnb")
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--rate", type=int, default=10)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--gil", action="store_true", help="sample only the thread holding the GIL")
    parser.add_argument("--loopmon", action="store_true", help="run crdtnb under serve_loopmon.py")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.out = args.out or f"/tmp/crdtnb-profile-{args.scenario}.raw"
    if args.loopmon:
        original = servers.Server.command

        def command(self):
            cmd, env = original(self)
            if self.kind == "crdtnb":
                cmd[1:3] = [str(HERE / "serve_loopmon.py")]
            return cmd, env

        servers.Server.command = command
    cfg = sc.Config(server_cpus={0} if len(os.sched_getaffinity(0)) >= 2 else None)
    if cfg.server_cpus:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[1]})
    asyncio.run({"fanout": fanout, "flood": flood, "rooms": rooms}[args.scenario](args, cfg))
    print(f"logs under {cfg.workdir}")
    if args.seconds > 0:
        print(f"profile: {args.out}")
        subprocess.run([sys.executable, str(HERE / "top.py"), args.out, "25"])


if __name__ == "__main__":
    main()
