"""Request body limits: every HTTP route has one, checked before the body is read.

A declared Content-Length over the route's limit is answered 413 before the
endpoint runs (so it neither reads nor acts on the request); a body without a
length is counted as it streams and cut off at the limit (413), by Starlette's
``RequestBodyLimitMiddleware``. Limits sit on the routes themselves, so they
hold wherever crdtnb's routes are mounted.

A route that needs a different limit says so where it is declared::

    Route("/api/upload/{path:path}", upload, methods=["POST"], max_body_size=UPLOAD_BODY_BYTES)

and ``capped`` gives every route that did not the default.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

KiB = 1024
MiB = 1024 * KiB

LOGIN_BODY_BYTES = 64 * KiB  # a user name, a password and a redirect path
API_BODY_BYTES = 1 * MiB  # JSON bodies of the API
UPLOAD_BODY_BYTES = 100 * MiB  # for a notebook upload route


class RefuseDeclaredOversize:
    """413 before the endpoint runs when the declared length is over the limit.
    (Starlette's middleware answers only once the endpoint reads or responds,
    which may be after it acted on the request.)"""

    def __init__(self, app: RequestBodyLimitMiddleware) -> None:
        self.app = app

    @property
    def max_body_size(self) -> int:
        return self.app.max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = Headers(scope=scope).get("content-length", "")
            if declared.isdigit() and int(declared) > self.app.max_body_size:
                response = PlainTextResponse(f"request body over {self.app.max_body_size} bytes", status_code=413)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def capped(routes: Iterable[BaseRoute], default: int = API_BODY_BYTES) -> list[BaseRoute]:
    """``routes``, each HTTP route with a body limit: its own
    (``Route(..., max_body_size=…)``), else ``default``."""
    result = list(routes)
    for route in result:
        if not isinstance(route, Route) or isinstance(route.app, RefuseDeclaredOversize):
            continue
        if not isinstance(route.app, RequestBodyLimitMiddleware):
            route.app = RequestBodyLimitMiddleware(route.app, max_body_size=default)
        route.app = RefuseDeclaredOversize(route.app)
    return result


__all__ = ["API_BODY_BYTES", "LOGIN_BODY_BYTES", "UPLOAD_BODY_BYTES", "capped"]
