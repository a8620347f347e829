"""crdtnb: a CRDT sync daemon for Jupyter notebooks."""

from .app import NotebookSync, create_app
from .auth import Action, User
from .rooms import RoomSettings
from .transport import TransportLimits

__version__ = "0.1.0"

__all__ = ["Action", "NotebookSync", "RoomSettings", "TransportLimits", "User", "create_app", "__version__"]
