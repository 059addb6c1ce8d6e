"""The mirror's pages in a real browser (issue 21): in headless Chromium, search for a model,
open it, read a heading of its card, see its files and sizes, follow a branch, copy the
`hf download` command and run it against the mirror; a hostile card opens no dialog and runs
no script. Screenshots of each page go to the test's artefacts folder."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
from browser import open_browser, skip_without_chromium
from selenium.webdriver.common.by import By

from helpers import VENV_BIN, hf_cli_path, hf_env, make_config, make_tiny_model, start_mirror
from mirror.catalog import Catalog
from mirror.importer import Importer
from peer.store import BlobStore

pytestmark = skip_without_chromium

REPO, HOSTILE = "org/tiny-model", "org/hostile-card"
CARD = "---\nlicense: mit\ntags: [tiny]\n---\n# The tiny model\n\nA model for tests.\n"
HOSTILE_CARD = """---
license: mit
---
# Hostile

<script>window.__pwned = 1; alert(1)</script>
<img src=x onerror="window.__pwned = 2; alert(2)">
<a id="js" href="javascript:window.__pwned = 3">click me</a>
<svg onload="window.__pwned = 4"><script>window.__pwned = 5</script></svg>
<!--><script>window.__pwned = 6</script>-->
<p onmouseover="window.__pwned = 7">hover</p>
[markdown link](javascript:alert(8)) [encoded](&#x6A;avascript:alert(9))
[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxMCk8L3NjcmlwdD4=)
<details open ontoggle="window.__pwned = 11"><summary>x</summary></details>
<math><mtext><table><mglyph><style><img src=x onerror="window.__pwned=12">
"""


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    config = make_config(root / "home")
    main = make_tiny_model(root / "main", big_size=64 * 1024)
    (main / "README.md").write_text(CARD)
    dev = make_tiny_model(root / "dev", seed=1, big_size=64 * 1024)
    (dev / "README.md").write_text(CARD.replace("A model for tests.", "The dev branch."))
    hostile = make_tiny_model(root / "hostile", seed=2, big_size=4096)
    (hostile / "README.md").write_text(HOSTILE_CARD)
    catalog = Catalog(config.catalog_path)
    try:
        importer = Importer(catalog, BlobStore(config.store_dir))
        importer.import_path(main, repo_id=REPO)
        importer.import_path(dev, repo_id=REPO, revision="dev")
        importer.import_path(hostile, repo_id=HOSTILE)
    finally:
        catalog.close()
    running = start_mirror(config)
    yield running, main
    running.stop()


@pytest.fixture
def browser(tmp_path, request):
    artefacts = Path(request.config.rootpath) / "artefacts" / request.node.name
    with open_browser(artefacts) as b:
        yield b


def test_search_open_read_follow_a_branch_and_run_the_copied_command(mirror, browser,
                                                                       tmp_path):
    running, main = mirror
    browser.get(f"{running.url}/")
    browser.screenshot("1-home")
    box = browser.driver.find_element(By.CSS_SELECTOR, "header input[name=search]")
    box.send_keys("tiny")
    box.submit()
    browser.screenshot("2-search")
    link = browser.driver.find_element(By.LINK_TEXT, REPO)
    link.click()
    assert browser.text("h1") == REPO
    assert browser.text(".card-body h1") == "The tiny model", "a heading of its card"
    files = {row.find_element(By.CSS_SELECTOR, "td").text: row.find_element(
        By.CSS_SELECTOR, "td.num").text
        for row in browser.driver.find_elements(By.CSS_SELECTOR, "table.files tbody tr")
        if row.find_elements(By.CSS_SELECTOR, "td.num") and
        row.find_element(By.CSS_SELECTOR, "td.num").text}
    assert files["big.bin"] == "65.5 kB" and files["config.json"].endswith(" B"), files
    browser.screenshot("3-repo")
    browser.driver.find_element(By.PARTIAL_LINK_TEXT, "branch: dev").click()
    assert "The dev branch." in browser.text(".card-body")
    browser.screenshot("4-branch")
    assert not browser.console_errors() and not browser.dialogs_seen()
    browser.driver.find_element(By.PARTIAL_LINK_TEXT, "branch: main").click()
    command = browser.text("code.command")
    assert command.startswith(f"HF_ENDPOINT={running.url} hf download {REPO}"), command
    env_part, *args = shlex.split(command)
    env = hf_env(None, tmp_path / "cache", HF_ENDPOINT=env_part.split("=", 1)[1])
    done = subprocess.run([str(VENV_BIN / args[0]), *args[1:]], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    got = hf_cli_path(done.stdout + done.stderr)
    for f in main.rglob("*"):
        if f.is_file():
            assert (got / f.relative_to(main)).read_bytes() == f.read_bytes(), f.name
    browser.get(f"{running.url}/-/status")  # the download, charted by its way
    assert browser.text("h1") == "This mirror" and "resolve: 66" in browser.text("main")
    browser.screenshot("5-operator")
    assert not browser.console_errors(), "no page of ours breaks its own policy"


def test_a_hostile_card_opens_no_dialog_and_runs_no_script(mirror, browser):
    running, _ = mirror
    browser.get(f"{running.url}/{HOSTILE}")
    assert browser.text(".card-body h1") == "Hostile"
    for element in browser.driver.find_elements(By.CSS_SELECTOR, ".card-body a, .card-body p"):
        try:
            element.click()
        except Exception:  # noqa: BLE001 - what cannot be clicked cannot run anything either
            pass
    browser.get(f"{running.url}/{HOSTILE}")
    browser.screenshot("hostile-card")
    assert browser.scripts_ran() is None
    assert browser.dialogs_seen() == []
    # No script error, and no script blocked either (none reached the page); the one failed
    # load is the card's `<img src=x>`, a file of the repo that is not there.
    errors = [e for e in browser.console_errors()
              if not (e["source"] == "network" and f"/{HOSTILE}/resolve/" in e["message"])]
    assert errors == [], errors
