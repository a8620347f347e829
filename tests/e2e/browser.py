"""Headless Chromium through Playwright, and helpers to drive the notebook page.

Playwright is imported lazily so that collecting the tests works without it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from playwright.async_api import Browser as PwBrowser
    from playwright.async_api import BrowserContext, Locator, Page

    from tests.conftest import Daemon

CHROMIUM = os.environ.get("CRDTNB_CHROMIUM", "/usr/bin/chromium")
# Without the networking flags Chromium keeps dialling hosts this machine cannot reach.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
DEFAULT_TIMEOUT_MS = 15_000

# Runs before the page's own scripts (CDP, so the CSP does not apply to it): records CSP
# violations and sets this browser user's name and colour unless the page already has them.
_INIT = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(e.violatedDirective + ' ' + (e.blockedURI || ''));
});
try {
  const name = %s, color = %s;
  if (name !== null && !localStorage.getItem('crdtnb-user-name')) {
    localStorage.setItem('crdtnb-user-name', name);
    localStorage.setItem('crdtnb-user-color', color);
  }
} catch (e) { /* about:blank has no storage */ }
"""

# The text of a CodeMirror editor as its document holds it: remote caret widgets (which
# contain the other user's name) and the placeholder are not part of it.
_EDITOR_TEXT = """(content) => Array.from(content.querySelectorAll(':scope > .cm-line')).map((line) => {
  const copy = line.cloneNode(true);
  copy.querySelectorAll('.cm-ySelectionCaret, .cm-placeholder, .cm-widgetBuffer').forEach((n) => n.remove());
  return copy.textContent.replace(/\\u2060/g, '');
}).join('\\n')"""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:80] or "page"


class NotebookPage:
    """One user's tab on a notebook."""

    def __init__(self, page: Page, context: BrowserContext, name: str | None, owner: Browser) -> None:
        self.page = page
        self.context = context
        self.name = name
        self.owner = owner
        self.console_errors: list[str] = []
        page.on("console", lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.console_errors.append(f"pageerror: {exc}"))

    # -- navigation --------------------------------------------------------------------

    async def goto(self, url: str, *, ready: bool = True) -> None:
        await self.page.goto(url)
        if ready:
            await self.wait_ready()

    async def wait_ready(self) -> None:
        await self.page.wait_for_selector("body[data-ready='true']", timeout=DEFAULT_TIMEOUT_MS)

    async def reload(self) -> None:
        await self.page.reload()
        await self.wait_ready()

    # -- reading the page ---------------------------------------------------------------

    def cell(self, cell_id: str) -> Locator:
        return self.page.locator(f".cell[data-cell-id='{cell_id}']")

    def editor(self, cell_id: str) -> Locator:
        return self.cell(cell_id).locator(".cm-content")

    async def cell_ids(self) -> list[str]:
        return await self.page.eval_on_selector_all(".cells > .cell", "els => els.map(e => e.dataset.cellId)")

    async def cell_types(self) -> list[str]:
        return await self.page.eval_on_selector_all(".cells > .cell", "els => els.map(e => e.dataset.type)")

    async def source(self, cell_id: str) -> str:
        return await self.editor(cell_id).evaluate(_EDITOR_TEXT)

    async def active_cell_id(self) -> str | None:
        return await self.page.evaluate("() => document.querySelector('.cell.active')?.dataset.cellId ?? null")

    async def csp_violations(self) -> list[str]:
        return await self.page.evaluate("() => window.__cspViolations || []")

    # -- acting ---------------------------------------------------------------------

    async def type_in(self, cell_id: str, text: str, *, at_end: bool = True) -> None:
        editor = self.editor(cell_id)
        await editor.click()
        if at_end:
            await self.page.keyboard.press("Control+End")
        await self.page.keyboard.type(text)

    async def command_mode(self) -> None:
        await self.page.keyboard.press("Escape")
        await self.page.wait_for_function("() => !document.activeElement?.closest('.cm-editor')")

    async def select(self, cell_id: str) -> None:
        """Make a cell active in command mode (click its prompt area)."""
        await self.cell(cell_id).locator(".prompt-in").click()
        await self.page.wait_for_function(
            "(id) => document.querySelector('.cell.active')?.dataset.cellId === id", arg=cell_id
        )

    async def screenshot(self, label: str, *, full_page: bool = True) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{_slug(self.owner.test_name)}--{_slug(label)}.png"
        await self.page.screenshot(path=str(path), full_page=full_page)
        return path

    async def close(self) -> None:
        await self.context.close()

    def assert_no_errors(self, allow: tuple[str, ...] = ()) -> None:
        errors = [e for e in self.console_errors if not any(a in e for a in allow)]
        assert not errors, f"{self.name}: console errors: {errors}"


class Browser:
    """A launched Chromium; each `open` is a separate context (its own storage: another user)."""

    def __init__(self, browser: PwBrowser, test_name: str) -> None:
        self.browser = browser
        self.test_name = test_name
        self.pages: list[NotebookPage] = []

    async def new_page(self, name: str | None = "Zoë", color: str = "#d32f2f") -> NotebookPage:
        """A page in a fresh context; `name` None leaves the page to pick its default name."""
        context = await self.browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        context.set_default_timeout(DEFAULT_TIMEOUT_MS)
        await context.add_init_script(_INIT % (json.dumps(name), json.dumps(color)))
        page = await context.new_page()
        nb_page = NotebookPage(page, context, name, self)
        self.pages.append(nb_page)
        return nb_page

    async def open(
        self, daemon: Daemon, path: str, *, name: str | None = "Zoë", color: str = "#d32f2f", ready: bool = True
    ) -> NotebookPage:
        page = await self.new_page(name, color)
        await page.goto(notebook_url(daemon, path), ready=ready)
        return page

    async def close(self) -> None:
        await self.browser.close()


def notebook_url(daemon: Daemon, path: str, *, token: str | None = None) -> str:
    token = daemon.token if token is None else token
    query = f"?token={quote(token)}" if token else ""
    return f"{daemon.url}/notebooks/{quote(path)}{query}"


@asynccontextmanager
async def launch(test_name: str) -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        browser = Browser(chromium, test_name)
        try:
            yield browser
        finally:
            await browser.close()


async def eventually_equal(getter: Any, expected: Any, timeout: float = 10.0) -> Any:
    """Poll an async getter until it returns `expected`; assert with the last value."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    value = await getter()
    while value != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        value = await getter()
    assert value == expected, f"expected {expected!r}, got {value!r}"
    return value
