"""Counts of the websocket traffic, kept as plain integers on the relay's path (no
locks, no labels, nothing allocated per message) and read when metrics are scraped."""

from __future__ import annotations

# Message kinds by their first bytes: sync has three steps (see docs/protocol.md).
KINDS = ("sync_step1", "sync_step2", "sync_update", "awareness", "auth", "query_awareness", "other")
_SYNC, _AWARENESS, _AUTH, _QUERY = 0, 1, 2, 3


def kind_index(frame: bytes) -> int:
    """Index into KINDS of a frame's message kind (from its first one or two bytes)."""
    if not frame:
        return 6
    first = frame[0]
    if first == _SYNC:
        step = frame[1] if len(frame) > 1 else 9
        return step if step <= 2 else 6
    return {_AWARENESS: 3, _AUTH: 4, _QUERY: 5}.get(first, 6)


class TrafficStats:
    def __init__(self) -> None:
        self.messages_in = [0] * len(KINDS)
        self.bytes_in = [0] * len(KINDS)
        self.messages_out = [0] * len(KINDS)
        self.bytes_out = [0] * len(KINDS)
        self.queue_overflows = 0  # clients disconnected with 1013 for falling behind
        self.closed_by_code: dict[int, int] = {}  # close codes the server sent, by code

    def received(self, frame: bytes) -> None:
        index = kind_index(frame)
        self.messages_in[index] += 1
        self.bytes_in[index] += len(frame)

    def sent(self, message: bytes) -> None:
        index = kind_index(message)
        self.messages_out[index] += 1
        self.bytes_out[index] += len(message)

    def closed(self, code: int) -> None:
        self.closed_by_code[code] = self.closed_by_code.get(code, 0) + 1
