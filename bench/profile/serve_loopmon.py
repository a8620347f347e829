"""`crdtnb serve` with an event-loop stall monitor (diagnostics for bench/README.md).

Usage: python bench/profile/serve_loopmon.py serve ROOT --port P --token T ...  (crdtnb's CLI)
Lines start with what they are and the time.monotonic() they started at (SAVE, WRITE, APPEND:
how long a save, a file write, a store append took; THREADS, BG, STACK: see LOOPMON_THREADS and
LOOPMON_STACKS below).
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
from pathlib import Path

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
                    print(f"{label} {t0:.3f} {ms:.1f}", file=sys.stderr, flush=True)
    else:
        def wrapper(*args, **kwargs):
            t0 = time.monotonic()
            try:
                return original(*args, **kwargs)
            finally:
                print(f"{label} {t0:.3f} {(time.monotonic() - t0) * 1000:.1f}", file=sys.stderr, flush=True)
    setattr(cls, name, wrapper)


import crdtnb.files  # noqa: E402
import crdtnb.filesync  # noqa: E402
import crdtnb.rooms  # noqa: E402

_timed(crdtnb.filesync.FileSync, "save", "SAVE")
_timed(crdtnb.files.NotebookFiles, "write", "WRITE")
import threading  # noqa: E402

import crdtnb.background  # noqa: E402

if os.environ.get("LOOPMON_APPEND_MS"):  # slow store appends (commit latency seen by the room)
    import crdtnb.store  # noqa: E402

    _timed(crdtnb.store.SQLiteStore, "append", "APPEND", float(os.environ["LOOPMON_APPEND_MS"]))
    _timed(crdtnb.store.SQLiteStore, "seed", "SEED")
    import crdtnb.store.sqlite  # noqa: E402

    _run_batch = crdtnb.store.sqlite._Writer._run_batch

    _Job = crdtnb.store.sqlite._Job

    class _StampedJob(_Job):  # when each job was queued
        def __post_init__(self) -> None:
            self.queued_at = time.monotonic()

    crdtnb.store.sqlite._Job = _StampedJob

    def _logged_batch(self, conn, batch, begun=False):  # what each slow transaction held
        t0 = time.monotonic()
        try:
            return _run_batch(self, conn, batch, begun)
        finally:
            ms = (time.monotonic() - t0) * 1000
            waited = (t0 - min(getattr(job, "queued_at", t0) for job in batch)) * 1000
            if ms + waited >= float(os.environ["LOOPMON_APPEND_MS"]) / 2:
                kinds = sorted({job.fn.__qualname__.split(".<locals>")[0] for job in batch})
                print(
                    f"BATCH {t0:.3f} {ms:.1f} queued {waited:.1f} jobs {len(batch)} bytes {sum(job.nbytes for job in batch)} {kinds}"
                    f" {threading.current_thread().name}",
                    file=sys.stderr,
                    flush=True,
                )

    crdtnb.store.sqlite._Writer._run_batch = _logged_batch

    def _logged_checkpoints(self) -> None:  # _Checkpointer._run, with each checkpoint's time
        import sqlite3

        crdtnb.background.yield_the_cpu()
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        while not self._stop.wait(self.interval):
            t0 = time.monotonic()
            busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
            print(f"CKPT {t0:.3f} {(time.monotonic() - t0) * 1000:.1f} ms, {done} of {frames} frames", file=sys.stderr, flush=True)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        conn.close()

    crdtnb.store.sqlite._Checkpointer._run = _logged_checkpoints


if os.environ.get("LOOPMON_THREADS") or os.environ.get("LOOPMON_BG"):  # what each background call ran, and when

    import crdtnb.background  # noqa: E402

    _submit = crdtnb.background.in_background

    async def _logged(fn, *args):
        name = getattr(fn, "__qualname__", repr(fn))

        def run():
            t0, c0 = time.monotonic(), time.thread_time()
            try:
                return fn(*args)
            finally:
                print(
                    f"BG {t0:.3f} {name} wall {(time.monotonic() - t0) * 1000:.1f} cpu {(time.thread_time() - c0) * 1000:.1f}",
                    file=sys.stderr,
                    flush=True,
                )

        return await _submit(run)

    for module in (crdtnb.rooms, crdtnb.filesync):
        module.in_background = _logged


if os.environ.get("LOOPMON_PIPE_MS"):  # a room's changes that took long to become durable
    import crdtnb.room  # noqa: E402

    _persist = crdtnb.room.Room._persist
    _PIPE_S = float(os.environ["LOOPMON_PIPE_MS"]) / 1000

    async def _timed_persist(self, batch):
        t0 = time.monotonic()
        try:
            return await _persist(self, batch)
        finally:
            t1 = time.monotonic()
            oldest = min(received for _, _, received, _ in batch)
            if t1 - oldest > _PIPE_S:
                print(
                    f"PIPE {oldest:.3f} {self.name} waited {(t0 - oldest) * 1000:.1f} persisted {(t1 - t0) * 1000:.1f} ms, {len(batch)} changes",
                    file=sys.stderr,
                    flush=True,
                )

    crdtnb.room.Room._persist = _timed_persist


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


def _thread_times() -> dict[str, float]:
    """CPU seconds each of the daemon's threads has run, by name (LOOPMON_THREADS)."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    times: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as stat:
                ran = int(stat.read().split()[0]) / 1e9
        except (OSError, ValueError):
            continue
        name = names.get(int(tid), tid)
        try:
            name += f"(nice {os.getpriority(os.PRIO_PROCESS, int(tid))}, {os.sched_getscheduler(int(tid))})"
        except OSError:
            pass
        times[name] = times.get(name, 0.0) + ran
    return times


