"""Tests of pure_utils.cache: keys, round trips, atomic writes, recomputation."""
import json

import pytest
import torch

import pure_utils
import pure_utils.cache as cache_mod
from pure_utils.cache import Cache, default_cache_dir, resolve_cache


def test_key_is_canonical_and_changes_with_params_and_version(tmp_path, monkeypatch):
    c = Cache(tmp_path)
    k = c.key("references", model="abc", layer="layer4", n_ref=100)
    assert k == c.key("references", n_ref=100, layer="layer4", model="abc")  # order-free
    assert k.startswith("references-") and len(k) == len("references-") + 64
    assert k != c.key("references", model="abc", layer="layer3", n_ref=100)
    assert k != c.key("references", model="abd", layer="layer4", n_ref=100)
    assert k != c.key("circuits", model="abc", layer="layer4", n_ref=100)
    monkeypatch.setattr(pure_utils, "__version__", "999")
    assert k != c.key("references", model="abc", layer="layer4", n_ref=100)
    with pytest.raises(ValueError, match="kind"):
        c.key("a/b")
    with pytest.raises(TypeError, match="JSON"):
        c.key("x", obj=object())


def test_roundtrip_and_get_or_compute(tmp_path):
    c = Cache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"a": torch.arange(6).reshape(2, 3), "b": torch.rand(3, 2).T}

    first = c.get_or_compute("demo", {"n": 1}, compute)
    second = c.get_or_compute("demo", {"n": 1}, compute)
    assert len(calls) == 1
    assert torch.equal(first["a"], second["a"]) and torch.equal(first["b"], second["b"])
    c.get_or_compute("demo", {"n": 2}, compute)
    assert len(calls) == 2
    tensors, meta = c.load(c.key("demo", n=1))
    assert meta["params"] == {"n": 1} and meta["kind"] == "demo"
    assert c.key("demo", n=1) in c


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    c = Cache(tmp_path)
    key = c.key("demo", n=1)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        c.save(key, {"a": torch.ones(3)}, {"x": 1})
    assert list(tmp_path.iterdir()) == []  # no entry and no temporary file
    assert c.load(key) is None


def test_interrupted_entry_counts_as_missing(tmp_path):
    c = Cache(tmp_path)
    key = c.key("demo", n=1)
    c.save(key, {"a": torch.ones(3)})
    (tmp_path / f"{key}.json").unlink()  # as if stopped before the metadata was written
    assert c.load(key) is None
    c.save(key, {"a": torch.ones(3)})
    (tmp_path / f"{key}.safetensors").write_bytes(b"garbage")
    assert c.load(key) is None
    assert json.loads((tmp_path / f"{key}.json").read_text()) == {}


def test_resolve_and_default_dir(tmp_cache):
    assert resolve_cache(None) is None and resolve_cache(False) is None
    assert resolve_cache(True).root == tmp_cache == default_cache_dir()
    c = Cache(tmp_cache)
    assert resolve_cache(c) is c
    assert resolve_cache(str(tmp_cache)).root == tmp_cache
    with pytest.raises(ValueError, match="cache=3"):
        resolve_cache(3)
    with pytest.raises(TypeError):
        Cache(tmp_cache).save(c.key("demo"), {"a": [1, 2]})
