"""The default store: SQLite in WAL mode.

* One writer thread owns the only write connection. Jobs (appends, meta writes, compaction
  swaps, renames, deletes) queue up while a transaction commits and then share the next transaction
  (group commit), so 50 rooms typing at once cost one commit, not 50.
* Reads run on a small pool of reader threads, each with its own connection. WAL lets them read
  a consistent snapshot while the writer commits: loading a big room never delays appends on
  the relay's hot path, and a slow commit never delays a room from opening.
* Compaction reads and merges the log on a reader thread, then hands the writer a short,
  validated "replace rows <= seq by this snapshot" job.

The asyncio loop touches the disk for one thing: an append, when the writer thread is idle,
commits on the loop's own thread (see _Writer.run_inline; a WAL commit without fsync costs
tens of microseconds, less than two thread hand-offs). Everything else runs on these threads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from ..background import yield_the_cpu
from ..pieces import from_rows, to_rows, unpack
from .base import CompactionError, Store, StoreClosedError, StoreError
from .merge import merge_pieces

logger = logging.getLogger("crdtnb.store")

T = TypeVar("T")

SCHEMA_VERSION = 3
BUSY_TIMEOUT_S = 10.0  # waits out locks held by a checkpoint or an external sqlite3 shell
MAX_BATCH_JOBS = 1000  # caps one transaction so the first caller in a burst is not held back
# A job writing this much (a snapshot part, a file's base) takes milliseconds: it commits in a
# transaction of its own, so that the appends queued around it are not held back by it.
ALONE_BYTES = 32 << 10
READ_THREADS = 2  # a load can proceed while a compaction merges on the other thread

_SYNCHRONOUS_MODES = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})


# Migration steps: _MIGRATIONS[v] upgrades a database at version v - 1 to version v.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        # AUTOINCREMENT everywhere: ids are never reused, so a compaction planned against a
        # deleted room can never land on a new room, and seq only ever grows.
        """CREATE TABLE rooms (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            snapshot BLOB,                          -- merge of every update with seq <= snapshot_seq
            snapshot_seq INTEGER NOT NULL DEFAULT 0 -- 0: no update merged into it yet
        )""",
        """CREATE TABLE updates (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- global append order
            room_id INTEGER NOT NULL,
            data BLOB NOT NULL
        )""",
        # SQLite appends the rowid (seq) to every index, so this also orders a room's rows.
        "CREATE INDEX updates_by_room ON updates (room_id)",
        """CREATE TABLE meta (
            room_id INTEGER NOT NULL,
            key TEXT NOT NULL,
            value BLOB NOT NULL,
            PRIMARY KEY (room_id, key)
        ) WITHOUT ROWID""",
    ),
    2: (
        # A room's snapshot in parts of about a megabyte: a big room is read, applied and
        # written a part at a time, not as one blob that one call holds the GIL for (see
        # pieces.py), and each part is its own short transaction, so that a big snapshot
        # does not hold up other rooms' appends. The parts of a new generation are written
        # first, then rooms.snapshot_generation switches to them (rooms.snapshot is then
        # NULL); parts of no room's generation (a crash in between) go at the next start.
        """CREATE TABLE snapshot_parts (
            room_id INTEGER NOT NULL,
            generation INTEGER NOT NULL,
            part INTEGER NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (room_id, generation, part)
        )""",
        "ALTER TABLE rooms ADD COLUMN snapshot_generation INTEGER",
    ),
    # No new table: a part is now stored as rows of at most pieces.ROW_BYTES (the rows after
    # a part's first carry a marker, see pieces.to_rows), each written by its own short
    # transaction. The version says so, so that an older crdtnb refuses the database rather
    # than read such rows as parts.
    3: (),
}


def _connect_writer(path: Path, synchronous: str) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, to batch jobs into one transaction
    # check_same_thread=False: the loop's thread also runs small jobs on it (_Writer.run_inline)
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: cannot use WAL journal mode (got {mode!r})")
        # NORMAL in WAL mode: a commit survives the process being killed, not a power loss
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        # Checkpoints (and their fsync) run on their own thread, not inside the commit
        # that every relayed update waits for: see _Checkpointer.
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    except BaseException:
        conn.close()
        raise
    return conn


class _Checkpointer:
    """Copies the WAL back into the database every ``interval`` seconds (PASSIVE: it
    never blocks the writer or readers), from its own connection and thread."""

    def __init__(self, path: Path, interval: float = 1.0) -> None:
        self.path = path
        self.interval = interval
        # While it copies, a commit can wait for the disk (tens of milliseconds after a
        # big write): the writer then commits on its thread, not on the loop's.
        self.copying = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"crdtnb-checkpoint:{path.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        yield_the_cpu()  # copying the WAL back must not keep the event loop from a CPU
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        try:
            while not self._stop.wait(self.interval):
                self.copying = True
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    logger.warning("WAL checkpoint of %s failed; will retry", self.path, exc_info=True)
                finally:
                    self.copying = False
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:
            logger.warning("final WAL checkpoint of %s failed", self.path, exc_info=True)
        finally:
            conn.close()


def _connect_reader(path: Path) -> sqlite3.Connection:
    # check_same_thread=False only so close() can run on another thread once the pool is down
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    conn.execute("PRAGMA query_only = ON")
    return conn


@contextlib.contextmanager
def _read_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """Several SELECTs that must see the same commit (e.g. a snapshot and the rows after it)."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")  # a read transaction: this only releases the WAL snapshot


