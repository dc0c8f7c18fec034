"""Test settings: never touch the network, keep the 2-core machine responsive."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

# under pytest-xdist (`make test` runs one worker per core) each worker computes on one thread,
# so the workers do not oversubscribe the cores
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // _workers))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """A fresh cache folder for one test."""
    monkeypatch.setenv("PURE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def pytest_collection_modifyitems(config, items):
    """Run the long tests (marked ``slow``) first, so that no long test starts last while the
    other workers wait for it (``make test`` hands out one test at a time: ``--maxschedchunk 1``).
    Among them the chapters that share the session's smoke cache come last: the first one fills
    the cache while the other workers run other long tests, and the next ones read it."""
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None,
                                 "smoke_cache" in getattr(item, "fixturenames", ())))
