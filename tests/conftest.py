"""Shared fixtures: a real crdtnb daemon in a subprocess on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest

from crdtnb.client import NotebookClient, connect
from crdtnb.compaction import Compaction
from crdtnb.daemon import Daemon as Core
from crdtnb.filesync import FileSyncExtension
from crdtnb.protocol import encode_sync_step1
from crdtnb.settings import Settings
from crdtnb.store import Store

TOKEN = "test-token-not-secret"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_notebook(path: Path, sources: list[str], cell_type: str = "code") -> Path:
    nb = nbformat.v4.new_notebook()
    maker = nbformat.v4.new_code_cell if cell_type == "code" else nbformat.v4.new_markdown_cell
    nb.cells = [maker(source) for source in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def rss_bytes(pid: int) -> int:
    """A process's resident memory, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def read_sources(path: Path) -> list[str]:
    """Cell sources as saved on disk (nbformat splits them into lines)."""
    return ["".join(cell["source"]) for cell in json.loads(path.read_text())["cells"]]


class Daemon:
    """``crdtnb serve`` as a child process, started and stopped by the test."""

    def __init__(
        self,
        root: Path,
        *args: str,
        token: str = TOKEN,
        state_dir: Path | None = None,
        preexec_fn: Callable[[], Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.preexec_fn = preexec_fn  # e.g. resource limits for the child
        self.args = list(args)
        self.token = token
        self.state_dir = state_dir
        self.env = env  # variables set on top of the test's environment
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root.parent / f"daemon-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Daemon:
        cmd = [sys.executable, "-m", "crdtnb", "serve", str(self.root), "--port", str(self.port), "--token", self.token]
        if self.state_dir is not None:
            cmd += ["--state-dir", str(self.state_dir)]
        cmd += self.args
        log = open(self.log_path, "ab")
        env = {**os.environ, **self.env} if self.env else None
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=self.preexec_fn, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"daemon did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM: the daemon saves everything and exits."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.process = None
        return code

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def restart(self, same_port: bool = False) -> Daemon:
        """Start again, on a new port unless ``same_port`` (where clients reconnect)."""
        if not same_port:
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
        return self.start()

    async def connect(self, path: str, **kwargs: Any) -> NotebookClient:
        kwargs.setdefault("token", self.token)
        return await connect(self.url, path, **kwargs)

    def open_raw_websocket(self, path: str) -> socket.socket:
        """A websocket client on a plain socket that completes the handshake and asks
        for a sync, then reads only when the test does. A small fixed receive buffer
        keeps the kernel from absorbing megabytes on its behalf."""
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32_768)
        sock.sendall(
            (
                f"GET /api/sync/{path}?token={self.token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        frame = encode_sync_step1(b"\x00")
        mask = os.urandom(4)
        sock.sendall(bytes([0x82, 0x80 | len(frame)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(frame)))
        return sock

    def get(self, route: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{route}", params={"token": self.token}, timeout=10, **kwargs)

    def post(self, route: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{route}", params={"token": self.token}, timeout=10, **kwargs)

    def notebook(self, path: str) -> dict[str, Any]:
        response = self.get(f"/api/notebooks/{path}")
        response.raise_for_status()
        return response.json()

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/api/health", timeout=5).json()


@asynccontextmanager
async def in_process(root: Path, store: Store | None = None, extensions: Sequence[object] = (), **sections: Any) -> AsyncIterator[Core]:
    """The daemon's core in this process (no HTTP): its files and compaction extensions,
    a state directory beside ``root``, settings sections as given."""
    settings = Settings(root=root, state_dir=root.parent / "state", **sections)
    builtin = [FileSyncExtension(settings.files), Compaction(settings.rooms.compact_min_interval)]
    async with Core(settings, store=store, extensions=[*builtin, *extensions]) as core:
        yield core


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """A real uvicorn server for ``app`` on 127.0.0.1, in this process and event loop
    (so a test can see what the app's objects see); yields its base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", ws_per_message_deflate=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 30
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        assert time.monotonic() < deadline, "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 60)


class RedisServer:
    """A redis-server of the test's own (never the system service), with AOF on."""

    def __init__(self, directory: Path, appendfsync: str = "always") -> None:
        self.directory = directory
        self.appendfsync = appendfsync
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        cmd = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--save", "", "--appendonly", "yes", "--appendfsync", self.appendfsync, "--daemonize", "no",
            "--protected-mode", "no",
        ]
        log = open(self.directory / "redis.log", "ab")
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
        self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def restart(self) -> RedisServer:
        """Start again on the same port and directory (its AOF brings the data back)."""
        return self.start()


class TcpProxy:
    """A TCP relay to a server, on threads of its own, that a test can cut (every
    connection dropped, new ones refused) and mend: one daemon cut off from Redis while
    the others are not."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut = False
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.cut:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self.cut:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def sever(self) -> None:
        self.cut = True
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def mend(self) -> None:
        self.cut = False

    def close(self) -> None:
        self._closed = True
        self.sever()
        self._listener.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A notebook root with a small notebook and a copy of the examples."""
    directory = tmp_path / "root"
    write_notebook(directory / "nb.ipynb", ["a = 1", "print('héllo')"])
    if EXAMPLES.is_dir():
        shutil.copytree(EXAMPLES, directory / "examples", ignore=shutil.ignore_patterns(".crdtnb", "*.py"))
    return directory


@pytest.fixture
def daemon_factory(root: Path) -> Iterator[Any]:
    started: list[Daemon] = []

    def make(*args: str, **kwargs: Any) -> Daemon:
        daemon = Daemon(kwargs.pop("root", root), *args, **kwargs)
        started.append(daemon)
        return daemon.start()

    yield make
    for daemon in started:
        if daemon.process is not None:
            try:
                daemon.stop(10)
            except subprocess.TimeoutExpired:
                daemon.kill()


@pytest.fixture
def daemon(daemon_factory: Any) -> Daemon:
    return daemon_factory()


async def eventually(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Poll a (blocking, quick) predicate without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return
        await asyncio.sleep(interval)
    assert await asyncio.to_thread(predicate), "condition not met in time"