def _migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchall()[0][0]
    if version > SCHEMA_VERSION:
        raise StoreError(f"database schema v{version} is newer than this crdtnb (v{SCHEMA_VERSION})")
    for target in range(version + 1, SCHEMA_VERSION + 1):
        for statement in _MIGRATIONS[target]:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {target}")


def _room_id(conn: sqlite3.Connection, room: str, *, create: bool) -> int | None:
    # Not cached: a cached id would outlive a rolled-back INSERT. The lookup hits a unique index.
    found = conn.execute("SELECT id FROM rooms WHERE name = ?", (room,)).fetchall()
    if found:
        return int(found[0][0])
    if not create:
        return None
    room_id = conn.execute("INSERT INTO rooms (name) VALUES (?)", (room,)).lastrowid
    assert room_id is not None  # set by every successful INSERT
    return room_id


# --- the writer thread --------------------------------------------------------------------


@dataclass(eq=False)
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    on_commit: Callable[[Any], None] | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    nbytes: int = 0  # what it writes, about
    # A job in steps (submit_steps): the ones after ``fn``, each its own transaction.
    more: Iterator[Callable[[sqlite3.Connection], Any]] | None = None

    @property
    def big(self) -> bool:
        return self.nbytes >= ALONE_BYTES or self.more is not None


@dataclass(eq=False)
class _Stop:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


_Outcome = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Any, "BaseException | None"]


