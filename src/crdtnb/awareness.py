"""Awareness (presence) state of one room, as the server relays it.

The server keeps no state of its own here: it remembers each client's latest
state so newcomers see who is present, and which connection announced which
client ids, so their states can be removed when that connection closes.
Clock rules follow y-protocols' ``awareness.js``.
"""

from __future__ import annotations

from typing import Hashable

from .protocol import AwarenessEntry, write_awareness

NULL_STATE = "null"


class RoomAwareness:
    def __init__(self) -> None:
        self._clocks: dict[int, int] = {}
        self._states: dict[int, str] = {}
        self._owners: dict[int, Hashable] = {}

    @property
    def states(self) -> dict[int, str]:
        """Current states as JSON text, by client id."""
        return dict(self._states)

    def owner(self, client_id: int) -> Hashable | None:
        return self._owners.get(client_id)

    def apply(self, entries: list[AwarenessEntry], owner: Hashable) -> list[AwarenessEntry]:
        """Apply entries sent by ``owner``; return the ones that changed something."""
        accepted = []
        for entry in entries:
            current_clock = self._clocks.get(entry.client_id, 0)
            is_removal = entry.state == NULL_STATE
            newer = current_clock < entry.clock
            same_clock_removal = (
                current_clock == entry.clock and is_removal and entry.client_id in self._states
            )
            if not (newer or same_clock_removal):
                continue
            self._clocks[entry.client_id] = entry.clock
            if is_removal:
                self._states.pop(entry.client_id, None)
                self._owners.pop(entry.client_id, None)
            else:
                self._states[entry.client_id] = entry.state
                self._owners[entry.client_id] = owner
            accepted.append(entry)
        return accepted

    def encode_all(self) -> bytes | None:
        """Every known state, for a client that just joined or asked."""
        if not self._states:
            return None
        return write_awareness(
            [AwarenessEntry(cid, self._clocks[cid], state) for cid, state in self._states.items()]
        )

    def remove_owner(self, owner: Hashable) -> bytes | None:
        """Forget the states announced by a closed connection; return the removal update."""
        removed = [cid for cid, who in self._owners.items() if who == owner]
        if not removed:
            return None
        entries = []
        for cid in removed:
            del self._owners[cid]
            self._states.pop(cid, None)
            entries.append(AwarenessEntry(cid, self._clocks[cid], NULL_STATE))
        return write_awareness(entries)
