"""Durable storage for the rooms' Yjs update logs.

Every update a room accepts is appended here *before* it is relayed, so nothing a client has
seen is lost on ``kill -9``. The room layer only knows the :class:`Store` protocol
(``base.py``); :class:`SQLiteStore` (``sqlite.py``) is the default implementation;
``merge.py`` turns a log into one verified snapshot (in parts, for a big room) for compaction.
"""

from .base import CompactionError, RenameUnsupported, Store, StoreClosedError, StoreError, StoreUnavailable
from .merge import decode_state_vector, merge_log, merge_pieces
from .sqlite import SCHEMA_VERSION, SQLiteStore

__all__ = [
    "CompactionError",
    "SCHEMA_VERSION",
    "RenameUnsupported",
    "SQLiteStore",
    "Store",
    "StoreClosedError",
    "StoreError",
    "StoreUnavailable",
    "decode_state_vector",
    "merge_log",
    "merge_pieces",
]
