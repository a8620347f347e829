"""Cluster mode: several daemons serving the same ROOT through one Redis (README: "Cluster").

- ``keys.py``: what lives where in Redis (one hash tag per room);
- ``leases.py``: room ownership, a lease with a fencing token;
- ``store.py``: the rooms' logs as Redis streams, with fenced owner writes and compaction;
- ``relay.py``: other daemons' updates (read from the streams) and presence (pub/sub);
- ``extension.py``: the extension that ties them to a daemon, forwards kernel requests
  to owners and keeps the membership.
"""

from .extension import Cluster, ClusterFanout, default_node_id
from .leases import Leases
from .store import RedisStore

__all__ = ["Cluster", "ClusterFanout", "Leases", "RedisStore", "default_node_id"]
