"""In CI (env CI=true, as .ci/run is run) a skipped test is a failed test.

The PyTorch parity, MPI and browser tests skip on a machine without torch, mpi4py/mpiexec or
Chromium/Playwright/Voila: fine locally, but in CI a skip would hide that they never ran, so
these hooks (imported by conftest.py) turn every skip, at collection or at run time, into a
failure that names the skip's reason. xfail is left alone.
"""

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _as_failure(report, what: str) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (f"{what} skipped in CI ({reason}): CI runs every test, so install what it "
                       "needs (see .ci/run); locally, without CI=true, it may skip")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        _as_failure(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    report = (yield).get_result()
    if in_ci() and report.skipped:
        _as_failure(report, collector.nodeid)
