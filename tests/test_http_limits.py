"""HTTP-level limits of `crdtnb serve` against a real daemon and raw sockets:
request bodies are capped before they are read, and that is all an attacker
without credentials gets out of a huge upload."""

from __future__ import annotations

import asyncio
import base64
import os
import resource
import select
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from crdtnb.users import Role, UserStore

from .conftest import EXAMPLES, Daemon, free_port, rss_bytes
from .test_embedding import _uvicorn

PASSWORD = "correct horse battery"
MiB = 2**20


def _status(response_head: bytes) -> int:
    return int(response_head.split(b" ", 2)[1])


def read_response_head(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """The status line and headers of the response (waits at most ``timeout``)."""
    sock.settimeout(timeout)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return head


def stream_body(port: int, path: str, total: int, headers: dict[str, str] | None = None) -> tuple[bytes, int]:
    """POST a chunked body of up to ``total`` bytes, stopping as soon as the server
    answers. Returns the response head and how many body bytes were sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    sock.sendall((head + "\r\n").encode())
    chunk = b"a" * (256 * 1024)
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    try:
        while sent < total:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            sock.sendall(frame)
            sent += len(chunk)
        else:
            sock.sendall(b"0\r\n\r\n")
        return read_response_head(sock, timeout=30), sent
    finally:
        sock.close()


def declared_body(port: int, path: str, length: int, headers: dict[str, str] | None = None) -> bytes:
    """Announce a ``length`` byte body, send none of it, and read the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    try:
        sock.sendall((head + "\r\n").encode())
        return read_response_head(sock)
    finally:
        sock.close()


@pytest.fixture
def served(daemon_factory: Any, root: Path) -> Daemon:
    UserStore(root / ".crdtnb").add("alice", Role.RUNNER, PASSWORD)
    return daemon_factory()


def test_huge_bodies_are_refused_before_they_are_read(served: Daemon, root: Path) -> None:
    assert served.process is not None
    pid = served.process.pid
    token = {"Authorization": f"token {served.token}"}
    before = rss_bytes(pid)
    # Streamed without a length: the login form (no credentials needed) and an API route.
    for path, headers in (("/login", {}), ("/api/notebooks/nb.ipynb/execute", token)):
        head, sent = stream_body(served.port, path, 160 * MiB, headers)
        assert _status(head) == 413, (path, head)
        assert sent < 32 * MiB, (path, sent)  # answered long before the end
    # A declared length over the limit is answered at once, whether or not the route reads it.
    for path, headers in (("/login", {}), ("/api/notebooks/new.ipynb", {}), ("/api/notebooks/nb.ipynb/execute", token)):
        assert _status(declared_body(served.port, path, 2**30, headers)) == 413, path
    assert not (root / "new.ipynb").exists()  # refused before the endpoint ran
    grown = rss_bytes(pid) - before
    assert grown < 32 * MiB, f"the daemon grew by {grown / MiB:.0f} MiB"
    # A body just under the limits is fine.
    login = httpx.post(f"{served.url}/login", data={"name": "alice", "password": PASSWORD, "pad": "x" * 60_000})
    assert login.status_code == 303 and "crdtnb_session" in login.cookies
    cell = served.notebook("nb.ipynb")["cells"][0]["id"]
    ran = httpx.post(
        f"{served.url}/api/notebooks/nb.ipynb/execute",
        json={"cell_ids": [cell], "padding": "x" * 900_000},
        headers=token,
    )
    assert ran.status_code == 202
    assert served.process.poll() is None
    assert "Traceback" not in served.log()


def test_body_limits_hold_when_crdtnb_is_embedded(tmp_path: Path) -> None:
    """examples/embed_app.py mounts NotebookSync in a host app under plain uvicorn."""
    root = tmp_path / "notebooks"
    shutil.copytree(EXAMPLES, root, ignore=shutil.ignore_patterns("*.py", ".crdtnb"))
    process, url = _uvicorn("embed_app:app", EXAMPLES, root, tmp_path / "host.log")
    try:
        port = int(url.rsplit(":", 1)[1])
        alice = {"x-api-key": "alice-key"}
        before = rss_bytes(process.pid)
        head, sent = stream_body(port, "/collab/api/notebooks/intro.ipynb/execute", 160 * MiB, alice)
        assert _status(head) == 413 and sent < 32 * MiB
        assert _status(declared_body(port, "/collab/api/notebooks/new.ipynb", 2**30, alice)) == 413
        assert rss_bytes(process.pid) - before < 32 * MiB
        assert httpx.post(url + "/collab/api/notebooks/new.ipynb", headers=alice).status_code == 201
    finally:
        process.terminate()
        process.wait(20)


def test_sync_socket_does_not_negotiate_per_message_compression(served: Daemon) -> None:
    """Compressing every relayed update once per peer costs the daemon a core:
    a client that offers permessage-deflate gets a plain websocket."""
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    try:
        sock.sendall(
            (
                f"GET /api/sync/nb.ipynb?token={served.token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
            ).encode()
        )
        head = read_response_head(sock)
    finally:
        sock.close()
    assert head.startswith(b"HTTP/1.1 101"), head
    assert b"sec-websocket-extensions" not in head.lower(), head


# -- slow and idle connections --------------------------------------------------------


def partial_request(port: int) -> socket.socket:
    """A connection that starts a request and never finishes its headers."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    return sock


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes ``sock`` within ``timeout`` (anything it sends is skipped)."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not sock.recv(4096):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        pass
    return False


def request_status(url: str) -> int:
    """The status of a GET on a fresh connection; an empty reply or a reset fails the test."""
    with httpx.Client(timeout=10) as client:
        return client.get(url).status_code


def test_connections_without_complete_headers_are_closed_after_the_header_timeout(daemon_factory: Any) -> None:
    daemon = daemon_factory("--header-timeout", "1")
    silent = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
    partial = partial_request(daemon.port)
    # A keep-alive connection whose second request never completes.
    second = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
    second.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert _status(read_response_head(second)) == 200
    second.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    # Trickling a byte at a time does not extend the deadline.
    trickle = partial_request(daemon.port)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            trickle.sendall(b"x")
        except OSError:
            break
        if closed_by_server(trickle, 0.2):
            break
    else:
        pytest.fail("a connection trickling its headers was never closed")
    for sock in (silent, partial, second):
        assert closed_by_server(sock, 15)
        sock.close()
    trickle.close()
    assert request_status(f"{daemon.url}/api/health") == 200


async def test_over_the_connection_limit_new_connections_get_503_until_some_go(daemon_factory: Any) -> None:
    daemon = daemon_factory("--max-connections", "8", "--header-timeout", "120")
    clients = [await daemon.connect("nb.ipynb") for _ in range(4)]  # websockets count too
    slow = [partial_request(daemon.port) for _ in range(4)]
    # Once the server has taken them all, a new connection is refused with a clear answer.
    deadline = time.monotonic() + 15
    while request_status(f"{daemon.url}/api/health") != 503:
        assert time.monotonic() < deadline, "the limit was never reached"
        await asyncio.sleep(0.05)
    refused = httpx.get(f"{daemon.url}/api/health", timeout=10)
    assert refused.status_code == 503 and "connections" in refused.text
    with pytest.raises(websockets.InvalidStatus) as info:
        await daemon.connect("nb.ipynb")
    assert info.value.response.status_code == 503
    # The connections already open keep working.
    clients[0].insert_text(clients[0].cell_ids()[0], 0, "still here ")
    await clients[1].wait_for(lambda _: clients[1].source(clients[1].cell_ids()[0]).startswith("still here "))
    for sock in slow:
        sock.close()
    deadline = time.monotonic() + 15
    while request_status(f"{daemon.url}/api/health") != 200:
        assert time.monotonic() < deadline, "requests were still refused after connections closed"
        await asyncio.sleep(0.05)
    late = await daemon.connect("nb.ipynb")
    assert late.source(late.cell_ids()[0]).startswith("still here ")
    for client in (*clients, late):
        await client.close()


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


async def test_a_daemon_with_few_file_descriptors_survives_300_slow_connections(daemon_factory: Any) -> None:
    daemon = daemon_factory("--header-timeout", "3", preexec_fn=_low_fd_limit)
    slow: list[socket.socket] = []
    for _ in range(300):
        try:
            slow.append(partial_request(daemon.port))
        except OSError:
            pass  # refused or reset at once: fine, as long as the daemon stays healthy
    try:
        # Under attack a request gets an answer: served, or refused with 503. Never an empty reply.
        for _ in range(5):
            assert request_status(f"{daemon.url}/api/health") in (200, 503)
        for sock in slow:
            assert closed_by_server(sock, 30)
    finally:
        for sock in slow:
            sock.close()
    assert request_status(f"{daemon.url}/api/health") == 200
    client = await daemon.connect("nb.ipynb")
    client.insert_text(client.cell_ids()[0], 0, "after the storm ")
    await client.roundtrip()
    await client.close()
    assert daemon.notebook("nb.ipynb")["cells"][0]["source"].startswith("after the storm ")
    assert daemon.process is not None and daemon.process.poll() is None
    assert "Too many open files" not in daemon.log()


GUARDED_APP = """
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from crdtnb.server import ConnectionLimits, guarded_http_protocol


async def hello(request):
    return PlainTextResponse("hello")


limits = ConnectionLimits(header_timeout=1, max_connections=3)
uvicorn.run(
    Starlette(routes=[Route("/", hello)]),
    host="127.0.0.1",
    port=int(sys.argv[1]),
    http=guarded_http_protocol(limits, sys.argv[2]),
)
"""


@pytest.mark.parametrize("implementation", ["httptools", "h11"])
def test_both_uvicorn_http_implementations_are_guarded(implementation: str, tmp_path: Path) -> None:
    script = tmp_path / "guarded_app.py"
    script.write_text(GUARDED_APP)
    port = free_port()
    log = tmp_path / "guarded.log"
    process = subprocess.Popen([sys.executable, str(script), str(port), implementation], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                if request_status(url) == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        slow = [partial_request(port) for _ in range(3)]
        deadline = time.monotonic() + 15
        while request_status(url) != 503:
            assert time.monotonic() < deadline, "the limit was never reached"
        for sock in slow:
            assert closed_by_server(sock, 15)
            sock.close()
        assert request_status(url) == 200
    finally:
        process.terminate()
        process.wait(20)
