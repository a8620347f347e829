"""How `crdtnb serve` runs uvicorn: a deadline for request headers, a cap on
open connections derived from the file-descriptor limit, and credentials kept
out of its logs."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import resource
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, cast
from urllib.parse import unquote_plus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # uvicorn[standard] brings httptools
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode

logger = logging.getLogger("crdtnb.server")

DEFAULT_HEADER_TIMEOUT = 10.0  # seconds for a client to send complete request headers
REFUSAL_GRACE = 1.0  # seconds a refused connection may take to send its request head
MAX_LINGERING_REFUSALS = 32  # refused connections waiting for their request head at a time
WARNING_INTERVAL = 10.0  # seconds between two warnings about refused connections


# -- file descriptors ---------------------------------------------------------------


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            logger.warning("could not raise the file-descriptor limit from %d to %d", soft, target)
    return soft


def default_max_connections(fd_limit: int) -> int:
    """Connections allowed with ``fd_limit`` descriptors: a quarter of them (at
    least 128) stay free for SQLite files, notebook files and kernels' sockets."""
    headroom = max(128, fd_limit // 4)
    return max(16, fd_limit - headroom)


# -- connection limits ------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    max_connections: int = 1000


_REFUSAL_BODY = b"503: too many open connections, try again later\n"
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n"
    b"retry-after: 1\r\nconnection: close\r\n\r\n" + _REFUSAL_BODY
)


class _Refusal(asyncio.Protocol):
    """A connection over the limit: answered 503 at once, before its request is read.

    Closing while the request is still unread would make the kernel reset the
    connection, and the client could lose the answer: so the connection lingers
    until the request head has arrived, the client closes, or a short grace
    passes. Few may linger at a time (each holds a descriptor); beyond that a
    refusal closes at once."""

    lingering = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(_REFUSAL)
        self.timer: asyncio.TimerHandle | None = None
        self.tail = b""
        if _Refusal.lingering >= MAX_LINGERING_REFUSALS:
            self.transport.close()
            return
        _Refusal.lingering += 1
        self.timer = asyncio.get_running_loop().call_later(REFUSAL_GRACE, self.transport.close)

    def data_received(self, data: bytes) -> None:
        seen = self.tail + data
        if b"\r\n\r\n" in seen:
            self.transport.close()  # its request head is read: it gets a clean close
        self.tail = seen[-3:]

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            _Refusal.lingering -= 1


