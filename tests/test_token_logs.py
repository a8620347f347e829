"""Credentials never reach the daemon's log, however the query names them."""

from __future__ import annotations

import httpx
from websockets.asyncio.client import connect as ws_connect

from .conftest import Daemon


async def test_tokens_in_urls_are_redacted_whatever_their_spelling(daemon: Daemon) -> None:
    token = daemon.token
    encoded = "".join(f"%{b:02X}" for b in token.encode())
    spellings = [
        f"token={token}",
        f"%74oken={token}",  # Starlette decodes the name: this authenticates
        f"to%6Ben={encoded}",
        f"x=1&%74%6F%6B%65%6E={token}",
        f"TOKEN={token}",
    ]
    for query in spellings:
        response = httpx.get(f"{daemon.url}/api/notebooks?{query}")
        assert response.status_code in (200, 401), query
    assert httpx.get(f"{daemon.url}/api/notebooks?%74oken={token}").status_code == 200
    async with ws_connect(f"ws://127.0.0.1:{daemon.port}/api/sync/nb.ipynb?%74oken={token}", proxy=None) as ws:
        await ws.recv()
    # The start-up banner prints the URL with the token on purpose; nothing else may.
    log = "\n".join(line for line in daemon.log().splitlines() if not line.startswith("open http://"))
    assert "/api/notebooks?" in log and "WebSocket /api/sync/nb.ipynb" in log  # the requests were logged
    assert token not in log
    assert encoded not in log and token[:12] not in log
    assert "[redacted]" in log
