"""Outputs rendered live from the document: arriving through an outside edit of the .ipynb
(which the daemon merges in; clients may not write outputs), and from the kernel."""

from __future__ import annotations

import nbformat
import pytest

from tests.conftest import Daemon, write_notebook

from .browser import Browser, eventually_equal
from .images import gradient_png
from .test_kernel import set_source

pytestmark = pytest.mark.timeout(60)

NB = "nb.ipynb"

# HTML without <script> or <style> is shown inline, sanitized (HTML with them runs in a
# sandboxed frame: tests/e2e/test_rich_outputs.py)
HOSTILE_HTML = (
    "<p class='ok'>rich <b>bold</b> output</p>"
    "<img id='bad' src='x' onerror='window.__pwned = 1'>"
    "<a href='javascript:window.__pwned = 3'>click</a>"
    "<table><tr><th>n</th></tr><tr><td>42</td></tr></table>"
    "<iframe src='javascript:window.parent.__pwned = 6'></iframe>"
)
HOSTILE_SVG = (
    "<svg xmlns='http://www.w3.org/2000/svg' width='40' height='40'>"
    "<script>window.__pwned = 4</script>"
    "<circle cx='20' cy='20' r='15' fill='teal' onload='window.__pwned = 5'/></svg>"
)
TRACEBACK = [
    "\x1b[0;31m---------------------------------------------------------------------------\x1b[0m",
    "\x1b[0;31mZeroDivisionError\x1b[0m                         Traceback (most recent call last)",
    "Cell \x1b[0;32mIn[7], line 1\x1b[0m\n\x1b[0;32m----> 1\x1b[0m \x1b[38;5;241m1\x1b[39m\x1b[38;5;241m/\x1b[39m\x1b[38;5;241m0\x1b[39m",
    "\x1b[0;31mZeroDivisionError\x1b[0m: division by zero",
]


def seeded_outputs() -> list[dict[str, object]]:
    return [
        {"output_type": "stream", "name": "stdout", "text": "plain, \x1b[31mred\x1b[0m and \x1b[1;32mbold green\x1b[0m\n"},
        {"output_type": "stream", "name": "stderr", "text": "a warning on stderr\n"},
        {"output_type": "execute_result", "execution_count": 7, "metadata": {},
         "data": {"text/plain": "\x1b[34m42\x1b[0m"}},
        {"output_type": "display_data", "metadata": {},
         "data": {"text/html": HOSTILE_HTML, "text/plain": "<HTML>"}},
        {"output_type": "display_data", "metadata": {"image/png": {"width": 60, "height": 30}},
         "data": {"image/png": gradient_png(), "text/plain": "<Figure>"}},
        {"output_type": "display_data", "metadata": {}, "data": {"image/svg+xml": HOSTILE_SVG}},
        {"output_type": "display_data", "metadata": {},
         "data": {"application/json": {"name": "Zoë", "scores": [1, 2.5], "nested": {"ok": True}}}},
        {"output_type": "error", "ename": "ZeroDivisionError", "evalue": "division by zero", "traceback": TRACEBACK},
    ]


def add_outputs_on_disk(web: Daemon, path: str, index: int, outputs: list[dict[str, object]], count: int) -> None:
    """Edit the .ipynb behind the daemon's back, as an editor would: the open room merges it."""
    nb = nbformat.read(str(web.root / path), as_version=4)
    nb.cells[index].outputs = [nbformat.from_dict(o) for o in outputs]
    nb.cells[index].execution_count = count
    nbformat.write(nb, str(web.root / path))


async def test_seeded_outputs_render_safely(web: Daemon, browser: Browser) -> None:
    zoe = await browser.open(web, NB)
    bob = await browser.open(web, NB, name="Bob", color="#1976d2")
    cell_id = (await zoe.cell_ids())[1]
    for page in (zoe, bob):
        assert await page.csp_violations() == []  # the page itself needs nothing the CSP refuses
    add_outputs_on_disk(web, NB, 1, seeded_outputs(), 7)
    for page in (zoe, bob):
        out = page.cell(cell_id).locator(".outputs")
        await out.locator(".output").nth(7).wait_for(timeout=20_000)
        assert await out.locator(".output").count() == 8
        assert await page.cell(cell_id).locator(".prompt-in").text_content() == "[7]:"
        assert await page.cell(cell_id).locator(".prompt-out").text_content() == "Out[7]:"
        # ANSI colours in a stream and in text/plain
        stdout = out.locator(".output-stdout")
        assert await stdout.locator("span.ansi-red-fg").text_content() == "red"
        green = stdout.locator("span.ansi-green-fg")
        assert await green.text_content() == "bold green"
        assert "bold" in (await green.get_attribute("style") or "")
        assert await out.locator(".output-stderr").text_content() == "a warning on stderr\n"
        assert await out.locator("[data-output-type='execute_result'] span.ansi-blue-fg").text_content() == "42"
        # sanitized HTML: content kept, every script path gone
        html = out.locator(".output-html")
        assert await html.locator("p.ok b").text_content() == "bold"
        assert await html.locator("td").text_content() == "42"
        assert await html.locator("script, style, iframe").count() == 0
        assert await html.locator("#bad").get_attribute("onerror") is None
        assert await html.locator("a").get_attribute("href") is None
        assert await page.page.locator("body").is_visible()
        # PNG decoded by the browser at its size
        img = out.locator("img.output-image")
        await page.page.wait_for_function(
            "(el) => el.complete && el.naturalWidth === 60", arg=await img.element_handle()
        )
        assert (await img.get_attribute("src") or "").startswith("data:image/png;base64,iVBOR")
        # sanitized SVG: the circle stays, its handler and the script go
        svg = out.locator(".output-svg svg")
        assert await svg.locator("circle").count() == 1
        assert await svg.locator("circle").get_attribute("onload") is None
        assert await svg.locator("script").count() == 0
        # JSON pretty-printed, unicode intact
        json_text = await out.locator(".output-json").text_content() or ""
        assert '"name": "Zoë"' in json_text and '\n  "scores": [\n    1,\n    2.5\n  ]' in json_text
        # the error: traceback with ANSI colours
        error = out.locator(".output-error")
        assert "ZeroDivisionError: division by zero" in (await error.text_content() or "")
        assert await error.locator("span.ansi-red-fg").count() >= 2
        assert await page.page.evaluate("() => window.__pwned") is None
    await zoe.screenshot("outputs")
    for page in (zoe, bob):
        # DOMPurify parsed the hostile markup in an inert document; Chromium reports what it saw
        # there against the CSP (inline handler, <style>; blocked): nothing else may show up.
        violations = await page.csp_violations()
        assert {v.split()[0] for v in violations} <= {"script-src-attr", "script-src-elem", "style-src-elem"}, violations
        page.assert_no_errors(allow=("inline event handler", "Content Security Policy"))


