"""Completion (Tab), help (Shift+Tab) and input() prompts in the page, with the server's
real kernel; the fallbacks when no kernel runs or the user may not run code."""

from __future__ import annotations

from pathlib import Path

import pytest

from crdtnb.users import Role, UserStore
from tests.conftest import Daemon, write_notebook

from .browser import Browser, NotebookPage, eventually_equal, notebook_url

pytestmark = pytest.mark.timeout(120)


async def _run_first_cell(page: NotebookPage, cell_id: str) -> None:
    await page.editor(cell_id).click()
    await page.page.keyboard.press("Control+Enter")
    await eventually_equal(lambda: page.cell(cell_id).locator(".prompt-in").text_content(), "[1]:", timeout=60)


async def _completions(page: NotebookPage) -> list[str]:
    await page.page.locator(".cm-tooltip-autocomplete").wait_for()
    return await page.page.locator(".cm-tooltip-autocomplete li .cm-completionLabel").all_text_contents()


async def test_tab_completes_from_the_kernel_and_still_indents(kernel_web: Daemon, browser: Browser, root: Path) -> None:
    write_notebook(root / "complete.ipynb", ["alpha_value = 41\nalpha_other = 1", ""])
    page = await browser.open(kernel_web, "complete.ipynb")
    first, second = await page.cell_ids()
    await _run_first_cell(page, first)

    await page.editor(second).click()
    await page.page.keyboard.type("x = alpha_v")
    await page.page.keyboard.press("Tab")
    assert await _completions(page) == ["alpha_value"]
    await page.page.keyboard.press("Enter")  # accepts the completion
    await eventually_equal(lambda: page.source(second), "x = alpha_value")
    # Tab at the start of a line and after a space indents (four columns), as before.
    await page.page.keyboard.press("Enter")
    await page.page.keyboard.press("Tab")
    await page.page.keyboard.type("y = ")
    await page.page.keyboard.press("Tab")  # after a space: to the next multiple of four columns
    await eventually_equal(lambda: page.source(second), "x = alpha_value\n    y =     ")
    assert await page.page.locator(".cm-tooltip-autocomplete").count() == 0
    # Several matches: a list to choose from; Tab takes the selected one too.
    await page.page.keyboard.type("alpha_")
    await page.page.keyboard.press("Tab")
    assert await _completions(page) == ["alpha_other", "alpha_value"]
    await page.page.keyboard.press("ArrowDown")
    await page.page.keyboard.press("Tab")
    await eventually_equal(lambda: page.source(second), "x = alpha_value\n    y =     alpha_value")
    # Escape closes an open list and leaves the editor in edit mode.
    await page.page.keyboard.type(" + alpha_")
    await page.page.keyboard.press("Tab")
    await page.page.locator(".cm-tooltip-autocomplete").wait_for()
    await page.page.keyboard.press("Escape")
    await page.page.locator(".cm-tooltip-autocomplete").wait_for(state="detached")
    assert await page.page.evaluate("() => Boolean(document.activeElement?.closest('.cm-editor'))")
    page.assert_no_errors()


async def test_shift_tab_shows_the_docstring(kernel_web: Daemon, browser: Browser, root: Path) -> None:
    write_notebook(root / "doc.ipynb", ["def documented(x):\n    'Turns x into something better.'\n    return x", ""])
    page = await browser.open(kernel_web, "doc.ipynb")
    first, second = await page.cell_ids()
    await _run_first_cell(page, first)
    await page.editor(second).click()
    await page.page.keyboard.type("documented(")
    await page.page.keyboard.press("Shift+Tab")
    tooltip = page.page.locator(".cm-help-tooltip")
    await tooltip.wait_for()
    text = await tooltip.text_content() or ""
    assert "Turns x into something better." in text and "documented(x)" in text
    await page.screenshot("help")
    # Esc closes it, in edit mode still; typing on goes into the cell.
    await page.page.keyboard.press("Escape")
    await tooltip.wait_for(state="detached")
    await page.page.keyboard.type("1)")
    await eventually_equal(lambda: page.source(second), "documented(1)")
    # Shift+Tab in the indentation dedents, as before.
    await page.page.keyboard.press("Enter")
    await page.page.keyboard.press("Tab")
    await page.page.keyboard.press("Shift+Tab")
    await page.page.keyboard.type("z")
    await eventually_equal(lambda: page.source(second), "documented(1)\nz")
    page.assert_no_errors()


async def test_without_a_kernel_tab_offers_the_notebooks_words(web: Daemon, browser: Browser, root: Path) -> None:
    write_notebook(root / "words.ipynb", ["spam_and_eggs = 1\nspam_or_ham = 2", ""])
    page = await browser.open(web, "words.ipynb")
    second = (await page.cell_ids())[1]
    await page.editor(second).click()
    await page.page.keyboard.type("spam_a")
    await page.page.keyboard.press("Tab")
    assert await _completions(page) == ["spam_and_eggs"]
    await page.page.keyboard.press("Enter")
    await eventually_equal(lambda: page.source(second), "spam_and_eggs")
    # No kernel was started for that, and help says why there is none.
    assert web.get("/api/notebooks/words.ipynb/kernel").json()["status"] == "none"
    await page.page.keyboard.press("Shift+Tab")
    await page.page.locator(".cm-help-tooltip").wait_for()
    assert "run a cell" in (await page.page.locator(".cm-help-tooltip").text_content() or "")
    page.assert_no_errors()


