"""The browser pages: ``/`` (the notebook list), ``/notebooks/{path}`` and ``/static/…``.

The pages are static HTML shells: the bundled script (built from ``frontend/`` into
``crdtnb/static``) reads the notebook path from the URL and the token from ``?token=``
(moving it to sessionStorage and out of the address bar), then talks to the authenticated
REST API and websocket. The shells carry no data, so they need no auth themselves.

Every page response carries a strict Content-Security-Policy:

- ``script-src 'self'``: no inline script, no eval, nothing from elsewhere;
- styles: ``style-src-elem 'self' 'nonce-…'`` (a fresh nonce per response, handed to
  CodeMirror's ``EditorView.cspNonce`` for the <style> elements it injects) and
  ``style-src-attr 'unsafe-inline'`` (style *attributes* only: y-codemirror.next colours
  remote carets with them and ansi_up uses them for 256-colour text). Style attributes
  cannot load anything: ``img-src``/``font-src`` stay closed to other origins;
- ``connect-src 'self'`` plus the page's own ``ws://``/``wss://`` origin;
- ``img-src 'self' data: blob:`` (outputs are data: URLs), ``font-src 'self'`` (KaTeX's
  fonts), ``frame-src 'self'`` (the output frame below), ``object-src 'none'``,
  ``base-uri 'none'``, ``frame-ancestors 'none'``, ``form-action 'self'``.

``/output-frame`` is the document of the sandboxed frame in which an HTML output that carries
``<style>`` or ``<script>`` runs (pandas Styler, plotly, altair, bokeh). The page embeds it with
``sandbox="allow-scripts"`` and no ``allow-same-origin``: the frame's origin is opaque, so its
scripts cannot touch the page, its cookies, its storage or its token, and requests they make
carry no credentials. Its own CSP lets the output's inline and https: scripts and styles run
(what those libraries need), sends nothing to plain http: hosts (the daemon included unless
it is served over https, where the opaque origin still keeps cookies and tokens out), and
allows it to be framed by the daemon's own pages only.

Add them to an app with ``app.router.routes.extend(page_routes())`` or, in
``NotebookSync.routes``, ``*page_routes()``.
"""

from __future__ import annotations

import html
import re
import secrets
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

__all__ = ["STATIC_DIR", "content_security_policy", "output_frame_policy", "page_routes"]

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Host header values we are willing to echo into the CSP (host, IPv4, [IPv6], optional port).
_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")

SECURITY_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def content_security_policy(nonce: str, host: str | None = None) -> str:
    """The CSP of a page; ``host`` (the request's Host header) names the websocket origin."""
    connect = ["'self'"]
    if host and _HOST.match(host):
        connect += [f"ws://{host}", f"wss://{host}"]
    directives = [
        "default-src 'none'",
        "script-src 'self'",
        f"style-src 'self' 'nonce-{nonce}'",
        f"style-src-elem 'self' 'nonce-{nonce}'",
        "style-src-attr 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self'",
        "frame-src 'self'",
        f"connect-src {' '.join(connect)}",
        "manifest-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ]
    return "; ".join(directives)


# The output frame's document: it waits for the page to post an output's HTML, writes it as
# the whole document (so its scripts run in order, as in a page of their own), then reports
# its height whenever it changes.
_FRAME = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>output</title>
<script>
(function () {
  var parentWindow = window.parent;
  // the page's look for what outputs leave unstyled (a DataFrame's table); a wide output
  // scrolls sideways inside the frame, whose height follows its content
  var STYLE = '<style>html,body{margin:0;padding:0;background:transparent;color:#1f2328;' +
    'font:13px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif}' +
    'html{overflow:hidden}body{padding:2px 0;overflow-x:auto;overflow-y:hidden}' +
    'table{border-collapse:collapse;margin:4px 0}th,td{border:1px solid #e2e5e9;padding:3px 10px;text-align:right}' +
    'thead th{background:#f4f6f8}tbody tr:nth-child(even){background:#fafbfc}</style>';
  function report() {
    var last = -1;
    function post() {
      var root = document.documentElement;
      var height = Math.max(root ? root.scrollHeight : 0, document.body ? document.body.scrollHeight : 0);
      if (height !== last) {
        last = height;
        parentWindow.postMessage({ type: 'crdtnb-frame-size', height: height }, '*');
      }
    }
    var observer = new ResizeObserver(post);
    if (document.documentElement) observer.observe(document.documentElement);
    if (document.body) observer.observe(document.body);
    window.addEventListener('load', post);
    post();
  }
  function onMessage(event) {
    if (event.source !== parentWindow || !event.data || event.data.type !== 'crdtnb-render') return;
    window.removeEventListener('message', onMessage);
    document.open();
    document.write('<!doctype html><html><head><meta charset="utf-8">' + STYLE + '</head><body>' +
      String(event.data.html || '') + '</body></html>');
    document.close();
    report();
  }
  window.addEventListener('message', onMessage);
  parentWindow.postMessage({ type: 'crdtnb-frame-ready' }, '*');
})();
</script>
</head>
<body></body>
</html>
"""


def output_frame_policy() -> str:
    """The CSP of /output-frame: the output's own scripts and styles run, nothing else."""
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'unsafe-inline' 'unsafe-eval' https: blob: data:",
            "style-src 'unsafe-inline' https:",
            "img-src data: blob: https:",
            "font-src data: https:",
            "media-src data: blob: https:",
            "connect-src https:",
            "worker-src blob:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'self'",
        ]
    )


