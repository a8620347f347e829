"""The notebook page in a real browser: load time, keystroke latency, typing under an output flood.

    python bench/page_bench.py                 # 3 repetitions of each measure, a table on stdout
    python bench/page_bench.py --json out.json # also the raw figures

Needs Playwright for Python and Debian's Chromium (/usr/bin/chromium, or CRDTNB_CHROMIUM).
A fresh `crdtnb serve` on 127.0.0.1 serves a generated notebook of 300 cells (~480 KB: code
cells with their outputs, markdown cells). Measures, each in a fresh browser context:

- **load**: navigation start until the page is usable: synced, cells shown, the first cell's
  editor ready to type in, and the next frame painted (`performance.now()` in the page);
- **keystroke**: 150 characters typed into a cell in the middle of the notebook, 40 ms apart
  (a second after scrolling there, once the cells around it are built);
  each keystroke's latency is its `keydown` event's timestamp until the frame after it was
  handled has been painted (requestAnimationFrame, then a message posted from it);
- **typing during run-all**: the same while another user runs every cell of the notebook
  (REST execute, as the Run all button does), so outputs stream into the page as it types;
- **keystroke, 3-cell notebook**: the keystroke measure in a small notebook, on the same
  machine at the same time: the floor the long notebook is compared with.

This is a benchmark, not a test: it prints figures and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("CRDTNB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PATH = "big.ipynb"
SMALL = "small.ipynb"

# Keystroke latency, installed before the page's scripts: keydown timestamp -> the frame after.
PROBE = """
window.__keyLatency = [];
document.addEventListener('keydown', (event) => {
  const t0 = event.timeStamp;
  requestAnimationFrame(() => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => window.__keyLatency.push(performance.now() - t0);
    channel.port2.postMessage(0);
  });
}, true);
window.__usableAt = new Promise((resolve) => {
  const check = () => {
    const ready = document.body && document.body.dataset.ready === 'true';
    const editor = document.querySelector('.cells > .cell .cm-content, .cells > .cell .rendered');
    if (ready && editor) {
      requestAnimationFrame(() => {
        const channel = new MessageChannel();
        channel.port1.onmessage = () => resolve(performance.now());
        channel.port2.postMessage(0);
      });
      return true;
    }
    return false;
  };
  const observer = new MutationObserver(() => { if (check()) observer.disconnect(); });
  document.addEventListener('DOMContentLoaded', () => {
    if (!check()) observer.observe(document.body, { attributes: true, childList: true, subtree: true });
  });
});
"""


def big_notebook(cells: int = 300) -> dict[str, Any]:
    """~480 KB of nbformat: two code cells (with a stream or an HTML output) per markdown cell."""
    out: list[dict[str, Any]] = []
    for i in range(cells):
        if i % 3 == 2:
            source = f"## Step {i}\n\n" + " ".join(f"Paragraph {i} word {w} with *some* `markup`." for w in range(27))
            out.append({"id": f"c{i:04d}", "cell_type": "markdown", "metadata": {}, "source": source})
            continue
        lines = [f"# cell {i}: a typical analysis step"] + [
            f"values_{i}_{k} = [x * {k + 1} for x in range({i % 7 + 3})]  # line {k}" for k in range(15)
        ] + [f"print('cell {i}', sum(values_{i}_0), len(values_{i}_14))", "time.sleep(0.1)"]
        if i % 10 == 0:
            rows = "".join(f"<tr><td>{r}</td><td>{r * i}</td></tr>" for r in range(12))
            lines.append(f"display(HTML('<table><tr><th>r</th><th>v</th></tr>{rows}</table>'))")
            outputs: list[dict[str, Any]] = [{
                "output_type": "display_data", "metadata": {},
                "data": {"text/html": f"<table><tr><th>r</th><th>v</th></tr>{rows}</table>", "text/plain": "<table>"},
            }]
        else:
            outputs = [{"output_type": "stream", "name": "stdout", "text": "".join(f"cell {i} line {n}\n" for n in range(40))}]
        out.append({
            "id": f"c{i:04d}", "cell_type": "code", "metadata": {}, "execution_count": i + 1,
            "source": "\n".join(lines), "outputs": outputs,
        })
    out.insert(0, {"id": "setup", "cell_type": "code", "metadata": {}, "execution_count": None,
                   "source": "import time\nfrom IPython.display import HTML, display", "outputs": []})
    return {
        "nbformat": 4, "nbformat_minor": 5, "cells": out,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Daemon:
    def __init__(self, workdir: Path) -> None:
        self.root = workdir / "root"
        self.root.mkdir(parents=True)
        self.port = free_port()
        self.token = secrets.token_hex(12)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "crdtnb", "serve", str(self.root), "--port", str(self.port),
               f"--token={self.token}", "--idle-timeout", "3600"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/api/health", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"crdtnb did not start; see {self.log}")

    def post(self, route: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else b""
        request = urllib.request.Request(
            f"{self.url}{route}", data=data, method="POST",
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read()
            return json.loads(text) if text else None

    def get(self, route: str) -> Any:
        request = urllib.request.Request(f"{self.url}{route}", headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "median": float("nan"), "p95": float("nan"), "max": float("nan")}
    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        "max": ordered[-1],
    }


async def open_page(browser: Any, daemon: Daemon, path: str = PATH) -> Any:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    await context.add_init_script(PROBE)
    page = await context.new_page()
    await page.goto(f"{daemon.url}/notebooks/{path}?token={daemon.token}")
    return page


async def measure_load(browser: Any, daemon: Daemon) -> float:
    page = await open_page(browser, daemon)
    usable = await page.evaluate("() => window.__usableAt")
    await page.context.close()
    return float(usable)


async def type_in_middle(page: Any, count: int = 150, delay_ms: int = 40) -> list[float]:
    await page.wait_for_selector("body[data-ready='true']")
    code_cells = await page.locator(".cells > .cell.code").count()
    target = page.locator(".cells > .cell.code").nth(min(100, code_cells - 1))
    await target.scroll_into_view_if_needed()
    await target.locator(".cm-content").click()
    await page.keyboard.press("Control+End")
    await page.keyboard.press("Enter")
    await page.wait_for_timeout(1000)  # the cells around it are built: typing starts in a settled page
    await page.evaluate("() => { window.__keyLatency = [] }")
    text = ("x = 1 + 2  # typing while measuring " * 10)[:count]
    await page.keyboard.type(text, delay=delay_ms)
    await page.wait_for_timeout(300)
    return list(await page.evaluate("() => window.__keyLatency"))


async def measure_typing(browser: Any, daemon: Daemon, path: str = PATH) -> list[float]:
    page = await open_page(browser, daemon, path)
    values = await type_in_middle(page)
    await page.context.close()
    return values


async def measure_typing_during_run_all(browser: Any, daemon: Daemon) -> list[float]:
    page = await open_page(browser, daemon)
    await page.wait_for_selector("body[data-ready='true']")
    cells = daemon.get(f"/api/notebooks/{PATH}")["cells"]
    ids = [cell["id"] for cell in cells if cell["cell_type"] == "code"]
    daemon.post(f"/api/notebooks/{PATH}/execute", {"cell_ids": ids})
    # start typing once outputs are flowing
    await page.wait_for_function("() => document.querySelector('.kernel-status')?.dataset.status === 'busy'", timeout=60_000)
    values = await type_in_middle(page, count=200, delay_ms=40)
    left = daemon.get(f"/api/notebooks/{PATH}/kernel")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        info = daemon.get(f"/api/notebooks/{PATH}/kernel")
        if not info.get("queue") and not info.get("running"):
            break
        await asyncio.sleep(0.5)
    await page.context.close()
    if not left.get("queue"):
        print("  (note: the run ended before the typing did)", file=sys.stderr)
    return values


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--cells", type=int, default=300, help="cells in the generated notebook (default 300)")
    parser.add_argument("--only", default="load,keystroke,run-all,floor", help="measures to run (comma-separated)")
    args = parser.parse_args()
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="crdtnb-page-bench-") as tmp:
        daemon = Daemon(Path(tmp))
        nb = big_notebook(args.cells)
        text = json.dumps(nb, indent=1)
        (daemon.root / PATH).write_text(text)
        daemon.start()
        results: dict[str, Any] = {"notebook_bytes": len(text.encode()), "cells": len(nb["cells"])}
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                only = set(args.only.split(","))
                await measure_load(browser, daemon)  # warm-up: the room is loaded, the bundle cached
                loads = [await measure_load(browser, daemon) for _ in range(args.reps)] if "load" in only else []
                typing: list[float] = []
                for _ in range(args.reps if "keystroke" in only else 0):
                    typing += await measure_typing(browser, daemon)
                flood: list[float] = []
                for _ in range(args.reps if "run-all" in only else 0):
                    flood += await measure_typing_during_run_all(browser, daemon)
                floor: list[float] = []
                if "floor" in only:
                    (daemon.root / SMALL).write_text(json.dumps(big_notebook(3)))
                    for _ in range(args.reps):
                        floor += await measure_typing(browser, daemon, SMALL)
                await browser.close()
        finally:
            daemon.stop()
        results["load_ms"] = summary(loads) | {"all": loads}
        results["keystroke_ms"] = summary(typing)
        results["keystroke_during_run_all_ms"] = summary(flood)
        results["keystroke_small_notebook_ms"] = summary(floor)
        results["loadavg"] = os.getloadavg()
    print(f"notebook: {results['cells']} cells, {results['notebook_bytes'] / 1024:.0f} KB; load average {results['loadavg'][0]:.2f}")
    print("| measure | median | p95 | max | n |")
    print("|---|---|---|---|---|")
    for key, label in (("load_ms", "load until usable"), ("keystroke_ms", "keystroke to next frame"),
                       ("keystroke_during_run_all_ms", "keystroke while another user runs all"),
                       ("keystroke_small_notebook_ms", "keystroke, 3-cell notebook (the floor)")):
        s = results[key]
        print(f"| {label} | {s['median']:.1f} ms | {s['p95']:.1f} ms | {s['max']:.1f} ms | {s['n']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
