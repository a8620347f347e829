"""report.md, fanout.png and fanout_cpu.png from results.json (python bench/report.py OUT/results.json re-renders)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

PEERS = ("pycrdt-websocket", "y-websocket", "hocuspocus")
COLORS = {
    "crdtnb": "#d62728",
    "crdtnb-mem": "#ff9896",
    "pycrdt-websocket": "#1f77b4",
    "y-websocket": "#2ca02c",
    "hocuspocus": "#9467bd",
    "uvicorn-floor": "#7f7f7f",
    "uvicorn-wsproto-floor": "#bcbd22",
    "websockets-floor": "#17becf",
    "picows-floor": "#8c564b",
}
# results.json section of each fan-out client kind
CLIENT_SECTIONS = {"python": "fanout", "node": "fanout_node"}
START, END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"


def f(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def s(summary: dict | None, digits: int = 2) -> str:
    """median (min–max)"""
    if not summary or summary.get("median") is None:
        return "–"
    if summary.get("n", 1) <= 1 or summary["min"] == summary["max"]:
        return f(summary["median"], digits)
    return f"{f(summary['median'], digits)} ({f(summary['min'], digits)}–{f(summary['max'], digits)})"


def med(summary: dict | None):
    return summary.get("median") if summary else None


def error_row(kind: str, error: str, columns: int) -> list[str]:
    """A table row saying a server's scenario failed, padded to the table's width."""
    return [kind, f"error: {error[:80]}"] + [""] * (columns - 2)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def fanout_rows(results: dict, section: str = "fanout") -> list[tuple[int, int, str, dict, dict]]:
    """(clients, rate, kind, per-rate dict, point dict) of one client kind's section, sorted."""
    rows = []
    for key, point in results.get(section, {}).items():
        kind, clients = key.rsplit("/", 1)
        if "error" in point:
            rows.append((int(clients), 0, kind, {"error": point["error"]}, point))
            continue
        for rate, data in point["rates"].items():
            rows.append((int(clients), int(rate), kind, data, point))
    order = {k: i for i, k in enumerate(COLORS)}
    return sorted(rows, key=lambda r: (r[0], r[1], order.get(r[2], 9)))


def points(results: dict, section: str) -> dict[tuple[int, int], dict[str, dict]]:
    """{(clients, rate): {server: per-rate dict}} of one client kind, errors left out."""
    by_point: dict[tuple[int, int], dict[str, dict]] = {}
    for clients, rate, kind, data, _ in fanout_rows(results, section):
        if "error" not in data:
            by_point.setdefault((clients, rate), {})[kind] = data
    return by_point


def best_peer(kinds: dict[str, dict], metric: str) -> tuple[str, float] | None:
    """The peer with the lowest median of ``metric`` at one point. One that lost deliveries
    counts only when every peer did (a server that drops work is not the bar)."""
    peers = {k: v for k, v in kinds.items() if k in PEERS and med(v[metric]) is not None}
    candidates = {k: med(v[metric]) for k, v in peers.items() if not v.get("lost")} or {k: med(v[metric]) for k, v in peers.items()}
    if not candidates:
        return None
    kind = min(candidates, key=candidates.get)
    return kind, candidates[kind]


def targets(results: dict) -> list[dict]:
    """Issues 6 and 14's targets as ratios in the same run, for each client kind."""
    out = []
    for client, section in CLIENT_SECTIONS.items():
        out += _fanout_targets(results, section, "" if client == "python" else ", Node clients")
    return out + _flood_targets(results)


