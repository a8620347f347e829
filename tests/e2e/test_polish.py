"""Presence and layout details of issue 13, each reproduced first: a remote caret's name label
in a one-line cell, whole name tags, centred initials, distinct colours, the floating cell
toolbar over a heading at 760 px, a toast over the delete button."""

from __future__ import annotations

import base64
import json

import pytest

from tests.conftest import Daemon, write_notebook

from .browser import DEFAULT_TIMEOUT_MS, Browser, NotebookPage, notebook_url

pytestmark = pytest.mark.timeout(60)

NB = "nb.ipynb"

# The point at the centre of an element: is it that element (or inside it) the user sees there?
_VISIBLE_AT_CENTRE = """(el) => {
  const r = el.getBoundingClientRect();
  const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  return !!hit && (hit === el || el.contains(hit));
}"""

# The bounding box of the light (text) pixels inside the avatar's inner disc, against its centre.
_INK_OFFSET = """async (dataUrl) => {
  const img = new Image();
  img.src = dataUrl;
  await img.decode();
  const canvas = document.createElement('canvas');
  canvas.width = img.width; canvas.height = img.height;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(0, 0, img.width, img.height).data;
  const cx = img.width / 2, cy = img.height / 2, r = img.width / 2 * 0.78;
  let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
  for (let y = 0; y < img.height; y++) {
    for (let x = 0; x < img.width; x++) {
      if ((x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2 > r * r) continue;
      const i = (y * img.width + x) * 4;
      if (Math.min(data[i], data[i + 1], data[i + 2]) < 200) continue;
      minX = Math.min(minX, x); maxX = Math.max(maxX, x + 1);
      minY = Math.min(minY, y); maxY = Math.max(maxY, y + 1);
    }
  }
  return { dx: (minX + maxX) / 2 - cx, dy: (minY + maxY) / 2 - cy, width: maxX - minX };
}"""


async def test_remote_caret_label_and_name_tags_are_whole(web: Daemon, browser: Browser) -> None:
    zoe = await browser.open(web, NB, name="Zoë", color="#d32f2f")
    bob = await browser.open(web, NB, name="Guest 3456", color="#1976d2")
    first = (await zoe.cell_ids())[0]  # "a = 1": a one-line cell
    await bob.type_in(first, "  # hi")
    label = zoe.cell(first).locator(".cm-ySelectionInfo")
    await label.wait_for()
    assert await label.text_content() == "Guest 3456"
    # the label above the only line is not clipped by the editor: it is what one sees there
    assert await label.evaluate(_VISIBLE_AT_CENTRE), "the caret's name label is hidden or clipped"
    box = await label.bounding_box()
    scroller = await zoe.cell(first).locator(".cm-scroller").bounding_box()
    assert box and scroller and box["y"] >= scroller["y"] - 0.5
    # the name tag by the cell shows the whole name
    marker = zoe.cell(first).locator(".cell-marker")
    await marker.wait_for()
    assert await marker.text_content() == "Guest 3456"
    assert await marker.evaluate("el => el.scrollWidth <= el.clientWidth"), "the name tag is truncated"
    await zoe.screenshot("caret-label", full_page=False)
    zoe.assert_no_errors()
    bob.assert_no_errors()


async def test_avatar_initials_are_centred(web: Daemon, browser: Browser) -> None:
    # a high-density screen, so that a pixel of offset is measurable
    context = await browser.browser.new_context(viewport={"width": 900, "height": 600}, device_scale_factor=4)
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    try:
        for name in ("Bob", "Zoë Hart", "Guest 3456"):
            page = await context.new_page()
            await page.add_init_script(
                f"localStorage.setItem('crdtnb-user-name', {json.dumps(name)}); localStorage.setItem('crdtnb-user-color', '#1976d2')"
            )
            await page.goto(notebook_url(web, NB))
            await page.wait_for_selector("body[data-ready='true']")
            avatar = page.locator(".presence .peer-self .avatar")
            png = await avatar.screenshot(animations="disabled")
            offset = await page.evaluate(_INK_OFFSET, "data:image/png;base64," + base64.b64encode(png).decode())
            # within half a CSS pixel (2 device pixels) both ways
            assert abs(offset["dx"]) <= 2 and abs(offset["dy"]) <= 2, (name, offset)
            await page.close()
    finally:
        await context.close()