_SHELL = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="crdtnb-base" content="{base}">
<meta name="csp-nonce" content="{nonce}">
<title>{title}</title>
<link rel="icon" href="{base}static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="{base}static/app.css">
<script type="module" src="{base}static/{script}"></script>
</head>
<body data-page="{page}">
<div id="app"></div>
<noscript><p class="banner">crdtnb needs JavaScript to show notebooks.</p></noscript>
</body>
</html>
"""


def _base(request: Request) -> str:
    """The URL prefix the routes are served under ("/" unless the app is mounted)."""
    root = str(request.scope.get("root_path") or "").rstrip("/")
    return f"{root}/"


def _missing_bundle(static_dir: Path) -> Response:
    return PlainTextResponse(
        f"The crdtnb frontend bundle is missing from {static_dir}: run `npm ci && npm run build` in frontend/.",
        status_code=503,
        headers=SECURITY_HEADERS,
    )


def _shell(request: Request, static_dir: Path, *, page: str, script: str, title: str) -> Response:
    if not (static_dir / script).is_file():
        return _missing_bundle(static_dir)
    nonce = secrets.token_urlsafe(18)
    body = _SHELL.format(
        base=html.escape(_base(request), quote=True),
        nonce=nonce,
        title=html.escape(title),
        script=script,
        page=page,
    )
    headers = {
        **SECURITY_HEADERS,
        "Content-Security-Policy": content_security_policy(nonce, request.headers.get("host")),
        "Cache-Control": "no-store",
    }
    return HTMLResponse(body, headers=headers)


class _SecureStatic:
    """StaticFiles with the security headers on every response (ETag revalidation, no caching
    without it: the file names are stable, so a stale bundle must not be kept)."""

    def __init__(self, directory: Path) -> None:
        self.files = StaticFiles(directory=directory, check_dir=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                for name, value in (*SECURITY_HEADERS.items(), ("Cache-Control", "no-cache")):
                    if name.lower().encode() not in names:
                        headers.append((name.lower().encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.files(scope, receive, send_with_headers)


def page_routes(static_dir: str | Path | None = None) -> list[BaseRoute]:
    """Starlette routes for ``/``, ``/notebooks/{path}`` and ``/static/…``."""
    directory = Path(static_dir) if static_dir is not None else STATIC_DIR

    async def notebook_list(request: Request) -> Response:
        return _shell(request, directory, page="list", script="list.js", title="Notebooks · crdtnb")

    async def notebook_page(request: Request) -> Response:
        name = request.path_params["path"].rsplit("/", 1)[-1] or "notebook"
        return _shell(request, directory, page="notebook", script="notebook.js", title=f"{name} · crdtnb")

    async def output_frame(request: Request) -> Response:
        headers = {
            **SECURITY_HEADERS,
            "X-Frame-Options": "SAMEORIGIN",
            "Content-Security-Policy": output_frame_policy(),
            "Cache-Control": "no-cache",
        }
        return HTMLResponse(_FRAME, headers=headers)

    return [
        Route("/", notebook_list, methods=["GET", "HEAD"], name="crdtnb_list"),
        Route("/output-frame", output_frame, methods=["GET", "HEAD"], name="crdtnb_output_frame"),
        Route("/notebooks/{path:path}", notebook_page, methods=["GET", "HEAD"], name="crdtnb_notebook"),
        Mount("/static", app=_SecureStatic(directory), name="static"),
    ]
