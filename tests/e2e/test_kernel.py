"""Running cells from the page on the server's kernel (skipped where the kernel API is absent)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import Daemon, write_notebook

from .browser import Browser, eventually_equal

pytestmark = pytest.mark.timeout(60)

NB = "nb.ipynb"


async def set_source(page: object, cell_id: str, source: str) -> None:
    """Replace a cell's text by typing (select all, type)."""
    editor = page.editor(cell_id)  # type: ignore[attr-defined]
    await editor.click()
    await page.page.keyboard.press("Control+a")  # type: ignore[attr-defined]
    await page.page.keyboard.type(source)  # type: ignore[attr-defined]


async def test_run_in_one_page_shows_in_both(kernel_web: Daemon, browser: Browser) -> None:
    zoe = await browser.open(kernel_web, NB)
    bob = await browser.open(kernel_web, NB, name="Bob", color="#1976d2")
    first, second = await zoe.cell_ids()
    await set_source(zoe, second, "print('héllo from the kernel', a + 41)")
    # Shift+Enter in the first cell, then the Run button on the second
    await zoe.editor(first).click()
    await zoe.page.keyboard.press("Shift+Enter")
    await zoe.cell(second).hover()
    await zoe.cell(second).locator(".tool-run").click()
    for page in (zoe, bob):
        await eventually_equal(
            lambda: page.cell(second).locator(".output-stdout").text_content(), "héllo from the kernel 42\n", timeout=40
        )
        assert await page.cell(first).locator(".prompt-in").text_content() == "[1]:"
        await eventually_equal(lambda: page.cell(second).locator(".prompt-in").text_content(), "[2]:")
        await eventually_equal(lambda: page.page.locator(".kernel-status").get_attribute("data-status"), "idle")
    saved = kernel_web.notebook(NB)["cells"][1]
    assert saved["execution_count"] == 2
    assert saved["outputs"][0]["text"] == "héllo from the kernel 42\n"
    await bob.screenshot("bob")
    zoe.assert_no_errors()
    bob.assert_no_errors()


async def test_output_arrives_while_no_page_is_open(kernel_web: Daemon, browser: Browser) -> None:
    zoe = await browser.open(kernel_web, NB)
    bob = await browser.open(kernel_web, NB, name="Bob", color="#1976d2")
    first = (await zoe.cell_ids())[0]
    await set_source(zoe, first, "import time\ntime.sleep(5)\nprint('done after 5 s')")
    await zoe.page.keyboard.press("Control+Enter")
    # both pages show the cell running, then every page is closed
    for page in (zoe, bob):
        await eventually_equal(lambda: page.cell(first).locator(".prompt-in").text_content(), "[*]:", timeout=20)
    started = time.monotonic()
    await zoe.close()
    await bob.close()
    await asyncio.sleep(max(0.0, 6.5 - (time.monotonic() - started)))
    later = await browser.open(kernel_web, NB, name="Ann", color="#388e3c")
    output = later.cell(first).locator(".output-stdout")
    await eventually_equal(lambda: output.text_content(), "done after 5 s\n", timeout=30)
    assert (await later.cell(first).locator(".prompt-in").text_content() or "").startswith("[")
    assert await later.cell(first).locator(".prompt-in").text_content() != "[*]:"
    await later.screenshot("reopened")
    later.assert_no_errors()


