"""HTML outputs with <style> or <script> (pandas Styler, plotly, altair, bokeh) run in a sandboxed
frame: their styles and scripts work there, and nothing in it reaches the page, its cookies or
the API."""

from __future__ import annotations

import json

import httpx
import nbformat
import pytest

from tests.conftest import Daemon

from .browser import Browser

pytestmark = pytest.mark.timeout(60)

STYLER = (
    "<style type='text/css'>#T_1 td.col0 { background-color: #ff0000; color: #ffffff; }</style>"
    "<table id='T_1'><thead><tr><th>v</th></tr></thead><tbody><tr><td id='cellA' class='col0'>1.5</td></tr></tbody></table>"
)
INTERACTIVE = (
    "<div id='plot'>loading</div>"
    "<script>const el = document.getElementById('plot');"
    "el.textContent = 'drawn by script ' + (40 + 2); el.style.height = '320px';</script>"
)
# What a hostile output tries from inside the frame; it writes what happened where the test reads it.
PROBE = """
<pre id="results">running</pre>
<script>
(async () => {
  const results = {};
  const attempt = async (name, fn) => {
    try { results[name] = 'allowed: ' + String(await fn()); } catch (e) { results[name] = 'blocked: ' + e.name; }
  };
  await attempt('cookie', () => document.cookie);
  await attempt('parent_dom', () => window.parent.document.title);
  await attempt('parent_var', () => { window.parent.__pwned = 1; return window.parent.__pwned; });
  await attempt('storage', () => window.localStorage.length);
  await attempt('session_storage', () => window.sessionStorage.getItem('crdtnb-token'));
  await attempt('api_relative', async () => (await fetch('/api/notebooks', { credentials: 'include' })).status);
  await attempt('api_absolute', async () => (await fetch(window.__origin + '/api/session', { credentials: 'include' })).status);
  await attempt('xhr', () => new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('GET', '/api/notebooks'); xhr.withCredentials = true;
    xhr.onload = () => resolve(xhr.status); xhr.onerror = () => reject(new TypeError('network'));
    xhr.send();
  }));
  await attempt('top_navigation', () => { window.top.location.href = '/api/health'; return 'navigated'; });
  await attempt('origin', () => window.origin);
  document.getElementById('results').textContent = JSON.stringify(results);
})();
</script>
"""


def make_notebook(web: Daemon, probe: str) -> None:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("df.style; fig.show(); probe()")
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={"text/html": STYLER, "text/plain": "<Styler>"}),
        nbformat.v4.new_output("display_data", data={"text/html": INTERACTIVE, "text/plain": "<Figure>"}),
        nbformat.v4.new_output("display_data", data={"text/html": probe, "text/plain": "<probe>"}),
        nbformat.v4.new_output("display_data", data={"text/html": "<p class='plain'>plain <b>HTML</b></p>", "text/plain": "plain"}),
    ]
    nb.cells = [cell]
    nbformat.write(nb, str(web.root / "rich.ipynb"))


def test_output_frame_document_has_its_own_policy(web: Daemon) -> None:
    response = httpx.get(f"{web.url}/output-frame", timeout=10)
    assert response.status_code == 200
    csp = {d.split(" ", 1)[0]: d.split(" ", 1)[1] if " " in d else "" for d in
           (p.strip() for p in response.headers["content-security-policy"].split(";"))}
    assert csp["default-src"] == "'none'"
    assert "'unsafe-inline'" in csp["script-src"] and "'self'" not in csp["script-src"]
    assert "'self'" not in csp["connect-src"] and "http:" not in csp["connect-src"]
    assert csp["frame-ancestors"] == "'self'"
    assert response.headers["x-frame-options"] == "SAMEORIGIN"
    page_csp = httpx.get(f"{web.url}/notebooks/rich.ipynb", timeout=10).headers["content-security-policy"]
    assert "frame-src 'self'" in page_csp
    assert "font-src 'self';" in page_csp + ";"


async def test_rich_html_runs_sandboxed(web: Daemon, browser: Browser) -> None:
    make_notebook(web, PROBE.replace("window.__origin", json.dumps(web.url)))
    page = await browser.open(web, "rich.ipynb", ready=False)
    # a cookie of the page's origin, readable by the page's own scripts: not by the frame's
    await page.context.add_cookies([{"name": "probe", "value": "page-secret", "url": web.url}])
    await page.goto(f"{web.url}/notebooks/rich.ipynb?token={web.token}")
    cell = page.cell((await page.cell_ids())[0])
    frames = cell.locator("iframe.output-frame")
    await frames.nth(2).wait_for()
    assert await frames.count() == 3  # plain HTML stays inline
    assert await cell.locator(".output-html p.plain b").text_content() == "HTML"
    for i in range(3):
        assert await frames.nth(i).get_attribute("sandbox") == "allow-scripts"
    # the Styler's colours apply, inside its frame
    styler = cell.frame_locator("iframe.output-frame >> nth=0")
    await styler.locator("#cellA").wait_for()
    assert await styler.locator("#cellA").evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(255, 0, 0)"
    assert await page.page.evaluate("() => getComputedStyle(document.body).display") == "block"
    # the script ran, and the frame grew to fit what it drew
    plot = cell.frame_locator("iframe.output-frame >> nth=1")
    assert await plot.locator("#plot").text_content() == "drawn by script 42"
    await page.page.wait_for_function("(el) => el.getBoundingClientRect().height >= 320", arg=await frames.nth(1).element_handle())
    # the hostile script: nothing of the page, its cookie, storage or API
    probe = cell.frame_locator("iframe.output-frame >> nth=2")
    results_el = probe.locator("#results")
    await results_el.wait_for()
    await probe.locator("#results:not(:text-is('running'))").wait_for()
    results = json.loads(await results_el.text_content() or "{}")
    assert results["origin"] == "allowed: null"  # an opaque origin
    assert results["cookie"].startswith("blocked")
    assert "page-secret" not in json.dumps(results)
    for name in ("parent_dom", "parent_var", "storage", "session_storage", "api_relative", "api_absolute", "xhr", "top_navigation"):
        assert results[name].startswith("blocked"), (name, results[name])
    assert await page.page.evaluate("() => window.__pwned") is None
    assert page.page.url.startswith(f"{web.url}/notebooks/rich.ipynb")
    assert "page-secret" in await page.page.evaluate("() => document.cookie")  # the page itself still reads it
    await page.screenshot("rich")
    page.assert_no_errors(allow=("Content Security Policy", "Refused", "sandbox", "Unsafe attempt", "Failed to fetch", "ERR_"))