async def test_two_users_get_different_colours(web: Daemon, browser: Browser) -> None:
    # both browsers stored the same colour
    zoe = await browser.open(web, NB, name="Zoë", color="#d32f2f")
    bob = await browser.open(web, NB, name="Bob", color="#d32f2f")
    for page in (zoe, bob):
        await page.page.wait_for_function("() => document.querySelector('.presence').dataset.count === '2'")
        await page.page.wait_for_function(
            """() => {
              const colours = [...document.querySelectorAll('.presence .avatar')].map(a => a.style.backgroundColor);
              return colours.length === 2 && colours[0] !== colours[1];
            }"""
        )
    # and the other page's caret wears the new colour too
    first = (await zoe.cell_ids())[0]
    await bob.type_in(first, "  # b")
    await zoe.type_in((await zoe.cell_ids())[1], "  # z")
    bob_caret = await zoe.cell(first).locator(".cm-ySelectionCaret").evaluate("e => getComputedStyle(e).borderLeftColor")
    zoe_avatar = await zoe.page.locator(".presence .peer-self .avatar").evaluate("e => getComputedStyle(e).backgroundColor")
    assert bob_caret != zoe_avatar
    zoe.assert_no_errors()
    bob.assert_no_errors()


async def active_tools(page: NotebookPage, cell_id: str) -> None:
    await page.select(cell_id)
    await page.cell(cell_id).locator(".cell-tools").wait_for()


async def test_cell_toolbar_does_not_cover_a_heading_at_760px(web: Daemon, browser: Browser) -> None:
    title = "# Quarterly results of the damped oscillation experiments, with notes"
    write_notebook(web.root / "heading.ipynb", [title, "Some text."], cell_type="markdown")
    page = await browser.open(web, "heading.ipynb")
    await page.page.set_viewport_size({"width": 760, "height": 700})
    first = (await page.cell_ids())[0]
    await page.cell(first).locator(".rendered h1").wait_for()
    await active_tools(page, first)
    overlaps = await page.page.evaluate(
        """(id) => {
          const cell = document.querySelector(`.cell[data-cell-id='${id}']`);
          const tools = cell.querySelector('.cell-tools').getBoundingClientRect();
          const range = document.createRange();
          range.selectNodeContents(cell.querySelector('.rendered h1'));
          return [...range.getClientRects()].filter((r) => r.width > 0 && !(
            r.right <= tools.left || r.left >= tools.right || r.bottom <= tools.top || r.top >= tools.bottom)).length;
        }""",
        first,
    )
    await page.screenshot("heading-760", full_page=False)
    assert overlaps == 0, "the cell toolbar covers the heading's text"
    page.assert_no_errors()


async def test_a_toast_does_not_cover_the_delete_button(web: Daemon, browser: Browser) -> None:
    write_notebook(web.root / "long.ipynb", [f"x{i} = {i}" for i in range(30)])
    page = await browser.open(web, "long.ipynb")
    await page.page.set_viewport_size({"width": 1280, "height": 500})
    target = (await page.cell_ids())[15]
    await active_tools(page, target)
    trash = page.cell(target).locator(".tool-trash")
    # bring the cell's toolbar to where toasts appear: just above the bottom of the window
    await page.page.evaluate(
        "(el) => window.scrollBy(0, el.getBoundingClientRect().top + el.getBoundingClientRect().height / 2 - (window.innerHeight - 36))",
        await trash.element_handle(),
    )
    await page.page.keyboard.press("z")  # "Nothing to undo": a toast
    await page.page.locator(".toast").wait_for()
    assert await trash.evaluate(_VISIBLE_AT_CENTRE), "a toast covers the delete button"
    await page.screenshot("toast", full_page=False)
    page.assert_no_errors()