class _Guard:
    """What the guarded protocols share: admission and the header deadline."""

    limits: ClassVar[ConnectionLimits]
    _refused_since_warning = 0
    _last_warning = 0.0

    server_state: Any
    transport: asyncio.Transport

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        if self._admit(transport):
            super().connection_made(transport)  # type: ignore[misc]
            self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)  # type: ignore[misc]

    def _admit(self, transport: asyncio.Transport) -> bool:
        """Hand ``transport`` to a 503 refusal when too many connections are open
        (HTTP and websocket alike: uvicorn counts both in server_state)."""
        open_connections = len(self.server_state.connections)
        if open_connections < self.limits.max_connections:
            return True
        refusal = _Refusal()
        transport.set_protocol(refusal)
        refusal.connection_made(transport)
        _Guard._refused_since_warning += 1
        now = time.monotonic()
        if now - _Guard._last_warning > WARNING_INTERVAL:
            logger.warning(
                "%d connections open (the limit, --max-connections): %d new one(s) refused with 503 since the last warning",
                open_connections,
                _Guard._refused_since_warning,
            )
            _Guard._last_warning = now
            _Guard._refused_since_warning = 0
        return False

    def _arm_header_deadline(self) -> None:
        """Start the clock for the request headers (kept running while bytes trickle in)."""
        if self._header_timer is None:
            loop = asyncio.get_running_loop()
            self._header_timer = loop.call_later(self.limits.header_timeout, self._header_deadline_passed)

    def _disarm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline_passed(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            logger.debug("closing a connection that sent no complete request headers in %gs", self.limits.header_timeout)
            self.transport.close()


class GuardedHttpToolsProtocol(_Guard, HttpToolsProtocol):
    def on_message_begin(self) -> None:
        self._arm_header_deadline()  # also for a next request on a kept-alive connection
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._disarm_header_deadline()
        super().on_headers_complete()


class GuardedH11Protocol(_Guard, H11Protocol):
    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm_header_deadline()  # also for a next request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_header_deadline()  # h11 has the complete request head


def guarded_http_protocol(limits: ConnectionLimits, implementation: Literal["httptools", "h11"] = "httptools") -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools, which uvicorn's "auto" picks, or h11)
    with ``limits`` applied: pass it as ``uvicorn.Config(http=…)``."""
    base = GuardedHttpToolsProtocol if implementation == "httptools" else GuardedH11Protocol
    return type(base.__name__, (base,), {"limits": limits})


# -- websockets ---------------------------------------------------------------------------


class FrameHandler(Protocol):
    def receive(self, data: bytes | None) -> None: ...

    def lost(self) -> None: ...


class DirectConnection(asyncio.Protocol):
    """A websocket connection as the app may hold it directly, offered in its scope
    (``extensions["crdtnb.direct_frames"]``, a transport.DirectSocket).

    Frames are written to the socket as they are: a relayed message is framed once for
    every peer (a server's frames are not masked, so the bytes are the same for all)
    and written with one transport.write, not through the ASGI send and the websocket
    library per message and per peer.

    Once the app has admitted the connection it may ``detach`` it: this object becomes
    the socket's protocol, the ASGI call (its task, frames, receive queue) ends, and
    every message goes to the handler as soon as it is parsed. What an idle connection
    then costs is this object, the websocket parser and the handler; keepalive pings
    come from one Keepalive for all connections, not a timer each."""

    __slots__ = (
        "transport", "conn", "_protocol", "_handler", "_keepalive", "_connections", "_close_sent",
        "_close_timer", "_last_seen", "_ping", "_ping_sent_at", "_fragments", "_text",
    )  # fmt: skip

    def __init__(self, protocol: DirectWebSocketProtocol) -> None:
        self.transport = protocol.transport
        self.conn = protocol.conn
        self._protocol: DirectWebSocketProtocol | None = protocol
        self._handler: FrameHandler | None = None
        self._keepalive: Keepalive | None = None
        self._connections: set[Any] = protocol.connections  # the server's, for its shutdown
        self._close_sent = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._last_seen = 0.0
        self._ping: bytes | None = None
        self._ping_sent_at = 0.0
        self._fragments: list[bytes] = []
        self._text = False

    # -- what the app uses (transport.DirectSocket)

    def write(self, frame: bytes) -> None:
        if not self._closed():
            self.transport.write(frame)

    def buffered(self) -> int:
        return int(self.transport.get_write_buffer_size())

    def raw_writer(self) -> tuple[Callable[[bytes], None], Callable[[], int]]:
        return self.transport.write, self.transport.get_write_buffer_size

    def close(self, code: int, reason: str) -> None:
        """Queue a close frame behind what is buffered, without waiting for the socket
        to drain (an ASGI close would wait for a client that stopped reading)."""
        if self._closed():
            return
        self.conn.send_close(code, reason)
        self._flush()
        self._close_sent = True
        if self._protocol is not None:
            self._protocol.close_sent = True
        # Wait this long for the client's close reply, then drop the socket, and what
        # is still buffered for a client that stopped reading with it.
        self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.transport.abort)

    def pause_reading(self) -> None:
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def detach(self, handler: FrameHandler) -> None:
        """Take the connection off ASGI: from now on the handler gets its messages."""
        protocol, self._protocol = self._protocol, None
        assert protocol is not None, "detached twice"
        if protocol.disconnected:  # gone while the app was admitting it
            handler.lost()
            return
        self._handler = handler
        self._keepalive = Keepalive.of(protocol)
        self._last_seen = time.monotonic()
        waiting = protocol.hand_over()
        self.transport.set_protocol(self)
        self._connections.add(self)  # so that a server shutdown closes it
        self._keepalive.add(self)
        # Messages that arrived while the app was admitting the connection come first.
        for data in waiting:
            handler.receive(data)

    # -- asyncio.Protocol, once detached

    def data_received(self, data: bytes) -> None:
        self._last_seen = time.monotonic()
        conn = self.conn
        conn.receive_data(data)
        handler = self._handler
        for event in conn.events_received():
            if not isinstance(event, Frame):
                continue
            opcode = event.opcode
            if opcode is Opcode.BINARY or opcode is Opcode.TEXT or opcode is Opcode.CONT:
                # websockets bounds a message's size across its fragments (max_size).
                if opcode is not Opcode.CONT:
                    self._text = opcode is Opcode.TEXT
                    self._fragments = []
                self._fragments.append(bytes(event.data))
                if event.fin:
                    fragments, self._fragments = self._fragments, []
                    if handler is not None and not self._close_sent:
                        handler.receive(None if self._text else b"".join(fragments))
            elif opcode is Opcode.PONG:
                if self._ping is not None and bytes(event.data) == self._ping:
                    self._ping = None
            elif opcode is Opcode.CLOSE and self._close_timer is not None:
                self._close_timer.cancel()  # the client answered ours
        self._flush()  # pongs, close replies
        if conn.parser_exc is not None or conn.close_expected():
            self.transport.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._connections.discard(self)
        if self._keepalive is not None:
            self._keepalive.discard(self)
        handler, self._handler = self._handler, None
        if handler is not None:
            handler.lost()

    def shutdown(self) -> None:
        """The server is stopping (uvicorn calls this on every connection)."""
        self.close(1012, "server restarting")
        self.transport.close()  # once the close frame is out (or CLOSE_TIMEOUT is up)

    # -- keepalive (driven by Keepalive)

    def check_alive(self, now: float, interval: float, timeout: float) -> None:
        if self._ping is not None:
            if now - self._ping_sent_at > timeout:
                self._fail(1011, "keepalive ping timeout")
        elif now - self._last_seen > interval and not self._closed():
            self._ping = os.urandom(4)
            self._ping_sent_at = now
            self.conn.send_ping(self._ping)
            self._flush()

    # -- helpers

    def _closed(self) -> bool:
        return self._close_sent or self.transport.is_closing()

    def _flush(self) -> None:
        output = self.conn.data_to_send()
        if output:
            self.transport.write(b"".join(output))

    def _fail(self, code: int, reason: str) -> None:
        if not self._closed():
            self.conn.fail(code, reason)
            self._flush()
        self._close_sent = True
        self.transport.close()


CLOSE_TIMEOUT = 10.0  # seconds a client has to answer our close frame


class Keepalive:
    """Pings idle detached connections, one timer for all of them: every
    ``interval`` / 2 seconds, a connection silent for ``interval`` gets a ping, and
    one that has not answered within ``timeout`` is dropped."""

    _by_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Keepalive]] = weakref.WeakKeyDictionary()

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self._connections: set[DirectConnection] = set()
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, protocol: DirectWebSocketProtocol) -> Keepalive:
        loop = asyncio.get_running_loop()
        keepalive = cls._by_loop.get(loop)
        if keepalive is None:
            interval = protocol.ping_interval or 0.0
            keepalive = cls._by_loop[loop] = cls(interval, protocol.ping_timeout or interval)
        return keepalive

    def add(self, connection: DirectConnection) -> None:
        self._connections.add(connection)
        if self._timer is None and self.interval > 0:
            self._timer = asyncio.get_running_loop().call_later(self.interval / 2, self._tick)

    def discard(self, connection: DirectConnection) -> None:
        self._connections.discard(connection)

    def _tick(self) -> None:
        self._timer = None
        now = time.monotonic()
        for connection in list(self._connections):
            try:
                connection.check_alive(now, self.interval, self.timeout)
            except Exception:
                logger.exception("keepalive")
        if self._connections:
            self._timer = asyncio.get_running_loop().call_later(self.interval / 2, self._tick)


class DirectWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, offering a DirectConnection to the app."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        extensions = cast(dict[str, Any], self.scope.setdefault("extensions", {}))
        extensions["crdtnb.direct_frames"] = DirectConnection(self)

    def hand_over(self) -> list[bytes | None]:
        """Give up the socket to a DirectConnection: no keepalive, reads or close of
        ours from now on. Returns the messages received that the app has not read."""
        self.stop_keepalive()
        self.connections.discard(self)
        self.request.headers.clear()  # copied into the scope; the parser keeps the request
        waiting: list[bytes | None] = []
        while not self.queue.empty():
            event = self.queue.get_nowait()
            if event["type"] == "websocket.receive":
                waiting.append(event.get("bytes"))
        if self.read_paused:  # ASGI reads pause the socket between messages
            self.read_paused = False
            self.transport.resume_reading()
        # What is left of this object goes with the ASGI call; its later "close the
        # socket" (when the app returns) must not reach the real one.
        self.transport = cast(Any, _HandedOver())
        return waiting


class _HandedOver:
    """Stands for a socket this protocol no longer owns."""

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return True

    def write(self, data: bytes) -> None:
        pass


# -- logs ---------------------------------------------------------------------------------

# Query parameters that carry a credential, by their decoded, lower-cased name.
SECRET_QUERY_NAMES = frozenset({"token"})
_QUERY_PARAM = re.compile(r"(?<=[?&])([^=&\s\"'#]+)=([^&\s\"'#]*)")


def redact_query_secrets(text: str) -> str:
    """Replace the value of every query parameter whose name decodes to a secret
    one: Starlette decodes names, so ``?%74oken=`` authenticates like ``?token=``."""

    def hide(match: re.Match[str]) -> str:
        if unquote_plus(match.group(1)).strip().lower() in SECRET_QUERY_NAMES:
            return f"{match.group(1)}=[redacted]"
        return match.group(0)

    return _QUERY_PARAM.sub(hide, text) if "=" in text else text


class RedactTokens(logging.Filter):
    """Keeps ``?token=…`` (however spelled) out of uvicorn's access and websocket logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query_secrets(arg) if isinstance(arg, str) else arg for arg in record.args)
        elif isinstance(record.msg, str) and not record.args:
            record.msg = redact_query_secrets(record.msg)
        return True


def redact_uvicorn_logs() -> None:
    """Call once uvicorn has configured its loggers (``Config.load``)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(RedactTokens())
