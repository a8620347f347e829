"""Presence: relayed, but bounded per connection (client ids, state size) and forgotten
when a connection closes, so a viewer cannot fill the daemon's memory with it."""

from __future__ import annotations

import asyncio
import json

import pytest

from crdtnb.awareness import PresenceLimits, RoomAwareness
from crdtnb.protocol import AwarenessEntry, PolicyViolation, encode_awareness, read_awareness, write_awareness

from .conftest import Daemon, rss_bytes

MiB = 2**20


def _frame(entries: list[AwarenessEntry]) -> bytes:
    return encode_awareness(write_awareness(entries))


def _state(name: str, padding: int = 0) -> str:
    return json.dumps({"user": {"name": name}, "pad": "x" * padding})


async def test_too_many_client_ids_close_only_that_connection(daemon: Daemon) -> None:
    good = await daemon.connect("nb.ipynb")
    good.set_awareness({"user": {"name": "good"}})
    flooder = await daemon.connect("nb.ipynb")
    await flooder.send_raw(_frame([AwarenessEntry(1000 + i, 1, _state(f"fake {i}")) for i in range(100)]))
    closed = await flooder.wait_closed()
    assert closed.code == 1008 and "client ids" in closed.reason
    watcher = await daemon.connect("nb.ipynb")
    await watcher.wait_for(lambda _: good.doc.client_id in watcher.awareness)
    assert not any(1000 <= cid < 1100 for cid in watcher.awareness)  # none of it was relayed
    await asyncio.gather(good.close(), watcher.close())


async def test_a_huge_presence_state_closes_the_connection(daemon: Daemon) -> None:
    flooder = await daemon.connect("nb.ipynb")
    await flooder.send_raw(_frame([AwarenessEntry(flooder.doc.client_id, 1, _state("big", 8 * MiB))]))
    closed = await flooder.wait_closed()
    assert closed.code == 1008 and "larger than" in closed.reason


async def test_removals_of_unknown_clients_cost_no_memory(daemon: Daemon) -> None:
    assert daemon.process is not None
    viewer = await daemon.connect("nb.ipynb")
    await viewer.roundtrip()
    before = rss_bytes(daemon.process.pid)
    for round_ in range(5):
        base = round_ * 1_000_000
        await viewer.send_raw(_frame([AwarenessEntry(base + i, 1, "null") for i in range(1_000_000)]))
    await viewer.roundtrip(timeout=60)
    assert viewer.closed is None  # removals are allowed, merely ignored
    await viewer.close()
    await asyncio.sleep(0.5)
    grown = rss_bytes(daemon.process.pid) - before
    assert grown < 100 * MiB, f"presence kept {grown / MiB:.0f} MiB"


def test_a_connection_is_forgotten_when_it_closes() -> None:
    presence = RoomAwareness(PresenceLimits(max_clients_per_connection=3))
    a, b = object(), object()
    presence.check([AwarenessEntry(1, 1, "{}"), AwarenessEntry(2, 1, "{}")], a)
    presence.apply([AwarenessEntry(1, 1, "{}"), AwarenessEntry(2, 1, "{}")], a)
    presence.apply([AwarenessEntry(3, 1, "{}")], b)
    presence.apply([AwarenessEntry(2, 2, "null")], a)
    try:
        presence.check([AwarenessEntry(i, 1, "{}") for i in (4, 5)], a)  # 1, 2 (left), 4, 5
    except PolicyViolation:
        pass
    else:
        raise AssertionError("a fourth client id was allowed")
    removal = presence.remove_owner(a)
    assert removal is not None
    assert presence.size == (1, 2)  # only b's client remains, clocks included
    assert presence.remove_owner(a) is None


# -- RoomAwareness in process: clocks, ownership, limits, size ---------------------------


def _entry(client_id: int, clock: int, name: str | None = "x") -> AwarenessEntry:
    """A presence entry; ``name=None`` is the client leaving."""
    return AwarenessEntry(client_id, clock, "null" if name is None else json.dumps({"user": {"name": name}}))


def _shown(presence: RoomAwareness) -> dict[int, tuple[int, str]]:
    """What a newcomer would be sent: client id -> (clock, state)."""
    encoded = presence.encode_all()
    return {} if encoded is None else {e.client_id: (e.clock, e.state) for e in read_awareness(encoded)}


def test_a_newer_clock_replaces_the_state_and_an_older_one_is_ignored() -> None:
    presence, peer = RoomAwareness(), object()
    assert presence.apply([_entry(1, 5, "first")], peer) == [_entry(1, 5, "first")]
    assert presence.apply([_entry(1, 4, "stale")], peer) == []
    assert presence.apply([_entry(1, 5, "same clock")], peer) == []
    assert _shown(presence) == {1: (5, _entry(1, 5, "first").state)}
    assert presence.apply([_entry(1, 6, "second")], peer) == [_entry(1, 6, "second")]
    assert _shown(presence) == {1: (6, _entry(1, 6, "second").state)}


