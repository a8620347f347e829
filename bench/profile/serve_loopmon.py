"""`crdtnb serve` with an event-loop stall monitor (diagnostics for bench/README.md).

Usage: python bench/profile/serve_loopmon.py serve ROOT --port P --token T ...  (crdtnb's CLI)
Every loop stall above LOOPMON_MS (default 15) is written to stderr as
``STALL <t since start s> <wall ms> <main-thread CPU ms> <time.monotonic() s> <ms waiting for a CPU>``: a stall whose CPU is close to its
wall time was the daemon's own work on the loop; one with little CPU was the process waiting
for a core (or for the GIL held by another of its threads).
"""

import asyncio
import os
import sys
import time
from contextlib import asynccontextmanager

import crdtnb.app
from crdtnb.cli import main

THRESHOLD = float(os.environ.get("LOOPMON_MS", "15")) / 1000
_original = crdtnb.app.NotebookSync.lifespan
T_START = time.monotonic()
if os.environ.get("LOOPMON_SWITCH"):  # e.g. 0.0005: try a shorter GIL switch interval
    sys.setswitchinterval(float(os.environ["LOOPMON_SWITCH"]))


def _timed(cls, name: str, label: str, min_ms: float = 0.0) -> None:
    """Log how long ``cls.name`` takes (wall), to line its runs up with the stalls."""
    original = getattr(cls, name)
    if asyncio.iscoroutinefunction(original):
        async def wrapper(*args, **kwargs):
            t0 = time.monotonic()
            try:
                return await original(*args, **kwargs)
            finally:
                ms = (time.monotonic() - t0) * 1000
                if ms >= min_ms:
                    print(f"{label} {t0 - T_START:.3f} {ms:.1f}", file=sys.stderr, flush=True)
    else:
        def wrapper(*args, **kwargs):
            t0 = time.monotonic()
            try:
                return original(*args, **kwargs)
            finally:
                print(f"{label} {t0 - T_START:.3f} {(time.monotonic() - t0) * 1000:.1f}", file=sys.stderr, flush=True)
    setattr(cls, name, wrapper)


import crdtnb.files  # noqa: E402
import crdtnb.filesync  # noqa: E402

_timed(crdtnb.filesync.FileSync, "save", "SAVE")
_timed(crdtnb.files.NotebookFiles, "write", "WRITE")
if os.environ.get("LOOPMON_APPEND_MS"):  # slow store appends (commit latency seen by the room)
    import crdtnb.store  # noqa: E402

    _timed(crdtnb.store.SQLiteStore, "append", "APPEND", float(os.environ["LOOPMON_APPEND_MS"]))


if os.environ.get("LOOPMON_GC"):  # garbage collections of generation 2, with their length
    import gc
    import threading

    _gc_started: dict[int, float] = {}

    def _gc_timer(phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            _gc_started[threading.get_ident()] = time.monotonic()
        else:
            t0 = _gc_started.pop(threading.get_ident(), time.monotonic())
            ms = (time.monotonic() - t0) * 1000
            print(f"GC2 {t0 - T_START:.3f} {ms:.1f} {info.get('collected', 0)} {t0:.3f}", file=sys.stderr, flush=True)

    gc.callbacks.append(_gc_timer)


def _runqueue_wait() -> float:
    """Seconds the loop's thread has waited for a CPU (Linux schedstat), 0 elsewhere."""
    try:
        with open("/proc/thread-self/schedstat") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


async def _monitor() -> None:
    t_start = T_START
    while True:
        t0, c0, q0 = time.monotonic(), time.thread_time(), _runqueue_wait()
        await asyncio.sleep(0.002)
        wall, cpu = time.monotonic() - t0 - 0.002, time.thread_time() - c0
        if wall > THRESHOLD:
            # The rest of a stall, neither the loop's CPU nor a wait for a CPU, is the
            # loop's thread waiting for the GIL (another thread of the daemon's has it).
            queued = _runqueue_wait() - q0
            print(
                f"STALL {t0 - t_start:.3f} {wall * 1000:.1f} {cpu * 1000:.1f} {t0:.3f} {queued * 1000:.1f}",
                file=sys.stderr,
                flush=True,
            )


@asynccontextmanager
async def lifespan(self, app=None):
    task = asyncio.create_task(_monitor())
    try:
        async with _original(self, app):
            yield
    finally:
        task.cancel()


crdtnb.app.NotebookSync.lifespan = lifespan

if __name__ == "__main__":
    sys.exit(main())
