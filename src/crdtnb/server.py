"""How `crdtnb serve` runs uvicorn: a deadline for request headers, a cap on
open connections derived from the file-descriptor limit, and credentials kept
out of its logs."""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, cast
from urllib.parse import unquote_plus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # uvicorn[standard] brings httptools
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

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


def guarded_http_protocol(
    limits: ConnectionLimits, implementation: Literal["httptools", "h11"] = "httptools"
) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools, which uvicorn's "auto" picks, or h11)
    with ``limits`` applied: pass it as ``uvicorn.Config(http=…)``."""
    base = GuardedHttpToolsProtocol if implementation == "httptools" else GuardedH11Protocol
    return type(base.__name__, (base,), {"limits": limits})


# -- websockets ---------------------------------------------------------------------------


class DirectFrames:
    """Lets a crdtnb peer write binary messages straight to its socket: a relayed message
    is framed once for every peer (a server's frames are not masked, so the bytes are the
    same for all) and written with one transport.write, instead of going through the ASGI
    send and the websocket library per message and per peer. The socket's write buffer
    is the peer's queue (transport.WebSocketPeer bounds it)."""

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol

    @property
    def open(self) -> bool:
        protocol = self._protocol
        return bool(protocol.handshake_complete and not protocol.close_sent and not protocol.transport.is_closing())

    def write(self, frame: bytes) -> None:
        self._protocol.transport.write(frame)

    def buffered(self) -> int:
        return int(self._protocol.transport.get_write_buffer_size())

    def close(self, code: int, reason: str) -> None:
        """Queue a close frame behind what is buffered, without waiting for the socket
        to drain (an ASGI close would wait for a client that stopped reading)."""
        protocol = self._protocol
        if protocol.close_sent or protocol.transport.is_closing():
            return
        protocol.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        protocol.conn.send_close(code, reason)
        protocol.transport.write(b"".join(protocol.conn.data_to_send()))
        protocol.close_sent = True
        # As uvicorn does: wait this long for the client's close reply, then drop the socket.
        protocol.close_timer = protocol.loop.call_later(protocol.close_timeout, protocol.transport.close)


class DirectWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, offering DirectFrames to the app in the
    connection's scope (``extensions["crdtnb.direct_frames"]``)."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        extensions = cast(dict[str, Any], self.scope.setdefault("extensions", {}))
        extensions["crdtnb.direct_frames"] = DirectFrames(self)


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