def _settle(outcomes: list[_Outcome]) -> None:
    """Runs on the loop: hand each caller its result."""
    for _, future, result, error in outcomes:
        if future.done():  # the caller was cancelled; its job still ran (appends are not undone)
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _deliver(outcomes: list[_Outcome]) -> None:
    """Runs on the writer: one wake-up per loop per batch, not one per job."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0], []).append(outcome)
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(_settle, items)


class _Writer:
    """The one thread that writes. Jobs queued while a transaction commits form the next one.

    Each job runs inside its own SAVEPOINT, so a failing job is rolled back alone and its error
    goes to its caller; the rest of the batch still commits. If the transaction as a whole fails,
    every caller in the batch gets the error. The thread itself only stops on stop().
    """

    def __init__(self, path: Path, synchronous: str) -> None:
        self._path = path
        self._synchronous = synchronous
        self._queue: queue.SimpleQueue[_Job | _Stop] = queue.SimpleQueue()
        # daemon: if the owner never calls close(), the process can still exit. Nothing acked is
        # lost by that: acks are only sent after COMMIT.
        self._thread = threading.Thread(target=self._run, name="crdtnb-store-writer", daemon=True)
        self.commits = 0  # committed transactions, to observe group commit
        # Held while a transaction runs, on whichever thread. The connection is open (not
        # None) from the thread's start until its stop.
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        # Jobs queued (counted by the loop) and finished (by the thread): equal when the
        # thread has nothing in hand, so a job run inline cannot overtake an earlier one.
        self._queued = 0
        self._finished = 0
        self._patient = True  # the connection's busy timeout is BUSY_TIMEOUT_S
        self._inline_this_turn = False
        # Whether a commit may have to wait for the disk now (no job then runs inline).
        self.disk_busy: Callable[[], bool] = lambda: False

    def start(self) -> None:
        self._thread.start()

    def submit(
        self,
        fn: Callable[[sqlite3.Connection], T],
        on_commit: Callable[[T], None] | None = None,
        nbytes: int = 0,
        more: Iterator[Callable[[sqlite3.Connection], Any]] | None = None,
    ) -> asyncio.Future[T]:
        """Queue `fn(conn)`, which writes about ``nbytes``; `on_commit(result)` runs on the
        writer thread once it is committed (``more``: see submit_steps).

        Synchronous up to the queue, so jobs keep the order in which callers submitted them.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queued += 1
        self._queue.put(_Job(fn, on_commit, loop, future, nbytes, more))
        return future

    def submit_steps(self, steps: Iterable[Callable[[sqlite3.Connection], Any]]) -> asyncio.Future[Any]:
        """Queue a big write made of ``steps``, each committed on its own, one after the
        other on the thread, with the jobs queued meanwhile run between two steps: those
        wait for one step at most, and the loop is not woken once per step. The future
        is done (None) once the last step is committed."""
        more = iter(steps)
        first = next(more, None)
        if first is None:
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return self.submit(first, more=more)

    def run_inline(
        self,
        fn: Callable[[sqlite3.Connection], T],
        on_commit: Callable[[T], None] | None = None,
        nbytes: int = 0,
    ) -> asyncio.Future[T]:
        """Run a small job on the caller's thread when the writer thread is idle, else
        queue it. An append commits in tens of microseconds (WAL, no fsync on commit):
        cheaper than waking the thread and being woken back, twice per relayed update.
        Under load the thread is busy, jobs queue and share commits again. A big job
        always goes to the thread, and so does every job while the WAL is being copied
        back (a commit may then wait for the disk)."""
        loop = asyncio.get_running_loop()
        if (
            nbytes >= ALONE_BYTES
            or self._inline_this_turn
            or self.disk_busy()
            or self._queued != self._finished
            or not self._lock.acquire(blocking=False)
        ):
            return self.submit(fn, on_commit, nbytes)
        # One inline commit per turn of the loop: a burst's other jobs go to the thread
        # and share its commits instead of holding the loop one commit each.
        self._inline_this_turn = True
        loop.call_soon(self._next_turn)
        future: asyncio.Future[T] = loop.create_future()
        try:
            conn = self._conn
            if conn is None:  # not open yet, or stopping: the thread answers
                return self.submit(fn, on_commit, nbytes)
            # Never wait for a lock here (another process's transaction): the thread does.
            self._set_patience(conn, patient=False)
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                return self.submit(fn, on_commit, nbytes)
            outcomes = self._run_batch(conn, [_Job(fn, on_commit, loop, future, nbytes)], begun=True)
        finally:
            self._lock.release()
        _settle(outcomes)
        return future

    async def stop(self) -> None:
        """Run every job queued so far, close the connection, end the thread."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.put(_Stop(loop, future))
        try:
            await future
        finally:
            await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        try:
            conn = _connect_writer(self._path, self._synchronous)
        except BaseException as exc:
            self._refuse_until_stopped(StoreError(f"cannot open {self._path}: {exc}"), exc)
            return
        with self._lock:
            self._conn = conn
        stop: _Stop | None = None
        held: _Job | None = None  # a big job met while gathering small ones: the next batch
        stepping: collections.deque[_Job] = collections.deque()  # jobs in steps, part done
        while stop is None or stepping:
            batch: list[_Job] = []
            item: _Job | _Stop
            if held is not None:
                item, held = held, None
            elif stepping:  # what is queued goes before their next steps (this thread alone reads the queue)
                item = self._queue.get_nowait() if stop is None and not self._queue.empty() else stepping.popleft()
            else:
                item = self._queue.get()
            while True:
                if isinstance(item, _Stop):
                    stop = item
                    break
                if item.big and batch:
                    held = item
                    break
                batch.append(item)
                if item.big or len(batch) >= MAX_BATCH_JOBS:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                with self._lock:
                    self._set_patience(conn, patient=True)
                    outcomes = self._run_batch(conn, batch)
                    if batch[0].more is not None and self._next_step(batch[0], outcomes):
                        stepping.append(batch[0])  # its next step, after what is queued now
                        continue
                    self._finished += len(batch)
                _deliver(outcomes)
        with self._lock:
            self._conn = None
        try:
            conn.close()
        except BaseException as exc:
            _deliver([(stop.loop, stop.future, None, exc)])
        else:
            _deliver([(stop.loop, stop.future, None, None)])
        self._refuse_leftovers()

    @staticmethod
    def _next_step(job: _Job, outcomes: list[_Outcome]) -> bool:
        """After a step of ``job``: make its next step its ``fn`` (True), or leave in
        ``outcomes`` what its caller gets: None once all are done, or the error of the step
        that failed or that could not be made (the steps before it stay committed)."""
        if outcomes[0][3] is not None:
            return False
        try:
            step = next(cast(Iterator[Callable[[sqlite3.Connection], Any]], job.more), None)
        except Exception as exc:
            outcomes[0] = (job.loop, job.future, None, exc)
            return False
        if step is None:
            outcomes[0] = (job.loop, job.future, None, None)
            return False
        job.fn = step
        return True

    def _next_turn(self) -> None:
        self._inline_this_turn = False

    def _set_patience(self, conn: sqlite3.Connection, patient: bool) -> None:
        """How long BEGIN waits for another connection's lock: BUSY_TIMEOUT_S on the
        thread, not at all on the loop's thread. Switched only when it changes."""
        if patient != self._patient:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000) if patient else 0}")
            self._patient = patient

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job], begun: bool = False) -> list[_Outcome]:
        """One transaction of ``batch``, under the lock; returns what each caller gets."""
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            if not begun:
                conn.execute("BEGIN IMMEDIATE")
            if len(batch) == 1:  # its own transaction: no savepoint needed to undo it alone
                job = batch[0]
                outcomes.append((job, job.fn(conn), None))
            else:
                for job in batch:
                    outcomes.append(self._run_job(conn, job))
            conn.execute("COMMIT")
        except BaseException as exc:  # nothing of this batch is committed
            with contextlib.suppress(BaseException):
                conn.execute("ROLLBACK")
            logger.warning("store transaction of %d jobs failed: %r", len(batch), exc)
            return [(job.loop, job.future, None, exc) for job in batch]
        self.commits += 1
        for job, result, error in outcomes:
            if error is None and job.on_commit is not None:
                try:
                    job.on_commit(result)
                except BaseException:  # bookkeeping only; the data is committed
                    logger.exception("store on_commit hook failed")
        return [(job.loop, job.future, result, error) for job, result, error in outcomes]

    @staticmethod
    def _run_job(conn: sqlite3.Connection, job: _Job) -> tuple[_Job, Any, BaseException | None]:
        conn.execute("SAVEPOINT job")
        try:
            result = job.fn(conn)
        except BaseException as exc:
            conn.execute("ROLLBACK TO job")  # undo this job only
            conn.execute("RELEASE job")
            return job, None, exc
        conn.execute("RELEASE job")
        return job, result, None

    def _refuse_until_stopped(self, error: StoreError, cause: BaseException) -> None:
        """The connection never opened: fail every job (rather than hang) until stop()."""
        error.__cause__ = cause
        while True:
            item = self._queue.get()
            if isinstance(item, _Stop):
                _deliver([(item.loop, item.future, None, None)])
                self._refuse_leftovers()
                return
            _deliver([(item.loop, item.future, None, error)])

    def _refuse_leftovers(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            _deliver([(item.loop, item.future, None, StoreClosedError("the store is closed"))])


# --- the reader threads -------------------------------------------------------------------


class _Readers:
    """Reader threads, each with its own connection: WAL lets them read while the writer commits."""

    def __init__(self, path: Path, threads: int = READ_THREADS) -> None:
        self._path = path
        # Reading a big room is work for a CPU too: it yields to the event loop's.
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="crdtnb-store-read", initializer=yield_the_cpu)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect_reader(self._path)
            with self._lock:
                self._conns.append(conn)
        return fn(conn)

    async def close(self) -> None:
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True)  # lets running reads finish
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()


