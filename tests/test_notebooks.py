"""Every notebook in notebooks/ runs top to bottom in a python3 kernel, in its small-run mode
(CRYSTALLINE_SMALL_RUN=1), and is stored without outputs; `crystalline lab` opens that folder."""

import json
import os
import re
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def python3_kernel():
    """The kernel the notebooks name. ipykernel provides it (jupyter_client falls back to
    ipykernel's own spec); if it is still missing, say what to run rather than hang."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try:
        return KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.fail("no Jupyter kernel named python3: run `python -m ipykernel install --user`")


def test_the_notebooks_are_found():
    names = [p.stem for p in NOTEBOOKS]
    assert {"01_quickstart", "02_hierarchy", "03_live_dashboard"} <= set(names), names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), \
        f"{path.name} is stored with outputs; clear them (Edit > Clear Outputs of All Cells)"
    assert any("CRYSTALLINE_SMALL_RUN" in c.source for c in code), \
        f"{path.name} has no parameters cell reading CRYSTALLINE_SMALL_RUN"


SMALL_RUN_ENV = {"CRYSTALLINE_SMALL_RUN": "1", "MPLBACKEND": "agg"}
_executed: dict[Path, tuple[nbformat.NotebookNode, float]] = {}


def execute(path: Path) -> tuple[nbformat.NotebookNode, float]:
    """Run a notebook once per session in a fresh python3 kernel with the small-run switch set
    (the kernel inherits this process's environment); the executed copy and its seconds."""
    if path not in _executed:
        from nbclient import NotebookClient
        nb = nbformat.read(path, as_version=4)
        saved = {k: os.environ.get(k) for k in (*SMALL_RUN_ENV, "CRYSTALLINE_STEPS",
                                                  "CRYSTALLINE_KEEP_TRAINING")}
        os.environ.update(SMALL_RUN_ENV)
        os.environ.pop("CRYSTALLINE_STEPS", None)
        os.environ.pop("CRYSTALLINE_KEEP_TRAINING", None)
        start = time.monotonic()
        try:
            NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                           resources={"metadata": {"path": str(path.parent)}}).execute()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        _executed[path] = nb, time.monotonic() - start
    return _executed[path]


def outputs(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def stream_text(nb) -> str:
    return "".join(o.get("text", "") for o in outputs(nb) if o.output_type == "stream")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, python3_kernel):
    nb, seconds = execute(path)                   # raises CellExecutionError on a failing cell
    errors = [o for o in outputs(nb) if o.output_type == "error"]
    assert not errors, errors
    print(f"{path.name}: {seconds:.1f} s")


def test_quickstart_trains_and_samples(python3_kernel):
    """Its outputs say what it did: a loss plot, a falling loss, sampled text."""
    nb, _ = execute(ROOT / "notebooks" / "01_quickstart.ipynb")
    text = stream_text(nb)
    assert any("image/png" in o.get("data", {}) for o in outputs(nb)), "no loss plot"
    assert "ROMEO:" in text and "in 30 steps" in text, text
    first, last = (float(x) for x in text.split("loss ")[1].split(" in ")[0].split(" -> "))
    assert last < first


def test_hierarchy_notebook_draws_trees_kissing_spheres_and_a_table(python3_kernel):
    nb, _ = execute(ROOT / "notebooks" / "02_hierarchy.ipynb")
    images = [o for o in outputs(nb) if "image/png" in o.get("data", {})]
    assert len(images) == 2                       # the three graphs in one figure, the 3-D spheres
    assert "157 spheres" in stream_text(nb) and "closest pair: 2.000000" in stream_text(nb)
    assert any("<table>" in o.get("data", {}).get("text/html", "") for o in outputs(nb))


def test_dashboard_notebook_shows_the_dashboard_and_stops(python3_kernel):
    nb, _ = execute(ROOT / "notebooks" / "03_live_dashboard.ipynb")
    views = [json.dumps(o["data"]) for o in outputs(nb) if "data" in o]
    assert any("application/vnd.jupyter.widget-view+json" in v for v in views), "no dashboard"
    text = stream_text(nb)
    assert "monitor running: False" in text, text


def test_scaling_notebook_checks_its_measurements(python3_kernel):
    """04 raises when its runs are not the configurations it plots or a time split is implausible;
    it ran its checks and printed the lock-free ratio."""
    nb, _ = execute(ROOT / "notebooks" / "04_scaling.ipynb")
    text = stream_text(nb)
    assert re.search(r"\d+ workers: lock-free \d+\.\d\dx model_lock", text), text
    assert "checked: 13 spheres' time split, 8 steps of 12 groups" in text, text
    assert len([o for o in outputs(nb) if "image/png" in o.get("data", {})]) == 4


