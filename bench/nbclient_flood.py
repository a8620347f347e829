"""The baseline of the output flood: nbclient executes the same cells in an ipykernel.

Usage: python bench/nbclient_flood.py '{"warm": "...", "lines": "...", ...}' REPS
Prints one JSON line: wall seconds per cell and repetition (kernel start-up and a warm-up cell
excluded, as for crdtnb), the output size and this process's peak RSS.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

import nbformat
from nbclient import NotebookClient


async def main(cells: dict[str, str], reps: int) -> dict:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src, id=cid) for cid, src in cells.items()]
    client = NotebookClient(nb, kernel_name="python3", timeout=1800)
    walls: dict[str, list[float]] = {}
    async with client.async_setup_kernel():
        await client.async_execute_cell(nb.cells[0], 0)  # warm: kernel ready, imports done
        for index, cid in enumerate(cells):
            if index == 0:
                continue
            walls[cid] = []
            for _ in range(reps):
                nb.cells[index].outputs = []
                t = time.monotonic()
                await client.async_execute_cell(nb.cells[index], index)
                walls[cid].append(time.monotonic() - t)
    output_chars = {
        cid: sum(len(str(o.get("text", ""))) for o in nb.cells[i].outputs) for i, cid in enumerate(cells)
    }
    return {
        "walls": walls,
        "output_chars": output_chars,
        "notebook_bytes": len(nbformat.writes(nb)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1]), int(sys.argv[2])))))
