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
from typing import Any, Protocol, cast

from starlette.types import Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from .auth import User
from .protocol import (
    AuthMessage,
    AwarenessMessage,
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
from .stats import TrafficStats, kind_index

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
    """A broadcast hands the same message object to every peer in turn: frame it (and
    find its kind, for the traffic counts) once."""

    __slots__ = ("message", "frame", "kind")

    def __init__(self) -> None:
        self.message: bytes | None = None
        self.frame = b""
        self.kind = 0

    def of(self, message: bytes) -> bytes:
        if message is not self.message:
            self.message, self.frame, self.kind = message, binary_frame(message), kind_index(message)
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

    def __init__(self, websocket: WebSocket, send: Send, limits: TransportLimits, label: str, stats: TrafficStats | None = None) -> None:
        self.websocket = websocket
        self.limits = limits
        self.label = label
        self.stats = stats or TrafficStats()
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
        if not self._backlogged:
            self._write_now(message)
            return
        if self._queued_bytes + len(message) > self.limits.max_queue_bytes or len(self._queue) >= self.limits.max_queue_messages:
            self._overflow()
            return
        self._queue.append(message)
        self._queued_bytes += len(message)
        self._ready.set()

    def _overflow(self) -> None:
        _report_overflow(self.label, self.stats)
        self.close(CloseCode.TRY_AGAIN_LATER, OVERFLOW_REASON)

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


class DirectSocket(Protocol):
    """What a server offers for a connection it lets the app take off ASGI (see
    server.DirectFrames): frames written as they are, messages delivered by callback."""

    def raw_writer(self) -> tuple[Callable[[bytes], None], Callable[[], int]]:
        """The socket's own write and write-buffer-size (no checks: for the hot path)."""
        ...

    def close(self, code: int, reason: str) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def detach(self, handler: DetachedPeer) -> None: ...


class DetachedPeer:
    """A room peer with no task, queue or ASGI call of its own: the server hands it
    each message as it is parsed (``receive``) and it writes frames straight to the
    socket. A broadcast is framed once for all peers. The socket's write buffer is
    the send queue, bounded like WebSocketPeer's. Used when the server supports it
    (``crdtnb serve``); embedded in another ASGI server, WebSocketPeer does the job.
    """

    __slots__ = (
        "socket", "room", "user", "can_write", "limits", "label", "stats", "on_end", "registration",
        "_write", "_buffered", "_max_buffered",
        "_closing", "_joined", "_finished", "_held", "_step", "__weakref__",
    )  # fmt: skip

    def __init__(
        self,
        socket: DirectSocket,
        room: Room,
        *,
        user: User,
        can_write: bool,
        limits: TransportLimits,
        label: str,
        stats: TrafficStats,
        on_end: Callable[[DetachedPeer], None],
    ) -> None:
        self.socket = socket
        self.room = room
        self.user = user
        self.can_write = can_write
        self.limits = limits
        self.label = label
        self.stats = stats
        self.on_end = on_end
        self.registration: object = None  # the owner's record of this connection
        self._write, self._buffered = socket.raw_writer()
        self._max_buffered = limits.max_queue_bytes
        self._closing = False
        self._joined = False
        self._finished = False
        # While a sync step 1 is answered, later messages wait here, in order.
        self._held: list[bytes | None] | None = None
        self._step: asyncio.Future[None] | None = None

    @property
    def closing(self) -> bool:
        return self._closing

    def start(self) -> None:
        """Join the room (unless already closed) and take the connection off ASGI."""
        if not self._closing:
            self._joined = True
            self.room.join(self, self.user, self.can_write)
        self.socket.detach(self)

    def send(self, message: bytes) -> None:
        # Once per peer per relayed message: kept to a few lookups. Nothing is written
        # after our close frame (closing) or once the socket is gone (lost sets closing).
        if self._closing:
            return
        frame = _frames.of(message)
        stats = self.stats
        stats.messages_out[_frames.kind] += 1
        stats.bytes_out[_frames.kind] += len(message)
        if self._buffered() > self._max_buffered:
            _report_overflow(self.label, stats)
            self.close(CloseCode.TRY_AGAIN_LATER, OVERFLOW_REASON)
            return
        self._write(frame)

    def close(self, code: int, reason: str) -> None:
        """Close after what is already written; nothing received from now on is applied.
        The peer leaves its room at once: a client that stopped reading may never
        take the close frame (the server drops it after a timeout)."""
        if not self._closing:
            self._closing = True
            self.stats.closed(code)
            self.socket.close(code, _short(reason))
            self._finish()

    def receive(self, data: bytes | None) -> None:
        """One whole message from the client (None: a text frame)."""
        if self._closing:
            return
        if self._held is not None:
            self._held.append(data)
            return
        try:
            step = handle_frame(data, self, self.room, self.user, self.can_write, self.limits)
        except Exception as exc:
            self.close(*close_for(exc, self.label))
            return
        if step is not None:
            self._held = []
            self.socket.pause_reading()
            self._step = asyncio.ensure_future(step)
            self._step.add_done_callback(self._step_done)

    def _step_done(self, step: asyncio.Future[None]) -> None:
        self._step = None
        if step.cancelled():
            return
        failure = step.exception()
        if failure is not None:
            self._held = None
            self.close(*close_for(cast(Exception, failure), self.label))
            return
        held, self._held = self._held or [], None
        self.socket.resume_reading()
        for i, data in enumerate(held):
            if self._held is not None:  # another step began: the rest waits for it
                self._held.extend(held[i:])
                return
            self.receive(data)

    def lost(self) -> None:
        """The connection is gone (closed by either side, or broken)."""
        self._closing = True
        if self._step is not None:
            self._step.cancel()
        self._finish()

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            if self._joined:
                self.room.leave(self)
            self.on_end(self)


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
        peer.abandon()
        room.leave(peer)


async def _close_quietly(websocket: WebSocket, code: int, reason: str, timeout: float) -> None:
    try:
        await asyncio.wait_for(websocket.close(code, reason), timeout)
    except Exception:
        pass  # the client is unreachable; the server drops the socket when we return


async def _read_frames(websocket: WebSocket, peer: WebSocketPeer, room: Room, user: User, can_write: bool, limits: TransportLimits) -> bool:
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
        try:
            step = handle_frame(event.get("bytes"), peer, room, user, can_write, limits)
            if step is not None:
                await step
        except Exception as exc:
            peer.close(*close_for(exc, peer.label))
            return False
        if peer.closing:
            return False


def handle_frame(
    data: bytes | None, peer: WebSocketPeer | DetachedPeer, room: Room, user: User, can_write: bool, limits: TransportLimits
) -> Coroutine[Any, Any, None] | None:
    """Check and apply one client message (None: a text frame). Most kinds are done
    when this returns; a sync step 1 returns the coroutine that answers it (the answer
    waits until the room's changes are durable). Raises what ``close_for`` maps to a
    close code."""
    if data is None:
        raise ConnectionClosed(CloseCode.UNSUPPORTED_DATA, "text frames are not part of the y-websocket protocol")
    peer.stats.received(data)
    if len(data) > limits.max_frame_bytes:
        raise ConnectionClosed(CloseCode.TOO_BIG, f"frame of {len(data)} bytes exceeds the {limits.max_frame_bytes} byte limit")
    message = parse_message(data)
    if isinstance(message, SyncStep1):
        return room.on_sync_step1(peer, message.state_vector)
    if isinstance(message, (SyncStep2, SyncUpdate)):
        if not can_write:
            # y-protocols' read-only answer: the update is neither applied nor stored.
            peer.send(encode_permission_denied("read-only: this connection may not edit the notebook"))
        else:
            room.on_update(peer, message.update)
    elif isinstance(message, AwarenessMessage):
        room.on_awareness(peer, message.payload, user)
    elif isinstance(message, QueryAwareness):
        room.on_query_awareness(peer)
    elif isinstance(message, AuthMessage):
        raise ProtocolError("clients may not send auth messages")
    return None


def close_for(exc: Exception, label: str) -> tuple[int, str]:
    """The close code and reason for what went wrong with a client's message."""
    if isinstance(exc, ConnectionClosed):
        logger.warning("%s: closing: %s", label, exc.reason)
        return exc.code, exc.reason
    if isinstance(exc, PolicyViolation):
        logger.warning("%s: closing: %s", label, exc)
        return CloseCode.POLICY, str(exc)
    if isinstance(exc, ProtocolError):
        logger.warning("%s: closing on a malformed frame: %s", label, exc)
        return CloseCode.INVALID_PAYLOAD, f"protocol error: {exc}"
    # A bug of ours must cost this connection only, never the room.
    logger.error("%s: closing after an internal error", label, exc_info=exc)
    return CloseCode.INTERNAL_ERROR, "internal error"


OVERFLOW_REASON = "send queue overflow: client too slow, reconnect to resync"


def _report_overflow(label: str, stats: TrafficStats) -> None:
    logger.warning("%s: send queue overflow, disconnecting", label)
    stats.queue_overflows += 1


def _short(reason: str) -> str:
    """Close reasons are limited to 123 bytes of UTF-8."""
    encoded = reason.encode("utf-8")[:123]
    return encoded.decode("utf-8", errors="ignore")