def test_distributed_notebook_trained_on_two_mpi_engines_with_identical_parameters(python3_kernel):
    """05 raises when MPI is missing, the engines do not start, mpiexec fails or the ranks'
    checksums differ; so it ran on real engines and the ranks agreed."""
    nb, _ = execute(ROOT / "notebooks" / "05_distributed.ipynb")
    text = stream_text(nb)
    assert "FALLBACK" not in text and "DIFFER" not in text
    assert "2 MPI engines up: ranks [0, 1]" in text, text
    assert re.search(r"parameter CRC-32 per rank: \{0: '([0-9a-f]{8})', 1: '\1'\} \(identical\)", text), text


def test_stragglers_notebook_draws_the_experiment_and_explains_a_step(python3_kernel):
    nb, _ = execute(ROOT / "notebooks" / "07_stragglers.ipynb")
    images = [o for o in outputs(nb) if "image/png" in o.get("data", {})]
    assert len(images) == 2                       # the experiment, one straggling step
    text = stream_text(nb)
    assert "static:" in text and "dynamic:" in text and "worker 0 (slowed 3x)" in text, text


# ---------------------------------------------------------------------------- crystalline lab
def test_lab_opens_jupyterlab_on_the_notebooks(monkeypatch):
    import subprocess

    from crystalline.cli import build_parser
    from crystalline.commands import lab
    assert lab.notebooks_dir() == ROOT / "notebooks"
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)           # an ordinary user
    args = build_parser().parse_args(["lab", "--port", "8891", "--no-browser"])
    assert args.func(args) == 0
    (command,) = calls
    assert command[1:3] == ["-m", "jupyterlab"]
    assert f"--notebook-dir={ROOT / 'notebooks'}" in command
    assert "--port=8891" in command and "--no-browser" in command and "--allow-root" not in command


def test_lab_as_root_needs_allow_root_and_passes_jupyter_arguments(monkeypatch, capsys):
    import subprocess

    from crystalline.cli import main
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert main(["lab", "--no-browser"]) == 2 and not calls
    err = capsys.readouterr().err
    assert "running as root" in err and "--allow-root" in err and err.count("\n") == 1
    assert main(["lab", "--allow-root", "--", "--ServerApp.ip=0.0.0.0", "--debug"]) == 0
    (command,) = calls
    assert command[-3:] == ["--allow-root", "--ServerApp.ip=0.0.0.0", "--debug"]
    assert main(["lab", "--allow-root", "stray"]) == 2
    assert "after --" in capsys.readouterr().err


def test_lab_without_a_notebooks_folder_names_the_fix(monkeypatch, tmp_path, capsys):
    from crystalline.cli import main
    from crystalline.commands import lab
    monkeypatch.setattr(lab, "notebooks_dir", lambda: tmp_path / "site-packages" / "notebooks")
    assert main(["lab"]) == 2
    err = capsys.readouterr().err
    assert "no notebooks folder" in err and "pip install -e ." in err and "--notebook-dir" in err
    assert main(["lab", "--notebook-dir", str(tmp_path / "missing")]) == 2
    assert main(["lab", "--notebook-dir", str(tmp_path), "--port", "0"]) == 2
    assert "--port 0 is invalid" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "missing")


@pytest.mark.timeout(120)
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs to run as root")
def test_lab_really_starts_as_root_with_allow_root(tmp_path):
    """JupyterLab itself accepts what crystalline lab passes: it serves as root, and the token
    given after -- is the one it asks for."""
    import signal
    import socket
    import subprocess
    import sys
    import urllib.error
    import urllib.request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "crystalline", "lab", "--allow-root", "--no-browser",
                             "--port", str(port), "--", "--ServerApp.token=crystalline-test"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        served = next((line for line in iter(proc.stderr.readline, "") if "is running at" in line), None)
        assert served, "JupyterLab did not start"

        def status(token):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/api/status",
                                             headers={"Authorization": f"token {token}"})
            try:
                return urllib.request.urlopen(request, timeout=10).status
            except urllib.error.HTTPError as e:
                return e.code
        # Jupyter binds its port on the event loop just after printing that line: poll until it
        # accepts (a readiness wait with a deadline, not a sleep over a race).
        deadline = time.monotonic() + 60
        while True:
            try:
                ok = status("crystalline-test")
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline, "JupyterLab never accepted a connection"
                time.sleep(0.2)
        assert ok == 200 and status("wrong") == 403
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
