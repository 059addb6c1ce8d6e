"""A headless Chromium for tests of the web pages (issue 21): Debian's chromium and
chromium-driver, driven by Selenium, with what a page test asks of a browser: the page, a
screenshot kept with the test's artefacts, the console's errors, the JavaScript dialogs that
opened, and whether a script planted in hostile input ran. Every wait is bounded, and closing
ends Chromium and throws its profile away, so a test cannot leave a browser behind."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: seconds a page may take to load, and a script run by `execute_script`
PAGE_LOAD_TIMEOUT = 30
#: seconds any one command to chromedriver may take; Selenium's default is to wait forever
COMMAND_TIMEOUT = 60
#: headless, no sandbox (the tests run as root), and nothing that reaches past this host
#: (no QUIC, background networking, component updates or sync) or fills a small /dev/shm.
#: Without site isolation every frame runs in the page's own process: a dialog opened by a
#: cross-site or sandboxed iframe then shows to chromedriver, which otherwise hangs on it.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--disable-site-isolation-trials", "--window-size=1280,1000")
#: the global a hostile test input sets when a script of its own runs (see `scripts_ran`)
MARKER = "__pwned"
#: the most native dialogs `dialogs_seen` dismisses in one call (a page may open them in a loop)
MAX_NATIVE_DIALOGS = 20

#: Evaluated in each new document before the page's own scripts: in the top frame, alert,
#: confirm and prompt record their calls in `window.__dialogs` instead of opening (so the page
#: runs on), and the page cannot put them back or empty the record. Frames below are left
#: alone: a trap there would record where the top cannot read it, while their dialogs open
#: for real and `dialogs_seen` finds them.
DIALOG_TRAP = """
(() => {
  if (window !== window.top) return;
  const seen = [];
  const fix = (name, value) => Object.defineProperty(window, name, {value, writable: false,
                                                                    configurable: false});
  const trap = (kind, answer) => function (message) {
    let text = "";
    try { text = message === undefined ? "" : String(message); } catch (e) { text = "?"; }
    seen.push({kind, message: text});
    return answer;
  };
  fix("__dialogs", seen);
  fix("alert", trap("alert", undefined));
  fix("confirm", trap("confirm", false));
  fix("prompt", trap("prompt", null));
})();
"""


def chromium_available() -> bool:
    """Whether Debian's chromium and chromium-driver are installed (ops/test installs them)."""
    return CHROMIUM.is_file() and CHROMEDRIVER.is_file()


skip_without_chromium = pytest.mark.skipif(
    not chromium_available(),
    reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian's chromium, chromium-driver)")


def _options(profile: Path) -> webdriver.ChromeOptions:
    """Chromium's options: FLAGS, a fresh profile, the browser's console kept for
    `console_errors`, and prompts left open so that `dialogs_seen` finds a real one."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.unhandled_prompt_behavior = "ignore"
    return options


class Browser:
    """One headless Chromium; `driver` is the Selenium `webdriver.Chrome` for what the
    methods here do not cover. Close it, or use it as a context manager."""

    def __init__(self, artefacts: Path):
        self.artefacts = artefacts
        self.artefacts.mkdir(parents=True, exist_ok=True)
        self.profile = Path(tempfile.mkdtemp(prefix="weightswarm-chromium-"))
        self._console: list[dict] = []
        self.driver = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        """Chromium under chromedriver (its log in the artefacts), its waits bounded, and the
        dialog trap installed for every document it opens from now on."""
        service = Service(str(CHROMEDRIVER), log_output=str(self.artefacts / "chromedriver.log"))
        self.driver = webdriver.Chrome(options=_options(self.profile), service=service)
        self.driver.command_executor.client_config.timeout = COMMAND_TIMEOUT
        self.driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT)
        self.driver.set_script_timeout(PAGE_LOAD_TIMEOUT)
        self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                                    {"source": DIALOG_TRAP})

    def get(self, url: str) -> None:
        """Open `url` and wait, at most PAGE_LOAD_TIMEOUT, for it to load."""
        self.driver.get(url)

    def text(self, css: str) -> str:
        """The visible text of the first element matching the CSS selector `css`."""
        return self.driver.find_element(By.CSS_SELECTOR, css).text

    def screenshot(self, name: str) -> Path:
        """Save the window as NAME.png in the artefacts folder, for a human to look at when a
        test fails; returns its path."""
        path = self.artefacts / (name if name.endswith(".png") else f"{name}.png")
        if not self.driver.save_screenshot(str(path)):
            raise RuntimeError(f"chromium could not write the screenshot {path}")
        return path

    def console_errors(self) -> list[dict]:
        """The console's SEVERE entries (console.error, uncaught exceptions, failed loads)
        since the browser opened. chromedriver hands each entry over once, so they are kept."""
        self._console += self.driver.get_log("browser")
        return [entry for entry in self._console if entry.get("level") == "SEVERE"]

    def dialogs_seen(self) -> list[dict]:
        """The JavaScript dialogs the current page opened, each {"kind", "message"}: those the
        trap caught in the top frame, and those open for real (kind "native": from a frame
        below it), which are dismissed. Call it before the other methods: while a native
        dialog is open, chromedriver answers them with UnexpectedAlertPresentException."""
        seen = []
        for _ in range(MAX_NATIVE_DIALOGS):
            try:
                alert = self.driver.switch_to.alert
            except NoAlertPresentException:
                break
            seen.append({"kind": "native", "message": alert.text})
            alert.dismiss()
        return seen + self.driver.execute_script("return window.__dialogs || []")

    def scripts_ran(self, marker: str = MARKER) -> object:
        """The value a script planted in hostile input left in `window[marker]`, None when
        none ran: pages under test must never run such a script."""
        return self.driver.execute_script("return window[arguments[0]] || null", marker)

    def close(self) -> None:
        """End Chromium and chromedriver and remove the profile; safe to call twice."""
        driver, self.driver = self.driver, None
        try:
            if driver is not None:
                driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_browser(artefacts: Path) -> Browser:
    """A headless Chromium keeping its screenshots and chromedriver's log in `artefacts`; use
    as `with open_browser(tmp_path) as browser:`."""
    return Browser(artefacts)
