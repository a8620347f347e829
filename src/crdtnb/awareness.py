"""Awareness (presence) state of one room, as the server relays it.

The server keeps no state of its own here: it remembers each client's latest
state so newcomers see who is present, and which connection announced which
client ids, so their states can be removed when that connection closes.
Clock rules follow y-protocols' ``awareness.js``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .protocol import AwarenessEntry, PolicyViolation, write_awareness

NULL_STATE = "null"


@dataclass(frozen=True)
class PresenceLimits:
    # A browser tab announces one client id; a few more allow reloads of a shared doc.
    max_clients_per_connection: int = 8
    max_state_bytes: int = 64 * 1024  # a cursor, a selection and a name take a few hundred


class RoomAwareness:
    """Presence of one room. Memory is bounded by the limits times the connections: a
    connection may hold only so many client ids and so large states, and what it held
    (clocks included) is forgotten when it closes."""

    def __init__(self, limits: PresenceLimits | None = None) -> None:
        self.limits = limits or PresenceLimits()
        self._clocks: dict[int, int] = {}
        self._states: dict[int, str] = {}
        self._owners: dict[int, object] = {}
        self._owned: Counter[object] = Counter()

    def owner(self, client_id: int) -> object | None:
        return self._owners.get(client_id)

    def check(self, entries: list[AwarenessEntry], owner: object) -> None:
        """Refuse (PolicyViolation) entries that would take ``owner`` past the limits."""
        limit = self.limits.max_state_bytes
        new_ids = set()
        for entry in entries:
            # Characters never outnumber UTF-8 bytes: encode only when the count of
            # characters alone does not already break the limit.
            if len(entry.state) > limit or len(entry.state.encode("utf-8")) > limit:
                raise PolicyViolation(f"presence state larger than {limit} bytes")
            if entry.state != NULL_STATE and self._owners.get(entry.client_id) is not owner:
                new_ids.add(entry.client_id)
        if self._owned[owner] + len(new_ids) > self.limits.max_clients_per_connection:
            raise PolicyViolation(
                f"more than {self.limits.max_clients_per_connection} presence client ids on one connection"
            )

    def apply(self, entries: list[AwarenessEntry], owner: object) -> list[AwarenessEntry]:
        """Apply entries sent by ``owner``; return the ones that changed something.
        Removals of clients nobody announced are ignored (and cost no memory)."""
        accepted = []
        for entry in entries:
            is_removal = entry.state == NULL_STATE
            if is_removal and entry.client_id not in self._clocks:
                continue
            current_clock = self._clocks.get(entry.client_id, 0)
            newer = current_clock < entry.clock
            same_clock_removal = (
                current_clock == entry.clock and is_removal and entry.client_id in self._states
            )
            if not (newer or same_clock_removal):
                continue
            self._clocks[entry.client_id] = entry.clock
            previous = self._owners.pop(entry.client_id, None)
            if previous is not None:
                self._owned[previous] -= 1
            if is_removal:
                self._states.pop(entry.client_id, None)
                if previous is None:
                    del self._clocks[entry.client_id]
                else:
                    # Kept until its connection closes: an older state arriving late
                    # must not bring the client back.
                    self._owners[entry.client_id] = previous
                    self._owned[previous] += 1
            else:
                self._states[entry.client_id] = entry.state
                self._owners[entry.client_id] = owner
                self._owned[owner] += 1
            accepted.append(entry)
        return accepted

    def encode_all(self) -> bytes | None:
        """Every known state, for a client that just joined or asked."""
        if not self._states:
            return None
        return write_awareness(
            [AwarenessEntry(cid, self._clocks[cid], state) for cid, state in self._states.items()]
        )

    def remove_owner(self, owner: object) -> bytes | None:
        """Forget the states announced by a closed connection; return the removal update."""
        removed = [cid for cid, who in self._owners.items() if who is owner]
        self._owned.pop(owner, None)
        entries = []
        for cid in removed:
            del self._owners[cid]
            clock = self._clocks.pop(cid)
            if self._states.pop(cid, None) is not None:
                entries.append(AwarenessEntry(cid, clock, NULL_STATE))
        return write_awareness(entries) if entries else None

    @property
    def size(self) -> tuple[int, int]:
        """(client ids remembered, UTF-8 bytes of state held): what presence costs this room."""
        return len(self._clocks), sum(len(s.encode("utf-8")) for s in self._states.values())
