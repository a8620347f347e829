"""The websocket transport: one connection is one peer of one room.

A reader task parses and dispatches frames; writes happen inline when the
socket takes them, and a writer task drains a bounded queue when it does not.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import types
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from enum import IntEnum
from typing import Any, cast

from starlette.types import Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from .auth import User
from .protocol import (
    AuthMessage,
    AwarenessMessage,
    Message,
    PolicyViolation,
    ProtocolError,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
    encode_permission_denied,
    parse_message,
)
from .room import Room
from .settings import TransportLimits
from .stats import TrafficStats

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
    NOT_FOUND = 4404  # also: the notebook was deleted while open
    MOVED = 4410  # the notebook was renamed: the reason and state.moved_to give its new path
    INVALID_NOTEBOOK = 4422


def binary_frame(payload: bytes) -> bytes:
    """A final, unmasked binary websocket frame (RFC 6455 5.2) carrying ``payload``: what
    a server sends, identical for every peer."""
    size = len(payload)
    if size < 126:
        header = bytes((0x82, size))
    elif size < 65536:
        header = bytes((0x82, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x82, 127)) + size.to_bytes(8, "big")
    return header + payload


class _FrameCache:
    """A broadcast hands the same message object to every peer in turn: frame it once."""

    __slots__ = ("message", "frame")

    def __init__(self) -> None:
        self.message: bytes | None = None
        self.frame = b""

    def of(self, message: bytes) -> bytes:
        if message is not self.message:
            self.message, self.frame = message, binary_frame(message)
        return self.frame


_frames = _FrameCache()


class ConnectionClosed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class WebSocketPeer:
    """A room peer backed by a websocket.

    A message is written to the socket at once, inside ``send``, whenever nothing
    is waiting before it: the common case costs no task switch. Only when the
    socket pushes back (the client reads slowly) do messages wait in a bounded
    queue that the writer task drains; a client that stops reading fills only its
    own queue and is then disconnected (it resyncs when it comes back).
    """

    def __init__(
        self, websocket: WebSocket, send: Send, limits: TransportLimits, label: str, stats: TrafficStats | None = None
    ) -> None:
        self.websocket = websocket
        self.limits = limits
        self.label = label
        self.stats = stats or TrafficStats()
        # Under `crdtnb serve`, frames go straight to the socket (server.DirectFrames).
        self._direct = websocket.scope.get("extensions", {}).get("crdtnb.direct_frames")
        self._asgi_send = send
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        # A write that could not finish inline, carried on by a task; until the
        # writer has finished it and drained the queue, later messages queue.
        self._in_flight: asyncio.Future[None] | None = None
        self._backlogged = False
        self._failure: BaseException | None = None
        self._ready = asyncio.Event()
        self._close: tuple[int, str] | None = None
        # Set when the writer itself may be stuck behind a client that stopped reading.
        self.overflowed = asyncio.Event()

    @property
    def closing(self) -> bool:
        return self._close is not None

    def send(self, message: bytes) -> None:
        if self._close is not None or self._failure is not None:
            return
        self.stats.sent(message)
        direct = self._direct
        if direct is not None:
            if not direct.open:
                return
            if direct.buffered() > self.limits.max_queue_bytes:
                self._overflow()
                return
            direct.write(_frames.of(message))
            return
        if not self._backlogged:
            self._write_now(message)
            return
        if (
            self._queued_bytes + len(message) > self.limits.max_queue_bytes
            or len(self._queue) >= self.limits.max_queue_messages
        ):
            self._overflow()
            return
        self._queue.append(message)
        self._queued_bytes += len(message)
        self._ready.set()

    def _overflow(self) -> None:
        logger.warning("%s: send queue overflow, disconnecting", self.label)
        self.stats.queue_overflows += 1
        self.close(CloseCode.TRY_AGAIN_LATER, "send queue overflow: client too slow, reconnect to resync")

    def _write_now(self, message: bytes) -> None:
        try:
            sending = cast(Coroutine[Any, Any, None], self._asgi_send({"type": "websocket.send", "bytes": message}))
            self._in_flight = start_eagerly(sending)
        except Exception as exc:  # the socket is gone: the writer ends the connection
            self._failure = exc
            self._ready.set()
            return
        if self._in_flight is not None:
            self._backlogged = True
            self._ready.set()

    def close(self, code: int, reason: str) -> None:
        """Ask the writer to close the connection after what is already queued
        (overflow drops the queue: that client will resync anyway)."""
        if self._close is None:
            self._close = (code, reason)
            self.stats.closed(code)
            if code == CloseCode.TRY_AGAIN_LATER:
                self._queue.clear()
                self._queued_bytes = 0
                self.overflowed.set()
            self._ready.set()

    async def close_overflowed(self, timeout: float) -> None:
        code, reason = CloseCode.TRY_AGAIN_LATER, "send queue overflow"
        if self._direct is not None:
            self._direct.close(code, reason)  # behind the buffered frames, at once
        else:
            await _close_quietly(self.websocket, code, reason, timeout)

    def abandon(self) -> None:
        """Stop a write still in progress when the connection is over."""
        task = self._in_flight
        if task is not None:
            if task.done() and not task.cancelled():
                task.exception()  # the socket failed; already handled, not worth a log line
            task.cancel()

    async def run_writer(self) -> None:
        """Finish writes that could not complete inline, drain the queue, close."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            if self._failure is not None:
                raise self._failure
            if self._in_flight is not None:
                await self._in_flight
                self._in_flight = None
            while self._queue:
                message = self._queue.popleft()
                self._queued_bytes -= len(message)
                await self._asgi_send({"type": "websocket.send", "bytes": message})
            self._backlogged = False
            if self._close is not None:
                code, reason = self._close
                await self.websocket.close(code, _short(reason))
                return


