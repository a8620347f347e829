"""One room (in process: a real Room, a real SQLiteStore file, real pycrdt documents;
peers are recording stand-ins for websocket connections): join, durable-before-relay,
no echo, sync answers, presence on leave, remote updates, repairs and hooks."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from pycrdt import Array, Doc, Map, Text

from crdtnb.auth import User
from crdtnb.extensions import ChangesDurable, Extension, Hooks, PeerJoined, PeerLeft
from crdtnb.notebook import load_notebook
from crdtnb.origins import SERVER, PeerOrigin, RemoteOrigin
from crdtnb.protocol import (
    AwarenessEntry,
    AwarenessMessage,
    Message,
    ProtocolError,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    parse_message,
    read_awareness,
    write_awareness,
)
from crdtnb.room import Room
from crdtnb.store import SQLiteStore

ROOM = "nb.ipynb"
ALICE = User("alice", "Alice")
BOB = User("bob", "Bob")


class Peer:
    """A client stand-in: keeps every message the room sends it."""

    def __init__(self, on_send: Callable[[bytes], None] | None = None) -> None:
        self.sent: list[bytes] = []
        self._on_send = on_send

    def send(self, message: bytes) -> None:
        self.sent.append(message)
        if self._on_send is not None:
            self._on_send(message)

    def messages(self) -> list[Message]:
        return [parse_message(frame) for frame in self.sent]

    def updates(self) -> list[bytes]:
        return [m.update for m in self.messages() if isinstance(m, SyncUpdate)]

    def presence(self) -> list[AwarenessEntry]:
        return [entry for m in self.messages() if isinstance(m, AwarenessMessage) for entry in read_awareness(m.payload)]


class Recorder(Extension):
    """Keeps every notification it gets, in order."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def on_peer_joined(self, event: PeerJoined) -> None:
        self.events.append(event)

    def on_peer_left(self, event: PeerLeft) -> None:
        self.events.append(event)

    def on_changes_durable(self, event: ChangesDurable) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]


async def _open_room(store: SQLiteStore, hooks: Hooks) -> Room:
    """A started room holding two code cells, their load already in the log."""
    room = Room(ROOM, Doc(), store, hooks=hooks)
    room.start()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in ("a = 1", "b = 2")]
    load_notebook(room.doc, nb)
    await room.flushed()
    return room


def _replica(room: Room) -> Doc:
    """A client's copy of the room's document."""
    doc = Doc()
    doc.apply_update(room.doc.get_update())
    return doc


def _source(doc: Doc, position: int = 0) -> Text:
    cell = doc.get("cells", type=Array)[position]
    assert isinstance(cell, Map)
    source = cell["source"]
    assert isinstance(source, Text)
    return source


def _type_into(doc: Doc, text: str, position: int = 0) -> bytes:
    """Edit a client's copy; return the update that edit makes."""
    before = doc.get_state()
    source = _source(doc, position)
    source.insert(len(source), text)
    return doc.get_update(before)


