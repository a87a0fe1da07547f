"""A real browser on the dashboard of a run training in another process.

One JupyterLab server per module; `crystalline train --run-dir` runs in a subprocess; headless
Chromium (Playwright) opens a notebook holding `Dashboard(run_dir)` in JupyterLab, runs it, and
the page must show training move, a sphere's tooltip on hover, pause the CLI run from its
button, and replay the run once it has finished. `crystalline watch` is checked the same way
through Voila. Screenshots are saved under each test's tmp folder (and copied to
$CRYSTALLINE_SCREENSHOT_DIR when set)."""

import json
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
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 2000}      # a 1,280 px window, file browser open
pytestmark = pytest.mark.timeout(400)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str, proc=None, log: Path | None = None):
    """Poll every 100 ms; fail after `timeout` s (or at once if `proc` died), with its log."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        died = proc is not None and proc.poll() is not None
        if died or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            reason = f"the process exited with {proc.returncode}" if died else f"{timeout} s passed"
            pytest.fail(f"waiting for {what}: {reason}\n--- log ---\n{tail}")
        time.sleep(0.1)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def end(proc: subprocess.Popen) -> None:
    """Terminate a process group (server and kernels), then kill what is left."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=20)


def env_for(tmp: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="agg",
                JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), JUPYTER_CONFIG_DIR=str(tmp / "config"),
                JUPYTER_DATA_DIR=str(tmp / "data"))


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium package "
                    "(apt-get install chromium) to run the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                      headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a free port over a fresh folder (no token), for the whole module."""
    pytest.importorskip("jupyterlab")
    folder = tmp_path_factory.mktemp("lab")
    port = free_port()
    log = folder / "lab.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
               "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=", "--ServerApp.password=",
               f"--ServerApp.root_dir={folder}", f"--LabApp.workspaces_dir={folder / 'ws'}",
               f"--LabApp.user_settings_dir={folder / 'settings'}"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    with open(log, "w") as out:
        server = subprocess.Popen(command, cwd=folder, env=env_for(folder), stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: listening(port), 90, "JupyterLab to listen", server, log)
        yield SimpleLab(f"http://127.0.0.1:{port}", folder, server, log)
    finally:
        end(server)


class SimpleLab:
    def __init__(self, url, folder, server, log):
        self.url, self.folder, self.server, self.log = url, folder, server, log

    def notebook(self, name: str, source: str) -> str:
        """Write a one-cell notebook into the server's folder; its /lab URL."""
        nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": {
            "display_name": "Python 3", "language": "python", "name": "python3"}},
              "cells": [{"cell_type": "code", "id": "dashboard", "metadata": {},
                         "execution_count": None, "outputs": [], "source": source}]}
        (self.folder / name).write_text(json.dumps(nb))
        return f"{self.url}/lab/tree/{name}"


def open_and_run(page, url: str, lab: SimpleLab):
    """Open a notebook in JupyterLab, wait for its kernel, run its cell, wait for the dashboard."""
    page.goto(url + "?reset")      # only this notebook open (no restored workspace)
    page.wait_for_selector(".jp-Notebook")
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
    notebook = page.locator(".jp-NotebookPanel:visible")
    prompt = notebook.locator(".jp-Cell .jp-InputPrompt").first
    for attempt in range(5):        # a click that lands while the page still settles is lost
        dialog = page.locator(".jp-Dialog")
        if dialog.count():          # e.g. a slow kernel start's kernel dialog on a loaded machine
            page.screenshot(path=lab.folder / f"dialog-{attempt}.png")
            dialog.locator(".jp-mod-accept").first.click()
        notebook.locator(".jp-Cell .jp-InputArea-editor").first.click()
        page.keyboard.press("Shift+Enter")
        try:
            page.wait_for_function("p => /\\[[*0-9]+\\]/.test(p.textContent)",
                                   arg=prompt.element_handle(), timeout=5000)
            break
        except Exception:
            continue
    try:
        page.wait_for_selector(".crystalline-status")
    except Exception:
        page.screenshot(path=lab.folder / "failed.png")      # what the page showed instead
        raise


def status_text(page) -> str:
    return page.locator(".crystalline-status").inner_text()


