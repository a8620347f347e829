"""Starting, measuring and stopping the servers under test, each fresh, each on 127.0.0.1.

Kinds:
  crdtnb            `crdtnb serve` (SQLite durable log, the default)
  crdtnb-mem        crdtnb with an in-memory Store (bench/serve_crdtnb_memory.py): the log's cost
  pycrdt-websocket  pycrdt-websocket's ASGIServer under uvicorn (bench/serve_pycrdt_websocket.py)
  y-websocket       `node bin/server.js` of y-websocket@1.5.4, installed into bench/node/
  hocuspocus        @hocuspocus/server 4 (bench/node/hocuspocus_server.mjs), persistence off
  uvicorn-floor     a bare ASGI relay (fan-out only): the per-delivery floor of uvicorn
Floors of other websocket servers, run only when named (bench/serve_floor.py; fan-out only):
  uvicorn-wsproto-floor  uvicorn-floor on uvicorn's wsproto implementation
  websockets-floor       the websockets library's own server, relaying with its broadcast()
  picows-floor           picows (Cython, callbacks), relaying in its frame callback
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
from wsclient import HocuspocusURL

BENCH = Path(__file__).resolve().parent
NODE_DIR = BENCH / "node"
YWS_SERVER = NODE_DIR / "node_modules" / "y-websocket" / "bin" / "server.js"
HOCUSPOCUS_SERVER = NODE_DIR / "hocuspocus_server.mjs"
NODE_CLIENT = NODE_DIR / "fanout_client.mjs"
# What `npm ci` in bench/node/ installs and the node servers and clients import.
NODE_PACKAGES = ("y-websocket", "yjs", "ws", "@hocuspocus/server", "@hocuspocus/provider")

ALL_KINDS = ("crdtnb", "crdtnb-mem", "pycrdt-websocket", "y-websocket", "hocuspocus", "uvicorn-floor")
FLOOR_KINDS = ("uvicorn-floor", "uvicorn-wsproto-floor", "websockets-floor", "picows-floor")
EXTRA_KINDS: tuple[str, ...] = FLOOR_KINDS[1:]
CRDTNB_KINDS = ("crdtnb", "crdtnb-mem")
NODE_KINDS = ("y-websocket", "hocuspocus")  # servers that need node


def small_notebook(title: str = "bench") -> dict:
    """A small notebook (three cells, one output): what every room of the many-rooms test holds."""
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [
            {"id": "md", "cell_type": "markdown", "metadata": {}, "source": f"# {title}\nA small notebook."},
            {
                "id": "code",
                "cell_type": "code",
                "metadata": {},
                "execution_count": 1,
                "source": "x = sum(range(10))\nprint(x)",
                "outputs": [{"output_type": "stream", "name": "stdout", "text": "45\n"}],
            },
            {"id": "empty", "cell_type": "code", "metadata": {}, "execution_count": None, "source": "", "outputs": []},
        ],
    }


def write_notebook(root: Path, name: str, nb: dict | None = None) -> Path:
    path = root / f"{name}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb or small_notebook(name)))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_installed() -> bool:
    return all((NODE_DIR / "node_modules" / pkg / "package.json").exists() for pkg in NODE_PACKAGES)


def ensure_node() -> str | None:
    """Install bench/node's packages (the node servers, the Yjs clients) from its lockfile if
    needed; None when they are usable, else the reason they are not."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        return "node is not installed"
    if node_installed():
        return None
    if npm is None:
        return "npm is not installed"
    proc = subprocess.run(
        [npm, "ci", "--omit=optional", "--ignore-scripts", "--no-audit", "--no-fund"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0 or not node_installed():
        return f"npm ci failed: {proc.stderr.strip()[-300:]}"
    return None


def _schedstat_seconds(pid: int) -> float | None:
    try:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as fh:
                    total += int(fh.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # a thread that just ended
        return total / 1e9
    except OSError:
        return None


class Server:
    """One fresh server process. ``cpus``: the CPU set it is pinned to (None: not pinned)."""

    def __init__(self, kind: str, workdir: Path, *, cpus: set[int] | None = None, log_dir: Path | None = None) -> None:
        if kind not in ALL_KINDS + EXTRA_KINDS:
            raise ValueError(kind)
        self.kind = kind
        self.workdir = workdir
        self.root = workdir / "root"
        self.state_dir = workdir / "state"
        self.root.mkdir(parents=True, exist_ok=True)
        self.cpus = cpus
        self.port = free_port()
        self.token = secrets.token_urlsafe(12)  # may start with "-": always passed as --token=…
        self.log_dir = log_dir or workdir
        self.proc: subprocess.Popen | None = None
        self.ps: psutil.Process | None = None

    @property
    def is_crdtnb(self) -> bool:
        return self.kind in CRDTNB_KINDS

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def prepare_rooms(self, names, nb: dict | None = None) -> None:
        """crdtnb serves notebooks that exist under ROOT; the peers make rooms on demand."""
        if self.is_crdtnb:
            for name in names:
                write_notebook(self.root, name, nb)

    def url(self, room: str) -> str:
        """Where the Python clients (wsclient.py) open ``room``."""
        if self.is_crdtnb:
            return f"ws://127.0.0.1:{self.port}/api/sync/{room}.ipynb?token={self.token}"
        if self.kind == "hocuspocus":
            return HocuspocusURL(f"ws://127.0.0.1:{self.port}/{room}", room)
        return f"ws://127.0.0.1:{self.port}/{room}"

    def node_target(self, room: str) -> dict:
        """Where the Node clients (node/fanout_client.mjs) open ``room``: y-websocket's
        provider appends the room to ``serverUrl`` as a path segment; Hocuspocus's provider
        names it in every message."""
        if self.is_crdtnb:
            return {"protocol": "y-websocket", "serverUrl": f"ws://127.0.0.1:{self.port}/api/sync", "room": f"{room}.ipynb", "params": {"token": self.token}}
        if self.kind == "hocuspocus":
            return {"protocol": "hocuspocus", "serverUrl": f"ws://127.0.0.1:{self.port}", "room": room}
        return {"protocol": "y-websocket", "serverUrl": f"ws://127.0.0.1:{self.port}", "room": room}

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        py = sys.executable
        if self.kind == "crdtnb":
            cmd = [py, "-m", "crdtnb", "serve", str(self.root), "--port", str(self.port), f"--token={self.token}",
                   "--state-dir", str(self.state_dir), "--idle-timeout", "3600", "--log-level", "warning"]
        elif self.kind == "crdtnb-mem":
            cmd = [py, str(BENCH / "serve_crdtnb_memory.py"), str(self.root), "--port", str(self.port),
                   f"--token={self.token}", "--state-dir", str(self.state_dir)]
        elif self.kind == "pycrdt-websocket":
            cmd = [py, str(BENCH / "serve_pycrdt_websocket.py"), "--port", str(self.port)]
        elif self.kind in ("uvicorn-floor", "uvicorn-wsproto-floor"):
            cmd = [py, str(BENCH / "serve_uvicorn_floor.py"), "--port", str(self.port)]
            if self.kind == "uvicorn-wsproto-floor":
                env["FLOOR_WS"] = "wsproto"
        elif self.kind in ("websockets-floor", "picows-floor"):
            cmd = [py, str(BENCH / "serve_floor.py"), self.kind.removesuffix("-floor"), "--port", str(self.port)]
        elif self.kind == "hocuspocus":
            cmd = [shutil.which("node") or "node", str(HOCUSPOCUS_SERVER)]
            env.update(HOST="127.0.0.1", PORT=str(self.port))
        else:
            cmd = [shutil.which("node") or "node", str(YWS_SERVER)]
            env.update(HOST="127.0.0.1", PORT=str(self.port))
        return cmd, env

    def start(self, timeout: float = 60) -> Server:
        cmd, env = self.command()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{self.kind}-{self.port}.log", "wb")
        cpus = self.cpus
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=str(self.workdir),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            start_new_session=True,
        )
        log.close()
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + timeout
        probe = f"{self.base}/api/health" if self.is_crdtnb else f"{self.base}/"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(probe, timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.kind} did not become ready in {timeout} s")

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- measurements ------------------------------------------------------------------------
    def cpu_seconds(self, children: bool = False) -> float:
        """CPU time of every thread of the server (ns resolution from schedstat, where Linux
        has it; psutil's clock ticks are 10 ms, too coarse for short windows)."""
        assert self.ps is not None
        total = _schedstat_seconds(self.ps.pid)
        if total is None:
            t = self.ps.cpu_times()
            total = t.user + t.system
        if children:
            for child in self.ps.children(recursive=True):
                try:
                    ct = child.cpu_times()
                    total += ct.user + ct.system
                except psutil.Error:
                    pass
        return total

    async def wait_quiet(self, share: float = 0.05, interval: float = 0.25, timeout: float = 20) -> float:
        """Wait until the server uses less than ``share`` of a core over ``interval`` (e.g. after
        hundreds of clients left: their awareness removals are relayed to those still there).
        Returns the seconds waited."""
        t0 = time.monotonic()
        last = self.cpu_seconds()
        while time.monotonic() - t0 < timeout:
            await asyncio.sleep(interval)
            now = self.cpu_seconds()
            if now - last < share * interval:
                break
            last = now
        return time.monotonic() - t0

    def _status(self, key: str) -> int:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        return 0

    def peak_rss(self) -> int:
        """VmHWM: the process's peak resident set since it started (bytes)."""
        return self._status("VmHWM:")

    def rss(self) -> int:
        return self._status("VmRSS:")

    def http(self, method: str, path: str, body: object = None, timeout: float = 30) -> object:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.base}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def http_raw(self, path: str, timeout: float = 60) -> bytes:
        req = urllib.request.Request(f"{self.base}{path}", headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()
