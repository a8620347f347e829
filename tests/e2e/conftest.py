"""Fixtures for the end-to-end tests: a daemon serving the pages, headless Chromium.

Chromium is Debian's (``/usr/bin/chromium``, installed by ``.ci/run``), driven by Playwright
for Python; Playwright downloads nothing. Without Playwright or Chromium the tests are
skipped, unless ``CRDTNB_REQUIRE_BROWSER=1`` (set by ``.ci/run``), which makes that a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Daemon

from .browser import ARTIFACTS, CHROMIUM, Browser, launch

REQUIRE = os.environ.get("CRDTNB_REQUIRE_BROWSER") == "1"


def _browser_missing() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = _browser_missing()
    if missing is None or REQUIRE:
        return  # with CRDTNB_REQUIRE_BROWSER=1 a missing browser fails every test here
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=missing))


@pytest.fixture
def web(daemon_factory: Any) -> Daemon:
    """A daemon on 127.0.0.1 serving the API, the websocket and the pages."""
    return daemon_factory()


@pytest.fixture
def kernel_web(web: Daemon) -> Iterator[Daemon]:
    """The daemon, if it has the kernel API (GET /api/notebooks/{path}/kernel answers); its
    kernel for nb.ipynb is shut down afterwards (the others end with the daemon)."""
    response = httpx.get(f"{web.url}/api/notebooks/nb.ipynb/kernel", params={"token": web.token}, timeout=10)
    if response.status_code == 404 or "status" not in response.json():
        pytest.skip("the daemon has no kernel API (issue 3)")
    yield web
    if web.process is not None:
        httpx.post(f"{web.url}/api/notebooks/nb.ipynb/shutdown", params={"token": web.token}, timeout=20)


@pytest.fixture
async def browser(request: pytest.FixtureRequest) -> AsyncIterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with launch(request.node.name) as b:
        yield b