async def test_stream_grows_in_place(kernel_web: Daemon, browser: Browser) -> None:
    source = (
        "import time\n"
        "print('line 0', flush=True)\n"
        "time.sleep(1.5)\n"
        "for i in range(1, 16):\n"
        "    print(f'line {i} \\x1b[32mok\\x1b[0m ✓', flush=True)\n"
        "    time.sleep(0.25)\n"
        "print('50% done', end='', flush=True)\n"
        "time.sleep(1.5)\n"
        "print('\\r100% done', end='', flush=True)"
    )
    write_notebook(kernel_web.root / "stream.ipynb", [source])
    zoe = await browser.open(kernel_web, "stream.ipynb")
    bob = await browser.open(kernel_web, "stream.ipynb", name="Bob", color="#1976d2")
    cell_id = (await zoe.cell_ids())[0]
    await zoe.editor(cell_id).click()
    await zoe.page.keyboard.press("Control+Enter")
    for page in (zoe, bob):
        pre = page.cell(cell_id).locator(".output-stdout")
        await pre.wait_for(timeout=30_000)
        # mark the element and its first text: re-creating or re-rendering would lose the marks
        await pre.evaluate("el => { el.__probe = 'same element'; el.firstChild.__probe = 'same text' }")
    expected = "line 0\n" + "".join(f"line {i} ok ✓\n" for i in range(1, 16)) + "50% done"
    for page in (zoe, bob):
        pre = page.cell(cell_id).locator(".output-stdout")
        await eventually_equal(lambda: pre.text_content(), expected, timeout=20)
        assert await pre.evaluate("el => el.__probe") == "same element"
        assert await pre.evaluate("el => el.firstChild.__probe") == "same text"
        assert await page.cell(cell_id).locator(".output").count() == 1
        assert await page.cell(cell_id).locator(".output-stdout span.ansi-green-fg").count() == 15
    # a \r rewrites the last line (what a progress bar does): rendered too
    for page in (zoe, bob):
        pre = page.cell(cell_id).locator(".output-stdout")
        await eventually_equal(lambda: pre.text_content(), expected.replace("50% done", "100% done"), timeout=20)
    # clearing the outputs (this page's own "clear") empties the area on every page
    await zoe.select(cell_id)
    await zoe.page.locator(".toolbar .tb-more").click()
    await zoe.page.locator(".menu .menu-clear-outputs").click()
    for page in (zoe, bob):
        await eventually_equal(lambda: page.cell(cell_id).locator(".output").count(), 0)
        await eventually_equal(lambda: page.cell(cell_id).locator(".prompt-in").text_content(), "[ ]:")
    zoe.assert_no_errors()
    bob.assert_no_errors()


async def test_execution_state_and_kernel_status_are_shown(kernel_web: Daemon, browser: Browser) -> None:
    zoe = await browser.open(kernel_web, NB)
    bob = await browser.open(kernel_web, NB, name="Bob", color="#1976d2")
    first, second = await zoe.cell_ids()
    for page in (zoe, bob):
        assert await page.cell(second).locator(".prompt-in").text_content() == "[ ]:"
    await set_source(zoe, second, "import time\ntime.sleep(3)")
    await zoe.page.keyboard.press("Control+Enter")
    for page in (zoe, bob):
        prompt = page.cell(second).locator(".prompt-in")
        await eventually_equal(lambda: prompt.text_content(), "[*]:", timeout=30)
        await eventually_equal(lambda: page.page.locator(".kernel-status").text_content(), "Kernel busy", timeout=30)
        assert await page.cell(second).evaluate("el => el.classList.contains('running')")
    for page in (zoe, bob):
        prompt = page.cell(second).locator(".prompt-in")
        await eventually_equal(lambda: prompt.text_content(), "[1]:", timeout=30)
        await eventually_equal(lambda: page.page.locator(".kernel-status").get_attribute("data-status"), "idle")
        assert not await page.cell(second).evaluate("el => el.classList.contains('running')")
        assert await page.cell(first).locator(".prompt-in").text_content() == "[ ]:"
    zoe.assert_no_errors()
    bob.assert_no_errors()
