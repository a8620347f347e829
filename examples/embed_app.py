"""A host Starlette app that embeds crdtnb under /collab with its own users.

Run it:  uvicorn examples.embed_app:app --port 8000
Then:    ws://127.0.0.1:8000/collab/api/sync/intro.ipynb?api_key=alice-key

The host decides who is who (here: API keys) and what each may do (bob only
reads); crdtnb enforces it on every connection and every message.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from crdtnb import Action, NotebookSync, User

NOTEBOOKS = Path(os.environ.get("CRDTNB_EXAMPLE_ROOT", Path(__file__).resolve().parent))

# The host's own users; a real app would look up its session or database here.
API_KEYS = {
    "alice-key": User("alice", "Alice"),
    "bob-key": User("bob", "Bob"),
}


def authenticate(conn: HTTPConnection) -> User | None:
    key = conn.headers.get("x-api-key") or conn.query_params.get("api_key")
    return API_KEYS.get(key or "")


def authorize(user: User, path: str, action: Action) -> bool:
    # Alice may do anything; Bob may only look.
    return user.name == "alice" or action == Action.READ


sync = NotebookSync(NOTEBOOKS, authenticate=authenticate, authorize=authorize)


async def home(request: Request) -> JSONResponse:
    return JSONResponse({"app": "host", "collab": str(request.url_for("collab", path="/api/health"))})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # Starlette does not run a mounted app's lifespan: the host runs crdtnb's inside its own.
    async with sync.lifespan(app):
        yield


app = Starlette(
    routes=[Route("/", home), Mount("/collab", app=sync, name="collab")],
    lifespan=lifespan,
)
