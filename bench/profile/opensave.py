"""Opening and saving big notebooks (issue 14, items 3 and 5): the figures in bench/README.md.

    python bench/profile/opensave.py phases [--mb 5] [--cells 1000] [--reps 3] [--profile]
        in process: a cold open from the .ipynb, then from the log, until the first
        client's answer is ready (RoomManager.acquire + Room.on_sync_step1); --profile
        prints pyinstrument's tree of one open of each kind
    python bench/profile/opensave.py open [--mb 5] [--cells 1000] [--reps 3]
        `crdtnb serve` on CPU 0, a client on CPU 1: connect until the whole step2 is read,
        cold from the .ipynb (fresh state) and from the log (restart)
    python bench/profile/opensave.py block [--mb 50] [--cells 1000] [--reps 2]
        `crdtnb serve` under serve_loopmon.py (LOOPMON_MS=5): another room (a writer at
        200/s, one reader) while a client opens the big notebook, cold from the .ipynb and
        from the log; prints the other room's worst latencies and the loop's stalls
    python bench/profile/opensave.py save [--mb 30] [--lines-per-cell 100000]
        a stream-heavy notebook: nbformat.writes against ipynb.serialize (CPU, and the
        longest the GIL is held, seen from a thread ticking every 0.2 ms)

The notebook is bench/scenarios.py's large_notebook (code cells with a stream and an
execute_result each), written as nbformat writes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import scenarios as sc  # noqa: E402
import servers  # noqa: E402
from wsclient import ProbeWriter, SyncPeer  # noqa: E402

MB = 2**20


def notebook(cells: int, mb: float) -> dict:
    return sc.large_notebook(cells, int(mb * 1_000_000))


def write_ipynb(path: Path, nb: dict) -> int:
    import nbformat

    text = nbformat.writes(nbformat.from_dict(nb)) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return len(text.encode())


def spread(values: list[float]) -> str:
    values = sorted(values)
    return f"{statistics.median(values):,.0f} ms ({values[0]:,.0f}–{values[-1]:,.0f})"


# --------------------------------------------------------------------------- in process


class _Recorder:
    """A peer that keeps what it is sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, message: bytes) -> None:
        self.sent.append(message)

    def close(self, code: int = 1000, reason: str = "") -> None:
        pass


async def _open_once(root: Path, state: Path, profile: bool) -> tuple[float, float, int]:
    from crdtnb.compaction import Compaction
    from crdtnb.daemon import Daemon
    from crdtnb.filesync import FileSyncExtension
    from crdtnb.settings import Settings

    settings = Settings(root=root, state_dir=state)
    extensions = [FileSyncExtension(settings.files), Compaction(settings.rooms.compact_min_interval)]
    async with Daemon(settings, extensions=extensions) as core:
        profiler = None
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler(async_mode="enabled")
            profiler.start()
        t0, c0 = time.perf_counter(), time.process_time()
        room = await core.rooms.acquire("large.ipynb")
        peer = _Recorder()
        room.join(peer)  # type: ignore[arg-type]
        await room.on_sync_step1(peer, b"\x00")  # type: ignore[arg-type]
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if profiler is not None:
            profiler.stop()
            print(profiler.output_text(unicode=True, color=False, show_all=False))
        sent = sum(map(len, peer.sent))
        room.leave(peer)  # type: ignore[arg-type]
        core.rooms.release(room)
    return wall * 1000, cpu * 1000, sent


async def phases(args: argparse.Namespace) -> None:
    nb = notebook(args.cells, args.mb)
    base = Path(tempfile.mkdtemp(prefix="crdtnb-opensave-"))
    size = write_ipynb(base / "template.ipynb", nb)
    print(f"{args.cells} cells, {size / MB:.2f} MiB of .ipynb")
    cold_file, cold_log = [], []
    for rep in range(args.reps):
        root, state = base / f"root{rep}", base / f"state{rep}"
        root.mkdir()
        (root / "large.ipynb").write_bytes((base / "template.ipynb").read_bytes())
        wall, cpu, sent = await _open_once(root, state, args.profile and rep == 0)
        cold_file.append(wall)
        print(f"  from the .ipynb: {wall:,.0f} ms wall, {cpu:,.0f} ms CPU, {sent / MB:.2f} MiB sent")
        wall, cpu, sent = await _open_once(root, state, args.profile and rep == 0)
        cold_log.append(wall)
        print(f"  from the log:    {wall:,.0f} ms wall, {cpu:,.0f} ms CPU, {sent / MB:.2f} MiB sent")
    print(f"cold from the .ipynb: {spread(cold_file)}; from the log: {spread(cold_log)}")


# --------------------------------------------------------------------------- crdtnb serve


def _pin(cfg: sc.Config) -> None:
    if cfg.server_cpus:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[1]})


def _config(pin: bool = True) -> sc.Config:
    return sc.Config(server_cpus={0} if pin and len(os.sched_getaffinity(0)) >= 2 else None)


async def open_cold(args: argparse.Namespace) -> None:
    cfg = _config()
    _pin(cfg)
    nb = notebook(args.cells, args.mb)
    cold_file, cold_log = [], []
    for rep in range(args.reps):
        server = cfg.server("crdtnb", f"open{rep}")
        size = write_ipynb(server.root / "large.ipynb", nb)
        with server:
            cold_file.append((await sc.time_new_client(server.url("large")))["synced_ms"])
        with server:  # the same state directory: the room loads from the log
            cold_log.append((await sc.time_new_client(server.url("large")))["synced_ms"])
        print(f"  rep {rep}: from the .ipynb {cold_file[-1]:,.0f} ms, from the log {cold_log[-1]:,.0f} ms")
    print(f"{args.cells} cells, {size / MB:.2f} MiB: cold from the .ipynb {spread(cold_file)}; from the log {spread(cold_log)}")
    print(f"load average {os.getloadavg()}")


def _loopmon(server: servers.Server) -> None:
    original = server.command

    def command() -> tuple[list[str], dict[str, str]]:
        cmd, env = original()
        cmd[1:3] = [str(HERE / "serve_loopmon.py")]
        env["LOOPMON_MS"] = str(args_stall_ms)
        env["LOOPMON_GC"] = "1"
        for key in ("LOOPMON_THREADS", "LOOPMON_STACKS", "LOOPMON_APPEND_MS", "LOOPMON_SWITCH", "LOOPMON_GILWATCH", "LOOPMON_PIPE_MS", "LOOPMON_BG"):
            if os.environ.get(key):
                env[key] = os.environ[key]
        return cmd, env

    server.command = command  # type: ignore[method-assign]


args_stall_ms = 5.0


async def _watch_other_room(server: servers.Server, opened: asyncio.Event, rate: float) -> list[tuple[float, float]]:
    """A writer and a reader in another room until ``opened``: (receive time s, latency ms)."""
    probes: list = []
    reader = SyncPeer(probes=probes)
    await reader.connect(server.url("other"))
    await reader.wait_synced()
    # A key of its own: this writer does not apply what the room holds, so an entry an
    # earlier run left under its key could win over its writes (and hide their probes).
    writer = ProbeWriter(key=f"p{time.monotonic_ns()}")
    await writer.peer.connect(server.url("other"))
    await writer.peer.wait_synced()
    await sc.drive(writer, rate, 0.5)
    probes.clear()
    stop = asyncio.Event()
    drive = asyncio.create_task(sc.drive(writer, rate, 3600, stop))
    await opened.wait()
    await asyncio.sleep(1.5)  # what the room does once its first client is served
    stop.set()
    await drive
    await asyncio.sleep(0.3)
    reader.close()
    writer.peer.close()
    return [(received / 1e9, latency / 1e6) for _, latency, received in probes]


async def block(args: argparse.Namespace) -> None:
    global args_stall_ms
    args_stall_ms = args.stall_ms
    cfg = _config(not args.no_pin)
    _pin(cfg)
    nb = notebook(args.cells, args.mb)
    for rep in range(args.reps):
        server = cfg.server("crdtnb", f"block{rep}")
        size = write_ipynb(server.root / "large.ipynb", nb)
        servers.write_notebook(server.root, "other")
        _loopmon(server)
        for how in ("the .ipynb", "the log"):
            with server:
                log = Path(server.log_dir) / f"crdtnb-{server.port}.log"
                opened = asyncio.Event()
                watch = asyncio.create_task(_watch_other_room(server, opened, args.rate))
                await asyncio.sleep(1.5)
                t0 = time.monotonic()
                timing = await sc.time_new_client(server.url("large"))
                opened.set()
                latencies = await watch
                t1 = time.monotonic()  # the room's work after the first client (a base, a check) included
                during = [ms for received, ms in latencies if t0 - 0.01 <= received <= t1]
                quiet = [ms for received, ms in latencies if t0 - 1.0 <= received < t0 - 0.01]
                stalls = [
                    (float(m.group(2)), float(m.group(3)), float(m.group(5)))
                    for m in re.finditer(r"STALL (\S+) (\S+) (\S+) (\S+) (\S+)", log.read_text())
                    if t0 - 0.01 <= float(m.group(4)) <= t1
                ]
                collections = [
                    float(m.group(2)) for m in re.finditer(r"GC2 (\S+) (\S+) (\S+) (\S+)", log.read_text()) if t0 - 0.01 <= float(m.group(4)) <= t1
                ]
            for m in re.finditer(r"(THREADS|BG|STACK|APPEND|SAVE|WRITE|BATCH|GILWAIT|PIPE|SEED|CKPT|TAIL) (\S+) (.*)", log.read_text()):
                if t0 - 0.01 <= float(m.group(2)) <= t1:
                    print(f"    {m.group(1)} {float(m.group(2)) - t0:7.3f} {m.group(3)}")
            worst = sorted(during)[-5:]
            if os.environ.get("LOOPMON_THREADS") or os.environ.get("LOOPMON_PIPE_MS"):
                print(f"    {len(latencies)} probes in all, received {min(latencies, default=(0, 0))[0] - t0:.3f} .. {max(latencies, default=(0, 0))[0] - t0:.3f} s")
                late = sorted((ms, received - t0) for received, ms in latencies if t0 - 0.01 <= received <= t1)[-6:]
                print("    worst probes (ms, received at s):", [(round(ms, 1), round(at, 3)) for ms, at in late])
            print(
                f"rep {rep}, {size / MB:.0f} MiB from {how}: synced in {timing['synced_ms']:,.0f} ms; other room during it: "
                f"{len(during)} probes, max {max(during, default=0):.1f} ms, worst {[round(w, 1) for w in worst]} "
                f"(the second before: max {max(quiet, default=0):.1f} ms); "
                f"loop stalls > {args.stall_ms:g} ms (wall, loop CPU, waiting for a CPU; the rest: for the GIL): "
                f"{[(round(w), round(c), round(q)) for w, c, q in sorted(stalls)[-8:]]}; "
                f"full garbage collections meanwhile (ms): {[round(ms) for ms in collections]}"
            )
            log.write_text("")  # the next run's stalls only
    print(f"load average {os.getloadavg()}")


# --------------------------------------------------------------------------- saves


def save(args: argparse.Namespace) -> None:
    import nbformat

    from crdtnb import ipynb

    sys.setswitchinterval(0.0005)  # as crdtnb serve sets it
    cells = max(1, int(args.mb * MB / (args.lines_per_cell * 30)))
    nb = nbformat.v4.new_notebook()
    for c in range(cells):
        cell = nbformat.v4.new_code_cell(f"for i in range({args.lines_per_cell}): print(i)")
        text = "".join(f"{i:>8} cell {c} lorem ipsum dolor\n" for i in range(args.lines_per_cell))
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
        nb.cells.append(cell)
    plain = json.loads(json.dumps(nb))

    def held(fn: Any) -> tuple[Any, float, float]:
        """fn's thread CPU (ms) and the longest a ticking thread waited meanwhile (ms)."""
        stop, longest = threading.Event(), [0.0]

        def tick() -> None:
            last = time.perf_counter()
            while not stop.is_set():
                time.sleep(0.0002)
                now = time.perf_counter()
                longest[0] = max(longest[0], now - last)
                last = now

        ticker = threading.Thread(target=tick)
        ticker.start()
        try:
            c0 = time.thread_time()
            result = fn()
            cpu = time.thread_time() - c0
        finally:
            stop.set()
            ticker.join()
        return result, cpu * 1000, longest[0] * 1000

    theirs_cpu, ours_cpu, theirs_gap, ours_gap = [], [], [], []
    for _ in range(args.reps):
        theirs, cpu, gap = held(lambda: (nbformat.writes(nbformat.from_dict(plain)) + "\n").encode())
        theirs_cpu.append(cpu)
        theirs_gap.append(gap)
        ours, cpu, gap = held(lambda: ipynb.serialize(ipynb.validated(plain)))
        ours_cpu.append(cpu)
        ours_gap.append(gap)
        assert b"".join(ours) == theirs
    print(f"{cells} cells of {args.lines_per_cell:,} lines, {len(theirs) / MB:.1f} MiB written")
    print(f"  nbformat.writes:  {spread(theirs_cpu)} CPU, GIL held up to {max(theirs_gap):.1f} ms")
    print(f"  ipynb.serialize:  {spread(ours_cpu)} CPU (validation included), GIL held up to {max(ours_gap):.1f} ms")
    print(f"  {statistics.median(theirs_cpu) / statistics.median(ours_cpu):.1f}x faster, byte-identical")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("phases", "open", "block", "save"))
    parser.add_argument("--mb", type=float, default=None, help="notebook size (default 5; block: 50; save: 30)")
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="phases: print pyinstrument's profile of the first open of each kind")
    parser.add_argument("--rate", type=float, default=200, help="block: the other room's writes per second")
    parser.add_argument("--stall-ms", type=float, default=5, help="block: loop stalls logged above this")
    parser.add_argument("--lines-per-cell", type=int, default=100_000)
    parser.add_argument("--no-pin", action="store_true", help="block: the daemon may use every CPU (else CPU 0, clients CPU 1)")
    args = parser.parse_args()
    if args.mb is None:
        args.mb = {"block": 50, "save": 30}.get(args.what, 5)
    if args.what == "save":
        save(args)
    else:
        asyncio.run({"phases": phases, "open": open_cold, "block": block}[args.what](args))


if __name__ == "__main__":
    main()
