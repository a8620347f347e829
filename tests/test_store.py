"""SQLiteStore against real SQLite files and real pycrdt documents (no mocks)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Array, Decoder, Doc, Map, Text

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:  # the package may not be installed in the venv
    sys.path.insert(0, str(SRC))

from crdtnb.store import (  # noqa: E402
    SCHEMA_VERSION,
    CompactionError,
    SQLiteStore,
    Store,
    StoreClosedError,
    StoreError,
)

# --- helpers ------------------------------------------------------------------------------

ROOTS: dict[str, type] = {"cells": Array, "meta": Map, "state": Map}


def state_vector(state: bytes) -> dict[int, int]:
    """Decoded independently of the store: client -> clock (the byte order is not canonical)."""
    reader = Decoder(state)
    return {reader.read_var_uint(): reader.read_var_uint() for _ in range(reader.read_var_uint())}


def view(doc: Doc[Any]) -> tuple[dict[str, Any], dict[int, int]]:
    """Everything a client sees (every root as plain Python) and what it has seen (its state)."""
    return {name: doc.get(name, type=kind).to_py() for name, kind in ROOTS.items()}, state_vector(doc.get_state())


def rebuild(updates: Sequence[bytes]) -> Doc[Any]:
    doc: Doc[Any] = Doc()
    for update in updates:
        doc.apply_update(update)
    return doc


def text_updates(n: int, prefix: str = "") -> tuple[Doc[Any], list[bytes]]:
    """A doc typed into one update at a time, and those updates."""
    doc: Doc[Any] = Doc()
    text = doc.get("t", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(n):
        text += f"{prefix}{i};"
    return doc, updates


class Client:
    """A notebook editor whose local edits are recorded as the updates it would send."""

    def __init__(self) -> None:
        self.doc: Doc[Any] = Doc()
        self.cells = self.doc.get("cells", type=Array)
        self.meta = self.doc.get("meta", type=Map)
        self.state = self.doc.get("state", type=Map)
        self.outbox: list[bytes] = []
        self._recording = False
        self.doc.observe(self._on_transaction)

    def _on_transaction(self, event: Any) -> None:
        if self._recording:  # remote updates applied by pull() are not ours to send
            self.outbox.append(event.update)

    @contextmanager
    def edit(self) -> Iterator[None]:
        self._recording = True
        try:
            with self.doc.transaction():
                yield
        finally:
            self._recording = False

    def take(self) -> list[bytes]:
        sent, self.outbox = self.outbox, []
        return sent

    def pull(self, updates: Sequence[bytes]) -> None:
        for update in updates:
            self.doc.apply_update(update)


WORDS = [
    "import numpy as np\n",
    "Zoë ",
    "日本語のテキスト",
    "🚀🔥 ",
    "Ωμέγα ",
    "naïve café ",
    "x = 1\n",
    "العربية ",
    "\t# comment\n",
    "plain ",
]


def byte_offset(text: Text, chars: int) -> int:
    # pycrdt indexes Text by UTF-8 bytes; stay on character boundaries
    return len(str(text)[:chars].encode())


def new_cell(rng: random.Random, n: int) -> Map[Any]:
    source = Text("".join(rng.choice(WORDS) for _ in range(rng.randint(0, 4))))
    if rng.random() < 0.7:
        return Map(
            {
                "id": f"cell-{n}",
                "cell_type": "code",
                "source": source,
                "metadata": Map({"tags": ["τag", "x"], "jupyter": Map({"source_hidden": False})}),
                "outputs": Array([Map({"output_type": "stream", "name": "stdout", "text": Text("Zoë says hi\n")})]),
                "execution_count": None,
                "execution_state": "idle",
            }
        )
    return Map(
        {
            "id": f"cell-{n}",
            "cell_type": "markdown",
            "source": source,
            "metadata": Map({}),
            "attachments": {"a.png": {"image/png": "iVBORw0KGgo="}},
        }
    )


def random_edit(client: Client, rng: random.Random, n: int) -> None:
    cells = client.cells
    with client.edit():
        kind = rng.random()
        if len(cells) == 0 or kind < 0.12:
            cells.insert(rng.randint(0, len(cells)), new_cell(rng, n))
        elif kind < 0.45:  # typing
            source = cells[rng.randrange(len(cells))]["source"]
            chars = len(str(source))
            source.insert(byte_offset(source, rng.randint(0, chars)), rng.choice(WORDS))
        elif kind < 0.62:  # deleting a selection
            source = cells[rng.randrange(len(cells))]["source"]
            chars = len(str(source))
            if chars:
                start = rng.randrange(chars)
                stop = min(chars, start + rng.randint(1, 12))
                del source[byte_offset(source, start) : byte_offset(source, stop)]
        elif kind < 0.67:  # deleting a cell
            del cells[rng.randrange(len(cells))]
        elif kind < 0.71:  # moving a cell, the way JupyterLab does: delete and re-insert a copy
            index = rng.randrange(len(cells))
            moved = cells[index].to_py()
            del cells[index]
            cell = Map({k: Text(v) if k == "source" else v for k, v in moved.items() if k != "outputs"})
            cells.insert(rng.randint(0, len(cells)), cell)
        elif kind < 0.82:  # stream output: append, and sometimes trim like a terminal does
            cell = cells[rng.randrange(len(cells))]
            if cell["cell_type"] == "code" and "outputs" in cell and len(cell["outputs"]):
                stream = cell["outputs"][0]["text"]
                stream += rng.choice(WORDS)
                chars = len(str(stream))
                if chars > 40:
                    del stream[0 : byte_offset(stream, 10)]
            else:
                cell["metadata"]["note"] = rng.choice(WORDS)
        elif kind < 0.9:  # metadata set and delete, nested maps
            metadata = cells[rng.randrange(len(cells))]["metadata"]
            key = rng.choice(["collapsed", "scrolled", "ünïcode", "tags"])
            if key in metadata and rng.random() < 0.5:
                del metadata[key]
            else:
                metadata[key] = rng.choice([True, 3, "ßtring", ["a", "b"], {"deep": {"er": 1}}])
        elif kind < 0.95:
            cell = cells[rng.randrange(len(cells))]
            if cell["cell_type"] == "code":
                cell["execution_count"] = n
                cell["execution_state"] = rng.choice(["idle", "running"])
        else:
            client.state["dirty"] = rng.random() < 0.5
            client.meta["metadata"]["kernelspec"] = {"name": "python3", "display_name": f"Python 3 — {n}"}


async def type_notebook(
    store: SQLiteStore, room: str, a: Client, b: Client, rng: random.Random, edits: int, start: int = 0
) -> None:
    """Two clients editing concurrently and syncing through the store, which logs every update."""
    for n in range(start, start + edits):
        author, other = (a, b) if rng.random() < 0.6 else (b, a)
        random_edit(author, rng, n)
        if rng.random() < 0.3:  # let both clients go a few edits without syncing: concurrent edits
            continue
        for client, peer in ((author, other), (other, author)):
            sent = client.take()
            await store.append(room, sent)
            peer.pull(sent)


def notebook_clients() -> tuple[Client, Client, list[bytes]]:
    a, b = Client(), Client()
    with a.edit():
        a.meta["nbformat"] = 4
        a.meta["nbformat_minor"] = 5
        a.meta["metadata"] = Map({"kernelspec": {"name": "python3"}, "language_info": Map({"name": "python"})})
        a.state["dirty"] = False
    first = a.take()
    b.pull(first)
    return a, b, first


async def flush(store: SQLiteStore, room: str, a: Client, b: Client) -> None:
    for client, peer in ((a, b), (b, a)):
        sent = client.take()
        await store.append(room, sent)
        peer.pull(sent)


async def stored_view(store: SQLiteStore, room: str) -> tuple[dict[str, Any], dict[int, int]]:
    return view(rebuild(await store.load(room)))


# --- round trip, schema, reopen -----------------------------------------------------------


async def test_append_load_round_trip_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "crdtnb.sqlite3"  # the parents do not exist yet
    doc_a, updates_a = text_updates(30, "a")
    doc_b, updates_b = text_updates(5, "b")

    async with SQLiteStore(path) as store:
        assert isinstance(store, Store)
        await store.append("a.ipynb", updates_a[:10])
        for update in updates_a[10:]:
            await store.append("a.ipynb", [update])
        await store.append("dir/b.ipynb", updates_b)
        await store.append("empty.ipynb", [])  # nothing to store: does not create the room
        assert await store.load("a.ipynb") == updates_a
        assert await store.log_size("a.ipynb") == (30, sum(map(len, updates_a)))

    async with SQLiteStore(path) as store:
        assert await store.load("a.ipynb") == updates_a
        assert await store.load("dir/b.ipynb") == updates_b
        assert await store.load("missing.ipynb") == []
        assert await store.rooms() == ["a.ipynb", "dir/b.ipynb"]
        assert str(rebuild(await store.load("a.ipynb")).get("t", type=Text)) == str(doc_a.get("t", type=Text))

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    store = SQLiteStore(path)
    with pytest.raises(StoreError, match="newer"):
        await store.start()
    with pytest.raises(StoreClosedError):
        await store.append("r", [b"\x00\x00"])


async def test_unopenable_path_fails_start_instead_of_hanging(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = SQLiteStore(blocker / "db.sqlite3")
    with pytest.raises(StoreError, match="cannot open"):
        await asyncio.wait_for(store.start(), 10)


@asynccontextmanager
async def writer_held(store: SQLiteStore) -> AsyncIterator[None]:
    """The store's writer thread busy in a job of its own until the block ends (its commit
    included): what is queued meanwhile waits."""
    gate, holding = threading.Event(), threading.Event()

    def hold(conn: object) -> None:
        holding.set()
        gate.wait(30)

    holder = store._writer.submit(hold)
    try:
        await asyncio.to_thread(holding.wait, 10)
        yield
    finally:
        gate.set()
    await holder


# --- group commit -------------------------------------------------------------------------


async def test_many_concurrent_appends_share_transactions(tmp_path: Path) -> None:
    rooms, per_room = 50, 200
    docs = [text_updates(per_room, f"r{r}-") for r in range(rooms)]
    async with SQLiteStore(tmp_path / "db.sqlite3") as store:
        commits_before = store.commits
        # interleaved across rooms; per room, in the order the updates were made
        await asyncio.gather(
            *(store.append(f"room-{r}", [docs[r][1][i]]) for i in range(per_room) for r in range(rooms))
        )
        commits = store.commits - commits_before
        for r, (doc, updates) in enumerate(docs):
            stored = await store.load(f"room-{r}")
            assert stored == updates
            assert str(rebuild(stored).get("t", type=Text)) == str(doc.get("t", type=Text))
        assert await store.rooms() == sorted(f"room-{r}" for r in range(rooms))
    assert 1 <= commits < rooms * per_room / 10, commits


async def test_writer_errors_reach_their_caller_and_writer_survives(tmp_path: Path) -> None:
    _, updates = text_updates(3)
    async with SQLiteStore(tmp_path / "db.sqlite3") as store:

        def boom(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO updates (room_id, data) VALUES (?, ?)", (424242, b"orphan"))
            raise RuntimeError("boom")

        def bad_sql(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO no_such_table VALUES (1)")

        # submitted in one loop step, so they share one transaction with the appends around them
        results = await asyncio.gather(
            store.append("r", [updates[0]]),
            store._writer.submit(boom),
            store.append("r", [updates[1]]),
            store._writer.submit(bad_sql),
            return_exceptions=True,
        )
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], RuntimeError) and str(results[1]) == "boom"
        assert isinstance(results[3], sqlite3.OperationalError)
        await store.append("r", [updates[2]])  # the writer thread is still alive
        assert await store.load("r") == updates
        orphans = await store._read(
            lambda c: c.execute("SELECT count(*) FROM updates WHERE room_id = 424242").fetchall()
        )
        assert orphans == [(0,)]  # the failing job's own write was rolled back

        with pytest.raises(TypeError):
            await store.append("r", ["not bytes"])  # type: ignore[list-item]
        with pytest.raises(TypeError):
            await store.append("r", b"a single update")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await store.append("", [updates[0]])


async def test_a_big_write_commits_alone_so_small_ones_do_not_wait_for_it(tmp_path: Path) -> None:
    """A room storing megabytes (a snapshot part, a file's base) must not hold up another
    room's append: an append queued behind a big write is not put in its transaction."""
    _, updates = text_updates(2)
    async with SQLiteStore(tmp_path / "db.sqlite3") as store:
        async with writer_held(store):
            commits_before = store.commits
            # Queued in this order while the writer is busy: one transaction each, not one for all.
            jobs = [
                asyncio.create_task(store.append("small", [updates[0]])),
                asyncio.create_task(store.set_meta("big", "base", b"x" * (2 << 20))),
                asyncio.create_task(store.append("small", [updates[1]])),
            ]
            while store._writer._queue.qsize() < len(jobs):
                await asyncio.sleep(0.005)
        await asyncio.gather(*jobs)
        assert store.commits - commits_before == 1 + 3, "hold's own commit, then the append, the big write, the append"
        assert await store.load("small") == updates


async def test_a_write_in_steps_lets_queued_jobs_go_between_its_steps(tmp_path: Path) -> None:
    """A big write in steps (a snapshot's rows) commits step by step on the writer thread;
    what is queued meanwhile goes between two steps, not after the last one; two such
    writes take turns; closing the store finishes them."""
    async with SQLiteStore(tmp_path / "db.sqlite3") as store:
        done: list[str] = []

        def step(name: str) -> Callable[[object], None]:
            return lambda conn: done.append(name)

        async with writer_held(store):
            first = store._writer.submit_steps([step(f"a{i}") for i in range(1, 4)])
            small = store._writer.submit(step("small"))
            second = store._writer.submit_steps([step(f"b{i}") for i in range(1, 4)])
        await asyncio.gather(first, small, second)
        assert done == ["a1", "small", "b1", "a2", "b2", "a3", "b3"]
        commits = store.commits
        unfinished = store._writer.submit_steps([step(f"c{i}") for i in range(1, 4)])
    assert unfinished.done() and done[-3:] == ["c1", "c2", "c3"]
    assert store.commits - commits == 3


async def test_a_step_that_cannot_be_made_fails_its_caller_not_the_writer(tmp_path: Path) -> None:
    """The steps of a big write are made as they run, on the writer thread: one that
    raises while being made is that write's error, and the writer goes on with the rest."""
    _, updates = text_updates(1)
    async with SQLiteStore(tmp_path / "db.sqlite3") as store:

        def steps() -> Iterator[Callable[[sqlite3.Connection], None]]:
            yield lambda conn: None
            raise ValueError("no second step")

        with pytest.raises(ValueError, match="no second step"):
            await store._writer.submit_steps(steps())
        await store.append("r", updates)  # the writer thread is still there
        assert await store.load("r") == updates


async def test_no_commit_runs_on_the_loop_while_the_wal_is_copied_back(tmp_path: Path) -> None:
    """An idle writer lets a small append commit on the loop's own thread (cheaper than
    two thread hand-offs), but not while the checkpointer copies the WAL back: a commit
    can then wait for the disk, and the loop must not wait with it."""
    _, updates = text_updates(2)
    async with SQLiteStore(tmp_path / "db.sqlite3") as store:
        await store.append("r", [updates[0]])
        await asyncio.sleep(0)  # a new turn of the loop: one inline commit per turn

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO updates (room_id, data) VALUES (1, ?)", (updates[1],))

        inline = store._writer.run_inline(insert)
        assert inline.done()  # committed before run_inline returned
        await asyncio.sleep(0)
        store._checkpointer.copying = True
        try:
            queued = store._writer.run_inline(insert)
            assert not queued.done()
            await queued
        finally:
            store._checkpointer.copying = False


async def test_close_flushes_pending_appends_and_later_calls_fail(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    _, updates = text_updates(300)
    store = SQLiteStore(path)
    with pytest.raises(StoreClosedError, match="not started"):
        await store.append("r", updates[:1])
    await store.start()
    tasks = [asyncio.create_task(store.append("r", [u])) for u in updates]
    await asyncio.sleep(0)  # every task has queued its append, none is committed yet
    await store.close()
    assert all(task.done() and task.exception() is None for task in tasks)
    await store.close()  # idempotent
    with pytest.raises(StoreClosedError, match="closed"):
        await store.append("r", updates[:1])
    with pytest.raises(StoreClosedError):
        await store.load("r")
    async with SQLiteStore(path) as reopened:
        assert await reopened.load("r") == updates


# --- compaction ---------------------------------------------------------------------------


async def test_compaction_rebuilds_the_same_notebook(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    room = "notebooks/Zoë's analysis.ipynb"
    rng = random.Random(1234)
    a, b, first = notebook_clients()

    async with SQLiteStore(path) as store:
        await store.append(room, first)
        await type_notebook(store, room, a, b, rng, edits=600)
        await flush(store, room, a, b)
        expected = view(a.doc)
        assert view(b.doc) == expected  # the two clients converged
        assert len(expected[0]["cells"]) > 5 and len(expected[1]) == 2  # a real, two-author notebook
        log = await store.load(room)
        log_bytes = sum(map(len, log))

        # 1. the log as written
        assert await stored_view(store, room) == expected

        # 2. after compaction: one snapshot row, same notebook, same state vector
        await store.compact(room)
        compacted = await store.load(room)
        assert len(compacted) == 1
        assert len(compacted[0]) < log_bytes  # deleted content was garbage-collected
        assert await store.log_size(room) == (0, 0)
        assert await stored_view(store, room) == expected

        # 3. more edits on top of the snapshot
        await type_notebook(store, room, a, b, rng, edits=300, start=600)
        await flush(store, room, a, b)
        expected = view(a.doc)
        assert len(await store.load(room)) > 1
        assert await stored_view(store, room) == expected

        # compact the snapshot together with the new rows, then keep editing without compacting
        await store.compact(room)
        assert await stored_view(store, room) == expected
        await type_notebook(store, room, a, b, rng, edits=200, start=900)
        await flush(store, room, a, b)
        expected = view(a.doc)
        assert await stored_view(store, room) == expected

    # 4. after closing and reopening
    async with SQLiteStore(path) as store:
        assert await stored_view(store, room) == expected
        await store.compact(room)
        assert await stored_view(store, room) == expected
    async with SQLiteStore(path) as store:
        assert await stored_view(store, room) == expected
        # a client that kept its doc resumes from the stored state without conflicts
        resumed = rebuild(await store.load(room))
        assert state_vector(resumed.get_state()) == state_vector(a.doc.get_state())


async def test_compaction_keeps_updates_whose_dependencies_are_missing(tmp_path: Path) -> None:
    # Yrs leaves such updates out of Doc.get_update(); a snapshot built from it alone loses them.
    alice: Doc[Any] = Doc()
    text = alice.get("t", type=Text)
    sent: list[bytes] = []
    alice.observe(lambda event: sent.append(event.update))
    text += "hello"
    text += " wörld 🚀"
    hello, world = sent
    bob: Doc[Any] = Doc()
    bob.apply_update(alice.get_update())
    bob_sent: list[bytes] = []
    bob.observe(lambda event: bob_sent.append(event.update))
    del bob.get("t", type=Text)[3:8]  # deletes across both of alice's updates
    (deletion,) = bob_sent
    expected = str(bob.get("t", type=Text))

    async with SQLiteStore(tmp_path / "db.sqlite3") as store:
        await store.append("r", [world, deletion])  # "hello" never arrived
        await store.compact("r")
        assert len(await store.load("r")) == 1
        await store.append("r", [hello])
        assert str(rebuild(await store.load("r")).get("t", type=Text)) == expected
        await store.compact("r")
        assert str(rebuild(await store.load("r")).get("t", type=Text)) == expected


async def test_compaction_with_concurrent_appends_loses_nothing(tmp_path: Path) -> None:
    room = "busy.ipynb"
    rng = random.Random(99)
    a, b, first = notebook_clients()
    _, side_updates = text_updates(400, "side")
    async with SQLiteStore(tmp_path / "db.sqlite3") as store:
        await store.append(room, first)
        await type_notebook(store, room, a, b, rng, edits=1500)
        await flush(store, room, a, b)

        n = 1500
        during = 0
        for _ in range(4):
            compaction = asyncio.create_task(store.compact(room))
            side = asyncio.gather(*(store.append("side.ipynb", [u]) for u in side_updates[during % 400 :][:50]))
            while not compaction.done():  # keep typing (and opening the room) while the log is merged
                random_edit(a, rng, n)
                n += 1
                await flush(store, room, a, b)
                during += 1
                if during % 2:  # a load never sees half a compaction
                    assert await stored_view(store, room) == view(a.doc)
            await compaction
            await side
        expected = view(a.doc)
        assert await stored_view(store, room) == expected
        rows, nbytes = await store.log_size(room)
        assert len(await store.load(room)) == rows + 1  # the snapshot, then what came after it
        assert store._log_sizes[room] == (rows, nbytes)  # the in-memory counter stayed exact
        await store.compact(room)
        assert await stored_view(store, room) == expected


async def test_rows_appended_while_compaction_merges_are_kept(tmp_path: Path) -> None:
    # Deterministic interleaving: a job holds the writer, so appends queued meanwhile cannot be
    # in the log the compaction reads, and are committed around its swap.
    doc, updates = text_updates(600)
    head, tail = updates[:500], updates[500:]
    async with SQLiteStore(tmp_path / "db.sqlite3") as store:
        await store.append("r", head)
        # The writer is inside a job with nothing else in its batch ...
        async with writer_held(store):
            appends = [asyncio.create_task(store.append("r", [u])) for u in tail]
            while store._writer._queue.qsize() < len(tail):
                await asyncio.sleep(0.005)
            # ... so the merge reads the log without the appends, whose commits queue before its swap.
            compaction = asyncio.create_task(store.compact("r"))
            while store._writer._queue.qsize() <= len(tail):
                if compaction.done():
                    compaction.result()  # raises what went wrong
                    pytest.fail("the compaction finished while the writer was held")
                await asyncio.sleep(0.005)
        await compaction
        await asyncio.gather(*appends)
        stored = await store.load("r")
        assert stored[1:] == tail  # the snapshot, then every row appended meanwhile
        assert await store.log_size("r") == (len(tail), sum(map(len, tail)))
        assert str(rebuild(stored).get("t", type=Text)) == str(doc.get("t", type=Text))


async def test_compaction_refuses_a_log_it_cannot_merge(tmp_path: Path) -> None:
    _, updates = text_updates(5)
    garbage = b"\xff\xff\xff\xff"
    async with SQLiteStore(tmp_path / "db.sqlite3") as store:
        await store.append("r", updates[:2] + [garbage] + updates[2:])
        with pytest.raises(CompactionError):
            await store.compact("r")
        assert await store.load("r") == updates[:2] + [garbage] + updates[2:]  # untouched
        await store.append("r", [updates[0]])  # and the store still works


async def test_needs_compaction_follows_thresholds_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    _, updates = text_updates(30)
    async with SQLiteStore(path, compact_threshold_rows=10) as store:
        assert not store.needs_compaction("r")
        await store.append("r", updates[:9])
        assert not store.needs_compaction("r")
        await store.append("r", updates[9:10])
        assert store.needs_compaction("r")
        await store.compact("r")
        assert not store.needs_compaction("r")
        await store.append("r", updates[10:25])
        assert store.needs_compaction("r")
    async with SQLiteStore(path, compact_threshold_rows=10) as store:
        assert store.needs_compaction("r")  # counters are seeded from the file
        assert await store.log_size("r") == (15, sum(map(len, updates[10:25])))
    async with SQLiteStore(path, compact_threshold_bytes=100) as store:
        assert store.needs_compaction("r")


# --- crash safety -------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pycrdt import Doc, Map
    from crdtnb.store import SQLiteStore

    async def main(path: str, rooms: int) -> None:
        store = SQLiteStore(path)
        await store.start()
        print("ready", flush=True)

        async def writer(r: int) -> None:
            doc = Doc()
            entries = doc.get("m", type=Map)
            sent: list[bytes] = []
            doc.observe(lambda event: sent.append(event.update))
            for i in range(1_000_000):
                entries[f"k{i}"] = f"Zoë {i}"
                update = sent.pop()
                await store.append(f"room-{r}", [update])
                print(f"ack {r} {i}", flush=True)

        await asyncio.gather(*(writer(r) for r in range(rooms)))

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def test_sigkill_loses_no_acknowledged_update(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rooms = 8
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen(
        [sys.executable, str(script), str(path), str(rooms)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    acked: dict[int, int] = {}
    try:
        assert child.stdout.readline().strip() == "ready"
        while sum(acked.values()) < 1500:
            line = child.stdout.readline()
            assert line, "the child died before it was killed"
            _, r, i = line.split()
            acked[int(r)] = int(i) + 1
    finally:
        child.send_signal(signal.SIGKILL)  # mid-stream: appends are in flight in every room
        child.wait(30)
    for line in child.stdout:  # acks printed before the kill are acks too
        if line.startswith("ack"):
            _, r, i = line.split()
            acked[int(r)] = max(acked.get(int(r), 0), int(i) + 1)
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    async def check() -> None:
        async with SQLiteStore(path) as store:  # opened after a crash: no close() ever ran
            for r in range(rooms):
                stored = await store.load(f"room-{r}")
                entries = rebuild(stored).get("m", type=Map).to_py()
                assert len(stored) >= acked.get(r, 0)
                # every acknowledged update, and only a gap-free prefix of the sequence
                assert entries == {f"k{i}": f"Zoë {i}" for i in range(len(stored))}

    asyncio.run(check())


# --- meta and rooms -----------------------------------------------------------------------


async def test_meta_get_set(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    async with SQLiteStore(path) as store:
        assert await store.get_meta("r", "base") is None
        await store.set_meta("r", "base", b"\x00state")
        await store.set_meta("r", "sha256", "héllo".encode())
        await store.set_meta("other", "base", b"other")
        assert await store.get_meta("r", "base") == b"\x00state"
        await store.set_meta("r", "base", b"\x01newer")  # overwrite
        assert await store.get_meta("r", "base") == b"\x01newer"
        assert await store.get_meta("r", "missing") is None
        assert await store.load("r") == []  # meta is not part of the log
        assert await store.rooms() == ["other", "r"]
        with pytest.raises(TypeError):
            await store.set_meta("r", "base", "str")  # type: ignore[arg-type]
    async with SQLiteStore(path) as store:
        assert await store.get_meta("r", "base") == b"\x01newer"
        assert await store.get_meta("r", "sha256") == "héllo".encode()
        assert await store.get_meta("other", "base") == b"other"


async def test_delete_room(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    _, updates = text_updates(20)
    async with SQLiteStore(path, compact_threshold_rows=5) as store:
        await store.append("gone", updates[:10])
        await store.compact("gone")
        await store.append("gone", updates[10:])
        await store.set_meta("gone", "base", b"x")
        await store.append("kept", updates[:3])
        await store.delete_room("gone")
        await store.delete_room("never-existed")
        assert await store.load("gone") == []
        assert await store.get_meta("gone", "base") is None
        assert await store.log_size("gone") == (0, 0)
        assert not store.needs_compaction("gone")
        assert await store.rooms() == ["kept"]
        assert await store.load("kept") == updates[:3]
        await store.append("gone", updates[:2])  # a new room under the old name starts empty
        assert await store.load("gone") == updates[:2]
    async with SQLiteStore(path) as store:
        assert await store.load("gone") == updates[:2]
        assert await store.rooms() == ["gone", "kept"]


async def test_rename_room_moves_snapshot_updates_and_meta(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    _, updates = text_updates(30)
    async with SQLiteStore(path, compact_threshold_rows=5) as store:
        await store.append("old.ipynb", updates[:10])
        await store.compact("old.ipynb")
        await store.append("old.ipynb", updates[10:20])
        await store.set_meta("old.ipynb", "base", b"x")
        # A stale log under the new name (a file that is gone) is replaced, not merged.
        await store.append("dir/new.ipynb", [b"stale"])
        await store.set_meta("dir/new.ipynb", "base", b"stale")
        before = await store.load("old.ipynb")
        assert store.needs_compaction("old.ipynb")

        # Calls made before the rename land on the old name, calls made after on the new
        # one: the log stays whole when appends race the rename.
        first = asyncio.ensure_future(store.append("old.ipynb", updates[20:25]))
        await asyncio.sleep(0)  # the append is queued
        await store.rename_room("old.ipynb", "dir/new.ipynb")
        await store.append("dir/new.ipynb", updates[25:])
        await first

        assert await store.load("old.ipynb") == []
        assert await store.get_meta("old.ipynb", "base") is None
        assert not store.needs_compaction("old.ipynb")
        assert store.needs_compaction("dir/new.ipynb")
        moved = await store.load("dir/new.ipynb")
        assert moved == before + updates[20:]
        assert await store.get_meta("dir/new.ipynb", "base") == b"x"
        assert await store.rooms() == ["dir/new.ipynb"]
        assert view(rebuild(moved)) == view(rebuild(updates))
        await store.compact("dir/new.ipynb")
        assert not store.needs_compaction("dir/new.ipynb")
        await store.rename_room("never-existed", "other")  # nothing to move: no error
        assert await store.rooms() == ["dir/new.ipynb"]
    async with SQLiteStore(path) as store:
        assert view(rebuild(await store.load("dir/new.ipynb"))) == view(rebuild(updates))
        assert await store.rooms() == ["dir/new.ipynb"]


async def test_wal_is_checkpointed_in_the_background_not_in_commits(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    big = [bytes([i % 251]) * 10_000 for i in range(120)]  # ~1.2 MB of rows
    async with SQLiteStore(path) as store:
        await store.append("r", big)
        # Commits leave the WAL alone (autocheckpoint is off) ...
        deadline = asyncio.get_running_loop().time() + 10
        # ... and the checkpointer copies it into the database file within a few seconds.
        while path.stat().st_size < 1_000_000:
            assert asyncio.get_running_loop().time() < deadline, "no background checkpoint"
            await asyncio.sleep(0.1)
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # truncated at close
    async with SQLiteStore(path) as store:
        assert await store.load("r") == big
