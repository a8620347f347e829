"""Lean load-generating clients: a raw asyncio websocket client plus the y-websocket sync
protocol, the same for every server under test.

Why not the ``websockets`` library: with hundreds of clients in one process the client side
must cost as little as possible per frame, or the benchmark measures the clients. Frames
from a server are unmasked; ours use the all-zero mask (allowed by RFC 6455), so no byte is
ever touched in Python. Each frame is stamped with ``time.monotonic_ns()`` in
``data_received``, i.e. as soon as the event loop reads the socket.

Latency probes: the writer sets a Y.Map entry to ``SEQ<seq>T<monotonic ns>E``. Every server
relays that string verbatim inside the Yjs update (a lib0 string), so receivers find it with a
regex on the raw frame without decoding it as a Yjs update.

Hocuspocus speaks the same sync messages with two differences: every message starts with the
document's name (the URL's path is not read), and the first message for a document must be an
Auth message. A ``HocuspocusURL`` tells the client to frame its messages that way.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from pycrdt import Doc, Map, Text, write_var_uint

PROBE = re.compile(rb"SEQ(\d+)T(\d+)E")

# y-websocket message kinds
MSG_SYNC, MSG_AWARENESS = 0, 1
STEP1, STEP2, UPDATE = 0, 1, 2
EMPTY_UPDATE = b"\x00\x00"  # v1: no structs, empty delete set
# Hocuspocus's Auth message (type 2): the client's Token (0); the server's PermissionDenied (1)
# and Authenticated (2)
MSG_AUTH, AUTH_TOKEN, AUTH_PERMISSION_DENIED, AUTH_AUTHENTICATED = 2, 0, 1, 2


def frame_sync(sub: int, body: bytes) -> bytes:
    return bytes((MSG_SYNC, sub)) + write_var_uint(len(body)) + body


def var_string(text: str) -> bytes:
    """A lib0 string: its UTF-8 length as a var uint, then the bytes."""
    data = text.encode()
    return write_var_uint(len(data)) + data


class HocuspocusURL(str):
    """The URL of a Hocuspocus server plus the document to open over it (Hocuspocus reads the
    document's name from every message, not from the URL)."""

    document: str

    def __new__(cls, url: str, document: str) -> HocuspocusURL:
        self = super().__new__(cls, url)
        self.document = document
        return self


def read_var_uint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def sync_body(message: bytes) -> bytes:
    """The payload of a ``0, sub, varUint8Array`` sync message."""
    length, pos = read_var_uint(message, 2)
    return bytes(message[pos : pos + length])


def _ws_header(opcode: int, length: int) -> bytes:
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, 0x80 | length)) + b"\x00\x00\x00\x00"
    if length < 65536:
        return bytes((first, 0x80 | 126)) + length.to_bytes(2, "big") + b"\x00\x00\x00\x00"
    return bytes((first, 0x80 | 127)) + length.to_bytes(8, "big") + b"\x00\x00\x00\x00"