async def test_stream_interrupt_restart(kernel_web: Daemon, browser: Browser) -> None:
    page = await browser.open(kernel_web, NB)
    first, second = await page.cell_ids()
    await set_source(
        page, first, "import time\nfor i in range(60):\n    print('tick', i, flush=True)\n    time.sleep(0.2)"
    )
    await page.page.keyboard.press("Control+Enter")
    stream = page.cell(first).locator(".output-stdout")
    await stream.wait_for(timeout=30_000)
    await stream.evaluate("el => { el.__probe = 'same element'; el.firstChild.__probe = 'same text' }")
    await page.page.wait_for_function(
        "(el) => (el.textContent.match(/tick/g) || []).length >= 4", arg=await stream.element_handle(), timeout=20_000
    )
    # the stream grew in the same element
    assert await stream.evaluate("el => el.__probe") == "same element"
    assert await stream.evaluate("el => el.firstChild.__probe") == "same text"
    assert await page.cell(first).locator(".output-stdout").count() == 1
    assert await page.page.locator(".kernel-status").text_content() == "Kernel busy"
    await page.screenshot("streaming")
    # interrupt (toolbar): KeyboardInterrupt ends the cell
    await page.page.locator(".toolbar .tb-stop").click()
    error = page.cell(first).locator(".output-error")
    await error.wait_for(timeout=20_000)
    assert "KeyboardInterrupt" in (await error.text_content() or "")
    await eventually_equal(lambda: page.cell(first).locator(".prompt-in").text_content(), "[1]:")
    # restart (toolbar, then confirmed): the kernel's variables are gone
    await page.page.locator(".toolbar .tb-restart").click()
    await page.page.locator(".dialog .dialog-ok").click()
    await eventually_equal(lambda: page.page.locator(".kernel-status").get_attribute("data-status"), "idle", timeout=30)
    await set_source(page, second, "print(i)")
    await page.page.keyboard.press("Control+Enter")
    error = page.cell(second).locator(".output-error")
    await error.wait_for(timeout=30_000)
    assert "NameError" in (await error.text_content() or "")
    page.assert_no_errors()


async def test_run_all_with_rich_outputs(kernel_web: Daemon, browser: Browser) -> None:
    write_notebook(
        kernel_web.root / "rich.ipynb",
        [
            "from IPython.display import HTML, display\ndisplay(HTML('<b id=\"x\">bold</b><script>window.__k=1</script>'))",
            "{'answer': 42}",
            "print('\\x1b[31mred\\x1b[0m')",
            "1/0",
            "print('never runs')",
        ],
    )
    page = await browser.open(kernel_web, "rich.ipynb")
    ids = await page.cell_ids()
    await page.page.locator(".toolbar .tb-runAll").click()
    cells = [page.cell(i) for i in ids]
    await cells[3].locator(".output-error").wait_for(timeout=40_000)
    # HTML with a script runs in the output's sandboxed frame, never in the page
    frame = cells[0].frame_locator("iframe.output-frame")
    assert await frame.locator("b#x").text_content() == "bold"
    assert await cells[0].locator("script").count() == 0
    assert await cells[1].locator(".prompt-out").text_content() == "Out[2]:"
    assert "'answer': 42" in (await cells[1].locator(".output").text_content() or "")
    assert await cells[2].locator(".ansi-red-fg").text_content() == "red"
    assert "ZeroDivisionError" in (await cells[3].locator(".output-error").text_content() or "")
    # cells queued behind an error do not run
    await eventually_equal(lambda: cells[4].locator(".prompt-in").text_content(), "[ ]:")
    assert await cells[4].locator(".output").count() == 0
    assert await page.page.evaluate("() => window.__k") is None
    await page.screenshot("run-all")
    page.assert_no_errors(allow=("inline", "Content Security Policy"))


async def test_kernel_status_is_unknown_while_the_server_is_down(kernel_web: Daemon, browser: Browser) -> None:
    page = await browser.open(kernel_web, NB)
    first = (await page.cell_ids())[0]
    await page.editor(first).click()
    await page.page.keyboard.press("Control+Enter")
    pill = page.page.locator(".kernel-status")
    await eventually_equal(lambda: pill.get_attribute("data-status"), "idle", timeout=40)
    assert await pill.text_content() == "Kernel idle"
    kernel_web.stop()
    await page.page.wait_for_function("() => document.body.dataset.connection === 'disconnected'")
    # the page cannot know the kernel's state now: it must not claim it is idle
    await eventually_equal(lambda: pill.get_attribute("data-status"), "offline")
    assert "idle" not in (await pill.text_content() or "")
    assert "unknown" in (await pill.text_content() or "")
    await page.screenshot("offline")
    kernel_web.start()  # same port: the page reconnects, and knows again
    await page.page.wait_for_function("() => document.body.dataset.connection === 'connected'", timeout=20_000)
    await page.page.wait_for_function("() => document.querySelector('.kernel-status').dataset.status !== 'offline'")
    page.assert_no_errors(allow=("WebSocket", "ERR_CONNECTION_REFUSED", "Failed to load resource"))


