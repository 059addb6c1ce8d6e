"""The headless-browser harness (tests/browser.py, issue 21) against a real aiohttp server on
127.0.0.1: it reads a plain page clean, and on a hostile one it sees the dialog, the script's
marker and the console error; closing leaves no Chromium behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from browser import open_browser, skip_without_chromium
from fakeserver import LoopServers

pytestmark = skip_without_chromium

#: as peer/pages/templates/base.html does: without it Chromium asks for /favicon.ico, and the
#: 404 is a SEVERE console entry
HEAD = '<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,">'
OK = HEAD + "<title>ok</title><h1>Hello</h1>"
BAD = HEAD + ("<title>bad</title><h1>Bad</h1>"
              "<script>alert('x'); window.__pwned = 1; console.error('boom');</script>")


class Pages(LoopServers):
    """/ok and /bad, served on 127.0.0.1 from a daemon thread's own event loop."""

    thread_name = "browser-pages"

    async def _start_servers(self) -> None:
        app = web.Application()
        for path, body in (("/ok", OK), ("/bad", BAD)):
            app.router.add_get(path, _page(body))
        _, port = await self._listen(app)
        self.url = f"http://127.0.0.1:{port}"


def _page(body: str):
    """An aiohttp handler answering with the HTML `body`."""
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="text/html")
    return handler


@pytest.fixture
def pages():
    with Pages() as served:
        yield served


@pytest.fixture
def browser(tmp_path):
    with open_browser(tmp_path / "artefacts") as opened:
        yield opened


def test_a_plain_page_reads_clean_and_its_screenshot_is_kept(pages, browser, tmp_path):
    browser.get(f"{pages.url}/ok")
    assert browser.dialogs_seen() == []
    assert browser.text("h1") == "Hello"
    assert browser.console_errors() == []
    assert browser.scripts_ran() is None
    shot = browser.screenshot("ok")
    assert shot == tmp_path / "artefacts" / "ok.png"
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_a_hostile_page_shows_its_dialog_marker_and_console_error(pages, browser):
    browser.get(f"{pages.url}/bad")
    assert browser.dialogs_seen() == [{"kind": "alert", "message": "x"}]
    assert browser.scripts_ran() == 1
    errors = browser.console_errors()
    assert len(errors) == 1 and '"boom"' in errors[0]["message"], errors


def test_closing_ends_chromium_and_removes_its_profile(tmp_path):
    browser = open_browser(tmp_path)
    try:
        chromedriver = browser.driver.service.process
        assert _processes_using(browser.profile), "chromium runs with its profile"
    finally:
        browser.close()
    assert chromedriver.poll() is not None
    assert _processes_using(browser.profile) == []
    assert not browser.profile.exists()
    browser.close()


def _processes_using(profile: Path) -> list[int]:
    """The pids whose command line names `profile`: Chromium's processes, and none other."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(profile).encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids
