"""crdtnb against its peers, one command: python bench/run.py [--quick] [--out bench/results]

Starts each server fresh (crdtnb, crdtnb with an in-memory store, pycrdt-websocket under
uvicorn, the y-websocket@1.5.4 and Hocuspocus 4 node servers, a bare uvicorn relay), drives all
of them with the same clients, and writes OUT/results.json, OUT/report.md, OUT/fanout.png and
OUT/fanout_cpu.png. Two kinds of clients run the fan-out matrix (``--clients``): the lean
pycrdt-based clients of bench/wsclient.py, and real Yjs providers in one Node process
(bench/node/fanout_client.mjs). On a machine with 2+ cores the servers are pinned to CPU 0 and
this process and the Node clients to CPU 1, except for the output flood (see bench/README.md).
``--quick`` is a smoke run for CI: tiny sizes, a minute or two, no timing asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import report  # noqa: E402
import scenarios  # noqa: E402
from servers import ALL_KINDS, EXTRA_KINDS, FLOOR_KINDS, NODE_DIR, NODE_KINDS, ensure_node  # noqa: E402

SCENARIOS = ("fanout", "rooms", "large", "flood", "catchup", "cluster")
DEFAULT_SCENARIOS = ("fanout", "rooms", "large", "flood", "catchup")  # cluster: asked for with --only
CLIENT_KINDS = ("python", "node")
FANOUT_RATES = (10, 100, 200, 1000)


def build_config(args: argparse.Namespace, workdir: Path, out: Path) -> scenarios.Config:
    cfg = scenarios.Config(quick=args.quick, workdir=workdir, log_dir=out / "logs")
    if args.quick:
        cfg.reps = 1
        cfg.window = 1.0
        cfg.drain = 2.0
        cfg.fanout_points = ((3, (20,)), (10, (50,)))
        cfg.node_settle = 0.3
        cfg.rooms = 20
        cfg.large_cells = 50
        cfg.flood_lines = 10**4
        cfg.flood_steps = 10**3
        cfg.flood_other_clients = 5
        cfg.catchup_ns = (10, 100)
        cfg.flood_reps = 1
    else:
        cfg.reps = args.reps
        cfg.flood_reps = max(args.reps, 5)
        cfg.fanout_points = tuple((clients, FANOUT_RATES) for clients in (10, 100, 500))
    if args.points:
        cfg.fanout_points = parse_points(args.points)
    if args.rooms:
        cfg.rooms = args.rooms
    cpus = os.sched_getaffinity(0)
    if not args.no_pin and len(cpus) >= 2:
        ordered = sorted(cpus)
        cfg.server_cpus = {ordered[0]}
        os.sched_setaffinity(0, {ordered[1]})
    return cfg


def parse_points(text: str) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """"10:10,1000;500:200" -> ((10, (10, 1000)), (500, (200,)))"""
    points = []
    for part in text.split(";"):
        clients, _, rates = part.partition(":")
        points.append((int(clients), tuple(int(r) for r in rates.split(","))))
    return tuple(points)


def machine_info(kinds: list[str], cfg: scenarios.Config) -> dict:
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        import psutil

        mem_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:
        pass

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    def node_version(pkg: str) -> str | None:
        try:
            return json.loads((NODE_DIR / "node_modules" / pkg / "package.json").read_text())["version"]
        except OSError:
            return None

    node = shutil.which("node")
    rev = None
    try:
        rev = subprocess.run(["git", "-C", str(BENCH.parent), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip() or None
    except Exception:
        pass
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "node": subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip() if node else None,
        "versions": {
            "crdtnb": version("crdtnb"),
            "crdtnb_git": rev,
            "pycrdt": version("pycrdt"),
            "pycrdt-websocket": version("pycrdt-websocket"),
            "uvicorn": version("uvicorn"),
            "websockets": version("websockets"),
            "uvloop": version("uvloop"),
            "nbclient": version("nbclient"),
            "ipykernel": version("ipykernel"),
            "y-websocket": node_version("y-websocket"),
            "yjs": node_version("yjs"),
            "hocuspocus": node_version("@hocuspocus/server"),
            "hocuspocus-provider": node_version("@hocuspocus/provider"),
            "ws": node_version("ws"),
        },
        "kinds": kinds,
        "server_cpus": sorted(cfg.server_cpus) if cfg.server_cpus else None,
        "client_cpus": sorted(os.sched_getaffinity(0)),
    }


async def run_all(cfg: scenarios.Config, kinds: list[str], clients: list[str], only: list[str], results: dict, save) -> None:
    def step(name: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)

    def load() -> list[float]:
        return [round(x, 2) for x in os.getloadavg()]

    async def guarded(section: str, key: str, coro_fn):
        step(f"{section}: {key}")
        t = time.monotonic()
        before = load()
        try:
            value = await coro_fn()
        except Exception as exc:  # one failing server must not sink the whole report
            traceback.print_exc()
            value = {"error": f"{type(exc).__name__}: {exc}"}
        value["seconds"] = round(time.monotonic() - t, 1)
        value["loadavg_before"] = before
        value["loadavg_after"] = load()
        results.setdefault(section, {})[key] = value
        save()

    if "fanout" in only:
        # Python clients in "fanout", Node clients in "fanout_node"; same keys: server/clients
        for count, rates in cfg.fanout_points:
            for client in clients:
                section, run = ("fanout", scenarios.fanout) if client == "python" else ("fanout_node", scenarios.fanout_node)
                for kind in kinds:
                    await guarded(section, f"{kind}/{count}", lambda k=kind, c=count, r=rates, run=run: run(cfg, k, c, r))
    if "rooms" in only:
        for kind in [k for k in kinds if k != "crdtnb-mem" and k not in FLOOR_KINDS]:
            await guarded("rooms", kind, lambda k=kind: scenarios.many_rooms(cfg, k, cfg.rooms))
    if "large" in only:
        target = 250_000 if cfg.quick else 5_000_000
        for kind in [k for k in kinds if k != "crdtnb-mem" and k not in FLOOR_KINDS]:
            await guarded("large", kind, lambda k=kind: scenarios.open_large(cfg, k, cfg.large_cells, target))
    if "catchup" in only:
        for kind in [k for k in kinds if k not in FLOOR_KINDS]:
            await guarded("catchup", kind, lambda k=kind: scenarios.catchup(cfg, k, cfg.catchup_ns))
    if "flood" in only and "crdtnb" in kinds:
        await guarded("flood", "crdtnb", lambda: scenarios.flood(cfg))
    if "cluster" in only:
        import cluster_bench

        base, logs = cfg.workdir, cfg.log_dir or cfg.workdir
        rooms = 20 if cfg.quick else 1000
        rates = (1.0,) if cfg.quick else (1.0, 4.0, 8.0, 16.0)
        window = 2.0 if cfg.quick else 5.0
        for nodes in (1, 2):
            await guarded(
                "cluster", f"rooms/{nodes}",
                lambda n=nodes: cluster_bench.rooms_throughput(base, logs, n, rooms, 3, rates, window),
            )
        big = 20 if cfg.quick else 500
        for nodes in (1, 2):
            await guarded("cluster", f"big_room/{nodes}", lambda n=nodes: cluster_bench.big_room(base, logs, n, big, 10.0, window))
        await guarded("cluster", "failover", lambda: cluster_bench.failover(base, logs, 2 if cfg.quick else 10))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI smoke run: tiny sizes, no timing asserts")
    parser.add_argument("--out", default=str(BENCH / "results"), help="results folder (default: bench/results)")
    parser.add_argument("--kinds", default=",".join(ALL_KINDS), help=f"servers to run (default: {','.join(ALL_KINDS)})")
    parser.add_argument(
        "--clients", default=",".join(CLIENT_KINDS),
        help="fan-out clients: python (bench/wsclient.py), node (real Yjs providers, bench/node/) (default: both)",
    )
    parser.add_argument(
        "--only", default=",".join(DEFAULT_SCENARIOS), help=f"scenarios to run: {','.join(SCENARIOS)} (default: all but cluster)"
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions per measurement (full mode)")
    parser.add_argument("--points", default="", help='fan-out points instead of the mode\'s, e.g. "10:10,1000;500:200" (clients:rates;...)')
    parser.add_argument("--rooms", type=int, default=0, help="rooms in the many-rooms test (default 1000, quick 20)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers and clients to separate CPUs")
    parser.add_argument("--merge", action="store_true", help="keep OUT/results.json and replace only what runs now: the scenarios of --only, for the servers of --kinds (e.g. re-run --only fanout --kinds crdtnb)")
    parser.add_argument("--update-readme", action="store_true", help="write the tables into bench/README.md and copy the plot to bench/fanout.png")
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    for c in clients:
        if c not in CLIENT_KINDS:
            parser.error(f"unknown client kind {c!r}")
    for k in kinds:
        if k not in ALL_KINDS + EXTRA_KINDS:
            parser.error(f"unknown server {k!r}")
    for s in only:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s!r}")
    skipped = {}
    if any(k in NODE_KINDS for k in kinds) or ("node" in clients and "fanout" in only):
        reason = ensure_node()
        if reason:
            for name in [k for k in kinds if k in NODE_KINDS] + (["node"] if "node" in clients else []):
                print(f"{name} skipped: {reason}", flush=True)
                skipped["node clients" if name == "node" else name] = reason
            kinds = [k for k in kinds if k not in NODE_KINDS]
            clients = [c for c in clients if c != "node"]
    # thousands of sockets on both sides
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))

    workdir = Path(tempfile.mkdtemp(prefix="crdtnb-bench-"))
    cfg = build_config(args, workdir, out)
    results: dict = {"mode": "quick" if args.quick else "full", "machine": machine_info(kinds, cfg), "skipped": skipped}
    results["machine"]["clients"] = clients
    results["machine"]["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    if args.merge and (out / "results.json").exists():
        previous = json.loads((out / "results.json").read_text())
        for section in only:
            for name in (section, "fanout_node") if section == "fanout" else (section,):
                # Only the servers run now are replaced: their entries are keyed "kind" or
                # "kind/clients"; the other servers' figures stay.
                kept = {key: value for key, value in previous.pop(name, {}).items() if key.split("/")[0] not in kinds}
                if kept and section != "cluster":
                    previous[name] = kept
        previous.setdefault("reruns", []).append({"scenarios": only, "machine": results["machine"]})
        results = previous
    t0 = time.monotonic()

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=1))

    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(run_all(cfg, kinds, clients, only, results, save))
    finally:
        if "reruns" in results and args.merge:
            results["reruns"][-1]["seconds"] = round(time.monotonic() - t0, 1)
            results["reruns"][-1]["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        else:
            results["total_seconds"] = round(time.monotonic() - t0, 1)
            results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        save()
        shutil.rmtree(workdir, ignore_errors=True)
    report.write(results, out)
    if args.update_readme:
        report.update_readme(results, out, BENCH / "README.md", BENCH / "fanout.png")
    errors = [f"{section}/{key}: {v['error']}" for section, entries in results.items() if isinstance(entries, dict)
              for key, v in entries.items() if isinstance(v, dict) and "error" in v]
    took = results["reruns"][-1]["seconds"] if args.merge and results.get("reruns") else results["total_seconds"]
    print(f"done in {took} s: {out / 'report.md'}", flush=True)
    for e in errors:
        print(f"ERROR {e}", flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