async def menu_action(page: object, name: str) -> None:
    await page.page.locator(".toolbar .tb-more").click()  # type: ignore[attr-defined]
    await page.page.locator(f".menu .menu-{name}").click()  # type: ignore[attr-defined]


async def test_run_above_below_restart_run_all_and_clear(kernel_web: Daemon, browser: Browser) -> None:
    write_notebook(kernel_web.root / "runs.ipynb", ["x = 1", "x += 1\nprint(x)", "print('below', x)"])
    page = await browser.open(kernel_web, "runs.ipynb")
    one, two, three = await page.cell_ids()
    prompts = lambda: asyncio.gather(*(page.cell(i).locator(".prompt-in").text_content() for i in (one, two, three)))  # noqa: E731
    # "Run all above" the second cell: only the first runs
    await page.select(two)
    await menu_action(page, "run-above")
    await eventually_equal(prompts, ["[1]:", "[ ]:", "[ ]:"], timeout=40)
    # "Run selected and all below": the second and the third
    await menu_action(page, "run-below")
    await eventually_equal(lambda: page.cell(three).locator(".output-stdout").text_content(), "below 2\n", timeout=30)
    assert await page.cell(two).locator(".output-stdout").text_content() == "2\n"
    await eventually_equal(prompts, ["[1]:", "[2]:", "[3]:"])
    # a restart asks first; "Cancel" keeps the kernel and its variables
    await page.select(one)
    await page.page.keyboard.press("0")
    await page.page.keyboard.press("0")
    await page.page.locator(".dialog", has_text="Restart the kernel?").wait_for()
    await page.page.locator(".dialog .dialog-cancel").click()
    await page.page.locator(".dialog").wait_for(state="detached")
    await page.select(three)
    await page.page.keyboard.press("Control+Enter")
    await eventually_equal(lambda: page.cell(three).locator(".prompt-in").text_content(), "[4]:", timeout=30)
    assert await page.cell(three).locator(".output-stdout").text_content() == "below 2\n"
    # "Restart kernel and run all…", confirmed: counts start again from 1
    await menu_action(page, "restart-run-all")
    await page.page.locator(".dialog .dialog-ok").click()
    await eventually_equal(prompts, ["[1]:", "[2]:", "[3]:"], timeout=60)
    assert await page.cell(three).locator(".output-stdout").text_content() == "below 2\n"
    # "Clear all outputs": outputs and counts gone, on the page and on the server
    await menu_action(page, "clear-all-outputs")
    await eventually_equal(prompts, ["[ ]:", "[ ]:", "[ ]:"])
    assert await page.page.locator(".output").count() == 0
    await eventually_equal(
        lambda: asyncio.to_thread(
            lambda: [(c["outputs"], c["execution_count"]) for c in kernel_web.notebook("runs.ipynb")["cells"]]
        ),
        [([], None)] * 3,
    )
    # Ctrl+Enter with two cells selected runs both, and only them
    await page.select(one)
    await page.page.keyboard.press("Shift+ArrowDown")
    await page.page.keyboard.press("Control+Enter")
    await eventually_equal(prompts, ["[4]:", "[5]:", "[ ]:"], timeout=30)
    assert await page.cell(two).locator(".output-stdout").text_content() == "2\n"
    page.assert_no_errors()
