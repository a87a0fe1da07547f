"""Shared test fixtures. Every test gets its own token cache, so no test writes to ~/.cache."""

import pytest

from ci_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401 - in CI a skip fails


@pytest.fixture(autouse=True)
def _isolated_token_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CRYSTALLINE_CACHE", str(tmp_path_factory.mktemp("token-cache")))


@pytest.fixture(scope="session")
def shakespeare(tmp_path_factory):
    """The bundled corpus, byte-encoded once per session."""
    from crystalline.data.corpus import bundled_corpus, load_corpus
    return load_corpus(bundled_corpus(), cache_dir=tmp_path_factory.mktemp("shakespeare-cache"))
