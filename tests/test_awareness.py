"""Presence: relayed, but bounded per connection (client ids, state size) and forgotten
when a connection closes, so a viewer cannot fill the daemon's memory with it."""

from __future__ import annotations

import asyncio
import json

from crdtnb.awareness import PresenceLimits, RoomAwareness
from crdtnb.protocol import AwarenessEntry, PolicyViolation, encode_awareness, write_awareness

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