def step_of(text: str) -> int:
    match = re.search(r"step ([\d,]+)", text)
    return int(match.group(1).replace(",", "")) if match else -1


def metrics_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def keep(screenshot: Path) -> None:
    target = os.environ.get("CRYSTALLINE_SCREENSHOT_DIR")
    if target:
        shutil.copy(screenshot, Path(target) / screenshot.name)


@pytest.fixture
def cli_run(tmp_path):
    """`crystalline train` in another process, long enough to watch; ended whatever happens."""
    run_dir = tmp_path / "run"
    log = tmp_path / "train.log"
    command = [sys.executable, "-m", "crystalline", "train", "--preset", "tiny", "--workers", "3",
               "--steps", "100000", "--eval-interval", "0", "--sample", "0", "--no-progress",
               "--run-dir", str(run_dir)]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env_for(tmp_path), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: metrics_steps(run_dir) >= 2, 120, "the CLI run's first steps", proc, log)
        yield run_dir, proc, log
    finally:
        end(proc)


def test_jupyterlab_watches_pauses_and_replays_a_cli_run(lab, browser, cli_run, tmp_path):
    run_dir, proc, log = cli_run
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(90_000)
    try:
        open_and_run(page, lab.notebook("watch_live.ipynb",
                                        "from crystalline.viz.dashboard import Dashboard\n"
                                        f"Dashboard({str(run_dir)!r})"), lab)
        wait_until(lambda: "running" in status_text(page), 60, "the running state", proc, log)

        # The panels update: the step count moves, the bars fill, the curves and stream draw.
        first = step_of(status_text(page))
        wait_until(lambda: step_of(status_text(page)) > first, 60, f"steps past {first}", proc, log)
        assert "3 workers" in status_text(page)
        fills = page.locator(".crystalline-bar-fill")
        assert fills.count() == 12
        wait_until(lambda: fills.first.evaluate("b => parseFloat(b.style.width) > 0"), 30,
                   "a filled load bar", proc, log)
        assert page.locator(".crystalline-errors").inner_text() == ""
        for panel in (".cr-groups", ".cr-tree", ".cr-split", ".cr-curve", ".cr-stream"):
            # each panel clears its note on the pull that brings its data (the phase timeline
            # may come a pull after the load bars)
            note = page.locator(f"{panel} .cr-note").first
            wait_until(lambda: note.inner_text() == "", 30, f"{panel} to draw", proc, log)
        assert "waited" in page.locator(".crystalline-waited").inner_text()

        # Fluid: the dashboard fits the notebook column of a 1,280 px window.
        width = page.locator(".crystalline-dashboard").evaluate("e => e.getBoundingClientRect().width")
        column = page.locator(".jp-OutputArea-output").last.evaluate(
            "e => e.getBoundingClientRect().width")
        assert width <= column + 1 and width < 1000, (width, column)

        # Hover a worker in the tree: its tooltip.
        layout = page.evaluate("""() => {
            const c = document.querySelector('.cr-tree canvas'); const r = c.getBoundingClientRect();
            return {x: r.x, y: r.y, w: r.width, h: r.height}; }""")
        tooltip = page.locator(".crystalline-tooltip")
        found = False
        for dx, dy in ((0.0, -1.0), (0.866, 0.5), (-0.866, 0.5)):     # the 3 workers, level 1
            # the tree's extent is 1.6 units around N0; the canvas is square above a 24 px scale
            size = min(layout["w"], layout["h"] - 24)
            scale = size / 3.2
            x = layout["x"] + layout["w"] / 2 + dx * scale
            y = layout["y"] + (layout["h"] - 24) / 2 + dy * scale
            page.mouse.move(x, y)
            if tooltip.is_visible() and "worker sphere" in tooltip.inner_text():
                found = True
                break
        assert found, "no tooltip over the workers"
        text = tooltip.inner_text()
        for part in ("sphere", "group g", "rank 0", "tokens/s", "owned"):
            assert part in text, (part, text)
        # the per-sphere columns arrive as binary records: decoded, they are numbers and names
        assert re.search(r"[\d.]+k? tokens/s", text) and re.search(r"[\d.]+ (KiB|MiB) owned", text), text
        assert re.search(r"owned · (wait at Point|compute|idle)", text), text
        page.screenshot(path=tmp_path / "lab_live.png")
        keep(tmp_path / "lab_live.png")

        # The loss curve zooms with the wheel and resets on a double click.
        loss = page.locator(".cr-curve canvas").first
        loss.hover()
        page.mouse.wheel(0, -400)
        wait_until(lambda: loss.get_attribute("data-view"), 10, "the zoomed view")
        x0, x1 = map(float, loss.get_attribute("data-view").split(","))
        assert 0 <= x0 < x1 <= step_of(status_text(page)) + 1
        loss.dblclick()
        wait_until(lambda: loss.get_attribute("data-view") == "", 10, "the reset view")

        # An invalid worker count in the box: a visible message, and the run keeps its workers.
        box = page.locator(".crystalline-workers")
        box.fill("lots")
        page.get_by_role("button", name="apply").click()
        message = page.locator(".crystalline-message")
        wait_until(lambda: "not a whole number" in message.inner_text(), 30, "the error message", proc, log)
        assert "cr-error" in message.get_attribute("class") and message.is_visible()
        assert "3 workers" in status_text(page) and "control.json" not in os.listdir(run_dir)

        # Pause from the dashboard pauses the CLI process (its control file).
        page.get_by_role("button", name="pause").click()
        wait_until(lambda: "paused" in status_text(page), 30, "the paused state", proc, log)
        held = metrics_steps(run_dir)
        shown = step_of(status_text(page))
        deadline = time.monotonic() + 2.0                     # several steps' time, were any run
        while time.monotonic() < deadline:
            assert metrics_steps(run_dir) == held and proc.poll() is None
            time.sleep(0.2)
        assert step_of(status_text(page)) == shown
        page.get_by_role("button", name="resume").click()
        wait_until(lambda: metrics_steps(run_dir) > held, 30, "steps after resume", proc, log)

        # Stop from the dashboard: the CLI run ends (and writes its checkpoint).
        page.get_by_role("button", name="stop").click()
        wait_until(lambda: proc.poll() is not None, 60, "the CLI run to end", None, log)
        assert proc.returncode == 0, log.read_text()[-2000:]
        wait_until(lambda: "running" not in status_text(page), 30, "the end state", None, log)
    finally:
        page.close()

    # The finished run replays: curves and the final state, no controls.
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(90_000)
    try:
        open_and_run(page, lab.notebook("watch_replay.ipynb",
                                        "from crystalline.viz.dashboard import Dashboard\n"
                                        f"Dashboard({str(run_dir)!r})"), lab)
        steps = metrics_steps(run_dir)
        wait_until(lambda: step_of(status_text(page)) == steps, 60, f"step {steps} replayed")
        assert re.search(r"stopped|finished", status_text(page))
        assert not page.locator(".cr-controls").is_visible()
        assert "replay" in page.locator(".cr-detail").inner_text()
        page.wait_for_timeout(500)
        page.screenshot(path=tmp_path / "lab_replay.png")
        keep(tmp_path / "lab_replay.png")
    finally:
        page.close()
    assert (tmp_path / "lab_live.png").stat().st_size > 50_000


def test_crystalline_watch_serves_the_dashboard(browser, cli_run, tmp_path):
    pytest.importorskip("voila")
    run_dir, proc, log = cli_run
    port = free_port()
    watch_log = tmp_path / "watch.log"
    with open(watch_log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "crystalline", "watch", str(run_dir),
                                   "--port", str(port), "--no-browser"], cwd=tmp_path,
                                  env=env_for(tmp_path), stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    page = browser.new_page(viewport={"width": 1280, "height": 1800})
    page.set_default_timeout(90_000)
    try:
        wait_until(lambda: listening(port), 60, "crystalline watch to listen", server, watch_log)
        page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
        page.wait_for_selector(".crystalline-status")
        first = step_of(status_text(page))
        wait_until(lambda: step_of(status_text(page)) > first, 60, "steps in the Voila page",
                   server, watch_log)
        page.screenshot(path=tmp_path / "watch.png")
        keep(tmp_path / "watch.png")
    finally:
        page.close()
        end(server)