def test_a_removal_with_the_same_clock_is_accepted_once() -> None:
    presence, peer = RoomAwareness(), object()
    presence.apply([_entry(1, 3)], peer)
    assert presence.apply([_entry(1, 3, None)], peer) == [_entry(1, 3, None)]
    assert presence.apply([_entry(1, 3, None)], peer) == []  # already gone
    assert _shown(presence) == {}


def test_a_late_older_state_does_not_bring_a_removed_client_back() -> None:
    presence, peer = RoomAwareness(), object()
    presence.apply([_entry(1, 3)], peer)
    presence.apply([_entry(1, 4, None)], peer)
    assert presence.apply([_entry(1, 2, "late")], peer) == []
    assert presence.apply([_entry(1, 4, "late")], peer) == []
    assert _shown(presence) == {}
    assert presence.owner(1) is peer  # kept, with its clock, until the connection closes


def test_removals_of_clients_nobody_announced_are_ignored() -> None:
    presence = RoomAwareness()
    assert presence.apply([_entry(i, 1, None) for i in range(100)], object()) == []
    assert presence.size == (0, 0)


def test_the_owner_is_the_connection_that_announced_the_client() -> None:
    presence, a, b = RoomAwareness(), object(), object()
    presence.apply([_entry(1, 1), _entry(2, 1)], a)
    presence.apply([_entry(3, 1)], b)
    assert (presence.owner(1), presence.owner(2), presence.owner(3), presence.owner(4)) == (a, a, b, None)


def test_remove_owner_removes_only_that_connections_states() -> None:
    presence, a, b = RoomAwareness(), object(), object()
    presence.apply([_entry(1, 7, "a1"), _entry(2, 2, "a2")], a)
    presence.apply([_entry(3, 1, "b")], b)
    removal = presence.remove_owner(a)
    assert removal is not None
    assert sorted(read_awareness(removal), key=lambda e: e.client_id) == [_entry(1, 7, None), _entry(2, 2, None)]
    assert set(_shown(presence)) == {3}
    assert presence.owner(1) is None and presence.owner(3) is b
    # Forgotten, clocks included: the same client id may come back from a new connection.
    assert presence.apply([_entry(1, 1, "again")], b) == [_entry(1, 1, "again")]


def test_remove_owner_reports_no_removal_for_clients_that_already_left() -> None:
    presence, peer = RoomAwareness(), object()
    presence.apply([_entry(1, 1)], peer)
    presence.apply([_entry(1, 2, None)], peer)
    assert presence.remove_owner(peer) is None
    assert presence.size == (0, 0)  # its clock went too


def test_the_client_id_limit_counts_new_ids_only() -> None:
    presence, peer = RoomAwareness(PresenceLimits(max_clients_per_connection=2)), object()
    presence.check([_entry(1, 1), _entry(2, 1)], peer)
    presence.apply([_entry(1, 1), _entry(2, 1)], peer)
    presence.check([_entry(1, 2), _entry(2, 2)], peer)  # renewals of its own ids
    presence.check([_entry(3, 1, None)], peer)  # a removal announces nothing
    with pytest.raises(PolicyViolation, match="more than 2 presence client ids"):
        presence.check([_entry(3, 1)], peer)
    presence.check([_entry(3, 1)], object())  # another connection has its own allowance


def test_the_client_id_limit_counts_one_id_sent_twice_once() -> None:
    presence, peer = RoomAwareness(PresenceLimits(max_clients_per_connection=1)), object()
    presence.check([_entry(1, 1), _entry(1, 2)], peer)


def test_the_state_size_limit_counts_utf8_bytes() -> None:
    limit = 100
    presence, peer = RoomAwareness(PresenceLimits(max_state_bytes=limit)), object()
    presence.check([AwarenessEntry(1, 1, "x" * limit)], peer)
    presence.check([AwarenessEntry(1, 1, "é" * (limit // 2))], peer)  # 100 bytes
    with pytest.raises(PolicyViolation, match="larger than 100 bytes"):
        presence.check([AwarenessEntry(1, 1, "x" * (limit + 1))], peer)
    with pytest.raises(PolicyViolation, match="larger than 100 bytes"):
        presence.check([AwarenessEntry(1, 1, "é" * (limit // 2 + 1))], peer)  # 51 characters, 102 bytes


def test_size_counts_remembered_clients_and_utf8_bytes_of_state() -> None:
    presence, a, b = RoomAwareness(), object(), object()
    assert presence.size == (0, 0)
    presence.apply([AwarenessEntry(1, 1, "abc"), AwarenessEntry(2, 1, "日本")], a)  # 3 + 6 bytes
    presence.apply([AwarenessEntry(3, 1, "{}")], b)
    assert presence.size == (3, 11)
    presence.apply([_entry(2, 2, None)], a)
    assert presence.size == (3, 5)  # the clock of a client that left is kept while its connection lasts
    presence.remove_owner(a)
    assert presence.size == (1, 2)
