"""In CI a missing dependency fails the run instead of skipping silently (tests/ci_skips.py, wired
in by tests/conftest.py, which the pytest runs below load as a plugin)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SKIPPING = '''
import pytest
torch_like = pytest.importorskip("a_module_that_is_not_installed")
def test_never_runs():
    pass
'''
SKIPPING_AT_RUN_TIME = '''
import pytest
@pytest.mark.skipif(True, reason="no mpiexec")
def test_marked():
    pass
def test_inside():
    pytest.skip("no Chromium")
@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False
def test_passes():
    pass
'''


def run_pytest(tmp_path, ci: str | None):
    (tmp_path / "test_import_skip.py").write_text(SKIPPING)
    (tmp_path / "test_run_skip.py").write_text(SKIPPING_AT_RUN_TIME)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    if ci is not None:
        env["CI"] = ci
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                           "--continue-on-collection-errors", "-rA", str(tmp_path)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_every_skip_is_a_failure_naming_its_reason(tmp_path, ci):
    rc, out = run_pytest(tmp_path, ci)
    assert rc == 1, out
    assert "1 failed, 1 passed, 1 xfailed, 2 errors" in out, out
    assert "a_module_that_is_not_installed" in out and "no mpiexec" in out and "no Chromium" in out
    assert "skipped in CI" in out


@pytest.mark.parametrize("ci", [None, "false", ""])
def test_outside_ci_skips_stay_skips(tmp_path, ci):
    rc, out = run_pytest(tmp_path, ci)
    assert rc == 0, out
    assert "1 passed, 3 skipped, 1 xfailed" in out, out
