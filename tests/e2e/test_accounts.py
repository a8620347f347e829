"""The page with the daemon's accounts: a viewer's token (read-only page), a password sign-in
(cookie session, CSRF header on every POST). Skipped where the daemon has no accounts."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Daemon

from .browser import Browser, eventually_equal

pytestmark = pytest.mark.timeout(60)

NB = "nb.ipynb"


def users(web: Daemon, *args: str, password: str | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "crdtnb", "users", *args, "--root", str(web.root)],
        input=None if password is None else password + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def accounts_web(web: Daemon) -> Iterator[Daemon]:
    if httpx.head(f"{web.url}/login", timeout=10).status_code != 200:
        pytest.skip("the daemon has no accounts (issue 5)")
    yield web


async def test_viewer_token_gives_a_read_only_page(accounts_web: Daemon, browser: Browser) -> None:
    web = accounts_web
    users(web, "add", "vera", "--role", "viewer", "--password-stdin", password="a long viewer password")
    token = users(web, "token", "vera").splitlines()[-1].strip()
    page = await browser.new_page(name="Vera")
    await page.goto(f"{web.url}/notebooks/{NB}?token={token}")
    status = page.page.locator(".connection-status")
    await eventually_equal(lambda: status.text_content(), "Connected (read-only)")
    first = (await page.cell_ids())[0]
    assert await page.editor(first).get_attribute("contenteditable") == "false"
    await page.editor(first).click()
    await page.page.keyboard.type("x = 'should not land'")
    await page.command_mode()
    await page.page.keyboard.press("b")
    await page.page.locator(".toast-error", has_text="read-only").first.wait_for()
    assert len(await page.cell_ids()) == 2
    assert [c["source"] for c in web.notebook(NB)["cells"]] == ["a = 1", "print('héllo')"]
    await page.screenshot("read-only")
    page.assert_no_errors()


async def test_password_sign_in_uses_the_cookie_session(accounts_web: Daemon, browser: Browser) -> None:
    web = accounts_web
    users(web, "add", "rita", "--role", "runner", "--password-stdin", password="rita's long password ✓")
    page = await browser.new_page(name=None)
    # no token: the page offers the daemon's sign-in page
    await page.goto(f"{web.url}/notebooks/{NB}", ready=False)
    link = page.page.locator(".token-form .login-link a")
    await link.wait_for()
    assert await link.get_attribute("href") == f"/login?next=%2Fnotebooks%2F{NB}"
    # sign in through the real form; it sends us back to the notebook
    await link.click()
    await page.page.wait_for_url("**/login**")
    await page.page.fill("#name", "rita")
    await page.page.fill("#password", "rita's long password ✓")
    await page.page.click("button[type=submit]")
    # back on the notebook, signed in by cookie; the account name is the default presence name
    await page.page.wait_for_url(f"**/notebooks/{NB}")
    await page.wait_ready()
    assert await page.page.evaluate("() => sessionStorage.getItem('crdtnb-token')") is None
    assert await page.page.locator(".user-name").input_value() == "rita"
    assert await page.page.locator(".connection-status").text_content() == "Connected"
    first = (await page.cell_ids())[0]
    await page.type_in(first, "  # by rita")
    await eventually_equal(lambda: page.source(first), "a = 1  # by rita")
    # POSTs carry the CSRF token: running a cell is accepted (the kernel answers if there is one)
    async with page.page.expect_response(lambda r: r.url.endswith("/execute")) as answer:
        await page.page.keyboard.press("Control+Enter")
    assert (await answer.value).status == 202
    kernel = httpx.get(f"{web.url}/api/notebooks/{NB}/kernel", params={"token": web.token}, timeout=10)
    if kernel.status_code == 200:
        await eventually_equal(lambda: page.cell(first).locator(".prompt-in").text_content(), "[1]:", timeout=40)
        httpx.post(f"{web.url}/api/notebooks/{NB}/shutdown", params={"token": web.token}, timeout=20)
    # the list page works from the same session; signing out ends it
    await page.page.goto(f"{web.url}/")
    await page.page.locator("a.nb-link").first.wait_for()
    await page.page.locator(".btn-signout").click()
    await page.page.wait_for_url("**/login**")
    assert (await page.context.request.get(f"{web.url}/api/session")).status == 401
    page.assert_no_errors(allow=("401",))  # GET /api/session before signing in