# --- the store ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _CompactionPlan:
    room_id: int
    base_seq: int  # snapshot_seq the plan was built on
    max_seq: int  # last update merged into the new snapshot
    rows: int  # update rows merged (not counting the old snapshot)
    nbytes: int
    snapshot: list[bytes]  # in parts


def _snapshot(conn: sqlite3.Connection, room_id: int) -> list[bytes]:
    """A room's snapshot: the parts of its generation, or the single blob of a database
    from before them (or nothing)."""
    blob, generation = conn.execute(
        "SELECT snapshot, snapshot_generation FROM rooms WHERE id = ?", (room_id,)
    ).fetchall()[0]
    if blob is not None:
        return unpack(blob)
    rows = conn.execute(
        "SELECT data FROM snapshot_parts WHERE room_id = ? AND generation = ? ORDER BY part", (room_id, generation)
    ).fetchall()
    return from_rows([data for (data,) in rows])


def _has_state(conn: sqlite3.Connection, room_id: int) -> bool:
    snapshot, generation = conn.execute(
        "SELECT snapshot, snapshot_generation FROM rooms WHERE id = ?", (room_id,)
    ).fetchall()[0]
    rows = conn.execute("SELECT 1 FROM updates WHERE room_id = ? LIMIT 1", (room_id,)).fetchall()
    return snapshot is not None or generation is not None or bool(rows)


