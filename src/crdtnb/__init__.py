"""crdtnb: a CRDT sync daemon for Jupyter notebooks."""

from .app import NotebookSync, create_app
from .auth import Action, User
from .extensions import Extension
from .settings import (
    AccessSettings,
    FileSettings,
    KernelSettings,
    RoomSettings,
    ServerSettings,
    Settings,
    TransportLimits,
)

__version__ = "0.1.0"

__all__ = [
    "AccessSettings",
    "Action",
    "Extension",
    "FileSettings",
    "KernelSettings",
    "NotebookSync",
    "RoomSettings",
    "ServerSettings",
    "Settings",
    "TransportLimits",
    "User",
    "create_app",
    "__version__",
]