def start_eagerly(coroutine: Coroutine[Any, Any, None]) -> asyncio.Future[None] | None:
    """Run ``coroutine`` now, up to its first real suspension (what Python 3.12's
    eager tasks do). Returns None when it finished (raising what it raised),
    else a task that carries it on from where it stopped."""
    try:
        pending = coroutine.send(None)
    except StopIteration:
        return None
    task = asyncio.ensure_future(_carry_on(coroutine, pending))
    task.add_done_callback(lambda _: _unwind(coroutine))
    return task


def _unwind(coroutine: Coroutine[Any, Any, None]) -> None:
    """A task cancelled before its first step never reached the coroutine: cancel
    it now so its cleanup runs."""
    if inspect.getcoroutinestate(coroutine) == inspect.CORO_SUSPENDED:
        try:
            coroutine.throw(asyncio.CancelledError())
        except BaseException:
            pass  # it ended, as asked
        else:
            coroutine.close()


async def _carry_on(coroutine: Coroutine[Any, Any, None], pending: Any) -> None:
    await _resume(coroutine, pending)


@types.coroutine
def _resume(coroutine: Coroutine[Any, Any, None], pending: Any) -> Generator[Any, Any, None]:
    # Hand the future the coroutine is waiting on to our task, then feed the
    # task's answers (a result or a cancellation) back into the coroutine.
    while True:
        try:
            answer = yield pending
        except BaseException as exc:
            try:
                pending = coroutine.throw(exc)
            except StopIteration:
                return
        else:
            try:
                pending = coroutine.send(answer)
            except StopIteration:
                return


async def run_peer(
    websocket: WebSocket,
    send: Send,
    room: Room,
    *,
    user: User,
    can_write: bool,
    limits: TransportLimits,
    label: str,
    on_open: Callable[[WebSocketPeer], None] | None = None,
    stats: TrafficStats | None = None,
) -> None:
    """Serve an accepted websocket as a peer of ``room`` until either side closes.

    ``send`` is the connection's ASGI send: messages go straight to it, not
    through Starlette's per-message checks. ``on_open`` is given the peer, e.g.
    to close it later when the connection loses access."""
    peer = WebSocketPeer(websocket, send, limits, label, stats)
    if on_open is not None:
        on_open(peer)
    writer = asyncio.create_task(peer.run_writer(), name=f"writer:{label}")
    reader = asyncio.create_task(_read_frames(websocket, peer, room, user, can_write, limits), name=f"reader:{label}")
    overflow = asyncio.create_task(peer.overflowed.wait())
    room.join(peer, user, can_write)
    try:
        done, _ = await asyncio.wait({reader, writer, overflow}, return_when=asyncio.FIRST_COMPLETED)
        if overflow in done:
            # The writer is probably blocked on a full socket: abandon it and close.
            reader.cancel()
            writer.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
            await peer.close_overflowed(limits.close_timeout)
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
        peer.abandon()
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
        if peer.closing:
            return False  # a close was asked for (e.g. access revoked): nothing more is applied
        data = event.get("bytes")
        try:
            if data is not None:
                peer.stats.received(data)
            if data is None:
                raise ConnectionClosed(CloseCode.UNSUPPORTED_DATA, "text frames are not part of the y-websocket protocol")
            if len(data) > limits.max_frame_bytes:
                raise ConnectionClosed(CloseCode.TOO_BIG, f"frame of {len(data)} bytes exceeds the {limits.max_frame_bytes} byte limit")
            await _dispatch(parse_message(data), peer, room, user, can_write)
        except ConnectionClosed as exc:
            logger.warning("%s: closing: %s", peer.label, exc.reason)
            peer.close(exc.code, exc.reason)
            return False
        except PolicyViolation as exc:
            logger.warning("%s: closing: %s", peer.label, exc)
            peer.close(CloseCode.POLICY, str(exc))
            return False
        except ProtocolError as exc:
            logger.warning("%s: closing on a malformed frame: %s", peer.label, exc)
            peer.close(CloseCode.INVALID_PAYLOAD, f"protocol error: {exc}")
            return False
        except Exception:
            # A bug of ours must cost this connection only, never the room.
            logger.exception("%s: closing after an internal error", peer.label)
            peer.close(CloseCode.INTERNAL_ERROR, "internal error")
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