def _fanout_targets(results: dict, section: str, suffix: str) -> list[dict]:
    out = []
    for (clients, rate), kinds in sorted(points(results, section).items()):
        ours = kinds.get("crdtnb")
        if ours is None:
            continue
        for metric, label in (("p99_ms", "fan-out p99"), ("cpu_ms_per_1000", "CPU per delivery")):
            best = best_peer(kinds, metric)
            mine = med(ours[metric])
            if best is None or mine is None:
                continue
            best_kind, best = best
            out.append(
                {
                    "target": f"{label}, {clients} clients × {rate}/s{suffix}",
                    "crdtnb": mine,
                    "reference": best,
                    "reference_name": best_kind,
                    "ratio": mine / best if best else None,
                    # losing deliveries where the reference did not is a miss whatever the figures
                    "met": mine <= best and (not ours.get("lost") or bool(kinds[best_kind].get("lost"))),
                    "unit": "ms" if metric == "p99_ms" else "CPU ms/1000",
                }
            )
    return out


def _flood_targets(results: dict) -> list[dict]:
    out: list[dict] = []
    flood = results.get("flood", {}).get("crdtnb", {})
    if flood and "error" not in flood:
        ours = med(flood["crdtnb"].get("lines", {}).get("wall_s"))
        ref = med(flood["nbclient"].get("lines", {}).get("wall_s"))
        if ours and ref:
            out.append(
                {"target": "10⁶-line print within 1.2× nbclient", "crdtnb": ours, "reference": ref * 1.2,
                 "reference_name": "1.2 × nbclient", "ratio": ours / ref, "met": ours <= 1.2 * ref, "unit": "s"}
            )
        for cid in ("lines", "progress"):
            p99 = med(flood["crdtnb"].get(cid, {}).get("other_p99_ms"))
            if p99 is not None:
                out.append(
                    {"target": f"other room p99 < 10 ms during the flood ({cid})", "crdtnb": p99, "reference": 10.0,
                     "reference_name": "10 ms", "ratio": p99 / 10.0, "met": p99 < 10.0, "unit": "ms"}
                )
    return out


def side_by_side(results: dict) -> list[str]:
    """Every server at every point with both client kinds: p99 and CPU per delivery, each as a
    ratio against the best peer of that point and client kind."""
    by_kind = {client: points(results, section) for client, section in CLIENT_SECTIONS.items()}
    keys = sorted(set().union(*(set(p) for p in by_kind.values())))
    order = list(COLORS)
    rows = []
    for point in keys:
        servers = sorted(set().union(*(set(by_kind[c].get(point, {})) for c in CLIENT_SECTIONS)), key=lambda k: order.index(k) if k in order else 9)
        for kind in servers:
            row = [str(point[0]), f"{point[1]}/s", kind]
            for client in CLIENT_SECTIONS:
                kinds = by_kind[client].get(point, {})
                data = kinds.get(kind)
                for metric, digits in (("p99_ms", 2), ("cpu_ms_per_1000", 0)):
                    if data is None:
                        row += ["", ""]
                        continue
                    value = med(data[metric])
                    best = best_peer(kinds, metric)
                    mark = " †" if data.get("lost") else ""
                    row += [f(value, digits) + mark, f(value / best[1]) if best and value is not None and best[1] else "–"]
            rows.append(row)
    if not rows:
        return []
    return [
        "### Fan-out side by side: both client kinds, ratios against the best peer",
        "",
        "Medians; *×best*: the figure over the best peer's at that point with the same clients (pycrdt-websocket, y-websocket, "
        "Hocuspocus; one that lost deliveries counts only when all did). † lost deliveries (saturated: what arrived within the drain "
        "is measured). CPU: ms per 1000 deliveries; Python clients: while writing; Node clients: the whole run, connects included.",
        "",
    ] + table(
        ["clients", "rate", "server", "p99 ms (Python)", "×best", "CPU (Python)", "×best", "p99 ms (Node)", "×best", "CPU (Node)", "×best"], rows
    )


