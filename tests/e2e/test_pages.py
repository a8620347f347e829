"""The pages themselves: security headers, the token's handling, the notebook list."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import Daemon

from .browser import Browser, notebook_url

pytestmark = pytest.mark.timeout(60)


def test_page_headers_and_csp(web: Daemon) -> None:
    for route in ("/", "/notebooks/nb.ipynb"):
        response = httpx.get(f"{web.url}{route}", timeout=10)
        assert response.status_code == 200, route
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        csp = {
            d.split(" ", 1)[0]: d.split(" ", 1)[1] if " " in d else ""
            for d in (p.strip() for p in response.headers["content-security-policy"].split(";"))
        }
        assert csp["script-src"] == "'self'"
        assert csp["object-src"] == "'none'"
        assert csp["base-uri"] == "'none'"
        assert csp["frame-ancestors"] == "'none'"
        assert csp["img-src"] == "'self' data: blob:"
        assert "'unsafe-inline'" not in csp["style-src-elem"] and "'nonce-" in csp["style-src-elem"]
        assert csp["style-src-attr"] == "'unsafe-inline'"
        assert csp["connect-src"].split()[0] == "'self'"
        assert f"ws://127.0.0.1:{web.port}" in csp["connect-src"]
        # no inline script in the shell, and the nonce it carries is the header's
        assert "<script>" not in response.text
        nonce = csp["style-src-elem"].split("'nonce-")[1].split("'")[0]
        assert f'content="{nonce}"' in response.text
    # a fresh nonce per response
    again = httpx.get(f"{web.url}/", timeout=10).headers["content-security-policy"]
    assert again != httpx.get(f"{web.url}/", timeout=10).headers["content-security-policy"]
    static = httpx.get(f"{web.url}/static/notebook.js", timeout=10)
    assert static.status_code == 200
    assert "javascript" in static.headers["content-type"]
    assert static.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{web.url}/static/nope.js", timeout=10).status_code == 404


async def test_token_leaves_the_address_bar(web: Daemon, browser: Browser) -> None:
    page = await browser.open(web, "nb.ipynb")
    assert "token" not in page.page.url
    assert page.page.url.endswith("/notebooks/nb.ipynb")
    assert await page.page.evaluate("() => sessionStorage.getItem('crdtnb-token')") == web.token
    # the history entry was replaced, not pushed: Back does not bring the token back
    await page.page.go_back()
    assert "token=" not in page.page.url
    await page.page.go_forward()
    await page.wait_ready()
    assert "token" not in page.page.url
    # the CSP is enforced: an inline script added to the DOM does not run
    ran = await page.page.evaluate(
        """() => { const s = document.createElement('script'); s.textContent = 'window.__inline = 1';
                   document.body.append(s); return window.__inline === 1 }"""
    )
    assert ran is False
    await page.page.wait_for_function("() => window.__cspViolations.some(v => v.startsWith('script-src'))")
    # the page itself (CodeMirror's styles included) needed nothing the CSP refuses
    violations = [v for v in await page.csp_violations() if not v.startswith("script-src")]
    assert violations == []
    # a reload keeps working from sessionStorage, with no token in the URL
    await page.reload()
    assert await page.page.locator(".connection-status").text_content() == "Connected"
    await page.screenshot("after-reload")
    page.assert_no_errors(allow=("Content Security Policy",))


async def test_missing_or_wrong_token_asks_for_one(web: Daemon, browser: Browser) -> None:
    page = await browser.new_page()
    await page.goto(notebook_url(web, "nb.ipynb", token=""), ready=False)
    form = page.page.locator(".token-form")
    await form.wait_for()
    await page.screenshot("token-form")
    await form.locator("input").fill("not-the-token")
    await form.locator("button").click()
    # the websocket is refused (4401): the form comes back, the token is forgotten
    await page.page.locator(".token-form").wait_for()
    assert await page.page.evaluate("() => sessionStorage.getItem('crdtnb-token')") is None
    await page.page.locator(".token-form input").fill(web.token)
    await page.page.locator(".token-form button").click()
    await page.wait_ready()
    assert await page.page.locator(".cells > .cell").count() == 2


async def test_list_page_opens_and_creates(web: Daemon, browser: Browser) -> None:
    page = await browser.new_page()
    await page.goto(f"{web.url}/?token={web.token}", ready=False)
    links = page.page.locator("a.nb-link")
    await links.first.wait_for()
    paths = await links.evaluate_all("els => els.map(e => decodeURIComponent(new URL(e.href).pathname))")
    assert "/notebooks/nb.ipynb" in paths
    assert "token" not in page.page.url
    await page.screenshot("list")
    # create a notebook: it exists on the server and its page opens
    await page.page.locator(".new-name").fill("made in browser")
    await page.page.locator(".new-notebook button").click()
    await page.page.wait_for_url("**/notebooks/made%20in%20browser.ipynb")
    await page.wait_ready()
    assert web.notebook("made in browser.ipynb")["nbformat"] == 4
    assert (web.root / "made in browser.ipynb").is_file()
    # the new notebook's first cell is there, ready to type into
    assert len(await page.cell_ids()) == 1
    # creating it again is refused with a message, not a crash
    await page.page.goto(f"{web.url}/")
    await page.page.locator(".new-name").fill("made in browser.ipynb")
    await page.page.locator(".new-notebook button").click()
    await page.page.locator(".toast-error").wait_for()
    page.assert_no_errors(allow=("409",))


async def test_pages_under_a_mount_prefix_and_without_bundle(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from crdtnb.pages import page_routes

    def client(app: Starlette) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:9")

    async with client(Starlette(routes=[Mount("/collab", routes=page_routes())])) as http:
        page = await http.get("/collab/notebooks/dir/a%20b.ipynb")
        assert page.status_code == 200
        assert '<meta name="crdtnb-base" content="/collab/">' in page.text
        assert 'src="/collab/static/notebook.js"' in page.text
        assert "<title>a b.ipynb · crdtnb</title>" in page.text
        assert (await http.get("/collab/static/app.css")).status_code == 200
        # a hostile Host header is not echoed into the CSP
        hostile = await http.get("/collab/", headers={"host": "evil.example; script-src *"})
        csp = hostile.headers["content-security-policy"]
        assert "evil" not in csp and "script-src 'self';" in csp
    # without a built bundle the pages say so instead of serving a blank page
    async with client(Starlette(routes=page_routes(static_dir=tmp_path))) as http:
        missing = await http.get("/")
        assert missing.status_code == 503 and "npm run build" in missing.text
