"""``crdtnb cluster status``: what a cluster's Redis says about its daemons and rooms."""

from __future__ import annotations

import json
import time
from typing import Any

from redis.asyncio import Redis

from .keys import NODE_PREFIX, ROOMS, RoomKeys


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def cluster_status(url: str, lease_ttl: float = 3.0) -> dict[str, Any]:
    """Nodes (from their heartbeats), and every room with its owner, the age of its lease
    (time since the last renewal), and what it keeps in Redis."""
    redis = Redis.from_url(url)
    try:
        nodes = []
        async for key in redis.scan_iter(match=f"{NODE_PREFIX}*", count=100):
            raw = await redis.get(key)
            if raw is not None:
                info = json.loads(raw)
                info["last_seen_s"] = round(time.time() - float(info.get("seen", 0)), 1)
                nodes.append(info)
        rooms = []
        names = sorted(_text(name) for name in (await redis.hgetall(ROOMS)).values())
        for name in names:
            keys = RoomKeys(name)
            async with redis.pipeline(transaction=False) as pipe:
                pipe.get(keys.owner)
                pipe.pttl(keys.owner)
                pipe.xlen(keys.log)
                pipe.hstrlen(keys.snapshot, "data")
                pipe.memory_usage(keys.log)
                pipe.memory_usage(keys.snapshot)
                owner, ttl_ms, entries, snapshot_bytes, log_memory, snapshot_memory = await pipe.execute()
            holder = _text(owner).split(" ") if owner is not None else [None, None]
            rooms.append(
                {
                    "room": name,
                    "owner": holder[0],
                    "token": int(holder[1]) if holder[1] else None,
                    "lease_age_s": round(lease_ttl - ttl_ms / 1000, 2) if owner is not None and ttl_ms > 0 else None,
                    "log_entries": int(entries),
                    "snapshot_bytes": int(snapshot_bytes or 0),
                    "redis_bytes": int(log_memory or 0) + int(snapshot_memory or 0),
                }
            )
        return {"nodes": sorted(nodes, key=lambda n: n["node"]), "rooms": rooms}
    finally:
        await redis.aclose()


def format_status(status: dict[str, Any]) -> str:
    lines = [f"{len(status['nodes'])} node(s)"]
    for node in status["nodes"]:
        owned = ", ".join(node.get("owned", [])) or "-"
        lines.append(f"  {node['node']}\trooms open {node.get('rooms', 0)}\tseen {node['last_seen_s']} s ago\towns {owned}")
    lines.append(f"{len(status['rooms'])} room(s)")
    for room in status["rooms"]:
        owner = f"{room['owner']} (token {room['token']}, lease renewed {room['lease_age_s']} s ago)" if room["owner"] else "no owner"
        lines.append(
            f"  {room['room']}\t{owner}\tlog {room['log_entries']} entries\t"
            f"snapshot {room['snapshot_bytes']} B\tRedis {room['redis_bytes']} B"
        )
    return "\n".join(lines)
