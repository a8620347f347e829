"""The y-websocket wire protocol: parsing and encoding of single frames.

Pure functions with no transport, in the spirit of y-protocols' ``sync.js``: one
small function per message kind. Every frame is validated here before any byte
reaches pycrdt, because yrs can be driven into huge allocations by crafted
lengths (docs/protocol.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from pycrdt import Decoder, write_message, write_var_uint

# lib0 numbers are JavaScript-safe integers.
MAX_SAFE_INTEGER = 2**53 - 1
MAX_VAR_UINT_BYTES = 8  # 7 bits a byte: 8 bytes hold every safe integer


class MessageType(IntEnum):
    SYNC = 0
    AWARENESS = 1
    AUTH = 2
    QUERY_AWARENESS = 3


class SyncType(IntEnum):
    STEP1 = 0
    STEP2 = 1
    UPDATE = 2


class ProtocolError(ValueError):
    """A frame that breaks the protocol; the connection that sent it is closed."""


class PolicyViolation(ProtocolError):
    """A well-formed frame that breaks a limit of the server (closed with 1008)."""


@dataclass(frozen=True, slots=True)
class SyncStep1:
    state_vector: bytes


@dataclass(frozen=True, slots=True)
class SyncStep2:
    update: bytes


@dataclass(frozen=True, slots=True)
class SyncUpdate:
    update: bytes


@dataclass(frozen=True, slots=True)
class AwarenessMessage:
    payload: bytes


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    pass


@dataclass(frozen=True, slots=True)
class AuthMessage:
    denied: bool
    reason: str


Message = SyncStep1 | SyncStep2 | SyncUpdate | AwarenessMessage | QueryAwareness | AuthMessage


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    client_id: int
    clock: int
    state: str  # the JSON text of the state; "null" when the client left


class _Reader:
    """A bounds-checked reader over pycrdt's Decoder (which does not check bounds)."""

    def __init__(self, data: bytes) -> None:
        self._decoder = Decoder(data)

    @property
    def remaining(self) -> int:
        return self._decoder.length

    def var_uint(self) -> int:
        # pycrdt's decoder sums continuation bytes for as long as they last, each into a
        # bigger int: a frame of 0xff bytes would hold the event loop for minutes.
        decoder = self._decoder
        head = decoder.stream[decoder.i0 : decoder.i0 + MAX_VAR_UINT_BYTES]
        if len(head) == MAX_VAR_UINT_BYTES and min(head) >= 0x80:
            raise ProtocolError(f"number longer than {MAX_VAR_UINT_BYTES} bytes")
        try:
            value = decoder.read_var_uint()
        except (IndexError, RuntimeError) as exc:
            raise ProtocolError("truncated number") from exc
        if value > MAX_SAFE_INTEGER:
            raise ProtocolError("number out of range")
        return value

    def var_bytes(self) -> bytes:
        length = self.var_uint()
        if length > self.remaining:
            raise ProtocolError(f"length {length} exceeds the {self.remaining} bytes left")
        decoder = self._decoder
        start = decoder.i0
        decoder.i0 += length
        decoder.length -= length
        return bytes(decoder.stream[start : start + length])

    def var_string(self) -> str:
        try:
            return self.var_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("string is not UTF-8") from exc

    def expect_end(self) -> None:
        if self.remaining:
            raise ProtocolError(f"{self.remaining} trailing bytes")


def parse_message(frame: bytes) -> Message:
    """Parse one binary frame into a message, or raise ProtocolError."""
    if not frame:
        raise ProtocolError("empty frame")
    reader = _Reader(frame)
    kind = reader.var_uint()
    if kind == MessageType.SYNC:
        return _parse_sync(reader)
    if kind == MessageType.AWARENESS:
        payload = reader.var_bytes()
        reader.expect_end()
        return AwarenessMessage(payload)
    if kind == MessageType.QUERY_AWARENESS:
        reader.expect_end()
        return QueryAwareness()
    if kind == MessageType.AUTH:
        denied = reader.var_uint() == 0
        reason = reader.var_string()
        reader.expect_end()
        return AuthMessage(denied, reason)
    raise ProtocolError(f"unknown message type {kind}")


def _parse_sync(reader: _Reader) -> Message:
    sub = reader.var_uint()
    body = reader.var_bytes()
    reader.expect_end()
    if sub == SyncType.STEP1:
        check_state_vector(body)
        return SyncStep1(body)
    if sub == SyncType.STEP2:
        check_update(body)
        return SyncStep2(body)
    if sub == SyncType.UPDATE:
        check_update(body)
        return SyncUpdate(body)
    raise ProtocolError(f"unknown sync message type {sub}")


def check_state_vector(state_vector: bytes) -> None:
    """A state vector is varUint(n) then n (client, clock) pairs, and nothing else."""
    reader = _Reader(state_vector)
    count = reader.var_uint()
    # Each pair takes at least two bytes: refuse counts the bytes cannot hold
    # before yrs preallocates for them.
    if count * 2 > reader.remaining:
        raise ProtocolError(f"state vector claims {count} entries in {reader.remaining} bytes")
    for _ in range(count):
        reader.var_uint()
        reader.var_uint()
    reader.expect_end()


def check_update(update: bytes) -> None:
    """Cheap sanity checks on a v1 update before pycrdt parses it.

    An update starts with varUint(number of client struct groups), each group
    taking at least three bytes; a count the bytes cannot hold is refused.
    """
    reader = _Reader(update)
    groups = reader.var_uint()
    if groups * 3 > reader.remaining:
        raise ProtocolError(f"update claims {groups} struct groups in {reader.remaining} bytes")


def encode_sync_step1(state_vector: bytes) -> bytes:
    return bytes((MessageType.SYNC, SyncType.STEP1)) + write_message(state_vector)


def encode_sync_step2(update: bytes) -> bytes:
    return bytes((MessageType.SYNC, SyncType.STEP2)) + write_message(update)


def encode_update(update: bytes) -> bytes:
    return bytes((MessageType.SYNC, SyncType.UPDATE)) + write_message(update)


def encode_awareness(payload: bytes) -> bytes:
    return bytes((MessageType.AWARENESS,)) + write_message(payload)


def encode_permission_denied(reason: str) -> bytes:
    return bytes((MessageType.AUTH, 0)) + write_message(reason.encode("utf-8"))


def read_awareness(payload: bytes) -> list[AwarenessEntry]:
    """Decode an awareness update into its entries (states stay JSON text)."""
    reader = _Reader(payload)
    count = reader.var_uint()
    if count * 3 > reader.remaining:
        raise ProtocolError(f"awareness claims {count} entries in {reader.remaining} bytes")
    entries = [
        AwarenessEntry(reader.var_uint(), reader.var_uint(), reader.var_string())
        for _ in range(count)
    ]
    reader.expect_end()
    return entries


def write_awareness(entries: list[AwarenessEntry]) -> bytes:
    """Encode awareness entries. pycrdt's own encoder writes the length of the str,
    not of its UTF-8 bytes, which corrupts non-ASCII names (docs/protocol.md)."""
    parts = [write_var_uint(len(entries))]
    for entry in entries:
        parts.append(write_var_uint(entry.client_id))
        parts.append(write_var_uint(entry.clock))
        parts.append(write_message(entry.state.encode("utf-8")))
    return b"".join(parts)
