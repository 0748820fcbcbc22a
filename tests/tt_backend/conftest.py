"""Every tt test writes its weight cache into its own temporary folder."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def tt_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEAWQ_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
