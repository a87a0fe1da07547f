"""A real browser on the live dashboard: Voila serves notebooks/03_live_dashboard.ipynb, headless
Chromium (through Playwright) opens it, and the page must show training move, obey its buttons,
and look right in a screenshot (saved under the test's tmp folder)."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "03_live_dashboard.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]
pytestmark = pytest.mark.timeout(300)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str, server=None, log: Path | None = None):
    """Poll every 100 ms; fail after `timeout` s (or at once if the server died), with its log."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        died = server is not None and server.poll() is not None
        if died or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            reason = f"the server exited with {server.returncode}" if died else f"{timeout} s passed"
            pytest.fail(f"waiting for {what}: {reason}\n--- server log ---\n{tail}")
        time.sleep(0.1)


@pytest.fixture
def voila_server(tmp_path):
    """Voila on a free port serving the dashboard notebook with a tiny, long background run;
    terminated (process group, kernel included) whatever happens."""
    pytest.importorskip("voila")
    port = free_port()
    log = tmp_path / "voila.log"
    env = dict(os.environ, CRYSTALLINE_SMALL_RUN="1", CRYSTALLINE_STEPS="1000000",
               CRYSTALLINE_KEEP_TRAINING="1", JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               MPLBACKEND="agg")
    command = [sys.executable, "-m", "voila", "--no-browser", f"--port={port}",
               "--Voila.ip=127.0.0.1", str(NOTEBOOK)]
    with open(log, "w") as out:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        def listening():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        wait_until(listening, 60, "Voila to listen", server, log)
        yield f"http://127.0.0.1:{port}/", server, log
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)     # Voila shuts its kernel down on SIGTERM
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=15)
        try:                                          # anything left in the group (the kernel)
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def status_text(page) -> str:
    return page.locator(".crystalline-status").inner_text()


def step_of(text: str) -> int:
    match = re.search(r"step ([\d,]+)", text)
    return int(match.group(1).replace(",", "")) if match else -1


def test_the_dashboard_page_shows_training_live(voila_server, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium package "
                    "(apt-get install chromium) to run the browser test")
    sync_api = pytest.importorskip("playwright.sync_api")
    url, server, log = voila_server
    screenshot = tmp_path / "dashboard.png"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1320, "height": 1600})
            page.set_default_timeout(90_000)
            page.goto(url, wait_until="domcontentloaded")    # Voila runs the notebook, then renders
            page.wait_for_selector(".crystalline-status")
            wait_until(lambda: "running" in status_text(page), 60, "the running state", server, log)

            # Values change while training runs: the step count, the loss curve, the bars.
            first = step_of(status_text(page))
            wait_until(lambda: step_of(status_text(page)) > first, 60,
                       f"the step count to move past {first}", server, log)
            bars = page.locator(".crystalline-dashboard .progress-bar")
            assert bars.count() == 12
            wait_until(lambda: bars.first.evaluate("b => parseFloat(b.style.width) > 0"), 30,
                       "a filled load bar", server, log)
            loaded = ("() => [...document.querySelectorAll('.crystalline-dashboard img')]"
                      ".filter(i => i.complete && i.naturalWidth > 0).length")
            wait_until(lambda: page.evaluate(loaded) == 4, 60, "the four figures", server, log)
            assert "24 workers" in status_text(page)   # the notebook's resize took effect

            # The buttons reach the kernel: pause holds the step count, resume moves it again.
            page.get_by_role("button", name="pause").click()
            wait_until(lambda: "paused" in status_text(page), 30, "the paused state", server, log)
            held = step_of(status_text(page))
            page.wait_for_timeout(1000)                    # long enough for a few steps, were any run
            assert step_of(status_text(page)) == held
            page.get_by_role("button", name="resume").click()
            wait_until(lambda: step_of(status_text(page)) > held, 30, "steps after resume",
                       server, log)

            page.wait_for_timeout(2500)                    # let every figure redraw once more
            page.locator(".crystalline-dashboard").screenshot(path=screenshot)
            page.get_by_role("button", name="stop").click()
            wait_until(lambda: "stopped" in status_text(page), 30, "the stopped state", server, log)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 50_000
    print(f"screenshot: {screenshot}")
    keep = os.environ.get("CRYSTALLINE_SCREENSHOT_DIR")
    if keep:
        shutil.copy(screenshot, Path(keep) / screenshot.name)
