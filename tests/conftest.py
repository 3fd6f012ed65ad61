"""Test-wide settings."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def _no_user_state_memory(tmp_path_factory):
    """Latency-targeted runs remember the machine's states between runs (``prunepass.select.states``):
    nothing in the suite, session fixtures included, reads or writes the user's memory."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNEPASS_CACHE_DIR", str(tmp_path_factory.mktemp("prunepass-cache")))
        mp.delenv("PRUNEPASS_STATE_MEMORY", raising=False)
        yield


@pytest.fixture(autouse=True)
def _private_state_memory(tmp_path, monkeypatch):
    """... and each test gets its own empty memory, so no test reads what another one left."""
    monkeypatch.setenv("PRUNEPASS_CACHE_DIR", str(tmp_path / "prunepass-cache"))
    monkeypatch.delenv("PRUNEPASS_STATE_MEMORY", raising=False)