def render(results: dict, plot_name: str = "fanout.png", cpu_plot_name: str = "fanout_cpu.png") -> str:
    m = results.get("machine", {})
    v = m.get("versions", {})
    L: list[str] = []
    L.append(f"Run: **{results.get('mode')}** mode, {m.get('date')}, {results.get('total_seconds')} s in all.")
    L.append("")
    L.append(
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gb')} GiB, {m.get('os')}; "
        f"Python {m.get('python')}, node {m.get('node')}. "
        f"crdtnb {v.get('crdtnb')} ({v.get('crdtnb_git')}), pycrdt {v.get('pycrdt')}, pycrdt-websocket {v.get('pycrdt-websocket')}, "
        f"uvicorn {v.get('uvicorn')} + uvloop {v.get('uvloop')}, y-websocket {v.get('y-websocket')} with yjs {v.get('yjs')}, "
        f"nbclient {v.get('nbclient')}, ipykernel {v.get('ipykernel')}."
    )
    L.append("")
    pin = m.get("server_cpus")
    L.append(
        (f"Servers pinned to CPU {pin}, all clients (one process, uvloop) to CPU {m.get('client_cpus')}" if pin else "Nothing pinned")
        + f"; load average at start {m.get('loadavg_start')}, at end {m.get('loadavg_end')} "
        "(other work on the machine shows up as noise, mostly in p99)."
    )
    for rerun in results.get("reruns", []):
        rm = rerun.get("machine", {})
        L.append("")
        L.append(
            f"Re-run on {rm.get('date')}: {', '.join(rerun.get('scenarios', []))} "
            f"(load average at start {rm.get('loadavg_start')}, at end {rm.get('loadavg_end')})."
        )
    if results.get("skipped"):
        L.append("")
        L.append("Skipped: " + "; ".join(f"{k}: {r}" for k, r in results["skipped"].items()))
    L.append("")

    tg = targets(results)
    if tg:
        L.append("### Targets (issues 6 and 14), as ratios in this run")
        L.append("")
        L.append("Reference: the best peer at that point (pycrdt-websocket, y-websocket or Hocuspocus; one that lost deliveries does not count). "
                 "Node clients' CPU per delivery covers the whole run, connects included.")
        L.append("")
        L += table(
            ["target", "crdtnb", "reference", "ratio", "met"],
            [[t["target"], f"{f(t['crdtnb'])} {t['unit']}", f"{f(t['reference'])} ({t['reference_name']})", f(t["ratio"]), "**yes**" if t["met"] else "**no**"] for t in tg],
        )

    rows = fanout_rows(results)
    if rows:
        L.append("### Fan-out, Python clients: one room, one writer at a fixed rate, latency to every other client")
        L.append("")
        L.append(
            "Median of repetitions (min–max). Latency: writer's send to each other client's socket read. "
            "CPU: server process CPU ms (all threads) per 1000 deliveries while the writer writes. RSS: server's peak resident set (VmHWM) "
            "over the whole point, and its resident set at the end (crdtnb's peak includes one argon2 hash at start-up, "
            "64 MiB, freed at once). *client CPU*: share of the client core in use (near 1.0 the clients, not the server, limit)."
        )
        L.append("")
        trs = []
        for clients, rate, kind, data, point in rows:
            if "error" in data:
                trs.append([str(clients), "–", kind, f"error: {data['error'][:80]}", "", "", "", "", "", ""])
                continue
            trs.append(
                [str(clients), f"{rate}/s", kind, s(data["p50_ms"]), s(data["p99_ms"]), s(data["deliveries_per_s"], 0),
                 s(data["cpu_ms_per_1000"], 0), f"{f(point.get('peak_rss_mb'), 0)} / {f(point.get('rss_end_mb'), 0)}", f"{data['lost']}/{data['disconnected']}",
                 f(med(data["client_cpu_util"]))]
            )
        L += table(["clients", "rate", "server", "p50 ms", "p99 ms", "deliveries/s", "CPU ms/1000", "RSS MB peak / end", "lost/closed", "client CPU"], trs)
        L.append(f"![fan-out]({plot_name})")
        L.append("")

    node_rows = fanout_rows(results, "fanout_node")
    if node_rows:
        L.append("### Fan-out, Node clients: real Yjs providers")
        L.append("")
        L.append(
            "N providers (yjs 13) in one Node process on the clients' CPU: y-websocket's `WebsocketProvider` (`disableBc: true`), "
            "Hocuspocus's own `HocuspocusProvider` for Hocuspocus; the `ws` package offers permessage-deflate as browsers do. "
            "One fresh process per repetition: the N providers connect and sync, then one writes Y.Map entries at the rate. "
            "Latency: the writer's `map.set` to each other provider's map observer (the update decoded and applied). "
            "*CPU run*: server CPU ms per 1000 deliveries over the whole run, connects included; *CPU window*: while writing only. "
            "*connect s*: until every provider is synced; *leave s*: after the providers closed, until the server is idle again "
            "(each departure's presence removal is relayed to those still there; the next run waits for it). "
            "*deflate*: the extension the server accepted."
        )
        L.append("")
        nrs = []
        for clients, rate, kind, data, point in node_rows:
            if "error" in data:
                nrs.append([str(clients), "–", kind, f"error: {data['error'][:80]}"] + [""] * 9)
                continue
            nrs.append(
                [str(clients), f"{rate}/s", kind, s(data["p50_ms"]), s(data["p99_ms"]), s(data["deliveries_per_s"], 0),
                 s(data["cpu_ms_per_1000"], 0), s(data.get("window_cpu_ms_per_1000"), 0), s(data.get("connect_s")), s(data.get("leave_s"), 1),
                 f"{data['lost']}/{data['disconnected']}", f(med(data["client_cpu_util"])),
                 "yes" if "permessage-deflate" in (point.get("extensions") or "") else "no"]
            )
        L += table(["clients", "rate", "server", "p50 ms", "p99 ms", "deliveries/s", "CPU run ms/1000", "CPU window ms/1000", "connect s",
                    "leave s", "lost/closed", "client CPU", "deflate"], nrs)

    if rows or node_rows:
        L += side_by_side(results)
        L.append(f"![CPU per delivery against load]({cpu_plot_name})")
        L.append("")

        lrs = []
        for client, section in CLIENT_SECTIONS.items():
            for (clients, rate), kinds in sorted(points(results, section).items()):
                a, b = kinds.get("crdtnb"), kinds.get("crdtnb-mem")
                if a and b:
                    ra = (med(a["p99_ms"]) or 0) / (med(b["p99_ms"]) or 1)
                    rc = (med(a["cpu_ms_per_1000"]) or 0) / (med(b["cpu_ms_per_1000"]) or 1)
                    lrs.append([client, str(clients), f"{rate}/s", s(a["p50_ms"]), s(b["p50_ms"]), s(a["p99_ms"]), s(b["p99_ms"]), f(ra),
                                s(a["cpu_ms_per_1000"], 0), s(b["cpu_ms_per_1000"], 0), f(rc)])
        if lrs:
            L.append("### The durable log's cost: crdtnb (SQLite log) against crdtnb with an in-memory store")
            L.append("")
            L += table(["client", "clients", "rate", "p50 log", "p50 memory", "p99 log", "p99 memory", "p99 ratio", "CPU log", "CPU memory", "CPU ratio"], lrs)

    rooms = results.get("rooms", {})
    if rooms:
        L.append("### Many rooms: memory per room and per connection")
        L.append("")
        L.append(
            "R rooms opened with one client each (peers' rooms get the same small notebook, pushed by that client), "
            "then 2 more clients per room. Per connection = RSS growth from the extra clients / 2R; per room = "
            "growth from the first round / R minus one connection. Idle CPU: server CPU share with every room open and no traffic."
        )
        L.append("")
        rr = []
        for kind, r in rooms.items():
            if "error" in r:
                rr.append(error_row(kind, r["error"], 9))
                continue
            rr.append([kind, f(r["rooms"]), f(r["connections"]), f(r["rss_baseline_mb"], 0), f(r["rss_rooms_all_clients_mb"], 0),
                       f(r["kb_per_room"], 1), f(r["kb_per_connection"], 1), f(r["open_rooms_per_s"], 0), f(r["idle_cpu_util"])])
        L += table(["server", "rooms", "connections", "RSS before MB", "RSS after MB", "KB/room", "KB/connection", "rooms opened/s", "idle CPU"], rr)

    large = results.get("large", {})
    if large:
        L.append("### Opening a large notebook: time until a new client is synced")
        L.append("")
        any_r = next((r for r in large.values() if "error" not in r), {})
        L.append(
            f"{any_r.get('cells')} code cells, {f((any_r.get('ipynb_bytes') or 0) / 2**20)} MiB of .ipynb with outputs. "
            "*synced*: connect + step1 until the whole step2 is read; *applied*: until it is also applied in a pycrdt Doc "
            "(the client's own cost included). crdtnb alone can open it cold (nobody connected): from the .ipynb on first use, "
            "from its log afterwards; the peers only hold what a client pushed to them."
        )
        L.append("")
        lr = []
        for kind, r in large.items():
            if "error" in r:
                lr.append(error_row(kind, r["error"], 7))
                continue
            lr.append([kind, s(r.get("warm_synced_ms"), 1), s(r.get("warm_applied_ms"), 1), s(r.get("cold_from_file_ms"), 0),
                       s(r.get("cold_from_store_ms"), 0), f((r.get("step2_bytes") or 0) / 2**20), f(r.get("peak_rss_mb"), 0)])
        L += table(["server", "warm synced ms", "warm applied ms", "cold from .ipynb ms", "cold from log ms", "step2 MiB", "peak RSS MB"], lr)

    flood = results.get("flood", {}).get("crdtnb")
    if flood:
        L.append("### Output flood: crdtnb's kernel agent against nbclient")
        L.append("")
        if "error" in flood:
            L.append(f"error: {flood['error']}")
            L.append("")
        else:
            c = flood["crdtnb"]
            n = flood["nbclient"]
            L.append(
                "Wall time of the cell from the execute request until a watching client sees it idle (crdtnb) and of "
                "`NotebookClient.async_execute_cell` (nbclient), warm kernels, the two runs interleaved "
                f"({len(c.get('lines', {}).get('reps', []))} each). Placement: crdtnb's daemon on the server CPU like every server, its "
                "kernel moved to the clients' CPU once started; nbclient and its kernel not pinned (both CPUs). Meanwhile another room of crdtnb (10 clients, one writer at 50/s) fans out "
                f"(its p99 before the flood: {f(flood.get('other_room_quiet_p99_ms'))} ms)."
            )
            L.append("")
            fr = []
            for cid, label in (("lines", "print 10⁶ lines" if results.get("mode") == "full" else "print lines"), ("progress", "\\r progress bar")):
                if cid not in c:
                    continue
                ratio = (med(c[cid]["wall_s"]) or 0) / (med(n.get(cid, {}).get("wall_s")) or 1)
                fr.append([label, s(c[cid]["wall_s"]), s(n.get(cid, {}).get("wall_s")), f(ratio), f(c[cid]["doc_bytes"] / 2**20, 3),
                           f(c[cid]["exported_json_bytes"] / 2**20, 3), f(n.get(cid, {}).get("notebook_json_bytes", 0) / 2**20, 3),
                           s(c[cid]["other_p99_ms"]), f(c[cid]["daemon_peak_rss_mb"], 0)])
            L += table(["cell", "crdtnb s", "nbclient s", "ratio", "doc MiB", ".ipynb MiB", "nbclient nb MiB", "other room p99 ms", "daemon peak RSS MB"], fr)

    cu = results.get("catchup", {})
    if cu:
        L.append("### Reconnect catch-up: a client that missed N updates (one typed character each)")
        L.append("")
        L.append("Time from connect to the step2 being applied, the step2's bytes, and the writer's ingest rate (N updates sent back to back, then a round trip).")
        L.append("")
        cr = []
        for kind, r in cu.items():
            if "error" in r:
                cr.append(error_row(kind, r["error"], 6))
                continue
            for n, d in r["n"].items():
                cr.append([kind, n, s(d["catchup_ms"]), s(d["step2_bytes"], 0), s(d["ingest_updates_per_s"], 0), f(d["consistent"])])
        L += table(["server", "N", "catch-up ms", "step2 bytes", "ingest updates/s", "consistent"], cr)
    L += cluster_section(results.get("cluster", {}))
    return "\n".join(L)


