"""Login and logout: a small server-rendered form, a signed HttpOnly cookie,
and a limit on failed attempts."""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import Callable
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from .auth import call_hook
from .bodies import LOGIN_BODY_BYTES
from .pages import SECURITY_HEADERS
from .sessions import COOKIE_NAME, LoginLimits, SessionSigner
from .users import UserStore

HEADERS = {
    **SECURITY_HEADERS,
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    # Not no-referrer: that makes the browser send "Origin: null" with the form post,
    # which the cross-site check would (rightly) refuse.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in · crdtnb</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 15px system-ui, sans-serif; background: #f6f7f9; display: grid; place-items: center; min-height: 100vh; margin: 0; }}
form {{ background: #fff; padding: 2rem; border-radius: 10px; box-shadow: 0 2px 12px #0002; width: 18rem; }}
h1 {{ font-size: 1.3rem; margin: 0 0 1rem; }} label {{ display: block; margin: .6rem 0 .2rem; color: #444; }}
input {{ width: 100%; box-sizing: border-box; padding: .5rem; border: 1px solid #ccc; border-radius: 6px; font: inherit; }}
button {{ margin-top: 1.2rem; width: 100%; padding: .6rem; border: 0; border-radius: 6px;
          background: #2563eb; color: #fff; font: inherit; cursor: pointer; }}
.error {{ color: #b91c1c; margin: .5rem 0 0; }}
</style></head>
<body><form method="post" action="{action}">
<h1>crdtnb</h1>
<label for="name">User name</label><input id="name" name="name" autocomplete="username" required value="{name}">
<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password" required>
<input type="hidden" name="next" value="{next}">
<button type="submit">Sign in</button>
{error}
</form></body></html>
"""


def _safe_next(value: str | None) -> str:
    """Only same-site relative paths: no open redirect."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _page(request: Request, *, name: str = "", next_url: str = "/", error: str = "", status: int = 200) -> HTMLResponse:
    body = _PAGE.format(
        action=html.escape(str(request.url_for("login"))),
        name=html.escape(name),
        next=html.escape(next_url),
        error=f'<p class="error" role="alert">{html.escape(error)}</p>' if error else "",
    )
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def login_routes(
    users: UserStore,
    signer: SessionSigner,
    limiter: LoginLimits,
    origin_allowed: Callable[[Request], bool],
) -> list[BaseRoute]:
    async def login_form(request: Request) -> Response:
        return _page(request, next_url=_safe_next(request.query_params.get("next")))

    async def login(request: Request) -> Response:
        if not origin_allowed(request):
            return JSONResponse({"error": "cross-site login refused"}, status_code=403)
        fields = await _fields(request)
        name, password = fields.get("name", ""), fields.get("password", "")
        next_url = _safe_next(fields.get("next"))
        client = request.client.host if request.client else "?"
        keys = (f"user:{name}", f"ip:{client}")
        wait = await call_hook(limiter.blocked, *keys)
        if wait > 0:
            blocked = _page(request, name=name, next_url=next_url, error="Too many failed attempts: try again later.", status=429)
            blocked.headers["Retry-After"] = str(int(wait) + 1)
            return blocked
        # argon2 is deliberately slow: keep it off the event loop.
        account = await asyncio.to_thread(users.verify_password, name, password)
        if account is None:
            await call_hook(limiter.failed, *keys)
            return _page(request, name=name, next_url=next_url, error="Wrong user name or password.", status=401)
        await call_hook(limiter.succeeded, *keys)
        cookie, session = signer.issue(account.name)
        await asyncio.to_thread(users.add_session, session.id, session.user, session.expires)
        response: Response
        if _wants_json(request):
            response = JSONResponse({"user": account.name, "csrf": session.csrf})
        else:
            response = RedirectResponse(next_url, status_code=303)
        response.set_cookie(
            COOKIE_NAME,
            cookie,
            max_age=int(signer.max_age),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    async def logout(request: Request) -> Response:
        session = signer.read(request.cookies.get(COOKIE_NAME))
        if session is not None:
            if request.headers.get("x-csrf-token") != session.csrf:
                fields = await _fields(request)
                if fields.get("csrf") != session.csrf:
                    return JSONResponse({"error": "missing or wrong CSRF token"}, status_code=403)
            # The session ends on the server too: the cookie is worth nothing from now on,
            # and websockets opened with it are closed (NotebookSync watches users.sqlite3).
            await asyncio.to_thread(users.end_session, session.id)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE_NAME, path="/")
        return response

    return [
        Route("/login", login_form, methods=["GET"], name="login"),
        Route("/login", login, methods=["POST"], max_body_size=LOGIN_BODY_BYTES),
        Route("/logout", logout, methods=["POST"], max_body_size=LOGIN_BODY_BYTES),
    ]


async def _fields(request: Request) -> dict[str, str]:
    """Form or JSON fields, without extra dependencies (urlencoded forms only).
    The route's body limit (LOGIN_BODY_BYTES) has capped the body already."""
    body = await request.body()
    if _wants_json(request):
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(data, dict) else {}
    parsed = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}


def _wants_json(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("application/json")

