"""The tour, opened and run in JupyterLab in a real browser (Debian's Chromium driven by Playwright), as a reader
runs it: every cell finishes without an error output and the figure renders. Skipped, with the reason, where no
Chromium is installed (``.ci/run`` installs Debian's)."""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
TOUR = ROOT / "notebooks" / "00_tour.ipynb"
ARTIFACTS = ROOT / "build" / "test-artifacts"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)

pytestmark = [pytest.mark.slow,  # starts JupyterLab and a browser
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on a free local port with a token, serving a copy of the tour (the browser's autosave
    must not touch the stored notebook); shut down afterwards."""
    shutil.copy(TOUR, tmp_path / TOUR.name)
    # every cell in the page, not only those scrolled into view, so the test can see them all
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')  # no pop-up over the page
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "VITSURVEY_OUTPUT": str(tmp_path / "out"), "VITSURVEY_PROFILE": "smoke",
           "VITSURVEY_OFFLINE": "1", "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_DATA_DIR": str(tmp_path / "data"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}", "--ServerApp.open_browser=False",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly", f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
         "--allow-root"],  # CI runs as root
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail("JupyterLab did not start")
            time.sleep(0.5)
    yield base, token, tmp_path
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


def test_the_tour_runs_in_jupyterlab_in_a_browser(lab):
    playwright = pytest.importorskip("playwright.sync_api")
    base, token, lab_dir = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/{TOUR.name}?token={token}", timeout=120_000)
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
            cells = sum(c.cell_type == "code" for c in nbformat.read(TOUR, as_version=4).cells)
            page.wait_for_function("n => document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell').length === n",
                                   arg=cells, timeout=60_000)
            started = """() => [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt')]
                             .some(e => /\\[(\\d+|\\*)\\]/.test(e.textContent))"""
            for attempt in range(3):  # a kernel still connecting on a cold first start can drop the request
                page.get_by_role("menuitem", name="Run", exact=True).click()
                page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
                try:
                    page.wait_for_function(started, timeout=60_000)
                    break
                except playwright.TimeoutError:
                    page.keyboard.press("Escape")
            else:
                pytest.fail("Run All Cells never started the cells")
            # every code cell has its execution count (not "*"), and the kernel is idle again
            page.wait_for_function(
                """n => [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt')]
                       .filter(e => /\\[\\d+\\]/.test(e.textContent)).length === n""", arg=cells, timeout=300_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
            page.keyboard.press("Control+s")  # the saved notebook must agree with what the page shows
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                saved = nbformat.read(lab_dir / TOUR.name, as_version=4)
                code = [c for c in saved.cells if c.cell_type == "code"]
                if all(c.execution_count for c in code):
                    break
                time.sleep(0.5)
            assert len(code) == cells and all(c.execution_count for c in code), "not every cell ran"
            assert not [o for c in code for o in c.outputs if o.output_type == "error"]
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] "
                                  ":text('Traceback'), .jp-RenderedText[data-mime-type*='error']")
            figure = page.locator(".jp-RenderedImage img").first
            figure.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "jupyterlab_tour.png"))
            assert errors.count() == 0, errors.first.inner_text()[:2000]
            assert figure.evaluate("img => img.complete && img.naturalWidth > 100"), "the figure did not render"
        finally:
            if "page" in locals():
                page.screenshot(path=str(ARTIFACTS / "jupyterlab_tour.png"))
            browser.close()
