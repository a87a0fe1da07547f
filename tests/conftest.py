"""Shared test fixtures. Every test gets its own token cache, so no test writes to ~/.cache."""

import pytest


@pytest.fixture(autouse=True)
def _isolated_token_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CRYSTALLINE_CACHE", str(tmp_path_factory.mktemp("token-cache")))
