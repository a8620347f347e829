"""The list page's file operations in Chromium: folders and breadcrumbs, new folder,
duplicate, rename, move, download, upload (picker and drop), delete with confirmation; an
open notebook page follows its notebook when it is renamed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import nbformat
import pytest

from tests.conftest import Daemon, write_notebook

from .browser import Browser, NotebookPage, eventually_equal

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from playwright.async_api import Locator

pytestmark = pytest.mark.timeout(120)


async def _open_list(browser: Browser, web: Daemon) -> NotebookPage:
    page = await browser.new_page()
    await page.goto(f"{web.url}/?token={web.token}")  # the list page sets data-ready too
    return page


async def _names(page: NotebookPage) -> list[str]:
    return await page.page.locator(".notebook-list tbody .nb-title").all_text_contents()


def _row(page: NotebookPage, path: str) -> Locator:
    return page.page.locator(f".notebook-list tr[data-path='{path}']")


async def _answer_prompt(page: NotebookPage, text: str) -> None:
    field = page.page.locator(".dialog .dialog-input")
    await field.fill(text)
    await field.press("Enter")
    await page.page.locator(".dialog").wait_for(state="detached")


def _notebook_json(sources: list[str]) -> str:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    return nbformat.writes(nb)


async def test_file_operations_on_the_list_page(web: Daemon, browser: Browser, root: Path, tmp_path: Path) -> None:
    write_notebook(root / "sub" / "inner.ipynb", ["1"])
    page = await _open_list(browser, web)
    assert await _names(page) == ["examples", "sub", "nb.ipynb"]

    # Folders: into one and back by the breadcrumbs.
    await page.page.locator(".folder-link", has_text="sub").click()
    await eventually_equal(_names_of(page), ["..", "inner.ipynb"])
    assert await page.page.locator(".crumbs .crumb-last").text_content() == "sub"
    assert page.page.url.endswith("/?dir=sub")
    await page.page.locator(".crumbs a.crumb", has_text="Notebooks").click()
    await eventually_equal(_names_of(page), ["examples", "sub", "nb.ipynb"])

    # A new folder.
    await page.page.locator(".new-folder").click()
    await _answer_prompt(page, "team")
    await eventually_equal(_names_of(page), ["examples", "sub", "team", "nb.ipynb"])
    assert (root / "team").is_dir()

    # Duplicate, then rename the copy.
    await _row(page, "nb.ipynb").locator(".row-copy").click()
    await eventually_equal(_names_of(page), ["examples", "sub", "team", "nb-Copy1.ipynb", "nb.ipynb"])
    await _row(page, "nb-Copy1.ipynb").locator(".row-rename").click()
    await _answer_prompt(page, "renamed")  # .ipynb is added
    await eventually_equal(_names_of(page), ["examples", "sub", "team", "nb.ipynb", "renamed.ipynb"])
    assert (root / "renamed.ipynb").is_file() and not (root / "nb-Copy1.ipynb").exists()

    # Move it into the new folder.
    await _row(page, "renamed.ipynb").locator(".row-move").click()
    await _answer_prompt(page, "team")
    await eventually_equal(_names_of(page), ["examples", "sub", "team", "nb.ipynb"])
    assert (root / "team" / "renamed.ipynb").is_file()

    # Download: the current document as an .ipynb file.
    async with page.page.expect_download() as info:
        await _row(page, "nb.ipynb").locator(".row-download").click()
    download = await info.value
    assert download.suggested_filename == "nb.ipynb"
    saved = tmp_path / "downloaded.ipynb"
    await download.save_as(str(saved))
    downloaded = nbformat.read(str(saved), as_version=4)
    assert [c.source for c in downloaded.cells] == ["a = 1", "print('héllo')"]

    # Upload with the file picker; again: asked first, then replaced.
    upload = tmp_path / "uploaded.ipynb"
    upload.write_text(_notebook_json(["print('uploaded')"]))
    await page.page.locator(".upload-picker").set_input_files(str(upload))
    await eventually_equal(_names_of(page), ["examples", "sub", "team", "nb.ipynb", "uploaded.ipynb"])
    assert web.notebook("uploaded.ipynb")["cells"][0]["source"] == "print('uploaded')"
    upload.write_text(_notebook_json(["print('second version')"]))
    await page.page.locator(".upload-picker").set_input_files(str(upload))
    await page.page.locator(".dialog", has_text="Replace uploaded.ipynb?").wait_for()
    await page.page.locator(".dialog .dialog-ok").click()
    await eventually_equal(lambda: _first_source(web, "uploaded.ipynb"), "print('second version')")

    # Upload by dropping a file on the list.
    dropped = await page.page.evaluate_handle(
        """(text) => { const dt = new DataTransfer(); dt.items.add(new File([text], 'dropped.ipynb')); return dt }""",
        _notebook_json(["print('dropped')"]),
    )
    zone = page.page.locator(".drop-zone")
    await zone.dispatch_event("dragover", {"dataTransfer": dropped})
    await zone.dispatch_event("drop", {"dataTransfer": dropped})
    await eventually_equal(_names_of(page), ["examples", "sub", "team", "dropped.ipynb", "nb.ipynb", "uploaded.ipynb"])
    assert (root / "dropped.ipynb").is_file()

    # Delete asks first: cancel keeps the file, confirm deletes it.
    await _row(page, "dropped.ipynb").locator(".row-trash").click()
    await page.page.locator(".dialog .dialog-cancel").click()
    assert (root / "dropped.ipynb").is_file()
    await _row(page, "dropped.ipynb").locator(".row-trash").click()
    await page.page.locator(".dialog .dialog-ok").click()
    await eventually_equal(_names_of(page), ["examples", "sub", "team", "nb.ipynb", "uploaded.ipynb"])
    assert not (root / "dropped.ipynb").exists()
    await page.screenshot("list")
    page.assert_no_errors(allow=("409",))  # the second upload, before it was confirmed


async def test_a_refused_operation_says_why(web: Daemon, browser: Browser, root: Path) -> None:
    write_notebook(root / "taken.ipynb", ["1"])
    page = await _open_list(browser, web)
    await _row(page, "nb.ipynb").locator(".row-rename").click()
    await _answer_prompt(page, "taken.ipynb")
    toast = page.page.locator(".toast-error")
    await toast.wait_for()
    assert "already exists" in (await toast.text_content() or "")
    assert (root / "nb.ipynb").is_file()
    assert "".join(json.loads((root / "taken.ipynb").read_text())["cells"][0]["source"]) == "1"
    page.assert_no_errors(allow=("409",))


async def test_an_open_page_follows_its_notebook_when_it_is_renamed(web: Daemon, browser: Browser, root: Path) -> None:
    notebook = await browser.open(web, "nb.ipynb", name="Bob", color="#1976d2")
    first = (await notebook.cell_ids())[0]
    await notebook.type_in(first, "  # typed before the move")
    lister = await _open_list(browser, web)
    await _row(lister, "nb.ipynb").locator(".row-move").click()
    await _answer_prompt(lister, "moved/here")
    await notebook.page.wait_for_url("**/notebooks/moved/here/nb.ipynb", timeout=20_000)
    await notebook.wait_ready()
    assert await notebook.source(first) == "a = 1  # typed before the move"
    assert await notebook.page.locator(".crumbs .crumb-last").text_content() == "nb.ipynb"
    # The page works at its new path: edits reach the renamed file.
    await notebook.type_in(first, "!")
    await eventually_equal(lambda: _first_source(web, "moved/here/nb.ipynb"), "a = 1  # typed before the move!")
    assert not (root / "nb.ipynb").exists()
    assert "token" not in notebook.page.url
    notebook.assert_no_errors()
    lister.assert_no_errors()


async def test_an_open_page_of_a_deleted_notebook_says_so(web: Daemon, browser: Browser, root: Path) -> None:
    notebook = await browser.open(web, "nb.ipynb")
    lister = await _open_list(browser, web)
    await _row(lister, "nb.ipynb").locator(".row-trash").click()
    await lister.page.locator(".dialog .dialog-ok").click()
    banner = notebook.page.locator(".banner")
    await banner.wait_for(state="visible")
    assert "deleted" in (await banner.text_content() or "")
    await eventually_equal(lambda: notebook.page.locator(".connection-status").text_content(), "Disconnected")
    assert not (root / "nb.ipynb").exists()
    notebook.assert_no_errors()


def _names_of(page: NotebookPage) -> Callable[[], Awaitable[list[str]]]:
    return lambda: _names(page)


async def _first_source(web: Daemon, path: str) -> str:
    return web.notebook(path)["cells"][0]["source"]

