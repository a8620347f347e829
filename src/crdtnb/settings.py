"""Every tunable of crdtnb, in one tree of dataclasses.

``crdtnb serve``'s options, ``create_app`` and ``NotebookSync`` are all derived from it:
each field carries its default, its help and its command-line flag, so no default is
written twice. ``crdtnb serve --help`` lists the flags grouped by these sections.

    Settings(root="notebooks", files=FileSettings(save_delay=0.5))
    Settings.from_args(parsed_namespace)      # what the CLI does
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

MiB = 2**20


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    env: str | None = None,
    repeat: bool = False,
    choices: tuple[str, ...] | None = None,
    cli: bool = True,
) -> Any:
    """A settings field with what the command line needs to know about it."""
    meta = {"help": help, "flag": flag, "parse": parse, "env": env, "repeat": repeat, "choices": choices, "cli": cli}
    if repeat:
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


_UNITS = {"k": 2**10, "m": 2**20, "g": 2**30}


def _size(text: str) -> int:
    """A byte count: 1048576, 16k, 1M, 64MiB."""
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    if value and value[-1] in _UNITS:
        return int(float(value[:-1]) * _UNITS[value[-1]])
    return int(value)


@dataclass(frozen=True)
class ServerSettings:
    """The listening socket (crdtnb serve only; an embedding host runs its own server)."""

    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(8888, "port to listen on", parse=int)
    header_timeout: float = option(
        10.0, "seconds a client has to send complete request headers before its connection is closed", parse=float
    )
    max_connections: int | None = option(
        None,
        "open connections (HTTP and websocket) before new ones get 503 (default: from the file-descriptor limit)",
        parse=int,
    )
    ping_interval: float = option(
        20.0,
        "seconds of silence before a websocket client is pinged; one that does not answer as long again is dropped (0: never)",
        parse=float,
    )
    log_level: str = option("info", "logging level", choices=("critical", "error", "warning", "info", "debug"))


@dataclass(frozen=True)
class AccessSettings:
    """Who may connect."""

    token: str | None = option(
        None, "admin access token (default: $CRDTNB_TOKEN, else a random one is printed)", env="CRDTNB_TOKEN"
    )
    allowed_origins: tuple[str, ...] = option(
        (), "another origin whose pages may connect (repeatable)", flag="--allow-origin", repeat=True
    )
    metrics_token: str | None = option(
        None, "a token that may read /metrics only (admins may read it too)", env="CRDTNB_METRICS_TOKEN"
    )


@dataclass(frozen=True)
class RoomSettings:
    """Rooms (one per open notebook), their log and their presence."""

    idle_timeout: float = option(60.0, "seconds before an unused room is saved and unloaded", parse=float)
    compact_after: int = option(1000, "updates in a room's log before it is compacted into one snapshot", parse=int)
    # A room taking 1000 updates/s would otherwise compact every second, and each merge
    # holds the GIL for milliseconds (bench/README.md: p99 at 10 clients x 1000/s 5 -> 2.5 ms).
    compact_min_interval: float = option(10.0, "seconds between two compactions of one room", parse=float)
    max_presence_clients: int = option(8, "presence client ids one connection may announce", parse=int)
    max_presence_state_bytes: int = option(64 * 1024, "largest presence state of one client", parse=_size)
    store_timeout: float = option(
        10.0,
        "seconds a room retries a failing store before it gives up: its clients are told to reconnect (1013)",
        parse=float,
    )


@dataclass(frozen=True)
class FileSettings:
    """Keeping each open notebook's .ipynb in step with its room."""

    save_delay: float = option(1.0, "seconds after the last change before saving the .ipynb", parse=float)
    save_max_delay: float = option(10.0, "longest wait for a save while changes go on", parse=float)
    busy_save_max_delay: float = option(
        30.0, "longest wait for a save while the room's kernel runs code (its outputs are in the log)", parse=float
    )
    poll_interval: float = option(1.0, "seconds between checks of open files for outside changes", parse=float)
    retry_delay: float = option(30.0, "seconds before a failed save is tried again without a new change", parse=float)


@dataclass(frozen=True)
class KernelSettings:
    """The kernels that run cells on the server."""

    default_kernel: str = option("python3", "kernel for notebooks that name none")
    sandbox: str = option(
        "auto",
        "run kernels in a bubblewrap sandbox: auto (when bwrap works), bwrap (or refuse to start), none",
        flag="--kernel-sandbox",
        choices=("auto", "bwrap", "none"),
    )
    cull_idle: float = option(
        0.0, "shut a kernel down after this many idle seconds (0: never)", flag="--cull-idle-kernels", parse=float
    )
    batch_interval: float = option(0.03, "seconds stream outputs are gathered into one change", parse=float)
    startup_timeout: float = option(60.0, "seconds a kernel may take to start", parse=float)
    liveness_interval: float = option(0.5, "how often a running kernel is checked for death", parse=float)
    max_stream_bytes: int = option(MiB, "cap of one stream output (beginning and latest output kept)", parse=_size)
    max_output_bytes: int = option(8 * MiB, "cap of any other single output (replaced by a note)", parse=_size)


