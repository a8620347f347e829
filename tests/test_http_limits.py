"""HTTP-level limits of `crdtnb serve` against a real daemon and raw sockets:
request bodies are capped before they are read, and that is all an attacker
without credentials gets out of a huge upload."""

from __future__ import annotations

import base64
import os
import select
import shutil
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from crdtnb.users import Role, UserStore

from .conftest import EXAMPLES, Daemon
from .test_embedding import _uvicorn

PASSWORD = "correct horse battery"
MiB = 2**20


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


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
