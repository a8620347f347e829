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
    skipped = set(results["skipped"])  # e.g. y-websocket without node
    for section in ("fanout", "rooms", "large", "flood", "catchup"):
        assert results.get(section), f"no {section} results"
        for key, value in results[section].items():
            assert "error" not in value, f"{section} {key}: {value['error']}"
    # Every server took part in the fan-out, and every delivery of every point arrived.
    kinds = {key.split("/")[0] for key in results["fanout"]}
    assert {"crdtnb", "crdtnb-mem", "pycrdt-websocket", "uvicorn-floor"} <= kinds
    assert "y-websocket" in kinds or "y-websocket" in skipped
    for key, point in results["fanout"].items():
        for rate, figures in point["rates"].items():
            assert figures["deliveries_per_s"]["min"] > 0 and figures["lost"] == 0, (key, rate, figures)
    assert all(run["consistent"] for run in _catchup_runs(results)), "a catch-up client diverged"
    assert (tmp_path / "report.md").read_text().startswith("# crdtnb benchmarks")
    assert (tmp_path / "fanout.png").stat().st_size > 0


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
