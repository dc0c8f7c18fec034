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


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory):
    """One cache folder for the smoke runs of a whole test session (chapters and commands)."""
    # the notebooks of one test run share mined references and attributions, as in a real book
    # build: one folder for the whole session, shared by the pytest-xdist workers too (the
    # basetemp of a worker lies inside the run's own folder; entries are written atomically)
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    path = base / "smoke-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def smoke_kernel(monkeypatch, smoke_cache):
    """A notebook run of the smoke profile in this test: its kernel reads and writes the
    session's smoke cache (with ``-p cache true`` on its command line) and computes on as many
    threads as this worker, not on every core."""
    monkeypatch.setenv("PURE_CACHE_DIR", str(smoke_cache))
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    return smoke_cache


def pytest_collection_modifyitems(config, items):
    """Run the long tests (marked ``slow``) first, so that no long test starts last while the
    other workers wait for it (``make test`` hands the tests out in this order, a few at a time:
    ``--dist loadgroup --no-loadscope-reorder``, where every test is a unit of its own).
    Among them the chapters that share the session's smoke cache come last: the first one fills
    the cache while the other workers run other long tests, and the next ones read it."""
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None,
                                 "smoke_cache" in getattr(item, "fixturenames", ())))
