"""Test settings: never touch the network, keep the 2-core machine responsive."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """A fresh cache folder for one test."""
    monkeypatch.setenv("PURE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"
