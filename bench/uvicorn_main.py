"""The command line the bench's reference servers share: serve an ASGI app on 127.0.0.1:PORT."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import uvicorn


def serve(app: Any) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # permessage-deflate off, as `crdtnb serve` has it, Jupyter's tornado server by default, and
    # the node servers (ws's default): Yjs clients (ws, browsers) offer it, and uvicorn would
    # otherwise compress every relayed update once per peer.
    # FLOOR_WS=wsproto: uvicorn's other websocket implementation (the floor kinds in servers.py).
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        ws=os.environ.get("FLOOR_WS", "auto"),
        ws_max_size=64 * 2**20,
        ws_per_message_deflate=False,
        lifespan="on",
    )
