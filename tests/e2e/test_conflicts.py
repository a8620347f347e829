"""Two users acting on the same cells at once: a delete under someone's typing, undo after
a collaborator changed the neighbours (issue 13's bugs, reproduced first)."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import Daemon, write_notebook

from .browser import Browser, NotebookPage, eventually_equal
from .test_collab import eventually_converged, server_ids, server_sources, two_users

pytestmark = pytest.mark.timeout(90)

NB = "nb.ipynb"


async def editor_has_focus(page: NotebookPage) -> bool:
    return await page.page.evaluate("() => !!document.activeElement?.closest('.cm-editor')")


async def test_collaborator_delete_never_eats_typing(web: Daemon, browser: Browser) -> None:
    zoe, bob = await two_users(browser, web)
    first, second = await zoe.cell_ids()
    # Bob types in the second cell, without a pause; meanwhile Zoë selects it and presses d d
    await bob.editor(second).click()
    await bob.page.keyboard.press("Control+End")
    typed = "  # Bob keeps typing here"
    typing = asyncio.create_task(bob.page.keyboard.type(typed, delay=45))
    await asyncio.sleep(0.25)
    await zoe.select(second)
    await zoe.page.keyboard.press("d")
    await zoe.page.keyboard.press("d")
    await typing
    # what would be command keys (m: markdown, r: raw) if the typing had lost its editor
    await bob.page.keyboard.type("mr")
    expected = "print('héllo')" + typed + "mr"
    # nothing Bob typed is lost: the cell is back where it was, with all of his text
    await eventually_equal(lambda: asyncio.to_thread(lambda: server_sources(web)), ["a = 1", expected])
    assert await editor_has_focus(bob)
    await eventually_equal(bob.cell_types, ["code", "code"])
    await eventually_equal(zoe.cell_types, ["code", "code"])
    ids = await eventually_converged(web, zoe, bob, 2)
    assert ids[0] == first
    await eventually_equal(lambda: zoe.source(ids[1]), expected)
    # Zoë's undo of her delete finds the cell back already: no second copy
    await zoe.select(first)
    await zoe.page.keyboard.press("z")
    await asyncio.sleep(0.5)
    assert await eventually_converged(web, zoe, bob, 2) == ids
    assert len(set(server_ids(web))) == 2
    await bob.screenshot("bob")
    zoe.assert_no_errors()
    bob.assert_no_errors()


async def test_undo_of_delete_restores_the_cell_where_it_was(web: Daemon, browser: Browser) -> None:
    write_notebook(web.root / "four.ipynb", ["one = 1", "two = 2", "three = 3", "four = 4"])
    zoe, bob = await two_users(browser, web, "four.ipynb")
    c1, c2, c3, c4 = await zoe.cell_ids()
    # Zoë deletes the second cell
    await zoe.select(c2)
    await zoe.page.keyboard.press("d")
    await zoe.page.keyboard.press("d")
    await eventually_equal(bob.cell_ids, [c1, c3, c4])
    # Bob turns its neighbour into markdown (a new cell in its place, as JupyterLab does)
    await bob.select(c3)
    await bob.page.keyboard.press("m")
    await eventually_equal(lambda: zoe.page.evaluate("() => document.querySelectorAll('.cells > .cell.markdown').length"), 1)
    retyped = (await zoe.cell_ids())[1]
    assert retyped not in (c1, c3, c4)
    # Zoë's undo puts "two = 2" back between "one" and the (retyped) "three", on every page
    await zoe.select(c1)
    await zoe.page.keyboard.press("z")
    order = await eventually_converged(web, zoe, bob, 4, path="four.ipynb")
    assert order == [c1, c2, retyped, c4]
    assert server_sources(web, "four.ipynb") == ["one = 1", "two = 2", "three = 3", "four = 4"]
    # redo deletes it again, undo restores it again, in place
    await zoe.page.keyboard.press("Shift+Z")
    await eventually_converged(web, zoe, bob, 3, path="four.ipynb")
    await zoe.page.keyboard.press("z")
    assert await eventually_converged(web, zoe, bob, 4, path="four.ipynb") == [c1, c2, retyped, c4]
    zoe.assert_no_errors()
    bob.assert_no_errors()
