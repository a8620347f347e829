"""The websocket transport: one connection is one peer of one room.

Reading and writing are two tasks: the reader parses and dispatches frames, the
writer drains a bounded queue, so a client that stops reading only ever fills
its own queue and is then disconnected (it resyncs when it comes back).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from enum import IntEnum

from starlette.websockets import WebSocket, WebSocketDisconnect

from .auth import User
from .protocol import (
    AuthMessage,
    AwarenessMessage,
    Message,
    ProtocolError,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    encode_permission_denied,
    parse_message,
)
from .room import Room

logger = logging.getLogger("crdtnb.transport")


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003  # a text frame
    INVALID_PAYLOAD = 1007  # a malformed frame or an update pycrdt rejects
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # send queue overflow: the client resyncs on reconnect
    BAD_PATH = 4400
    UNAUTHENTICATED = 4401
    FORBIDDEN = 4403
    NOT_FOUND = 4404
    INVALID_NOTEBOOK = 4422


@dataclass(frozen=True)
class TransportLimits:
    max_frame_bytes: int = 16 * 2**20
    max_queue_bytes: int = 64 * 2**20
    max_queue_messages: int = 20_000
    close_timeout: float = 5.0


class ConnectionClosed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class WebSocketPeer:
    """A room peer backed by a websocket, with a bounded outgoing queue."""

    def __init__(self, websocket: WebSocket, limits: TransportLimits, label: str) -> None:
        self.websocket = websocket
        self.limits = limits
        self.label = label
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._ready = asyncio.Event()
        self._close: tuple[int, str] | None = None
        # Set when the writer itself may be stuck behind a client that stopped reading.
        self.overflowed = asyncio.Event()

    @property
    def closing(self) -> bool:
        return self._close is not None

    def send(self, message: bytes) -> None:
        if self._close is not None:
            return
        if (
            self._queued_bytes + len(message) > self.limits.max_queue_bytes
            or len(self._queue) >= self.limits.max_queue_messages
        ):
            logger.warning("%s: send queue overflow, disconnecting", self.label)
            self.close(CloseCode.TRY_AGAIN_LATER, "send queue overflow: client too slow, reconnect to resync")
            return
        self._queue.append(message)
        self._queued_bytes += len(message)
        self._ready.set()

    def close(self, code: int, reason: str) -> None:
        """Ask the writer to close the connection after what is already queued
        (overflow drops the queue: that client will resync anyway)."""
        if self._close is None:
            self._close = (code, reason)
            if code == CloseCode.TRY_AGAIN_LATER:
                self._queue.clear()
                self._queued_bytes = 0
                self.overflowed.set()
            self._ready.set()

    async def run_writer(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                message = self._queue.popleft()
                self._queued_bytes -= len(message)
                await self.websocket.send_bytes(message)
            if self._close is not None:
                code, reason = self._close
                await self.websocket.close(code, _short(reason))
                return


async def run_peer(
    websocket: WebSocket, room: Room, *, user: User, can_write: bool, limits: TransportLimits, label: str
) -> None:
    """Serve an accepted websocket as a peer of ``room`` until either side closes."""
    peer = WebSocketPeer(websocket, limits, label)
    writer = asyncio.create_task(peer.run_writer(), name=f"writer:{label}")
    reader = asyncio.create_task(_read_frames(websocket, peer, room, user, can_write, limits), name=f"reader:{label}")
    overflow = asyncio.create_task(peer.overflowed.wait())
    room.join(peer)
    try:
        done, _ = await asyncio.wait({reader, writer, overflow}, return_when=asyncio.FIRST_COMPLETED)
        if overflow in done:
            # The writer is probably blocked on a full socket: abandon it and close.
            reader.cancel()
            writer.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
            await _close_quietly(websocket, CloseCode.TRY_AGAIN_LATER, "send queue overflow", limits.close_timeout)
        elif writer in done:
            # The socket failed while writing: stop reading.
            reader.cancel()
        else:
            client_gone = reader.exception() is None and reader.result()
            if client_gone:
                writer.cancel()
            else:
                # A protocol error asked for a close: give the writer time to send it.
                try:
                    await asyncio.wait_for(asyncio.shield(writer), limits.close_timeout)
                except (asyncio.TimeoutError, Exception):
                    writer.cancel()
        await asyncio.gather(reader, writer, return_exceptions=True)
    finally:
        overflow.cancel()
        room.leave(peer)


async def _close_quietly(websocket: WebSocket, code: int, reason: str, timeout: float) -> None:
    try:
        await asyncio.wait_for(websocket.close(code, reason), timeout)
    except Exception:
        pass  # the client is unreachable; the server drops the socket when we return


async def _read_frames(
    websocket: WebSocket, peer: WebSocketPeer, room: Room, user: User, can_write: bool, limits: TransportLimits
) -> bool:
    """Read until the client leaves (True) or breaks the protocol (False, close requested)."""
    while True:
        try:
            event = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return True
        if event["type"] == "websocket.disconnect":
            return True
        data = event.get("bytes")
        try:
            if data is None:
                raise ConnectionClosed(CloseCode.UNSUPPORTED_DATA, "text frames are not part of the y-websocket protocol")
            if len(data) > limits.max_frame_bytes:
                raise ConnectionClosed(CloseCode.TOO_BIG, f"frame of {len(data)} bytes exceeds the {limits.max_frame_bytes} byte limit")
            await _dispatch(parse_message(data), peer, room, user, can_write)
        except ConnectionClosed as exc:
            logger.warning("%s: closing: %s", peer.label, exc.reason)
            peer.close(exc.code, exc.reason)
            return False
        except ProtocolError as exc:
            logger.warning("%s: closing on a malformed frame: %s", peer.label, exc)
            peer.close(CloseCode.INVALID_PAYLOAD, f"protocol error: {exc}")
            return False
        if peer.closing:
            return False


async def _dispatch(message: Message, peer: WebSocketPeer, room: Room, user: User, can_write: bool) -> None:
    if isinstance(message, SyncStep1):
        await room.on_sync_step1(peer, message.state_vector)
    elif isinstance(message, (SyncStep2, SyncUpdate)):
        if not can_write:
            # y-protocols' read-only answer: the update is neither applied nor stored.
            peer.send(encode_permission_denied("read-only: this connection may not edit the notebook"))
            return
        room.on_update(peer, message.update)
    elif isinstance(message, AwarenessMessage):
        room.on_awareness(peer, message.payload, user)
    elif isinstance(message, QueryAwareness):
        room.on_query_awareness(peer)
    elif isinstance(message, AuthMessage):
        raise ProtocolError("clients may not send auth messages")


def _short(reason: str) -> str:
    """Close reasons are limited to 123 bytes of UTF-8."""
    encoded = reason.encode("utf-8")[:123]
    return encoded.decode("utf-8", errors="ignore")