async def test_an_editor_who_may_not_run_code_gets_words_not_the_kernel(kernel_web: Daemon, browser: Browser, root: Path) -> None:
    write_notebook(root / "shared.ipynb", ["secret_from_kernel = 1\nvisible_word = 2", ""])
    store = UserStore(root / ".crdtnb")
    store.add("ed", Role.EDITOR, "correct horse battery")
    token = store.new_token("ed")
    owner = await browser.open(kernel_web, "shared.ipynb")
    first, second = await owner.cell_ids()
    await _run_first_cell(owner, first)
    await owner.close()
    editor = await browser.new_page(name="Ed", color="#388e3c")
    await editor.goto(notebook_url(kernel_web, "shared.ipynb", token=token))
    await editor.editor(second).click()
    asked: list[int] = []
    editor.page.on("response", lambda r: asked.append(r.status) if r.url.endswith("/complete") else None)
    await editor.page.keyboard.type("visi")
    await editor.page.keyboard.press("Tab")
    assert await _completions(editor) == ["visible_word"]
    # The page knows (GET …/kernel says may_execute: false): it never asks the kernel.
    assert asked == []
    await editor.page.keyboard.press("Enter")
    await editor.page.keyboard.type(" + secret_f")
    await editor.page.keyboard.press("Tab")
    assert await _completions(editor) == ["secret_from_kernel"]
    assert asked == []
    await editor.page.keyboard.press("Enter")
    await eventually_equal(lambda: editor.source(second), "visible_word + secret_from_kernel")
    editor.assert_no_errors(allow=("403",))


async def test_an_input_prompt_answered_on_one_page_shows_answered_on_the_other(kernel_web: Daemon, browser: Browser, root: Path) -> None:
    write_notebook(root / "ask.ipynb", ["name = input('Your name? ')\nprint('hello', name)", "import getpass\npw = getpass.getpass('Password: ')\nprint(len(pw))"])
    zoe = await browser.open(kernel_web, "ask.ipynb")
    bob = await browser.open(kernel_web, "ask.ipynb", name="Bob", color="#1976d2")
    ask, secret = await zoe.cell_ids()
    await zoe.editor(ask).click()
    await zoe.page.keyboard.press("Control+Enter")
    for page in (zoe, bob):
        prompt = page.cell(ask).locator(".stdin")
        await prompt.wait_for(timeout=60_000)
        assert await prompt.locator(".stdin-prompt").text_content() == "Your name? "
        assert await prompt.locator("input").get_attribute("type") == "text"
    await zoe.screenshot("prompt")
    # Bob answers; on both pages the prompt goes and the answer is in the output.
    await bob.cell(ask).locator(".stdin input").fill("Bob")
    await bob.cell(ask).locator(".stdin input").press("Enter")
    for page in (zoe, bob):
        await page.cell(ask).locator(".stdin").wait_for(state="detached")
        await eventually_equal(lambda: page.cell(ask).locator(".output-stdout").text_content(), "Your name? Bob\nhello Bob\n", timeout=30)

    # A password prompt is masked, and what is typed never reaches the document.
    await zoe.select(secret)
    await zoe.page.keyboard.press("Control+Enter")
    field = zoe.cell(secret).locator(".stdin input")
    await field.wait_for(timeout=60_000)
    assert await field.get_attribute("type") == "password"
    assert await bob.cell(secret).locator(".stdin input").get_attribute("type") == "password"
    await field.fill("s3cret-value")
    await field.press("Enter")
    for page in (zoe, bob):
        await eventually_equal(lambda: page.cell(secret).locator(".output-stdout").text_content(), "Password: ········\n12\n", timeout=30)
    assert "s3cret" not in kernel_web.get("/api/notebooks/ask.ipynb").text
    zoe.assert_no_errors()
    bob.assert_no_errors()


async def test_a_viewer_sees_the_prompt_but_cannot_answer(kernel_web: Daemon, browser: Browser, root: Path) -> None:
    write_notebook(root / "wait.ipynb", ["value = input('Answer me: ')\nprint('got', value)"])
    store = UserStore(root / ".crdtnb")
    store.add("vera", Role.VIEWER, "correct horse battery")
    token = store.new_token("vera")
    runner = await browser.open(kernel_web, "wait.ipynb")
    viewer = await browser.new_page(name="Vera", color="#388e3c")
    await viewer.goto(notebook_url(kernel_web, "wait.ipynb", token=token))
    cell = (await runner.cell_ids())[0]
    await runner.editor(cell).click()
    await runner.page.keyboard.press("Control+Enter")
    await viewer.cell(cell).locator(".stdin").wait_for(timeout=60_000)
    assert await viewer.cell(cell).locator(".stdin input").is_disabled()
    await runner.cell(cell).locator(".stdin input").fill("42")
    await runner.cell(cell).locator(".stdin input").press("Enter")
    await eventually_equal(lambda: viewer.cell(cell).locator(".output-stdout").text_content(), "Answer me: 42\ngot 42\n", timeout=30)
    await viewer.cell(cell).locator(".stdin").wait_for(state="detached")
    runner.assert_no_errors()
    viewer.assert_no_errors()
