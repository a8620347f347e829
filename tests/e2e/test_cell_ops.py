"""Cell operations as in JupyterLab: the clipboard (C/X/V/Shift+V, nbformat JSON on the system
clipboard), multi-select, merge and split, outputs hidden and scrolled, line numbers, help."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.conftest import Daemon

from .browser import Browser, NotebookPage, eventually_equal
from .test_collab import server_ids

pytestmark = pytest.mark.timeout(90)


def write_cells(path: Path, cells: list[dict[str, Any]]) -> None:
    nb = nbformat.v4.new_notebook()
    for spec in cells:
        if spec.get("type", "code") == "code":
            cell = nbformat.v4.new_code_cell(spec["source"], execution_count=spec.get("count"))
            cell.outputs = [nbformat.v4.new_output(**o) for o in spec.get("outputs", [])]
        else:
            cell = nbformat.v4.new_markdown_cell(spec["source"])
        nb.cells.append(cell)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


def server_cells(web: Daemon, path: str) -> list[dict[str, Any]]:
    return web.notebook(path)["cells"]


async def selected_ids(page: NotebookPage) -> list[str]:
    return await page.page.eval_on_selector_all(".cells > .cell.selected", "els => els.map(e => e.dataset.cellId)")


async def clipboard_text(page: NotebookPage) -> str:
    return await page.page.evaluate("() => navigator.clipboard.readText()")


async def allow_clipboard(page: NotebookPage, web: Daemon) -> None:
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=web.url)


async def test_copy_cut_paste_through_the_system_clipboard(web: Daemon, browser: Browser) -> None:
    write_cells(web.root / "clip.ipynb", [
        {"source": "a = 1"},
        {"source": "b = 2\nb", "count": 4, "outputs": [{"output_type": "execute_result", "execution_count": 4, "data": {"text/plain": "2"}}]},
        {"source": "c = 3"},
        {"type": "markdown", "source": "# notes"},
    ])
    page = await browser.open(web, "clip.ipynb")
    await allow_clipboard(page, web)
    a, b, c, md = await page.cell_ids()
    # b and c selected (Shift+Down), copied with c
    await page.select(b)
    await page.page.keyboard.press("Shift+ArrowDown")
    assert await selected_ids(page) == [b, c]
    await page.page.keyboard.press("c")
    copied = json.loads(await clipboard_text(page))
    assert copied["nbformat"] == 4 and [cell["source"] for cell in copied["cells"]] == ["b = 2\nb", "c = 3"]
    assert copied["cells"][0]["outputs"][0]["data"]["text/plain"] == "2"  # nbformat JSON, whole
    # v pastes below the selected cell: new cells (new ids), without outputs or counts
    await page.select(a)
    await page.page.keyboard.press("v")
    await eventually_equal(lambda: asyncio.to_thread(lambda: len(server_ids(web, "clip.ipynb"))), 6)
    cells = server_cells(web, "clip.ipynb")
    assert [cell["source"] for cell in cells] == ["a = 1", "b = 2\nb", "c = 3", "b = 2\nb", "c = 3", "# notes"]
    pasted = [cells[1]["id"], cells[2]["id"]]
    assert not {*pasted} & {a, b, c, md}
    assert cells[1]["outputs"] == [] and cells[1]["execution_count"] is None
    assert cells[3]["outputs"][0]["data"]["text/plain"] == "2"  # the original keeps its output
    assert await selected_ids(page) == pasted  # the pasted cells are selected
    # Shift+V pastes above
    await page.select(md)
    await page.page.keyboard.press("Shift+V")
    await eventually_equal(lambda: asyncio.to_thread(lambda: [x["source"] for x in server_cells(web, "clip.ipynb")][-3:]),
                           ["b = 2\nb", "c = 3", "# notes"])
    assert len(server_ids(web, "clip.ipynb")) == 8
    # x cuts the two pasted cells; pasted at the end they keep their ids (no longer in use)
    await page.select(pasted[0])
    await page.cell(pasted[1]).locator(".prompt-in").click(modifiers=["Shift"])
    assert await selected_ids(page) == pasted
    await page.page.keyboard.press("x")
    await eventually_equal(lambda: asyncio.to_thread(lambda: len(server_ids(web, "clip.ipynb"))), 6)
    assert pasted[0] not in server_ids(web, "clip.ipynb")
    await page.select((await page.cell_ids())[-1])
    await page.page.keyboard.press("v")
    await eventually_equal(lambda: asyncio.to_thread(lambda: server_ids(web, "clip.ipynb")[-2:]), pasted)
    # cells copied elsewhere (another notebook, JupyterLab): outputs and counts are dropped
    foreign = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "id": a, "source": ["x = ", "42"], "metadata": {"tags": ["t"]}, "execution_count": 9,
         "outputs": [{"output_type": "stream", "name": "stdout", "text": "from elsewhere\n"}]}]}
    await page.page.evaluate("(text) => navigator.clipboard.writeText(text)", json.dumps(foreign))
    await page.select(a)
    await page.page.keyboard.press("v")
    await eventually_equal(lambda: asyncio.to_thread(lambda: server_cells(web, "clip.ipynb")[1]["source"]), "x = 42")
    new = server_cells(web, "clip.ipynb")[1]
    assert new["id"] != a and new["outputs"] == [] and new["execution_count"] is None
    assert new["metadata"]["tags"] == ["t"]
    # z undoes the paste
    await page.page.keyboard.press("z")
    await eventually_equal(lambda: asyncio.to_thread(lambda: len(server_ids(web, "clip.ipynb"))), 8)
    # text that is not cells: a clear message, nothing inserted
    await page.page.evaluate("() => navigator.clipboard.writeText('just some text')")
    await page.page.keyboard.press("v")
    await page.page.locator(".toast-error", has_text="no cells").wait_for()
    await asyncio.sleep(0.3)
    assert len(server_ids(web, "clip.ipynb")) == 8
    page.assert_no_errors()


async def test_ctrl_c_and_ctrl_v_in_command_mode(web: Daemon, browser: Browser) -> None:
    page = await browser.open(web, "nb.ipynb")
    first, second = await page.cell_ids()
    await page.select(first)
    await page.page.keyboard.press("Control+c")
    await page.select(second)
    await page.page.keyboard.press("Control+v")
    await eventually_equal(lambda: asyncio.to_thread(lambda: [c["source"] for c in server_cells(web, "nb.ipynb")]),
                           ["a = 1", "print('héllo')", "a = 1"])
    # in an editor, Ctrl+C / Ctrl+V copy and paste text, not cells
    await page.editor(first).click()
    await page.page.keyboard.press("Control+a")
    await page.page.keyboard.press("Control+c")
    await page.page.keyboard.press("End")
    await page.page.keyboard.press("Control+v")
    await eventually_equal(lambda: page.source(first), "a = 1a = 1")
    assert len(server_ids(web, "nb.ipynb")) == 3
    page.assert_no_errors()


async def test_multi_select_acts_on_every_selected_cell(web: Daemon, browser: Browser) -> None:
    write_cells(web.root / "five.ipynb", [{"source": f"x{i} = {i}"} for i in range(1, 6)])
    zoe = await browser.open(web, "five.ipynb")
    bob = await browser.open(web, "five.ipynb", name="Bob", color="#1976d2")
    c1, c2, c3, c4, c5 = await zoe.cell_ids()
    await zoe.select(c2)
    await zoe.page.keyboard.press("Shift+ArrowDown")
    await zoe.page.keyboard.press("Shift+ArrowDown")
    assert await selected_ids(zoe) == [c2, c3, c4]
    # m: all three become markdown (new cells in place, as JupyterLab retypes), still selected
    await zoe.page.keyboard.press("m")
    await eventually_equal(bob.cell_types, ["code", "markdown", "markdown", "markdown", "code"])
    assert len(await selected_ids(zoe)) == 3
    await zoe.page.keyboard.press("y")
    await eventually_equal(bob.cell_types, ["code"] * 5)
    ids = await zoe.cell_ids()
    block = ids[1:4]
    assert await selected_ids(zoe) == block
    # Shift+J moves the block down, keeping every id; z moves it back
    await zoe.page.keyboard.press("Shift+J")
    await eventually_equal(bob.cell_ids, [ids[0], ids[4], *block])
    assert await selected_ids(zoe) == block
    await zoe.page.keyboard.press("z")
    await eventually_equal(bob.cell_ids, ids)
    # Shift+click selects a range; d d deletes all of it; z puts it back where it was
    await zoe.select(ids[0])
    await zoe.cell(ids[2]).locator(".prompt-in").click(modifiers=["Shift"])
    assert await selected_ids(zoe) == ids[:3]
    await zoe.page.keyboard.press("d")
    await zoe.page.keyboard.press("d")
    await eventually_equal(bob.cell_ids, ids[3:])
    await zoe.page.keyboard.press("z")
    await eventually_equal(bob.cell_ids, ids)
    assert [c["source"] for c in server_cells(web, "five.ipynb")] == [f"x{i} = {i}" for i in range(1, 6)]
    # Ctrl+A selects every cell; a plain click collapses the selection
    await zoe.page.keyboard.press("Control+a")
    assert await selected_ids(zoe) == ids
    await zoe.select(ids[1])
    assert await selected_ids(zoe) == []
    zoe.assert_no_errors()
    bob.assert_no_errors()


async def test_merge_and_split(web: Daemon, browser: Browser) -> None:
    write_cells(web.root / "ms.ipynb", [{"source": "a = 1"}, {"source": "b = 2"}, {"source": "c = 3"},
                                        {"source": "x = 1\ny = 2\nz = 3"}])
    page = await browser.open(web, "ms.ipynb")
    a, b, c, xyz = await page.cell_ids()
    # Shift+M merges the selection into its first cell
    await page.select(a)
    await page.page.keyboard.press("Shift+ArrowDown")
    await page.page.keyboard.press("Shift+M")
    await eventually_equal(lambda: asyncio.to_thread(lambda: server_ids(web, "ms.ipynb")), [a, c, xyz])
    assert server_cells(web, "ms.ipynb")[0]["source"] == "a = 1\n\nb = 2"
    # with one cell selected, Shift+M merges it with the cell below
    await page.page.keyboard.press("Shift+M")
    await eventually_equal(lambda: asyncio.to_thread(lambda: server_cells(web, "ms.ipynb")[0]["source"]), "a = 1\n\nb = 2\n\nc = 3")
    # z, z: both merges undone, the cells back with their ids
    await page.page.keyboard.press("z")
    await page.page.keyboard.press("z")
    await eventually_equal(lambda: asyncio.to_thread(lambda: server_ids(web, "ms.ipynb")), [a, b, c, xyz])
    assert [x["source"] for x in server_cells(web, "ms.ipynb")][:3] == ["a = 1", "b = 2", "c = 3"]
    # Ctrl+Shift+- splits at the cursor; the editing goes on in the new cell
    await page.editor(xyz).locator(".cm-line").nth(1).click()
    await page.page.keyboard.press("Home")
    await page.page.keyboard.press("Control+Shift+Minus")
    await eventually_equal(lambda: asyncio.to_thread(lambda: [x["source"] for x in server_cells(web, "ms.ipynb")][3:]),
                           ["x = 1", "y = 2\nz = 3"])
    await page.page.keyboard.type("w = 0\n")
    await eventually_equal(lambda: asyncio.to_thread(lambda: server_cells(web, "ms.ipynb")[4]["source"]), "w = 0\ny = 2\nz = 3")
    # a selection splits into three: before, the selection, after
    second = (await page.cell_ids())[4]
    await page.editor(second).locator(".cm-line").nth(1).click()
    await page.page.keyboard.press("Home")
    await page.page.keyboard.press("Shift+End")
    await page.page.keyboard.press("Control+Shift+Minus")
    await eventually_equal(lambda: asyncio.to_thread(lambda: [x["source"] for x in server_cells(web, "ms.ipynb")][4:]),
                           ["w = 0", "y = 2", "z = 3"])
    page.assert_no_errors()


async def test_outputs_hidden_line_numbers_and_help(web: Daemon, browser: Browser) -> None:
    write_cells(web.root / "out.ipynb", [
        {"source": "print('hi')", "count": 1, "outputs": [{"output_type": "stream", "name": "stdout", "text": "hi\n"}]},
        {"source": "y = 2"},
    ])
    zoe = await browser.open(web, "out.ipynb")
    bob = await browser.open(web, "out.ipynb", name="Bob", color="#1976d2")
    first, second = await zoe.cell_ids()
    await zoe.cell(first).locator(".output-stdout").wait_for()
    # o hides the outputs, for everyone (nbformat's `collapsed`, JupyterLab's outputs_hidden)
    await zoe.select(first)
    await zoe.page.keyboard.press("o")
    for page in (zoe, bob):
        await page.cell(first).locator(".outputs-hidden-note").wait_for()
        assert await page.cell(first).locator(".output-stdout").is_hidden()
    metadata = server_cells(web, "out.ipynb")[0]["metadata"]
    assert metadata["collapsed"] is True and metadata["jupyter"]["outputs_hidden"] is True
    # a click on the note shows them again
    await bob.cell(first).locator(".outputs-hidden-note").click()
    for page in (zoe, bob):
        await page.cell(first).locator(".output-stdout").wait_for()
    assert "collapsed" not in server_cells(web, "out.ipynb")[0]["metadata"]
    # the bar left of the outputs hides them too
    await zoe.cell(first).locator(".output-gutter").hover()
    await zoe.cell(first).locator(".output-collapser").click()
    await zoe.cell(first).locator(".outputs-hidden-note").wait_for()
    await zoe.page.keyboard.press("o")
    await zoe.cell(first).locator(".output-stdout").wait_for()
    # l: line numbers in the selected cell; Shift+L: in every cell (this page only)
    await zoe.select(first)
    await zoe.page.keyboard.press("l")
    await zoe.cell(first).locator(".cm-lineNumbers").wait_for()
    assert await zoe.cell(second).locator(".cm-lineNumbers").count() == 0
    await zoe.page.keyboard.press("Shift+L")
    await zoe.cell(second).locator(".cm-lineNumbers").wait_for()
    assert await bob.page.locator(".cm-lineNumbers").count() == 0
    # h: the shortcuts; Esc closes them, and keys reach the notebook again
    await zoe.page.keyboard.press("h")
    help_dialog = zoe.page.locator(".dialog", has_text="Keyboard shortcuts")
    await help_dialog.wait_for()
    assert await help_dialog.locator("kbd", has_text="Shift+M").count() == 1
    await zoe.page.keyboard.press("d")  # not a command while the dialog is open
    await zoe.page.keyboard.press("d")
    await zoe.page.keyboard.press("Escape")
    await help_dialog.wait_for(state="detached")
    assert len(server_ids(web, "out.ipynb")) == 2
    zoe.assert_no_errors()
    bob.assert_no_errors()


async def test_long_outputs_scroll_and_collapse(web: Daemon, browser: Browser) -> None:
    text = "".join(f"line {i}\n" for i in range(3000))
    write_cells(web.root / "long.ipynb", [
        {"source": "for i in range(3000): print('line', i)", "count": 1,
         "outputs": [{"output_type": "stream", "name": "stdout", "text": text}]},
        {"source": "after = True"},
    ])
    page = await browser.open(web, "long.ipynb")
    first, second = await page.cell_ids()
    cell = page.cell(first)
    await cell.locator(".output-stdout").wait_for()
    scroll = cell.locator(".output-scroll")
    # past the threshold the output scrolls in a bounded view: the page stays short
    await page.page.wait_for_function("(el) => el.closest('.cell').classList.contains('outputs-scrolled')", arg=await scroll.element_handle())
    box = await scroll.bounding_box()
    assert box and box["height"] <= 600
    assert await scroll.evaluate("el => el.scrollHeight > 20 * el.clientHeight")
    assert await page.page.evaluate("() => document.documentElement.scrollHeight") < 3000
    assert (await cell.locator(".output-stdout").text_content() or "").endswith("line 2999\n")
    # "show the whole output", and back
    toggle = cell.locator(".outputs-scroll-toggle")
    await toggle.click()
    await page.page.wait_for_function("() => document.documentElement.scrollHeight > 30000")
    assert server_cells(web, "long.ipynb")[0]["metadata"]["scrolled"] is False
    await toggle.click()
    await page.page.wait_for_function("() => document.documentElement.scrollHeight < 3000")
    # Shift+O switches the scrolling too; o collapses the output entirely
    await page.select(first)
    await page.page.keyboard.press("Shift+O")
    await page.page.wait_for_function("() => document.documentElement.scrollHeight > 30000")
    await page.page.keyboard.press("o")
    await cell.locator(".outputs-hidden-note", has_text="1 output hidden").wait_for()
    await page.page.wait_for_function("() => document.documentElement.scrollHeight < 3000")
    await page.screenshot("collapsed", full_page=False)
    page.assert_no_errors()
