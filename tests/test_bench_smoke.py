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
    assert results  # figures were written
    assert (tmp_path / "report.md").read_text().startswith("# crdtnb benchmarks")
    assert (tmp_path / "fanout.png").stat().st_size > 0
