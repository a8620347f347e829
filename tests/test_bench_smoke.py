"""The benchmark harness runs end to end (quick mode: tiny sizes, no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run.py"


def test_bench_quick_mode_produces_a_report(tmp_path: Path) -> None:
    for module in ("pycrdt.websocket", "matplotlib", "nbclient", "psutil"):
        pytest.importorskip(module, reason="pip install -e '.[bench]'")
    subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(tmp_path)], check=True, timeout=900)
    results = json.loads((tmp_path / "results.json").read_text())
    skipped = set(results["skipped"])  # the node servers and clients without node
    node = "node clients" not in skipped
    sections = ["fanout", "rooms", "large", "flood", "catchup"] + (["fanout_node"] if node else [])
    for section in sections:
        assert results.get(section), f"no {section} results"
        for key, value in results[section].items():
            assert "error" not in value, f"{section} {key}: {value['error']}"
    # Every server took part in the fan-out with every client kind, and every delivery of
    # every point arrived.
    python_servers = {"crdtnb", "crdtnb-mem", "pycrdt-websocket", "uvicorn-floor"}
    node_servers = {"y-websocket", "hocuspocus"}
    for section in ("fanout", "fanout_node") if node else ("fanout",):
        kinds = {key.split("/")[0] for key in results[section]}
        assert python_servers <= kinds, (section, kinds)
        assert node_servers <= kinds | skipped, (section, kinds)
        for key, point in results[section].items():
            for rate, figures in point["rates"].items():
                assert figures["deliveries_per_s"]["min"] > 0 and figures["lost"] == 0, (section, key, rate, figures)
                assert figures["disconnected"] == 0, (section, key, rate, figures)
    if node:
        # real providers: the server's CPU was read over the whole run and the writing window
        for key, point in results["fanout_node"].items():
            for figures in point["rates"].values():
                run = figures["reps"][0]
                assert run["run_cpu_s"] > 0 and run["cpu_ms_per_1000"] >= run["window_cpu_ms_per_1000"] > 0, (key, run)
    # Hocuspocus (when node is there) took part in every scenario it can do
    for section in ("rooms", "large", "catchup"):
        assert "hocuspocus" in results[section] or "hocuspocus" in skipped, section
    assert all(run["consistent"] for run in _catchup_runs(results)), "a catch-up client diverged"
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# crdtnb benchmarks")
    assert "side by side" in report
    assert (tmp_path / "fanout.png").stat().st_size > 0
    assert (tmp_path / "fanout_cpu.png").stat().st_size > 0


def _catchup_runs(results: dict) -> list[dict]:
    runs = []
    for value in results["catchup"].values():
        runs += value["n"].values()
    assert runs, "no catch-up points"
    return runs


def test_bench_cluster_quick_mode(tmp_path: Path) -> None:
    """The cluster scenarios run end to end (tiny sizes) against a real redis-server."""
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    pytest.importorskip("psutil", reason="pip install -e '.[bench]'")
    subprocess.run([sys.executable, str(BENCH), "--quick", "--only", "cluster", "--out", str(tmp_path)], check=True, timeout=600)
    cluster = json.loads((tmp_path / "results.json").read_text())["cluster"]
    for key, value in cluster.items():
        assert "error" not in value, f"{key}: {value['error']}"
    for nodes in (1, 2):
        for figures in cluster[f"rooms/{nodes}"]["rates"].values():
            assert figures["delivered"] == figures["expected"]
        assert cluster[f"big_room/{nodes}"]["delivered"] == cluster[f"big_room/{nodes}"]["expected"]
    assert cluster["failover"]["taken_over"] == cluster["failover"]["kills"]
