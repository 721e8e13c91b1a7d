"""Every test runs offline, on the CPU, with its own cache dir."""

import os

import pytest

# No test may reach the network: make Hugging Face and open_clip fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """Each test gets a fresh cache dir and no data root from the environment."""
    monkeypatch.setenv("CMM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CMM_DATA_ROOT", raising=False)
    yield


def pytest_terminal_summary(terminalreporter):
    """Say loudly which tests did not run for want of real data (they are skipped, never silently)."""
    skipped = terminalreporter.stats.get("skipped", [])
    real = [r for r in skipped if "CMM_REAL_FEATURES" in str(getattr(r, "longrepr", ""))]
    if real:
        terminalreporter.write_sep("!", f"{len(real)} real-feature test(s) NOT run: set CMM_REAL_FEATURES")
