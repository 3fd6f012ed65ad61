"""Test-wide settings."""

import pytest


@pytest.fixture(autouse=True)
def _private_state_memory(tmp_path, monkeypatch):
    """Latency-targeted runs remember the machine's states between runs (``prunepass.select.states``):
    each test gets its own empty memory, so no test reads what another one (or a user's run) left."""
    monkeypatch.setenv("PRUNEPASS_CACHE_DIR", str(tmp_path / "prunepass-cache"))
    monkeypatch.delenv("PRUNEPASS_STATE_MEMORY", raising=False)