def _drop_parts(conn: sqlite3.Connection, room_id: int, keep: int | None) -> None:
    """Delete the room's parts of every generation but ``keep``."""
    conn.execute("DELETE FROM snapshot_parts WHERE room_id = ? AND generation IS NOT ?", (room_id, keep))


def _forget(conn: sqlite3.Connection, room_id: int) -> None:
    for table in ("updates", "meta", "snapshot_parts"):
        conn.execute(f"DELETE FROM {table} WHERE room_id = ?", (room_id,))
    conn.execute("DELETE FROM rooms WHERE id = ?", (room_id,))


def _as_blobs(updates: Sequence[bytes]) -> list[bytes]:
    if isinstance(updates, (bytes, bytearray, memoryview)):
        raise TypeError("append() takes a sequence of updates, not a single bytes object")
    blobs = []
    for update in updates:
        if not isinstance(update, (bytes, bytearray, memoryview)):
            raise TypeError(f"an update must be bytes, not {type(update).__name__}")
        blobs.append(bytes(update))
    return blobs


def _check_room(room: str) -> None:
    if not isinstance(room, str) or not room:
        raise ValueError(f"a room name must be a non-empty str, not {room!r}")


_NEW, _OPEN, _CLOSED = "new", "open", "closed"


class SQLiteStore(Store):
    """The default Store: one SQLite file in WAL mode holding every room's log.

    Compaction is the room layer's call: it checks `needs_compaction(room)` after an append
    (an in-memory lookup) and runs `compact(room)` off the hot path.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        compact_threshold_rows: int = 1000,
        compact_threshold_bytes: int = 8 * 2**20,
        synchronous: str = "NORMAL",
    ) -> None:
        mode = synchronous.upper()
        if mode not in _SYNCHRONOUS_MODES:  # it goes into a PRAGMA: accept known words only
            raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS_MODES)}, not {synchronous!r}")
        self.path = Path(path)
        self.compact_threshold_rows = compact_threshold_rows
        self.compact_threshold_bytes = compact_threshold_bytes
        self._writer = _Writer(self.path, mode)
        self._readers = _Readers(self.path)
        self._checkpointer = _Checkpointer(self.path)
        self._writer.disk_busy = lambda: self._checkpointer.copying
        # room -> (rows, bytes) since its snapshot. Seeded at start, then changed only after a
        # commit, under the writer's lock, so it is exact; the loop reads it without I/O.
        self._log_sizes: dict[str, tuple[int, int]] = {}
        self._compacting = asyncio.Lock()  # one merge at a time: bounds CPU and memory
        self._state = _NEW

    @property
    def commits(self) -> int:
        """Write transactions committed since start (group commit makes this < appends)."""
        return self._writer.commits

    async def __aenter__(self) -> SQLiteStore:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._state is not _NEW:
            raise StoreError(f"store {self.path} was already started")
        self._state = _OPEN
        self._writer.start()
        try:
            await self._submit(self._init_db, self._log_sizes.update)
        except BaseException:
            await self.close()
            raise
        self._checkpointer.start()

    @staticmethod
    def _init_db(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
        _migrate(conn)
        # Parts of a snapshot never switched to (the daemon stopped while writing them).
        conn.execute(
            "DELETE FROM snapshot_parts WHERE generation IS NOT"
            " (SELECT snapshot_generation FROM rooms WHERE rooms.id = snapshot_parts.room_id)"
        )
        rows = conn.execute(
            "SELECT rooms.name, count(*), sum(length(updates.data))"
            " FROM updates JOIN rooms ON rooms.id = updates.room_id GROUP BY rooms.name"
        ).fetchall()
        return {name: (count, nbytes) for name, count, nbytes in rows}

    async def close(self) -> None:
        if self._state is _CLOSED:
            return
        started = self._state is _OPEN
        self._state = _CLOSED  # from here on, new calls fail; queued appends still commit
        if not started:
            return
        try:
            await self._writer.stop()
        finally:
            await self._readers.close()
            await asyncio.to_thread(self._checkpointer.stop)

    def _check_open(self) -> None:
        if self._state is not _OPEN:
            what = "not started" if self._state is _NEW else "closed"
            raise StoreClosedError(f"store {self.path} is {what}")

    def _submit(
        self, fn: Callable[[sqlite3.Connection], T], on_commit: Callable[[T], None] | None = None, nbytes: int = 0
    ) -> asyncio.Future[T]:
        # Checked in the same step as the put: once close() has queued its stop, nothing may
        # follow it (the writer would never run it).
        self._check_open()
        return self._writer.submit(fn, on_commit, nbytes)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._check_open()
        return await self._readers.run(fn)

    # writes

    async def append(self, room: str, updates: Sequence[bytes]) -> None:
        self._check_open()
        _check_room(room)
        blobs = _as_blobs(updates)
        if not blobs:
            return
        nbytes = sum(map(len, blobs))

        def write(conn: sqlite3.Connection) -> None:
            room_id = _room_id(conn, room, create=True)
            if len(blobs) == 1:  # the common case, and cheaper than executemany
                conn.execute("INSERT INTO updates (room_id, data) VALUES (?, ?)", (room_id, blobs[0]))
            else:
                conn.executemany("INSERT INTO updates (room_id, data) VALUES (?, ?)", [(room_id, blob) for blob in blobs])

        def committed(_: None) -> None:
            rows, size = self._log_sizes.get(room, (0, 0))
            self._log_sizes[room] = (rows + len(blobs), size + nbytes)

        self._check_open()
        await self._writer.run_inline(write, committed, nbytes)

    async def append_owned(self, room: str, updates: Sequence[bytes]) -> None:
        # One daemon per SQLite file: it owns every room.
        await self.append(room, updates)

    async def seed(self, room: str, updates: Sequence[bytes]) -> bool:
        """The first state is the room's snapshot (in parts), not rows of its log: a big
        notebook just loaded from its file is not due for compaction at once."""
        self._check_open()
        _check_room(room)
        blobs = _as_blobs(updates)

        def begin(conn: sqlite3.Connection) -> int | None:
            room_id = _room_id(conn, room, create=True)
            assert room_id is not None  # created
            return None if _has_state(conn, room_id) else room_id

        room_id = await self._submit(begin)
        if room_id is None:
            return False
        generation = await self._write_parts(room_id, blobs)

        def finish(conn: sqlite3.Connection) -> bool:
            if _has_state(conn, room_id):  # seeded meanwhile: ours goes
                _drop_parts(conn, room_id, keep=None)
                return False
            conn.execute("UPDATE rooms SET snapshot_generation = ? WHERE id = ?", (generation, room_id))
            return True

        return await self._submit(finish)

    async def _write_parts(self, room_id: int, parts: Sequence[bytes]) -> int:
        """Store ``parts`` as a new generation of the room's snapshot, in rows of at most
        pieces.ROW_BYTES, one transaction each (others' appends go between them); the
        caller switches to it."""
        if not parts:
            raise ValueError("a snapshot has at least one part")
        generation = 0
        rows = to_rows(parts)

        def first(conn: sqlite3.Connection) -> None:
            # The generation is taken by the transaction that writes its first row: another
            # snapshot of the room written meanwhile takes the next one.
            nonlocal generation
            found = conn.execute("SELECT max(generation) FROM snapshot_parts WHERE room_id = ?", (room_id,)).fetchall()
            current = conn.execute("SELECT snapshot_generation FROM rooms WHERE id = ?", (room_id,)).fetchall()
            generation = max(found[0][0] or 0, (current[0][0] or 0) if current else 0) + 1
            insert(0, next(rows))(conn)

        def insert(number: int, row: bytes) -> Callable[[sqlite3.Connection], None]:
            def write(conn: sqlite3.Connection) -> None:
                conn.execute(
                    "INSERT INTO snapshot_parts (room_id, generation, part, data) VALUES (?, ?, ?, ?)",
                    (room_id, generation, number, row),
                )

            return write

        # Rows are made as their steps run, on the writer thread.
        steps = itertools.chain([first], itertools.starmap(insert, enumerate(rows, start=1)))
        self._check_open()
        await self._writer.submit_steps(steps)
        return generation

    async def set_meta(self, room: str, key: str, value: bytes) -> None:
        self._check_open()
        _check_room(room)
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"a meta value must be bytes, not {type(value).__name__}")
        blob = bytes(value)

        def write(conn: sqlite3.Connection) -> None:
            room_id = _room_id(conn, room, create=True)
            conn.execute(
                "INSERT INTO meta (room_id, key, value) VALUES (?, ?, ?)"
                " ON CONFLICT (room_id, key) DO UPDATE SET value = excluded.value",
                (room_id, key, blob),
            )

        await self._submit(write, nbytes=len(blob))

    async def delete_room(self, room: str) -> None:
        self._check_open()
        _check_room(room)

        def write(conn: sqlite3.Connection) -> None:
            room_id = _room_id(conn, room, create=False)
            if room_id is None:
                return
            _forget(conn, room_id)

        def committed(_: None) -> None:
            self._log_sizes.pop(room, None)

        await self._submit(write, committed)

    async def rename_room(self, old: str, new: str) -> None:
        self._check_open()
        _check_room(old)
        _check_room(new)
        if old == new:
            return

        def write(conn: sqlite3.Connection) -> None:
            stale = _room_id(conn, new, create=False)
            if stale is not None:  # a log left by a file of that name that is gone
                _forget(conn, stale)
            # The id stays: a compaction planned under the old name still lands on this room.
            conn.execute("UPDATE rooms SET name = ? WHERE name = ?", (new, old))

        def committed(_: None) -> None:
            size = self._log_sizes.pop(old, None)
            self._log_sizes.pop(new, None)
            if size is not None:
                self._log_sizes[new] = size

        # Submitted before this coroutine first suspends: ordered after every earlier call.
        await self._submit(write, committed)

    # compaction

    def needs_compaction(self, room: str) -> bool:
        rows, nbytes = self._log_sizes.get(room, (0, 0))
        return rows > 0 and (rows >= self.compact_threshold_rows or nbytes >= self.compact_threshold_bytes)

    async def compact(self, room: str) -> None:
        """Merge the room's snapshot and updates up to the current max seq into a new snapshot.

        Read and merge run on a reader thread against one WAL snapshot; the writer then swaps
        snapshot and rows in one short transaction. That swap re-checks that the room still has
        the snapshot the merge started from: rows <= max_seq are immutable otherwise (seq only
        grows), so the result is the same as doing all of it in one transaction, without holding
        up appends while pycrdt merges.
        """
        self._check_open()
        _check_room(room)
        async with self._compacting:
            plan = await self._read(lambda conn: self._plan_compaction(conn, room))
            if plan is None:
                return
            generation = await self._write_parts(plan.room_id, plan.snapshot)

            def swap(conn: sqlite3.Connection) -> str | None:
                """The room's name now (it may have been renamed meanwhile), None if deleted."""
                found = conn.execute("SELECT snapshot_seq, name FROM rooms WHERE id = ?", (plan.room_id,)).fetchall()
                if not found:
                    return None  # deleted meanwhile: nothing left to compact
                if found[0][0] != plan.base_seq:
                    raise CompactionError(f"room {room!r} was compacted by someone else meanwhile")
                conn.execute(
                    "UPDATE rooms SET snapshot = NULL, snapshot_generation = ?, snapshot_seq = ? WHERE id = ?",
                    (generation, plan.max_seq, plan.room_id),
                )
                _drop_parts(conn, plan.room_id, keep=generation)
                deleted = conn.execute(
                    "DELETE FROM updates WHERE room_id = ? AND seq <= ?", (plan.room_id, plan.max_seq)
                ).rowcount
                if deleted != plan.rows:  # rolls back this job: the log stays as it was
                    raise CompactionError(f"room {room!r}: expected to merge {plan.rows} rows, found {deleted}")
                return str(found[0][1])

            def committed(name: str | None) -> None:
                if name is not None:
                    rows, nbytes = self._log_sizes.get(name, (0, 0))
                    self._log_sizes[name] = (max(rows - plan.rows, 0), max(nbytes - plan.nbytes, 0))

            def drop_ours(conn: sqlite3.Connection) -> None:
                conn.execute(
                    "DELETE FROM snapshot_parts WHERE room_id = ? AND generation = ?", (plan.room_id, generation)
                )

            try:
                await self._submit(swap, committed)
            except BaseException:
                await asyncio.shield(self._submit(drop_ours))  # the parts nobody will use
                raise

    @staticmethod
    def _plan_compaction(conn: sqlite3.Connection, room: str) -> _CompactionPlan | None:
        with _read_transaction(conn):
            found = conn.execute("SELECT id, snapshot, snapshot_seq FROM rooms WHERE name = ?", (room,)).fetchall()
            if not found:
                return None
            room_id, snapshot, base_seq = found[0]
            parts = _snapshot(conn, room_id)
            rows = conn.execute("SELECT seq, data FROM updates WHERE room_id = ? ORDER BY seq", (room_id,)).fetchall()
        if not rows:
            return None
        # The merge runs after the read transaction ends, so it does not pin the WAL meanwhile.
        updates = [data for _, data in rows]
        merged = merge_pieces(parts + updates)
        return _CompactionPlan(
            room_id=room_id,
            base_seq=base_seq,
            max_seq=rows[-1][0],
            rows=len(rows),
            nbytes=sum(map(len, updates)),
            snapshot=merged,
        )

    # reads

    async def load(self, room: str) -> list[bytes]:
        self._check_open()
        _check_room(room)

        def read(conn: sqlite3.Connection) -> list[bytes]:
            with _read_transaction(conn):  # a compaction must not commit between the two SELECTs
                found = conn.execute("SELECT id, snapshot FROM rooms WHERE name = ?", (room,)).fetchall()
                if not found:
                    return []
                room_id = found[0][0]
                parts = _snapshot(conn, room_id)
                rows = conn.execute("SELECT data FROM updates WHERE room_id = ? ORDER BY seq", (room_id,)).fetchall()
            return parts + [data for (data,) in rows]

        return await self._read(read)

    async def log_size(self, room: str) -> tuple[int, int]:
        self._check_open()
        _check_room(room)

        def read(conn: sqlite3.Connection) -> tuple[int, int]:
            count, nbytes = conn.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0) FROM updates"
                " WHERE room_id = (SELECT id FROM rooms WHERE name = ?)",
                (room,),
            ).fetchall()[0]
            return int(count), int(nbytes)

        return await self._read(read)

    async def get_meta(self, room: str, key: str) -> bytes | None:
        self._check_open()
        _check_room(room)

        def read(conn: sqlite3.Connection) -> bytes | None:
            found = conn.execute(
                "SELECT value FROM meta JOIN rooms ON rooms.id = meta.room_id WHERE rooms.name = ? AND meta.key = ?",
                (room, key),
            ).fetchall()
            return bytes(found[0][0]) if found else None

        return await self._read(read)

    async def rooms(self) -> list[str]:
        self._check_open()
        return await self._read(
            lambda conn: [name for (name,) in conn.execute("SELECT name FROM rooms ORDER BY name").fetchall()]
        )