def _rows_in_log_file(path: Path) -> int:
    """Updates committed to the store's SQLite file, read from another connection."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM updates").fetchone()[0])


def _presence(name: str) -> str:
    return json.dumps({"user": {"name": name}})


async def _stored_doc(store: SQLiteStore) -> Doc:
    doc = Doc()
    for update in await store.load(ROOM):
        doc.apply_update(update)
    return doc


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "crdtnb.sqlite3") as store:
        yield store


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def room(store: SQLiteStore, recorder: Recorder) -> AsyncIterator[Room]:
    room = await _open_room(store, Hooks([recorder]))
    recorder.events.clear()  # the load
    yield room
    await room.close()


# -- joining -----------------------------------------------------------------------------


async def test_join_sends_the_state_vector_then_everyones_presence(room: Room) -> None:
    first = Peer()
    room.join(first, ALICE)
    assert first.messages() == [SyncStep1(room.doc.get_state())]  # nobody present yet: no presence message
    room.on_awareness(first, write_awareness([AwarenessEntry(11, 1, _presence("claimed"))]), ALICE)

    second = Peer()
    room.join(second, BOB)
    step1, presence = second.messages()
    assert step1 == SyncStep1(room.doc.get_state())
    assert isinstance(presence, AwarenessMessage)
    [entry] = read_awareness(presence.payload)
    assert (entry.client_id, entry.clock) == (11, 1)
    assert json.loads(entry.state)["user"]["account"] == "alice"


# -- persist, then relay -------------------------------------------------------------------


async def test_an_update_is_in_the_store_file_before_another_peer_receives_it(room: Room, store: SQLiteStore) -> None:
    rows_when_received: list[int] = []
    writer = Peer()
    reader = Peer(on_send=lambda _: rows_when_received.append(_rows_in_log_file(store.path)))
    room.join(writer, ALICE)
    room.join(reader, BOB)
    rows_when_received.clear()  # the join messages
    rows_before = _rows_in_log_file(store.path)

    update = _type_into(_replica(room), " # typed")
    room.on_update(writer, update)
    assert reader.updates() == []  # nothing relayed before the store confirmed it
    await room.flushed()

    assert reader.updates() == [update]
    assert rows_when_received == [rows_before + 1]  # the row was committed when the relay happened
    assert str(_source(await _stored_doc(store))) == "a = 1 # typed"


async def test_an_update_is_not_echoed_to_its_sender(room: Room) -> None:
    writer, other = Peer(), Peer()
    room.join(writer, ALICE)
    room.join(other, BOB)
    update = _type_into(_replica(room), "!")
    room.on_update(writer, update)
    await room.flushed()
    assert writer.updates() == []
    assert other.updates() == [update]


async def test_a_server_change_is_stored_and_relayed_to_every_peer(room: Room, store: SQLiteStore) -> None:
    first, second = Peer(), Peer()
    room.join(first)
    room.join(second)
    _source(room.doc, 1).insert(0, "# server\n")
    await room.flushed()
    assert len(first.updates()) == len(second.updates()) == 1
    assert str(_source(await _stored_doc(store), 1)) == "# server\nb = 2"


async def test_a_rejected_update_changes_nothing(room: Room, store: SQLiteStore) -> None:
    writer, other = Peer(), Peer()
    room.join(writer)
    room.join(other)
    before = room.doc.get_update()
    with pytest.raises(ProtocolError):
        room.on_update(writer, b"\x01\x01\xff\xff\xff\x01\x00")
    await room.flushed()
    assert room.doc.get_update() == before
    assert other.updates() == [] and len(await store.load(ROOM)) == 1  # the load only


# -- answering a sync step 1 -------------------------------------------------------------


async def test_step1_is_answered_with_exactly_what_the_peer_lacks(room: Room) -> None:
    peer = Peer()
    room.join(peer)
    replica = _replica(room)
    _source(room.doc, 1).insert(0, "x")  # a change the peer has not seen

    await room.on_sync_step1(peer, replica.get_state())
    [answer] = [m for m in peer.messages() if isinstance(m, SyncStep2)]
    assert answer.update == room.doc.get_update(replica.get_state())
    assert len(answer.update) < len(room.doc.get_update())  # not the whole document
    replica.apply_update(answer.update)
    assert replica.get_state() == room.doc.get_state()
    assert str(_source(replica, 1)) == "xb = 2"


async def test_a_peer_that_lacks_nothing_gets_an_empty_answer(room: Room) -> None:
    peer = Peer()
    room.join(peer)
    await room.on_sync_step1(peer, room.doc.get_state())
    assert peer.messages()[-1] == SyncStep2(b"\x00\x00")


async def test_step1_is_answered_once_what_the_answer_holds_is_durable(room: Room, store: SQLiteStore) -> None:
    rows_when_answered: list[int] = []
    peer = Peer(on_send=lambda frame: rows_when_answered.append(_rows_in_log_file(store.path)))
    room.join(peer)
    rows_before = _rows_in_log_file(store.path)
    _source(room.doc).insert(0, "# new\n")  # captured, not yet stored
    await room.on_sync_step1(peer, Doc().get_state())
    assert isinstance(peer.messages()[-1], SyncStep2)
    assert rows_when_answered[-1] == rows_before + 1


async def test_a_state_vector_pycrdt_cannot_decode_is_a_protocol_error(room: Room) -> None:
    peer = Peer()
    room.join(peer)
    with pytest.raises(ProtocolError, match="invalid state vector"):
        await room.on_sync_step1(peer, b"\x01\x01")
    assert not any(isinstance(m, SyncStep2) for m in peer.messages())


# -- presence ------------------------------------------------------------------------------


async def test_leaving_removes_the_peers_presence_and_tells_the_others(room: Room) -> None:
    leaving, staying = Peer(), Peer()
    room.join(leaving, ALICE)
    room.join(staying, BOB)
    room.on_awareness(leaving, write_awareness([AwarenessEntry(11, 4, _presence("Alice"))]), ALICE)
    assert [e.client_id for e in staying.presence()] == [11]

    room.leave(leaving)
    removal = staying.presence()[-1]
    assert (removal.client_id, removal.clock, removal.state) == (11, 4, "null")
    assert room.awareness.size == (0, 0)
    assert leaving not in room.peers
    newcomer = Peer()
    room.join(newcomer)
    assert newcomer.presence() == []  # nothing left to show


async def test_presence_is_stamped_with_the_authenticated_user(room: Room) -> None:
    peer, other = Peer(), Peer()
    room.join(peer, ALICE)
    room.join(other, BOB)
    claimed = json.dumps({"user": {"name": "Mallory", "color": "red"}, "cursor": 3})
    room.on_awareness(peer, write_awareness([AwarenessEntry(11, 1, claimed)]), ALICE)
    [entry] = other.presence()
    state = json.loads(entry.state)
    assert state == {"user": {"name": "Alice", "color": "red", "account": "alice"}, "cursor": 3}
    assert peer.presence() == [entry]  # the sender gets its renewal back


async def test_a_peer_cannot_speak_for_another_peers_client_id(room: Room) -> None:
    owner, intruder, watcher = Peer(), Peer(), Peer()
    for peer in (owner, intruder, watcher):
        room.join(peer)
    room.on_awareness(owner, write_awareness([AwarenessEntry(11, 1, _presence("owner"))]))
    room.on_awareness(intruder, write_awareness([AwarenessEntry(11, 9, "null")]))
    assert [e.state for e in watcher.presence()] == [_presence("owner")]
    assert room.awareness.owner(11) is owner


# -- updates from another daemon -------------------------------------------------------------


async def test_a_remote_update_is_relayed_to_every_peer_but_not_stored(room: Room, store: SQLiteStore, recorder: Recorder) -> None:
    first, second = Peer(), Peer()
    room.join(first)
    room.join(second)
    update = _type_into(_replica(room), " # from node 2")
    origin = RemoteOrigin("node-2")

    room.apply_remote(update, origin)
    await room.flushed()

    assert first.updates() == second.updates() == [update]
    assert len(await store.load(ROOM)) == 1  # the load only: the other daemon stored it
    assert str(_source(room.doc)) == "a = 1 # from node 2"
    [durable] = recorder.of(ChangesDurable)
    assert [change.origin for change in durable.changes] == [origin]


# -- schema repairs --------------------------------------------------------------------------


async def test_a_repair_goes_to_everyone_with_the_update_in_one_message(room: Room, store: SQLiteStore) -> None:
    attacker, other = Peer(), Peer()
    room.join(attacker, ALICE)
    room.join(other, BOB)
    replica = _replica(room)
    before = replica.get_state()
    cell = replica.get("cells", type=Array)[0]
    cell["cell_type"] = "evil"
    _source(replica).insert(0, "# kept\n")

    room.on_update(attacker, replica.get_update(before))
    await room.flushed()

    assert len(attacker.updates()) == len(other.updates()) == 1  # the sender too, in one frame
    assert attacker.updates() == other.updates()
    replica.apply_update(attacker.updates()[0])
    assert len(await store.load(ROOM)) == 2  # the load, then the update and its repair as one row
    for doc in (replica, _replica(room), await _stored_doc(store)):
        repaired = doc.get("cells", type=Array)[0]
        assert repaired["cell_type"] == "code"
        assert str(repaired["source"]) == "# kept\na = 1"


async def test_a_repaired_update_is_still_credited_to_its_sender(room: Room, recorder: Recorder) -> None:
    """Hooks (an audit log, metrics by origin) must see who sent an update that needed
    a repair: those are the ones worth auditing."""
    attacker = Peer()
    room.join(attacker, ALICE)
    replica = _replica(room)
    before = replica.get_state()
    replica.get("cells", type=Array)[0]["cell_type"] = "evil"
    room.on_update(attacker, replica.get_update(before))
    await room.flushed()
    [durable] = recorder.of(ChangesDurable)
    [change] = durable.changes
    assert change.user == ALICE
    assert isinstance(change.origin, PeerOrigin) and change.origin.peer is attacker


async def test_an_update_that_needs_no_repair_keeps_its_sender_origin(room: Room, recorder: Recorder) -> None:
    writer = Peer()
    room.join(writer, ALICE)
    room.on_update(writer, _type_into(_replica(room), "!"))
    await room.flushed()
    [durable] = recorder.of(ChangesDurable)
    [change] = durable.changes
    assert isinstance(change.origin, PeerOrigin) and change.origin.peer is writer


# -- hooks ------------------------------------------------------------------------------------


async def test_hooks_hear_of_joins_and_leaves_with_the_user(room: Room, recorder: Recorder) -> None:
    editor, viewer = Peer(), Peer()
    room.join(editor, ALICE)
    room.join(viewer, BOB, can_write=False)
    room.leave(viewer)
    joined, left = recorder.of(PeerJoined), recorder.of(PeerLeft)
    assert [(e.room, e.peer, e.user, e.can_write) for e in joined] == [(room, editor, ALICE, True), (room, viewer, BOB, False)]
    assert [(e.room, e.peer, e.user) for e in left] == [(room, viewer, BOB)]


async def test_changes_durable_carries_origins_users_bytes_and_latency(room: Room, recorder: Recorder) -> None:
    writer = Peer()
    room.join(writer, ALICE)
    update = _type_into(_replica(room), " # alice")
    room.on_update(writer, update)
    await room.flushed()
    _source(room.doc, 1).insert(0, "# server\n")
    await room.flushed()

    peer_batch, server_batch = recorder.of(ChangesDurable)
    [by_alice] = peer_batch.changes
    assert peer_batch.room is room
    assert by_alice.update == update and by_alice.nbytes == len(update) == peer_batch.nbytes
    assert by_alice.user == ALICE
    assert isinstance(by_alice.origin, PeerOrigin) and by_alice.origin.peer is writer
    assert by_alice.latency >= 0
    [by_server] = server_batch.changes
    assert by_server.origin is SERVER and by_server.user is None
    assert by_server.latency >= 0 and by_server.nbytes > 0


async def test_a_failing_hook_harms_neither_the_room_nor_the_other_hooks(store: SQLiteStore) -> None:
    class Broken(Extension):
        def on_peer_joined(self, event: PeerJoined) -> None:
            raise RuntimeError("boom")

        def on_changes_durable(self, event: ChangesDurable) -> None:
            raise RuntimeError("boom")

    recorder = Recorder()
    room = await _open_room(store, Hooks([Broken(), recorder]))
    recorder.events.clear()
    try:
        writer, reader = Peer(), Peer()
        room.join(writer, ALICE)
        room.join(reader, BOB)
        update = _type_into(_replica(room), "!")
        room.on_update(writer, update)
        await room.flushed()
        assert reader.updates() == [update]
        assert len(recorder.of(PeerJoined)) == 2 and len(recorder.of(ChangesDurable)) == 1
    finally:
        await room.close()


async def test_a_batch_committed_together_reaches_each_peer_as_one_merged_message(room: Room) -> None:
    """Updates committed in one batch (they arrived while the store was busy) are relayed
    as one message per run of one sender: fewer frames as the load rises, and every peer
    ends with the room's document."""
    alice, bob, carol = Peer(), Peer(), Peer()
    for peer, user in ((alice, ALICE), (bob, BOB), (carol, None)):
        room.join(peer, user)
    alices, bobs, carols = _replica(room), _replica(room), _replica(room)
    for text in ("x", "y", "z"):  # all applied before the pipeline runs: one batch
        room.on_update(alice, _type_into(alices, text))
    for text in ("1", "2"):
        room.on_update(bob, _type_into(bobs, text, position=1))
    await room.flushed()
    assert (len(alice.updates()), len(bob.updates()), len(carol.updates())) == (1, 1, 2)
    for peer, replica in ((alice, alices), (bob, bobs), (carol, carols)):
        for update in peer.updates():
            replica.apply_update(update)
        assert (str(_source(replica)), str(_source(replica, 1))) == ("a = 1xyz", "b = 212")