class WSClient(asyncio.Protocol):
    """One websocket connection. ``on_message(payload, t_ns)`` gets each binary message."""

    def __init__(self, on_message: Callable[[bytes, int], None] | None = None) -> None:
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.open = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self._buf = bytearray()
        self._handshaken = False
        self._fragments: list[bytes] = []
        self.bytes_received = 0

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open.done():
            self.open.set_exception(ConnectionError(f"connection lost during handshake: {exc}"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    def data_received(self, data: bytes) -> None:
        t_ns = time.monotonic_ns()
        self.bytes_received += len(data)
        buf = self._buf
        buf += data
        if not self._handshaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            status = head.split(b"\r\n", 1)[0]
            if b" 101 " not in status + b" ":
                if not self.open.done():
                    self.open.set_exception(ConnectionError(f"handshake refused: {status!r}"))
                self.transport.close()  # type: ignore[union-attr]
                return
            self._handshaken = True
            self.open.set_result(True)
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            hdr = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                hdr = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hdr = 10
            masked = b1 & 0x80
            if masked:
                hdr += 4
            if n - pos < hdr + length:
                break
            payload = bytes(buf[pos + hdr : pos + hdr + length])
            if masked:  # servers never mask; handled for completeness
                key = buf[pos + hdr - 4 : pos + hdr]
                payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            pos += hdr + length
            self._frame(b0 & 0x80, b0 & 0x0F, payload, t_ns)
        if pos:
            del buf[:pos]

    # -- frames -------------------------------------------------------------------------------
    def _frame(self, fin: int, opcode: int, payload: bytes, t_ns: int) -> None:
        if opcode == 0x2 or opcode == 0x1:
            if fin:
                if self.on_message is not None:
                    self.on_message(payload, t_ns)
            else:
                self._fragments = [payload]
        elif opcode == 0x0:
            self._fragments.append(payload)
            if fin:
                whole, self._fragments = b"".join(self._fragments), []
                if self.on_message is not None:
                    self.on_message(whole, t_ns)
        elif opcode == 0x9:  # ping
            self._write(0xA, payload)
        elif opcode == 0x8:  # close
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self._write(0x8, payload[:2])
            if self.transport is not None:
                self.transport.close()

    def _write(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_ws_header(opcode, len(payload)) + payload)

    def send(self, payload: bytes) -> None:
        self._write(0x2, payload)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._write(0x8, (1000).to_bytes(2, "big"))
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def ws_connect(
    url: str, on_message: Callable[[bytes, int], None] | None = None, timeout: float = 30, client: WSClient | None = None
) -> WSClient:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("the benchmark only talks to the loopback interface")
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()
    if client is None:
        client = WSClient(on_message)
    transport, _ = await asyncio.wait_for(loop.create_connection(lambda: client, host, port), timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    transport.write(
        (
            f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    try:
        await asyncio.wait_for(client.open, timeout)
    except BaseException:
        transport.abort()
        raise
    return client


class SyncPeer:
    """A y-websocket peer without a document (or with one, if ``doc`` is given).

    * answers the server's step1 with a step2 (its doc's diff, or an empty update),
    * sends its own step1 on open and resolves ``synced`` when the step2 answer arrives,
    * records latency probes found in ``0,2`` updates when ``probes`` is a list.
    """

    def __init__(self, doc: Doc | None = None, probes: list | None = None, apply: bool = False) -> None:
        self.doc = doc
        self.apply = apply and doc is not None
        self.probes = probes
        self.ws: WSClient | None = None
        self.synced: asyncio.Future | None = None
        self.step2_bytes = 0
        self.t_synced = 0
        self.updates_received = 0
        self.update_bytes = 0
        self._local: list[bytes] = []
        self._sub = None
        self._address = b""  # Hocuspocus: the document's name before every message
        self._authenticated: asyncio.Future | None = None

    async def connect(self, url: str, *, sync: bool = True, seed: bytes | None = None, timeout: float = 60) -> SyncPeer:
        """Open the connection and send our step1. ``seed``: an update sent first (so that the
        step2 answer comes after the server has it)."""
        loop = asyncio.get_running_loop()
        self.synced = loop.create_future()
        self._authenticated = loop.create_future()
        self.ws = WSClient(self._on_message)
        await ws_connect(url, timeout=timeout, client=self.ws)
        if isinstance(url, HocuspocusURL):
            self._address = var_string(url.document)
            self._send(bytes((MSG_AUTH, AUTH_TOKEN)) + var_string(""))  # no token: the bench server has no auth hook
            if seed is not None:
                # Hocuspocus holds at most 5 MiB of messages per connection until it has
                # authenticated it: a large seed waits for the answer.
                if not await asyncio.wait_for(asyncio.shield(self._authenticated), timeout):
                    raise ConnectionError("Hocuspocus denied access to the document")
        if seed is not None:
            self._send(frame_sync(UPDATE, seed))
        if sync:
            state = self.doc.get_state() if self.doc is not None else b"\x00"
            self._send(frame_sync(STEP1, state))
        return self

    def _send(self, message: bytes) -> None:
        self.ws.send(self._address + message if self._address else message)  # type: ignore[union-attr]

    async def wait_synced(self, timeout: float = 60) -> None:
        assert self.synced is not None and self.ws is not None
        done, _ = await asyncio.wait({self.synced, self.ws.closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if self.synced in done:
            self.synced.result()  # raises if the server refused us
            return
        if self.ws.closed in done:
            raise ConnectionError(f"closed before sync (code {self.ws.close_code})")
        raise TimeoutError(f"not synced within {timeout} s")

    def _on_message(self, msg: bytes, t_ns: int) -> None:
        if self._address:  # Hocuspocus: skip the document's name
            length, pos = read_var_uint(msg, 0)
            msg = msg[pos + length :]
            if len(msg) >= 2 and msg[0] == MSG_AUTH:
                if self._authenticated is not None and not self._authenticated.done():
                    self._authenticated.set_result(msg[1] == AUTH_AUTHENTICATED)
                if msg[1] == AUTH_PERMISSION_DENIED and self.synced is not None and not self.synced.done():
                    self.synced.set_exception(ConnectionError("Hocuspocus denied access to the document"))
                return
        if len(msg) < 2 or msg[0] != MSG_SYNC:
            return
        sub = msg[1]
        if sub == UPDATE:
            self.updates_received += 1
            self.update_bytes += len(msg)
            if self.probes is not None:
                for m in PROBE.finditer(msg):
                    self.probes.append((int(m.group(1)), t_ns - int(m.group(2)), t_ns))
            if self.apply:
                self.doc.apply_update(sync_body(msg))  # type: ignore[union-attr]
        elif sub == STEP2:
            self.step2_bytes += len(msg)
            if self.apply:
                self.doc.apply_update(sync_body(msg))  # type: ignore[union-attr]
            if self.synced is not None and not self.synced.done():
                self.t_synced = t_ns
                self.synced.set_result(t_ns)
        elif sub == STEP1:
            if self.doc is not None:
                diff = self.doc.get_update(sync_body(msg))
            else:
                diff = EMPTY_UPDATE
            self._send(frame_sync(STEP2, diff))

    # -- writing ------------------------------------------------------------------------------
    def track_local(self) -> None:
        """Send every local transaction of ``doc`` as a ``0,2`` update."""
        assert self.doc is not None
        self._sub = self.doc.observe(lambda event: self._local.append(event.update))

    def flush_local(self) -> int:
        sent = 0
        if self._local and self.ws is not None:
            batch, self._local = self._local, []
            for update in batch:
                frame = frame_sync(UPDATE, update)
                self._send(frame)
                sent += len(frame)
        return sent

    async def roundtrip(self, timeout: float = 120) -> None:
        """Every server here answers a step1 after the messages sent before it."""
        self.synced = asyncio.get_running_loop().create_future()
        state = self.doc.get_state() if self.doc is not None else b"\x00"
        self._send(frame_sync(STEP1, state))
        await self.wait_synced(timeout)

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()


class ProbeWriter:
    """Writes latency probes into a Y.Map root ``bench`` of its own document."""

    def __init__(self, key: str = "p") -> None:
        self.doc = Doc()
        self.map = self.doc.get("bench", type=Map)
        self.peer = SyncPeer(self.doc)
        self.peer.track_local()
        self.seq = 0
        # Writers of one room need keys of their own: a server that holds the document
        # relays a concurrently overwritten entry as deleted, without its probe.
        self.key = key

    def write_probe(self) -> int:
        self.seq += 1
        self.map[self.key] = f"SEQ{self.seq}T{time.monotonic_ns()}E"
        self.peer.flush_local()
        return self.seq


class Typist:
    """Types into a Y.Text root ``typing``: one character per update, like a person."""

    def __init__(self) -> None:
        self.doc = Doc()
        self.text = self.doc.get("typing", type=Text)
        self.peer = SyncPeer(self.doc)
        self.peer.track_local()

    def type_chars(self, n: int) -> None:
        alphabet = "abcdefghijklmnopqrstuvwxyz \n"
        for i in range(n):
            self.text += alphabet[i % len(alphabet)]
            self.peer.flush_local()