@dataclass(frozen=True)
class ClusterSettings:
    """Several daemons serving the same ROOT through one Redis (README: "Cluster")."""

    redis: str | None = option(
        None, "Redis URL (redis://HOST:PORT/DB) of the cluster; none: this daemon alone", env="CRDTNB_REDIS"
    )
    node_id: str | None = option(None, "this daemon's name in the cluster (default: host-pid)", flag="--node-id")
    lease_ttl: float = option(3.0, "seconds a room's owner lease lives without renewal", parse=float)
    lease_renew: float = option(1.0, "seconds between two renewals of the leases", parse=float)


@dataclass(frozen=True)
class TransportLimits:
    """Each websocket connection."""

    max_frame_bytes: int = option(16 * MiB, "largest websocket frame accepted", parse=_size)
    max_queue_bytes: int = option(
        64 * MiB,
        "send queue of one client; a client that falls further behind is disconnected (it resyncs)",
        flag="--max-send-queue-bytes",
        parse=_size,
    )
    max_queue_messages: int = option(20_000, "send queue of one client, in messages", flag="--max-send-queue-messages", parse=int)
    close_timeout: float = option(5.0, "seconds a closing handshake may take", parse=float)


@dataclass(frozen=True)
class Settings:
    """The whole tree. ``root`` is the directory of notebooks; ``state_dir`` holds the
    log, the accounts and the session key (default ROOT/.crdtnb)."""

    root: Path = field(default=Path("."))
    state_dir: Path | None = option(None, "where the update log and accounts live (default: ROOT/.crdtnb)", parse=Path)
    server: ServerSettings = field(default_factory=ServerSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    rooms: RoomSettings = field(default_factory=RoomSettings)
    files: FileSettings = field(default_factory=FileSettings)
    kernels: KernelSettings = field(default_factory=KernelSettings)
    transport: TransportLimits = field(default_factory=TransportLimits)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.state_dir is not None:
            object.__setattr__(self, "state_dir", Path(self.state_dir))

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir) if self.state_dir is not None else Path(self.root).resolve() / ".crdtnb"

    # -- the command line ------------------------------------------------------------

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """One argument group per section, one flag per field."""
        general = parser.add_argument_group("general")
        _add_field(general, "", _field(Settings, "state_dir"))
        for section in _SECTIONS:
            cls = _section_type(section)
            group = parser.add_argument_group(section, (cls.__doc__ or "").strip().splitlines()[0])
            for f in fields(cls):
                if f.metadata.get("cli", False):
                    _add_field(group, section, f)

    @classmethod
    def from_args(cls, args: argparse.Namespace, root: str | os.PathLike[str]) -> Settings:
        sections: dict[str, Any] = {}
        for section in _SECTIONS:
            section_type = _section_type(section)
            values = {}
            for f in fields(section_type):
                if f.metadata.get("cli", False):
                    value = getattr(args, _dest(section, f), None)
                    if value is not None:
                        values[f.name] = tuple(value) if f.metadata.get("repeat") else value
            sections[section] = section_type(**values)
        return cls(root=Path(root), state_dir=getattr(args, _dest("", _field(Settings, "state_dir"))), **sections)


_SECTIONS = ("server", "access", "rooms", "files", "kernels", "transport", "cluster")


def _section_type(section: str) -> type[Any]:
    default_factory = _field(Settings, section).default_factory
    assert default_factory is not MISSING
    return type(default_factory())


def _field(cls: type[Any], name: str) -> Any:
    return next(f for f in fields(cls) if f.name == name)


def _dest(section: str, f: Any) -> str:
    return f"{section}__{f.name}" if section else f.name


def _add_field(group: Any, section: str, f: Any) -> None:
    meta = f.metadata
    flag = meta.get("flag") or "--" + f.name.replace("_", "-")
    default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else None)
    env = meta.get("env")
    help_text = meta.get("help", "")
    if default not in (None, (), "") and not env:
        help_text += f" (default: {default})"
    kwargs: dict[str, Any] = {"dest": _dest(section, f), "help": help_text, "default": None, "metavar": f.name.upper()}
    if env:
        kwargs["default"] = os.environ.get(env) or None
    if meta.get("parse"):
        kwargs["type"] = meta["parse"]
    if meta.get("choices"):
        kwargs["choices"] = meta["choices"]
        del kwargs["metavar"]
    if meta.get("repeat"):
        kwargs["action"] = "append"
        kwargs["default"] = None
    group.add_argument(flag, **kwargs)


__all__ = [
    "AccessSettings",
    "ClusterSettings",
    "FileSettings",
    "KernelSettings",
    "RoomSettings",
    "ServerSettings",
    "Settings",
    "TransportLimits",
]
