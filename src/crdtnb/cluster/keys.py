"""Where a cluster keeps things in Redis.

Every key of one room carries the same hash tag, ``{<digest of the room's name>}``, so a
room's keys live in one slot and the scripts that touch several of them run unchanged
on Redis Cluster (a digest, because a name may itself hold braces).

- ``crdtnb:{r}:log``      stream of the room's updates since its snapshot (fields u: update, n: node)
- ``crdtnb:{r}:snapshot`` hash: ``data`` (the merged log), ``id`` (the last stream entry in it)
- ``crdtnb:{r}:meta``     hash of small per-room blobs (the file's base state and hash)
- ``crdtnb:{r}:owner``    the lease: ``<node> <token>``, with a time to live
- ``crdtnb:{r}:epoch``    the last token handed out (the fencing token only grows)
- ``crdtnb:{r}:requests`` stream of kernel requests for the owner
- ``crdtnb:{r}:presence`` pub/sub channel of presence updates
- ``crdtnb:rooms``        hash digest -> name of every room that has a log
- ``crdtnb:node:<id>``    a node's heartbeat (JSON, with a time to live)
- ``crdtnb:events``       pub/sub channel: leases released, so others claim at once
"""

from __future__ import annotations

import hashlib

PREFIX = "crdtnb"
ROOMS = f"{PREFIX}:rooms"
EVENTS = f"{PREFIX}:events"
NODE_PREFIX = f"{PREFIX}:node:"


def room_tag(room: str) -> str:
    return hashlib.sha1(room.encode("utf-8")).hexdigest()[:20]


class RoomKeys:
    """The keys of one room."""

    __slots__ = ("name", "tag", "log", "snapshot", "meta", "owner", "epoch", "requests", "presence")

    def __init__(self, name: str) -> None:
        self.name = name
        self.tag = room_tag(name)
        base = f"{PREFIX}:{{{self.tag}}}"
        self.log = f"{base}:log"
        self.snapshot = f"{base}:snapshot"
        self.meta = f"{base}:meta"
        self.owner = f"{base}:owner"
        self.epoch = f"{base}:epoch"
        self.requests = f"{base}:requests"
        self.presence = f"{base}:presence"


def node_key(node: str) -> str:
    return f"{NODE_PREFIX}{node}"


def reply_key(room: RoomKeys, request: str) -> str:
    return f"{PREFIX}:{{{room.tag}}}:reply:{request}"