def _cpu0_busy() -> float:
    """Seconds CPU 0 was busy (all processes, interrupts included)."""
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith("cpu0 "):
                ticks = [int(v) for v in line.split()[1:]]
                return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return 0.0


PER_THREAD = bool(os.environ.get("LOOPMON_THREADS"))


_last_tick = [time.monotonic()]


def _stack_sampler(main_id: int, after: float) -> None:
    """LOOPMON_STACKS: while the loop has not ticked for ``after`` s, log where its thread is."""
    import traceback

    seen: set[str] = set()
    while True:
        time.sleep(0.001)
        stalled = time.monotonic() - _last_tick[0]
        if stalled < after:
            seen.clear()
            continue
        frame = sys._current_frames().get(main_id)
        if frame is None:
            continue
        stack = traceback.extract_stack(frame)
        where = " < ".join(f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in reversed(stack[-8:]))
        if where not in seen:
            seen.add(where)
            print(f"STACK {time.monotonic():.3f} {stalled * 1000:.1f} {where}", file=sys.stderr, flush=True)


def _gil_watch(after: float) -> None:
    """LOOPMON_GILWATCH: a thread that sleeps 1 ms at a time; when it gets the GIL back
    ``after`` s late, it logs where every other thread is (the one that held the GIL is
    usually just past what held it)."""
    import traceback

    me = threading.get_ident()
    names = {}
    while True:
        t0, c0 = time.monotonic(), _runqueue_wait()
        time.sleep(0.001)
        late = time.monotonic() - t0 - 0.001
        if late < after:
            continue
        queued = _runqueue_wait() - c0
        names.update({t.ident: t.name for t in threading.enumerate()})
        stacks = []
        for ident, frame in sys._current_frames().items():
            if ident == me:
                continue
            where = " < ".join(f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in reversed(traceback.extract_stack(frame)[-4:]))
            stacks.append(f"[{names.get(ident, ident)}] {where}")
        print(f"GILWAIT {t0:.3f} late {late * 1000:.1f} ms (waiting for a CPU {queued * 1000:.1f}) :: " + " || ".join(stacks), file=sys.stderr, flush=True)


async def _monitor() -> None:
    t_start = T_START
    if os.environ.get("LOOPMON_GILWATCH"):
        threading.Thread(target=_gil_watch, args=(float(os.environ["LOOPMON_GILWATCH"]) / 1000,), daemon=True).start()
    if os.environ.get("LOOPMON_STACKS"):
        threading.Thread(
            target=_stack_sampler, args=(threading.get_ident(), float(os.environ["LOOPMON_STACKS"]) / 1000), daemon=True
        ).start()
    while True:
        _last_tick[0] = time.monotonic()
        if PER_THREAD:
            threads0, busy0 = _thread_times(), _cpu0_busy()
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
            if PER_THREAD:
                threads1, busy1 = _thread_times(), _cpu0_busy()
                ran = {name: (threads1[name] - threads0.get(name, 0.0)) * 1000 for name in threads1}
                print(
                    f"THREADS {t0:.3f} cpu0-busy {(busy1 - busy0) * 1000:.0f} "
                    + " ".join(f"{name}={ms:.1f}" for name, ms in sorted(ran.items(), key=lambda kv: -kv[1]) if ms >= 0.5),
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
