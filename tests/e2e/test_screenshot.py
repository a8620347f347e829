"""The README screenshot: a notebook with outputs and two users editing it.

Always written to test-artifacts/; with CRDTNB_UPDATE_SCREENSHOT=1 also to docs/screenshot.png.
"""

from __future__ import annotations

import os
import shutil

import nbformat
import pytest

from tests.conftest import Daemon

from .browser import REPO, Browser, eventually_equal
from .images import plot_png

pytestmark = pytest.mark.timeout(60)

PATH = "analysis.ipynb"

INTRO = """# Damped oscillations

Two people are editing this notebook at the same time: **Zoë** in the code, **Bob** in the notes.
Cells run on the server's kernel; every page sees the outputs arrive."""

CODE = """import math

readings = [round(math.exp(-t / 9) * math.sin(t * 1.5), 3) for t in range(6)]
print(f"loaded {len(readings)} readings")
show_table(readings)"""

PLOT = """plot(lambda t: math.exp(-t / 9) * math.sin(t * 1.5),
     lambda t: math.exp(-t / 6) * math.cos(t))"""

NOTES = """## Notes

- the first wave is $e^{-t/9}\\sin(1.5\\,t)$, the second $e^{-t/6}\\cos t$: τ ≈ 9 s and 6 s
- """

TABLE = (
    "<table><thead><tr><th>t</th><th>reading</th></tr></thead><tbody>"
    + "".join(f"<tr><td>{t}</td><td>{v}</td></tr>" for t, v in enumerate([0.0, 0.889, 0.113, -0.739, -0.179, 0.537]))
    + "</tbody></table>"
)


def make_notebook(web: Daemon) -> None:
    """The notebook with the outputs its cells made (only the kernel agent writes outputs into
    an open document; a file brings them in)."""
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell(CODE, execution_count=1)
    code.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="loaded 6 readings\n"),
        nbformat.v4.new_output("display_data", data={"text/html": TABLE, "text/plain": "<table>"}),
    ]
    plot = nbformat.v4.new_code_cell(PLOT, execution_count=2)
    plot.outputs = [nbformat.v4.new_output("display_data", data={"image/png": plot_png(), "text/plain": "<Figure size 520x220>"})]
    nb.cells = [nbformat.v4.new_markdown_cell(INTRO), code, plot, nbformat.v4.new_markdown_cell(NOTES)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(web.root / PATH))


async def test_readme_screenshot(web: Daemon, browser: Browser) -> None:
    make_notebook(web)
    intro, code, plot, notes = [cell["id"] for cell in web.notebook(PATH)["cells"]]
    zoe = await browser.open(web, PATH, name="Zoë", color="#d32f2f")
    bob = await browser.open(web, PATH, name="Bob", color="#1976d2")
    # Bob writes a note; Zoë edits the code: each sees the other's caret
    await bob.cell(notes).locator(".rendered").dblclick()
    await bob.page.keyboard.press("Control+End")
    await bob.page.keyboard.type("amplitude halves every 6 s")
    await bob.page.keyboard.press("Control+Enter")  # rendered, math typeset; Bob stays on the cell
    await zoe.editor(code).locator(".cm-line").nth(2).click()
    await zoe.page.keyboard.press("End")
    await zoe.page.keyboard.type("  # 6 samples")
    await eventually_equal(lambda: bob.source(code), CODE.replace("range(6)]", "range(6)]  # 6 samples"))
    await zoe.page.wait_for_function(
        "() => document.querySelector('.presence').dataset.count === '2'"
    )
    # Zoë's page shows Bob's note being written in the rendered cell, and his marker on it
    await zoe.cell(notes).locator(".cell-marker", has_text="Bob").wait_for()
    await eventually_equal(
        lambda: zoe.cell(notes).locator(".rendered li").nth(1).text_content(), "amplitude halves every 6 s"
    )
    # Zoë selects a word: Bob sees it highlighted in her colour, with her caret and name
    await zoe.editor(code).locator(".cm-line").nth(3).locator("text=readings").first.dblclick()
    await bob.cell(code).locator(".cm-ySelection").wait_for()
    await bob.cell(code).locator(".cm-ySelectionInfo", has_text="Zoë").wait_for()
    # the notes' math is typeset on both pages
    for page in (zoe, bob):
        await page.cell(notes).locator(".rendered .katex").nth(1).wait_for()
    await bob.page.set_viewport_size({"width": 1280, "height": 1180})
    await bob.page.evaluate("() => window.scrollTo(0, 0)")
    await bob.page.mouse.move(0, 0)
    await bob.page.wait_for_timeout(300)
    shot = await bob.screenshot("readme", full_page=False)
    if os.environ.get("CRDTNB_UPDATE_SCREENSHOT") == "1":
        docs = REPO / "docs"
        docs.mkdir(exist_ok=True)
        shutil.copyfile(shot, docs / "screenshot.png")
    zoe.assert_no_errors()
    bob.assert_no_errors()