def cluster_section(cl: dict) -> list[str]:
    """`--only cluster`: one node against two behind one Redis (bench/cluster_bench.py)."""
    if not cl:
        return []
    L = ["### Cluster: one node against two, one Redis", ""]
    L.append("Many rooms: every client of every room writes probes at the rate, the clients of a room spread over the nodes; latency from send to receipt on another client. One big room: its clients split over the nodes, one writer. Failover: three nodes with the room open on each, the owner killed with SIGKILL, time until another node holds the room's lease. CPU: every node plus redis-server. Nodes pinned to separate CPUs where there are enough; Redis and the clients run where the OS puts them.")
    L.append("")
    def rooms_rows(nodes: int, r: dict) -> list[list[str]]:
        return [[str(nodes), f(r["rooms"]), f(r["clients_per_room"]), rate, f(d["offered_updates_per_s"], 0),
                 f(d["delivered_per_s"], 0), f"{d['delivered']:,} of {d['expected']:,}", f(d["p50_ms"]), f(d["p99_ms"]), f(d["cpu_util"])]
                for rate, d in r["rates"].items()]

    def big_room_rows(nodes: int, r: dict) -> list[list[str]]:
        return [[str(nodes), f(r["clients"]), f(r["rate"], 0), f"{r['delivered']:,} of {r['expected']:,}", f(r["p50_ms"]), f(r["p99_ms"]), f(r["cpu_ms_per_1000"], 0)]]

    for name, header, make_rows in (
        ("rooms", ["nodes", "rooms", "clients/room", "rate /s", "offered updates/s", "deliveries/s", "delivered", "p50 ms", "p99 ms", "CPU (cores)"], rooms_rows),
        ("big_room", ["nodes", "clients", "rate /s", "delivered", "p50 ms", "p99 ms", "CPU ms per 1000 deliveries"], big_room_rows),
    ):
        rows = []
        for nodes in (1, 2):
            r = cl.get(f"{name}/{nodes}")
            if r:
                rows += [error_row(f"{nodes} node(s)", r["error"], len(header))] if "error" in r else make_rows(nodes, r)
        if rows:
            L += table(header, rows)
    fo = cl.get("failover")
    if fo:
        if "error" in fo:
            L += [f"Failover: error: {fo['error'][:200]}", ""]
        else:
            times = ", ".join(f"{t:.2f}" for t in fo.get("times_s", []))
            L += [f"Failover: {fo['taken_over']} of {fo['kills']} kills taken over; median {fo['median_s']:.2f} s, max {fo['max_s']:.2f} s ({times}).", ""]
    return L


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in fanout_rows(results) if "error" not in r[3]]
    if not rows:
        return
    counts = sorted({r[0] for r in rows})
    rates = sorted({r[1] for r in rows if all(any(x[0] == c and x[1] == r[1] for x in rows) for c in counts)})
    if not rates:
        rates = sorted({r[1] for r in rows})[:1]
    fig, axes = plt.subplots(2, len(rates), figsize=(5.5 * len(rates), 8), squeeze=False)
    for col, rate in enumerate(rates):
        for row, (metric, label) in enumerate((("p99_ms", "p99 latency (ms)"), ("cpu_ms_per_1000", "server CPU ms / 1000 deliveries"))):
            ax = axes[row][col]
            kinds = sorted({r[2] for r in rows}, key=lambda k: list(COLORS).index(k) if k in COLORS else 9)
            for kind in kinds:
                pts = [(c, d[metric]) for c, rt, k, d, _ in rows if k == kind and rt == rate and d[metric]["median"] is not None]
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                ys = [p[1]["median"] for p in pts]
                lo = [p[1]["median"] - p[1]["min"] for p in pts]
                hi = [p[1]["max"] - p[1]["median"] for p in pts]
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=kind, color=COLORS.get(kind))
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(counts)
            ax.set_xticklabels([str(c) for c in counts])
            ax.set_xlabel("clients in the room")
            ax.set_ylabel(label)
            ax.set_title(f"one writer at {rate} updates/s")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    m = results.get("machine", {})
    fig.suptitle(f"Fan-out: median, min–max ({m.get('date')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cpu(results: dict, path: Path) -> None:
    """CPU per delivery against load: one panel per client count, the writer's rate across,
    every server in its colour, Python clients solid, Node clients dashed; a hollow marker is
    a point that lost deliveries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple[str, str], list[tuple[int, int, dict]]] = {}
    for client, section in CLIENT_SECTIONS.items():
        for clients, rate, kind, data, _ in fanout_rows(results, section):
            if "error" not in data and med(data["cpu_ms_per_1000"]) is not None:
                series.setdefault((kind, client), []).append((clients, rate, data))
    if not series:
        return
    counts = sorted({c for pts in series.values() for c, _, _ in pts})
    fig, axes = plt.subplots(1, len(counts), figsize=(max(9.0, 5.5 * len(counts)), 5.2), squeeze=False)
    order = list(COLORS)
    for ax, count in zip(axes[0], counts):
        for (kind, client), pts in sorted(series.items(), key=lambda item: (order.index(item[0][0]) if item[0][0] in order else 9, item[0][1])):
            pts = sorted((r, d) for c, r, d in pts if c == count)
            if not pts:
                continue
            xs = [r for r, _ in pts]
            ys = [med(d["cpu_ms_per_1000"]) for _, d in pts]
            color = COLORS.get(kind)
            style = "-" if client == "python" else "--"
            marker = "o" if client == "python" else "s"
            ax.plot(xs, ys, style, marker=marker, color=color, label=f"{kind} ({client})", alpha=0.9)
            for (x, d), y in zip(pts, ys):
                if d.get("lost"):
                    ax.plot([x], [y], marker, color=color, markerfacecolor="white")
        ax.set_xscale("log")
        ax.set_yscale("log")
        rates = sorted({r for pts in series.values() for c, r, _ in pts if c == count})
        ax.set_xticks(rates)
        ax.set_xticklabels([str(r) for r in rates])
        ax.set_xlabel(f"writer's updates/s ({count} clients: × {count - 1} deliveries)")
        ax.set_ylabel("server CPU µs per delivery")
        ax.set_title(f"{count} clients in the room")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    m = results.get("machine", {})
    fig.suptitle(
        f"Fan-out CPU per delivery ({m.get('date')})\nPython clients solid (writing window), Node clients dashed (whole run); hollow: lost deliveries",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict, out: Path) -> None:
    plot(results, out / "fanout.png")
    plot_cpu(results, out / "fanout_cpu.png")
    body = render(results, "fanout.png")
    (out / "report.md").write_text("# crdtnb benchmarks against its peers\n\n" + body + "\n")


def update_readme(results: dict, out: Path, readme: Path, png: Path) -> None:
    if (out / "fanout.png").exists():
        shutil.copyfile(out / "fanout.png", png)
    cpu_png = png.with_name("fanout_cpu.png")
    if (out / "fanout_cpu.png").exists():
        shutil.copyfile(out / "fanout_cpu.png", cpu_png)
    body = render(results, png.name, cpu_png.name)
    text = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text += f"\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{body}\n{END}{tail}")


if __name__ == "__main__":
    # python bench/report.py OUT/results.json [--update-readme]
    path = Path(sys.argv[1])
    data = json.loads(path.read_text())
    write(data, path.parent)
    if "--update-readme" in sys.argv[2:]:
        here = Path(__file__).resolve().parent
        update_readme(data, path.parent, here / "README.md", here / "fanout.png")
    print(path.parent / "report.md")
